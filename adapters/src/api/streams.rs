//! Live delivery: Server-Sent Events and long-poll, for leases and watches.
//!
//! An SSE stream goes through three phases on one cursor, the next sequence
//! number it owes the client:
//!
//! 1. **Catch-up.** It reads the log with its own change feed from where the
//!    client asked (`Last-Event-ID`, `?from_seq`, the lease's start, or the
//!    head), as fast as the client's socket drains.
//! 2. **Handoff.** Once within [`HANDOFF_LAG_MAX`](pepper_router::HANDOFF_LAG_MAX) records of the head, it
//!    joins the site's [dispatcher](crate::loops::dispatch) at its cursor. The
//!    dispatcher answers with its own position; the stream reads whatever
//!    lies between the two from the log.
//! 3. **Live.** It forwards what the dispatcher pushes into its buffer.
//!
//! The SSE `id:` of every event is its sequence number, so a client resumes
//! exactly where it stopped with `Last-Event-ID` (or `?from_seq=`), across a
//! dropped connection or a server restart.
//!
//! A slow client never slows anyone else or the writer. While catching up it
//! is only read as fast as it drains. Live, its buffer holds at most
//! `stream_buffer_events` ([`crate::SUBSCRIBER_BUFFER_EVENTS`] by default); when the dispatcher finds it full, the
//! stream delivers what it holds and ends with a `pepper.overflow` event
//! carrying `resume_seq`, the first sequence number it did not deliver. If
//! retention trims what a client has not read yet, the stream says so with a
//! `pepper.compacted` event. Neither ever skips silently.
//!
//! A lease stream ends with an explicit `pepper.lease_ended` event, placed in
//! the log's order: every matching event logged before the lease's release
//! or expire record is delivered first.
//!
//! Long-poll (`?wait_ms=&max=`) answers from the log with one bounded scan
//! per request; it needs no registration.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pepper_router::{Action, Pattern, Resource};
use pepper_storage::{Feed, FeedItem, Record, Scan};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::auth::{Caller, Session, StreamAccess};
use crate::error::ApiError;
use crate::limits::SNAPSHOTS_MAX;
use crate::limits::SUBSCRIBERS_MAX;
use crate::loops::dispatch::{filter, meaning, Item, Live, Outgoing, Subscription};
use crate::state::AppState;
use crate::wire::envelope::{canonical_types, EventOut};
use pepper_router::{Detach, Meaning};

/// How often an idle SSE stream sends a keep-alive comment.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// Longest a long-poll request waits for a first event, in milliseconds.
pub const LONG_POLL_WAIT_MS_MAX: u64 = 30_000;

/// Most events one long-poll answer carries.
pub const LONG_POLL_EVENTS_MAX: usize = 1000;

/// Most log records one long-poll scan reads.
pub const LONG_POLL_SCAN_MAX: u64 = 100_000;

