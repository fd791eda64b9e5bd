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
    /// Votes weigh as in [`ConsensusPolicy::Reliable`]; learn only when the consensus's
    /// weight exceeds the runner-up label's by more than `min_margin` of the total weight
    /// (a unanimous vote has margin 1, a tie margin 0). Unlike a share threshold, it counts
    /// how clearly the winner beat its strongest rival, whatever the other labels got.
    Margin {
        /// The margin the consensus must exceed, in `[0, 1]`.
        min_margin: f64,
    },
}

impl ConsensusPolicy {
    /// Parses `majority`, `unanimous`, `reliable` (with `min_agreement` 0.75),
    /// `reliable:SHARE`, `peer:SHARE` or `margin:M`.
    ///
    /// # Errors
    ///
    /// A message naming the accepted forms.
    pub fn parse(text: &str) -> Result<ConsensusPolicy, String> {
        let bad = || {
            format!(
                "unknown consensus policy `{text}`: use majority, unanimous, reliable, \
                 reliable:SHARE, peer:SHARE or margin:M with SHARE and M in [0, 1]"
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
                    "margin" => Ok(ConsensusPolicy::Margin {
                        min_margin: min_agreement,
                    }),
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
            ConsensusPolicy::Margin { min_margin } => format!("margin:{min_margin}"),
        }
    }

    /// Decides on `ballots` (at least one).
    pub(crate) fn decide(&self, ballots: &[Ballot]) -> Verdict {
        let first = ballots.first().map_or(0, |b| b.label);
        let unanimous = ballots.iter().all(|b| b.label == first);
        let weight = |b: &Ballot| match self {
            ConsensusPolicy::Majority | ConsensusPolicy::Unanimous => b.confidence * b.reliability,
            ConsensusPolicy::Reliable { .. }
            | ConsensusPolicy::Peer { .. }
            | ConsensusPolicy::Margin { .. } => {
                let r = b.reliability.clamp(1e-6, 1.0 - 1e-6);
                b.confidence * (r / (1.0 - r)).ln().max(0.0)
            }
        };
        let tally = if unanimous {
            Tally {
                label: first,
                share: 1.0,
                margin: 1.0,
            }
        } else {
            match weighted(ballots, weight) {
                // No teacher is known to beat a coin flip yet (the first votes): fall back
                // to confidence alone rather than to the lowest label.
                None => weighted(ballots, |b| b.confidence).unwrap_or(Tally {
                    label: first,
                    share: 0.0,
                    margin: 0.0,
                }),
                Some(tally) => tally,
            }
        };
        let (consensus, agreement) = (tally.label, tally.share);
        let teach = match self {
            ConsensusPolicy::Majority => true,
            ConsensusPolicy::Unanimous => unanimous,
            ConsensusPolicy::Reliable { min_agreement }
            | ConsensusPolicy::Peer { min_agreement } => agreement >= *min_agreement,
            ConsensusPolicy::Margin { min_margin } => tally.margin > *min_margin,
        };
        Verdict {
            consensus,
            agreement,
            unanimous,
            teach,
        }
    }
}

/// The heaviest label and how far ahead it is.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tally {
    label: u32,
    /// Its share of the total weight.
    share: f64,
    /// Its weight minus the runner-up label's, as a share of the total weight.
    margin: f64,
}

/// The heaviest label, its share and its margin; ties go to the lowest label, so every run
/// decides the same way. `None` when the votes weigh nothing in all.
fn weighted(ballots: &[Ballot], weight: impl Fn(&Ballot) -> f64) -> Option<Tally> {
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
    if total <= 0.0 {
        return None;
    }
    let (label, top) = totals.first().copied()?;
    let second = totals.get(1).map_or(0.0, |(_, w)| *w);
    Some(Tally {
        label,
        share: top / total,
        margin: (top - second) / total,
    })
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
    fn margin_teaches_a_clear_winner_and_not_a_close_one_whatever_its_share() {
        let policy = ConsensusPolicy::Margin { min_margin: 0.3 };
        // Four teachers, equal weights: 2 votes against 1 and 1 is a share of 0.5 but a
        // margin of 0.25 over the runner-up: not taught.
        let close = [
            ballot(1, 0.5, 0.9),
            ballot(1, 0.5, 0.9),
            ballot(2, 0.5, 0.9),
            ballot(3, 0.5, 0.9),
        ];
        let v = policy.decide(&close);
        assert_eq!(v.consensus, 1);
        assert!((v.agreement - 0.5).abs() < 1e-12);
        assert!(!v.teach);
        // The same share with no single rival close behind it: label 1 holds half the
        // weight, the three others a sixth each; the margin is 1/3 > 0.3: taught. A share
        // gate of 0.5 cannot tell the two apart.
        let clear = [
            ballot(1, 0.6, 0.9),
            ballot(2, 0.2, 0.9),
            ballot(3, 0.2, 0.9),
            ballot(4, 0.2, 0.9),
        ];
        let v = policy.decide(&clear);
        assert_eq!(v.consensus, 1);
        assert!((v.agreement - 0.5).abs() < 1e-12);
        assert!(v.teach);
        // Unanimity is margin 1; a tie is margin 0, never taught even with M = 0.
        assert!(policy.decide(&[ballot(6, 0.1, 0.6)]).teach);
        let tie = [ballot(5, 0.5, 0.8), ballot(2, 0.5, 0.8)];
        let v = ConsensusPolicy::Margin { min_margin: 0.0 }.decide(&tie);
        assert_eq!((v.consensus, v.teach), (2, false));
        // Votes weigh as in `reliable`: one trusted teacher outweighs two near coin flips.
        let trusted = [
            ballot(4, 0.5, 0.99),
            ballot(7, 0.5, 0.55),
            ballot(7, 0.5, 0.55),
        ];
        let v = policy.decide(&trusted);
        assert_eq!(v.consensus, 4);
        assert!(v.teach);
    }

    #[test]
    fn ties_go_to_the_lowest_label() {
        let votes = [ballot(5, 0.5, 0.8), ballot(2, 0.5, 0.8)];
        assert_eq!(ConsensusPolicy::Majority.decide(&votes).consensus, 2);
    }

    #[test]
    fn names_parse_back_and_bad_ones_are_explained() {
        for text in [
            "majority",
            "unanimous",
            "reliable:0.8",
            "peer:0.5",
            "margin:0.3",
        ] {
            assert_eq!(ConsensusPolicy::parse(text).unwrap().name(), text);
        }
        assert_eq!(
            ConsensusPolicy::parse("reliable").unwrap(),
            ConsensusPolicy::Reliable {
                min_agreement: 0.75
            }
        );
        for bad in [
            "vote",
            "reliable:2",
            "reliable:x",
            "loud:0.5",
            "margin:-0.1",
        ] {
            assert!(ConsensusPolicy::parse(bad)
                .unwrap_err()
                .contains("use majority"));
        }
    }
}
