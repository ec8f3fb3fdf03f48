//! Retention: trimming the log by age and size, and history by count and age.
//!
//! A pass plans on a snapshot and commits through the writer, like any other
//! write, so trims are ordered with appends and the counters they change
//! (`floor`, `log_bytes`) stay exact:
//!
//! - **Log.** Record times never decrease along the log, so everything older
//!   than the age limit is a prefix; so is whatever must go to bring the log
//!   under its byte limit. The pass deletes that prefix with one range
//!   delete and raises the floor. Feeds below the new floor get `Compacted`.
//! - **History.** For each (channel, field), the oldest rows beyond the
//!   count limit and the rows older than the age limit go. The latest value
//!   lives in its own family and is never trimmed.
//!
//! A pass is bounded ([`LOG_TRIM_SCAN_MAX`], [`HISTORY_TRIM_ROWS_MAX`]); a
//! large backlog is worked off over several passes. A plan made on a stale
//! snapshot (the floor moved in between) is refused by the writer and simply
//! redone on the next pass.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::keys::{self, CF_HISTORY, CF_LOG};
use crate::limits::{HISTORY_TRIM_ROWS_MAX, LOG_TRIM_SCAN_MAX};
use crate::record::peek_time_us;
use crate::rows::{decode_row, HistoryRow};
use crate::store::{Store, RETENTION_INTERVAL_DEFAULT};
use crate::view::View;
use crate::writer::Request;

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
    /// How often the background task runs a pass.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            log_max_age: None,
            log_max_bytes: None,
            history_max_count: None,
            history_max_age: None,
            interval: RETENTION_INTERVAL_DEFAULT,
        }
    }
}

impl Retention {
    /// Whether the policy trims anything at all.
    pub fn is_enabled(&self) -> bool {
        self.log_max_age.is_some()
            || self.log_max_bytes.is_some()
            || self.history_max_count.is_some()
            || self.history_max_age.is_some()
    }
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
    /// History rows removed.
    pub history_rows: u64,
}

impl RetentionReport {
    /// Whether the pass removed nothing.
    pub fn is_empty(&self) -> bool {
        self.log_records == 0 && self.history_rows == 0
    }
}

/// A log prefix to delete: `[from, to)`, holding `bytes` encoded bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogTrim {
    pub from: u64,
    pub to: u64,
    pub bytes: u64,
}

/// What the writer is asked to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrimPlan {
    pub log: Option<LogTrim>,
    pub history: Vec<Vec<u8>>,
}

pub(crate) fn enforce(store: &Store, policy: &Retention, now_us: u64) -> Result<RetentionReport> {
    let (plan, report) = store.read_blocking(|view| plan(store, view, policy, now_us))?;
    if plan.log.is_none() && plan.history.is_empty() {
        return Ok(report);
    }
    let (reply, rx) = oneshot::channel();
    store.submit_trim_blocking(Request::Trim { plan, reply })?;
    rx.blocking_recv().map_err(|_| Error::Closed)??;
    Ok(report)
}

/// [`enforce`] for async callers: the pass runs on a blocking-pool thread.
pub async fn enforce_async(store: &Store, policy: &Retention, now_us: u64) -> Result<RetentionReport> {
    let (store2, policy) = (store.clone(), policy.clone());
    let (plan, report) =
        tokio::task::spawn_blocking(move || store2.read_blocking(|view| plan(&store2, view, &policy, now_us)))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(format!("retention task failed: {e}"))))??;
    if plan.log.is_none() && plan.history.is_empty() {
        return Ok(report);
    }
    let (reply, rx) = oneshot::channel();
    store.submit_trim(Request::Trim { plan, reply }).await?;
    rx.await.map_err(|_| Error::Closed)??;
    Ok(report)
}

fn cutoff(now_us: u64, age: Option<Duration>) -> Option<u64> {
    age.map(|a| now_us.saturating_sub(a.as_micros().min(u128::from(u64::MAX)) as u64))
}

