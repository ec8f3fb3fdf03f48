//! Several sites' supervisors in one simulated world: a manual clock, a
//! network that delivers every announcement to every live site after a few
//! milliseconds, and a store per site that keeps its monitor rows across a
//! kill. Random kills, restarts and changes of R, then a quiet period.
//!
//! What it proves, for every generated history:
//! - once at least R sites are alive and left alone, each pattern ends with
//!   exactly R complete monitors on live sites, nothing importing, and stays
//!   there;
//! - the stop rule never stops a complete monitor unless R other sites had
//!   a complete monitor of the pattern within the last
//!   `DEAD_AFTER_INTERVALS` intervals, and, once no site has died for that
//!   long, it never stops the last complete monitor;
//! - a monitor completes without copying only when no live site had held a
//!   complete monitor of the pattern for a whole interval.
//!
//! What it cannot: the network here never loses or reorders an
//! announcement between two sites, and the cut and copy are modelled as one
//! delay each that fails if the source died. The fixed seed keeps runs
//! reproducible; set `PROPTEST_RNG_SEED` (and `PROPTEST_CASES`) to explore
//! others.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use pepper_router::{
    Copied, Heard, LocalMonitor, PeerView, Placement, PlacementAction, PlacementConfig, PlacementInput, Reach,
    StopResult, DEAD_AFTER_INTERVALS,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

const I: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_secs(1);
const PATTERNS: [&str; 2] = ["/a/", "/b/"];
const EPOCH_US: u64 = 1_700_000_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Kill(usize),
    Restart(usize),
    Replicas(usize, usize),
}

#[derive(Clone, Debug)]
struct Scenario {
    sites: usize,
    regions: Vec<u8>,
    starts_ms: Vec<u64>,
    replicas: Vec<usize>,
    ops: Vec<(u64, Op)>,
    seed: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (3usize..=6).prop_flat_map(|n| {
        (
            Just(n),
            prop::collection::vec(0u8..3, n),
            prop::collection::vec(0u64..3000, n),
            prop::collection::vec(1usize..=3, PATTERNS.len()),
            prop::collection::vec(
                (
                    0u64..60_000,
                    prop_oneof![
                        4 => (0..n).prop_map(Op::Kill),
                        3 => (0..n).prop_map(Op::Restart),
                        1 => (0..PATTERNS.len(), 1usize..=3).prop_map(|(p, r)| Op::Replicas(p, r)),
                    ],
                ),
                0..24,
            ),
            any::<u64>(),
        )
            .prop_map(|(sites, regions, starts_ms, replicas, mut ops, seed)| {
                ops.sort_by_key(|(at, _)| *at);
                Scenario { sites, regions, starts_ms, replicas, ops, seed }
            })
    })
}

#[derive(Clone, Copy, Debug)]
struct Row {
    complete: bool,
    since_us: u64,
    started_seq: u64,
}

struct Site {
    name: String,
    region: Option<String>,
    machine: Option<Placement>,
    /// Bumped at each kill: results of a dead incarnation's actions are lost.
    incarnation: u64,
    died_at: Option<Duration>,
    rows: BTreeMap<String, Row>,
}

#[derive(Debug)]
enum Event {
    Deliver { to: usize, heard: Heard },
    Do { site: usize, incarnation: u64, action: PlacementAction },
}

struct World {
    now: Duration,
    sites: Vec<Site>,
    queue: BTreeMap<(Duration, u64), Event>,
    next_event: u64,
    policies: BTreeMap<String, usize>,
    rng: u64,
    seq: u64,
    /// Per (site, pattern): since when its monitor is complete, while it is.
    complete_since: BTreeMap<(usize, String), Duration>,
    /// Per (site, pattern): when it last stopped being a live complete one.
    complete_until: BTreeMap<(usize, String), Duration>,
    last_death: Duration,
    violations: Vec<String>,
}

impl World {
    fn new(s: &Scenario) -> World {
        let policies: BTreeMap<String, usize> =
            PATTERNS.iter().zip(&s.replicas).map(|(p, r)| (p.to_string(), *r)).collect();
        let sites = (0..s.sites)
            .map(|i| Site {
                name: format!("s{i}"),
                region: (s.regions[i] > 0).then(|| format!("r{}", s.regions[i])),
                machine: None,
                incarnation: 0,
                died_at: Some(Duration::ZERO),
                rows: BTreeMap::new(),
            })
            .collect();
        World {
            now: Duration::ZERO,
            sites,
            queue: BTreeMap::new(),
            next_event: 0,
            policies,
            rng: s.seed | 1,
            seq: 0,
            complete_since: BTreeMap::new(),
            complete_until: BTreeMap::new(),
            last_death: Duration::ZERO,
            violations: Vec::new(),
        }
    }

