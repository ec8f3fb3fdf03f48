//! Recording: which tuple updates this site materializes.
//!
//! Without a recording policy every site records the attribute events
//! published to it, and none of those it receives from peers (PLDB on one
//! site). A **recording policy** names channel subtrees (patterns such as
//! `/example.com/node/`) that only **monitors** record: a site materializes
//! a tuple update under such a pattern only while it runs a complete
//! monitor for it, whichever site the update was published on. The
//! supervisors (`pepper-adapters`, `supervisor`) decide where monitors run;
//! this module is the writer's side of it.
//!
//! A monitor lives through three states, each a `monitor` record in the log:
//! - **importing**: its start clears every tuple, history row and tombstone
//!   under the pattern, then backfill records (`tuple.import`, carrying the
//!   time each value was set) copy a live replica's rows in. Updates that
//!   arrive meanwhile, local or received, are logged but not recorded: the
//!   writer keeps them in memory ([`Monitor::pending`]), each with its
//!   origin site and origin sequence number.
//! - **complete**: written together with the pending updates the copy did
//!   not include, as `tuple.import` records, in one batch. The copy's
//!   per-origin marks say what it included: an update from origin `o` with
//!   origin seq `n` is in it exactly when `n <= marks[o]`, because each
//!   origin forwards to each replica in its own log order. From then on, a
//!   received update at or below its origin's mark is a repeat of a copied
//!   row and is not recorded; every other update is.
//! - **stopped**: clears the pattern's rows again.
//!
//! The writer writes each event's decision into the event itself
//! ([`crate::TupleUpdate::recorded`]), so the log alone says which rows
//! exist and `pepper check` needs no recording state to replay it. The
//! pending updates are the one thing kept only in memory: a restart while
//! importing marks the monitor broken, and its completion is refused (the
//! supervisor stops it and starts over).
//!
//! Rejected alternative: recording live updates at once and merging the
//! copy in afterwards. History rows are keyed by local sequence number, so
//! copied rows would sort after newer live ones, and nothing in a row says
//! which update made it, so overlaps could not be recognized.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::engine::{Direction, KeyRange, Reader};
use crate::error::{Error, Result};
use crate::keys::CF_MONITORS;
use crate::record::{MonitorState, Party};
use crate::rows::{decode_row, MonitorRow};

/// An update an importing monitor took in, waiting for its completion.
#[derive(Clone, Debug)]
pub(crate) struct PendingUpdate {
    pub origin: String,
    pub origin_seq: u64,
    pub time_us: u64,
    pub channel: String,
    pub field: String,
    pub value: String,
    pub expires_at_us: Option<u64>,
    pub source: Party,
}

impl PendingUpdate {
    /// About what it takes in memory and in the completion's batch.
    fn bytes(&self) -> usize {
        64 + self.origin.len()
            + self.channel.len()
            + self.field.len()
            + self.value.len()
            + self.source.service.len()
            + self.source.instance.len()
    }
}

/// A monitor that is running (importing or complete).
#[derive(Debug)]
pub(crate) struct Monitor {
    pub state: MonitorState,
    /// For a complete monitor: per origin, the highest origin seq its
    /// backfill copy included.
    pub marks: HashMap<String, u64>,
    /// For an importing monitor: what arrived since it started.
    pub pending: Vec<PendingUpdate>,
    /// About how many bytes `pending` holds.
    pub pending_bytes: usize,
    /// Why an importing monitor can no longer complete.
    pub broken: Option<String>,
}

/// What the writer does with one tuple update.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Materialize it.
    Record,
    /// Log it unrecorded.
    Skip,
    /// Log it unrecorded and hold it for the importing monitor of this pattern.
    Pend(String),
}

/// The monitors running on this site, as the writer sees them.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    pub monitors: BTreeMap<String, Monitor>,
}

