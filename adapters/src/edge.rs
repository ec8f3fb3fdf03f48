//! The HTTP edge: what every request passes before a handler sees it, and
//! what every error passes on its way out.
//!
//! In the order a request meets them:
//! - **Host** ([`check_host`]): the `Host` header must name this site. A web
//!   page can make a browser send requests to any address, loopback
//!   included, and DNS rebinding makes such a page same-origin with the
//!   site: its name resolves first to the attacker, then to 127.0.0.1. The
//!   browser still sends the page's name as `Host`, so a site that answers
//!   only the names it is known by is out of reach. Allowed: IP literals
//!   (a browser that sends one was pointed at the address itself, which no
//!   rebinding can do), `localhost`, the site's own name, the host of its
//!   `--url`, and the names in `--allowed-host`. Anything else gets 403
//!   `host_not_allowed`, unless the request carries the peer secret: a
//!   peer may name the site however its own configuration does.
//! - **CORS**: off unless `--cors-origin` lists origins; then those origins,
//!   and only those, get CORS headers and preflight answers.
//! - **Content type** ([`check_content_type`], a route layer on every
//!   route, so a method a route lacks still gets 405): a `POST`, `PUT` or
//!   `PATCH` must say its body is JSON or XML (peer batches: octet-stream),
//!   or gets 415 `unsupported_media_type`. A browser sends `text/plain`, form and
//!   empty-typed POSTs cross-origin without asking (no CORS preflight); a
//!   JSON or XML content type makes it ask first, and with CORS off the
//!   answer is no. `DELETE` is always preflighted.
//! - **Body** ([`read_body`], a route layer after the content type check;
//!   peer routes check the peer secret first, and federated queries read
//!   it the same way before they fan out): the body is read whole, up to
//!   the route's limit ([`BODY_BYTES_MAX`], or `PEER_BODY_BYTES_MAX` for
//!   peer batches; over it: 413 `too_large`), within [`BODY_READ_TIMEOUT`]
//!   (else 408 `body_timeout`, and the connection is closed), by at most
//!   [`BODY_READERS_MAX`] requests at once (else 503), so clients that
//!   declare large bodies and trickle them hold a bounded share of the
//!   request slots, each for a bounded time. Handlers then read a body that
//!   is already in memory.
//! - On the way out ([`json_errors`]): an error that did not come from a
//!   handler (axum's 405 for a method a route lacks, a rejection of a path
//!   that is not UTF-8) leaves in the API's JSON shape like every other,
//!   keeping its status and its `Allow` header.
//!
//! The alternative to checking `Host` is a token on every request; that
//! belongs to authentication (principals and grants), which does not make
//! this check redundant for a site that runs with authentication off.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::limits::BODY_BYTES_MAX;

/// How long a request body may take to arrive, whole. A body still
/// incomplete then is answered 408 and its connection closed. At the body
/// limit this asks for about 70 KB/s.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of a refused (too large) body read and dropped so that the
/// client sees its 413; a body declared larger is refused unread, and its
/// connection closed.
pub const DISCARD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most request bodies being read at once. One more is answered 503 with
/// `Retry-After` at once: clients that trickle their bodies can hold at
/// most this many of the `REQUESTS_IN_FLIGHT_MAX` request slots.
pub const BODY_READERS_MAX: usize = 1024;

const _: () = assert!(BODY_READERS_MAX < crate::limits::REQUESTS_IN_FLIGHT_MAX);

/// Longest time spent dropping a refused body.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest error text kept from a response axum produced itself, in bytes.
const FOREIGN_ERROR_BYTES_MAX: usize = 1024;

/// Most names `--allowed-host` and `--cors-origin` may list, each.
pub const EDGE_NAMES_MAX: usize = 256;

/// The edge's settings.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Host names (no port) this site answers besides IP literals,
    /// `localhost`, its own name and the host of its url. Lowercase.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) allowed cross-origin requests.
    /// Empty: CORS is off.
    pub cors_origins: Vec<String>,
    /// How long a request body may take ([`BODY_READ_TIMEOUT`]).
    pub body_read_timeout: Duration,
}

