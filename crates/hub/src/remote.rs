//! `RemoteBackend`: a worker's engine as a router backend. It sends frames on the worker's
//! connection and matches replies by request id; when the worker goes, every request it
//! held fails at once with `Gone`, so the router can fail over and nothing hangs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use qnllm_engine::Digest;
use qnllm_protocol::{
    encode_batch_frame, encode_frame, encode_reason_frame, Deadline, ErrorCode, Frame, Learn,
    Message, MessageKind, Register,
};
use qnllm_router::{Answer, Backend, BackendError, BackendFuture, EngineInfo, ModelState};
use tokio::sync::oneshot;

use crate::connection::FrameSender;
use crate::convert;
use crate::peer::{self, Refused, Reply, Requests};

/// Requests waiting for a reply from one worker: the reply, or `None` when it came after
/// the request's deadline.
type Pending = Requests<oneshot::Sender<Option<Frame>>>;

/// One worker's engine.
#[derive(Debug)]
pub(crate) struct RemoteBackend {
    pub(crate) id: u64,
    name: String,
    /// Requests the worker takes at once, as it registered (0: no limit given).
    max_in_flight: u32,
    /// Updated when the engine learns, so the router's view of its model stays current.
    info: Mutex<EngineInfo>,
    /// The model's version and digest, as `info` has them, read by the router on every
    /// request without a lock.
    state: ArcSwap<ModelState>,
    sender: FrameSender,
    pending: Mutex<Pending>,
    /// Requests sent on this engine and not yet given up or answered, whoever sent them
    /// (the router, the coordinator): the router reads it on every request, without a lock.
    holding: AtomicU64,
    last_heard: Mutex<Instant>,
    pub(crate) served: AtomicU64,
}

impl RemoteBackend {
    /// The engine a `register` describes.
    ///
    /// # Errors
    ///
    /// What is wrong with the registration (a model digest that is not 64 hex digits, no
    /// labels, no inputs): such a worker is refused, never given an all-zero digest.
    pub(crate) fn new(
        id: u64,
        name: String,
        register: &Register,
        sender: FrameSender,
    ) -> Result<RemoteBackend, String> {
        let model_digest = Digest::from_hex(&register.model_digest).ok_or_else(|| {
            format!(
                "model_digest {:?} is not 64 hex digits",
                register.model_digest
            )
        })?;
        if register.labels == 0 || register.input_size == 0 {
            return Err(format!(
                "an engine needs inputs and labels (input_size {}, labels {})",
                register.input_size, register.labels
            ));
        }
        Ok(RemoteBackend {
            id,
            name: name.clone(),
            max_in_flight: register.max_in_flight,
            state: ArcSwap::from_pointee(ModelState {
                version: register.model_version,
                digest: model_digest,
            }),
            info: Mutex::new(EngineInfo {
                name,
                kind: "remote",
                input_size: register.input_size,
                labels: register.labels,
                model_version: register.model_version,
                model_digest,
            }),
            sender,
            pending: Mutex::new(Pending::default()),
            holding: AtomicU64::new(0),
            last_heard: Mutex::new(Instant::now()),
            served: AtomicU64::new(0),
        })
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        peer::lock(&self.pending)
    }

