//! Quotas per principal, so no one client exhausts what the site shares:
//! a publish rate (a token bucket of events) and open streams. Past either,
//! the request gets 429 `quota_exceeded` with `Retry-After`.
//!
//! They apply to stored principals when auth is on. The admin token is
//! exempt (it is the operator), as is every caller with auth off (there is
//! no one to tell apart). The site-wide limits (`limits`) still apply to
//! everyone.
//!
//! The bucket is decided from a `now` argument, so it is tested without a
//! clock. Quotas are kept in memory: a restart refills every bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Caller;
use crate::error::ApiError;

/// Events a principal may publish per second, sustained, unless the site
/// is configured otherwise (`--publish-quota-per-s`).
pub const PUBLISH_EVENTS_PER_S: u32 = 2_000;

/// Events a principal may publish at once after a quiet spell (the
/// bucket's size) with the default rate: twice the rate, and never less
/// than a full batch.
pub const PUBLISH_BURST_EVENTS: u32 = 4_000;

/// The highest publish quota a site may be given, events per second.
pub const PUBLISH_QUOTA_PER_S_MAX: u32 = 10_000_000;

// A whole publish request always fits a full bucket.
const _: () = assert!(PUBLISH_BURST_EVENTS as usize >= pepper_storage::limits::BATCH_RECORDS_MAX);

/// A principal's publish quota: a sustained rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishRate {
    /// Events per second, sustained.
    pub per_s: u32,
    /// Events at once after a quiet spell.
    pub burst: u32,
}

impl PublishRate {
    /// `per_s` events a second (1 to [`PUBLISH_QUOTA_PER_S_MAX`]), bursts of
    /// twice that, and never less than a full batch.
    pub fn new(per_s: u32) -> PublishRate {
        let per_s = per_s.clamp(1, PUBLISH_QUOTA_PER_S_MAX);
        let batch = u32::try_from(pepper_storage::limits::BATCH_RECORDS_MAX).unwrap_or(u32::MAX);
        PublishRate { per_s, burst: per_s.saturating_mul(2).max(batch) }
    }
}

impl Default for PublishRate {
    fn default() -> PublishRate {
        PublishRate::new(PUBLISH_EVENTS_PER_S)
    }
}

const _: () = assert!(PUBLISH_EVENTS_PER_S * 2 == PUBLISH_BURST_EVENTS);

/// Live streams (lease streams and watches) one principal holds open.
pub const STREAMS_PER_PRINCIPAL_MAX: usize = 256;

/// Live leases one principal holds (the site holds at most
/// `limits::LEASES_MAX`).
pub const LEASES_PER_PRINCIPAL_MAX: usize = 1_000;

/// Anycast groups one principal's live leases are in (the site holds at
/// most `pepper_storage::limits::ANYCAST_GROUPS_MAX`).
pub const GROUPS_PER_PRINCIPAL_MAX: usize = 8;

const _: () = assert!(GROUPS_PER_PRINCIPAL_MAX < pepper_storage::limits::ANYCAST_GROUPS_MAX);

/// The live leases of each principal, with their anycast groups: an index
/// that follows the log (`state::SiteFold` sets and removes entries as
/// each durable group commits), so a lease grant checks its quota without
/// reading every lease. Leases granted with auth off have no owner and
/// are not in it.
#[derive(Default)]
pub struct LeaseHolders(Mutex<LeaseHoldersInner>);

#[derive(Default)]
struct LeaseHoldersInner {
    /// Each owned lease's owner and group.
    by_id: HashMap<String, (String, Option<String>)>,
    /// Each owner's lease ids.
    by_owner: HashMap<String, std::collections::BTreeSet<String>>,
}

impl LeaseHolders {
    /// Lease `id` is live, held by `owner` (none: auth was off) in `group`.
    pub fn set(&self, id: &str, owner: Option<&str>, group: Option<&str>) {
        let mut inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.remove(id);
        let Some(owner) = owner else { return };
        inner.by_id.insert(id.to_string(), (owner.to_string(), group.map(str::to_string)));
        inner.by_owner.entry(owner.to_string()).or_default().insert(id.to_string());
    }

    /// Lease `id` ended (released or expired).
    pub fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    /// The leases `owner` holds: (id, group) of each.
    pub fn held(&self, owner: &str) -> Vec<(String, Option<String>)> {
        let inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(ids) = inner.by_owner.get(owner) else { return Vec::new() };
        ids.iter().filter_map(|id| inner.by_id.get(id).map(|(_, group)| (id.clone(), group.clone()))).collect()
    }
}

impl LeaseHoldersInner {
    fn remove(&mut self, id: &str) {
        if let Some((owner, _)) = self.by_id.remove(id) {
            if let Some(ids) = self.by_owner.get_mut(&owner) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
    }
}

/// A token bucket of events.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
    rate: PublishRate,
}

impl Bucket {
    /// A full bucket of `rate` at `now`.
    pub fn full(now: Instant, rate: PublishRate) -> Bucket {
        Bucket { tokens: f64::from(rate.burst), at: now, rate }
    }

