//! `GET /v1/recording` (the policy, who records each pattern, the last
//! backfill) and `PUT`/`DELETE /v1/recording/policies`. Policy changes are
//! written one at a time, so the store's policy, its documents and the
//! supervisor's copy agree.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use pepper_router::{Action, BackfillReport, PlacementInput, Resource, SeenMonitor};
use pepper_storage::{Body, DocDelete, MonitorState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::supervisor::check_policy;
use crate::supervisor::policy_doc;
use crate::supervisor::POLICIES_MAX;
use crate::supervisor::POLICY_DOC_PREFIX;

/// `GET /v1/recording`: the policy, what this site sees of each pattern's
/// monitors, and its own monitors.
pub(crate) async fn status(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Recording, &Resource::Site)?;
    let sup = &state.supervisor;
    let me = state.store.site().to_string();
    let rows = state.store.read(|v| v.monitors()).await?;
    let (seen, last_backfill) = {
        let placement = sup.placement();
        let now = sup.now();
        let seen: Vec<(String, usize, Vec<SeenMonitor>)> =
            placement.policies().iter().map(|(p, r)| (p.clone(), *r, placement.seen_monitors(now, p))).collect();
        (seen, placement.last_backfill().map(backfill_json))
    };
    let mut policies = Vec::new();
    for (pattern, replicas, seen) in seen {
        let mut monitors: Vec<Value> = seen
            .into_iter()
            .map(|m| {
                json!({ "site": m.site, "region": m.region, "state": m.status.name(),
                        "heard_ms_ago": m.heard_ago.as_millis() as u64 })
            })
            .collect();
        if let Some(r) = rows.iter().find(|r| r.pattern == pattern && r.state != MonitorState::Stopped) {
            monitors.push(json!({ "site": me, "region": state.federation.region(), "state": r.state.name(),
                                  "heard_ms_ago": 0 }));
        }
        let complete = monitors.iter().filter(|m| m["state"] == "complete").count();
        policies.push(json!({ "pattern": pattern, "replicas": replicas, "live": monitors.len(),
                              "complete": complete, "monitors": monitors }));
    }
    let local: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({ "pattern": r.pattern, "state": r.state.name(), "seq": r.seq,
                    "since": crate::wire::envelope::rfc3339_us(r.time_us), "started_seq": r.started_seq,
                    "source": r.source, "marks": r.marks, "reason": r.reason })
        })
        .collect();
    Ok(Json(json!({
        "site": me,
        "interval_ms": sup.interval().as_millis() as u64,
        "policies": policies,
        "local": local,
        "last_backfill": last_backfill,
    })))
}

/// The last backfill as `GET /v1/recording` shows it.
fn backfill_json(b: &BackfillReport) -> Value {
    json!({ "pattern": b.pattern, "source": b.source, "rows": b.rows, "elapsed_ms": b.elapsed_ms,
            "rows_per_s": b.rows_per_s, "held_recorded": b.held_recorded })
}

/// The body of `PUT /v1/recording/policies`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyBody {
    pattern: String,
    replicas: usize,
}

/// `PUT /v1/recording/policies`: adds a pattern or changes its R.
pub(crate) async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<PolicyBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Recording, &Resource::Site)?;
    let Json(p) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    check_policy(&p.pattern, p.replicas).map_err(ApiError::invalid_body)?;
    let sup = &state.supervisor;
    let _one_at_a_time = state.policy_writes.lock().await;
    let mut next = sup.policies();
    next.insert(p.pattern.clone(), p.replicas);
    if next.len() > POLICIES_MAX {
        return Err(ApiError::too_large(format!("a policy holds at most {POLICIES_MAX} patterns")));
    }
    state.store.set_recording_policy(next.keys().cloned().collect())?;
    let audit = crate::auth::audit_event(&caller, "policy.put", &p.pattern, json!({ "replicas": p.replicas }));
    if let Err(e) = state.store.append(vec![policy_doc(&p.pattern, p.replicas), audit]).await {
        // Not kept: put back what the store had.
        state.store.set_recording_policy(sup.policies().keys().cloned().collect())?;
        return Err(e.into());
    }
    sup.placement().step(sup.now(), PlacementInput::Policies(next));
    Ok(Json(json!({ "pattern": p.pattern, "replicas": p.replicas })))
}

/// The query of `DELETE /v1/recording/policies`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatternQuery {
    pattern: String,
}

/// `DELETE /v1/recording/policies?pattern=P`: drops a pattern; this
/// site's monitor of it stops at the next evaluation.
pub(crate) async fn delete_policy(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<PatternQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Recording, &Resource::Site)?;
    let Query(q) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let sup = &state.supervisor;
    let _one_at_a_time = state.policy_writes.lock().await;
    let mut next = sup.policies();
    if next.remove(&q.pattern).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no recording policy names {}", q.pattern),
        ));
    }
    let key = format!("{POLICY_DOC_PREFIX}{}", q.pattern);
    let audit = crate::auth::audit_event(&caller, "policy.remove", &q.pattern, json!({}));
    state.store.append(vec![Body::DocDelete(DocDelete { key }), audit]).await?;
    state.store.set_recording_policy(next.keys().cloned().collect())?;
    sup.placement().step(sup.now(), PlacementInput::Policies(next));
    Ok(StatusCode::NO_CONTENT)
}
