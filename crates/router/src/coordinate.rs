//! `Coordinator`: several teacher engines with different models vote on an encoding; a
//! student model, replicated on any number of engines, learns from their consensus.
//!
//! When the teachers agree, that is the consensus. When they do not, each teacher's vote
//! weighs its confidence times its reliability, the share of past coordinations in which it
//! agreed with the consensus (with a Laplace prior: `(agreed + 1) / (asked + 2)`). Learning
//! updates reach every student replica in one order, each naming the model version it
//! applies to, so the replicas stay bit-identical; a replica that diverges is an error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::backend::{Backend, BackendError, ModelState};
use crate::router::RouterError;

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
    asked: AtomicU64,
    agreed: AtomicU64,
}

impl Teacher {
    fn reliability(&self) -> f64 {
        let (asked, agreed) = (
            self.asked.load(Ordering::Relaxed),
            self.agreed.load(Ordering::Relaxed),
        );
        (agreed as f64 + 1.0) / (asked as f64 + 2.0)
    }
}

/// Coordination figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordinationMetrics {
    /// Coordinations run.
    pub steps: u64,
    /// Of which the teachers did not all agree.
    pub disagreements: u64,
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

#[derive(Debug, Default)]
struct StudentLog {
    version: Option<u64>,
    window_agreed: u64,
    window_steps: u64,
}

/// Teachers, optional student replicas, and the running figures.
#[derive(Debug)]
pub struct Coordinator {
    teachers: Vec<Teacher>,
    students: Mutex<Vec<Arc<dyn Backend>>>,
    /// Serialises learning so every replica sees updates in one order.
    student: tokio::sync::Mutex<StudentLog>,
    steps: AtomicU64,
    disagreements: AtomicU64,
    windows: Mutex<Vec<f64>>,
}

impl Coordinator {
    /// A coordinator over `teachers`, with `students` replicas of one student model (empty:
    /// no learning).
    pub fn new(teachers: Vec<Arc<dyn Backend>>, students: Vec<Arc<dyn Backend>>) -> Coordinator {
        Coordinator {
            teachers: teachers
                .into_iter()
                .map(|backend| Teacher {
                    backend,
                    asked: AtomicU64::new(0),
                    agreed: AtomicU64::new(0),
                })
                .collect(),
            students: Mutex::new(students),
            student: tokio::sync::Mutex::new(StudentLog::default()),
            steps: AtomicU64::new(0),
            disagreements: AtomicU64::new(0),
            windows: Mutex::new(Vec::new()),
        }
    }

