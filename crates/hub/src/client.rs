//! `Client`: an application's connection to a hub, with many requests in flight and
//! replies matched by request id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qnllm_protocol::{
    Batch, BatchResult, Call, Deadline, ErrorCode, Frame, Hello, Message, Welcome,
    DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use qnllm_router::Answer;
use tokio::sync::oneshot;

use crate::connection::{spawn_writer, FrameReader, FrameSender, ReadError};
use crate::convert;
use crate::endpoint::Endpoint;

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The hub could not be reached.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The hub answered with an error frame.
    #[error("{code}: {message}")]
    Remote {
        /// The error code.
        code: ErrorCode,
        /// The hub's message.
        message: String,
    },
    /// No answer within the time allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection closed before the answer.
    #[error("the connection to the hub closed: {0}")]
    Closed(String),
    /// The hub sent something this client cannot read.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

#[derive(Debug, Default)]
struct Pending {
    closed: Option<String>,
    waiting: HashMap<u64, oneshot::Sender<Frame>>,
}

/// A connection to a hub as a client.
#[derive(Debug)]
pub struct Client {
    sender: FrameSender,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    welcome: Welcome,
}

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // Single inserts and removes only: a poisoned map is still consistent.
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Client {
    /// Connects, says hello as `name` (with `token` if the hub needs one) and waits for the
    /// welcome.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`], or [`ClientError::Remote`] when the hub refuses the hello.
    pub async fn connect(
        endpoint: &Endpoint,
        name: &str,
        token: Option<&str>,
    ) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, name, token, Duration::ZERO).await
    }

    /// [`Client::connect`], with the reply reader polling for up to `busy_poll` before its
    /// thread sleeps (see `HubConfig::busy_poll_us`): lower latency for a core kept busy.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
    pub async fn connect_with(
        endpoint: &Endpoint,
        name: &str,
        token: Option<&str>,
        busy_poll: Duration,
    ) -> Result<Client, ClientError> {
        let io = endpoint.connect().await.map_err(|e| ClientError::Connect {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
        let (read, write) = io.into_split();
        let (sender, _writer) = spawn_writer(write);
        let mut reader = FrameReader::new(read, DEFAULT_MAX_FRAME_BYTES).busy_poll(busy_poll);
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            role: "client".into(),
            name: name.into(),
            token: token.map(str::to_string),
        };
        sender.send(&Message::Hello(hello), 0, Deadline::NONE).await;
        let welcome = match reader.read_frame().await {
            Ok(Some(frame)) => match frame.message() {
                Ok(Message::Welcome(welcome)) => welcome,
                Ok(Message::Error(e)) => {
                    return Err(ClientError::Remote {
                        code: e.code,
                        message: e.message,
                    })
                }
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "{other:?} instead of welcome"
                    )))
                }
            },
            Ok(None) => return Err(ClientError::Closed("before the welcome".into())),
            Err(e) => return Err(ClientError::Closed(e.to_string())),
        };
        let pending = Arc::new(Mutex::new(Pending::default()));
        tokio::spawn(read_replies(reader, pending.clone()));
        Ok(Client {
            sender,
            pending,
            next_id: AtomicU64::new(1),
            welcome,
        })
    }

    /// What the hub said in its welcome.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends `message` and waits up to `timeout` for the frame that answers it; the hub
    /// gets the same budget as the request's deadline.
    ///
    /// # Errors
    ///
    /// [`ClientError::Remote`] for an error frame, [`ClientError::Timeout`],
    /// [`ClientError::Closed`].
    pub async fn request(
        &self,
        message: &Message,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        self.request_within(message, timeout, timeout).await
    }

    /// [`Client::request`] with a header deadline of `deadline` and a local wait of `wait`:
    /// with `wait` longer, the hub's own `DeadlineExceeded` is seen, and when it came.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub async fn request_within(
        &self,
        message: &Message,
        deadline: Duration,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let reply = {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.closed {
                return Err(ClientError::Closed(reason.clone()));
            }
            let (tx, rx) = oneshot::channel();
            pending.waiting.insert(id, tx);
            rx
        };
        let closed = || ClientError::Closed(lock(&self.pending).closed.clone().unwrap_or_default());
        let exchange = async {
            if !self
                .sender
                .send(message, id, Deadline::from_remaining(deadline))
                .await
            {
                return Err(closed());
            }
            reply.await.map_err(|_| closed())
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        lock(&self.pending).waiting.remove(&id);
        let frame = outcome.map_err(|_| ClientError::Timeout(timeout))??;
        match frame.message() {
            Ok(Message::Error(e)) => Err(ClientError::Remote {
                code: e.code,
                message: e.message,
            }),
            Ok(message) => Ok(message),
            Err(e) => Err(ClientError::Unexpected(e.to_string())),
        }
    }

    /// Reasons over one encoding.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub async fn reason(&self, encoding: &[f32], timeout: Duration) -> Result<Answer, ClientError> {
        match self
            .request(&Message::Reason(encoding.to_vec().into()), timeout)
            .await?
        {
            Message::Result(result) => Ok(convert::answer(result)),
            other => Err(ClientError::Unexpected(format!(
                "{} instead of result",
                other.kind()
            ))),
        }
    }

    /// Reasons over a batch of encodings of one dimension.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub async fn reason_batch(
        &self,
        encodings: &[Vec<f32>],
        timeout: Duration,
    ) -> Result<Vec<Answer>, ClientError> {
        let dim = encodings.first().map_or(0, Vec::len);
        let batch = u32::try_from(dim)
            .ok()
            .and_then(|d| Batch::new(d, encodings.concat()))
            .filter(|b| b.count() as usize == encodings.len())
            .ok_or_else(|| {
                ClientError::Unexpected("a batch needs encodings of one non-zero length".into())
            })?;
        match self.request(&Message::Batch(batch), timeout).await? {
            Message::BatchResult(BatchResult { results }) => {
                Ok(results.into_iter().map(convert::answer).collect())
            }
            other => Err(ClientError::Unexpected(format!(
                "{} instead of batch_result",
                other.kind()
            ))),
        }
    }

    /// Calls a handler registered on the hub.
    ///
    /// # Errors
    ///
    /// As [`Client::request`]; `UnknownHandler` when no such handler exists.
    pub async fn call(
        &self,
        handler: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let call = Message::Call(Call {
            handler: handler.into(),
            payload: payload.to_vec(),
        });
        match self.request(&call, timeout).await? {
            Message::Reply(bytes) => Ok(bytes),
            other => Err(ClientError::Unexpected(format!(
                "{} instead of reply",
                other.kind()
            ))),
        }
    }

    /// The hub's metrics snapshot.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub async fn metrics(&self, timeout: Duration) -> Result<serde_json::Value, ClientError> {
        match self.request(&Message::MetricsQuery, timeout).await? {
            Message::Metrics(value) => Ok(value),
            other => Err(ClientError::Unexpected(format!(
                "{} instead of metrics",
                other.kind()
            ))),
        }
    }
}

async fn read_replies(mut reader: FrameReader, pending: Arc<Mutex<Pending>>) {
    let reason = loop {
        match reader.read_frame().await {
            Ok(Some(frame)) => {
                let waiter = lock(&pending).waiting.remove(&frame.header.request_id);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(frame);
                    }
                    None if frame.header.request_id == 0 => {
                        if let Ok(Message::Error(e)) = frame.message() {
                            break format!("{}: {}", e.code, e.message);
                        }
                    }
                    None => {} // an answer nobody waits for any more (timed out)
                }
            }
            Ok(None) => break "closed by the hub".to_string(),
            Err(ReadError::Protocol(e)) => break e.to_string(),
            Err(e) => break e.to_string(),
        }
    };
    let mut pending = lock(&pending);
    pending.closed = Some(reason);
    pending.waiting.clear(); // wakes every waiter with `Closed`
}
