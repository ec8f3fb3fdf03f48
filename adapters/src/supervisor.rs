//! Supervisors: keep R recording replicas of each channel subtree in the
//! recording policy, across sites, history included (the paper's PLDB
//! supervisors and its Figure 11).
//!
//! **Policy.** A recording policy is a set of subtree patterns, each with a
//! replication factor R (`--record /example.com/node/=2`, the config file,
//! or `PUT /v1/recording/policies`; kept in the store's documents under
//! [`POLICY_DOC_PREFIX`]). Under a policy pattern a site materializes tuples
//! only while it runs a **monitor** of the pattern (`pepper_storage`'s
//! `recording` module says how the writer decides). Every site should be
//! given the same policy: each supervisor acts on its own.
//!
//! **Announcements.** Every [`SupervisorConfig::interval`] each site
//! publishes a `pepper.monitor` event for every monitor it runs, on
//! `/pepper/monitors/<pattern>`; state changes are events too
//! (`pepper.monitor.start`, `.backfill`, `.complete`, `.stop`, `.failed`),
//! so the handoff can be watched like any channel. Every supervisor holds a
//! standing federation interest in `/pepper/monitors/`, so each site's
//! announcements reach every other site's log, and reads them from its own
//! change feed. A monitor not heard from for [`DEAD_AFTER_INTERVALS`]
//! intervals no longer counts.
//!
//! **Too few** (fewer than R live monitors, counting importing ones): a
//! site without a monitor of the pattern waits a randomized delay, then
//! counts again and starts one if still short. The delay is `interval x
//! (tier + draw)`, tier being 2 if its region already has a monitor of the
//! pattern plus the number of monitors it runs, draw uniform in [0, 1):
//! sites in other regions and sites with fewer monitors fire first, and the
//! others then see the count restored and stand down. That is the
//! placement rule. A site plans no start in its first few intervals, before
//! the others' announcements can have reached it.
//!
//! **Too many** (more than R complete monitors, seen on two evaluations in
//! a row): exactly one stops, the first in this order, which every site
//! computes alike from the same announcements: its region has the most
//! monitors of the pattern; then its site runs the most monitors; then it
//! completed last; then the greatest site name. Only that site acts, and
//! only once it has heard, after deciding, enough other complete monitors
//! to leave R (a replica that has just died is never heard again).
//!
//! **Backfill.** A starting monitor (1) writes its start (clearing any old
//! rows) and holds an interest in the subtree, pushed to the peers that are
//! up; (2) picks a live complete replica Y (up, lowest heartbeat latency);
//! (3) waits for the **cut**: its own forwarder and every other peer's
//! forwarder toward Y have passed the log position they had when they took
//! the new interest (`GET /v1/peer/cut`), so every update Y will not have
//! reaches the new monitor directly; (4) streams Y's rows of the subtree
//! from one snapshot, taken once Y holds the new interest too (`GET
//! /v1/peer/replica`, history then latest values, with Y's per-origin
//! marks) into `tuple.import` records; (5) completes:
//! the updates that arrived meanwhile and are above Y's marks are recorded
//! after the copy, in one batch. Any failure stops the monitor, which the
//! next evaluation may start again. `docs/supervisors.md` has the argument
//! that nothing is lost or recorded twice, and the limits.
//!
//! **Design.** Every decision above is made by `pepper_router::Placement`,
//! a state machine without I/O driven by what this site hears, the rows of
//! its monitors and the results of what it asked for. This module keeps
//! the policy documents and the machine; `loops::supervise` carries out
//! the actions the machine returns (announcements, store writes,
//! interests, the cut's requests, the copy). Deciding inside those tasks
//! was rejected: the rules could then only be tested with running sites.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pepper_router::{Placement, PlacementConfig, PlacementInput};
pub use pepper_router::{
    CUT_WAIT_MAX, DEAD_AFTER_INTERVALS, INTERVAL_DEFAULT, LOST_AFTER_INTERVALS, POLICIES_MAX, REPLICAS_MAX, SEEN_MAX,
    SURPLUS_EVALUATIONS,
};
use pepper_storage::{Body, DocPut};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::federation::Interest;

/// Announcements and handoff events are published under this prefix,
/// followed by the pattern without its leading `/`.
pub const ANNOUNCE_PREFIX: &str = "/pepper/monitors/";
/// Policies are kept in documents under this key prefix, then the pattern.
pub const POLICY_DOC_PREFIX: &str = "pepper/recording/";
/// The longest a replica stream may stay silent.
pub const REPLICA_IDLE_MAX: Duration = Duration::from_secs(10);
/// The longest line of a replica stream: a row with a value at the
/// record limit, escaped.
pub const REPLICA_LINE_BYTES_MAX: usize = 4 * pepper_storage::limits::RECORD_BYTES_MAX;
/// Copied rows per `tuple.import` append.
pub const IMPORT_BATCH_RECORDS: usize = 1000;
/// Bytes of replica stream a serving site buffers before sending.
pub(crate) const REPLICA_CHUNK_BYTES: usize = 64 * 1024;

