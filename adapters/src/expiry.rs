//! The site's expiry indexes, for the tasks that enforce them
//! (`loops::expiry`): live leases and tuples with an expiry. The index and
//! its decision (what is due at `now`) are the router's pure
//! [`ExpiryIndex`]; this module holds the tuple key format, the load from
//! the store at start, and how the indexes follow the log. They are
//! loaded from the store once, and then follow the log in one place:
//! [`ExpiryFold`], which the store's writer tells what each durable group
//! changed, before any of the group's callers hears back. No handler
//! updates them by hand.

pub use pepper_router::ExpiryIndex;
use pepper_storage::{Error as StoreError, Tuple, TupleCursor};

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
