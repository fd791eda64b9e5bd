//! `HubConfig`: every setting of a hub, with safe defaults, readable from TOML.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qnllm_router::strategy::{Performance, Preferred, RoundRobin, Strategy};
use qnllm_router::{BatchPolicy, Mode, RouterConfig};
use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// A setting is out of range or unsafe.
    #[error("{0}")]
    Invalid(String),
}

/// Settings of a hub. Every field has a default; a TOML file may set any of them by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// TCP address to listen on; `None` for no TCP listener.
    pub listen: Option<String>,
    /// Unix socket path to listen on (created with mode 0600).
    pub unix: Option<PathBuf>,
    /// Shared token every hello must carry. Required to listen beyond loopback.
    pub token: Option<String>,
    /// Most open connections; more are refused with `TooManyConnections`.
    pub max_connections: usize,
    /// Of `max_connections`, how many only workers may take, so clients cannot lock
    /// workers out; at most a quarter of `max_connections` is kept.
    pub worker_reserved_connections: usize,
    /// Most connections still in their handshake (before hello) once they have had
    /// `handshake_floor_ms`. These do not count against `max_connections`; past the budget,
    /// the one that has waited longest is closed to make room, so silent sockets cannot lock
    /// anyone out.
    pub max_handshakes: usize,
    /// Every new connection has at least this long, in milliseconds, to say hello before it
    /// may be closed to make room in the handshake budget; one whose hello has been read is
    /// never closed for it.
    pub handshake_floor_ms: u64,
    /// Most requests one client connection may have in flight; at the limit, the hub stops
    /// reading that socket until replies drain (back-pressure).
    pub max_requests_per_connection: usize,
    /// Most request bytes (frame payloads) one client connection may have in flight; at the
    /// limit, the hub stops reading that socket until replies drain.
    pub max_request_bytes_per_connection: usize,
    /// Most client requests in the router at once, shared among connections in turn (a
    /// freed slot goes to the next connection with requests waiting); 0 (the default) is
    /// what the engines take at once: their `max_in_flight` summed, 64 for each that names
    /// none, at least 64.
    pub max_routed_requests: usize,
    /// Most subscriptions one client connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Largest frame payload accepted, in bytes.
    pub max_frame_bytes: u32,
    /// How long a new connection has to say hello, in milliseconds.
    pub hello_timeout_ms: u64,
    /// How long a client connection may stay silent, in milliseconds.
    pub idle_timeout_ms: u64,
    /// How often subscribers of the `metrics` topic get a snapshot, in milliseconds.
    pub metrics_interval_ms: u64,
    /// How often workers send heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// A worker silent for longer than this is declared dead, in milliseconds.
    pub heartbeat_timeout_ms: u64,
    /// Deadline for requests that carry none, in milliseconds.
    pub default_deadline_ms: u64,
    /// How long shutdown waits for in-flight requests, in milliseconds.
    pub grace_ms: u64,
    /// How engines are chosen: `round-robin`, `local-first`, `remote-first`, `performance`.
    pub strategy: String,
    /// Share of requests `local-first` / `remote-first` send to the preferred kind.
    pub prefer_share: f64,
    /// How a request runs: `single` (with failover), `hedged`, or `redundant`.
    pub mode: String,
    /// Engines per request in `redundant` mode (at least 2).
    pub redundancy: usize,
    /// Result cache entries; 0 turns the cache off.
    pub cache_capacity: usize,
    /// Longest single try, in milliseconds; 0 means half of what is left while another
    /// engine could still be tried.
    pub per_try_timeout_ms: u64,
    /// Dynamic batching toward workers: most encodings per batch (0 = off).
    pub batch_max: usize,
    /// Dynamic batching: longest wait after a batch's first encoding, in microseconds.
    pub batch_delay_us: u64,
    /// Teacher models for `coordinate` requests: `seed:N` or a safetensors path each.
    pub teachers: Vec<String>,
    /// When the student learns a `coordinate` consensus: `majority`, `unanimous`,
    /// `reliable`, `reliable:SHARE`, `peer:SHARE` or `margin:M` (`docs/learning.md`).
    pub policy: String,
    /// Busy polling: how long a connection's reader polls for the next frame before its
    /// thread sleeps, in microseconds; 0 (the default) never polls. Saves the wake-up of a
    /// sleeping core per hop at the price of CPU spent waiting (`docs/hub.md`).
    pub busy_poll_us: u64,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            listen: Some("127.0.0.1:9999".into()),
            unix: None,
            token: None,
            max_connections: 1_024,
            worker_reserved_connections: 32,
            max_handshakes: 64,
            handshake_floor_ms: 200,
            max_requests_per_connection: 512,
            max_request_bytes_per_connection: 8 * 1024 * 1024,
            max_routed_requests: 0,
            max_subscriptions_per_connection: 16,
            max_frame_bytes: qnllm_protocol::DEFAULT_MAX_FRAME_BYTES,
            hello_timeout_ms: 2_000,
            idle_timeout_ms: 300_000,
            metrics_interval_ms: 1_000,
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 1_500,
            default_deadline_ms: 5_000,
            grace_ms: 10_000,
            strategy: "round-robin".into(),
            prefer_share: 0.8,
            mode: "single".into(),
            redundancy: 3,
            cache_capacity: 0,
            per_try_timeout_ms: 0,
            batch_max: 0,
            batch_delay_us: 200,
            teachers: Vec::new(),
            policy: "majority".into(),
            busy_poll_us: 0,
        }
    }
}

