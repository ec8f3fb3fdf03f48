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
//! Site-to-site requests carry the shared peer secret as a bearer token;
//! without a configured secret, the peer endpoints refuse everything.
//! `docs/federation.md` has the protocol, the cursors, the dedupe and the
//! failure cases.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use pepper_router::{PeerWants, Wants};
use pepper_storage::now_us;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use pepper_storage::Store;

pub use crate::wire::frames::{FORWARD_BATCH_BYTES, FORWARD_BATCH_RECORDS, SITES_CHANNEL_PREFIX};

// The federation's limits and timings are the router's, which decides
// with them; they are re-exported where adapter code names them.
pub(crate) use pepper_router::NAME_BYTES_MAX;
pub use pepper_router::{
    DOWN_AFTER_HEARTBEATS, HEARTBEAT_DEFAULT, INTERESTS_MAX, INTEREST_PUSH_WAIT, PEERS_MAX, SUSPECT_AFTER_HEARTBEATS,
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
}

impl std::fmt::Debug for FederationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationConfig")
            .field("region", &self.region)
            .field("url", &self.url)
            .field("peers", &self.peers)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

/// What a site is interested in: the events of one lease pattern and types.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Interest {
    /// A lease pattern.
    pub pattern: String,
    /// Event types; empty means all.
    #[serde(default)]
    pub types: Vec<String>,
}

/// A peer as an announcement lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Site name.
    pub name: String,
    /// Where it is reached.
    pub url: String,
    /// Its region, if any.
    #[serde(default)]
    pub region: Option<String>,
}

/// A site's announcement: its heartbeat.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Announce {
    /// Site name.
    pub name: String,
    /// Where it is reached.
    pub url: String,
    /// Its region, if any.
    #[serde(default)]
    pub region: Option<String>,
    /// Its log's last sequence number.
    pub seq: u64,
    /// The first sequence number its log still holds (what retention
    /// kept); 0 from a site that does not say. A gap marker from it may
    /// only cover records below this.
    #[serde(default)]
    pub earliest_seq: u64,
    /// When it was sent, microseconds since the Unix epoch.
    pub time_us: u64,
    /// What its leases want from other sites.
    #[serde(default)]
    pub interests: Vec<Interest>,
    /// When `interests` were computed (microseconds, strictly increasing
    /// at the sender): an announcement overtaken by a newer one on the way
    /// does not bring back stale interests.
    #[serde(default)]
    pub interests_version: u64,
    /// A random number drawn when the site started: versions compare only
    /// within one run, so a restart with a clock behind is not ignored.
    #[serde(default)]
    pub incarnation: u64,
    /// The peers it knows.
    #[serde(default)]
    pub peers: Vec<PeerInfo>,
}

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

/// One peer in the registry.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) url: String,
    pub(crate) region: Option<String>,
    /// When its last announcement (or answer to ours) arrived.
    pub(crate) last_seen: Option<Instant>,
    pub(crate) last_seen_us: Option<u64>,
    /// Heartbeat round trip, smoothed.
    pub(crate) rtt_ms: Option<f64>,
    /// Its interests, parsed, for its forwarder; `None` until it has told
    /// us this run, and the forwarder waits until then rather than skip
    /// what it might want.
    pub(crate) wants: tokio::sync::watch::Sender<Option<PeerWants>>,
    /// The sender's version of `interests` (0: none yet).
    pub(crate) interests_version: u64,
    /// The run of the peer those interests came from.
    pub(crate) incarnation: u64,
    /// The peer refuses what the forwarder sends (4xx): forwarding to it
    /// is stuck until an operator looks.
    pub(crate) stalled: bool,
    /// The last sequence number of its log it announced.
    pub(crate) head_seq: u64,
    /// The first sequence number its log holds, as it last announced (0:
    /// not announced). Bounds the gap markers it may send.
    pub(crate) earliest_seq: u64,
    /// The next local sequence number to forward to it.
    pub(crate) cursor: Option<u64>,
    /// Where forwarding starts for a peer never forwarded to: the log's
    /// head when its interests first arrived. A record committed after
    /// that may match them, so none may be skipped.
    pub(crate) first_cursor: Option<u64>,
    /// Records it acknowledged from this run's forwarder.
    pub(crate) forwarded: u64,
    pub(crate) last_error: Option<String>,
}

