//! The site-to-site endpoints, each behind the peer secret
//! ([`require_peer`], checked before any body is read):
//!
//! - `POST /v1/peer/heartbeat`: a peer's announcement in, ours out.
//! - `POST /v1/peer/records`: a batch of a peer's records (`wire::frames`),
//!   received in order, deduplicated by origin sequence number; a gap
//!   marker only covers what the origin announced it trimmed.
//! - `GET /v1/peer/cut`: how far our forwarders have come, for a backfill.
//! - `GET /v1/peer/replica`: a subtree's rows from one snapshot, streamed
//!   to a starting monitor (`loops::supervise`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pepper_storage::{Body, MonitorState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::federation::check_site;
use crate::federation::Announce;
use crate::federation::SITES_CHANNEL_PREFIX;
use crate::loops::supervise::Line;
use crate::state::AppState;
use crate::supervisor::REPLICA_CHUNK_BYTES;
use crate::supervisor::REPLICA_IDLE_MAX;
use crate::tls::PeerProof;
use crate::wire::frames::decode_batch;
use crate::wire::frames::PEER_BODY_BYTES_MAX;
use crate::wire::frames::{admit, gap_marker};

/// Axum middleware on `/v1/peer/`: the peer secret is checked before a
/// body is read.
pub(crate) async fn require_peer(
    State(state): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let certificate = request.extensions().get::<crate::tls::PeerCertificate>();
    let response = match state.federation.authorized(request.headers(), certificate) {
        Ok(proof) => {
            request.extensions_mut().insert(proof);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    };
    // Refusals of who a peer is are counted with the API's, by reason.
    let code = response.extensions().get::<crate::error::ErrorCode>().map(|c| c.0);
    let reason = match code {
        Some("unauthorized") => Some("peer_secret"),
        Some("peer_certificate_required") => Some("no_peer_certificate"),
        Some(r @ ("peer_certificate_mismatch" | "key_mismatch" | "bad_signature")) => Some(r),
        _ => None,
    };
    if let Some(reason) = reason {
        state.auth.refusals.get_or_create(&crate::auth::RefusalLabel { reason }).inc();
    }
    response
}

/// `POST /v1/peer/heartbeat`: a peer's announcement; answers with ours.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    proof: axum::Extension<PeerProof>,
    body: Result<Json<Announce>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Announce>, ApiError> {
    let fed = &state.federation;
    let Json(a) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    proof.vouches_for(&a.name)?;
    let (fed2, store) = (fed.clone(), state.store.clone());
    tokio::spawn(async move { fed2.hear(&store, a).await }).await.map_err(ApiError::task_failed)??;
    Ok(Json(fed.announce(state.store.last_seq(), state.store.earliest_seq())))
}

/// `POST /v1/peer/records`: a batch of log frames from their origin (the
/// `x-pepper-origin` header), each `u32` length then the frame; or a gap
/// marker (`x-pepper-gap: FROM-TO`). Answers `{"appended", "dropped",
/// "mark"}`.
pub(crate) async fn records(
    State(state): State<AppState>,
    proof: axum::Extension<PeerProof>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    // Read with this route's own limit, the way `POST /v1/events` is.
    let body = axum::body::to_bytes(body, PEER_BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::too_large(format!("a peer batch is over the limit of {PEER_BODY_BYTES_MAX} bytes")))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let origin = header("x-pepper-origin").ok_or_else(|| ApiError::invalid_body("x-pepper-origin is missing"))?;
    check_site(&origin).map_err(ApiError::invalid_body)?;
    // Each origin forwards its own records only (docs/federation.md): its
    // certificate where the site requires one, its site key's signature
    // once its key is pinned here.
    proof.vouches_for(&origin)?;
    let gap_header = header("x-pepper-gap").unwrap_or_default();
    state.federation.check_batch(&origin, header("x-pepper-signature").as_deref(), &gap_header, &body)?;
    if let Some(gap) = header("x-pepper-gap") {
        let (from, to) = gap
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .filter(|(a, b)| a <= b)
            .ok_or_else(|| ApiError::invalid_body(format!("x-pepper-gap {gap:?} is not FROM-TO")))?;
        state
            .federation
            .gap_allowed(&origin, to)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, "gap_refused", e.to_string()))?;
        let markers = gap_markers(&state, &origin, from, to).await?;
        let appended = state.store.receive_gap(&origin, to, markers).await?;
        tracing::warn!(origin = %origin, from, to, "records lost to the origin's retention; gap markers appended");
        return Ok(Json(json!({ "appended": appended.written(), "dropped": appended.dropped,
                               "mark": state.store.origin_mark(&origin)? })));
    }
    let received: Vec<(u64, Body)> =
        decode_batch(&origin, &body)?.into_iter().map(|(seq, body)| (seq, admit(&origin, seq, body))).collect();
    // The tuple expiry index follows what this site recorded by itself
    // (`expiry::ExpiryFold`).
    let appended = state.store.receive(&origin, received).await?;
    Ok(Json(
        json!({ "appended": appended.written(), "dropped": appended.dropped, "mark": state.store.origin_mark(&origin)? }),
    ))
}

