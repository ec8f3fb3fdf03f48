//! Retention: trimming the log by age and size, and history by count and age.
//!
//! A pass plans on a snapshot ([`plan`], here) and commits through the
//! writer, like any other write (the store sends the plan; the writer applies
//! it), so trims are ordered with appends and the counters they change
//! (`floor`, `log_bytes`) stay exact:
//!
//! - **Log.** Record times never decrease along the log (LOG-4), so
//!   everything older than the age limit is a prefix; so is whatever must go
//!   to bring the log under its byte limit. The pass deletes that prefix with
//!   one range delete and raises the floor. Feeds below the new floor get
//!   `Compacted`.
//! - **History.** Each (channel, field) keeps its rows as one contiguous run
//!   of keys, oldest first. Rows older than the age limit are a prefix of the
//!   run (times never decrease), found by walking forward from its start; the
//!   rows beyond the count limit are the prefix before the `max`-th newest,
//!   found by walking back from its end. Age never removes a tuple's newest
//!   row: a value that has not changed for longer than the age limit is
//!   refreshed without new rows, and its one row is the history it has. Either way the pass deletes one key
//!   range per tuple and never reads the rows it keeps beyond the limit. The
//!   latest value lives in its own family and is never trimmed.
//!
//! Every pass is bounded: the log scan by [`LOG_TRIM_SCAN_MAX`] records, the
//! history walk by [`Retention::history_steps_per_pass`] iterator steps. A
//! history pass that runs out of steps remembers the tuple it reached and the
//! next pass resumes there, so one busy tuple never starves the others and a
//! large store is covered over several passes rather than in one long stall.
//!
//! A plan made on a stale snapshot (the floor moved in between) is refused by
//! the writer and simply redone on the next pass. Range deletes of history
//! rows are safe against concurrent appends: new rows always have larger
//! sequence numbers, so they sort after every planned range.

use std::sync::Mutex;
use std::time::Duration;

use crate::engine::{Direction, Engine, KeyRange, Reader};
use crate::error::{Error, Result};
use crate::keys::{self, CF_HISTORY, CF_LOG};
use crate::limits::{HISTORY_TRIM_STEPS_MAX, LOG_TRIM_SCAN_MAX, TOMBSTONE_SCAN_MAX, TOMBSTONE_TRIMS_MAX};
use crate::record::{peek_time_us, Body, Kind, Record};
use crate::rows::history_row_time;
use crate::view::View;

/// How long [`Retention::default`]'s background task sleeps between passes.
pub const RETENTION_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);

/// What to keep. `None` keeps everything along that axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Drop log records older than this.
    pub log_max_age: Option<Duration>,
    /// Drop the oldest log records while the log holds more encoded bytes.
    pub log_max_bytes: Option<u64>,
    /// Keep at most this many history rows per (channel, field).
    pub history_max_count: Option<u64>,
    /// Drop history rows older than this.
    pub history_max_age: Option<Duration>,
    /// Drop tombstones of ended tuples older than this. A resume from
    /// before the newest dropped one gets a full snapshot instead of the
    /// changes since.
    pub tombstone_max_age: Option<Duration>,
    /// Limits for channel subtrees that differ from the two above. The
    /// longest prefix that matches a tuple's channel decides, and a rule's
    /// `None` keeps everything along that axis for its subtree.
    pub history_rules: Vec<HistoryRule>,
    /// How often the background task runs a pass.
    pub interval: Duration,
    /// Most history iterator steps one pass takes before it stops at a tuple
    /// boundary and leaves the rest to the next pass.
    pub history_steps_per_pass: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            log_max_age: None,
            log_max_bytes: None,
            history_max_count: None,
            history_max_age: None,
            history_rules: Vec::new(),
            tombstone_max_age: None,
            interval: RETENTION_INTERVAL_DEFAULT,
            history_steps_per_pass: HISTORY_TRIM_STEPS_MAX,
        }
    }
}

impl Retention {
    /// Whether the policy trims anything at all.
    pub fn is_enabled(&self) -> bool {
        self.log_max_age.is_some()
            || self.log_max_bytes.is_some()
            || self.trims_history()
            || self.tombstone_max_age.is_some()
    }

    fn trims_history(&self) -> bool {
        self.history_max_count.is_some()
            || self.history_max_age.is_some()
            || self.history_rules.iter().any(|r| r.max_count.is_some() || r.max_age.is_some())
    }

    /// The history limits (count, age) for tuples on `channel`.
    pub fn history_limits(&self, channel: &str) -> (Option<u64>, Option<Duration>) {
        self.history_rules
            .iter()
            .filter(|r| channel.starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len())
            .map_or((self.history_max_count, self.history_max_age), |r| (r.max_count, r.max_age))
    }
}

/// History limits for one channel subtree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRule {
    /// The channel prefix, such as `/example.com/node/`.
    pub prefix: String,
    /// Keep at most this many rows per (channel, field).
    pub max_count: Option<u64>,
    /// Drop rows older than this.
    pub max_age: Option<Duration>,
}

