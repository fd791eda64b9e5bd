//! `Coordinator`: several teacher engines with different models vote on an encoding; a
//! student model, replicated on any number of engines, learns from their consensus.
//!
//! Each teacher's reliability is the share of past coordinations in which it agreed with the
//! consensus, or, for policies that ask for it, with its peers' plurality when that plurality
//! was clear (a leave-one-out estimate a dominant teacher cannot inflate); both with a Laplace
//! prior: `(agreed + 1) / (asked + 2)`. The [`ConsensusPolicy`]
//! turns the votes, their confidences and these reliabilities into a consensus and decides
//! whether the student learns it. Learning updates reach every student replica in one order,
//! each naming the model version it applies to, so the replicas stay bit-identical; a
//! replica that diverges is an error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::backend::{Answer, Backend, BackendError, ModelState};
use crate::consensus::{Ballot, ConsensusPolicy};
use crate::router::{Router, RouterError};

/// One teacher's answer and standing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeacherVote {
    /// Engine name.
    pub engine: String,
    /// Its label.
    pub label: u32,
    /// Its confidence.
    pub confidence: f64,
    /// Its reliability before this vote, in `(0, 1)`.
    pub reliability: f64,
}

/// The outcome of one coordination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coordination {
    /// The consensus label.
    pub consensus: u32,
    /// Share of the vote weight behind the consensus.
    pub agreement: f64,
    /// Whether every teacher gave the consensus.
    pub unanimous: bool,
    /// Whether the policy had the student learn it.
    pub taught: bool,
    /// Every teacher's answer.
    pub votes: Vec<TeacherVote>,
    /// The student's label before learning, when a student is configured.
    pub student_label: Option<u32>,
    /// The student model after learning, when it learned.
    pub learned: Option<ModelState>,
}

#[derive(Debug)]
struct Teacher {
    backend: Arc<dyn Backend>,
    /// Coordinations it answered, and of them those it agreed with the consensus.
    asked: AtomicU64,
    agreed: AtomicU64,
    /// Coordinations where the other teachers had one clear plurality, and of them those
    /// it agreed with.
    peer_asked: AtomicU64,
    peer_agreed: AtomicU64,
}

impl Teacher {
    fn reliability(&self, peers: bool) -> f64 {
        let (asked, agreed) = if peers {
            (&self.peer_asked, &self.peer_agreed)
        } else {
            (&self.asked, &self.agreed)
        };
        let (asked, agreed) = (
            asked.load(Ordering::Relaxed),
            agreed.load(Ordering::Relaxed),
        );
        (agreed as f64 + 1.0) / (asked as f64 + 2.0)
    }
}

/// The label most of `labels` gave, if exactly one label has the most votes.
fn plurality(labels: impl Iterator<Item = u32>) -> Option<u32> {
    let mut counts: Vec<(u32, usize)> = Vec::new();
    for label in labels {
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    match counts.as_slice() {
        [(label, _)] => Some(*label),
        [(label, top), (_, next), ..] if top > next => Some(*label),
        _ => None,
    }
}

/// Coordination figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordinationMetrics {
    /// Coordinations run.
    pub steps: u64,
    /// Of which the teachers did not all agree.
    pub disagreements: u64,
    /// Of which the policy had the student learn the consensus.
    pub taught: u64,
    /// The policy's name.
    pub policy: String,
    /// `disagreements / steps`.
    pub disagreement_rate: f64,
    /// Each teacher's name and reliability.
    pub teachers: Vec<(String, f64)>,
    /// The student's agreement with the consensus (before learning), per window of
    /// `AGREEMENT_WINDOW` steps, oldest first.
    pub student_agreement: Vec<f64>,
}

/// Steps per entry of [`CoordinationMetrics::student_agreement`].
pub const AGREEMENT_WINDOW: u64 = 100;

/// Updates kept for replicas that join late or fall behind; past this, the oldest go and a
/// replica older than what is left cannot catch up (about 300 MB at 768 inputs).
pub const MAX_REPLAY_UPDATES: usize = 100_000;

/// One applied update, kept so a replica behind can replay it.
#[derive(Debug)]
struct Update {
    encoding: Vec<f32>,
    label: u32,
    /// The model after it.
    after: ModelState,
}

