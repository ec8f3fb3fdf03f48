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
//! - `deadline_ms` (default [`DEADLINE_DEFAULT_MS`], at most
//!   [`DEADLINE_MAX_MS`]): no site makes the query wait longer;
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
//! The receiving site sends the same request with `scope=local` to every
//! site in scope (itself included, over loopback, so every answer is made
//! the same way), in parallel, each bounded by the deadline. Each item of
//! the merged answer carries the `site` that gave it. Tuples with the same
//! (channel, field) from several sites keep the newest; histories are in
//! time order; instances in path order. Every answer is a snapshot of its
//! own site at its own sequence number; there is no snapshot across sites.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pepper_storage::MonitorState;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::federation::by_preference;
use crate::federation::this_site;
use crate::federation::PeerSummary;
use crate::state::AppState;

/// The deadline of a federated query when none is given.
pub const DEADLINE_DEFAULT_MS: u64 = 2000;
/// The longest deadline a federated query may ask for.
pub const DEADLINE_MAX_MS: u64 = 60_000;

/// The header each local answer carries: when it was made, microseconds
/// since the Unix epoch, for the manifest's `data_age_ms`.
const TIME_HEADER: &str = "x-pepper-time-us";

/// Which sites a query asks.
#[derive(Debug, PartialEq, Eq)]
enum Scope {
    Local,
    All,
    Sites(Vec<String>),
    Region(String),
    Sample(usize),
    Recorders,
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    let bad = || format!("scope {text:?} must be local, all, recorders, sites:a,b, region:r or sample:k");
    Ok(match text.split_once(':') {
        None if text == "local" => Scope::Local,
        None if text == "all" => Scope::All,
        None if text == "recorders" => Scope::Recorders,
        Some(("sites", list)) => {
            let names: Vec<String> = list.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
            if names.is_empty() || names.len() > crate::federation::PEERS_MAX + 1 {
                return Err(bad());
            }
            Scope::Sites(names)
        }
        Some(("region", r)) if !r.is_empty() => Scope::Region(r.to_string()),
        Some(("sample", k)) => Scope::Sample(k.parse().ok().filter(|k| *k > 0).ok_or_else(bad)?),
        _ => return Err(bad()),
    })
}

/// The federation parameters of a query, and the rest of its query string.
struct Params {
    scope: Scope,
    /// Whether the query named its scope.
    explicit: bool,
    deadline: Duration,
    min_sites: Option<usize>,
    deny_partial: bool,
    rest: Vec<(String, String)>,
}

fn parse_params(query: Option<&str>) -> Result<Params, String> {
    let mut p = Params {
        scope: Scope::Local,
        explicit: false,
        deadline: Duration::from_millis(DEADLINE_DEFAULT_MS),
        min_sites: None,
        deny_partial: false,
        rest: Vec::new(),
    };
    let url = reqwest::Url::parse(&format!("http://x/?{}", query.unwrap_or(""))).map_err(|e| e.to_string())?;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "scope" => {
                p.scope = parse_scope(&v)?;
                p.explicit = true;
            }
            "deadline_ms" => {
                let ms: u64 = v.parse().map_err(|_| format!("deadline_ms {v:?} is not a number"))?;
                if !(1..=DEADLINE_MAX_MS).contains(&ms) {
                    return Err(format!("deadline_ms must be 1 to {DEADLINE_MAX_MS}"));
                }
                p.deadline = Duration::from_millis(ms);
            }
            "min_sites" => p.min_sites = Some(v.parse().map_err(|_| format!("min_sites {v:?} is not a number"))?),
            "partial" => {
                p.deny_partial = match v.as_ref() {
                    "allow" => false,
                    "deny" => true,
                    _ => return Err(format!("partial {v:?} must be allow or deny")),
                }
            }
            _ => p.rest.push((k.into_owned(), v.into_owned())),
        }
    }
    Ok(p)
}