impl Recording {
    /// The running monitors as their rows say. One that was importing
    /// lost its pending updates with the restart: it is broken.
    pub(crate) fn load(reader: &dyn Reader) -> Result<Recording> {
        let mut monitors = BTreeMap::new();
        reader.scan(CF_MONITORS, KeyRange::ALL, Direction::Forward, &mut |key, value| {
            let row: MonitorRow = decode_row("monitor", key, value)?;
            let broken = match row.state {
                MonitorState::Stopped => return Ok(true),
                MonitorState::Importing => Some("the site restarted while the monitor was importing".to_string()),
                MonitorState::Complete => None,
            };
            monitors.insert(
                row.pattern.clone(),
                Monitor {
                    state: row.state,
                    marks: row.marks.into_iter().collect(),
                    pending: Vec::new(),
                    pending_bytes: 0,
                    broken,
                },
            );
            Ok(true)
        })?;
        Ok(Recording { monitors })
    }

    /// Each running monitor's state, by pattern, as [`crate::Store`]
    /// publishes them.
    pub(crate) fn states(&self) -> BTreeMap<String, MonitorState> {
        self.monitors.iter().map(|(p, m)| (p.clone(), m.state)).collect()
    }

    /// The running monitor whose pattern covers `channel` (patterns do not
    /// nest: at most one). One map lookup per subtree of the channel, as
    /// every attribute event on the write path asks.
    pub(crate) fn covering(&self, channel: &str) -> Option<(&String, &Monitor)> {
        pepper_router::subtrees(channel).find_map(|p| self.monitors.get_key_value(p))
    }

    /// Whether an update on `channel` from `origin` (its seq there
    /// `origin_seq`; for a local update, this site and the local seq) is
    /// recorded. `local` says it was published here; `policy` is the
    /// recording policy's patterns.
    pub(crate) fn decide(
        &self,
        policy: &BTreeSet<String>,
        channel: &str,
        origin: &str,
        origin_seq: u64,
        local: bool,
    ) -> Decision {
        if let Some((pattern, m)) = self.covering(channel) {
            return match m.state {
                MonitorState::Importing => Decision::Pend(pattern.clone()),
                MonitorState::Complete if m.marks.get(origin).is_some_and(|&mark| origin_seq <= mark) => Decision::Skip,
                MonitorState::Complete => Decision::Record,
                MonitorState::Stopped => Decision::Skip,
            };
        }
        if !local || pepper_router::subtrees(channel).any(|p| policy.contains(p)) {
            return Decision::Skip;
        }
        Decision::Record
    }

    /// Checks that `pattern` may start a monitor.
    pub(crate) fn check_start(&self, pattern: &str) -> Result<()> {
        if self.monitors.contains_key(pattern) {
            return Err(Error::Conflict { what: "monitor", detail: format!("{pattern} already has a monitor here") });
        }
        if let Some(other) = self.monitors.keys().find(|p| pattern.starts_with(p.as_str()) || p.starts_with(pattern)) {
            return Err(Error::Conflict {
                what: "monitor",
                detail: format!("{pattern} overlaps the monitor of {other}; recording patterns may not nest"),
            });
        }
        if self.monitors.len() >= crate::limits::MONITORS_MAX {
            return Err(Error::TooLarge {
                what: "monitors",
                size: self.monitors.len() + 1,
                max: crate::limits::MONITORS_MAX,
            });
        }
        Ok(())
    }

    /// The importing monitor of `pattern`, if it can complete.
    pub(crate) fn completable(&self, pattern: &str) -> Result<&Monitor> {
        match self.monitors.get(pattern) {
            None => Err(Error::NotFound { what: "monitor", key: pattern.to_string() }),
            Some(m) if m.state != MonitorState::Importing => {
                Err(Error::Conflict { what: "monitor", detail: format!("{pattern} is not importing") })
            }
            Some(Monitor { broken: Some(why), .. }) => {
                Err(Error::Conflict { what: "monitor", detail: format!("{pattern} cannot complete: {why}") })
            }
            Some(m) => Ok(m),
        }
    }

