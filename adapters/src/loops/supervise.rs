//! The supervisor's tasks: reading monitor announcements from the feed
//! into the placement machine, ticking it when it is due, and carrying out
//! the actions it returns (announcements, a monitor's start, its interest,
//! the wait for the cut, the copy, the completion, a stop). The machine
//! (`pepper_router::Placement`, held by `supervisor`) decides; this module
//! only does what it is told and reports how it went.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use pepper_router::{
    cut_poll, Announce, AnnounceDetail, AnnounceKind, Copied, Cut, CutProgress, CutReply, PeerView, PlacementAction,
    PlacementInput, Reach, StopResult,
};
use pepper_storage::{
    now_us, Body, Distribution, Event, FeedItem, Filter, Kind, MonitorState, Party, Target, TupleImport,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::federation::{PeerState, PeerSummary};
use crate::state::AppState;
use crate::supervisor::announce_channel;
use crate::supervisor::interest;
use crate::supervisor::local_monitors;
use crate::supervisor::Announcement;
use crate::supervisor::ANNOUNCE_PREFIX;
use crate::supervisor::CUT_WAIT_MAX;
use crate::supervisor::IMPORT_BATCH_RECORDS;
use crate::supervisor::REPLICA_IDLE_MAX;
use crate::supervisor::REPLICA_LINE_BYTES_MAX;

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

/// Runs the site's supervisor until shutdown: reads announcements into the
/// machine, and ticks it whenever it is due.
pub async fn run(state: AppState) {
    let sup = &state.supervisor;
    // The machine's warm-up (no start planned before the others'
    // announcements can have arrived) counts from here.
    let heartbeat = if state.federation.enabled() { state.federation.heartbeat() } else { Duration::ZERO };
    sup.begin(state.federation.region().map(str::to_string), heartbeat);
    tokio::spawn(read_announcements(state.clone()));
    let mut stopping = state.stopping();
    loop {
        let due = sup.instant(sup.placement().next_tick());
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let actions = loop {
            // A task result given after the rows were read may have freed
            // a pattern whose row changed since: read them again, so a
            // fresh completion is never taken for an interrupted import.
            let results = sup.results();
            let rows = match state.store.read(|v| v.monitors()).await {
                Ok(rows) => rows,
                Err(e) => break Err(e),
            };
            let local = local_monitors(&rows);
            let mut placement = sup.placement();
            if sup.results() == results {
                break Ok(placement.tick(sup.now(), &local, rand::random::<f64>));
            }
        };
        match actions {
            Ok(actions) => {
                carry_out_tick(&state, actions).await;
                state.metrics.evaluations.inc();
            }
            Err(e) => {
                // Not ticked: the tick stays due, so wait an interval.
                tracing::warn!(error = %e, "supervisor evaluation failed");
                tokio::select! {
                    _ = tokio::time::sleep(sup.interval()) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// A peer as the placement rules see it.
fn peer_view(p: &PeerSummary) -> PeerView {
    let reach = match p.state {
        PeerState::Up => Reach::Up,
        PeerState::Suspect => Reach::Suspect,
        PeerState::Down => Reach::Down,
    };
    PeerView { name: p.name.clone(), region: p.region.clone(), reach, rtt_ms: p.rtt_ms }
}

/// Peers as the placement rules see them.
pub(crate) fn peer_views_of(peers: &[PeerSummary]) -> Vec<PeerView> {
    peers.iter().map(peer_view).collect()
}

/// Follows the local log's announcements (this site's own and those
/// forwarded from peers) into the machine.
async fn read_announcements(state: AppState) {
    let filter =
        Filter { channel_prefix: Some(ANNOUNCE_PREFIX.to_string()), types: Vec::new(), kinds: vec![Kind::Event] };
    let mut feed = state.store.feed(state.store.last_seq() + 1, filter.clone());
    let mut stopping = state.stopping();
    let sup = &state.supervisor;
    loop {
        let item = tokio::select! {
            item = feed.next() => item,
            _ = stopping.wait_for(|s| *s) => return,
        };
        match item {
            Ok(FeedItem::Record(r)) => {
                let Body::Event(e) = r.body else { continue };
                match serde_json::from_slice::<Announcement>(&e.payload) {
                    Ok(a) => {
                        let heard = a.heard(&e.event_type);
                        // A complete replica heard may confirm this site's
                        // surplus stop: that stop is carried out at once.
                        let actions = sup.placement().step(sup.now(), PlacementInput::Heard(heard));
                        if !actions.is_empty() {
                            carry_out_tick(&state, actions).await;
                        }
                    }
                    Err(err) => tracing::debug!(seq = r.seq, error = %err, "not a monitor announcement"),
                }
            }
            // Announcements are repeated every interval: from the
            // earliest retained record the view fills in again.
            Ok(FeedItem::Compacted { earliest }) => feed = state.store.feed(earliest, filter.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "monitor announcements feed failed; restarting it");
                tokio::time::sleep(sup.interval()).await;
                feed = state.store.feed(state.store.last_seq() + 1, filter.clone());
            }
        }
    }
}

/// Carries out what a tick returned: every heartbeat announcement in one
/// append, then each pattern's other actions in a task of its own.
async fn carry_out_tick(state: &AppState, actions: Vec<PlacementAction>) {
    let mut heartbeats = Vec::new();
    let mut per_pattern: BTreeMap<String, Vec<PlacementAction>> = BTreeMap::new();
    for action in actions {
        match action {
            PlacementAction::Announce(a) if a.kind == AnnounceKind::Heartbeat => heartbeats.push(a),
            other => per_pattern.entry(pattern_of(&other).to_string()).or_default().push(other),
        }
    }
    publish_all(state, heartbeats).await;
    for (pattern, actions) in per_pattern {
        spawn_task(state, pattern, actions);
    }
}

fn pattern_of(action: &PlacementAction) -> &str {
    match action {
        PlacementAction::Announce(a) => &a.pattern,
        PlacementAction::Start { pattern, .. }
        | PlacementAction::HoldInterest { pattern }
        | PlacementAction::WaitForCut { pattern, .. }
        | PlacementAction::Copy { pattern, .. }
        | PlacementAction::Complete { pattern, .. }
        | PlacementAction::Stop { pattern, .. }
        | PlacementAction::DropInterest { pattern } => pattern,
    }
}

/// Tells the machine a pattern's task died without reporting, if it did.
struct Abandon {
    state: AppState,
    pattern: String,
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            let input = PlacementInput::Abandoned { pattern: std::mem::take(&mut self.pattern) };
            self.state.supervisor.report(input);
        }
    }
}

/// Carries out one pattern's actions in order, giving each result back to
/// the machine and carrying out what it answers, until nothing is left.
fn spawn_task(state: &AppState, pattern: String, actions: Vec<PlacementAction>) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut guard = Abandon { state: state.clone(), pattern, armed: false };
        let mut queue: VecDeque<PlacementAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            guard.armed = !matches!(action, PlacementAction::Announce(_) | PlacementAction::DropInterest { .. });
            if let Some(input) = carry_out(&state, action).await {
                guard.armed = false;
                queue.extend(state.supervisor.report(input));
            }
        }
        guard.armed = false;
    });
}