/// One `pepper.gap` event per distinct local lease pattern (on a channel
/// that pattern matches), or one on the origin's site channel when there is
/// no lease.
async fn gap_markers(state: &AppState, origin: &str, from: u64, to: u64) -> Result<Vec<Body>, ApiError> {
    let leases = state.store.read(|v| v.leases()).await?;
    let fallback = format!("{SITES_CHANNEL_PREFIX}{origin}/");
    let mut channels: BTreeSet<String> = leases
        .iter()
        .map(|l| {
            let channel =
                l.pattern.split('/').map(|e| if e == "*" { "pepper-gap" } else { e }).collect::<Vec<_>>().join("/");
            // `/` (every channel) has no channel of its own, and a long
            // pattern may not fit: the origin's channel matches `/` too.
            match pepper_router::Channel::parse(&channel) {
                Ok(_) => channel,
                Err(_) => fallback.clone(),
            }
        })
        .collect();
    if channels.is_empty() {
        channels.insert(fallback);
    }
    Ok(channels
        .into_iter()
        .take(pepper_storage::limits::BATCH_RECORDS_MAX)
        .map(|channel| gap_marker(channel, origin, from, to))
        .collect())
}

/// `GET /v1/peer/cut?site=M&toward=Y`: what a new monitor on site M needs
/// to know before it copies a replica from Y (see `docs/supervisors.md`):
/// this site's last sequence number, the version of M's interests it
/// holds, and the next sequence number its forwarder sends Y.
pub(crate) async fn cut(
    State(state): State<AppState>,
    proof: axum::Extension<PeerProof>,
    query: Result<axum::extract::Query<CutQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    check_site(&q.site).map_err(ApiError::invalid_query)?;
    check_site(&q.toward).map_err(ApiError::invalid_query)?;
    proof.vouches_for(&q.site)?;
    let fed = &state.federation;
    // The version first: a seq read after it is at least where the log was
    // when the interests arrived.
    let interests_version = fed.interests_version_of(&q.site);
    let seq = state.store.last_seq();
    let cursor = fed.cursor_toward(&q.toward);
    Ok(Json(json!({ "site": fed.site, "seq": seq, "interests_version": interests_version, "cursor": cursor })))
}

/// The query of `GET /v1/peer/cut`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CutQuery {
    site: String,
    toward: String,
}

/// The query of `GET /v1/peer/replica`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplicaQuery {
    pattern: String,
    /// The site asking, and the version of its interests that includes the
    /// subtree: the snapshot waits until this site holds it.
    site: String,
    version: u64,
}

/// The longest a replica stream may take; a reader slower than that is cut
/// off, so no snapshot is held open for long.
pub const REPLICA_STREAM_TIME_MAX: Duration = Duration::from_secs(600);