    /// Takes in the updates a committed group held for importing monitors.
    pub(crate) fn add_pending(&mut self, pending: Vec<(String, PendingUpdate)>) {
        for (pattern, update) in pending {
            let Some(m) = self.monitors.get_mut(&pattern) else { continue };
            if m.broken.is_some() {
                continue;
            }
            let bytes = update.bytes();
            if m.pending.len() >= crate::limits::MONITOR_PENDING_MAX
                || m.pending_bytes + bytes > crate::limits::MONITOR_PENDING_BYTES_MAX
            {
                m.broken = Some(format!(
                    "more than {} updates or {} bytes arrived while it was importing",
                    crate::limits::MONITOR_PENDING_MAX,
                    crate::limits::MONITOR_PENDING_BYTES_MAX
                ));
                m.pending = Vec::new();
                m.pending_bytes = 0;
                continue;
            }
            m.pending_bytes += bytes;
            m.pending.push(update);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(state: MonitorState, marks: &[(&str, u64)]) -> Monitor {
        Monitor {
            state,
            marks: marks.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            pending: Vec::new(),
            pending_bytes: 0,
            broken: None,
        }
    }

    #[test]
    fn decisions_follow_policy_monitors_and_marks() {
        let policy = BTreeSet::from(["/n/".to_string()]);
        let mut r = Recording::default();
        // No monitor: local updates outside the policy are recorded, received
        // ones and those under the policy are not.
        assert_eq!(r.decide(&policy, "/other/x/", "me", 5, true), Decision::Record);
        assert_eq!(r.decide(&policy, "/other/x/", "a", 5, false), Decision::Skip);
        assert_eq!(r.decide(&policy, "/n/h1/", "me", 5, true), Decision::Skip);
        r.monitors.insert("/n/".into(), monitor(MonitorState::Importing, &[]));
        assert_eq!(r.decide(&policy, "/n/h1/", "a", 5, false), Decision::Pend("/n/".into()));
        r.monitors.insert("/n/".into(), monitor(MonitorState::Complete, &[("a", 10)]));
        assert_eq!(r.decide(&policy, "/n/h1/", "a", 10, false), Decision::Skip);
        assert_eq!(r.decide(&policy, "/n/h1/", "a", 11, false), Decision::Record);
        assert_eq!(r.decide(&policy, "/n/h1/", "b", 1, false), Decision::Record);
        assert_eq!(r.decide(&policy, "/n/h1/", "me", 3, true), Decision::Record);
    }

    #[test]
    fn nesting_patterns_and_pending_overflow_are_refused() {
        let mut r = Recording::default();
        r.monitors.insert("/n/".into(), monitor(MonitorState::Importing, &[]));
        assert!(r.check_start("/n/").is_err());
        assert!(r.check_start("/n/a/").is_err());
        assert!(r.check_start("/").is_err());
        assert!(r.check_start("/m/").is_ok());
        let update = PendingUpdate {
            origin: "a".into(),
            origin_seq: 1,
            time_us: 1,
            channel: "/n/h/".into(),
            field: "f".into(),
            value: "v".into(),
            expires_at_us: None,
            source: Party::default(),
        };
        let many = vec![("/n/".to_string(), update.clone()); crate::limits::MONITOR_PENDING_MAX + 1];
        r.add_pending(many);
        let err = r.completable("/n/").expect_err("overflowed");
        assert!(err.to_string().contains("importing"), "{err}");
        // Few but large updates overflow the byte bound.
        r.monitors.insert("/m/".into(), monitor(MonitorState::Importing, &[]));
        let big = PendingUpdate { channel: "/m/h/".into(), value: "x".repeat(1024 * 1024), ..update };
        r.add_pending(vec![("/m/".to_string(), big); 63]);
        assert!(r.completable("/m/").is_ok(), "63 MiB is within the bound");
        let big = r.monitors["/m/"].pending[0].clone();
        r.add_pending(vec![("/m/".to_string(), big)]);
        assert!(r.completable("/m/").is_err(), "past 64 MiB the import cannot complete");
    }

    #[test]
    fn the_covering_monitor_is_found_by_subtree() {
        let mut r = Recording::default();
        r.monitors.insert("/a/b/".into(), monitor(MonitorState::Complete, &[]));
        r.monitors.insert("/c/".into(), monitor(MonitorState::Complete, &[]));
        assert_eq!(r.covering("/a/b/h/x/").map(|(p, _)| p.as_str()), Some("/a/b/"));
        assert_eq!(r.covering("/a/b/").map(|(p, _)| p.as_str()), Some("/a/b/"));
        assert!(r.covering("/a/").is_none());
        assert!(r.covering("/a/bb/").is_none(), "a pattern covers whole elements only");
    }
}
