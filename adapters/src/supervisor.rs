//! Supervisors: keep R recording replicas of each channel subtree in the
//! recording policy, across sites, history included (the paper's PLDB
//! supervisors and its Figure 11).
//!
//! **Policy.** A recording policy is a set of subtree patterns, each with a
//! replication factor R (`--record /example.com/node/=2`, the config file,
//! or `PUT /v1/recording/policies`; kept in the store's documents under
//! [`POLICY_DOC_PREFIX`]). Under a policy pattern a site materializes tuples
//! only while it runs a **monitor** of the pattern (`pepper_storage`'s
//! `recording` module says how the writer decides). Every site should be
//! given the same policy: each supervisor acts on its own.
//!
//! **Announcements.** Every [`SupervisorConfig::interval`] each site
//! publishes a `pepper.monitor` event for every monitor it runs, on
//! `/pepper/monitors/<pattern>`; state changes are events too
//! (`pepper.monitor.start`, `.backfill`, `.complete`, `.stop`, `.failed`),
//! so the handoff can be watched like any channel. Every supervisor holds a
//! standing federation interest in `/pepper/monitors/`, so each site's
//! announcements reach every other site's log, and reads them from its own
//! change feed. A monitor not heard from for [`DEAD_AFTER_INTERVALS`]
//! intervals no longer counts.
//!
//! **Too few** (fewer than R live monitors, counting importing ones): a
//! site without a monitor of the pattern waits a randomized delay, then
//! counts again and starts one if still short. The delay is `interval x
//! (tier + draw)`, tier being 2 if its region already has a monitor of the
//! pattern plus the number of monitors it runs, draw uniform in [0, 1):
//! sites in other regions and sites with fewer monitors fire first, and the
//! others then see the count restored and stand down. That is the
//! placement rule. A site plans no start in its first few intervals, before
//! the others' announcements can have reached it.
//!
//! **Too many** (more than R complete monitors, seen on two evaluations in
//! a row): exactly one stops, the first in this order, which every site
//! computes alike from the same announcements: its region has the most
//! monitors of the pattern; then its site runs the most monitors; then it
//! completed last; then the greatest site name. Only that site acts.
//!
//! **Backfill.** A starting monitor (1) writes its start (clearing any old
//! rows) and holds an interest in the subtree, pushed to the peers that are
//! up; (2) picks a live complete replica Y (up, lowest heartbeat latency);
//! (3) waits for the **cut**: its own forwarder and every other peer's
//! forwarder toward Y have passed the log position they had when they took
//! the new interest (`GET /v1/peer/cut`), so every update Y will not have
//! reaches the new monitor directly; (4) streams Y's rows of the subtree
//! from one snapshot, taken once Y holds the new interest too (`GET
//! /v1/peer/replica`, history then latest values, with Y's per-origin
//! marks) into `tuple.import` records; (5) completes:
//! the updates that arrived meanwhile and are above Y's marks are recorded
//! after the copy, in one batch. Any failure stops the monitor, which the
//! next evaluation may start again. `docs/supervisors.md` has the argument
//! that nothing is lost or recorded twice, and the limits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pepper_storage::{
    now_us, Body, Distribution, DocDelete, DocPut, Event, FeedItem, Filter, Kind, MonitorRow, MonitorState, Party,
    Target, TupleImport,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::federation::{Interest, PeerState, PeerSummary};
use crate::http::AppState;

/// Announcements and handoff events are published under this prefix,
/// followed by the pattern without its leading `/`.
pub const ANNOUNCE_PREFIX: &str = "/pepper/monitors/";
/// Policies are kept in documents under this key prefix, then the pattern.
pub const POLICY_DOC_PREFIX: &str = "pepper/recording/";
/// Time between evaluations and announcements when none is configured.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// A monitor not announced for this many intervals no longer counts.
pub const DEAD_AFTER_INTERVALS: u32 = 3;
/// A complete monitor heard from within this many intervals, though no
/// longer live, keeps a new monitor from starting empty: its history may
/// still be reachable.
pub const LOST_AFTER_INTERVALS: u32 = 30;
/// Evaluations in a row that must see too many replicas before one stops.
pub const SURPLUS_EVALUATIONS: u32 = 2;
/// Patterns one policy may hold.
pub const POLICIES_MAX: usize = 256;
/// The highest replication factor a pattern may ask for.
pub const REPLICAS_MAX: usize = 16;
/// Monitors (pattern, site) the supervisor keeps track of.
pub const SEEN_MAX: usize = 16_384;
/// The longest a backfill waits for the cut before it gives up.
pub const CUT_WAIT_MAX: Duration = Duration::from_secs(10);
/// The longest a replica stream may stay silent.
pub const REPLICA_IDLE_MAX: Duration = Duration::from_secs(10);
/// The longest line of a replica stream: a row with a value at the
/// record limit, escaped.
pub const REPLICA_LINE_BYTES_MAX: usize = 4 * pepper_storage::limits::RECORD_BYTES_MAX;
/// Copied rows per `tuple.import` append.
pub const IMPORT_BATCH_RECORDS: usize = 1000;
/// Bytes of replica stream a serving site buffers before sending.
const REPLICA_CHUNK_BYTES: usize = 64 * 1024;

/// Supervisor settings of a site.
#[derive(Clone, Debug, Default)]
pub struct SupervisorConfig {
    /// Patterns and replication factors from configuration; they replace
    /// stored ones of the same pattern at startup.
    pub policies: Vec<(String, usize)>,
    /// Time between evaluations and announcements ([`INTERVAL_DEFAULT`]
    /// when zero).
    pub interval: Duration,
}

/// What a monitor announcement says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Announcement {
    /// The site running the monitor.
    pub site: String,
    /// Its region.
    #[serde(default)]
    pub region: Option<String>,
    /// The recording pattern.
    pub pattern: String,
    /// `importing`, `complete` or `stopped`.
    pub state: String,
    /// When the monitor reached its state, microseconds since the Unix epoch.
    pub since_us: u64,
    /// Monitors the site runs.
    pub monitors: usize,
}

/// A monitor as announcements show it.
#[derive(Clone, Debug)]
struct Seen {
    state: String,
    region: Option<String>,
    monitors: usize,
    since_us: u64,
    last: Instant,
}

/// Per pattern: whether a start waits for its delay, and the surplus count.
#[derive(Default)]
struct Plan {
    start_planned: bool,
    surplus: u32,
}

/// The last backfill this site ran.
#[derive(Clone, Debug, Serialize)]
struct Backfill {
    pattern: String,
    source: String,
    rows: u64,
    elapsed_ms: f64,
    rows_per_s: f64,
    held_recorded: u64,
}

