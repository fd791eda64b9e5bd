//! The worker side: connect to a hub, register an engine, serve requests concurrently,
//! send heartbeats, reconnect with jittered exponential backoff, and leave cleanly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use qnllm_protocol::{
    BatchResult, Deadline, Encoding, EngineRole, EngineStatus, ErrorCode, Frame, Goodbye,
    Heartbeat, Learned, Message, MessageKind, Register, WireError, DEFAULT_MAX_FRAME_BYTES,
};
use qnllm_router::{BackendError, LocalBackend};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{greet, Greeting};
use crate::connection::{spawn_writer, FrameReader, FrameSender};
use crate::convert::result_body;
use crate::endpoint::Endpoint;
use crate::peer::{self, Handshake, HandshakeError, Received, Skip, HANDSHAKE_TIMEOUT};

/// How a worker connects and behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The hub.
    pub endpoint: Endpoint,
    /// Engine name offered to the hub.
    pub name: String,
    /// Auth token, if the hub requires one.
    pub token: Option<String>,
    /// Requests handled at once.
    pub max_in_flight: u32,
    /// Give up after this many failed connection attempts in a row; `None` retries forever.
    pub max_retries: Option<u32>,
    /// First reconnect delay; it doubles per failure up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long the reader polls for the next request before its thread sleeps; zero (the
    /// default) never polls. See `HubConfig::busy_poll_us`.
    pub busy_poll: Duration,
    /// On shutdown, the longest the worker waits for the hub to release it (goodbye once
    /// it has nothing left in flight) before it leaves anyway.
    pub drain_timeout: Duration,
    /// What the hub uses this engine for: [`EngineRole::Teacher`] registers it as one of
    /// the coordinator's teachers, out of the rotation (the default serves requests).
    pub role: EngineRole,
}

impl WorkerConfig {
    /// Defaults for `endpoint`: name `worker-PID`, 64 in flight, retry forever, 50 ms → 5 s.
    pub fn new(endpoint: Endpoint) -> WorkerConfig {
        WorkerConfig {
            endpoint,
            name: format!("worker-{}", std::process::id()),
            token: None,
            max_in_flight: 64,
            max_retries: None,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            busy_poll: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
            role: EngineRole::Engine,
        }
    }
}

/// Why a worker stopped without being asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The hub refused the worker in a way retrying cannot fix (token, version).
    #[error("the hub refused this worker: {code}: {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The hub's message.
        message: String,
    },
    /// `max_retries` connection attempts failed in a row.
    #[error("gave up after {attempts} failed attempts to reach {endpoint}: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The hub.
        endpoint: String,
        /// The last failure.
        last: String,
    },
}

/// How one session with the hub ended.
enum SessionEnd {
    /// We were asked to stop and left cleanly.
    Stopped,
    /// The hub went away after we had registered: reconnect at once.
    HubLeft(String),
}

/// Serves `engine` to the hub until `shutdown` is cancelled (then drains and leaves), or a
/// fatal refusal, or `max_retries` failures in a row.
///
/// # Errors
///
/// [`WorkerError`].
pub async fn run(
    config: WorkerConfig,
    engine: LocalBackend,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let served = Arc::new(AtomicU64::new(0));
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let delay = match session(&config, &engine, &shutdown, &served).await {
            Ok(SessionEnd::Stopped) => return Ok(()),
            Ok(SessionEnd::HubLeft(reason)) => {
                tracing::warn!(hub = %config.endpoint, %reason, "lost the hub; reconnecting");
                failures = 0;
                config.backoff_initial
            }
            Err(Failure::Fatal(err)) => return Err(err),
            Err(Failure::Retry(reason)) => {
                failures += 1;
                if config.max_retries.is_some_and(|max| failures > max) {
                    return Err(WorkerError::GaveUp {
                        attempts: failures,
                        endpoint: config.endpoint.to_string(),
                        last: reason,
                    });
                }
                let exp = config
                    .backoff_initial
                    .saturating_mul(1 << failures.min(16))
                    .min(config.backoff_max);
                tracing::warn!(hub = %config.endpoint, %reason, attempt = failures, "cannot reach the hub; retrying");
                exp
            }
        };
        // Full jitter in [delay/2, delay): workers restarted together do not reconnect in step.
        let jittered = delay.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(jittered) => {}
        }
    }
}

