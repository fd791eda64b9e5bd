//! Subject names: where announcements, requests and the update log live on NATS.

/// Every worker publishes its [`crate::Announce`] here, with heartbeats.
pub const ANNOUNCE: &str = "qnllm.announce";

/// A hub publishes here when it starts; every worker announces itself at once.
pub const DISCOVER: &str = "qnllm.discover";

/// The queue group of the per-model subjects: one engine of the group answers.
pub const QUEUE_GROUP: &str = "qnllm";

/// A worker's own request subject.
pub fn engine(id: &str) -> String {
    format!("qnllm.engine.{id}")
}

/// Where a worker answers "what state did update N leave you in".
pub fn applied(id: &str) -> String {
    format!("qnllm.engine.{id}.applied")
}

/// The queue-group subject of every engine of one model lineage ("any engine").
pub fn model(lineage: &str) -> String {
    format!("qnllm.model.{lineage}")
}

/// The subject of a lineage's learning updates, captured by its log stream.
pub fn learn(lineage: &str) -> String {
    format!("qnllm.learn.{lineage}")
}

/// The JetStream stream holding a lineage's learning updates in order.
pub fn log_stream(lineage: &str) -> String {
    format!("QNLLM_LEARN_{lineage}")
}

/// The subject of a lineage's model snapshots, captured by its snapshot stream.
pub fn snapshot(lineage: &str) -> String {
    format!("qnllm.snapshot.{lineage}")
}

/// The JetStream stream holding a lineage's newest model snapshot.
pub fn snapshot_stream(lineage: &str) -> String {
    format!("QNLLM_SNAP_{lineage}")
}

/// `name` made fit for one subject token (and a stream name): letters, digits, `-` and `_`
/// kept, anything else (`.`, `*`, `>`, spaces) becomes `_`.
pub fn token(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_replaces_what_nats_subjects_forbid() {
        assert_eq!(token("host-1.pid 7>*"), "host-1_pid_7__");
        assert_eq!(token(""), "_");
        assert_eq!(engine(&token("a.b")), "qnllm.engine.a_b");
    }
}
