//! `call`: named handlers registered on the hub, with two built-ins (`echo`, `engines`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use qnllm_protocol::{Call, Deadline, ErrorCode, Message};

use crate::cmd::ClientSession;
use crate::hub::{Hub, Shared};
use crate::session::fail;

/// A handler: argument bytes in, reply bytes or an error message out.
pub type Handler = Arc<dyn Fn(&Hub, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// The handlers registered on a hub.
pub(crate) struct Handlers {
    map: RwLock<HashMap<String, Handler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("names", &self.names())
            .finish()
    }
}

impl Handlers {
    /// `echo` (returns its argument) and `engines` (the engine list as JSON).
    pub(crate) fn with_builtins() -> Handlers {
        let handlers = Handlers {
            map: RwLock::new(HashMap::new()),
        };
        handlers.register("echo".into(), Arc::new(|_, args| Ok(args.to_vec())));
        handlers.register(
            "engines".into(),
            Arc::new(|hub, _| Ok(hub.shared.registry.describe().to_string().into_bytes())),
        );
        handlers
    }

    pub(crate) fn register(&self, name: String, handler: Handler) {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, handler);
    }

    fn get(&self, name: &str) -> Option<Handler> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

pub(crate) async fn handle(shared: &Arc<Shared>, session: &ClientSession, id: u64, call: Call) {
    let Some(handler) = shared.handlers.get(&call.handler) else {
        let message = format!(
            "no handler `{}`; registered: {}",
            call.handler,
            shared.handlers.names().join(", ")
        );
        return fail(&session.sender, id, ErrorCode::UnknownHandler, message).await;
    };
    let hub = Hub {
        shared: shared.clone(),
    };
    match handler(&hub, &call.payload) {
        Ok(reply) => {
            session
                .sender
                .send(&Message::Reply(reply), id, Deadline::NONE)
                .await;
        }
        Err(message) => fail(&session.sender, id, ErrorCode::EngineFailed, message).await,
    }
}
