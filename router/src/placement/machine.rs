//! The supervisor as a state machine: evaluations, planned starts, the stop
//! rule and each monitor's start-to-completion protocol.
//!
//! Per pattern the machine keeps a plan (a start waiting for its delay,
//! the surplus count) and at most one task in flight (a start and its
//! backfill, or a stop). A pattern with a task in flight is busy: the
//! evaluation neither announces nor judges it, since the task announces
//! itself when it is done. A task advances only on the result of the action
//! it is waiting for; any other result for its pattern is stale and ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::heard::{AnnounceKind, Heard, MonitorStatus};
use super::rules::{by_preference, start_delay, victim, Candidate, PeerView, Reach};
use super::seen::{Entry, Seen};
use super::{DEAD_AFTER_INTERVALS, INTERVAL_DEFAULT, SURPLUS_EVALUATIONS};

/// A monitor running on this site (its row is not stopped), as the store
/// says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMonitor {
    /// The recording pattern.
    pub pattern: String,
    /// Complete; otherwise importing.
    pub complete: bool,
    /// When it reached its state, microseconds since the Unix epoch.
    pub since_us: u64,
    /// The sequence number of the record that started it.
    pub started_seq: u64,
}

/// A site's supervisor settings.
#[derive(Clone, Debug, Default)]
pub struct PlacementConfig {
    /// This site's name.
    pub site: String,
    /// This site's region.
    pub region: Option<String>,
    /// Time between evaluations and announcements ([`INTERVAL_DEFAULT`]
    /// when zero).
    pub interval: Duration,
    /// The federation's heartbeat interval; zero when federation is off.
    pub heartbeat: Duration,
    /// The recording policy: pattern and replication factor, checked.
    pub policies: BTreeMap<String, usize>,
}

/// What a backfill's copy brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copied {
    /// Per origin site, the highest origin sequence number the copy holds.
    pub marks: Vec<(String, u64)>,
    /// Rows copied.
    pub rows: u64,
}

/// How a [`PlacementAction::Stop`] went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopResult {
    /// The monitor stopped.
    Stopped,
    /// The store has no monitor of the pattern.
    NotFound,
    /// The stop was guarded and the pattern's monitor is no longer the
    /// importing one it named: nothing was done.
    NotSame,
    /// The store refused or failed.
    Failed(String),
}

/// What the driver tells the machine.
#[derive(Clone, Debug, PartialEq)]
pub enum PlacementInput {
    /// An announcement read from this site's log (its own or a peer's).
    /// A complete replica heard may confirm this site's surplus stop: the
    /// step then returns the [`PlacementAction::Stop`].
    Heard(Heard),
    /// The recording policy now, checked and kept by the driver.
    Policies(BTreeMap<String, usize>),
    /// The result of [`PlacementAction::Start`].
    Started {
        /// The pattern.
        pattern: String,
        /// `Err` with the store's message if nothing started.
        result: Result<(), String>,
    },
    /// [`PlacementAction::HoldInterest`] is done: the interest is held and
    /// pushed to the peers that are up.
    InterestHeld {
        /// The pattern.
        pattern: String,
        /// The federation's peers as they are now (this site not among them).
        peers: Vec<PeerView>,
    },
    /// The result of [`PlacementAction::WaitForCut`].
    CutPassed {
        /// The pattern.
        pattern: String,
        /// `Err` with what did not pass in time.
        result: Result<(), String>,
    },
    /// The result of [`PlacementAction::Copy`].
    Copied {
        /// The pattern.
        pattern: String,
        /// The marks and rows, or what went wrong.
        result: Result<Copied, String>,
    },
    /// The result of [`PlacementAction::Complete`].
    Completed {
        /// The pattern.
        pattern: String,
        /// The held updates the completion recorded, or the store's message.
        result: Result<u64, String>,
    },
    /// The result of [`PlacementAction::Stop`].
    Stopped {
        /// The pattern.
        pattern: String,
        /// How it went.
        result: StopResult,
    },
    /// The action in flight for the pattern will never report (the task
    /// carrying it out panicked): the pattern is no longer busy, and nothing
    /// else is done. A monitor it left importing is stopped as interrupted
    /// by a later evaluation.
    Abandoned {
        /// The pattern.
        pattern: String,
    },
}

