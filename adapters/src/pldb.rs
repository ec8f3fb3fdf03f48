//! PLDB: the last value and the history of every (channel, field), fed by
//! attribute events, and the ways to ask for them.
//!
//! **Tuples.** An event of type `attribute` (payload `{"field", "value",
//! "expire"?}`, or PsEPR's XML attribute payload) also sets the tuple
//! (its channel, field): the store writes the latest row and, when the value
//! changed, a history row, in the same batch as the event. A repeated
//! identical value refreshes the latest row's time, sequence number, source
//! and expiry but adds no history row: the history lists changes, which is
//! what senders that publish on change mean, and an agent refreshing its
//! expiries would otherwise flood it.
//!
//! **Expiry.** A tuple whose `expire` passes leaves the latest values: an
//! [`ExpiryIndex`] of tuple expiries is checked every
//! [`TUPLE_EXPIRY_TICK`], and each due tuple gets a `tuple.expire` record on
//! its channel (in batches), which removes the latest row and leaves a
//! tombstone; the history stays. Queries also hide a tuple whose expiry has
//! passed before its record is written. A refresh that wins the race keeps
//! the tuple: the store applies an expire record only to a tuple whose
//! expiry has passed.
//!
//! **Queries.** `GET /v1/tuples` (latest values under a channel, paged,
//! stating the snapshot's sequence number), `GET /v1/tuples/history`,
//! `DELETE /v1/tuples`. `GET /v1/watch?snapshot=true` (in `sse.rs`) streams
//! the latest values and then the changes after exactly that snapshot.
//!
//! **pldbget over channels.** A client that only publishes and subscribes
//! sends a `pldbget` event (`{"channel", "reply"}`) to [`PLDB_CHANNEL`]; the
//! site answers with a `pldbattrlist` event on the reply channel whose
//! attributes' field names are relative to the queried subtree.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use pepper_router::Channel;
use pepper_storage::{
    now_us, Body, Error as StoreError, Event, FeedItem, Filter, HistoryEntry, HistoryRange, Kind, Order, Party, Target,
    Tombstone, Tuple, TupleCursor, TupleEnd,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::envelope::{new_event_id, rfc3339_us};
use crate::error::ApiError;
use crate::expiry::ExpiryIndex;
use crate::http::AppState;
use crate::params::{page_limit, Bounds};

/// How often the tuple expiry task looks for expired tuples.
pub const TUPLE_EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Most tuples one expiry pass ends; the rest wait a tick.
pub const TUPLE_EXPIRIES_PER_TICK_MAX: usize = 100_000;

/// Tuples ended by one append of an expiry pass.
pub const TUPLE_EXPIRE_BATCH: usize = 512;

/// Most tuples one `GET /v1/tuples` page returns.
pub const TUPLES_PAGE_MAX: usize = 1000;

/// Most history rows one `GET /v1/tuples/history` answer returns.
pub const HISTORY_PAGE_MAX: usize = 1000;

/// Most history rows one history request reads while filtering by time;
/// an answer that stopped there says `"truncated": true` (narrow the range
/// with sequence numbers, or page on from the last one).
pub const HISTORY_SCAN_MAX: usize = 100_000;

/// Most attributes one `pldbattrlist` reply carries; a reply that stops
/// there says `"truncated": true`.
pub const PLDB_REPLY_ATTRIBUTES_MAX: usize = 1000;

/// About the most bytes of attributes one `pldbattrlist` reply carries (a
/// reply is one record, at most `RECORD_BYTES_MAX`); a reply cut there says
/// `"truncated": true`.
pub const PLDB_REPLY_BYTES_MAX: usize = 512 * 1024;

/// How long the pldbget responder waits before it reopens a failed feed.
const PLDBGET_RETRY: Duration = Duration::from_secs(1);

/// The channel `pldbget` requests are sent to.
pub const PLDB_CHANNEL: &str = "/pldb/";

/// The payload type of a PLDB request.
pub const PLDBGET_TYPE: &str = "pldbget";

/// The payload type of a PLDB reply.
pub const PLDBATTRLIST_TYPE: &str = "pldbattrlist";

const _: () = assert!(TUPLE_EXPIRE_BATCH <= pepper_storage::limits::BATCH_RECORDS_MAX);

/// The key of a tuple in the expiry index.
pub(crate) fn index_key(channel: &str, field: &str) -> String {
    format!("{channel}\0{field}")
}

fn split_index_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('\0')
}

