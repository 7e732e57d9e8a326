//! The HTTP face of vibecheck: an OpenAI-compatible API over every checkpoint of the served runs.
//!
//! `router(state)` is the whole app (tested with `tower::ServiceExt::oneshot`, no port bound); `serve` binds it.
//! Requests are validated once at the edge (`openai.rs`) into engine parameters; every error leaves as one
//! OpenAI-style JSON body with the right status (`error.rs`); models load on first use (`registry.rs`), and
//! generation runs on blocking threads so async handlers never touch tensors.

mod arena;
mod chat;
mod cost;
mod error;
mod guard;
mod listen;
mod metrics;
mod openai;
mod page;
pub mod registry;
pub mod remote;
mod routes;
pub mod timeline;

use std::sync::Arc;

pub use chat::validate_body;
pub use error::ApiError;
pub use listen::HEADER_TIMEOUT;
pub use page::StorePool;
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
    /// Largest `max_tokens` a request may ask for (`--max-tokens-cap`; the engine's limits table caps it at
    /// [`vibecheck_engine::sampling::limits::MAX_TOKENS`]).
    pub max_tokens_cap: usize,
    /// With a key, every route but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Serve a non-loopback address without a key (`--insecure-no-key`): refused unless set, warned when set.
    pub insecure_no_key: bool,
    /// After Ctrl-C or SIGTERM, how long running generations may go on before they are cut (queued ones are
    /// refused at once).
    pub shutdown_grace: std::time::Duration,
}

impl ServeSettings {
    /// Refuses to expose the server beyond this machine with no key, unless the user said so explicitly (then
    /// the caller warns). Anyone who can reach the port can otherwise run generations, read every stored answer
    /// and vote in the arena.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.loopback() || self.api_key.is_some() || self.insecure_no_key {
            return Ok(());
        }
        Err(format!(
            "--host {} makes the server reachable from other machines, and no --api-key is set: anyone who can \
             reach it could generate, read every stored answer and vote. Set --api-key KEY (or VIBECHECK_API_KEY), \
             or pass --insecure-no-key if this network is yours alone",
            self.host
        ))
    }

    /// Bound to a loopback address: then requests must name a loopback host (a DNS-rebinding defence).
    pub fn loopback(&self) -> bool {
        vibecheck_client::is_loopback_host(&self.host)
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
            insecure_no_key: false,
            shutdown_grace: SHUTDOWN_GRACE,
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
    pub store: Option<Arc<StorePool>>,
    pub(crate) shutdown: Arc<Shutdown>,
    /// The last health check's answer: checks run one at a time and callers within [`HEALTH_TTL`] share it.
    pub(crate) health: Arc<tokio::sync::Mutex<Option<routes::HealthAnswer>>>,
}

/// How long a health check's answer is reused for other callers.
pub(crate) const HEALTH_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a server is in its shutdown: draining (new and queued generations are refused with 503) from the signal
/// on, and cut (running generations end with an error event) once the grace period is over.
pub(crate) struct Shutdown {
    draining: std::sync::atomic::AtomicBool,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            draining: Default::default(),
            cut: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Shutdown {
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once running generations must stop (never, unless the server is shutting down).
    pub(crate) async fn cut(&self) {
        let mut rx = self.cut.subscribe();
        let _ = rx.wait_for(|cut| *cut).await;
    }
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
            shutdown: Arc::default(),
            health: Arc::default(),
        }
    }

    /// Serves the timeline pages from the store at `path` (a few connections opened once and reused; WAL lets a
    /// watcher write meanwhile).
    pub fn with_store(mut self, path: std::path::PathBuf) -> Self {
        self.store = Some(Arc::new(StorePool::new(path)));
        self
    }
}

/// How long running generations may go on after Ctrl-C or SIGTERM before they are cut.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// After the grace period, how long cut streams get to send their last event before the server returns anyway.
const CUT_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds `settings.host:port` and serves until Ctrl-C or SIGTERM. Then it stops accepting connections, answers
/// queued and new requests with 503 at once, lets running generations finish for up to
/// `settings.shutdown_grace`, cuts the rest with a final error event, and returns within a few seconds of that.
pub async fn serve(
    state: AppState,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> std::io::Result<()> {
    state
        .settings
        .check_exposure()
        .map_err(|m| std::io::Error::new(std::io::ErrorKind::PermissionDenied, m))?;
    if !state.settings.loopback() && state.settings.api_key.is_none() {
        tracing::warn!(
            host = %state.settings.host,
            "SERVING WITHOUT AN API KEY ON A NON-LOOPBACK ADDRESS (--insecure-no-key): anyone who can reach this \
             port can generate, read every stored answer and vote"
        );
    }
    let addr = format!("{}:{}", state.settings.host, state.settings.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
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
    let shutdown = state.shutdown.clone();
    let grace = state.settings.shutdown_grace;
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let slots = state.slots.clone();
    let drain = {
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown
                .draining
                .store(true, std::sync::atomic::Ordering::SeqCst);
            // Requests waiting for a slot wake with an error (503) instead of starting.
            slots.close();
            tracing::info!(
                grace_s = grace.as_secs_f64(),
                "shutting down: refusing new requests, letting running generations finish"
            );
            let _ = signalled_tx.send(true);
        }
    };
    let server = listen::serve_connections(listener, router(state), drain);
    tokio::pin!(server);
    tokio::select! {
        () = &mut server => return Ok(()),
        _ = async {
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {}
    }
    tracing::warn!("grace period over: cutting the generations still running");
    let _ = shutdown.cut.send(true);
    tokio::select! {
        () = &mut server => Ok(()),
        _ = tokio::time::sleep(CUT_FLUSH) => {
            tracing::warn!("connections still open after the cut; exiting anyway");
            Ok(())
        }
    }
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
