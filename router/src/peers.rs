//! The peer registry: which sites this site knows, what they announced, and
//! whether each is up, suspect or down.
//!
//! Sites federate by **announcements**. Once per heartbeat interval a site
//! runs a **round**: it recomputes its own interests (the (pattern, types)
//! of its live leases and of what it holds standing), sends its
//! announcement to every peer it knows, and takes their answers, which are
//! their announcements. A peer is known from the configuration, from its
//! own announcement, or from the peer list in another's (learned, to be
//! confirmed by its own). From each announcement the registry keeps the
//! peer's url and region, its log's range (`seq`, `earliest_seq`, which
//! bound the gap markers it may send), its round trip, and its interests,
//! parsed into [`Wants`] for its forwarder.
//!
//! **Liveness** is the age of the last announcement heard, in heartbeat
//! intervals: `up` up to [`SUSPECT_AFTER_HEARTBEATS`] of them (inclusive),
//! `suspect` up to [`DOWN_AFTER_HEARTBEATS`], `down` past that or if never
//! heard. The age is measured against the `now` the driver passes in: the
//! registry reads no clock, so the same inputs at the same times give the
//! same states, in a simulator as in a site.
//!
//! **Interest versions.** This site's interests carry a version, the
//! driver's wall-clock time in microseconds when they were computed, forced
//! to grow by at least one, so a receiver keeps only the newest (an
//! announcement overtaken on the way brings nothing stale back). Versions
//! compare within one run of a site, its `incarnation`; a new incarnation
//! starts them over, so a site restarted with its clock behind is not
//! ignored. Version 0 means "not computed yet": a receiver keeps waiting
//! rather than take an empty set for the truth.
//!
//! The registry is a state machine. [`Registry::step`] takes what happened
//! ([`Input`]: an announcement posted or answered, a round's end, a lease
//! granted, ...) and [`Registry::tick`] takes the time; both return the
//! [`Action`]s to carry out, in order: recompute interests, announce to
//! these peers, start a forwarder, publish the heartbeat event, wake at
//! this time. The adapters own the sockets, the lease reads and the timers.
//!
//! Limits: [`PEERS_MAX`] peers, [`INTERESTS_MAX`] interests per
//! announcement (past it this site advertises broader ones, never
//! narrower), names of [`NAME_BYTES_MAX`] bytes. Bad input is refused whole
//! with an [`Error`] and changes nothing.
//!
//! Rejected alternatives: a registry behind locks, read and written by the
//! heartbeat task, the HTTP handlers and each forwarder, each reading the
//! clock itself. Its state then depends on when one looks, and a
//! three-site partition scenario needs real sleeps. And an adaptive failure
//! detector (phi accrual): it follows jitter better, but needs a history
//! per peer and gives states an operator cannot predict from the settings;
//! whole heartbeat intervals are what `GET /v1/sites` explains.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::interest::{Interest, PeerWants, Wants};

/// The time between heartbeat rounds when none is configured.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(1);

/// A peer is `up` while its last announcement is at most this many
/// heartbeat intervals old, then `suspect` up to [`DOWN_AFTER_HEARTBEATS`],
/// then `down`.
pub const SUSPECT_AFTER_HEARTBEATS: u32 = 3;
/// See [`SUSPECT_AFTER_HEARTBEATS`].
pub const DOWN_AFTER_HEARTBEATS: u32 = 10;

/// Most peers a registry holds. An announcement from one more site is
/// refused ([`Error::PeersFull`]); peers learned from announcements past it
/// are skipped; a configuration naming more is refused at start.
pub const PEERS_MAX: usize = 256;

/// Most interests one announcement may carry; one with more is refused. A
/// site with more (pattern, types) than this advertises their first
/// elements instead (broader, never narrower); see [`aggregate`].
pub const INTERESTS_MAX: usize = 4096;

/// How long a lease grant waits for the peers that are up to acknowledge
/// its interest: the timeout of a push's announcements.
pub const INTEREST_PUSH_WAIT: Duration = Duration::from_secs(1);

/// The shortest timeout of a round's announcements; otherwise the heartbeat
/// interval.
pub const ANNOUNCE_TIMEOUT_MIN: Duration = Duration::from_millis(500);

/// Longest url or region accepted, in bytes; longer is refused.
pub const NAME_BYTES_MAX: usize = 256;

/// Longest site name, in bytes; longer is refused. The store's limit
/// (`pepper_storage::limits::SITE_BYTES_MAX`, one length byte), so a peer
/// accepted here is never refused by `Store::receive`.
pub const SITE_BYTES_MAX: usize = 255;

const _: () = assert!(SUSPECT_AFTER_HEARTBEATS < DOWN_AFTER_HEARTBEATS);
const _: () = assert!(SITE_BYTES_MAX <= NAME_BYTES_MAX && SITE_BYTES_MAX <= u8::MAX as usize);

/// A peer as an announcement lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Site name.
    pub name: String,
    /// Where it is reached.
    pub url: String,
    /// Its region, if any.
    #[serde(default)]
    pub region: Option<String>,
}

/// A site's announcement: its heartbeat, as the wire carries it (JSON; a
/// field an older site does not send takes its default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Site name.
    pub name: String,
    /// Where it is reached.
    pub url: String,
    /// Its region, if any.
    #[serde(default)]
    pub region: Option<String>,
    /// Its log's last sequence number.
    pub seq: u64,
    /// The first sequence number its log still holds; 0 from a site that
    /// does not say. A gap marker from it may only cover records below it.
    #[serde(default)]
    pub earliest_seq: u64,
    /// When it was sent, microseconds since the Unix epoch (shown, never
    /// compared).
    pub time_us: u64,
    /// What its leases want from other sites.
    #[serde(default)]
    pub interests: Vec<Interest>,
    /// The version of `interests`, strictly increasing within one run of
    /// the sender; 0: not computed yet.
    #[serde(default)]
    pub interests_version: u64,
    /// The sender's run, drawn at random when it started.
    #[serde(default)]
    pub incarnation: u64,
    /// The peers it knows.
    #[serde(default)]
    pub peers: Vec<PeerInfo>,
    /// Its Ed25519 site key, public part, hex: pinned by a site that hears
    /// the announcement over an authenticated connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A peer's liveness, from the age of its last announcement. Ordered from
/// the most to the least alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerState {
    /// Heard from within [`SUSPECT_AFTER_HEARTBEATS`] intervals.
    Up,
    /// Heard from within [`DOWN_AFTER_HEARTBEATS`] intervals.
    Suspect,
    /// Not heard from for longer, or never.
    Down,
}

impl PeerState {
    /// The state of a peer last heard `age` ago (`None`: never), with
    /// heartbeats every `heartbeat`. The bounds are inclusive: exactly
    /// three intervals old is still `up`.
    pub fn of(age: Option<Duration>, heartbeat: Duration) -> PeerState {
        match age {
            Some(age) if age <= heartbeat.saturating_mul(SUSPECT_AFTER_HEARTBEATS) => PeerState::Up,
            Some(age) if age <= heartbeat.saturating_mul(DOWN_AFTER_HEARTBEATS) => PeerState::Suspect,
            _ => PeerState::Down,
        }
    }

    /// The lowercase name the API shows: `up`, `suspect`, `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
        }
    }
}

/// A peer to send an announcement to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its name; the answer must come under it.
    pub name: String,
    /// Its url, without a trailing slash.
    pub url: String,
}

