//! The worker on NATS: serves one engine on its own subject and its lineage's queue-group
//! subject, announces itself with heartbeats, follows the update log in order, and leaves
//! cleanly (announce `leaving`, finish in-flight requests) when asked to stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use qnllm_protocol::{
    encode_frame, BatchResult, Deadline, ErrorCode, Frame, Learned, Message, ModelInfo, WireError,
    DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use qnllm_router::{BackendError, LocalBackend, ModelState};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::announce::Announce;
use crate::error::NatsError;
use crate::frame::decode_one;
use crate::log::{Fetched, LearnLog, Snapshot};
use crate::subject;
use qnllm_hub::convert::result_body;

/// How a NATS worker presents itself and behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Name in results and metrics; its subject token is the engine id, unique in the
    /// cluster.
    pub name: String,
    /// Engine kind announced (`spiking`, `fixed`).
    pub kind: String,
    /// Requests handled at once; more wait in the subscription (back-pressure).
    pub max_in_flight: u32,
    /// Time between announcements. Hubs forget a worker silent for three of them.
    pub heartbeat: Duration,
    /// Follow the lineage's update log (learn in the cluster's one order).
    pub follow_log: bool,
    /// Copies of the update log, when this worker is the one to create it.
    pub log_replicas: usize,
    /// Time in-flight requests get to finish when stopping.
    pub grace: Duration,
    /// Offer a snapshot of the model to the lineage's snapshot stream after every log entry
    /// whose sequence is a multiple of this; 0: never. A worker starts from the newest
    /// snapshot whatever this says.
    pub snapshot_every: u64,
    /// Trim the update log after storing a snapshot at entry `n`: entries below
    /// `n − margin` are purged, so the log holds about `snapshot_every + margin` entries. A
    /// replica less than `margin` entries behind still catches up from the log (and keeps
    /// every entry's state for the hubs' `applied` questions); one further behind loads the
    /// snapshot. `None`: keep every entry.
    pub trim_margin: Option<u64>,
}

impl WorkerConfig {
    /// Defaults for `name`: 64 in flight, heartbeat 1 s, follow the log (one copy), 5 s
    /// grace, a snapshot every 1 000 updates, and the log trimmed to 1 000 entries before
    /// the newest snapshot.
    pub fn new(name: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            kind: "spiking".into(),
            max_in_flight: 64,
            heartbeat: Duration::from_secs(1),
            follow_log: true,
            log_replicas: 1,
            grace: Duration::from_secs(5),
            snapshot_every: 1_000,
            trim_margin: Some(DEFAULT_TRIM_MARGIN),
        }
    }
}

/// Entries kept below the newest snapshot when trimming: as many as a snapshot interval,
/// so the older of the two kept snapshots can still be followed from the log.
pub const DEFAULT_TRIM_MARGIN: u64 = 1_000;

/// States reached by applying log entries, remembered so a hub can ask for the state after
/// exactly its entry, even when later entries were applied since.
const STATES_KEPT: usize = 10_000;

/// What the worker's tasks share.
struct Shared {
    client: async_nats::Client,
    config: WorkerConfig,
    id: String,
    /// This process's run (see [`Announce::run`]).
    run: u64,
    lineage: String,
    engine: LocalBackend,
    /// Outcome of each applied log entry, by sequence.
    states: Mutex<BTreeMap<u64, Result<ModelState, String>>>,
    /// The last log sequence applied.
    applied: watch::Sender<u64>,
    /// Tells the log follower that an entry it has not applied exists: a hub asks for the
    /// state after an entry only once its append was acknowledged, which can be after the
    /// follower, woken by the entry's publication, found the log one short.
    behind: tokio::sync::Notify,
    /// The newest snapshot known stored: loaded at start, or offered and acknowledged.
    snapshot: AtomicU64,
    /// Log entries this run applied (not counting those a loaded snapshot held).
    replayed: AtomicU64,
}

impl Shared {
    fn announcement(&self, leaving: bool) -> Announce {
        let info = self.engine.info();
        Announce {
            id: self.id.clone(),
            name: self.config.name.clone(),
            kind: self.config.kind.clone(),
            model_digest: info.digest.to_hex(),
            model_version: info.version,
            lineage: self.lineage.clone(),
            input_size: info.params.inputs,
            labels: info.params.labels,
            max_in_flight: self.config.max_in_flight,
            protocol: PROTOCOL_VERSION,
            subject: subject::engine(&self.id),
            leaving,
            run: self.run,
            snapshot: self.snapshot.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
        }
    }