enum Failure {
    Fatal(WorkerError),
    Retry(String),
}

async fn session(
    config: &WorkerConfig,
    engine: &LocalBackend,
    shutdown: &CancellationToken,
    served: &Arc<AtomicU64>,
) -> Result<SessionEnd, Failure> {
    let io = config
        .endpoint
        .connect()
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let (read, write) = io.into_split();
    let (sender, writer) = spawn_writer(write);
    let mut reader = FrameReader::new(read, DEFAULT_MAX_FRAME_BYTES).busy_poll(config.busy_poll);
    let info = engine.info();
    let register = Register {
        name: config.name.clone(),
        model_digest: info.digest.to_hex(),
        model_version: info.version,
        input_size: info.params.inputs,
        labels: info.params.labels,
        max_in_flight: config.max_in_flight,
        role: config.role,
    };
    let (handshake, hello) = Handshake::worker(
        config.token.as_deref(),
        register,
        Instant::now(),
        HANDSHAKE_TIMEOUT,
    );
    sender.send(&hello, 0, Deadline::NONE).await;
    let greeted =
        greet(&mut reader, &sender, handshake)
            .await
            .map_err(|greeting| match greeting {
                Greeting::Failed(HandshakeError::Refused { code, message })
                    if matches!(
                        code,
                        ErrorCode::Unauthorized | ErrorCode::UnsupportedVersion
                    ) =>
                {
                    Failure::Fatal(WorkerError::Refused { code, message })
                }
                Greeting::Failed(failed) => Failure::Retry(failed.to_string()),
                Greeting::Closed(reason) => Failure::Retry(reason),
            })?;
    let (welcome, registered) = match greeted.registered {
        Some(registered) => (greeted.welcome, registered),
        None => {
            return Err(Failure::Retry(
                "the hub did not register this worker".into(),
            ))
        }
    };
    tracing::info!(hub = %config.endpoint, engine_id = registered.engine_id, name = %config.name, "registered");

    let requests = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1) as usize));
    let waiting = Arc::new(Semaphore::new(4 * config.max_in_flight.max(1) as usize));
    let compute_ns = Arc::new(AtomicU64::new(0));
    let queued = Arc::new(Queued::default());
    // Answers queued requests at their deadlines while the reader and the computing tasks
    // are busy with others. A thread of its own: the reader computes short work inline, and
    // a task it woke could wait behind that work on the reader's runtime thread.
    let expiry = {
        let (queued, sender) = (queued.clone(), sender.clone());
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("qnllm-deadlines".into())
            .spawn(move || expire_at_deadlines(&queued, &sender, &runtime))
            .ok()
    };
    // However the session ends, even dropped mid-way, the timer thread ends with it.
    let stop_timer = StopTimer(queued.clone());
    let work = Work {
        engine,
        compute_ns: &compute_ns,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        sender: &sender,
        requests: &requests,
        permits: &permits,
        waiting: &waiting,
        queued: &queued,
        served,
        shutdown,
    };
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(welcome.heartbeat_interval_ms.max(10)));
    let mut draining = false;
    let drain_limit = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(drain_limit);
    let end = loop {
        tokio::select! {
            () = shutdown.cancelled(), if !draining => {
                // Tell the hub to stop choosing this engine and keep serving what comes;
                // the hub says goodbye once it holds nothing for us, so nothing fails over.
                draining = true;
                drain_limit.as_mut().reset(tokio::time::Instant::now() + config.drain_timeout);
                let status = EngineStatus {
                    state: "draining".into(),
                    in_flight: requests.len() as u32,
                    served: served.load(Ordering::Relaxed),
                    model_version: engine.info().version,
                };
                sender.send(&Message::Status(status), 0, Deadline::NONE).await;
            }
            () = &mut drain_limit, if draining => {
                tracing::warn!(hub = %config.endpoint, "the hub did not release this worker in time; leaving");
                break SessionEnd::Stopped;
            }
            _ = heartbeat.tick() => {
                let beat = Heartbeat { in_flight: (requests.len()) as u32, served: served.load(Ordering::Relaxed) };
                sender.send(&Message::Heartbeat(beat), 0, Deadline::NONE).await;
            }
            read = reader.read_frame() => match read {
                Ok(Some(frame)) => {
                    if let Some(end) = serve_burst(frame, &mut reader, &work).await {
                        break end;
                    }
                }
                Ok(None) => break SessionEnd::HubLeft("connection closed".into()),
                Err(err) => break SessionEnd::HubLeft(err.to_string()),
            },
        }
    };
    let end = if shutdown.is_cancelled() {
        // Finish what is in flight, then say goodbye.
        requests.close();
        if tokio::time::timeout(config.drain_timeout, requests.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                requests = requests.len(),
                "leaving with requests unfinished"
            );
        }
        let goodbye = Message::Goodbye(Goodbye {
            reason: "worker stopped".into(),
        });
        sender.send(&goodbye, 0, Deadline::NONE).await;
        SessionEnd::Stopped
    } else {
        end
    };
    drop(stop_timer);
    drop(sender);
    // Finishing the writer also ends a reply the timer is still waiting to queue.
    writer.finish().await;
    if let Some(expiry) = expiry {
        let _ = tokio::task::spawn_blocking(move || expiry.join()).await;
    }
    Ok(end)
}

