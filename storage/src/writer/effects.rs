//! Each record's effects on the materialized views, put in the same batch as
//! the record.
//!
//! The log is the truth; the views (latest tuples, history, tombstones,
//! leases, documents, the event id index) are what replaying it gives, kept
//! up to date by writing a record's effects in the record's own batch. A
//! crash therefore leaves a record and all of its effects, or neither, and
//! `pepper check` can verify the views by replaying the log (VIEW-1 to
//! VIEW-5 in docs/storage-format.md).
//!
//! Effects read the state before them through the group's overlays
//! ([`crate::writer::state`]), so a record sees every earlier record,
//! including those earlier in the same batch. Model records have their
//! effects in [`crate::models`]; a monitor's own record has its effects in
//! its group, which clears or keeps the subtree it covers.

use crate::engine::{Batch, Engine};
use crate::error::{Error, Result};
use crate::keys::{self, CF_DOCS, CF_EVENT_IDS, CF_HISTORY, CF_LEASES, CF_TOMBSTONES, CF_TUPLES};
use crate::record::{Body, TupleImport};
use crate::rows::{encode_lease_row, encode_row, DocRow, HistoryRow, Lease, TombstoneReason, TombstoneRow, TupleRow};
use crate::writer::state::{lease, tuple, LeaseOverlay, TupleOverlay};

/// The effects of `body` at `seq` on the event id index, the leases and the
/// documents.
///
/// # Errors
/// `NotFound` for a renewal of a lease that does not exist (checked before,
/// so only a bug reaches it); read errors.
pub(crate) fn materialize(
    engine: &dyn Engine,
    batch: &mut Batch,
    leases: &mut LeaseOverlay,
    seq: u64,
    time_us: u64,
    body: &Body,
) -> Result<()> {
    match body {
        // An event without an id is never deduplicated, so not indexed.
        Body::Event(e) if e.id.is_empty() => {}
        Body::Event(e) => {
            batch.put(CF_EVENT_IDS, e.id.as_bytes(), keys::event_id_value(seq, time_us));
        }
        // Tuple effects, of these and of attribute events: `materialize_tuple`.
        Body::TupleSet(_) | Body::TupleExpire(_) | Body::TupleDelete(_) | Body::TupleImport(_) => {}
        // Written by a monitor group only, with its own effects.
        Body::Monitor(_) => {}
        Body::LeaseGrant(g) => {
            let granted = Lease::granted(g, seq);
            batch.put(CF_LEASES, g.id.as_bytes(), encode_lease_row(&granted));
            leases.insert(g.id.clone(), Some(granted));
        }
        Body::LeaseRenew(r) => {
            let Some(mut renewed) = lease(engine, leases, &r.id)? else {
                return Err(Error::NotFound { what: "lease", key: r.id.clone() });
            };
            renewed.ttl_ms = r.ttl_ms;
            renewed.expires_at_us = r.expires_at_us;
            renewed.renewed_seq = seq;
            batch.put(CF_LEASES, r.id.as_bytes(), encode_lease_row(&renewed));
            leases.insert(r.id.clone(), Some(renewed));
        }
        Body::LeaseRelease(e) | Body::LeaseExpire(e) => {
            batch.delete(CF_LEASES, e.id.as_bytes());
            leases.insert(e.id.clone(), None);
        }
        Body::DocPut(d) => {
            let row = DocRow { seq, time_us, value: d.value.clone() };
            batch.put(CF_DOCS, d.key.as_bytes(), encode_row(&row));
        }
        Body::DocDelete(d) => batch.delete(CF_DOCS, d.key.as_bytes()),
        // Model effects: `models.rs`.
        Body::ModelClass(_) | Body::ModelPut(_) | Body::ModelDelete(_) => {}
    }
    Ok(())
}

/// The tuple effects of a record: a set (from a tuple-set record or an
/// attribute event) writes the latest row, a history row only when the
/// value changed (or the tuple was not live), and clears a tombstone; an
/// expire or delete removes the latest row and leaves a tombstone. The
/// history is never touched by an end.
///
/// # Errors
/// Read errors, and `Corruption` for a stored row that does not decode.
pub(crate) fn materialize_tuple(
    engine: &dyn Engine,
    batch: &mut Batch,
    tuples: &mut TupleOverlay,
    seq: u64,
    time_us: u64,
    body: &Body,
) -> Result<()> {
    if let Some(w) = body.tuple_write() {
        let key = keys::tuple_key(w.channel, w.field);
        let ended_here = matches!(tuples.get(&key), Some(None));
        let stored = tuple(engine, tuples, &key)?;
        // A row past its expiry is not live: its expire record may just
        // not be written yet. Setting the tuple again is a change.
        let lapsed = stored.as_ref().is_some_and(|p| p.expires_at_us.is_some_and(|at| at <= time_us));
        let prev = stored.filter(|_| !lapsed);
        let row = TupleRow {
            seq,
            time_us,
            value: w.value.to_string(),
            expires_at_us: w.expires_at_us,
            source: w.source.clone(),
        };
        batch.put(CF_TUPLES, &key, encode_row(&row));
        if prev.as_ref().is_none_or(|p| p.value != row.value) {
            let hist = HistoryRow {
                time_us,
                value: row.value.clone(),
                expires_at_us: row.expires_at_us,
                source: row.source.clone(),
            };
            batch.put(CF_HISTORY, keys::history_key(w.channel, w.field, seq), encode_row(&hist));
        }
        if prev.is_none() && !lapsed && (ended_here || engine.get(CF_TOMBSTONES, &key)?.is_some()) {
            batch.delete(CF_TOMBSTONES, &key);
        }
        tuples.insert(key, Some(row));
        return Ok(());
    }
    if let Body::TupleImport(t) = body {
        return materialize_import(engine, batch, tuples, seq, t);
    }
    let (reason, t) = match body {
        Body::TupleExpire(t) => (TombstoneReason::Expired, t),
        Body::TupleDelete(t) => (TombstoneReason::Deleted, t),
        _ => return Ok(()),
    };
    let key = keys::tuple_key(&t.channel, &t.field);
    batch.delete(CF_TUPLES, &key);
    batch.put(CF_TOMBSTONES, &key, encode_row(&TombstoneRow { seq, time_us, reason }));
    tuples.insert(key, None);
    Ok(())
}

/// A backfill row: a history row under this record's seq, the latest
/// value, or both, with the time the value was set.
fn materialize_import(
    engine: &dyn Engine,
    batch: &mut Batch,
    tuples: &mut TupleOverlay,
    seq: u64,
    t: &TupleImport,
) -> Result<()> {
    if t.history {
        let hist = HistoryRow {
            time_us: t.time_us,
            value: t.value.clone(),
            expires_at_us: t.expires_at_us,
            source: t.source.clone(),
        };
        batch.put(CF_HISTORY, keys::history_key(&t.channel, &t.field, seq), encode_row(&hist));
    }
    if t.latest {
        let key = keys::tuple_key(&t.channel, &t.field);
        let row = TupleRow {
            seq,
            time_us: t.time_us,
            value: t.value.clone(),
            expires_at_us: t.expires_at_us,
            source: t.source.clone(),
        };
        batch.put(CF_TUPLES, &key, encode_row(&row));
        if matches!(tuples.get(&key), Some(None)) || engine.get(CF_TOMBSTONES, &key)?.is_some() {
            batch.delete(CF_TOMBSTONES, &key);
        }
        tuples.insert(key, Some(row));
    }
    Ok(())
}
