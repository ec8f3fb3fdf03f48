//! Leases over HTTP, and the server's enforcement of their lifetimes.
//!
//! A lease is a subscription with a lifetime: a channel pattern (covering
//! its subtree, `*` matching exactly one element), an optional filter on
//! payload types, a time to live capped by the site's `lease_ttl_max_s`, an
//! optional anycast group and an optional start sequence number. Leases are
//! log records, so they survive a restart.
//!
//! **Expiry is the server's job.** An [`ExpiryIndex`] keeps every live
//! lease's expiry in memory, ordered by time; a task wakes every
//! [`LEASE_EXPIRY_TICK`] and expires everything due in one pass, in appends
//! of [`LEASE_EXPIRE_BATCH`] leases that the writer group-commits together.
//! A lone lapsed lease ends within about 0.1 s; 100,000 leases lapsing at
//! the same instant all end within 1 s (measured: `cargo bench --bench
//! expiry`, BENCHMARKS.md). Expiring appends a lease-expire record and, in
//! the same atomic batch, a `lease.expired` event on `/pepper/leases/`, so
//! the control plane can be watched like any channel. The store decides the
//! race with a renewal: an expire record applies only to a lease whose
//! expiry has passed, and a renewal only to one whose has not.
//!
//! Endpoints: `POST /v1/leases` (201), `POST /v1/leases/{id}/renew`,
//! `DELETE /v1/leases/{id}` (204), `GET /v1/leases`, `GET /v1/leases/{id}`.
//! Expiry runs in `loops::expiry`; delivery in `streams` and `loops::dispatch`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use pepper_router::{Action, Pattern, Resource};
use pepper_storage::limits::{ID_BYTES_MAX, LEASE_TYPES_MAX};
use pepper_storage::{now_us, Body, Error as StoreError, Lease, LeaseEnd, LeaseGrant, LeaseRenew, Party};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::limits::LEASES_MAX;
use crate::state::AppState;
use crate::wire::envelope::{canonical_types, new_event_id, rfc3339_us};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantRequest {
    channel: String,
    ttl_s: u64,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    from_seq: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    /// The holder's service, matched against an event's `to.service`.
    #[serde(default)]
    service: String,
    /// The holder's instance, matched against an event's `to.instance`.
    #[serde(default)]
    instance: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewRequest {
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// A lease as the API shows it.
#[derive(Debug, Serialize)]
pub struct LeaseJson {
    /// Lease id.
    pub id: String,
    /// The pattern it covers.
    pub channel: String,
    /// Payload types it wants; empty means all.
    pub types: Vec<String>,
    /// Anycast group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The granted time to live.
    pub ttl_s: u64,
    /// When it lapses unless renewed (RFC 3339).
    pub expires_at: String,
    /// Where its stream starts by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    /// The sequence number of its grant.
    pub granted_seq: u64,
    /// The holder's service, if given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// The holder's instance, if given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
}

impl From<&Lease> for LeaseJson {
    fn from(l: &Lease) -> LeaseJson {
        LeaseJson {
            id: l.id.clone(),
            channel: l.pattern.clone(),
            types: l.types.clone(),
            group: l.group.clone(),
            ttl_s: l.ttl_ms / 1000,
            expires_at: rfc3339_us(l.expires_at_us),
            from_seq: l.from_seq,
            granted_seq: l.granted_seq,
            service: l.holder.service.clone(),
            instance: l.holder.instance.clone(),
        }
    }
}

fn granted_ttl_s(requested: u64, max: u64) -> Result<u64, ApiError> {
    if requested == 0 {
        return Err(ApiError::invalid_body("ttl_s must be at least 1"));
    }
    Ok(requested.min(max))
}

/// Appends one lease record in a task of its own, so a client that hangs
/// up cannot cancel it halfway. The lease index follows the commit by
/// itself (`expiry::ExpiryFold`).
async fn commit(state: &AppState, body: Body) -> Result<pepper_storage::Appended, ApiError> {
    let state = state.clone();
    tokio::spawn(async move { state.store.append(vec![body]).await.map_err(lease_error) })
        .await
        .map_err(ApiError::task_failed)?
}

fn lease_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { key, .. } => ApiError::no_lease(&key),
        StoreError::Conflict { detail, .. } => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
        StoreError::TooLarge { what: "anycast groups", max, .. } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_groups",
            format!("this site holds {max} anycast groups, its limit; join an existing group"),
        ),
        other => other.into(),
    }
}

/// Whether `caller` may hold `lease`: it is the lease's owner (the
/// principal it was granted to, when auth was on) and may `subscribe` on
/// every channel of its pattern.
pub(crate) fn may_hold(caller: &Caller, lease: &pepper_storage::Lease) -> bool {
    caller.owns(lease.owner.as_deref())
        && Pattern::parse(&lease.pattern).is_ok_and(|p| caller.may(Action::Subscribe, &Resource::Channels(&p)))
}

/// The live lease `id`, if `caller` may hold it. A lease the caller may
/// not hold is answered like one that does not exist (404, nothing about
/// its pattern), so ids cannot be probed.
pub(crate) async fn lease_for(state: &AppState, caller: &Caller, id: &str) -> Result<pepper_storage::Lease, ApiError> {
    let id2 = id.to_string();
    match state.store.read(move |v| v.lease(&id2)).await? {
        Some(lease) if may_hold(caller, &lease) => Ok(lease),
        _ => Err(ApiError::no_lease(id)),
    }
}