impl Peer {
    pub(crate) fn new(url: String, region: Option<String>) -> Peer {
        Peer {
            url,
            region,
            last_seen: None,
            last_seen_us: None,
            rtt_ms: None,
            wants: tokio::sync::watch::Sender::new(None),
            interests_version: 0,
            incarnation: 0,
            stalled: false,
            head_seq: 0,
            earliest_seq: 0,
            cursor: None,
            first_cursor: None,
            forwarded: 0,
            last_error: None,
        }
    }
}

/// A peer's liveness, from the age of its last announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Heard from within [`SUSPECT_AFTER_HEARTBEATS`] intervals.
    Up,
    /// Heard from within [`DOWN_AFTER_HEARTBEATS`] intervals.
    Suspect,
    /// Not heard from for longer, or never.
    Down,
}

/// A site's federation: its registry of peers and its own announcement.
pub struct Federation {
    pub(crate) site: String,
    pub(crate) region: Option<String>,
    pub(crate) url: RwLock<String>,
    pub(crate) secret: Option<String>,
    pub(crate) heartbeat: Duration,
    pub(crate) peers: RwLock<BTreeMap<String, Peer>>,
    /// This site's interests as last computed, and their version (0 until
    /// they are first computed: peers then keep waiting instead of taking
    /// an empty set for the truth).
    pub(crate) interests: RwLock<(Vec<Interest>, u64)>,
    /// Held across a recomputation of the interests, from reading the
    /// leases to installing the result, so an older reading never replaces
    /// a newer one.
    pub(crate) refreshing: tokio::sync::Mutex<()>,
    /// Interests held by the site itself rather than by a lease: the
    /// supervisor's in monitor announcements, and each running monitor's
    /// in its subtree.
    pub(crate) standing: RwLock<BTreeSet<Interest>>,
    /// Random, per run; see [`Announce::incarnation`].
    pub(crate) incarnation: u64,
    /// Loopback url of this site, for its own part of a federated query.
    pub(crate) local_url: RwLock<String>,
    /// Peers whose forwarder runs.
    pub(crate) forwarders: Mutex<HashSet<String>>,
    /// Wakes the heartbeat loop early (interests changed).
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) client: reqwest::Client,
}

