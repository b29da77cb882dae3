//! `hindsight serve`: the OpenAI-compatible server. Every option is a flag, an environment
//! variable `HINDSIGHT_…`, or a key of the TOML `--config` file; flags win over the
//! environment, which wins over the file, which wins over the defaults.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;

use crate::api::admin::{Admin, AdminAuth};
use crate::api::guard::HostPolicy;
use crate::api::server::{serve, shutdown_signal};
use crate::api::{app_with_routes, ApiKeys, AppState, ServerConfig, ShutdownHooks};
use crate::engine::{Backend, EngineOptions, LocalEngine};
use crate::model::overrides::{ModelOverrides, RopeOverride};
use crate::store::Store;

use super::model_args::{model_overrides, ContextArgs};
use super::serve_learn::{start_learner_when_ready, LearnFlags};
use super::serve_store::{publish_store_gauges, StoreProbe};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Boxed: the flags are large and `Args` sits in the CLI's subcommand enum.
    #[command(flatten)]
    pub flags: Box<ServeFlags>,
}

impl Args {
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        self.flags.resolve()
    }
}

impl From<ServeFlags> for Args {
    fn from(flags: ServeFlags) -> Self {
        Self {
            flags: Box::new(flags),
        }
    }
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeFlags {
    /// TOML file with any of these options (snake_case keys, e.g. `max_queue = 32`).
    #[arg(long, env = "HINDSIGHT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "HINDSIGHT_BIND")]
    pub bind: Option<String>,
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, env = "HINDSIGHT_MODEL")]
    pub model: Option<PathBuf>,
    /// The id clients send as `model` [default: the model directory's name].
    #[arg(long, env = "HINDSIGHT_MODEL_NAME")]
    pub model_name: Option<String>,
    /// An accepted API key (repeatable; the variable takes a comma-separated list).
    #[arg(long = "api-key", env = "HINDSIGHT_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// A file of accepted API keys, one per line (`#` comments and blank lines ignored).
    #[arg(long, env = "HINDSIGHT_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// postgres://… or sqlite://… [default: SQLite in the data directory].
    #[arg(long, env = "HINDSIGHT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where Hindsight keeps its database, journal, imported models and adapters [default: data].
    #[arg(long, env = "HINDSIGHT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Most sequences decoding together [default: 8].
    #[arg(long, env = "HINDSIGHT_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// Waiting requests beyond this are refused with 429 [default: 256].
    #[arg(long, env = "HINDSIGHT_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Weights dtype: f32 or bf16 [default: f32].
    #[arg(long, env = "HINDSIGHT_DTYPE")]
    pub dtype: Option<String>,
    /// cpu, cuda, cuda:N or auto [default: auto].
    #[arg(long, env = "HINDSIGHT_DEVICE")]
    pub device: Option<String>,
    /// Larger request bodies are refused with 413 [default: 8388608].
    #[arg(long, env = "HINDSIGHT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub learn: LearnFlags,
    /// Token for /dashboard and /admin/api [default: none: open on a loopback bind, off otherwise].
    #[arg(long, env = "HINDSIGHT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A host name, besides localhost and loopback addresses, that requests may be addressed to
    /// without API keys (repeatable; the variable takes a comma-separated list).
    #[arg(
        long = "allowed-host",
        env = "HINDSIGHT_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// /metrics and /readyz need an API key or the admin token.
    #[arg(long, env = "HINDSIGHT_PROTECT_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    pub protect_metrics: bool,
}

/// The `--config` file: the same options as the flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub bind: Option<String>,
    pub model: Option<PathBuf>,
    pub model_name: Option<String>,
    pub api_keys: Option<Vec<String>>,
    pub api_keys_file: Option<PathBuf>,
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub max_concurrent: Option<usize>,
    pub max_queue: Option<usize>,
    pub dtype: Option<String>,
    pub device: Option<String>,
    pub max_body_bytes: Option<usize>,
    /// A `--rope-scaling` spec, e.g. `"yarn:4"` or `"none"`.
    pub rope_scaling: Option<String>,
    pub max_context: Option<usize>,
    /// The learner's options, e.g. `[learn]` / `learn_mode = "opd"`.
    pub learn: Option<LearnFlags>,
    pub admin_token: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub protect_metrics: Option<bool>,
}

/// Every option resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub bind: String,
    pub model: Option<PathBuf>,
    pub model_name: Option<String>,
    pub api_keys: Vec<String>,
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub max_concurrent: usize,
    pub max_queue: usize,
    pub dtype: String,
    pub device: String,
    pub max_body_bytes: usize,
    pub rope_scaling: Option<RopeOverride>,
    pub max_context: Option<usize>,
    pub prefix_cache_mb: Option<usize>,
    pub learn: LearnFlags,
    pub admin_token: Option<String>,
    pub allowed_hosts: Vec<String>,
    pub protect_metrics: bool,
}

