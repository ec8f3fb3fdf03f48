//! The supervisor's decisions, driven through `step` and `tick` with a
//! manual clock: warm-up, start delays, the recount when a planned start is
//! due, the backfill protocol, the stop rule, and the time bounds of each,
//! checked at the exact boundary.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use pepper_router::{
    AnnounceDetail, AnnounceKind, Copied, Heard, LocalMonitor, MonitorStatus, PeerView, Placement, PlacementAction,
    PlacementConfig, PlacementInput, Reach, StopResult, DEAD_AFTER_INTERVALS, LOST_AFTER_INTERVALS,
};

const I: Duration = Duration::from_secs(1);
const T0: Duration = Duration::from_secs(1000);
const NS: Duration = Duration::from_nanos(1);

fn placement(site: &str, region: Option<&str>, policies: &[(&str, usize)]) -> Placement {
    let config = PlacementConfig {
        site: site.into(),
        region: region.map(Into::into),
        interval: I,
        heartbeat: Duration::ZERO,
        policies: policies.iter().map(|(p, r)| (p.to_string(), *r)).collect(),
    };
    Placement::new(config, T0)
}

fn heard(site: &str, region: Option<&str>, pattern: &str, status: MonitorStatus) -> PlacementInput {
    PlacementInput::Heard(Heard {
        kind: Some(AnnounceKind::Heartbeat),
        site: site.into(),
        region: region.map(Into::into),
        pattern: pattern.into(),
        status,
        since_us: 7,
        monitors: 1,
    })
}

fn row(pattern: &str, complete: bool, since_us: u64) -> LocalMonitor {
    LocalMonitor { pattern: pattern.into(), complete, since_us, started_seq: 40 }
}

fn up(name: &str, rtt: f64) -> PeerView {
    PeerView { name: name.into(), region: None, reach: Reach::Up, rtt_ms: Some(rtt) }
}

fn starts(actions: &[PlacementAction]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            PlacementAction::Start { pattern, reason } => Some((pattern.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

fn stops(actions: &[PlacementAction]) -> Vec<(String, String, Option<u64>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            PlacementAction::Stop { pattern, reason, if_importing_since } => {
                Some((pattern.clone(), reason.clone(), *if_importing_since))
            }
            _ => None,
        })
        .collect()
}

fn kinds(actions: &[PlacementAction]) -> Vec<AnnounceKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            PlacementAction::Announce(a) => Some(a.kind),
            _ => None,
        })
        .collect()
}

fn draw(value: f64) -> impl FnMut() -> f64 {
    move || value
}

#[test]
fn no_start_is_planned_before_the_warm_up_then_the_first_fires_at_once() {
    let mut p = placement("me", None, &[("/n/", 1)]);
    for k in 0..DEAD_AFTER_INTERVALS {
        assert_eq!(p.next_tick(), T0 + I * k);
        assert!(p.tick(T0 + I * k, &[], draw(0.0)).is_empty(), "warming up at interval {k}");
    }
    // Warm at (interval + heartbeat) x DEAD_AFTER_INTERVALS exactly. A site
    // in a new region with no monitors and a draw of 0 starts at once.
    let warm = T0 + I * DEAD_AFTER_INTERVALS;
    assert_eq!(p.next_tick(), warm);
    let actions = p.tick(warm, &[], draw(0.0));
    assert_eq!(starts(&actions), [("/n/".to_string(), "0 live replicas, fewer than the policy's".to_string())]);
    assert!(p.busy("/n/"));
}

#[test]
fn the_heartbeat_interval_lengthens_the_warm_up() {
    let config = PlacementConfig {
        site: "me".into(),
        interval: I,
        heartbeat: Duration::from_millis(500),
        policies: BTreeMap::from([("/n/".to_string(), 1)]),
        ..PlacementConfig::default()
    };
    let mut p = Placement::new(config, T0);
    // Warm at 4.5 s: the evaluations at 0 to 4 s plan nothing, the one at
    // 5 s starts.
    for k in 0..=4 {
        assert!(p.tick(T0 + I * k, &[], draw(0.0)).is_empty(), "{k} s");
    }
    assert_eq!(starts(&p.tick(T0 + I * 5, &[], draw(0.0))).len(), 1);
    // A zero interval is the default one.
    let p = Placement::new(PlacementConfig::default(), T0);
    assert_eq!(p.interval(), pepper_router::INTERVAL_DEFAULT);
}

