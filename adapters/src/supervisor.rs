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
//! completed last; then the greatest site name. Only that site acts.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

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
/// Time between evaluations and announcements when none is configured.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// A monitor not announced for this many intervals no longer counts.
pub const DEAD_AFTER_INTERVALS: u32 = 3;
/// A complete monitor heard from within this many intervals, though no
/// longer live, keeps a new monitor from starting empty: its history may
/// still be reachable.
pub const LOST_AFTER_INTERVALS: u32 = 30;
/// Evaluations in a row that must see too many replicas before one stops.
pub const SURPLUS_EVALUATIONS: u32 = 2;
/// Patterns one policy may hold.
pub const POLICIES_MAX: usize = 256;
/// The highest replication factor a pattern may ask for.
pub const REPLICAS_MAX: usize = 16;
/// Monitors (pattern, site) the supervisor keeps track of.
pub const SEEN_MAX: usize = 16_384;
/// The longest a backfill waits for the cut before it gives up.
pub const CUT_WAIT_MAX: Duration = Duration::from_secs(10);
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

/// A monitor as announcements show it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) state: String,
    pub(crate) region: Option<String>,
    pub(crate) monitors: usize,
    pub(crate) since_us: u64,
    pub(crate) last: Instant,
}

/// Per pattern: whether a start waits for its delay, and the surplus count.
#[derive(Default)]
pub(crate) struct Plan {
    pub(crate) start_planned: bool,
    pub(crate) surplus: u32,
}

/// The last backfill this site ran.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Backfill {
    pub(crate) pattern: String,
    pub(crate) source: String,
    pub(crate) rows: u64,
    pub(crate) elapsed_ms: f64,
    pub(crate) rows_per_s: f64,
    pub(crate) held_recorded: u64,
}