/// Supervisor settings of a site.
#[derive(Clone, Debug, Default)]
pub struct SupervisorConfig {
    /// Patterns and replication factors from configuration; they replace
    /// stored ones of the same pattern at startup.
    pub policies: Vec<(String, usize)>,
    /// Time between evaluations and announcements ([`INTERVAL_DEFAULT`]
    /// when zero).
    pub interval: Duration,
}

/// What a monitor announcement says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Announcement {
    /// The site running the monitor.
    pub site: String,
    /// Its region.
    #[serde(default)]
    pub region: Option<String>,
    /// The recording pattern.
    pub pattern: String,
    /// `importing`, `complete` or `stopped`.
    pub state: String,
    /// When the monitor reached its state, microseconds since the Unix epoch.
    pub since_us: u64,
    /// Monitors the site runs.
    pub monitors: usize,
}

/// Per origin, what a complete replica's rows include, as its replica
/// stream's header says: the origin's mark here, or what this site's own
/// backfill copied (`monitor`'s marks), whichever is higher; and this
/// site's own records up to the view's seq.
///
/// # Errors
/// Store read errors.
pub fn replica_marks(
    v: &pepper_storage::View<'_>,
    site: &str,
    monitor: &pepper_storage::MonitorRow,
) -> pepper_storage::Result<Vec<(String, u64)>> {
    let mut marks: BTreeMap<String, u64> = v.origin_marks()?.into_iter().collect();
    for (origin, mark) in &monitor.marks {
        let at = marks.entry(origin.clone()).or_insert(0);
        *at = (*at).max(*mark);
    }
    marks.insert(site.to_string(), v.seq());
    Ok(marks.into_iter().collect())
}

/// The monitors running on a site (rows not stopped), as the placement
/// machine takes them.
pub fn local_monitors(rows: &[pepper_storage::MonitorRow]) -> Vec<pepper_router::LocalMonitor> {
    rows.iter()
        .filter(|r| r.state != pepper_storage::MonitorState::Stopped)
        .map(|r| pepper_router::LocalMonitor {
            pattern: r.pattern.clone(),
            complete: r.state == pepper_storage::MonitorState::Complete,
            since_us: r.time_us,
            started_seq: r.started_seq,
        })
        .collect()
}

impl Announcement {
    /// The announcement as the placement machine takes it, read from an
    /// event of type `event_type`.
    pub fn heard(self, event_type: &str) -> pepper_router::Heard {
        pepper_router::Heard {
            kind: pepper_router::AnnounceKind::parse(event_type),
            site: self.site,
            region: self.region,
            pattern: self.pattern,
            status: pepper_router::MonitorStatus::parse(&self.state),
            since_us: self.since_us,
            monitors: self.monitors,
        }
    }
}

/// A site's supervisor: the placement machine (`pepper_router::Placement`)
/// that makes every decision, and the clock origin its time is measured
/// from. The tasks in `loops::supervise` carry out what it decides.
pub struct Supervisor {
    interval: Duration,
    origin: Instant,
    placement: Mutex<Placement>,
    /// Task results given to the machine so far; an evaluation whose rows
    /// were read before the latest one reads them again.
    results: std::sync::atomic::AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a policy entry.
pub(crate) fn check_policy(pattern: &str, replicas: usize) -> Result<(), String> {
    pepper_storage::validate::monitor_pattern(pattern).map_err(|e| e.to_string())?;
    if pattern.starts_with("/pepper/") {
        return Err(format!("{pattern} is under /pepper/, which pepper itself uses"));
    }
    if !(1..=REPLICAS_MAX).contains(&replicas) {
        return Err(format!("replicas must be 1 to {REPLICAS_MAX}, not {replicas}"));
    }
    Ok(())
}

/// Parses `PATTERN=R`.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_policy(text: &str) -> Result<(String, usize), String> {
    let (pattern, r) = text.rsplit_once('=').ok_or_else(|| format!("recording policy {text:?} must be PATTERN=R"))?;
    let replicas = r.parse().map_err(|_| format!("recording policy {text:?}: {r:?} is not a number"))?;
    check_policy(pattern, replicas)?;
    Ok((pattern.to_string(), replicas))
}

