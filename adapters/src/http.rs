//! The HTTP API (axum), under `/v1/`.
//!
//! Handlers are thin: they parse, call the store (whose RocksDB calls run on
//! the blocking pool or the writer thread, never on the async executor), and
//! map the outcome. Every error leaves through [`ApiError`], in one JSON
//! shape. Endpoints so far:
//!
//! - `GET /v1/health`: 200 with the site, durability and the log's sequence
//!   range while the store accepts writes; 503 once it refuses them (after a
//!   failed WAL write), so a load balancer or supervisor takes the site out.
//! - `POST /v1/events`: publishes one event or a batch, in JSON (an object or
//!   an array) or PsEPR XML (`<event>` or `<events>`, with an XML
//!   content type). A batch is one atomic append. It answers 200 only after
//!   the commit is durable: `{"seq", "id"}` for one event, `{"first_seq",
//!   "last_seq", "ids"}` for a batch.
//! - `GET /v1/events?channel=&types=&from_seq=&limit=`: pages through the
//!   events in the log, oldest first, as JSON or (with `Accept:
//!   application/xml`) as an `<events>` document. `next_seq` continues the
//!   page; a start below retention answers 410 with `earliest_seq`.
//!
//! Limits: [`REQUESTS_IN_FLIGHT_MAX`] requests at once (503 with
//! `Retry-After`), [`BODY_BYTES_MAX`] per request body (413), [`EVENTS_PER_REQUEST_MAX`]
//! events per publish (413), [`EVENTS_PAGE_MAX`] events per page and
//! [`EVENTS_SCAN_MAX`] log records scanned per page request.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use pepper_router::Channel;
use pepper_storage::{Body as RecordBody, Durability, Filter, Kind, Scan, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use crate::envelope::EVENTS_PER_REQUEST_MAX;

use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::dispatch::Dispatcher;
use crate::envelope::{canonical_types, EventIn, EventOut};
use crate::error::ApiError;
use crate::expiry::ExpiryIndex;
use crate::lease;
use crate::metrics::Metrics;
use crate::sse;

/// Largest request body, in bytes. Larger bodies get 413 before they are
/// parsed.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most requests handled at once. One more is answered 503 with
/// `Retry-After` at once rather than queued.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 4096;

/// Most events one `GET /v1/events` page returns.
pub const EVENTS_PAGE_MAX: usize = 1000;

/// Most log records one `GET /v1/events` request scans looking for matches;
/// a sparse channel may return an empty page with a `next_seq` further on.
pub const EVENTS_SCAN_MAX: u64 = 100_000;

const _: () = assert!(BODY_BYTES_MAX <= pepper_storage::limits::BATCH_BYTES_MAX);

/// Settings of the API that come from the site's configuration.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The longest time to live a lease is granted, in seconds.
    pub lease_ttl_max_s: u64,
    /// Events buffered per live stream before a client that does not keep
    /// up is disconnected ([`crate::SUBSCRIBER_BUFFER_EVENTS`] by default).
    pub stream_buffer_events: usize,
    /// Region, peers, peer secret and heartbeat.
    pub federation: crate::federation::FederationConfig,
    /// Recording policy and the supervisor's interval.
    pub supervisor: crate::supervisor::SupervisorConfig,
    /// Host names, CORS origins and the body timeout.
    pub edge: crate::edge::EdgeConfig,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            lease_ttl_max_s: crate::lease::LEASE_TTL_MAX_S_DEFAULT,
            stream_buffer_events: crate::SUBSCRIBER_BUFFER_EVENTS,
            federation: crate::federation::FederationConfig::default(),
            supervisor: crate::supervisor::SupervisorConfig::default(),
            edge: crate::edge::EdgeConfig::default(),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The site's store.
    pub store: Store,
    /// Live leases' expiries.
    pub leases: Arc<ExpiryIndex>,
    /// Live tuples' expiries.
    pub tuples: Arc<ExpiryIndex>,
    /// The API's settings (shared: every handler clones the state).
    pub config: Arc<ApiConfig>,
    /// Set once the server is stopping, so live streams end and graceful
    /// shutdown does not wait on them forever.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Counters and histograms for `GET /metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// The model repository's schemas.
    pub(crate) models: Arc<crate::models::Models>,
    /// Routes each committed event to the live streams it matches.
    pub(crate) dispatcher: Dispatcher,
    /// One permit per open SSE stream ([`crate::sse::SUBSCRIBERS_MAX`]).
    pub(crate) subscriber_slots: Arc<Semaphore>,
    /// One permit per snapshot being read ([`crate::sse::SNAPSHOTS_MAX`]).
    pub(crate) snapshot_readers: Arc<Semaphore>,
    /// One permit per request being handled ([`REQUESTS_IN_FLIGHT_MAX`]).
    requests_in_flight: Arc<Semaphore>,
    /// Peers, interests and forwarders.
    pub(crate) federation: Arc<crate::federation::Federation>,
    /// Recording policy and monitors.
    pub(crate) supervisor: Arc<crate::supervisor::Supervisor>,
    /// The names this site answers to and the peer secret (the `Host` check).
    pub(crate) host_check: Arc<crate::edge::HostCheck>,
    /// Permits and timeout for reading request bodies ([`crate::edge::BODY_READERS_MAX`]).
    pub(crate) body_reading: Arc<crate::edge::BodyReading>,
}