/// A site's supervisor.
pub struct Supervisor {
    interval: Duration,
    policies: RwLock<BTreeMap<String, usize>>,
    seen: Mutex<BTreeMap<(String, String), Seen>>,
    plans: Mutex<HashMap<String, Plan>>,
    /// Patterns with a start or stop in flight here.
    busy: Mutex<HashSet<String>>,
    last_backfill: Mutex<Option<Backfill>>,
    /// Time to restore each pattern's count, last measured here: from the
    /// first evaluation that saw it short to this site's completion.
    short_since: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a policy entry.
fn check_policy(pattern: &str, replicas: usize) -> Result<(), String> {
    pepper_storage::validate::monitor_pattern(pattern).map_err(|e| e.to_string())?;
    if pattern.starts_with("/pepper/") {
        return Err(format!("{pattern} is under /pepper/, which pepper itself uses"));
    }
    if !(1..=REPLICAS_MAX).contains(&replicas) {
        return Err(format!("replicas must be 1 to {REPLICAS_MAX}, not {replicas}"));
    }
    Ok(())
}

/// Parses `PATTERN=R`.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_policy(text: &str) -> Result<(String, usize), String> {
    let (pattern, r) = text.rsplit_once('=').ok_or_else(|| format!("recording policy {text:?} must be PATTERN=R"))?;
    let replicas = r.parse().map_err(|_| format!("recording policy {text:?}: {r:?} is not a number"))?;
    check_policy(pattern, replicas)?;
    Ok((pattern.to_string(), replicas))
}

impl Supervisor {
    /// The supervisor with the stored policy, `config`'s entries replacing
    /// stored ones, written back and given to the store.
    ///
    /// # Errors
    /// Store errors, or a bad or nesting policy.
    pub async fn load(store: &pepper_storage::Store, config: &SupervisorConfig) -> Result<Supervisor, ApiError> {
        let docs = store.read(|v| v.docs(POLICY_DOC_PREFIX, None, pepper_storage::limits::READ_ROWS_MAX)).await?.items;
        let mut policies = BTreeMap::new();
        for d in docs {
            let pattern = d.key[POLICY_DOC_PREFIX.len()..].to_string();
            let replicas = serde_json::from_slice::<Value>(&d.value)
                .ok()
                .and_then(|v| v["replicas"].as_u64())
                .ok_or_else(|| ApiError::invalid_body(format!("stored recording policy of {pattern} is unreadable")))?;
            policies.insert(pattern, replicas as usize);
        }
        let mut writes = Vec::new();
        for (pattern, replicas) in &config.policies {
            check_policy(pattern, *replicas).map_err(ApiError::invalid_body)?;
            if policies.insert(pattern.clone(), *replicas) != Some(*replicas) {
                writes.push(policy_doc(pattern, *replicas));
            }
        }
        if policies.len() > POLICIES_MAX {
            return Err(ApiError::too_large(format!("{} recording patterns, over {POLICIES_MAX}", policies.len())));
        }
        store.set_recording_policy(policies.keys().cloned().collect())?;
        if !writes.is_empty() {
            store.append(writes).await?;
        }
        let interval = if config.interval.is_zero() { INTERVAL_DEFAULT } else { config.interval };
        Ok(Supervisor::new(interval, policies))
    }

    fn new(interval: Duration, policies: BTreeMap<String, usize>) -> Supervisor {
        Supervisor {
            interval,
            policies: RwLock::new(policies),
            seen: Mutex::new(BTreeMap::new()),
            plans: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            last_backfill: Mutex::new(None),
            short_since: Mutex::new(HashMap::new()),
        }
    }

    /// The interval between evaluations.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn policies(&self) -> BTreeMap<String, usize> {
        self.policies.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The policy pattern covering `channel`, if any.
    pub(crate) fn covering(&self, channel: &str) -> Option<String> {
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        pepper_router::subtrees(channel).find(|p| policies.contains_key(*p)).map(str::to_string)
    }

    /// Live monitors of `pattern` other sites announced: (site, seen).
    fn live(&self, pattern: &str, me: &str) -> Vec<(String, Seen)> {
        self.heard_within(pattern, me, self.interval * DEAD_AFTER_INTERVALS)
    }

    /// A site other than `me` announced a complete monitor of `pattern`
    /// within [`LOST_AFTER_INTERVALS`] intervals.
    fn heard_complete_lately(&self, pattern: &str, me: &str) -> Option<String> {
        let lately = self.heard_within(pattern, me, self.interval * LOST_AFTER_INTERVALS);
        lately.into_iter().find(|(_, s)| s.state == "complete").map(|(site, _)| site)
    }

    /// Monitors of `pattern` on sites other than `me`, announced within `within`.
    fn heard_within(&self, pattern: &str, me: &str, within: Duration) -> Vec<(String, Seen)> {
        lock(&self.seen)
            .range((pattern.to_string(), String::new())..)
            .take_while(|((p, _), _)| p == pattern)
            .filter(|((_, site), s)| site != me && s.last.elapsed() < within)
            .map(|((_, site), s)| (site.clone(), s.clone()))
            .collect()
    }

    /// Takes in one announcement or handoff event.
    fn heard(&self, event_type: &str, a: Announcement) {
        let mut seen = lock(&self.seen);
        let key = (a.pattern.clone(), a.site.clone());
        if matches!(event_type, "pepper.monitor.stop" | "pepper.monitor.failed") || a.state == "stopped" {
            seen.remove(&key);
            return;
        }
        if !seen.contains_key(&key) && seen.len() >= SEEN_MAX {
            // Make room by forgetting the longest silent.
            if let Some(oldest) = seen.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone()) {
                seen.remove(&oldest);
            }
        }
        let s =
            Seen { state: a.state, region: a.region, monitors: a.monitors, since_us: a.since_us, last: Instant::now() };
        seen.insert(key, s);
    }
}

fn policy_doc(pattern: &str, replicas: usize) -> Body {
    Body::DocPut(DocPut {
        key: format!("{POLICY_DOC_PREFIX}{pattern}"),
        value: json!({ "replicas": replicas }).to_string().into_bytes(),
    })
}

/// The channel a pattern's announcements go to.
pub fn announce_channel(pattern: &str) -> String {
    format!("{ANNOUNCE_PREFIX}{}", pattern.trim_start_matches('/'))
}

fn interest(pattern: &str) -> Interest {
    Interest { pattern: pattern.to_string(), types: Vec::new() }
}

/// Registers the standing interests this site holds before its first
/// heartbeat: the announcements, and each running monitor's subtree. A
/// complete monitor must never look uninterested to a peer, or the peer's
/// forwarder would skip updates it records.
///
/// # Errors
/// Store read errors.
pub async fn prepare(state: &AppState) -> Result<(), pepper_storage::Error> {
    let fed = &state.federation;
    fed.add_standing(interest(ANNOUNCE_PREFIX));
    for row in state.store.read(|v| v.monitors()).await? {
        if row.state != MonitorState::Stopped {
            fed.add_standing(interest(&row.pattern));
        }
    }
    Ok(())
}

