//! `qnllm bench`: measures qnllm's paths next to the floor the kernel's sockets set, in one
//! run and one process layout (client process ↔ server process), and reports each figure as
//! a ratio to its baseline.

mod baseline;
mod deadline;
mod neighbour;
mod plot;
mod probe;
mod process;
mod report;
mod run;
mod stats;

pub use baseline::{serve_baseline, Baseline};
pub use plot::svg;
pub use report::{Memory, Report, Row, DISTRIBUTION_POINTS};
pub use run::{run, BenchConfig, BenchError};
pub use stats::Latency;