impl Default for EdgeConfig {
    fn default() -> EdgeConfig {
        EdgeConfig { allowed_hosts: Vec::new(), cors_origins: Vec::new(), body_read_timeout: BODY_READ_TIMEOUT }
    }
}

impl EdgeConfig {
    /// Checks the lists: bounded, and each entry a host name or an origin.
    ///
    /// # Errors
    /// A message naming the entry at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.allowed_hosts.len() > EDGE_NAMES_MAX || self.cors_origins.len() > EDGE_NAMES_MAX {
            return Err(format!("at most {EDGE_NAMES_MAX} allowed hosts and {EDGE_NAMES_MAX} CORS origins"));
        }
        for h in &self.allowed_hosts {
            if h.is_empty() || h.len() > 253 || !h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            {
                return Err(format!("allowed host {h:?} must be a host name (letters, digits, '-' and '.')"));
            }
        }
        for o in &self.cors_origins {
            let parsed = reqwest::Url::parse(o).map_err(|e| format!("CORS origin {o:?}: {e}"))?;
            // Exactly what a browser sends as `Origin`, or it never matches.
            let serialized = parsed.origin().ascii_serialization();
            if !matches!(parsed.scheme(), "http" | "https") || serialized != *o {
                return Err(format!(
                    "CORS origin {o:?} must be scheme://host[:port] as a browser sends it (here {serialized:?})"
                ));
            }
        }
        Ok(())
    }
}

/// What the `Host` check needs: the site's names, and the peer secret.
pub(crate) struct HostCheck {
    pub(crate) hosts: Hosts,
    pub(crate) federation: Arc<crate::federation::Federation>,
}

/// What reading bodies needs: the readers' permits and the timeout.
pub(crate) struct BodyReading {
    pub(crate) readers: Semaphore,
    pub(crate) timeout: Duration,
}

impl BodyReading {
    pub(crate) fn new(timeout: Duration) -> BodyReading {
        BodyReading { readers: Semaphore::new(BODY_READERS_MAX), timeout }
    }
}

/// The names a site answers to, resolved once from its settings.
#[derive(Clone, Debug)]
pub(crate) struct Hosts {
    pub(crate) names: Vec<String>,
}

impl Hosts {
    /// `localhost`, the site's name, its url's host and the configured names.
    pub(crate) fn new(site: &str, url: Option<&str>, config: &EdgeConfig) -> Hosts {
        let mut names = vec!["localhost".to_string(), site.to_ascii_lowercase()];
        if let Some(host) = url.and_then(|u| reqwest::Url::parse(u).ok()).and_then(|u| u.host_str().map(str::to_string))
        {
            names.push(host.to_ascii_lowercase());
        }
        names.extend(config.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()));
        Hosts { names }
    }

    /// Whether a `Host` value (with or without a port) names this site.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let name = host_part(host);
        if let Some(inner) = name.strip_prefix('[') {
            return inner.strip_suffix(']').is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
        }
        if name.parse::<Ipv4Addr>().is_ok() {
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&name)
    }
}

/// The host of a `Host` value: without its port, brackets kept for IPv6.
fn host_part(host: &str) -> &str {
    if host.starts_with('[') {
        // `[v6]` or `[v6]:port`; anything else after `]` is no host.
        return match host.find(']') {
            Some(end) if host[end + 1..].strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) => {
                &host[..=end]
            }
            Some(end) if end + 1 == host.len() => host,
            _ => "",
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Axum middleware: refuses a request whose `Host` does not name the site.
pub(crate) async fn check_host(State(check): State<Arc<HostCheck>>, request: Request, next: Next) -> Response {
    // A peer proves itself with the peer secret, which no web page has (and
    // a browser sends `Authorization` cross-origin only after a preflight):
    // it may name this site however its configuration does.
    if request.headers().contains_key(header::AUTHORIZATION) && check.federation.secret_given(request.headers()).is_ok()
    {
        return next.run(request).await;
    }
    let hosts = &check.hosts;
    let host = match request.headers().get(header::HOST) {
        Some(v) => v.to_str().ok(),
        // HTTP/2 and absolute-form requests carry it in the URI; a request
        // with neither (HTTP/1.0) comes from no browser.
        None => request.uri().authority().map(|a| a.as_str()),
    };
    match host {
        Some(h) if !hosts.allows(h) => ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!(
                "this site does not answer to the host {:?}; add it with --allowed-host if it is one of its names",
                truncate(h, 256)
            ),
        )
        .into_response(),
        None if request.headers().contains_key(header::HOST) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "the Host header is not ASCII").into_response()
        }
        _ => next.run(request).await,
    }
}

