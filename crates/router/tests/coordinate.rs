//! Multi-teacher coordination with real local engines: consensus, weighted votes,
//! reliability, and student replicas that stay bit-identical while they learn.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use qnllm_engine::{Model, NormalInputs, Params, SpikingEngine};
use qnllm_router::{Backend, Coordinator, LocalBackend};

const BUDGET: Duration = Duration::from_secs(5);

/// `Backend` methods a mock replica passes on unchanged to its real engine, `self.inner`.
macro_rules! passed_on {
    (name) => {
        fn name(&self) -> &str {
            self.inner.name()
        }
    };
    (describe) => {
        fn describe(&self) -> qnllm_router::EngineInfo {
            self.inner.describe()
        }
    };
    (reason) => {
        fn reason<'a>(
            &'a self,
            encoding: &'a [f32],
            budget: Duration,
        ) -> qnllm_router::BackendFuture<
            'a,
            Result<qnllm_router::Answer, qnllm_router::BackendError>,
        > {
            self.inner.reason(encoding, budget)
        }
    };
    (reason_batch) => {
        fn reason_batch<'a>(
            &'a self,
            values: &'a [f32],
            dim: usize,
            budget: Duration,
        ) -> qnllm_router::BackendFuture<
            'a,
            Result<Vec<qnllm_router::Answer>, qnllm_router::BackendError>,
        > {
            self.inner.reason_batch(values, dim, budget)
        }
    };
    ($($method:ident),+) => {
        $(passed_on!($method);)+
    };
}

fn local(name: &str, seed: u64) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(
        name,
        SpikingEngine::from_seed(seed, Params::default()).unwrap(),
    ))
}

/// A teacher that shares the student's hidden layer (seed 1) with the readout of another
/// seed: a fine-tuned variant of one backbone, whose labels the student can learn.
fn variant(name: &str, readout_seed: u64) -> Arc<dyn Backend> {
    let p = Params::default();
    let backbone = Model::from_seed(1, p).unwrap();
    let head = Model::from_seed(readout_seed, p).unwrap();
    let model = Model::from_parts(
        name.into(),
        p,
        backbone.input_weights().to_vec(),
        head.readout().to_vec(),
        0,
    )
    .unwrap();
    Arc::new(LocalBackend::new(name, SpikingEngine::new(model)))
}

#[tokio::test]
async fn a_thousand_steps_keep_student_replicas_identical_and_the_student_learns() {
    let teachers = vec![variant("t2", 2), variant("t3", 3), variant("t4", 4)];
    let replicas = [
        Arc::new(LocalBackend::new(
            "s1",
            SpikingEngine::from_seed(1, Params::default()).unwrap(),
        )),
        Arc::new(LocalBackend::new(
            "s2",
            SpikingEngine::from_seed(1, Params::default()).unwrap(),
        )),
        Arc::new(LocalBackend::new(
            "s3",
            SpikingEngine::from_seed(1, Params::default()).unwrap(),
        )),
    ];
    let students: Vec<Arc<dyn Backend>> = replicas
        .iter()
        .map(|r| r.clone() as Arc<dyn Backend>)
        .collect();
    let coordinator = Coordinator::new(teachers, students);
    let mut last = None;
    for x in NormalInputs::new(21, 768).take(1_000) {
        let step = coordinator.coordinate(&x, 0, true, BUDGET).await.unwrap();
        assert_eq!(step.votes.len(), 3);
        assert!(step.agreement > 0.0 && step.agreement <= 1.0);
        last = step.learned;
    }
    let state = last.unwrap();
    assert_eq!(state.version, 1_000);
    let infos: Vec<_> = replicas.iter().map(|r| r.info()).collect();
    assert!(
        infos
            .iter()
            .all(|i| i.digest == state.digest && i.version == 1_000),
        "replicas are bit-identical"
    );
    let m = coordinator.metrics();
    assert_eq!(m.steps, 1_000);
    assert!(
        m.disagreements > 0 && m.disagreements < 1_000,
        "teachers with different models disagree sometimes: {m:?}"
    );
    assert!(m.teachers.iter().all(|(_, r)| *r > 0.0 && *r < 1.0));
    assert_eq!(m.student_agreement.len(), 10);
    let first = m.student_agreement[0];
    let late = m.student_agreement[7..].iter().sum::<f64>() / 3.0;
    assert!(
        late > first + 0.05,
        "the student agrees more with the consensus as it learns: {:?}",
        m.student_agreement
    );
}