    async fn announce(&self, leaving: bool) {
        let body = match serde_json::to_vec(&self.announcement(leaving)) {
            Ok(body) => body,
            Err(e) => return tracing::error!(error = %e, "cannot encode the announcement"),
        };
        // While disconnected the client buffers; a lost heartbeat is replaced by the next.
        if let Err(e) = self.client.publish(subject::ANNOUNCE, body.into()).await {
            tracing::debug!(error = %e, "announcement not sent");
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Result<ModelState, String>>> {
        // Single inserts and removals: consistent whatever panicked.
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves `engine` on the cluster `client` is connected to until `shutdown` is cancelled;
/// then announces it is leaving, stops taking requests, and lets those in flight finish
/// within the grace period.
///
/// # Errors
///
/// [`NatsError::Subscribe`] when the subscriptions cannot be made.
pub async fn run(
    client: async_nats::Client,
    config: WorkerConfig,
    engine: LocalBackend,
    shutdown: CancellationToken,
) -> Result<(), NatsError> {
    let info = engine.info();
    let id = subject::token(&config.name);
    let lineage = info.digest.short();
    let subscribe_error = |subject: &str, e: async_nats::SubscribeError| NatsError::Subscribe {
        subject: subject.to_string(),
        reason: e.to_string(),
    };
    let own_subject = subject::engine(&id);
    let any_subject = subject::model(&lineage);
    let applied_subject = subject::applied(&id);
    let mut own = client
        .subscribe(own_subject.clone())
        .await
        .map_err(|e| subscribe_error(&own_subject, e))?;
    let mut any = client
        .queue_subscribe(any_subject.clone(), subject::QUEUE_GROUP.to_string())
        .await
        .map_err(|e| subscribe_error(&any_subject, e))?;
    let mut applied = client
        .subscribe(applied_subject.clone())
        .await
        .map_err(|e| subscribe_error(&applied_subject, e))?;
    let mut discover = client
        .subscribe(subject::DISCOVER)
        .await
        .map_err(|e| subscribe_error(subject::DISCOVER, e))?;
    // Subscriptions are in place before anyone hears of us.
    let _ = client.flush().await;
    let shared = Arc::new(Shared {
        client: client.clone(),
        id,
        run: fastrand::u64(1..),
        lineage,
        engine,
        states: Mutex::new(BTreeMap::new()),
        applied: watch::channel(0).0,
        behind: tokio::sync::Notify::new(),
        snapshot: AtomicU64::new(0),
        replayed: AtomicU64::new(0),
        config,
    });
    tracing::info!(engine = %shared.config.name, subject = %own_subject, lineage = %shared.lineage, "serving on NATS");
    shared.announce(false).await;

    let stop = CancellationToken::new();
    let _stop_follower = stop.clone().drop_guard();
    if shared.config.follow_log {
        tokio::spawn(follow_log(shared.clone(), stop.clone()));
    }
    let requests = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(shared.config.max_in_flight.max(1) as usize));
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat);
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = heartbeat.tick() => { shared.announce(false).await; continue; }
            Some(_) = discover.next() => { shared.announce(false).await; continue; }
            Some(m) = applied.next() => {
                requests.spawn(answer_applied(shared.clone(), m));
                continue;
            }
            Some(m) = own.next() => m,
            Some(m) = any.next() => m,
            else => break,
        };
        let arrived = Instant::now();
        let Some(reply) = message.reply else {
            continue; // nobody to answer: a publish, not a request
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let shared = shared.clone();
        requests.spawn(async move {
            let answer = serve(&shared, &message.payload, arrived).await;
            if let Err(e) = shared.client.publish(reply, answer).await {
                tracing::debug!(error = %e, "reply not sent");
            }
            drop(permit);
        });
    }
    tracing::info!(engine = %shared.config.name, in_flight = requests.len(), "leaving NATS");
    let _ = own.unsubscribe().await;
    let _ = any.unsubscribe().await;
    shared.announce(true).await;
    requests.close();
    if tokio::time::timeout(shared.config.grace, requests.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            requests = requests.len(),
            "grace period over; cutting what is in flight"
        );
    }
    let _ = client.flush().await;
    Ok(())
}