/// Whether a content type is one a state-changing request may carry on
/// `path`.
fn acceptable_type(path: &str, content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json_or_xml = matches!(essence.as_str(), "application/json" | "application/xml" | "text/xml")
        || (essence.starts_with("application/") && (essence.ends_with("+json") || essence.ends_with("+xml")));
    json_or_xml || (path == "/v1/peer/records" && essence == "application/octet-stream")
}

/// Whether `request` may go on: anything but a `POST`, `PUT` or `PATCH`,
/// or one of those with a JSON or XML content type (peer batches:
/// octet-stream).
///
/// # Errors
/// 415 `unsupported_media_type`.
pub(crate) fn content_type_ok(request: &Request) -> Result<(), ApiError> {
    if !matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH) {
        return Ok(());
    }
    let given = request.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not ASCII)"));
    match given {
        Some(t) if acceptable_type(request.uri().path(), t) => Ok(()),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "a {} needs Content-Type application/json or application/xml, not {}",
                request.method(),
                other.map_or_else(|| "none".to_string(), |t| format!("{:?}", truncate(t, 128)))
            ),
        )),
    }
}

/// Axum route layer: [`content_type_ok`] before the handler. A route
/// layer, so a method the route lacks still gets 405.
pub(crate) async fn check_content_type(request: Request, next: Next) -> Response {
    match content_type_ok(&request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// The body limit of a route, and how its refusal reads.
fn body_limit(path: &str) -> (usize, &'static str) {
    if path == "/v1/peer/records" {
        (crate::wire::frames::PEER_BODY_BYTES_MAX, "a peer batch")
    } else {
        (BODY_BYTES_MAX, "request body")
    }
}

/// Whether a request has a body to read (hyper knows a request without
/// `Content-Length` or `Transfer-Encoding`, or with a zero length, to end
/// at once).
fn has_body(request: &Request) -> bool {
    !axum::body::HttpBody::is_end_stream(request.body())
}

/// Reads a request's body whole: up to the route's limit (over it: 413,
/// after the rest is discarded up to [`DISCARD_BYTES_MAX`]), within
/// `timeout` (else 408, and the connection is closed), while holding one of
/// [`BODY_READERS_MAX`] permits (none free: 503), so that clients trickling
/// bodies hold at most that many request slots.
///
/// # Errors
/// The refusal, as an [`ApiError`].
pub(crate) async fn read_whole(
    request: Request,
    reading: &BodyReading,
) -> Result<(axum::http::request::Parts, axum::body::Bytes), ApiError> {
    let timeout = reading.timeout;
    if !has_body(&request) {
        let (parts, _) = request.into_parts();
        return Ok((parts, axum::body::Bytes::new()));
    }
    let _reading = reading.readers.try_acquire().map_err(|_| {
        ApiError::overloaded(format!("the site is reading {BODY_READERS_MAX} request bodies already; retry shortly"))
    })?;
    let (limit, what) = body_limit(request.uri().path());
    let too_large = || ApiError::too_large(format!("{what} is over the limit of {limit} bytes"));
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Read what is small enough to read, so that a client that sends
        // its whole body before reading the answer sees the 413.
        if declared.is_some_and(|n| n <= DISCARD_BYTES_MAX as u64) {
            discard(request.into_body(), timeout.min(DISCARD_TIMEOUT)).await;
        }
        return Err(too_large());
    }
    let (parts, mut body) = request.into_parts();
    // `None`: over the limit.
    let read = async {
        let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if bytes.len() + data.len() > limit {
                    return Ok(None);
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok::<_, axum::Error>(Some(bytes))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Some(bytes))) => Ok((parts, axum::body::Bytes::from(bytes))),
        Ok(Ok(None)) => {
            discard(body, timeout.min(DISCARD_TIMEOUT)).await;
            Err(too_large())
        }
        Ok(Err(e)) => Err(ApiError::invalid_body(format!("cannot read the request body: {e}"))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {} s", timeout.as_secs()),
        )),
    }
}