impl AppState {
    /// The state for `store`, with the lease index loaded from it. Starts
    /// the site's dispatcher, which runs until [`AppState::begin_shutdown`].
    ///
    /// # Errors
    /// Store read errors.
    pub async fn load(store: Store, config: ApiConfig) -> Result<AppState, pepper_storage::Error> {
        let leases = store.read(|v| v.leases()).await?;
        let tuples = crate::pldb::load_tuple_index(&store).await?;
        let models = Arc::new(crate::models::Models::load(&store).await?);
        let federation = Arc::new(
            crate::federation::Federation::new(store.site(), config.federation.clone())
                .map_err(|reason| pepper_storage::Error::InvalidInput { what: "federation", reason })?,
        );
        let supervisor = crate::supervisor::Supervisor::load(&store, &config.supervisor).await.map_err(|e| {
            pepper_storage::Error::InvalidInput { what: "recording policy", reason: e.message().to_string() }
        })?;
        config
            .edge
            .validate()
            .map_err(|reason| pepper_storage::Error::InvalidInput { what: "edge settings", reason })?;
        let hosts = crate::edge::Hosts::new(store.site(), config.federation.url.as_deref(), &config.edge);
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let dispatcher =
            Dispatcher::spawn(store.clone(), metrics.clone(), stopping_rx, config.stream_buffer_events.max(1));
        Ok(AppState {
            store,
            leases: Arc::new(ExpiryIndex::of_leases(&leases)),
            tuples: Arc::new(tuples),
            models,
            stopping: Arc::new(stopping),
            metrics,
            dispatcher,
            subscriber_slots: Arc::new(Semaphore::new(crate::sse::SUBSCRIBERS_MAX)),
            snapshot_readers: Arc::new(Semaphore::new(crate::sse::SNAPSHOTS_MAX)),
            requests_in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
            body_reading: Arc::new(crate::edge::BodyReading::new(config.edge.body_read_timeout)),
            host_check: Arc::new(crate::edge::HostCheck { hosts, federation: federation.clone() }),
            federation,
            supervisor: Arc::new(supervisor),
            config: Arc::new(config),
        })
    }

    /// Ends every live stream (each client resumes from its last event id
    /// elsewhere or after the restart). Call it when shutdown begins.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// A receiver that turns true once shutdown has begun.
    pub(crate) fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

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
        .api("/v1/tuples", get(crate::pldb::list).delete(crate::pldb::delete))
        .api("/v1/tuples/history", get(crate::pldb::history))
        .api("/v1/namespaces/{ns}/instances", get(crate::models::enumerate).post(crate::models::create_instance))
        .api("/v1/namespaces/{ns}/query", post(crate::models::run_query))
        .router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::fanout::layer));
    // Site to site: the secret is checked before any body is read.
    let peer = Routes::new(&state)
        .api("/v1/peer/heartbeat", post(crate::federation::heartbeat))
        .api("/v1/peer/records", post(crate::federation::records))
        .api("/v1/peer/cut", get(crate::federation::cut))
        .api("/v1/peer/replica", get(crate::supervisor::replica))
        .router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::federation::require_peer));
    let app = Routes::new(&state)
        .api("/metrics", get(crate::metrics::scrape))
        .api("/v1/health", get(health))
        .api("/v1/events", get(list_events).post(publish))
        .api("/v1/leases", get(lease::list).post(lease::grant))
        .api("/v1/leases/{id}", get(lease::get_one).delete(lease::release))
        .api("/v1/leases/{id}/renew", post(lease::renew))
        .api("/v1/leases/{id}/events", get(sse::lease_events))
        .api("/v1/watch", get(sse::watch))
        .api("/v1/sites", get(crate::federation::sites))
        .api("/v1/recording", get(crate::supervisor::status))
        .api(
            "/v1/recording/policies",
            axum::routing::put(crate::supervisor::put_policy).delete(crate::supervisor::delete_policy),
        )
        .api("/v1/namespaces/{ns}/classes", get(crate::models::list_classes).post(crate::models::define_class))
        .api("/v1/namespaces/{ns}/classes/{class}", get(crate::models::get_class))
        .api(
            "/v1/namespaces/{ns}/instances/{path}",
            get(crate::models::get_instance)
                .put(crate::models::replace_instance)
                .patch(crate::models::patch_instance)
                .delete(crate::models::delete_instance),
        )
        .api("/v1/namespaces/{ns}/instances/{path}/associators", get(crate::models::associators))
        .api("/v1/namespaces/{ns}/instances/{path}/references", get(crate::models::references))
        .api("/v1/namespaces/{ns}/instances/{path}/history", get(crate::models::history))
        .router
        .merge(federated)
        .merge(peer)
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()) })
        // Innermost first; see `edge` for what each does and why. Bodies
        // are read whole, within their limit, by `edge::read_body`.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.requests_in_flight.clone(), limit_in_flight));
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

