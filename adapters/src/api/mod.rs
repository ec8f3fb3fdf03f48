//! The HTTP API, under `/v1/`, one module per resource. Handlers are thin:
//! they parse, call the store (whose RocksDB calls run on the blocking pool
//! or the writer thread, never on the async executor) and map the outcome.
//! Every error leaves through [`ApiError`], in one JSON shape.
//! `docs/api.md` describes every endpoint.
//!
//! - `events`: publishing and paging through events.
//! - `leases`, `streams`: leases and their SSE or long-poll streams, watches.
//! - `tuples`: PLDB's latest values and history.
//! - `models`: the CIM model repository.
//! - `recording`, `sites`: recording policies and the federation's view.
//! - `peer`: the site-to-site endpoints (secret required).
//! - `principals`: principals, tokens and grants (`auth`).
//! - `federated`: the `scope=` layer that fans a query out to other sites.
//! - `health`, `metrics`: for load balancers and scrapers.

pub mod events;
pub mod federated;
pub mod health;
pub mod leases;
pub mod metrics;
pub mod models;
pub mod peer;
pub mod principals;
pub mod recording;
pub mod sites;
pub mod streams;
pub mod tuples;

use axum::extract::{Request, State};
use axum::http::{header, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::api::events::{list_events, publish};
use crate::error::ApiError;
use crate::limits::REQUESTS_IN_FLIGHT_MAX;
use crate::state::AppState;

/// The API's routes under construction. Each route's handlers run behind
/// two route layers: the content type check of a state change, then the
/// body read whole (`edge`). As route layers they run only for the methods
/// a route has, so a method it lacks gets 405, not 415, and its body is
/// never read.
struct Routes {
    router: Router<AppState>,
    state: AppState,
}

impl Routes {
    fn new(state: &AppState) -> Routes {
        Routes { router: Router::new(), state: state.clone() }
    }

    fn api(mut self, path: &str, methods: MethodRouter<AppState>) -> Routes {
        let methods = methods
            .route_layer(axum::middleware::from_fn_with_state(self.state.body_reading.clone(), crate::edge::read_body))
            .route_layer(axum::middleware::from_fn(crate::edge::check_content_type));
        self.router = self.router.route(path, methods);
        self
    }
}

/// The API's routes over `state`.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    // The queries that take a federation scope (see `fanout`, which reads
    // the body the same way before it fans out).
    let federated = Routes::new(&state)
        .api("/v1/tuples", get(crate::api::tuples::list).delete(crate::api::tuples::delete))
        .api("/v1/tuples/history", get(crate::api::tuples::history))
        .api(
            "/v1/namespaces/{ns}/instances",
            get(crate::api::models::enumerate).post(crate::api::models::create_instance),
        )
        .api("/v1/namespaces/{ns}/query", post(crate::api::models::run_query))
        .router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::api::federated::layer));
    // Site to site: the secret is checked before any body is read.
    let peer = Routes::new(&state)
        .api("/v1/peer/heartbeat", post(crate::api::peer::heartbeat))
        .api("/v1/peer/records", post(crate::api::peer::records))
        .api("/v1/peer/cut", get(crate::api::peer::cut))
        .api("/v1/peer/replica", get(crate::api::peer::replica))
        .router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::api::peer::require_peer));
    let app = Routes::new(&state)
        .api("/metrics", get(crate::api::metrics::scrape))
        .api("/v1/health", get(crate::api::health::health))
        .api("/v1/events", get(list_events).post(publish))
        .api("/v1/leases", get(crate::api::leases::list).post(crate::api::leases::grant))
        .api("/v1/leases/{id}", get(crate::api::leases::get_one).delete(crate::api::leases::release))
        .api("/v1/leases/{id}/renew", post(crate::api::leases::renew))
        .api("/v1/leases/{id}/events", get(crate::api::streams::lease_events))
        .api("/v1/watch", get(crate::api::streams::watch))
        .api("/v1/sites", get(crate::api::sites::sites))
        .api("/v1/sites/{name}/key", axum::routing::delete(crate::api::sites::unpin))
        .api("/v1/auth/whoami", get(crate::api::principals::whoami))
        .api("/v1/auth/principals", get(crate::api::principals::list).post(crate::api::principals::create))
        .api("/v1/auth/principals/{name}", axum::routing::delete(crate::api::principals::remove))
        .api("/v1/auth/principals/{name}/tokens", post(crate::api::principals::create_token))
        .api("/v1/auth/principals/{name}/tokens/{id}", axum::routing::delete(crate::api::principals::revoke_token))
        .api(
            "/v1/auth/principals/{name}/grants",
            post(crate::api::principals::add_grant).delete(crate::api::principals::remove_grant),
        )
        .api("/v1/recording", get(crate::api::recording::status))
        .api(
            "/v1/recording/policies",
            axum::routing::put(crate::api::recording::put_policy).delete(crate::api::recording::delete_policy),
        )
        .api(
            "/v1/namespaces/{ns}/classes",
            get(crate::api::models::list_classes).post(crate::api::models::define_class),
        )
        .api("/v1/namespaces/{ns}/classes/{class}", get(crate::api::models::get_class))
        .api(
            "/v1/namespaces/{ns}/instances/{path}",
            get(crate::api::models::get_instance)
                .put(crate::api::models::replace_instance)
                .patch(crate::api::models::patch_instance)
                .delete(crate::api::models::delete_instance),
        )
        .api("/v1/namespaces/{ns}/instances/{path}/associators", get(crate::api::models::associators))
        .api("/v1/namespaces/{ns}/instances/{path}/references", get(crate::api::models::references))
        .api("/v1/namespaces/{ns}/instances/{path}/history", get(crate::api::models::history))
        .router
        .merge(federated)
        .merge(peer)
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()) })
        // Innermost first; see `edge` for what each does and why. Bodies
        // are read whole, within their limit, by `edge::read_body`.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.requests_in_flight.clone(), limit_in_flight))
        .layer(axum::middleware::from_fn_with_state(state.auth.clone(), crate::auth::identify));
    let app = match cors(&state.config.edge.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(axum::middleware::from_fn_with_state(state.host_check.clone(), crate::edge::check_host))
        .layer(axum::middleware::from_fn(crate::edge::json_errors))
        .layer(axum::middleware::from_fn_with_state(metrics, crate::metrics::track))
        .with_state(state)
}