fn plan(store: &Store, view: &View<'_>, policy: &Retention, now_us: u64) -> Result<(TrimPlan, RetentionReport)> {
    let shared = store.shared();
    let mut plan = TrimPlan::default();
    let mut report = RetentionReport { floor: view.earliest_seq(), ..RetentionReport::default() };

    // Log: find the end of the prefix that is too old or over the byte budget.
    let age_cut = cutoff(now_us, policy.log_max_age);
    if age_cut.is_some() || policy.log_max_bytes.is_some() {
        let total = {
            let meta = shared.cf(keys::CF_META)?;
            let mut o = rocksdb::ReadOptions::default();
            o.set_snapshot(view.snapshot());
            match shared.db.get_pinned_cf_opt(meta, keys::META_LOG_BYTES, &o)? {
                Some(v) => keys::decode_u64(&v).ok_or_else(|| Error::corruption("meta log_bytes", "not a u64"))?,
                None => 0,
            }
        };
        let mut excess = policy.log_max_bytes.map_or(0, |max| total.saturating_sub(max));
        let from = view.earliest_seq();
        let mut to = from;
        let mut bytes = 0u64;
        let mut o = rocksdb::ReadOptions::default();
        o.set_snapshot(view.snapshot());
        o.set_iterate_lower_bound(keys::log_key(from).to_vec());
        if let Some(end) = view.seq().checked_add(1) {
            o.set_iterate_upper_bound(keys::log_key(end).to_vec());
        }
        let mut it = shared.db.raw_iterator_cf_opt(shared.cf(CF_LOG)?, o);
        it.seek_to_first();
        let mut scanned = 0;
        while it.valid() && scanned < LOG_TRIM_SCAN_MAX {
            let (Some(key), Some(value)) = (it.key(), it.value()) else { break };
            let seq = keys::decode_u64(key).ok_or_else(|| Error::corruption("log", "key is not a u64"))?;
            let old = match (age_cut, peek_time_us(value)) {
                (Some(cut), Some(t)) => t < cut,
                _ => false,
            };
            if !old && excess == 0 {
                break;
            }
            let len = value.len() as u64;
            excess = excess.saturating_sub(len);
            bytes += len;
            to = seq + 1;
            scanned += 1;
            it.next();
        }
        it.status()?;
        if to > from {
            report.log_records = to - from;
            report.log_bytes = bytes;
            report.floor = to;
            plan.log = Some(LogTrim { from, to, bytes });
        }
    }

    // History: per (channel, field), the oldest rows beyond the count and the
    // rows older than the age limit. Keys sort by tuple, then seq, so each
    // tuple's rows are one contiguous run, oldest first.
    let age_cut = cutoff(now_us, policy.history_max_age);
    if age_cut.is_some() || policy.history_max_count.is_some() {
        let mut o = rocksdb::ReadOptions::default();
        o.set_snapshot(view.snapshot());
        let mut it = shared.db.raw_iterator_cf_opt(shared.cf(CF_HISTORY)?, o);
        it.seek_to_first();
        let mut run: Vec<(Vec<u8>, bool)> = Vec::new(); // (key, older than the cut)
        let mut run_prefix: Vec<u8> = Vec::new();
        let flush = |run: &mut Vec<(Vec<u8>, bool)>, out: &mut Vec<Vec<u8>>| {
            let over = policy.history_max_count.map_or(0, |max| (run.len() as u64).saturating_sub(max));
            for (i, (key, old)) in run.drain(..).enumerate() {
                if (i as u64) < over || old {
                    out.push(key);
                }
            }
        };
        while it.valid() && plan.history.len() < HISTORY_TRIM_ROWS_MAX {
            let (Some(key), Some(value)) = (it.key(), it.value()) else { break };
            let prefix = &key[..key.len().saturating_sub(8)];
            if prefix != run_prefix.as_slice() {
                flush(&mut run, &mut plan.history);
                run_prefix = prefix.to_vec();
            }
            let old = match age_cut {
                Some(cut) => decode_row::<HistoryRow>("history", key, value)?.time_us < cut,
                None => false,
            };
            run.push((key.to_vec(), old));
            if run.len() >= HISTORY_TRIM_ROWS_MAX {
                // One tuple's history is larger than a pass: trim its oldest
                // rows now and let the next pass continue.
                break;
            }
            it.next();
        }
        it.status()?;
        flush(&mut run, &mut plan.history);
        plan.history.truncate(HISTORY_TRIM_ROWS_MAX);
        report.history_rows = plan.history.len() as u64;
    }
    Ok((plan, report))
}
