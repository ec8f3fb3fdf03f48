//! `GET /v1/sites`: this site and every peer it knows, with its state (up,
//! suspect, down), heartbeat latency, forwarding cursor and errors, read
//! from the peer registry (`pepper_router::Registry`) and the forwarders'
//! status, both held in `federation`. `DELETE /v1/sites/{name}/key`
//! forgets a peer's pinned site key.

use axum::extract::{Path, State};
use axum::http::StatusCode;
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

/// `DELETE /v1/sites/{name}/key`: forgets the site key pinned for peer
/// `name` (it lost its data folder, say), so its next authenticated
/// announcement pins a new one. 204, or 404 when none is pinned.
pub(crate) async fn unpin(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    // Unpinning lets the next announcement under that name pin any key:
    // the operator's decision, not a reader's of the federation.
    caller.require(Action::Admin, &Resource::Site)?;
    let state2 = state.clone();
    let done =
        tokio::spawn(async move { state2.federation.unpin(&state2.store, &caller, &name).await.map(|d| (d, name)) })
            .await
            .map_err(ApiError::task_failed)??;
    match done {
        (true, _) => Ok(StatusCode::NO_CONTENT),
        (false, name) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no site key is pinned for {name:?}")))
        }
    }
}