/// What happened, for [`Registry::step`].
#[derive(Clone, Debug)]
pub enum Input {
    /// A peer posted its announcement to this site.
    Announced {
        /// What it announced.
        announcement: Announcement,
        /// This site's last sequence number now.
        local_head: u64,
        /// Wall-clock time now, microseconds since the Unix epoch (shown as
        /// `last_seen`).
        wall_us: u64,
    },
    /// A peer answered this site's announcement with its own.
    Answered {
        /// The peer the announcement went to.
        peer: String,
        /// Its answer.
        announcement: Announcement,
        /// The round trip.
        rtt: Duration,
        /// This site's last sequence number now.
        local_head: u64,
        /// Wall-clock time now, microseconds since the Unix epoch.
        wall_us: u64,
    },
    /// An announcement to a peer failed (no answer, an error status, a body
    /// that does not decode).
    AnnounceFailed {
        /// The peer.
        peer: String,
        /// What went wrong.
        error: String,
    },
    /// Every announcement of the round [`Registry::tick`] started has
    /// finished, answered or not.
    RoundDone,
    /// This site's interests may have shrunk (a lease ended, a standing
    /// interest was dropped): run a round as soon as possible.
    Wake,
    /// A lease was granted (or a standing interest held): add its interest
    /// at once and push this site's interests to the peers that are up.
    LeaseGranted {
        /// The lease's pattern and types.
        interest: Interest,
        /// Wall-clock time now, microseconds: the new version if the set
        /// changes.
        version_us: u64,
    },
    /// The result of [`Action::RefreshInterests`]: the interests of this
    /// site's live leases (standing ones are added here).
    InterestsRead {
        /// One per live lease; repeats are fine.
        interests: Vec<Interest>,
        /// Wall-clock time now, microseconds: the new version if the set
        /// changed.
        version_us: u64,
    },
}

/// What to do, returned by [`Registry::step`] and [`Registry::tick`]. Carry
/// the actions out in the order given, each finished before the next.
#[derive(Clone, Debug)]
pub enum Action {
    /// Read this site's live leases and step [`Input::InterestsRead`].
    RefreshInterests,
    /// Send [`Registry::announcement`] to each target, each within
    /// `timeout`, and step [`Input::Answered`] or [`Input::AnnounceFailed`]
    /// for each. In a round, step [`Input::RoundDone`] once all finished.
    Announce {
        /// Who to send to.
        to: Vec<Target>,
        /// How long each may take.
        timeout: Duration,
    },
    /// Start the forwarder of a peer that has none.
    StartForwarder {
        /// The peer.
        peer: String,
        /// Its interests, if it announced them in this run; until then the
        /// forwarder sends nothing and skips nothing.
        wants: Option<PeerWants>,
    },
    /// A peer with a running forwarder announced new interests: pass them
    /// to it.
    Interests {
        /// The peer.
        peer: String,
        /// The new interests.
        wants: PeerWants,
    },
    /// Publish this site's announcement as a `pepper.heartbeat` event on
    /// its `/pepper/sites/<site>/` channel.
    PublishHeartbeat,
    /// A peer's liveness changed (a log line; nothing else acts on it).
    StateChanged {
        /// The peer.
        peer: String,
        /// Its state before.
        from: PeerState,
        /// Its state now.
        to: PeerState,
    },
    /// Call [`Registry::tick`] at this time at the latest.
    WakeAt(Duration),
    /// A peer's key was pinned, on its first announcement over an
    /// authenticated connection: keep the pin (it outlives the run) and
    /// audit it.
    KeyPinned {
        /// The peer.
        peer: String,
        /// Its public key, hex.
        key: String,
    },
    /// A peer joined the registry: audit it.
    PeerLearned {
        /// The peer.
        peer: String,
        /// Its url.
        url: String,
        /// The peer whose announcement named it; `None`: it announced
        /// itself.
        via: Option<String>,
        /// Whether the announcement was an answer to ours (authenticated
        /// only where the driver checks who answered) rather than one the
        /// peer sent us.
        in_answer: bool,
    },
}

/// Federation settings the registry checks and keeps.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// This site's name.
    pub site: String,
    /// This site's region, if it has one.
    pub region: Option<String>,
    /// The url peers reach this site at, if configured.
    pub url: Option<String>,
    /// Peers given by configuration: (name, url).
    pub peers: Vec<(String, String)>,
    /// Time between rounds ([`HEARTBEAT_DEFAULT`] when zero).
    pub heartbeat: Duration,
    /// This run's incarnation: a nonzero number drawn at random when the
    /// site starts.
    pub incarnation: u64,
    /// Whether a url parses as an absolute http or https url. The adapters
    /// pass their HTTP client's own parser, so that what the registry keeps
    /// is what the client can reach; the registry adds the length limit.
    pub url_ok: fn(&str) -> bool,
    /// This site's public key, hex, to announce.
    pub key: Option<String>,
    /// Peers' keys pinned before (kept by the driver): (name, key).
    pub pinned: Vec<(String, String)>,
}

/// One peer in the registry.
#[derive(Debug)]
struct Peer {
    url: String,
    region: Option<String>,
    /// When its last announcement (or answer to ours) arrived, on the
    /// driver's clock.
    last_seen: Option<Duration>,
    /// The same, wall clock, for display.
    last_seen_wall_us: Option<u64>,
    /// Round trip, smoothed, in milliseconds.
    rtt_ms: Option<f64>,
    /// Its interests; `None` until it has told us this run.
    wants: Option<Arc<Wants>>,
    /// The sender's version of `wants` (0: none yet).
    interests_version: u64,
    /// The run of the peer those interests came from.
    incarnation: u64,
    /// The last sequence number of its log it announced.
    head_seq: u64,
    /// The first sequence number its log holds, as last announced (0: not
    /// announced).
    earliest_seq: u64,
    /// This site's head + 1 when the peer was first heard this run.
    first_cursor: Option<u64>,
    /// Its state as last reported by a [`Action::StateChanged`].
    state: PeerState,
    /// The last failed announcement to it.
    last_error: Option<String>,
}

impl Peer {
    fn new(url: String, region: Option<String>) -> Peer {
        Peer {
            url,
            region,
            last_seen: None,
            last_seen_wall_us: None,
            rtt_ms: None,
            wants: None,
            interests_version: 0,
            incarnation: 0,
            head_seq: 0,
            earliest_seq: 0,
            first_cursor: None,
            state: PeerState::Down,
            last_error: None,
        }
    }

    /// Its interests for a forwarder, once it announced them (which set
    /// `first_cursor` too).
    fn wants(&self) -> Option<PeerWants> {
        Some(PeerWants { wants: self.wants.clone()?, first_cursor: self.first_cursor? })
    }
}

/// A peer as [`Registry::peers`] shows it.
#[derive(Clone, Debug)]
pub struct KnownPeer<'a> {
    /// Site name.
    pub name: &'a str,
    /// Where it is reached.
    pub url: &'a str,
    /// Its region, if any.
    pub region: Option<&'a str>,
    /// Its liveness at the `now` asked about.
    pub state: PeerState,
    /// How long ago it was last heard, if ever.
    pub last_seen_ago: Option<Duration>,
    /// When it was last heard, wall clock, microseconds.
    pub last_seen_wall_us: Option<u64>,
    /// Heartbeat round trip, smoothed, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The last sequence number of its log it announced.
    pub head_seq: u64,
    /// The first sequence number its log holds, as announced (0: unsaid).
    pub earliest_seq: u64,
    /// How many (pattern, types) it asked for, once it has said.
    pub interests: Option<usize>,
    /// The version of its interests held (0: none yet).
    pub interests_version: u64,
    /// The last failed announcement to it.
    pub last_error: Option<&'a str>,
    /// Its pinned public key, hex.
    pub key: Option<&'a str>,
}