impl ServeFlags {
    /// Layers flags/env (already merged by clap) over the config file over the defaults, and
    /// validates the result.
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => read_config_file(path)?,
            None => FileConfig::default(),
        };
        let mut api_keys = if self.api_keys.is_empty() {
            file.api_keys.unwrap_or_default()
        } else {
            self.api_keys
        };
        if let Some(path) = self.api_keys_file.or(file.api_keys_file) {
            api_keys.extend(read_keys_file(&path)?);
        }
        api_keys.retain(|key| !key.trim().is_empty());
        let rope_scaling = match (self.context.rope_scaling, file.rope_scaling) {
            (Some(flag), _) => Some(flag),
            (None, Some(spec)) => Some(
                spec.parse()
                    .map_err(|e| anyhow::anyhow!("rope_scaling in the config file: {e}"))?,
            ),
            (None, None) => None,
        };
        let config = ServeConfig {
            bind: self
                .bind
                .or(file.bind)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            model: self.model.or(file.model),
            model_name: self.model_name.or(file.model_name),
            api_keys,
            database_url: self.database_url.or(file.database_url),
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "data".into()),
            max_concurrent: self.max_concurrent.or(file.max_concurrent).unwrap_or(8),
            max_queue: self.max_queue.or(file.max_queue).unwrap_or(256),
            dtype: self.dtype.or(file.dtype).unwrap_or_else(|| "f32".into()),
            device: self.device.or(file.device).unwrap_or_else(|| "auto".into()),
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(crate::api::DEFAULT_MAX_BODY_BYTES),
            rope_scaling,
            max_context: self.context.max_context.or(file.max_context),
            prefix_cache_mb: self.context.prefix_cache_mb,
            learn: self.learn.or(file.learn.unwrap_or_default()),
            admin_token: self.admin_token.or(file.admin_token),
            allowed_hosts: if self.allowed_hosts.is_empty() {
                file.allowed_hosts.unwrap_or_default()
            } else {
                self.allowed_hosts
            },
            protect_metrics: self.protect_metrics || file.protect_metrics.unwrap_or(false),
        };
        config.validate()?;
        Ok(config)
    }
}

fn read_config_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
}

fn read_keys_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API keys file {}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        anyhow::bail!("the API keys file {} contains no keys", path.display());
    }
    Ok(keys)
}

impl ServeConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.dtype.as_str(), "f32" | "bf16") {
            anyhow::bail!("--dtype must be f32 or bf16, got {:?}", self.dtype);
        }
        let device_ok = matches!(self.device.as_str(), "cpu" | "cuda" | "auto")
            || self
                .device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !device_ok {
            anyhow::bail!(
                "--device must be cpu, cuda, cuda:N or auto, got {:?}",
                self.device
            );
        }
        if self.max_concurrent == 0 {
            anyhow::bail!("--max-concurrent must be at least 1");
        }
        if self.max_body_bytes == 0 {
            anyhow::bail!("--max-body-bytes must be at least 1");
        }
        let admin_token = self
            .admin_token
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty());
        if self.protect_metrics && self.api_keys.is_empty() && !admin_token {
            anyhow::bail!(
                "--protect-metrics needs an API key (--api-key) or an admin token \
                 (--admin-token) to protect /metrics and /readyz with"
            );
        }
        self.learn.validate()
    }

    /// The addresses `bind` names; without API keys every one must be loopback, so an
    /// unauthenticated server is never reachable from the network.
    pub fn bind_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = self
            .bind
            .to_socket_addrs()
            .with_context(|| format!("--bind {:?} is not a host:port address", self.bind))?
            .collect();
        if addrs.is_empty() {
            anyhow::bail!("--bind {:?} resolves to no address", self.bind);
        }
        if self.api_keys.is_empty() {
            if let Some(open) = addrs.iter().find(|addr| !addr.ip().is_loopback()) {
                anyhow::bail!(
                    "refusing to serve on {open} without an API key: anyone on the network could \
                     use it. Pass --api-key KEY (or --api-keys-file / HINDSIGHT_API_KEY), or bind \
                     to a loopback address such as 127.0.0.1:8080"
                );
            }
        }
        Ok(addrs)
    }

    /// Rope scaling and window: the bundled model defaults to YaRN ×4 (32768 tokens).
    pub fn overrides(&self) -> ModelOverrides {
        model_overrides(
            self.rope_scaling.clone(),
            self.max_context,
            self.model.is_none(),
        )
    }

    pub fn engine_options(&self, model_dir: PathBuf) -> EngineOptions {
        let model_name = self
            .model_name
            .clone()
            .unwrap_or_else(|| model_name_of(&model_dir));
        EngineOptions {
            model_dir,
            model_name,
            dtype: self.dtype.clone(),
            device: self.device.clone(),
            max_batch: self.max_concurrent,
            queue_capacity: self.max_queue,
            overrides: self.overrides(),
            prefix_cache_bytes: super::model_args::prefix_cache_bytes(self.prefix_cache_mb),
        }
    }
}

