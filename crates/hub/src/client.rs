//! `Client`: an application's connection to a hub, with many requests in flight and
//! replies matched by request id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qnllm_protocol::{
    Batch, BatchResult, Call, Deadline, ErrorCode, Event, Frame, Hello, Message, MessageKind,
    Welcome, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use qnllm_router::Answer;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{spawn_writer, Closer, FrameReader, FrameSender, ReadError};
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

/// Longest wait for the hub's welcome after hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Pending {
    closed: Option<String>,
    waiting: HashMap<u64, oneshot::Sender<Frame>>,
    /// Open subscriptions by request id: where their events go.
    subscriptions: HashMap<u64, mpsc::Sender<Event>>,
}

/// Events a subscription has not handed out yet, at most this many: a subscriber that
/// falls further behind misses events, as on the hub.
const SUBSCRIPTION_EVENTS: usize = 1_024;

/// Hub events on the topics of one [`Client::subscribe`], in the order the hub sent them.
#[derive(Debug)]
pub struct Subscription {
    events: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next event; `None` once the connection has closed.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
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
        let read = tokio::time::timeout(WELCOME_TIMEOUT, reader.read_frame())
            .await
            .map_err(|_| ClientError::Timeout(WELCOME_TIMEOUT))?;
        let welcome = match read {
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
        tokio::spawn(read_replies(reader, pending.clone(), sender.closer()));
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

    /// Subscribes to hub events on `topics` (`*` for all; `engines` for joins and leaves,
    /// `connections` for connections that pause or close); returns once the hub has
    /// confirmed, so no later event is missed.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub async fn subscribe(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<Subscription, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut events) = mpsc::channel(SUBSCRIPTION_EVENTS);
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.closed {
                return Err(ClientError::Closed(reason.clone()));
            }
            pending.subscriptions.insert(id, tx);
        }
        let subscribe = Message::Subscribe(qnllm_protocol::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
        });
        let confirmed = async {
            if !self.sender.send(&subscribe, id, Deadline::NONE).await {
                return Err(ClientError::Closed("before the subscription".into()));
            }
            match events.recv().await {
                Some(event) if event.topic == "subscribed" => Ok(()),
                Some(event) if event.topic == "error" => {
                    Err(ClientError::Unexpected(event.data.to_string()))
                }
                Some(other) => Err(ClientError::Unexpected(format!(
                    "{} before the confirmation",
                    other.topic
                ))),
                None => Err(ClientError::Closed(
                    lock(&self.pending).closed.clone().unwrap_or_default(),
                )),
            }
        };
        match tokio::time::timeout(timeout, confirmed).await {
            Ok(Ok(())) => Ok(Subscription { events }),
            Ok(Err(e)) => {
                lock(&self.pending).subscriptions.remove(&id);
                Err(e)
            }
            Err(_) => {
                lock(&self.pending).subscriptions.remove(&id);
                Err(ClientError::Timeout(timeout))
            }
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

async fn read_replies(mut reader: FrameReader, pending: Arc<Mutex<Pending>>, closer: Closer) {
    let reason = loop {
        match reader.read_frame().await {
            Ok(Some(frame)) => {
                let id = frame.header.request_id;
                if frame.kind == MessageKind::Event || frame.kind == MessageKind::Error {
                    let subscription = lock(&pending).subscriptions.get(&id).cloned();
                    if let Some(subscription) = subscription {
                        let event = match frame.message() {
                            Ok(Message::Event(event)) => event,
                            Ok(Message::Error(e)) => Event {
                                topic: "error".into(),
                                data: serde_json::json!({ "code": e.code.as_u16(), "message": e.message }),
                            },
                            _ => continue,
                        };
                        if subscription.try_send(event).is_err() && subscription.is_closed() {
                            lock(&pending).subscriptions.remove(&id);
                        }
                        continue;
                    }
                }
                let waiter = lock(&pending).waiting.remove(&id);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(frame);
                    }
                    None if frame.header.request_id == 0 => match frame.message() {
                        Ok(Message::Error(e)) => break format!("{}: {}", e.code, e.message),
                        Ok(Message::Goodbye(goodbye)) => {
                            // The hub is stopping: send nothing more and close our side, so
                            // the hub knows it has read every request; the replies to those
                            // still come (a result or `ShuttingDown` each).
                            lock(&pending).closed.get_or_insert_with(|| {
                                format!("the hub said goodbye: {}", goodbye.reason)
                            });
                            closer.close();
                        }
                        _ => {}
                    },
                    None => {} // an answer nobody waits for any more (timed out)
                }
            }
            Ok(None) => break "closed by the hub".to_string(),
            Err(ReadError::Protocol(e)) => break e.to_string(),
            Err(e) => break e.to_string(),
        }
    };
    let mut pending = lock(&pending);
    pending.closed.get_or_insert(reason);
    pending.waiting.clear(); // wakes every waiter with `Closed`
    pending.subscriptions.clear(); // ends every subscription
}
