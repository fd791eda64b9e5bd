//! `Client`: an application's connection to a hub, with many requests in flight and
//! replies matched by request id.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qnllm_engine::Digest;
use qnllm_protocol::{
    Batch, BatchResult, Call, Coordinate, CoordinationResult, Deadline, ErrorCode, Event, Frame,
    Learn, Message, MessageKind, Welcome, DEFAULT_MAX_FRAME_BYTES,
};
use qnllm_router::{Answer, ModelState};
use tokio::sync::{mpsc, oneshot};

use crate::connection::{spawn_writer, Closer, Elapsed, FrameReader, FrameSender, ReadError};
use crate::convert;
use crate::endpoint::Endpoint;
use crate::peer::{
    lock, Greeted, Handshake, HandshakeError, Progress, Refused, Reply, Requests, HANDSHAKE_TIMEOUT,
};

/// A reply of another kind than the request asks for.
fn unexpected(got: &Message, wanted: MessageKind) -> ClientError {
    ClientError::Unexpected(format!("{} instead of {wanted}", got.kind()))
}

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

/// What waits on a client's connection: a request's reply (`None` when it came after the
/// request's deadline), or a subscription's events.
type Table = Requests<oneshot::Sender<Option<Frame>>, mpsc::Sender<Event>>;

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
    pending: Arc<Mutex<Table>>,
    welcome: Welcome,
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
        let (handshake, hello) = Handshake::client(name, token, Instant::now(), HANDSHAKE_TIMEOUT);
        sender.send(&hello, 0, Deadline::NONE).await;
        let welcome = match greet(&mut reader, &sender, handshake).await {
            Ok(greeted) => greeted.welcome,
            Err(Greeting::Closed(reason)) => return Err(ClientError::Closed(reason)),
            Err(Greeting::Failed(HandshakeError::Timeout { waited, .. })) => {
                return Err(ClientError::Timeout(waited))
            }
            Err(Greeting::Failed(HandshakeError::Refused { code, message })) => {
                return Err(ClientError::Remote { code, message })
            }
            Err(Greeting::Failed(other)) => return Err(ClientError::Unexpected(other.to_string())),
        };
        let pending = Arc::new(Mutex::new(Table::default()));
        tokio::spawn(read_replies(reader, pending.clone(), sender.closer()));
        Ok(Client {
            sender,
            pending,
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
        let (tx, reply) = oneshot::channel();
        let id = lock(&self.pending)
            .start(Instant::now(), timeout, tx)
            .map_err(|refused| self.refused(refused))?;
        // Forget the request however this future ends: answered, timed out or dropped.
        let _forget = Forget {
            pending: &self.pending,
            id,
        };
        let exchange = async {
            if !self
                .sender
                .send(message, id, Deadline::from_remaining(deadline))
                .await
            {
                return Err(self.closed());
            }
            match reply.await {
                Ok(Some(frame)) => Ok(frame),
                // The answer came after `timeout`, just before the timer said so.
                Ok(None) => Err(ClientError::Timeout(timeout)),
                Err(_) => Err(self.closed()),
            }
        };
        let frame = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
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
            other => Err(unexpected(&other, MessageKind::Result)),
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
            other => Err(unexpected(&other, MessageKind::BatchResult)),
        }
    }

    /// Teaches `label` for `encoding` to the hub's student replicas, as an update to the
    /// model at `base_version`; the model's state after it.
    ///
    /// # Errors
    ///
    /// As [`Client::request`]; `VersionConflict` when the student is at another version,
    /// `InvalidInput` for a bad encoding or label.
    pub async fn learn(
        &self,
        encoding: &[f32],
        label: u32,
        base_version: u64,
        timeout: Duration,
    ) -> Result<ModelState, ClientError> {
        let learn = Learn {
            label,
            base_version,
            encoding: encoding.to_vec().into(),
        };
        match self.request(&Message::Learn(learn), timeout).await? {
            Message::Learned(learned) => Ok(ModelState {
                version: learned.model_version,
                digest: Digest(learned.model_digest),
            }),
            other => Err(unexpected(&other, MessageKind::Learned)),
        }
    }

    /// Asks `teachers` of the hub's teachers (0: all) for their label of `encoding`; with
    /// `learn`, the student learns the consensus.
    ///
    /// # Errors
    ///
    /// As [`Client::request`]; `NoEngineAvailable` when the hub has no teachers.
    pub async fn coordinate(
        &self,
        encoding: &[f32],
        teachers: u8,
        learn: bool,
        timeout: Duration,
    ) -> Result<CoordinationResult, ClientError> {
        let coordinate = Coordinate {
            teachers,
            learn,
            encoding: encoding.to_vec().into(),
        };
        match self
            .request(&Message::Coordinate(coordinate), timeout)
            .await?
        {
            Message::CoordinationResult(result) => Ok(result),
            other => Err(unexpected(&other, MessageKind::CoordinationResult)),
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
            other => Err(unexpected(&other, MessageKind::Reply)),
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
        let (tx, mut events) = mpsc::channel(SUBSCRIPTION_EVENTS);
        let id = lock(&self.pending)
            .open_stream(tx)
            .map_err(|refused| self.refused(refused))?;
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
                None => Err(self.closed()),
            }
        };
        match tokio::time::timeout(timeout, confirmed).await {
            Ok(Ok(())) => Ok(Subscription { events }),
            Ok(Err(e)) => {
                lock(&self.pending).forget(id);
                Err(e)
            }
            Err(_) => {
                lock(&self.pending).forget(id);
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
            other => Err(unexpected(&other, MessageKind::Metrics)),
        }
    }
}