    fn draw(&mut self) -> f64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }

    fn wall_us(&self) -> u64 {
        EPOCH_US + self.now.as_micros() as u64
    }

    fn alive(&self, i: usize) -> bool {
        self.sites[i].machine.is_some()
    }

    fn push(&mut self, after: Duration, event: Event) {
        self.next_event += 1;
        self.queue.insert((self.now + after, self.next_event), event);
    }

    fn start(&mut self, i: usize) {
        if self.alive(i) {
            return;
        }
        let site = &mut self.sites[i];
        let config = PlacementConfig {
            site: site.name.clone(),
            region: site.region.clone(),
            interval: I,
            heartbeat: HEARTBEAT,
            policies: self.policies.clone(),
        };
        site.machine = Some(Placement::new(config, self.now));
        site.died_at = None;
        for pattern in site.rows.iter().filter(|(_, r)| r.complete).map(|(p, _)| p.clone()).collect::<Vec<_>>() {
            self.complete_since.insert((i, pattern), self.now);
        }
    }

    fn kill(&mut self, i: usize) {
        if !self.alive(i) {
            return;
        }
        let site = &mut self.sites[i];
        site.machine = None;
        site.incarnation += 1;
        site.died_at = Some(self.now);
        self.last_death = self.now;
        for pattern in PATTERNS {
            self.not_complete(i, pattern);
        }
    }

    fn not_complete(&mut self, i: usize, pattern: &str) {
        if self.complete_since.remove(&(i, pattern.to_string())).is_some() {
            self.complete_until.insert((i, pattern.to_string()), self.now);
        }
    }

    fn peers_of(&self, i: usize) -> Vec<PeerView> {
        (0..self.sites.len())
            .filter(|&j| j != i)
            .map(|j| {
                let reach = match self.sites[j].died_at {
                    None => Reach::Up,
                    Some(at) if self.now < at + HEARTBEAT * 2 => Reach::Up,
                    Some(at) if self.now < at + HEARTBEAT * 5 => Reach::Suspect,
                    Some(_) => Reach::Down,
                };
                let rtt = 1.0 + ((i * 7 + j * 3) % 10) as f64;
                PeerView {
                    name: self.sites[j].name.clone(),
                    region: self.sites[j].region.clone(),
                    reach,
                    rtt_ms: Some(rtt),
                }
            })
            .collect()
    }

    fn local(&self, i: usize) -> Vec<LocalMonitor> {
        let rows = &self.sites[i].rows;
        rows.iter()
            .map(|(p, r)| LocalMonitor {
                pattern: p.clone(),
                complete: r.complete,
                since_us: r.since_us,
                started_seq: r.started_seq,
            })
            .collect()
    }

    fn step(&mut self, i: usize, input: PlacementInput) {
        let now = self.now;
        let Some(machine) = self.sites[i].machine.as_mut() else { return };
        let actions = machine.step(now, input);
        self.carry_out(i, actions);
    }

    fn tick(&mut self, i: usize) {
        let local = self.local(i);
        let now = self.now;
        let mut machine = self.sites[i].machine.take().expect("alive");
        let actions = machine.tick(now, &local, || self.draw());
        self.sites[i].machine = Some(machine);
        self.carry_out(i, actions);
    }

    fn carry_out(&mut self, i: usize, actions: Vec<PlacementAction>) {
        let incarnation = self.sites[i].incarnation;
        for action in actions {
            let delay = match &action {
                PlacementAction::Announce(_) | PlacementAction::DropInterest { .. } => Duration::ZERO,
                PlacementAction::Start { .. } | PlacementAction::Stop { .. } => Duration::from_millis(1),
                PlacementAction::HoldInterest { .. } => Duration::from_millis(5),
                PlacementAction::WaitForCut { .. } => Duration::from_millis(40),
                PlacementAction::Copy { .. } => Duration::from_millis(120),
                PlacementAction::Complete { .. } => Duration::from_millis(2),
            };
            if delay.is_zero() {
                self.perform(i, action);
            } else {
                self.push(delay, Event::Do { site: i, incarnation, action });
            }
        }
    }

    /// Carries out one action of site `i` now and answers it.
    fn perform(&mut self, i: usize, action: PlacementAction) {
        match action {
            PlacementAction::Announce(a) => {
                let site = &self.sites[i];
                let heard = Heard {
                    kind: Some(a.kind),
                    site: site.name.clone(),
                    region: site.region.clone(),
                    pattern: a.pattern,
                    status: a.status,
                    since_us: a.since_us.unwrap_or(self.wall_us()),
                    monitors: a.monitors.unwrap_or(site.rows.len()),
                };
                for to in 0..self.sites.len() {
                    let latency = Duration::from_millis(2 + ((i + to) % 4) as u64);
                    self.push(latency, Event::Deliver { to, heard: heard.clone() });
                }
            }
            PlacementAction::DropInterest { .. } => {}
            PlacementAction::Start { pattern, .. } => {
                let result = if self.sites[i].rows.contains_key(&pattern) {
                    Err("a monitor of it runs here".to_string())
                } else {
                    self.seq += 1;
                    let row = Row { complete: false, since_us: self.wall_us(), started_seq: self.seq };
                    self.sites[i].rows.insert(pattern.clone(), row);
                    Ok(())
                };
                self.step(i, PlacementInput::Started { pattern, result });
            }
            PlacementAction::HoldInterest { pattern } => {
                let peers = self.peers_of(i);
                self.step(i, PlacementInput::InterestHeld { pattern, peers });
            }
            PlacementAction::WaitForCut { pattern, source } => {
                let result = match self.site_named(&source) {
                    Some(j) if self.alive(j) => Ok(()),
                    _ => Err(format!("{source} did not reach the cut in time")),
                };
                self.step(i, PlacementInput::CutPassed { pattern, result });
            }
            PlacementAction::Copy { pattern, source } => {
                let serving = self.site_named(&source).filter(|&j| self.alive(j));
                let result = match serving.and_then(|j| self.sites[j].rows.get(&pattern)) {
                    Some(r) if r.complete => Ok(Copied { marks: vec![(source.clone(), 1)], rows: 10 }),
                    _ => Err(format!("{source} refused the replica")),
                };
                self.step(i, PlacementInput::Copied { pattern, result });
            }
            PlacementAction::Complete { pattern, source, .. } => {
                let result = match self.sites[i].rows.get_mut(&pattern) {
                    Some(r) if !r.complete => {
                        r.complete = true;
                        r.since_us = EPOCH_US + self.now.as_micros() as u64;
                        Ok(0)
                    }
                    _ => Err(format!("{pattern} is not importing")),
                };
                if result.is_ok() {
                    if source.is_empty() {
                        self.check_empty_completion(i, &pattern);
                    }
                    self.complete_since.insert((i, pattern.clone()), self.now);
                }
                self.step(i, PlacementInput::Completed { pattern, result });
            }
            PlacementAction::Stop { pattern, reason, if_importing_since } => {
                let row = self.sites[i].rows.get(&pattern).copied();
                let result = match (row, if_importing_since) {
                    (Some(r), Some(seq)) if r.complete || r.started_seq != seq => StopResult::NotSame,
                    (None, Some(_)) => StopResult::NotSame,
                    (None, None) => StopResult::NotFound,
                    (Some(r), _) => {
                        if r.complete && reason.contains("complete replicas") {
                            self.check_surplus_stop(i, &pattern);
                        }
                        self.sites[i].rows.remove(&pattern);
                        self.not_complete(i, &pattern);
                        StopResult::Stopped
                    }
                };
                self.step(i, PlacementInput::Stopped { pattern, result });
            }
        }
    }

    fn site_named(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.name == name)
    }

    fn complete_elsewhere(&self, i: usize, pattern: &str, within: Duration) -> usize {
        (0..self.sites.len())
            .filter(|&j| j != i)
            .filter(|&j| {
                let key = (j, pattern.to_string());
                self.complete_since.contains_key(&key)
                    || self.complete_until.get(&key).is_some_and(|&t| self.now.saturating_sub(t) < within)
            })
            .count()
    }

    fn check_surplus_stop(&mut self, i: usize, pattern: &str) {
        let r = self.policies[pattern];
        let recently = self.complete_elsewhere(i, pattern, I * DEAD_AFTER_INTERVALS);
        if recently < r {
            self.violations.push(format!(
                "{:?}: s{i} stopped its complete {pattern} with {recently} other complete within the window, R={r}",
                self.now
            ));
        }
        let quiet = self.now >= self.last_death + I * DEAD_AFTER_INTERVALS;
        if quiet && self.complete_elsewhere(i, pattern, Duration::ZERO) == 0 {
            self.violations.push(format!("{:?}: s{i} stopped the last complete monitor of {pattern}", self.now));
        }
    }

    fn check_empty_completion(&mut self, i: usize, pattern: &str) {
        let held = (0..self.sites.len()).filter(|&j| j != i && self.alive(j)).any(|j| {
            self.complete_since.get(&(j, pattern.to_string())).is_some_and(|&since| self.now >= since + I * 2)
        });
        if held {
            self.violations
                .push(format!("{:?}: s{i} completed {pattern} empty while a live replica held it", self.now));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, heard } => self.step(to, PlacementInput::Heard(heard)),
            Event::Do { site, incarnation, action } => {
                if self.alive(site) && self.sites[site].incarnation == incarnation {
                    self.perform(site, action);
                }
            }
        }
    }

    /// Runs until `end`: events first at equal times, then due ticks.
    fn run_until(&mut self, end: Duration) {
        loop {
            let event_at = self.queue.keys().next().map(|(t, _)| *t);
            let tick =
                (0..self.sites.len()).filter_map(|i| self.sites[i].machine.as_ref().map(|m| (m.next_tick(), i))).min();
            let next = match (event_at, tick) {
                (Some(e), Some((t, _))) => e.min(t),
                (Some(e), None) => e,
                (None, Some((t, _))) => t,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = next;
            if event_at == Some(next) {
                let (_, event) = self.queue.pop_first().expect("an event");
                self.handle(event);
            } else if let Some((_, i)) = tick {
                self.tick(i);
            }
        }
        self.now = end;
    }

    fn complete_alive(&self, pattern: &str) -> usize {
        (0..self.sites.len())
            .filter(|&i| self.alive(i) && self.sites[i].rows.get(pattern).is_some_and(|r| r.complete))
            .count()
    }

    fn summary(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.sites.iter().enumerate() {
            let rows: Vec<String> =
                s.rows.iter().map(|(p, r)| format!("{p}:{}", if r.complete { "C" } else { "I" })).collect();
            out += &format!("s{i}{} {:?} {}; ", if self.alive(i) { "" } else { "(dead)" }, s.region, rows.join(","));
        }
        out
    }
}