/// A `RwLock` read that survives a panicked writer: the registry holds no
/// invariant a panic could break halfway.
pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
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
        let mut peers = BTreeMap::new();
        for (name, url) in config.peers {
            check_site(&name)?;
            check_url(&url)?;
            if name == site {
                return Err(format!("peer {name} is this site's own name"));
            }
            peers.insert(name, Peer::new(url.trim_end_matches('/').to_string(), None));
        }
        if let Some(url) = &config.url {
            check_url(url)?;
        }
        if let Some(region) = &config.region {
            check_name("region", region)?;
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| format!("cannot build the peer client: {e}"))?;
        Ok(Federation {
            site: site.to_string(),
            region: config.region,
            url: RwLock::new(config.url.unwrap_or_default()),
            secret: config.secret,
            heartbeat: if config.heartbeat.is_zero() { HEARTBEAT_DEFAULT } else { config.heartbeat },
            peers: RwLock::new(peers),
            interests: RwLock::new((Vec::new(), 0)),
            refreshing: tokio::sync::Mutex::new(()),
            standing: RwLock::new(BTreeSet::new()),
            incarnation: rand::random::<u64>() | 1,
            local_url: RwLock::new(String::new()),
            forwarders: Mutex::new(HashSet::new()),
            wake: tokio::sync::Notify::new(),
            client,
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
        read(&self.url).clone()
    }

    /// This site's url over loopback (empty until it listens).
    pub(crate) fn local_url(&self) -> String {
        read(&self.local_url).clone()
    }

    pub(crate) fn state_of(&self, p: &Peer) -> PeerState {
        match p.last_seen.map(|t| t.elapsed()) {
            Some(age) if age <= self.heartbeat * SUSPECT_AFTER_HEARTBEATS => PeerState::Up,
            Some(age) if age <= self.heartbeat * DOWN_AFTER_HEARTBEATS => PeerState::Suspect,
            _ => PeerState::Down,
        }
    }

    /// Every known peer.
    pub(crate) fn peer_list(&self) -> Vec<PeerSummary> {
        read(&self.peers)
            .iter()
            .map(|(n, p)| PeerSummary {
                name: n.clone(),
                url: p.url.clone(),
                region: p.region.clone(),
                state: self.state_of(p),
                rtt_ms: p.rtt_ms,
            })
            .collect()
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub(crate) fn authorized(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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
        // Compared in time independent of where they differ.
        let same = given.len() == secret.len()
            && given.bytes().zip(secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong peer secret"));
        }
        Ok(())
    }

    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.secret.as_deref().unwrap_or(""))
    }

    /// Takes in an announcement from `a.name`, heard directly from it;
    /// `head` is this site's last sequence number.
    pub(crate) fn heard(&self, a: &Announce, rtt: Option<Duration>, head: u64) -> Result<(), String> {
        check_site(&a.name)?;
        check_url(&a.url)?;
        if let Some(r) = &a.region {
            check_name("region", r)?;
        }
        if a.name == self.site {
            return Err(format!("announcement from {} names this site", a.name));
        }
        if a.earliest_seq > a.seq.saturating_add(1) {
            return Err(format!(
                "announcement says its log starts at seq {} but ends at {}; the start is at most the end + 1",
                a.earliest_seq, a.seq
            ));
        }
        if a.interests.len() > INTERESTS_MAX {
            return Err(format!("{} interests, over the limit of {INTERESTS_MAX}", a.interests.len()));
        }
        let interests: Vec<pepper_router::Interest> = a
            .interests
            .iter()
            .map(|i| pepper_router::Interest { pattern: i.pattern.clone(), types: i.types.clone() })
            .collect();
        let wants = Wants::parse(&interests).map_err(|e| e.to_string())?;
        let mut peers = write(&self.peers);
        if !peers.contains_key(&a.name) && peers.len() >= PEERS_MAX {
            return Err(format!("this site already knows {PEERS_MAX} peers, its limit"));
        }
        let p = peers.entry(a.name.clone()).or_insert_with(|| Peer::new(a.url.clone(), a.region.clone()));
        p.url = a.url.trim_end_matches('/').to_string();
        p.region = a.region.clone();
        p.last_seen = Some(Instant::now());
        p.last_seen_us = Some(now_us());
        p.head_seq = a.seq;
        p.earliest_seq = a.earliest_seq;
        if p.first_cursor.is_none() {
            p.first_cursor = Some(head + 1);
        }
        if a.incarnation != p.incarnation {
            // A new run of the peer: its versions start over.
            p.incarnation = a.incarnation;
            p.interests_version = 0;
        }
        // Version 0: the peer has not computed its interests yet; keep
        // waiting rather than take an empty set for the truth.
        if a.interests_version > p.interests_version {
            let first_cursor = p.first_cursor.unwrap_or(head + 1);
            p.wants.send_replace(Some(PeerWants { wants: Arc::new(wants), first_cursor }));
            p.interests_version = a.interests_version;
        }
        if let Some(rtt) = rtt {
            let ms = rtt.as_secs_f64() * 1e3;
            p.rtt_ms = Some(p.rtt_ms.map_or(ms, |old| old * 0.8 + ms * 0.2));
        }
        // Peers it knows that we do not: learned, to be confirmed by their
        // own announcements.
        for info in &a.peers {
            if info.name == self.site || peers.contains_key(&info.name) || peers.len() >= PEERS_MAX {
                continue;
            }
            if check_site(&info.name).is_ok() && check_url(&info.url).is_ok() {
                peers.insert(
                    info.name.clone(),
                    Peer::new(info.url.trim_end_matches('/').to_string(), info.region.clone()),
                );
            }
        }
        Ok(())
    }

    /// This site's announcement now, with its log's range.
    pub(crate) fn announce(&self, seq: u64, earliest_seq: u64) -> Announce {
        // One guard at a time: a second read of a lock this thread already
        // holds can deadlock behind a waiting writer.
        let (interests, interests_version) = read(&self.interests).clone();
        let peers = read(&self.peers)
            .iter()
            .map(|(n, p)| PeerInfo { name: n.clone(), url: p.url.clone(), region: p.region.clone() })
            .collect();
        Announce {
            name: self.site.clone(),
            url: self.url(),
            region: self.region.clone(),
            seq,
            earliest_seq,
            time_us: now_us(),
            interests,
            interests_version,
            incarnation: self.incarnation,
            peers,
        }
    }

    /// Recomputes this site's interests from its live leases. Returns
    /// whether they changed.
    pub(crate) async fn refresh_interests(&self, store: &Store) -> Result<bool, pepper_storage::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        let now = now_us();
        let leases = store.read(|v| v.leases()).await?;
        let standing = read(&self.standing).clone();
        let next = aggregate(
            leases
                .into_iter()
                .filter(|l| l.expires_at_us > now)
                .map(|l| Interest { pattern: l.pattern, types: l.types })
                .chain(standing)
                .collect(),
        );
        let mut current = write(&self.interests);
        if current.1 != 0 && current.0 == next {
            return Ok(false);
        }
        let version = now_us().max(current.1 + 1);
        *current = (next, version);
        Ok(true)
    }

    /// Sends this site's announcement to every peer (to those `up` only,
    /// when `only_up`), each within `timeout`, and takes in their answers.
    pub(crate) async fn announce_to_peers(&self, store: &Store, timeout: Duration, only_up: bool) {
        let me = self.announce(store.last_seq(), store.earliest_seq());
        let targets: Vec<(String, String)> = read(&self.peers)
            .iter()
            .filter(|(_, p)| !only_up || self.state_of(p) == PeerState::Up)
            .map(|(n, p)| (n.clone(), p.url.clone()))
            .collect();
        let sends = targets.into_iter().map(|(name, url)| {
            let me = &me;
            async move {
                let started = Instant::now();
                let sent = self
                    .client
                    .post(format!("{url}/v1/peer/heartbeat"))
                    .header(axum::http::header::AUTHORIZATION, self.bearer())
                    .timeout(timeout)
                    .json(me)
                    .send()
                    .await;
                let answer = match sent {
                    Ok(res) if res.status().is_success() => res.json::<Announce>().await.map_err(|e| e.to_string()),
                    Ok(res) => Err(format!("answered {}", res.status())),
                    Err(e) => Err(e.to_string()),
                };
                match answer {
                    Ok(a) if a.name == name => {
                        if let Err(e) = self.heard(&a, Some(started.elapsed()), store.last_seq()) {
                            tracing::warn!(peer = %name, error = %e, "bad announcement");
                        }
                    }
                    Ok(a) => tracing::warn!(peer = %name, answered_as = %a.name, "peer answered under another name"),
                    Err(e) => {
                        if let Some(p) = write(&self.peers).get_mut(&name) {
                            p.last_error = Some(format!("heartbeat: {e}"));
                        }
                    }
                }
            }
        });
        futures_util::future::join_all(sends).await;
    }

    /// After a lease grant: if this site's interests changed, tells the
    /// peers that are up at once, waiting at most [`INTEREST_PUSH_WAIT`], so
    /// their events published after the grant answered reach the lease.
    pub(crate) async fn lease_granted(&self, store: &Store, interest: Interest) {
        if !self.enabled() {
            return;
        }
        // An addition needs no reading of every lease: it goes into the set
        // as it is (removals wait for the heartbeat's full recomputation).
        // Only a set at its limit, or not yet computed, is recomputed.
        let added = {
            let _one_at_a_time = self.refreshing.lock().await;
            let mut current = write(&self.interests);
            if current.1 == 0 || (current.0.len() >= INTERESTS_MAX && !current.0.contains(&interest)) {
                false
            } else {
                if let Err(at) = current.0.binary_search(&interest) {
                    current.0.insert(at, interest);
                    current.1 = now_us().max(current.1 + 1);
                }
                true
            }
        };
        if !added {
            if let Err(e) = self.refresh_interests(store).await {
                tracing::warn!(error = %e, "cannot read leases for interests");
            }
        }
        // Pushed even when the set did not change here: a concurrent
        // refresh may have installed it without its push being answered yet.
        self.announce_to_peers(store, INTEREST_PUSH_WAIT, true).await;
    }

    /// After a lease ended: the next heartbeat withdraws its interest.
    pub(crate) fn lease_ended(&self) {
        self.wake.notify_one();
    }

    /// Adds a standing interest before the first heartbeat, without a push.
    pub(crate) fn add_standing(&self, interest: Interest) {
        write(&self.standing).insert(interest);
    }

    /// Adds a standing interest (see [`Federation::standing`]) and, like a
    /// lease grant, pushes it to the peers that are up.
    pub(crate) async fn hold_interest(&self, store: &Store, interest: Interest) {
        write(&self.standing).insert(interest.clone());
        self.lease_granted(store, interest).await;
    }

    /// Drops a standing interest; the next heartbeat withdraws it.
    pub(crate) fn drop_interest(&self, interest: &Interest) {
        write(&self.standing).remove(interest);
        self.wake.notify_one();
    }

    /// This site's interests version now (0: not computed yet).
    pub(crate) fn interests_version(&self) -> u64 {
        read(&self.interests).1
    }

    /// The shared secret as a bearer header value, for site-to-site calls.
    pub(crate) fn authorization(&self) -> String {
        self.bearer()
    }

    /// The next local sequence number this site's forwarder sends `peer`.
    pub(crate) fn cursor_toward(&self, peer: &str) -> Option<u64> {
        read(&self.peers).get(peer).and_then(|p| p.cursor)
    }

    /// The version of `peer`'s interests this site holds (0: none yet).
    pub(crate) fn interests_version_of(&self, peer: &str) -> u64 {
        read(&self.peers).get(peer).map_or(0, |p| p.interests_version)
    }

    /// `peer`'s url, if it is known.
    pub(crate) fn url_of(&self, peer: &str) -> Option<String> {
        read(&self.peers).get(peer).map(|p| p.url.clone())
    }
}

