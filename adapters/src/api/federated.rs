//! Federated queries: one query, asked of several sites at once, answered
//! with the merged results and a manifest of who answered.
//!
//! The tuple queries (`GET /v1/tuples`, `GET /v1/tuples/history`) and the
//! model queries (`GET /v1/namespaces/{ns}/instances`, `POST
//! /v1/namespaces/{ns}/query`) take four more parameters:
//!
//! - `scope`: `local` (the default: this site only, no manifest), `all`
//!   (this site and every peer it knows), `sites:a,b`, `region:r` (the
//!   sites announcing that region), or `sample:k` (k sites: those up
//!   before suspect before down, then the lowest heartbeat latency, this
//!   site counting as up with none);
//! - `deadline_ms` (default `DEADLINE_DEFAULT_MS`, at most
//!   `DEADLINE_MAX_MS`): no site makes the query wait longer;
//! - `partial`: `allow` (default) answers with whatever came back;
//!   `deny` answers 503, with the manifest, when fewer than `min_sites`
//!   answered;
//! - `min_sites` (default: every site asked).
//!
//! `scope=recorders` asks the sites that record the channel's subtree
//! under the recording policy (see `supervisor`): the live complete
//! monitors from the announcements, this site first if it is one, then by
//! heartbeat latency. They are asked in parallel; the answer is the first
//! of them, in that order, that answered (`used` in the manifest), since
//! replicas hold the same rows. A tuple query without a `scope`, on a
//! channel under a policy this site does not record, is routed this way
//! on its own, so a client never reads the empty rows of a non-recorder.
//!
//! The decisions are `pepper_query::federated`'s: the parameters and the
//! scope ([`parse_params`]), the sites in scope, the manifest, the refusals
//! and the merge ([`conclude`]). This module carries them out: it sends
//! the same request with `scope=local` to every site in scope (itself
//! included, over loopback, so every answer is made the same way), in
//! parallel, each bounded by the deadline, and reports how each ended.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pepper_query::federated::{
    conclude, parse_params, recorders_in_scope, sites_in_scope, Ask, Outcome, Params, Refusal, RefusalCode, Scope,
    SiteAnswer,
};
use pepper_router::{Action, PeerView, Reach, Resource};
use pepper_storage::MonitorState;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::federation::PeerState;
use crate::federation::PeerSummary;
use crate::state::AppState;

/// The header each local answer carries: when it was made, microseconds
/// since the Unix epoch, for the manifest's `data_age_ms`.
const TIME_HEADER: &str = "x-pepper-time-us";

// `scope=sites:` may name every peer a site may know and the site itself.
const _: () = assert!(pepper_query::federated::SCOPE_SITES_MAX == crate::federation::PEERS_MAX + 1);