/// Requests read and not yet computed: [`Received`], shared by the reader, the tasks
/// that compute and the deadline timer ([`expire_at_deadlines`]).
#[derive(Debug, Default)]
struct Queued {
    table: Mutex<Table>,
    /// Wakes the timer when an admitted request expires sooner than any before it, or at
    /// the end of the session.
    sooner: Condvar,
}

#[derive(Debug, Default)]
struct Table {
    received: Received,
    /// The session is over: the timer ends.
    stopped: bool,
    /// When the timer thread wakes by itself next (`None`: only when told). A request that
    /// expires no sooner needs no wake-up: with one request at a time each one is the
    /// soonest, and telling the thread each time cost two context switches per request.
    wakes_at: Option<Instant>,
}

impl Queued {
    fn admit(&self, id: u64, deadline: Deadline) -> Result<(), Skip> {
        let mut table = peer::lock(&self.table);
        if !table.received.admit(Instant::now(), id, deadline)? {
            return Ok(());
        }
        // The soonest now; the timer re-reads the table whenever it has the lock, so only
        // a thread waiting past this expiry has to be woken.
        let expires = table.received.next_expiry();
        let wake = match (table.wakes_at, expires) {
            (Some(wakes), Some(expires)) => expires < wakes,
            _ => true,
        };
        if wake {
            table.wakes_at = expires;
            drop(table);
            self.sooner.notify_one();
        }
        Ok(())
    }

    fn take(&self, now: Instant, id: u64) -> Result<(), Skip> {
        peer::lock(&self.table).received.take(now, id)
    }

    fn cancel(&self, id: u64) -> bool {
        peer::lock(&self.table).received.cancel(id)
    }

    fn stop(&self) {
        peer::lock(&self.table).stopped = true;
        self.sooner.notify_one();
    }
}

/// Stops the deadline timer when dropped.
#[derive(Debug)]
struct StopTimer(Arc<Queued>);

