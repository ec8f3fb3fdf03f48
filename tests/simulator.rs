//! A deterministic simulator of federated sites: N real stores over the
//! memory engine, one manual clock, a seeded RNG and a simulated network,
//! driven by scenario scripts (`tests/sim/*.sim`) a newcomer can read.
//!
//! **How it runs.** Each site is a `pepper_storage::Store` opened with
//! `Store::open_with` on a `MemoryEngine` and the shared `ManualClock`. For
//! each directed pair of sites there is a `pepper_router::Forwarder`; the
//! simulator carries out its actions the way `adapters/src/loops/forward.rs`
//! does: a scan reads the origin's view (`earliest_seq`, then
//! `View::frames` with the forwarder's filter), a send puts the frames (each
//! a `u32` length then the stored bytes) on the network, and delivery
//! decodes them with `pepper_adapters::wire::frames::decode_batch` and
//! appends them with `Store::receive`, as `POST /v1/peer/records` does; a
//! gap becomes one `pepper.gap` event through `Store::receive_gap`. The
//! answer travels back over the network. Every message gets a delay drawn
//! from a seeded `StdRng` and may be dropped; a message between partitioned
//! sites is lost (checked when sent and when it arrives). A send with no
//! answer fails after [`SEND_TIMEOUT`], as an HTTP request would. Time
//! moves only by the manual clock, from one event to the next: no sleeps,
//! no real time, so a scenario of minutes runs in milliseconds.
//!
//! **Live delivery.** Each site with a stream has a dispatcher, a
//! `pepper_router::Dispatch` driven the way `adapters/src/loops/dispatch.rs`
//! drives it (one cursor over the log while anyone is subscribed, started
//! at the head by the first join), and each stream moves through the phases
//! of `adapters/src/api/streams.rs`: catch-up from its own cursor, a join
//! once `should_join` says it is close enough to the head, the gap between
//! its cursor and the dispatcher's position read from the log, then its
//! bounded buffer; a detached stream resumes from the position it was
//! given, as a client does. Records are read with `View::records` and seen
//! through the adapters' own `routed`. Every millisecond while any of them
//! has work, each dispatcher and stream, in an order the seed draws, does
//! up to four units of work (a record, a join, a buffered item).
//!
//! **Supervisors.** After `supervise`, each site runs a
//! `pepper_router::Placement` driven the way `adapters/src/loops/supervise.rs`
//! drives it: announcements are events on `/pepper/monitors/`, forwarded
//! like any other and read back from each site's own log; ticks when the
//! machine says; starts, completions and stops on the real store; the
//! subtree's interest declared to the peers; the cut polled every
//! `cut_poll` from this site's forwarder toward the source and each other
//! peer's answer (its log's end, the version of the new monitor's
//! interests it holds, its forwarder's cursor toward the source); the copy
//! read from the source's snapshot (rows and marks, as `GET
//! /v1/peer/replica` serves them) and imported as `tuple.import` records.
//! A killed site loses its machines and forwarders, refuses connections
//! (the cut passes it over) and keeps its store; a restart rebuilds them
//! from the store. Simplifications: interests reach every live peer at
//! once (no interest exchange), a killed peer is seen down at once (no
//! heartbeats), and the copy takes no time.
//!
//! **Scripts**, one command a line (`#` starts a comment):
//! `site A`; `network delay MIN MAX drop P`; `interest B PATTERN [TYPE..]`
//! (B wants these from every other site); `publish A CHANNEL NAME` (an
//! event of type `t` with payload NAME); `publish-many A CHANNEL PREFIX N`
//! (PREFIX0 .. PREFIX{N-1}); `partition A B`; `heal A B`;
//! `run DURATION`; `trim A` (A's retention drops every record older than
//! now); `expect B from A: NAME.. gap:FROM-TO ..` (exactly what B holds from
//! A, in order). For anycast: `lease A ID PATTERN [group G]`; `release A ID`;
//! `publish-one A CHANNEL NAME` (distribution `one`); `expect A NAME
//! assigned ID..|none` (the leases the writer chose at commit). For
//! streams: `watch A S PATTERN from SEQ|head [buffer N]`; `stream A S lease
//! ID [buffer N]` (the lease's stream, from its start); `expect stream S:
//! NAME.. [ended]` (exactly these events, then the lease's end) or `expect
//! stream S count N`. For supervisors: `expect kept PREFIX` (a live
//! complete replica holds every recorded value starting with PREFIX); `supervise PATTERN R` (every site);
//! `record A CHANNEL VALUE` and `record-many A CHANNEL PREFIX N` (attribute
//! updates of field `load`); `kill A`, `kill recorder` (the first complete
//! recorder that publishes nothing), `kill any` (see `kill_any`), `kill
//! killed` (the site killed last, again), `restart A`, `restart killed` (the
//! site killed last), `restart any`; `expect recorders N`
//! (invariants 9 and 10 with N replicas).
//!
//! **Scenarios:** (a) catch-up to live handoff (`catch_up_handoff.sim`,
//! and 1,000 random seeds of streams); (b) anycast `one` across a member's
//! release, each member's stream included (`anycast_release.sim`); (c)
//! forwarding across a partition that heals (`partition_heals.sim`, and
//! 1,000 random seeds of it); (d) a gap marker after retention
//! (`gap_after_retention.sim`); (e) a recorder killed and R restored with
//! the complete history, the paper's Figure 11 (`recorder_killed.sim`, and
//! 1,000 random seeds of kills and restarts); (f) the surplus-monitor stop
//! rule, when a killed recorder comes back after its replacement
//! (`surplus_stop.sim`, and in the random runs of (e) whenever a restart
//! makes one replica too many); and the surplus victim keeping its rows
//! when the other replica dies meanwhile (`stop_rule_race.sim`).
//!
//! **Invariants**, checked after every script (and so for every seed of the
//! randomized runs), for each origin A and peer B:
//! 1. *No duplicate:* each event of A is held by B at most once.
//! 2. *Order:* B holds A's events in A's log order, gap markers included.
//! 3. *Nothing unwanted:* B holds only events of A that B's interests
//!    cover, never an event A received from elsewhere, and nothing B
//!    declared no interest in.
//! 4. *No loss:* once the network has healed and the run has settled, every
//!    event of A that B wants is held by B, or lies in the range of a
//!    `pepper.gap` marker B holds.
//! 5. *Honest gaps:* a gap marker covers only records A's retention trimmed
//!    (its `to_seq` is below A's earliest record), no gap covers an event B
//!    holds, and gaps do not overlap.
//! 6. *Determinism:* the same seed gives the same trace of (time, action)
//!    lines; another seed gives another trace.
//!
//! and for each stream S:
//! 7. *No gap, no duplicate, in order:* what S delivered is a prefix of the
//!    records from its start that it wants (`Subscriber::meaning`), in log
//!    order, up to its lease's end; a lease end it delivered is its lease's.
//! 8. *Complete:* once the run has settled, S delivered all of them, and
//!    its lease's end if the lease ended.
//!
//! and, with supervisors, once the run has settled with at least R sites
//! alive:
//! 9. *R replicas:* the live sites run exactly R complete monitors of the
//!    pattern, and none is still importing.
//! 10. *Complete history:* each of them holds every update published on
//!    each channel, in the publisher's order, once; for a publisher that is
//!    down, a prefix of them.
//!
//! **Not covered:** the HTTP layer (requests, status codes, headers, body
//! limits, the 409 for a gap not yet announced: the simulated receiver takes
//! every gap, SSE framing), the adapters' own loops (this driver stands for
//! them), heartbeats and the interest exchange (interests are handed to the
//! forwarders directly), retention under a stream, the real dispatcher's
//! buffers and byte limit (the driver here keeps its own), suspect and slow
//! peers (a killed site is down at once, a round trip takes a millisecond),
//! and the disk (RocksDB).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pepper_adapters::loops::dispatch::routed;
use pepper_adapters::supervisor::{announce_channel, local_monitors, replica_marks, Announcement, ANNOUNCE_PREFIX};
use pepper_adapters::wire::frames::{decode_batch, GAP_TYPE, SITES_CHANNEL_PREFIX};
use pepper_router::{
    cut_poll, should_join, AnnounceKind, Copied, Cut, CutProgress, CutReply, Detach, Dispatch, DispatchAction,
    DispatchInput, Forwarder, ForwarderAction as Action, ForwarderInput as Input, Holder, Interest, Meaning, Outgoing,
    Pattern, PeerView, PeerWants, Placement, PlacementAction, PlacementConfig, PlacementInput, Reach, StopResult,
    Subscriber, SubscriberId, Wants,
};
use pepper_storage::{
    Body, Distribution, Event, LeaseEnd, LeaseGrant, ManualClock, MemoryEngine, MonitorState, Options, Party, Record,
    Retention, Store, Target, TupleImport, TupleUpdate,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long a send waits for its answer before it counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the manual clock starts, in microseconds since the epoch.
const EPOCH_US: u64 = 1_800_000_000_000_000;

const PARTITION_HEALS: &str = include_str!("sim/partition_heals.sim");
const GAP_AFTER_RETENTION: &str = include_str!("sim/gap_after_retention.sim");

type Link = (String, String);

/// What travels on the network.
#[derive(Debug)]
enum Msg {
    Batch { link: Link, id: u64, body: Vec<u8> },
    Gap { link: Link, id: u64, from: u64, to: u64 },
    Ack { link: Link, id: u64 },
}

/// A scheduled happening.
#[derive(Debug)]
enum Due {
    Deliver(Msg),
    Timeout {
        link: Link,
        id: u64,
    },
    /// The peer's process is not running: the connection was refused.
    Refused {
        link: Link,
        id: u64,
    },
}

/// One directed forwarding link: origin `link.0` toward peer `link.1`.
struct Forward {
    fwd: Forwarder<Vec<u8>>,
    wake: Option<Duration>,
    waiting: Option<u64>,
}

/// A site's dispatcher, driven as `adapters/src/loops/dispatch.rs` drives
/// it: one cursor over the log while anyone is subscribed.
#[derive(Default)]
struct Dispatcher {
    machine: Dispatch,
    /// Its feed's position; `None` while nobody is subscribed.
    next: Option<u64>,
    /// Streams whose join it has not handled yet, in the order they asked.
    joins: Vec<String>,
}

/// Where a stream is, as in `adapters/src/api/streams.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the log itself from `next`.
    CatchUp { next: u64 },
    /// Asked the dispatcher to join, at `next`.
    Joining { next: u64 },
    /// Joined; reading `[next, live_from)` from the log before its buffer.
    Gap { next: u64, live_from: u64 },
    /// Reading its buffer.
    Live,
    /// Its lease ended.
    Ended,
}