/// Axum middleware on the federated routes: a local query goes on to its
/// handler (without the federation parameters), stamped with its time; any
/// other scope is fanned out.
pub(crate) async fn layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let mut params = match parse_params(request.uri().query()) {
        Ok(p) => p,
        Err(e) => return ApiError::invalid_query(e).into_response(),
    };
    if !params.explicit && request.method() == axum::http::Method::GET && request.uri().path().starts_with("/v1/tuples")
    {
        let channel = params.rest.iter().find(|(k, _)| k == "channel").map(|(_, v)| v.as_str());
        if let Some(pattern) = channel.and_then(|c| state.supervisor.covering(c)) {
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
        if !params.rest.is_empty() {
            url.query_pairs_mut().extend_pairs(&params.rest);
        }
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
    match fan_out(state, params, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// One site's part of a federated query.
struct Asked {
    site: String,
    url: Option<String>,
}

fn sites_in_scope(state: &AppState, params: &Params) -> Result<Vec<Asked>, ApiError> {
    let scope = &params.scope;
    if *scope == Scope::Recorders {
        let channel = params.rest.iter().find(|(k, _)| k == "channel").map(|(_, v)| v.as_str()).unwrap_or("");
        let Some((pattern, sites)) = recorders(state, channel) else {
            return Err(ApiError::invalid_query(format!("no recording policy covers channel {channel:?}")));
        };
        if sites.is_empty() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_recorder",
                format!("no live site records {pattern} completely right now"),
            ));
        }
        return Ok(sites.into_iter().map(|(site, url)| Asked { site, url: Some(url) }).collect());
    }
    Ok(sites_in_scope_of(state, scope))
}

fn sites_in_scope_of(state: &AppState, scope: &Scope) -> Vec<Asked> {
    let fed = &state.federation;
    let me = state.store.site().to_string();
    let peers = fed.peer_list();
    let mine = || Asked { site: me.clone(), url: Some(fed.local_url()) };
    let peer = |p: &PeerSummary| Asked { site: p.name.clone(), url: Some(p.url.clone()) };
    match scope {
        Scope::Local | Scope::Recorders => vec![mine()],
        Scope::All => std::iter::once(mine()).chain(peers.iter().map(peer)).collect(),
        Scope::Region(r) => {
            let mut out: Vec<Asked> = Vec::new();
            if fed.region() == Some(r.as_str()) {
                out.push(mine());
            }
            out.extend(peers.iter().filter(|p| p.region.as_deref() == Some(r.as_str())).map(peer));
            out
        }
        Scope::Sites(names) => names
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|n| {
                if *n == me {
                    mine()
                } else {
                    peers.iter().find(|p| p.name == *n).map_or(Asked { site: n.clone(), url: None }, peer)
                }
            })
            .collect(),
        Scope::Sample(k) => {
            sample(std::iter::once(this_site(&state.federation, state.store.site())).chain(peers).collect(), *k)
                .into_iter()
                .map(|p| Asked { site: p.name, url: Some(p.url) })
                .collect()
        }
    }
}

/// `sample:k`: the first k sites by preference.
fn sample(sites: Vec<PeerSummary>, k: usize) -> Vec<PeerSummary> {
    let mut sites = by_preference(sites);
    sites.truncate(k);
    sites
}

