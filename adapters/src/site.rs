//! A site: one store, its background tasks and its HTTP server, opened,
//! run and stopped as one thing.
//!
//! [`Site::open`] opens the store (RocksDB's open runs on the blocking
//! pool), binds the listener, and loads what the API needs from the store
//! (lease and tuple expiries, model classes, the recording policy).
//! [`Site::run`] starts the tasks of `loops` (expiry, `pldbget`, heartbeats
//! and forwarders, the supervisor), serves the API until the stop signal,
//! then stops them, so a test or an embedding program runs a whole site in
//! one call. `pepper serve` parses its
//! configuration and runs one Site; nothing else in the binary knows how a
//! site is put together.
//!
//! A Site owns its store and its tasks. The rejected alternative, the binary
//! spawning each loop itself, left every new loop to be remembered in two
//! places (start and stop).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pepper_storage::{Options, Store};
use tokio::net::TcpListener;

use crate::server::ServerLimits;
use crate::state::{ApiConfig, AppState};

/// How long live streams get to notice a shutdown before their connections
/// are closed: a client that stopped reading could otherwise hold the
/// graceful shutdown forever.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything a site is opened with.
#[derive(Debug)]
pub struct SiteConfig {
    /// The store's folder.
    pub data: PathBuf,
    /// The address the API listens on (port 0: any free port).
    pub listen: SocketAddr,
    /// The store's options (site name, durability, retention, ...).
    pub options: Options,
    /// The API's settings: leases, federation, recording, edge.
    pub api: ApiConfig,
    /// The connection loop's limits.
    pub server: ServerLimits,
    /// The certificate, key and peer CA, to serve HTTPS (`tls`).
    pub tls: Option<crate::tls::TlsFiles>,
}

/// An open site, ready to [`run`](Site::run).
pub struct Site {
    store: Store,
    state: AppState,
    listener: TcpListener,
    addr: SocketAddr,
    server: ServerLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Stops a running site from elsewhere (a signal handler, a test). It
/// holds only the stop signal, not the site's state, so the store still
/// closes when the site ends while a Stopper is kept.
#[derive(Clone)]
pub struct Stopper(Arc<tokio::sync::watch::Sender<bool>>);

impl Stopper {
    /// Begins the shutdown: live streams end, the server stops accepting,
    /// and [`Site::run`] returns once the tasks are stopped.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl Site {
    /// Opens the store in `config.data`, binds `config.listen` and loads the
    /// API's state from the store.
    ///
    /// # Errors
    /// The store cannot be opened (another process holds it, a corrupt or
    /// newer format), the address cannot be bound, or the configuration
    /// is refused (federation, recording policy, edge settings).
    pub async fn open(config: SiteConfig) -> std::io::Result<Site> {
        let SiteConfig { data, listen, options, mut api, server, tls } = config;
        // TLS first: a bad certificate is refused before the store opens.
        let tls = tls.as_ref().map(crate::tls::Tls::load).transpose().map_err(std::io::Error::other)?;
        let acceptor = tls.as_ref().map(crate::tls::Tls::acceptor);
        api.federation.tls = tls;
        let folder = data.display().to_string();
        let data_folder = data.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&data, options))
            .await
            .map_err(|e| failed("the store's open task failed", e))?
            .map_err(|e| failed(&format!("cannot open the store in {folder}"), e))?;
        // The key beside the store, once the store's lock is held: no
        // other process creates it at the same time.
        let key_folder = data_folder.clone();
        match tokio::task::spawn_blocking(move || crate::keys::SiteKey::load_or_create(&key_folder)).await {
            Ok(Ok(key)) => api.federation.site_key = Some(Arc::new(key)),
            Ok(Err(e)) => {
                store.close();
                return Err(std::io::Error::other(e));
            }
            Err(e) => {
                store.close();
                return Err(failed("the site key's task failed", e));
            }
        }
        let listener = match TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => {
                store.close();
                return Err(failed(&format!("cannot listen on {listen}"), e));
            }
        };
        let addr = listener.local_addr()?;
        let state = match AppState::load(store.clone(), api).await {
            Ok(state) => state,
            Err(e) => {
                store.close();
                return Err(failed("cannot load the site's state", e));
            }
        };
        Ok(Site { store, state, listener, addr, server, tls: acceptor })
    }

    /// The address the API listens on (with the port chosen when it was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS of a client of this site's own address (its agent), when
    /// it serves HTTPS: it trusts exactly this site's certificate.
    ///
    /// # Errors
    /// The TLS configuration cannot be built.
    pub fn own_client_tls(&self) -> Result<Option<rustls::ClientConfig>, String> {
        self.state.config.federation.tls.as_ref().map(crate::tls::Tls::own_client_config).transpose()
    }

    /// The site's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A handle that stops [`Site::run`].
    pub fn stopper(&self) -> Stopper {
        Stopper(self.state.stopping.clone())
    }

    /// Runs the site until `shutdown` resolves or a [`Stopper`] stops it:
    /// starts the background tasks, serves the API, then stops the tasks.
    ///
    /// Tasks that those tasks spawned (one forwarder per peer, backfills)
    /// end with the runtime; the store closes, its last writes durable,
    /// when its last handle drops. `pepper serve` therefore drops its
    /// runtime after `run` returns and then closes the store.
    ///
    /// # Errors
    /// A store read while starting the supervisor fails, or accepting
    /// connections fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        let Site { store, state, listener, addr, server, tls } = self;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(crate::loops::expiry::run_expiry(state.clone()));
        tasks.spawn(crate::loops::expiry::run_tuple_expiry(state.clone()));
        tasks.spawn(crate::loops::pldbget::run_pldbget(state.clone()));
        // Standing interests first: a complete monitor must never look
        // uninterested to a peer, or the peer would skip what it records.
        if let Err(e) = crate::loops::supervise::prepare(&state).await {
            tasks.shutdown().await;
            store.close();
            return Err(failed("cannot prepare the supervisor", e));
        }
        tasks.spawn(crate::loops::heartbeat::run(state.clone(), addr));
        tasks.spawn(crate::loops::supervise::run(state.clone()));
        let app = crate::api::router(state.clone());
        let stopping = {
            let state = state.clone();
            async move {
                tokio::select! {
                    _ = shutdown => state.begin_shutdown(),
                    _ = state.stopped() => {}
                }
            }
        };
        let served = crate::server::serve(listener, app, server, tls, stopping);
        // A client that stopped reading can keep its stream from ever
        // noticing the shutdown; it gets SHUTDOWN_GRACE, then is cut off.
        let outcome = tokio::select! {
            served = served => served,
            _ = async { state.stopped().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
                Ok(())
            }
        };
        tasks.shutdown().await;
        drop(store);
        outcome
    }
}
