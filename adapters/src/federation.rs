//! Federation: sites that know each other, and events that cross between
//! them where some site asked for them.
//!
//! Every site keeps a registry of its peers, from its configuration and
//! from what peers announce. Once per heartbeat interval a site sends each
//! peer its announcement (`POST /v1/peer/heartbeat`): its name, url,
//! region, log head, the peers it knows, and its **interests**, the
//! (pattern, types) of its live leases, aggregated. The peer answers with
//! its own, so one round trip refreshes both sides and measures latency.
//! The same announcement is published on `/pepper/sites/<site>/` as a
//! `pepper.heartbeat` event, so the usual tools observe the federation. A
//! new lease pushes the interests at once and waits (at most
//! [`INTEREST_PUSH_WAIT`]) for the peers that are up to have them.
//!
//! For each peer a **forwarder** tails the local log from a durable cursor
//! (`Store::peer_cursor`) and sends the events that originated here and
//! match the peer's interests, in batches of raw log frames, each with the
//! crc the origin computed (`POST /v1/peer/records`). The receiver checks
//! every crc, appends the events with `Store::receive`, which drops what
//! it has already appended by (origin site, origin seq), and answers; only
//! then does the cursor advance. A failure is retried with backoff, so a
//! peer that was down or cut off gets everything it missed, while the
//! origin's retention holds. When the cursor has fallen below the origin's
//! retention, the forwarder sends a gap marker instead; the receiver turns
//! it into a `pepper.gap` event for each of its lease patterns, which every
//! lease on that pattern receives whatever its types, so a loss is never
//! silent. Records received from a peer are never forwarded again: each
//! origin sends its own records to every interested peer directly.
//!
//! The decisions are the router's: `pepper_router::Registry` keeps the
//! peers, their liveness and interests and this site's own, and says when
//! to announce, to whom, and which forwarder to start or tell of new
//! interests; `pepper_router::Forwarder` decides each forwarder's reads
//! and sends. [`Federation`] holds the registry behind a lock (never
//! across an await) and carries out its actions: the HTTP calls, the lease
//! reads, a watch channel of interests per forwarder, and a mirror of each
//! forwarder's status for `GET /v1/sites`. `loops::heartbeat` drives its
//! rounds.
//!
//! Site-to-site requests carry the shared peer secret as a bearer token;
//! without a configured secret, the peer endpoints refuse everything.
//! `docs/federation.md` has the protocol, the cursors, the dedupe and the
//! failure cases.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use pepper_router::{PeerWants, Registry, RegistryAction, RegistryConfig, RegistryInput, Target};
use pepper_storage::now_us;

use crate::error::ApiError;
use pepper_storage::Store;

pub use crate::wire::frames::{FORWARD_BATCH_BYTES, FORWARD_BATCH_RECORDS, SITES_CHANNEL_PREFIX};

// The federation's limits and timings are the router's, which decides
// with them; they are re-exported where adapter code names them.
pub use pepper_router::{
    check_site, PeerState, DOWN_AFTER_HEARTBEATS, HEARTBEAT_DEFAULT, INTERESTS_MAX, INTEREST_PUSH_WAIT, PEERS_MAX,
    SUSPECT_AFTER_HEARTBEATS,
};

/// Federation settings of a site.
#[derive(Clone, Default)]
pub struct FederationConfig {
    /// The site's region, if it has one.
    pub region: Option<String>,
    /// The url peers reach this site at; by default `http://` and the
    /// address it listens on.
    pub url: Option<String>,
    /// Peers given by configuration: (name, url).
    pub peers: Vec<(String, String)>,
    /// The shared secret of site-to-site requests. Without it the site
    /// neither accepts nor sends any.
    pub secret: Option<String>,
    /// Time between heartbeats ([`HEARTBEAT_DEFAULT`] when zero).
    pub heartbeat: Duration,
    /// The site's TLS, when it serves HTTPS: its peer client trusts the
    /// peer CA and presents the site's certificate (`tls`).
    pub tls: Option<crate::tls::Tls>,
    /// The site key (`keys`), set when the site opens: its public half is
    /// announced and it signs control requests.
    pub site_key: Option<std::sync::Arc<crate::keys::SiteKey>>,
    /// Peers' keys pinned in earlier runs, read from the store when the
    /// site opens: (name, public key hex).
    pub pinned: Vec<(String, String)>,
}

impl std::fmt::Debug for FederationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationConfig")
            .field("region", &self.region)
            .field("url", &self.url)
            .field("peers", &self.peers)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("heartbeat", &self.heartbeat)
            .field("tls", &self.tls)
            .field("site_key", &self.site_key)
            .field("pinned", &self.pinned.len())
            .finish()
    }
}

/// Where pinned peer keys are kept: one document per peer.
pub const PIN_DOC_PREFIX: &str = "pepper/peers/keys/";