#[tokio::test]
async fn unanimous_teachers_are_the_consensus_and_reliability_follows_agreement() {
    // Two identical teachers and one different: the pair always agree with each other.
    let teachers = vec![local("a", 2), local("b", 2), local("odd", 3)];
    let coordinator = Coordinator::new(teachers, vec![]);
    let mut unanimous = 0;
    for x in NormalInputs::new(4, 768).take(200) {
        let step = coordinator.coordinate(&x, 0, false, BUDGET).await.unwrap();
        if step.unanimous {
            unanimous += 1;
            assert_eq!(step.agreement, 1.0);
        } else {
            // The pair outweighs the odd one: two votes of similar weight against one.
            assert_eq!(step.consensus, step.votes[0].label);
        }
        assert_eq!(step.learned, None);
    }
    assert!(unanimous > 0);
    let m = coordinator.metrics();
    let reliability = |name: &str| m.teachers.iter().find(|(n, _)| n == name).unwrap().1;
    assert!(reliability("a") > 0.95 && reliability("b") > 0.95);
    assert!(reliability("odd") < reliability("a"), "{m:?}");
}

#[tokio::test]
async fn bad_input_and_no_teachers_are_clear_errors() {
    let coordinator = Coordinator::new(vec![local("t", 2)], vec![]);
    let err = coordinator
        .coordinate(&[0.0; 3], 0, false, BUDGET)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "encoding has 3 values, the model takes 768"
    );
    let empty = Coordinator::new(vec![], vec![]);
    let err = empty
        .coordinate(&[0.0; 768], 0, false, BUDGET)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no teacher answered"), "{err}");
}

/// A student replica that pauses once inside `learn` and runs a hook there: what another
/// hub request does to the student list while this one is learning.
#[derive(Debug)]
struct Pausing {
    inner: LocalBackend,
    /// Emptied of its students on the first `learn`.
    coordinator: std::sync::OnceLock<std::sync::Weak<Coordinator>>,
    fired: std::sync::atomic::AtomicBool,
}

impl Backend for Pausing {
    passed_on!(name, describe, reason, reason_batch);
    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> qnllm_router::BackendFuture<'a, Result<qnllm_router::ModelState, qnllm_router::BackendError>>
    {
        Box::pin(async move {
            // Let the other request run up to the student lock, then change the list.
            tokio::task::yield_now().await;
            if !self.fired.swap(true, std::sync::atomic::Ordering::Relaxed) {
                if let Some(c) = self.coordinator.get().and_then(std::sync::Weak::upgrade) {
                    c.set_students(Vec::new());
                }
            }
            Backend::learn(&self.inner, encoding, label, base_version, budget).await
        })
    }
}

#[tokio::test]
async fn students_leaving_while_another_learn_waits_is_an_error_not_a_panic() {
    let student = Arc::new(Pausing {
        inner: LocalBackend::new(
            "s1",
            SpikingEngine::from_seed(1, Params::default()).unwrap(),
        ),
        coordinator: std::sync::OnceLock::new(),
        fired: std::sync::atomic::AtomicBool::new(false),
    });
    let coordinator = Arc::new(Coordinator::new(
        vec![],
        vec![student.clone() as Arc<dyn Backend>],
    ));
    student
        .coordinator
        .set(Arc::downgrade(&coordinator))
        .unwrap();
    let x = NormalInputs::new(5, 768).next().unwrap();
    // The first learn holds the student lock and, inside, the list empties; the second
    // saw a non-empty list and waits for the lock.
    let (first, second) = futures::join!(
        coordinator.learn(&x, 1, BUDGET),
        coordinator.learn(&x, 2, BUDGET)
    );
    assert_eq!(first.unwrap().unwrap().version, 1);
    let err = second.unwrap_err();
    assert!(err.to_string().contains("no student"), "{err}");
}

/// Teachers trained on the labelled digits, a student replicated twice distilled from their
/// consensus on the unlabelled ones: the held-out accuracies, and what to compare runs by.
struct Distilled {
    untrained: f64,
    after: f64,
    replica_digests: Vec<qnllm_engine::Digest>,
    /// Every step's consensus, agreement bits and whether it was taught.
    trace: Vec<(u32, u64, bool)>,
}

