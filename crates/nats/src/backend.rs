//! `NatsBackend`: a worker on NATS as a router backend. Each call is one NATS request whose
//! payload is one frame and whose timeout is the try's budget; learning appends to the
//! lineage's update log and waits for this worker's state after that entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::RequestErrorKind;
use bytes::{Bytes, BytesMut};
use qnllm_engine::Digest;
use qnllm_protocol::{
    encode_batch_frame, encode_reason_frame, Deadline, ErrorCode, Frame, Message,
    DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES,
};
use qnllm_router::{
    Activity, Answer, Backend, BackendError, BackendFuture, EngineInfo, ModelState,
};

use crate::announce::Announce;
use crate::frame::decode_one;
use crate::log::LearnLog;
use crate::subject;
use qnllm_hub::convert;

/// Bytes of a batch frame besides its encodings (header, count, dim), and of a batch
/// result besides its results (header, count), rounded up.
const BATCH_OVERHEAD_BYTES: usize = HEADER_BYTES + 16;

/// Bytes of one result in a batch result, besides its per-label lists and engine name
/// (label, confidence, spikes, list length, version, two digests, compute time, name
/// length), rounded up.
const RESULT_BYTES: usize = 128;

/// One worker's engine, reached over NATS.
#[derive(Debug)]
pub struct NatsBackend {
    name: String,
    id: String,
    subject: String,
    lineage: String,
    client: async_nats::Client,
    /// What it serves, and the run (see [`Announce::run`]) that said so.
    info: Mutex<(EngineInfo, u64)>,
    log: Option<Arc<LearnLog>>,
    next_request: AtomicU64,
    /// Requests sent and not yet answered (or given up on).
    in_flight: AtomicU64,
    /// Encodings it has answered.
    served: AtomicU64,
    /// When it last announced itself or replied.
    last_heard: Mutex<Instant>,
}