/// Where the heartbeat rounds are.
#[derive(Debug, Default)]
struct Rounds {
    /// A round's announcements are out.
    running: bool,
    /// When the next round is due; `None`: at the first tick.
    next: Option<Duration>,
    /// A wake arrived during a round: the next one follows at once.
    woken: bool,
    /// When the heartbeat event was last published.
    published: Option<Duration>,
}

/// A site's registry of peers and its own announcement. See the module
/// header.
#[derive(Debug)]
pub struct Registry {
    site: String,
    region: Option<String>,
    url: String,
    heartbeat: Duration,
    incarnation: u64,
    url_ok: fn(&str) -> bool,
    peers: BTreeMap<String, Peer>,
    /// This site's interests as last computed, and their version (0 until
    /// first computed).
    interests: Vec<Interest>,
    interests_version: u64,
    /// Interests held by the site itself rather than by a lease.
    standing: BTreeSet<Interest>,
    /// Peers whose forwarder was started.
    forwarders: BTreeSet<String>,
    rounds: Rounds,
    /// This site's public key, hex.
    key: Option<String>,
    /// Peers' pinned keys, by name: a pin outlives the peer's entry.
    pins: BTreeMap<String, String>,
}

impl Registry {
    /// The registry of a site, from its settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad peer name or url, a peer named
    /// like this site, a bad url or region.
    pub fn new(config: RegistryConfig) -> Result<Registry> {
        let checks = Checks { url_ok: config.url_ok };
        let invalid = |reason: String| Error::InvalidConfig { reason };
        if config.peers.len() > PEERS_MAX {
            return Err(invalid(format!("{} peers configured, over the limit of {PEERS_MAX}", config.peers.len())));
        }
        let mut peers = BTreeMap::new();
        for (name, url) in config.peers {
            check_site(&name).map_err(invalid)?;
            checks.url(&url).map_err(invalid)?;
            if name == config.site {
                return Err(invalid(format!("peer {name} is this site's own name")));
            }
            peers.insert(name, Peer::new(url.trim_end_matches('/').to_string(), None));
        }
        if let Some(url) = &config.url {
            checks.url(url).map_err(invalid)?;
        }
        if let Some(region) = &config.region {
            check_name("region", region).map_err(invalid)?;
        }
        for key in config.key.iter().chain(config.pinned.iter().map(|(_, k)| k)) {
            crate::site_key::parse_public_key(key).map_err(invalid)?;
        }
        Ok(Registry {
            key: config.key,
            pins: config.pinned.into_iter().collect(),
            site: config.site,
            region: config.region,
            url: config.url.unwrap_or_default(),
            heartbeat: if config.heartbeat.is_zero() { HEARTBEAT_DEFAULT } else { config.heartbeat },
            incarnation: config.incarnation,
            url_ok: config.url_ok,
            peers,
            interests: Vec::new(),
            interests_version: 0,
            standing: BTreeSet::new(),
            forwarders: BTreeSet::new(),
            rounds: Rounds::default(),
        })
    }

    /// This site's name.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// This site's region.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// This site's url as announced (empty until set).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sets the url to announce, when none was configured (the address the
    /// site listens on).
    pub fn set_url(&mut self, url: String) {
        self.url = url;
    }

    /// This site's interests as last computed, and their version (0: not
    /// computed yet).
    pub fn interests(&self) -> (&[Interest], u64) {
        (&self.interests, self.interests_version)
    }

    /// Adds an interest the site holds itself (a supervisor's, a running
    /// monitor's); it joins the set at the next recomputation. Step
    /// [`Input::LeaseGranted`] with it to push it at once.
    pub fn add_standing(&mut self, interest: Interest) {
        self.standing.insert(interest);
    }

    /// Drops a standing interest; step [`Input::Wake`] to withdraw it now.
    pub fn remove_standing(&mut self, interest: &Interest) {
        self.standing.remove(interest);
    }

    /// This site's announcement, with its log's range and the time.
    pub fn announcement(&self, seq: u64, earliest_seq: u64, time_us: u64) -> Announcement {
        Announcement {
            name: self.site.clone(),
            url: self.url.clone(),
            region: self.region.clone(),
            seq,
            earliest_seq,
            time_us,
            interests: self.interests.clone(),
            interests_version: self.interests_version,
            incarnation: self.incarnation,
            key: self.key.clone(),
            peers: self
                .peers
                .iter()
                .map(|(n, p)| PeerInfo { name: n.clone(), url: p.url.clone(), region: p.region.clone() })
                .collect(),
        }
    }