/// What the machine asks the driver to do. Actions of one pattern are
/// carried out in the order given. Those that say "report" are answered
/// with the named [`PlacementInput`] once done, and are the last of their
/// pattern in one answer; the others need no answer.
#[derive(Clone, Debug, PartialEq)]
pub enum PlacementAction {
    /// Publish a monitor event on the pattern's announcement channel.
    Announce(Announce),
    /// Append the monitor's start (importing; the subtree's rows cleared);
    /// report [`PlacementInput::Started`].
    Start {
        /// The pattern.
        pattern: String,
        /// Why, for the monitor record.
        reason: String,
    },
    /// Hold a standing interest in the subtree and push it to the peers that
    /// are up; report [`PlacementInput::InterestHeld`].
    HoldInterest {
        /// The pattern.
        pattern: String,
    },
    /// Wait, at most [`super::CUT_WAIT_MAX`], until every update `source`
    /// will not have reaches this site directly ([`super::Cut`] decides);
    /// report [`PlacementInput::CutPassed`].
    WaitForCut {
        /// The pattern.
        pattern: String,
        /// The replica to copy from.
        source: String,
    },
    /// Stream `source`'s rows of the subtree into tuple imports; report
    /// [`PlacementInput::Copied`].
    Copy {
        /// The pattern.
        pattern: String,
        /// The replica to copy from.
        source: String,
    },
    /// Append the completion with `marks` (the held updates above them are
    /// recorded in the same batch) and index the subtree's expiries; report
    /// [`PlacementInput::Completed`].
    Complete {
        /// The pattern.
        pattern: String,
        /// The replica copied from; empty when nothing was copied.
        source: String,
        /// Per origin, the highest origin seq the copy holds.
        marks: Vec<(String, u64)>,
    },
    /// Append the monitor's stop (its rows removed); report
    /// [`PlacementInput::Stopped`].
    Stop {
        /// The pattern.
        pattern: String,
        /// Why, for the monitor record and the announcement.
        reason: String,
        /// Stop only if the pattern's monitor is still importing and was
        /// started by the record of this seq; otherwise report
        /// [`StopResult::NotSame`].
        if_importing_since: Option<u64>,
    },
    /// Drop the standing interest in the subtree.
    DropInterest {
        /// The pattern.
        pattern: String,
    },
}

/// A monitor event to publish, from this site with its region.
#[derive(Clone, Debug, PartialEq)]
pub struct Announce {
    /// Which event.
    pub kind: AnnounceKind,
    /// The pattern.
    pub pattern: String,
    /// The monitor's state.
    pub status: MonitorStatus,
    /// When it reached the state; `None`: the wall clock when published.
    pub since_us: Option<u64>,
    /// Monitors this site runs; `None`: as many as run when published.
    pub monitors: Option<usize>,
    /// What the event adds to the announcement.
    pub detail: AnnounceDetail,
}

/// What a monitor event adds to the announcement's fields.
#[derive(Clone, Debug, PartialEq)]
pub enum AnnounceDetail {
    /// Nothing.
    None,
    /// `source`: the replica a backfill copies from.
    Source(String),
    /// The completed backfill's figures, and `short_for_ms`: how long the
    /// pattern was short, from the first evaluation here that saw it short.
    Complete {
        /// The backfill.
        report: BackfillReport,
        /// Milliseconds the pattern was short, if this site saw it short.
        short_for_ms: Option<f64>,
    },
    /// `reason`: why the monitor stopped.
    Reason(String),
    /// `error`: why the backfill failed.
    Error(String),
}

/// A completed backfill, as `GET /v1/recording` shows the last one.
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillReport {
    /// The pattern.
    pub pattern: String,
    /// The replica copied from; empty when nothing was copied.
    pub source: String,
    /// Rows copied.
    pub rows: u64,
    /// From the start to the completion, in milliseconds.
    pub elapsed_ms: f64,
    /// Rows copied per second.
    pub rows_per_s: f64,
    /// Held updates the completion recorded.
    pub held_recorded: u64,
}

/// A live monitor another site announced, for `GET /v1/recording`.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenMonitor {
    /// The site.
    pub site: String,
    /// Its region.
    pub region: Option<String>,
    /// The announced state.
    pub status: MonitorStatus,
    /// How long ago it was heard.
    pub heard_ago: Duration,
}