#[test]
fn a_start_waits_a_tier_of_its_region_and_load_plus_the_draw() {
    // Short of /n/ (R=2, one live in this site's region) while running a
    // monitor of /m/: tier 2 + 1, draw 0.5, so 3.5 intervals.
    let mut p = placement("me", Some("eu"), &[("/n/", 2), ("/m/", 1)]);
    let local = [row("/m/", true, 5)];
    let warm = T0 + I * DEAD_AFTER_INTERVALS;
    let mut now = T0;
    while now < warm {
        p.tick(now, &local, draw(0.5));
        now = p.next_tick();
    }
    assert_eq!(now, warm);
    p.step(now, heard("a", Some("eu"), "/n/", MonitorStatus::Complete));
    let actions = p.tick(now, &local, draw(0.5));
    let heartbeat = match &actions[..] {
        [PlacementAction::Announce(a)] => a.clone(),
        other => panic!("one heartbeat, no start yet: {other:?}"),
    };
    assert_eq!(
        (heartbeat.kind, heartbeat.pattern.as_str(), heartbeat.since_us, heartbeat.monitors),
        (AnnounceKind::Heartbeat, "/m/", Some(5), Some(1))
    );
    let due = warm + I.mul_f64(3.5);
    // Evaluations keep the plan (no second draw); the start fires at its due
    // time, between evaluations, counting again then.
    for k in 1..=3 {
        p.step(warm + I * k, heard("a", Some("eu"), "/n/", MonitorStatus::Complete));
        assert_eq!(p.next_tick(), warm + I * k);
        assert!(starts(&p.tick(warm + I * k, &local, || panic!("no second draw"))).is_empty());
    }
    assert_eq!(p.next_tick(), due);
    assert!(starts(&p.tick(due - NS, &local, draw(0.0))).is_empty());
    let actions = p.tick(due, &local, draw(0.0));
    assert_eq!(starts(&actions), [("/n/".to_string(), "1 live replicas, fewer than the policy's".to_string())]);
    assert!(kinds(&actions).is_empty(), "a start alone is not an evaluation");
}

#[test]
fn a_site_in_another_region_is_not_delayed_by_the_tier() {
    let mut p = placement("me", Some("us"), &[("/n/", 2)]);
    let warm = T0 + I * DEAD_AFTER_INTERVALS;
    for k in 0..DEAD_AFTER_INTERVALS {
        p.tick(T0 + I * k, &[], draw(0.0));
    }
    p.step(warm, heard("a", Some("eu"), "/n/", MonitorStatus::Complete));
    p.step(warm, heard("b", None, "/n/", MonitorStatus::Stopped));
    let actions = p.tick(warm, &[], draw(0.25));
    assert!(actions.is_empty());
    assert_eq!(p.next_tick(), warm + I.mul_f64(0.25));
    assert_eq!(starts(&p.tick(warm + I.mul_f64(0.25), &[], draw(0.0))).len(), 1);
}

/// A warm placement of `/n/` (R=`r`) at `me`, with `a` live and complete.
fn warm(r: usize) -> (Placement, Duration) {
    let mut p = placement("me", None, &[("/n/", r)]);
    for k in 0..DEAD_AFTER_INTERVALS {
        p.tick(T0 + I * k, &[], draw(0.0));
    }
    (p, T0 + I * DEAD_AFTER_INTERVALS)
}

#[test]
fn a_planned_start_counts_again_when_due() {
    // Restored by another site meanwhile: no start.
    let (mut p, now) = warm(1);
    p.tick(now, &[], draw(0.5));
    let due = now + I / 2;
    p.step(due - NS, heard("b", None, "/n/", MonitorStatus::Importing));
    assert!(p.tick(due, &[], draw(0.0)).is_empty());
    // The policy changed its R meanwhile: the plan was for another R.
    let (mut p, now) = warm(1);
    p.tick(now, &[], draw(0.5));
    p.step(now, PlacementInput::Policies(BTreeMap::from([("/n/".to_string(), 2)])));
    assert!(p.tick(due, &[], draw(0.0)).is_empty());
    // The next evaluation plans again, under the new R.
    assert_eq!(starts(&p.tick(now + I, &[], draw(0.0))).len(), 1);
    // A monitor runs here already (started by hand, or by a restart).
    let (mut p, now) = warm(1);
    p.tick(now, &[], draw(0.5));
    assert!(p.tick(due, &[row("/n/", false, 1)], draw(0.0)).is_empty());
    // The policy dropped the pattern.
    let (mut p, now) = warm(1);
    p.tick(now, &[], draw(0.5));
    p.step(now, PlacementInput::Policies(BTreeMap::new()));
    assert!(p.tick(due, &[], draw(0.0)).is_empty());
}