/// The peers' keys pinned in earlier runs.
///
/// # Errors
/// Store read errors.
pub(crate) async fn load_pins(store: &Store) -> Result<Vec<(String, String)>, pepper_storage::Error> {
    let mut pins = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let from = after.clone();
        let page = store.read(move |v| v.docs(PIN_DOC_PREFIX, from.as_deref(), 1000)).await?;
        for doc in &page.items {
            let Some(name) = doc.key.strip_prefix(PIN_DOC_PREFIX) else { continue };
            // A pin this version would not take (a weak key pinned by an
            // earlier one, say) is skipped, loudly, rather than keep the
            // site from starting, where it could be unpinned.
            let key = String::from_utf8(doc.value.clone()).map_err(|e| e.to_string());
            match key.and_then(|key| pepper_router::parse_public_key(&key).map(|_| key)) {
                Ok(key) => pins.push((name.to_string(), key)),
                Err(e) => {
                    tracing::error!(peer = %name, error = %e, "ignoring a pinned site key; the next announcement pins anew");
                }
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(pins),
        }
    }
}

/// The wire's announcement types are the registry's own (they derive serde;
/// a field an older site does not send takes its default).
pub use pepper_router::{Announcement as Announce, Interest, PeerInfo};

/// A peer as federated queries see it.
#[derive(Clone, Debug)]
pub(crate) struct PeerSummary {
    pub name: String,
    pub url: String,
    pub region: Option<String>,
    pub state: PeerState,
    /// Heartbeat round trip, smoothed, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// A peer's forwarder as `/v1/sites` and the supervisor see it: a mirror
/// of its `pepper_router::Forwarder`'s status, kept by `loops::forward`.
#[derive(Debug, Default)]
pub(crate) struct Forwarding {
    /// The next local sequence number to forward to it.
    pub(crate) cursor: Option<u64>,
    /// Records it acknowledged from this run's forwarder.
    pub(crate) forwarded: u64,
    /// The peer refuses what the forwarder sends (4xx): forwarding to it
    /// is stuck until an operator looks.
    pub(crate) stalled: bool,
    /// The peer's last error, of its heartbeat or its forwarding: one
    /// field, set by either's failure, cleared by a batch that passes.
    pub(crate) last_error: Option<String>,
}

/// A site's federation: it carries out what its peer registry
/// (`pepper_router::Registry`) decides, and shows the registry's views.
pub struct Federation {
    pub(crate) site: String,
    region: Option<String>,
    heartbeat: Duration,
    pub(crate) secret: Option<String>,
    /// The peer registry; locked only between awaits, never across one.
    registry: Mutex<Registry>,
    /// The registry's clock starts here.
    pub(crate) epoch: Instant,
    /// Held across a recomputation of the interests, from reading the
    /// leases to installing the result, so an older reading never replaces
    /// a newer one.
    pub(crate) refreshing: tokio::sync::Mutex<()>,
    /// Loopback url of this site, for its own part of a federated query.
    pub(crate) local_url: RwLock<String>,
    /// Each peer's forwarder status, mirrored.
    forwarding: Mutex<BTreeMap<String, Forwarding>>,
    /// Each started forwarder's interests: `None` until its peer has told
    /// us this run, and the forwarder waits until then rather than skip
    /// what it might want.
    wants: Mutex<BTreeMap<String, tokio::sync::watch::Sender<Option<PeerWants>>>>,
    /// Wakes the heartbeat loop early (interests changed).
    pub(crate) wake: tokio::sync::Notify,
    /// The peer client where peers need no certificate (the system roots).
    client: reqwest::Client,
    /// The client of this site's own leg of a federated query (over
    /// loopback; with TLS it trusts exactly this site's certificate).
    pub(crate) own_client: reqwest::Client,
    /// Peers must present a certificate the peer CA signed (`tls`).
    peer_certificates_required: bool,
    /// The site serves HTTPS.
    tls_on: bool,
    /// The site key, if the site has one (a site opened by `Site` does).
    site_key: Option<std::sync::Arc<crate::keys::SiteKey>>,
    /// Checks the control requests addressed to this site.
    control: Mutex<pepper_router::Verifier>,
    /// Held while a pin or an unpin is taken and written.
    pin_writes: tokio::sync::Mutex<()>,
    /// The site's TLS, for the peers' clients.
    tls: Option<crate::tls::Tls>,
    /// Each peer's client, where peers need certificates (`client_for`).
    peer_clients: Mutex<BTreeMap<String, reqwest::Client>>,
}

/// A `RwLock` read that survives a panicked writer: what it guards holds
/// no invariant a panic could break halfway.
pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// A `Mutex` lock that survives a panicked holder (the registry refuses
/// bad input whole before it changes anything).
pub(crate) fn lock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error with its sources, as one line: a TLS refusal is only in the
/// source of a request's error.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

/// Whether `url` is an absolute http(s) url by the peer client's parser.
fn url_ok(url: &str) -> bool {
    matches!(reqwest::Url::parse(url), Ok(u) if u.scheme() == "http" || u.scheme() == "https")
}

/// Whether `url` is an absolute https url: a site with TLS on sends its
/// peer secret and records over TLS only, whatever an announcement says.
fn https_url_ok(url: &str) -> bool {
    matches!(reqwest::Url::parse(url), Ok(u) if u.scheme() == "https")
}

impl Federation {
    /// The federation of site `site`.
    ///
    /// # Errors
    /// A peer entry without a secret, a bad peer name or url, or a peer
    /// named like this site.
    pub fn new(site: &str, config: FederationConfig) -> Result<Federation, String> {
        if !config.peers.is_empty() && config.secret.is_none() {
            return Err("peers are configured but no peer secret: site-to-site traffic must be authenticated".into());
        }
        if config.tls.is_some() {
            if let Some((name, url)) = config.peers.iter().find(|(_, url)| !https_url_ok(url)) {
                return Err(format!(
                    "peer {name}'s url {url} is not https: with TLS on, peers are reached over TLS only"
                ));
            }
        }
        let registry = Registry::new(RegistryConfig {
            site: site.to_string(),
            region: config.region,
            url: config.url,
            peers: config.peers,
            heartbeat: config.heartbeat,
            incarnation: rand::random::<u64>() | 1,
            url_ok: if config.tls.is_some() { https_url_ok } else { url_ok },
            key: config.site_key.as_ref().map(|k| k.public_hex()),
            pinned: config.pinned,
        })
        .map_err(|e| e.to_string())?;
        // Without a peer CA, peers' servers are trusted by the system's
        // roots; with one, each peer has its own client (`client_for`).
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| format!("cannot build the peer client: {e}"))?;
        let own_client = match &config.tls {
            Some(tls) => tls.own_client()?,
            None => client.clone(),
        };
        Ok(Federation {
            site: site.to_string(),
            region: registry.region().map(str::to_string),
            heartbeat: registry.heartbeat(),
            secret: config.secret,
            registry: Mutex::new(registry),
            epoch: Instant::now(),
            refreshing: tokio::sync::Mutex::new(()),
            local_url: RwLock::new(String::new()),
            forwarding: Mutex::new(BTreeMap::new()),
            wants: Mutex::new(BTreeMap::new()),
            wake: tokio::sync::Notify::new(),
            client,
            own_client,
            peer_certificates_required: config.tls.as_ref().is_some_and(|t| t.peer_certificates_required),
            tls_on: config.tls.is_some(),
            site_key: config.site_key,
            control: Mutex::new(pepper_router::Verifier::new(site, now_us())),
            pin_writes: tokio::sync::Mutex::new(()),
            tls: config.tls,
            peer_clients: Mutex::new(BTreeMap::new()),
        })
    }