/// What one pass removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Log records removed.
    pub log_records: u64,
    /// Encoded bytes of those records.
    pub log_bytes: u64,
    /// The floor after the pass.
    pub floor: u64,
    /// Tuples whose oldest history rows were removed.
    pub history_tuples: u64,
    /// Whether the history walk stopped early and the next pass resumes it.
    pub history_resumes: bool,
    /// Tombstones removed.
    pub tombstones: u64,
}

impl RetentionReport {
    /// Whether the pass removed nothing.
    pub fn is_empty(&self) -> bool {
        self.log_records == 0 && self.history_tuples == 0 && self.tombstones == 0
    }
}

/// A log prefix to delete: `[from, to)`, holding `bytes` encoded bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogTrim {
    pub from: u64,
    pub to: u64,
    pub bytes: u64,
    /// Ids of the trimmed events, whose index entries go with them.
    pub event_ids: Vec<String>,
}

/// What the writer is asked to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrimPlan {
    pub log: Option<LogTrim>,
    /// History key ranges `[start, end)`, each within one tuple's run.
    pub history: Vec<(Vec<u8>, Vec<u8>)>,
    /// Tombstones to remove: tuple key and the seq of the end record the
    /// plan saw (a tuple set or ended again since keeps its row).
    pub tombstones: Vec<(Vec<u8>, u64)>,
}

impl TrimPlan {
    /// Whether the plan deletes nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.log.is_none() && self.history.is_empty() && self.tombstones.is_empty()
    }
}

fn cutoff(now_us: u64, age: Option<Duration>) -> Option<u64> {
    age.map(|a| now_us.saturating_sub(a.as_micros().min(u128::from(u64::MAX)) as u64))
}

/// Plans one pass on a snapshot of `engine`, as of `now_us`. A history walk
/// resumes where `resume` says and leaves there where the next pass resumes.
///
/// # Errors
/// Read errors, and `Corruption` for malformed rows.
pub(crate) fn plan(
    engine: &dyn Engine,
    resume: &Mutex<Option<Vec<u8>>>,
    policy: &Retention,
    now_us: u64,
) -> Result<(TrimPlan, RetentionReport)> {
    let view = View::new(engine)?;
    let mut plan = TrimPlan::default();
    let mut report = RetentionReport { floor: view.earliest_seq(), ..RetentionReport::default() };
    plan_log(&view, policy, now_us, &mut plan, &mut report)?;
    plan_history(view.reader(), resume, policy, now_us, &mut plan, &mut report)?;
    plan_tombstones(view.reader(), policy, now_us, &mut plan, &mut report)?;
    Ok((plan, report))
}

/// Tombstones older than the age limit, oldest keys first, bounded per pass.
fn plan_tombstones(
    reader: &dyn Reader,
    policy: &Retention,
    now_us: u64,
    plan: &mut TrimPlan,
    report: &mut RetentionReport,
) -> Result<()> {
    let Some(cut) = cutoff(now_us, policy.tombstone_max_age) else { return Ok(()) };
    let mut scanned = 0u64;
    reader.scan(keys::CF_TOMBSTONES, KeyRange::ALL, Direction::Forward, &mut |key, value| {
        if scanned >= TOMBSTONE_SCAN_MAX || plan.tombstones.len() >= TOMBSTONE_TRIMS_MAX {
            return Ok(false);
        }
        let row: crate::rows::TombstoneRow = crate::rows::decode_row("tombstone", key, value)?;
        if row.time_us < cut {
            plan.tombstones.push((key.to_vec(), row.seq));
        }
        scanned += 1;
        Ok(true)
    })?;
    report.tombstones = plan.tombstones.len() as u64;
    Ok(())
}

/// The end of the log prefix that is too old or over the byte budget.
fn plan_log(
    view: &View<'_>,
    policy: &Retention,
    now_us: u64,
    plan: &mut TrimPlan,
    report: &mut RetentionReport,
) -> Result<()> {
    let age_cut = cutoff(now_us, policy.log_max_age);
    if age_cut.is_none() && policy.log_max_bytes.is_none() {
        return Ok(());
    }
    let reader = view.reader();
    let total = match reader.get(keys::CF_META, keys::META_LOG_BYTES)? {
        Some(v) => keys::decode_u64(&v).ok_or_else(|| Error::corruption("meta log_bytes", "not a u64"))?,
        None => 0,
    };
    let mut excess = policy.log_max_bytes.map_or(0, |max| total.saturating_sub(max));
    let from = view.earliest_seq();
    let lower = keys::log_key(from);
    let upper = view.seq().checked_add(1).map(keys::log_key);
    let (mut to, mut bytes, mut scanned) = (from, 0u64, 0u64);
    let mut event_ids = Vec::new();
    let range = KeyRange::new(&lower, upper.as_ref().map(|u| &u[..]));
    reader.scan(CF_LOG, range, Direction::Forward, &mut |key, value| {
        if scanned >= LOG_TRIM_SCAN_MAX {
            return Ok(false);
        }
        let seq = keys::decode_u64(key).ok_or_else(|| Error::corruption("log", "key is not a u64"))?;
        let old = matches!((age_cut, peek_time_us(value)), (Some(cut), Some(t)) if t < cut);
        if !old && excess == 0 {
            return Ok(false);
        }
        if value.get(1) == Some(&(Kind::Event as u8)) {
            if let Body::Event(e) = Record::decode(value)?.body {
                if !e.id.is_empty() {
                    event_ids.push(e.id);
                }
            }
        }
        let len = value.len() as u64;
        excess = excess.saturating_sub(len);
        bytes += len;
        to = seq + 1;
        scanned += 1;
        Ok(true)
    })?;
    if to > from {
        report.log_records = to - from;
        report.log_bytes = bytes;
        report.floor = to;
        plan.log = Some(LogTrim { from, to, bytes, event_ids });
    }
    Ok(())
}