#[test]
fn a_monitor_dies_after_exactly_dead_after_intervals_of_silence() {
    let (mut p, now) = warm(1);
    let heard_at = now - I;
    p.step(heard_at, heard("a", None, "/n/", MonitorStatus::Complete));
    // Live while heard less than DEAD_AFTER_INTERVALS intervals ago.
    assert!(p.tick(now, &[], draw(0.0)).is_empty());
    assert_eq!(p.seen_monitors(now, "/n/").len(), 1);
    let dead = heard_at + I * DEAD_AFTER_INTERVALS;
    assert_eq!(p.seen_monitors(dead - NS, "/n/")[0].heard_ago, I * DEAD_AFTER_INTERVALS - NS);
    assert!(p.seen_monitors(dead, "/n/").is_empty());
    p.tick(now + I, &[], draw(0.0));
    assert_eq!(now + I * 2, dead, "the next evaluation is the first that counts it dead");
    assert_eq!(starts(&p.tick(dead, &[], draw(0.0))).len(), 1);
}

#[test]
fn this_sites_own_announcements_are_not_counted_as_another_replica() {
    let (mut p, now) = warm(1);
    p.step(now, heard("me", None, "/n/", MonitorStatus::Complete));
    assert_eq!(starts(&p.tick(now, &[], draw(0.0))).len(), 1);
}

fn start_now(p: &mut Placement, now: Duration) {
    let actions = p.tick(now, &[], draw(0.0));
    assert_eq!(starts(&actions).len(), 1, "{actions:?}");
}

fn step(p: &mut Placement, now: Duration, input: PlacementInput) -> Vec<PlacementAction> {
    p.step(now, input)
}