async fn distil(policy: qnllm_router::ConsensusPolicy) -> Distilled {
    use qnllm_digits::{accuracy, params, train, Digits, Splits};
    let digits = Digits::load().unwrap();
    let splits = Splits::standard(digits.len());
    let labelled = digits.examples(&splits.labelled);
    let unlabelled = digits.examples(&splits.unlabelled);
    let held_out = digits.examples(&splits.held_out);
    let teachers: Vec<Arc<dyn Backend>> = [2, 3, 4]
        .into_iter()
        .map(|seed| {
            let mut engine = SpikingEngine::from_seed(seed, params()).unwrap();
            train(&mut engine, &labelled, 1).unwrap();
            Arc::new(LocalBackend::new(format!("teacher-{seed}"), engine)) as Arc<dyn Backend>
        })
        .collect();
    let replicas: Vec<LocalBackend> = (0..2)
        .map(|i| {
            LocalBackend::new(
                format!("student-{i}"),
                SpikingEngine::from_seed(1, params()).unwrap(),
            )
        })
        .collect();
    let held_accuracy = |r: &LocalBackend| {
        let right = held_out
            .iter()
            .filter(|e| r.reason_now(&e.encoding).unwrap().reasoning.label == e.label)
            .count();
        right as f64 / held_out.len() as f64
    };
    let untrained = held_accuracy(&replicas[0]);
    assert_eq!(
        untrained,
        accuracy(&SpikingEngine::from_seed(1, params()).unwrap(), &held_out).unwrap()
    );
    let coordinator = Coordinator::new(
        teachers,
        replicas
            .iter()
            .map(|r| Arc::new(r.clone()) as Arc<dyn Backend>)
            .collect(),
    );
    coordinator.set_policy(policy);
    let mut trace = Vec::new();
    for e in &unlabelled {
        let step = coordinator
            .coordinate(&e.encoding, 0, true, BUDGET)
            .await
            .unwrap();
        assert_eq!(step.taught, step.learned.is_some());
        trace.push((step.consensus, step.agreement.to_bits(), step.taught));
    }
    Distilled {
        untrained,
        after: held_accuracy(&replicas[0]),
        replica_digests: replicas.iter().map(|r| r.info().digest).collect(),
        trace,
    }
}

#[tokio::test]
async fn a_student_distilled_from_digit_teachers_learns_identically_and_deterministically() {
    let policy = qnllm_router::ConsensusPolicy::Reliable { min_agreement: 0.8 };
    let first = distil(policy).await;
    assert!(
        first.after >= first.untrained + 0.40,
        "held-out accuracy {:.3} → {:.3}: the student must gain 40 points",
        first.untrained,
        first.after
    );
    assert!(
        first.replica_digests.windows(2).all(|w| w[0] == w[1]),
        "student replicas are bit-identical"
    );
    let taught = first.trace.iter().filter(|t| t.2).count();
    assert!(
        taught > 0 && taught < first.trace.len(),
        "the policy teaches some consensus and holds back some: {taught}"
    );
    let again = distil(policy).await;
    assert_eq!(
        first.trace, again.trace,
        "same inputs, same order, same votes"
    );
    assert_eq!(first.replica_digests, again.replica_digests);
}

#[tokio::test]
async fn peer_reliability_counts_agreement_with_the_other_teachers_only() {
    // a and b are one model; odd differs. Leave-one-out: odd is judged on every step (a and
    // b always agree), a only when b and odd agree, which is when all three do.
    let teachers = vec![local("a", 2), local("b", 2), local("odd", 3)];
    let coordinator = Coordinator::new(teachers, vec![]);
    coordinator.set_policy(qnllm_router::ConsensusPolicy::Peer { min_agreement: 0.5 });
    let mut unanimous = 0u32;
    for x in NormalInputs::new(4, 768).take(200) {
        let step = coordinator.coordinate(&x, 0, false, BUDGET).await.unwrap();
        unanimous += u32::from(step.unanimous);
    }
    assert!(unanimous > 0 && unanimous < 200, "{unanimous}");
    let m = coordinator.metrics();
    let reliability = |name: &str| m.teachers.iter().find(|(n, _)| n == name).unwrap().1;
    let u = f64::from(unanimous);
    assert_eq!(reliability("odd"), (u + 1.0) / 202.0);
    assert_eq!(reliability("a"), (u + 1.0) / (u + 2.0));
    assert_eq!(m.policy, "peer:0.5");
}

