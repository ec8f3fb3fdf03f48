//! The expiry tasks: every [`LEASE_EXPIRY_TICK`] (or
//! [`TUPLE_EXPIRY_TICK`]) each takes what its index says is due and carries
//! out one [`ExpiryPass`]: the appends of expire records, all in flight
//! together so the writer group-commits them, and what the pass decides
//! when the store refuses one (a lease renewed or a tuple refreshed
//! meanwhile). The store decides each race: an expire record applies only
//! to a lease or tuple whose expiry has passed.

use std::future::Future;
use std::time::Duration;

use pepper_router::{ExpiryAction, ExpiryIndex, ExpiryOutcome, ExpiryPass};
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

/// What an expiry task ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Leases,
    Tuples,
}

impl Ending {
    fn index(self, state: &AppState) -> &ExpiryIndex {
        match self {
            Ending::Leases => &state.leases,
            Ending::Tuples => &state.tuples,
        }
    }

    /// Whether `key` can name what this task ends: a tuple's index key
    /// must split into channel and field.
    fn valid(self, key: &str) -> bool {
        match self {
            Ending::Tuples => split_index_key(key).is_some(),
            Ending::Leases => true,
        }
    }

    /// The records that end `key`: a tuple's expire record; a lease's
    /// expire record and the `lease.expired` event on
    /// [`LEASE_EVENTS_CHANNEL`]. `None` for a key that names no tuple.
    fn records(self, state: &AppState, key: &str) -> Option<Vec<Body>> {
        match self {
            Ending::Tuples => {
                let (channel, field) = split_index_key(key)?;
                Some(vec![Body::TupleExpire(TupleEnd { channel: channel.to_string(), field: field.to_string() })])
            }
            Ending::Leases => {
                let expired = Body::Event(Event {
                    id: new_event_id(),
                    channel: LEASE_EVENTS_CHANNEL.to_string(),
                    event_type: "lease.expired".to_string(),
                    from: Party { service: "pepper".into(), instance: state.store.site().to_string() },
                    to: Target::default(),
                    distribution: Distribution::All,
                    payload: json!({ "id": key }).to_string().into_bytes(),
                    assigned: Vec::new(),
                    principal: None,
                    tuple: None,
                });
                Some(vec![Body::LeaseExpire(LeaseEnd { id: key.to_string() }), expired])
            }
        }
    }

    /// Sets `key`'s index entry from the store, after a renewal or refresh
    /// refused its expiry.
    async fn reread(self, state: &AppState, key: String) {
        match self {
            Ending::Leases => {
                let id = key.clone();
                if let Ok(Some(lease)) = state.store.read(move |v| v.lease(&id)).await {
                    state.leases.set(&key, lease.expires_at_us, lease.renewed_seq);
                }
            }
            Ending::Tuples => {
                let Some((channel, field)) = split_index_key(&key).map(|(c, f)| (c.to_string(), f.to_string())) else {
                    return;
                };
                if let Ok(Some(t)) = state.store.read(move |v| v.tuple(&channel, &field)).await {
                    match t.expires_at_us {
                        Some(at) => state.tuples.set(&key, at, t.seq),
                        None => state.tuples.remove(&key, t.seq),
                    }
                }
            }
        }
    }
}