/// Carries out one action; returns the result the machine waits for, if any.
async fn carry_out(state: &AppState, action: PlacementAction) -> Option<PlacementInput> {
    match action {
        PlacementAction::Announce(a) => {
            publish(state, a).await;
            None
        }
        PlacementAction::Start { pattern, reason } => {
            let result = state.store.monitor_start(&pattern, &reason).await.map(|_| ()).map_err(|e| {
                // Nothing started: whatever is there is left alone.
                tracing::warn!(pattern, error = %e, "cannot start a monitor");
                e.to_string()
            });
            Some(PlacementInput::Started { pattern, result })
        }
        PlacementAction::HoldInterest { pattern } => {
            state.federation.hold_interest(&state.store, interest(&pattern)).await;
            Some(PlacementInput::InterestHeld { pattern, peers: peer_views_of(&state.federation.peer_list()) })
        }
        PlacementAction::WaitForCut { pattern, source } => {
            let result = wait_for_cut(state, &source).await;
            Some(PlacementInput::CutPassed { pattern, result })
        }
        PlacementAction::Copy { pattern, source } => {
            let result = copy(state, &pattern, &source).await.map(|(marks, rows)| Copied { marks, rows });
            Some(PlacementInput::Copied { pattern, result })
        }
        PlacementAction::Complete { pattern, source, marks } => {
            let result = match state.store.monitor_complete(&pattern, &source, marks).await {
                Ok(done) => {
                    if let Err(e) = note_expiries(state, &pattern).await {
                        tracing::warn!(pattern, error = %e, "cannot index the expiries of a backfilled subtree");
                    }
                    Ok(done.written().saturating_sub(1))
                }
                Err(e) => Err(e.to_string()),
            };
            Some(PlacementInput::Completed { pattern, result })
        }
        PlacementAction::Stop { pattern, reason, if_importing_since } => {
            let result = stop(state, &pattern, &reason, if_importing_since).await;
            Some(PlacementInput::Stopped { pattern, result })
        }
        PlacementAction::DropInterest { pattern } => {
            state.federation.drop_interest(&interest(&pattern));
            None
        }
    }
}

