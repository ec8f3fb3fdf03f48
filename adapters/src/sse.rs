//! Live delivery: Server-Sent Events and long-poll, for leases and watches.
//!
//! Each subscriber reads the log through its own change feed, from its own
//! cursor: it catches up from disk and then follows the live tail with no
//! gap and no duplicate, because both are the same loop over the same
//! durable sequence numbers. The SSE `id:` of every event is its sequence
//! number, so a client resumes exactly where it stopped with `Last-Event-ID`
//! (or `?from_seq=`), across a dropped connection or a server restart.
//!
//! A slow client is never skipped and never slows anyone else: its stream is
//! only read as fast as its socket drains, it holds at most one feed chunk in
//! memory, and the writer never waits for it. What it has not read yet stays
//! in the log; if retention trims it first, the stream says so with a
//! `pepper.compacted` event rather than skipping.
//!
//! A lease stream ends with an explicit `pepper.lease_ended` event, placed in
//! the log's order: every matching event logged before the lease's release
//! or expire record is delivered first.
//!
//! Rejected for now: one dispatcher that reads the log once and pushes each
//! record to the matching leases through the routing trie. It scales better
//! with many leases on one site and is the next step; per-subscriber feeds
//! come first because they are correct by construction.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pepper_router::Pattern;
use pepper_storage::{Body, Feed, FeedItem, Filter, Kind, Party, Record, Scan, Target};
use serde::Deserialize;
use serde_json::json;

use crate::envelope::{canonical_types, EventOut};
use crate::error::ApiError;
use crate::http::AppState;

/// How often an idle SSE stream sends a keep-alive comment.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// Longest a long-poll request waits for a first event, in milliseconds.
pub const LONG_POLL_WAIT_MS_MAX: u64 = 30_000;

/// Most events one long-poll answer carries.
pub const LONG_POLL_EVENTS_MAX: usize = 1000;

/// Most log records one long-poll scan reads.
pub const LONG_POLL_SCAN_MAX: u64 = 100_000;

/// What one subscriber wants.
#[derive(Clone, Debug)]
struct Subscription {
    pattern: Pattern,
    types: Vec<String>,
    /// The lease whose end closes the stream; `None` for a watch.
    lease: Option<String>,
    /// The lease holder, matched against each event's `to`; a watch has no
    /// holder and receives every matching event.
    holder: Option<Party>,
}

/// What a log record means to a subscriber.
enum Delivery {
    Event(Box<EventOut>),
    LeaseEnded { reason: &'static str },
    Nothing,
}

impl Subscription {
    fn filter(&self) -> Filter {
        let mut kinds = vec![Kind::Event];
        if self.lease.is_some() {
            kinds.extend([Kind::LeaseRelease, Kind::LeaseExpire]);
        }
        Filter { kinds, ..Filter::default() }
    }

    /// Whether an event's `to` lets this subscriber receive it: each part of
    /// `to` that is given must equal the holder's.
    fn addressed(&self, to: &Target) -> bool {
        let Some(holder) = &self.holder else { return true };
        to.service.as_ref().is_none_or(|s| *s == holder.service)
            && to.instance.as_ref().is_none_or(|i| *i == holder.instance)
    }

    fn deliver(&self, record: &Record) -> Delivery {
        match &record.body {
            Body::Event(e)
                if self.pattern.matches_name(&e.channel)
                    && (self.types.is_empty() || self.types.contains(&e.event_type))
                    && self.addressed(&e.to) =>
            {
                EventOut::from_record(record).map_or(Delivery::Nothing, |e| Delivery::Event(Box::new(e)))
            }
            Body::LeaseRelease(end) if self.lease.as_deref() == Some(&end.id) => {
                Delivery::LeaseEnded { reason: "released" }
            }
            Body::LeaseExpire(end) if self.lease.as_deref() == Some(&end.id) => {
                Delivery::LeaseEnded { reason: "expired" }
            }
            _ => Delivery::Nothing,
        }
    }
}

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
    let from = match headers.get("last-event-id") {
        Some(v) => {
            let text = v.to_str().unwrap_or_default().trim();
            let last: u64 = text
                .parse()
                .map_err(|_| ApiError::invalid_query(format!("Last-Event-ID {text:?} is not a sequence number")))?;
            last + 1
        }
        None => from_seq.unwrap_or(default),
    };
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
    let sub = Subscription { pattern, types: lease.types.clone(), lease: Some(id), holder: Some(lease.holder.clone()) };
    let from = start_seq(&state, &headers, q.from_seq, lease.from_seq.unwrap_or(lease.granted_seq + 1), seen)?;
    if q.wait_ms.is_some() || q.max.is_some() {
        return long_poll(state, sub, from, q.wait_ms.unwrap_or(0), q.max.unwrap_or(100)).await;
    }
    Ok(sse(state, sub, from))
}