/// Counts one request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicU64) -> InFlight<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl NatsBackend {
    /// The worker `announce` describes, reached through `client`; `log` (shared by the
    /// backends of one hub) lets it learn.
    pub fn new(
        client: async_nats::Client,
        announce: &Announce,
        log: Option<Arc<LearnLog>>,
    ) -> NatsBackend {
        NatsBackend {
            name: announce.name.clone(),
            id: announce.id.clone(),
            subject: announce.subject.clone(),
            lineage: announce.lineage.clone(),
            client,
            info: Mutex::new((info_of(announce), announce.run)),
            log,
            next_request: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            last_heard: Mutex::new(Instant::now()),
        }
    }

    /// The engine id (its subject token).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lineage it belongs to.
    pub fn lineage(&self) -> &str {
        &self.lineage
    }

    /// Takes what `announce` says, except a model state older than the one known from the
    /// same run (see [`merge`]).
    pub fn update(&self, announce: &Announce) {
        {
            let (info, run) = &mut *self.lock();
            *info = merge(info, *run, announce);
            *run = announce.run;
        }
        self.heard();
    }

    /// Records a sign of life (an announcement or a reply).
    fn heard(&self) {
        *self
            .last_heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (EngineInfo, u64)> {
        // Whole assignments only: consistent whatever panicked.
        self.info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn gone(&self, reason: impl Into<String>) -> BackendError {
        BackendError::Gone {
            engine: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// One request-reply on `subject` within `budget`; the reply must be one frame.
    async fn exchange(
        &self,
        subject: &str,
        payload: Bytes,
        budget: Duration,
    ) -> Result<Frame, BackendError> {
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(budget));
        let _counted = InFlight::new(&self.in_flight);
        let reply = self
            .client
            .send_request(subject.to_string(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::TimedOut => BackendError::Timeout {
                    engine: self.name.clone(),
                    budget,
                },
                RequestErrorKind::NoResponders => self.gone("no responders on its subject"),
                _ => self.gone(e.to_string()),
            })?;
        self.heard();
        decode_one(&reply.payload, DEFAULT_MAX_FRAME_BYTES).map_err(|e| BackendError::Failed {
            engine: self.name.clone(),
            reason: format!("bad reply: {e}"),
        })
    }

    async fn call(
        &self,
        encode: impl FnOnce(u64, Deadline, &mut BytesMut),
        budget: Duration,
    ) -> Result<Frame, BackendError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::new();
        encode(id, Deadline::from_remaining(budget), &mut out);
        let frame = self.exchange(&self.subject, out.freeze(), budget).await?;
        if frame.header.request_id != id {
            return Err(BackendError::Failed {
                engine: self.name.clone(),
                reason: format!("reply is for request {}, not {id}", frame.header.request_id),
            });
        }
        Ok(frame)
    }

    /// How many encodings of `dim` values one batch request may carry: as many as fit, with
    /// their answers, in the `max_payload` of the server this client is connected to now
    /// (from its `INFO`; 1 MiB unless the server is configured otherwise).
    ///
    /// # Errors
    ///
    /// [`BackendError::Failed`] naming the limit when not even one fits.
    fn encodings_per_request(&self, dim: usize) -> Result<usize, BackendError> {
        let max_payload = self.client.server_info().max_payload;
        let labels = self.lock().0.labels as usize;
        let request = dim.saturating_mul(4);
        let reply = RESULT_BYTES + 8 * labels + self.name.len();
        let fits = max_payload.saturating_sub(BATCH_OVERHEAD_BYTES) / request.max(reply).max(1);
        if fits == 0 {
            return Err(BackendError::Failed {
                engine: self.name.clone(),
                reason: format!(
                    "one encoding of {dim} values ({request} bytes) does not fit in a NATS \
                     message: the server's max_payload is {max_payload} bytes"
                ),
            });
        }
        Ok(fits)
    }

    /// One batch request of `values` (a whole number of encodings that fits one message).
    async fn batch_part(
        &self,
        values: &[f32],
        dim: u32,
        budget: Duration,
    ) -> Result<Vec<Answer>, BackendError> {
        let frame = self
            .call(
                |id, deadline, out| {
                    encode_batch_frame(dim, values, id, deadline, out);
                },
                budget,
            )
            .await?;
        match frame.message() {
            Ok(Message::BatchResult(body)) => {
                self.served
                    .fetch_add(body.results.len() as u64, Ordering::Relaxed);
                Ok(body.results.into_iter().map(convert::answer).collect())
            }
            _ => Err(self.failure(&frame)),
        }
    }

    fn failure(&self, frame: &Frame) -> BackendError {
        let engine = self.name.clone();
        match frame.message() {
            Ok(Message::Error(error)) if error.code == ErrorCode::InvalidInput => {
                BackendError::InvalidInput(error.message)
            }
            Ok(Message::Error(error)) if error.code == ErrorCode::DeadlineExceeded => {
                BackendError::Timeout {
                    engine,
                    budget: Duration::ZERO,
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

/// What `announce` says, except that within one run (`known_run`) the model state never goes
/// back: a heartbeat built before an update can arrive after that update's reply.
fn merge(known: &EngineInfo, known_run: u64, announce: &Announce) -> EngineInfo {
    let fresh = info_of(announce);
    if known_run == announce.run && fresh.model_version < known.model_version {
        EngineInfo {
            model_version: known.model_version,
            model_digest: known.model_digest,
            ..fresh
        }
    } else {
        fresh
    }
}

fn info_of(announce: &Announce) -> EngineInfo {
    EngineInfo {
        name: announce.name.clone(),
        kind: "remote",
        input_size: announce.input_size,
        labels: announce.labels,
        model_version: announce.model_version,
        model_digest: Digest::from_hex(&announce.model_digest).unwrap_or_default(),
    }
}

impl Backend for NatsBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "remote"
    }

    fn transport(&self) -> &'static str {
        "nats"
    }

    /// It learns in the order of its lineage's update log, and catches up from it by itself.
    fn follows_update_log(&self) -> bool {
        true
    }

    fn describe(&self) -> EngineInfo {
        self.lock().0.clone()
    }

    fn model_digest(&self) -> Digest {
        self.lock().0.model_digest
    }

    fn in_flight(&self) -> Option<u64> {
        Some(self.in_flight.load(Ordering::Relaxed))
    }

    /// Counted here, by this hub, as the hub counts a socket worker's: its requests in
    /// flight from this hub, the encodings it answered this hub, and the time since this
    /// hub last heard from it (a reply or an announcement).
    fn activity(&self) -> Option<Activity> {
        let silence = self
            .last_heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed();
        Some(Activity {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            last_heard_ms: u64::try_from(silence.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        Box::pin(async move {
            let frame = self
                .call(
                    |id, deadline, out| encode_reason_frame(encoding, id, deadline, out),
                    budget,
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
            let dim = u32::try_from(dim)
                .ok()
                .filter(|d| *d > 0 && values.len().is_multiple_of(*d as usize))
                .ok_or_else(|| {
                    BackendError::InvalidInput(format!(
                        "{} values do not split into encodings of {dim}",
                        values.len()
                    ))
                })?;
            let per_request = self.encodings_per_request(dim as usize)?;
            // Parts of one batch go out at once, each within the whole budget; their
            // answers are put back in input order.
            let parts = values
                .chunks(per_request * dim as usize)
                .map(|part| self.batch_part(part, dim, budget));
            let mut answers = Vec::with_capacity(values.len() / dim as usize);
            for part in futures::future::try_join_all(parts).await? {
                answers.extend(part);
            }
            Ok(answers)
        })
    }

    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> BackendFuture<'a, Result<ModelState, BackendError>> {
        Box::pin(async move {
            let Some(log) = &self.log else {
                return Err(BackendError::Failed {
                    engine: self.name.clone(),
                    reason: "this hub has no update log: learning is off".into(),
                });
            };
            let started = tokio::time::Instant::now();
            let seq = tokio::time::timeout(
                budget,
                log.append(&self.lineage, encoding, label, base_version),
            )
            .await
            .map_err(|_| BackendError::Timeout {
                engine: self.name.clone(),
                budget,
            })?
            .map_err(|e| self.gone(e.to_string()))?;
            let left = budget.saturating_sub(started.elapsed());
            let wait_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
            let mut payload = BytesMut::with_capacity(12);
            payload.extend_from_slice(&seq.to_le_bytes());
            payload.extend_from_slice(&wait_ms.to_le_bytes());
            let applied = subject::applied(&self.id);
            // A little longer than the worker waits, so its own "not yet" arrives first.
            let frame = self
                .exchange(&applied, payload.freeze(), left + Duration::from_millis(50))
                .await?;
            match frame.message() {
                Ok(Message::Learned(learned)) => {
                    let state = ModelState {
                        version: learned.model_version,
                        digest: Digest(learned.model_digest),
                    };
                    let info = &mut self.lock().0;
                    if state.version >= info.model_version {
                        info.model_version = state.version;
                        info.model_digest = state.digest;
                    }
                    Ok(state)
                }
                _ => Err(self.failure(&frame)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(run: u64, version: u64, digest: u8) -> Announce {
        Announce {
            id: "w1".into(),
            name: "w1".into(),
            kind: "spiking".into(),
            model_digest: format!("{digest:02x}").repeat(32),
            model_version: version,
            lineage: "abcd".into(),
            input_size: 768,
            labels: 10,
            max_in_flight: 64,
            protocol: 1,
            subject: "qnllm.engine.w1".into(),
            leaving: false,
            run,
            snapshot: 0,
            replayed: 0,
        }
    }

    #[test]
    fn a_late_heartbeat_does_not_take_a_replica_back_but_a_restart_does() {
        let at_two = info_of(&announce(5, 2, 0xbb));
        // The same run, a heartbeat built at version 1: still version 2.
        let late = merge(&at_two, 5, &announce(5, 1, 0xaa));
        assert_eq!(
            (late.model_version, late.model_digest),
            (2, at_two.model_digest)
        );
        // The same run, ahead: taken.
        let ahead = merge(&at_two, 5, &announce(5, 3, 0xcc));
        assert_eq!(ahead.model_version, 3);
        assert_eq!(ahead.model_digest, Digest([0xcc; 32]));
        // A new run under the same id starts over, at what it says.
        let restarted = merge(&at_two, 5, &announce(6, 0, 0x11));
        assert_eq!(restarted.model_version, 0);
        assert_eq!(restarted.model_digest, Digest([0x11; 32]));
    }
}
