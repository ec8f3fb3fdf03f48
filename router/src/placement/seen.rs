//! The monitors this site has heard announced, and how long ago.
//!
//! One entry per (pattern, site), replaced by each announcement and removed
//! by a stop. An entry counts as live while it was heard within
//! [`DEAD_AFTER_INTERVALS`] intervals, and as heard of lately within
//! [`LOST_AFTER_INTERVALS`]; both are strict bounds on the time since it
//! was heard. Entries are ordered by pattern then site, so every answer
//! comes in site-name order.

use std::collections::BTreeMap;
use std::time::Duration;

use super::heard::{Heard, MonitorStatus};
use super::{DEAD_AFTER_INTERVALS, LOST_AFTER_INTERVALS, SEEN_MAX};

/// A monitor as announcements show it.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub status: MonitorStatus,
    pub region: Option<String>,
    pub monitors: usize,
    pub since_us: u64,
    /// When this site heard it last.
    pub last: Duration,
}

/// Announced monitors by (pattern, site).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    entries: BTreeMap<(String, String), Entry>,
}

impl Seen {
    /// Takes in one announcement or handoff event heard at `now`.
    pub fn heard(&mut self, now: Duration, h: Heard) {
        let ends = h.ends();
        let key = (h.pattern, h.site);
        if ends {
            self.entries.remove(&key);
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= SEEN_MAX {
            // Make room by forgetting the longest silent (the first in key
            // order among equals).
            if let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone()) {
                self.entries.remove(&oldest);
            }
        }
        let entry = Entry { status: h.status, region: h.region, monitors: h.monitors, since_us: h.since_us, last: now };
        self.entries.insert(key, entry);
    }

    /// Live monitors of `pattern` on sites other than `me`.
    pub fn live(&self, now: Duration, pattern: &str, me: &str, interval: Duration) -> Vec<(&str, &Entry)> {
        self.heard_within(now, pattern, me, interval * DEAD_AFTER_INTERVALS)
    }

    /// A site other than `me` announced a complete monitor of `pattern`
    /// within [`LOST_AFTER_INTERVALS`] intervals: the first by name.
    pub fn complete_lately(&self, now: Duration, pattern: &str, me: &str, interval: Duration) -> Option<&str> {
        let lately = self.heard_within(now, pattern, me, interval * LOST_AFTER_INTERVALS);
        lately.into_iter().find(|(_, e)| e.status == MonitorStatus::Complete).map(|(site, _)| site)
    }

    /// Monitors of `pattern` on sites other than `me`, heard less than
    /// `within` ago.
    fn heard_within(&self, now: Duration, pattern: &str, me: &str, within: Duration) -> Vec<(&str, &Entry)> {
        self.entries
            .range((pattern.to_string(), String::new())..)
            .take_while(|((p, _), _)| p == pattern)
            .filter(|((_, site), e)| site != me && now.saturating_sub(e.last) < within)
            .map(|((_, site), e)| (site.as_str(), e))
            .collect()
    }

    /// How many entries are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::heard::AnnounceKind;

    const I: Duration = Duration::from_millis(20);

    fn said(site: &str, pattern: &str, status: MonitorStatus, kind: AnnounceKind) -> Heard {
        Heard {
            kind: Some(kind),
            site: site.into(),
            region: None,
            pattern: pattern.into(),
            status,
            since_us: 1,
            monitors: 1,
        }
    }

    fn live(seen: &Seen, now: Duration) -> Vec<String> {
        seen.live(now, "/n/", "me", I).into_iter().map(|(s, _)| s.to_string()).collect()
    }

    #[test]
    fn announcements_make_monitors_live_until_silent_or_stopped() {
        let mut seen = Seen::default();
        let t0 = Duration::from_secs(5);
        seen.heard(t0, said("a", "/n/", MonitorStatus::Complete, AnnounceKind::Heartbeat));
        seen.heard(t0, said("b", "/n/", MonitorStatus::Importing, AnnounceKind::Start));
        seen.heard(t0, said("me", "/n/", MonitorStatus::Complete, AnnounceKind::Heartbeat));
        seen.heard(t0, said("c", "/m/", MonitorStatus::Complete, AnnounceKind::Heartbeat));
        assert_eq!(live(&seen, t0), ["a", "b"], "this site's own announcements do not count as others'");
        // A stop removes at once, and so does a failure or a stopped state
        // whatever the event type.
        seen.heard(t0, said("b", "/n/", MonitorStatus::Stopped, AnnounceKind::Stop));
        assert_eq!(live(&seen, t0), ["a"]);
        seen.heard(t0, said("b", "/n/", MonitorStatus::Importing, AnnounceKind::Start));
        seen.heard(t0, said("b", "/n/", MonitorStatus::Importing, AnnounceKind::Failed));
        assert_eq!(live(&seen, t0), ["a"]);
        seen.heard(t0, said("b", "/n/", MonitorStatus::Importing, AnnounceKind::Start));
        seen.heard(t0, Heard { kind: None, ..said("b", "/n/", MonitorStatus::Stopped, AnnounceKind::Heartbeat) });
        assert_eq!(live(&seen, t0), ["a"]);
        // Live strictly less than DEAD_AFTER_INTERVALS intervals after it
        // was heard; heard of lately strictly less than LOST_AFTER_INTERVALS.
        let dead = t0 + I * DEAD_AFTER_INTERVALS;
        assert_eq!(live(&seen, dead - Duration::from_nanos(1)), ["a"]);
        assert!(live(&seen, dead).is_empty());
        assert_eq!(seen.complete_lately(dead, "/n/", "me", I), Some("a"));
        let lost = t0 + I * LOST_AFTER_INTERVALS;
        assert_eq!(seen.complete_lately(lost - Duration::from_nanos(1), "/n/", "me", I), Some("a"));
        assert_eq!(seen.complete_lately(lost, "/n/", "me", I), None);
        assert_eq!(seen.complete_lately(t0, "/m/", "c", I), None, "not this site's own");
        // A clock behind the last hearing counts as no time passed.
        assert_eq!(live(&seen, Duration::ZERO), ["a"]);
    }

    #[test]
    fn a_full_table_forgets_the_longest_silent() {
        let mut seen = Seen::default();
        for n in 0..SEEN_MAX {
            let at = Duration::from_millis(10 + (n % 7) as u64);
            seen.heard(at, said(&format!("s{n:05}"), "/n/", MonitorStatus::Complete, AnnounceKind::Heartbeat));
        }
        assert_eq!(seen.len(), SEEN_MAX);
        // A known one is replaced, nothing forgotten.
        seen.heard(Duration::from_secs(1), said("s00001", "/n/", MonitorStatus::Complete, AnnounceKind::Heartbeat));
        assert_eq!(seen.len(), SEEN_MAX);
        // A new one pushes out the first of the longest silent: s00000.
        seen.heard(Duration::from_secs(1), said("new", "/n/", MonitorStatus::Complete, AnnounceKind::Heartbeat));
        assert_eq!(seen.len(), SEEN_MAX);
        let names: Vec<&str> = seen
            .live(Duration::from_secs(1), "/n/", "me", Duration::from_secs(60))
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert!(!names.contains(&"s00000") && names.contains(&"new"));
        assert!(names.contains(&"s00007"), "the next equally silent one stays");
    }
}