/// The first history key in `range`, walking `direction`.
fn first_key(reader: &dyn Reader, range: KeyRange<'_>, direction: Direction) -> Result<Option<Vec<u8>>> {
    let mut first = None;
    reader.scan(CF_HISTORY, range, direction, &mut |key, _| {
        first = Some(key.to_vec());
        Ok(false)
    })?;
    Ok(first)
}

/// One key range per tuple whose oldest history rows must go.
///
/// Each tuple's rows are one run of keys (`channel 00 field 00 seq`). A walk
/// takes a step per row it reads and per run it moves past, and stops at
/// [`Retention::history_steps_per_pass`], leaving the tuple it reached to the
/// next pass.
fn plan_history(
    reader: &dyn Reader,
    resume: &Mutex<Option<Vec<u8>>>,
    policy: &Retention,
    now_us: u64,
    plan: &mut TrimPlan,
    report: &mut RetentionReport,
) -> Result<()> {
    if !policy.trims_history() {
        return Ok(());
    }
    let mut resume = resume.lock().map_err(|_| Error::Closed)?;
    let mut pos = resume.take().unwrap_or_default();
    let budget = policy.history_steps_per_pass.max(1);
    let mut steps = 0u64;
    while let Some(run_start) = first_key(reader, KeyRange::new(&pos, None), Direction::Forward)? {
        let Some(prefix) = run_start.len().checked_sub(8).map(|n| run_start[..n].to_vec()) else {
            return Err(Error::corruption("history", "key shorter than a sequence number"));
        };
        let end = keys::prefix_end(&prefix).ok_or_else(|| Error::corruption("history", "key has no successor"))?;
        if steps >= budget {
            *resume = Some(prefix);
            report.history_resumes = true;
            break;
        }
        let run = KeyRange::new(&prefix, Some(&end));
        let channel = keys::split_tuple_key(&prefix).map_or("", |(c, _)| c);
        let (max_count, max_age) = policy.history_limits(channel);
        let mut cut: Option<Vec<u8>> = None;
        if let Some(age_cut) = cutoff(now_us, max_age) {
            // Old rows are a prefix of the run: walk until the first young
            // one, or the first row past the step budget.
            let mut stop = None;
            reader.scan(CF_HISTORY, run, Direction::Forward, &mut |key, value| {
                if steps >= budget {
                    stop = Some(key.to_vec());
                    return Ok(false);
                }
                steps += 1;
                if history_row_time(key, value)? >= age_cut {
                    stop = Some(key.to_vec());
                    return Ok(false);
                }
                Ok(true)
            })?;
            cut = match stop {
                Some(key) => Some(key),
                // Every row is old: keep the newest, the value the tuple has
                // held since (a value that never changes is refreshed
                // without new rows, so its one row must not age out).
                None => Some(first_key(reader, run, Direction::Backward)?.unwrap_or_else(|| run_start.clone())),
            };
            if steps >= budget {
                // Out of steps: trim what was seen and resume with this
                // tuple.
                push_range(plan, report, &run_start, cut);
                *resume = Some(prefix);
                report.history_resumes = true;
                break;
            }
        }
        if let Some(max) = max_count {
            // Walk back over the `max` newest rows; anything older goes.
            let (mut oldest_kept, mut kept, mut older) = (None, 0u64, false);
            reader.scan(CF_HISTORY, run, Direction::Backward, &mut |key, _| {
                if kept >= max {
                    older = true;
                    return Ok(false);
                }
                oldest_kept = Some(key.to_vec());
                kept += 1;
                steps += 1;
                Ok(true)
            })?;
            if older {
                cut = cut.max(Some(oldest_kept.unwrap_or_else(|| end.clone())));
            }
        }
        push_range(plan, report, &run_start, cut);
        pos = end;
        steps += 1;
    }
    Ok(())
}

fn push_range(plan: &mut TrimPlan, report: &mut RetentionReport, start: &[u8], cut: Option<Vec<u8>>) {
    if let Some(cut) = cut {
        if cut.as_slice() > start {
            plan.history.push((start.to_vec(), cut));
            report.history_tuples += 1;
        }
    }
}