impl Drop for StopTimer {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The deadline timer, on a thread of its own: answers each queued request
/// `DeadlineExceeded` when its deadline comes, however much work is ahead of it, until
/// [`Queued::stop`].
fn expire_at_deadlines(queued: &Queued, sender: &FrameSender, runtime: &tokio::runtime::Handle) {
    let Some(expired) = Skip::Expired.reply() else {
        return;
    };
    let mut table = peer::lock(&queued.table);
    while !table.stopped {
        let now = Instant::now();
        let ids = table.received.expire(now);
        if !ids.is_empty() {
            drop(table);
            let replies: Vec<(Message, u64)> =
                ids.into_iter().map(|id| (expired.clone(), id)).collect();
            runtime.block_on(sender.send_all(&replies));
            table = peer::lock(&queued.table);
            continue;
        }
        // With none queued, it still sleeps until the instant it was told last: the next
        // request, expiring as late or later, then needs no wake-up either.
        let next = table
            .received
            .next_expiry()
            .or(table.wakes_at.filter(|&at| at > now));
        table.wakes_at = next;
        table = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                match queued.sooner.wait_timeout(table, wait) {
                    Ok((table, _)) => table,
                    Err(poisoned) => poisoned.into_inner().0,
                }
            }
            None => queued
                .sooner
                .wait(table)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        };
    }
}

fn error_message(err: &BackendError) -> Message {
    let code = if matches!(err, BackendError::InvalidInput(_)) {
        ErrorCode::InvalidInput
    } else {
        ErrorCode::EngineFailed
    };
    Message::Error(WireError::new(code, err.to_string()))
}

/// Requests whose estimated compute is below this are answered on the task that read them:
/// handing work to another thread and back costs tens of microseconds on a busy VM.
const INLINE_NS: u64 = 50_000;

/// What serving a request needs from its session.
struct Work<'a> {
    engine: &'a LocalBackend,
    /// Recent compute time per reason, ns (a moving average).
    compute_ns: &'a Arc<AtomicU64>,
    /// Cores to split a long group over, looked up once per session (on Linux the lookup
    /// reads cgroup files).
    cores: usize,
    sender: &'a FrameSender,
    requests: &'a TaskTracker,
    permits: &'a Arc<Semaphore>,
    /// Bounds the requests waiting for a permit, so reading goes on (cancels are seen)
    /// while work waits, yet what waits stays bounded.
    waiting: &'a Arc<Semaphore>,
    queued: &'a Arc<Queued>,
    served: &'a Arc<AtomicU64>,
    shutdown: &'a CancellationToken,
}

/// Serves `first` and every frame already read behind it. Consecutive reasons are served as
/// one group: a lone one inline, on the task that read it (no hand-off to another thread
/// and back), a burst split across the cores, each part one hand-off to the blocking pool
/// and one write for all its replies. Other frames are handled in order between groups.
/// `Some` ends the session.
async fn serve_burst(
    first: Frame,
    reader: &mut FrameReader,
    work: &Work<'_>,
) -> Option<SessionEnd> {
    let mut group: Vec<(u64, Encoding)> = Vec::new();
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        let id = frame.header.request_id;
        if frame.kind == MessageKind::Reason {
            if let Ok(Message::Reason(encoding)) = frame.message() {
                match work.queued.admit(id, frame.header.deadline) {
                    Ok(()) => group.push((id, encoding)),
                    Err(skip) => {
                        if let Some(reply) = skip.reply() {
                            work.sender.send(&reply, id, Deadline::NONE).await;
                        }
                    }
                }
            } else {
                serve_group(std::mem::take(&mut group), work).await;
                if let Some(end) = handle(frame, work).await {
                    return Some(end);
                }
            }
        } else {
            serve_group(std::mem::take(&mut group), work).await;
            if let Some(end) = handle(frame, work).await {
                return Some(end);
            }
        }
        match reader.next_buffered() {
            Ok(frame) => next = frame,
            Err(err) => {
                serve_group(group, work).await;
                return Some(SessionEnd::HubLeft(err.to_string()));
            }
        }
    }
    serve_group(group, work).await;
    None
}

