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
//! `DELETE /v1/tuples`. `GET /v1/watch?snapshot=true` (in `streams`) streams
//! the latest values and then the changes after exactly that snapshot.
//!
//! **pldbget over channels.** A client that only publishes and subscribes
//! sends a `pldbget` event (`{"channel", "reply"}`) to [`PLDB_CHANNEL`]; the
//! site answers with a `pldbattrlist` event on the reply channel whose
//! attributes' field names are relative to the queried subtree.
//!
//! This module holds the HTTP queries; expiry runs in `loops::expiry`, the
//! expiry index in `expiry`, and `pldbget` in `loops::pldbget`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use pepper_router::{Action, Channel, Pattern, Resource};
use pepper_storage::{now_us, Body, Error as StoreError, HistoryEntry, HistoryRange, Order, TupleCursor, TupleEnd};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Caller, Wanted};
use crate::error::ApiError;
use crate::expiry::index_key;
use crate::expiry::is_expired;
use crate::expiry::split_index_key;
use crate::params::{page_limit, Bounds};
use crate::state::AppState;
use crate::wire::envelope::rfc3339_us;
use crate::wire::tuples::TupleJson;

/// Most tuples one `GET /v1/tuples` page returns.
pub const TUPLES_PAGE_MAX: usize = 1000;

/// Most history rows one `GET /v1/tuples/history` answer returns.
pub const HISTORY_PAGE_MAX: usize = 1000;

/// Most history rows one history request reads while filtering by time;
/// an answer that stopped there says `"truncated": true` (narrow the range
/// with sequence numbers, or page on from the last one).
pub const HISTORY_SCAN_MAX: usize = 100_000;

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

/// What a tuple query reads: the channel, or with `recursive` its whole
/// subtree. A caller needs `tuples.read` over all of it: a query is
/// refused, never answered with part of what it asked for.
///
/// # Errors
/// `invalid_channel` (400).
pub(crate) fn read_wanted(channel: &str, recursive: bool) -> Result<Wanted, ApiError> {
    Ok(match recursive {
        true => Wanted::Channels(Pattern::parse(channel).map_err(ApiError::bad_channel)?),
        false => Wanted::Channel(Channel::parse(channel).map_err(ApiError::bad_channel)?),
    })
}

/// `GET /v1/tuples?channel=&field=&recursive=&limit=&cursor=`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<TuplesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let channel = Channel::parse(&q.channel).map_err(ApiError::bad_channel)?.as_str().to_string();
    caller.require_wanted(Action::TuplesRead, &read_wanted(&channel, q.recursive)?)?;
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
    caller: Caller,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let channel = Channel::parse(&q.channel).map_err(ApiError::bad_channel)?.as_str().to_string();
    caller.require_wanted(Action::TuplesRead, &read_wanted(&channel, false)?)?;
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
    caller: Caller,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let channel = Channel::parse(&q.channel).map_err(ApiError::bad_channel)?;
    caller.require(Action::TuplesDelete, &Resource::Channel(&channel))?;
    if channel.is_reserved() {
        return Err(ApiError::reserved_channel(channel.as_str()));
    }
    let end = Body::TupleDelete(TupleEnd { channel: channel.as_str().to_string(), field: q.field });
    let st = state.clone();
    let appended = tokio::spawn(async move { st.store.append(vec![end]).await })
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