#[derive(Debug, Default)]
struct StudentLog {
    version: Option<u64>,
    /// The model before the oldest update in `updates`.
    base: Option<ModelState>,
    /// The ordered updates since `base`, at most [`MAX_REPLAY_UPDATES`].
    updates: std::collections::VecDeque<Update>,
    window_agreed: u64,
    window_steps: u64,
    /// The last update sent that no replica has answered, in time or at all (its caller
    /// stopped waiting). Replicas never take a `learn` back, so any of them may have applied
    /// it: the next update asks them first ([`settle`]).
    unanswered: Option<Unanswered>,
}

/// An update sent to the replicas that none has answered.
#[derive(Debug)]
struct Unanswered {
    /// The model it was sent to change.
    before: ModelState,
    encoding: Vec<f32>,
    label: u32,
    /// The replicas it was sent to: only they can have applied it.
    sent_to: Vec<std::sync::Weak<dyn Backend>>,
}

impl Unanswered {
    fn was_sent_to(&self, student: &Arc<dyn Backend>) -> bool {
        self.sent_to
            .iter()
            .any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(student)))
    }
}

impl StudentLog {
    /// The updates a replica at `at` must apply to reach the current model, or `None`
    /// when `at` is not a state of this student's lineage that the log still reaches.
    fn since(&self, at: ModelState) -> Option<std::collections::vec_deque::Iter<'_, Update>> {
        if self.base == Some(at) {
            return Some(self.updates.iter());
        }
        let base = self.base?.version;
        let skip = usize::try_from(at.version.checked_sub(base)?).ok()?;
        let applied = self.updates.get(skip.checked_sub(1)?)?;
        (applied.after == at).then(|| {
            let mut rest = self.updates.iter();
            rest.nth(skip - 1);
            rest
        })
    }

    /// Drops the replay record: the students' order of updates is kept elsewhere.
    fn forget(&mut self) {
        self.version = None;
        self.base = None;
        self.updates.clear();
        self.unanswered = None;
    }

    /// The model the last recorded update made, when the record holds one.
    fn current(&self) -> Option<ModelState> {
        self.updates.back().map(|u| u.after).or(self.base)
    }

    fn record(&mut self, before: ModelState, encoding: &[f32], label: u32, after: ModelState) {
        if self.base.is_none() {
            self.base = Some(before);
        }
        self.updates.push_back(Update {
            encoding: encoding.to_vec(),
            label,
            after,
        });
        if self.updates.len() > MAX_REPLAY_UPDATES {
            self.base = self.updates.pop_front().map(|u| u.after);
        }
        self.version = Some(after.version);
        self.unanswered = None;
    }
}

/// Why [`Coordinator::learn_at`] applied nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LearnError {
    /// The update names another model version than the student's.
    #[error("update is for model version {base}, the student is at {current}")]
    VersionConflict {
        /// The version the update was for.
        base: u64,
        /// The student's version.
        current: u64,
    },
    /// Bad input, no student, or replicas that refused or diverged.
    #[error(transparent)]
    Request(#[from] RouterError),
}

/// What one turn at the student did.
#[derive(Debug)]
enum Taught {
    /// Applied; the student's label before, and the model after.
    Applied(u32, ModelState),
    /// Not applied: the student is at `current`, not the version asked for.
    Stale { current: u64 },
    /// No student replica.
    NoStudent,
}

/// Where the student replicas come from.
#[derive(Debug, Clone)]
enum Students {
    /// A list set by the owner.
    Fixed(Vec<Arc<dyn Backend>>),
    /// Every engine in a router's rotation, as it is when an update starts.
    Rotation(Arc<Router>),
}

impl Students {
    fn snapshot(&self) -> Vec<Arc<dyn Backend>> {
        match self {
            Students::Fixed(list) => list.clone(),
            Students::Rotation(router) => router.backends(),
        }
    }
}