/// Runs the site's supervisor until shutdown: reads announcements, and
/// every interval announces its monitors and evaluates each pattern.
pub async fn run(state: AppState) {
    tokio::spawn(read_announcements(state.clone()));
    let mut stopping = state.stopping();
    // No start is planned until the other sites' announcements have had
    // time to arrive: peers forward them once they hold this site's
    // interest (its first heartbeats), and a monitor counts as dead only
    // after DEAD_AFTER_INTERVALS silent intervals. A site that planned at
    // once would see no monitor anywhere and start an empty one.
    let heartbeat = if state.federation.enabled() { state.federation.heartbeat() } else { Duration::ZERO };
    let warm_until = Instant::now() + (state.supervisor.interval + heartbeat) * DEAD_AFTER_INTERVALS;
    loop {
        let warm = Instant::now() >= warm_until;
        if let Err(e) = evaluate(&state, warm).await {
            tracing::warn!(error = %e, "supervisor evaluation failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(state.supervisor.interval) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// Follows the local log's announcements (this site's own and those
/// forwarded from peers) into the supervisor's view.
async fn read_announcements(state: AppState) {
    let filter =
        Filter { channel_prefix: Some(ANNOUNCE_PREFIX.to_string()), types: Vec::new(), kinds: vec![Kind::Event] };
    let mut feed = state.store.feed(state.store.last_seq() + 1, filter.clone());
    let mut stopping = state.stopping();
    loop {
        let item = tokio::select! {
            item = feed.next() => item,
            _ = stopping.wait_for(|s| *s) => return,
        };
        match item {
            Ok(FeedItem::Record(r)) => {
                let Body::Event(e) = r.body else { continue };
                match serde_json::from_slice::<Announcement>(&e.payload) {
                    Ok(a) => state.supervisor.heard(&e.event_type, a),
                    Err(err) => tracing::debug!(seq = r.seq, error = %err, "not a monitor announcement"),
                }
            }
            // Announcements are repeated every interval: from the
            // earliest retained record the view fills in again.
            Ok(FeedItem::Compacted { earliest }) => feed = state.store.feed(earliest, filter.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "monitor announcements feed failed; restarting it");
                tokio::time::sleep(state.supervisor.interval).await;
                feed = state.store.feed(state.store.last_seq() + 1, filter.clone());
            }
        }
    }
}

/// One monitor event to publish.
struct Note<'a> {
    event_type: &'a str,
    pattern: &'a str,
    status: &'a str,
    since_us: u64,
    extra: Value,
}

/// Publishes a monitor event of `event_type` about `pattern` on this site.
async fn publish(state: &AppState, event_type: &str, pattern: &str, status: &str, since_us: u64, extra: Value) {
    let monitors = state.store.monitors_running();
    publish_all(state, monitors, vec![Note { event_type, pattern, status, since_us, extra }]).await;
}

/// Publishes monitor events in one append; `monitors` is the number this
/// site runs, as its evaluation counted them.
async fn publish_all(state: &AppState, monitors: usize, notes: Vec<Note<'_>>) {
    if notes.is_empty() {
        return;
    }
    let bodies: Vec<Body> = notes.into_iter().map(|n| Body::Event(monitor_event(state, monitors, n))).collect();
    for chunk in bodies.chunks(pepper_storage::limits::BATCH_RECORDS_MAX) {
        if let Err(e) = state.store.append(chunk.to_vec()).await {
            tracing::warn!(error = %e, "cannot publish monitor events");
        }
    }
}

fn monitor_event(state: &AppState, monitors: usize, n: Note<'_>) -> Event {
    let Note { event_type, pattern, status, since_us, extra } = n;
    let a = Announcement {
        site: state.store.site().to_string(),
        region: state.federation.region().map(str::to_string),
        pattern: pattern.to_string(),
        state: status.to_string(),
        since_us,
        monitors,
    };
    let mut payload = json!(a);
    if let (Some(p), Value::Object(more)) = (payload.as_object_mut(), extra) {
        p.extend(more);
    }
    Event {
        id: crate::envelope::new_event_id(),
        channel: announce_channel(pattern),
        event_type: event_type.to_string(),
        from: Party { service: "pepper".into(), instance: state.store.site().to_string() },
        to: Target::default(),
        distribution: Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        tuple: None,
    }
}

/// One evaluation: announce, then start or stop monitors where the count
/// is off.
async fn evaluate(state: &AppState, warm: bool) -> Result<(), pepper_storage::Error> {
    let sup = &state.supervisor;
    let me = state.store.site().to_string();
    // Busy first: a start or stop that ends after this copy shows in the
    // rows read next, so a fresh completion is never taken for an
    // interrupted import.
    let busy = lock(&sup.busy).clone();
    let rows = state.store.read(|v| v.monitors()).await?;
    let running: BTreeMap<String, MonitorRow> =
        rows.into_iter().filter(|r| r.state != MonitorState::Stopped).map(|r| (r.pattern.clone(), r)).collect();
    // A start or stop in flight announces itself when it is done.
    let notes = running
        .values()
        .filter(|r| !busy.contains(&r.pattern))
        .map(|r| Note {
            event_type: "pepper.monitor",
            pattern: &r.pattern,
            status: r.state.name(),
            since_us: r.time_us,
            extra: json!({}),
        })
        .collect();
    publish_all(state, running.len(), notes).await;
    let policies = sup.policies();
    for (pattern, row) in &running {
        if busy.contains(pattern) {
            continue;
        }
        if !policies.contains_key(pattern) {
            spawn_stop(state, pattern, "no recording policy names it any more".into());
        } else if row.state == MonitorState::Importing {
            // No backfill in flight here: it was cut off by a restart.
            spawn_stop_interrupted(state, pattern, row.started_seq);
        }
    }
    let my_region = state.federation.region().map(str::to_string);
    for (pattern, &replicas) in &policies {
        if busy.contains(pattern) {
            continue;
        }
        let others = sup.live(pattern, &me);
        let mine = running.get(pattern);
        let live = others.len() + usize::from(mine.is_some());
        if live < replicas {
            lock(&sup.short_since).entry(pattern.clone()).or_insert_with(Instant::now);
        } else {
            lock(&sup.short_since).remove(pattern);
        }
        let mut plans = lock(&sup.plans);
        let plan = plans.entry(pattern.clone()).or_default();
        if mine.is_none() {
            plan.surplus = 0;
            if live >= replicas || !warm {
                plan.start_planned = false;
                continue;
            }
            if !plan.start_planned {
                let region_has = others.iter().any(|(_, s)| s.region.is_some() && s.region == my_region);
                let delay = start_delay(sup.interval, region_has, running.len(), rand::random::<f64>());
                plan.start_planned = true;
                let (state, pattern, replicas) = (state.clone(), pattern.clone(), replicas);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    start_if_still_short(&state, &pattern, replicas).await;
                });
            }
            continue;
        }
        plan.start_planned = false;
        let Some(row) = mine.filter(|r| r.state == MonitorState::Complete) else { continue };
        let mut complete: Vec<Candidate> = others
            .iter()
            .filter(|(_, s)| s.state == "complete")
            .map(|(site, s)| Candidate {
                site: site.clone(),
                region: s.region.clone(),
                monitors: s.monitors,
                since_us: s.since_us,
            })
            .collect();
        complete.push(Candidate {
            site: me.clone(),
            region: my_region.clone(),
            monitors: running.len(),
            since_us: row.time_us,
        });
        if complete.len() <= replicas {
            plan.surplus = 0;
            continue;
        }
        plan.surplus += 1;
        if plan.surplus >= SURPLUS_EVALUATIONS && victim(&complete).is_some_and(|v| v == me) {
            plan.surplus = 0;
            drop(plans);
            let reason = format!(
                "{} complete replicas, more than {replicas}: this site is the one the rule stops",
                complete.len()
            );
            spawn_stop(state, pattern, reason);
        }
    }
    Ok(())
}