#[test]
fn a_backfill_holds_the_interest_waits_for_the_cut_copies_and_completes() {
    let mut p = placement("me", None, &[("/n/", 2)]);
    for k in 0..DEAD_AFTER_INTERVALS {
        p.tick(T0 + I * k, &[], draw(0.0));
    }
    let now = T0 + I * DEAD_AFTER_INTERVALS;
    p.step(now - I * 2, heard("slow", None, "/n/", MonitorStatus::Complete));
    p.step(now - I * 2, heard("a", None, "/n/", MonitorStatus::Complete));
    p.step(now - I * 2, heard("b", None, "/n/", MonitorStatus::Importing));
    // Short since the evaluation before the start? R=2 and a, slow, b live:
    // not short, so no start. b stops: short.
    assert!(starts(&p.tick(now, &[], draw(0.0))).is_empty());
    p.step(now, heard("b", None, "/n/", MonitorStatus::Stopped));
    let short_at = now + I;
    p.step(short_at - NS, heard("a", None, "/n/", MonitorStatus::Complete));
    p.step(short_at - NS, heard("slow", None, "/n/", MonitorStatus::Complete));
    p.step(short_at - NS, heard("gone", None, "/n/", MonitorStatus::Stopped));
    assert!(starts(&p.tick(short_at, &[], draw(0.0))).is_empty(), "a and slow are two");
    p.step(short_at, PlacementInput::Policies(BTreeMap::from([("/n/".to_string(), 3)])));
    let started = short_at + I;
    p.step(started - NS, heard("a", None, "/n/", MonitorStatus::Complete));
    p.step(started - NS, heard("slow", None, "/n/", MonitorStatus::Complete));
    let actions = p.tick(started, &[], draw(0.0));
    assert_eq!(starts(&actions), [("/n/".to_string(), "2 live replicas, fewer than the policy's".to_string())]);
    // Busy: its evaluations neither announce nor judge it.
    let importing = [row("/n/", false, 9)];
    assert!(p.tick(started + I, &importing, draw(0.0)).is_empty());

    let pattern = || "/n/".to_string();
    let actions = step(&mut p, started, PlacementInput::Started { pattern: pattern(), result: Ok(()) });
    assert_eq!(kinds(&actions), [AnnounceKind::Start]);
    assert_eq!(actions[1], PlacementAction::HoldInterest { pattern: pattern() });
    let PlacementAction::Announce(start) = &actions[0] else { panic!("{actions:?}") };
    assert_eq!((&start.status, start.since_us, start.monitors), (&MonitorStatus::Importing, None, None));

    // The source: live, complete, up, lowest latency; slow's rtt is higher,
    // and a peer this site does not know is left out.
    let peers = vec![up("slow", 80.0), up("a", 3.0), up("other", 0.1)];
    let held = started + Duration::from_millis(10);
    let actions = step(&mut p, held, PlacementInput::InterestHeld { pattern: pattern(), peers });
    assert_eq!(actions, [PlacementAction::WaitForCut { pattern: pattern(), source: "a".into() }]);
    let actions = step(&mut p, held, PlacementInput::CutPassed { pattern: pattern(), result: Ok(()) });
    assert_eq!(kinds(&actions), [AnnounceKind::Backfill]);
    let PlacementAction::Announce(backfill) = &actions[0] else { panic!("{actions:?}") };
    assert_eq!(backfill.detail, AnnounceDetail::Source("a".into()));
    assert_eq!(actions[1], PlacementAction::Copy { pattern: pattern(), source: "a".into() });
    // A result for another step is stale: ignored.
    assert!(step(&mut p, held, PlacementInput::CutPassed { pattern: pattern(), result: Ok(()) }).is_empty());
    let marks = vec![("a".to_string(), 12), ("b".to_string(), 3)];
    let copied = Copied { marks: marks.clone(), rows: 500 };
    let actions = step(&mut p, held, PlacementInput::Copied { pattern: pattern(), result: Ok(copied) });
    assert_eq!(actions, [PlacementAction::Complete { pattern: pattern(), source: "a".into(), marks }]);
    let done = started + Duration::from_millis(250);
    let actions = step(&mut p, done, PlacementInput::Completed { pattern: pattern(), result: Ok(4) });
    let [PlacementAction::Announce(complete)] = &actions[..] else { panic!("{actions:?}") };
    assert_eq!((complete.kind, &complete.status), (AnnounceKind::Complete, &MonitorStatus::Complete));
    let AnnounceDetail::Complete { report, short_for_ms } = &complete.detail else { panic!("{complete:?}") };
    assert_eq!((report.source.as_str(), report.rows, report.held_recorded), ("a", 500, 4));
    assert_eq!(report.elapsed_ms, 250.0);
    assert_eq!(report.rows_per_s, 2000.0);
    // Short from the evaluation that first saw it short (the policy went
    // to R=3 just before `started`) to the completion.
    assert_eq!(*short_for_ms, Some(250.0));
    assert_eq!(p.last_backfill(), Some(report));
    assert!(!p.busy("/n/"));
    // Completed: the next evaluation announces it like any monitor.
    let actions = p.tick(started + I * 2, &[row("/n/", true, 99)], draw(0.0));
    assert_eq!(kinds(&actions), [AnnounceKind::Heartbeat]);
}

#[test]
fn the_first_monitor_of_a_policy_completes_empty_but_never_while_a_replica_was_heard_of_lately() {
    // Nothing ever heard: complete at once with nothing to copy.
    let (mut p, now) = warm(1);
    start_now(&mut p, now);
    let pattern = || "/n/".to_string();
    p.step(now, PlacementInput::Started { pattern: pattern(), result: Ok(()) });
    let actions = p.step(now, PlacementInput::InterestHeld { pattern: pattern(), peers: Vec::new() });
    assert_eq!(actions, [PlacementAction::Complete { pattern: pattern(), source: String::new(), marks: Vec::new() }]);
    let actions = p.step(now, PlacementInput::Completed { pattern: pattern(), result: Ok(0) });
    let [PlacementAction::Announce(a)] = &actions[..] else { panic!("{actions:?}") };
    let AnnounceDetail::Complete { report, .. } = &a.detail else { panic!("{a:?}") };
    assert_eq!((report.rows, report.elapsed_ms, report.rows_per_s), (0, 0.0, 0.0));

    // A complete replica heard of less than LOST_AFTER_INTERVALS intervals
    // ago, though dead now: the backfill fails and stops the monitor.
    let (mut p, now) = warm(1);
    let heard_at = now - I * DEAD_AFTER_INTERVALS;
    p.step(heard_at, heard("a", None, "/n/", MonitorStatus::Complete));
    start_now(&mut p, now);
    p.step(now, PlacementInput::Started { pattern: pattern(), result: Ok(()) });
    let lost = heard_at + I * LOST_AFTER_INTERVALS;
    let actions = p.step(lost - NS, PlacementInput::InterestHeld { pattern: pattern(), peers: vec![up("a", 1.0)] });
    let error = "a recorded /n/ lately but is not live now; waiting for a replica";
    assert_eq!(stops(&actions), [(pattern(), format!("backfill failed: {error}"), None)]);
    let actions = p.step(lost, PlacementInput::Stopped { pattern: pattern(), result: StopResult::Stopped });
    assert_eq!(actions[0], PlacementAction::DropInterest { pattern: pattern() });
    let PlacementAction::Announce(failed) = &actions[1] else { panic!("{actions:?}") };
    assert_eq!((failed.kind, &failed.status), (AnnounceKind::Failed, &MonitorStatus::Stopped));
    assert_eq!(failed.detail, AnnounceDetail::Error(error.into()));
    assert!(!p.busy("/n/"));

    // Heard exactly LOST_AFTER_INTERVALS intervals ago: lost, start empty.
    let (mut p, now) = warm(1);
    p.step(heard_at, heard("a", None, "/n/", MonitorStatus::Complete));
    start_now(&mut p, now);
    p.step(now, PlacementInput::Started { pattern: pattern(), result: Ok(()) });
    let actions = p.step(lost, PlacementInput::InterestHeld { pattern: pattern(), peers: vec![up("a", 1.0)] });
    assert_eq!(actions, [PlacementAction::Complete { pattern: pattern(), source: String::new(), marks: Vec::new() }]);
}