    /// Records a sign of life (any frame, heartbeats included).
    pub(crate) fn heard(&self) {
        *self
            .last_heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// Time since the worker last sent anything.
    pub(crate) fn silence(&self) -> Duration {
        self.last_heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }

    /// Queues a message that expects no reply if the queue has room now; never waits.
    pub(crate) fn try_notify(&self, message: &Message) -> bool {
        self.sender.try_send(message, 0, Deadline::NONE)
    }

    /// Sends this engine no new requests (each is refused with `Gone`, before it is sent,
    /// so the router tries elsewhere); what it holds may finish.
    pub(crate) fn drain(&self) {
        self.pending().drain();
    }

    /// Draining and holding no request: nothing more will be sent to it.
    pub(crate) fn drained(&self) -> bool {
        self.pending().drained()
    }

    /// Requests in its table of those sent and not yet answered, for listings.
    pub(crate) fn pending_count(&self) -> usize {
        self.pending().in_flight()
    }

    /// Hands a reply to the request waiting for it; replies to forgotten requests (timed
    /// out, cancelled) and to ids never sent are dropped.
    pub(crate) fn complete(&self, frame: Frame) {
        let id = frame.header.request_id;
        let mut pending = self.pending();
        let reply = pending.reply(Instant::now(), id);
        match reply {
            Reply::Answer(waiter) => {
                drop(pending);
                // Before the waiter has it: its caller may be dropped before it reads it.
                self.take_update(&frame);
                let _ = waiter.send(Some(frame));
            }
            Reply::Late(waiter) => {
                drop(pending);
                self.take_update(&frame);
                let _ = waiter.send(None);
            }
            Reply::Unmatched { never_sent: true } => {
                tracing::debug!(engine = %self.name, request = id, "reply to a request never sent");
            }
            Reply::Unmatched { never_sent: false } => {
                drop(pending);
                self.take_update(&frame);
            }
            Reply::Stream(()) => {}
        }
    }

    /// A `learned` says where the worker's model is now, whether or not anybody still waits
    /// for it: a `learn` is never taken back, so an update the coordinator gave up on, or
    /// whose caller left, has been applied. Without this the hub would see the worker
    /// behind for good, and it could neither be routed to nor caught up. Versions only move
    /// on.
    fn take_update(&self, frame: &Frame) {
        if frame.header.kind != MessageKind::Learned as u8 {
            return;
        }
        if let Ok(Message::Learned(learned)) = frame.message() {
            let state = ModelState {
                version: learned.model_version,
                digest: Digest(learned.model_digest),
            };
            if state.version > self.state.load().version {
                self.set_state(state);
            }
        }
    }

    /// The model the worker has after an update.
    fn set_state(&self, state: ModelState) {
        let mut info = self
            .info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        info.model_version = state.version;
        info.model_digest = state.digest;
        self.state.store(Arc::new(state));
    }

    /// Fails every waiting request with `Gone` and refuses new ones.
    pub(crate) fn close(&self, reason: &str) -> usize {
        self.pending().close(|| reason.to_string())
    }

    fn gone(&self) -> BackendError {
        let reason = self
            .pending()
            .closed()
            .unwrap_or("connection closed")
            .to_string();
        BackendError::Gone {
            engine: self.name.clone(),
            reason,
        }
    }

    fn timeout(&self, budget: Duration) -> BackendError {
        BackendError::Timeout {
            engine: self.name.clone(),
            budget,
        }
    }

    /// Sends the frame `encode` writes for a request id and deadline, and waits for its
    /// reply within `budget`; `give_up` says what the worker is told if no reply is awaited
    /// any more.
    async fn call(
        &self,
        encode: impl FnOnce(u64, Deadline, &mut BytesMut),
        budget: Duration,
        give_up: GiveUp,
    ) -> Result<Frame, BackendError> {
        let (tx, reply) = oneshot::channel();
        let started = self.pending().start(Instant::now(), budget, tx);
        let id = started.map_err(|refused| BackendError::Gone {
            engine: self.name.clone(),
            reason: match refused {
                Refused::Closed(reason) => reason,
                Refused::Draining => "draining".into(),
            },
        })?;
        // Forget the request however this future ends: answered, timed out or dropped (the
        // hub's alarm at the client's deadline, a hedge that lost).
        self.holding.fetch_add(1, Ordering::Relaxed);
        let _forget = Forget {
            engine: self,
            id,
            give_up,
        };
        let exchange = async {
            let mut frame = BytesMut::new();
            encode(id, Deadline::from_remaining(budget), &mut frame);
            if !self.sender.send_encoded(frame).await {
                return Err(self.gone());
            }
            match reply.await {
                Ok(Some(frame)) => Ok(frame),
                // The reply came after the deadline, just before the timer said so.
                Ok(None) => Err(self.timeout(budget)),
                Err(_) => Err(self.gone()),
            }
        };
        tokio::time::timeout(budget, exchange)
            .await
            .unwrap_or_else(|_| Err(self.timeout(budget)))
    }

    /// The answer a result carries, named as the hub names this engine (what a worker
    /// writes in `engine` may be empty, or a name another engine also has).
    fn failure(&self, frame: &Frame) -> BackendError {
        let engine = self.name.clone();
        match frame.message() {
            Ok(Message::Error(error)) if error.code == ErrorCode::InvalidInput => {
                BackendError::InvalidInput(error.message)
            }
            // The worker's engine failed, and the worker's message says so in its own
            // words ("engine NAME failed: REASON"): the reason goes on under the hub's name
            // for the engine, so a client reads the engine's name once.
            Ok(Message::Error(error)) if error.code == ErrorCode::EngineFailed => {
                BackendError::Failed {
                    engine,
                    reason: engine_reason(&error.message).to_string(),
                }
            }
            Ok(Message::Error(error)) => BackendError::Failed {
                engine,
                reason: format!("{}: {}", error.code, error.message),
            },
            Ok(other) => BackendError::Failed {
                engine,
                reason: format!("unexpected {} in reply", other.kind()),
            },
            Err(e) => BackendError::Failed {
                engine,
                reason: e.to_string(),
            },
        }
    }
}

/// What a worker is told of a request whose reply nobody awaits any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GiveUp {
    /// `cancel`: a `reason` or `batch` that nobody waits for is work thrown away.
    Cancel,
    /// Nothing: a `learn` is not cancellable. Rust and Python workers apply it as they read
    /// it, and an update applied by one replica and skipped by another would split the
    /// student.
    Forget,
}

