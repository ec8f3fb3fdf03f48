//! The expiry tasks: every [`LEASE_EXPIRY_TICK`] (or
//! [`TUPLE_EXPIRY_TICK`]) they take what the expiry index says is due and
//! append the expire records in batches that the writer group-commits
//! together. The store decides each race with a renewal or a refresh: an
//! expire record applies only to a lease or tuple whose expiry has passed.

use std::future::Future;
use std::time::Duration;

use pepper_storage::{now_us, Body, Distribution, Error as StoreError, Event, LeaseEnd, Party, Target, TupleEnd};
use serde_json::json;

use crate::expiry::split_index_key;
use crate::limits::LEASES_MAX;
use crate::state::AppState;
use crate::wire::envelope::new_event_id;

/// How often the tuple expiry task looks for expired tuples.
pub const TUPLE_EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Most tuples one expiry pass ends; the rest wait a tick.
pub const TUPLE_EXPIRIES_PER_TICK_MAX: usize = 100_000;

/// Tuples ended by one append of an expiry pass.
pub const TUPLE_EXPIRE_BATCH: usize = 512;

const _: () = assert!(TUPLE_EXPIRE_BATCH <= pepper_storage::limits::BATCH_RECORDS_MAX);

/// Expires every tuple that is due, once, in appends of
/// [`TUPLE_EXPIRE_BATCH`].
pub async fn expire_due_tuples(state: &AppState) {
    let due = state.tuples.due(now_us(), TUPLE_EXPIRIES_PER_TICK_MAX);
    let tasks: Vec<_> = due
        .chunks(TUPLE_EXPIRE_BATCH)
        .map(|batch| tokio::spawn(expire_tuple_batch(state.clone(), batch.to_vec())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn expire_record(key: &str) -> Option<Body> {
    let (channel, field) = split_index_key(key)?;
    Some(Body::TupleExpire(TupleEnd { channel: channel.to_string(), field: field.to_string() }))
}

/// One append for the batch; if the store refuses it (a tuple was
/// refreshed or ended meanwhile), one append per tuple.
async fn expire_tuple_batch(state: AppState, batch: Vec<(String, u64)>) {
    // A key that names no tuple cannot expire one: drop it first, so that
    // the i-th record of the batch is the i-th key's.
    let (batch, bad): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(key, _)| expire_record(key).is_some());
    for (key, _) in bad {
        state.tuples.remove(&key, u64::MAX);
    }
    if batch.len() > 1 {
        let bodies: Vec<Body> = batch.iter().filter_map(|(key, _)| expire_record(key)).collect();
        match state.store.append(bodies).await {
            // The index follows the commit by itself (`expiry::ExpiryFold`).
            Ok(_) => return,
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => {
                tracing::warn!(tuples = batch.len(), error = %e, "tuple expiry failed; retrying next tick");
                return;
            }
        }
    }
    for (key, version) in batch {
        let Some(record) = expire_record(&key) else { continue };
        match state.store.append(vec![record]).await {
            Ok(_) => {}
            // No live tuple: the entry was stale (the store is the truth).
            Err(StoreError::NotFound { .. }) => state.tuples.remove(&key, version),
            // Refreshed meanwhile: take the stored expiry.
            Err(StoreError::Conflict { .. }) => {
                let Some((channel, field)) = split_index_key(&key).map(|(c, f)| (c.to_string(), f.to_string())) else {
                    continue;
                };
                if let Ok(Some(t)) = state.store.read(move |v| v.tuple(&channel, &field)).await {
                    match t.expires_at_us {
                        Some(at) => state.tuples.set(&key, at, t.seq),
                        None => state.tuples.remove(&key, t.seq),
                    }
                }
            }
            Err(e) => tracing::warn!(tuple = %key.replace('\0', " "), error = %e, "tuple expiry failed"),
        }
    }
}

/// Runs [`expire_due_tuples`] every [`TUPLE_EXPIRY_TICK`] until the runtime
/// stops.
pub async fn run_tuple_expiry(state: AppState) {
    every(TUPLE_EXPIRY_TICK, || expire_due_tuples(&state)).await;
}

/// Runs `pass` every `period` until the runtime stops: the loop of the lease
/// and tuple expiry tasks. A pass that overruns delays the next tick rather
/// than bunching the missed ones.
pub async fn every<F, Fut>(period: Duration, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pass().await;
    }
}

/// How often the expiry task looks for lapsed leases.
pub const LEASE_EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Most leases one expiry pass ends; the rest wait a tick. Every live
/// lease, so that leases lapsing together all end in the same pass.
pub const LEASE_EXPIRIES_PER_TICK_MAX: usize = LEASES_MAX;

/// Leases ended by one append of an expiry pass (two records each).
pub const LEASE_EXPIRE_BATCH: usize = 256;

const _: () = assert!(2 * LEASE_EXPIRE_BATCH <= pepper_storage::limits::BATCH_RECORDS_MAX);

/// The channel expiry events are published on.
pub const LEASE_EVENTS_CHANNEL: &str = "/pepper/leases/";

/// Expires every lease that is due, once: in appends of
/// [`LEASE_EXPIRE_BATCH`] leases, all in flight together so the writer packs
/// them into few group commits.
pub async fn expire_due(state: &AppState) {
    let due = state.leases.due(now_us(), LEASE_EXPIRIES_PER_TICK_MAX);
    let tasks: Vec<_> = due
        .chunks(LEASE_EXPIRE_BATCH)
        .map(|batch| tokio::spawn(expire_lease_batch(state.clone(), batch.to_vec())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// The two records that end lease `id`: its expire record, and the
/// `lease.expired` event on [`LEASE_EVENTS_CHANNEL`].
fn expire_records(state: &AppState, id: &str) -> [Body; 2] {
    let expired = Body::Event(Event {
        id: new_event_id(),
        channel: LEASE_EVENTS_CHANNEL.to_string(),
        event_type: "lease.expired".to_string(),
        from: Party { service: "pepper".into(), instance: state.store.site().to_string() },
        to: Target::default(),
        distribution: Distribution::All,
        payload: json!({ "id": id }).to_string().into_bytes(),
        assigned: Vec::new(),
        tuple: None,
    });
    [Body::LeaseExpire(LeaseEnd { id: id.to_string() }), expired]
}

/// Expires a batch of due leases in one append. The writer checks each
/// lease again; if any was renewed or ended meanwhile it refuses the whole
/// append, and the batch is expired lease by lease instead.
async fn expire_lease_batch(state: AppState, batch: Vec<(String, u64)>) {
    if batch.len() > 1 {
        let bodies: Vec<Body> = batch.iter().flat_map(|(id, _)| expire_records(&state, id)).collect();
        match state.store.append(bodies).await {
            // The index follows the commit by itself (`expiry::ExpiryFold`).
            Ok(_) => return,
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => {
                tracing::warn!(leases = batch.len(), error = %e, "lease expiry failed; retrying next tick");
                return;
            }
        }
    }
    for (id, version) in batch {
        match state.store.append(expire_records(&state, &id).into()).await {
            Ok(_) => {}
            // No live lease: the entry was stale (the store is the truth).
            Err(StoreError::NotFound { .. }) => state.leases.remove(&id, version),
            // Renewed meanwhile: take the stored expiry, whatever the
            // renewal's own index update does.
            Err(StoreError::Conflict { .. }) => {
                let id2 = id.clone();
                if let Ok(Some(lease)) = state.store.read(move |v| v.lease(&id2)).await {
                    state.leases.set(&id, lease.expires_at_us, lease.renewed_seq);
                }
            }
            Err(e) => tracing::warn!(lease = %id, error = %e, "lease expiry failed; retrying next tick"),
        }
    }
}

/// Runs [`expire_due`] every [`LEASE_EXPIRY_TICK`] until the runtime stops.
pub async fn run_expiry(state: AppState) {
    every(LEASE_EXPIRY_TICK, || expire_due(&state)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use pepper_storage::{LeaseGrant, LeaseRenew};

    /// A batch whose append is refused because one of its leases was
    /// renewed meanwhile falls back to one append per lease: the others
    /// expire, the renewed one lives on with its new expiry in the index.
    #[tokio::test]
    async fn a_renewal_inside_an_expiry_batch_spares_only_that_lease() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = pepper_storage::Store::open(dir.path(), pepper_storage::Options::new("t")).expect("open");
        let soon = now_us() + 100_000;
        let grant = |id: &str| {
            Body::LeaseGrant(LeaseGrant {
                id: id.into(),
                pattern: "/a.org/".into(),
                types: Vec::new(),
                ttl_ms: 100,
                expires_at_us: soon,
                group: None,
                from_seq: None,
                holder: Party::default(),
            })
        };
        store.append(vec![grant("a"), grant("b"), grant("c")]).await.expect("grant");
        let state = AppState::load(store.clone(), crate::ApiConfig::default()).await.expect("state");
        // b is renewed in the store, but the index still has its old expiry.
        let later = now_us() + 3_600_000_000;
        store
            .append(vec![Body::LeaseRenew(LeaseRenew { id: "b".into(), ttl_ms: 3_600_000, expires_at_us: later })])
            .await
            .expect("renew");
        tokio::time::sleep(Duration::from_millis(150)).await;
        expire_due(&state).await;
        let live: Vec<String> = store.read(|v| v.leases()).await.expect("leases").into_iter().map(|l| l.id).collect();
        assert_eq!(live, ["b"]);
        assert_eq!(state.leases.len(), 1);
        assert!(state.leases.due(later - 1, 10).is_empty(), "b's index entry has its renewed expiry");
    }
}