/// Per pattern: whether a start waits for its delay, the surplus count,
/// and the planned starts not yet due.
#[derive(Debug, Default)]
struct Plan {
    start_planned: bool,
    surplus: u32,
    /// When this site, the rule's victim, decided to stop its surplus
    /// monitor. It stops only once it has heard, after that, enough other
    /// complete replicas to leave R: proof they were alive after the
    /// decision, not just within the last [`DEAD_AFTER_INTERVALS`].
    confirm_after: Option<Duration>,
    /// This site's complete monitor as the last evaluation saw it, for a
    /// stop confirmed by an announcement between evaluations.
    mine: Option<Candidate>,
    /// Due time and the replication factor the plan was made for. A plan
    /// superseded before it is due still fires; it counts again then.
    due: Vec<(Duration, usize)>,
}

/// The complete monitors among `others`, as the stop rule weighs them.
fn complete_candidates(others: &[(&str, &Entry)]) -> Vec<Candidate> {
    others
        .iter()
        .filter(|(_, e)| e.status == MonitorStatus::Complete)
        .map(|(site, e)| Candidate {
            site: site.to_string(),
            region: e.region.clone(),
            monitors: e.monitors,
            since_us: e.since_us,
        })
        .collect()
}

/// How many of `others` are complete and were heard after `after`.
fn complete_heard_after(others: &[(&str, &Entry)], after: Duration) -> usize {
    others.iter().filter(|(_, e)| e.status == MonitorStatus::Complete && e.last > after).count()
}

fn surplus_reason(complete: usize, replicas: usize) -> String {
    format!("{complete} complete replicas, more than {replicas}: this site is the one the rule stops")
}

/// A task in flight for a pattern, and what it waits for.
#[derive(Debug)]
enum Task {
    Starting {
        started: Duration,
    },
    Holding {
        started: Duration,
    },
    Cutting {
        started: Duration,
        source: String,
    },
    Copying {
        started: Duration,
        source: String,
    },
    Completing {
        started: Duration,
        source: String,
        rows: u64,
    },
    /// `failed`: the error of the backfill this stop ends, if it does.
    Stopping {
        reason: String,
        failed: Option<String>,
    },
}

/// A site's supervisor: see the module header.
#[derive(Debug)]
pub struct Placement {
    site: String,
    region: Option<String>,
    interval: Duration,
    policies: BTreeMap<String, usize>,
    seen: Seen,
    plans: BTreeMap<String, Plan>,
    tasks: BTreeMap<String, Task>,
    /// Per pattern, when an evaluation here first saw it short.
    short_since: BTreeMap<String, Duration>,
    last_backfill: Option<BackfillReport>,
    /// No start is planned before this: the others' announcements reach
    /// this site only once its peers hold its interest (its first
    /// heartbeats), and a monitor counts as dead only after
    /// [`DEAD_AFTER_INTERVALS`] silent intervals. A site that planned at
    /// once would see no monitor anywhere and start an empty one.
    warm_until: Duration,
    next_evaluation: Duration,
}

impl Placement {
    /// A supervisor starting at `now`: its first evaluation is due at once.
    pub fn new(config: PlacementConfig, now: Duration) -> Placement {
        let interval = if config.interval.is_zero() { INTERVAL_DEFAULT } else { config.interval };
        Placement {
            site: config.site,
            region: config.region,
            interval,
            policies: config.policies,
            seen: Seen::default(),
            plans: BTreeMap::new(),
            tasks: BTreeMap::new(),
            short_since: BTreeMap::new(),
            last_backfill: None,
            warm_until: now + (interval + config.heartbeat) * DEAD_AFTER_INTERVALS,
            next_evaluation: now,
        }
    }

    /// The interval between evaluations.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// This site's name.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The recording policy.
    pub fn policies(&self) -> &BTreeMap<String, usize> {
        &self.policies
    }