/// Computes one reason; keeps `compute_ns`, the moving average of the compute time, current.
/// `None` when the deadline timer has answered it already.
fn answer(
    engine: &LocalBackend,
    id: u64,
    encoding: &Encoding,
    queued: &Queued,
    served: &AtomicU64,
    compute_ns: &AtomicU64,
) -> Option<Message> {
    let started = Instant::now();
    if let Err(skip) = queued.take(started, id) {
        return skip.reply();
    }
    let outcome = engine.reason_now(encoding.as_slice());
    let took = started.elapsed().as_nanos().min(u128::from(u32::MAX)) as u64;
    let average = compute_ns.load(Ordering::Relaxed);
    // Racing updates may lose a sample: an estimate is all it is.
    compute_ns.store(average - average / 8 + took / 8, Ordering::Relaxed);
    Some(match outcome {
        Ok(answer) => {
            served.fetch_add(1, Ordering::Relaxed);
            Message::Result(result_body(&answer))
        }
        Err(err) => error_message(&err),
    })
}

/// Serves a group of reasons: see [`serve_burst`]. Waiting for permits applies
/// backpressure to the hub when `max_in_flight` are running.
async fn serve_group(mut group: Vec<(u64, Encoding)>, work: &Work<'_>) {
    if group.is_empty() {
        return;
    }
    // Work shorter than a hand-off to another thread and back is done here, on the task
    // that read it; a lone request always is.
    let estimate = group.len() as u64 * work.compute_ns.load(Ordering::Relaxed);
    if (group.len() == 1 && work.requests.is_empty()) || estimate <= INLINE_NS {
        let replies = answer_all(
            work.engine,
            &group,
            work.queued,
            work.served,
            work.compute_ns,
        );
        work.sender.send_all(&replies).await;
        return;
    }
    let most = work.permits.available_permits().max(1);
    let part = group.len().div_ceil(work.cores).clamp(1, most);
    // One part stays here, computed while the others run on the pool: one hand-off fewer.
    let here: Vec<(u64, Encoding)> = group.drain(group.len().saturating_sub(part)..).collect();
    while !group.is_empty() {
        let chunk: Vec<(u64, Encoding)> = group.drain(..part.min(group.len())).collect();
        let Ok(permit) = work
            .permits
            .clone()
            .acquire_many_owned(chunk.len() as u32)
            .await
        else {
            return;
        };
        let (engine, sender, queued, served, compute_ns) = (
            work.engine.clone(),
            work.sender.clone(),
            work.queued.clone(),
            work.served.clone(),
            work.compute_ns.clone(),
        );
        work.requests.spawn(async move {
            let ids: Vec<u64> = chunk.iter().map(|(id, _)| *id).collect();
            let job = move || answer_all(&engine, &chunk, &queued, &served, &compute_ns);
            let replies = match tokio::task::spawn_blocking(job).await {
                Ok(replies) => replies,
                Err(join) => ids
                    .into_iter()
                    .map(|id| {
                        (
                            Message::Error(WireError::new(ErrorCode::Internal, join.to_string())),
                            id,
                        )
                    })
                    .collect(),
            };
            sender.send_all(&replies).await;
            drop(permit);
        });
    }
    let replies = answer_all(
        work.engine,
        &here,
        work.queued,
        work.served,
        work.compute_ns,
    );
    work.sender.send_all(&replies).await;
}

/// Answers each request of a group, replies paired with their request ids (none for those
/// the deadline timer answered).
fn answer_all(
    engine: &LocalBackend,
    group: &[(u64, Encoding)],
    queued: &Queued,
    served: &AtomicU64,
    compute_ns: &AtomicU64,
) -> Vec<(Message, u64)> {
    group
        .iter()
        .filter_map(|(id, encoding)| {
            answer(engine, *id, encoding, queued, served, compute_ns).map(|reply| (reply, *id))
        })
        .collect()
}