/// Axum middleware on the federated routes: a local query goes on to its
/// handler (without the federation parameters), stamped with its time; any
/// other scope is fanned out.
pub(crate) async fn layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let mut params = match parse_params(request.uri().query()) {
        Ok(p) => p,
        Err(e) => return ApiError::invalid_query(e.to_string()).into_response(),
    };
    if !params.explicit && request.method() == axum::http::Method::GET && request.uri().path().starts_with("/v1/tuples")
    {
        if let Some(pattern) = params.channel().and_then(|c| state.supervisor.covering(c)) {
            if state.store.monitor_state(&pattern) != Some(pepper_storage::MonitorState::Complete) {
                params.scope = Scope::Recorders;
            }
        }
    }
    if params.scope != Scope::Local {
        // Checked here too: a state change a browser could send without
        // asking is not carried to other sites either.
        if let Err(refusal) = crate::edge::content_type_ok(&request) {
            return refusal.into_response();
        }
    }
    if params.scope == Scope::Local {
        let path = request.uri().path().to_string();
        let mut url = match reqwest::Url::parse(&format!("http://x{path}")) {
            Ok(u) => u,
            Err(e) => return ApiError::invalid_query(e.to_string()).into_response(),
        };
        url.set_query(params.local_query().as_deref());
        let uri = match url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        match uri.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(e) => return ApiError::invalid_query(format!("{e}")).into_response(),
        }
        let mut response = next.run(request).await;
        if let Ok(v) = HeaderValue::from_str(&pepper_storage::now_us().to_string()) {
            response.headers_mut().insert(TIME_HEADER, v);
        }
        return response;
    }
    // Only reads fan out: a scope on a write (a delete, a create) would
    // repeat it on every site.
    let is_query = request.method() == axum::http::Method::GET
        || (request.method() == axum::http::Method::POST && request.uri().path().ends_with("/query"));
    if !is_query {
        return ApiError::invalid_query("scope applies to queries only; writes are local").into_response();
    }
    // The legs reach other sites as this site (the peer secret), and the
    // other sites let a leg read: so the caller's own permission is
    // checked here, once, for all of them.
    if let Err(e) = authorize_fan_out(&request) {
        return e.into_response();
    }
    match fan_out(state, params, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Whether the caller may read what a fanned-out query reads: `tuples.read`
/// on its channel (its subtree with `recursive=true`), or `models.read` on
/// its namespace; the same rule as the handlers'.
fn authorize_fan_out(request: &Request) -> Result<(), ApiError> {
    let caller = request.extensions().get::<Caller>().ok_or_else(|| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "a query reached fan-out without being identified")
    })?;
    let path = request.uri().path();
    let pairs: Vec<(String, String)> =
        request.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if let Some(ns) = path.strip_prefix("/v1/namespaces/").and_then(|rest| rest.split('/').next()) {
        let ns = percent_encoding::percent_decode_str(ns).decode_utf8_lossy();
        return caller.require(Action::ModelsRead, &Resource::Namespace(&ns));
    }
    let channel = param("channel").ok_or_else(|| ApiError::invalid_query("channel is required"))?;
    let recursive = path == "/v1/tuples" && param("recursive") == Some("true");
    caller.require_wanted(Action::TuplesRead, &crate::api::tuples::read_wanted(channel, recursive)?)
}

/// Where to reach each site a query asks: its url, `None` for a site this
/// one does not know.
fn sites_to_ask(state: &AppState, params: &Params) -> Result<Vec<(Ask, Option<String>)>, ApiError> {
    if params.scope == Scope::Recorders {
        let channel = params.channel().unwrap_or("");
        let found = recorders(state, channel);
        let urls: BTreeMap<String, String> = found.iter().flat_map(|(_, sites)| sites.iter().cloned()).collect();
        let asks =
            recorders_in_scope(channel, found.map(|(p, sites)| (p, sites.into_iter().map(|(s, _)| s).collect())))
                .map_err(refused)?;
        return Ok(asks
            .into_iter()
            .map(|a| {
                let url = urls.get(&a.site).cloned();
                (a, url)
            })
            .collect());
    }
    let fed = &state.federation;
    let peers = fed.peer_list();
    let me = PeerView::this_site(state.store.site(), fed.region());
    let views: Vec<PeerView> = peers.iter().map(view).collect();
    let urls: BTreeMap<&str, &str> = peers.iter().map(|p| (p.name.as_str(), p.url.as_str())).collect();
    Ok(sites_in_scope(&params.scope, &me, &views)
        .into_iter()
        .map(|a| {
            let url = if !a.known {
                None
            } else if a.site == me.name {
                Some(fed.local_url())
            } else {
                urls.get(a.site.as_str()).map(|u| u.to_string())
            };
            (a, url)
        })
        .collect())
}

/// A peer as the scope rules see it.
fn view(p: &PeerSummary) -> PeerView {
    let reach = match p.state {
        PeerState::Up => Reach::Up,
        PeerState::Suspect => Reach::Suspect,
        PeerState::Down => Reach::Down,
    };
    PeerView { name: p.name.clone(), region: p.region.clone(), reach, rtt_ms: p.rtt_ms }
}

/// A refused federated query as the API answers it.
fn refused(r: Refusal) -> ApiError {
    let error = match r.code {
        RefusalCode::InvalidQuery => ApiError::invalid_query(r.message),
        RefusalCode::NoRecorder => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_recorder", r.message),
        RefusalCode::PartialAnswer => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "partial_answer", r.message),
    };
    match r.manifest {
        Some(manifest) => error.with_extra("manifest", manifest),
        None => error,
    }
}