/// What the dispatcher put in a stream's buffer.
#[derive(Debug)]
enum Item {
    Event(u64),
    End(u64),
}

/// One subscriber's stream (an SSE client that resumes where it is told).
struct Stream {
    site: String,
    sub: Subscriber,
    /// Where it started.
    start: u64,
    phase: Phase,
    /// Its id with the dispatcher while joined.
    id: SubscriberId,
    buffer: VecDeque<Item>,
    /// Its buffer's slots, the last kept for a lease's end.
    capacity: usize,
    /// Where the dispatcher told it to resume, once its buffer is drained.
    detached: Option<u64>,
    /// The sequence numbers it delivered, in order.
    got: Vec<u64>,
    /// The lease end it delivered.
    ended: Option<u64>,
}

/// A site's supervisor, driven as `adapters/src/loops/supervise.rs` drives
/// it.
struct Sup {
    placement: Placement,
    /// The next record of its own log to read announcements from.
    heard_next: u64,
    /// Backfills waiting for their cut, by pattern: the source, the cut and
    /// when to poll it next.
    cuts: BTreeMap<String, (String, Cut, Duration)>,
}

/// The supervisors' interval between evaluations (and the heartbeat).
const INTERVAL: Duration = Duration::from_secs(1);

struct Sim {
    clock: ManualClock,
    now: Duration,
    rng: StdRng,
    rt: tokio::runtime::Runtime,
    sites: BTreeMap<String, Store>,
    links: BTreeMap<Link, Forward>,
    /// What each site wants, as declared.
    wants: BTreeMap<String, Arc<Wants>>,
    partitions: BTreeSet<Link>,
    delay: (Duration, Duration),
    drop: f64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    due: BTreeMap<u64, Due>,
    ordinal: u64,
    trace: Vec<String>,
    /// Each origin's published events: (its seq there, channel, name).
    published: BTreeMap<String, Vec<(u64, String, String)>>,
    dispatchers: BTreeMap<String, Dispatcher>,
    streams: BTreeMap<String, Stream>,
    /// The next work tick of dispatchers and streams, while any stream is
    /// open.
    work_at: Option<Duration>,
    next_subscriber: SubscriberId,
    /// What each site declared it wants from its peers, and the version of
    /// that declaration; which version each origin holds, by (origin, site).
    interest_lists: BTreeMap<String, Vec<Interest>>,
    /// The script's own `interest` lines, per site.
    scripted: BTreeMap<String, Vec<Interest>>,
    interest_version: BTreeMap<String, u64>,
    held_version: BTreeMap<Link, u64>,
    /// The recording policy every site supervises, once `supervise` ran.
    policy: Option<(String, usize)>,
    supervisors: BTreeMap<String, Sup>,
    /// Killed sites: their machines are gone, their stores kept (the disk).
    down: BTreeSet<String>,
    /// Every site killed, in order.
    killed: Vec<String>,
    /// Per channel, the site that records on it and the values, in order.
    recorded: BTreeMap<String, (String, Vec<String>)>,
}

fn event(channel: &str, name: &str) -> Body {
    Body::Event(Event {
        id: String::new(),
        channel: channel.into(),
        event_type: "t".into(),
        from: Party::default(),
        to: Target::default(),
        distribution: Distribution::All,
        payload: name.as_bytes().to_vec(),
        assigned: Vec::new(),
        principal: None,
        tuple: None,
    })
}

/// The marker `POST /v1/peer/records` appends for a gap when the receiver
/// has no lease: on the origin's own channel.
fn gap_marker(origin: &str, from: u64, to: u64) -> Body {
    pepper_adapters::wire::frames::gap_marker(format!("{SITES_CHANNEL_PREFIX}{origin}/"), origin, from, to)
}

fn parse_duration(s: &str) -> Duration {
    if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(ms.parse().expect("ms"))
    } else if let Some(secs) = s.strip_suffix('s') {
        Duration::from_secs(secs.parse().expect("seconds"))
    } else {
        panic!("a duration is like 10s or 50ms, not {s}")
    }
}

fn pair(a: &str, b: &str) -> Link {
    if a <= b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
    }
}

