//! The HTTP face of vibecheck: an OpenAI-compatible API over every checkpoint of the served runs.
//!
//! `router(state)` is the whole app (tested with `tower::ServiceExt::oneshot`, no port bound); `serve` binds it.
//! Requests are validated once at the edge (`openai.rs`) into engine parameters; every error leaves as one
//! OpenAI-style JSON body with the right status (`error.rs`); models load on first use (`registry.rs`), and
//! generation runs on blocking threads so async handlers never touch tensors.

mod arena;
mod error;
mod guard;
mod metrics;
mod openai;
pub mod registry;
pub mod remote;
mod routes;
pub mod timeline;

use std::sync::Arc;

pub use error::ApiError;
pub use registry::Registry;
pub use remote::RemoteEndpoint;
pub use routes::router;

/// Settings of a server, resolved once by the CLI.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub host: String,
    pub port: u16,
    /// Requests generating at once (they share each model's running batch); more wait in line (bounded by
    /// `queue`).
    pub max_concurrent: usize,
    /// Requests allowed to wait for a generation slot before new ones get 429.
    pub queue: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_cap: usize,
    /// With a key, every route but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl ServeSettings {
    /// Bound to a loopback address: then requests must name a loopback host (a DNS-rebinding defence).
    pub fn loopback(&self) -> bool {
        matches!(
            self.host.as_str(),
            "127.0.0.1" | "localhost" | "::1" | "[::1]"
        ) || self.host.starts_with("127.")
    }
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            max_concurrent: 8,
            queue: 64,
            max_tokens_cap: 4096,
            api_key: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub settings: Arc<ServeSettings>,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    pub(crate) waiting: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// The watch store behind the timeline pages (`/runs`), when there is one.
    pub store: Option<Arc<std::path::PathBuf>>,
}

impl AppState {
    pub fn new(registry: Registry, settings: ServeSettings) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent.max(1))),
            waiting: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            metrics: Arc::default(),
            registry: Arc::new(registry),
            settings: Arc::new(settings),
            store: None,
        }
    }

    /// Serves the timeline pages from the store at `path` (opened per request; WAL lets a watcher write meanwhile).
    pub fn with_store(mut self, path: std::path::PathBuf) -> Self {
        self.store = Some(Arc::new(path));
        self
    }
}

/// How long open streams may run on after Ctrl-C or SIGTERM before the server exits anyway.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds `settings.host:port` and serves until Ctrl-C or SIGTERM: then it stops accepting, lets open requests
/// finish for up to [`SHUTDOWN_GRACE`], and returns.
pub async fn serve(
    state: AppState,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> std::io::Result<()> {
    let addr = format!("{}:{}", state.settings.host, state.settings.port);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    on_ready(listener.local_addr()?);
    // New checkpoints of served run folders appear while the server runs.
    let registry = state.registry.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let r = registry.clone();
            let _ = tokio::task::spawn_blocking(move || r.refresh()).await;
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
