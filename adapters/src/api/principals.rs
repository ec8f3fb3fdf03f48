//! `/v1/auth/...`: principals, their tokens and grants (the `admin`
//! grant), and `whoami` (any caller).
//!
//! - `GET /v1/auth/whoami`: the caller's principal and grants, and whether
//!   auth is on.
//! - `GET /v1/auth/principals`: every principal, tokens listed without
//!   their secrets or hashes.
//! - `POST /v1/auth/principals` `{"name", "grants": [{"action",
//!   "resource"}]}` → 201.
//! - `DELETE /v1/auth/principals/{name}` → 204: the principal and all its
//!   tokens are gone.
//! - `POST /v1/auth/principals/{name}/tokens` `{"expires_in_s", "note"}` →
//!   201 `{"token", "id", "expires_at"}`: the token is shown this once.
//! - `DELETE /v1/auth/principals/{name}/tokens/{id}` → 204: revoked; it
//!   stays listed, with when.
//! - `POST /v1/auth/principals/{name}/grants` `{"action", "resource"}` →
//!   200, the principal; granting what it holds changes nothing.
//! - `DELETE /v1/auth/principals/{name}/grants?action=&resource=` → 204.
//!
//! Every change is one document write (`auth`), so it is durable before
//! it is answered and the site's index follows it through the fold, with
//! an audit event on `/pepper/audit/` in the same append.
//! Changes are made one at a time, each on the one before.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use pepper_router::{Action, Resource};
use pepper_storage::{now_us, Body, DocDelete, DocPut};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{
    audit_event, check_principal_name, new_token, Caller, GrantDoc, PrincipalDoc, TokenDoc, ADMIN_PRINCIPAL,
    GRANTS_PER_PRINCIPAL_MAX, PRINCIPALS_MAX, TOKENS_PER_PRINCIPAL_MAX,
};
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::envelope::rfc3339_us;

/// Longest time to live a token may be given: ten years.
pub const TOKEN_TTL_MAX_S: u64 = 10 * 365 * 24 * 3600;

/// Longest note on a token, in bytes.
pub const TOKEN_NOTE_BYTES_MAX: usize = 256;

fn token_json(t: &TokenDoc) -> Value {
    json!({ "id": t.id, "created": rfc3339_us(t.created_us), "expires_at": t.expires_us.map(rfc3339_us),
            "revoked_at": t.revoked_us.map(rfc3339_us), "note": t.note })
}

fn principal_json(doc: &PrincipalDoc) -> Value {
    let tokens: Vec<Value> = doc.tokens.iter().map(token_json).collect();
    json!({ "name": doc.name, "grants": doc.grants, "tokens": tokens, "created": rfc3339_us(doc.created_us) })
}

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    caller.require(Action::Admin, &Resource::Site)
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no principal {name}"))
}

/// `g` in its one written form (`*` for a site action's resource), or a
/// 400 naming it.
fn canonical(g: &GrantDoc) -> Result<GrantDoc, ApiError> {
    let grant = g.grant().map_err(|e| ApiError::invalid_body(format!("grant {} on {}: {e}", g.action, g.resource)))?;
    Ok(GrantDoc::from(&grant))
}

/// Writes `doc` as the principal's document, with the audit event of the
/// change in the same append: both are logged, or neither.
async fn put(state: &AppState, doc: &PrincipalDoc, audit: Body) -> Result<(), ApiError> {
    let body = Body::DocPut(DocPut { key: PrincipalDoc::key(&doc.name), value: doc.encode() });
    let st = state.clone();
    tokio::spawn(async move { st.store.append(vec![body, audit]).await }).await.map_err(ApiError::task_failed)??;
    Ok(())
}

/// The stored principal `name`, as a document to change.
fn current(state: &AppState, name: &str) -> Result<PrincipalDoc, ApiError> {
    state.auth.principals.get(name).map(|p| p.doc.clone()).ok_or_else(|| not_found(name))
}

/// `GET /v1/auth/whoami`.
pub(crate) async fn whoami(State(state): State<AppState>, caller: Caller) -> Json<Value> {
    let grants: Value = match &caller {
        Caller::Principal(p) => json!(p.doc.grants),
        Caller::Open | Caller::Admin => json!([{ "action": "admin", "resource": "*" }]),
        Caller::Peer => {
            json!([{ "action": "tuples.read", "resource": "/" }, { "action": "models.read", "resource": "*" }])
        }
    };
    Json(json!({ "principal": caller.name(), "grants": grants, "auth": state.auth.enabled() }))
}

/// `GET /v1/auth/principals`.
pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let all: Vec<Value> = state.auth.principals.all().iter().map(|p| principal_json(&p.doc)).collect();
    Ok(Json(json!({ "principals": all, "auth": state.auth.enabled() })))
}

/// The body of `POST /v1/auth/principals`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPrincipal {
    name: String,
    #[serde(default)]
    grants: Vec<GrantDoc>,
}