/// Teachers, optional student replicas, and the running figures.
#[derive(Debug)]
pub struct Coordinator {
    teachers: RwLock<Vec<Arc<Teacher>>>,
    students: Mutex<Students>,
    policy: Mutex<ConsensusPolicy>,
    /// Serialises learning so every replica sees updates in one order.
    student: tokio::sync::Mutex<StudentLog>,
    steps: AtomicU64,
    disagreements: AtomicU64,
    taught: AtomicU64,
    windows: Mutex<Vec<f64>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Coordinator {
    /// A coordinator over `teachers`, with `students` replicas of one student model (empty:
    /// no learning).
    pub fn new(teachers: Vec<Arc<dyn Backend>>, students: Vec<Arc<dyn Backend>>) -> Coordinator {
        let coordinator = Coordinator {
            teachers: RwLock::new(Vec::new()),
            students: Mutex::new(Students::Fixed(students)),
            policy: Mutex::new(ConsensusPolicy::default()),
            student: tokio::sync::Mutex::new(StudentLog::default()),
            steps: AtomicU64::new(0),
            disagreements: AtomicU64::new(0),
            taught: AtomicU64::new(0),
            windows: Mutex::new(Vec::new()),
        };
        for teacher in teachers {
            coordinator.add_teacher(teacher);
        }
        coordinator
    }

    /// A coordinator over `teachers` whose students are the engines in `router`'s
    /// rotation, read once at the start of every update.
    pub fn over_rotation(teachers: Vec<Arc<dyn Backend>>, router: Arc<Router>) -> Coordinator {
        let coordinator = Coordinator::new(teachers, Vec::new());
        *lock(&coordinator.students) = Students::Rotation(router);
        coordinator
    }

    /// Adds a teacher; it is asked after those already there.
    pub fn add_teacher(&self, backend: Arc<dyn Backend>) {
        self.teachers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::new(Teacher {
                backend,
                asked: AtomicU64::new(0),
                agreed: AtomicU64::new(0),
                peer_asked: AtomicU64::new(0),
                peer_agreed: AtomicU64::new(0),
            }));
    }

    /// Removes the teachers named `name` (a worker teacher that left); returns whether
    /// there was one. Those after it move up, and a `coordinate` already running keeps
    /// the list it started with.
    pub fn remove_teacher(&self, name: &str) -> bool {
        let mut teachers = self
            .teachers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = teachers.len();
        teachers.retain(|t| t.backend.name() != name);
        teachers.len() != before
    }

    /// Whether a teacher is named `name`.
    pub fn has_teacher(&self, name: &str) -> bool {
        self.teachers().iter().any(|t| t.backend.name() == name)
    }

    /// The teachers' names, in the order they are asked.
    pub fn teacher_names(&self) -> Vec<String> {
        self.teachers()
            .iter()
            .map(|t| t.backend.name().to_string())
            .collect()
    }

    /// Number of teachers.
    pub fn teacher_count(&self) -> usize {
        self.teachers().len()
    }

