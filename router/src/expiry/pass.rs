//! One expiry pass, as a state machine: ends what the index says is due,
//! in batches the writer group-commits together, and settles each race
//! with a renewal or a refresh.
//!
//! The store is the judge: an expire record applies only to a lease (or
//! tuple) whose expiry has passed, so an append is refused when one of its
//! keys was renewed, refreshed or ended since the index was read. A
//! refused batch is retried key by key, so one renewal spares only its own
//! lease. A key the store no longer has is forgotten by the index (at the
//! version the index read, so a newer entry survives); a key that was
//! renewed is read again and the index takes its stored expiry. A write
//! that fails for any other reason is left for the next pass.
//!
//! [`Pass::new`] returns the first appends, all to be sent at once;
//! [`Pass::step`] takes each append's [`Outcome`] and returns what to do
//! next. The pass is over when [`Pass::is_done`].

use std::collections::HashMap;

/// An append the driver sends: expire records for `keys`, in one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Append the expire records of `keys` (with the versions the index
    /// read) in one batch, and report its [`Outcome`] under `id`.
    Append {
        /// Names this append in its outcome.
        id: u64,
        /// The keys to expire, with the index's versions.
        keys: Vec<(String, u64)>,
    },
    /// The store has no such lease or tuple: drop the index's entry, unless
    /// a record newer than `version` set it.
    Forget {
        /// The key.
        key: String,
        /// The version the index read.
        version: u64,
    },
    /// It was renewed or refreshed meanwhile: read it from the store and
    /// set the index's entry to the stored expiry.
    Reread {
        /// The key.
        key: String,
    },
}

/// How the store answered an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: the index follows the commit by itself.
    Committed,
    /// A key names nothing live.
    NotFound,
    /// A key was renewed, refreshed or ended since the index was read.
    Conflict,
    /// The write failed for another reason; the keys wait for the next pass.
    Failed,
}

/// One pass of an expiry task.
#[derive(Debug)]
pub struct Pass {
    /// The appends sent and not answered, by id.
    in_flight: HashMap<u64, Vec<(String, u64)>>,
    next_id: u64,
}

impl Pass {
    /// A pass over `due` (key and index version), in appends of at most
    /// `batch` keys (at least one); returns the appends to send at once.
    pub fn new(due: Vec<(String, u64)>, batch: usize) -> (Pass, Vec<Action>) {
        let mut pass = Pass { in_flight: HashMap::new(), next_id: 1 };
        let mut actions = Vec::new();
        let mut due = due.into_iter().peekable();
        while due.peek().is_some() {
            let keys: Vec<(String, u64)> = due.by_ref().take(batch.max(1)).collect();
            actions.push(pass.append(keys));
        }
        (pass, actions)
    }

    fn append(&mut self, keys: Vec<(String, u64)>) -> Action {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(id, keys.clone());
        Action::Append { id, keys }
    }

    /// Whether every append has been answered and nothing is left to send.
    pub fn is_done(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Takes the outcome of append `id` and returns what to do next. An
    /// unknown or already answered id does nothing.
    pub fn step(&mut self, id: u64, outcome: Outcome) -> Vec<Action> {
        let Some(keys) = self.in_flight.remove(&id) else { return Vec::new() };
        match outcome {
            Outcome::Committed | Outcome::Failed => Vec::new(),
            // One of several refused the batch: try each on its own.
            Outcome::NotFound | Outcome::Conflict if keys.len() > 1 => {
                keys.into_iter().map(|key| self.append(vec![key])).collect()
            }
            Outcome::NotFound => keys.into_iter().map(|(key, version)| Action::Forget { key, version }).collect(),
            Outcome::Conflict => keys.into_iter().map(|(key, _)| Action::Reread { key }).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(n: usize) -> Vec<(String, u64)> {
        (0..n).map(|i| (format!("k{i}"), i as u64 + 1)).collect()
    }

    fn appends(actions: &[Action]) -> Vec<(u64, usize)> {
        actions
            .iter()
            .map(|a| match a {
                Action::Append { id, keys } => (*id, keys.len()),
                other => panic!("not an append: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn due_keys_go_out_in_batches_all_at_once() {
        let (mut pass, actions) = Pass::new(due(5), 2);
        assert_eq!(appends(&actions), [(1, 2), (2, 2), (3, 1)]);
        for id in 1..=3 {
            assert!(!pass.is_done());
            assert!(pass.step(id, Outcome::Committed).is_empty());
        }
        assert!(pass.is_done());
    }

    #[test]
    fn nothing_due_is_a_finished_pass() {
        let (pass, actions) = Pass::new(Vec::new(), 10);
        assert!(actions.is_empty() && pass.is_done());
    }

    #[test]
    fn a_refused_batch_is_retried_key_by_key_and_settles_each_race() {
        let (mut pass, actions) = Pass::new(due(3), 3);
        assert_eq!(appends(&actions), [(1, 3)]);
        let retries = pass.step(1, Outcome::Conflict);
        assert_eq!(appends(&retries), [(2, 1), (3, 1), (4, 1)]);
        assert!(pass.step(2, Outcome::Committed).is_empty());
        // k1 was renewed: the index takes the stored expiry.
        assert_eq!(pass.step(3, Outcome::Conflict), [Action::Reread { key: "k1".into() }]);
        // k2 is gone: the index forgets it at the version it read.
        assert_eq!(pass.step(4, Outcome::NotFound), [Action::Forget { key: "k2".into(), version: 3 }]);
        assert!(pass.is_done());
    }

    #[test]
    fn a_failed_write_leaves_its_keys_for_the_next_pass() {
        let (mut pass, _) = Pass::new(due(4), 2);
        assert!(pass.step(1, Outcome::Failed).is_empty());
        assert!(pass.step(2, Outcome::Failed).is_empty());
        assert!(pass.is_done());
    }

    #[test]
    fn an_answer_counts_once() {
        let (mut pass, _) = Pass::new(due(2), 2);
        assert_eq!(pass.step(1, Outcome::NotFound).len(), 2);
        assert!(pass.step(1, Outcome::NotFound).is_empty(), "already answered");
        assert!(pass.step(99, Outcome::Committed).is_empty(), "never sent");
    }
}