/// How long a site short of monitors waits before starting one: `interval
/// x (tier + draw)`, where `tier` is 2 if its region has a monitor of the
/// pattern already, plus the monitors it runs, and `draw` is uniform in
/// [0, 1). A site of a lower tier always fires first; within a tier the
/// draw spreads the sites over one interval, far longer than an
/// announcement takes to reach the others, so one fires and the rest see
/// the count restored.
fn start_delay(interval: Duration, region_has: bool, monitors_here: usize, draw: f64) -> Duration {
    let tier = if region_has { 2.0 } else { 0.0 } + monitors_here as f64;
    interval.mul_f64(tier + draw.clamp(0.0, 0.999))
}

/// When a planned start's delay is over: starts the monitor if the
/// pattern is still short and nothing started here meanwhile.
async fn start_if_still_short(state: &AppState, pattern: &str, replicas: usize) {
    let sup = &state.supervisor;
    lock(&sup.plans).entry(pattern.to_string()).or_default().start_planned = false;
    if sup.policies().get(pattern) != Some(&replicas) || state.store.monitor_state(pattern).is_some() {
        return;
    }
    let live = sup.live(pattern, state.store.site()).len();
    if live < replicas {
        spawn_start(state, pattern);
    }
}

/// A complete monitor, for the stop rule.
#[derive(Clone, Debug)]
struct Candidate {
    site: String,
    region: Option<String>,
    monitors: usize,
    since_us: u64,
}

/// The monitor to stop when there are too many: its region has the most
/// monitors of the pattern, then its site runs the most monitors, then it
/// completed last, then the greatest site name.
fn victim(complete: &[Candidate]) -> Option<String> {
    let mut per_region: HashMap<Option<&str>, usize> = HashMap::new();
    for c in complete {
        *per_region.entry(c.region.as_deref()).or_default() += 1;
    }
    complete
        .iter()
        .max_by(|a, b| {
            let in_region = |c: &Candidate| per_region.get(&c.region.as_deref()).copied().unwrap_or(0);
            in_region(a)
                .cmp(&in_region(b))
                .then(a.monitors.cmp(&b.monitors))
                .then(a.since_us.cmp(&b.since_us))
                .then(a.site.cmp(&b.site))
        })
        .map(|c| c.site.clone())
}

/// Marks a pattern busy (a start or stop in flight) until dropped, even if
/// the task panics.
struct Busy {
    state: AppState,
    pattern: String,
}

impl Busy {
    fn take(state: &AppState, pattern: &str) -> Option<Busy> {
        lock(&state.supervisor.busy)
            .insert(pattern.to_string())
            .then(|| Busy { state: state.clone(), pattern: pattern.to_string() })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        lock(&self.state.supervisor.busy).remove(&self.pattern);
    }
}

fn spawn_stop(state: &AppState, pattern: &str, reason: String) {
    let Some(busy) = Busy::take(state, pattern) else { return };
    let pattern = pattern.to_string();
    tokio::spawn(async move {
        stop(&busy.state, &pattern, &reason).await;
        drop(busy);
    });
}

/// Stops an import no backfill runs for, if it is still the same import.
fn spawn_stop_interrupted(state: &AppState, pattern: &str, started_seq: u64) {
    let Some(busy) = Busy::take(state, pattern) else { return };
    let pattern = pattern.to_string();
    tokio::spawn(async move {
        let state = &busy.state;
        let same = state.store.read(|v| v.monitors()).await.is_ok_and(|rows| {
            rows.iter()
                .any(|r| r.pattern == pattern && r.state == MonitorState::Importing && r.started_seq == started_seq)
        });
        if same {
            stop(state, &pattern, "its backfill was interrupted").await;
        }
        drop(busy);
    });
}

async fn stop(state: &AppState, pattern: &str, reason: &str) {
    match state.store.monitor_stop(pattern, reason).await {
        Ok(_) | Err(pepper_storage::Error::NotFound { .. }) => {}
        Err(e) => {
            tracing::warn!(pattern, error = %e, "cannot stop a monitor");
            return;
        }
    }
    state.federation.drop_interest(&interest(pattern));
    tracing::info!(pattern, reason, "monitor stopped");
    publish(state, "pepper.monitor.stop", pattern, "stopped", now_us(), json!({ "reason": reason })).await;
}

fn spawn_start(state: &AppState, pattern: &str) {
    let Some(busy) = Busy::take(state, pattern) else { return };
    let pattern = pattern.to_string();
    tokio::spawn(async move {
        let state = &busy.state;
        let me = state.store.site().to_string();
        let short = state.supervisor.live(&pattern, &me).len();
        let started = Instant::now();
        let reason = format!("{short} live replicas, fewer than the policy's");
        if let Err(e) = state.store.monitor_start(&pattern, &reason).await {
            // Nothing started: leave whatever is there alone.
            tracing::warn!(pattern, error = %e, "cannot start a monitor");
            return;
        }
        if let Err(e) = backfill(state, &pattern, started).await {
            tracing::warn!(pattern, error = %e, "monitor backfill failed");
            match state.store.monitor_stop(&pattern, &format!("backfill failed: {e}")).await {
                Ok(_) => {
                    state.federation.drop_interest(&interest(&pattern));
                    let extra = json!({ "error": e });
                    publish(state, "pepper.monitor.failed", &pattern, "stopped", now_us(), extra).await;
                }
                // Left importing: the next evaluation stops it.
                Err(stop) => tracing::warn!(pattern, error = %stop, "cannot stop a failed monitor"),
            }
        }
        drop(busy);
    });
}

