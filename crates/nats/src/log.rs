//! The update log: one JetStream stream per model lineage, whose sequence numbers are the
//! one order in which every replica, on every host, applies learning updates.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::BytesMut;
use qnllm_protocol::{encode_frame, Deadline, Learn, Message, DEFAULT_MAX_FRAME_BYTES};

use crate::error::NatsError;
use crate::frame::decode_one;
use crate::subject;

/// One learning update, as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its place in the one order (1, 2, …).
    pub seq: u64,
    /// The label to learn.
    pub label: u32,
    /// The encoding.
    pub encoding: Vec<f32>,
}

/// The appending and reading side of the update logs, for one process (a hub's backends
/// share one, so the calls for every replica of one update become one entry).
#[derive(Debug)]
pub struct LearnLog {
    js: jetstream::Context,
    /// This process's id in message ids: another hub's identical update is another entry.
    instance: u64,
    replicas: usize,
    streams: Mutex<HashMap<String, stream::Stream>>,
}

/// How long JetStream remembers a message id: the calls for one update's replicas arrive
/// within milliseconds of each other.
const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// Longest wait for a JetStream API answer.
const API_TIMEOUT: Duration = Duration::from_secs(5);

impl LearnLog {
    /// Logs on `client`'s cluster, created with `replicas` copies (1 for a single server, 3
    /// for a three-node cluster) when they do not exist yet.
    pub fn new(client: async_nats::Client, replicas: usize) -> LearnLog {
        let mut js = jetstream::new(client);
        // The connection has no request timeout (each request brings its own): without one
        // here, an API call to a cluster with no JetStream leader would wait for ever.
        js.set_timeout(API_TIMEOUT);
        LearnLog {
            js,
            instance: fastrand::u64(..),
            replicas: replicas.max(1),
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// The stream of `lineage`, created if missing.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream is off or refuses.
    pub async fn stream(&self, lineage: &str) -> Result<stream::Stream, NatsError> {
        let name = subject::log_stream(lineage);
        if let Some(stream) = self.lock().get(&name) {
            return Ok(stream.clone());
        }
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject::learn(lineage)],
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            duplicate_window: DEDUP_WINDOW,
            ..stream::Config::default()
        };
        let stream = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| NatsError::Log {
                stream: name.clone(),
                reason: e.to_string(),
            })?;
        self.lock().insert(name, stream.clone());
        Ok(stream)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, stream::Stream>> {
        // A map of handles: any state a panic left is still a valid map.
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends an update and returns its sequence. Appending the same update again from this
    /// process (same base version, label and encoding) within the de-duplication window
    /// returns the first sequence instead of adding an entry: that is how the calls for
    /// every replica of one update make one entry.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`].
    pub async fn append(
        &self,
        lineage: &str,
        encoding: &[f32],
        label: u32,
        base_version: u64,
    ) -> Result<u64, NatsError> {
        let name = subject::log_stream(lineage);
        let fail = |reason: String| NatsError::Log {
            stream: name.clone(),
            reason,
        };
        self.stream(lineage).await?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for x in encoding {
            x.to_bits().hash(&mut hasher);
        }
        let id = format!(
            "{:016x}-{base_version}-{label}-{:016x}",
            self.instance,
            hasher.finish()
        );
        let mut payload = BytesMut::new();
        let learn = Learn {
            label,
            base_version,
            encoding: encoding.to_vec().into(),
        };
        encode_frame(&Message::Learn(learn), 0, Deadline::NONE, &mut payload);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let ack = self
            .js
            .publish_with_headers(subject::learn(lineage), headers, payload.freeze())
            .await
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// The entry at `seq`, or `None` when the log is not that long yet.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream fails or the entry is not a `learn` frame.
    pub async fn read(&self, lineage: &str, seq: u64) -> Result<Option<LogEntry>, NatsError> {
        let stream = self.stream(lineage).await?;
        let fail = |reason: String| NatsError::Log {
            stream: subject::log_stream(lineage),
            reason,
        };
        let message = match stream.get_raw_message(seq).await {
            Ok(message) => message,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None)
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let frame = decode_one(&message.payload, DEFAULT_MAX_FRAME_BYTES)
            .map_err(|e| fail(format!("entry {seq}: {e}")))?;
        match frame.message() {
            Ok(Message::Learn(learn)) => Ok(Some(LogEntry {
                seq,
                label: learn.label,
                encoding: learn.encoding.0,
            })),
            Ok(other) => Err(fail(format!("entry {seq} is {} not learn", other.kind()))),
            Err(e) => Err(fail(format!("entry {seq}: {e}"))),
        }
    }
}
