//! The state every handler shares, and the HTTP layer's own settings.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use super::admin::AdminAuth;
use super::auth::ApiKeys;
use super::guard::HostPolicy;
use super::metrics;
use crate::engine::Backend;
use crate::store::TurnSink;

pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Settings of the HTTP layer itself.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Something `/readyz` must see ready (the model is ready once a backend exists; the store
/// adds its own probe).
pub trait ReadinessProbe: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Err explains what is not ready.
    fn check(&self) -> Result<(), String>;
    /// State shown beside the verdict on /readyz (e.g. the store's queue and journal).
    fn detail(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub turns: Arc<dyn TurnSink>,
    pub keys: ApiKeys,
    pub metrics: PrometheusHandle,
    pub config: ServerConfig,
    pub readiness: Vec<Arc<dyn ReadinessProbe>>,
    /// Host names besides loopback that /v1 answers without API keys (see `api::guard`).
    pub hosts: HostPolicy,
    /// Some: /metrics and /readyz need an API key or this admin's token (`--protect-metrics`).
    pub protect_ops: Option<AdminAuth>,
}

impl AppState {
    /// Auth off, default limits, the process-wide metrics recorder.
    pub fn new(backend: Arc<dyn Backend>, turns: Arc<dyn TurnSink>) -> Self {
        Self {
            backend,
            turns,
            keys: ApiKeys::default(),
            metrics: metrics::recorder(),
            config: ServerConfig::default(),
            readiness: Vec::new(),
            hosts: HostPolicy::default(),
            protect_ops: None,
        }
    }

    pub fn with_allowed_hosts(mut self, hosts: HostPolicy) -> Self {
        self.hosts = hosts;
        self
    }

    /// /metrics and /readyz then need an API key, or `admin`'s token or sign-in cookie.
    pub fn with_protected_ops(mut self, admin: AdminAuth) -> Self {
        self.protect_ops = Some(admin);
        self
    }

    pub fn with_keys(mut self, keys: ApiKeys) -> Self {
        self.keys = keys;
        self
    }

    pub fn with_config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    pub fn with_probe(mut self, probe: Arc<dyn ReadinessProbe>) -> Self {
        self.readiness.push(probe);
        self
    }
}