/// Backfills the monitor of `pattern` this site just started.
async fn backfill(state: &AppState, pattern: &str, started: Instant) -> Result<(), String> {
    let sup = &state.supervisor;
    let me = state.store.site().to_string();
    publish(state, "pepper.monitor.start", pattern, "importing", now_us(), json!({})).await;
    // Origins forward the subtree here from now on (held updates).
    state.federation.hold_interest(state, interest(pattern)).await;
    let (marks, source_name, rows) = match choose_source(state, pattern, &me)? {
        None => (Vec::new(), String::new(), 0),
        Some(y) => {
            wait_for_cut(state, &y).await?;
            publish(state, "pepper.monitor.backfill", pattern, "importing", now_us(), json!({ "source": y })).await;
            let (marks, rows) = copy(state, pattern, &y).await?;
            (marks, y, rows)
        }
    };
    let done = state.store.monitor_complete(pattern, &source_name, marks).await.map_err(|e| e.to_string())?;
    if let Err(e) = note_expiries(state, pattern).await {
        tracing::warn!(pattern, error = %e, "cannot index the expiries of a backfilled subtree");
    }
    let elapsed = started.elapsed();
    let backfill = Backfill {
        pattern: pattern.to_string(),
        source: source_name.clone(),
        rows,
        elapsed_ms: elapsed.as_secs_f64() * 1e3,
        rows_per_s: rows as f64 / elapsed.as_secs_f64().max(1e-9),
        held_recorded: done.written().saturating_sub(1),
    };
    let restored_ms = lock(&sup.short_since).remove(pattern).map(|t| t.elapsed().as_secs_f64() * 1e3);
    tracing::info!(pattern, source = %source_name, rows, ms = backfill.elapsed_ms, "monitor complete");
    let extra = json!({ "source": source_name, "rows": rows, "elapsed_ms": backfill.elapsed_ms,
                        "rows_per_s": backfill.rows_per_s, "held_recorded": backfill.held_recorded,
                        "short_for_ms": restored_ms });
    *lock(&sup.last_backfill) = Some(backfill);
    publish(state, "pepper.monitor.complete", pattern, "complete", now_us(), extra).await;
    Ok(())
}

/// The replica to copy from: a live complete monitor on a peer that is up,
/// the lowest heartbeat latency first. `None` only when no complete
/// monitor is announced at all (the first of a new policy); one announced
/// but not up is an error, retried later, so a replica never completes
/// empty while the subtree's history exists elsewhere.
fn choose_source(state: &AppState, pattern: &str, me: &str) -> Result<Option<String>, String> {
    let complete = complete_peers(state, pattern, me);
    if complete.is_empty() {
        // Nothing live: start empty only if no complete replica was heard
        // of lately either (all replicas lost, or a new policy). One heard
        // within LOST_AFTER_INTERVALS may be behind a slow link or a
        // partition: wait for it rather than lose its history.
        if let Some(site) = state.supervisor.heard_complete_lately(pattern, me) {
            return Err(format!("{site} recorded {pattern} lately but is not live now; waiting for a replica"));
        }
        return Ok(None);
    }
    let names: Vec<&str> = complete.iter().map(|p| p.name.as_str()).collect();
    match crate::fanout::by_preference(complete.clone()).into_iter().find(|p| p.state == PeerState::Up) {
        Some(p) => Ok(Some(p.name)),
        None => Err(format!("no complete replica is reachable right now (announced: {})", names.join(", "))),
    }
}

/// The peers announcing a live complete monitor of `pattern`, as the
/// federation knows them (state, latency, url).
fn complete_peers(state: &AppState, pattern: &str, me: &str) -> Vec<PeerSummary> {
    let peers = state.federation.peer_list();
    state
        .supervisor
        .live(pattern, me)
        .into_iter()
        .filter(|(_, s)| s.state == "complete")
        .filter_map(|(site, _)| peers.iter().find(|p| p.name == site).cloned())
        .collect()
}

/// Waits until every update the replica `y` will not have reaches this
/// site directly: this site's forwarder toward `y`, and each peer's that
/// is not down,
/// has passed where that site's log was once it held this site's new
/// interests. A peer that cannot be reached is passed over (it forwards
/// here from its own cursor when it is back).
async fn wait_for_cut(state: &AppState, y: &str) -> Result<(), String> {
    let fed = &state.federation;
    let me = state.store.site().to_string();
    let deadline = Instant::now() + CUT_WAIT_MAX;
    let poll = (state.supervisor.interval / 10).clamp(Duration::from_millis(10), Duration::from_millis(200));
    let mine = state.store.last_seq();
    while fed.cursor_toward(y).is_none_or(|c| c <= mine) {
        if Instant::now() > deadline {
            return Err(format!("this site's forwarder toward {y} did not pass seq {mine} in time"));
        }
        tokio::time::sleep(poll).await;
    }
    let version = fed.interests_version();
    let others: Vec<(String, String)> = fed
        .peer_list()
        .into_iter()
        // Suspect peers too: a slow peer's updates must not slip through.
        .filter(|p| p.name != y && p.name != me && p.state != PeerState::Down)
        .map(|p| (p.name, p.url))
        .collect();
    let waits = others.into_iter().map(|(name, url)| {
        let me = me.clone();
        async move {
            let mut at: Option<u64> = None;
            loop {
                if Instant::now() > deadline {
                    return Err(format!("{name}'s forwarder toward {y} did not reach the cut in time"));
                }
                let answer = fed
                    .client()
                    .get(format!("{url}/v1/peer/cut"))
                    .query(&[("site", me.as_str()), ("toward", y)])
                    .header(axum::http::header::AUTHORIZATION, fed.authorization())
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                let cut: Value = match answer {
                    Ok(res) if res.status().is_success() => res.json().await.map_err(|e| e.to_string())?,
                    Ok(res) => return Err(format!("{name} answered the cut with {}", res.status())),
                    Err(e) if e.is_connect() => {
                        tracing::info!(peer = %name, "unreachable during a backfill's cut; passed over");
                        return Ok(());
                    }
                    Err(_) => {
                        tokio::time::sleep(poll).await;
                        continue;
                    }
                };
                match at {
                    None if cut["interests_version"].as_u64().unwrap_or(0) >= version => {
                        at = cut["seq"].as_u64();
                    }
                    Some(seq) if cut["cursor"].as_u64().is_some_and(|c| c > seq) => return Ok(()),
                    _ => {}
                }
                tokio::time::sleep(poll).await;
            }
        }
    });
    for r in futures_util::future::join_all(waits).await {
        r?;
    }
    Ok(())
}