/// Removes a request from the pending map when its caller stops waiting, and cancels it at
/// the worker if no answer came and it is cancellable.
struct Forget<'a> {
    engine: &'a RemoteBackend,
    id: u64,
    give_up: GiveUp,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.engine.holding.fetch_sub(1, Ordering::Relaxed);
        // A request already answered needs no cancel. The cancel is best effort, and never a
        // wait: a stalled worker's full queue must not hold the caller past its deadline.
        let unanswered = self.engine.pending().forget(self.id);
        if unanswered && self.give_up == GiveUp::Cancel {
            let _ = self
                .engine
                .sender
                .try_send(&Message::Cancel, self.id, Deadline::NONE);
        }
    }
}

impl Backend for RemoteBackend {
    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> BackendFuture<'a, Result<ModelState, BackendError>> {
        Box::pin(async move {
            let learn = Learn {
                label,
                base_version,
                encoding: encoding.to_vec().into(),
            };
            let message = Message::Learn(learn);
            let frame = self
                .call(
                    |id, deadline, out| encode_frame(&message, id, deadline, out),
                    budget,
                    GiveUp::Forget,
                )
                .await?;
            match frame.message() {
                // `complete` has set the engine's model from it already.
                Ok(Message::Learned(learned)) => Ok(ModelState {
                    version: learned.model_version,
                    digest: Digest(learned.model_digest),
                }),
                _ => Err(self.failure(&frame)),
            }
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "remote"
    }

    fn model_digest(&self) -> Digest {
        self.state.load().digest
    }

    fn model_state(&self) -> ModelState {
        **self.state.load()
    }

    fn max_in_flight(&self) -> Option<u32> {
        (self.max_in_flight > 0).then_some(self.max_in_flight)
    }

    fn in_flight(&self) -> Option<u64> {
        Some(self.holding.load(Ordering::Relaxed))
    }

    fn describe(&self) -> EngineInfo {
        self.info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        Box::pin(async move {
            // Encoded straight from the caller's slice: no copy into a message first.
            let frame = self
                .call(
                    |id, deadline, out| encode_reason_frame(encoding, id, deadline, out),
                    budget,
                    GiveUp::Cancel,
                )
                .await?;
            match frame.message() {
                Ok(Message::Result(body)) => {
                    self.served.fetch_add(1, Ordering::Relaxed);
                    Ok(convert::answer(body))
                }
                _ => Err(self.failure(&frame)),
            }
        })
    }

    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        Box::pin(async move {
            let invalid = || {
                BackendError::InvalidInput(format!(
                    "{} values do not split into encodings of {dim}",
                    values.len()
                ))
            };
            let dim = u32::try_from(dim)
                .ok()
                .filter(|d| *d > 0 && values.len().is_multiple_of(*d as usize))
                .ok_or_else(invalid)?;
            let frame = self
                .call(
                    |id, deadline, out| {
                        encode_batch_frame(dim, values, id, deadline, out);
                    },
                    budget,
                    GiveUp::Cancel,
                )
                .await?;
            match frame.message() {
                // A short (or long) reply would shift answers against their inputs.
                Ok(Message::BatchResult(body))
                    if body.results.len() as u64 * u64::from(dim) != values.len() as u64 =>
                {
                    Err(BackendError::BadReply {
                        engine: self.name.clone(),
                        reason: format!(
                            "batch of {} gave {} results",
                            values.len() / dim as usize,
                            body.results.len()
                        ),
                    })
                }
                Ok(Message::BatchResult(body)) => {
                    self.served
                        .fetch_add(body.results.len() as u64, Ordering::Relaxed);
                    Ok(body.results.into_iter().map(convert::answer).collect())
                }
                _ => Err(self.failure(&frame)),
            }
        })
    }
}

/// Shared handle type.
pub(crate) type Remote = Arc<RemoteBackend>;

/// The reason in a worker's `EngineFailed` message, without the "engine NAME failed: "
/// its own backend put before it (a worker of another make may not; its message is then
/// the reason as it is).
fn engine_reason(message: &str) -> &str {
    message
        .strip_prefix("engine ")
        .and_then(|rest| rest.split_once(" failed: "))
        .map_or(message, |(_, reason)| reason)
}
