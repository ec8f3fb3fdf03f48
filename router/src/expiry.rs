//! The expiry decision: which leases and tuples are due at a given `now`.
//!
//! An [`ExpiryIndex`] keeps entries keyed by a string (a lease id, or a
//! tuple's key) ordered by expiry time, so finding what is due is
//! O(log n + due). Each entry is versioned by the sequence number of the
//! record that set it, so updates may arrive in any order: one older than
//! the entry it would change is ignored. The index reads no clock: the
//! caller passes `now` to [`ExpiryIndex::due`] and carries out the expiry
//! (the adapters append expire records and the store decides each race
//! with a renewal, settled by an [`ExpiryPass`]). The rejected alternative, a timer per lease, costs a
//! task per lease and cannot batch what lapses together.

mod pass;

pub use pass::{Action as ExpiryAction, Outcome as ExpiryOutcome, Pass as ExpiryPass};

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Expiries by key, ordered by time: live leases by id, tuples by their
/// tuple key.
#[derive(Debug, Default)]
pub struct ExpiryIndex {
    inner: Mutex<Expiries>,
}

/// The index is versioned by the sequence number of the record that set
/// each entry (grant, renew, release or expire), so the load at start and
/// the fold may meet in any order: an update older than the entry it would
/// change is ignored. An entry left for a lease that
/// has ended heals itself: expiring it finds no lease and removes it.
#[derive(Debug, Default)]
struct Expiries {
    by_time: BTreeSet<(u64, String)>,
    /// id -> (expiry, version).
    by_id: HashMap<String, (u64, u64)>,
}

impl ExpiryIndex {
    fn with<T>(&self, f: impl FnOnce(&mut Expiries) -> T) -> T {
        // A panic while holding the lock cannot leave the two maps out of
        // step in a way that matters more than losing the index, so a
        // poisoned lock is used as is.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Records that lease `id` expires at `expires_at_us`, as of the record
    /// at `version`.
    pub fn set(&self, id: &str, expires_at_us: u64, version: u64) {
        self.with(|e| {
            match e.by_id.get(id) {
                Some((_, v)) if *v >= version => return,
                Some((old, _)) => {
                    let old = *old;
                    e.by_time.remove(&(old, id.to_string()));
                }
                None => {}
            }
            e.by_id.insert(id.to_string(), (expires_at_us, version));
            e.by_time.insert((expires_at_us, id.to_string()));
        });
    }

    /// Forgets lease `id`, ended by the record at `version`, unless a newer
    /// record set its entry.
    pub fn remove(&self, id: &str, version: u64) {
        self.with(|e| {
            if let Some((old, v)) = e.by_id.get(id).copied() {
                if v <= version {
                    e.by_id.remove(id);
                    e.by_time.remove(&(old, id.to_string()));
                }
            }
        });
    }

    /// How many leases are live.
    pub fn len(&self) -> usize {
        self.with(|e| e.by_id.len())
    }

    /// Whether no lease is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Leases whose expiry is at or before `now_us`, at most `max`, with
    /// their versions.
    pub fn due(&self, now_us: u64, max: usize) -> Vec<(String, u64)> {
        self.with(|e| {
            e.by_time
                .iter()
                .take_while(|(t, _)| *t <= now_us)
                .take(max)
                .map(|(_, id)| (id.clone(), e.by_id.get(id).map_or(0, |(_, v)| *v)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_orders_by_expiry_and_forgets() {
        let index = ExpiryIndex::default();
        let ids = |v: Vec<(String, u64)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        index.set("a", 30, 1);
        index.set("b", 10, 2);
        index.set("c", 20, 3);
        assert_eq!(ids(index.due(20, 10)), ["b", "c"]);
        index.set("b", 40, 4); // renewed
        assert_eq!(ids(index.due(20, 10)), ["c"]);
        assert_eq!(ids(index.due(100, 2)), ["c", "a"]);
        index.remove("c", 5);
        assert_eq!(ids(index.due(100, 10)), ["a", "b"]);
        assert_eq!(index.len(), 2);
        // Updates older than the entry are ignored, in either order.
        index.set("b", 5, 3);
        assert_eq!(index.due(10, 10), []);
        index.remove("a", 7);
        index.set("a", 50, 8); // re-granted after the release
        index.remove("a", 6); // a late, older removal must not erase it
        assert_eq!(ids(index.due(100, 10)), ["b", "a"]);
    }
}