/// A site name by the store's rule ([`pepper_storage::validate_site`]), so a
/// peer accepted here is never refused by `Store::receive`.
pub(crate) fn check_site(name: &str) -> Result<(), String> {
    pepper_storage::validate_site(name).map_err(|e| format!("{name:?}: {e}"))
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(format!("{what} {name:?} must be 1 to {NAME_BYTES_MAX} bytes without '/' or control characters"));
    }
    Ok(())
}

/// The interests to advertise for these, in order: all of them while they
/// fit in [`INTERESTS_MAX`]; past it, broader, never narrower: each
/// pattern's first element with any type; still past it, everything (`/`).
fn aggregate(mut set: BTreeSet<Interest>) -> Vec<Interest> {
    let everything = || Interest { pattern: "/".into(), types: Vec::new() };
    if set.len() > INTERESTS_MAX {
        set = set
            .into_iter()
            .map(|i| match i.pattern.trim_start_matches('/').split('/').next() {
                Some(first) if !first.is_empty() && first != "*" => {
                    Interest { pattern: format!("/{first}/"), types: Vec::new() }
                }
                _ => everything(),
            })
            .collect();
        if set.len() > INTERESTS_MAX {
            set = BTreeSet::from([everything()]);
        }
    }
    set.into_iter().collect()
}