/// One line of a replica stream.
#[derive(Debug, Serialize, Deserialize)]
enum Line {
    /// First: the serving site, its snapshot's seq and per-origin marks.
    #[serde(rename = "replica")]
    Header { site: String, pattern: String, seq: u64, marks: Vec<(String, u64)> },
    /// A history row.
    #[serde(rename = "h")]
    History(Row),
    /// A latest value.
    #[serde(rename = "l")]
    Latest(Row),
    /// Last: how many rows of each came before.
    #[serde(rename = "end")]
    End { history: u64, latest: u64 },
}

/// channel, field, time_us, value, expires_at_us, service, instance.
type Row = (String, String, u64, String, Option<u64>, String, String);

/// Copies `y`'s rows of `pattern` into tuple imports. Returns y's marks
/// and the rows copied.
async fn copy(state: &AppState, pattern: &str, y: &str) -> Result<(Vec<(String, u64)>, u64), String> {
    use futures_util::StreamExt;
    let fed = &state.federation;
    let url = fed.url_of(y).ok_or_else(|| format!("{y} is not a known peer"))?;
    let me = state.store.site().to_string();
    // Y takes its snapshot only once it holds this site's interest in the
    // subtree: Y's own updates after the snapshot are then forwarded here.
    let version = fed.interests_version().to_string();
    let deadline = Instant::now() + CUT_WAIT_MAX;
    let res = loop {
        let sent = fed
            .client()
            .get(format!("{url}/v1/peer/replica"))
            .query(&[("pattern", pattern), ("site", me.as_str()), ("version", version.as_str())])
            .header(axum::http::header::AUTHORIZATION, fed.authorization())
            .send();
        let res = match tokio::time::timeout(REPLICA_IDLE_MAX, sent).await {
            Err(_) => return Err(format!("{y} did not answer the replica request in {REPLICA_IDLE_MAX:?}")),
            Ok(Err(e)) => return Err(format!("cannot reach {y}: {e}")),
            Ok(Ok(res)) => res,
        };
        if res.status().is_success() {
            break res;
        }
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        let retry = (status == StatusCode::CONFLICT && body.contains("interests_pending"))
            || status == StatusCode::SERVICE_UNAVAILABLE;
        if retry && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        return Err(format!("{y} refused the replica: {status} {body}"));
    };
    let mut stream = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut header: Option<Vec<(String, u64)>> = None;
    let mut batch: Vec<Body> = Vec::with_capacity(IMPORT_BATCH_RECORDS);
    let (mut history, mut latest) = (0u64, 0u64);
    loop {
        let chunk = match tokio::time::timeout(REPLICA_IDLE_MAX, stream.next()).await {
            Err(_) => return Err(format!("{y}'s replica stream was silent for {REPLICA_IDLE_MAX:?}")),
            Ok(None) => return Err(format!("{y}'s replica stream ended before its end line")),
            Ok(Some(Err(e))) => return Err(format!("{y}'s replica stream broke: {e}")),
            Ok(Some(Ok(c))) => c,
        };
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(at) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + at];
            start += at + 1;
            let line: Line = serde_json::from_slice(line).map_err(|e| format!("{y} sent a bad replica line: {e}"))?;
            match line {
                Line::Header { site, pattern: p, marks, .. } if header.is_none() && site == y && p == pattern => {
                    header = Some(marks);
                }
                Line::Header { .. } => return Err(format!("{y} sent an unexpected replica header")),
                Line::History(row) | Line::Latest(row) if header.is_none() => {
                    return Err(format!("{y} sent row {} before its header", row.0))
                }
                Line::History(row) => {
                    history += 1;
                    batch.push(import(row, true, false));
                }
                Line::Latest(row) => {
                    latest += 1;
                    batch.push(import(row, false, true));
                }
                Line::End { history: h, latest: l } => {
                    if (h, l) != (history, latest) {
                        return Err(format!("{y} announced {h}+{l} rows but sent {history}+{latest}"));
                    }
                    flush(state, &mut batch).await?;
                    let marks = header.ok_or_else(|| format!("{y}'s replica stream had no header"))?;
                    return Ok((marks, history + latest));
                }
            }
            if batch.len() >= IMPORT_BATCH_RECORDS {
                flush(state, &mut batch).await?;
            }
        }
        buf.drain(..start);
        if buf.len() > REPLICA_LINE_BYTES_MAX {
            return Err(format!("{y} sent a replica line over {REPLICA_LINE_BYTES_MAX} bytes"));
        }
    }
}

fn import(row: Row, history: bool, latest: bool) -> Body {
    let (channel, field, time_us, value, expires_at_us, service, instance) = row;
    Body::TupleImport(TupleImport {
        channel,
        field,
        value,
        time_us,
        expires_at_us,
        source: Party { service, instance },
        history,
        latest,
    })
}

/// Appends the copied rows.
async fn flush(state: &AppState, batch: &mut Vec<Body>) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    let bodies = std::mem::take(batch);
    state.store.append(bodies).await.map_err(|e| format!("cannot import rows: {e}"))?;
    Ok(())
}

/// Puts the expiries of `pattern`'s latest values, as the completion left
/// them (copied and held updates alike), into the tuple expiry index.
async fn note_expiries(state: &AppState, pattern: &str) -> Result<(), String> {
    let p = pattern.to_string();
    let due = state
        .store
        .read(move |v| {
            let mut due = Vec::new();
            v.tuples_under(&p, |t| {
                if let Some(at) = t.expires_at_us {
                    due.push((crate::pldb::index_key(&t.channel, &t.field), at, t.seq));
                }
                Ok(true)
            })?;
            Ok(due)
        })
        .await
        .map_err(|e| e.to_string())?;
    for (key, at, seq) in due {
        state.tuples.set(&key, at, seq);
    }
    Ok(())
}

/// The query of `GET /v1/peer/replica`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplicaQuery {
    pattern: String,
    /// The site asking, and the version of its interests that includes the
    /// subtree: the snapshot waits until this site holds it.
    site: String,
    version: u64,
}

/// The longest a replica stream may take; a reader slower than that is cut
/// off, so no snapshot is held open for long.
pub const REPLICA_STREAM_TIME_MAX: Duration = Duration::from_secs(600);

/// Replica streams served at once; more get 503.
pub const REPLICA_STREAMS_MAX: usize = 4;

static REPLICA_STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(REPLICA_STREAMS_MAX);

