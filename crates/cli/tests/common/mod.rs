//! Helpers shared by the integration test binaries of the `qnllm` command.

// Each test binary uses some of the helpers.
#![allow(dead_code, unreachable_pub)]

pub(crate) mod hub;
pub(crate) mod proc;