fn check_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && url.len() <= NAME_BYTES_MAX => Ok(()),
        _ => Err(format!("peer url {url:?} must be an http(s) url of at most {NAME_BYTES_MAX} bytes")),
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
    use crate::wire::frames::gap_allowed;

    fn config(peers: &[(&str, &str)]) -> FederationConfig {
        FederationConfig {
            peers: peers.iter().map(|(n, u)| (n.to_string(), u.to_string())).collect(),
            secret: Some("s".into()),
            ..FederationConfig::default()
        }
    }

    fn announce(version: u64, incarnation: u64, patterns: &[&str]) -> Announce {
        Announce {
            name: "b".into(),
            url: "http://127.0.0.1:2".into(),
            region: None,
            seq: 10,
            earliest_seq: 1,
            time_us: now_us(),
            interests: patterns.iter().map(|p| Interest { pattern: p.to_string(), types: Vec::new() }).collect(),
            interests_version: version,
            incarnation,
            peers: vec![PeerInfo { name: "c".into(), url: "http://127.0.0.1:3".into(), region: None }],
        }
    }

    /// A gap of `1-18446744073709551615` was taken, and the receiving site
    /// then dropped everything that origin ever sent.
    #[test]
    fn a_gap_covers_only_what_the_origin_announced_it_trimmed() {
        assert!(gap_allowed("b", 99, Some((100, 500))).is_ok());
        assert!(gap_allowed("b", 100, Some((100, 500))).expect_err("kept").contains("still holds"));
        assert!(gap_allowed("b", u64::MAX, Some((100, 500))).is_err());
        assert!(gap_allowed("b", 5, Some((0, 500))).expect_err("unsaid").contains("not announced"));
        assert!(gap_allowed("b", 5, None).expect_err("unknown").contains("not a known peer"));
        // The head bounds an earliest that claims more than the log holds.
        assert!(gap_allowed("b", 600, Some((u64::MAX, 500))).is_err());
        let fed = Federation::new("a", config(&[])).expect("federation");
        fed.heard(&Announce { earliest_seq: 40, seq: 100, ..announce(1, 1, &[]) }, None, 0).expect("heard");
        let announced = read(&fed.peers).get("b").map(|p| (p.earliest_seq, p.head_seq));
        assert_eq!(announced, Some((40, 100)));
        assert!(gap_allowed("b", 39, announced).is_ok() && gap_allowed("b", 40, announced).is_err());
        // An announcement whose start lies past its end is refused whole.
        let lie = Announce { earliest_seq: u64::MAX, ..announce(2, 1, &[]) };
        assert!(fed.heard(&lie, None, 0).expect_err("past its end").contains("starts at seq"));
        assert_eq!(read(&fed.peers).get("b").map(|p| p.earliest_seq), Some(40));
    }

    /// Which of a few probe channels the peer's interests cover.
    fn interests_of(fed: &Federation, peer: &str) -> Option<Vec<String>> {
        read(&fed.peers).get(peer).and_then(|p| {
            p.wants
                .borrow()
                .as_ref()
                .map(|w| ["/x/", "/y/"].into_iter().filter(|c| w.wants.covers(c, "t")).map(str::to_string).collect())
        })
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Federation::new("a", FederationConfig { secret: None, ..config(&[("b", "http://x:1")]) }).is_err());
        assert!(Federation::new("a", config(&[("a", "http://x:1")])).is_err(), "itself as a peer");
        assert!(Federation::new("a", config(&[("b", "ftp://x")])).is_err());
        assert!(Federation::new("a", config(&[("b/c", "http://x:1")])).is_err());
        let bad_url = FederationConfig { url: Some("no scheme".into()), ..config(&[]) };
        assert!(Federation::new("a", bad_url).is_err());
        assert!(Federation::new("a", config(&[("b", "http://x:1")])).is_ok());
    }

    #[test]
    fn interests_follow_versions_within_a_run_and_reset_across_runs() {
        let fed = Federation::new("a", config(&[])).expect("federation");
        // Not computed yet (version 0): the forwarder keeps waiting.
        fed.heard(&announce(0, 7, &[]), None, 100).expect("heard");
        assert_eq!(interests_of(&fed, "b"), None);
        assert_eq!(read(&fed.peers).get("b").and_then(|p| p.first_cursor), Some(101));
        // Learned of c from b's list, as a peer to confirm.
        assert!(read(&fed.peers).contains_key("c"));
        fed.heard(&announce(5, 7, &["/x/"]), None, 100).expect("heard");
        assert_eq!(interests_of(&fed, "b"), Some(vec!["/x/".to_string()]));
        // An overtaken announcement does not bring back older interests.
        fed.heard(&announce(4, 7, &[]), None, 100).expect("heard");
        assert_eq!(interests_of(&fed, "b"), Some(vec!["/x/".to_string()]));
        // A new run of b starts its versions over, even with a clock behind.
        fed.heard(&announce(2, 8, &["/y/"]), None, 100).expect("heard");
        assert_eq!(interests_of(&fed, "b"), Some(vec!["/y/".to_string()]));
        // The first cursor stays where the interests first arrived.
        assert_eq!(read(&fed.peers).get("b").and_then(|p| p.first_cursor), Some(101));
        // Bad announcements change nothing.
        let mut bad = announce(9, 8, &["no slash"]);
        assert!(fed.heard(&bad, None, 100).is_err());
        bad = announce(9, 8, &[]);
        bad.name = "a".into();
        assert!(fed.heard(&bad, None, 100).is_err(), "its own name");
        assert_eq!(interests_of(&fed, "b"), Some(vec!["/y/".to_string()]));
    }

    #[test]
    fn interests_past_the_limit_get_broader_never_narrower() {
        let interest =
            |p: &str, t: &[&str]| Interest { pattern: p.to_string(), types: t.iter().map(|t| t.to_string()).collect() };
        let few: BTreeSet<Interest> = [interest("/a/b/", &["x"]), interest("/", &[])].into();
        assert_eq!(aggregate(few.clone()), few.into_iter().collect::<Vec<_>>(), "under the limit: as they are");
        // Over the limit, under few first elements: their first elements.
        let mut many: BTreeSet<Interest> = (0..INTERESTS_MAX).map(|n| interest(&format!("/a/n{n}/"), &["x"])).collect();
        many.insert(interest("/b/*/c/", &[]));
        many.insert(interest("/*/d/", &["y"]));
        assert_eq!(aggregate(many), [interest("/", &[]), interest("/a/", &[]), interest("/b/", &[])]);
        // Over the limit even then: everything.
        let spread: BTreeSet<Interest> = (0..=INTERESTS_MAX).map(|n| interest(&format!("/s{n}/x/"), &[])).collect();
        assert_eq!(aggregate(spread), [interest("/", &[])]);
    }

    #[test]
    fn the_registry_is_bounded() {
        let fed = Federation::new("a", config(&[])).expect("federation");
        for n in 0..PEERS_MAX {
            let mut a = announce(1, 1, &[]);
            a.name = format!("p{n}");
            a.peers.clear();
            fed.heard(&a, None, 0).expect("room");
        }
        let mut one_more = announce(1, 1, &[]);
        one_more.name = "extra".into();
        assert!(fed.heard(&one_more, None, 0).is_err());
        assert_eq!(read(&fed.peers).len(), PEERS_MAX);
        // A known peer is still heard.
        let mut known = announce(2, 1, &["/x/"]);
        known.name = "p0".into();
        fed.heard(&known, None, 0).expect("known");
    }

    #[test]
    fn the_secret_is_required_and_compared() {
        let fed = Federation::new("a", config(&[])).expect("federation");
        let mut headers = HeaderMap::new();
        assert_eq!(fed.authorized(&headers).map_err(|e| e.status()), Err(StatusCode::UNAUTHORIZED));
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer t".parse().expect("header"));
        assert_eq!(fed.authorized(&headers).map_err(|e| e.status()), Err(StatusCode::UNAUTHORIZED));
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer s".parse().expect("header"));
        assert!(fed.authorized(&headers).is_ok());
        let off = Federation::new("a", FederationConfig::default()).expect("federation");
        assert_eq!(off.authorized(&headers).map_err(|e| e.status()), Err(StatusCode::FORBIDDEN));
    }
}