    fn teachers(&self) -> Vec<Arc<Teacher>> {
        self.teachers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Chooses how votes become a consensus and when the student learns it.
    pub fn set_policy(&self, policy: ConsensusPolicy) {
        *lock(&self.policy) = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> ConsensusPolicy {
        *lock(&self.policy)
    }

    /// Asks `k` teachers (all when `k` is 0 or larger than their number) about `encoding`,
    /// reaches a consensus, and when `learn` is set teaches it to every student replica.
    ///
    /// # Errors
    ///
    /// [`RouterError::NoEngineAvailable`] without teachers or when none answers;
    /// [`RouterError::InvalidInput`] for a bad encoding; [`RouterError::Disagreement`] when
    /// student replicas refuse the update or end up in different states;
    /// [`RouterError::DeadlineExceeded`] when one does not answer within `budget`. With
    /// either of the last two, the replicas that did apply the update keep it (an update is
    /// never taken back), it is recorded, and the others catch up at the next update.
    pub async fn coordinate(
        &self,
        encoding: &[f32],
        k: usize,
        learn: bool,
        budget: Duration,
    ) -> Result<Coordination, RouterError> {
        let budget = Budget::starting_now(budget);
        let teachers = self.teachers();
        let k = if k == 0 {
            teachers.len()
        } else {
            k.min(teachers.len())
        };
        let asked = &teachers[..k];
        let policy = self.policy();
        let peers = policy.uses_peer_reliability();
        let left = budget.left()?;
        let answers =
            futures::future::join_all(asked.iter().map(|t| t.backend.reason(encoding, left))).await;
        let mut votes = Vec::new();
        let mut voters = Vec::new();
        for (teacher, answer) in asked.iter().zip(answers) {
            match answer {
                Ok(answer) => {
                    votes.push(TeacherVote {
                        engine: teacher.backend.name().to_string(),
                        label: answer.reasoning.label,
                        confidence: f64::from(answer.reasoning.confidence),
                        reliability: teacher.reliability(peers),
                    });
                    voters.push(teacher);
                }
                Err(BackendError::InvalidInput(why)) => return Err(RouterError::InvalidInput(why)),
                Err(_) => {}
            }
        }
        if votes.is_empty() {
            return Err(RouterError::NoEngineAvailable {
                reason: "no teacher answered; add teachers to coordinate".into(),
            });
        }
        let ballots: Vec<Ballot> = votes
            .iter()
            .map(|v| Ballot {
                label: v.label,
                confidence: v.confidence,
                reliability: v.reliability,
            })
            .collect();
        let verdict = policy.decide(&ballots);
        let consensus = verdict.consensus;
        self.steps.fetch_add(1, Ordering::Relaxed);
        if !verdict.unanimous {
            self.disagreements.fetch_add(1, Ordering::Relaxed);
        }
        for (i, (teacher, vote)) in voters.iter().zip(&votes).enumerate() {
            teacher.asked.fetch_add(1, Ordering::Relaxed);
            if vote.label == consensus {
                teacher.agreed.fetch_add(1, Ordering::Relaxed);
            }
            let others = votes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, v)| v.label);
            if let Some(label) = plurality(others) {
                teacher.peer_asked.fetch_add(1, Ordering::Relaxed);
                if vote.label == label {
                    teacher.peer_agreed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let taught = learn && verdict.teach;
        let (student_label, learned) = if taught {
            match self.teach(encoding, consensus, &budget).await? {
                Some((label, state)) => {
                    self.taught.fetch_add(1, Ordering::Relaxed);
                    (Some(label), Some(state))
                }
                None => (None, None),
            }
        } else {
            (None, None)
        };
        Ok(Coordination {
            consensus,
            agreement: verdict.agreement,
            unanimous: verdict.unanimous,
            taught: learned.is_some(),
            votes,
            student_label,
            learned,
        })
    }

    /// Replaces the student replicas (engines joined or left). They must all be at the same
    /// model version; the next update names it.
    pub fn set_students(&self, students: Vec<Arc<dyn Backend>>) {
        *lock(&self.students) = Students::Fixed(students);
    }

    /// Teaches `label` for `encoding` to every student replica, in order, without asking
    /// the teachers.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::coordinate`], and [`RouterError::NoEngineAvailable`] without
    /// students.
    pub async fn learn(
        &self,
        encoding: &[f32],
        label: u32,
        budget: Duration,
    ) -> Result<Option<ModelState>, RouterError> {
        match self
            .teach(encoding, label, &Budget::starting_now(budget))
            .await?
        {
            Some((_, state)) => Ok(Some(state)),
            None => Err(RouterError::NoEngineAvailable {
                reason: "no student engine to learn".into(),
            }),
        }
    }

    /// Teaches `label` for `encoding` to every student replica if the student is at
    /// `base_version` when its turn comes: the check and the update happen under one lock,
    /// so two callers naming the same version cannot both apply.
    ///
    /// # Errors
    ///
    /// [`LearnError::VersionConflict`] when the student is at another version; otherwise
    /// [`LearnError::Request`] as [`Coordinator::learn`].
    pub async fn learn_at(
        &self,
        encoding: &[f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> Result<ModelState, LearnError> {
        match self
            .teach_at(
                encoding,
                label,
                Some(base_version),
                &Budget::starting_now(budget),
            )
            .await?
        {
            Taught::Applied(_, state) => Ok(state),
            Taught::Stale { current } => Err(LearnError::VersionConflict {
                base: base_version,
                current,
            }),
            Taught::NoStudent => Err(LearnError::Request(RouterError::NoEngineAvailable {
                reason: "no student engine to learn".into(),
            })),
        }
    }

    async fn teach(
        &self,
        encoding: &[f32],
        label: u32,
        budget: &Budget,
    ) -> Result<Option<(u32, ModelState)>, RouterError> {
        Ok(match self.teach_at(encoding, label, None, budget).await? {
            Taught::Applied(before, state) => Some((before, state)),
            // Without a base version nothing is stale.
            Taught::Stale { .. } | Taught::NoStudent => None,
        })
    }

    /// Records the student's answer, then applies the update to every replica, in order,
    /// if the student is at `base` (when given). The replicas are read once, under the
    /// student lock, so engines joining or leaving meanwhile cannot change the list between
    /// a check and its use.
    async fn teach_at(
        &self,
        encoding: &[f32],
        label: u32,
        base: Option<u64>,
        budget: &Budget,
    ) -> Result<Taught, RouterError> {
        // Updates wait for one another here; that wait is part of the budget too.
        let mut log = tokio::time::timeout(budget.left()?, self.student.lock())
            .await
            .map_err(|_| budget.exceeded())?;
        let students = lock(&self.students).snapshot();
        let Some(first) = students.first() else {
            return Ok(Taught::NoStudent);
        };
        let labels = first.describe().labels;
        if label >= labels {
            return Err(RouterError::InvalidInput(format!(
                "label {label} is out of range: the student has {labels} labels (0 to {})",
                labels.saturating_sub(1)
            )));
        }
        // Replicas that follow a shared update log are ordered by it, and catch up from it by
        // themselves: this coordinator's record would hold only its own share of the order.
        let ordered_elsewhere = students.iter().any(|s| s.follows_update_log());
        if ordered_elsewhere {
            log.forget();
        }
        settle(&mut log, &students, encoding, budget).await?;
        if let Some(version) = log.version {
            for student in &students {
                if student.describe().model_version != version {
                    catch_up(&log, student.as_ref(), budget).await?;
                }
            }
        }
        let (first, before) = predict(&students, encoding, budget).await?;
        let before_state = log.current().unwrap_or_else(|| first.model_state());
        // The answer comes from the replica itself: fresher than a description that may lag.
        let version = log.version.unwrap_or(before.reasoning.model_version);
        if base.is_some_and(|b| b != version) {
            return Ok(Taught::Stale { current: version });
        }
        // Nothing is sent once the budget is spent: an update sent cannot be taken back.
        let left = budget.left()?;
        // Held as unanswered until a replica answers, so that if this future is dropped
        // meanwhile (a client's cancel, the grace period's end), the next update still finds
        // out where the replicas went.
        if !ordered_elsewhere {
            log.unanswered = Some(Unanswered {
                before: before_state,
                encoding: encoding.to_vec(),
                label,
                sent_to: students.iter().map(Arc::downgrade).collect(),
            });
        }
        let states = futures::future::join_all(
            students
                .iter()
                .map(|s| s.learn(encoding, label, version, left)),
        )
        .await;
        // Replicas that applied the update must agree. Those that did not are reported, but
        // what the others applied is recorded all the same: a replica never takes an update
        // back, and one left behind catches up from the record at the next update.
        let mut applied = Vec::with_capacity(students.len());
        let mut failed: Option<RouterError> = None;
        for (student, state) in students.iter().zip(states) {
            match state {
                Ok(state) => applied.push((student, state)),
                Err(e) => {
                    let err = failure(e, budget, |e| RouterError::Disagreement {
                        detail: format!("student {}: {e}", student.name()),
                    });
                    // A replica that left is no student any more; if none is left, say so.
                    if let Some(err) = err {
                        failed.get_or_insert(err);
                    }
                }
            }
        }
        let agreed = agreement(applied).map_err(|split| {
            // Split: neither side is recorded, and the next update says so.
            log.unanswered = None;
            RouterError::Disagreement {
                detail: format!("student replicas diverged: {split}"),
            }
        })?;
        // None applied it in time: it stays unanswered, for the next update to settle.
        let Some(state) = agreed else {
            return Err(failed.unwrap_or_else(|| RouterError::NoEngineAvailable {
                reason: "every student engine left during the update".into(),
            }));
        };
        if !ordered_elsewhere {
            log.record(before_state, encoding, label, state);
        }
        log.window_steps += 1;
        log.window_agreed += u64::from(before.reasoning.label == label);
        if log.window_steps == AGREEMENT_WINDOW {
            let share = log.window_agreed as f64 / AGREEMENT_WINDOW as f64;
            lock(&self.windows).push(share);
            log.window_steps = 0;
            log.window_agreed = 0;
        }
        if let Some(err) = failed {
            return Err(err);
        }
        Ok(Taught::Applied(before.reasoning.label, state))
    }

    /// The running figures.
    pub fn metrics(&self) -> CoordinationMetrics {
        let steps = self.steps.load(Ordering::Relaxed);
        let disagreements = self.disagreements.load(Ordering::Relaxed);
        CoordinationMetrics {
            steps,
            disagreements,
            taught: self.taught.load(Ordering::Relaxed),
            policy: self.policy().name(),
            disagreement_rate: if steps == 0 {
                0.0
            } else {
                disagreements as f64 / steps as f64
            },
            teachers: self
                .teachers()
                .iter()
                .map(|t| {
                    let peers = self.policy().uses_peer_reliability();
                    (t.backend.name().to_string(), t.reliability(peers))
                })
                .collect(),
            student_agreement: lock(&self.windows).clone(),
        }
    }
}

/// The one model the replicas that applied an update are at (`None` when none did); when
/// two are at different models, `Err` names them.
fn agreement<'a>(
    applied: impl IntoIterator<Item = (&'a Arc<dyn Backend>, ModelState)>,
) -> Result<Option<ModelState>, String> {
    let mut agreed: Option<(&Arc<dyn Backend>, ModelState)> = None;
    for (student, state) in applied {
        match agreed {
            None => agreed = Some((student, state)),
            Some((_, a)) if a == state => {}
            Some((other, a)) => {
                return Err(format!(
                    "{} at {} vs {} at {}",
                    student.name(),
                    state.digest.short(),
                    other.name(),
                    a.digest.short()
                ))
            }
        }
    }
    Ok(agreed.map(|(_, state)| state))
}

/// What a student replica's failure means for the call: `None` when it left (it is no
/// student any more, and the call goes on without it), `InvalidInput` as it is, and
/// otherwise [`replica_error`].
fn failure(
    err: BackendError,
    budget: &Budget,
    otherwise: impl FnOnce(BackendError) -> RouterError,
) -> Option<RouterError> {
    match err {
        BackendError::Gone { .. } => None,
        BackendError::InvalidInput(why) => Some(RouterError::InvalidInput(why)),
        other => Some(replica_error(other, budget, otherwise)),
    }
}

/// A student replica's failure: one that did not answer within the budget has not
/// disagreed with anyone, so that is `DeadlineExceeded`; any other failure is what
/// `otherwise` makes of it.
fn replica_error(
    err: BackendError,
    budget: &Budget,
    otherwise: impl FnOnce(BackendError) -> RouterError,
) -> RouterError {
    match err {
        BackendError::Timeout { .. } => budget.exceeded(),
        other => otherwise(other),
    }
}

/// One call's time: every step (catching up, the prediction, the update) gets what the steps
/// before it left, so the call ends within the budget its caller gave, as the caller's own
/// wait does.
#[derive(Debug, Clone, Copy)]
struct Budget {
    whole: Duration,
    until: tokio::time::Instant,
}

impl Budget {
    fn starting_now(whole: Duration) -> Budget {
        let now = tokio::time::Instant::now();
        // A budget too large to add is as good as none: a year.
        let until = now
            .checked_add(whole)
            .unwrap_or(now + Duration::from_secs(365 * 86_400));
        Budget { whole, until }
    }

    /// What is left of it, or `DeadlineExceeded` when nothing is.
    fn left(&self) -> Result<Duration, RouterError> {
        let left = self
            .until
            .saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            Err(self.exceeded())
        } else {
            Ok(left)
        }
    }

    fn exceeded(&self) -> RouterError {
        RouterError::DeadlineExceeded {
            budget: self.whole,
            tried: 1,
        }
    }
}

/// Finds out what became of the update no replica answered, if there is one. Each replica
/// it was sent to that is still here is asked a `reason` first: a replica answers in the
/// order it reads, so once that answer is in, the update's answer is in too, if it applied
/// it. Those one version on must agree, and their model is recorded as the update's; when
/// none is, none applied it.
async fn settle(
    log: &mut StudentLog,
    students: &[Arc<dyn Backend>],
    encoding: &[f32],
    budget: &Budget,
) -> Result<(), RouterError> {
    let Some(unanswered) = &log.unanswered else {
        return Ok(());
    };
    let sent: Vec<&Arc<dyn Backend>> = students
        .iter()
        .filter(|s| unanswered.was_sent_to(s))
        .collect();
    for student in &sent {
        if let Err(e) = student.reason(encoding, budget.left()?).await {
            let err = failure(e, budget, |e| RouterError::NoEngineAvailable {
                reason: format!(
                    "student {} did not answer after an update it had not answered: {e}",
                    student.name()
                ),
            });
            if let Some(err) = err {
                return Err(err);
            }
        }
    }
    let next = unanswered.before.version.checked_add(1);
    let on = sent
        .iter()
        .map(|s| (*s, s.model_state()))
        .filter(|(_, state)| Some(state.version) == next);
    let applied = agreement(on).map_err(|split| {
        log.unanswered = None;
        RouterError::Disagreement {
            detail: format!("student replicas diverged on an update they answered late: {split}"),
        }
    })?;
    if let Some(u) = log.unanswered.take() {
        if let Some(after) = applied {
            log.record(u.before, &u.encoding, u.label, after);
        }
    }
    Ok(())
}

/// The student's prediction for `encoding`, from the first replica still here, and that
/// replica.
async fn predict<'a>(
    students: &'a [Arc<dyn Backend>],
    encoding: &[f32],
    budget: &Budget,
) -> Result<(&'a Arc<dyn Backend>, Answer), RouterError> {
    for student in students {
        match student.reason(encoding, budget.left()?).await {
            Ok(answer) => return Ok((student, answer)),
            Err(e) => {
                let err = failure(e, budget, |e| RouterError::NoEngineAvailable {
                    reason: e.to_string(),
                });
                if let Some(err) = err {
                    return Err(err);
                }
            }
        }
    }
    Err(RouterError::NoEngineAvailable {
        reason: "every student engine left before the update".into(),
    })
}

/// Brings `student` from the model it reports to the current one by replaying, in order, the
/// updates it missed: a worker that joins after learning started, or one that fell behind.
async fn catch_up(
    log: &StudentLog,
    student: &dyn Backend,
    budget: &Budget,
) -> Result<(), RouterError> {
    let info = student.describe();
    let at = ModelState {
        version: info.model_version,
        digest: info.model_digest,
    };
    let Some(missed) = log.since(at) else {
        return Err(RouterError::Disagreement {
            detail: format!(
                "student {} is at model version {} ({}), which is not a state of this \
                 student's last {} updates: start it with the student's model",
                student.name(),
                at.version,
                at.digest.short(),
                log.updates.len()
            ),
        });
    };
    for update in missed {
        let base = update.after.version.saturating_sub(1);
        let state = match student
            .learn(&update.encoding, update.label, base, budget.left()?)
            .await
        {
            Ok(state) => state,
            // It had the update already: the one it did not answer in time, answered since.
            Err(_) if student.model_state() == update.after => update.after,
            // It left: no student any more, and the update goes on without it.
            Err(BackendError::Gone { .. }) => return Ok(()),
            Err(e) => {
                return Err(replica_error(e, budget, |e| RouterError::Disagreement {
                    detail: format!("student {} catching up: {e}", student.name()),
                }))
            }
        };
        if state != update.after {
            return Err(RouterError::Disagreement {
                detail: format!(
                    "student {} diverged catching up at version {}: {} vs {}",
                    student.name(),
                    state.version,
                    state.digest.short(),
                    update.after.digest.short()
                ),
            });
        }
    }
    Ok(())
}