/// Most records one handoff gap read returns at a time.
const GAP_CHUNK_RECORDS: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseStreamQuery {
    from_seq: Option<u64>,
    wait_ms: Option<u64>,
    max: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchQuery {
    channel: String,
    types: Option<String>,
    from_seq: Option<u64>,
    #[serde(default)]
    snapshot: bool,
}

/// The first sequence number to deliver: after `Last-Event-ID`, else
/// `from_seq`, else `default`. It may not lie beyond the log's head as of
/// `seen`, nor below what retention kept.
fn start_seq(
    state: &AppState,
    headers: &HeaderMap,
    from_seq: Option<u64>,
    default: u64,
    seen: u64,
) -> Result<u64, ApiError> {
    let from = resume_from(headers, from_seq)?.unwrap_or(default);
    // `seen` is the sequence number the caller's view of the lease reflects:
    // starting at or before `seen + 1` guarantees the stream sees the
    // lease's end record, whenever it comes.
    let head = seen + 1;
    if from > head {
        return Err(ApiError::invalid_query(format!("from_seq {from} is beyond the log's head ({head})")));
    }
    let earliest = state.store.earliest_seq();
    if from < earliest {
        return Err(ApiError::compacted(from, earliest));
    }
    Ok(from.max(1))
}

pub(crate) async fn lease_events(
    State(state): State<AppState>,
    caller: Caller,
    session: Option<axum::Extension<Session>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<LeaseStreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let id2 = id.clone();
    let (lease, seen) = state.store.read(move |v| Ok((v.lease(&id2)?, v.seq()))).await?;
    let Some(lease) = lease else {
        return Err(ApiError::no_lease(&id));
    };
    let pattern = Pattern::parse(&lease.pattern).map_err(ApiError::bad_channel)?;
    if !crate::api::leases::may_hold(&caller, &lease) {
        // As if it did not exist: ids cannot be probed.
        return Err(ApiError::no_lease(&id));
    }
    let sub = Subscription {
        pattern,
        types: lease.types.clone(),
        lease: Some(id),
        holder: Some(pepper_router::Holder {
            service: lease.holder.service.clone(),
            instance: lease.holder.instance.clone(),
        }),
        group: lease.group.clone(),
        granted_seq: lease.granted_seq,
        tuples: false,
    };
    let from = start_seq(&state, &headers, q.from_seq, lease.from_seq.unwrap_or(lease.granted_seq + 1), seen)?;
    if q.wait_ms.is_some() || q.max.is_some() {
        return long_poll(state, sub, from, q.wait_ms.unwrap_or(0), q.max.unwrap_or(100)).await;
    }
    let quota = state.quotas.stream(&caller)?;
    let access = StreamAccess::new(&state.auth, session.as_ref().map(|e| &e.0), Action::Subscribe, &sub.pattern);
    sse(state, sub, from, quota, access)
}

pub(crate) async fn watch(
    State(state): State<AppState>,
    caller: Caller,
    session: Option<axum::Extension<Session>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let pattern = Pattern::parse(&q.channel).map_err(ApiError::bad_channel)?;
    caller.require(Action::Subscribe, &Resource::Channels(&pattern))?;
    if q.snapshot {
        // A snapshot is the subtree's latest values.
        caller.require(Action::TuplesRead, &Resource::Channels(&pattern))?;
    }
    let types = q.types.as_deref().map(|t| canonical_types(t.split(','))).unwrap_or_default();
    let sub = Subscription::watch(pattern, types, q.snapshot);
    let seen = state.store.last_seq();
    let quota = state.quotas.stream(&caller)?;
    let access = StreamAccess::new(&state.auth, session.as_ref().map(|e| &e.0), Action::Subscribe, &sub.pattern);
    if !q.snapshot {
        let from = start_seq(&state, &headers, q.from_seq, seen + 1, seen)?;
        return sse(state, sub, from, quota, access);
    }
    // With a snapshot: a fresh watch gets every latest value, then the
    // changes after exactly that snapshot. A resume continues from its
    // position; one from before what retention kept gets the tuples changed
    // since then, and the tombstones of those removed, instead of 410.
    let Some(asked) = resume_from(&headers, q.from_seq)? else {
        return sse_with_snapshot(state, sub, None, quota, access);
    };
    match start_seq(&state, &headers, q.from_seq, seen + 1, seen) {
        Ok(from) => sse(state, sub, from, quota, access),
        Err(e) if e.code() == "compacted" => sse_with_snapshot(state, sub, Some(asked), quota, access),
        Err(e) => Err(e),
    }
}

/// The position a resume asks for, if it asks.
fn resume_from(headers: &HeaderMap, from_seq: Option<u64>) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => {
            let text = v.to_str().unwrap_or_default().trim();
            let last: u64 = text
                .parse()
                .map_err(|_| ApiError::invalid_query(format!("Last-Event-ID {text:?} is not a sequence number")))?;
            let next = last.checked_add(1).ok_or_else(|| {
                ApiError::invalid_query(format!("Last-Event-ID {text:?} is beyond any sequence number"))
            })?;
            Ok(Some(next))
        }
        None => Ok(from_seq),
    }
}

/// Most snapshot pages in flight between the reading thread and the stream.
const SNAPSHOT_CHANNEL_PAGES: usize = 4;

/// Most tuples per snapshot page: per `tuples` event of the stream.
pub const SNAPSHOT_PAGE_TUPLES: usize = 1000;

/// A snapshot page is also cut once its JSON reaches this many bytes.
pub const SNAPSHOT_PAGE_BYTES_MAX: usize = 1024 * 1024;

/// How long a snapshot waits for its client to take the next page before
/// the stream fails with `pepper.error` (the client resumes with a new
/// snapshot).
pub const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// What the snapshot reader hands the stream.
enum SnapshotItem {
    /// One SSE event's worth: `tuples` or `tuples.removed`, its JSON array
    /// already encoded (on the reading thread, off the async executor).
    Page {
        event: &'static str,
        json: String,
    },
    /// The snapshot is complete, at this sequence number. `reset`: the
    /// changes since the asked position could not be given (tombstones that
    /// old were trimmed), so this was a full snapshot instead.
    Done {
        seq: u64,
        tuples: u64,
        removed: u64,
        reset: bool,
    },
    Failed(String),
}

