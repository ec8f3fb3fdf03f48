//! Applying a retention plan inside a write group.
//!
//! Retention plans on a snapshot ([`crate::retention`]) and the writer
//! applies the plan, so trims are ordered with appends. The writer checks the
//! plan against its own tail first: a plan made before the floor moved, or
//! for more of the log than exists, is refused as stale, and the next pass
//! plans again. What the plan names is deleted by range (the log prefix, each
//! tuple's oldest history rows) or by key (event ids, tombstones), each only
//! if it is still what the plan saw.

use crate::engine::{Batch, Engine};
use crate::error::{Error, Result};
use crate::keys::{self, CF_EVENT_IDS, CF_HISTORY, CF_LOG, CF_META, CF_TOMBSTONES};
use crate::retention::TrimPlan;
use crate::rows::{decode_row, TombstoneRow};
use crate::writer::state::{LogTail, TupleOverlay};

/// Puts the deletes of `plan` into the batch and moves the tail's floor and
/// size past the trimmed log.
///
/// # Errors
/// `Conflict` for a stale plan (nothing is put then); read errors.
pub(crate) fn apply(
    engine: &dyn Engine,
    batch: &mut Batch,
    tail: &mut LogTail,
    tuples: &TupleOverlay,
    plan: &TrimPlan,
) -> Result<()> {
    if let Some(log) = &plan.log {
        if log.from != tail.floor || log.to > tail.next_seq || log.bytes > tail.log_bytes {
            return Err(Error::Conflict {
                what: "retention",
                detail: format!("plan for {}..{} is stale (floor is now {})", log.from, log.to, tail.floor),
            });
        }
        batch.delete_range(CF_LOG, keys::log_key(log.from), keys::log_key(log.to));
        // The id index follows the log: drop the ids of trimmed events,
        // unless a later event took the id over.
        for id in &log.event_ids {
            let current = engine.get(CF_EVENT_IDS, id.as_bytes())?;
            if current.and_then(|v| keys::decode_event_id_value(&v)).is_some_and(|(seq, _)| seq < log.to) {
                batch.delete(CF_EVENT_IDS, id.as_bytes());
            }
        }
        tail.floor = log.to;
        tail.log_bytes -= log.bytes;
    }
    for (start, end) in &plan.history {
        batch.delete_range(CF_HISTORY, start, end);
    }
    if !plan.tombstones.is_empty() {
        // Remove a tombstone only if it is still the one planned: not
        // cleared by a set, nor replaced by a newer end, in this group
        // or since the plan's snapshot.
        let mut floor = match engine.get(CF_META, keys::META_TOMBSTONE_FLOOR)? {
            Some(v) => keys::decode_u64(&v).ok_or_else(|| Error::corruption("meta tombstone_floor", "not a u64"))?,
            None => 0,
        };
        for (key, seq) in &plan.tombstones {
            if tuples.contains_key(key) {
                continue;
            }
            let Some(bytes) = engine.get(CF_TOMBSTONES, key)? else { continue };
            let row: TombstoneRow = decode_row("tombstone", key, &bytes)?;
            if row.seq == *seq {
                batch.delete(CF_TOMBSTONES, key);
                floor = floor.max(seq + 1);
            }
        }
        batch.put(CF_META, keys::META_TOMBSTONE_FLOOR, floor.to_be_bytes());
    }
    Ok(())
}