/// `POST /v1/auth/principals`.
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<NewPrincipal>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    admin_only(&caller)?;
    let Json(req) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    check_principal_name(&req.name).map_err(ApiError::invalid_body)?;
    if req.name == ADMIN_PRINCIPAL {
        return Err(ApiError::invalid_body(format!("{ADMIN_PRINCIPAL} is the configured admin token's name")));
    }
    if req.grants.len() > GRANTS_PER_PRINCIPAL_MAX {
        return Err(ApiError::too_large(format!("at most {GRANTS_PER_PRINCIPAL_MAX} grants per principal")));
    }
    let mut grants = req.grants.iter().map(canonical).collect::<Result<Vec<_>, _>>()?;
    grants.sort_by(|a, b| (&a.action, &a.resource).cmp(&(&b.action, &b.resource)));
    grants.dedup();
    let _one_at_a_time = state.principal_writes.lock().await;
    if state.auth.principals.get(&req.name).is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "exists", format!("principal {} exists", req.name)));
    }
    if state.auth.principals.len() >= PRINCIPALS_MAX {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_principals",
            format!("this site holds {PRINCIPALS_MAX} principals, its limit"),
        ));
    }
    let doc = PrincipalDoc { name: req.name, grants, tokens: Vec::new(), created_us: now_us() };
    let audit = audit_event(&caller, "principal.create", &doc.name, json!({ "grants": doc.grants }));
    put(&state, &doc, audit).await?;
    Ok((StatusCode::CREATED, Json(principal_json(&doc))))
}

/// `DELETE /v1/auth/principals/{name}`.
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin_only(&caller)?;
    let _one_at_a_time = state.principal_writes.lock().await;
    current(&state, &name)?;
    let body = Body::DocDelete(DocDelete { key: PrincipalDoc::key(&name) });
    let audit = audit_event(&caller, "principal.remove", &name, json!({}));
    let st = state.clone();
    tokio::spawn(async move { st.store.append(vec![body, audit]).await }).await.map_err(ApiError::task_failed)??;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /v1/auth/principals/{name}/tokens`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTokenRequest {
    expires_in_s: Option<u64>,
    #[serde(default)]
    note: String,
}

/// `POST /v1/auth/principals/{name}/tokens`.
pub(crate) async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    admin_only(&caller)?;
    let req: NewTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        NewTokenRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid_body(format!("body is not a token request: {e}")))?
    };
    if req.expires_in_s.is_some_and(|s| s == 0 || s > TOKEN_TTL_MAX_S) {
        return Err(ApiError::invalid_body(format!("expires_in_s must be 1 to {TOKEN_TTL_MAX_S}")));
    }
    if req.note.len() > TOKEN_NOTE_BYTES_MAX || req.note.chars().any(char::is_control) {
        return Err(ApiError::invalid_body(format!(
            "note must be at most {TOKEN_NOTE_BYTES_MAX} bytes without control characters"
        )));
    }
    let _one_at_a_time = state.principal_writes.lock().await;
    let mut doc = current(&state, &name)?;
    if doc.tokens.len() >= TOKENS_PER_PRINCIPAL_MAX {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_tokens",
            format!("{name} holds {TOKENS_PER_PRINCIPAL_MAX} tokens, its limit; remove and re-create the principal"),
        ));
    }
    let now = now_us();
    let token = new_token(now, req.expires_in_s.map(|s| now + s * 1_000_000), req.note);
    doc.tokens.push(token.doc.clone());
    let detail =
        json!({ "id": token.doc.id, "expires_at": token.doc.expires_us.map(rfc3339_us), "note": token.doc.note });
    put(&state, &doc, audit_event(&caller, "token.create", &name, detail)).await?;
    let mut answer = token_json(&token.doc);
    answer["token"] = json!(token.text);
    answer["principal"] = json!(name);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `DELETE /v1/auth/principals/{name}/tokens/{id}`.
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    admin_only(&caller)?;
    let _one_at_a_time = state.principal_writes.lock().await;
    let mut doc = current(&state, &name)?;
    let Some(token) = doc.tokens.iter_mut().find(|t| t.id == id) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{name} has no token {id}")));
    };
    if token.revoked_us.is_none() {
        token.revoked_us = Some(now_us());
        put(&state, &doc, audit_event(&caller, "token.revoke", &name, json!({ "id": id }))).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/auth/principals/{name}/grants`.
pub(crate) async fn add_grant(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<GrantDoc>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let Json(grant) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    let grant = canonical(&grant)?;
    let _one_at_a_time = state.principal_writes.lock().await;
    let mut doc = current(&state, &name)?;
    if !doc.grants.contains(&grant) {
        if doc.grants.len() >= GRANTS_PER_PRINCIPAL_MAX {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_grants",
                format!("{name} holds {GRANTS_PER_PRINCIPAL_MAX} grants, its limit"),
            ));
        }
        let audit = audit_event(&caller, "grant.add", &name, json!(grant));
        doc.grants.push(grant);
        put(&state, &doc, audit).await?;
    }
    Ok(Json(principal_json(&doc)))
}

/// `DELETE /v1/auth/principals/{name}/grants?action=&resource=`.
pub(crate) async fn remove_grant(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<GrantDoc>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    admin_only(&caller)?;
    let Query(grant) = query.map_err(|e| ApiError::invalid_query(e.body_text()))?;
    let grant = canonical(&grant).map_err(|e| ApiError::invalid_query(e.message()))?;
    let _one_at_a_time = state.principal_writes.lock().await;
    let mut doc = current(&state, &name)?;
    let before = doc.grants.len();
    doc.grants.retain(|g| *g != grant);
    if doc.grants.len() == before {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{name} holds no grant of {} on {}", grant.action, grant.resource),
        ));
    }
    put(&state, &doc, audit_event(&caller, "grant.remove", &name, json!(grant))).await?;
    Ok(StatusCode::NO_CONTENT)
}