/// `GET /v1/peer/replica?pattern=P`: this site's rows of a subtree it
/// records completely, from one snapshot, as JSON lines: a header with the
/// snapshot's seq and per-origin marks, every history row, every latest
/// value, and an end line with the counts.
pub(crate) async fn replica(
    State(state): State<AppState>,
    query: Result<Query<ReplicaQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::invalid_query(e.body_text()).into_response(),
    };
    if let Err(e) = pepper_storage::validate::monitor_pattern(&q.pattern) {
        return ApiError::invalid_query(e.to_string()).into_response();
    }
    if state.federation.interests_version_of(&q.site) < q.version {
        let message = format!("this site does not hold {}'s interests version {} yet; ask again", q.site, q.version);
        return ApiError::new(StatusCode::CONFLICT, "interests_pending", message).into_response();
    }
    let Ok(permit) = REPLICA_STREAMS.try_acquire() else {
        let message = format!("{REPLICA_STREAMS_MAX} replica streams are being served; ask again");
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message).into_response();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
    let store = state.store.clone();
    let site = store.site().to_string();
    let pattern = q.pattern.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut first = Some(first_tx);
        // A reader that stops reading for REPLICA_IDLE_MAX is dropped, so
        // a stalled peer cannot pin this thread and the snapshot.
        let until = Instant::now() + REPLICA_STREAM_TIME_MAX;
        let send = |item: Result<Vec<u8>, std::io::Error>| {
            Instant::now() < until && handle.block_on(tx.send_timeout(item, REPLICA_IDLE_MAX)).is_ok()
        };
        let result = store.read_blocking(|v| {
            let row = v.monitors()?.into_iter().find(|m| m.pattern == pattern && m.state == MonitorState::Complete);
            let Some(row) = row else {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "not_a_replica",
                        format!("this site has no complete monitor of {pattern}"),
                    )));
                }
                return Ok(());
            };
            if let Some(f) = first.take() {
                let _ = f.send(Ok(()));
            }
            // Per origin, what the rows include: the origin's mark here, or
            // what this site's own backfill copied, whichever is higher.
            let mut marks: BTreeMap<String, u64> = v.origin_marks()?.into_iter().collect();
            for (origin, mark) in row.marks {
                let at = marks.entry(origin).or_insert(0);
                *at = (*at).max(mark);
            }
            marks.insert(site.clone(), v.seq());
            let marks: Vec<(String, u64)> = marks.into_iter().collect();
            let mut out = Vec::with_capacity(REPLICA_CHUNK_BYTES * 2);
            let line = |out: &mut Vec<u8>, l: &Line| -> pepper_storage::Result<bool> {
                serde_json::to_writer(&mut *out, l)
                    .map_err(|e| pepper_storage::Error::Io(std::io::Error::other(e.to_string())))?;
                out.push(b'\n');
                if out.len() >= REPLICA_CHUNK_BYTES {
                    let full = std::mem::replace(out, Vec::with_capacity(REPLICA_CHUNK_BYTES * 2));
                    // The reader hung up or stalled: stop reading.
                    return Ok(send(Ok(full)));
                }
                Ok(true)
            };
            let header = Line::Header { site: site.clone(), pattern: pattern.clone(), seq: v.seq(), marks };
            if !line(&mut out, &header)? {
                return Ok(());
            }
            let (mut history, mut latest) = (0u64, 0u64);
            let mut open = true;
            v.history_under(&pattern, |channel, field, h| {
                history += 1;
                let row = (
                    channel.to_string(),
                    field.to_string(),
                    h.time_us,
                    h.value,
                    h.expires_at_us,
                    h.source.service,
                    h.source.instance,
                );
                open = line(&mut out, &Line::History(row))?;
                Ok(open)
            })?;
            if open {
                v.tuples_under(&pattern, |t| {
                    latest += 1;
                    let row =
                        (t.channel, t.field, t.time_us, t.value, t.expires_at_us, t.source.service, t.source.instance);
                    open = line(&mut out, &Line::Latest(row))?;
                    Ok(open)
                })?;
            }
            if open && line(&mut out, &Line::End { history, latest })? {
                send(Ok(out));
            }
            Ok(())
        });
        if let Err(e) = result {
            match first.take() {
                Some(f) => {
                    let _ = f.send(Err(ApiError::from(e)));
                }
                // Cut the stream short: the reader sees no end line.
                None => {
                    send(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    });
    match first_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "replica reader failed")
                .into_response()
        }
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/x-ndjson"));
    response
}

/// `GET /v1/recording`: the policy, what this site sees of each pattern's
/// monitors, and its own monitors.
pub(crate) async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let sup = &state.supervisor;
    let me = state.store.site().to_string();
    let rows = state.store.read(|v| v.monitors()).await?;
    let mut policies = Vec::new();
    for (pattern, replicas) in sup.policies() {
        let mut monitors: Vec<Value> = sup
            .live(&pattern, &me)
            .into_iter()
            .map(|(site, s)| {
                json!({ "site": site, "region": s.region, "state": s.state,
                        "heard_ms_ago": s.last.elapsed().as_millis() as u64 })
            })
            .collect();
        if let Some(r) = rows.iter().find(|r| r.pattern == pattern && r.state != MonitorState::Stopped) {
            monitors.push(json!({ "site": me, "region": state.federation.region(), "state": r.state.name(),
                                  "heard_ms_ago": 0 }));
        }
        let complete = monitors.iter().filter(|m| m["state"] == "complete").count();
        policies.push(json!({ "pattern": pattern, "replicas": replicas, "live": monitors.len(),
                              "complete": complete, "monitors": monitors }));
    }
    let local: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({ "pattern": r.pattern, "state": r.state.name(), "seq": r.seq,
                    "since": crate::envelope::rfc3339_us(r.time_us), "started_seq": r.started_seq,
                    "source": r.source, "marks": r.marks, "reason": r.reason })
        })
        .collect();
    Ok(Json(json!({
        "site": me,
        "interval_ms": sup.interval.as_millis() as u64,
        "policies": policies,
        "local": local,
        "last_backfill": *lock(&sup.last_backfill),
    })))
}

/// The body of `PUT /v1/recording/policies`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyBody {
    pattern: String,
    replicas: usize,
}

/// `PUT /v1/recording/policies`: adds a pattern or changes its R.
pub(crate) async fn put_policy(
    State(state): State<AppState>,
    body: Result<Json<PolicyBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(p) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    check_policy(&p.pattern, p.replicas).map_err(ApiError::invalid_body)?;
    let sup = &state.supervisor;
    let _one_at_a_time = POLICY_WRITES.lock().await;
    let mut next = sup.policies();
    next.insert(p.pattern.clone(), p.replicas);
    if next.len() > POLICIES_MAX {
        return Err(ApiError::too_large(format!("a policy holds at most {POLICIES_MAX} patterns")));
    }
    state.store.set_recording_policy(next.keys().cloned().collect())?;
    if let Err(e) = state.store.append(vec![policy_doc(&p.pattern, p.replicas)]).await {
        // Not kept: put back what the store had.
        state.store.set_recording_policy(sup.policies().keys().cloned().collect())?;
        return Err(e.into());
    }
    *sup.policies.write().unwrap_or_else(|p| p.into_inner()) = next;
    Ok(Json(json!({ "pattern": p.pattern, "replicas": p.replicas })))
}

