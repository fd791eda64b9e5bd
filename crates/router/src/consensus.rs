//! `ConsensusPolicy`: how teachers' votes become one label, and whether the student should
//! learn it.
//!
//! Every policy is a pure function of the votes (labels, confidences, reliabilities), so the
//! same teachers asked in the same order always decide the same way.

use serde::Serialize;

/// One vote as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ballot {
    pub(crate) label: u32,
    pub(crate) confidence: f64,
    pub(crate) reliability: f64,
}

/// What the policy decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) consensus: u32,
    /// Share of the vote weight behind the consensus, in `[0, 1]`.
    pub(crate) agreement: f64,
    pub(crate) unanimous: bool,
    /// Whether the student should learn the consensus.
    pub(crate) teach: bool,
}

/// When and what the student learns from its teachers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ConsensusPolicy {
    /// Learn every consensus: votes weigh confidence × reliability, the heaviest label wins
    /// (the blind majority; the behaviour before policies existed).
    #[default]
    Majority,
    /// Learn only when every teacher that answered gave the same label.
    Unanimous,
    /// Votes weigh `confidence × ln(r / (1 − r))`, the log-odds of each teacher's
    /// reliability `r`, its agreement with the consensus so far (a teacher no better than a
    /// coin flip weighs nothing); learn only when the consensus holds at least
    /// `min_agreement` of the weight. The estimate feeds on itself: the teacher that leads
    /// early comes to outweigh two others, and the gate then teaches its label only when
    /// another teacher agrees.
    Reliable {
        /// Share of the weight the consensus needs, in `[0, 1]`.
        min_agreement: f64,
    },
    /// As [`ConsensusPolicy::Reliable`], but `r` is the teacher's agreement with the other
    /// teachers' plurality when that plurality is clear (leave-one-out), which no teacher
    /// can inflate by its own vote.
    Peer {
        /// Share of the weight the consensus needs, in `[0, 1]`.
        min_agreement: f64,
    },
}

impl ConsensusPolicy {
    /// Parses `majority`, `unanimous`, `reliable` (with `min_agreement` 0.75),
    /// `reliable:SHARE` or `peer:SHARE`.
    ///
    /// # Errors
    ///
    /// A message naming the accepted forms.
    pub fn parse(text: &str) -> Result<ConsensusPolicy, String> {
        let bad = || {
            format!(
                "unknown consensus policy `{text}`: use majority, unanimous, reliable, \
                 reliable:SHARE or peer:SHARE with SHARE in [0, 1]"
            )
        };
        match text {
            "majority" => Ok(ConsensusPolicy::Majority),
            "unanimous" => Ok(ConsensusPolicy::Unanimous),
            "reliable" => Ok(ConsensusPolicy::Reliable {
                min_agreement: 0.75,
            }),
            _ => {
                let (kind, share) = text.split_once(':').ok_or_else(bad)?;
                let min_agreement = share
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=1.0).contains(s))
                    .ok_or_else(bad)?;
                match kind {
                    "reliable" => Ok(ConsensusPolicy::Reliable { min_agreement }),
                    "peer" => Ok(ConsensusPolicy::Peer { min_agreement }),
                    _ => Err(bad()),
                }
            }
        }
    }

    /// Whether reliability is measured against the other teachers (leave-one-out) rather
    /// than against the consensus.
    pub fn uses_peer_reliability(&self) -> bool {
        matches!(self, ConsensusPolicy::Peer { .. })
    }

    /// The policy's name as [`ConsensusPolicy::parse`] reads it.
    pub fn name(&self) -> String {
        match self {
            ConsensusPolicy::Majority => "majority".into(),
            ConsensusPolicy::Unanimous => "unanimous".into(),
            ConsensusPolicy::Reliable { min_agreement } => format!("reliable:{min_agreement}"),
            ConsensusPolicy::Peer { min_agreement } => format!("peer:{min_agreement}"),
        }
    }

    /// Decides on `ballots` (at least one).
    pub(crate) fn decide(&self, ballots: &[Ballot]) -> Verdict {
        let first = ballots.first().map_or(0, |b| b.label);
        let unanimous = ballots.iter().all(|b| b.label == first);
        let weight = |b: &Ballot| match self {
            ConsensusPolicy::Majority | ConsensusPolicy::Unanimous => b.confidence * b.reliability,
            ConsensusPolicy::Reliable { .. } | ConsensusPolicy::Peer { .. } => {
                let r = b.reliability.clamp(1e-6, 1.0 - 1e-6);
                b.confidence * (r / (1.0 - r)).ln().max(0.0)
            }
        };
        let (consensus, agreement) = if unanimous {
            (first, 1.0)
        } else {
            match weighted(ballots, weight) {
                // No teacher is known to beat a coin flip yet (the first votes): fall back
                // to confidence alone rather than to the lowest label.
                (_, _, total) if total <= 0.0 => {
                    let (label, share, _) = weighted(ballots, |b| b.confidence);
                    (label, share)
                }
                (label, share, _) => (label, share),
            }
        };
        let teach = match self {
            ConsensusPolicy::Majority => true,
            ConsensusPolicy::Unanimous => unanimous,
            ConsensusPolicy::Reliable { min_agreement }
            | ConsensusPolicy::Peer { min_agreement } => agreement >= *min_agreement,
        };
        Verdict {
            consensus,
            agreement,
            unanimous,
            teach,
        }
    }
}

