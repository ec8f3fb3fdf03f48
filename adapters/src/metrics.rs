//! `GET /metrics`: the site's health in Prometheus text format.
//!
//! Counted as they happen: HTTP requests and their latency per route and
//! method, events delivered to subscribers, how far behind the log's head
//! each delivered event was (the feed lag, in records), and streams
//! disconnected for a full buffer, the supervisor's evaluations (a test
//! or an operator sees it work without watching a clock). Read at scrape
//! time from the store: group commits, records committed (so records per
//! commit), the log's sequence range, live leases and open streams.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of one request. Every label comes from a closed set, so the
/// number of series is bounded whatever clients send: `route` is a route
/// template of the API or `unmatched`, `method` one of [`METHODS`] or
/// `other`, and `status` a status code (100 to 999).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    pub(crate) route: String,
    pub(crate) method: &'static str,
    pub(crate) status: u16,
}

/// The methods counted by name; any other method string counts as `other`.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The `method` label of `method`.
fn method_label(method: &axum::http::Method) -> &'static str {
    METHODS.into_iter().find(|m| *m == method.as_str()).unwrap_or("other")
}

/// The site's metrics.
pub struct Metrics {
    pub(crate) registry: Registry,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Events delivered to SSE and long-poll subscribers.
    pub(crate) deliveries: Counter,
    /// Records between the log's head and each event when it was delivered.
    pub(crate) delivery_lag: Histogram,
    /// Live streams disconnected because their buffer was full.
    pub(crate) overflows: Counter,
    /// Evaluations of the recording policy by this site's supervisor.
    pub(crate) evaluations: Counter,
    pub(crate) streams: Gauge,
    pub(crate) commits: Gauge,
    pub(crate) records: Gauge,
    pub(crate) last_seq: Gauge,
    pub(crate) earliest_seq: Gauge,
    pub(crate) leases: Gauge,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("pepper");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let deliveries = Counter::default();
        let overflows = Counter::default();
        let evaluations = Counter::default();
        let streams = Gauge::default();
        let delivery_lag = Histogram::new(exponential_buckets(1.0, 4.0, 12));
        let (commits, records, last_seq, earliest_seq, leases) =
            (Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register("http_request_seconds", "HTTP request latency", latency.clone());
        registry.register("deliveries", "Events delivered to subscribers", deliveries.clone());
        registry.register(
            "delivery_lag_records",
            "Records between the log head and a delivered event",
            delivery_lag.clone(),
        );
        registry.register("stream_overflows", "Live streams disconnected for a full buffer", overflows.clone());
        registry.register(
            "supervisor_evaluations",
            "Evaluations of the recording policy by this site's supervisor",
            evaluations.clone(),
        );
        registry.register("streams_open", "Open SSE streams (lease streams and watches)", streams.clone());
        registry.register(
            "store_group_commits",
            "Group commits written (one WAL sync each under sync)",
            commits.clone(),
        );
        registry.register("store_records_committed", "Records committed", records.clone());
        registry.register("log_last_seq", "The last durable sequence number", last_seq.clone());
        registry.register("log_earliest_seq", "The lowest sequence number retention kept", earliest_seq.clone());
        registry.register("leases_live", "Live leases", leases.clone());
        Metrics {
            registry,
            requests,
            latency,
            deliveries,
            delivery_lag,
            overflows,
            evaluations,
            streams,
            commits,
            records,
            last_seq,
            earliest_seq,
            leases,
        }
    }
}

pub(crate) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Axum middleware: counts and times every request by route.
pub(crate) async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    let labels = RouteLabels { route, method, status: response.status().as_u16() };
    metrics.requests.get_or_create(&labels).inc();
    metrics.latency.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    /// 2,000 invented methods added 107 MB and a 43 MB scrape: one series
    /// per method string. They are all `other` now.
    #[test]
    fn invented_methods_share_one_label() {
        let m = Metrics::default();
        for i in 0..2000 {
            let method = axum::http::Method::from_bytes(format!("X{i}").as_bytes()).expect("method");
            let labels = RouteLabels { route: "unmatched".into(), method: method_label(&method), status: 405 };
            m.requests.get_or_create(&labels).inc();
        }
        let labels =
            RouteLabels { route: "/v1/health".into(), method: method_label(&axum::http::Method::GET), status: 200 };
        m.requests.get_or_create(&labels).inc();
        let mut text = String::new();
        encode(&mut text, &m.registry).expect("encode");
        let series = text.lines().filter(|l| l.starts_with("pepper_http_requests_total")).count();
        assert_eq!(series, 2, "{text}");
        assert!(text.contains(r#"method="other""#) && text.contains(r#"method="GET""#), "{text}");
    }
}
