//! [`AppState`]: what every handler and loop can reach (the store, the
//! in-memory indexes, the peer registry, the supervisor, the dispatcher,
//! the limits' semaphores), and [`ApiConfig`], the API's settings from the
//! site's configuration. It is built once, by [`AppState::load`], from the
//! store; cloning it is cheap (every field is shared).

use pepper_storage::Store;

use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::expiry::ExpiryIndex;
use crate::limits::REQUESTS_IN_FLIGHT_MAX;
use crate::loops::dispatch::Dispatcher;
use crate::metrics::Metrics;

/// Settings of the API that come from the site's configuration.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The longest time to live a lease is granted, in seconds.
    pub lease_ttl_max_s: u64,
    /// Events buffered per live stream before a client that does not keep
    /// up is disconnected ([`crate::SUBSCRIBER_BUFFER_EVENTS`] by default).
    pub stream_buffer_events: usize,
    /// Region, peers, peer secret and heartbeat.
    pub federation: crate::federation::FederationConfig,
    /// Recording policy and the supervisor's interval.
    pub supervisor: crate::supervisor::SupervisorConfig,
    /// Host names, CORS origins and the body timeout.
    pub edge: crate::edge::EdgeConfig,
    /// The admin token: with one, auth is on (`auth`).
    pub admin_token: Option<crate::auth::Secret>,
    /// Each principal's publish quota (`quota`).
    pub publish_rate: crate::quota::PublishRate,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            lease_ttl_max_s: crate::limits::LEASE_TTL_MAX_S_DEFAULT,
            stream_buffer_events: crate::SUBSCRIBER_BUFFER_EVENTS,
            federation: crate::federation::FederationConfig::default(),
            supervisor: crate::supervisor::SupervisorConfig::default(),
            edge: crate::edge::EdgeConfig::default(),
            admin_token: None,
            publish_rate: crate::quota::PublishRate::default(),
        }
    }
}

/// The site's derived state, following the log in one place: the store's
/// writer tells it what each durable group changed, before the group's
/// callers hear back.
struct SiteFold {
    /// The lease and tuple expiry indexes.
    expiry: crate::expiry::ExpiryFold,
    /// The model repository's schemas.
    models: Arc<crate::models::Models>,
    /// Principals, their tokens and grants.
    principals: Arc<crate::auth::Principals>,
    /// Each principal's live leases, for its quota.
    lease_holders: Arc<crate::quota::LeaseHolders>,
}