    /// How many peers are known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Every known peer, by name, as of `now`.
    pub fn peers(&self, now: Duration) -> impl Iterator<Item = KnownPeer<'_>> {
        self.peers.iter().map(move |(name, p)| KnownPeer {
            name,
            url: &p.url,
            region: p.region.as_deref(),
            state: self.state_at(p, now),
            last_seen_ago: p.last_seen.map(|t| now.saturating_sub(t)),
            last_seen_wall_us: p.last_seen_wall_us,
            rtt_ms: p.rtt_ms,
            head_seq: p.head_seq,
            earliest_seq: p.earliest_seq,
            interests: p.wants.as_ref().map(|w| w.len()),
            interests_version: p.interests_version,
            last_error: p.last_error.as_deref(),
            key: self.pins.get(name).map(String::as_str),
        })
    }

    /// Forgets the key pinned for `peer`, so its next authenticated
    /// announcement pins a new one (an operator's decision: the peer lost
    /// its key). Whether one was pinned.
    pub fn unpin(&mut self, peer: &str) -> bool {
        self.pins.remove(peer).is_some()
    }

    /// The public key pinned for `site` (this site's own for its name).
    pub fn key_of(&self, site: &str) -> Option<&str> {
        if site == self.site {
            self.key.as_deref()
        } else {
            self.pins.get(site).map(String::as_str)
        }
    }

    /// `peer`'s state at `now`; `None` for a peer not known.
    pub fn state_of(&self, peer: &str, now: Duration) -> Option<PeerState> {
        self.peers.get(peer).map(|p| self.state_at(p, now))
    }

    /// `peer`'s url, if it is known.
    pub fn url_of(&self, peer: &str) -> Option<&str> {
        self.peers.get(peer).map(|p| p.url.as_str())
    }

    /// The version of `peer`'s interests held (0: none yet, or unknown).
    pub fn interests_version_of(&self, peer: &str) -> u64 {
        self.peers.get(peer).map_or(0, |p| p.interests_version)
    }

    /// Whether `origin` may declare its records up to `to` lost: only those
    /// below the first one its log still holds, as it last announced, and
    /// never past its announced head. A gap marker moves the origin's mark
    /// past `to`, which drops every record up to it from then on, so a gap
    /// past what the origin trimmed (up to `u64::MAX`, say) would silence
    /// it for good.
    ///
    /// # Errors
    /// [`Error::GapRefused`], saying why.
    pub fn gap_allowed(&self, origin: &str, to: u64) -> Result<()> {
        let announced = self.peers.get(origin).map(|p| (p.earliest_seq, p.head_seq));
        gap_allowed(origin, to, announced).map_err(|reason| Error::GapRefused { reason })
    }

    fn state_at(&self, p: &Peer, now: Duration) -> PeerState {
        PeerState::of(p.last_seen.map(|t| now.saturating_sub(t)), self.heartbeat)
    }

    /// Takes in what happened at `now` (the driver's monotonic clock).
    ///
    /// # Errors
    /// An announcement that breaks a rule ([`Error::InvalidAnnouncement`])
    /// or would pass [`PEERS_MAX`] ([`Error::PeersFull`]); the registry is
    /// unchanged. Other inputs do not fail.
    pub fn step(&mut self, now: Duration, input: Input) -> Result<Vec<Action>> {
        match input {
            Input::Announced { announcement, local_head, wall_us } => {
                self.heard(now, &announcement, None, local_head, wall_us)
            }
            Input::Answered { peer, announcement, rtt, local_head, wall_us } => {
                if announcement.name != peer {
                    return Err(Error::announcement(format!(
                        "peer {peer} answered under another name, {:?}",
                        announcement.name
                    )));
                }
                self.heard(now, &announcement, Some(rtt), local_head, wall_us)
            }
            Input::AnnounceFailed { peer, error } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.last_error = Some(format!("heartbeat: {error}"));
                }
                Ok(Vec::new())
            }
            Input::RoundDone => Ok(self.round_done(now)),
            Input::Wake => {
                if self.rounds.running {
                    self.rounds.woken = true;
                } else {
                    self.rounds.next = Some(now);
                }
                Ok(vec![Action::WakeAt(now)])
            }
            Input::LeaseGranted { interest, version_us } => Ok(self.lease_granted(now, interest, version_us)),
            Input::InterestsRead { interests, version_us } => {
                self.install_interests(interests, version_us);
                Ok(Vec::new())
            }
        }
    }

    /// Whatever is due at `now`: liveness changes, and a round if one is
    /// due (recompute interests, then announce to every peer). Ends with
    /// [`Action::WakeAt`] unless a round is running.
    pub fn tick(&mut self, now: Duration) -> Vec<Action> {
        let mut actions = self.state_changes(now);
        if self.rounds.running {
            return actions;
        }
        if self.rounds.next.is_none_or(|t| now >= t) {
            self.rounds.running = true;
            actions.push(Action::RefreshInterests);
            let to = self.targets(|_| true);
            actions.push(Action::Announce { to, timeout: self.heartbeat.max(ANNOUNCE_TIMEOUT_MIN) });
            return actions;
        }
        actions.extend(self.next_wake(now).map(Action::WakeAt));
        actions
    }

    /// When [`Registry::tick`] has something to do next: the next round, or
    /// the next peer whose liveness changes. `None` while a round runs.
    pub fn next_wake(&self, now: Duration) -> Option<Duration> {
        if self.rounds.running {
            return None;
        }
        let round = self.rounds.next.unwrap_or(now);
        let change = self
            .peers
            .values()
            .filter_map(|p| {
                let heard = p.last_seen?;
                let intervals = match self.state_at(p, now) {
                    PeerState::Up => SUSPECT_AFTER_HEARTBEATS,
                    PeerState::Suspect => DOWN_AFTER_HEARTBEATS,
                    PeerState::Down => return None,
                };
                // The first instant past the inclusive bound.
                Some(heard.saturating_add(self.heartbeat.saturating_mul(intervals)) + Duration::from_nanos(1))
            })
            .min();
        Some(change.map_or(round, |c| c.min(round)))
    }

    fn state_changes(&mut self, now: Duration) -> Vec<Action> {
        let heartbeat = self.heartbeat;
        let mut actions = Vec::new();
        for (name, p) in &mut self.peers {
            let to = PeerState::of(p.last_seen.map(|t| now.saturating_sub(t)), heartbeat);
            if to != p.state {
                actions.push(Action::StateChanged { peer: name.clone(), from: p.state, to });
                p.state = to;
            }
        }
        actions
    }

    fn targets(&self, keep: impl Fn(&Peer) -> bool) -> Vec<Target> {
        self.peers
            .iter()
            .filter(|(_, p)| keep(p))
            .map(|(n, p)| Target { name: n.clone(), url: p.url.clone() })
            .collect()
    }

    fn round_done(&mut self, now: Duration) -> Vec<Action> {
        self.rounds.running = false;
        let mut actions: Vec<Action> = Vec::new();
        // Peers learned in this round get their forwarder now.
        for (name, p) in &self.peers {
            if self.forwarders.insert(name.clone()) {
                actions.push(Action::StartForwarder { peer: name.clone(), wants: p.wants() });
            }
        }
        let published_due = self.rounds.published.is_none_or(|t| now.saturating_sub(t) >= self.heartbeat);
        if published_due && !self.peers.is_empty() {
            self.rounds.published = Some(now);
            actions.push(Action::PublishHeartbeat);
        }
        self.rounds.next = Some(if std::mem::take(&mut self.rounds.woken) { now } else { now + self.heartbeat });
        actions.extend(self.next_wake(now).map(Action::WakeAt));
        actions
    }

    /// A lease grant's interest joins the set at once when it can (an
    /// addition needs no reading of every lease); a set at its limit, or
    /// not computed yet, is recomputed instead. Then this site's interests
    /// go to the peers that are up, even when the set did not change here:
    /// a concurrent recomputation may have installed it without its push
    /// being answered yet.
    fn lease_granted(&mut self, now: Duration, interest: Interest, version_us: u64) -> Vec<Action> {
        let added = if self.interests_version == 0
            || (self.interests.len() >= INTERESTS_MAX && !self.interests.contains(&interest))
        {
            false
        } else {
            if let Err(at) = self.interests.binary_search(&interest) {
                self.interests.insert(at, interest);
                self.interests_version = version_us.max(self.interests_version + 1);
            }
            true
        };
        let mut actions = Vec::new();
        if !added {
            actions.push(Action::RefreshInterests);
        }
        let to = self.targets(|p| self.state_at(p, now) == PeerState::Up);
        actions.push(Action::Announce { to, timeout: INTEREST_PUSH_WAIT });
        actions
    }

    /// Installs the interests of the live leases with the standing ones.
    /// Returns whether they changed.
    fn install_interests(&mut self, leases: Vec<Interest>, version_us: u64) -> bool {
        let next = aggregate(leases.into_iter().chain(self.standing.iter().cloned()).collect());
        if self.interests_version != 0 && self.interests == next {
            return false;
        }
        self.interests_version = version_us.max(self.interests_version + 1);
        self.interests = next;
        true
    }

    /// Takes in an announcement from `a.name`, heard directly from it.
    /// Every check comes before any change.
    fn heard(
        &mut self,
        now: Duration,
        a: &Announcement,
        rtt: Option<Duration>,
        local_head: u64,
        wall_us: u64,
    ) -> Result<Vec<Action>> {
        let wants = self.check(a)?;
        let checks = Checks { url_ok: self.url_ok };

        let mut actions = Vec::new();
        // Pinned only from what the peer itself sent us, authenticated by
        // the peer secret (and its certificate where required); an answer
        // to our announcement proves nothing of who answered.
        if let (Some(key), None, false) = (&a.key, rtt, self.pins.contains_key(&a.name)) {
            self.pins.insert(a.name.clone(), key.clone());
            actions.push(Action::KeyPinned { peer: a.name.clone(), key: key.clone() });
        }
        if !self.peers.contains_key(&a.name) {
            actions.push(Action::PeerLearned {
                peer: a.name.clone(),
                url: a.url.clone(),
                via: None,
                in_answer: rtt.is_some(),
            });
        }
        let heartbeat = self.heartbeat;
        let p = self.peers.entry(a.name.clone()).or_insert_with(|| Peer::new(a.url.clone(), a.region.clone()));
        p.url = a.url.trim_end_matches('/').to_string();
        p.region = a.region.clone();
        p.last_seen = Some(now);
        p.last_seen_wall_us = Some(wall_us);
        p.head_seq = a.seq;
        p.earliest_seq = a.earliest_seq;
        if p.first_cursor.is_none() {
            p.first_cursor = Some(local_head + 1);
        }
        if a.incarnation != p.incarnation {
            // A new run of the peer: its versions start over.
            p.incarnation = a.incarnation;
            p.interests_version = 0;
        }
        // Version 0: the peer has not computed its interests yet; keep
        // waiting rather than take an empty set for the truth.
        let changed = a.interests_version > p.interests_version;
        if changed {
            p.wants = Some(Arc::new(wants));
            p.interests_version = a.interests_version;
        }
        if let Some(rtt) = rtt {
            let ms = rtt.as_secs_f64() * 1e3;
            p.rtt_ms = Some(p.rtt_ms.map_or(ms, |old| old * 0.8 + ms * 0.2));
        }
        let state = PeerState::of(Some(Duration::ZERO), heartbeat);
        if p.state != state {
            actions.push(Action::StateChanged { peer: a.name.clone(), from: p.state, to: state });
            p.state = state;
        }
        if changed && self.forwarders.contains(&a.name) {
            if let Some(wants) = p.wants() {
                actions.push(Action::Interests { peer: a.name.clone(), wants });
            }
        }
        // Peers it knows that we do not: learned, to be confirmed by their
        // own announcements. Bad entries are skipped, not refused.
        for info in &a.peers {
            if info.name == self.site || self.peers.contains_key(&info.name) || self.peers.len() >= PEERS_MAX {
                continue;
            }
            if check_site(&info.name).is_ok() && checks.url(&info.url).is_ok() {
                self.peers.insert(
                    info.name.clone(),
                    Peer::new(info.url.trim_end_matches('/').to_string(), info.region.clone()),
                );
                actions.push(Action::PeerLearned {
                    peer: info.name.clone(),
                    url: info.url.clone(),
                    via: Some(a.name.clone()),
                    in_answer: rtt.is_some(),
                });
            }
        }
        Ok(actions)
    }

    /// What taking in `a`, announced to this site by its sender, would
    /// pin: its key, when it names one and none is pinned for its name.
    /// The driver keeps the pin durable before it steps the announcement.
    ///
    /// # Errors
    /// Every refusal [`Registry::step`] would give it, with nothing changed.
    pub fn would_pin(&self, a: &Announcement) -> Result<Option<String>> {
        self.check(a)?;
        Ok(a.key.clone().filter(|_| !self.pins.contains_key(&a.name)))
    }

    /// Every check of an announcement, before anything changes; its
    /// interests, parsed.
    fn check(&self, a: &Announcement) -> Result<Wants> {
        let checks = Checks { url_ok: self.url_ok };
        check_site(&a.name).map_err(Error::announcement)?;
        checks.url(&a.url).map_err(Error::announcement)?;
        if let Some(r) = &a.region {
            check_name("region", r).map_err(Error::announcement)?;
        }
        if a.name == self.site {
            return Err(Error::announcement(format!("announcement from {} names this site", a.name)));
        }
        if a.earliest_seq > a.seq.saturating_add(1) {
            return Err(Error::announcement(format!(
                "announcement says its log starts at seq {} but ends at {}; the start is at most the end + 1",
                a.earliest_seq, a.seq
            )));
        }
        if a.interests.len() > INTERESTS_MAX {
            return Err(Error::announcement(format!(
                "{} interests, over the limit of {INTERESTS_MAX}",
                a.interests.len()
            )));
        }
        let wants = Wants::parse(&a.interests).map_err(|e| Error::announcement(e.to_string()))?;
        if !self.peers.contains_key(&a.name) && self.peers.len() >= PEERS_MAX {
            return Err(Error::PeersFull { limit: PEERS_MAX });
        }
        if let Some(key) = &a.key {
            crate::site_key::parse_public_key(key).map_err(Error::announcement)?;
        }
        // A pinned key never changes, and is never dropped: an
        // announcement without it is as suspect as one with another.
        if let Some(pinned) = self.pins.get(&a.name) {
            if a.key.as_deref() != Some(pinned.as_str()) {
                return Err(Error::KeyMismatch {
                    site: a.name.clone(),
                    pinned: pinned.clone(),
                    given: a.key.clone().unwrap_or_else(|| "none".into()),
                });
            }
        }
        Ok(wants)
    }
}