    /// The policy pattern covering `channel`, if any.
    pub fn covering<'c>(&self, channel: &'c str) -> Option<&'c str> {
        crate::channel::subtrees(channel).find(|p| self.policies.contains_key(*p))
    }

    /// The last backfill that completed here.
    pub fn last_backfill(&self) -> Option<&BackfillReport> {
        self.last_backfill.as_ref()
    }

    /// Whether a start or stop of `pattern` is in flight.
    pub fn busy(&self, pattern: &str) -> bool {
        self.tasks.contains_key(pattern)
    }

    /// When [`Placement::tick`] is due next: the next evaluation, or a
    /// planned start's delay ending before it.
    pub fn next_tick(&self) -> Duration {
        let due = self.plans.values().flat_map(|p| p.due.iter().map(|(at, _)| *at)).min();
        due.map_or(self.next_evaluation, |d| d.min(self.next_evaluation))
    }

    /// Live monitors of `pattern` on other sites at `now`, by site name.
    pub fn seen_monitors(&self, now: Duration, pattern: &str) -> Vec<SeenMonitor> {
        self.seen
            .live(now, pattern, &self.site, self.interval)
            .into_iter()
            .map(|(site, e)| SeenMonitor {
                site: site.to_string(),
                region: e.region.clone(),
                status: e.status.clone(),
                heard_ago: now.saturating_sub(e.last),
            })
            .collect()
    }

    /// The sites a query of `channel` should ask: the live complete
    /// monitors of the policy pattern covering it, this site among them if
    /// `complete_here` (as up, with a latency of zero), in order of
    /// preference, with the pattern. `None` when no policy covers `channel`.
    /// A complete monitor on a site `peers` does not list is left out.
    pub fn recorders(
        &self,
        now: Duration,
        channel: &str,
        complete_here: bool,
        peers: &[PeerView],
    ) -> Option<(String, Vec<String>)> {
        let pattern = self.covering(channel)?.to_string();
        let mut sites = self.complete_peers(now, &pattern, peers);
        if complete_here {
            sites.push(PeerView::this_site(&self.site, self.region.as_deref()));
        }
        Some((pattern, by_preference(sites).into_iter().map(|p| p.name).collect()))
    }

    /// Takes one input at `now` and returns what to do.
    pub fn step(&mut self, now: Duration, input: PlacementInput) -> Vec<PlacementAction> {
        match input {
            PlacementInput::Heard(h) => {
                let confirms = (h.status == MonitorStatus::Complete && !h.ends()).then(|| h.pattern.clone());
                self.seen.heard(now, h);
                match confirms {
                    Some(pattern) => self.confirm_stop(now, &pattern),
                    None => Vec::new(),
                }
            }
            PlacementInput::Policies(policies) => {
                self.policies = policies;
                Vec::new()
            }
            PlacementInput::Started { pattern, result } => self.started(pattern, result),
            PlacementInput::InterestHeld { pattern, peers } => self.interest_held(now, pattern, &peers),
            PlacementInput::CutPassed { pattern, result } => self.cut_passed(pattern, result),
            PlacementInput::Copied { pattern, result } => self.copied(pattern, result),
            PlacementInput::Completed { pattern, result } => self.completed(now, pattern, result),
            PlacementInput::Stopped { pattern, result } => self.stopped(pattern, result),
            PlacementInput::Abandoned { pattern } => {
                self.tasks.remove(&pattern);
                Vec::new()
            }
        }
    }

    /// Runs what is due at `now`: the evaluation (announce every running
    /// monitor, then start or stop where the count is off), then the planned
    /// starts whose delay is over. `local` is this site's running monitors
    /// as the store has them now; `draw` gives numbers uniform in [0, 1),
    /// one per start planned.
    pub fn tick(
        &mut self,
        now: Duration,
        local: &[LocalMonitor],
        mut draw: impl FnMut() -> f64,
    ) -> Vec<PlacementAction> {
        let mut out = Vec::new();
        if now >= self.next_evaluation {
            self.evaluate(now, local, &mut draw, &mut out);
            self.next_evaluation = now + self.interval;
        }
        self.fire_due(now, local, &mut out);
        out
    }

    fn evaluate(
        &mut self,
        now: Duration,
        local: &[LocalMonitor],
        draw: &mut impl FnMut() -> f64,
        out: &mut Vec<PlacementAction>,
    ) {
        // Busy as the evaluation begins: stops it starts below do not hide
        // their patterns from the count.
        let busy: BTreeSet<String> = self.tasks.keys().cloned().collect();
        let running: BTreeMap<&str, &LocalMonitor> = local.iter().map(|m| (m.pattern.as_str(), m)).collect();
        // A start or stop in flight announces itself when it is done.
        for m in running.values().filter(|m| !busy.contains(&m.pattern)) {
            out.push(PlacementAction::Announce(Announce {
                kind: AnnounceKind::Heartbeat,
                pattern: m.pattern.clone(),
                status: if m.complete { MonitorStatus::Complete } else { MonitorStatus::Importing },
                since_us: Some(m.since_us),
                monitors: Some(running.len()),
                detail: AnnounceDetail::None,
            }));
        }
        for (pattern, m) in &running {
            if busy.contains(*pattern) {
                continue;
            }
            if !self.policies.contains_key(*pattern) {
                self.stop(pattern, "no recording policy names it any more".into(), None, out);
            } else if !m.complete {
                // No backfill in flight here: a restart cut it off.
                self.stop(pattern, "its backfill was interrupted".into(), Some(m.started_seq), out);
            }
        }
        let warm = now >= self.warm_until;
        let policies: Vec<(String, usize)> = self.policies.iter().map(|(p, r)| (p.clone(), *r)).collect();
        for (pattern, replicas) in policies {
            if busy.contains(&pattern) {
                continue;
            }
            let others = self.seen.live(now, &pattern, &self.site, self.interval);
            let mine = running.get(pattern.as_str()).copied();
            let live = others.len() + usize::from(mine.is_some());
            if live < replicas {
                self.short_since.entry(pattern.clone()).or_insert(now);
            } else {
                self.short_since.remove(&pattern);
            }
            let plan = self.plans.entry(pattern.clone()).or_default();
            if mine.is_none() {
                plan.surplus = 0;
                plan.confirm_after = None;
                plan.mine = None;
                if live >= replicas || !warm {
                    plan.start_planned = false;
                    continue;
                }
                if !plan.start_planned {
                    let region_has = others.iter().any(|(_, e)| e.region.is_some() && e.region == self.region);
                    let delay = start_delay(self.interval, region_has, running.len(), draw());
                    plan.start_planned = true;
                    plan.due.push((now + delay, replicas));
                }
                continue;
            }
            plan.start_planned = false;
            let Some(row) = mine.filter(|m| m.complete) else {
                plan.confirm_after = None;
                plan.mine = None;
                continue;
            };
            let mut complete = complete_candidates(&others);
            let me = Candidate {
                site: self.site.clone(),
                region: self.region.clone(),
                monitors: running.len(),
                since_us: row.since_us,
            };
            plan.mine = Some(me.clone());
            complete.push(me);
            if complete.len() <= replicas {
                plan.surplus = 0;
                plan.confirm_after = None;
                continue;
            }
            plan.surplus += 1;
            if plan.surplus < SURPLUS_EVALUATIONS || victim(&complete).is_none_or(|v| v != self.site) {
                plan.confirm_after = None;
                continue;
            }
            // The victim: decide now, stop once the others prove alive.
            let Some(after) = plan.confirm_after else {
                plan.confirm_after = Some(now);
                continue;
            };
            if complete_heard_after(&others, after) >= replicas {
                let reason = surplus_reason(complete.len(), replicas);
                self.stop_surplus(&pattern, reason, out);
            }
        }
    }

    /// A complete monitor of `pattern` was just heard: if this site is the
    /// surplus' victim waiting for proof that the others live, stop now
    /// when it has it (rather than at the next evaluation, which would
    /// leave an interval for a confirmed replica to die unnoticed).
    fn confirm_stop(&mut self, now: Duration, pattern: &str) -> Vec<PlacementAction> {
        let mut out = Vec::new();
        let Some(&replicas) = self.policies.get(pattern) else { return out };
        let Some(plan) = self.plans.get(pattern) else { return out };
        let (Some(after), Some(mine)) = (plan.confirm_after, plan.mine.clone()) else { return out };
        if self.busy(pattern) {
            return out;
        }
        let others = self.seen.live(now, pattern, &self.site, self.interval);
        let mut complete = complete_candidates(&others);
        let confirmed = complete_heard_after(&others, after);
        complete.push(mine);
        if complete.len() > replicas && victim(&complete).is_some_and(|v| v == self.site) && confirmed >= replicas {
            let reason = surplus_reason(complete.len(), replicas);
            self.stop_surplus(pattern, reason, &mut out);
        }
        out
    }

    fn stop_surplus(&mut self, pattern: &str, reason: String, out: &mut Vec<PlacementAction>) {
        if let Some(plan) = self.plans.get_mut(pattern) {
            plan.surplus = 0;
            plan.confirm_after = None;
        }
        self.stop(pattern, reason, None, out);
    }

    /// Planned starts whose delay is over: each starts a monitor if the
    /// pattern is still short under the same policy and none runs here.
    fn fire_due(&mut self, now: Duration, local: &[LocalMonitor], out: &mut Vec<PlacementAction>) {
        let mut due: Vec<(Duration, String, usize)> = Vec::new();
        for (pattern, plan) in &mut self.plans {
            plan.due.retain(|&(at, replicas)| {
                let fire = at <= now;
                if fire {
                    due.push((at, pattern.clone(), replicas));
                }
                !fire
            });
        }
        due.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, pattern, replicas) in due {
            if let Some(plan) = self.plans.get_mut(&pattern) {
                plan.start_planned = false;
            }
            if self.policies.get(&pattern) != Some(&replicas) || local.iter().any(|m| m.pattern == pattern) {
                continue;
            }
            let live = self.seen.live(now, &pattern, &self.site, self.interval).len();
            if live < replicas && !self.tasks.contains_key(&pattern) {
                self.tasks.insert(pattern.clone(), Task::Starting { started: now });
                let reason = format!("{live} live replicas, fewer than the policy's");
                out.push(PlacementAction::Start { pattern, reason });
            }
        }
    }

    /// Stops this site's monitor of `pattern` unless a task is in flight.
    fn stop(&mut self, pattern: &str, reason: String, guard: Option<u64>, out: &mut Vec<PlacementAction>) {
        if self.tasks.contains_key(pattern) {
            return;
        }
        self.tasks.insert(pattern.to_string(), Task::Stopping { reason: reason.clone(), failed: None });
        out.push(PlacementAction::Stop { pattern: pattern.to_string(), reason, if_importing_since: guard });
    }

    /// A backfill failed: its monitor stops, and says so once stopped.
    fn fail(&mut self, pattern: String, error: String) -> Vec<PlacementAction> {
        let reason = format!("backfill failed: {error}");
        self.tasks.insert(pattern.clone(), Task::Stopping { reason: reason.clone(), failed: Some(error) });
        vec![PlacementAction::Stop { pattern, reason, if_importing_since: None }]
    }

    fn started(&mut self, pattern: String, result: Result<(), String>) -> Vec<PlacementAction> {
        let Some(&Task::Starting { started }) = self.tasks.get(&pattern) else { return Vec::new() };
        if result.is_err() {
            // Nothing started: whatever is there is left alone.
            self.tasks.remove(&pattern);
            return Vec::new();
        }
        self.tasks.insert(pattern.clone(), Task::Holding { started });
        vec![
            announce(AnnounceKind::Start, &pattern, MonitorStatus::Importing, AnnounceDetail::None),
            // Origins forward the subtree here from now on (held updates).
            PlacementAction::HoldInterest { pattern },
        ]
    }

    fn interest_held(&mut self, now: Duration, pattern: String, peers: &[PeerView]) -> Vec<PlacementAction> {
        let Some(&Task::Holding { started }) = self.tasks.get(&pattern) else { return Vec::new() };
        match self.choose_source(now, &pattern, peers) {
            Err(e) => self.fail(pattern, e),
            Ok(None) => {
                let source = String::new();
                self.tasks.insert(pattern.clone(), Task::Completing { started, source: source.clone(), rows: 0 });
                vec![PlacementAction::Complete { pattern, source, marks: Vec::new() }]
            }
            Ok(Some(source)) => {
                self.tasks.insert(pattern.clone(), Task::Cutting { started, source: source.clone() });
                vec![PlacementAction::WaitForCut { pattern, source }]
            }
        }
    }

    fn cut_passed(&mut self, pattern: String, result: Result<(), String>) -> Vec<PlacementAction> {
        let Some(Task::Cutting { started, source }) = self.tasks.get(&pattern) else { return Vec::new() };
        let (started, source) = (*started, source.clone());
        if let Err(e) = result {
            return self.fail(pattern, e);
        }
        self.tasks.insert(pattern.clone(), Task::Copying { started, source: source.clone() });
        vec![
            announce(
                AnnounceKind::Backfill,
                &pattern,
                MonitorStatus::Importing,
                AnnounceDetail::Source(source.clone()),
            ),
            PlacementAction::Copy { pattern, source },
        ]
    }

    fn copied(&mut self, pattern: String, result: Result<Copied, String>) -> Vec<PlacementAction> {
        let Some(Task::Copying { started, source }) = self.tasks.get(&pattern) else { return Vec::new() };
        let (started, source) = (*started, source.clone());
        match result {
            Err(e) => self.fail(pattern, e),
            Ok(Copied { marks, rows }) => {
                self.tasks.insert(pattern.clone(), Task::Completing { started, source: source.clone(), rows });
                vec![PlacementAction::Complete { pattern, source, marks }]
            }
        }
    }

    fn completed(&mut self, now: Duration, pattern: String, result: Result<u64, String>) -> Vec<PlacementAction> {
        let Some(Task::Completing { started, source, rows }) = self.tasks.get(&pattern) else { return Vec::new() };
        let (started, source, rows) = (*started, source.clone(), *rows);
        let held = match result {
            Err(e) => return self.fail(pattern, e),
            Ok(held) => held,
        };
        self.tasks.remove(&pattern);
        let elapsed = now.saturating_sub(started);
        let report = BackfillReport {
            pattern: pattern.clone(),
            source,
            rows,
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
            rows_per_s: rows as f64 / elapsed.as_secs_f64().max(1e-9),
            held_recorded: held,
        };
        let short_for_ms = self.short_since.remove(&pattern).map(|t| now.saturating_sub(t).as_secs_f64() * 1e3);
        self.last_backfill = Some(report.clone());
        let detail = AnnounceDetail::Complete { report, short_for_ms };
        vec![announce(AnnounceKind::Complete, &pattern, MonitorStatus::Complete, detail)]
    }

    fn stopped(&mut self, pattern: String, result: StopResult) -> Vec<PlacementAction> {
        let Some(Task::Stopping { reason, failed }) = self.tasks.remove(&pattern) else { return Vec::new() };
        let (kind, detail) = match failed {
            // A failed backfill's monitor that did not stop is left
            // importing: the next evaluation stops it as interrupted.
            Some(error) if result == StopResult::Stopped => (AnnounceKind::Failed, AnnounceDetail::Error(error)),
            Some(_) => return Vec::new(),
            None if matches!(result, StopResult::Stopped | StopResult::NotFound) => {
                (AnnounceKind::Stop, AnnounceDetail::Reason(reason))
            }
            None => return Vec::new(),
        };
        vec![
            PlacementAction::DropInterest { pattern: pattern.clone() },
            announce(kind, &pattern, MonitorStatus::Stopped, detail),
        ]
    }

    /// The replica to copy from: a live complete monitor on a peer that is
    /// up, the lowest heartbeat latency first. `None` only when no complete
    /// monitor is announced at all (the first of a new policy); one
    /// announced but not up is an error, retried later, so a replica never
    /// completes empty while the subtree's history exists elsewhere.
    fn choose_source(&self, now: Duration, pattern: &str, peers: &[PeerView]) -> Result<Option<String>, String> {
        let complete = self.complete_peers(now, pattern, peers);
        if complete.is_empty() {
            // Nothing live: start empty only if no complete replica was
            // heard of lately either (all replicas lost, or a new policy).
            // One heard within LOST_AFTER_INTERVALS may be behind a slow
            // link or a partition: wait for it rather than lose its history.
            if let Some(site) = self.seen.complete_lately(now, pattern, &self.site, self.interval) {
                return Err(format!("{site} recorded {pattern} lately but is not live now; waiting for a replica"));
            }
            return Ok(None);
        }
        let names: Vec<String> = complete.iter().map(|p| p.name.clone()).collect();
        match by_preference(complete).into_iter().find(|p| p.reach == Reach::Up) {
            Some(p) => Ok(Some(p.name)),
            None => Err(format!("no complete replica is reachable right now (announced: {})", names.join(", "))),
        }
    }

    /// The peers announcing a live complete monitor of `pattern`, by name.
    fn complete_peers(&self, now: Duration, pattern: &str, peers: &[PeerView]) -> Vec<PeerView> {
        self.seen
            .live(now, pattern, &self.site, self.interval)
            .into_iter()
            .filter(|(_, e)| e.status == MonitorStatus::Complete)
            .filter_map(|(site, _)| peers.iter().find(|p| p.name == site).cloned())
            .collect()
    }
}

fn announce(kind: AnnounceKind, pattern: &str, status: MonitorStatus, detail: AnnounceDetail) -> PlacementAction {
    PlacementAction::Announce(Announce {
        kind,
        pattern: pattern.to_string(),
        status,
        since_us: None,
        monitors: None,
        detail,
    })
}