/// Runs `job` on the blocking pool as a tracked request and sends its reply. The request
/// waits for a permit in its own task (the reader goes on, so a `cancel` for it is seen);
/// at most `waiting` requests wait, which applies backpressure to the hub past that.
async fn serve(
    id: u64,
    deadline: Deadline,
    job: impl FnOnce() -> Result<Message, BackendError> + Send + 'static,
    work: &Work<'_>,
) {
    if let Err(skip) = work.queued.admit(id, deadline) {
        if let Some(reply) = skip.reply() {
            work.sender.send(&reply, id, Deadline::NONE).await;
        }
        return;
    }
    let Ok(waiting) = work.waiting.clone().acquire_owned().await else {
        return;
    };
    let (sender, served, permits, queued) = (
        work.sender.clone(),
        work.served.clone(),
        work.permits.clone(),
        work.queued.clone(),
    );
    work.requests.spawn(async move {
        let Ok(permit) = permits.acquire_owned().await else {
            return;
        };
        drop(waiting);
        let reply = match queued.take(Instant::now(), id) {
            Err(skip) => skip.reply(),
            Ok(()) => Some(match tokio::task::spawn_blocking(job).await {
                Ok(Ok(reply)) => {
                    served.fetch_add(1, Ordering::Relaxed);
                    reply
                }
                Ok(Err(err)) => error_message(&err),
                Err(join) => Message::Error(WireError::new(ErrorCode::Internal, join.to_string())),
            }),
        };
        if let Some(reply) = reply {
            sender.send(&reply, id, Deadline::NONE).await;
        }
        drop(permit);
    });
}

/// Handles one frame from the hub other than a well-formed reason; `Some` ends the session.
async fn handle(frame: Frame, work: &Work<'_>) -> Option<SessionEnd> {
    let Work {
        engine,
        sender,
        queued,
        shutdown,
        ..
    } = *work;
    let id = frame.header.request_id;
    let frame_deadline = frame.header.deadline;
    let message = match frame.message() {
        Ok(message) => message,
        Err(err) => {
            sender
                .send(
                    &Message::Error(WireError::new(err.code(), err.to_string())),
                    id,
                    Deadline::NONE,
                )
                .await;
            return Some(SessionEnd::HubLeft(format!("hub sent a bad frame: {err}")));
        }
    };
    match message {
        Message::Batch(batch) => {
            let engine = engine.clone();
            let job = move || {
                let answers = engine.reason_batch_now(batch.values(), batch.dim() as usize)?;
                Ok(Message::BatchResult(BatchResult {
                    results: answers.iter().map(result_body).collect(),
                }))
            };
            serve(id, frame_deadline, job, work).await;
        }
        Message::Learn(learn) => {
            // Applied in arrival order, on this task: updates must not overtake each other.
            let reply =
                match engine.learn_at(learn.encoding.as_slice(), learn.label, learn.base_version) {
                    Ok(state) => Message::Learned(Learned {
                        model_version: state.version,
                        model_digest: state.digest.0,
                    }),
                    Err(BackendError::VersionConflict {
                        expected, actual, ..
                    }) => {
                        let message = format!(
                            "update is for model version {expected}, this engine is at {actual}"
                        );
                        Message::Error(WireError::new(ErrorCode::VersionConflict, message))
                    }
                    Err(err) => error_message(&err),
                };
            sender.send(&reply, id, Deadline::NONE).await;
        }
        Message::Ping => {
            sender.send(&Message::Pong, id, Deadline::NONE).await;
        }
        Message::Shutdown(_) => shutdown.cancel(),
        Message::Goodbye(goodbye) => {
            return Some(SessionEnd::HubLeft(format!(
                "hub said goodbye: {}",
                goodbye.reason
            )))
        }
        Message::Cancel => {
            if queued.cancel(id) {
                tracing::debug!(request = id, "cancelled before it was computed");
            }
        }
        Message::Drain(grace) => {
            // The hub is stopping: it sends no new work, only what it already holds, and
            // says goodbye when done; then this worker reconnects to its successor.
            tracing::info!(grace_ms = grace.grace_ms, "the hub is draining");
        }
        Message::Pong => {}
        Message::Broadcast(topic) => {
            tracing::debug!(topic = %topic.topic, bytes = topic.payload.len(), "broadcast received")
        }
        Message::Error(error) => {
            tracing::warn!(code = %error.code, message = %error.message, "hub reported an error")
        }
        other => {
            let message = format!("{} is not something the hub sends a worker", other.kind());
            sender
                .send(
                    &Message::Error(WireError::new(ErrorCode::UnexpectedMessage, message)),
                    id,
                    Deadline::NONE,
                )
                .await;
        }
    }
    None
}