    /// Takes `n` events at `now`, or says how long until they would fit.
    /// Taking nothing always fits; a request larger than the burst is
    /// refused with the time to fill the whole bucket.
    pub fn take(&mut self, n: u32, now: Instant) -> Result<(), Duration> {
        let (per_s, burst) = (f64::from(self.rate.per_s), f64::from(self.rate.burst));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_s).min(burst);
        self.at = now;
        let want = f64::from(n);
        if want <= self.tokens {
            self.tokens -= want;
            return Ok(());
        }
        let missing = want.min(burst) - self.tokens;
        Err(Duration::from_secs_f64(missing.max(0.0) / per_s))
    }
}

/// The quotas of every principal.
#[derive(Default)]
pub struct Quotas {
    rate: PublishRate,
    buckets: Mutex<HashMap<String, Bucket>>,
    streams: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// The principal a quota applies to, if any.
fn quota_holder(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Principal(p) => Some(&p.doc.name),
        Caller::Open | Caller::Admin | Caller::Peer => None,
    }
}

/// 429 with the time to wait, in whole seconds (at least one).
fn exceeded(message: String, wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
        .with_extra("retry_after_s", serde_json::json!(secs.max(1)))
}

impl Quotas {
    /// Quotas with a publish rate of `rate` per principal.
    pub fn new(rate: PublishRate) -> Quotas {
        Quotas { rate, ..Quotas::default() }
    }

    /// Takes `events` from the caller's publish bucket at `now`.
    ///
    /// # Errors
    /// 429 `quota_exceeded`, with `retry_after_s`.
    pub fn publish(&self, caller: &Caller, events: usize, now: Instant) -> Result<(), ApiError> {
        let Some(name) = quota_holder(caller) else { return Ok(()) };
        let n = u32::try_from(events).unwrap_or(u32::MAX);
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rate = self.rate;
        let bucket = buckets.entry(name.to_string()).or_insert_with(|| Bucket::full(now, rate));
        bucket.take(n, now).map_err(|wait| {
            exceeded(
                format!(
                    "principal {name} publishes over its quota of {} events/s (bursts of {}); retry in {wait:.1?}",
                    rate.per_s, rate.burst
                ),
                wait,
            )
        })
    }

    /// Whether the caller may hold one more lease, `id` in `group`
    /// (stored name), given the live leases it holds now, `held` (id and
    /// group of each). Granting an id it already holds replaces that
    /// lease, so it does not count twice.
    ///
    /// `held` comes from [`LeaseHolders`], as of the last commit, so
    /// grants racing each other may pass the quota by as many as race.
    ///
    /// # Errors
    /// 429 `quota_exceeded` past [`LEASES_PER_PRINCIPAL_MAX`] leases or
    /// [`GROUPS_PER_PRINCIPAL_MAX`] groups.
    pub fn lease(
        caller: &Caller,
        held: &[(String, Option<String>)],
        id: Option<&str>,
        group: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(name) = quota_holder(caller) else { return Ok(()) };
        let others: Vec<&(String, Option<String>)> = held.iter().filter(|(h, _)| Some(h.as_str()) != id).collect();
        if others.len() >= LEASES_PER_PRINCIPAL_MAX {
            return Err(exceeded(
                format!(
                    "principal {name} holds {LEASES_PER_PRINCIPAL_MAX} live leases, its quota; release one or \
                     let one expire"
                ),
                Duration::from_secs(1),
            ));
        }
        if let Some(group) = group {
            let groups: std::collections::BTreeSet<&str> = others.iter().filter_map(|(_, g)| g.as_deref()).collect();
            if !groups.contains(group) && groups.len() >= GROUPS_PER_PRINCIPAL_MAX {
                return Err(exceeded(
                    format!(
                        "principal {name}'s leases are in {GROUPS_PER_PRINCIPAL_MAX} anycast groups, its quota; \
                         join one of them"
                    ),
                    Duration::from_secs(1),
                ));
            }
        }
        Ok(())
    }

