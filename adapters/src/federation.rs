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

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use pepper_router::Pattern;
use pepper_storage::{now_us, Body, Distribution, Event, Party, Record, Target};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::http::AppState;

/// The channel prefix of site announcements.
pub const SITES_CHANNEL_PREFIX: &str = "/pepper/sites/";

/// The default time between heartbeats.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(1);

/// A peer is `up` while its last announcement is at most this many
/// heartbeat intervals old, then `suspect` up to [`DOWN_AFTER_HEARTBEATS`],
/// then `down`.
pub const SUSPECT_AFTER_HEARTBEATS: u32 = 3;
/// See [`SUSPECT_AFTER_HEARTBEATS`].
pub const DOWN_AFTER_HEARTBEATS: u32 = 10;

/// Most peers a site keeps in its registry; announcements naming more are
/// cut to this.
pub const PEERS_MAX: usize = 256;

/// Most interests one announcement may carry. A site with more lease
/// patterns than this advertises their first elements instead (broader,
/// never narrower).
pub const INTERESTS_MAX: usize = 4096;

/// Most records in one forwarded batch.
pub const FORWARD_BATCH_RECORDS: usize = 1000;
/// About the most bytes of log frames in one forwarded batch.
pub const FORWARD_BATCH_BYTES: usize = 1024 * 1024;
/// Largest `POST /v1/peer/records` body: a full batch plus the one record
/// that may cross [`FORWARD_BATCH_BYTES`], with their length prefixes.
pub const PEER_BODY_BYTES_MAX: usize =
    FORWARD_BATCH_BYTES + pepper_storage::limits::RECORD_BYTES_MAX + 4 * (FORWARD_BATCH_RECORDS + 1);

/// Most log records a forwarder scans per read, matching or not.
const FORWARD_SCAN_MAX: u64 = 100_000;

/// How long a lease grant waits for the peers that are up to acknowledge
/// its interest.
pub const INTEREST_PUSH_WAIT: Duration = Duration::from_secs(1);

/// The forwarder's retry delay doubles from this after each failure...
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Longest site name, url or region accepted from a peer, in bytes.
const NAME_BYTES_MAX: usize = 256;

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

/// A peer's interests, parsed, in a routing trie: each pattern maps to its
/// types (empty means all), so matching a record is O(channel depth)
/// whatever the number of interests.
type Wants = Arc<pepper_router::Trie<Vec<String>>>;

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
struct Peer {
    url: String,
    region: Option<String>,
    /// When its last announcement (or answer to ours) arrived.
    last_seen: Option<Instant>,
    last_seen_us: Option<u64>,
    /// Heartbeat round trip, smoothed.
    rtt_ms: Option<f64>,
    /// Its interests, parsed; `None` until it has told us this run, and the
    /// forwarder waits until then rather than skip what it might want.
    interests: Option<Wants>,
    /// The sender's version of `interests` (0: none yet).
    interests_version: u64,
    /// The run of the peer those interests came from.
    incarnation: u64,
    /// The peer refuses what the forwarder sends (4xx): forwarding to it
    /// is stuck until an operator looks.
    stalled: bool,
    /// Bumped here whenever `interests` change, so a forwarder can tell
    /// that they changed while it was reading the log.
    interests_changes: u64,
    /// The last sequence number of its log it announced.
    head_seq: u64,
    /// The first sequence number its log holds, as it last announced (0:
    /// not announced). Bounds the gap markers it may send.
    earliest_seq: u64,
    /// The next local sequence number to forward to it.
    cursor: Option<u64>,
    /// Where forwarding starts for a peer never forwarded to: the log's
    /// head when its interests first arrived. A record committed after
    /// that may match them, so none may be skipped.
    first_cursor: Option<u64>,
    /// Records it acknowledged from this run's forwarder.
    forwarded: u64,
    last_error: Option<String>,
}