pub(crate) async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<GrantRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::invalid_body(e.body_text()))?;
    let pattern = Pattern::parse(&req.channel).map_err(ApiError::bad_channel)?;
    caller.require(Action::Subscribe, &Resource::Channels(&pattern))?;
    let ttl_s = granted_ttl_s(req.ttl_s, state.config.lease_ttl_max_s)?;
    if req.types.len() > LEASE_TYPES_MAX {
        return Err(ApiError::too_large(format!("{} types, over the limit of {LEASE_TYPES_MAX}", req.types.len())));
    }
    let types = canonical_types(&req.types);
    if types.len() != req.types.len() {
        return Err(ApiError::invalid_body("types must not contain an empty type"));
    }
    for (what, value) in [("id", &req.id), ("group", &req.group)] {
        if let Some(v) = value {
            if v.is_empty() || v.len() > ID_BYTES_MAX || v.chars().any(|c| c.is_control() || c == '/') {
                return Err(ApiError::invalid_body(format!(
                    "{what} must be 1 to {ID_BYTES_MAX} bytes without '/' or control characters"
                )));
            }
        }
    }
    // With auth on, anycast groups belong to a principal: the stored name
    // is `PRINCIPAL:GROUP`, so no one joins another's group to take a share
    // of the events meant for it.
    let group = match (caller.stamp(), &req.group) {
        (Some(owner), Some(g)) => {
            let scoped = format!("{owner}:{g}");
            if scoped.len() > ID_BYTES_MAX {
                return Err(ApiError::invalid_body(format!(
                    "group {g:?} with its principal's name is over {ID_BYTES_MAX} bytes"
                )));
            }
            Some(scoped)
        }
        (_, g) => g.clone(),
    };
    if let Some(owner) = caller.stamp().filter(|_| !caller.unrestricted()) {
        let held = state.lease_holders.held(&owner);
        crate::quota::Quotas::lease(&caller, &held, req.id.as_deref(), group.as_deref())?;
    }
    if state.leases.len() >= LEASES_MAX {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_leases",
            format!("this site holds {LEASES_MAX} leases, its limit"),
        ));
    }
    if let Some(from) = req.from_seq {
        let (earliest, head) = (state.store.earliest_seq(), state.store.last_seq() + 1);
        if from < earliest.max(1) || from > head {
            return Err(ApiError::invalid_body(format!("from_seq must lie between {} and {head}", earliest.max(1))));
        }
    }
    let id = req.id.unwrap_or_else(new_event_id);
    let expires_at_us = now_us() + ttl_s * 1_000_000;
    let grant = LeaseGrant {
        id: id.clone(),
        pattern: pattern.as_str().to_string(),
        types: types.clone(),
        ttl_ms: ttl_s * 1000,
        expires_at_us,
        group: group.clone(),
        from_seq: req.from_seq,
        holder: Party { service: req.service.clone(), instance: req.instance.clone() },
        owner: caller.stamp(),
    };
    let appended = commit(&state, Body::LeaseGrant(grant)).await?;
    let body = LeaseJson {
        id,
        channel: pattern.as_str().to_string(),
        types,
        group,
        ttl_s,
        expires_at: rfc3339_us(expires_at_us),
        from_seq: req.from_seq,
        granted_seq: appended.first,
        service: req.service,
        instance: req.instance,
    };
    // Peers learn of a new interest before the grant is answered, so
    // their events published after it reach the lease.
    let interest = crate::federation::Interest { pattern: body.channel.clone(), types: body.types.clone() };
    state.federation.lease_granted(&state.store, interest).await;
    Ok((StatusCode::CREATED, Json(body)))
}

pub(crate) async fn renew(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<LeaseJson>, ApiError> {
    // An empty body renews with the granted TTL; anything else must be JSON.
    let req: RenewRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RenewRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid_body(format!("body is not a renewal: {e}")))?
    };
    let current = lease_for(&state, &caller, &id).await?;
    let ttl_s = granted_ttl_s(req.ttl_s.unwrap_or(current.ttl_ms / 1000), state.config.lease_ttl_max_s)?;
    let expires_at_us = now_us() + ttl_s * 1_000_000;
    let renew = LeaseRenew { id: id.clone(), ttl_ms: ttl_s * 1000, expires_at_us };
    commit(&state, Body::LeaseRenew(renew)).await?;
    let mut lease = current;
    lease.ttl_ms = ttl_s * 1000;
    lease.expires_at_us = expires_at_us;
    Ok(Json(LeaseJson::from(&lease)))
}

pub(crate) async fn release(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    lease_for(&state, &caller, &id).await?;
    commit(&state, Body::LeaseRelease(LeaseEnd { id })).await?;
    state.federation.lease_ended();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/leases`: the live leases the caller may hold (all of them with
/// auth off or for an admin).
pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let (leases, seq) = state.store.read(|v| Ok((v.leases()?, v.seq()))).await?;
    let leases: Vec<LeaseJson> = leases.iter().filter(|l| may_hold(&caller, l)).map(LeaseJson::from).collect();
    Ok(Json(json!({ "leases": leases, "seq": seq })))
}

pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<LeaseJson>, ApiError> {
    Ok(Json(LeaseJson::from(&lease_for(&state, &caller, &id).await?)))
}