    /// One of the caller's stream slots, held as long as the stream is
    /// open; `None` for a caller without quotas.
    ///
    /// # Errors
    /// 429 `quota_exceeded` when the principal holds
    /// [`STREAMS_PER_PRINCIPAL_MAX`] streams.
    pub fn stream(&self, caller: &Caller) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let Some(name) = quota_holder(caller) else { return Ok(None) };
        let slots = {
            let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            streams
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(STREAMS_PER_PRINCIPAL_MAX)))
                .clone()
        };
        slots.try_acquire_owned().map(Some).map_err(|_| {
            exceeded(
                format!("principal {name} holds {STREAMS_PER_PRINCIPAL_MAX} open streams, its quota; close one"),
                Duration::from_secs(1),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(t0, PublishRate::default());
        assert!(b.take(PUBLISH_BURST_EVENTS, t0).is_ok(), "a full bucket takes a burst");
        let wait = b.take(1, t0).expect_err("empty");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(1), "{wait:?}");
        // A second later, one second's worth fits, and no more.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.take(PUBLISH_EVENTS_PER_S, t1).is_ok());
        assert!(b.take(1, t1).is_err());
        // Idle for long: it holds only a burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(b.take(PUBLISH_BURST_EVENTS, t2).is_ok());
        assert!(b.take(1, t2).is_err());
        // More than a burst at once never fits; the wait is to fill it.
        let mut b = Bucket::full(t2, PublishRate::default());
        let wait = b.take(PUBLISH_BURST_EVENTS + 1, t2).expect_err("too big");
        assert_eq!(wait, Duration::ZERO, "it is full: nothing to wait for, and still too big");
        assert!(b.take(0, t2).is_ok());
    }

    #[test]
    fn a_configured_rate_bursts_twice_itself_and_always_fits_a_batch() {
        assert_eq!(PublishRate::default(), PublishRate { per_s: 2_000, burst: 4_000 });
        assert_eq!(PublishRate::new(100_000), PublishRate { per_s: 100_000, burst: 200_000 });
        assert_eq!(PublishRate::new(10).burst, 1024, "a full batch still fits");
        assert_eq!(PublishRate::new(0).per_s, 1);
        assert_eq!(PublishRate::new(u32::MAX).per_s, PUBLISH_QUOTA_PER_S_MAX);
        let t0 = Instant::now();
        let mut b = Bucket::full(t0, PublishRate::new(100_000));
        assert!(b.take(200_000, t0).is_ok());
        assert!(b.take(100_000, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_principal_holds_a_bounded_number_of_streams() {
        let q = Quotas::default();
        let doc = crate::auth::PrincipalDoc { name: "p".into(), grants: vec![], tokens: vec![], created_us: 0 };
        let p = Caller::Principal(Arc::new(crate::auth::Principal { doc, grants: vec![], seq: 1 }));
        let held: Vec<_> =
            (0..STREAMS_PER_PRINCIPAL_MAX).map(|_| q.stream(&p).expect("within").expect("slot")).collect();
        let e = q.stream(&p).expect_err("over");
        assert_eq!((e.status().as_u16(), e.code()), (429, "quota_exceeded"));
        drop(held);
        assert!(q.stream(&p).expect("freed").is_some(), "a closed stream frees its slot");
    }

    #[test]
    fn a_principal_holds_a_bounded_number_of_leases_and_groups() {
        let doc = crate::auth::PrincipalDoc { name: "p".into(), grants: vec![], tokens: vec![], created_us: 0 };
        let p = Caller::Principal(Arc::new(crate::auth::Principal { doc, grants: vec![], seq: 1 }));
        let full: Vec<(String, Option<String>)> =
            (0..LEASES_PER_PRINCIPAL_MAX).map(|i| (format!("l{i}"), None)).collect();
        let e = Quotas::lease(&p, &full, Some("new"), None).expect_err("over");
        assert_eq!((e.status().as_u16(), e.code()), (429, "quota_exceeded"));
        assert!(Quotas::lease(&p, &full, Some("l7"), None).is_ok(), "replacing a held lease adds none");
        assert!(Quotas::lease(&p, &full[1..], None, None).is_ok());
        let grouped: Vec<(String, Option<String>)> =
            (0..GROUPS_PER_PRINCIPAL_MAX).map(|i| (format!("l{i}"), Some(format!("p:g{i}")))).collect();
        assert!(Quotas::lease(&p, &grouped, None, Some("p:g0")).is_ok(), "an existing group");
        assert!(Quotas::lease(&p, &grouped, None, None).is_ok(), "no group");
        let e = Quotas::lease(&p, &grouped, None, Some("p:new")).expect_err("a group too many");
        assert_eq!(e.code(), "quota_exceeded");
        assert!(Quotas::lease(&p, &grouped, Some("l0"), Some("p:new")).is_ok(), "moving a lease to a new group");
        assert!(Quotas::lease(&Caller::Admin, &full, None, Some("x")).is_ok(), "the admin has none");
    }

    #[test]
    fn lease_holders_follow_grants_moves_and_ends() {
        let h = LeaseHolders::default();
        h.set("a", Some("p"), Some("p:g"));
        h.set("b", Some("p"), None);
        h.set("c", Some("q"), None);
        h.set("d", None, Some("g"));
        assert_eq!(h.held("p"), [("a".to_string(), Some("p:g".to_string())), ("b".to_string(), None)]);
        h.set("a", Some("q"), None);
        assert_eq!(h.held("p").len(), 1, "a lease granted again to another moves");
        h.remove("b");
        assert!(h.held("p").is_empty());
        assert_eq!(h.held("q").len(), 2);
        h.remove("nothing");
        assert!(h.held("nobody").is_empty());
    }

    #[test]
    fn callers_without_a_principal_have_no_quota() {
        let q = Quotas::default();
        let now = Instant::now();
        for caller in [Caller::Open, Caller::Admin, Caller::Peer] {
            assert!(q.publish(&caller, 1_000_000, now).is_ok());
            assert!(q.stream(&caller).expect("no quota").is_none());
        }
    }
}