impl Peer {
    fn new(url: String, region: Option<String>) -> Peer {
        Peer {
            url,
            region,
            last_seen: None,
            last_seen_us: None,
            rtt_ms: None,
            interests: None,
            interests_version: 0,
            incarnation: 0,
            stalled: false,
            interests_changes: 0,
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
    site: String,
    region: Option<String>,
    url: RwLock<String>,
    secret: Option<String>,
    heartbeat: Duration,
    peers: RwLock<BTreeMap<String, Peer>>,
    /// This site's interests as last computed, and their version (0 until
    /// they are first computed: peers then keep waiting instead of taking
    /// an empty set for the truth).
    interests: RwLock<(Vec<Interest>, u64)>,
    /// Held across a recomputation of the interests, from reading the
    /// leases to installing the result, so an older reading never replaces
    /// a newer one.
    refreshing: tokio::sync::Mutex<()>,
    /// Interests held by the site itself rather than by a lease: the
    /// supervisor's in monitor announcements, and each running monitor's
    /// in its subtree.
    standing: RwLock<BTreeSet<Interest>>,
    /// Random, per run; see [`Announce::incarnation`].
    incarnation: u64,
    /// Loopback url of this site, for its own part of a federated query.
    local_url: RwLock<String>,
    /// Peers whose forwarder runs.
    forwarders: Mutex<HashSet<String>>,
    /// Wakes the heartbeat loop early (interests changed).
    wake: tokio::sync::Notify,
    client: reqwest::Client,
}

/// A `RwLock` read that survives a panicked writer: the registry holds no
/// invariant a panic could break halfway.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
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

    fn state_of(&self, p: &Peer) -> PeerState {
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
    fn heard(&self, a: &Announce, rtt: Option<Duration>, head: u64) -> Result<(), String> {
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
        let mut interests = pepper_router::Trie::new();
        for i in &a.interests {
            let pattern = Pattern::parse(&i.pattern).map_err(|e| e.to_string())?;
            interests.insert(&pattern, i.types.clone());
        }
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
            p.interests = Some(Arc::new(interests));
            p.interests_version = a.interests_version;
            p.interests_changes += 1;
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
    fn announce(&self, seq: u64, earliest_seq: u64) -> Announce {
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
    async fn refresh_interests(&self, state: &AppState) -> Result<bool, pepper_storage::Error> {
        let _one_at_a_time = self.refreshing.lock().await;
        let now = now_us();
        let leases = state.store.read(|v| v.leases()).await?;
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
    async fn announce_to_peers(&self, state: &AppState, timeout: Duration, only_up: bool) {
        let me = self.announce(state.store.last_seq(), state.store.earliest_seq());
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
                        if let Err(e) = self.heard(&a, Some(started.elapsed()), state.store.last_seq()) {
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
    pub(crate) async fn lease_granted(&self, state: &AppState, interest: Interest) {
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
            if let Err(e) = self.refresh_interests(state).await {
                tracing::warn!(error = %e, "cannot read leases for interests");
            }
        }
        // Pushed even when the set did not change here: a concurrent
        // refresh may have installed it without its push being answered yet.
        self.announce_to_peers(state, INTEREST_PUSH_WAIT, true).await;
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
    pub(crate) async fn hold_interest(&self, state: &AppState, interest: Interest) {
        write(&self.standing).insert(interest.clone());
        self.lease_granted(state, interest).await;
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
fn check_site(name: &str) -> Result<(), String> {
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

/// Runs the site's federation until shutdown: the heartbeat loop, and a
/// forwarder for every peer it learns of. `listening` is the address the
/// server is bound to, the default url to announce.
pub async fn run(state: AppState, listening: std::net::SocketAddr) {
    let fed = state.federation.clone();
    // For this site's own part of a federated query, and the url to
    // announce when none is configured.
    let loopback = loopback_of(listening);
    let local = format!("http://{loopback}");
    *write(&fed.local_url) = local.clone();
    if fed.url().is_empty() {
        if loopback != listening {
            tracing::warn!(%listening, "listening on every address: announcing loopback; set --url for peers elsewhere");
        }
        *write(&fed.url) = local;
    }
    if !fed.enabled() {
        return;
    }
    let mut stopping = state.stopping();
    let mut last_published = Instant::now() - fed.heartbeat;
    loop {
        if let Err(e) = fed.refresh_interests(&state).await {
            tracing::warn!(error = %e, "cannot read leases for interests");
        }
        fed.announce_to_peers(&state, fed.heartbeat.max(Duration::from_millis(500)), false).await;
        let names: Vec<String> = read(&fed.peers).keys().cloned().collect();
        for name in names {
            let started = fed.forwarders.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
            if started {
                tokio::spawn(forward(state.clone(), name));
            }
        }
        if last_published.elapsed() >= fed.heartbeat && !read(&fed.peers).is_empty() {
            last_published = Instant::now();
            publish_heartbeat(&state).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(fed.heartbeat) => {}
            _ = fed.wake.notified() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// Publishes this site's announcement on `/pepper/sites/<site>/`.
async fn publish_heartbeat(state: &AppState) {
    let fed = &state.federation;
    let me = fed.announce(state.store.last_seq(), state.store.earliest_seq());
    let payload = json!({ "name": me.name, "url": me.url, "region": me.region, "seq": me.seq,
                          "time": crate::envelope::rfc3339_us(me.time_us), "peers": me.peers.len(),
                          "interests": me.interests.len() });
    let event = Event {
        id: crate::envelope::new_event_id(),
        channel: format!("{SITES_CHANNEL_PREFIX}{}/", fed.site),
        event_type: "pepper.heartbeat".into(),
        from: Party { service: "pepper".into(), instance: fed.site.clone() },
        to: Target::default(),
        distribution: Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        tuple: None,
    };
    if let Err(e) = state.store.append(vec![Body::Event(event)]).await {
        tracing::warn!(error = %e, "cannot publish the heartbeat");
    }
}

/// Whether `record` goes to a peer with `interests`: an event that
/// originated here, on a channel and of a type the peer wants.
fn wanted(site: &str, record: &Record, interests: &pepper_router::Trie<Vec<String>>) -> bool {
    let Body::Event(e) = &record.body else { return false };
    if record.origin != site {
        return false;
    }
    // Channels in the log were validated when they were written.
    let Ok(channel) = pepper_router::Channel::parse(&e.channel) else { return false };
    let mut hit = false;
    interests.for_each_match(&channel, |types| {
        hit = hit || types.is_empty() || types.contains(&e.event_type);
    });
    hit
}

/// What the forwarder reads next.
enum Next {
    /// The peer's cursor fell below retention: records `from..to` are gone.
    Gap { from: u64, to: u64 },
    /// Matching frames, and where to continue after them.
    Frames(Vec<pepper_storage::Frame>, u64),
}

/// The forwarder of one peer; runs until shutdown.
async fn forward(state: AppState, peer: String) {
    let fed = state.federation.clone();
    let mut stopping = state.stopping();
    let mut backoff = BACKOFF_MIN;
    let mut persisted_at = Instant::now();
    loop {
        if *stopping.borrow() {
            return;
        }
        let (interests, changes, url) = match read(&fed.peers).get(&peer) {
            Some(p) => (p.interests.clone(), p.interests_changes, p.url.clone()),
            None => return,
        };
        // Until the peer has said what it wants this run, send nothing and
        // skip nothing.
        let Some(interests) = interests else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            continue;
        };
        let cursor = match cursor_of(&state, &peer).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(peer = %peer, error = %e, "cannot read the forwarding cursor");
                tokio::time::sleep(BACKOFF_MAX).await;
                continue;
            }
        };
        if cursor > state.store.last_seq() {
            tokio::select! {
                _ = state.store.wait_for_seq(cursor, Duration::from_secs(1)) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            continue;
        }
        let site = fed.site.clone();
        let next = state
            .store
            .read(move |v| {
                if cursor < v.earliest_seq() {
                    return Ok(Next::Gap { from: cursor, to: v.earliest_seq() });
                }
                let (frames, next) =
                    v.frames(cursor, FORWARD_BATCH_RECORDS, FORWARD_BATCH_BYTES, FORWARD_SCAN_MAX, |r| {
                        wanted(&site, r, &interests)
                    })?;
                Ok(Next::Frames(frames, next))
            })
            .await;
        // Interests that changed while the log was read may have arrived
        // before a record this read filtered with the old ones: read again.
        if read(&fed.peers).get(&peer).is_some_and(|p| p.interests_changes != changes) {
            continue;
        }
        let (sent, next_cursor) = match next {
            Err(e) => (Err(SendError { message: format!("cannot read the log: {e}"), refused: false }), cursor),
            Ok(Next::Gap { from, to }) => (send(&fed, &url, Some((from, to - 1)), &[]).await.map(|_| 0), to),
            Ok(Next::Frames(frames, next)) if frames.is_empty() => {
                // Nothing for this peer in what was scanned: move on, and
                // keep the cursor now and then (losing it only rescans).
                let durable = persisted_at.elapsed() >= Duration::from_secs(1);
                set_cursor(&state, &peer, next, durable).await;
                if durable {
                    persisted_at = Instant::now();
                }
                continue;
            }
            Ok(Next::Frames(frames, next)) => {
                let n = frames.len() as u64;
                (send(&fed, &url, None, &frames).await.map(|_| n), next)
            }
        };
        match sent {
            Ok(n) => {
                set_cursor(&state, &peer, next_cursor, true).await;
                persisted_at = Instant::now();
                backoff = BACKOFF_MIN;
                if let Some(p) = write(&fed.peers).get_mut(&peer) {
                    p.forwarded += n;
                    p.last_error = None;
                    p.stalled = false;
                }
            }
            Err(e) => {
                // A refusal (4xx) will not pass by itself: say so loudly, once,
                // and keep trying slowly. Skipping the batch would lose it.
                let first_refusal = e.refused
                    && write(&fed.peers).get_mut(&peer).is_some_and(|p| !std::mem::replace(&mut p.stalled, true));
                if first_refusal {
                    tracing::error!(peer = %peer, error = %e.message, "the peer refuses what this site forwards; forwarding to it is stalled");
                } else {
                    tracing::debug!(peer = %peer, error = %e.message, "forwarding failed; retrying");
                }
                if let Some(p) = write(&fed.peers).get_mut(&peer) {
                    p.last_error = Some(format!("forwarding: {}", e.message));
                }
                if e.refused {
                    backoff = BACKOFF_MAX;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// The next sequence number to forward to `peer`: the cached one, the
/// durable one, or (first contact) where its interests first arrived, kept
/// at once.
async fn cursor_of(state: &AppState, peer: &str) -> Result<u64, pepper_storage::Error> {
    let (cached, first) = match read(&state.federation.peers).get(peer) {
        Some(p) => (p.cursor, p.first_cursor),
        None => (None, None),
    };
    if let Some(c) = cached {
        return Ok(c);
    }
    // RocksDB calls run off the async executor.
    let (store, name) = (state.store.clone(), peer.to_string());
    let c = tokio::task::spawn_blocking(move || match store.peer_cursor(&name)? {
        Some(c) => Ok::<u64, pepper_storage::Error>(c),
        None => {
            let c = first.unwrap_or_else(|| store.last_seq() + 1);
            store.set_peer_cursor(&name, c)?;
            Ok(c)
        }
    })
    .await
    .map_err(|e| pepper_storage::Error::Io(std::io::Error::other(format!("cursor task failed: {e}"))))??;
    if let Some(p) = write(&state.federation.peers).get_mut(peer) {
        p.cursor = Some(c);
    }
    Ok(c)
}

async fn set_cursor(state: &AppState, peer: &str, next: u64, durable: bool) {
    if durable {
        let (store, name) = (state.store.clone(), peer.to_string());
        let kept = tokio::task::spawn_blocking(move || store.set_peer_cursor(&name, next)).await;
        if let Err(e) = kept.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
            // The cached cursor still moves; a restart resends from the
            // durable one and the peer drops the repeats.
            tracing::error!(peer = %peer, error = %e, "cannot keep the forwarding cursor");
        }
    }
    if let Some(p) = write(&state.federation.peers).get_mut(peer) {
        p.cursor = Some(next);
    }
}

/// Why a batch did not get through.
struct SendError {
    message: String,
    /// The peer answered 4xx: it will refuse the same batch again.
    refused: bool,
}

impl From<String> for SendError {
    fn from(message: String) -> SendError {
        SendError { message, refused: false }
    }
}

/// Sends one batch (or a gap marker) and waits for the peer's answer.
async fn send(
    fed: &Federation,
    url: &str,
    gap: Option<(u64, u64)>,
    frames: &[pepper_storage::Frame],
) -> Result<Value, SendError> {
    let mut body = Vec::with_capacity(frames.iter().map(|(_, f)| f.len() + 4).sum());
    for (_, f) in frames {
        let len = u32::try_from(f.len()).map_err(|_| SendError::from("frame over 4 GiB".to_string()))?;
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(f);
    }
    let mut req = fed
        .client
        .post(format!("{url}/v1/peer/records"))
        .header(axum::http::header::AUTHORIZATION, fed.bearer())
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header("x-pepper-origin", fed.site.as_str())
        .timeout(Duration::from_secs(10))
        .body(body);
    if let Some((from, to)) = gap {
        req = req.header("x-pepper-gap", format!("{from}-{to}"));
    }
    let res = req.send().await.map_err(|e| e.to_string())?;
    let status = res.status();
    let answer: Value = res.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        // 409 passes by itself (a gap taken after the next heartbeat).
        let refused = status.is_client_error() && status != axum::http::StatusCode::CONFLICT;
        return Err(SendError { message: format!("answered {status}: {answer}"), refused });
    }
    Ok(answer)
}

/// Axum middleware on `/v1/peer/`: the peer secret is checked before a
/// body is read.
pub(crate) async fn require_peer(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.federation.authorized(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/peer/heartbeat`: a peer's announcement; answers with ours.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    body: Result<Json<Announce>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Announce>, ApiError> {
    let fed = &state.federation;
    let Json(a) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    fed.heard(&a, None, state.store.last_seq()).map_err(ApiError::invalid_body)?;
    Ok(Json(fed.announce(state.store.last_seq(), state.store.earliest_seq())))
}

/// `POST /v1/peer/records`: a batch of log frames from their origin (the
/// `x-pepper-origin` header), each `u32` length then the frame; or a gap
/// marker (`x-pepper-gap: FROM-TO`). Answers `{"appended", "dropped",
/// "mark"}`.
pub(crate) async fn records(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    // Read with this route's own limit, the way `POST /v1/events` is.
    let body = axum::body::to_bytes(body, PEER_BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::too_large(format!("a peer batch is over the limit of {PEER_BODY_BYTES_MAX} bytes")))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let origin = header("x-pepper-origin").ok_or_else(|| ApiError::invalid_body("x-pepper-origin is missing"))?;
    check_site(&origin).map_err(ApiError::invalid_body)?;
    if let Some(gap) = header("x-pepper-gap") {
        let (from, to) = gap
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .filter(|(a, b)| a <= b)
            .ok_or_else(|| ApiError::invalid_body(format!("x-pepper-gap {gap:?} is not FROM-TO")))?;
        let announced = read(&state.federation.peers).get(&origin).map(|p| (p.earliest_seq, p.head_seq));
        gap_allowed(&origin, to, announced).map_err(|m| ApiError::new(StatusCode::CONFLICT, "gap_refused", m))?;
        let markers = gap_markers(&state, &origin, from, to).await?;
        let appended = state.store.receive_gap(&origin, to, markers).await?;
        tracing::warn!(origin = %origin, from, to, "records lost to the origin's retention; gap markers appended");
        return Ok(Json(json!({ "appended": appended.written(), "dropped": appended.dropped,
                               "mark": state.store.origin_mark(&origin)? })));
    }
    let received: Vec<(u64, Body)> =
        decode_batch(&origin, &body)?.into_iter().map(|(seq, body)| (seq, admit(&origin, seq, body))).collect();
    // Expiries of received attribute updates, in case this site records
    // them (a monitor of their channel): an entry for an update it did not
    // record is harmless, since expiring a tuple that is not live, or not
    // yet due, is refused and the entry corrected then.
    let expiries: Vec<Option<(String, u64)>> = received
        .iter()
        .map(|(_, body)| match body {
            Body::Event(Event { channel, tuple: Some(t), .. }) => {
                t.expires_at_us.map(|at| (crate::pldb::index_key(channel, &t.field), at))
            }
            _ => None,
        })
        .collect();
    let appended = state.store.receive(&origin, received).await?;
    if appended.written() > 0 {
        // The dropped records are the first ones (at or below the mark).
        for (i, e) in expiries.iter().skip(appended.dropped as usize).enumerate() {
            if let Some((key, at)) = e {
                state.tuples.set(key, *at, appended.first + i as u64);
            }
        }
    }
    Ok(Json(
        json!({ "appended": appended.written(), "dropped": appended.dropped, "mark": state.store.origin_mark(&origin)? }),
    ))
}

/// Decodes a peer batch: frames of `origin`'s log, each a `u32`
/// big-endian length then the frame, crc-checked, into (its seq there, the
/// record's body). The bodies are checked by the store's rules when
/// appended, as every record is.
///
/// # Errors
/// 400 `invalid_body` for a batch that is empty, cut inside a frame, holds a
/// frame that does not decode or fails its crc, or one from another origin.
pub fn decode_batch(origin: &str, body: &[u8]) -> Result<Vec<(u64, Body)>, ApiError> {
    let mut received = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (len, after) =
            rest.split_first_chunk::<4>().ok_or_else(|| ApiError::invalid_body("batch ends inside a frame length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let frame = after.get(..len).ok_or_else(|| ApiError::invalid_body("batch ends inside a frame"))?;
        // The origin's crc, checked here: the frame is as the origin logged it.
        let record = Record::decode(frame).map_err(|e| ApiError::invalid_body(format!("bad frame: {e}")))?;
        if record.origin != origin {
            return Err(ApiError::invalid_body(format!(
                "frame {} originated on {}, not on {origin}; sites forward only their own records",
                record.seq, record.origin
            )));
        }
        received.push((record.seq, record.body));
        rest = &after[len..];
    }
    if received.is_empty() {
        return Err(ApiError::invalid_body("an empty batch"));
    }
    Ok(received)
}

/// The type of the marker that takes the place of a received event that
/// breaks this site's rules.
pub const REFUSED_TYPE: &str = "pepper.refused";

/// A received record as it is appended: an event that breaks this site's
/// rules (one logged by a site of an earlier version, with a line break in
/// its type, say) is replaced by a `pepper.refused` marker on the origin's
/// site channel that says which record it was and why, in its place and
/// with its origin seq. Refusing the whole batch instead would stall
/// forwarding from that origin for good, and dropping the event would skip
/// it silently.
fn admit(origin: &str, seq: u64, body: Body) -> Body {
    let Body::Event(mut e) = body else { return body };
    // The writer chooses these at commit; a received event's are cleared.
    e.assigned.clear();
    let Err(reason) = pepper_storage::validate::event(&e) else { return Body::Event(e) };
    tracing::warn!(origin, seq, %reason, "a received event breaks this site's rules; a marker takes its place");
    // Cut, so that the marker always fits a record whatever it replaces.
    let cut = |s: &str| s.chars().take(256).collect::<String>();
    let payload = json!({ "origin": origin, "origin_seq": seq, "reason": cut(&reason.to_string()),
                          "channel": cut(&e.channel), "type": cut(&e.event_type), "id": cut(&e.id) });
    marker(format!("{SITES_CHANNEL_PREFIX}{origin}/"), REFUSED_TYPE, origin, &payload)
}

/// An event pepper appends about what an origin sent (a gap, a refused
/// record): from service `pepper`, instance the origin.
fn marker(channel: String, event_type: &str, origin: &str, payload: &Value) -> Body {
    Body::Event(Event {
        id: crate::envelope::new_event_id(),
        channel,
        event_type: event_type.into(),
        from: Party { service: "pepper".into(), instance: origin.to_string() },
        to: Target::default(),
        distribution: Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        tuple: None,
    })
}

/// Whether origin may declare its records up to `to` lost: only those
/// below the first one its log still holds, as it last announced
/// (`announced`: its earliest and last seq; `None` for a site not known as
/// a peer, earliest 0 for one that has not said). A gap marker moves the
/// origin's mark past `to`, which drops every record up to it from then
/// on, so a gap past what the origin trimmed (up to `u64::MAX`, say) would
/// silence it for good. Refused with 409; an honest origin whose retention
/// moved after its last heartbeat is let through after the next one.
///
/// # Errors
/// Why the gap is refused.
fn gap_allowed(origin: &str, to: u64, announced: Option<(u64, u64)>) -> Result<(), String> {
    let Some((earliest, head)) = announced else {
        return Err(format!("{origin} is not a known peer; a gap is taken only from a peer that announced its log"));
    };
    if earliest == 0 {
        return Err(format!("{origin} has not announced the first sequence number its log holds"));
    }
    // An announcement never says more than its log's range (see `heard`);
    // the head bounds it again here.
    let kept_from = earliest.min(head.saturating_add(1));
    if to >= kept_from {
        return Err(format!(
            "a gap up to seq {to} covers records {origin} announced it still holds (from seq {kept_from}); \
             a gap may only cover what its retention trimmed"
        ));
    }
    Ok(())
}

/// One `pepper.gap` event per distinct local lease pattern (on a channel
/// that pattern matches), or one on the origin's site channel when there is
/// no lease.
async fn gap_markers(state: &AppState, origin: &str, from: u64, to: u64) -> Result<Vec<Body>, ApiError> {
    let leases = state.store.read(|v| v.leases()).await?;
    let fallback = format!("{SITES_CHANNEL_PREFIX}{origin}/");
    let mut channels: BTreeSet<String> = leases
        .iter()
        .map(|l| {
            let channel =
                l.pattern.split('/').map(|e| if e == "*" { "pepper-gap" } else { e }).collect::<Vec<_>>().join("/");
            // `/` (every channel) has no channel of its own, and a long
            // pattern may not fit: the origin's channel matches `/` too.
            match pepper_router::Channel::parse(&channel) {
                Ok(_) => channel,
                Err(_) => fallback.clone(),
            }
        })
        .collect();
    if channels.is_empty() {
        channels.insert(fallback);
    }
    let payload = json!({ "origin": origin, "from_seq": from, "to_seq": to,
                          "reason": "the origin's retention trimmed these records before they could be sent" });
    Ok(channels
        .into_iter()
        .take(pepper_storage::limits::BATCH_RECORDS_MAX)
        .map(|channel| marker(channel, GAP_TYPE, origin, &payload))
        .collect())
}

/// The type of gap markers; leases receive them whatever their types.
pub const GAP_TYPE: &str = "pepper.gap";

/// `GET /v1/peer/cut?site=M&toward=Y`: what a new monitor on site M needs
/// to know before it copies a replica from Y (see `docs/supervisors.md`):
/// this site's last sequence number, the version of M's interests it
/// holds, and the next sequence number its forwarder sends Y.
pub(crate) async fn cut(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<CutQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    check_site(&q.site).map_err(ApiError::invalid_query)?;
    check_site(&q.toward).map_err(ApiError::invalid_query)?;
    let fed = &state.federation;
    // The version first: a seq read after it is at least where the log was
    // when the interests arrived.
    let interests_version = fed.interests_version_of(&q.site);
    let seq = state.store.last_seq();
    let cursor = fed.cursor_toward(&q.toward);
    Ok(Json(json!({ "site": fed.site, "seq": seq, "interests_version": interests_version, "cursor": cursor })))
}

/// The query of `GET /v1/peer/cut`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CutQuery {
    site: String,
    toward: String,
}

/// `GET /v1/sites`: this site and every peer it knows, with state, last
/// contact, latency and forwarding lag.
pub(crate) async fn sites(State(state): State<AppState>) -> Json<Value> {
    let fed = &state.federation;
    let head = state.store.last_seq();
    let peers: Vec<Value> = read(&fed.peers)
        .iter()
        .map(|(name, p)| {
            let lag = p.cursor.map(|c| (head + 1).saturating_sub(c));
            json!({
                "name": name,
                "url": p.url,
                "region": p.region,
                "state": fed.state_of(p),
                "last_seen": p.last_seen_us.map(crate::envelope::rfc3339_us),
                "last_seen_ms_ago": p.last_seen.map(|t| t.elapsed().as_millis() as u64),
                "latency_ms": p.rtt_ms,
                "seq": p.head_seq,
                "cursor": p.cursor,
                "cursor_lag": lag,
                "interests": p.interests.as_ref().map(|i| i.len()),
                "forwarded": p.forwarded,
                "last_error": p.last_error,
                "stalled": p.stalled,
            })
        })
        .collect();
    Json(json!({
        "site": fed.site,
        "region": fed.region,
        "url": fed.url(),
        "seq": head,
        "federation": fed.enabled(),
        "heartbeat_ms": fed.heartbeat.as_millis() as u64,
        "interests": read(&fed.interests).0.clone(),
        "peers": peers,
    }))
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
            p.interests.as_ref().map(|trie| {
                ["/x/", "/y/"]
                    .into_iter()
                    .filter(|c| {
                        let mut hit = false;
                        trie.for_each_match(&pepper_router::Channel::parse(c).expect("channel"), |_| hit = true);
                        hit
                    })
                    .map(str::to_string)
                    .collect()
            })
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
    fn only_local_events_the_peer_wants_are_forwarded() {
        let mut interests = pepper_router::Trie::new();
        interests.insert(&Pattern::parse("/fleet/*/load/").expect("pattern"), vec!["attribute".to_string()]);
        interests.insert(&Pattern::parse("/alerts/").expect("pattern"), Vec::new());
        let record = |origin: &str, channel: &str, ty: &str| Record {
            seq: 1,
            time_us: 1,
            origin: origin.into(),
            body: Body::Event(Event {
                id: String::new(),
                channel: channel.into(),
                event_type: ty.into(),
                from: Party::default(),
                to: Target::default(),
                distribution: Distribution::All,
                payload: Vec::new(),
                assigned: Vec::new(),
                tuple: None,
            }),
        };
        assert!(wanted("a", &record("a", "/fleet/h1/load/", "attribute"), &interests));
        assert!(!wanted("a", &record("a", "/fleet/h1/load/", "ping"), &interests), "wrong type");
        assert!(wanted("a", &record("a", "/alerts/disk/", "anything"), &interests), "any type, subtree");
        assert!(!wanted("a", &record("b", "/alerts/disk/", "anything"), &interests), "received, not ours");
        assert!(!wanted("a", &record("a", "/fleet/h1/", "attribute"), &interests), "outside the pattern");
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