#[tokio::test]
async fn replicas_that_join_late_or_fall_behind_replay_the_updates_and_strangers_are_refused() {
    let teachers = vec![variant("t2", 2), variant("t3", 3), variant("t4", 4)];
    let replica = |name: &str| {
        Arc::new(LocalBackend::new(
            name,
            SpikingEngine::from_seed(1, Params::default()).unwrap(),
        ))
    };
    let (first, wanderer) = (replica("first"), replica("wanderer"));
    let coordinator = Coordinator::new(teachers, vec![first.clone() as Arc<dyn Backend>]);
    let both = || {
        vec![
            first.clone() as Arc<dyn Backend>,
            wanderer.clone() as Arc<dyn Backend>,
        ]
    };
    let mut inputs = NormalInputs::new(61, 768);
    let mut step = |n: usize| {
        let xs: Vec<Vec<f32>> = inputs.by_ref().take(n).collect();
        let coordinator = &coordinator;
        async move {
            let mut last = None;
            for x in xs {
                last = coordinator
                    .coordinate(&x, 0, true, BUDGET)
                    .await
                    .unwrap()
                    .learned;
            }
            last.unwrap()
        }
    };
    step(10).await;
    // Joins at version 0: replays 10 updates, then takes the 11th with the others.
    coordinator.set_students(both());
    let state = step(10).await;
    assert_eq!(wanderer.info().version, 20);
    assert_eq!(wanderer.info().digest, state.digest);
    // Leaves for 10 updates, comes back at version 20: replays the 10 it missed.
    coordinator.set_students(vec![first.clone() as Arc<dyn Backend>]);
    step(10).await;
    coordinator.set_students(both());
    let state = step(5).await;
    assert_eq!(state.version, 35);
    assert_eq!(
        (wanderer.info().version, wanderer.info().digest),
        (35, first.info().digest)
    );
    // Another model is not this student at any version: a clear refusal, nothing applied.
    let stranger = Arc::new(LocalBackend::new(
        "stranger",
        SpikingEngine::from_seed(9, Params::default()).unwrap(),
    ));
    let mut with_stranger = both();
    with_stranger.push(stranger.clone());
    coordinator.set_students(with_stranger);
    let x = NormalInputs::new(62, 768).next().unwrap();
    let err = coordinator
        .coordinate(&x, 0, true, BUDGET)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("stranger is at model version 0"),
        "{err}"
    );
    assert_eq!(first.info().version, 35);
    assert_eq!(stranger.info().version, 0);
}

#[tokio::test]
async fn two_updates_naming_one_version_apply_once_and_the_other_is_a_version_conflict() {
    let student = Arc::new(Pausing {
        inner: LocalBackend::new(
            "s1",
            SpikingEngine::from_seed(1, Params::default()).unwrap(),
        ),
        coordinator: std::sync::OnceLock::new(),
        // Only pauses; leaves the student list alone.
        fired: std::sync::atomic::AtomicBool::new(true),
    });
    let coordinator = Coordinator::new(vec![], vec![student.clone() as Arc<dyn Backend>]);
    let x = NormalInputs::new(5, 768).next().unwrap();
    // The first holds the student lock inside its update while the second, also for
    // version 0, waits for it.
    let (first, second) = futures::join!(
        coordinator.learn_at(&x, 1, 0, BUDGET),
        coordinator.learn_at(&x, 2, 0, BUDGET)
    );
    assert_eq!(first.unwrap().version, 1);
    assert_eq!(
        second.unwrap_err(),
        qnllm_router::LearnError::VersionConflict {
            base: 0,
            current: 1
        }
    );
    assert_eq!(student.inner.info().version, 1);
    let third = coordinator.learn_at(&x, 2, 1, BUDGET).await.unwrap();
    assert_eq!(third.version, 2);
}