async fn fan_out(state: AppState, params: Params, request: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let content_type = request.headers().get(axum::http::header::CONTENT_TYPE).cloned();
    let (_, body) = crate::edge::read_whole(request, &state.body_reading).await?;
    let asked = sites_in_scope(&state, &params)?;
    let client = state.federation.client().clone();
    let deadline = params.deadline;
    let calls = asked.into_iter().map(|a| {
        let (client, method, body, content_type) = (client.clone(), method.clone(), body.clone(), content_type.clone());
        let bearer = state.federation.bearer();
        let mut rest = params.rest.clone();
        rest.push(("scope".into(), "local".into()));
        let path = path.clone();
        async move {
            let Some(base) = a.url else {
                return (a.site, "unreachable", None, Some("not a known site".to_string()), 0.0, None);
            };
            let mut url = match reqwest::Url::parse(&format!("{base}{path}")) {
                Ok(u) => u,
                Err(e) => return (a.site, "unreachable", None, Some(e.to_string()), 0.0, None),
            };
            url.query_pairs_mut().extend_pairs(&rest);
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
            let ms = t.elapsed().as_secs_f64() * 1e3;
            match outcome {
                Err(_) => (a.site, "timed_out", None, None, ms, None),
                Ok(Err(e)) if e.is_timeout() => (a.site, "timed_out", None, None, ms, None),
                Ok(Err(e)) if e.is_connect() => (a.site, "unreachable", None, Some(e.to_string()), ms, None),
                Ok(Err(e)) => (a.site, "error", None, Some(e.to_string()), ms, None),
                Ok(Ok((status, time, value))) if status.is_success() => {
                    (a.site, "answered", Some(value), None, ms, time)
                }
                Ok(Ok((status, _, value))) => {
                    let message = value["error"]["message"].as_str().map_or_else(|| value.to_string(), str::to_string);
                    (a.site, "error", None, Some(format!("{status}: {message}")), ms, None)
                }
            }
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let now = pepper_storage::now_us();
    let mut sites = Vec::new();
    let mut answers = Vec::new();
    for (site, status, value, error, ms, time) in results {
        let mut entry = json!({ "site": site, "status": status, "latency_ms": (ms * 1000.0).round() / 1000.0 });
        if let Some(v) = &value {
            entry["seq"] = v["seq"].clone();
            entry["data_age_ms"] = json!(time.map(|t| now.saturating_sub(t) / 1000));
            if let Some(cursor) = v.get("next_cursor") {
                // Continue that site alone: `scope=sites:<it>` and this cursor.
                entry["more"] = json!(true);
                entry["next_cursor"] = cursor.clone();
            } else if v.get("truncated").is_some_and(|t| t == true) {
                entry["more"] = json!(true);
            }
        }
        if let Some(e) = error {
            entry["error"] = json!(e);
        }
        sites.push(entry);
        if let Some(v) = value {
            answers.push((site, v));
        }
    }
    if params.scope == Scope::Recorders {
        // Replicas hold the same rows: the first to answer, in order of
        // preference, is the answer.
        answers.truncate(1);
        if let Some((used, _)) = answers.first() {
            for entry in &mut sites {
                if entry["site"] == json!(used) {
                    entry["used"] = json!(true);
                }
            }
        }
    }
    let asked = sites.len();
    let answered = sites.iter().filter(|s| s["status"] == "answered").count();
    let manifest = json!({
        "asked": asked,
        "answered": answered,
        "complete": answered == asked,
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "sites": sites,
    });
    if params.scope == Scope::Recorders && answered == 0 && sites.iter().all(|s| s["status"] != "error") {
        // Not "no rows": no recorder could be asked in time.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_recorder",
            format!("none of the {asked} sites recording this subtree answered"),
        )
        .with_extra("manifest", manifest));
    }
    let min = params.min_sites.unwrap_or(if params.scope == Scope::Recorders { 1 } else { asked });
    if params.deny_partial && answered < min {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "partial_answer",
            format!("{answered} of {asked} sites answered, fewer than the {min} required (partial=deny)"),
        )
        .with_extra("manifest", manifest));
    }
    // Every site refused the query itself (a bad parameter): that is the
    // caller's error, not an empty answer.
    if answered == 0 {
        let refusals: Vec<&str> =
            sites.iter().filter_map(|s| s["error"].as_str()).filter(|e| e.starts_with('4')).collect();
        if !refusals.is_empty() && refusals.len() == asked {
            let message = format!("every site refused the query: {}", refusals[0]);
            return Err(ApiError::invalid_query(message).with_extra("manifest", manifest));
        }
    }
    let descending = params.rest.iter().any(|(k, v)| k == "order" && v == "desc");
    let mut merged = merge(answers, descending);
    merged.insert("manifest".into(), manifest);
    Ok(Json(Value::Object(merged)).into_response())
}