fn frame_bytes(message: &Message, id: u64) -> Bytes {
    let mut out = BytesMut::new();
    encode_frame(message, id, Deadline::NONE, &mut out);
    out.freeze()
}

fn error_frame(code: ErrorCode, message: impl Into<String>, id: u64) -> Bytes {
    frame_bytes(&Message::Error(WireError::new(code, message)), id)
}

fn backend_error_frame(err: &BackendError, id: u64) -> Bytes {
    let code = match err {
        BackendError::InvalidInput(_) => ErrorCode::InvalidInput,
        BackendError::VersionConflict { .. } => ErrorCode::VersionConflict,
        _ => ErrorCode::EngineFailed,
    };
    error_frame(code, err.to_string(), id)
}

/// Answers one request frame with one reply frame.
async fn serve(shared: &Shared, payload: &Bytes, arrived: Instant) -> Bytes {
    let frame: Frame = match decode_one(payload, DEFAULT_MAX_FRAME_BYTES) {
        Ok(frame) => frame,
        Err(crate::frame::FrameOfOne::Protocol(e)) => {
            return error_frame(e.code(), e.to_string(), 0)
        }
        Err(e) => return error_frame(ErrorCode::TruncatedBody, e.to_string(), 0),
    };
    let id = frame.header.request_id;
    if frame
        .header
        .deadline
        .remaining()
        .is_some_and(|budget| arrived.elapsed() >= budget)
    {
        return error_frame(
            ErrorCode::DeadlineExceeded,
            "the deadline passed while the request waited for this engine",
            id,
        );
    }
    let message = match frame.message() {
        Ok(message) => message,
        Err(e) => return error_frame(e.code(), e.to_string(), id),
    };
    match message {
        Message::Reason(encoding) => match shared.engine.reason_now(encoding.as_slice()) {
            Ok(answer) => frame_bytes(&Message::Result(result_body(&answer)), id),
            Err(e) => backend_error_frame(&e, id),
        },
        Message::Batch(batch) => {
            let engine = shared.engine.clone();
            // A batch can take milliseconds: off the async threads.
            let job = move || engine.reason_batch_now(batch.values(), batch.dim() as usize);
            match tokio::task::spawn_blocking(job).await {
                Ok(Ok(answers)) => frame_bytes(
                    &Message::BatchResult(BatchResult {
                        results: answers.iter().map(result_body).collect(),
                    }),
                    id,
                ),
                Ok(Err(e)) => backend_error_frame(&e, id),
                Err(e) => error_frame(ErrorCode::Internal, e.to_string(), id),
            }
        }
        Message::Ping => frame_bytes(&Message::Pong, id),
        Message::ModelQuery => {
            let info = shared.engine.info();
            let body = ModelInfo {
                name: shared.config.name.clone(),
                input_size: info.params.inputs,
                hidden: info.params.hidden,
                steps: info.params.steps,
                labels: info.params.labels,
                model_version: info.version,
                model_digest: info.digest.to_hex(),
            };
            frame_bytes(&Message::ModelInfo(body), id)
        }
        Message::Learn(_) => error_frame(
            ErrorCode::UnexpectedMessage,
            format!(
                "a NATS worker learns only from its update log ({}): an update sent to one \
                 replica would make it diverge from the others",
                subject::learn(&shared.lineage)
            ),
            id,
        ),
        other => error_frame(
            ErrorCode::UnexpectedMessage,
            format!("{} is not something a NATS worker answers", other.kind()),
            id,
        ),
    }
}

