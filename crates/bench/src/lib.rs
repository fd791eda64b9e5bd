//! `qnllm bench`: measures qnllm's paths (hub over TCP and Unix sockets, the C++ worker,
//! the KServe v2 front over HTTP and gRPC, a worker on NATS) next to baselines measured in
//! the same run and the same process layout (client process ↔ server processes), and
//! reports each figure as a ratio to its baseline.
//!
//! Every server process is the calling executable itself, started with the hidden
//! [`SUBCOMMAND`]: an executable that runs [`run`] must hand that subcommand's argument to
//! [`serve`].

mod baseline;
mod deadline;
mod echo;
mod error;
mod front;
mod nats;
mod neighbour;
mod plot;
mod probe;
mod process;
mod report;
mod run;
mod server;
mod stats;

pub use error::BenchError;
pub use plot::svg;
pub use report::{Group, HubDeadlines, Memory, Report, Row, Skipped, DISTRIBUTION_POINTS};
pub use run::{default_cpp_worker, run, BenchConfig, CPP_BUILD};
pub use server::{serve, SUBCOMMAND};
pub use stats::Latency;