impl Client {
    fn refused(&self, refused: Refused) -> ClientError {
        match refused {
            Refused::Closed(reason) => ClientError::Closed(reason),
            Refused::Draining => ClientError::Closed("draining".into()),
        }
    }

    fn closed(&self) -> ClientError {
        ClientError::Closed(
            lock(&self.pending)
                .closed()
                .map(str::to_string)
                .unwrap_or_default(),
        )
    }
}

/// Removes a request from the table when its caller stops waiting.
struct Forget<'a> {
    pending: &'a Mutex<Table>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).forget(self.id);
    }
}

/// Why a handshake did not open the connection.
#[derive(Debug)]
pub(crate) enum Greeting {
    /// The connection closed or broke first: why.
    Closed(String),
    /// The handshake failed.
    Failed(HandshakeError),
}

/// Drives `handshake` (its hello already sent) over a connection: reads the hub's answers
/// within the handshake's deadlines and sends what it asks. Shared with the worker side.
pub(crate) async fn greet(
    reader: &mut FrameReader,
    sender: &FrameSender,
    mut handshake: Handshake,
) -> Result<Greeted, Greeting> {
    loop {
        let wait = handshake
            .deadline()
            .saturating_duration_since(Instant::now());
        let frame = match reader.read_frame_within(wait).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => {
                return Err(Greeting::Closed(
                    "closed by the hub before the welcome".into(),
                ))
            }
            Ok(Err(e)) => return Err(Greeting::Closed(e.to_string())),
            Err(Elapsed) => {
                // The timer is the authority: at or past the deadline, whatever the clock says.
                let at = Instant::now().max(handshake.deadline());
                match handshake.handle_timeout(at) {
                    Some(late) => return Err(Greeting::Failed(late)),
                    None => continue,
                }
            }
        };
        match handshake.handle_frame(Instant::now(), &frame) {
            Ok(Progress::Done(greeted)) => return Ok(greeted),
            Ok(Progress::Send(message)) => {
                if !sender.send(&message, 0, Deadline::NONE).await {
                    return Err(Greeting::Closed("closed during the handshake".into()));
                }
            }
            Err(e) => return Err(Greeting::Failed(e)),
        }
    }
}

async fn read_replies(mut reader: FrameReader, pending: Arc<Mutex<Table>>, closer: Closer) {
    let reason = loop {
        let frame = match reader.read_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "closed by the hub".to_string(),
            Err(ReadError::Protocol(e)) => break e.to_string(),
            Err(e) => break e.to_string(),
        };
        let id = frame.header.request_id;
        if id == 0 {
            // Not a reply: the hub speaks to the connection.
            match frame.message() {
                Ok(Message::Error(e)) => break format!("{}: {}", e.code, e.message),
                Ok(Message::Goodbye(goodbye)) => {
                    // The hub is stopping: send nothing more and close our side, so the hub
                    // knows it has read every request; the replies to those still come (a
                    // result or `ShuttingDown` each).
                    lock(&pending).refuse(|| format!("the hub said goodbye: {}", goodbye.reason));
                    closer.close();
                }
                _ => {}
            }
            continue;
        }
        let mut table = lock(&pending);
        match table.reply(Instant::now(), id) {
            Reply::Answer(waiter) => {
                drop(table);
                let _ = waiter.send(Some(frame));
            }
            Reply::Late(waiter) => {
                drop(table);
                let _ = waiter.send(None);
            }
            Reply::Stream(subscription) => {
                let subscription = subscription.clone();
                drop(table);
                let event = match frame.message() {
                    Ok(Message::Event(event)) => event,
                    Ok(Message::Error(e)) => Event {
                        topic: "error".into(),
                        data: serde_json::json!({ "code": e.code.as_u16(), "message": e.message }),
                    },
                    _ => continue,
                };
                if subscription.try_send(event).is_err() && subscription.is_closed() {
                    lock(&pending).forget(id);
                }
            }
            // An answer nobody waits for any more (timed out, dropped).
            Reply::Unmatched { .. } => {}
        }
    };
    // Dropping every waiter wakes it with `Closed`, and ends every subscription.
    lock(&pending).close(|| reason);
}