/// A student replica that follows an update log kept elsewhere, as a worker on NATS does:
/// it describes the model as its last heartbeat did, one update behind what it serves.
#[derive(Debug)]
struct Following {
    inner: LocalBackend,
    shown: std::sync::Mutex<qnllm_router::EngineInfo>,
}

impl Following {
    fn new(name: &str) -> Arc<Following> {
        let inner = LocalBackend::new(
            name,
            SpikingEngine::from_seed(1, Params::default()).unwrap(),
        );
        let shown = std::sync::Mutex::new(inner.describe());
        Arc::new(Following { inner, shown })
    }
}

impl Backend for Following {
    passed_on!(name, reason, reason_batch);
    fn describe(&self) -> qnllm_router::EngineInfo {
        self.shown.lock().unwrap().clone()
    }
    fn follows_update_log(&self) -> bool {
        true
    }
    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> qnllm_router::BackendFuture<'a, Result<qnllm_router::ModelState, qnllm_router::BackendError>>
    {
        Box::pin(async move {
            *self.shown.lock().unwrap() = self.inner.describe();
            Backend::learn(&self.inner, encoding, label, base_version, budget).await
        })
    }
}

#[tokio::test]
async fn replicas_that_follow_a_shared_log_are_not_replayed_to_when_their_description_lags() {
    let teachers = vec![variant("t2", 2), variant("t3", 3), variant("t4", 4)];
    let (a, b) = (Following::new("a"), Following::new("b"));
    let coordinator = Coordinator::new(
        teachers,
        vec![a.clone() as Arc<dyn Backend>, b.clone() as Arc<dyn Backend>],
    );
    let mut last = None;
    for x in NormalInputs::new(71, 768).take(6) {
        let step = coordinator.coordinate(&x, 0, true, BUDGET).await.unwrap();
        last = step.learned;
    }
    let state = last.unwrap();
    assert_eq!(state.version, 6);
    assert_eq!(a.inner.info().version, 6);
    assert_eq!(a.inner.info().digest, state.digest);
    assert_eq!(b.inner.info().digest, state.digest);
    // Their descriptions still lag by one: the order was never read from them.
    assert_eq!(a.describe().model_version, 5);
}

/// A student replica that does not answer one step in time (as a remote one whose budget ran
/// out), or fails it.
#[derive(Debug)]
struct Late {
    inner: LocalBackend,
    step: Step,
    fault: Fault,
}

/// How a [`Late`] replica fails its step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// No answer within the budget.
    Timeout,
    /// An error of its own.
    Failed,
    /// Its process went away.
    Gone,
}

/// The step of a `learn` that a [`Late`] replica does not do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// The coordinator's `reason` for the student's prediction.
    Predict,
    /// The update itself.
    Update,
}

impl Late {
    fn fault(&self, budget: Duration) -> qnllm_router::BackendError {
        let engine = self.inner.name().to_string();
        match self.fault {
            Fault::Timeout => qnllm_router::BackendError::Timeout { engine, budget },
            Fault::Failed => {
                let reason = "out of memory".into();
                qnllm_router::BackendError::Failed { engine, reason }
            }
            Fault::Gone => {
                let reason = "connection closed".into();
                qnllm_router::BackendError::Gone { engine, reason }
            }
        }
    }
}

impl Backend for Late {
    passed_on!(name, describe, reason_batch);
    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> qnllm_router::BackendFuture<'a, Result<qnllm_router::Answer, qnllm_router::BackendError>>
    {
        if self.step == Step::Predict {
            let fault = self.fault(budget);
            return Box::pin(async move { Err(fault) });
        }
        self.inner.reason(encoding, budget)
    }
    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> qnllm_router::BackendFuture<'a, Result<qnllm_router::ModelState, qnllm_router::BackendError>>
    {
        if self.step == Step::Update {
            let fault = self.fault(budget);
            return Box::pin(async move { Err(fault) });
        }
        Backend::learn(&self.inner, encoding, label, base_version, budget)
    }
}