/// The expiry index of every live tuple that has an expiry, read from the
/// store.
///
/// # Errors
/// Store read errors.
pub async fn load_tuple_index(store: &pepper_storage::Store) -> Result<ExpiryIndex, StoreError> {
    let index = ExpiryIndex::default();
    let mut after: Option<TupleCursor> = None;
    loop {
        let cursor = after.take();
        let page = store.read(move |v| v.latest("/", cursor.as_ref(), pepper_storage::limits::READ_ROWS_MAX)).await?;
        for t in &page.items {
            if let Some(at) = t.expires_at_us {
                index.set(&index_key(&t.channel, &t.field), at, t.seq);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(index),
        }
    }
}

/// A tuple on the wire.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TupleJson {
    /// The channel.
    pub channel: String,
    /// The field.
    pub field: String,
    /// The latest value.
    pub value: String,
    /// The sequence number of the event that last set or refreshed it.
    pub seq: u64,
    /// When that was (RFC 3339).
    pub time: String,
    /// When it expires (RFC 3339), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Who set it.
    pub source: SourceJson,
}

/// The sender of a tuple's value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceJson {
    /// Its service.
    pub service: String,
    /// Its instance.
    pub instance: String,
}

impl From<&Tuple> for TupleJson {
    fn from(t: &Tuple) -> TupleJson {
        TupleJson {
            channel: t.channel.clone(),
            field: t.field.clone(),
            value: t.value.clone(),
            seq: t.seq,
            time: rfc3339_us(t.time_us),
            expires_at: t.expires_at_us.map(rfc3339_us),
            source: SourceJson { service: t.source.service.clone(), instance: t.source.instance.clone() },
        }
    }
}

/// A removed tuple on the wire.
pub(crate) fn tombstone_json(t: &Tombstone) -> Value {
    json!({ "channel": t.channel, "field": t.field, "seq": t.seq, "time": rfc3339_us(t.time_us),
            "reason": t.reason.name() })
}

/// Whether a tuple's expiry has passed at `now_us` (its expire record may
/// not be written yet).
pub(crate) fn is_expired(t: &Tuple, now_us: u64) -> bool {
    t.expires_at_us.is_some_and(|at| at <= now_us)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TuplesQuery {
    channel: String,
    field: Option<String>,
    #[serde(default)]
    recursive: bool,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn encode_cursor(c: &TupleCursor) -> String {
    index_key(&c.channel, &c.field).bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(s: &str) -> Option<TupleCursor> {
    let bytes: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (channel, field) = split_index_key(&text)?;
    Some(TupleCursor { channel: channel.to_string(), field: field.to_string() })
}

/// `GET /v1/tuples?channel=&field=&recursive=&limit=&cursor=`.
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<TuplesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let channel = Channel::parse(&q.channel).map_err(ApiError::bad_channel)?.as_str().to_string();
    let limit = page_limit(q.limit, TUPLES_PAGE_MAX).map_err(ApiError::invalid_query)?;
    let cursor = match &q.cursor {
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::invalid_query("cursor is not one this API gave"))?),
        None => None,
    };
    let now = now_us();
    if let Some(field) = q.field {
        let (tuple, seq) = state.store.read(move |v| Ok((v.tuple(&channel, &field)?, v.seq()))).await?;
        let tuples: Vec<TupleJson> = tuple.iter().filter(|t| !is_expired(t, now)).map(TupleJson::from).collect();
        return Ok(Json(json!({ "seq": seq, "tuples": tuples })));
    }
    // Tuples on the channel itself sort first under "channel\0"; the whole
    // subtree is every key that starts with the channel.
    let prefix = match q.recursive {
        true => channel,
        false => format!("{channel}\0"),
    };
    let (page, seq) = state.store.read(move |v| Ok((v.latest(&prefix, cursor.as_ref(), limit)?, v.seq()))).await?;
    let tuples: Vec<TupleJson> = page.items.iter().filter(|t| !is_expired(t, now)).map(TupleJson::from).collect();
    let mut body = json!({ "seq": seq, "tuples": tuples });
    if let Some(next) = &page.next {
        body["next_cursor"] = json!(encode_cursor(next));
    }
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    channel: String,
    field: String,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    order: Option<String>,
}