/// The url check of a registry: the driver's parser and the length limit.
#[derive(Clone, Copy)]
struct Checks {
    url_ok: fn(&str) -> bool,
}

impl Checks {
    fn url(self, url: &str) -> std::result::Result<(), String> {
        if url.len() <= NAME_BYTES_MAX && (self.url_ok)(url) {
            Ok(())
        } else {
            Err(format!("peer url {url:?} must be an http(s) url of at most {NAME_BYTES_MAX} bytes"))
        }
    }
}

/// Checks a site name: 1 to [`SITE_BYTES_MAX`] bytes, no control character
/// and no `/` (the store's rule, `pepper_storage::validate_site`).
///
/// # Errors
/// Why the name is refused.
pub fn check_site(name: &str) -> std::result::Result<(), String> {
    let reason = if name.is_empty() || name.len() > SITE_BYTES_MAX {
        format!("site name must be 1 to {SITE_BYTES_MAX} bytes")
    } else if name.chars().any(|c| c.is_control() || c == '/') {
        "site name may not contain control characters or '/'".to_string()
    } else {
        return Ok(());
    };
    Err(format!("{name:?}: invalid site: {reason}"))
}

fn check_name(what: &str, name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(format!("{what} {name:?} must be 1 to {NAME_BYTES_MAX} bytes without '/' or control characters"));
    }
    Ok(())
}

