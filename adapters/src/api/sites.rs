//! `GET /v1/sites`: this site and every peer it knows, with its state (up,
//! suspect, down), heartbeat latency, forwarding cursor and errors, read
//! from the peer registry (`pepper_router::Registry`) and the forwarders'
//! status, both held in `federation`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use pepper_router::{Action, Resource};

/// `GET /v1/sites`: this site and every peer it knows, with state, last
/// contact, latency and forwarding lag.
pub(crate) async fn sites(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Sites, &Resource::Site)?;
    let fed = &state.federation;
    let head = state.store.last_seq();
    let peers: Vec<Value> = fed.with_registry(|registry, now| {
        fed.forwarding(|forwarding| {
            registry
                .peers(now)
                .map(|p| {
                    let f = forwarding.get(p.name);
                    let cursor = f.and_then(|f| f.cursor);
                    let lag = cursor.map(|c| (head + 1).saturating_sub(c));
                    json!({
                        "name": p.name,
                        "url": p.url,
                        "region": p.region,
                        "state": p.state.as_str(),
                        "last_seen": p.last_seen_wall_us.map(crate::wire::envelope::rfc3339_us),
                        "last_seen_ms_ago": p.last_seen_ago.map(|t| t.as_millis() as u64),
                        "latency_ms": p.rtt_ms,
                        "seq": p.head_seq,
                        "cursor": cursor,
                        "cursor_lag": lag,
                        "interests": p.interests,
                        "forwarded": f.map_or(0, |f| f.forwarded),
                        "last_error": f.and_then(|f| f.last_error.as_deref()),
                        "stalled": f.is_some_and(|f| f.stalled),
                        "key": p.key,
                    })
                })
                .collect()
        })
    });
    Ok(Json(json!({
        "site": fed.site,
        "region": fed.region(),
        "url": fed.url(),
        "key": fed.public_key(),
        "seq": head,
        "federation": fed.enabled(),
        "heartbeat_ms": fed.heartbeat().as_millis() as u64,
        "interests": fed.interests(),
        "peers": peers,
    })))
}