/// Reads the latest values under `sub`'s pattern from one view, a page at a
/// time, into a bounded channel: memory stays bounded however large the
/// subtree. With `since`, only what changed at or after it, and the
/// tombstones of tuples removed since.
fn read_snapshot(
    state: &AppState,
    sub: &Subscription,
    since: Option<u64>,
    permit: OwnedSemaphorePermit,
) -> mpsc::Receiver<SnapshotItem> {
    let (tx, rx) = mpsc::channel(SNAPSHOT_CHANNEL_PAGES);
    let (pattern, store) = (sub.pattern.clone(), state.store.clone());
    let runtime = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        let _permit = permit;
        let tx2 = tx.clone();
        let result = store
            .read(move |v| {
                let prefix = pattern.literal_prefix();
                let now = pepper_storage::now_us();
                // Changes since a position need every tombstone since then;
                // below the tombstone floor, only a full snapshot is exact.
                let reset = since.is_some_and(|s| s < v.tombstone_floor().unwrap_or(u64::MAX));
                let since = since.filter(|_| !reset);
                let min_seq = since.unwrap_or(0);
                let (mut tuples, mut removed) = (0u64, 0u64);
                // Pages go out by count or by bytes, whichever comes first;
                // a client that stops taking them times the reader out.
                let send_item = |item: SnapshotItem| -> bool {
                    let sent = runtime.block_on(tokio::time::timeout(SNAPSHOT_SEND_TIMEOUT, tx.send(item)));
                    matches!(sent, Ok(Ok(())))
                };
                let send = |event: &'static str, all: Vec<Value>| -> bool {
                    let (mut page, mut bytes) = (Vec::new(), 0usize);
                    for item in all {
                        bytes += item.to_string().len();
                        page.push(item);
                        if bytes >= SNAPSHOT_PAGE_BYTES_MAX {
                            let json = Value::Array(std::mem::take(&mut page)).to_string();
                            bytes = 0;
                            if !send_item(SnapshotItem::Page { event, json }) {
                                return false;
                            }
                        }
                    }
                    page.is_empty() || send_item(SnapshotItem::Page { event, json: Value::Array(page).to_string() })
                };
                let mut after = None;
                loop {
                    let page = v.latest(&prefix, after.as_ref(), SNAPSHOT_PAGE_TUPLES)?;
                    let items: Vec<Value> = page
                        .items
                        .iter()
                        .filter(|t| {
                            pattern.matches_name(&t.channel) && t.seq >= min_seq && !crate::expiry::is_expired(t, now)
                        })
                        .map(|t| serde_json::to_value(crate::wire::tuples::TupleJson::from(t)).unwrap_or_default())
                        .collect();
                    tuples += items.len() as u64;
                    if !send("tuples", items) {
                        return Ok(());
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                if since.is_some() {
                    let mut after = None;
                    loop {
                        let page = v.tombstones(&prefix, after.as_ref(), SNAPSHOT_PAGE_TUPLES)?;
                        let items: Vec<Value> = page
                            .items
                            .iter()
                            .filter(|t| pattern.matches_name(&t.channel) && t.seq >= min_seq)
                            .map(crate::wire::tuples::tombstone_json)
                            .collect();
                        removed += items.len() as u64;
                        if !send("tuples.removed", items) {
                            return Ok(());
                        }
                        match page.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                }
                send_item(SnapshotItem::Done { seq: v.seq(), tuples, removed, reset });
                Ok(())
            })
            .await;
        if let Err(e) = result {
            let _ = tx2.send(SnapshotItem::Failed(e.to_string())).await;
        }
    });
    rx
}

fn sse_with_snapshot(
    state: AppState,
    sub: Subscription,
    since: Option<u64>,
    quota: Option<OwnedSemaphorePermit>,
    access: Option<crate::auth::StreamAccess>,
) -> Result<Response, ApiError> {
    let reader = state.snapshot_readers.clone().try_acquire_owned().map_err(|_| {
        ApiError::overloaded(format!("the site is already streaming {SNAPSHOTS_MAX} snapshots; retry shortly"))
    })?;
    let slot = take_slot(&state)?;
    let rx = read_snapshot(&state, &sub, since, reader);
    let snapshot = Phase::Snapshot { rx, since };
    Ok(stream(Subscriber { state, sub, phase: snapshot, _slot: slot, _quota: quota, access }))
}

