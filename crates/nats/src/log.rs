//! The update log: one JetStream stream per model lineage, whose sequence numbers are the
//! one order in which every replica, on every host, applies learning updates; and beside
//! it the lineage's newest model snapshots, so a late replica starts from one of those.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::{Bytes, BytesMut};
use qnllm_engine::Digest;
use qnllm_protocol::{encode_frame, Deadline, Learn, Message, DEFAULT_MAX_FRAME_BYTES};
use qnllm_router::ModelState;

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

/// What the log holds at one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// The entry.
    Entry(LogEntry),
    /// Nothing yet: the log is not that long.
    NotWritten,
    /// Trimmed after a snapshot: the log now starts at `first`, and a replica that has not
    /// applied the entry must load a snapshot instead.
    Trimmed {
        /// The first sequence the log still holds.
        first: u64,
    },
}

/// A model as every replica holds it after one log entry: a late replica loads it and
/// follows the log from the entry after.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The last log entry applied to it.
    pub seq: u64,
    /// Its version and digest.
    pub state: ModelState,
    /// The model file (the safetensors format of `docs/engine.md`).
    pub model: Bytes,
}

/// Snapshot message headers: the entry, the model version and the model digest (hex).
const SEQ_HEADER: &str = "Qnllm-Seq";
const VERSION_HEADER: &str = "Qnllm-Version";
const DIGEST_HEADER: &str = "Qnllm-Digest";