impl Supervisor {
    /// The supervisor with the stored policy, `config`'s entries replacing
    /// stored ones, written back and given to the store.
    ///
    /// # Errors
    /// Store errors, or a bad or nesting policy.
    pub async fn load(store: &pepper_storage::Store, config: &SupervisorConfig) -> Result<Supervisor, ApiError> {
        let docs = store.read(|v| v.docs(POLICY_DOC_PREFIX, None, pepper_storage::limits::READ_ROWS_MAX)).await?.items;
        let mut policies = BTreeMap::new();
        for d in docs {
            let pattern = d.key[POLICY_DOC_PREFIX.len()..].to_string();
            let replicas = serde_json::from_slice::<Value>(&d.value)
                .ok()
                .and_then(|v| v["replicas"].as_u64())
                .ok_or_else(|| ApiError::invalid_body(format!("stored recording policy of {pattern} is unreadable")))?;
            policies.insert(pattern, replicas as usize);
        }
        let mut writes = Vec::new();
        for (pattern, replicas) in &config.policies {
            check_policy(pattern, *replicas).map_err(ApiError::invalid_body)?;
            if policies.insert(pattern.clone(), *replicas) != Some(*replicas) {
                writes.push(policy_doc(pattern, *replicas));
            }
        }
        if policies.len() > POLICIES_MAX {
            return Err(ApiError::too_large(format!("{} recording patterns, over {POLICIES_MAX}", policies.len())));
        }
        store.set_recording_policy(policies.keys().cloned().collect())?;
        if !writes.is_empty() {
            store.append(writes).await?;
        }
        let interval = if config.interval.is_zero() { INTERVAL_DEFAULT } else { config.interval };
        Ok(Supervisor::new(store.site(), interval, policies))
    }

    pub(crate) fn new(site: &str, interval: Duration, policies: BTreeMap<String, usize>) -> Supervisor {
        let origin = Instant::now();
        let config = PlacementConfig { site: site.to_string(), interval, policies, ..PlacementConfig::default() };
        Supervisor {
            interval,
            origin,
            placement: Mutex::new(Placement::new(config, Duration::ZERO)),
            results: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts the machine afresh at `now` with this site's region and the
    /// federation's heartbeat (zero when federation is off), keeping the
    /// policy: its warm-up counts from here.
    pub(crate) fn begin(&self, region: Option<String>, heartbeat: Duration) {
        let mut placement = self.placement();
        let config = PlacementConfig {
            site: placement.site().to_string(),
            region,
            interval: self.interval,
            heartbeat,
            policies: placement.policies().clone(),
        };
        *placement = Placement::new(config, self.now());
    }

    /// The interval between evaluations.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The machine's time: since this supervisor was made.
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// When the machine's time `at` is, on the monotonic clock.
    pub(crate) fn instant(&self, at: Duration) -> Instant {
        self.origin + at
    }

    /// The machine, locked; never held across an await.
    pub(crate) fn placement(&self) -> MutexGuard<'_, Placement> {
        lock(&self.placement)
    }

    /// Gives the machine a task's result; returns what to do next.
    pub(crate) fn report(&self, input: PlacementInput) -> Vec<pepper_router::PlacementAction> {
        let mut placement = self.placement();
        self.results.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        placement.step(self.now(), input)
    }

    /// Task results given so far (see [`Supervisor::report`]).
    pub(crate) fn results(&self) -> u64 {
        self.results.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn policies(&self) -> BTreeMap<String, usize> {
        self.placement().policies().clone()
    }

    /// The policy pattern covering `channel`, if any.
    pub(crate) fn covering(&self, channel: &str) -> Option<String> {
        self.placement().covering(channel).map(str::to_string)
    }
}

pub(crate) fn policy_doc(pattern: &str, replicas: usize) -> Body {
    Body::DocPut(DocPut {
        key: format!("{POLICY_DOC_PREFIX}{pattern}"),
        value: json!({ "replicas": replicas }).to_string().into_bytes(),
    })
}

/// The channel a pattern's announcements go to.
pub fn announce_channel(pattern: &str) -> String {
    format!("{ANNOUNCE_PREFIX}{}", pattern.trim_start_matches('/'))
}

pub(crate) fn interest(pattern: &str) -> Interest {
    Interest { pattern: pattern.to_string(), types: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_or_say_what_is_wrong() {
        assert_eq!(parse_policy("/example.com/node/=2"), Ok(("/example.com/node/".to_string(), 2)));
        for (bad, needle) in [
            ("/a/", "PATTERN=R"),
            ("/a/=x", "not a number"),
            ("/a=2", "end with"),
            ("/a/=0", "replicas"),
            ("/a/=17", "replicas"),
            ("/pepper/m/=1", "/pepper/"),
            ("/*/=1", "recording pattern"),
        ] {
            let err = parse_policy(bad).expect_err(bad);
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn announcement_channels_follow_the_pattern() {
        assert_eq!(announce_channel("/example.com/node/"), "/pepper/monitors/example.com/node/");
        assert!(pepper_router::Channel::parse(&announce_channel("/example.com/node/")).is_ok());
    }
}