#[tokio::test]
async fn a_student_that_misses_the_deadline_is_deadline_exceeded_and_one_that_fails_is_not() {
    let x = NormalInputs::new(6, 768).next().unwrap();
    for (step, fault, want) in [
        (Step::Predict, Fault::Timeout, "DeadlineExceeded"),
        (Step::Update, Fault::Timeout, "DeadlineExceeded"),
        (Step::Predict, Fault::Failed, "NoEngineAvailable"),
        (Step::Update, Fault::Failed, "Disagreement"),
    ] {
        let late = Late {
            inner: LocalBackend::new(
                "late",
                SpikingEngine::from_seed(1, Params::default()).unwrap(),
            ),
            step,
            fault,
        };
        let (late, on_time) = (Arc::new(late) as Arc<dyn Backend>, local("on-time", 1));
        // The prediction is asked of the first student only, so the late one goes first; the
        // update goes to every student, so it comes after one that answers.
        let students = match step {
            Step::Predict => vec![late, on_time],
            Step::Update => vec![on_time, late],
        };
        let coordinator = Coordinator::new(vec![], students);
        let err = coordinator.learn(&x, 1, BUDGET).await.unwrap_err();
        let got = format!("{err:?}");
        assert!(got.starts_with(want), "{step:?} {fault:?}: {got}");
    }
}

#[tokio::test]
async fn a_student_that_leaves_during_an_update_is_no_student_and_the_others_learn() {
    let x = NormalInputs::new(6, 768).next().unwrap();
    let gone = || {
        Arc::new(Late {
            inner: LocalBackend::new(
                "gone",
                SpikingEngine::from_seed(1, Params::default()).unwrap(),
            ),
            step: Step::Update,
            fault: Fault::Gone,
        }) as Arc<dyn Backend>
    };
    let coordinator = Coordinator::new(vec![], vec![local("stays", 1), gone()]);
    let state = coordinator.learn(&x, 1, BUDGET).await.unwrap().unwrap();
    assert_eq!(state.version, 1);
    // Still listed at the next update, it is behind: catching it up finds it gone too.
    let state = coordinator.learn(&x, 2, BUDGET).await.unwrap().unwrap();
    assert_eq!(state.version, 2);
    let alone = Coordinator::new(vec![], vec![gone()]);
    let err = alone.learn(&x, 1, BUDGET).await.unwrap_err();
    assert!(
        format!("{err:?}").starts_with("NoEngineAvailable"),
        "{err:?}"
    );
}

/// A student replica that does not answer one update in time but applies it all the same, as
/// a worker does (a `learn` is never cancelled): at once, so the late reply is in before the
/// next step, or when it next reads a request (the worker was stalled).
#[derive(Debug)]
struct Slow {
    inner: LocalBackend,
    /// The update that times out: the one for this base version, the first time it comes.
    base: u64,
    applies: Applies,
    /// Whether it says it timed out, or never answers (the caller gives up first).
    says_timeout: bool,
    stalled: std::sync::atomic::AtomicBool,
    /// The update taken and not yet applied.
    held: std::sync::Mutex<Option<(Vec<f32>, u32)>>,
}

/// When a [`Slow`] replica applies the update it did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Applies {
    AtOnce,
    BeforeItsNextRequest,
    /// Not at all: it refuses the update, at once (it takes the next one it is sent).
    Never,
}

impl Slow {
    fn new(name: &str, base: u64, applies: Applies, says_timeout: bool) -> Slow {
        Slow {
            says_timeout,
            inner: LocalBackend::new(
                name,
                SpikingEngine::from_seed(1, Params::default()).unwrap(),
            ),
            base,
            applies,
            stalled: false.into(),
            held: None.into(),
        }
    }

    /// Applies the held update, as a worker reads its requests in order.
    fn catch_up_on_held(&self) {
        if let Some((encoding, label)) = self.held.lock().unwrap().take() {
            self.inner.learn(&encoding, label).unwrap();
        }
    }
}

