//! The supervisor's tasks: reading monitor announcements from the feed,
//! evaluating each policy pattern every interval (start, stop, heartbeat
//! announcements), and running a starting monitor's backfill (hold the
//! interest, choose a source, wait for the cut, copy, complete). The rules
//! are described in `supervisor`, which holds the policy and what was heard.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use pepper_storage::{
    now_us, Body, Distribution, Event, FeedItem, Filter, Kind, MonitorRow, MonitorState, Party, Target, TupleImport,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::federation::{PeerState, PeerSummary};
use crate::state::AppState;
use crate::supervisor::announce_channel;
use crate::supervisor::interest;
use crate::supervisor::lock;
use crate::supervisor::Announcement;
use crate::supervisor::Backfill;
use crate::supervisor::ANNOUNCE_PREFIX;
use crate::supervisor::CUT_WAIT_MAX;
use crate::supervisor::DEAD_AFTER_INTERVALS;
use crate::supervisor::IMPORT_BATCH_RECORDS;
use crate::supervisor::REPLICA_IDLE_MAX;
use crate::supervisor::REPLICA_LINE_BYTES_MAX;
use crate::supervisor::SURPLUS_EVALUATIONS;

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
pub(crate) async fn publish(
    state: &AppState,
    event_type: &str,
    pattern: &str,
    status: &str,
    since_us: u64,
    extra: Value,
) {
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
        id: crate::wire::envelope::new_event_id(),
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
pub(crate) fn start_delay(interval: Duration, region_has: bool, monitors_here: usize, draw: f64) -> Duration {
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
pub(crate) struct Candidate {
    pub(crate) site: String,
    pub(crate) region: Option<String>,
    pub(crate) monitors: usize,
    pub(crate) since_us: u64,
}

/// The monitor to stop when there are too many: its region has the most
/// monitors of the pattern, then its site runs the most monitors, then it
/// completed last, then the greatest site name.
pub(crate) fn victim(complete: &[Candidate]) -> Option<String> {
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
    state.federation.hold_interest(&state.store, interest(pattern)).await;
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
    match crate::federation::by_preference(complete.clone()).into_iter().find(|p| p.state == PeerState::Up) {
        Some(p) => Ok(Some(p.name)),
        None => Err(format!("no complete replica is reachable right now (announced: {})", names.join(", "))),
    }
}

/// The peers announcing a live complete monitor of `pattern`, as the
/// federation knows them (state, latency, url).
pub(crate) fn complete_peers(state: &AppState, pattern: &str, me: &str) -> Vec<PeerSummary> {
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
pub(crate) enum Line {
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
                    due.push((crate::expiry::index_key(&t.channel, &t.field), at, t.seq));
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