impl HubConfig {
    /// Reads a TOML file; unset fields keep their defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<HubConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown,
            reason: e.to_string(),
        })
    }

    /// Checks ranges and the loopback rule: a listener beyond loopback needs a token.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_none() && self.unix.is_none() {
            return Err(ConfigError::Invalid(
                "nothing to listen on: set `listen` or `unix`".into(),
            ));
        }
        if self.max_connections == 0
            || self.heartbeat_interval_ms == 0
            || self.metrics_interval_ms == 0
            || self.hello_timeout_ms == 0
            || self.max_handshakes == 0
            || self.max_requests_per_connection == 0
            || self.max_request_bytes_per_connection == 0
        {
            return Err(ConfigError::Invalid(
                "max_connections, max_handshakes, max_requests_per_connection, \
                 max_request_bytes_per_connection, heartbeat_interval_ms, metrics_interval_ms \
                 and hello_timeout_ms must be positive"
                    .into(),
            ));
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError::Invalid(
                "heartbeat_timeout_ms must exceed heartbeat_interval_ms".into(),
            ));
        }
        self.router_config()?;
        self.consensus_policy()?;
        if let Some(listen) = &self.listen {
            let loopback = match listen.parse::<SocketAddr>() {
                Ok(addr) => addr.ip().is_loopback(),
                Err(_) => listen.starts_with("localhost:"),
            };
            if !loopback && self.token.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::Invalid(format!(
                    "refusing to listen on {listen} without an auth token: set `token` in the config file, \
                     pass --token, or set QNLLM_TOKEN (or listen on 127.0.0.1)"
                )));
            }
        }
        Ok(())
    }

    /// The router settings these name.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for an unknown strategy or mode, or a share outside `[0, 1]`.
    pub fn router_config(&self) -> Result<RouterConfig, ConfigError> {
        if !(0.0..=1.0).contains(&self.prefer_share) {
            return Err(ConfigError::Invalid(format!(
                "prefer_share must lie in [0, 1], got {}",
                self.prefer_share
            )));
        }
        let strategy: Box<dyn Strategy> = match self.strategy.as_str() {
            "round-robin" => Box::new(RoundRobin::default()),
            "local-first" => Box::new(Preferred::local(self.prefer_share)),
            "remote-first" => Box::new(Preferred::remote(self.prefer_share)),
            "performance" => Box::new(Performance),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown strategy `{other}`: use round-robin, local-first, remote-first or performance"
                )))
            }
        };
        let mode = match self.mode.as_str() {
            "single" => Mode::Single,
            "hedged" => Mode::Hedged,
            "redundant" if self.redundancy >= 2 => Mode::Redundant {
                copies: self.redundancy,
            },
            "redundant" => {
                return Err(ConfigError::Invalid("redundancy must be at least 2".into()))
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown mode `{other}`: use single, hedged or redundant"
                )))
            }
        };
        Ok(RouterConfig {
            strategy,
            mode,
            cache_capacity: (self.cache_capacity > 0).then_some(self.cache_capacity),
            per_try_timeout: (self.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(self.per_try_timeout_ms)),
            ..RouterConfig::default()
        })
    }

    /// The coordinator's consensus policy `policy` names.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the accepted forms.
    pub fn consensus_policy(&self) -> Result<qnllm_router::ConsensusPolicy, ConfigError> {
        qnllm_router::ConsensusPolicy::parse(&self.policy).map_err(ConfigError::Invalid)
    }

    /// The dynamic batching these name, if on.
    pub fn batch_policy(&self) -> Option<BatchPolicy> {
        (self.batch_max > 1).then(|| BatchPolicy {
            max_batch: self.batch_max,
            max_delay: Duration::from_micros(self.batch_delay_us),
        })
    }

    /// The connections kept for workers: `worker_reserved_connections`, at most a quarter
    /// of `max_connections`.
    pub(crate) fn worker_reserve(&self) -> usize {
        self.worker_reserved_connections
            .min(self.max_connections / 4)
    }

    pub(crate) fn busy_poll(&self) -> Duration {
        Duration::from_micros(self.busy_poll_us)
    }

    pub(crate) fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }
    /// What a new connection has before it may be closed to make room: the floor, never
    /// more than the hello timeout itself.
    pub(crate) fn handshake_floor(&self) -> Duration {
        Duration::from_millis(self.handshake_floor_ms.min(self.hello_timeout_ms))
    }
    pub(crate) fn metrics_interval(&self) -> Duration {
        Duration::from_millis(self.metrics_interval_ms)
    }
    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub(crate) fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
    pub(crate) fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }
    pub(crate) fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        HubConfig::default().validate().unwrap();
    }

    #[test]
    fn a_public_address_needs_a_token() {
        let open = HubConfig {
            listen: Some("0.0.0.0:9999".into()),
            ..HubConfig::default()
        };
        let err = open.validate().unwrap_err().to_string();
        assert!(
            err.contains("without an auth token") && err.contains("QNLLM_TOKEN"),
            "{err}"
        );
        let guarded = HubConfig {
            token: Some("s3cret".into()),
            ..open
        };
        guarded.validate().unwrap();
    }

    #[test]
    fn toml_sets_fields_by_name_and_rejects_unknown_ones() {
        let config: HubConfig =
            toml::from_str("max_connections = 3\nunix = \"/tmp/q.sock\"").unwrap();
        assert_eq!(config.max_connections, 3);
        assert_eq!(config.listen.as_deref(), Some("127.0.0.1:9999"));
        assert!(toml::from_str::<HubConfig>("max_conections = 3").is_err());
    }

    #[test]
    fn unknown_strategies_and_modes_are_refused_with_the_choices() {
        let bad = HubConfig {
            strategy: "fastest".into(),
            ..HubConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("round-robin, local-first"));
        let bad = HubConfig {
            mode: "redundant".into(),
            redundancy: 1,
            ..HubConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
        let good = HubConfig {
            strategy: "performance".into(),
            mode: "hedged".into(),
            cache_capacity: 10,
            ..HubConfig::default()
        };
        good.validate().unwrap();
    }
}