/// The default model id: the directory's name.
pub fn model_name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hindsight".into())
}

/// The model directory to serve: `--model`, or the bundled default model (imported into the
/// data dir on first use).
pub fn resolve_model_dir(config: &ServeConfig) -> anyhow::Result<PathBuf> {
    let Some(dir) = &config.model else {
        return crate::model::default_model::default_model_dir(&config.data_dir);
    };
    if !dir.join("config.json").is_file() {
        anyhow::bail!(
            "--model {}: not a Hugging Face model directory (no config.json there)",
            dir.display()
        );
    }
    Ok(dir.clone())
}

/// Loads the model on its serving thread.
async fn start_local_engine(options: EngineOptions) -> anyhow::Result<Arc<LocalEngine>> {
    let engine = tokio::task::spawn_blocking(move || LocalEngine::start(options))
        .await
        .context("the model loader stopped")??;
    Ok(Arc::new(engine))
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

pub fn run(args: Args) -> anyhow::Result<()> {
    init_tracing();
    let config = args.resolve()?;
    let addrs = config.bind_addrs()?;
    let model_dir = resolve_model_dir(&config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addrs[..])
            .await
            .with_context(|| format!("listening on {}", config.bind))?;
        tracing::info!(model = %model_dir.display(), device = %config.device, dtype = %config.dtype, "loading the model");
        let store = Store::connect(config.database_url.as_deref(), &config.data_dir)
            .await
            .context("opening the store")?;
        tracing::info!(backend = store.backend(), "store opened");
        let device = crate::engine::local::parse_device(&config.device)?;
        let engine = start_local_engine(config.engine_options(model_dir.clone())).await?;
        let learner = start_learner_when_ready(
            &config.learn,
            &model_dir,
            &config.data_dir,
            device,
            store.clone(),
            Arc::clone(&engine),
        )
        .await
        .context("starting the learner")?;
        let backend: Arc<dyn Backend> = engine;
        let keys = ApiKeys::new(&config.api_keys);
        let loopback = addrs.iter().all(|addr| addr.ip().is_loopback());
        // Without keys, /v1 and the open dashboard answer only loopback names and these.
        let hosts = HostPolicy::new(&config.allowed_hosts);
        let admin_auth = AdminAuth::new(config.admin_token.as_deref(), loopback)
            .with_hosts(hosts.clone());
        let mut state = AppState::new(backend, Arc::new(store.clone()))
            .with_keys(keys)
            .with_config(ServerConfig {
                max_body_bytes: config.max_body_bytes,
            })
            .with_allowed_hosts(hosts)
            .with_probe(Arc::new(StoreProbe(store.clone())));
        if config.protect_metrics {
            state = state.with_protected_ops(admin_auth.clone());
        }
        // Live admin feeds end when shutdown starts, so the graceful drain does not wait on them.
        let (stopping, stop_rx) = tokio::sync::watch::channel(false);
        let admin = Admin::new(store.clone(), admin_auth)
            .with_shutdown(stop_rx)
            .with_control(learner.clone());
        tracing::info!(dashboard = admin.auth.describe(), "admin dashboard at /dashboard");
        let routes = crate::api::app::store_routes(&store, admin);
        // Stored Responses (`previous_response_id`, GET /v1/responses/{id}) outlive restarts.
        let responses = crate::store::responses::ResponseStore::persistent(&store);
        let responses_layer = axum::Extension(responses.clone());
        let gauges = tokio::spawn(publish_store_gauges(store.clone()));
        let hooks = ShutdownHooks::new();
        // Registered first so that the trainer's last step is recorded before the store closes.
        hooks.add("learner", move || Box::pin(async move { learner.shutdown().await }));
        // Before the turn store: Store::shutdown closes the pool the response writer uses.
        hooks.add("response store", move || {
            Box::pin(async move { responses.shutdown().await })
        });
        hooks.add("turn store", move || {
            Box::pin(async move {
                gauges.abort();
                store.shutdown().await;
            })
        });
        tracing::info!(
            addr = %listener.local_addr()?,
            model = %state.backend.info().id,
            auth = if config.api_keys.is_empty() { "off (loopback only)" } else { "bearer keys" },
            "serving the OpenAI-compatible API"
        );
        let signal = async move {
            shutdown_signal().await;
            let _ = stopping.send(true);
        };
        let app = app_with_routes(state, routes).layer(responses_layer);
        serve(listener, app, hooks, signal)
            .await
            .context("serving HTTP")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flags_win_over_file_which_wins_over_defaults() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "bind = \"127.0.0.1:9999\"\nmax_queue = 7\ndtype = \"bf16\""
        )
        .unwrap();
        let args = ServeFlags {
            config: Some(file.path().to_path_buf()),
            max_queue: Some(3),
            ..ServeFlags::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.bind, "127.0.0.1:9999");
        assert_eq!(config.max_queue, 3);
        assert_eq!(config.dtype, "bf16");
        assert_eq!(config.max_concurrent, 8);
        assert_eq!(config.device, "auto");
    }

    #[test]
    fn unknown_config_keys_and_bad_values_name_the_problem() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "max_queeu = 7").unwrap();
        let err = ServeFlags {
            config: Some(file.path().to_path_buf()),
            ..ServeFlags::default()
        }
        .resolve()
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("max_queeu"), "{text}");
        assert!(text.contains(&file.path().display().to_string()), "{text}");
        let err = ServeFlags {
            device: Some("tpu".into()),
            ..ServeFlags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("--device"), "{err}");
    }

    #[test]
    fn refuses_a_public_bind_without_keys() {
        let public = ServeFlags {
            bind: Some("0.0.0.0:8080".into()),
            ..ServeFlags::default()
        };
        let err = public.clone().resolve().unwrap().bind_addrs().unwrap_err();
        assert!(err.to_string().contains("without an API key"), "{err}");
        let with_key = ServeFlags {
            api_keys: vec!["secret".into()],
            ..public
        };
        assert!(with_key.resolve().unwrap().bind_addrs().is_ok());
        let local = ServeFlags::default().resolve().unwrap();
        assert!(local.bind_addrs().unwrap()[0].ip().is_loopback());
    }

    #[test]
    fn allowed_hosts_and_protected_metrics() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "allowed_hosts = [\"box.lan\"]\nprotect_metrics = true"
        )
        .unwrap();
        let config = ServeFlags {
            config: Some(file.path().to_path_buf()),
            admin_token: Some("t".into()),
            ..ServeFlags::default()
        };
        let resolved = config.clone().resolve().unwrap();
        assert!(resolved.allowed_hosts == ["box.lan"] && resolved.protect_metrics);
        let no_credential = ServeFlags {
            admin_token: None,
            ..config
        };
        let err = no_credential.resolve().unwrap_err();
        assert!(err.to_string().contains("--protect-metrics"), "{err}");
    }

    #[test]
    fn keys_file_adds_keys_and_an_empty_one_is_an_error() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "# team keys\nalpha\n\n beta \n").unwrap();
        let config = ServeFlags {
            api_keys: vec!["gamma".into()],
            api_keys_file: Some(file.path().to_path_buf()),
            ..ServeFlags::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.api_keys, ["gamma", "alpha", "beta"]);
        let empty = tempfile::NamedTempFile::new().unwrap();
        let err = ServeFlags {
            api_keys_file: Some(empty.path().to_path_buf()),
            ..ServeFlags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("contains no keys"), "{err}");
    }

    #[test]
    fn the_bundled_model_is_served_with_yarn_4_unless_told_otherwise() {
        let bundled = ServeFlags::default().resolve().unwrap().overrides();
        let default: RopeOverride = super::super::model_args::DEFAULT_MODEL_ROPE_SCALING
            .parse()
            .unwrap();
        assert_eq!(bundled.rope_scaling, Some(default));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "rope_scaling = \"none\"\nmax_context = 4096").unwrap();
        let native = ServeFlags {
            config: Some(file.path().to_path_buf()),
            ..ServeFlags::default()
        }
        .resolve()
        .unwrap()
        .overrides();
        assert_eq!(native.rope_scaling.unwrap().to_string(), "none");
        assert_eq!(native.max_context, Some(4096));
        let own = ServeFlags {
            model: Some("/models/m".into()),
            ..ServeFlags::default()
        };
        assert_eq!(own.resolve().unwrap().overrides().rope_scaling, None);
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "rope_scaling = \"ntk:2\"").unwrap();
        let err = ServeFlags {
            config: Some(bad.path().to_path_buf()),
            ..ServeFlags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("rope_scaling"), "{err}");
    }

    #[test]
    fn missing_model_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeFlags {
            model: Some(dir.path().to_path_buf()),
            ..ServeFlags::default()
        }
        .resolve()
        .unwrap();
        let err = resolve_model_dir(&config).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
