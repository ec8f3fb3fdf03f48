//! The checks a request passes before any of its records enters the batch.
//!
//! A request is all or nothing. So every rule that depends on the state
//! (a renewal needs a live lease, an expire record needs a lapsed tuple, a
//! model reference needs its target, an event id may be a retry) is checked
//! here against the state as the group sees it (the overlays, then the
//! engine), at the group's time, without changing anything. A refused
//! request leaves no trace in the batch and consumes no sequence number; the
//! rest of its group commits.
//!
//! The server, not the client, enforces lifetimes: a lease past its expiry
//! can no longer be renewed and an expire record applies only to a lease
//! that really lapsed, so a renewal that wins the race keeps the lease.

use std::collections::{BTreeSet, HashMap};

use crate::anycast::Anycast;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys::{self, CF_EVENT_IDS};
use crate::limits::ANYCAST_GROUPS_MAX;
use crate::record::{Body, MonitorState};
use crate::recording::Recording;
use crate::writer::request::Prepared;
use crate::writer::state::{lease, tuple, IdOverlay, Overlays, TupleOverlay};

/// What the dedupe check says about one append.
pub(crate) enum Dedupe {
    /// No event in it was logged before within the window.
    New,
    /// Every record is an event logged before: answer with the originals.
    Replay { first: u64, last: u64 },
}

/// Looks up the request's event ids. An id logged within the dedupe window
/// (`window_us`) makes its event a retry: if every record of the request is
/// such a retry, the request is answered with the original sequence numbers
/// and writes nothing; a request mixing retries and new records is refused,
/// since answering it either way would be wrong.
///
/// # Errors
/// `Conflict` for a request that mixes retries and new events; read errors.
pub(crate) fn dedupe(
    engine: &dyn Engine,
    window_us: u64,
    ids: &IdOverlay,
    records: &[Prepared],
    time_us: u64,
) -> Result<Dedupe> {
    let mut seen: Vec<(String, u64)> = Vec::new();
    for rec in records {
        let Body::Event(e) = &rec.body else { continue };
        if e.id.is_empty() {
            continue;
        }
        let found =
            match ids.get(&e.id) {
                Some(v) => Some(*v),
                None => match engine.get(CF_EVENT_IDS, e.id.as_bytes())? {
                    Some(v) => Some(keys::decode_event_id_value(&v).ok_or_else(|| {
                        Error::corruption(format!("event id {}", e.id), "index value is not 16 bytes")
                    })?),
                    None => None,
                },
            };
        if let Some((seq, at)) = found {
            if time_us.saturating_sub(at) <= window_us {
                seen.push((e.id.clone(), seq));
            }
        }
    }
    if seen.is_empty() {
        return Ok(Dedupe::New);
    }
    if seen.len() == records.len() {
        let first = seen.iter().map(|(_, s)| *s).min().unwrap_or_default();
        let last = seen.iter().map(|(_, s)| *s).max().unwrap_or_default();
        return Ok(Dedupe::Replay { first, last });
    }
    let list: Vec<String> = seen.iter().map(|(id, seq)| format!("{id} (seq {seq})")).collect();
    Err(Error::Conflict {
        what: "event id",
        detail: format!(
            "{} of {} events were already published: {}; retry the batch unchanged or without them",
            seen.len(),
            records.len(),
            list.join(", ")
        ),
    })
}