impl pepper_storage::Fold for SiteFold {
    fn committed(&self, group: &pepper_storage::Committed<'_>) {
        self.expiry.committed(group);
        self.models.committed(group);
        self.principals.committed(group);
        for (id, lease) in group.leases() {
            match lease {
                Some(l) => self.lease_holders.set(id, l.owner.as_deref(), l.group.as_deref()),
                None => self.lease_holders.remove(id),
            }
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The site's store.
    pub store: Store,
    /// Live leases' expiries.
    pub leases: Arc<ExpiryIndex>,
    /// Live tuples' expiries.
    pub tuples: Arc<ExpiryIndex>,
    /// The API's settings (shared: every handler clones the state).
    pub config: Arc<ApiConfig>,
    /// Set once the server is stopping, so live streams end and graceful
    /// shutdown does not wait on them forever.
    pub(crate) stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Counters and histograms for `GET /metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// The model repository's schemas.
    pub(crate) models: Arc<crate::models::Models>,
    /// Routes each committed event to the live streams it matches.
    pub(crate) dispatcher: Dispatcher,
    /// One permit per open SSE stream ([`crate::limits::SUBSCRIBERS_MAX`]).
    pub(crate) subscriber_slots: Arc<Semaphore>,
    /// One permit per snapshot being read ([`crate::limits::SNAPSHOTS_MAX`]).
    pub(crate) snapshot_readers: Arc<Semaphore>,
    /// One permit per request being handled ([`REQUESTS_IN_FLIGHT_MAX`]).
    pub(crate) requests_in_flight: Arc<Semaphore>,
    /// Peers, interests and forwarders.
    pub(crate) federation: Arc<crate::federation::Federation>,
    /// Recording policy and monitors.
    pub(crate) supervisor: Arc<crate::supervisor::Supervisor>,
    /// The names this site answers to and the peer secret (the `Host` check).
    pub(crate) host_check: Arc<crate::edge::HostCheck>,
    /// Permits and timeout for reading request bodies ([`crate::edge::BODY_READERS_MAX`]).
    pub(crate) body_reading: Arc<crate::edge::BodyReading>,
    /// One permit per replica stream being served
    /// ([`crate::limits::REPLICA_STREAMS_MAX`]).
    pub(crate) replica_streams: Arc<Semaphore>,
    /// Who each request is: the admin token, the principals.
    pub(crate) auth: Arc<crate::auth::Auth>,
    /// Each principal's publish rate and open streams.
    pub(crate) quotas: Arc<crate::quota::Quotas>,
    /// Each principal's live leases and their groups (quotas).
    pub(crate) lease_holders: Arc<crate::quota::LeaseHolders>,
    /// Principal changes one at a time, so each reads the one before.
    pub(crate) principal_writes: Arc<tokio::sync::Mutex<()>>,
    /// Recording policy changes one at a time, so the store's policy, the
    /// documents and the supervisor's copy agree.
    pub(crate) policy_writes: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    /// The state for `store`, with the lease index loaded from it. Starts
    /// the site's dispatcher, which runs until [`AppState::begin_shutdown`].
    ///
    /// # Errors
    /// Store read errors.
    pub async fn load(store: Store, config: ApiConfig) -> Result<AppState, pepper_storage::Error> {
        // The fold first, then the load: a commit in between reaches the
        // indexes through the fold, and the load never replaces a newer
        // entry (entries are versioned by sequence number).
        let leases = Arc::new(ExpiryIndex::default());
        let tuples = Arc::new(ExpiryIndex::default());
        let models = Arc::new(crate::models::Models::new());
        let principals = Arc::new(crate::auth::Principals::default());
        let expiry = crate::expiry::ExpiryFold { leases: leases.clone(), tuples: tuples.clone() };
        let lease_holders = Arc::new(crate::quota::LeaseHolders::default());
        store.set_fold(Arc::new(SiteFold {
            expiry,
            models: models.clone(),
            principals: principals.clone(),
            lease_holders: lease_holders.clone(),
        }));
        for l in store.read(|v| v.leases()).await? {
            leases.set(&l.id, l.expires_at_us, l.renewed_seq);
            lease_holders.set(&l.id, l.owner.as_deref(), l.group.as_deref());
        }
        crate::expiry::load_tuple_index(&store, &tuples).await?;
        models.load(&store).await?;
        principals.load(&store).await?;
        let auth = Arc::new(
            crate::auth::Auth::new(
                config.admin_token.as_ref().map(crate::auth::Secret::expose),
                config.federation.secret.as_deref(),
                principals,
            )
            .requiring_peer_certificates(config.federation.tls.as_ref().is_some_and(|t| t.peer_certificates_required)),
        );
        let mut federation_config = config.federation.clone();
        federation_config.pinned = crate::federation::load_pins(&store).await?;
        let federation = Arc::new(
            crate::federation::Federation::new(store.site(), federation_config)
                .map_err(|reason| pepper_storage::Error::InvalidInput { what: "federation", reason })?,
        );
        let supervisor = crate::supervisor::Supervisor::load(&store, &config.supervisor).await.map_err(|e| {
            pepper_storage::Error::InvalidInput { what: "recording policy", reason: e.message().to_string() }
        })?;
        config
            .edge
            .validate()
            .map_err(|reason| pepper_storage::Error::InvalidInput { what: "edge settings", reason })?;
        let hosts = crate::edge::Hosts::new(store.site(), config.federation.url.as_deref(), &config.edge);
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let mut metrics = Metrics::default();
        metrics.registry.register(
            "auth_refusals",
            "Requests refused by auth, by reason (no, unknown, revoked or expired token; forbidden)",
            auth.refusals.clone(),
        );
        let metrics = Arc::new(metrics);
        let dispatcher =
            Dispatcher::spawn(store.clone(), metrics.clone(), stopping_rx, config.stream_buffer_events.max(1));
        Ok(AppState {
            store,
            leases,
            tuples,
            models,
            stopping: Arc::new(stopping),
            metrics,
            dispatcher,
            subscriber_slots: Arc::new(Semaphore::new(crate::limits::SUBSCRIBERS_MAX)),
            snapshot_readers: Arc::new(Semaphore::new(crate::limits::SNAPSHOTS_MAX)),
            requests_in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
            body_reading: Arc::new(crate::edge::BodyReading::new(config.edge.body_read_timeout)),
            replica_streams: Arc::new(Semaphore::new(crate::limits::REPLICA_STREAMS_MAX)),
            policy_writes: Arc::new(tokio::sync::Mutex::new(())),
            principal_writes: Arc::new(tokio::sync::Mutex::new(())),
            quotas: Arc::new(crate::quota::Quotas::new(config.publish_rate)),
            lease_holders,
            auth,
            host_check: Arc::new(crate::edge::HostCheck { hosts, federation: federation.clone() }),
            federation,
            supervisor: Arc::new(supervisor),
            config: Arc::new(config),
        })
    }

    /// Ends every live stream (each client resumes from its last event id
    /// elsewhere or after the restart). Call it when shutdown begins.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// A receiver that turns true once shutdown has begun.
    pub(crate) fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}