#[test]
fn a_live_replica_that_is_not_up_fails_the_backfill_and_a_failed_stop_leaves_it_importing() {
    let (mut p, now) = warm(3);
    for site in ["c", "a"] {
        p.step(now, heard(site, None, "/n/", MonitorStatus::Complete));
    }
    start_now(&mut p, now);
    let pattern = || "/n/".to_string();
    p.step(now, PlacementInput::Started { pattern: pattern(), result: Ok(()) });
    let mut a = up("a", 1.0);
    a.reach = Reach::Suspect;
    let mut c = up("c", 1.0);
    c.reach = Reach::Down;
    let actions = p.step(now, PlacementInput::InterestHeld { pattern: pattern(), peers: vec![c, a] });
    let error = "no complete replica is reachable right now (announced: a, c)";
    assert_eq!(stops(&actions), [(pattern(), format!("backfill failed: {error}"), None)]);
    // The stop of a failed backfill finds nothing: no announcement, and the
    // next evaluation stops the importing row as interrupted.
    assert!(p.step(now, PlacementInput::Stopped { pattern: pattern(), result: StopResult::NotFound }).is_empty());
    let actions = p.tick(now + I, &[row("/n/", false, 1)], draw(0.0));
    assert_eq!(kinds(&actions), [AnnounceKind::Heartbeat]);
    assert_eq!(stops(&actions), [(pattern(), "its backfill was interrupted".to_string(), Some(40))]);
    // The store says the row is another import by now: nothing to say.
    assert!(p.step(now + I, PlacementInput::Stopped { pattern: pattern(), result: StopResult::NotSame }).is_empty());

    // Each later step's failure stops the monitor the same way.
    for failing in 0..3 {
        let (mut p, now) = warm(2);
        p.step(now, heard("a", None, "/n/", MonitorStatus::Complete));
        start_now(&mut p, now);
        let inputs = [
            PlacementInput::Started { pattern: pattern(), result: Ok(()) },
            PlacementInput::InterestHeld { pattern: pattern(), peers: vec![up("a", 1.0)] },
            PlacementInput::CutPassed { pattern: pattern(), result: Ok(()) },
            PlacementInput::Copied { pattern: pattern(), result: Ok(Copied { marks: Vec::new(), rows: 1 }) },
            PlacementInput::Completed { pattern: pattern(), result: Ok(0) },
        ];
        let failure = match failing {
            0 => PlacementInput::CutPassed { pattern: pattern(), result: Err("cut".into()) },
            1 => PlacementInput::Copied { pattern: pattern(), result: Err("copy".into()) },
            _ => PlacementInput::Completed { pattern: pattern(), result: Err("complete".into()) },
        };
        let upto = [2, 3, 4][failing];
        for input in inputs.into_iter().take(upto) {
            p.step(now, input);
        }
        let actions = p.step(now, failure);
        assert_eq!(stops(&actions).len(), 1, "{failing}: {actions:?}");
        assert!(stops(&actions)[0].1.starts_with("backfill failed: "));
        let actions = p.step(now, PlacementInput::Stopped { pattern: pattern(), result: StopResult::Stopped });
        assert_eq!(kinds(&actions), [AnnounceKind::Failed]);
    }

    // A start the store refused leaves nothing in flight and says nothing.
    let (mut p, now) = warm(1);
    start_now(&mut p, now);
    let refused = PlacementInput::Started { pattern: pattern(), result: Err("conflict".into()) };
    assert!(p.step(now, refused).is_empty());
    assert!(!p.busy("/n/"));
    // So does an action whose task will never report.
    let (mut p, now) = warm(1);
    start_now(&mut p, now);
    p.step(now, PlacementInput::Started { pattern: pattern(), result: Ok(()) });
    assert!(p.step(now, PlacementInput::Abandoned { pattern: pattern() }).is_empty());
    assert!(!p.busy("/n/"));
    let held = PlacementInput::InterestHeld { pattern: pattern(), peers: Vec::new() };
    assert!(p.step(now, held).is_empty(), "a late result of an abandoned task is ignored");
}