async fn fan_out(state: AppState, params: Params, request: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let content_type = request.headers().get(axum::http::header::CONTENT_TYPE).cloned();
    // This site's own leg carries the caller's token: without a peer
    // secret there is nothing else it would accept.
    let own_token = request.headers().get(AUTHORIZATION).cloned();
    let me = state.store.site().to_string();
    let (_, body) = crate::edge::read_whole(request, &state.body_reading).await?;
    let asked = sites_to_ask(&state, &params)?;
    let own_client = state.federation.own_client.clone();
    let deadline = params.deadline;
    let query = params.site_query();
    let fed = &state.federation;
    let calls = asked.into_iter().map(|(ask, base)| {
        let client = if ask.site == me { Ok(own_client.clone()) } else { fed.client_for(&ask.site) };
        let (method, body, content_type) = (method.clone(), body.clone(), content_type.clone());
        let bearer = match (&own_token, ask.site == me) {
            (Some(own), true) => own.clone(),
            _ => HeaderValue::from_str(&state.federation.bearer()).unwrap_or(HeaderValue::from_static("")),
        };
        let (path, query) = (path.clone(), query.clone());
        async move {
            let site = ask.site;
            let Some(base) = base else { return SiteAnswer::unknown(&site) };
            let client = match client {
                Ok(client) => client,
                Err(e) => return SiteAnswer { site, latency_ms: 0.0, outcome: Outcome::Failed(e) },
            };
            let mut url = match reqwest::Url::parse(&format!("{base}{path}")) {
                Ok(u) => u,
                Err(e) => return SiteAnswer { site, latency_ms: 0.0, outcome: Outcome::Unreachable(e.to_string()) },
            };
            url.set_query(Some(&query));
            // The peer secret lets the other site take the request under
            // whatever name this site's peers know it by (`edge`).
            let mut req = client.request(method, url).body(body).timeout(deadline).header(AUTHORIZATION, bearer);
            if let Some(ct) = content_type {
                req = req.header(axum::http::header::CONTENT_TYPE, ct);
            }
            let t = Instant::now();
            let outcome = tokio::time::timeout(deadline, async {
                let res = req.send().await?;
                let status = res.status();
                let time = res.headers().get(TIME_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let value: Value = res.json().await?;
                Ok::<_, reqwest::Error>((status, time, value))
            })
            .await;
            let latency_ms = t.elapsed().as_secs_f64() * 1e3;
            let outcome = match outcome {
                Err(_) => Outcome::TimedOut,
                Ok(Err(e)) if e.is_timeout() => Outcome::TimedOut,
                Ok(Err(e)) if e.is_connect() => Outcome::Unreachable(crate::federation::error_chain(&e)),
                Ok(Err(e)) => Outcome::Failed(crate::federation::error_chain(&e)),
                Ok(Ok((status, time, value))) if status.is_success() => Outcome::Answered { value, made_at_us: time },
                Ok(Ok((status, _, value))) => {
                    return SiteAnswer::refused(&site, &status.to_string(), &value, latency_ms)
                }
            };
            SiteAnswer { site, latency_ms, outcome }
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let now = pepper_storage::now_us();
    let merged = conclude(&params, answers, now, started.elapsed().as_millis() as u64).map_err(refused)?;
    Ok(Json(Value::Object(merged)).into_response())
}

/// The sites a query of `channel` should ask: the live complete monitors
/// of the policy pattern covering it, this site first if it is one, then
/// peers that are up by heartbeat latency. `None` when no policy covers it.
pub(crate) fn recorders(state: &AppState, channel: &str) -> Option<(String, Vec<(String, String)>)> {
    let sup = &state.supervisor;
    let pattern = sup.covering(channel)?;
    let complete_here = state.store.monitor_state(&pattern) == Some(MonitorState::Complete);
    let peers = state.federation.peer_list();
    let views = crate::loops::supervise::peer_views_of(&peers);
    let (pattern, names) = sup.placement().recorders(sup.now(), channel, complete_here, &views)?;
    // Every name is a peer's or, if not among them, this site's.
    let url = |name: &str| {
        peers.iter().find(|p| p.name == name).map_or_else(|| state.federation.local_url(), |p| p.url.clone())
    };
    let ordered = names
        .into_iter()
        .map(|name| {
            let url = url(&name);
            (name, url)
        })
        .collect();
    Some((pattern, ordered))
}