/// Answers "the state after log entry N" (payload: N as u64 LE, then the wait allowed in
/// ms as u32 LE) once entry N is applied, with a `learned` frame, or an `error` frame.
async fn answer_applied(shared: Arc<Shared>, message: async_nats::Message) {
    let Some(reply) = message.reply else { return };
    let payload = message.payload.as_ref();
    let answer = if payload.len() != 12 {
        error_frame(
            ErrorCode::MalformedBody,
            format!(
                "applied takes 12 bytes (sequence u64, wait ms u32), not {}",
                payload.len()
            ),
            0,
        )
    } else {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&payload[..8]);
        let seq = u64::from_le_bytes(seq);
        let mut wait = [0u8; 4];
        wait.copy_from_slice(&payload[8..]);
        let wait = Duration::from_millis(u64::from(u32::from_le_bytes(wait)));
        let mut applied = shared.applied.subscribe();
        if *applied.borrow() < seq {
            shared.behind.notify_one();
        }
        let reached = tokio::time::timeout(wait, applied.wait_for(|&done| done >= seq)).await;
        match reached {
            Ok(Ok(_)) => match shared.states().get(&seq) {
                Some(Ok(state)) => frame_bytes(
                    &Message::Learned(Learned {
                        model_version: state.version,
                        model_digest: state.digest.0,
                    }),
                    0,
                ),
                Some(Err(reason)) => error_frame(ErrorCode::EngineFailed, reason.clone(), 0),
                None => error_frame(
                    ErrorCode::EngineFailed,
                    format!(
                        "the state after update {seq} is not kept here: applied too long \
                         ago, or passed over by loading a later snapshot"
                    ),
                    0,
                ),
            },
            _ => error_frame(
                ErrorCode::DeadlineExceeded,
                format!(
                    "update {seq} not applied yet (at {})",
                    *shared.applied.borrow()
                ),
                0,
            ),
        }
    };
    let _ = shared.client.publish(reply, answer).await;
}