/// Stops the monitor of `pattern`; with `guard`, only if it is still the
/// importing one started by that seq (a failed read counts as not).
async fn stop(state: &AppState, pattern: &str, reason: &str, guard: Option<u64>) -> StopResult {
    if let Some(started_seq) = guard {
        let same = state.store.read(|v| v.monitors()).await.is_ok_and(|rows| {
            rows.iter()
                .any(|r| r.pattern == pattern && r.state == MonitorState::Importing && r.started_seq == started_seq)
        });
        if !same {
            return StopResult::NotSame;
        }
    }
    match state.store.monitor_stop(pattern, reason).await {
        Ok(_) => StopResult::Stopped,
        Err(pepper_storage::Error::NotFound { .. }) => StopResult::NotFound,
        Err(e) => {
            // A failed backfill's monitor is left importing: the next
            // evaluation stops it.
            tracing::warn!(pattern, error = %e, "cannot stop a monitor");
            StopResult::Failed(e.to_string())
        }
    }
}

/// Publishes one monitor event the machine asked for, logging what it says.
async fn publish(state: &AppState, a: Announce) {
    let pattern = a.pattern.as_str();
    match &a.detail {
        AnnounceDetail::Reason(reason) => tracing::info!(pattern, reason, "monitor stopped"),
        AnnounceDetail::Error(error) => tracing::warn!(pattern, error, "monitor backfill failed"),
        AnnounceDetail::Complete { report, .. } => {
            tracing::info!(pattern, source = %report.source, rows = report.rows, ms = report.elapsed_ms, "monitor complete");
        }
        AnnounceDetail::None | AnnounceDetail::Source(_) => {}
    }
    publish_all(state, vec![a]).await;
}

/// Publishes monitor events in one append (in chunks of the batch limit).
async fn publish_all(state: &AppState, announcements: Vec<Announce>) {
    if announcements.is_empty() {
        return;
    }
    let bodies: Vec<Body> = announcements.into_iter().map(|a| Body::Event(monitor_event(state, a))).collect();
    for chunk in bodies.chunks(pepper_storage::limits::BATCH_RECORDS_MAX) {
        if let Err(e) = state.store.append(chunk.to_vec()).await {
            tracing::warn!(error = %e, "cannot publish monitor events");
        }
    }
}

/// What an announcement's detail adds to its payload.
fn detail_json(detail: AnnounceDetail) -> Value {
    match detail {
        AnnounceDetail::None => json!({}),
        AnnounceDetail::Source(source) => json!({ "source": source }),
        AnnounceDetail::Complete { report, short_for_ms } => {
            json!({ "source": report.source, "rows": report.rows, "elapsed_ms": report.elapsed_ms,
                    "rows_per_s": report.rows_per_s, "held_recorded": report.held_recorded,
                    "short_for_ms": short_for_ms })
        }
        AnnounceDetail::Reason(reason) => json!({ "reason": reason }),
        AnnounceDetail::Error(error) => json!({ "error": error }),
    }
}