/// The victim decides on the second evaluation in a row that sees the
/// surplus, and stops once it hears, after deciding, enough other complete
/// replicas to leave R: at once when the announcement comes, or at the
/// next evaluation.
#[test]
fn a_surplus_stops_the_rules_victim_after_two_evaluations_in_a_row() {
    // R=1, this site and b complete in one region: this site completed last.
    let (mut p, now) = warm(1);
    let mine = [row("/n/", true, 100)];
    let said = |p: &mut Placement, at: Duration| {
        p.step(
            at,
            PlacementInput::Heard(Heard {
                kind: Some(AnnounceKind::Heartbeat),
                site: "b".into(),
                region: None,
                pattern: "/n/".into(),
                status: MonitorStatus::Complete,
                since_us: 50,
                monitors: 1,
            }),
        )
    };
    said(&mut p, now);
    assert!(stops(&p.tick(now, &mine, draw(0.0))).is_empty(), "the first evaluation only counts");
    said(&mut p, now + I);
    let actions = p.tick(now + I, &mine, draw(0.0));
    assert!(stops(&actions).is_empty(), "the second decides, and waits for b to prove alive: {actions:?}");
    assert_eq!(kinds(&actions), [AnnounceKind::Heartbeat], "announced as this evaluation began");
    let reason = "2 complete replicas, more than 1: this site is the one the rule stops".to_string();
    assert_eq!(stops(&said(&mut p, now + I + I / 2)), [("/n/".to_string(), reason.clone(), None)], "b heard");
    let actions = p.step(now + I, PlacementInput::Stopped { pattern: "/n/".into(), result: StopResult::Stopped });
    let PlacementAction::Announce(stop) = &actions[1] else { panic!("{actions:?}") };
    assert_eq!((stop.kind, &stop.detail), (AnnounceKind::Stop, &AnnounceDetail::Reason(reason)));

    // The count back at R in between starts the count over.
    let (mut p, now) = warm(1);
    said(&mut p, now);
    p.tick(now, &mine, draw(0.0));
    p.step(now + I, heard("b", None, "/n/", MonitorStatus::Stopped));
    assert!(stops(&p.tick(now + I, &mine, draw(0.0))).is_empty());
    said(&mut p, now + I * 2);
    assert!(stops(&p.tick(now + I * 2, &mine, draw(0.0))).is_empty());
    said(&mut p, now + I * 3);
    assert!(stops(&p.tick(now + I * 3, &mine, draw(0.0))).is_empty(), "decided");
    assert_eq!(stops(&said(&mut p, now + I * 4)).len(), 1, "b heard after the decision");
    assert!(stops(&p.tick(now + I * 4, &mine, draw(0.0))).is_empty(), "the stop is in flight");

    // Importing monitors are not counted as surplus, and another victim
    // stops on its own: this site completed first.
    let (mut p, now) = warm(1);
    let early = [row("/n/", true, 10)];
    p.step(now, heard("c", None, "/n/", MonitorStatus::Importing));
    for k in 0..4 {
        said(&mut p, now + I * k);
        assert!(stops(&p.tick(now + I * k, &early, draw(0.0))).is_empty());
    }
}

