//! `Announce`: what a worker tells the cluster about itself, on start, with every heartbeat,
//! after every learning update and when it leaves.

use serde::{Deserialize, Serialize};

/// A worker's self-description, JSON on [`crate::subject::ANNOUNCE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Unique engine id in the cluster (a subject token).
    pub id: String,
    /// Name shown in results and metrics.
    pub name: String,
    /// Engine kind (`spiking`, `fixed`, or what the worker says).
    pub kind: String,
    /// Hex digest of the model it serves now.
    pub model_digest: String,
    /// Model version (learning updates applied).
    pub model_version: u64,
    /// Short digest of the model it started from: names its update log and queue subject.
    pub lineage: String,
    /// Values per encoding.
    pub input_size: u32,
    /// Number of labels.
    pub labels: u32,
    /// Requests it handles at once.
    pub max_in_flight: u32,
    /// Protocol version of its frames.
    pub protocol: u8,
    /// Where to send it requests.
    pub subject: String,
    /// Sent once, when it stops: forget it now rather than after missed heartbeats.
    #[serde(default)]
    pub leaving: bool,
    /// Drawn when the worker process starts: announcements of one run are states of one
    /// replica, whose version only grows, so a late heartbeat never takes it back; a new run
    /// (a restart under the same id) starts over.
    #[serde(default)]
    pub run: u64,
    /// The log entry of the newest model snapshot this worker knows is stored (the one it
    /// started from, or one it offered); 0: none.
    #[serde(default)]
    pub snapshot: u64,
    /// Log entries this run has applied, not counting those a snapshot it started from held.
    #[serde(default)]
    pub replayed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_round_trips_and_fields_added_later_default() {
        let a = Announce {
            id: "w1".into(),
            name: "w1".into(),
            kind: "spiking".into(),
            model_digest: "00".repeat(32),
            model_version: 3,
            lineage: "abcd".into(),
            input_size: 768,
            labels: 10,
            max_in_flight: 64,
            protocol: 1,
            subject: "qnllm.engine.w1".into(),
            leaving: false,
            run: 7,
            snapshot: 5,
            replayed: 3,
        };
        let mut json = serde_json::to_value(&a).unwrap();
        json.as_object_mut().unwrap().remove("leaving");
        let back: Announce = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, a);
        for field in ["run", "snapshot", "replayed"] {
            json.as_object_mut().unwrap().remove(field);
        }
        let old: Announce = serde_json::from_value(json).unwrap();
        assert_eq!((old.run, old.snapshot, old.replayed), (0, 0, 0));
    }
}