/// The interests to advertise for these, in order: all of them while they
/// fit in [`INTERESTS_MAX`]; past it, broader, never narrower: each
/// pattern's first element with any type; still past it, everything (`/`).
pub fn aggregate(mut set: BTreeSet<Interest>) -> Vec<Interest> {
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

/// See [`Registry::gap_allowed`]; `announced` is the origin's earliest and
/// last seq (`None` for a site not known as a peer, earliest 0 for one
/// that has not said).
fn gap_allowed(origin: &str, to: u64, announced: Option<(u64, u64)>) -> std::result::Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(1);

    fn url_ok(url: &str) -> bool {
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace))
    }

    fn config(peers: &[(&str, &str)]) -> RegistryConfig {
        RegistryConfig {
            site: "a".into(),
            region: None,
            url: None,
            peers: peers.iter().map(|(n, u)| (n.to_string(), u.to_string())).collect(),
            heartbeat: HB,
            incarnation: 1,
            url_ok,
            key: None,
            pinned: Vec::new(),
        }
    }

    fn registry(peers: &[(&str, &str)]) -> Registry {
        Registry::new(config(peers)).expect("registry")
    }

    fn announce(version: u64, incarnation: u64, patterns: &[&str]) -> Announcement {
        Announcement {
            name: "b".into(),
            url: "http://127.0.0.1:2/".into(),
            region: None,
            seq: 10,
            earliest_seq: 1,
            time_us: 0,
            interests: patterns.iter().map(|p| Interest { pattern: p.to_string(), types: Vec::new() }).collect(),
            interests_version: version,
            incarnation,
            peers: vec![PeerInfo { name: "c".into(), url: "http://127.0.0.1:3".into(), region: None }],
            key: None,
        }
    }

    fn key_hex(seed: u8) -> String {
        hex::encode(crate::SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes())
    }

    #[test]
    fn a_key_is_pinned_from_an_authenticated_announcement_and_never_replaced() {
        let mut r = registry(&[("b", "http://127.0.0.1:2")]);
        let keyed = |seed: Option<u8>| Announcement { key: seed.map(key_hex), ..announce(1, 1, &[]) };
        // An answer to our announcement proves nothing of who answered.
        let answered = Input::Answered {
            peer: "b".into(),
            announcement: keyed(Some(1)),
            rtt: Duration::from_millis(1),
            local_head: 0,
            wall_us: 7,
        };
        let actions = r.step(secs(1), answered).expect("answered");
        assert!(!actions.iter().any(|a| matches!(a, Action::KeyPinned { .. })));
        assert_eq!(r.key_of("b"), None);
        // Its own announcement, which the driver authenticated, pins it;
        // the driver asks first, to make the pin durable before it steps.
        assert_eq!(r.would_pin(&keyed(Some(1))).expect("admitted"), Some(key_hex(1)));
        assert_eq!(r.would_pin(&keyed(None)).expect("admitted"), None, "no key, nothing to pin");
        let actions = hear(&mut r, secs(2), keyed(Some(1)), 0).expect("heard");
        assert_eq!(r.would_pin(&keyed(Some(1))).expect("admitted"), None, "pinned already");
        assert!(matches!(r.would_pin(&keyed(Some(2))), Err(Error::KeyMismatch { .. })));
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::KeyPinned { peer, key } if peer == "b" && *key == key_hex(1))));
        assert_eq!(r.key_of("b"), Some(key_hex(1).as_str()));
        assert_eq!(r.peers(secs(2)).find(|p| p.name == "b").and_then(|p| p.key), Some(key_hex(1).as_str()));
        // Another key, or none, is refused and changes nothing.
        for other in [Some(2), None] {
            let refused = hear(&mut r, secs(3), keyed(other), 0);
            assert!(matches!(refused, Err(Error::KeyMismatch { .. })), "{refused:?}");
            let answered = Input::Answered {
                peer: "b".into(),
                announcement: keyed(other),
                rtt: Duration::from_millis(1),
                local_head: 0,
                wall_us: 7,
            };
            assert!(matches!(r.step(secs(3), answered), Err(Error::KeyMismatch { .. })));
        }
        assert_eq!(r.key_of("b"), Some(key_hex(1).as_str()));
        assert_eq!(r.peers(secs(3)).find(|p| p.name == "b").and_then(|p| p.last_seen_wall_us), Some(7));
        // An operator unpins it: the next authenticated announcement pins anew.
        assert!(r.unpin("b"));
        assert!(!r.unpin("b"), "nothing left to unpin");
        let actions = hear(&mut r, secs(4), keyed(Some(2)), 0).expect("re-pinned");
        assert!(actions.iter().any(|a| matches!(a, Action::KeyPinned { key, .. } if *key == key_hex(2))));
        // Not a key at all.
        let bad = Announcement { key: Some("zz".into()), ..announce(1, 1, &[]) };
        assert!(matches!(hear(&mut r, secs(3), bad, 0), Err(Error::InvalidAnnouncement { .. })));
    }

    #[test]
    fn pins_from_before_a_restart_hold_and_this_sites_key_is_announced() {
        let keyed = RegistryConfig { key: Some(key_hex(9)), pinned: vec![("b".into(), key_hex(1))], ..config(&[]) };
        let mut r = Registry::new(keyed).expect("registry");
        assert_eq!(r.announcement(0, 0, 0).key, Some(key_hex(9)));
        assert_eq!(r.key_of("a"), Some(key_hex(9).as_str()), "its own key under its own name");
        let other = Announcement { key: Some(key_hex(2)), ..announce(1, 1, &[]) };
        assert!(matches!(hear(&mut r, secs(1), other, 0), Err(Error::KeyMismatch { .. })));
        assert!(r.is_empty(), "a refused announcement adds no peer");
        let bad = RegistryConfig { pinned: vec![("b".into(), "nope".into())], ..config(&[]) };
        assert!(Registry::new(bad).is_err());
    }

    #[test]
    fn peers_joining_are_reported_with_who_named_them() {
        let mut r = registry(&[]);
        let actions = hear(&mut r, secs(1), announce(1, 1, &[]), 0).expect("heard");
        let learned: Vec<(&str, Option<&str>)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::PeerLearned { peer, via, .. } => Some((peer.as_str(), via.as_deref())),
                _ => None,
            })
            .collect();
        assert_eq!(learned, [("b", None), ("c", Some("b"))]);
        let again = hear(&mut r, secs(2), announce(1, 1, &[]), 0).expect("heard");
        assert!(!again.iter().any(|a| matches!(a, Action::PeerLearned { .. })), "known peers are not news");
    }

    fn hear(r: &mut Registry, now: Duration, a: Announcement, local_head: u64) -> Result<Vec<Action>> {
        r.step(now, Input::Announced { announcement: a, local_head, wall_us: 7 })
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Which of a few probe channels the peer's interests cover.
    fn interests_of(r: &Registry, peer: &str) -> Option<Vec<&'static str>> {
        let p = r.peers.get(peer)?;
        let wants = p.wants.as_ref()?;
        Some(["/x/", "/y/"].into_iter().filter(|c| wants.covers(c, "t")).collect())
    }

    fn changes(actions: &[Action]) -> Vec<(String, PeerState, PeerState)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::StateChanged { peer, from, to } => Some((peer.clone(), *from, *to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn liveness_moves_at_exact_multiples_of_the_heartbeat() {
        let mut r = registry(&[("b", "http://b:1")]);
        assert_eq!(r.state_of("b", secs(0)), Some(PeerState::Down), "never heard");
        let t0 = secs(100);
        let heard = hear(&mut r, t0, announce(0, 1, &[]), 0).expect("heard");
        assert_eq!(changes(&heard), [("b".into(), PeerState::Down, PeerState::Up)]);
        let nano = Duration::from_nanos(1);
        let up_until = t0 + HB * SUSPECT_AFTER_HEARTBEATS;
        let suspect_until = t0 + HB * DOWN_AFTER_HEARTBEATS;
        assert_eq!(r.state_of("b", up_until), Some(PeerState::Up), "the bound is inclusive");
        assert_eq!(r.state_of("b", up_until + nano), Some(PeerState::Suspect));
        assert_eq!(r.state_of("b", suspect_until), Some(PeerState::Suspect));
        assert_eq!(r.state_of("b", suspect_until + nano), Some(PeerState::Down));
        // Ticks report each change once, and wake at the next boundary.
        r.rounds.next = Some(secs(1000));
        assert!(changes(&r.tick(up_until)).is_empty());
        assert_eq!(r.next_wake(up_until), Some(up_until + nano));
        assert_eq!(changes(&r.tick(up_until + nano)), [("b".into(), PeerState::Up, PeerState::Suspect)]);
        assert!(changes(&r.tick(up_until + nano)).is_empty(), "reported once");
        assert_eq!(r.next_wake(up_until + nano), Some(suspect_until + nano));
        assert_eq!(changes(&r.tick(suspect_until + nano)), [("b".into(), PeerState::Suspect, PeerState::Down)]);
        assert_eq!(r.next_wake(suspect_until + nano), Some(secs(1000)), "down: only the round is left");
        // Heard again: up at once.
        let back = hear(&mut r, secs(200), announce(0, 1, &[]), 0).expect("heard");
        assert_eq!(changes(&back), [("b".into(), PeerState::Down, PeerState::Up)]);
        assert_eq!(r.peers(secs(201)).find(|p| p.name == "b").map(|p| p.last_seen_ago), Some(Some(secs(1))));
    }

    #[test]
    fn configuration_is_checked() {
        let bad = |c: RegistryConfig| Registry::new(c).expect_err("refused").to_string();
        assert!(bad(config(&[("a", "http://x:1")])).contains("own name"));
        assert!(bad(config(&[("b", "ftp://x")])).contains("http(s) url"));
        assert!(bad(config(&[("b/c", "http://x:1")])).contains("invalid site"));
        assert!(bad(config(&[("", "http://x:1")])).contains("1 to 255 bytes"));
        let long = format!("http://{}", "x".repeat(NAME_BYTES_MAX));
        assert!(bad(config(&[("b", &long)])).contains("at most 256 bytes"));
        assert!(bad(RegistryConfig { url: Some("no scheme".into()), ..config(&[]) }).contains("http(s) url"));
        assert!(bad(RegistryConfig { region: Some("e/u".into()), ..config(&[]) }).contains("region"));
        let many: Vec<(String, String)> =
            (0..=PEERS_MAX).map(|i| (format!("p{i}"), format!("http://127.0.0.1:{}", 1000 + i))).collect();
        assert!(bad(RegistryConfig { peers: many.clone(), ..config(&[]) }).contains("over the limit"));
        assert!(
            Registry::new(RegistryConfig { peers: many[1..].to_vec(), ..config(&[]) }).is_ok(),
            "exactly the limit"
        );
        let r = Registry::new(RegistryConfig { heartbeat: Duration::ZERO, ..config(&[("b", "http://x:1/")]) })
            .expect("registry");
        assert_eq!(r.heartbeat(), HEARTBEAT_DEFAULT);
        assert_eq!(r.url_of("b"), Some("http://x:1"), "trailing slash trimmed");
        assert!(matches!(Registry::new(config(&[("a", "http://x:1")])), Err(Error::InvalidConfig { .. })));
    }

    #[test]
    fn interests_follow_versions_within_a_run_and_reset_across_runs() {
        let mut r = registry(&[]);
        // Not computed yet (version 0): the forwarder keeps waiting.
        hear(&mut r, secs(1), announce(0, 7, &[]), 100).expect("heard");
        assert_eq!(interests_of(&r, "b"), None);
        assert_eq!(r.peers.get("b").and_then(|p| p.first_cursor), Some(101));
        // Learned of c from b's list, as a peer to confirm.
        assert_eq!(r.state_of("c", secs(1)), Some(PeerState::Down));
        hear(&mut r, secs(1), announce(5, 7, &["/x/"]), 100).expect("heard");
        assert_eq!(interests_of(&r, "b"), Some(vec!["/x/"]));
        // An overtaken announcement does not bring back older interests.
        hear(&mut r, secs(1), announce(4, 7, &[]), 100).expect("heard");
        assert_eq!(interests_of(&r, "b"), Some(vec!["/x/"]));
        // A new run of b starts its versions over, even with a clock behind.
        hear(&mut r, secs(1), announce(2, 8, &["/y/"]), 200).expect("heard");
        assert_eq!(interests_of(&r, "b"), Some(vec!["/y/"]));
        assert_eq!(r.interests_version_of("b"), 2);
        // The first cursor stays where the peer was first heard.
        assert_eq!(r.peers.get("b").and_then(|p| p.first_cursor), Some(101));
    }

    #[test]
    fn bad_announcements_are_refused_whole_and_change_nothing() {
        let mut r = registry(&[]);
        hear(&mut r, secs(1), Announcement { earliest_seq: 40, seq: 100, ..announce(3, 1, &["/y/"]) }, 0)
            .expect("heard");
        let before = format!("{:?}", r.peers);
        let too_many = announce(9, 1, &vec!["/x/"; INTERESTS_MAX + 1]);
        for (a, needle) in [
            (announce(9, 1, &["no slash"]), "invalid channel"),
            (Announcement { name: "a".into(), ..announce(9, 1, &[]) }, "names this site"),
            (Announcement { name: "b\n".into(), ..announce(9, 1, &[]) }, "invalid site"),
            (Announcement { url: "gopher://x".into(), ..announce(9, 1, &[]) }, "http(s) url"),
            (Announcement { region: Some(String::new()), ..announce(9, 1, &[]) }, "region"),
            (Announcement { earliest_seq: 12, seq: 10, ..announce(9, 1, &[]) }, "starts at seq 12 but ends at 10"),
            (too_many, "over the limit of 4096"),
        ] {
            let e = hear(&mut r, secs(2), a, 0).expect_err(needle);
            assert!(matches!(e, Error::InvalidAnnouncement { .. }), "{e:?}");
            assert!(e.to_string().contains(needle), "{needle}: {e}");
            assert_eq!(format!("{:?}", r.peers), before, "{needle}");
        }
        // A log that starts at its end + 1 is empty, which is allowed.
        hear(&mut r, secs(2), Announcement { earliest_seq: u64::MAX, seq: u64::MAX, ..announce(9, 1, &[]) }, 0)
            .expect("an empty log");
        // An answer under another name is refused too.
        let wrong = Input::Answered {
            peer: "c".into(),
            announcement: announce(9, 1, &[]),
            rtt: Duration::from_millis(3),
            local_head: 0,
            wall_us: 0,
        };
        assert!(r.step(secs(3), wrong).expect_err("wrong name").to_string().contains("another name"));
    }

    #[test]
    fn the_registry_is_bounded_and_learned_peers_are_checked() {
        let mut r = registry(&[]);
        for n in 0..PEERS_MAX {
            let a = Announcement { name: format!("p{n}"), peers: Vec::new(), ..announce(1, 1, &[]) };
            hear(&mut r, secs(1), a, 0).expect("room");
        }
        let one_more = Announcement { name: "extra".into(), ..announce(1, 1, &[]) };
        let full = hear(&mut r, secs(1), one_more, 0).expect_err("full");
        assert!(matches!(full, Error::PeersFull { limit: PEERS_MAX }));
        assert_eq!(full.to_string(), "this site already knows 256 peers, its limit");
        assert_eq!(r.len(), PEERS_MAX);
        // A known peer is still heard, and learns nobody past the limit.
        let known = Announcement { name: "p0".into(), ..announce(2, 1, &["/x/"]) };
        hear(&mut r, secs(1), known, 0).expect("known");
        assert_eq!((r.len(), interests_of(&r, "p0")), (PEERS_MAX, Some(vec!["/x/"])));

        let mut r = registry(&[]);
        let listed = |name: &str, url: &str| PeerInfo { name: name.into(), url: url.into(), region: None };
        let a = Announcement {
            peers: vec![
                listed("a", "http://me:1"),
                listed("bad/name", "http://x:1"),
                listed("d", "not a url"),
                listed("e", "http://e:1/"),
            ],
            ..announce(1, 1, &[])
        };
        hear(&mut r, secs(1), a, 0).expect("heard");
        let names: Vec<&str> = r.peers(secs(1)).map(|p| p.name).collect();
        assert_eq!(names, ["b", "e"], "itself and bad entries skipped");
        assert_eq!(r.url_of("e"), Some("http://e:1"));
    }

    #[test]
    fn rounds_refresh_then_announce_then_start_forwarders_and_publish() {
        let mut r = registry(&[("b", "http://b:1")]);
        let first = r.tick(secs(10));
        let timeout = HB.max(ANNOUNCE_TIMEOUT_MIN);
        assert!(matches!(first[0], Action::RefreshInterests));
        let to = vec![Target { name: "b".into(), url: "http://b:1".into() }];
        assert!(matches!(&first[1], Action::Announce { to: t, timeout: w } if *t == to && *w == timeout));
        assert!(r.tick(secs(10)).is_empty(), "one round at a time");
        r.step(secs(10), Input::InterestsRead { interests: Vec::new(), version_us: 5 }).expect("read");
        assert_eq!(r.interests(), (&[][..], 5), "an empty set, computed");
        let answer = Input::Answered {
            peer: "b".into(),
            announcement: announce(3, 1, &["/x/"]),
            rtt: Duration::from_millis(10),
            local_head: 41,
            wall_us: 0,
        };
        r.step(secs(10), answer).expect("answer");
        let done = r.step(secs(10), Input::RoundDone).expect("done");
        let started: Vec<(&str, Option<u64>)> = done
            .iter()
            .filter_map(|a| match a {
                Action::StartForwarder { peer, wants } => Some((peer.as_str(), wants.as_ref().map(|w| w.first_cursor))),
                _ => None,
            })
            .collect();
        assert_eq!(started, [("b", Some(42)), ("c", None)], "c was learned from b's answer");
        assert!(done.iter().any(|a| matches!(a, Action::PublishHeartbeat)));
        assert!(matches!(done.last(), Some(Action::WakeAt(t)) if *t == secs(11)));
        assert!(
            matches!(r.tick(secs(10) + Duration::from_millis(500)).as_slice(), [Action::WakeAt(t)] if *t == secs(11))
        );
        // Later interests go to the running forwarder.
        let newer = hear(&mut r, secs(10), announce(4, 1, &["/y/"]), 50).expect("heard");
        assert!(matches!(&newer[..], [Action::Interests { peer, wants }] if peer == "b" && wants.first_cursor == 42));
        // A wake during a round makes the next one follow at once; the
        // heartbeat event is published at most once per interval.
        assert!(matches!(r.tick(secs(11))[1], Action::Announce { .. }));
        r.step(secs(11), Input::Wake).expect("wake");
        let done = r.step(secs(11), Input::RoundDone).expect("done");
        assert!(done.iter().any(|a| matches!(a, Action::PublishHeartbeat)));
        assert!(matches!(done.last(), Some(Action::WakeAt(t)) if *t == secs(11)));
        assert!(matches!(r.tick(secs(11))[0], Action::RefreshInterests));
        let done = r.step(secs(11) + Duration::from_millis(1), Input::RoundDone).expect("done");
        assert!(!done.iter().any(|a| matches!(a, Action::PublishHeartbeat | Action::StartForwarder { .. })));
        // A wake between rounds brings the next round forward.
        r.step(secs(11) + Duration::from_millis(2), Input::Wake).expect("wake");
        assert!(matches!(r.tick(secs(11) + Duration::from_millis(2))[0], Action::RefreshInterests));
        // A failed announcement is shown.
        r.step(secs(12), Input::AnnounceFailed { peer: "c".into(), error: "refused".into() }).expect("failed");
        let c = r.peers(secs(12)).find(|p| p.name == "c").map(|p| p.last_error.map(str::to_string));
        assert_eq!(c, Some(Some("heartbeat: refused".into())));
    }

    #[test]
    fn a_site_without_peers_publishes_nothing() {
        let mut r = registry(&[]);
        r.tick(secs(1));
        let done = r.step(secs(1), Input::RoundDone).expect("done");
        assert!(matches!(done.as_slice(), [Action::WakeAt(t)] if *t == secs(2)));
    }

    fn interest(p: &str, t: &[&str]) -> Interest {
        Interest { pattern: p.to_string(), types: t.iter().map(|t| t.to_string()).collect() }
    }

    #[test]
    fn own_interests_merge_standing_ones_and_versions_always_grow() {
        let mut r = registry(&[]);
        r.add_standing(interest("/pepper/monitors/", &[]));
        let read = |r: &mut Registry, list: Vec<Interest>, version_us| {
            r.step(secs(1), Input::InterestsRead { interests: list, version_us }).expect("read");
            (r.interests().0.to_vec(), r.interests().1)
        };
        let (set, v) = read(&mut r, vec![interest("/b/", &["x"]), interest("/b/", &["x"])], 1000);
        assert_eq!((set, v), (vec![interest("/b/", &["x"]), interest("/pepper/monitors/", &[])], 1000));
        assert_eq!(read(&mut r, vec![interest("/b/", &["x"])], 2000).1, 1000, "unchanged: same version");
        // A clock behind still moves the version forward.
        assert_eq!(read(&mut r, Vec::new(), 10).1, 1001);
        r.remove_standing(&interest("/pepper/monitors/", &[]));
        assert_eq!(read(&mut r, Vec::new(), 10), (Vec::new(), 1002));
    }

    #[test]
    fn a_grant_adds_its_interest_at_once_and_pushes_to_peers_that_are_up() {
        let mut r = registry(&[("b", "http://b:1"), ("d", "http://d:1")]);
        hear(&mut r, secs(1), announce(1, 1, &[]), 0).expect("heard");
        let grant = |r: &mut Registry, i: Interest, version_us| {
            r.step(secs(2), Input::LeaseGranted { interest: i, version_us }).expect("grant")
        };
        // Not computed yet: recompute, then push.
        let first = grant(&mut r, interest("/x/", &[]), 50);
        assert!(matches!(first[0], Action::RefreshInterests));
        let up = vec![Target { name: "b".into(), url: "http://127.0.0.1:2".into() }];
        assert!(matches!(&first[1], Action::Announce { to, timeout } if *to == up && *timeout == INTEREST_PUSH_WAIT));
        r.step(secs(2), Input::InterestsRead { interests: vec![interest("/x/", &[])], version_us: 50 }).expect("read");
        // Computed: added in place, no read of the leases.
        let second = grant(&mut r, interest("/w/", &["t"]), 40);
        assert!(matches!(second.as_slice(), [Action::Announce { .. }]));
        assert_eq!(r.interests(), (&[interest("/w/", &["t"]), interest("/x/", &[])][..], 51));
        // Already there: the version stays, the push still goes.
        assert!(matches!(grant(&mut r, interest("/x/", &[]), 90).as_slice(), [Action::Announce { .. }]));
        assert_eq!(r.interests().1, 51);
        // At the limit, a new one needs the full recomputation.
        r.interests = (0..INTERESTS_MAX).map(|n| interest(&format!("/n{n}/"), &[])).collect();
        r.interests.sort();
        assert!(matches!(grant(&mut r, interest("/new/", &[]), 99)[0], Action::RefreshInterests));
    }

    #[test]
    fn interests_past_the_limit_get_broader_never_narrower() {
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
        let mut r = registry(&[]);
        hear(&mut r, secs(1), Announcement { earliest_seq: 40, seq: 100, ..announce(1, 1, &[]) }, 0).expect("heard");
        assert!(r.gap_allowed("b", 39).is_ok());
        let refused = r.gap_allowed("b", 40).expect_err("kept");
        assert!(matches!(refused, Error::GapRefused { .. }) && refused.is_retryable());
        // An announcement whose start lies past its end is refused whole.
        let lie = Announcement { earliest_seq: u64::MAX, ..announce(2, 1, &[]) };
        assert!(hear(&mut r, secs(2), lie, 0).is_err());
        assert!(r.gap_allowed("b", 39).is_ok() && r.gap_allowed("b", 40).is_err());
    }

    #[test]
    fn the_announcement_lists_this_site_and_its_peers() {
        let mut r = Registry::new(RegistryConfig { region: Some("eu".into()), ..config(&[("b", "http://b:1")]) })
            .expect("registry");
        r.set_url("http://127.0.0.1:9".into());
        let a = r.announcement(8, 2, 77);
        assert_eq!((a.name.as_str(), a.url.as_str(), a.region.as_deref()), ("a", "http://127.0.0.1:9", Some("eu")));
        assert_eq!((a.seq, a.earliest_seq, a.time_us, a.incarnation, a.interests_version), (8, 2, 77, 1, 0));
        assert_eq!(a.peers, [PeerInfo { name: "b".into(), url: "http://b:1".into(), region: None }]);
        assert_eq!(PeerState::Suspect.as_str(), "suspect");
        assert!(PeerState::Up < PeerState::Suspect && PeerState::Suspect < PeerState::Down);
        assert_eq!(check_site(&"s".repeat(SITE_BYTES_MAX)), Ok(()));
        assert!(check_site(&"s".repeat(SITE_BYTES_MAX + 1)).is_err());
    }
}
