//! `Discovery`: a hub's view of the workers on the cluster. It listens to announcements,
//! asks every worker to announce when it starts, and keeps the router's NATS backends in
//! step: a worker heard of is added, one that leaves or falls silent is removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use qnllm_router::{Backend, EngineId, Router};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::announce::Announce;
use crate::backend::NatsBackend;
use crate::error::NatsError;
use crate::log::LearnLog;
use crate::subject;

/// What a hub's discovery accepts and how long it waits.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The workers' heartbeat interval; one silent for three is removed.
    pub heartbeat: Duration,
    /// Accept only workers of this lineage (short digest of the starting model).
    pub lineage: Option<String>,
    /// Let the backends learn through the update log, created with this many copies.
    pub log_replicas: Option<usize>,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            heartbeat: Duration::from_secs(1),
            lineage: None,
            log_replicas: Some(1),
        }
    }
}

/// Running discovery; dropping it stops it (the backends it added stay until removed).
#[derive(Debug)]
pub struct Discovery {
    _stop: DropGuard,
    ready: tokio::sync::watch::Receiver<usize>,
}

impl Discovery {
    /// Starts discovery on `client` for `router`.
    ///
    /// # Errors
    ///
    /// [`NatsError::Subscribe`] when the announce subject cannot be subscribed to.
    pub async fn start(
        client: async_nats::Client,
        router: Arc<Router>,
        config: DiscoveryConfig,
    ) -> Result<Discovery, NatsError> {
        let mut announcements =
            client
                .subscribe(subject::ANNOUNCE)
                .await
                .map_err(|e| NatsError::Subscribe {
                    subject: subject::ANNOUNCE.into(),
                    reason: e.to_string(),
                })?;
        // Listening first, then asking: no answer is missed.
        let _ = client.flush().await;
        if let Err(e) = client.publish(subject::DISCOVER, "".into()).await {
            tracing::warn!(error = %e, "cannot ask workers to announce");
        }
        let log = config
            .log_replicas
            .map(|replicas| Arc::new(LearnLog::new(client.clone(), replicas)));
        let stop = CancellationToken::new();
        let (count, ready) = tokio::sync::watch::channel(0usize);
        let token = stop.clone();
        tokio::spawn(async move {
            let mut known: HashMap<String, (Arc<NatsBackend>, Instant, EngineId)> = HashMap::new();
            let silence = config.heartbeat * 3;
            let mut sweep = tokio::time::interval(config.heartbeat);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = sweep.tick() => {
                        known.retain(|id, (backend, heard, route)| {
                            let alive = heard.elapsed() < silence;
                            if !alive {
                                tracing::warn!(engine = %backend.name(), %id, "worker silent; removed");
                                router.remove(*route);
                            }
                            alive
                        });
                    }
                    message = announcements.next() => {
                        let Some(message) = message else { break };
                        let announce: Announce = match serde_json::from_slice(&message.payload) {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::warn!(error = %e, "ignoring a malformed announcement");
                                continue;
                            }
                        };
                        if config.lineage.as_ref().is_some_and(|l| *l != announce.lineage) {
                            continue;
                        }
                        if announce.leaving {
                            if let Some((backend, _, route)) = known.remove(&announce.id) {
                                tracing::info!(engine = %backend.name(), "worker left");
                                router.remove(route);
                            }
                        } else if let Some((backend, heard, _)) = known.get_mut(&announce.id) {
                            backend.update(&announce);
                            *heard = Instant::now();
                        } else {
                            let backend = Arc::new(NatsBackend::new(client.clone(), &announce, log.clone()));
                            tracing::info!(engine = %announce.name, subject = %announce.subject, "worker joined");
                            let admission = router.add(backend.clone());
                            known.insert(announce.id.clone(), (backend, Instant::now(), admission.id));
                        }
                    }
                }
                count.send_replace(known.len());
            }
        });
        Ok(Discovery {
            _stop: stop.drop_guard(),
            ready,
        })
    }

    /// Waits until at least `n` workers are known.
    pub async fn wait_for(&mut self, n: usize) {
        self.wait_until(|known| known >= n).await;
    }

    /// Waits until the number of workers known satisfies `ok`.
    pub async fn wait_until(&mut self, mut ok: impl FnMut(usize) -> bool) {
        let _ = self.ready.wait_for(|&known| ok(known)).await;
    }

    /// Workers known now.
    pub fn known(&self) -> usize {
        *self.ready.borrow()
    }
}