fn run(s: &Scenario) -> Result<(), TestCaseError> {
    let mut w = World::new(s);
    let mut starts: Vec<(u64, usize)> = s.starts_ms.iter().copied().zip(0..).collect();
    starts.sort_unstable();
    for (at, i) in starts {
        w.run_until(Duration::from_millis(at));
        w.start(i);
    }
    for (at, op) in &s.ops {
        w.run_until(Duration::from_millis(3000 + at));
        match *op {
            Op::Kill(i) => w.kill(i),
            Op::Restart(i) => w.start(i),
            Op::Replicas(p, r) => {
                w.policies.insert(PATTERNS[p].to_string(), r);
                for i in 0..w.sites.len() {
                    w.step(i, PlacementInput::Policies(w.policies.clone()));
                }
            }
        }
    }
    // Left alone, with at least R sites alive.
    let r_max = w.policies.values().copied().max().unwrap_or(1);
    for i in 0..w.sites.len() {
        if (0..w.sites.len()).filter(|&j| w.alive(j)).count() >= r_max {
            break;
        }
        w.start(i);
    }
    for i in 0..w.sites.len() {
        if w.alive(i) {
            w.step(i, PlacementInput::Policies(w.policies.clone()));
        }
    }
    let quiet_from = w.now;
    w.run_until(quiet_from + I * 150);
    let settled = |w: &World| -> Vec<(String, usize, usize, usize)> {
        PATTERNS
            .iter()
            .map(|p| {
                let importing = (0..w.sites.len())
                    .filter(|&i| w.alive(i) && w.sites[i].rows.get(*p).is_some_and(|r| !r.complete))
                    .count();
                (p.to_string(), w.policies[*p], w.complete_alive(p), importing)
            })
            .collect()
    };
    for (pattern, r, complete, importing) in settled(&w) {
        prop_assert_eq!((complete, importing), (r, 0), "{}: {}", pattern, w.summary());
    }
    let before = w.summary();
    w.run_until(w.now + I * 20);
    prop_assert_eq!(w.summary(), before, "settled for good");
    prop_assert!(w.violations.is_empty(), "{:#?}", w.violations);
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        rng_seed: std::env::var("PROPTEST_RNG_SEED").ok().and_then(|s| s.parse().ok()).map_or(RngSeed::Fixed(0x05ee_d0ff_1611), RngSeed::Fixed),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn supervisors_restore_r_complete_monitors_after_any_kills(s in scenario()) {
        run(&s)?;
    }
}
