//! `Builder`: settings of a `UnifiedEngine`, from code, a TOML file, or CLI flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qnllm_engine::{Model, Params, SpikingEngine};
use qnllm_hub::{Hub, HubConfig};
use qnllm_router::LocalBackend;

use crate::error::Error;
use crate::front::FrontSettings;
use crate::unified::UnifiedEngine;

/// Settings for a [`UnifiedEngine`]; every one has a default.
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) hub: HubConfig,
    pub(crate) local_engines: usize,
    pub(crate) model: Option<Model>,
    pub(crate) teachers: Vec<Model>,
    pub(crate) deadline: Duration,
    pub(crate) front: FrontSettings,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            hub: HubConfig::default(),
            local_engines: 1,
            model: None,
            teachers: Vec::new(),
            deadline: Duration::from_secs(5),
            front: FrontSettings::default(),
        }
    }
}

impl Builder {
    /// Hub settings from a TOML file (see `docs/hub.md`); later calls override them.
    ///
    /// # Errors
    ///
    /// The file cannot be read or parsed.
    pub fn config_file(mut self, path: &Path) -> Result<Builder, Error> {
        self.hub = HubConfig::from_file(path)?;
        Ok(self)
    }

    /// All hub settings at once.
    pub fn hub_config(mut self, config: HubConfig) -> Builder {
        self.hub = config;
        self
    }

    /// TCP address of the embedded hub (`127.0.0.1:9999` by default; port 0 picks one).
    pub fn listen(mut self, addr: impl Into<String>) -> Builder {
        self.hub.listen = Some(addr.into());
        self
    }

    /// Also listen on a Unix socket.
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Builder {
        self.hub.unix = Some(path.into());
        self
    }

    /// In-process engines (default 1).
    pub fn local_engines(mut self, n: usize) -> Builder {
        self.local_engines = n;
        self
    }

    /// The model the local engines serve (default `seed:1`).
    pub fn model(mut self, model: Model) -> Builder {
        self.model = Some(model);
        self
    }

    /// `round-robin`, `local-first`, `remote-first` or `performance`.
    pub fn strategy(mut self, name: impl Into<String>) -> Builder {
        self.hub.strategy = name.into();
        self
    }

    /// `single`, `hedged` or `redundant`.
    pub fn mode(mut self, name: impl Into<String>) -> Builder {
        self.hub.mode = name.into();
        self
    }

    /// Result cache entries (0 = off).
    pub fn cache(mut self, entries: usize) -> Builder {
        self.hub.cache_capacity = entries;
        self
    }

    /// Adds a teacher model for [`UnifiedEngine::coordinate`].
    pub fn teacher(mut self, model: Model) -> Builder {
        self.teachers.push(model);
        self
    }

    /// Deadline of each request.
    pub fn deadline(mut self, deadline: Duration) -> Builder {
        self.deadline = deadline;
        self
    }

    /// Serves the KServe v2 HTTP front on `addr` (port 0 picks one); `qnllm-front` starts it
    /// (`qnllm_front::FrontConfig::for_engine`).
    pub fn http(mut self, addr: impl Into<String>) -> Builder {
        self.front.http = Some(addr.into());
        self
    }

    /// Serves the KServe v2 gRPC front on `addr` (port 0 picks one).
    pub fn grpc(mut self, addr: impl Into<String>) -> Builder {
        self.front.grpc = Some(addr.into());
        self
    }

    /// The bearer token the front requires (needed to listen beyond loopback).
    pub fn front_token(mut self, token: impl Into<String>) -> Builder {
        self.front.token = Some(token.into());
        self
    }

    /// Checks the settings and builds the engine (not yet listening).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming what to fix.
    pub fn build(self) -> Result<UnifiedEngine, Error> {
        let hub = Hub::new(self.hub.clone())?;
        let model = match self.model.clone() {
            Some(model) => model,
            None => Model::from_seed(1, Params::default())?,
        };
        let mut locals = Vec::new();
        for i in 0..self.local_engines {
            let backend =
                LocalBackend::new(format!("local-{i}"), SpikingEngine::new(model.clone()));
            hub.add_local(backend.clone());
            locals.push(backend);
        }
        // The hub's coordinator already has the config file's teachers; these follow them.
        let coordinator = hub.coordinator();
        for model in &self.teachers {
            let name = format!("teacher-{}", coordinator.teacher_count());
            let teacher = LocalBackend::new(name, SpikingEngine::new(model.clone()));
            coordinator.add_teacher(std::sync::Arc::new(teacher));
        }
        Ok(UnifiedEngine::new(hub, locals, self.deadline, self.front))
    }
}