fn take_slot(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state.subscriber_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::overloaded(format!("the site already serves {SUBSCRIBERS_MAX} live streams; retry later"))
    })
}

/// What a stream tells its client next.
enum Out {
    Event(Arc<Outgoing>),
    Page {
        event: &'static str,
        json: String,
    },
    SnapshotDone {
        seq: u64,
        tuples: u64,
        removed: u64,
        since: Option<u64>,
        reset: bool,
    },
    LeaseEnded {
        seq: u64,
        reason: &'static str,
    },
    Compacted {
        earliest: u64,
    },
    Detached {
        why: Detach,
        resume_seq: u64,
    },
    Failed(String),
    /// The caller's token or grant ended while the stream was open.
    Unauthorized,
}

/// Where a stream is on its way from its own cursor to the live stream.
enum Phase {
    /// Sending a snapshot of the latest values (`since`: only the changes
    /// since then); the live part starts after its sequence number.
    Snapshot {
        rx: mpsc::Receiver<SnapshotItem>,
        since: Option<u64>,
    },
    CatchUp(Feed),
    /// Reading `[next, live.from)` from the log before the live buffer.
    Gap {
        next: u64,
        live: Live,
        records: VecDeque<Record>,
    },
    Live(Live),
    Done,
}

/// One SSE stream's cursor through the three phases.
struct Subscriber {
    state: AppState,
    sub: Subscription,
    phase: Phase,
    /// Holds one of the site's [`SUBSCRIBERS_MAX`] stream slots.
    _slot: OwnedSemaphorePermit,
    /// Holds one of its principal's stream slots (`quota`), if it has any.
    _quota: Option<OwnedSemaphorePermit>,
    /// Its caller's right to go on, re-checked before each delivery.
    access: Option<crate::auth::StreamAccess>,
}

impl Subscriber {
    /// What `record` gives the client, if anything.
    fn deliver(&mut self, record: &Record) -> Option<Out> {
        match meaning(&self.sub, record) {
            Meaning::Deliver => {
                let out = Outgoing::from_record(record)?;
                self.state.metrics.deliveries.inc();
                Some(Out::Event(Arc::new(out)))
            }
            Meaning::LeaseEnded(reason) => Some(Out::LeaseEnded { seq: record.seq, reason: reason.name() }),
            Meaning::Nothing => None,
        }
    }

    /// The next thing to send, or `None` when the stream ends without a
    /// word (the site is stopping; the client resumes from its last id).
    async fn next(&mut self) -> Option<Out> {
        loop {
            match &mut self.phase {
                Phase::Done => return None,
                Phase::Snapshot { rx, since } => {
                    let since = *since;
                    match rx.recv().await {
                        Some(SnapshotItem::Page { event, json }) => return Some(Out::Page { event, json }),
                        Some(SnapshotItem::Done { seq, tuples, removed, reset }) => {
                            self.phase = Phase::CatchUp(self.state.store.feed(seq + 1, filter(&self.sub)));
                            return Some(Out::SnapshotDone { seq, tuples, removed, since, reset });
                        }
                        Some(SnapshotItem::Failed(message)) => return Some(Out::Failed(message)),
                        None => return None,
                    }
                }
                Phase::CatchUp(feed) if pepper_router::should_join(feed.lag()) => {
                    let from = feed.position();
                    let Ok(live) = self.state.dispatcher.join(self.sub.clone(), from).await else { return None };
                    self.phase = if live.from > from {
                        Phase::Gap { next: from, live, records: VecDeque::new() }
                    } else {
                        Phase::Live(live)
                    };
                }
                Phase::CatchUp(feed) => match feed.next().await {
                    Ok(FeedItem::Record(record)) => {
                        if let Some(out) = self.deliver(&record) {
                            return Some(out);
                        }
                    }
                    Ok(FeedItem::Compacted { earliest }) => return Some(Out::Compacted { earliest }),
                    Err(pepper_storage::Error::Closed) => return None,
                    Err(e) => return Some(Out::Failed(e.to_string())),
                },
                Phase::Gap { next, live, records } => {
                    if let Some(record) = records.pop_front() {
                        if let Some(out) = self.deliver(&record) {
                            return Some(out);
                        }
                        continue;
                    }
                    if *next >= live.from {
                        let Phase::Gap { live, .. } = std::mem::replace(&mut self.phase, Phase::Done) else {
                            return None;
                        };
                        self.phase = Phase::Live(live);
                        continue;
                    }
                    let (from, to, filter) = (*next, live.from - 1, filter(&self.sub));
                    let scan =
                        self.state.store.read(move |v| v.scan(from, to, &filter, GAP_CHUNK_RECORDS, u64::MAX)).await;
                    match scan {
                        Ok(Scan::Records { records: found, next_seq }) => {
                            *next = next_seq;
                            records.extend(found);
                        }
                        Ok(Scan::Compacted { earliest }) => return Some(Out::Compacted { earliest }),
                        Err(pepper_storage::Error::Closed) => return None,
                        Err(e) => return Some(Out::Failed(e.to_string())),
                    }
                }
                Phase::Live(live) => match live.recv().await {
                    Some(Item::Event(out)) => return Some(Out::Event(out)),
                    Some(Item::LeaseEnded { seq, reason }) => return Some(Out::LeaseEnded { seq, reason }),
                    None => {
                        return live.detached().map(|(why, resume_seq)| Out::Detached { why, resume_seq });
                    }
                },
            }
        }
    }
}