/// A site's supervisor.
pub struct Supervisor {
    pub(crate) interval: Duration,
    pub(crate) policies: RwLock<BTreeMap<String, usize>>,
    pub(crate) seen: Mutex<BTreeMap<(String, String), Seen>>,
    pub(crate) plans: Mutex<HashMap<String, Plan>>,
    /// Patterns with a start or stop in flight here.
    pub(crate) busy: Mutex<HashSet<String>>,
    pub(crate) last_backfill: Mutex<Option<Backfill>>,
    /// Time to restore each pattern's count, last measured here: from the
    /// first evaluation that saw it short to this site's completion.
    pub(crate) short_since: Mutex<HashMap<String, Instant>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
        Ok(Supervisor::new(interval, policies))
    }

    pub(crate) fn new(interval: Duration, policies: BTreeMap<String, usize>) -> Supervisor {
        Supervisor {
            interval,
            policies: RwLock::new(policies),
            seen: Mutex::new(BTreeMap::new()),
            plans: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            last_backfill: Mutex::new(None),
            short_since: Mutex::new(HashMap::new()),
        }
    }

    /// The interval between evaluations.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub(crate) fn policies(&self) -> BTreeMap<String, usize> {
        self.policies.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The policy pattern covering `channel`, if any.
    pub(crate) fn covering(&self, channel: &str) -> Option<String> {
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        pepper_router::subtrees(channel).find(|p| policies.contains_key(*p)).map(str::to_string)
    }

    /// Live monitors of `pattern` other sites announced: (site, seen).
    pub(crate) fn live(&self, pattern: &str, me: &str) -> Vec<(String, Seen)> {
        self.heard_within(pattern, me, self.interval * DEAD_AFTER_INTERVALS)
    }

    /// A site other than `me` announced a complete monitor of `pattern`
    /// within [`LOST_AFTER_INTERVALS`] intervals.
    pub(crate) fn heard_complete_lately(&self, pattern: &str, me: &str) -> Option<String> {
        let lately = self.heard_within(pattern, me, self.interval * LOST_AFTER_INTERVALS);
        lately.into_iter().find(|(_, s)| s.state == "complete").map(|(site, _)| site)
    }

    /// Monitors of `pattern` on sites other than `me`, announced within `within`.
    pub(crate) fn heard_within(&self, pattern: &str, me: &str, within: Duration) -> Vec<(String, Seen)> {
        lock(&self.seen)
            .range((pattern.to_string(), String::new())..)
            .take_while(|((p, _), _)| p == pattern)
            .filter(|((_, site), s)| site != me && s.last.elapsed() < within)
            .map(|((_, site), s)| (site.clone(), s.clone()))
            .collect()
    }

    /// Takes in one announcement or handoff event.
    pub(crate) fn heard(&self, event_type: &str, a: Announcement) {
        let mut seen = lock(&self.seen);
        let key = (a.pattern.clone(), a.site.clone());
        if matches!(event_type, "pepper.monitor.stop" | "pepper.monitor.failed") || a.state == "stopped" {
            seen.remove(&key);
            return;
        }
        if !seen.contains_key(&key) && seen.len() >= SEEN_MAX {
            // Make room by forgetting the longest silent.
            if let Some(oldest) = seen.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone()) {
                seen.remove(&oldest);
            }
        }
        let s =
            Seen { state: a.state, region: a.region, monitors: a.monitors, since_us: a.since_us, last: Instant::now() };
        seen.insert(key, s);
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
    use crate::loops::supervise::{start_delay, victim, Candidate};

    fn c(site: &str, region: Option<&str>, monitors: usize, since_us: u64) -> Candidate {
        Candidate { site: site.into(), region: region.map(Into::into), monitors, since_us }
    }

    #[test]
    fn the_stop_rule_prefers_crowded_regions_busy_sites_then_the_newest() {
        // Two in r1, one in r2: one of r1's stops, the busier site.
        let v = victim(&[c("a", Some("r1"), 1, 10), c("b", Some("r1"), 3, 5), c("z", Some("r2"), 9, 99)]);
        assert_eq!(v.as_deref(), Some("b"));
        // Same region count and load: the one that completed last.
        let v = victim(&[c("a", Some("r1"), 1, 10), c("b", Some("r1"), 1, 20), c("c", Some("r2"), 1, 30)]);
        assert_eq!(v.as_deref(), Some("b"));
        // All equal: the greatest name. Every site computes the same.
        let all = [c("a", None, 1, 1), c("c", None, 1, 1), c("b", None, 1, 1)];
        assert_eq!(victim(&all).as_deref(), Some("c"));
        let mut reversed = all.to_vec();
        reversed.reverse();
        assert_eq!(victim(&reversed), victim(&all));
        assert_eq!(victim(&[]), None);
    }

    #[test]
    fn placement_delays_favour_other_regions_and_idle_sites() {
        let i = Duration::from_millis(100);
        // Whatever the draws, a site in a new region with no monitors fires
        // before one in a covered region, or one already running a monitor.
        let best = start_delay(i, false, 0, 1.0);
        assert!(best < start_delay(i, true, 0, 0.0));
        assert!(best < start_delay(i, false, 1, 0.0));
        assert!(start_delay(i, false, 1, 1.0) < start_delay(i, true, 0, 0.0));
        assert_eq!(start_delay(i, false, 0, 0.0), Duration::ZERO);
        assert_eq!(start_delay(i, true, 1, 0.5), Duration::from_millis(350));
    }

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

    fn said(site: &str, state: &str) -> Announcement {
        Announcement {
            site: site.into(),
            region: None,
            pattern: "/n/".into(),
            state: state.into(),
            since_us: 1,
            monitors: 1,
        }
    }

    #[test]
    fn announcements_make_monitors_live_until_silent_or_stopped() {
        let sup = Supervisor::new(Duration::from_millis(20), BTreeMap::from([("/n/".to_string(), 2)]));
        sup.heard("pepper.monitor", said("a", "complete"));
        sup.heard("pepper.monitor.start", said("b", "importing"));
        sup.heard("pepper.monitor", said("me", "complete"));
        let live: Vec<String> = sup.live("/n/", "me").into_iter().map(|(s, _)| s).collect();
        assert_eq!(live, ["a", "b"], "this site's own announcements do not count as others'");
        assert_eq!(sup.covering("/n/h1/").as_deref(), Some("/n/"));
        assert_eq!(sup.covering("/m/"), None);
        // A stop removes at once.
        sup.heard("pepper.monitor.stop", said("b", "stopped"));
        assert_eq!(sup.live("/n/", "me").len(), 1);
        // Silent for DEAD_AFTER_INTERVALS: no longer live, but still heard of
        // lately, which keeps a new monitor from starting empty.
        std::thread::sleep(Duration::from_millis(20) * DEAD_AFTER_INTERVALS + Duration::from_millis(10));
        assert!(sup.live("/n/", "me").is_empty());
        assert_eq!(sup.heard_complete_lately("/n/", "me").as_deref(), Some("a"));
        assert_eq!(sup.heard_complete_lately("/m/", "me"), None);
    }

    #[test]
    fn announcement_channels_follow_the_pattern() {
        assert_eq!(announce_channel("/example.com/node/"), "/pepper/monitors/example.com/node/");
        assert!(pepper_router::Channel::parse(&announce_channel("/example.com/node/")).is_ok());
    }
}