/// Axum route layer: [`read_whole`], then the handler with the body in
/// memory.
pub(crate) async fn read_body(State(reading): State<Arc<BodyReading>>, request: Request, next: Next) -> Response {
    match read_whole(request, &reading).await {
        Ok((parts, bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Reads and drops the rest of a refused body, up to [`DISCARD_BYTES_MAX`]
/// more bytes and for at most `within`. A client that writes its whole
/// body before it reads the answer would otherwise meet a reset instead of
/// the 413; past the bound the connection is closed regardless.
async fn discard(mut body: Body, within: Duration) {
    let drain = async {
        let mut left = DISCARD_BYTES_MAX;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            if n >= left {
                return;
            }
            left -= n;
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

/// Axum middleware: an error response that is not in the API's JSON shape
/// (axum's own 405, or an extractor's plain-text rejection) is put into
/// it, with its status, and `Allow` kept on a 405.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, FOREIGN_ERROR_BYTES_MAX).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
            ("method_not_allowed", format!("this endpoint takes {allow}"))
        }
        StatusCode::NOT_FOUND => ("not_found", text),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        s if s.is_server_error() => ("internal", text),
        _ => ("invalid_request", text),
    };
    let message = if message.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { message };
    let mut out = ApiError::new(status, code, message).into_response();
    // Every header but the body's own: `Allow`, CORS, `Retry-After`...
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    let mut at = s.len().min(max);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ip_literals_and_the_sites_names() {
        let config = EdgeConfig { allowed_hosts: vec!["pepper.example.org".into()], ..EdgeConfig::default() };
        let hosts = Hosts::new("Lab-1", Some("http://lab1.example.net:7171"), &config);
        for ok in [
            "127.0.0.1:7171",
            "127.0.0.1",
            "[::1]:7171",
            "[::1]",
            "10.1.2.3:80",
            "localhost:7171",
            "LOCALHOST",
            "lab-1",
            "lab1.example.net:7171",
            "pepper.example.org.",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in ["evil.example:7171", "localhost.evil.example", "127.0.0.1.nip.io", "", "[::1", "[::1]x", "lab-1x"] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }

    #[test]
    fn state_changes_need_json_or_xml() {
        for ok in ["application/json", "application/json; charset=utf-8", "text/xml", "application/cloudevents+json"] {
            assert!(acceptable_type("/v1/events", ok), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "json"] {
            assert!(!acceptable_type("/v1/events", bad), "{bad}");
        }
        assert!(acceptable_type("/v1/peer/records", "application/octet-stream"));
        assert!(!acceptable_type("/v1/events", "application/octet-stream"));
    }

    #[test]
    fn edge_lists_are_checked() {
        for bad in
            ["https://a.example/path", "https://A.example", "https://u@a.example", "https://a.example#x", "ftp://a"]
        {
            let config = EdgeConfig { cors_origins: vec![bad.into()], ..EdgeConfig::default() };
            assert!(config.validate().is_err(), "{bad}");
        }
        let ok = EdgeConfig {
            cors_origins: vec!["https://console.example:8443".into()],
            allowed_hosts: vec!["pepper.example".into()],
            ..EdgeConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad_host = EdgeConfig { allowed_hosts: vec!["a b".into()], ..EdgeConfig::default() };
        assert!(bad_host.validate().is_err());
    }
}