/// The heaviest label, its share of the weight, and the total weight; ties go to the lowest
/// label, so every run decides the same way.
fn weighted(ballots: &[Ballot], weight: impl Fn(&Ballot) -> f64) -> (u32, f64, f64) {
    let mut totals: Vec<(u32, f64)> = Vec::new();
    for b in ballots {
        let w = weight(b);
        match totals.iter_mut().find(|(l, _)| *l == b.label) {
            Some((_, total)) => *total += w,
            None => totals.push((b.label, w)),
        }
    }
    totals.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = totals.iter().map(|(_, w)| w).sum();
    let (label, top) = totals.first().copied().unwrap_or((0, 0.0));
    (label, if total > 0.0 { top / total } else { 0.0 }, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballot(label: u32, confidence: f64, reliability: f64) -> Ballot {
        Ballot {
            label,
            confidence,
            reliability,
        }
    }

    #[test]
    fn unanimous_votes_are_taught_by_every_policy() {
        let votes = [ballot(3, 0.5, 0.6), ballot(3, 0.2, 0.9)];
        for policy in [
            ConsensusPolicy::Majority,
            ConsensusPolicy::Unanimous,
            ConsensusPolicy::Reliable { min_agreement: 1.0 },
        ] {
            let v = policy.decide(&votes);
            assert_eq!((v.consensus, v.agreement, v.teach), (3, 1.0, true));
        }
    }

    #[test]
    fn a_split_vote_is_taught_by_majority_only_and_reliable_gates_on_its_share() {
        let votes = [
            ballot(1, 0.5, 0.9),
            ballot(1, 0.5, 0.9),
            ballot(2, 0.5, 0.9),
        ];
        assert!(ConsensusPolicy::Majority.decide(&votes).teach);
        assert!(!ConsensusPolicy::Unanimous.decide(&votes).teach);
        let share = ConsensusPolicy::Reliable { min_agreement: 0.6 }.decide(&votes);
        assert_eq!(share.consensus, 1);
        assert!((share.agreement - 2.0 / 3.0).abs() < 1e-12);
        assert!(share.teach);
        assert!(
            !ConsensusPolicy::Reliable { min_agreement: 0.7 }
                .decide(&votes)
                .teach
        );
    }

    #[test]
    fn reliable_lets_one_trusted_teacher_outvote_two_near_coin_flips() {
        let votes = [
            ballot(4, 0.5, 0.99),
            ballot(7, 0.5, 0.55),
            ballot(7, 0.5, 0.55),
        ];
        assert_eq!(ConsensusPolicy::Majority.decide(&votes).consensus, 7);
        let v = ConsensusPolicy::Reliable { min_agreement: 0.5 }.decide(&votes);
        assert_eq!(v.consensus, 4);
        // A teacher worse than a coin flip weighs nothing.
        let worse = [ballot(4, 0.5, 0.4), ballot(7, 0.5, 0.6)];
        let v = ConsensusPolicy::Reliable { min_agreement: 0.0 }.decide(&worse);
        assert_eq!((v.consensus, v.agreement), (7, 1.0));
        // Before anyone is known to beat a coin flip, confidence decides, not the label.
        let cold = [ballot(4, 0.3, 0.5), ballot(7, 0.6, 0.5)];
        let v = ConsensusPolicy::Reliable { min_agreement: 0.0 }.decide(&cold);
        assert_eq!(v.consensus, 7);
        assert!((v.agreement - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ties_go_to_the_lowest_label() {
        let votes = [ballot(5, 0.5, 0.8), ballot(2, 0.5, 0.8)];
        assert_eq!(ConsensusPolicy::Majority.decide(&votes).consensus, 2);
    }

    #[test]
    fn names_parse_back_and_bad_ones_are_explained() {
        for text in ["majority", "unanimous", "reliable:0.8", "peer:0.5"] {
            assert_eq!(ConsensusPolicy::parse(text).unwrap().name(), text);
        }
        assert_eq!(
            ConsensusPolicy::parse("reliable").unwrap(),
            ConsensusPolicy::Reliable {
                min_agreement: 0.75
            }
        );
        for bad in ["vote", "reliable:2", "reliable:x", "loud:0.5"] {
            assert!(ConsensusPolicy::parse(bad)
                .unwrap_err()
                .contains("use majority"));
        }
    }
}