    /// Whether site-to-site traffic is on (a peer secret is configured).
    pub fn enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// This site's region.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// This site's url, as announced.
    pub fn url(&self) -> String {
        lock(&self.registry).url().to_string()
    }

    /// Sets the url to announce (when none was configured).
    pub(crate) fn set_url(&self, url: String) {
        lock(&self.registry).set_url(url);
    }

    /// This site's url over loopback (empty until it listens).
    pub(crate) fn local_url(&self) -> String {
        read(&self.local_url).clone()
    }

    /// The registry's clock now.
    pub(crate) fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Every known peer.
    pub(crate) fn peer_list(&self) -> Vec<PeerSummary> {
        lock(&self.registry)
            .peers(self.now())
            .map(|p| PeerSummary {
                name: p.name.to_string(),
                url: p.url.to_string(),
                region: p.region.map(str::to_string),
                state: p.state,
                rtt_ms: p.rtt_ms,
            })
            .collect()
    }

    /// Reads the registry's view: `f` gets it at the registry's `now`.
    pub(crate) fn with_registry<R>(&self, f: impl FnOnce(&Registry, Duration) -> R) -> R {
        let now = self.now();
        f(&lock(&self.registry), now)
    }

    /// Reads (`f`) or updates the mirror of each peer's forwarder.
    pub(crate) fn forwarding<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Forwarding>) -> R) -> R {
        f(&mut lock(&self.forwarding))
    }

    /// The interests of `peer`'s forwarder, as they change; `None` for a
    /// peer whose forwarder was not started.
    pub(crate) fn interests_of(&self, peer: &str) -> Option<tokio::sync::watch::Receiver<Option<PeerWants>>> {
        lock(&self.wants).get(peer).map(|w| w.subscribe())
    }

    /// Steps the registry with `input` now. The actions that pass interests
    /// to forwarders are carried out before the registry is let go, so two
    /// steps' interests reach a forwarder in their order; state changes are
    /// logged. The rest is the caller's to carry out.
    ///
    /// # Errors
    /// The registry's refusal; it is then unchanged.
    pub(crate) fn step(&self, input: RegistryInput) -> pepper_router::Result<Vec<RegistryAction>> {
        let mut registry = lock(&self.registry);
        let actions = registry.step(self.now(), input)?;
        self.deliver(&actions);
        Ok(actions)
    }

    /// Ticks the registry now; see [`Federation::step`].
    pub(crate) fn tick(&self) -> Vec<RegistryAction> {
        let mut registry = lock(&self.registry);
        let actions = registry.tick(self.now());
        self.deliver(&actions);
        actions
    }

    /// Called with the registry locked.
    fn deliver(&self, actions: &[RegistryAction]) {
        for action in actions {
            match action {
                RegistryAction::StartForwarder { peer, wants } => {
                    lock(&self.wants).insert(peer.clone(), tokio::sync::watch::Sender::new(wants.clone()));
                }
                RegistryAction::Interests { peer, wants } => {
                    if let Some(w) = lock(&self.wants).get(peer) {
                        w.send_replace(Some(wants.clone()));
                    }
                }
                RegistryAction::StateChanged { peer, from, to } => {
                    tracing::info!(peer = %peer, from = from.as_str(), to = to.as_str(), "peer state changed");
                }
                _ => {}
            }
        }
    }

    /// Whether `origin` may declare its records up to `to` lost (see
    /// `pepper_router::Registry::gap_allowed`).
    ///
    /// # Errors
    /// Why the gap is refused.
    pub(crate) fn gap_allowed(&self, origin: &str, to: u64) -> pepper_router::Result<()> {
        lock(&self.registry).gap_allowed(origin, to)
    }

    /// The client to reach peer `peer` with. Where peers need
    /// certificates, each peer has its own: it trusts only the peer CA,
    /// presents this site's certificate, and takes only a server whose
    /// certificate names `peer`, so a peer that put its own url under
    /// another site's name fails the handshake before a request is sent.
    ///
    /// # Errors
    /// The peer's client cannot be built (its TLS configuration).
    pub(crate) fn client_for(&self, peer: &str) -> Result<reqwest::Client, String> {
        let Some(tls) = self.tls.as_ref().filter(|t| t.peer_certificates_required) else {
            return Ok(self.client.clone());
        };
        let mut clients = lock(&self.peer_clients);
        if let Some(client) = clients.get(peer) {
            return Ok(client.clone());
        }
        let client = tls.client_for_peer(peer)?;
        // One per known peer; a name past the registry's bound gets a
        // client that is not kept.
        if clients.len() < PEERS_MAX {
            clients.insert(peer.to_string(), client.clone());
        }
        Ok(client)
    }

    /// The signature header of a batch this site forwards to `peer`
    /// (`x-pepper-signature`), with gap header `gap` ("" for records);
    /// `None` for a site without a key.
    pub(crate) fn sign_batch(&self, peer: &str, gap: &str, body: &[u8]) -> Option<String> {
        let key = self.site_key.as_ref()?;
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(body).into();
        Some(pepper_router::batch_signature(key.signing(), &self.site, peer, gap, &digest))
    }

    /// Checks a batch of records that came in under `origin`'s name: when
    /// its key is pinned here, the batch must carry its signature. A site
    /// not pinned yet (or of an earlier version, which signs nothing) is
    /// taken on the peer secret alone.
    ///
    /// # Errors
    /// 403 `bad_signature`.
    pub(crate) fn check_batch(
        &self,
        origin: &str,
        signature: Option<&str>,
        gap: &str,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let Some(pinned) = lock(&self.registry).key_of(origin).map(str::to_string) else { return Ok(()) };
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(body).into();
        pepper_router::parse_public_key(&pinned)
            .and_then(|key| pepper_router::verify_batch(&key, signature, origin, &self.site, gap, &digest))
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_signature", e))
    }

    /// This site's public key, hex, if it has a site key.
    pub fn public_key(&self) -> Option<String> {
        self.site_key.as_ref().map(|k| k.public_hex())
    }

    /// Whether this site serves HTTPS (its own url's scheme).
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls_on {
            "https"
        } else {
            "http"
        }
    }

    /// Checks a site-to-site request: the peer secret, and where the site
    /// requires one, the client certificate the connection presented. The
    /// proof names what the certificate vouches for.
    ///
    /// # Errors
    /// 403 without a peer secret configured; 401 with a missing or wrong
    /// secret or a missing certificate.
    pub(crate) fn authorized(
        &self,
        headers: &HeaderMap,
        certificate: Option<&crate::tls::PeerCertificate>,
    ) -> Result<crate::tls::PeerProof, ApiError> {
        self.secret_given(headers)?;
        if !self.peer_certificates_required {
            return Ok(crate::tls::PeerProof(None));
        }
        match certificate {
            Some(c) => Ok(crate::tls::PeerProof(Some(c.clone()))),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "peer_certificate_required",
                "this site takes site-to-site requests only with a client certificate its peer CA signed",
            )),
        }
    }

    /// Checks the peer secret alone.
    pub(crate) fn secret_given(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(secret) = &self.secret else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "federation_off",
                "this site has no peer secret configured, so it takes no site-to-site requests",
            ));
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compared in time independent of where they differ and of their
        // lengths (as hashes).
        if !crate::auth::secret_matches(given.as_bytes(), secret.as_bytes()) {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong peer secret"));
        }
        Ok(())
    }

    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.secret.as_deref().unwrap_or(""))
    }

    /// Takes in an announcement `a` posted by its sender.
    ///
    /// # Errors
    /// The registry's refusal (a bad announcement, or no room for a new
    /// peer); nothing changed.
    pub(crate) fn heard(&self, a: Announce, head: u64) -> pepper_router::Result<Vec<RegistryAction>> {
        let input = RegistryInput::Announced { announcement: a, local_head: head, wall_us: now_us() };
        self.step(input)
    }

    /// Audits the peers the registry learned of (an audit event each). A
    /// failed write is logged: the peer is known either way. Pins are
    /// written by [`Federation::hear`], before they take effect.
    pub(crate) async fn record(&self, store: &Store, actions: &[RegistryAction]) {
        for action in actions {
            let RegistryAction::PeerLearned { peer, url, via, in_answer } = action else { continue };
            tracing::info!(%peer, %url, via = via.as_deref().unwrap_or("itself"), "learned of a peer");
            let by = format!("site:{}", via.as_deref().unwrap_or(peer));
            let heard_in = if *in_answer { "answer" } else { "announcement" };
            let detail = serde_json::json!({ "url": url, "via": via, "heard_in": heard_in });
            if let Err(e) = store.append(vec![crate::auth::audit_event_by(&by, "peer.add", peer, detail)]).await {
                tracing::warn!(error = %e, "cannot audit a peer change");
            }
        }
    }

    /// Takes in an announcement a peer posted (authenticated by the peer
    /// endpoint's checks). A key it pins is durable before it takes
    /// effect: the pin's document and audit event are written first, and
    /// a failed write changes nothing (503). Only an announcement that
    /// pins waits for the pin lock (pins and unpins one at a time); the
    /// others, nearly all of them, go straight to the registry. Run it in
    /// its own task: a client that goes away must not cancel it halfway.
    ///
    /// # Errors
    /// 403 `key_mismatch`, 400 for a bad announcement, 503 when the pin
    /// could not be kept.
    pub(crate) async fn hear(&self, store: &Store, a: Announce) -> Result<(), ApiError> {
        let refused = |e: pepper_router::Error| match e {
            pepper_router::Error::KeyMismatch { .. } => {
                tracing::warn!(error = %e, "refused an announcement under a pinned name");
                ApiError::new(StatusCode::FORBIDDEN, "key_mismatch", e.to_string())
            }
            e => ApiError::invalid_body(e.to_string()),
        };
        // Nearly every announcement is from a peer pinned long ago: it goes
        // straight to the registry, whose step checks it once. One that may
        // pin waits for the pin lock and is checked whole before its pin is
        // written (another announcement may have pinned the name meanwhile).
        let may_pin = a.key.is_some() && lock(&self.registry).key_of(&a.name).is_none();
        let one_at_a_time = if may_pin { Some(self.pin_writes.lock().await) } else { None };
        let pin = if may_pin { lock(&self.registry).would_pin(&a).map_err(refused)? } else { None };
        if let Some(key) = pin {
            let bodies = vec![
                pepper_storage::Body::DocPut(pepper_storage::DocPut {
                    key: format!("{PIN_DOC_PREFIX}{}", a.name),
                    value: key.clone().into_bytes(),
                }),
                crate::auth::audit_event_by(
                    &format!("site:{}", a.name),
                    "peer.key_pin",
                    &a.name,
                    serde_json::json!({ "key": key }),
                ),
            ];
            store.append(bodies).await.map_err(|e| {
                tracing::warn!(peer = %a.name, error = %e, "cannot keep a peer's site key; not pinned");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("cannot keep {}'s site key: {e}", a.name),
                )
            })?;
            tracing::info!(peer = %a.name, %key, "pinned a peer's site key");
        }
        let actions = self.heard(a, store.last_seq()).map_err(refused)?;
        drop(one_at_a_time);
        self.record(store, &actions).await;
        Ok(())
    }

    /// Forgets `peer`'s pinned key, in the store (with its audit event,
    /// in one append) and then in the registry, so its next authenticated
    /// announcement pins a new one. Whether one was pinned.
    ///
    /// # Errors
    /// The store's.
    pub(crate) async fn unpin(
        &self,
        store: &Store,
        caller: &crate::auth::Caller,
        peer: &str,
    ) -> Result<bool, pepper_storage::Error> {
        let _one_at_a_time = self.pin_writes.lock().await;
        let Some(key) = lock(&self.registry).key_of(peer).map(str::to_string).filter(|_| peer != self.site) else {
            return Ok(false);
        };
        let bodies = vec![
            pepper_storage::Body::DocDelete(pepper_storage::DocDelete { key: format!("{PIN_DOC_PREFIX}{peer}") }),
            crate::auth::audit_event(caller, "peer.key_unpin", peer, serde_json::json!({ "key": key })),
        ];
        store.append(bodies).await?;
        lock(&self.registry).unpin(peer);
        tracing::warn!(%peer, %key, by = caller.name(), "unpinned a peer's site key");
        Ok(true)
    }

    /// Signs a control request for `audience` on behalf of `principal`,
    /// valid for `ttl` from now (at most `pepper_router::CONTROL_TTL_MAX`).
    /// The caller checked the principal's grant first.
    ///
    /// # Errors
    /// The site has no key.
    pub fn sign_control(
        &self,
        principal: &str,
        audience: &str,
        action: &str,
        channel: &str,
        body: serde_json::Value,
        ttl: Duration,
    ) -> Result<pepper_router::SignedControl, String> {
        let key = self.site_key.as_ref().ok_or("this site has no site key")?;
        let now = now_us();
        let ttl = ttl.min(pepper_router::CONTROL_TTL_MAX);
        let request = pepper_router::ControlRequest {
            principal: principal.to_string(),
            site: self.site.clone(),
            audience: audience.to_string(),
            action: action.to_string(),
            channel: channel.to_string(),
            body,
            nonce: hex::encode(rand::random::<[u8; 16]>()),
            issued_us: now,
            expires_us: now.saturating_add(u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX)),
        };
        pepper_router::sign(&request, key.signing()).map_err(|e| e.to_string())
    }

    /// Checks a control request addressed to this site against `scope`,
    /// with the keys pinned for its peers (and its own): see
    /// `pepper_router::control`.
    ///
    /// # Errors
    /// The refusal, saying which check failed.
    pub fn verify_control(
        &self,
        signed: &pepper_router::SignedControl,
        scope: &pepper_router::Scope,
    ) -> Result<pepper_router::ControlRequest, pepper_router::ControlRefusal> {
        // The verifier checks the size and parses before it asks for a key;
        // the registry is locked for that lookup only (always after the
        // verifier's lock, never the other way round).
        let key_of = |site: &str| {
            let pinned = lock(&self.registry).key_of(site).map(str::to_string);
            pinned.and_then(|k| pepper_router::parse_public_key(&k).ok())
        };
        lock(&self.control).verify(signed, key_of, scope, now_us())
    }

    /// This site's announcement now, with its log's range.
    pub(crate) fn announce(&self, seq: u64, earliest_seq: u64) -> Announce {
        lock(&self.registry).announcement(seq, earliest_seq, now_us())
    }

    /// Recomputes this site's interests from its live leases.
    pub(crate) async fn refresh_interests(&self, store: &Store) -> Result<(), pepper_storage::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        let now = now_us();
        let leases = store.read(|v| v.leases()).await?;
        let interests = leases
            .into_iter()
            .filter(|l| l.expires_at_us > now)
            .map(|l| pepper_router::Interest { pattern: l.pattern, types: l.types })
            .collect();
        // Installing interests does not fail.
        let _ = self.step(RegistryInput::InterestsRead { interests, version_us: now_us() });
        Ok(())
    }

    /// Sends this site's announcement to each of `to`, each within
    /// `timeout`, and takes in their answers.
    pub(crate) async fn announce_to(&self, store: &Store, to: Vec<Target>, timeout: Duration) {
        let me = self.announce(store.last_seq(), store.earliest_seq());
        let sends = to.into_iter().map(|Target { name, url }| {
            let me = &me;
            async move {
                let started = Instant::now();
                let sent = match self.client_for(&name) {
                    Ok(client) => client
                        .post(format!("{url}/v1/peer/heartbeat"))
                        .header(axum::http::header::AUTHORIZATION, self.bearer())
                        .timeout(timeout)
                        .json(me)
                        .send()
                        .await
                        .map_err(|e| error_chain(&e)),
                    Err(e) => Err(e),
                };
                let answer = match sent {
                    Ok(res) if res.status().is_success() => res.json::<Announce>().await.map_err(|e| e.to_string()),
                    Ok(res) => {
                        let status = res.status();
                        let code = res
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                            .unwrap_or_default();
                        Err(format!("answered {status} {code}").trim_end().to_string())
                    }
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(a) if a.name == name => {
                        let input = RegistryInput::Answered {
                            peer: name.clone(),
                            announcement: a,
                            rtt: started.elapsed(),
                            local_head: store.last_seq(),
                            wall_us: now_us(),
                        };
                        match self.step(input) {
                            // An answer pins nothing; the peers it names are audited.
                            Ok(actions) => self.record(store, &actions).await,
                            Err(e) => tracing::warn!(peer = %name, error = %e, "bad announcement"),
                        }
                    }
                    Ok(a) => tracing::warn!(peer = %name, answered_as = %a.name, "peer answered under another name"),
                    Err(e) => {
                        let last_error = format!("heartbeat: {e}");
                        let _ = self.step(RegistryInput::AnnounceFailed { peer: name.clone(), error: e });
                        self.forwarding(|f| f.entry(name).or_default().last_error = Some(last_error));
                    }
                }
            }
        });
        futures_util::future::join_all(sends).await;
    }

    /// Carries out the registry's actions outside a round: interests to
    /// recompute, announcements to send.
    async fn carry_out(&self, store: &Store, actions: Vec<RegistryAction>) {
        for action in actions {
            match action {
                RegistryAction::RefreshInterests => {
                    if let Err(e) = self.refresh_interests(store).await {
                        tracing::warn!(error = %e, "cannot read leases for interests");
                    }
                }
                RegistryAction::Announce { to, timeout } => self.announce_to(store, to, timeout).await,
                _ => {}
            }
        }
    }

    /// After a lease grant: if this site's interests changed, tells the
    /// peers that are up at once, waiting at most [`INTEREST_PUSH_WAIT`], so
    /// their events published after the grant answered reach the lease.
    pub(crate) async fn lease_granted(&self, store: &Store, interest: Interest) {
        if !self.enabled() {
            return;
        }
        let actions = {
            let _one_at_a_time = self.refreshing.lock().await;
            self.step(RegistryInput::LeaseGranted { interest, version_us: now_us() }).unwrap_or_default()
        };
        self.carry_out(store, actions).await;
    }

    /// After a lease ended: the next heartbeat withdraws its interest.
    pub(crate) fn lease_ended(&self) {
        let _ = self.step(RegistryInput::Wake);
        self.wake.notify_one();
    }

    /// Adds a standing interest before the first heartbeat, without a push.
    pub(crate) fn add_standing(&self, interest: Interest) {
        lock(&self.registry).add_standing(interest);
    }

    /// Adds a standing interest (held by the site itself rather than by a
    /// lease: the supervisor's, a running monitor's) and, like a lease
    /// grant, pushes it to the peers that are up.
    pub(crate) async fn hold_interest(&self, store: &Store, interest: Interest) {
        self.add_standing(interest.clone());
        self.lease_granted(store, interest).await;
    }

    /// Drops a standing interest; the next heartbeat withdraws it.
    pub(crate) fn drop_interest(&self, interest: &Interest) {
        lock(&self.registry).remove_standing(interest);
        let _ = self.step(RegistryInput::Wake);
        self.wake.notify_one();
    }

    /// This site's interests as last computed.
    pub(crate) fn interests(&self) -> Vec<Interest> {
        lock(&self.registry).interests().0.to_vec()
    }

    /// This site's interests version now (0: not computed yet).
    pub(crate) fn interests_version(&self) -> u64 {
        lock(&self.registry).interests().1
    }

    /// The shared secret as a bearer header value, for site-to-site calls.
    pub(crate) fn authorization(&self) -> String {
        self.bearer()
    }

    /// The next local sequence number this site's forwarder sends `peer`.
    pub(crate) fn cursor_toward(&self, peer: &str) -> Option<u64> {
        self.forwarding(|f| f.get(peer).and_then(|p| p.cursor))
    }

    /// The version of `peer`'s interests this site holds (0: none yet).
    pub(crate) fn interests_version_of(&self, peer: &str) -> u64 {
        lock(&self.registry).interests_version_of(peer)
    }

    /// `peer`'s url, if it is known.
    pub(crate) fn url_of(&self, peer: &str) -> Option<String> {
        lock(&self.registry).url_of(peer).map(str::to_string)
    }
}

