//! `GET /metrics`: the site's counters in the Prometheus text format. The
//! counters themselves, and the middleware that counts requests, are in
//! `metrics`; this handler reads the store's and the streams' gauges at
//! scrape time.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::metrics::as_i64;
use crate::state::AppState;
use pepper_router::{Action, Resource};

pub(crate) async fn scrape(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Action::Metrics, &Resource::Site)?;
    let m = &state.metrics;
    let stats = state.store.stats();
    m.commits.set(as_i64(stats.groups));
    m.records.set(as_i64(stats.records));
    m.last_seq.set(as_i64(state.store.last_seq()));
    m.earliest_seq.set(as_i64(state.store.earliest_seq()));
    m.leases.set(as_i64(state.leases.len() as u64));
    m.streams.set(as_i64((crate::limits::SUBSCRIBERS_MAX - state.subscriber_slots.available_permits()) as u64));
    let mut text = String::new();
    encode(&mut text, &m.registry)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}