/// `GET /v1/peer/replica?pattern=P`: this site's rows of a subtree it
/// records completely, from one snapshot, as JSON lines: a header with the
/// snapshot's seq and per-origin marks, every history row, every latest
/// value, and an end line with the counts.
pub(crate) async fn replica(
    State(state): State<AppState>,
    proof: axum::Extension<PeerProof>,
    query: Result<Query<ReplicaQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::invalid_query(e.body_text()).into_response(),
    };
    if let Err(e) = pepper_storage::validate::monitor_pattern(&q.pattern) {
        return ApiError::invalid_query(e.to_string()).into_response();
    }
    if let Err(e) = proof.vouches_for(&q.site) {
        return e.into_response();
    }
    if state.federation.interests_version_of(&q.site) < q.version {
        let message = format!("this site does not hold {}'s interests version {} yet; ask again", q.site, q.version);
        return ApiError::new(StatusCode::CONFLICT, "interests_pending", message).into_response();
    }
    let Ok(permit) = state.replica_streams.clone().try_acquire_owned() else {
        let message = format!("{} replica streams are being served; ask again", crate::limits::REPLICA_STREAMS_MAX);
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message).into_response();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
    let store = state.store.clone();
    let site = store.site().to_string();
    let pattern = q.pattern.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut first = Some(first_tx);
        // A reader that stops reading for REPLICA_IDLE_MAX is dropped, so
        // a stalled peer cannot pin this thread and the snapshot.
        let until = Instant::now() + REPLICA_STREAM_TIME_MAX;
        let send = |item: Result<Vec<u8>, std::io::Error>| {
            Instant::now() < until && handle.block_on(tx.send_timeout(item, REPLICA_IDLE_MAX)).is_ok()
        };
        let result = store.read_blocking(|v| {
            let row = v.monitors()?.into_iter().find(|m| m.pattern == pattern && m.state == MonitorState::Complete);
            let Some(row) = row else {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "not_a_replica",
                        format!("this site has no complete monitor of {pattern}"),
                    )));
                }
                return Ok(());
            };
            if let Some(f) = first.take() {
                let _ = f.send(Ok(()));
            }
            let marks = crate::supervisor::replica_marks(v, &site, &row)?;
            let mut out = Vec::with_capacity(REPLICA_CHUNK_BYTES * 2);
            let line = |out: &mut Vec<u8>, l: &Line| -> pepper_storage::Result<bool> {
                serde_json::to_writer(&mut *out, l)
                    .map_err(|e| pepper_storage::Error::Io(std::io::Error::other(e.to_string())))?;
                out.push(b'\n');
                if out.len() >= REPLICA_CHUNK_BYTES {
                    let full = std::mem::replace(out, Vec::with_capacity(REPLICA_CHUNK_BYTES * 2));
                    // The reader hung up or stalled: stop reading.
                    return Ok(send(Ok(full)));
                }
                Ok(true)
            };
            let header = Line::Header { site: site.clone(), pattern: pattern.clone(), seq: v.seq(), marks };
            if !line(&mut out, &header)? {
                return Ok(());
            }
            let (mut history, mut latest) = (0u64, 0u64);
            let mut open = true;
            v.history_under(&pattern, |channel, field, h| {
                history += 1;
                let row = (
                    channel.to_string(),
                    field.to_string(),
                    h.time_us,
                    h.value,
                    h.expires_at_us,
                    h.source.service,
                    h.source.instance,
                );
                open = line(&mut out, &Line::History(row))?;
                Ok(open)
            })?;
            if open {
                v.tuples_under(&pattern, |t| {
                    latest += 1;
                    let row =
                        (t.channel, t.field, t.time_us, t.value, t.expires_at_us, t.source.service, t.source.instance);
                    open = line(&mut out, &Line::Latest(row))?;
                    Ok(open)
                })?;
            }
            if open && line(&mut out, &Line::End { history, latest })? {
                send(Ok(out));
            }
            Ok(())
        });
        if let Err(e) = result {
            match first.take() {
                Some(f) => {
                    let _ = f.send(Err(ApiError::from(e)));
                }
                // Cut the stream short: the reader sees no end line.
                None => {
                    send(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    });
    match first_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "replica reader failed")
                .into_response()
        }
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/x-ndjson"));
    response
}