pub(crate) async fn watch(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let pattern = Pattern::parse(&q.channel).map_err(ApiError::bad_channel)?;
    let types = q.types.as_deref().map(|t| canonical_types(t.split(','))).unwrap_or_default();
    let seen = state.store.last_seq();
    let from = start_seq(&state, &headers, q.from_seq, seen + 1, seen)?;
    Ok(sse(state, Subscription { pattern, types, lease: None, holder: None }, from))
}

struct StreamState {
    state: AppState,
    feed: Feed,
    sub: Subscription,
    done: bool,
}

fn sse(state: AppState, sub: Subscription, from: u64) -> Response {
    let feed = state.store.feed(from, sub.filter());
    let stream = futures_util::stream::unfold(StreamState { state, feed, sub, done: false }, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let next = tokio::select! {
                next = st.feed.next() => next,
                // The server is stopping: end the stream; the client resumes
                // from its last id.
                _ = st.state.stopped() => return None,
            };
            let event = match next {
                Ok(FeedItem::Record(record)) => match st.sub.deliver(&record) {
                    Delivery::Event(out) => {
                        let m = &st.state.metrics;
                        m.deliveries.inc();
                        m.delivery_lag.observe(st.state.store.last_seq().saturating_sub(record.seq) as f64);
                        let data = serde_json::to_string(&out).unwrap_or_default();
                        SseEvent::default().id(record.seq.to_string()).event(out.event_type.clone()).data(data)
                    }
                    Delivery::LeaseEnded { reason } => {
                        st.done = true;
                        let data = json!({ "id": st.sub.lease, "reason": reason, "seq": record.seq });
                        SseEvent::default().event("pepper.lease_ended").data(data.to_string())
                    }
                    Delivery::Nothing => continue,
                },
                Ok(FeedItem::Compacted { earliest }) => {
                    st.done = true;
                    SseEvent::default().event("pepper.compacted").data(json!({ "earliest_seq": earliest }).to_string())
                }
                // The site is shutting down: end the stream; the client
                // resumes from its last id.
                Err(pepper_storage::Error::Closed) => return None,
                Err(e) => {
                    st.done = true;
                    tracing::error!(error = %e, "feed failed under an SSE stream");
                    SseEvent::default().event("pepper.error").data(json!({ "message": e.to_string() }).to_string())
                }
            };
            return Some((Ok::<_, Infallible>(event), st));
        }
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
        let filter = sub.filter();
        let scan = state.store.read(move |v| v.scan(from, u64::MAX, &filter, max, LONG_POLL_SCAN_MAX)).await?;
        let (records, next_seq) = match scan {
            Scan::Records { records, next_seq } => (records, next_seq),
            Scan::Compacted { earliest } => return Err(ApiError::compacted(from, earliest)),
        };
        let mut events = Vec::new();
        let mut ended = None;
        let mut next = next_seq;
        for record in &records {
            match sub.deliver(record) {
                Delivery::Event(e) => {
                    state.metrics.deliveries.inc();
                    events.push(*e)
                }
                Delivery::LeaseEnded { reason } => {
                    ended = Some(reason);
                    next = record.seq + 1;
                    break;
                }
                Delivery::Nothing => {}
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