/// The address to reach a server listening on `addr` from the same host:
/// `addr` itself, or the loopback of its family when it listens on every
/// address.
pub fn loopback_of(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(peers: &[(&str, &str)]) -> FederationConfig {
        FederationConfig {
            peers: peers.iter().map(|(n, u)| (n.to_string(), u.to_string())).collect(),
            secret: Some("s".into()),
            ..FederationConfig::default()
        }
    }

    /// The federation of site `site`, with a site key of its own.
    fn keyed(site: &str) -> Federation {
        let config = FederationConfig {
            site_key: Some(std::sync::Arc::new(crate::keys::SiteKey::generate())),
            url: Some(format!("http://{site}.invalid:1")),
            ..config(&[])
        };
        Federation::new(site, config).expect("federation")
    }

    #[test]
    fn the_secret_is_required_and_compared() {
        let fed = Federation::new("a", config(&[])).expect("federation");
        let mut headers = HeaderMap::new();
        assert_eq!(fed.authorized(&headers, None).map(drop).map_err(|e| e.status()), Err(StatusCode::UNAUTHORIZED));
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer t".parse().expect("header"));
        assert_eq!(fed.authorized(&headers, None).map(drop).map_err(|e| e.status()), Err(StatusCode::UNAUTHORIZED));
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer s".parse().expect("header"));
        assert!(fed.authorized(&headers, None).is_ok());
        let off = Federation::new("a", FederationConfig::default()).expect("federation");
        assert_eq!(off.authorized(&headers, None).map(drop).map_err(|e| e.status()), Err(StatusCode::FORBIDDEN));
    }

    #[test]
    fn a_control_request_signed_by_a_pinned_peer_verifies_once_and_only_for_its_audience() {
        let (a, b, c) = (keyed("a"), keyed("b"), keyed("c"));
        // As if b and c had started a minute ago: a request issued within
        // the clock skew of a start is refused (the last run's may be).
        for f in [&b, &c] {
            *lock(&f.control) = pepper_router::Verifier::new(&f.site, now_us() - 60_000_000);
        }
        let scope = pepper_router::Scope {
            action: "deploy".into(),
            subtree: pepper_router::Pattern::parse("/example.com/deploy/").expect("pattern"),
        };
        let ttl = Duration::from_secs(60);
        let body = serde_json::json!({ "step": 1 });
        let signed = a.sign_control("ops", "b", "deploy", "/example.com/deploy/web/", body, ttl).expect("signed");
        // Before b pinned a's key, a is no one to b.
        assert_eq!(b.verify_control(&signed, &scope).map_err(|e| e.reason()), Err("unknown_site"));
        // a announces itself to b (over the authenticated peer endpoint).
        let actions = b.heard(a.announce(0, 0), 0).expect("heard");
        assert!(actions.iter().any(|x| matches!(x, RegistryAction::KeyPinned { peer, .. } if peer == "a")));
        let request = b.verify_control(&signed, &scope).expect("verified");
        assert_eq!((request.principal.as_str(), request.site.as_str()), ("ops", "a"));
        assert_eq!(b.verify_control(&signed, &scope).map_err(|e| e.reason()), Err("replayed"));
        // c, which also pinned a, is not its audience.
        c.heard(a.announce(0, 0), 0).expect("heard");
        assert_eq!(c.verify_control(&signed, &scope).map_err(|e| e.reason()), Err("wrong_audience"));
        // Someone else announcing as a, with their own key, is refused.
        let impostor = keyed("a");
        let refused = b.heard(impostor.announce(0, 0), 0);
        assert!(matches!(refused, Err(pepper_router::Error::KeyMismatch { .. })), "{refused:?}");
        // A site without a key signs nothing.
        assert!(Federation::new("d", config(&[]))
            .expect("fed")
            .sign_control("ops", "b", "deploy", "/x/", serde_json::Value::Null, ttl)
            .is_err());
    }

    #[tokio::test]
    async fn a_pin_is_durable_before_it_takes_effect_and_a_failed_write_changes_nothing() {
        use pepper_storage::{Fault, FaultEngine, MemoryEngine, SystemClock};
        let faults = std::sync::Arc::new(FaultEngine::new(std::sync::Arc::new(MemoryEngine::new())));
        let store =
            Store::open_with(faults.clone(), std::sync::Arc::new(SystemClock), pepper_storage::Options::new("b"))
                .expect("open");
        let (a, b) = (keyed("a"), keyed("b"));
        faults.arm(Fault::FailWrite(1));
        let refused = b.hear(&store, a.announce(0, 0)).await.expect_err("the pin's write failed");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(lock(&b.registry).key_of("a"), None, "not pinned");
        assert!(b.peer_list().is_empty(), "and nothing else of the announcement taken in");
        // A failed write poisons that store (docs/storage-format.md); on a
        // healthy one the pin is written, then taken.
        assert!(store.poisoned().is_some());
        let store = Store::open_with(
            std::sync::Arc::new(MemoryEngine::new()),
            std::sync::Arc::new(SystemClock),
            pepper_storage::Options::new("b"),
        )
        .expect("open");
        b.hear(&store, a.announce(0, 0)).await.expect("heard");
        assert_eq!(lock(&b.registry).key_of("a"), a.public_key().as_deref());
        assert_eq!(load_pins(&store).await.expect("pins"), vec![("a".to_string(), a.public_key().expect("key"))]);
        // Heard again, nothing more to pin: no second document.
        b.hear(&store, a.announce(0, 0)).await.expect("heard");
        assert_eq!(load_pins(&store).await.expect("pins").len(), 1);
    }

    /// A stored pin this version would not take (a weak key, or not a key)
    /// is skipped at start rather than keep the site from starting.
    #[tokio::test]
    async fn pins_this_version_would_not_take_are_skipped_at_start() {
        use pepper_storage::{Body, DocPut, MemoryEngine, SystemClock};
        let store = Store::open_with(
            std::sync::Arc::new(MemoryEngine::new()),
            std::sync::Arc::new(SystemClock),
            pepper_storage::Options::new("b"),
        )
        .expect("open");
        let good = crate::keys::SiteKey::generate().public_hex();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let pin = |name: &str, key: &str| {
            Body::DocPut(DocPut { key: format!("{PIN_DOC_PREFIX}{name}"), value: key.as_bytes().to_vec() })
        };
        let docs = vec![pin("good", &good), pin("weak", &hex::encode(identity)), pin("junk", "zz")];
        store.append(docs).await.expect("append");
        assert_eq!(load_pins(&store).await.expect("pins"), vec![("good".to_string(), good.clone())]);
        let config = FederationConfig { pinned: load_pins(&store).await.expect("pins"), ..config(&[]) };
        let fed = Federation::new("b", config).expect("the site starts");
        assert_eq!(lock(&fed.registry).key_of("good"), Some(good.as_str()));
    }

    /// The announcement on the wire keeps its field names, and one from a
    /// site that sends fewer fields (an older version) still reads, the
    /// missing ones at their defaults.
    #[test]
    fn announcements_keep_their_wire_shape() {
        let old: Announce =
            serde_json::from_str(r#"{"name": "b", "url": "http://127.0.0.1:1", "seq": 7, "time_us": 5}"#).expect("old");
        assert_eq!((&old.region, old.earliest_seq, old.interests_version, old.incarnation), (&None, 0, 0, 0));
        assert!(old.interests.is_empty() && old.peers.is_empty());
        let interest: Interest = serde_json::from_str(r#"{"pattern": "/a/"}"#).expect("interest");
        assert!(interest.types.is_empty());
        let mut a = old;
        a.interests = vec![interest];
        a.peers = vec![PeerInfo { name: "c".into(), url: "http://127.0.0.1:2".into(), region: Some("eu".into()) }];
        let v = serde_json::to_value(&a).expect("json");
        let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "earliest_seq",
                "incarnation",
                "interests",
                "interests_version",
                "name",
                "peers",
                "region",
                "seq",
                "time_us",
                "url"
            ]
        );
        assert_eq!(v["interests"][0], serde_json::json!({"pattern": "/a/", "types": []}));
        assert_eq!(v["peers"][0], serde_json::json!({"name": "c", "url": "http://127.0.0.1:2", "region": "eu"}));
    }
}