/// The query of `DELETE /v1/recording/policies`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatternQuery {
    pattern: String,
}

/// `DELETE /v1/recording/policies?pattern=P`: drops a pattern; this
/// site's monitor of it stops at the next evaluation.
pub(crate) async fn delete_policy(
    State(state): State<AppState>,
    query: Result<Query<PatternQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let sup = &state.supervisor;
    let _one_at_a_time = POLICY_WRITES.lock().await;
    let mut next = sup.policies();
    if next.remove(&q.pattern).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no recording policy names {}", q.pattern),
        ));
    }
    let key = format!("{POLICY_DOC_PREFIX}{}", q.pattern);
    state.store.append(vec![Body::DocDelete(DocDelete { key })]).await?;
    state.store.set_recording_policy(next.keys().cloned().collect())?;
    *sup.policies.write().unwrap_or_else(|p| p.into_inner()) = next;
    Ok(StatusCode::NO_CONTENT)
}

/// Policy changes one at a time, so the store's policy, the documents and
/// the supervisor's copy agree.
static POLICY_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The sites a query of `channel` should ask: the live complete monitors
/// of the policy pattern covering it, this site first if it is one, then
/// peers that are up by heartbeat latency. `None` when no policy covers it.
pub(crate) fn recorders(state: &AppState, channel: &str) -> Option<(String, Vec<(String, String)>)> {
    let sup = &state.supervisor;
    let pattern = sup.covering(channel)?;
    let me = state.store.site().to_string();
    let mut sites = complete_peers(state, &pattern, &me);
    if state.store.monitor_state(&pattern) == Some(MonitorState::Complete) {
        sites.push(crate::fanout::this_site(state));
    }
    let ordered = crate::fanout::by_preference(sites).into_iter().map(|p| (p.name, p.url)).collect();
    Some((pattern, ordered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(site: &str, region: Option<&str>, monitors: usize, since_us: u64) -> Candidate {
        Candidate { site: site.into(), region: region.map(Into::into), monitors, since_us }
    }

    #[test]
    fn the_stop_rule_prefers_crowded_regions_busy_sites_then_the_newest() {
        // Two in r1, one in r2: one of r1's stops, the busier site.
        let v = victim(&[c("a", Some("r1"), 1, 10), c("b", Some("r1"), 3, 5), c("z", Some("r2"), 9, 99)]);
        assert_eq!(v.as_deref(), Some("b"));
        // Same region count and load: the one that completed last.
        let v = victim(&[c("a", Some("r1"), 1, 10), c("b", Some("r1"), 1, 20), c("c", Some("r2"), 1, 30)]);
        assert_eq!(v.as_deref(), Some("b"));
        // All equal: the greatest name. Every site computes the same.
        let all = [c("a", None, 1, 1), c("c", None, 1, 1), c("b", None, 1, 1)];
        assert_eq!(victim(&all).as_deref(), Some("c"));
        let mut reversed = all.to_vec();
        reversed.reverse();
        assert_eq!(victim(&reversed), victim(&all));
        assert_eq!(victim(&[]), None);
    }

    #[test]
    fn placement_delays_favour_other_regions_and_idle_sites() {
        let i = Duration::from_millis(100);
        // Whatever the draws, a site in a new region with no monitors fires
        // before one in a covered region, or one already running a monitor.
        let best = start_delay(i, false, 0, 1.0);
        assert!(best < start_delay(i, true, 0, 0.0));
        assert!(best < start_delay(i, false, 1, 0.0));
        assert!(start_delay(i, false, 1, 1.0) < start_delay(i, true, 0, 0.0));
        assert_eq!(start_delay(i, false, 0, 0.0), Duration::ZERO);
        assert_eq!(start_delay(i, true, 1, 0.5), Duration::from_millis(350));
    }

    #[test]
    fn policies_parse_or_say_what_is_wrong() {
        assert_eq!(parse_policy("/example.com/node/=2"), Ok(("/example.com/node/".to_string(), 2)));
        for (bad, needle) in [
            ("/a/", "PATTERN=R"),
            ("/a/=x", "not a number"),
            ("/a=2", "end with"),
            ("/a/=0", "replicas"),
            ("/a/=17", "replicas"),
            ("/pepper/m/=1", "/pepper/"),
            ("/*/=1", "recording pattern"),
        ] {
            let err = parse_policy(bad).expect_err(bad);
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    fn said(site: &str, state: &str) -> Announcement {
        Announcement {
            site: site.into(),
            region: None,
            pattern: "/n/".into(),
            state: state.into(),
            since_us: 1,
            monitors: 1,
        }
    }

    #[test]
    fn announcements_make_monitors_live_until_silent_or_stopped() {
        let sup = Supervisor::new(Duration::from_millis(20), BTreeMap::from([("/n/".to_string(), 2)]));
        sup.heard("pepper.monitor", said("a", "complete"));
        sup.heard("pepper.monitor.start", said("b", "importing"));
        sup.heard("pepper.monitor", said("me", "complete"));
        let live: Vec<String> = sup.live("/n/", "me").into_iter().map(|(s, _)| s).collect();
        assert_eq!(live, ["a", "b"], "this site's own announcements do not count as others'");
        assert_eq!(sup.covering("/n/h1/").as_deref(), Some("/n/"));
        assert_eq!(sup.covering("/m/"), None);
        // A stop removes at once.
        sup.heard("pepper.monitor.stop", said("b", "stopped"));
        assert_eq!(sup.live("/n/", "me").len(), 1);
        // Silent for DEAD_AFTER_INTERVALS: no longer live, but still heard of
        // lately, which keeps a new monitor from starting empty.
        std::thread::sleep(Duration::from_millis(20) * DEAD_AFTER_INTERVALS + Duration::from_millis(10));
        assert!(sup.live("/n/", "me").is_empty());
        assert_eq!(sup.heard_complete_lately("/n/", "me").as_deref(), Some("a"));
        assert_eq!(sup.heard_complete_lately("/m/", "me"), None);
    }

    #[test]
    fn announcement_channels_follow_the_pattern() {
        assert_eq!(announce_channel("/example.com/node/"), "/pepper/monitors/example.com/node/");
        assert!(pepper_router::Channel::parse(&announce_channel("/example.com/node/")).is_ok());
    }
}
