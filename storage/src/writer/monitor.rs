//! A monitor's state change, committed as a write group of its own.
//!
//! Starting, completing and stopping a monitor ([`crate::recording`]) change
//! which tuple updates the writer records, so none may share a batch with
//! appends: the group is the monitor record and, for a completion, the held
//! updates its copy did not include, written first as `tuple.import`
//! records. A start or a stop also clears the subtree's rows (latest values,
//! history, tombstones) with range deletes in the same batch.
//!
//! Three steps, so the writer's recording state changes only once the batch
//! is durable: [`change`] checks the operation against the running monitors
//! and says what to write, [`put_group`] puts it in a batch, and [`apply`]
//! updates the monitors after the write.

use std::collections::HashMap;

use crate::engine::{Batch, Engine};
use crate::error::{Error, Result};
use crate::keys::{self, CF_HISTORY, CF_MONITORS, CF_TOMBSTONES, CF_TUPLES};
use crate::record::{Body, MonitorChange, MonitorState, TupleImport};
use crate::recording::{Monitor, Recording};
use crate::rows::{decode_row, encode_row, MonitorRow};
use crate::writer::effects::materialize_tuple;
use crate::writer::request::MonitorOp;
use crate::writer::state::{tuple, LogTail, TupleOverlay};

/// Checks `op` against the running monitors and returns what its group
/// writes: the imports to record first (for a completion) and the monitor
/// record.
///
/// # Errors
/// `Conflict`, `NotFound` or `TooLarge` when the monitor cannot change so;
/// `InvalidInput` for a record that breaks a limit.
pub(crate) fn change(recording: &Recording, op: MonitorOp) -> Result<(Vec<Body>, MonitorChange)> {
    let mut imports = Vec::new();
    let change = match op {
        MonitorOp::Start { pattern, reason } => {
            recording.check_start(&pattern)?;
            MonitorChange { pattern, state: MonitorState::Importing, source: String::new(), marks: vec![], reason }
        }
        MonitorOp::Stop { pattern, reason } => {
            if !recording.monitors.contains_key(&pattern) {
                return Err(Error::NotFound { what: "monitor", key: pattern });
            }
            MonitorChange { pattern, state: MonitorState::Stopped, source: String::new(), marks: vec![], reason }
        }
        MonitorOp::Complete { pattern, source, marks } => {
            let m = recording.completable(&pattern)?;
            let copied: HashMap<&str, u64> = marks.iter().map(|(s, n)| (s.as_str(), *n)).collect();
            let mut held = 0usize;
            for u in &m.pending {
                held += 1;
                if copied.get(u.origin.as_str()).is_some_and(|&mark| u.origin_seq <= mark) {
                    continue;
                }
                imports.push(Body::TupleImport(TupleImport {
                    channel: u.channel.clone(),
                    field: u.field.clone(),
                    value: u.value.clone(),
                    time_us: u.time_us,
                    expires_at_us: u.expires_at_us,
                    source: u.source.clone(),
                    // Decided in `put_group` against the value before it.
                    history: true,
                    latest: true,
                }));
            }
            let reason = format!(
                "backfilled from {}; {} of {held} updates held while importing were not in the copy",
                if source.is_empty() { "no replica" } else { source.as_str() },
                imports.len()
            );
            MonitorChange { pattern, state: MonitorState::Complete, source, marks, reason }
        }
    };
    crate::validate::body(&Body::Monitor(change.clone()))?;
    Ok((imports, change))
}

/// Puts a monitor group's records and effects into `batch`, as records of
/// `site` at `time_us`, moving `tail`.
///
/// # Errors
/// Read errors, and encoding limits; the caller restores the tail.
pub(crate) fn put_group(
    engine: &dyn Engine,
    site: &str,
    tail: &mut LogTail,
    batch: &mut Batch,
    imports: Vec<Body>,
    change: &MonitorChange,
    time_us: u64,
) -> Result<()> {
    let mut tuples = TupleOverlay::new();
    let mut encoded = Vec::new();
    for mut body in imports {
        if let Body::TupleImport(t) = &mut body {
            // The rule of a live update: a history row only for a change.
            let key = keys::tuple_key(&t.channel, &t.field);
            let prev = tuple(engine, &tuples, &key)?;
            let lapsed = prev.as_ref().is_some_and(|p| p.expires_at_us.is_some_and(|at| at <= t.time_us));
            t.history = lapsed || prev.as_ref().is_none_or(|p| p.value != t.value);
        }
        encoded.clear();
        body.encode_into(&mut encoded)?;
        let seq = tail.put_record(batch, site, &body, &encoded, time_us)?;
        materialize_tuple(engine, batch, &mut tuples, seq, time_us, &body)?;
    }
    let body = Body::Monitor(change.clone());
    encoded.clear();
    body.encode_into(&mut encoded)?;
    let seq = tail.put_record(batch, site, &body, &encoded, time_us)?;
    if change.state != MonitorState::Complete {
        // Start and stop both leave the subtree without rows.
        let from = change.pattern.as_bytes();
        let to = keys::prefix_end(from).ok_or_else(|| Error::invalid("recording pattern", "has no end"))?;
        for name in [CF_TUPLES, CF_HISTORY, CF_TOMBSTONES] {
            batch.delete_range(name, from, &to);
        }
    }
    let started_seq = match change.state {
        MonitorState::Importing => seq,
        _ => match engine.get(CF_MONITORS, change.pattern.as_bytes())? {
            Some(bytes) => decode_row::<MonitorRow>("monitor", change.pattern.as_bytes(), &bytes)?.started_seq,
            None => seq,
        },
    };
    let row = MonitorRow {
        pattern: change.pattern.clone(),
        state: change.state,
        seq,
        time_us,
        started_seq,
        source: change.source.clone(),
        marks: change.marks.clone(),
        reason: change.reason.clone(),
    };
    batch.put(CF_MONITORS, change.pattern.as_bytes(), encode_row(&row));
    tail.last_time_us = time_us;
    Ok(())
}

/// Updates the running monitors once `change` is durable.
pub(crate) fn apply(recording: &mut Recording, change: &MonitorChange) {
    match change.state {
        MonitorState::Importing => {
            let m = Monitor {
                state: MonitorState::Importing,
                marks: HashMap::new(),
                pending: Vec::new(),
                pending_bytes: 0,
                broken: None,
            };
            recording.monitors.insert(change.pattern.clone(), m);
        }
        MonitorState::Complete => {
            if let Some(m) = recording.monitors.get_mut(&change.pattern) {
                m.state = MonitorState::Complete;
                m.marks = change.marks.iter().cloned().collect();
                m.pending = Vec::new();
                m.pending_bytes = 0;
            }
        }
        MonitorState::Stopped => {
            recording.monitors.remove(&change.pattern);
        }
    }
}
