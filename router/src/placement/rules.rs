//! The placement rules as pure functions: which peer to prefer, how long a
//! site short of monitors waits before it starts one, and which monitor
//! stops when there are too many. Every site computes the same answers from
//! the same announcements; that is what lets each act on its own.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

/// How a peer's heartbeats look from this site, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reach {
    /// Heard from lately.
    Up,
    /// Heard from, but late.
    Suspect,
    /// Not heard from for long, or never.
    Down,
}

/// A site as the federation knows it, for choosing among sites.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerView {
    /// The site's name.
    pub name: String,
    /// Its region, as it announces it.
    pub region: Option<String>,
    /// How its heartbeats look.
    pub reach: Reach,
    /// Its heartbeat round trip, smoothed, in milliseconds; `None` before
    /// the first one.
    pub rtt_ms: Option<f64>,
}

impl PeerView {
    /// This site among its peers: up, with a latency of zero, so it comes
    /// before every peer with a measured latency.
    pub fn this_site(name: &str, region: Option<&str>) -> PeerView {
        PeerView { name: name.to_string(), region: region.map(str::to_string), reach: Reach::Up, rtt_ms: Some(0.0) }
    }
}

/// Sites in order of preference: up before suspect before down, then by
/// lower heartbeat latency (none counts as the highest), then by name.
/// O(n log n).
pub fn by_preference(mut sites: Vec<PeerView>) -> Vec<PeerView> {
    sites.sort_by(preference);
    sites
}

fn preference(a: &PeerView, b: &PeerView) -> Ordering {
    a.reach
        .cmp(&b.reach)
        .then(a.rtt_ms.unwrap_or(f64::MAX).total_cmp(&b.rtt_ms.unwrap_or(f64::MAX)))
        .then(a.name.cmp(&b.name))
}

/// How long a site short of monitors waits before starting one: `interval
/// x (tier + draw)`, where `tier` is 2 if its region has a monitor of the
/// pattern already, plus the monitors it runs, and `draw` is uniform in
/// [0, 1) (clamped to [0, 0.999]; a draw that is not a number counts as 0).
/// A site of a lower tier always fires first; within a tier the draw
/// spreads the sites over one interval, far longer than an announcement
/// takes to reach the others, so one fires and the rest see the count
/// restored.
pub fn start_delay(interval: Duration, region_has: bool, monitors_here: usize, draw: f64) -> Duration {
    let tier = if region_has { 2.0 } else { 0.0 } + monitors_here as f64;
    let draw = if draw.is_nan() { 0.0 } else { draw.clamp(0.0, 0.999) };
    interval.mul_f64(tier + draw)
}

/// A complete monitor, for the stop rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The site running it.
    pub site: String,
    /// The site's region.
    pub region: Option<String>,
    /// Monitors the site runs.
    pub monitors: usize,
    /// When it completed, microseconds since the Unix epoch.
    pub since_us: u64,
}

/// The monitor to stop when there are too many: its region has the most
/// monitors of the pattern, then its site runs the most monitors, then it
/// completed last, then the greatest site name. The answer does not depend
/// on the order of `complete`. O(n).
pub fn victim(complete: &[Candidate]) -> Option<String> {
    let mut per_region: HashMap<Option<&str>, usize> = HashMap::new();
    for c in complete {
        *per_region.entry(c.region.as_deref()).or_default() += 1;
    }
    let in_region = |c: &Candidate| per_region.get(&c.region.as_deref()).copied().unwrap_or(0);
    complete
        .iter()
        .max_by(|a, b| {
            in_region(a)
                .cmp(&in_region(b))
                .then(a.monitors.cmp(&b.monitors))
                .then(a.since_us.cmp(&b.since_us))
                .then(a.site.cmp(&b.site))
        })
        .map(|c| c.site.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // No region is a region of its own.
        let v = victim(&[c("a", None, 1, 1), c("b", None, 1, 1), c("z", Some("r"), 5, 9)]);
        assert_eq!(v.as_deref(), Some("b"));
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
        // Draws outside [0, 1) are clamped: a tier is never crossed.
        assert_eq!(start_delay(i, false, 0, -3.0), Duration::ZERO);
        assert_eq!(start_delay(i, false, 0, 7.0), i.mul_f64(0.999));
        assert_eq!(start_delay(i, false, 0, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn preference_is_up_then_latency_then_name() {
        let site =
            |name: &str, reach, rtt: Option<f64>| PeerView { name: name.into(), region: None, reach, rtt_ms: rtt };
        let sites = vec![
            site("far", Reach::Up, Some(9.0)),
            site("gone", Reach::Down, Some(0.1)),
            site("shaky", Reach::Suspect, Some(0.2)),
            site("near", Reach::Up, Some(1.0)),
            site("new", Reach::Up, None),
            site("b-near", Reach::Up, Some(1.0)),
            PeerView::this_site("me", Some("eu")),
        ];
        let names: Vec<String> = by_preference(sites).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["me", "b-near", "near", "far", "new", "shaky", "gone"]);
    }
}