fn history_json(channel: &str, field: &str, h: &HistoryEntry) -> Value {
    let mut v = json!({ "channel": channel, "field": field, "value": h.value, "seq": h.seq,
                        "time": rfc3339_us(h.time_us),
                        "source": { "service": h.source.service, "instance": h.source.instance } });
    if let Some(at) = h.expires_at_us {
        v["expires_at"] = json!(rfc3339_us(at));
    }
    v
}

/// `GET /v1/tuples/history?channel=&field=&since=&until=&limit=&order=`.
/// `since` and `until` are inclusive, each a sequence number or an RFC 3339
/// time.
pub(crate) async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let channel = Channel::parse(&q.channel).map_err(ApiError::bad_channel)?.as_str().to_string();
    let limit = page_limit(q.limit, HISTORY_PAGE_MAX).map_err(ApiError::invalid_query)?;
    let order = match q.order.as_deref() {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(other) => return Err(ApiError::invalid_query(format!("order {other:?} is not asc or desc"))),
    };
    let bounds = Bounds::parse(q.since.as_deref(), q.until.as_deref())?;
    let (from_seq, to_seq) = bounds.seqs();
    let field = q.field;
    let in_time = move |h: &HistoryEntry| bounds.admits_time(h.time_us);
    // Time bounds filter rows as they are read, a page at a time, so a long
    // history before `since` (or after `until`) is skipped, never cut short.
    let (ch, f) = (channel.clone(), field.clone());
    // Read in pages of at least a thousand rows, however small `limit` is.
    let page_rows = limit.max(1000);
    let (rows, seq, complete) = state
        .store
        .read(move |v| {
            let (mut from, mut to, mut scanned) = (from_seq, to_seq, 0usize);
            let mut out = Vec::new();
            while out.len() < limit && scanned < HISTORY_SCAN_MAX && from <= to {
                let page = v.history(&ch, &f, HistoryRange { from_seq: from, to_seq: to, limit: page_rows, order })?;
                let Some(last) = page.last().map(|h| h.seq) else { break };
                scanned += page.len();
                out.extend(page.into_iter().filter(|h| in_time(h)));
                match order {
                    Order::Asc => from = last.saturating_add(1),
                    Order::Desc if last == 0 => break,
                    Order::Desc => to = last - 1,
                }
            }
            let complete = out.len() >= limit || scanned < HISTORY_SCAN_MAX;
            out.truncate(limit);
            Ok((out, v.seq(), complete))
        })
        .await?;
    let history: Vec<Value> = rows.iter().map(|h| history_json(&channel, &field, h)).collect();
    if !complete {
        return Ok(Json(json!({ "seq": seq, "history": history, "truncated": true })));
    }
    Ok(Json(json!({ "seq": seq, "history": history })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    channel: String,
    field: String,
}

/// `DELETE /v1/tuples?channel=&field=`: the tuple leaves the latest values
/// (a `tuple.delete` record and a tombstone); its history stays.
pub(crate) async fn delete(
    State(state): State<AppState>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let channel = Channel::parse(&q.channel).map_err(ApiError::bad_channel)?;
    if channel.is_reserved() {
        return Err(ApiError::reserved_channel(channel.as_str()));
    }
    let key = index_key(channel.as_str(), &q.field);
    let end = Body::TupleDelete(TupleEnd { channel: channel.as_str().to_string(), field: q.field });
    let st = state.clone();
    let appended = tokio::spawn(async move {
        let appended = st.store.append(vec![end]).await?;
        st.tuples.remove(&key, appended.first);
        Ok::<_, StoreError>(appended)
    })
    .await
    .map_err(ApiError::task_failed)?
    .map_err(|e| match e {
        StoreError::NotFound { key, .. } => {
            ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", format!("no live tuple {key}"))
        }
        other => other.into(),
    })?;
    Ok(Json(json!({ "seq": appended.first })))
}

/// Records what a committed batch of events did to tuple expiries: the
/// event at `first + i` set the tuple of `writes[i]`, if any.
pub(crate) fn note_tuple_writes(index: &ExpiryIndex, first: u64, writes: &[Option<(String, Option<u64>)>]) {
    for (i, w) in writes.iter().enumerate() {
        let Some((key, expires)) = w else { continue };
        let seq = first + i as u64;
        match expires {
            Some(at) => index.set(key, *at, seq),
            None => index.remove(key, seq),
        }
    }
}

/// Expires every tuple that is due, once, in appends of
/// [`TUPLE_EXPIRE_BATCH`].
pub async fn expire_due_tuples(state: &AppState) {
    let due = state.tuples.due(now_us(), TUPLE_EXPIRIES_PER_TICK_MAX);
    let tasks: Vec<_> =
        due.chunks(TUPLE_EXPIRE_BATCH).map(|batch| tokio::spawn(expire_batch(state.clone(), batch.to_vec()))).collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn expire_record(key: &str) -> Option<Body> {
    let (channel, field) = split_index_key(key)?;
    Some(Body::TupleExpire(TupleEnd { channel: channel.to_string(), field: field.to_string() }))
}

/// One append for the batch; if the store refuses it (a tuple was
/// refreshed or ended meanwhile), one append per tuple.
async fn expire_batch(state: AppState, batch: Vec<(String, u64)>) {
    // A key that names no tuple cannot expire one: drop it first, so that
    // the i-th record of the batch is the i-th key's.
    let (batch, bad): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(key, _)| expire_record(key).is_some());
    for (key, _) in bad {
        state.tuples.remove(&key, u64::MAX);
    }
    if batch.len() > 1 {
        let bodies: Vec<Body> = batch.iter().filter_map(|(key, _)| expire_record(key)).collect();
        match state.store.append(bodies).await {
            Ok(appended) => {
                for (i, (key, _)) in batch.iter().enumerate() {
                    state.tuples.remove(key, appended.first + i as u64);
                }
                return;
            }
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => {
                tracing::warn!(tuples = batch.len(), error = %e, "tuple expiry failed; retrying next tick");
                return;
            }
        }
    }
    for (key, version) in batch {
        let Some(record) = expire_record(&key) else { continue };
        match state.store.append(vec![record]).await {
            Ok(appended) => state.tuples.remove(&key, appended.first),
            Err(StoreError::NotFound { .. }) => state.tuples.remove(&key, version),
            // Refreshed meanwhile: take the stored expiry.
            Err(StoreError::Conflict { .. }) => {
                let Some((channel, field)) = split_index_key(&key).map(|(c, f)| (c.to_string(), f.to_string())) else {
                    continue;
                };
                if let Ok(Some(t)) = state.store.read(move |v| v.tuple(&channel, &field)).await {
                    match t.expires_at_us {
                        Some(at) => state.tuples.set(&key, at, t.seq),
                        None => state.tuples.remove(&key, t.seq),
                    }
                }
            }
            Err(e) => tracing::warn!(tuple = %key.replace('\0', " "), error = %e, "tuple expiry failed"),
        }
    }
}

/// Runs [`expire_due_tuples`] every [`TUPLE_EXPIRY_TICK`] until the runtime
/// stops.
pub async fn run_tuple_expiry(state: AppState) {
    crate::expiry::every(TUPLE_EXPIRY_TICK, || expire_due_tuples(&state)).await;
}

/// A `pldbget` request's payload.
#[derive(Debug, Deserialize)]
struct PldbGet {
    /// The subtree asked for.
    channel: String,
    /// Where the answer goes.
    reply: String,
}

/// The `pldbattrlist` answer to a request, or why there is none.
async fn answer_pldbget(state: &AppState, request: &Event) -> Result<Body, String> {
    let get: PldbGet = serde_json::from_slice(&request.payload)
        .map_err(|e| format!("pldbget payload needs channel and reply: {e}"))?;
    let subtree = Channel::parse(&get.channel).map_err(|e| e.to_string())?.as_str().to_string();
    let reply = Channel::parse(&get.reply).map_err(|e| e.to_string())?;
    if reply.is_reserved() {
        return Err(format!("reply channel {} is reserved", reply.as_str()));
    }
    let prefix = subtree.clone();
    let (page, seq) = state
        .store
        .read(move |v| Ok((v.latest(&prefix, None, PLDB_REPLY_ATTRIBUTES_MAX)?, v.seq())))
        .await
        .map_err(|e| e.to_string())?;
    let now = now_us();
    let mut bytes = 0usize;
    let mut cut = false;
    let attributes: Vec<Value> = page
        .items
        .iter()
        .filter(|t| !is_expired(t, now))
        // The reply is one record: stop before it would outgrow the budget.
        .take_while(|t| {
            bytes += t.channel.len() + t.field.len() + t.value.len() + 96;
            cut = bytes > PLDB_REPLY_BYTES_MAX;
            !cut
        })
        .map(|t| {
            // Field names relative to the queried subtree: the tuple's
            // channel below it, then its field.
            let below = t.channel.strip_prefix(subtree.as_str()).unwrap_or_default();
            let mut a = json!({ "field": format!("{below}{}", t.field), "value": t.value, "seq": t.seq,
                                "time": rfc3339_us(t.time_us) });
            if let Some(at) = t.expires_at_us {
                a["expire"] = json!(at.saturating_sub(now).div_ceil(1_000_000));
            }
            a
        })
        .collect();
    let mut payload = json!({ "channel": subtree, "seq": seq, "attribute": attributes });
    if page.next.is_some() || cut {
        payload["truncated"] = json!(true);
    }
    Ok(Body::Event(Event {
        id: new_event_id(),
        channel: reply.as_str().to_string(),
        event_type: PLDBATTRLIST_TYPE.to_string(),
        from: Party { service: "pldb".into(), instance: state.store.site().to_string() },
        to: Target { service: Some(request.from.service.clone()).filter(|s| !s.is_empty()), instance: None },
        distribution: pepper_storage::Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        tuple: None,
    }))
}

/// Answers `pldbget` requests published on [`PLDB_CHANNEL`] from now on,
/// until the store closes. A request that cannot be answered is logged and
/// skipped; the requester's own timeout covers it.
pub async fn run_pldbget(state: AppState) {
    let mut feed = state.store.feed(state.store.last_seq() + 1, feed_filter());
    let mut stopping = state.stopping();
    loop {
        let next = tokio::select! {
            next = feed.next() => next,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let record = match next {
            Ok(FeedItem::Record(r)) => r,
            Ok(FeedItem::Compacted { earliest }) => {
                tracing::warn!(earliest, "pldbget requests were trimmed before they were answered");
                feed = state.store.feed(earliest, feed_filter());
                continue;
            }
            Err(StoreError::Closed) => return,
            Err(e) => {
                // Reopen at the same position after a pause: a request is
                // answered late rather than never.
                let at = feed.position();
                tracing::error!(error = %e, position = at, "pldbget feed failed; retrying");
                tokio::time::sleep(PLDBGET_RETRY).await;
                feed = state.store.feed(at, feed_filter());
                continue;
            }
        };
        let Body::Event(request) = &record.body else { continue };
        match answer_pldbget(&state, request).await {
            Ok(reply) => {
                if let Err(e) = state.store.append(vec![reply]).await {
                    tracing::warn!(seq = record.seq, error = %e, "pldbattrlist reply not logged");
                }
            }
            Err(why) => tracing::info!(seq = record.seq, %why, "pldbget request not answered"),
        }
    }
}

fn feed_filter() -> Filter {
    Filter {
        channel_prefix: Some(PLDB_CHANNEL.to_string()),
        types: vec![PLDBGET_TYPE.to_string()],
        kinds: vec![Kind::Event],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = TupleCursor { channel: "/a.org/x/".into(), field: "f 1".into() };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("2f61"), None, "no separator");
    }
}
