//! The catalog of message kinds: wire id, name, direction and purpose of each.

/// Who sends a message kind to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A client (application) to the hub.
    ClientToHub,
    /// The hub to a client.
    HubToClient,
    /// A worker to the hub.
    WorkerToHub,
    /// The hub to a worker.
    HubToWorker,
    /// A client or worker to the hub.
    PeerToHub,
    /// The hub to a client or worker.
    HubToPeer,
    /// Either end of any connection.
    Any,
}

impl Direction {
    /// Short human form used in the docs and `--help` tables, e.g. `client → hub`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToHub => "client → hub",
            Direction::HubToClient => "hub → client",
            Direction::WorkerToHub => "worker → hub",
            Direction::HubToWorker => "hub → worker",
            Direction::PeerToHub => "client/worker → hub",
            Direction::HubToPeer => "hub → client/worker",
            Direction::Any => "either way",
        }
    }
}

macro_rules! catalog {
    ($( $variant:ident = $id:literal, $name:literal, $dir:ident, $purpose:literal; )*) => {
        /// Every message kind of protocol version 1, with its one-byte wire id.
        ///
        /// Ids are grouped by family in steps of 16: session `0x0_`, engine lifecycle
        /// `0x1_`, inference `0x2_`, learning `0x3_`, cache `0x4_`, monitoring `0x5_`,
        /// control `0x6_`, custom handlers `0x7_`, broadcast `0x8_`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum MessageKind {
            $( #[doc = $purpose] $variant = $id, )*
        }

        impl MessageKind {
            /// All kinds, in wire-id order.
            pub const ALL: &'static [MessageKind] = &[$(MessageKind::$variant),*];

            /// The kind with wire id `id`, if protocol version 1 defines one.
            pub fn from_u8(id: u8) -> Option<MessageKind> {
                match id {
                    $( $id => Some(MessageKind::$variant), )*
                    _ => None,
                }
            }

            /// The kind's name in `snake_case`, as used in docs and golden-vector files.
            pub fn name(self) -> &'static str {
                match self { $( MessageKind::$variant => $name, )* }
            }

            /// Who sends this kind.
            pub fn direction(self) -> Direction {
                match self { $( MessageKind::$variant => Direction::$dir, )* }
            }

            /// One sentence on what the kind is for.
            pub fn purpose(self) -> &'static str {
                match self { $( MessageKind::$variant => $purpose, )* }
            }
        }
    };
}

catalog! {
    Hello = 0x01, "hello", PeerToHub, "Opens a session: protocol version, role, name and optional auth token.";
    Welcome = 0x02, "welcome", HubToPeer, "Accepts a hello: session id, server version and the limits in force.";
    Ping = 0x03, "ping", Any, "Liveness probe; answered by a pong with the same request id.";
    Pong = 0x04, "pong", Any, "Answer to a ping.";
    Goodbye = 0x05, "goodbye", Any, "Orderly close: the sender finishes in-flight work and closes.";
    Error = 0x06, "error", Any, "Failure of the request with the same id (or of the connection, id 0).";
    Register = 0x10, "register", WorkerToHub, "A worker offers an engine: name, model digest, input size, labels, concurrency.";
    Registered = 0x11, "registered", HubToWorker, "The hub accepted a registration and names the engine id.";
    Heartbeat = 0x12, "heartbeat", WorkerToHub, "Periodic proof of life with the worker's load.";
    Drain = 0x13, "drain", HubToWorker, "Stop taking new requests, finish in-flight ones within the grace period.";
    Unregister = 0x14, "unregister", WorkerToHub, "The worker withdraws its engine; no new requests will be routed to it.";
    Status = 0x15, "status", WorkerToHub, "The worker's state changed (serving, draining, …).";
    Reason = 0x20, "reason", PeerToHub, "Reason over one encoding (raw little-endian f32); forwarded hub → worker.";
    Result = 0x21, "result", HubToPeer, "The reasoning for one encoding; sent worker → hub → client.";
    Batch = 0x22, "batch", PeerToHub, "Reason over several encodings of one dimension; forwarded hub → worker.";
    BatchResult = 0x23, "batch_result", HubToPeer, "One result per encoding of a batch, in input order.";
    Cancel = 0x24, "cancel", Any, "The requester gave up on the request with this id; drop it if not started.";
    Coordinate = 0x30, "coordinate", ClientToHub, "Ask several teacher engines about one encoding and reach a consensus.";
    CoordinationResult = 0x31, "coordination_result", HubToClient, "Every teacher's answer, the consensus and the agreement.";
    Learn = 0x32, "learn", Any, "Apply the learning update for (encoding, label) to a model at a given version.";
    Learned = 0x33, "learned", Any, "The learning update was applied: new model version and digest.";
    ModelQuery = 0x34, "model_query", Any, "Ask for a description of the model an engine serves.";
    ModelInfo = 0x35, "model_info", Any, "Description of a model: sizes, version, digest.";
    CacheQuery = 0x40, "cache_query", ClientToHub, "Ask for the result cache's statistics.";
    CacheStats = 0x41, "cache_stats", HubToClient, "Result-cache statistics: entries, capacity, hits, misses, evictions.";
    CacheClear = 0x42, "cache_clear", ClientToHub, "Empty the result cache; answered with the statistics after clearing.";
    MetricsQuery = 0x50, "metrics_query", ClientToHub, "Ask for a snapshot of the hub's metrics.";
    Metrics = 0x51, "metrics", HubToClient, "A metrics snapshot (JSON object).";
    Subscribe = 0x52, "subscribe", ClientToHub, "Receive events on the named topics from now on.";
    Event = 0x53, "event", HubToClient, "Something happened on a subscribed topic.";
    Config = 0x60, "config", Any, "Read (empty object) or change settings; answered with the settings in force.";
    Shutdown = 0x61, "shutdown", Any, "Stop: drain in-flight work within the grace period, then exit.";
    Call = 0x70, "call", ClientToHub, "Invoke a handler registered on the hub by name with opaque bytes.";
    Reply = 0x71, "reply", HubToClient, "A handler's answer to a call: opaque bytes.";
    Broadcast = 0x80, "broadcast", Any, "Deliver opaque bytes on a topic to every engine, in one order for all.";
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:02x})", self.name(), *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_id_and_ids_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_u8(kind as u8), Some(kind));
            assert!(seen.insert(kind as u8), "duplicate id for {kind}");
            assert!(!kind.purpose().is_empty());
        }
        assert_eq!(MessageKind::ALL.len(), 35);
    }

    #[test]
    fn ids_outside_the_catalog_are_unknown() {
        let unknown = (0..=u8::MAX)
            .filter(|&id| MessageKind::from_u8(id).is_none())
            .count();
        assert_eq!(unknown, 256 - MessageKind::ALL.len());
        assert_eq!(MessageKind::from_u8(0), None);
        assert_eq!(MessageKind::from_u8(0xff), None);
    }
}
