//! The HTTP API (axum), under `/v1/`.
//!
//! Handlers are thin: they parse, call the store (whose RocksDB calls run on
//! the blocking pool, never on the async executor), and map the outcome.
//! Today the API has one endpoint:
//!
//! - `GET /v1/health`: 200 with the site, durability and the log's
//!   sequence range while the store accepts writes; 503 with the error shape
//!   once it refuses them (after a failed WAL write), so a load balancer or
//!   supervisor takes the site out of rotation.

use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use pepper_storage::{Durability, Store};
use serde::Serialize;

use crate::error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The site's store.
    pub store: Store,
}

/// The API's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()) })
        .with_state(state)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    site: String,
    durability: &'static str,
    last_seq: u64,
    earliest_seq: u64,
}

async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
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
