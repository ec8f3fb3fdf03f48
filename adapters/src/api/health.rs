//! `GET /v1/health`: 200 with the site, durability and the log's sequence
//! range while the store accepts writes; 503 once it refuses them (after a
//! failed WAL write or a panic on the writer thread), so a load balancer or
//! supervisor takes the site out.

use axum::extract::State;
use axum::Json;
use pepper_storage::Durability;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Serialize)]
pub(crate) struct Health {
    status: &'static str,
    site: String,
    durability: &'static str,
    last_seq: u64,
    earliest_seq: u64,
}

pub(crate) async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let store = &state.store;
    if let Some(reason) = store.poisoned() {
        return Err(pepper_storage::Error::Poisoned(reason).into());
    }
    Ok(Json(Health {
        status: "ok",
        site: store.site().to_string(),
        durability: match store.durability() {
            Durability::Sync => "sync",
            Durability::Buffered => "buffered",
        },
        last_seq: store.last_seq(),
        earliest_seq: store.earliest_seq(),
    }))
}