/// Snapshots a snapshot stream keeps: the newest by entry is read, so one taken late by a
/// lagging replica, stored after a newer one, does not hide it.
const SNAPSHOTS_KEPT: i64 = 2;

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
        self.open(stream::Config {
            name: subject::log_stream(lineage),
            subjects: vec![subject::learn(lineage)],
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            duplicate_window: DEDUP_WINDOW,
            ..stream::Config::default()
        })
        .await
    }

    /// The snapshot stream of `lineage`, created if missing.
    async fn snapshot_stream(&self, lineage: &str) -> Result<stream::Stream, NatsError> {
        self.open(stream::Config {
            name: subject::snapshot_stream(lineage),
            subjects: vec![subject::snapshot(lineage)],
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            max_messages: SNAPSHOTS_KEPT,
            duplicate_window: DEDUP_WINDOW,
            ..stream::Config::default()
        })
        .await
    }

    /// The stream `config` names, created with `config` if missing.
    async fn open(&self, config: stream::Config) -> Result<stream::Stream, NatsError> {
        let name = config.name.clone();
        if let Some(stream) = self.lock().get(&name) {
            return Ok(stream.clone());
        }
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

    /// The entry at `seq`, or `None` when there is none: not written yet, or trimmed
    /// ([`LearnLog::fetch`] tells which).
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream fails or the entry is not a `learn` frame.
    pub async fn read(&self, lineage: &str, seq: u64) -> Result<Option<LogEntry>, NatsError> {
        Ok(match self.fetch(lineage, seq).await? {
            Fetched::Entry(entry) => Some(entry),
            Fetched::NotWritten | Fetched::Trimmed { .. } => None,
        })
    }

    /// The entry at `seq`; or, when the log holds none there, whether it was trimmed (below
    /// the first sequence the stream still holds) or is not written yet.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream fails or the entry is not a `learn` frame.
    pub async fn fetch(&self, lineage: &str, seq: u64) -> Result<Fetched, NatsError> {
        let stream = self.stream(lineage).await?;
        let fail = |reason: String| NatsError::Log {
            stream: subject::log_stream(lineage),
            reason,
        };
        let message = match stream.get_raw_message(seq).await {
            Ok(message) => message,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                // Only the stream's state tells a purged entry from one not written yet:
                // a purge moves its first sequence past the entries it removed.
                let (first, _) = self.bounds(lineage).await?;
                return Ok(if seq < first {
                    Fetched::Trimmed { first }
                } else {
                    Fetched::NotWritten
                });
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let frame = decode_one(&message.payload, DEFAULT_MAX_FRAME_BYTES)
            .map_err(|e| fail(format!("entry {seq}: {e}")))?;
        match frame.message() {
            Ok(Message::Learn(learn)) => Ok(Fetched::Entry(LogEntry {
                seq,
                label: learn.label,
                encoding: learn.encoding.0,
            })),
            Ok(other) => Err(fail(format!("entry {seq} is {} not learn", other.kind()))),
            Err(e) => Err(fail(format!("entry {seq}: {e}"))),
        }
    }

    /// The sequence of the lineage's last entry (0 for an empty log).
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream fails.
    pub async fn last_entry(&self, lineage: &str) -> Result<u64, NatsError> {
        Ok(self.bounds(lineage).await?.1)
    }

    /// The first sequence the lineage's log still holds and its last: `(1, 0)` for a log
    /// never written, `(n + 1, n)` for one trimmed of all its `n` entries.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream fails.
    pub async fn bounds(&self, lineage: &str) -> Result<(u64, u64), NatsError> {
        let mut stream = self.stream(lineage).await?;
        let info = stream.info().await.map_err(|e| NatsError::Log {
            stream: subject::log_stream(lineage),
            reason: e.to_string(),
        })?;
        // An empty stream reports first 0; its first entry will be 1.
        let first = info.state.first_sequence.max(1);
        Ok((first, info.state.last_sequence))
    }

    /// Removes the lineage's entries below `below` (JetStream purge up to a sequence), and
    /// returns how many went. Idempotent: entries already gone are not counted, and a
    /// `below` under the first entry held removes nothing.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream refuses.
    pub async fn trim(&self, lineage: &str, below: u64) -> Result<u64, NatsError> {
        let stream = self.stream(lineage).await?;
        let purged = stream
            .purge()
            .sequence(below)
            .await
            .map_err(|e| NatsError::Log {
                stream: subject::log_stream(lineage),
                reason: format!("purge below {below}: {e}"),
            })?;
        Ok(purged.purged)
    }

    /// Stores `snapshot` as the lineage's newest. Every replica offers the same bits for one
    /// entry, and all but the first are dropped as duplicates.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream refuses (a model larger than the server's
    /// `max_payload`, say).
    pub async fn put_snapshot(&self, lineage: &str, snapshot: &Snapshot) -> Result<(), NatsError> {
        let fail = |reason: String| NatsError::Log {
            stream: subject::snapshot_stream(lineage),
            reason,
        };
        self.snapshot_stream(lineage).await?;
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("{lineage}-{}", snapshot.seq);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        headers.insert(SEQ_HEADER, snapshot.seq.to_string().as_str());
        let version = snapshot.state.version.to_string();
        headers.insert(VERSION_HEADER, version.as_str());
        headers.insert(DIGEST_HEADER, snapshot.state.digest.to_hex().as_str());
        self.js
            .publish_with_headers(subject::snapshot(lineage), headers, snapshot.model.clone())
            .await
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    /// The lineage's newest snapshot (by log entry), or `None` when none was taken.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream fails, or a stored snapshot lacks its headers.
    pub async fn latest_snapshot(&self, lineage: &str) -> Result<Option<Snapshot>, NatsError> {
        Ok(self.snapshots(lineage).await?.into_iter().next())
    }

    /// The lineage's kept snapshots, newest (by log entry) first; none when none was taken.
    ///
    /// # Errors
    ///
    /// [`NatsError::Log`] when JetStream fails, or a stored snapshot lacks its headers.
    pub async fn snapshots(&self, lineage: &str) -> Result<Vec<Snapshot>, NatsError> {
        let name = subject::snapshot_stream(lineage);
        let fail = |reason: String| NatsError::Log {
            stream: name.clone(),
            reason,
        };
        let mut stream = match self.js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let info = stream.info().await.map_err(|e| fail(e.to_string()))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut kept = Vec::new();
        for seq in first..=last {
            let message = match stream.get_raw_message(seq).await {
                Ok(message) => message,
                // Dropped since the stream's state was read: a newer one took its place.
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(fail(e.to_string())),
            };
            let snapshot =
                snapshot_of(&message).map_err(|reason| fail(format!("message {seq}: {reason}")))?;
            kept.push(snapshot);
        }
        kept.sort_by_key(|s| std::cmp::Reverse(s.seq));
        Ok(kept)
    }
}

/// The snapshot a stored message holds, or what is missing from it.
fn snapshot_of(message: &jetstream::message::StreamMessage) -> Result<Snapshot, String> {
    let header = |name: &str| {
        message
            .headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .ok_or_else(|| format!("no {name} header"))
    };
    let number = |name: &str| {
        header(name)?
            .parse::<u64>()
            .map_err(|_| format!("{name} is not a number"))
    };
    let digest = header(DIGEST_HEADER)?;
    let digest = Digest::from_hex(&digest)
        .ok_or_else(|| format!("{DIGEST_HEADER} {digest:?} is not 64 hex digits"))?;
    Ok(Snapshot {
        seq: number(SEQ_HEADER)?,
        state: ModelState {
            version: number(VERSION_HEADER)?,
            digest,
        },
        model: message.payload.clone(),
    })
}