/// Carries out one [`ExpiryPass`] over what `ending`'s index says is due
/// at `now`: its appends all in flight together, their outcomes fed back,
/// until the pass is done.
async fn pass(state: &AppState, ending: Ending, now: u64) {
    let (max, batch) = match ending {
        Ending::Leases => (LEASE_EXPIRIES_PER_TICK_MAX, LEASE_EXPIRE_BATCH),
        Ending::Tuples => (TUPLE_EXPIRIES_PER_TICK_MAX, TUPLE_EXPIRE_BATCH),
    };
    let index = ending.index(state);
    // A key that names no tuple cannot expire one: drop it first.
    let (due, bad): (Vec<_>, Vec<_>) = index.due(now, max).into_iter().partition(|(key, _)| ending.valid(key));
    for (key, _) in bad {
        index.remove(&key, u64::MAX);
    }
    let (mut pass, mut actions) = ExpiryPass::new(due, batch);
    let mut appends = tokio::task::JoinSet::new();
    loop {
        for action in actions.drain(..) {
            match action {
                ExpiryAction::Append { id, keys } => {
                    let bodies: Vec<Body> =
                        keys.iter().filter_map(|(k, _)| ending.records(state, k)).flatten().collect();
                    let store = state.store.clone();
                    appends.spawn(async move {
                        let outcome = match store.append(bodies).await {
                            // The index follows the commit by itself (`expiry::ExpiryFold`).
                            Ok(_) => ExpiryOutcome::Committed,
                            Err(StoreError::NotFound { .. }) => ExpiryOutcome::NotFound,
                            Err(StoreError::Conflict { .. }) => ExpiryOutcome::Conflict,
                            Err(e) => {
                                tracing::warn!(?ending, keys = keys.len(), error = %e, "expiry failed; retrying next tick");
                                ExpiryOutcome::Failed
                            }
                        };
                        (id, outcome)
                    });
                }
                ExpiryAction::Forget { key, version } => index.remove(&key, version),
                ExpiryAction::Reread { key } => ending.reread(state, key).await,
            }
        }
        match appends.join_next().await {
            Some(Ok((id, outcome))) => actions = pass.step(id, outcome),
            // Its keys are left for the next pass, like a failed write.
            Some(Err(e)) => tracing::error!(?ending, error = %e, "an expiry append panicked"),
            None => break,
        }
    }
}

/// Expires every tuple that is due at `now`, once.
pub async fn expire_due_tuples(state: &AppState, now: u64) {
    pass(state, Ending::Tuples, now).await;
}

/// Expires every lease that is due at `now`, once.
pub async fn expire_due(state: &AppState, now: u64) {
    pass(state, Ending::Leases, now).await;
}

/// Runs [`expire_due_tuples`] every [`TUPLE_EXPIRY_TICK`] until the runtime
/// stops.
pub async fn run_tuple_expiry(state: AppState) {
    every(TUPLE_EXPIRY_TICK, || expire_due_tuples(&state, now_us())).await;
}

/// Runs [`expire_due`] every [`LEASE_EXPIRY_TICK`] until the runtime stops.
pub async fn run_expiry(state: AppState) {
    every(LEASE_EXPIRY_TICK, || expire_due(&state, now_us())).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use pepper_storage::{LeaseGrant, LeaseRenew, ManualClock, MemoryEngine, Options, Store};
    use std::sync::Arc;

    /// A batch whose append is refused because one of its leases was
    /// renewed meanwhile falls back to one append per lease: the others
    /// expire, the renewed one lives on with its new expiry in the index.
    #[tokio::test]
    async fn a_renewal_inside_an_expiry_batch_spares_only_that_lease() {
        const T: u64 = 1_800_000_000_000_000;
        let clock = ManualClock::new(T);
        let store =
            Store::open_with(Arc::new(MemoryEngine::new()), Arc::new(clock.clone()), Options::new("t")).expect("open");
        let soon = T + 100_000;
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
                owner: None,
            })
        };
        store.append(vec![grant("a"), grant("b"), grant("c")]).await.expect("grant");
        let state = AppState::load(store.clone(), crate::ApiConfig::default()).await.expect("state");
        // b is renewed in the store, but the index is made to keep its old
        // expiry, as if the pass had read it just before the renewal.
        let later = T + 3_600_000_000;
        store
            .append(vec![Body::LeaseRenew(LeaseRenew { id: "b".into(), ttl_ms: 3_600_000, expires_at_us: later })])
            .await
            .expect("renew");
        let renewed_seq = store.last_seq();
        state.leases.remove("b", u64::MAX);
        state.leases.set("b", soon, renewed_seq - 1);
        clock.set(soon + 50_000);
        expire_due(&state, soon + 50_000).await;
        let live: Vec<String> = store.read(|v| v.leases()).await.expect("leases").into_iter().map(|l| l.id).collect();
        assert_eq!(live, ["b"]);
        assert_eq!(state.leases.len(), 1);
        assert!(state.leases.due(later - 1, 10).is_empty(), "b's index entry has its renewed expiry");
        assert_eq!(state.leases.due(later, 10).len(), 1);
    }
}