fn monitor_event(state: &AppState, a: Announce) -> Event {
    let Announce { kind, pattern, status, since_us, monitors, detail } = a;
    let announcement = Announcement {
        site: state.store.site().to_string(),
        region: state.federation.region().map(str::to_string),
        pattern: pattern.clone(),
        state: status.name().to_string(),
        since_us: since_us.unwrap_or_else(now_us),
        monitors: monitors.unwrap_or_else(|| state.store.monitors_running()),
    };
    let mut payload = json!(announcement);
    if let (Some(p), Value::Object(more)) = (payload.as_object_mut(), detail_json(detail)) {
        p.extend(more);
    }
    Event {
        id: crate::wire::envelope::new_event_id(),
        channel: announce_channel(&pattern),
        event_type: kind.event_type().to_string(),
        from: Party { service: "pepper".into(), instance: state.store.site().to_string() },
        to: Target::default(),
        distribution: Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        principal: None,
        tuple: None,
    }
}

/// Waits for the cut toward the replica `y` (`pepper_router::Cut` decides):
/// polls this site's forwarder, then asks each other peer that is not down
/// for its cut (`GET /v1/peer/cut`), every [`cut_poll`], within
/// [`CUT_WAIT_MAX`].
async fn wait_for_cut(state: &AppState, y: &str) -> Result<(), String> {
    let sup = &state.supervisor;
    let fed = &state.federation;
    let me = state.store.site().to_string();
    let poll = cut_poll(sup.interval());
    let mut cut = Cut::new(y, state.store.last_seq(), sup.now());
    let mut urls: HashMap<String, String> = HashMap::new();
    loop {
        match cut.progress(sup.now()) {
            CutProgress::Own => {
                cut.own_cursor(sup.now(), fed.cursor_toward(y));
                if !matches!(cut.progress(sup.now()), CutProgress::Own) {
                    continue;
                }
            }
            CutProgress::NeedPeers => {
                let peers = fed.peer_list();
                urls = peers.iter().map(|p| (p.name.clone(), p.url.clone())).collect();
                cut.peers(fed.interests_version(), &me, &peer_views_of(&peers));
                continue;
            }
            CutProgress::Ask(names) => {
                let asks = names.iter().map(|name| ask_cut(state, name, urls.get(name), &me, y));
                let replies = futures_util::future::join_all(asks).await;
                for (name, reply) in names.iter().zip(replies) {
                    cut.reply(name, reply);
                }
                if !matches!(cut.progress(sup.now()), CutProgress::Ask(_)) {
                    continue;
                }
            }
            CutProgress::Passed => return Ok(()),
            CutProgress::Failed(message) => return Err(message),
        }
        tokio::time::sleep(poll).await;
    }
}

/// One request for `name`'s cut toward `y`.
async fn ask_cut(state: &AppState, name: &str, url: Option<&String>, me: &str, y: &str) -> CutReply {
    let fed = &state.federation;
    let Some(url) = url else { return CutReply::Retry };
    let client = match fed.client_for(name) {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(peer = %name, error = %e, "no client for a peer during a backfill's cut; passed over");
            return CutReply::Unreachable;
        }
    };
    let answer = client
        .get(format!("{url}/v1/peer/cut"))
        .query(&[("site", me), ("toward", y)])
        .header(axum::http::header::AUTHORIZATION, fed.authorization())
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    match answer {
        Ok(res) if res.status().is_success() => match res.json::<Value>().await {
            Ok(cut) => CutReply::Answer {
                interests_version: cut["interests_version"].as_u64().unwrap_or(0),
                seq: cut["seq"].as_u64(),
                cursor: cut["cursor"].as_u64(),
            },
            Err(e) => CutReply::Undecodable(e.to_string()),
        },
        Ok(res) => CutReply::Status(res.status().to_string()),
        Err(e) if e.is_connect() => {
            tracing::info!(peer = %name, "unreachable during a backfill's cut; passed over");
            CutReply::Unreachable
        }
        Err(_) => CutReply::Retry,
    }
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
    let client = fed.client_for(y)?;
    let res = loop {
        let sent = client
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
