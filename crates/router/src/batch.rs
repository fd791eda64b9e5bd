//! `DynamicBatcher`: coalesces concurrent single requests to one engine into batch
//! requests of up to `max_batch` encodings. At most two batches per engine are in flight;
//! requests that arrive meanwhile leave together in the next one, so batches grow with load
//! and an idle engine adds no delay. A `max_delay` of a millisecond or more also waits for
//! stragglers, as Triton's dynamic batcher does. Fewer, larger frames cost fewer syscalls and
//! wake-ups per encoding. A request whose deadline passes while it waits in the queue is
//! answered (`Timeout`) at its deadline, by its own timer, and is dropped uncomputed when
//! it is picked up.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::{
    Activity, Answer, Backend, BackendError, BackendFuture, EngineInfo, ModelState,
};

/// When to flush a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most encodings per batch.
    pub max_batch: usize,
    /// Longest wait after the first encoding of a batch.
    pub max_delay: Duration,
}

/// Shared, switchable policy: `None` sends every request on its own.
pub type SharedBatchPolicy = Arc<ArcSwapOption<BatchPolicy>>;

struct Job {
    encoding: Vec<f32>,
    /// When the caller stops waiting: its budget from the moment it queued.
    deadline: Instant,
    budget: Duration,
    reply: oneshot::Sender<Result<Answer, BackendError>>,
}

impl Job {
    /// Answers a job whose deadline passed (or whose caller left) at once, uncomputed;
    /// gives back the others.
    fn live(self, engine: &str, now: Instant) -> Option<Job> {
        if self.reply.is_closed() {
            return None;
        }
        if now >= self.deadline {
            let _ = self.reply.send(Err(BackendError::Timeout {
                engine: engine.to_string(),
                budget: self.budget,
            }));
            return None;
        }
        Some(self)
    }
}

/// Wraps a backend; single requests are batched while a policy is set.
pub struct DynamicBatcher {
    inner: Arc<dyn Backend>,
    policy: SharedBatchPolicy,
    queue: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for DynamicBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicBatcher")
            .field("inner", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl DynamicBatcher {
    /// Wraps `inner`; must be called within a tokio runtime (it starts the collector task,
    /// which ends when the batcher is dropped).
    pub fn new(inner: Arc<dyn Backend>, policy: SharedBatchPolicy) -> DynamicBatcher {
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(collect(inner.clone(), policy.clone(), jobs));
        DynamicBatcher {
            inner,
            policy,
            queue,
        }
    }
}

/// Batches in flight per engine: one being computed while the next travels. While both
/// are busy, new requests queue up and leave together in the next batch.
const BATCHES_IN_FLIGHT: usize = 2;

async fn collect(
    inner: Arc<dyn Backend>,
    policy: SharedBatchPolicy,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = jobs.recv().await else {
            return;
        };
        // Expired work is answered where it is picked up, and never computed.
        let Some(first) = first.live(inner.name(), Instant::now()) else {
            continue;
        };
        let Some(policy) = policy.load_full() else {
            let inner = inner.clone();
            tokio::spawn(async move {
                flush(inner, vec![first]).await;
                drop(slot);
            });
            continue;
        };
        let mut batch = vec![first];
        // Take what is already waiting: under load the queue fills while earlier batches
        // are in flight, so batches grow with load and cost nothing when idle.
        while batch.len() < policy.max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.extend(job.live(inner.name(), Instant::now())),
                Err(_) => break,
            }
        }
        // Waiting for more only pays with a delay the timer can honour (1 ms granularity);
        // shorter delays would round up to a millisecond of idle waiting.
        if batch.len() < policy.max_batch && policy.max_delay >= Duration::from_millis(1) {
            let until = Instant::now() + policy.max_delay;
            while batch.len() < policy.max_batch {
                tokio::select! {
                    job = jobs.recv() => match job {
                        Some(job) => batch.extend(job.live(inner.name(), Instant::now())),
                        None => break,
                    },
                    () = tokio::time::sleep_until(until) => break,
                }
            }
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            flush(inner, batch).await;
            drop(slot);
        });
    }
}