/// What a peer holds from one origin, in its log order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Held {
    Event(String),
    Gap(u64, u64),
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            clock: ManualClock::new(EPOCH_US),
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            rt: tokio::runtime::Builder::new_current_thread().build().expect("runtime"),
            sites: BTreeMap::new(),
            links: BTreeMap::new(),
            wants: BTreeMap::new(),
            partitions: BTreeSet::new(),
            delay: (Duration::from_millis(5), Duration::from_millis(50)),
            drop: 0.0,
            queue: BinaryHeap::new(),
            due: BTreeMap::new(),
            ordinal: 0,
            trace: Vec::new(),
            published: BTreeMap::new(),
            dispatchers: BTreeMap::new(),
            streams: BTreeMap::new(),
            work_at: None,
            next_subscriber: 1,
            interest_lists: BTreeMap::new(),
            scripted: BTreeMap::new(),
            interest_version: BTreeMap::new(),
            held_version: BTreeMap::new(),
            policy: None,
            supervisors: BTreeMap::new(),
            down: BTreeSet::new(),
            killed: Vec::new(),
            recorded: BTreeMap::new(),
        }
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("{:>9.3}s {line}", self.now.as_secs_f64()));
    }

    fn schedule(&mut self, at: Duration, due: Due) {
        self.ordinal += 1;
        self.queue.push(Reverse((at, self.ordinal)));
        self.due.insert(self.ordinal, due);
    }

    fn store(&self, site: &str) -> &Store {
        self.sites.get(site).unwrap_or_else(|| panic!("no site {site}"))
    }

    /// Runs a script; `expect` lines are checked as they come.
    fn script(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["site", name] => self.add_site(name),
                ["network", "delay", min, max, "drop", p] => {
                    self.delay = (parse_duration(min), parse_duration(max));
                    self.drop = p.parse().expect("drop probability");
                }
                ["interest", site, pattern, ref types @ ..] => self.interest(site, pattern, types),
                ["publish", site, channel, name] => self.publish(site, channel, name),
                ["partition", a, b] => {
                    self.log(format!("partition {a} {b}"));
                    self.partitions.insert(pair(a, b));
                }
                ["heal", a, b] => {
                    self.log(format!("heal {a} {b}"));
                    self.partitions.remove(&pair(a, b));
                }
                ["run", d] => self.run(parse_duration(d)),
                ["lease", site, id, pattern, "group", group] => self.lease(site, id, pattern, Some(group)),
                ["lease", site, id, pattern] => self.lease(site, id, pattern, None),
                ["release", site, id] => {
                    let release = Body::LeaseRelease(LeaseEnd { id: id.into() });
                    self.store(site).append_blocking(vec![release]).expect("release");
                    self.log(format!("release {site} {id}"));
                }
                ["publish-one", site, channel, name] => {
                    let mut one = event(channel, name);
                    if let Body::Event(e) = &mut one {
                        e.distribution = Distribution::One;
                    }
                    self.store(site).append_blocking(vec![one]).expect("publish");
                    self.log(format!("publish-one {site} {channel} {name}"));
                }
                ["expect", site, name, "assigned", ref to @ ..] => {
                    let got = self.assigned(site, name);
                    let want: Vec<String> = match to {
                        ["none"] => Vec::new(),
                        _ => to.iter().map(|t| (*t).to_string()).collect(),
                    };
                    assert_eq!(got, want, "{name} at {site}\n{}", self.trace.join("\n"));
                }
                ["trim", site] => self.trim(site),
                ["publish-many", site, channel, prefix, count] => {
                    self.publish_many(site, channel, prefix, count.parse().expect("count"));
                }
                ["watch", site, name, pattern, "from", from, ref rest @ ..] => {
                    let from = match from {
                        "head" => self.store(site).last_seq() + 1,
                        n => n.parse().expect("from"),
                    };
                    let sub = Subscriber::watch(Pattern::parse(pattern).expect("pattern"), Vec::new(), false);
                    self.open_stream(site, name, sub, from, rest);
                }
                ["stream", site, name, "lease", id, ref rest @ ..] => {
                    let id2 = id.to_string();
                    let lease = self.store(site).read_blocking(move |v| v.lease(&id2)).expect("read").expect("lease");
                    let sub = Subscriber {
                        pattern: Pattern::parse(&lease.pattern).expect("pattern"),
                        types: lease.types.clone(),
                        lease: Some(lease.id.clone()),
                        holder: Some(Holder {
                            service: lease.holder.service.clone(),
                            instance: lease.holder.instance.clone(),
                        }),
                        group: lease.group.clone(),
                        granted_seq: lease.granted_seq,
                        tuples: false,
                    };
                    let from = lease.from_seq.unwrap_or(lease.granted_seq + 1);
                    self.open_stream(site, name, sub, from, rest);
                }
                ["expect", "stream", name, ref want @ ..] => self.expect_stream(name, want),
                ["supervise", pattern, r] => self.supervise(pattern, r.parse().expect("R")),
                ["record", site, channel, value] => self.record_updates(site, channel, &[value.to_string()]),
                ["record-many", site, channel, prefix, n] => {
                    let values: Vec<String> = (0..n.parse().expect("count")).map(|i| format!("{prefix}{i}")).collect();
                    self.record_updates(site, channel, &values);
                }
                ["kill", "recorder"] => {
                    // The first complete recorder that publishes nothing.
                    let pattern = self.policy.clone().expect("supervise first").0;
                    let victim = self
                        .sites
                        .keys()
                        .filter(|s| !self.down.contains(*s) && !self.recorded.values().any(|(p, _)| p == *s))
                        .find(|s| self.store(s).monitor_state(&pattern) == Some(MonitorState::Complete))
                        .cloned()
                        .expect("a recorder to kill");
                    self.kill(&victim);
                }
                ["kill", "any"] => self.kill_any(),
                ["restart", "any"] => {
                    let down: Vec<String> = self.down.iter().cloned().collect();
                    if !down.is_empty() {
                        let site = down[self.rng.gen_range(0..down.len())].clone();
                        self.restart(&site);
                    }
                }
                ["kill", "killed"] => {
                    // The site killed last, killed again after its restart.
                    let site = self.killed.last().cloned().expect("a killed site");
                    self.kill(&site);
                }
                ["kill", site] => self.kill(site),
                ["restart", "killed"] => {
                    let site = self.killed.last().cloned().expect("a killed site");
                    self.restart(&site);
                }
                ["restart", site] => self.restart(site),
                ["expect", "kept", prefix] => {
                    if let Err(e) = self.check_kept(prefix) {
                        panic!("{e}\n{}", self.trace.join("\n"));
                    }
                }
                ["expect", "recorders", n] => {
                    if let Err(e) = self.check_recorders(Some(n.parse().expect("count"))) {
                        panic!("{e}\n{}", self.trace.join("\n"));
                    }
                }
                ["expect", peer, "from", origin, ref held @ ..] => {
                    let origin = origin.trim_end_matches(':');
                    let want: Vec<Held> = held
                        .iter()
                        .map(|h| match h.strip_prefix("gap:") {
                            Some(r) => {
                                let (f, t) = r.split_once('-').expect("gap:FROM-TO");
                                Held::Gap(f.parse().unwrap(), t.parse().unwrap())
                            }
                            None => Held::Event((*h).into()),
                        })
                        .collect();
                    assert_eq!(self.held(peer, origin), want, "{peer} from {origin}\n{}", self.trace.join("\n"));
                }
                _ => panic!("cannot read script line {line:?}"),
            }
            if self.busy() {
                self.work_at.get_or_insert(self.now + Duration::from_millis(1));
            }
        }
    }

    fn add_site(&mut self, name: &str) {
        let store = Store::open_with(Arc::new(MemoryEngine::new()), Arc::new(self.clock.clone()), Options::new(name))
            .expect("open");
        for other in self.sites.keys() {
            for link in [(name.to_string(), other.clone()), (other.clone(), name.to_string())] {
                let fwd = Forward { fwd: Forwarder::new(&link.0, self.now), wake: None, waiting: None };
                self.links.insert(link, fwd);
            }
        }
        self.sites.insert(name.into(), store);
        self.log(format!("site {name}"));
    }

    fn interest(&mut self, site: &str, pattern: &str, types: &[&str]) {
        let interest = Interest { pattern: pattern.into(), types: types.iter().map(|t| (*t).into()).collect() };
        self.log(format!("interest {site} {pattern} {types:?}"));
        // What the invariants check against: the script's interests only
        // (a supervisor's come and go with its monitors).
        let mut scripted: Vec<Interest> = self.wants_list(site).into_iter().filter(|i| i.pattern != pattern).collect();
        scripted.push(interest.clone());
        self.wants.insert(site.into(), Arc::new(Wants::parse(&scripted).expect("interest")));
        self.scripted.insert(site.into(), scripted);
        self.hold(site, interest);
    }

    fn wants_list(&self, site: &str) -> Vec<Interest> {
        self.scripted.get(site).cloned().unwrap_or_default()
    }

    /// Adds `interest` to what `site` wants (replacing one of its pattern)
    /// and declares it.
    fn hold(&mut self, site: &str, interest: Interest) {
        let list = self.interest_lists.entry(site.into()).or_default();
        list.retain(|i| i.pattern != interest.pattern);
        list.push(interest);
        self.declare(site);
    }

    /// Gives `site`'s interests, as a new version, to every live origin's
    /// forwarder toward it (at once: the sim has no interest exchange).
    fn declare(&mut self, site: &str) {
        let list = self.interest_lists.get(site).cloned().unwrap_or_default();
        let wants = Arc::new(Wants::parse(&list).expect("interest"));
        let version = {
            let v = self.interest_version.entry(site.into()).or_default();
            *v += 1;
            *v
        };
        if self.down.contains(site) {
            return;
        }
        let links: Vec<Link> =
            self.links.keys().filter(|l| l.1 == site && !self.down.contains(&l.0)).cloned().collect();
        for link in links {
            self.held_version.insert(link.clone(), version);
            let first_cursor = self.store(&link.0).last_seq() + 1;
            let input = Input::Interests(PeerWants { wants: wants.clone(), first_cursor });
            self.step(&link, input);
        }
    }

    fn publish(&mut self, site: &str, channel: &str, name: &str) {
        let appended = self.store(site).append_blocking(vec![event(channel, name)]).expect("publish");
        let seq = self.store(site).last_seq();
        self.published.entry(site.into()).or_default().push((seq, channel.into(), name.into()));
        self.log(format!("publish {site} {channel} {name} -> seq {seq} ({appended:?})"));
        self.appended(site);
    }

    fn trim(&mut self, site: &str) {
        let policy = Retention { log_max_age: Some(Duration::ZERO), ..Retention::default() };
        self.store(site)
            .enforce_retention_blocking(&policy, EPOCH_US + u64::try_from(self.now.as_micros()).unwrap())
            .expect("retention");
        let earliest = self.store(site).earliest_seq();
        self.log(format!("trim {site}: earliest {earliest}"));
    }

    /// Tells the forwarders out of `site` that its log grew.
    fn appended(&mut self, site: &str) {
        self.hear(site);
        let last_seq = self.store(site).last_seq();
        let links: Vec<Link> = self.links.keys().filter(|l| l.0 == site).cloned().collect();
        for link in links {
            let f = self.links.get_mut(&link).unwrap();
            if f.waiting.is_some_and(|w| w <= last_seq) {
                f.waiting = None;
                self.step(&link, Input::Appended { last_seq });
            }
        }
    }

    fn step(&mut self, link: &Link, input: Input<Vec<u8>>) {
        let now = self.now;
        // A link out of a killed site is gone; what was in flight for it
        // answers nobody.
        let Some(f) = self.links.get_mut(link) else { return };
        let actions = f.fwd.step(now, input);
        self.carry_out(link, actions);
    }

    /// Carries out a forwarder's actions as the adapters' forwarding loop
    /// does.
    fn carry_out(&mut self, link: &Link, actions: Vec<Action<Vec<u8>>>) {
        let (origin, peer) = (link.0.clone(), link.1.clone());
        for action in actions {
            match action {
                Action::LoadCursor { or_else } => {
                    let store = self.store(&origin);
                    let next = match store.peer_cursor(&peer).expect("cursor") {
                        Some(next) => next,
                        None => {
                            store.set_peer_cursor(&peer, or_else).expect("cursor");
                            or_else
                        }
                    };
                    self.step(link, Input::CursorLoaded { next });
                }
                Action::WaitForSeq(seq) => {
                    if self.store(&origin).last_seq() >= seq {
                        let last_seq = self.store(&origin).last_seq();
                        self.step(link, Input::Appended { last_seq });
                    } else {
                        self.links.get_mut(link).unwrap().waiting = Some(seq);
                    }
                }
                Action::Scan { id, from, filter, records_max, bytes_max, scan_max } => {
                    let read = self.store(&origin).read_blocking(|v| {
                        if from < v.earliest_seq() {
                            return Ok(Err(v.earliest_seq()));
                        }
                        v.frames(from, records_max, bytes_max, scan_max, |r| match &r.body {
                            Body::Event(e) => filter.keep(&r.origin, Some((&e.channel, &e.event_type))),
                            _ => filter.keep(&r.origin, None),
                        })
                        .map(Ok)
                    });
                    let input = match read {
                        Ok(Err(earliest)) => Input::Compacted { id, earliest },
                        Ok(Ok((frames, next))) => {
                            let records = frames
                                .into_iter()
                                .map(|(r, raw)| Outgoing { seq: r.seq, bytes: raw.len(), record: raw })
                                .collect();
                            Input::Scanned { id, records, next }
                        }
                        Err(e) => Input::ScanFailed { id, error: e.to_string() },
                    };
                    self.step(link, input);
                }
                Action::Send { id, from, next, records } => {
                    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
                    self.log(format!("{origin}->{peer} send #{id} {from}..{next} seqs {seqs:?}"));
                    let mut body = Vec::new();
                    for r in records {
                        body.extend_from_slice(&u32::try_from(r.record.len()).unwrap().to_be_bytes());
                        body.extend_from_slice(&r.record);
                    }
                    self.transmit(&origin, &peer, Msg::Batch { link: link.clone(), id, body });
                    self.schedule(self.now + SEND_TIMEOUT, Due::Timeout { link: link.clone(), id });
                }
                Action::SendGap { id, from, to } => {
                    self.log(format!("{origin}->{peer} gap #{id} {from}..={to}"));
                    self.transmit(&origin, &peer, Msg::Gap { link: link.clone(), id, from, to });
                    self.schedule(self.now + SEND_TIMEOUT, Due::Timeout { link: link.clone(), id });
                }
                Action::SaveCursor { next, durable } => {
                    if durable {
                        self.store(&origin).set_peer_cursor(&peer, next).expect("save cursor");
                    }
                }
                Action::Stalled { error } => self.log(format!("{origin}->{peer} stalled: {error}")),
                Action::WakeAt(at) => self.links.get_mut(link).unwrap().wake = Some(at),
            }
        }
    }

    /// Puts a message on the network from `from` to `to`: lost to a
    /// partition or a drop, or delivered after a random delay.
    fn transmit(&mut self, from: &str, to: &str, msg: Msg) {
        if self.down.contains(to) || self.down.contains(from) {
            // A killed process refuses the connection at once; the send
            // fails after a round trip, not after its timeout.
            self.log(format!("{from}->{to} refused: a site is down"));
            if let (false, Msg::Batch { link, id, .. } | Msg::Gap { link, id, .. }) = (self.down.contains(from), &msg) {
                let due = Due::Refused { link: link.clone(), id: *id };
                self.schedule(self.now + self.delay.0, due);
            }
            return;
        }
        if self.partitions.contains(&pair(from, to)) {
            self.log(format!("{from}->{to} lost to the partition"));
            return;
        }
        if self.drop > 0.0 && self.rng.gen_bool(self.drop) {
            self.log(format!("{from}->{to} dropped"));
            return;
        }
        let delay = self.rng.gen_range(self.delay.0..=self.delay.1);
        self.schedule(self.now + delay, Due::Deliver(msg));
    }

    /// Runs the world for `d` of simulated time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_msg = self.queue.peek().map(|r| r.0 .0);
            let next_wake = self.links.values().filter_map(|f| f.wake).min();
            let next_sup = self.next_supervision();
            let Some(at) =
                [next_msg, next_wake, self.work_at, next_sup].into_iter().flatten().min().filter(|&at| at <= end)
            else {
                break;
            };
            self.advance_to(at);
            if next_sup == Some(at) {
                self.supervise_at(at);
                continue;
            }
            if self.work_at == Some(at) {
                self.work();
                self.work_at = self.busy().then(|| at + Duration::from_millis(1));
                continue;
            }
            if next_wake == Some(at) {
                let links: Vec<Link> =
                    self.links.iter().filter(|(_, f)| f.wake == Some(at)).map(|(l, _)| l.clone()).collect();
                for link in links {
                    let f = self.links.get_mut(&link).unwrap();
                    f.wake = None;
                    let actions = f.fwd.tick(at);
                    self.carry_out(&link, actions);
                }
                continue;
            }
            let Reverse((_, ordinal)) = self.queue.pop().unwrap();
            let due = self.due.remove(&ordinal).unwrap();
            self.happen(due);
        }
        self.advance_to(end);
    }

    fn advance_to(&mut self, at: Duration) {
        if at > self.now {
            self.now = at;
            self.clock.set(EPOCH_US + u64::try_from(at.as_micros()).unwrap());
        }
    }

    fn happen(&mut self, due: Due) {
        match due {
            Due::Refused { link, id } => {
                let input = Input::SendFailed { id, status: None, error: "connection refused".into() };
                self.step(&link, input);
            }
            Due::Timeout { link, id } => {
                let input = Input::SendFailed { id, status: None, error: "timed out".into() };
                self.step(&link, input);
            }
            Due::Deliver(Msg::Ack { link, id }) => {
                if self.partitions.contains(&pair(&link.0, &link.1)) || self.down.contains(&link.0) {
                    self.log(format!("{}->{} ack #{id} lost to the partition", link.1, link.0));
                    return;
                }
                self.log(format!("{}->{} ack #{id}", link.1, link.0));
                self.step(&link, Input::Sent { id });
            }
            Due::Deliver(msg @ (Msg::Batch { .. } | Msg::Gap { .. })) => {
                let (Msg::Batch { link, id, .. } | Msg::Gap { link, id, .. }) = &msg else { unreachable!() };
                let (link, id) = (link.clone(), *id);
                let (origin, peer) = (link.0.clone(), link.1.clone());
                if self.down.contains(&peer) || self.down.contains(&origin) {
                    self.log(format!("{origin}->{peer} #{id} lost: a site is down"));
                    return;
                }
                if self.partitions.contains(&pair(&origin, &peer)) {
                    self.log(format!("{origin}->{peer} #{id} lost to the partition"));
                    return;
                }
                let store = self.store(&peer);
                let appended = match msg {
                    Msg::Batch { body, .. } => {
                        let records = decode_batch(&origin, &body).expect("a batch the origin sent decodes");
                        self.rt.block_on(store.receive(&origin, records)).expect("receive")
                    }
                    Msg::Gap { from, to, .. } => {
                        let markers = vec![gap_marker(&origin, from, to)];
                        self.rt.block_on(store.receive_gap(&origin, to, markers)).expect("receive gap")
                    }
                    Msg::Ack { .. } => unreachable!(),
                };
                self.log(format!("{origin}->{peer} #{id} delivered: {appended:?}"));
                self.appended(&peer);
                self.transmit(&peer, &origin, Msg::Ack { link, id });
            }
        }
    }

    /// What `peer` holds from `origin`: its events and gap markers, in
    /// `peer`'s log order.
    fn lease(&mut self, site: &str, id: &str, pattern: &str, group: Option<&str>) {
        let grant = Body::LeaseGrant(LeaseGrant {
            id: id.into(),
            pattern: pattern.into(),
            types: Vec::new(),
            ttl_ms: 3_600_000,
            expires_at_us: EPOCH_US + u64::try_from(self.now.as_micros()).unwrap() + 3_600_000_000,
            group: group.map(Into::into),
            from_seq: None,
            holder: Party::default(),
            owner: None,
        });
        self.store(site).append_blocking(vec![grant]).expect("grant");
        self.log(format!("lease {site} {id} {pattern} group {group:?}"));
    }

    /// The leases the writer assigned the distribution-`one` event `name`.
    fn assigned(&self, site: &str, name: &str) -> Vec<String> {
        let records = self.store(site).read_blocking(|v| v.records(1, u64::MAX, 1_000_000)).expect("records");
        records
            .into_iter()
            .find_map(|r| match r.body {
                Body::Event(e) if e.payload == name.as_bytes() => Some(e.assigned),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no event {name} at {site}"))
    }

    fn held(&self, peer: &str, origin: &str) -> Vec<Held> {
        let records = self.store(peer).read_blocking(|v| v.records(1, u64::MAX, 1_000_000)).expect("records");
        records
            .into_iter()
            .filter_map(|r| {
                let Body::Event(e) = r.body else { return None };
                // Announcements and recorded updates are the supervisors'
                // (scenario (e) checks them).
                if e.channel.starts_with(ANNOUNCE_PREFIX) || e.tuple.is_some() {
                    return None;
                }
                if e.event_type == GAP_TYPE && e.from.instance == origin {
                    let p: serde_json::Value = serde_json::from_slice(&e.payload).expect("gap payload");
                    return Some(Held::Gap(p["from_seq"].as_u64().unwrap(), p["to_seq"].as_u64().unwrap()));
                }
                (r.origin == origin).then(|| Held::Event(String::from_utf8(e.payload).unwrap()))
            })
            .collect()
    }

    /// Checks invariants 1 to 5 (see the header) for every origin and peer;
    /// `settled` says the network has healed and the run settled, so that
    /// nothing may be missing.
    fn check(&self, settled: bool) -> Result<(), String> {
        for origin in self.sites.keys() {
            let published = self.published.get(origin).cloned().unwrap_or_default();
            let earliest = self.store(origin).earliest_seq();
            for peer in self.sites.keys().filter(|p| *p != origin && !self.down.contains(*p)) {
                let held = self.held(peer, origin);
                let wants = self.wants.get(peer);
                let wanted: Vec<&(u64, String, String)> =
                    published.iter().filter(|(_, ch, _)| wants.is_some_and(|w| w.covers(ch, "t"))).collect();
                let seq_of = |name: &str| published.iter().find(|p| p.2 == name).map(|p| p.0);
                let mut last = 0u64;
                let mut seen = BTreeSet::new();
                let mut gaps = Vec::new();
                for h in &held {
                    let (lo, hi) = match h {
                        Held::Event(name) => {
                            let seq =
                                seq_of(name).ok_or(format!("{peer} holds {name}, never published by {origin}"))?;
                            if !seen.insert(seq) {
                                return Err(format!("1: {peer} holds {name} of {origin} twice"));
                            }
                            if !wanted.iter().any(|w| w.0 == seq) {
                                return Err(format!("3: {peer} holds {name} of {origin}, which it does not want"));
                            }
                            (seq, seq)
                        }
                        Held::Gap(from, to) => {
                            if *to >= earliest {
                                return Err(format!("5: gap {from}..={to} covers records {origin} still holds"));
                            }
                            gaps.push((*from, *to));
                            (*from, *to)
                        }
                    };
                    if lo <= last {
                        return Err(format!("2/5: {peer} holds {h:?} of {origin} after seq {last}"));
                    }
                    last = hi;
                }
                if settled && !self.down.contains(origin) {
                    for (seq, _, name) in &wanted {
                        let in_gap = gaps.iter().any(|(f, t)| f <= seq && seq <= t);
                        if !seen.contains(seq) && !in_gap {
                            return Err(format!("4: {peer} never got {name} (seq {seq}) of {origin}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a supervisor on every site, all with the policy `pattern` =
    /// `r`, as `pepper serve --record PATTERN=R` does.
    fn supervise(&mut self, pattern: &str, r: usize) {
        self.policy = Some((pattern.into(), r));
        let sites: Vec<String> = self.sites.keys().cloned().collect();
        for site in sites {
            self.store(&site).set_recording_policy(vec![pattern.into()]).expect("policy");
            self.start_supervisor(&site);
        }
        self.log(format!("supervise {pattern} R={r}"));
    }

    /// A fresh machine for `site` (at start, or after a restart), with the
    /// standing interests `supervise::prepare` holds: the announcements and
    /// every running monitor's subtree.
    fn start_supervisor(&mut self, site: &str) {
        let Some((pattern, r)) = self.policy.clone() else { return };
        let config = PlacementConfig {
            site: site.into(),
            region: None,
            interval: INTERVAL,
            heartbeat: INTERVAL,
            policies: [(pattern, r)].into_iter().collect(),
        };
        let heard_next = self.store(site).last_seq() + 1;
        let sup = Sup { placement: Placement::new(config, self.now), heard_next, cuts: BTreeMap::new() };
        self.supervisors.insert(site.into(), sup);
        let mut standing = vec![Interest { pattern: ANNOUNCE_PREFIX.into(), types: Vec::new() }];
        let rows = self.store(site).read_blocking(|v| v.monitors()).expect("monitors");
        standing.extend(
            rows.iter()
                .filter(|r| r.state != MonitorState::Stopped)
                .map(|r| Interest { pattern: r.pattern.clone(), types: Vec::new() }),
        );
        let list = self.interest_lists.entry(site.into()).or_default();
        for i in standing {
            list.retain(|x| x.pattern != i.pattern);
            list.push(i);
        }
        self.declare(site);
    }

    /// Publishes attribute updates (field `load`) on `channel` at `site`,
    /// one append each, as a publisher would.
    fn record_updates(&mut self, site: &str, channel: &str, values: &[String]) {
        for value in values {
            let body = Body::Event(Event {
                id: String::new(),
                channel: channel.into(),
                event_type: "attribute".into(),
                from: Party { service: "agent".into(), instance: site.into() },
                to: Target::default(),
                distribution: Distribution::All,
                payload: value.as_bytes().to_vec(),
                assigned: Vec::new(),
                principal: None,
                tuple: Some(TupleUpdate {
                    field: "load".into(),
                    value: value.clone(),
                    expires_at_us: None,
                    recorded: true,
                }),
            });
            self.store(site).append_blocking(vec![body]).expect("record");
            let entry = self.recorded.entry(channel.into()).or_insert_with(|| (site.into(), Vec::new()));
            assert_eq!(entry.0, site, "one publisher per channel, so its order is defined");
            entry.1.push(value.clone());
            self.appended(site);
        }
        self.log(format!("record {site} {channel} {} values", values.len()));
    }

    /// Kills a site the seed picks, but never a publisher, never the last
    /// live complete recorder (its history would go with it until it came
    /// back) and never below R live sites; nobody if no site qualifies.
    fn kill_any(&mut self) {
        let (pattern, r) = self.policy.clone().expect("supervise first");
        let live: Vec<String> = self.sites.keys().filter(|s| !self.down.contains(*s)).cloned().collect();
        let complete: Vec<&String> =
            live.iter().filter(|s| self.store(s).monitor_state(&pattern) == Some(MonitorState::Complete)).collect();
        let candidates: Vec<String> = live
            .iter()
            .filter(|s| !self.recorded.values().any(|(p, _)| p == *s))
            .filter(|s| !(complete.len() == 1 && complete[0] == *s))
            .cloned()
            .collect();
        if live.len() <= r || candidates.is_empty() {
            self.log("kill any: nobody may go".into());
            return;
        }
        let site = candidates[self.rng.gen_range(0..candidates.len())].clone();
        self.kill(&site);
    }

    /// Kills `site`: its supervisor and forwarders are gone, nothing reaches
    /// it or leaves it; its store stays, as a disk does.
    fn kill(&mut self, site: &str) {
        assert!(self.down.insert(site.into()), "{site} is down already");
        self.killed.push(site.into());
        self.supervisors.remove(site);
        self.links.retain(|l, _| l.0 != site);
        self.log(format!("kill {site}"));
    }

    /// Restarts `site` on its store: new forwarders (from their stored
    /// cursors), a new supervisor, its interests declared again.
    fn restart(&mut self, site: &str) {
        assert!(self.down.remove(site), "{site} is not down");
        self.log(format!("restart {site}"));
        let peers: Vec<String> = self.sites.keys().filter(|p| *p != site).cloned().collect();
        for peer in &peers {
            let link = (site.to_string(), peer.clone());
            self.links.insert(link, Forward { fwd: Forwarder::new(site, self.now), wake: None, waiting: None });
        }
        if self.policy.is_some() {
            self.start_supervisor(site);
        } else {
            self.declare(site);
        }
        let live: Vec<String> = peers.into_iter().filter(|p| !self.down.contains(p)).collect();
        for peer in &live {
            let Some(list) = self.interest_lists.get(peer).cloned() else { continue };
            let wants = Arc::new(Wants::parse(&list).expect("interest"));
            let link = (site.to_string(), peer.clone());
            let version = self.interest_version.get(peer).copied().unwrap_or(0);
            self.held_version.insert(link.clone(), version);
            let first_cursor = self.store(site).last_seq() + 1;
            self.step(&link, Input::Interests(PeerWants { wants, first_cursor }));
        }
    }

    /// Reads the announcements `site`'s log gained into its supervisor, as
    /// `supervise::read_announcements` does.
    fn hear(&mut self, site: &str) {
        let Some(sup) = self.supervisors.get(site) else { return };
        let (from, last) = (sup.heard_next, self.store(site).last_seq());
        if from > last {
            return;
        }
        let records = self.store(site).read_blocking(move |v| v.records(from, last, 1_000_000)).expect("records");
        let now = self.now;
        let sup = self.supervisors.get_mut(site).unwrap();
        sup.heard_next = last + 1;
        let mut actions = Vec::new();
        for r in records {
            let Body::Event(e) = r.body else { continue };
            if !e.channel.starts_with(ANNOUNCE_PREFIX) {
                continue;
            }
            let a: Announcement = serde_json::from_slice(&e.payload).expect("an announcement");
            let heard = a.heard(&e.event_type);
            // A complete replica heard may confirm a surplus stop here.
            actions.extend(sup.placement.step(now, PlacementInput::Heard(heard)));
        }
        self.carry_out_placement(site, actions);
    }

    /// When a live supervisor next has something due: a tick or a cut poll.
    fn next_supervision(&self) -> Option<Duration> {
        self.supervisors
            .values()
            .flat_map(|s| std::iter::once(s.placement.next_tick()).chain(s.cuts.values().map(|c| c.2)))
            .min()
            .map(|at| at.max(self.now))
    }

    fn supervise_at(&mut self, at: Duration) {
        let sites: Vec<String> = self.supervisors.keys().cloned().collect();
        for site in sites {
            let polls: Vec<String> = match self.supervisors.get(&site) {
                Some(s) => s.cuts.iter().filter(|(_, c)| c.2 <= at).map(|(p, _)| p.clone()).collect(),
                None => continue,
            };
            for pattern in polls {
                self.poll_cut(&site, &pattern);
            }
            if self.supervisors.get(&site).is_some_and(|s| s.placement.next_tick() <= at) {
                let rows = self.store(&site).read_blocking(|v| v.monitors()).expect("monitors");
                let local = local_monitors(&rows);
                let rng = &mut self.rng;
                let sup = self.supervisors.get_mut(&site).unwrap();
                let actions = sup.placement.tick(at, &local, || rng.gen::<f64>());
                if sup.placement.next_tick() <= at {
                    panic!("{site}'s supervisor is due again at {at:?} right after its tick");
                }
                self.carry_out_placement(&site, actions);
            }
        }
    }

    /// The peers as `site`'s placement sees them: up, or down once killed.
    fn views(&self, site: &str) -> Vec<PeerView> {
        self.sites
            .keys()
            .filter(|p| *p != site)
            .map(|p| PeerView {
                name: p.clone(),
                region: None,
                reach: if self.down.contains(p) { Reach::Down } else { Reach::Up },
                rtt_ms: Some(1.0),
            })
            .collect()
    }

    /// Gives `site`'s machine a task result and carries out what follows.
    fn report(&mut self, site: &str, input: PlacementInput) {
        let Some(sup) = self.supervisors.get_mut(site) else { return };
        let actions = sup.placement.step(self.now, input);
        self.carry_out_placement(site, actions);
    }

    /// Carries out a supervisor's actions as `supervise::carry_out` does,
    /// each result reported as it comes (the wait for the cut polls later).
    fn carry_out_placement(&mut self, site: &str, actions: Vec<PlacementAction>) {
        for action in actions {
            if !self.supervisors.contains_key(site) {
                return;
            }
            match action {
                PlacementAction::Announce(a) => {
                    let since_us = a.since_us.unwrap_or(EPOCH_US + u64::try_from(self.now.as_micros()).unwrap());
                    let announcement = Announcement {
                        site: site.into(),
                        region: None,
                        pattern: a.pattern.clone(),
                        state: a.status.name().to_string(),
                        since_us,
                        monitors: a.monitors.unwrap_or_else(|| self.store(site).monitors_running()),
                    };
                    let body = Body::Event(Event {
                        id: String::new(),
                        channel: announce_channel(&a.pattern),
                        event_type: a.kind.event_type().into(),
                        from: Party { service: "pepper".into(), instance: site.into() },
                        to: Target::default(),
                        distribution: Distribution::All,
                        payload: serde_json::to_vec(&announcement).unwrap(),
                        assigned: Vec::new(),
                        principal: None,
                        tuple: None,
                    });
                    if a.kind != AnnounceKind::Heartbeat {
                        self.log(format!("{site} announces {} {}", a.kind.event_type(), a.pattern));
                    }
                    self.store(site).append_blocking(vec![body]).expect("announce");
                    self.appended(site);
                }
                PlacementAction::Start { pattern, reason } => {
                    let result = self.rt.block_on(self.store(site).monitor_start(&pattern, &reason));
                    self.log(format!("{site} starts a monitor of {pattern}: {reason} ({:?})", result.is_ok()));
                    self.appended(site);
                    let result = result.map(|_| ()).map_err(|e| e.to_string());
                    self.report(site, PlacementInput::Started { pattern, result });
                }
                PlacementAction::HoldInterest { pattern } => {
                    self.hold(site, Interest { pattern: pattern.clone(), types: Vec::new() });
                    let peers = self.views(site);
                    self.report(site, PlacementInput::InterestHeld { pattern, peers });
                }
                PlacementAction::WaitForCut { pattern, source } => {
                    let cut = Cut::new(&source, self.store(site).last_seq(), self.now);
                    let now = self.now;
                    self.supervisors.get_mut(site).unwrap().cuts.insert(pattern.clone(), (source, cut, now));
                    self.poll_cut(site, &pattern);
                }
                PlacementAction::Copy { pattern, source } => {
                    let result = self.copy_replica(site, &pattern, &source);
                    self.log(format!("{site} copies {pattern} from {source}: {result:?}"));
                    self.report(site, PlacementInput::Copied { pattern, result });
                }
                PlacementAction::Complete { pattern, source, marks } => {
                    let result = self.rt.block_on(self.store(site).monitor_complete(&pattern, &source, marks));
                    self.log(format!("{site} completes {pattern}: {:?}", result.as_ref().map(|_| ())));
                    self.appended(site);
                    let result = result.map(|done| done.written().saturating_sub(1)).map_err(|e| e.to_string());
                    self.report(site, PlacementInput::Completed { pattern, result });
                }
                PlacementAction::Stop { pattern, reason, if_importing_since } => {
                    let result = self.stop_monitor(site, &pattern, &reason, if_importing_since);
                    self.log(format!("{site} stops {pattern}: {reason} ({result:?})"));
                    self.appended(site);
                    self.report(site, PlacementInput::Stopped { pattern, result });
                }
                PlacementAction::DropInterest { pattern } => {
                    if let Some(list) = self.interest_lists.get_mut(site) {
                        list.retain(|i| i.pattern != pattern);
                    }
                    self.declare(site);
                }
            }
        }
    }

    /// Polls a backfill's cut as `supervise::wait_for_cut` does: this
    /// site's forwarder toward the source, then each other peer's answer
    /// (its log's end, the version of this site's interests it holds, its
    /// forwarder toward the source), at once; a killed peer refuses.
    fn poll_cut(&mut self, site: &str, pattern: &str) {
        loop {
            let now = self.now;
            let Some(sup) = self.supervisors.get_mut(site) else { return };
            let Some((source, cut, _)) = sup.cuts.get_mut(pattern) else { return };
            let source = source.clone();
            match cut.progress(now) {
                CutProgress::Own => {
                    let own = self.links.get(&(site.to_string(), source.clone())).and_then(|f| f.fwd.cursor());
                    let (_, cut, next) = self.supervisors.get_mut(site).unwrap().cuts.get_mut(pattern).unwrap();
                    cut.own_cursor(now, own);
                    if matches!(cut.progress(now), CutProgress::Own) {
                        *next = now + cut_poll(INTERVAL);
                        return;
                    }
                }
                CutProgress::NeedPeers => {
                    let version = self.interest_version.get(site).copied().unwrap_or(0);
                    let views = self.views(site);
                    let (_, cut, _) = self.supervisors.get_mut(site).unwrap().cuts.get_mut(pattern).unwrap();
                    cut.peers(version, site, &views);
                }
                CutProgress::Ask(names) => {
                    let replies: Vec<(String, CutReply)> = names
                        .into_iter()
                        .map(|name| {
                            let reply = if self.down.contains(&name) {
                                CutReply::Unreachable
                            } else {
                                CutReply::Answer {
                                    interests_version: self
                                        .held_version
                                        .get(&(name.clone(), site.to_string()))
                                        .copied()
                                        .unwrap_or(0),
                                    seq: Some(self.store(&name).last_seq()),
                                    cursor: self
                                        .links
                                        .get(&(name.clone(), source.clone()))
                                        .and_then(|f| f.fwd.cursor()),
                                }
                            };
                            (name, reply)
                        })
                        .collect();
                    let (_, cut, next) = self.supervisors.get_mut(site).unwrap().cuts.get_mut(pattern).unwrap();
                    for (name, reply) in replies {
                        cut.reply(&name, reply);
                    }
                    if matches!(cut.progress(now), CutProgress::Ask(_)) {
                        *next = now + cut_poll(INTERVAL);
                        return;
                    }
                }
                CutProgress::Passed | CutProgress::Failed(_) => {
                    let (_, mut cut, _) = self.supervisors.get_mut(site).unwrap().cuts.remove(pattern).unwrap();
                    let result = match cut.progress(now) {
                        CutProgress::Failed(message) => Err(message),
                        _ => Ok(()),
                    };
                    self.log(format!("{site}'s cut toward {source} for {pattern}: {result:?}"));
                    self.report(site, PlacementInput::CutPassed { pattern: pattern.into(), result });
                    return;
                }
            }
        }
    }

    /// What `GET /v1/peer/replica` serves and `supervise::copy` imports:
    /// the source's rows of the subtree from one snapshot, with its marks.
    fn copy_replica(&mut self, site: &str, pattern: &str, source: &str) -> Result<Copied, String> {
        if self.down.contains(source) {
            return Err(format!("cannot reach {source}"));
        }
        let p = pattern.to_string();
        let source_name = source.to_string();
        let (marks, rows) = self
            .store(source)
            .read_blocking(move |v| {
                let Some(row) = v.monitors()?.into_iter().find(|m| m.pattern == p && m.state == MonitorState::Complete)
                else {
                    return Ok(None);
                };
                let marks = replica_marks(v, &source_name, &row)?;
                let mut rows = Vec::new();
                v.history_under(&p, |channel, field, h| {
                    rows.push(import(channel, field, h.time_us, h.value, h.expires_at_us, h.source, true, false));
                    Ok(true)
                })?;
                v.tuples_under(&p, |t| {
                    rows.push(import(&t.channel, &t.field, t.time_us, t.value, t.expires_at_us, t.source, false, true));
                    Ok(true)
                })?;
                Ok(Some((marks, rows)))
            })
            .expect("replica")
            .ok_or_else(|| format!("{source} refused the replica: it has no complete monitor of {pattern}"))?;
        let n = rows.len() as u64;
        for chunk in rows.chunks(pepper_storage::limits::BATCH_RECORDS_MAX) {
            self.store(site).append_blocking(chunk.to_vec()).map_err(|e| format!("cannot import rows: {e}"))?;
        }
        self.appended(site);
        Ok(Copied { marks, rows: n })
    }

    fn stop_monitor(&self, site: &str, pattern: &str, reason: &str, guard: Option<u64>) -> StopResult {
        let store = self.store(site);
        if let Some(started_seq) = guard {
            let rows = store.read_blocking(|v| v.monitors()).expect("monitors");
            let same = rows
                .iter()
                .any(|r| r.pattern == pattern && r.state == MonitorState::Importing && r.started_seq == started_seq);
            if !same {
                return StopResult::NotSame;
            }
        }
        match self.rt.block_on(store.monitor_stop(pattern, reason)) {
            Ok(_) => StopResult::Stopped,
            Err(pepper_storage::Error::NotFound { .. }) => StopResult::NotFound,
            Err(e) => StopResult::Failed(e.to_string()),
        }
    }

    /// Scenario (e)'s invariants: the live sites run exactly `want` (by
    /// default R) complete monitors of the policy's pattern and none
    /// importing (9), and each of them holds the complete history of every
    /// channel, in order, once each (10); a channel whose publisher is down
    /// need only be a prefix.
    fn check_recorders(&self, want: Option<usize>) -> Result<(), String> {
        let Some((pattern, r)) = self.policy.clone() else { return Ok(()) };
        let mut complete = Vec::new();
        for site in self.sites.keys().filter(|s| !self.down.contains(*s)) {
            let rows = self.store(site).read_blocking(|v| v.monitors()).expect("monitors");
            for row in rows.iter().filter(|row| row.pattern == pattern) {
                match row.state {
                    MonitorState::Complete => complete.push(site.clone()),
                    MonitorState::Importing => return Err(format!("9: {site} is still importing {pattern}")),
                    MonitorState::Stopped => {}
                }
            }
        }
        let want = want.unwrap_or(r);
        if complete.len() != want {
            return Err(format!("9: {complete:?} record {pattern}, not {want} sites"));
        }
        for site in &complete {
            let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let p = pattern.clone();
            let history = self
                .store(site)
                .read_blocking(move |v| {
                    let mut rows = Vec::new();
                    v.history_under(&p, |channel, _, h| {
                        rows.push((channel.to_string(), h.value));
                        Ok(true)
                    })?;
                    Ok(rows)
                })
                .expect("history");
            for (channel, value) in history {
                got.entry(channel).or_default().push(value);
            }
            for (channel, (publisher, values)) in &self.recorded {
                let have = got.get(channel).cloned().unwrap_or_default();
                let whole = !self.down.contains(publisher);
                let ok = if whole { have == *values } else { values.starts_with(&have) };
                if !ok {
                    let missing = values.iter().filter(|v| !have.contains(v)).count();
                    return Err(format!(
                        "10: {site}'s history of {channel} has {} of {} values ({missing} missing; first: {:?} / {:?})",
                        have.len(),
                        values.len(),
                        have.iter().take(3).collect::<Vec<_>>(),
                        values.iter().take(3).collect::<Vec<_>>()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Some live complete replica holds every recorded value that starts
    /// with `prefix`.
    fn check_kept(&self, prefix: &str) -> Result<(), String> {
        let (pattern, _) = self.policy.clone().expect("supervise first");
        let want: Vec<String> =
            self.recorded.values().flat_map(|(_, v)| v.iter().filter(|v| v.starts_with(prefix)).cloned()).collect();
        for site in self.sites.keys().filter(|s| !self.down.contains(*s)) {
            if self.store(site).monitor_state(&pattern) != Some(MonitorState::Complete) {
                continue;
            }
            let p = pattern.clone();
            let have: BTreeSet<String> = self
                .store(site)
                .read_blocking(move |v| {
                    let mut values = BTreeSet::new();
                    v.history_under(&p, |_, _, h| {
                        values.insert(h.value);
                        Ok(true)
                    })?;
                    Ok(values)
                })
                .expect("history");
            if want.iter().all(|w| have.contains(w)) {
                return Ok(());
            }
        }
        Err(format!("no live complete replica holds the {} values {prefix}*", want.len()))
    }

    fn publish_many(&mut self, site: &str, channel: &str, prefix: &str, count: usize) {
        let store = self.store(site).clone();
        let first = store.last_seq() + 1;
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
        for chunk in names.chunks(100) {
            store.append_blocking(chunk.iter().map(|n| event(channel, n)).collect()).expect("publish");
        }
        let published = self.published.entry(site.into()).or_default();
        for (i, name) in names.into_iter().enumerate() {
            published.push((first + i as u64, channel.into(), name));
        }
        self.log(format!("publish {site} {channel} {prefix}0..{prefix}{count} -> seqs {first}..={}", store.last_seq()));
        self.appended(site);
    }

    fn open_stream(&mut self, site: &str, name: &str, sub: Subscriber, from: u64, rest: &[&str]) {
        let capacity = match rest {
            [] => 1024,
            ["buffer", n] => n.parse().expect("buffer"),
            _ => panic!("a stream takes `buffer N`, not {rest:?}"),
        };
        assert!(capacity >= 2, "a buffer has at least one slot for events and one for the lease's end");
        assert!(!sub.pattern.as_str().contains('*'), "`expected_meaning` reads patterns as prefixes");
        self.log(format!("{name} opens on {site} {} from {from}", sub.pattern.as_str()));
        let stream = Stream {
            site: site.into(),
            sub,
            start: from,
            phase: Phase::CatchUp { next: from },
            id: 0,
            buffer: VecDeque::new(),
            capacity,
            detached: None,
            got: Vec::new(),
            ended: None,
        };
        self.streams.insert(name.into(), stream);
        self.dispatchers.entry(site.into()).or_default();
        self.work_at.get_or_insert(self.now + Duration::from_millis(1));
    }

    /// Whether a dispatcher or a stream has work: time need not tick for
    /// them otherwise (a script command that writes wakes them).
    fn busy(&self) -> bool {
        let dispatching = self
            .dispatchers
            .iter()
            .any(|(site, d)| !d.joins.is_empty() || d.next.is_some_and(|n| n <= self.store(site).last_seq()));
        let streaming = self.streams.values().any(|s| match s.phase {
            Phase::Live => !s.buffer.is_empty() || s.detached.is_some(),
            Phase::Ended => false,
            _ => true,
        });
        dispatching || streaming
    }

    fn record(&self, site: &str, seq: u64) -> Option<Record> {
        self.store(site).read_blocking(move |v| v.records(seq, seq, 1)).expect("read").pop()
    }

    /// One work tick: each dispatcher and each open stream, in an order the
    /// seed draws, does up to four units of work (a record read, a join
    /// handled, a buffered item taken).
    fn work(&mut self) {
        let mut actors: Vec<(bool, String)> = self.dispatchers.keys().map(|s| (true, s.clone())).collect();
        actors.extend(self.streams.iter().filter(|(_, s)| s.phase != Phase::Ended).map(|(n, _)| (false, n.clone())));
        for i in (1..actors.len()).rev() {
            actors.swap(i, self.rng.gen_range(0..=i));
        }
        for (dispatcher, name) in actors {
            let units = self.rng.gen_range(0..=4);
            if dispatcher {
                self.dispatcher_work(&name, units);
            } else {
                self.stream_work(&name, units);
            }
        }
    }

    fn dispatcher_work(&mut self, site: &str, units: usize) {
        let joins_at = self.rng.gen_range(0..=units);
        for unit in 0..=units {
            if unit == joins_at {
                self.handle_joins(site);
            }
            let d = self.dispatchers.get(site).unwrap();
            let Some(next) = d.next.filter(|n| unit < units && *n <= self.store(site).last_seq()) else { continue };
            let record = self.record(site, next).expect("the dispatcher's next record");
            let mut out = Vec::new();
            let d = self.dispatchers.get_mut(site).unwrap();
            d.machine.step(DispatchInput::Record { seq: next, record: routed(&record) }, &mut out);
            d.next = Some(next + 1);
            self.carry_out_dispatch(site, out);
        }
        let d = self.dispatchers.get_mut(site).unwrap();
        if d.machine.is_empty() {
            d.next = None;
        }
    }

    fn handle_joins(&mut self, site: &str) {
        let joins = std::mem::take(&mut self.dispatchers.get_mut(site).unwrap().joins);
        let last_seq = self.store(site).last_seq();
        for name in joins {
            let id = self.next_subscriber;
            self.next_subscriber += 1;
            let d = self.dispatchers.get_mut(site).unwrap();
            let position = *d.next.get_or_insert(last_seq + 1);
            let stream = self.streams.get_mut(&name).unwrap();
            let Phase::Joining { next } = stream.phase else { panic!("{name} joins from {:?}", stream.phase) };
            let mut out = Vec::new();
            d.machine.step(DispatchInput::Join { id, subscriber: stream.sub.clone(), from: next, position }, &mut out);
            assert!(out.is_empty(), "a join does nothing else");
            stream.id = id;
            stream.phase = if position > next { Phase::Gap { next, live_from: position } } else { Phase::Live };
            self.log(format!("{name} joins at {next}, the dispatcher at {position}"));
        }
    }

    fn stream_of(&mut self, id: SubscriberId) -> Option<&mut Stream> {
        self.streams.values_mut().find(|s| s.id == id)
    }

    fn carry_out_dispatch(&mut self, site: &str, actions: Vec<DispatchAction>) {
        for action in actions {
            match action {
                DispatchAction::Deliver { id, seq } => {
                    let stream = self.stream_of(id).expect("a live stream");
                    if stream.buffer.len() + 1 < stream.capacity {
                        stream.buffer.push_back(Item::Event(seq));
                    } else {
                        let mut out = Vec::new();
                        let input = DispatchInput::Refused { id, seq, why: Detach::Full };
                        self.dispatchers.get_mut(site).unwrap().machine.step(input, &mut out);
                        self.carry_out_dispatch(site, out);
                    }
                }
                DispatchAction::End { id, seq, .. } => {
                    self.stream_of(id).expect("a live stream").buffer.push_back(Item::End(seq));
                }
                DispatchAction::Detach { id, at, why } => {
                    self.stream_of(id).expect("a live stream").detached = Some(at);
                    self.log(format!("subscriber {id} detached ({why:?}), resumes at {at}"));
                }
                DispatchAction::Unroutable { seq } => panic!("seq {seq} is unroutable"),
            }
        }
    }

    fn stream_work(&mut self, name: &str, units: usize) {
        for _ in 0..units {
            let stream = self.streams.get_mut(name).unwrap();
            let site = stream.site.clone();
            let last_seq = self.sites[&site].last_seq();
            match stream.phase {
                Phase::CatchUp { next } if should_join((last_seq + 1).saturating_sub(next)) => {
                    stream.phase = Phase::Joining { next };
                    self.dispatchers.get_mut(&site).unwrap().joins.push(name.into());
                    return;
                }
                Phase::Joining { .. } | Phase::Ended => return,
                Phase::CatchUp { next } | Phase::Gap { next, .. } => {
                    if let Phase::Gap { live_from, .. } = stream.phase {
                        if next >= live_from {
                            stream.phase = Phase::Live;
                            continue;
                        }
                    }
                    let Some(record) = self.record(&site, next) else { return };
                    let stream = self.streams.get_mut(name).unwrap();
                    match &mut stream.phase {
                        Phase::CatchUp { next } | Phase::Gap { next, .. } => *next += 1,
                        _ => unreachable!(),
                    }
                    match stream.sub.meaning(record.seq, &routed(&record)) {
                        Meaning::Deliver => stream.got.push(record.seq),
                        Meaning::LeaseEnded(_) => {
                            stream.ended = Some(record.seq);
                            stream.phase = Phase::Ended;
                        }
                        Meaning::Nothing => {}
                    }
                }
                Phase::Live => match stream.buffer.pop_front() {
                    Some(Item::Event(seq)) => stream.got.push(seq),
                    Some(Item::End(seq)) => {
                        stream.ended = Some(seq);
                        stream.phase = Phase::Ended;
                    }
                    None => {
                        let Some(at) = stream.detached.take() else { return };
                        // The client reconnects with the position it was given.
                        stream.phase = Phase::CatchUp { next: at };
                        self.log(format!("{name} resumes from {at}"));
                    }
                },
            }
        }
    }

    /// What stream `name` must deliver: every record from its start that
    /// it wants ([`expected_meaning`]), up to its lease's end; and that end.
    fn stream_expected(&self, name: &str) -> (Vec<u64>, Option<u64>) {
        let stream = &self.streams[name];
        let records =
            self.store(&stream.site).read_blocking(|v| v.records(stream.start, u64::MAX, 1_000_000)).expect("records");
        let mut events = Vec::new();
        for r in &records {
            match expected_meaning(&stream.sub, r) {
                Meaning::Deliver => events.push(r.seq),
                Meaning::LeaseEnded(_) => return (events, Some(r.seq)),
                Meaning::Nothing => {}
            }
        }
        (events, None)
    }

    /// The payloads of the events stream `name` delivered.
    fn stream_names(&self, name: &str) -> Vec<String> {
        let stream = &self.streams[name];
        stream
            .got
            .iter()
            .map(|seq| match self.record(&stream.site, *seq).map(|r| r.body) {
                Some(Body::Event(e)) => String::from_utf8(e.payload).unwrap(),
                other => panic!("{name} delivered {other:?} at {seq}"),
            })
            .collect()
    }

    /// `expect stream NAME: E1 E2.. [ended]` (exactly these events, and the
    /// lease's end if `ended`), or `expect stream NAME count N`.
    fn expect_stream(&self, name: &str, want: &[&str]) {
        let name = name.trim_end_matches(':');
        let stream = &self.streams[name];
        match want {
            ["count", n] => {
                assert_eq!(stream.got.len(), n.parse::<usize>().unwrap(), "{name}\n{}", self.trace.join("\n"));
            }
            _ => {
                let (events, ended) = match want.split_last() {
                    Some((&"ended", events)) => (events, true),
                    _ => (want, false),
                };
                let got = self.stream_names(name);
                assert_eq!(got, events, "{name}\n{}", self.trace.join("\n"));
                assert_eq!(stream.ended.is_some(), ended, "{name}'s end\n{}", self.trace.join("\n"));
            }
        }
    }

    /// Checks the stream invariants (see the header): what each stream
    /// delivered is a prefix of what it must deliver; all of it once
    /// `settled`.
    fn check_streams(&self, settled: bool) -> Result<(), String> {
        for (name, stream) in &self.streams {
            let (events, end) = self.stream_expected(name);
            if stream.got.len() > events.len() || stream.got[..] != events[..stream.got.len()] {
                let at = stream.got.iter().zip(&events).position(|(g, e)| g != e).unwrap_or(events.len());
                return Err(format!(
                    "7: {name} delivered {:?} where it must deliver {:?} (from its {at}th event)",
                    &stream.got[at..stream.got.len().min(at + 5)],
                    &events[at..events.len().min(at + 5)]
                ));
            }
            if stream.ended.is_some() && stream.ended != end {
                return Err(format!("7: {name} ended at {:?}, its lease at {end:?}", stream.ended));
            }
            if settled && (stream.got.len() != events.len() || stream.ended != end) {
                return Err(format!(
                    "8: {name} delivered {} of {} events (ended {:?} of {end:?}) and the run settled",
                    stream.got.len(),
                    events.len(),
                    stream.ended
                ));
            }
        }
        Ok(())
    }

    fn close(self) {
        for (_, store) in self.sites {
            store.close();
        }
    }
}

/// What a record means to a stream by the documented rules (docs/api.md),
/// written out apart from `Subscriber::meaning`, the code under test, so
/// that invariants 7 and 8 check the routing as well as the handoff. The
/// scripts' patterns have no `*`: a pattern covers the channels that start
/// with it.
fn expected_meaning(sub: &Subscriber, r: &Record) -> Meaning {
    let covers = |channel: &str| channel.starts_with(sub.pattern.as_str());
    let after_grant = r.seq > sub.granted_seq;
    match &r.body {
        Body::Event(e) => {
            let typed = sub.types.is_empty() || sub.types.contains(&e.event_type) || e.event_type == GAP_TYPE;
            let admitted = sub.holder.as_ref().is_none_or(|h| {
                e.to.service.as_ref().is_none_or(|s| *s == h.service)
                    && e.to.instance.as_ref().is_none_or(|i| *i == h.instance)
            });
            let assigned = match (&sub.group, &sub.lease) {
                (Some(_), Some(lease)) if e.distribution == Distribution::One => {
                    after_grant && e.assigned.contains(lease)
                }
                _ => true,
            };
            if covers(&e.channel) && typed && admitted && assigned {
                Meaning::Deliver
            } else {
                Meaning::Nothing
            }
        }
        Body::TupleExpire(t) | Body::TupleDelete(t) if sub.tuples && covers(&t.channel) => Meaning::Deliver,
        Body::LeaseRelease(end) if after_grant && sub.lease.as_ref() == Some(&end.id) => {
            Meaning::LeaseEnded(pepper_router::EndReason::Released)
        }
        Body::LeaseExpire(end) if after_grant && sub.lease.as_ref() == Some(&end.id) => {
            Meaning::LeaseEnded(pepper_router::EndReason::Expired)
        }
        _ => Meaning::Nothing,
    }
}

#[allow(clippy::too_many_arguments)]
fn import(
    channel: &str,
    field: &str,
    time_us: u64,
    value: String,
    expires_at_us: Option<u64>,
    source: Party,
    history: bool,
    latest: bool,
) -> Body {
    Body::TupleImport(TupleImport {
        channel: channel.into(),
        field: field.into(),
        value,
        time_us,
        expires_at_us,
        source,
        history,
        latest,
    })
}

/// Runs a script and checks the invariants once it is done; returns the trace.
fn run_script(seed: u64, text: &str) -> Vec<String> {
    let mut sim = Sim::new(seed);
    sim.script(text);
    let checked = sim
        .check(sim.partitions.is_empty())
        .and_then(|()| sim.check_streams(true))
        .and_then(|()| sim.check_recorders(None));
    if let Err(e) = checked {
        panic!("seed {seed}: invariant {e}\n{text}\n{}", sim.trace.join("\n"));
    }
    let trace = std::mem::take(&mut sim.trace);
    sim.close();
    trace
}

#[test]
fn c_forwarding_across_a_partition_that_heals_loses_and_repeats_nothing() {
    let trace = run_script(1, PARTITION_HEALS);
    assert!(trace.iter().any(|l| l.contains("lost to the partition")), "the partition was felt");
}

/// (b) Anycast `one` across a member's release: each event goes to exactly
/// one live member, round robin, and none to a released one.
#[test]
fn b_anycast_one_moves_to_the_remaining_members_after_a_release() {
    run_script(3, include_str!("sim/anycast_release.sim"));
}

/// (a) Catch-up to live handoff: streams that start behind the head, at
/// it, and one whose buffer overflows, each deliver every event they want
/// once, in order, across catch-up, the gap, live delivery and a resume.
#[test]
fn a_catch_up_hands_off_to_live_with_no_gap_and_no_duplicate() {
    let trace = run_script(5, include_str!("sim/catch_up_handoff.sim"));
    let joins = trace.iter().filter(|l| l.contains(" joins at ")).count();
    assert!(joins >= 4, "every stream joined, s2 twice:\n{}", trace.join("\n"));
    assert!(trace.iter().any(|l| l.contains("detached (Full)")), "s2 overflowed");
    // A join whose cursor is behind the dispatcher reads the gap itself.
    let gap = trace.iter().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let n = |s: &str| s.trim_end_matches(',').parse::<u64>().ok();
        matches!(w[..], [_, _, "joins", "at", from, _, _, "at", at] if n(from) < n(at))
    });
    assert!(gap, "a stream read a gap between its cursor and the dispatcher:\n{}", trace.join("\n"));
}

#[test]
fn d_a_gap_marker_covers_exactly_what_retention_trimmed() {
    let trace = run_script(1, GAP_AFTER_RETENTION);
    assert!(trace.iter().any(|l| l.contains("gap #")), "a gap was sent");
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let a = run_script(7, PARTITION_HEALS);
    let b = run_script(7, PARTITION_HEALS);
    assert_eq!(a, b);
    let c = run_script(8, PARTITION_HEALS);
    assert_ne!(a, c, "the seed drives delays and drops");
}

/// A random scenario (c): two or three sites, random interests, publishes,
/// partitions and heals, a lossy network; healed and settled at the end.
fn random_scenario(seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let names = ["a", "b", "c"];
    let n = rng.gen_range(2..=3);
    let sites = &names[..n];
    let channels = ["/x/", "/x/deep/", "/y/", "/y/h1/"];
    let mut s = String::new();
    for site in sites {
        s += &format!("site {site}\n");
    }
    let drop = [0.0, 0.1, 0.3][rng.gen_range(0..3)];
    s += &format!("network delay 1ms {}ms drop {drop}\n", rng.gen_range(2..400));
    for site in sites {
        s += &format!("interest {site} {}\n", ["/x/", "/y/*/", "/"][rng.gen_range(0..3)]);
    }
    s += "run 1s\n";
    let mut cut = BTreeSet::new();
    for i in 0..rng.gen_range(5..25) {
        let (a, b) = (sites[rng.gen_range(0..n)], sites[rng.gen_range(0..n)]);
        match rng.gen_range(0..10) {
            0 if a != b => {
                s += &format!("partition {a} {b}\n");
                cut.insert(pair(a, b));
            }
            1 if a != b => {
                s += &format!("heal {a} {b}\n");
                cut.remove(&pair(a, b));
            }
            2 => s += &format!("run {}ms\n", rng.gen_range(1..8000)),
            _ => s += &format!("publish {a} {} {a}{i}\n", channels[rng.gen_range(0..channels.len())]),
        }
    }
    for (a, b) in cut {
        s += &format!("heal {a} {b}\n");
    }
    s += "run 300s\n";
    s
}

/// A random scenario (e): three to five sites supervising `/fleet/` with R
/// of 1 to 3, site `a` publishing updates in bursts once the first monitor
/// is complete, other sites killed and restarted at random (`kill any`:
/// never below R live sites, never the last live complete recorder), then
/// a quiet minute.
fn random_recorders_scenario(seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xf1911);
    let names = ["a", "b", "c", "d", "e"];
    let n = rng.gen_range(3..=5);
    let r = rng.gen_range(1..=3.min(n - 1));
    let mut s = String::new();
    for site in &names[..n] {
        s += &format!("site {site}\n");
    }
    s += &format!("network delay 1ms {}ms drop 0.0\n", rng.gen_range(2..100));
    // Updates are recorded from the first complete monitor on.
    s += &format!("supervise /fleet/ {r}\nrun {}ms\n", rng.gen_range(15_000..20_000));
    for i in 0..rng.gen_range(4..16) {
        match rng.gen_range(0..6) {
            0 => s += "kill any\n",
            1 => s += "restart any\n",
            2 | 3 => s += &format!("run {}ms\n", rng.gen_range(1..15_000)),
            _ => s += &format!("record-many a /fleet/h{}/ v{i}x {}\n", rng.gen_range(0..3), rng.gen_range(1..30)),
        }
    }
    s += "run 60s\n";
    s
}

#[test]
fn e_a_killed_recorder_is_replaced_with_the_complete_history() {
    let trace = run_script(11, include_str!("sim/recorder_killed.sim"));
    let kills = trace.iter().filter(|l| matches!(l.split_whitespace().collect::<Vec<_>>()[..], [_, "kill", _])).count();
    let copies = trace.iter().filter(|l| l.contains(" copies /fleet/ from ") && l.contains(": Ok(")).count();
    assert_eq!(kills, 2, "{}", trace.join("\n"));
    assert!(copies >= 2, "each replacement copied a surviving replica:\n{}", trace.join("\n"));
}

#[test]
fn f_a_returning_recorder_makes_a_surplus_and_exactly_one_stops() {
    let trace = run_script(13, include_str!("sim/surplus_stop.sim"));
    let back = trace.iter().position(|l| l.contains(" restart ")).expect("a restart");
    let stops: Vec<&String> = trace[back..].iter().filter(|l| l.contains(" stops /fleet/")).collect();
    assert_eq!(stops.len(), 1, "one surplus monitor stopped after the restart:\n{}", trace.join("\n"));
    assert!(stops[0].contains("more than 2"), "{}", stops[0]);
}

/// A surplus victim must not stop because of a replica that has just died
/// (`stop_rule_race.sim`): it stops only after hearing, after its decision,
/// enough other complete replicas to leave R. Under the earlier rule, which
/// counted a replica until it had been silent for `DEAD_AFTER_INTERVALS`,
/// this script lost the only copy of the w values on every seed tried.
#[test]
fn a_surplus_victim_keeps_its_rows_when_the_other_replica_dies() {
    // Seeds whose first recorder is not the publisher (`kill recorder`
    // spares publishers).
    for seed in [0, 1, 2, 5, 9, 13, 15, 16, 17, 18, 19] {
        // Not `run_script`: with R = 1, what only X held is gone with X in
        // any case; the script checks what Y held.
        let mut sim = Sim::new(seed);
        sim.script(include_str!("sim/stop_rule_race.sim"));
        sim.close();
    }
}

#[test]
fn a_thousand_random_kills_keep_r_complete_replicas() {
    let started = Instant::now();
    let mut felt = [0usize; 3];
    for seed in 0..1000 {
        let trace = run_script(seed, &random_recorders_scenario(seed));
        let kill = |l: &String| matches!(l.split_whitespace().collect::<Vec<_>>()[..], [_, "kill", _]);
        felt[0] += trace.iter().filter(|l| kill(l)).count();
        felt[1] += trace.iter().filter(|l| l.contains(" copies /fleet/ from ") && l.contains(": Ok(")).count();
        felt[2] += trace.iter().filter(|l| l.contains(" completes /fleet/: Ok(")).count();
    }
    eprintln!("1000 random runs of (e) took {:?}; kills, copies, completions: {felt:?}", started.elapsed());
    assert!(felt.iter().all(|&n| n > 300), "the runs killed, copied and completed: {felt:?}");
}

/// A random scenario (a): one site, a log of up to 900 records, up to four
/// streams (watches from the start, from the head or from the middle, and
/// lease streams whose lease may end), small and default buffers, and
/// publishes arriving in bursts while they catch up.
fn random_streams_scenario(seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xa11ce);
    let channels = ["/x/", "/x/deep/", "/y/", "/x/deep/er/"];
    let patterns = ["/x/", "/x/deep/", "/", "/y/"];
    let mut s = String::from("site a\n");
    let burst = |s: &mut String, rng: &mut StdRng, i: usize| {
        let channel = channels[rng.gen_range(0..channels.len())];
        *s += &format!("publish-many a {channel} p{i}x {}\n", rng.gen_range(1..400));
    };
    for i in 0..rng.gen_range(0..3) {
        burst(&mut s, &mut rng, i);
    }
    let mut leases = Vec::new();
    for n in 0..rng.gen_range(1..=4) {
        let buffer = if rng.gen_bool(0.5) { format!(" buffer {}", rng.gen_range(2..40)) } else { String::new() };
        let pattern = patterns[rng.gen_range(0..patterns.len())];
        match rng.gen_range(0..4) {
            0 => s += &format!("watch a s{n} {pattern} from 1{buffer}\n"),
            1 => s += &format!("watch a s{n} {pattern} from head{buffer}\n"),
            2 => s += &format!("watch a s{n} {pattern} from {}{buffer}\n", rng.gen_range(1..1200)),
            _ => {
                s += &format!("lease a l{n} {pattern}\nstream a s{n} lease l{n}{buffer}\n");
                leases.push(n);
            }
        }
    }
    for i in 10..rng.gen_range(10..30) {
        match rng.gen_range(0..6) {
            0 | 1 => s += &format!("run {}ms\n", rng.gen_range(1..50)),
            2 if !leases.is_empty() => s += &format!("release a l{}\n", leases.remove(0)),
            3 => s += &format!("publish a {} one{i}\n", channels[rng.gen_range(0..channels.len())]),
            _ => burst(&mut s, &mut rng, i),
        }
    }
    s += "run 10s\n";
    s
}

#[test]
fn a_thousand_random_streams_deliver_every_event_once_in_order() {
    let started = Instant::now();
    let mut felt = [0usize; 3];
    for seed in 0..1000 {
        let trace = run_script(seed, &random_streams_scenario(seed));
        for (n, what) in felt.iter_mut().zip([" joins at ", "detached (Full)", "release a "]) {
            *n += trace.iter().filter(|l| l.contains(what)).count();
        }
    }
    eprintln!("1000 random runs of (a) took {:?}; joins, overflows, releases: {felt:?}", started.elapsed());
    assert!(felt.iter().all(|&n| n > 100), "the runs joined, overflowed and released: {felt:?}");
}

#[test]
fn a_thousand_random_partitions_heal_without_loss_or_duplicate() {
    let started = Instant::now();
    let mut felt = [0usize; 4];
    for seed in 0..1000 {
        let trace = run_script(seed, &random_scenario(seed));
        for (n, what) in felt.iter_mut().zip(["delivered", "dropped", "lost to the partition", "publish"]) {
            *n += trace.iter().filter(|l| l.contains(what)).count();
        }
    }
    eprintln!(
        "1000 random runs of (c) took {:?}; deliveries, drops, partition losses, publishes: {felt:?}",
        started.elapsed()
    );
    // The runs did forward, and the network did misbehave.
    assert!(felt.iter().all(|&n| n > 1000), "{felt:?}");
}
