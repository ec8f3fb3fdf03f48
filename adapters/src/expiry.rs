//! An in-memory index of expiries, for the tasks that enforce them
//! (`loops::expiry`): live leases and tuples with an expiry.
//!
//! Entries are keyed by a string (a lease id, or a tuple's key) and ordered
//! by expiry time, so finding what is due is O(log n + due). Each entry is
//! versioned by the sequence number of the record that set it, and an
//! update older than the entry it would change is ignored. The indexes are
//! loaded from the store once, and then follow the log in one place:
//! [`ExpiryFold`], which the store's writer tells what each durable group
//! changed, before any of the group's callers hears back. No handler
//! updates them by hand.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use pepper_storage::{Error as StoreError, Lease, Tuple, TupleCursor};

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
    /// An index of `leases`.
    pub fn of_leases(leases: &[Lease]) -> ExpiryIndex {
        let index = ExpiryIndex::default();
        for l in leases {
            index.set(&l.id, l.expires_at_us, l.renewed_seq);
        }
        index
    }

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

/// Keeps the lease and tuple expiry indexes in step with the log: the
/// store tells it, on its writer thread, the end state of every lease and
/// latest tuple each durable group touched, before the group's callers
/// hear back (`pepper_storage::Fold`). This is the one place the indexes
/// follow commits; the expiry tasks only correct an entry the store says is
/// stale (nothing live to expire).
pub(crate) struct ExpiryFold {
    pub(crate) leases: std::sync::Arc<ExpiryIndex>,
    pub(crate) tuples: std::sync::Arc<ExpiryIndex>,
}

impl pepper_storage::Fold for ExpiryFold {
    fn committed(&self, group: &pepper_storage::Committed<'_>) {
        for (id, lease) in group.leases() {
            match lease {
                Some(l) => self.leases.set(id, l.expires_at_us, l.renewed_seq),
                None => self.leases.remove(id, group.last_seq()),
            }
        }
        for (channel, field, tuple) in group.tuples() {
            let key = index_key(channel, field);
            match tuple {
                Some(t) => match t.expires_at_us {
                    Some(at) => self.tuples.set(&key, at, t.seq),
                    None => self.tuples.remove(&key, t.seq),
                },
                None => self.tuples.remove(&key, group.last_seq()),
            }
        }
    }
}

/// The key of a tuple in the expiry index.
pub(crate) fn index_key(channel: &str, field: &str) -> String {
    format!("{channel}\0{field}")
}

pub(crate) fn split_index_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('\0')
}

/// The expiry index of every live tuple that has an expiry, read from the
/// store.
///
/// # Errors
/// Store read errors.
pub async fn load_tuple_index(store: &pepper_storage::Store, index: &ExpiryIndex) -> Result<(), StoreError> {
    let mut after: Option<TupleCursor> = None;
    loop {
        let cursor = after.take();
        let page = store.read(move |v| v.latest("/", cursor.as_ref(), pepper_storage::limits::READ_ROWS_MAX)).await?;
        for t in &page.items {
            if let Some(at) = t.expires_at_us {
                index.set(&index_key(&t.channel, &t.field), at, t.seq);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}

/// Whether a tuple's expiry has passed at `now_us` (its expire record may
/// not be written yet).
pub(crate) fn is_expired(t: &Tuple, now_us: u64) -> bool {
    t.expires_at_us.is_some_and(|at| at <= now_us)
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
