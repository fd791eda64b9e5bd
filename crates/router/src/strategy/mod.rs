//! Strategies: how the router orders the healthy engines for one request.

mod round_robin;

pub use round_robin::RoundRobin;