/// The answers' items, each tagged with its site, merged by kind; history
/// newest first when `descending`.
fn merge(answers: Vec<(String, Value)>, descending: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for field in ["tuples", "history", "instances"] {
        let mut items: Vec<Value> = Vec::new();
        let mut present = false;
        for (site, answer) in &answers {
            if let Some(list) = answer.get(field).and_then(Value::as_array) {
                present = true;
                items.extend(list.iter().cloned().map(|mut item| {
                    if let Some(fields) = item.as_object_mut() {
                        fields.insert("site".into(), json!(site));
                    }
                    item
                }));
            }
        }
        if !present {
            continue;
        }
        let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
        match field {
            "tuples" => {
                // The newest value of each (channel, field) wins.
                items.sort_by(|a, b| {
                    (text(a, "channel"), text(a, "field"))
                        .cmp(&(text(b, "channel"), text(b, "field")))
                        .then(text(b, "time").cmp(&text(a, "time")))
                });
                items.dedup_by(|later, first| {
                    text(later, "channel") == text(first, "channel") && text(later, "field") == text(first, "field")
                });
            }
            "history" if descending => items.sort_by_key(|a| std::cmp::Reverse(text(a, "time"))),
            "history" => items.sort_by_key(|a| text(a, "time")),
            _ => items.sort_by_key(|a| text(a, "path")),
        }
        out.insert(field.into(), Value::Array(items));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::PeerState;

    #[test]
    fn scopes_parse_or_say_what_is_wrong() {
        assert_eq!(parse_scope("all"), Ok(Scope::All));
        assert_eq!(parse_scope("sites:a,b"), Ok(Scope::Sites(vec!["a".into(), "b".into()])));
        assert_eq!(parse_scope("region:eu"), Ok(Scope::Region("eu".into())));
        assert_eq!(parse_scope("sample:2"), Ok(Scope::Sample(2)));
        for bad in ["", "everything", "sites:", "sample:0", "sample:x", "region:"] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
        let p = parse_params(Some("channel=/a/&scope=all&deadline_ms=250&partial=deny&min_sites=2")).expect("params");
        assert_eq!(
            (p.scope, p.deadline, p.deny_partial, p.min_sites),
            (Scope::All, Duration::from_millis(250), true, Some(2))
        );
        assert_eq!(p.rest, vec![("channel".to_string(), "/a/".to_string())]);
        assert!(parse_params(Some("deadline_ms=0")).is_err());
        assert!(parse_params(Some("partial=maybe")).is_err());
    }

    #[test]
    fn a_sample_prefers_up_then_low_latency() {
        let site = |name: &str, state, rtt: Option<f64>| PeerSummary {
            name: name.into(),
            url: format!("http://{name}"),
            region: None,
            state,
            rtt_ms: rtt,
        };
        let sites = vec![
            site("far", PeerState::Up, Some(9.0)),
            site("gone", PeerState::Down, Some(0.1)),
            site("me", PeerState::Up, Some(0.0)),
            site("shaky", PeerState::Suspect, Some(0.2)),
            site("near", PeerState::Up, Some(1.0)),
            site("new", PeerState::Up, None),
        ];
        let names = |k| sample(sites.clone(), k).into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(names(3), ["me", "near", "far"]);
        assert_eq!(names(5), ["me", "near", "far", "new", "shaky"]);
        assert_eq!(names(9).len(), 6);
    }

    #[test]
    fn merged_tuples_keep_the_newest_per_key_and_say_where_from() {
        let a = json!({"seq": 5, "tuples": [{"channel": "/n/", "field": "x", "time": "2026-01-01T00:00:02Z", "value": "new"}]});
        let b = json!({"seq": 9, "tuples": [{"channel": "/n/", "field": "x", "time": "2026-01-01T00:00:01Z", "value": "old"},
                                            {"channel": "/m/", "field": "y", "time": "2026-01-01T00:00:01Z", "value": "v"}]});
        let merged = merge(vec![("a".into(), a), ("b".into(), b)], false);
        let tuples = merged["tuples"].as_array().expect("tuples");
        assert_eq!(tuples.len(), 2);
        assert_eq!((tuples[0]["channel"].as_str(), tuples[0]["site"].as_str()), (Some("/m/"), Some("b")));
        assert_eq!((tuples[1]["value"].as_str(), tuples[1]["site"].as_str()), (Some("new"), Some("a")));
        // History in time order, newest first when asked; odd items kept.
        let h = |t: &str| json!({"time": format!("2026-01-01T00:00:0{t}Z")});
        let (a, b) = (json!({"history": [h("1"), h("3"), 7]}), json!({"history": [h("2")]}));
        let times = |desc| {
            merge(vec![("a".into(), a.clone()), ("b".into(), b.clone())], desc)["history"]
                .as_array()
                .expect("history")
                .iter()
                .map(|i| i["time"].as_str().unwrap_or("-").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(times(false), ["-", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"]);
        assert_eq!(times(true), ["2026-01-01T00:00:03Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:01Z", "-"]);
    }
}
