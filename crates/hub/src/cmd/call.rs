//! `call`: run a named handler and answer with its reply.

use qnllm_protocol::{Call, Deadline, ErrorCode, Message};

use crate::connection::FrameSender;

/// The named handlers a `call` can reach (the hub implements it over its handler table).
pub(crate) trait Calls: Send + Sync {
    /// Runs the handler `name` on `args`; `None` when there is no such handler.
    fn call(&self, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, String>>;
    /// The names registered, sorted.
    fn names(&self) -> Vec<String>;
}

/// Answers `call` with the handler's reply, its error as `EngineFailed`, or
/// `UnknownHandler` naming the handlers there are.
pub(crate) async fn apply(calls: &dyn Calls, sender: &FrameSender, id: u64, call: Call) {
    match calls.call(&call.handler, &call.payload) {
        Some(Ok(reply)) => {
            sender
                .send(&Message::Reply(reply), id, Deadline::NONE)
                .await;
        }
        Some(Err(message)) => sender.fail(id, ErrorCode::EngineFailed, message).await,
        None => {
            let message = format!(
                "no handler `{}`; registered: {}",
                call.handler,
                calls.names().join(", ")
            );
            sender.fail(id, ErrorCode::UnknownHandler, message).await;
        }
    }
}