/// Loads the newest of the lineage's kept snapshots that this engine can take, that is what
/// it says it is (its model's digest is the one recorded), that is past entry `past`, and
/// from which the log can still be followed (the log holds the entry after it, or has not
/// reached it yet). Returns the log entry it holds, or `None` when there is no such
/// snapshot (the model is then unchanged).
async fn load_snapshot(shared: &Shared, log: &LearnLog, past: u64) -> Option<u64> {
    let kept = match log.snapshots(&shared.lineage).await {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the snapshots");
            return None;
        }
    };
    if kept.iter().all(|s| s.seq <= past) {
        return None;
    }
    let first = match log.bounds(&shared.lineage).await {
        Ok((first, _)) => first,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the update log's bounds");
            return None;
        }
    };
    // What to go back to if a snapshot is not what it claims.
    let Some((_, original)) = shared.engine.export_model() else {
        tracing::info!("this engine cannot load snapshots");
        return None;
    };
    for snapshot in kept.into_iter().filter(|s| s.seq > past) {
        if snapshot.seq.saturating_add(1) < first {
            tracing::warn!(
                seq = snapshot.seq,
                first,
                "snapshot passed over: the log was trimmed past it"
            );
            continue;
        }
        let refused = match shared.engine.import_model(&snapshot.model) {
            Ok(state) if state == snapshot.state => {
                shared.states().insert(snapshot.seq, Ok(state));
                shared.snapshot.fetch_max(snapshot.seq, Ordering::Relaxed);
                tracing::info!(
                    seq = snapshot.seq,
                    version = state.version,
                    "loaded a snapshot"
                );
                return Some(snapshot.seq);
            }
            Ok(state) => {
                if let Err(e) = shared.engine.import_model(&original) {
                    tracing::error!(error = %e, "cannot restore the model after a bad snapshot");
                }
                format!(
                    "its model is at version {} digest {}, the snapshot says version {} digest {}",
                    state.version,
                    state.digest.to_hex(),
                    snapshot.state.version,
                    snapshot.state.digest.to_hex()
                )
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(seq = snapshot.seq, reason = %refused, "snapshot refused");
    }
    None
}

/// Offers the model as it is after log entry `seq` to the lineage's snapshot stream, in the
/// background (the follower goes on applying entries). A replica replaying old entries
/// offers nothing when the log already reaches the next snapshot point: its snapshot would
/// be older than one taken there.
fn offer_snapshot(shared: &Arc<Shared>, log: &Arc<LearnLog>, seq: u64) {
    // Exported now, before the next entry changes the model.
    let Some((state, model)) = shared.engine.export_model() else {
        return;
    };
    let snapshot = Snapshot {
        seq,
        state,
        model: model.into(),
    };
    let (shared, log) = (shared.clone(), log.clone());
    tokio::spawn(async move {
        match log.last_entry(&shared.lineage).await {
            Ok(last) if last >= seq.saturating_add(shared.config.snapshot_every) => return,
            Ok(_) => {}
            Err(e) => return tracing::warn!(error = %e, seq, "snapshot not offered"),
        }
        match log.put_snapshot(&shared.lineage, &snapshot).await {
            Ok(()) => {
                tracing::debug!(seq, "snapshot stored");
                // Every replica whose offer was acknowledged trims: the purges are the same
                // and idempotent, and the log is trimmed even if the one that stored the
                // snapshot dies before it could.
                if let Some(margin) = shared.config.trim_margin {
                    let below = seq.saturating_sub(margin);
                    if below > 1 {
                        match log.trim(&shared.lineage, below).await {
                            Ok(purged) => tracing::debug!(below, purged, "update log trimmed"),
                            Err(e) => tracing::warn!(error = %e, "update log not trimmed"),
                        }
                    }
                }
                shared.snapshot.fetch_max(seq, Ordering::Relaxed);
                shared.announce(false).await;
            }
            Err(e) => tracing::warn!(error = %e, seq, "snapshot not stored"),
        }
    });
}

/// Applies the lineage's update log in order, from the newest snapshot or the first entry,
/// for ever: catches up whenever an update is published, whenever a hub asks for a state
/// not reached yet, or once a second (for updates missed while cut off).
async fn follow_log(shared: Arc<Shared>, stop: CancellationToken) {
    let log = Arc::new(LearnLog::new(
        shared.client.clone(),
        shared.config.log_replicas,
    ));
    let learn_subject = subject::learn(&shared.lineage);
    let mut kicks = loop {
        match shared.client.subscribe(learn_subject.clone()).await {
            Ok(kicks) => break kicks,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the update log; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let served = AtomicU64::new(0);
    let start = match load_snapshot(&shared, &log, 0).await {
        Some(seq) => seq,
        None => {
            tracing::info!("no snapshot loaded; following the update log from its first entry");
            0
        }
    };
    shared.applied.send_replace(start);
    let mut next = start + 1;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The log's first entry when it was last found trimmed past `next` and no snapshot
    // could be loaded: tried again once a tick, not on every update.
    let mut stuck: Option<u64> = None;
    loop {
        // Catch up as far as the log goes.
        loop {
            match log.fetch(&shared.lineage, next).await {
                Ok(Fetched::Trimmed { first }) => {
                    if stuck.is_some() {
                        break;
                    }
                    // Cut off (or started) while the log was trimmed past this replica:
                    // the entries it lacks are only in a snapshot now.
                    match load_snapshot(&shared, &log, next - 1).await {
                        Some(seq) => {
                            shared.applied.send_replace(seq);
                            served.fetch_add(1, Ordering::Relaxed);
                            next = seq + 1;
                        }
                        None => {
                            tracing::error!(
                                next,
                                first,
                                "the update log was trimmed past this replica and no snapshot \
                                 it can load reaches it: it cannot follow the lineage (trying \
                                 again each second)"
                            );
                            stuck = Some(first);
                            break;
                        }
                    }
                }
                Ok(Fetched::Entry(entry)) => {
                    // Counted first: an announcement at this entry's version says how many
                    // entries it took.
                    shared.replayed.fetch_add(1, Ordering::Relaxed);
                    let version = shared.engine.info().version;
                    let outcome = shared
                        .engine
                        .learn_at(&entry.encoding, entry.label, version)
                        .map_err(|e| e.to_string());
                    tracing::debug!(seq = entry.seq, ok = outcome.is_ok(), "applied update");
                    {
                        let mut states = shared.states();
                        states.insert(entry.seq, outcome);
                        while states.len() > STATES_KEPT {
                            states.pop_first();
                        }
                    }
                    shared.applied.send_replace(entry.seq);
                    served.fetch_add(1, Ordering::Relaxed);
                    let every = shared.config.snapshot_every;
                    if every > 0 && entry.seq.is_multiple_of(every) {
                        offer_snapshot(&shared, &log, entry.seq);
                    }
                    next += 1;
                }
                Ok(Fetched::NotWritten) => break,
                Err(e) => {
                    tracing::warn!(error = %e, seq = next, "cannot read the update log yet");
                    break;
                }
            }
        }
        if served.swap(0, Ordering::Relaxed) > 0 {
            // Hubs see the new version at once rather than at the next heartbeat.
            shared.announce(false).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = kicks.next() => {}
            () = shared.behind.notified() => {}
            _ = tick.tick() => stuck = None,
        }
    }
}