impl Backend for Slow {
    passed_on!(name, describe);
    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> qnllm_router::BackendFuture<'a, Result<qnllm_router::Answer, qnllm_router::BackendError>>
    {
        self.catch_up_on_held();
        self.inner.reason(encoding, budget)
    }
    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        budget: Duration,
    ) -> qnllm_router::BackendFuture<
        'a,
        Result<Vec<qnllm_router::Answer>, qnllm_router::BackendError>,
    > {
        self.catch_up_on_held();
        self.inner.reason_batch(values, dim, budget)
    }
    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> qnllm_router::BackendFuture<'a, Result<qnllm_router::ModelState, qnllm_router::BackendError>>
    {
        self.catch_up_on_held();
        use std::sync::atomic::Ordering;
        if base_version == self.base && !self.stalled.swap(true, Ordering::Relaxed) {
            match self.applies {
                Applies::AtOnce => {
                    self.inner.learn_at(encoding, label, base_version).unwrap();
                }
                Applies::BeforeItsNextRequest => {
                    *self.held.lock().unwrap() = Some((encoding.to_vec(), label));
                }
                Applies::Never => {
                    let engine = self.name().to_string();
                    let reason = "out of memory".into();
                    return Box::pin(async move {
                        Err(qnllm_router::BackendError::Failed { engine, reason })
                    });
                }
            }
            if !self.says_timeout {
                return Box::pin(std::future::pending());
            }
            let engine = self.name().to_string();
            return Box::pin(
                async move { Err(qnllm_router::BackendError::Timeout { engine, budget }) },
            );
        }
        Backend::learn(&self.inner, encoding, label, base_version, budget)
    }
}

#[tokio::test]
async fn an_update_a_replica_answers_late_or_never_is_kept_and_learning_goes_on() {
    let steps: Vec<Vec<f32>> = NormalInputs::new(7, 768).take(6).collect();
    let reference = LocalBackend::new(
        "ref",
        SpikingEngine::from_seed(1, Params::default()).unwrap(),
    );
    for (i, x) in steps.iter().enumerate() {
        reference.learn(x, i as u32 % 10).unwrap();
    }
    let want = reference.model_state();
    for applies in [Applies::AtOnce, Applies::BeforeItsNextRequest] {
        // The update that is late is the third; alone, nobody answers it in time; second,
        // one replica does. It times out, or its caller drops the call first (a client's
        // cancel, the end of the hub's grace period).
        for (with_one_on_time, says_timeout) in
            [(false, true), (true, true), (false, false), (true, false)]
        {
            let slow = Arc::new(Slow::new("slow", 2, applies, says_timeout));
            let on_time = Arc::new(LocalBackend::new(
                "on-time",
                SpikingEngine::from_seed(1, Params::default()).unwrap(),
            ));
            let mut students: Vec<Arc<dyn Backend>> = vec![slow.clone()];
            if with_one_on_time {
                students.insert(0, on_time.clone());
            }
            let coordinator = Coordinator::new(vec![], students);
            let case = format!(
                "{applies:?}, with one on time: {with_one_on_time}, says it timed out: {says_timeout}"
            );
            for (i, x) in steps.iter().enumerate() {
                let mut learn = Box::pin(coordinator.learn(x, i as u32 % 10, BUDGET));
                if i == 2 && !says_timeout {
                    // Every replica has been sent the update when the one poll is done.
                    assert!(futures::poll!(learn.as_mut()).is_pending(), "{case}");
                    drop(learn);
                    continue;
                }
                let got = learn.await;
                if i == 2 {
                    let err = got.unwrap_err();
                    assert!(
                        format!("{err:?}").starts_with("DeadlineExceeded"),
                        "{case}: {err:?}"
                    );
                } else {
                    let state = got.unwrap_or_else(|e| panic!("{case}, step {i}: {e}"));
                    assert_eq!(state.unwrap().version, i as u64 + 1, "{case}");
                }
            }
            // Every replica applied every update, the late one included, once and in order.
            assert_eq!(slow.model_state(), want, "{case}");
            if with_one_on_time {
                assert_eq!(on_time.model_state(), want, "{case}");
            }
        }
    }
}