pub(crate) fn sse(
    state: AppState,
    sub: Subscription,
    from: u64,
    quota: Option<OwnedSemaphorePermit>,
    access: Option<crate::auth::StreamAccess>,
) -> Result<Response, ApiError> {
    let slot = take_slot(&state)?;
    let feed = state.store.feed(from, filter(&sub));
    Ok(stream(Subscriber { state, sub, phase: Phase::CatchUp(feed), _slot: slot, _quota: quota, access }))
}

/// An event type as an SSE `event:` field. The store refuses control
/// characters in types, but a log written before that rule may hold one,
/// and a line break would end the field early (axum's encoder panics on
/// it, which cut every stream that reached the event). Each control
/// character becomes its `\u{..}` escape, so the field stays one line and
/// says what was there; the type in `data` is the exact one.
pub(crate) fn event_field(t: &str) -> std::borrow::Cow<'_, str> {
    if !t.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(t);
    }
    std::borrow::Cow::Owned(
        t.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect(),
    )
}

/// The SSE response for a subscriber.
fn stream(subscriber: Subscriber) -> Response {
    let stopping = subscriber.state.stopping();
    let stream = futures_util::stream::unfold((subscriber, stopping), |(mut s, mut stopping)| async move {
        let next = tokio::select! {
            next = s.next() => next,
            // The server is stopping: end the stream; the client resumes
            // from its last id.
            _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => None,
        };
        let mut next = next?;
        if matches!(next, Out::Event(_) | Out::Page { .. } | Out::SnapshotDone { .. })
            && s.access.as_mut().is_some_and(|a| !a.allowed(pepper_storage::now_us()))
        {
            next = Out::Unauthorized;
        }
        let event = match next {
            Out::Page { event, json } => SseEvent::default().event(event).data(json),
            Out::SnapshotDone { seq, tuples, removed, since, reset } => {
                let mut data = json!({ "seq": seq, "tuples": tuples });
                if let Some(since) = since {
                    data["since"] = json!(since);
                    if reset {
                        // The client drops what it holds under the pattern
                        // and keeps what this snapshot sent.
                        data["reset"] = json!(true);
                    } else {
                        data["removed"] = json!(removed);
                    }
                }
                SseEvent::default().id(seq.to_string()).event("pepper.snapshot").data(data.to_string())
            }
            Out::Event(out) => {
                SseEvent::default().id(out.seq.to_string()).event(event_field(&out.event_type)).data(out.json.as_str())
            }
            Out::LeaseEnded { seq, reason } => {
                s.phase = Phase::Done;
                let data = json!({ "id": s.sub.lease, "reason": reason, "seq": seq });
                SseEvent::default().event("pepper.lease_ended").data(data.to_string())
            }
            Out::Compacted { earliest } => {
                s.phase = Phase::Done;
                SseEvent::default().event("pepper.compacted").data(json!({ "earliest_seq": earliest }).to_string())
            }
            Out::Detached { why, resume_seq } => {
                s.phase = Phase::Done;
                let resume = format!("reconnect with Last-Event-ID or from_seq={resume_seq}");
                let (event, reason, message) = match why {
                    Detach::Full => (
                        "pepper.overflow",
                        "buffer_full",
                        format!(
                            "this stream fell {} events behind the live stream and was disconnected; {resume}",
                            s.state.config.stream_buffer_events
                        ),
                    ),
                    Detach::Bytes => (
                        "pepper.overflow",
                        "buffer_bytes",
                        format!(
                            "this stream held {} MiB of undelivered events and was disconnected; {resume}",
                            crate::SUBSCRIBER_BUFFER_BYTES_MAX / (1024 * 1024)
                        ),
                    ),
                    Detach::Behind => (
                        "pepper.error",
                        "dispatcher_behind",
                        format!("the site's live stream fell behind its retention; {resume}"),
                    ),
                    Detach::Failed => (
                        "pepper.error",
                        "dispatcher_failed",
                        format!("the site's live stream failed (its log says why); {resume}"),
                    ),
                };
                let data = json!({ "resume_seq": resume_seq, "reason": reason, "message": message });
                SseEvent::default().event(event).data(data.to_string())
            }
            Out::Unauthorized => {
                s.phase = Phase::Done;
                let message = "this stream's token was revoked or expired, or its grant was taken back";
                SseEvent::default()
                    .event("pepper.unauthorized")
                    .data(json!({ "reason": "unauthorized", "message": message }).to_string())
            }
            Out::Failed(message) => {
                s.phase = Phase::Done;
                tracing::error!(%message, "an SSE stream failed");
                SseEvent::default().event("pepper.error").data(json!({ "message": message }).to_string())
            }
        };
        Some((Ok::<_, Infallible>(event), (s, stopping)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE)).into_response()
}

async fn long_poll(
    state: AppState,
    sub: Subscription,
    from: u64,
    wait_ms: u64,
    max: usize,
) -> Result<Response, ApiError> {
    if max == 0 || max > LONG_POLL_EVENTS_MAX {
        return Err(ApiError::invalid_query(format!("max must be 1 to {LONG_POLL_EVENTS_MAX}")));
    }
    if wait_ms > LONG_POLL_WAIT_MS_MAX {
        return Err(ApiError::invalid_query(format!("wait_ms must be at most {LONG_POLL_WAIT_MS_MAX}")));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut from = from;
    loop {
        let filter = filter(&sub);
        let scan = state.store.read(move |v| v.scan(from, u64::MAX, &filter, max, LONG_POLL_SCAN_MAX)).await?;
        let (records, next_seq) = match scan {
            Scan::Records { records, next_seq } => (records, next_seq),
            Scan::Compacted { earliest } => return Err(ApiError::compacted(from, earliest)),
        };
        let mut events = Vec::new();
        let mut ended = None;
        let mut next = next_seq;
        for record in &records {
            match meaning(&sub, record) {
                Meaning::Deliver => {
                    if let Some(e) = EventOut::from_record(record) {
                        state.metrics.deliveries.inc();
                        events.push(e);
                    }
                }
                Meaning::LeaseEnded(reason) => {
                    ended = Some(reason.name());
                    next = record.seq + 1;
                    break;
                }
                Meaning::Nothing => {}
            }
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !events.is_empty() || ended.is_some() || remaining.is_zero() {
            let mut body = json!({ "events": events, "next_seq": next });
            if let Some(reason) = ended {
                body["lease_ended"] = json!(reason);
            }
            return Ok(Json(body).into_response());
        }
        // Nothing yet: wait for the log to grow past what was scanned.
        from = next_seq;
        tokio::select! {
            _ = state.store.wait_for_seq(next_seq, remaining) => {}
            _ = state.stopped() => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the site is stopping")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored event whose type holds a line break (logged before types
    /// were checked) is sent on one `event:` line, without a panic.
    #[tokio::test]
    async fn an_event_type_with_a_line_break_encodes_on_one_line() {
        assert_eq!(event_field("attribute"), "attribute");
        let events = ["x\ny", "x\r\ny", "a\u{0}b\u{85}"]
            .map(|t| Ok::<_, Infallible>(SseEvent::default().id("7").event(event_field(t)).data("{}")));
        let response = axum::response::sse::Sse::new(futures_util::stream::iter(events)).into_response();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(text.contains("event: x\\u{a}y\n"), "{text}");
        assert!(text.contains("event: x\\u{d}\\u{a}y\n"), "{text}");
        assert!(text.contains("event: a\\u{0}b\\u{85}\n"), "{text}");
        assert_eq!(text.matches("data: {}").count(), 3, "{text}");
    }
}
