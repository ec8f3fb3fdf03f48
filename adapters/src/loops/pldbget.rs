//! `pldbget` over channels: a client that only publishes and subscribes
//! sends a `pldbget` event (`{"channel", "reply"}`) to [`PLDB_CHANNEL`];
//! this task reads those events from the site's feed and answers each with
//! a `pldbattrlist` event on the reply channel, whose attributes' field
//! names are relative to the queried subtree, within
//! [`PLDB_REPLY_ATTRIBUTES_MAX`] and [`PLDB_REPLY_BYTES_MAX`]. With auth
//! on, it answers as the request's publisher (see [`answer_pldbget`]).

use std::time::Duration;

use pepper_router::{Action, Channel, Pattern, Resource};
use pepper_storage::{now_us, Body, Error as StoreError, Event, FeedItem, Filter, Kind, Party, Target};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::expiry::is_expired;
use crate::state::AppState;
use crate::wire::envelope::{new_event_id, rfc3339_us};

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

/// A `pldbget` request's payload.
#[derive(Debug, Deserialize)]
struct PldbGet {
    /// The subtree asked for.
    channel: String,
    /// Where the answer goes.
    reply: String,
}

/// The `pldbattrlist` answer to a request logged by `origin`, or why there
/// is none.
///
/// With auth on, the site answers as the request's publisher: only a
/// request this site stamped (a peer's principals are not this site's),
/// whose principal may read the whole subtree (`tuples.read`) and publish
/// on the reply channel. Anyone who may subscribe to the reply channel
/// reads the answer, as with any event there.
async fn answer_pldbget(state: &AppState, origin: &str, request: &Event) -> Result<Body, String> {
    let get: PldbGet = serde_json::from_slice(&request.payload)
        .map_err(|e| format!("pldbget payload needs channel and reply: {e}"))?;
    let subtree = Channel::parse(&get.channel).map_err(|e| e.to_string())?.as_str().to_string();
    let reply = Channel::parse(&get.reply).map_err(|e| e.to_string())?;
    if reply.is_reserved() {
        return Err(format!("reply channel {} is reserved", reply.as_str()));
    }
    if state.auth.enabled() && origin != state.store.site() {
        return Err(format!("a request from {origin}: with auth on, a site answers only its own principals"));
    }
    let Some(caller) = state.auth.acting_as(request.principal.as_deref()) else {
        return Err("the request carries no principal this site knows".to_string());
    };
    let pattern = Pattern::parse(&subtree).map_err(|e| e.to_string())?;
    if !caller.may(Action::TuplesRead, &Resource::Channels(&pattern))
        || !caller.may(Action::Publish, &Resource::Channel(&reply))
    {
        return Err(format!("principal {} may not read {subtree} or publish on {}", caller.name(), reply.as_str()));
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
        principal: None,
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
        match answer_pldbget(&state, &record.origin, request).await {
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