    /// Asks `k` teachers (all when `k` is 0 or larger than their number) about `encoding`,
    /// reaches a consensus, and when `learn` is set teaches it to every student replica.
    ///
    /// # Errors
    ///
    /// [`RouterError::NoEngineAvailable`] without teachers or when none answers;
    /// [`RouterError::InvalidInput`] for a bad encoding; [`RouterError::Disagreement`] when
    /// student replicas end up in different states.
    pub async fn coordinate(
        &self,
        encoding: &[f32],
        k: usize,
        learn: bool,
        budget: Duration,
    ) -> Result<Coordination, RouterError> {
        let k = if k == 0 {
            self.teachers.len()
        } else {
            k.min(self.teachers.len())
        };
        let asked = &self.teachers[..k];
        let answers =
            futures::future::join_all(asked.iter().map(|t| t.backend.reason(encoding, budget)))
                .await;
        let mut votes = Vec::new();
        let mut voters = Vec::new();
        for (teacher, answer) in asked.iter().zip(answers) {
            match answer {
                Ok(answer) => {
                    votes.push(TeacherVote {
                        engine: teacher.backend.name().to_string(),
                        label: answer.reasoning.label,
                        confidence: f64::from(answer.reasoning.confidence),
                        reliability: teacher.reliability(),
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
        let unanimous = votes.iter().all(|v| v.label == votes[0].label);
        let (consensus, agreement) = if unanimous {
            (votes[0].label, 1.0)
        } else {
            // Weighted vote; ties go to the lowest label so every run decides the same way.
            let mut weights: Vec<(u32, f64)> = Vec::new();
            for v in &votes {
                let w = v.confidence * v.reliability;
                match weights.iter_mut().find(|(l, _)| *l == v.label) {
                    Some((_, total)) => *total += w,
                    None => weights.push((v.label, w)),
                }
            }
            weights.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let total: f64 = weights.iter().map(|(_, w)| w).sum();
            (
                weights[0].0,
                if total > 0.0 {
                    weights[0].1 / total
                } else {
                    0.0
                },
            )
        };
        self.steps.fetch_add(1, Ordering::Relaxed);
        if !unanimous {
            self.disagreements.fetch_add(1, Ordering::Relaxed);
        }
        for (teacher, vote) in voters.iter().zip(&votes) {
            teacher.asked.fetch_add(1, Ordering::Relaxed);
            if vote.label == consensus {
                teacher.agreed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (student_label, learned) = if learn && !self.students().is_empty() {
            self.teach(encoding, consensus, budget).await?
        } else {
            (None, None)
        };
        Ok(Coordination {
            consensus,
            agreement,
            unanimous,
            votes,
            student_label,
            learned,
        })
    }

    fn students(&self) -> Vec<Arc<dyn Backend>> {
        self.students
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the student replicas (engines joined or left). They must all be at the same
    /// model version; the next update names it.
    pub fn set_students(&self, students: Vec<Arc<dyn Backend>>) {
        *self
            .students
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = students;
    }

    /// Teaches `label` for `encoding` to every student replica, in order, without asking
    /// the teachers.
    ///
    /// # Errors
    ///
    /// As [`Coordinator::coordinate`].
    pub async fn learn(
        &self,
        encoding: &[f32],
        label: u32,
        budget: Duration,
    ) -> Result<Option<ModelState>, RouterError> {
        if self.students().is_empty() {
            return Err(RouterError::NoEngineAvailable {
                reason: "no student engine to learn".into(),
            });
        }
        Ok(self.teach(encoding, label, budget).await?.1)
    }

    /// Records the student's answer, then applies the update to every replica, in order.
    async fn teach(
        &self,
        encoding: &[f32],
        label: u32,
        budget: Duration,
    ) -> Result<(Option<u32>, Option<ModelState>), RouterError> {
        let mut log = self.student.lock().await;
        let students = self.students();
        let first = &students[0];
        let before =
            first
                .reason(encoding, budget)
                .await
                .map_err(|e| RouterError::NoEngineAvailable {
                    reason: e.to_string(),
                })?;
        let version = match log.version {
            Some(v) => v,
            None => before.reasoning.model_version,
        };
        let states = futures::future::join_all(
            students
                .iter()
                .map(|s| s.learn(encoding, label, version, budget)),
        )
        .await;
        let mut agreed_state: Option<ModelState> = None;
        for (student, state) in students.iter().zip(states) {
            let state = state.map_err(|e| RouterError::Disagreement {
                detail: format!("student {}: {e}", student.name()),
            })?;
            match agreed_state {
                None => agreed_state = Some(state),
                Some(s) if s == state => {}
                Some(s) => {
                    let detail = format!(
                        "student replicas diverged: {} at {} vs {}",
                        student.name(),
                        state.digest.short(),
                        s.digest.short()
                    );
                    return Err(RouterError::Disagreement { detail });
                }
            }
        }
        log.version = agreed_state.map(|s| s.version);
        log.window_steps += 1;
        log.window_agreed += u64::from(before.reasoning.label == label);
        if log.window_steps == AGREEMENT_WINDOW {
            let share = log.window_agreed as f64 / AGREEMENT_WINDOW as f64;
            self.windows
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(share);
            log.window_steps = 0;
            log.window_agreed = 0;
        }
        Ok((Some(before.reasoning.label), agreed_state))
    }

    /// The running figures.
    pub fn metrics(&self) -> CoordinationMetrics {
        let steps = self.steps.load(Ordering::Relaxed);
        let disagreements = self.disagreements.load(Ordering::Relaxed);
        CoordinationMetrics {
            steps,
            disagreements,
            disagreement_rate: if steps == 0 {
                0.0
            } else {
                disagreements as f64 / steps as f64
            },
            teachers: self
                .teachers
                .iter()
                .map(|t| (t.backend.name().to_string(), t.reliability()))
                .collect(),
            student_agreement: self
                .windows
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}