/// Checks that every state-dependent record of one request applies,
/// without changing anything: tuple ends, tuple imports (only into an
/// importing monitor), model puts and deletes, and lease mutations, each
/// against the records before it in the request and the group.
///
/// # Errors
/// `NotFound`, `Conflict`, `TooLarge` or `InvalidInput` naming the record
/// that does not apply; read errors.
pub(crate) fn preconditions(
    engine: &dyn Engine,
    anycast: &Anycast,
    recording: &Recording,
    ov: &Overlays,
    records: &[Prepared],
    time_us: u64,
) -> Result<()> {
    tuple_ends(engine, &ov.tuples, records, time_us)?;
    for rec in records {
        match &rec.body {
            Body::Monitor(m) => {
                return Err(Error::invalid(
                    "monitor",
                    format!("the monitor of {} changes state through the store's monitor calls", m.pattern),
                ))
            }
            Body::TupleImport(t) => match recording.covering(&t.channel) {
                Some((_, m)) if m.state == MonitorState::Importing => {}
                _ => {
                    return Err(Error::Conflict {
                        what: "tuple import",
                        detail: format!("no importing monitor here covers {}", t.channel),
                    })
                }
            },
            _ => {}
        }
    }
    let model_records: Vec<&Body> =
        records.iter().map(|r| &r.body).filter(|b| matches!(b, Body::ModelPut(_) | Body::ModelDelete(_))).collect();
    if !model_records.is_empty() {
        ov.models.clone().check(engine, &model_records)?;
    }
    // id -> its expiry while live after the records seen so far, None once ended.
    let mut local: HashMap<&str, Option<u64>> = HashMap::new();
    // Anycast groups granted into earlier in this request.
    let mut new_groups: BTreeSet<&str> = BTreeSet::new();
    let not_found = |id: &str| Error::NotFound { what: "lease", key: id.to_string() };
    for rec in records {
        let id = match &rec.body {
            Body::LeaseGrant(g) => g.id.as_str(),
            Body::LeaseRenew(r) => r.id.as_str(),
            Body::LeaseRelease(e) | Body::LeaseExpire(e) => e.id.as_str(),
            _ => continue,
        };
        let current = match local.get(id) {
            Some(state) => *state,
            None => lease(engine, &ov.leases, id)?.map(|l| l.expires_at_us),
        };
        let next = match &rec.body {
            Body::LeaseGrant(g) => match current {
                Some(_) => return Err(Error::Conflict { what: "lease", detail: format!("lease {id} already exists") }),
                None => {
                    if let Some(name) = g.group.as_deref() {
                        let groups = anycast.groups_after_join(&ov.leases, &new_groups, name);
                        if let Some(n) = groups.filter(|n| *n > ANYCAST_GROUPS_MAX) {
                            return Err(Error::TooLarge { what: "anycast groups", size: n, max: ANYCAST_GROUPS_MAX });
                        }
                        new_groups.insert(name);
                    }
                    Some(g.expires_at_us)
                }
            },
            Body::LeaseRenew(r) => match current {
                Some(expires) if expires > time_us => Some(r.expires_at_us),
                Some(_) => return Err(Error::NotFound { what: "lease", key: format!("{id} (it has lapsed)") }),
                None => return Err(not_found(id)),
            },
            Body::LeaseExpire(_) => match current {
                Some(expires) if expires <= time_us => None,
                Some(_) => {
                    return Err(Error::Conflict {
                        what: "lease",
                        detail: format!("lease {id} has not lapsed; it was renewed"),
                    })
                }
                None => return Err(not_found(id)),
            },
            _ => match current {
                Some(_) => None,
                None => return Err(not_found(id)),
            },
        };
        local.insert(id, next);
    }
    Ok(())
}

/// Tuples: an expire record applies only to a live tuple whose expiry has
/// passed (a refresh that won the race keeps it), and a delete only to a
/// live tuple.
fn tuple_ends(engine: &dyn Engine, tuples: &TupleOverlay, records: &[Prepared], time_us: u64) -> Result<()> {
    // tuple key -> its expiry (None: never) while live after the records
    // seen so far in this request; None once ended.
    let mut local: HashMap<Vec<u8>, Option<Option<u64>>> = HashMap::new();
    for rec in records {
        if let Some(w) = rec.body.tuple_write() {
            local.insert(keys::tuple_key(w.channel, w.field), Some(w.expires_at_us));
            continue;
        }
        let (Body::TupleExpire(t) | Body::TupleDelete(t)) = &rec.body else { continue };
        let key = keys::tuple_key(&t.channel, &t.field);
        let current = match local.get(&key) {
            Some(state) => *state,
            None => tuple(engine, tuples, &key)?.map(|row| row.expires_at_us),
        };
        let what = "tuple";
        let name = || format!("({}, {})", t.channel, t.field);
        let lapsed = current.flatten().is_some_and(|at| at <= time_us);
        match (&rec.body, current) {
            (_, None) => return Err(Error::NotFound { what, key: name() }),
            // Past its expiry the tuple is gone for everything but its
            // expire record.
            (Body::TupleDelete(_), Some(_)) if lapsed => {
                return Err(Error::NotFound { what, key: format!("{} (it expired)", name()) })
            }
            (Body::TupleExpire(_), Some(expires)) if expires.is_none_or(|e| e > time_us) => {
                return Err(Error::Conflict { what, detail: format!("tuple {} has not expired", name()) })
            }
            _ => {}
        }
        local.insert(key, None);
    }
    Ok(())
}