#[test]
fn monitors_outside_the_policy_or_cut_off_while_importing_are_stopped() {
    let mut p = placement("me", None, &[("/n/", 1)]);
    let local = [row("/gone/", true, 1), row("/n/", false, 2)];
    let actions = p.tick(T0, &local, draw(0.0));
    assert_eq!(kinds(&actions), [AnnounceKind::Heartbeat, AnnounceKind::Heartbeat]);
    let PlacementAction::Announce(first) = &actions[0] else { panic!("{actions:?}") };
    assert_eq!((first.pattern.as_str(), first.monitors), ("/gone/", Some(2)));
    assert_eq!(
        stops(&actions),
        [
            ("/gone/".to_string(), "no recording policy names it any more".to_string(), None),
            ("/n/".to_string(), "its backfill was interrupted".to_string(), Some(40)),
        ]
    );
    // In flight: neither announced nor stopped again.
    assert!(p.tick(T0 + I, &local, draw(0.0)).is_empty());
    let actions = p.step(T0 + I, PlacementInput::Stopped { pattern: "/gone/".into(), result: StopResult::NotFound });
    assert_eq!(actions[0], PlacementAction::DropInterest { pattern: "/gone/".into() });
    assert_eq!(kinds(&actions), [AnnounceKind::Stop]);
    let failed = StopResult::Failed("disk".into());
    assert!(p.step(T0 + I, PlacementInput::Stopped { pattern: "/n/".into(), result: failed }).is_empty());
    assert!(!p.busy("/n/") && !p.busy("/gone/"));
}

#[test]
fn queries_ask_the_live_complete_recorders_in_order_of_preference() {
    let mut p = placement("me", Some("eu"), &[("/n/", 2)]);
    for (site, status) in
        [("a", MonitorStatus::Complete), ("b", MonitorStatus::Complete), ("c", MonitorStatus::Importing)]
    {
        p.step(T0, heard(site, None, "/n/", status));
    }
    let mut b = up("b", 0.0);
    b.reach = Reach::Suspect;
    let peers = [up("a", 0.0), b, up("c", 0.0)];
    assert_eq!(p.covering("/n/h1/x/"), Some("/n/"));
    assert_eq!(p.recorders(T0, "/m/", true, &peers), None);
    let (pattern, sites) = p.recorders(T0, "/n/h1/", true, &peers).expect("covered");
    assert_eq!((pattern.as_str(), sites), ("/n/", vec!["a".to_string(), "me".to_string(), "b".to_string()]));
    let (_, sites) = p.recorders(T0, "/n/h1/", false, &peers[..1]).expect("covered");
    assert_eq!(sites, ["a"], "a recorder the federation does not know is left out");
    let (_, sites) = p.recorders(T0 + I * DEAD_AFTER_INTERVALS, "/n/", false, &peers).expect("covered");
    assert!(sites.is_empty());
}

#[test]
fn announcement_kinds_and_states_read_back_from_their_names() {
    for kind in [
        AnnounceKind::Heartbeat,
        AnnounceKind::Start,
        AnnounceKind::Backfill,
        AnnounceKind::Complete,
        AnnounceKind::Stop,
        AnnounceKind::Failed,
    ] {
        assert_eq!(AnnounceKind::parse(kind.event_type()), Some(kind));
    }
    assert_eq!(AnnounceKind::parse("pepper.monitor.other"), None);
    for status in [MonitorStatus::Importing, MonitorStatus::Complete, MonitorStatus::Stopped] {
        assert_eq!(MonitorStatus::parse(status.name()), status);
    }
    assert_eq!(MonitorStatus::parse("paused").name(), "paused");
}

/// The victim of a surplus stops only after hearing, after its decision,
/// enough other complete replicas to leave R. A replica killed right after
/// it announced still counts as live for `DEAD_AFTER_INTERVALS` intervals,
/// but it is never heard again, so the victim keeps its rows (the race of
/// `tests/sim/stop_rule_race.sim`).
#[test]
fn a_replica_that_has_gone_silent_never_confirms_a_surplus_stop() {
    let (mut p, now) = warm(1);
    let mine = [row("/n/", true, 200)];
    // b completed first, announced once, and was killed right after.
    p.step(now, heard("b", None, "/n/", MonitorStatus::Complete));
    for k in 0..=DEAD_AFTER_INTERVALS + 1 {
        let actions = p.tick(now + I * k, &mine, draw(0.0));
        assert!(stops(&actions).is_empty(), "tick {k}: {actions:?}");
    }
}