async fn flush(inner: Arc<dyn Backend>, batch: Vec<Job>) {
    // Checked again when the batch leaves: the straggler wait may have outlived some.
    let now = Instant::now();
    let batch: Vec<Job> = batch
        .into_iter()
        .filter_map(|job| job.live(inner.name(), now))
        .collect();
    let Some(dim) = batch.first().map(|j| j.encoding.len()) else {
        return;
    };
    if batch.len() == 1 || batch.iter().any(|j| j.encoding.len() != dim) {
        return one_by_one(inner, batch).await;
    }
    // The batch may take as long as its most urgent member has left.
    let budget = batch
        .iter()
        .map(|j| j.deadline.saturating_duration_since(now))
        .min()
        .unwrap_or_default();
    let values: Vec<f32> = batch
        .iter()
        .flat_map(|j| j.encoding.iter().copied())
        .collect();
    match inner.reason_batch(&values, dim, budget).await {
        Ok(answers) if answers.len() == batch.len() => {
            for (job, answer) in batch.into_iter().zip(answers) {
                let _ = job.reply.send(Ok(answer));
            }
        }
        // One bad encoding fails the whole batch: answer each on its own instead.
        Err(BackendError::InvalidInput(_)) => one_by_one(inner, batch).await,
        Ok(answers) => {
            let reason = format!("batch of {} gave {} answers", batch.len(), answers.len());
            for job in batch {
                let _ = job.reply.send(Err(BackendError::Failed {
                    engine: inner.name().to_string(),
                    reason: reason.clone(),
                }));
            }
        }
        Err(err) => {
            for job in batch {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
    }
}

async fn one_by_one(inner: Arc<dyn Backend>, batch: Vec<Job>) {
    let runs = batch.into_iter().map(|job| {
        let inner = inner.clone();
        async move {
            let left = job.deadline.saturating_duration_since(Instant::now());
            let answer = inner.reason(&job.encoding, left).await;
            let _ = job.reply.send(answer);
        }
    });
    futures::future::join_all(runs).await;
}

impl Backend for DynamicBatcher {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn describe(&self) -> EngineInfo {
        self.inner.describe()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn transport(&self) -> &'static str {
        self.inner.transport()
    }

    fn model_digest(&self) -> qnllm_engine::Digest {
        self.inner.model_digest()
    }

    fn model_state(&self) -> ModelState {
        self.inner.model_state()
    }

    fn max_in_flight(&self) -> Option<u32> {
        self.inner.max_in_flight()
    }

    fn in_flight(&self) -> Option<u64> {
        self.inner.in_flight()
    }

    fn follows_update_log(&self) -> bool {
        self.inner.follows_update_log()
    }

    fn activity(&self) -> Option<Activity> {
        self.inner.activity()
    }

    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        if self.policy.load().is_none() {
            return self.inner.reason(encoding, budget);
        }
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let deadline = Instant::now() + budget;
            let job = Job {
                encoding: encoding.to_vec(),
                deadline,
                budget,
                reply,
            };
            let gone = || BackendError::Gone {
                engine: self.inner.name().to_string(),
                reason: "batcher stopped".into(),
            };
            self.queue.send(job).map_err(|_| gone())?;
            // The caller is answered at its deadline, wherever its job is: a job still
            // queued behind busy batches then finds its reply closed and is dropped.
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(answer) => answer.map_err(|_| gone())?,
                Err(_) => Err(BackendError::Timeout {
                    engine: self.inner.name().to_string(),
                    budget,
                }),
            }
        })
    }

    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        self.inner.reason_batch(values, dim, budget)
    }

    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> BackendFuture<'a, Result<ModelState, BackendError>> {
        self.inner.learn(encoding, label, base_version, budget)
    }
}
