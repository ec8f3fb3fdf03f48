//! `GET /v1/sites`: this site and every peer it knows, with its state (up,
//! suspect, down), heartbeat latency, forwarding cursor and errors, read
//! from the peer registry in `federation`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::federation::read;
use crate::state::AppState;

/// `GET /v1/sites`: this site and every peer it knows, with state, last
/// contact, latency and forwarding lag.
pub(crate) async fn sites(State(state): State<AppState>) -> Json<Value> {
    let fed = &state.federation;
    let head = state.store.last_seq();
    let peers: Vec<Value> = read(&fed.peers)
        .iter()
        .map(|(name, p)| {
            let lag = p.cursor.map(|c| (head + 1).saturating_sub(c));
            json!({
                "name": name,
                "url": p.url,
                "region": p.region,
                "state": fed.state_of(p),
                "last_seen": p.last_seen_us.map(crate::wire::envelope::rfc3339_us),
                "last_seen_ms_ago": p.last_seen.map(|t| t.elapsed().as_millis() as u64),
                "latency_ms": p.rtt_ms,
                "seq": p.head_seq,
                "cursor": p.cursor,
                "cursor_lag": lag,
                "interests": p.wants.borrow().as_ref().map(|w| w.wants.len()),
                "forwarded": p.forwarded,
                "last_error": p.last_error,
                "stalled": p.stalled,
            })
        })
        .collect();
    Json(json!({
        "site": fed.site,
        "region": fed.region,
        "url": fed.url(),
        "seq": head,
        "federation": fed.enabled(),
        "heartbeat_ms": fed.heartbeat.as_millis() as u64,
        "interests": read(&fed.interests).0.clone(),
        "peers": peers,
    }))
}