fn is_xml(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        v.contains("application/xml") || v.contains("text/xml") || v.contains("+xml")
    })
}

/// Parses a publish body into events and whether it was a single event.
fn parse_publish(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<EventIn>, bool), ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::invalid_body(format!("body is not UTF-8: {e}")))?;
    if is_xml(headers, header::CONTENT_TYPE) {
        return crate::xml::parse_body(text);
    }
    crate::envelope::parse_json(text)
}

async fn publish(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::too_large(format!("request body is over the limit of {BODY_BYTES_MAX} bytes")))?;
    let (events, single) = parse_publish(&headers, &bytes)?;
    if events.is_empty() {
        return Err(ApiError::invalid_body("no events to publish"));
    }
    if events.len() > EVENTS_PER_REQUEST_MAX {
        return Err(ApiError::too_large(format!(
            "{} events in one request, over the limit of {EVENTS_PER_REQUEST_MAX}",
            events.len()
        )));
    }
    let many = events.len() > 1;
    let mut bodies = Vec::with_capacity(events.len());
    let mut ids = Vec::with_capacity(events.len());
    let mut tuple_writes = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let event = e.into_event().map_err(|err| match many {
            true => ApiError::new(err.status(), err.code(), format!("event {}: {}", i + 1, err.message())),
            false => err,
        })?;
        ids.push(event.id.clone());
        tuple_writes
            .push(event.tuple.as_ref().map(|t| (crate::pldb::index_key(&event.channel, &t.field), t.expires_at_us)));
        bodies.push(RecordBody::Event(event));
    }
    // The append, and the tuple expiry index update after it, run in their
    // own task so a client that hangs up mid-commit cannot cancel them
    // halfway: the outcome is the same either way.
    let st = state.clone();
    let appended = tokio::spawn(async move {
        let appended = st.store.append(bodies).await?;
        if !appended.replayed {
            crate::pldb::note_tuple_writes(&st.tuples, appended.first, &tuple_writes);
        }
        Ok::<_, pepper_storage::Error>(appended)
    })
    .await
    .map_err(ApiError::task_failed)??;
    let mut answer = match single {
        true => json!({ "seq": appended.first, "id": ids[0] }),
        false => json!({ "first_seq": appended.first, "last_seq": appended.last, "ids": ids }),
    };
    if appended.replayed {
        // A retry of ids already logged within the dedupe window.
        answer["replayed"] = json!(true);
    }
    Ok(Json(answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    channel: Option<String>,
    types: Option<String>,
    from_seq: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct EventsPage {
    events: Vec<EventOut>,
    next_seq: u64,
    last_seq: u64,
}

async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let limit = crate::params::page_limit(q.limit, EVENTS_PAGE_MAX).map_err(ApiError::invalid_query)?;
    let channel_prefix = match q.channel {
        Some(c) => Some(Channel::parse(&c).map_err(ApiError::bad_channel)?.as_str().to_string()),
        None => None,
    };
    let types = q.types.as_deref().map(|t| canonical_types(t.split(','))).unwrap_or_default();
    let filter = Filter { channel_prefix, types, kinds: vec![Kind::Event] };
    let from = q.from_seq.unwrap_or(1);
    let (scan, last_seq) =
        state.store.read(move |v| Ok((v.scan(from, u64::MAX, &filter, limit, EVENTS_SCAN_MAX)?, v.seq()))).await?;
    let (records, next_seq) = match scan {
        Scan::Records { records, next_seq } => (records, next_seq),
        Scan::Compacted { earliest } => return Err(ApiError::compacted(from, earliest)),
    };
    let events: Vec<EventOut> = records.iter().filter_map(EventOut::from_record).collect();
    if is_xml(&headers, header::ACCEPT) {
        let xml = crate::xml::write_events(&events, false);
        return Ok(([(header::CONTENT_TYPE, "application/xml")], xml).into_response());
    }
    Ok(Json(EventsPage { events, next_seq, last_seq }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

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
}
