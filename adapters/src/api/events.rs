//! `POST /v1/events` and `GET /v1/events`.
//!
//! - `POST /v1/events`: publishes one event or a batch, in JSON (an object or
//!   an array) or PsEPR XML (`<event>` or `<events>`, with an XML content
//!   type). A batch is one atomic append. It answers 200 only after the
//!   commit is durable: `{"seq", "id"}` for one event, `{"first_seq",
//!   "last_seq", "ids"}` for a batch.
//! - `GET /v1/events?channel=&types=&from_seq=&limit=`: pages through the
//!   events in the log, oldest first, as JSON or (with `Accept:
//!   application/xml`) as an `<events>` document. `next_seq` continues the
//!   page; a start below retention answers 410 with `earliest_seq`.
//!
//! Limits: [`EVENTS_PAGE_MAX`] events per page and [`EVENTS_SCAN_MAX`] log
//! records scanned per page request; the body and batch limits are the
//! API's (`limits`, `wire::envelope`).

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pepper_router::{Action, Channel, Resource};
use pepper_storage::{Body as RecordBody, Filter, Kind, Scan};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use crate::wire::envelope::EVENTS_PER_REQUEST_MAX;

use crate::auth::{Caller, Wanted};
use crate::error::ApiError;
use crate::limits::BODY_BYTES_MAX;
use crate::state::AppState;
use crate::wire::envelope::{canonical_types, EventIn, EventOut};

/// Most events one `GET /v1/events` page returns.
pub const EVENTS_PAGE_MAX: usize = 1000;

/// Most log records one `GET /v1/events` request scans looking for matches;
/// a sparse channel may return an empty page with a `next_seq` further on.
pub const EVENTS_SCAN_MAX: u64 = 100_000;

fn is_xml(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        v.contains("application/xml") || v.contains("text/xml") || v.contains("+xml")
    })
}

/// Parses a publish body into events and whether it was a single event.
fn parse_publish(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<EventIn>, bool), ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::invalid_body(format!("body is not UTF-8: {e}")))?;
    if is_xml(headers, header::CONTENT_TYPE) {
        return crate::wire::xml::parse_body(text);
    }
    crate::wire::envelope::parse_json(text)
}

pub(crate) async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::too_large(format!("request body is over the limit of {BODY_BYTES_MAX} bytes")))?;
    let (events, single) = parse_publish(&headers, &bytes)?;
    if events.is_empty() {
        return Err(ApiError::invalid_body("no events to publish"));
    }
    if events.len() > EVENTS_PER_REQUEST_MAX {
        return Err(ApiError::too_large(format!(
            "{} events in one request, over the limit of {EVENTS_PER_REQUEST_MAX}",
            events.len()
        )));
    }
    let many = events.len() > 1;
    let mut bodies = Vec::with_capacity(events.len());
    let mut ids = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let numbered = |err: ApiError| match many {
            true => ApiError::new(err.status(), err.code(), format!("event {}: {}", i + 1, err.message())),
            false => err,
        };
        let mut event = e.into_event().map_err(numbered)?;
        event.principal = caller.stamp();
        // One refused event refuses the whole batch: nothing is appended.
        // (The channel was checked by `into_event`; parsed again only to
        // match it against a principal's grants.)
        if !caller.unrestricted() {
            let channel = Channel::parse(&event.channel).map_err(ApiError::bad_channel).map_err(numbered)?;
            caller.require(Action::Publish, &Resource::Channel(&channel)).map_err(numbered)?;
        }
        ids.push(event.id.clone());
        bodies.push(RecordBody::Event(event));
    }
    // Charged once every event is allowed: a refused batch costs nothing.
    state.quotas.publish(&caller, bodies.len(), std::time::Instant::now())?;
    // The append runs in its own task so a client that hangs up mid-commit
    // cannot cancel it halfway: the outcome is the same either way. The
    // tuple expiry index follows the commit by itself (`expiry::ExpiryFold`).
    let st = state.clone();
    let appended =
        tokio::spawn(async move { st.store.append(bodies).await }).await.map_err(ApiError::task_failed)??;
    let mut answer = match single {
        true => json!({ "seq": appended.first, "id": ids[0] }),
        false => json!({ "first_seq": appended.first, "last_seq": appended.last, "ids": ids }),
    };
    if appended.replayed {
        // A retry of ids already logged within the dedupe window.
        answer["replayed"] = json!(true);
    }
    Ok(Json(answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    channel: Option<String>,
    types: Option<String>,
    from_seq: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct EventsPage {
    events: Vec<EventOut>,
    next_seq: u64,
    last_seq: u64,
}

pub(crate) async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    caller.require_wanted(Action::Subscribe, &Wanted::subtree(q.channel.as_deref())?)?;
    let limit = crate::params::page_limit(q.limit, EVENTS_PAGE_MAX).map_err(ApiError::invalid_query)?;
    let channel_prefix = match q.channel {
        Some(c) => Some(Channel::parse(&c).map_err(ApiError::bad_channel)?.as_str().to_string()),
        None => None,
    };
    let types = q.types.as_deref().map(|t| canonical_types(t.split(','))).unwrap_or_default();
    let filter = Filter { channel_prefix, types, kinds: vec![Kind::Event] };
    let from = q.from_seq.unwrap_or(1);
    let (scan, last_seq) =
        state.store.read(move |v| Ok((v.scan(from, u64::MAX, &filter, limit, EVENTS_SCAN_MAX)?, v.seq()))).await?;
    let (records, next_seq) = match scan {
        Scan::Records { records, next_seq } => (records, next_seq),
        Scan::Compacted { earliest } => return Err(ApiError::compacted(from, earliest)),
    };
    let events: Vec<EventOut> = records.iter().filter_map(EventOut::from_record).collect();
    if is_xml(&headers, header::ACCEPT) {
        let xml = crate::wire::xml::write_events(&events, false);
        return Ok(([(header::CONTENT_TYPE, "application/xml")], xml).into_response());
    }
    Ok(Json(EventsPage { events, next_seq, last_seq }).into_response())
}