/// CORS for the configured origins, or none (CORS off) when there are none.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderValue, Method};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::AUTHORIZATION,
                header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Axum middleware: answers 503 with `Retry-After` when
/// [`REQUESTS_IN_FLIGHT_MAX`] requests are already being handled, instead of
/// queueing without bound. An SSE stream holds its permit only until its
/// headers are sent; open streams count against `SUBSCRIBERS_MAX` instead.
async fn limit_in_flight(State(slots): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    match slots.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::overloaded(format!(
            "the site is handling {REQUESTS_IN_FLIGHT_MAX} requests already; retry shortly"
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::BODY_BYTES_MAX;
    use crate::state::ApiConfig;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use pepper_storage::Store;
    use serde_json::Value;
    use tower::ServiceExt;

    /// Each principal's live leases, for its quota, are read from the
    /// store when the site loads and then follow its commits.
    #[tokio::test]
    async fn lease_holders_are_loaded_at_start_and_follow_commits() {
        use pepper_storage::{Body as Record, LeaseEnd, LeaseGrant, Party};
        let grant = |id: &str, owner: Option<&str>, group: Option<&str>| {
            Record::LeaseGrant(LeaseGrant {
                id: id.into(),
                pattern: "/a/".into(),
                types: Vec::new(),
                ttl_ms: 60_000,
                expires_at_us: pepper_storage::now_us() + 60_000_000,
                group: group.map(str::to_string),
                from_seq: None,
                holder: Party::default(),
                owner: owner.map(str::to_string),
            })
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), pepper_storage::Options::new("t")).expect("open");
        store.append(vec![grant("l1", Some("p"), Some("p:g")), grant("l2", None, None)]).await.expect("append");
        let state = AppState::load(store.clone(), ApiConfig::default()).await.expect("state");
        assert_eq!(state.lease_holders.held("p"), [("l1".to_string(), Some("p:g".to_string()))]);
        store.append(vec![grant("l3", Some("p"), None)]).await.expect("append");
        assert_eq!(state.lease_holders.held("p").len(), 2, "a grant after the load");
        store.append(vec![Record::LeaseRelease(LeaseEnd { id: "l1".into() })]).await.expect("append");
        assert_eq!(state.lease_holders.held("p"), [("l3".to_string(), None)], "a release");
    }

    #[tokio::test]
    async fn an_oversized_body_gets_413_in_the_error_shape_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), pepper_storage::Options::new("t")).expect("open");
        let state = AppState::load(store.clone(), ApiConfig::default()).await.expect("state");
        let body = format!(r#"{{"channel": "/a.org/", "type": "t", "payload": "{}"}}"#, "x".repeat(BODY_BYTES_MAX));
        let request = Request::post("/v1/events")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let response = router(state).oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.expect("body");
        let err: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(err["error"]["code"], "too_large");
        assert_eq!(store.last_seq(), 0);
    }

    /// With every request slot taken, a request is answered 503 at once,
    /// with `Retry-After`, and writes nothing; so is an SSE stream past the
    /// stream limit.
    #[tokio::test]
    async fn overload_gets_503_with_retry_after_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), pepper_storage::Options::new("t")).expect("open");
        let mut state = AppState::load(store.clone(), ApiConfig::default()).await.expect("state");
        state.requests_in_flight = Arc::new(Semaphore::new(0));
        let request = Request::post("/v1/events")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"channel": "/a.org/", "type": "t"}"#))
            .expect("request");
        let response = router(state.clone()).oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.expect("body");
        let err: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(err["error"]["code"], "overloaded");
        assert_eq!(store.last_seq(), 0);

        state.requests_in_flight = Arc::new(Semaphore::new(1));
        state.subscriber_slots = Arc::new(Semaphore::new(0));
        let request = Request::get("/v1/watch?channel=/a.org/").body(Body::empty()).expect("request");
        let response = router(state.clone()).oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));

        // A snapshot past the snapshot-reader limit is refused the same way.
        state.subscriber_slots = Arc::new(Semaphore::new(1));
        state.snapshot_readers = Arc::new(Semaphore::new(0));
        let request = Request::get("/v1/watch?channel=/a.org/&snapshot=true").body(Body::empty()).expect("request");
        let response = router(state).oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.expect("body");
        assert!(String::from_utf8_lossy(&bytes).contains("snapshots"));
    }

    /// A panic on the store's writer thread poisons the store, and
    /// `/v1/health` then answers 503 in the API's error shape, so a load
    /// balancer takes the site out; the panicking write is not acknowledged.
    #[tokio::test]
    async fn a_writer_panic_makes_health_answer_503() {
        use pepper_storage::{Fault, FaultEngine, MemoryEngine, SystemClock};
        let faults = Arc::new(FaultEngine::new(Arc::new(MemoryEngine::new())));
        let store =
            Store::open_with(faults.clone(), Arc::new(SystemClock), pepper_storage::Options::new("t")).expect("open");
        let state = AppState::load(store.clone(), ApiConfig::default()).await.expect("state");
        let health = || Request::get("/v1/health").body(Body::empty()).expect("request");
        let response = router(state.clone()).oneshot(health()).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);

        faults.arm(Fault::Panic(1));
        let request = Request::post("/v1/events")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"channel": "/a.org/", "type": "t"}"#))
            .expect("request");
        let response = router(state.clone()).oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "the write is not acknowledged");
        assert!(store.poisoned().is_some());

        let response = router(state).oneshot(health()).await.expect("response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.expect("body");
        let err: Value = serde_json::from_slice(&bytes).expect("json");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
        assert_eq!(store.last_seq(), 0);
    }
}