#[tokio::test]
async fn an_update_one_replica_refuses_and_another_answers_late_is_settled_before_the_next() {
    let steps: Vec<Vec<f32>> = NormalInputs::new(7, 768).take(6).collect();
    let reference = LocalBackend::new(
        "ref",
        SpikingEngine::from_seed(1, Params::default()).unwrap(),
    );
    for (i, x) in steps.iter().enumerate() {
        reference.learn(x, i as u32 % 10).unwrap();
    }
    // The third update: the first replica refuses it, the second applies it only before its
    // next request. The next update must not be sent before that is known, or the two split.
    let refuses = Arc::new(Slow::new("refuses", 2, Applies::Never, true));
    let late = Arc::new(Slow::new("late", 2, Applies::BeforeItsNextRequest, true));
    let students: Vec<Arc<dyn Backend>> = vec![refuses.clone(), late.clone()];
    let coordinator = Coordinator::new(vec![], students);
    for (i, x) in steps.iter().enumerate() {
        let got = coordinator.learn(x, i as u32 % 10, BUDGET).await;
        if i == 2 {
            assert!(got.is_err(), "step 2: {got:?}");
        } else {
            let state = got.unwrap_or_else(|e| panic!("step {i}: {e}"));
            assert_eq!(state.unwrap().version, i as u64 + 1);
        }
    }
    assert_eq!(late.model_state(), reference.model_state());
    assert_eq!(refuses.model_state(), reference.model_state());
}

/// A student replica that takes `each` to answer anything, and gives up as a remote one does
/// when its budget is shorter.
#[derive(Debug)]
struct Sluggish {
    inner: LocalBackend,
    each: Duration,
}

impl Sluggish {
    /// Waits `each`, or the whole `budget` and then says it timed out.
    async fn wait(&self, budget: Duration) -> Result<(), qnllm_router::BackendError> {
        tokio::time::sleep(self.each.min(budget)).await;
        if self.each > budget {
            let engine = self.inner.name().to_string();
            return Err(qnllm_router::BackendError::Timeout { engine, budget });
        }
        Ok(())
    }
}

impl Backend for Sluggish {
    passed_on!(name, describe, reason_batch);
    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> qnllm_router::BackendFuture<'a, Result<qnllm_router::Answer, qnllm_router::BackendError>>
    {
        Box::pin(async move {
            self.wait(budget).await?;
            self.inner.reason_now(encoding)
        })
    }
    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        budget: Duration,
    ) -> qnllm_router::BackendFuture<'a, Result<qnllm_router::ModelState, qnllm_router::BackendError>>
    {
        Box::pin(async move {
            self.wait(budget).await?;
            self.inner.learn_at(encoding, label, base_version)
        })
    }
}

/// On tokio's paused clock, so the times are exact and no test waits for them.
#[tokio::test(start_paused = true)]
async fn a_learn_ends_within_its_budget_however_many_steps_it_takes() {
    let x = NormalInputs::new(6, 768).next().unwrap();
    // Each of the two steps (the prediction, the update) takes 60 % of the budget.
    let student = Sluggish {
        inner: LocalBackend::new(
            "sluggish",
            SpikingEngine::from_seed(1, Params::default()).unwrap(),
        ),
        each: BUDGET * 6 / 10,
    };
    let coordinator = Coordinator::new(vec![], vec![Arc::new(student) as Arc<dyn Backend>]);
    let started = tokio::time::Instant::now();
    let err = coordinator.learn(&x, 1, BUDGET).await.unwrap_err();
    assert!(
        format!("{err:?}").starts_with("DeadlineExceeded"),
        "{err:?}"
    );
    assert_eq!(
        started.elapsed(),
        BUDGET,
        "the call took longer than its budget"
    );
    // The next call first asks the replica what became of that update (a third step): with
    // the budget for all three, it learns.
    let state = coordinator.learn(&x, 1, BUDGET * 19 / 10).await.unwrap();
    assert_eq!(state.unwrap().version, 1);
}

#[tokio::test(start_paused = true)]
async fn a_learn_waiting_behind_one_that_hangs_ends_at_its_deadline() {
    let x = NormalInputs::new(6, 768).next().unwrap();
    // This replica never answers the first update, and its caller never gives up.
    let hangs = Arc::new(Slow::new("hangs", 0, Applies::AtOnce, false));
    let coordinator = Arc::new(Coordinator::new(vec![], vec![hangs as Arc<dyn Backend>]));
    let first = tokio::spawn({
        let coordinator = coordinator.clone();
        let x = x.clone();
        async move { coordinator.learn(&x, 1, Duration::MAX).await }
    });
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let second = tokio::time::timeout(BUDGET * 2, coordinator.learn(&x, 2, BUDGET)).await;
    let err = second
        .expect("the second learn waited past its deadline")
        .unwrap_err();
    assert!(
        format!("{err:?}").starts_with("DeadlineExceeded"),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), BUDGET);
    first.abort();
}
