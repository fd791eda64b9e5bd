//! `EventLog`: the recent events the dashboard lists (engines joining and leaving, from the
//! hub; ejections and disagreements, from changes in the router's counters).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Events kept for the dashboard.
const KEPT: usize = 50;

/// One thing that happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Event {
    /// Milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// `joined`, `left`, `ejected`, `disagreement`.
    pub(crate) kind: &'static str,
    /// What to show.
    pub(crate) text: String,
}

/// The last [`KEPT`] events, newest last.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    recent: Mutex<VecDeque<Event>>,
}

impl EventLog {
    pub(crate) fn push(&self, kind: &'static str, text: String) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(Event { at_ms, kind, text });
    }

    /// A hub event (topic `engines`), in words.
    pub(crate) fn push_hub(&self, topic: &str, data: &serde_json::Value) {
        if topic != "engines" {
            return;
        }
        if let Some(name) = data["joined"].as_str() {
            self.push("joined", format!("engine {name} joined"));
        } else if let Some(name) = data["left"].as_str() {
            let reason = data["reason"].as_str().unwrap_or("gone");
            self.push("left", format!("engine {name} left: {reason}"));
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Event> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}
