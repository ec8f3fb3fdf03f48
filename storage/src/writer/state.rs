//! What the writer knows: the tail of the log between groups, and within a
//! group, what its earlier requests wrote.
//!
//! [`LogTail`] is the writer's position: the next sequence number, the log's
//! size and last time, and the retention floor. A group moves it while the
//! batch is built and puts it back if the batch is not written, so a failed
//! group consumes no sequence number. The tail is written in every batch
//! (the `meta` counters), which is what makes a snapshot name the sequence
//! number it reflects.
//!
//! [`WriterState`] is that tail with the rest of what the writer keeps
//! between groups: the anycast groups and the running monitors, which
//! change only once a group is durable.
//!
//! [`Overlays`] hold what earlier requests of the same group put into the
//! batch, since the engine does not show it until the batch is written: a
//! renewal must find the lease granted two requests earlier, and a retried
//! event id must match the original in the same group. Every read the writer
//! makes goes through an overlay first, then to the engine's latest state.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::anycast::Anycast;
use crate::engine::{Batch, Engine};
use crate::error::Result;
use crate::keys::{self, CF_LEASES, CF_LOG, CF_META, CF_TUPLES};
use crate::models::ModelOverlay;
use crate::record::{frame_into, Body};
use crate::recording::{PendingUpdate, Recording};
use crate::rows::{decode_lease_row, decode_row, Lease, TupleRow};

/// The writer's position in the log. `Copy`, so a group saves it at its
/// start and restores it if the group fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogTail {
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// Encoded bytes of the records from the floor up.
    pub log_bytes: u64,
    /// The time of the last record written; times never go back (LOG-4).
    pub last_time_us: u64,
    /// The lowest retained sequence number.
    pub floor: u64,
}

impl LogTail {
    /// Frames `body` (encoded as `encoded_body`) as the next record, from
    /// `origin`, and puts it in the log. Returns its sequence number.
    pub fn put_record(
        &mut self,
        batch: &mut Batch,
        origin: &str,
        body: &Body,
        encoded_body: &[u8],
        time_us: u64,
    ) -> Result<u64> {
        let seq = self.next_seq;
        let len = batch.put_with(CF_LOG, &keys::log_key(seq), |out| {
            frame_into(out, seq, time_us, origin, body.kind(), encoded_body)
        })?;
        self.log_bytes += len as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Puts the counters in the batch, so they commit with the records.
    pub fn put_meta(&self, batch: &mut Batch) {
        batch.put(CF_META, keys::META_NEXT_SEQ, self.next_seq.to_be_bytes());
        batch.put(CF_META, keys::META_LOG_BYTES, self.log_bytes.to_be_bytes());
        batch.put(CF_META, keys::META_LAST_TIME, self.last_time_us.to_be_bytes());
        batch.put(CF_META, keys::META_FLOOR, self.floor.to_be_bytes());
    }
}

/// What the writer keeps between groups. Only the writer thread touches it.
pub(crate) struct WriterState {
    /// Where the log ends.
    pub tail: LogTail,
    /// Committed anycast groups, for distribution `one`.
    pub anycast: Anycast,
    /// The monitors running here: which tuple updates are recorded.
    pub recording: Recording,
}

/// One write group while it is built: its batch, what its requests wrote so
/// far, and what they all share.
pub(crate) struct Draft {
    /// The batch the group commits.
    pub batch: Batch,
    /// What earlier requests of the group wrote.
    pub ov: Overlays,
    /// The group's time: every record of the group carries it.
    pub time_us: u64,
    /// The recording policy as the group started.
    pub policy: Arc<BTreeSet<String>>,
}

/// Lease state as the group sees it: `Some(None)` means deleted in this group.
pub(crate) type LeaseOverlay = HashMap<String, Option<Lease>>;

/// Tuple state as the group sees it, by tuple key: `Some(None)` means the
/// tuple has no latest row (ended in this group).
pub(crate) type TupleOverlay = HashMap<Vec<u8>, Option<TupleRow>>;

/// Event ids logged earlier in this group: id -> (seq, time).
pub(crate) type IdOverlay = HashMap<String, (u64, u64)>;

/// What earlier requests of a write group did, as later ones (and the
/// group's own checks) must see it before the batch is written.
#[derive(Default)]
pub(crate) struct Overlays {
    pub leases: LeaseOverlay,
    pub tuples: TupleOverlay,
    pub models: ModelOverlay,
    pub ids: IdOverlay,
    /// Origin marks set earlier in this group.
    pub origins: HashMap<String, u64>,
    /// Updates held for importing monitors, by pattern, in log order.
    pub pending: Vec<(String, PendingUpdate)>,
    /// Documents put (`Some`, with the seq that put it) or deleted (`None`)
    /// in this group, in log order.
    pub docs: Vec<crate::fold::DocChange>,
}

/// Lease `id` as the group sees it.
pub(crate) fn lease(engine: &dyn Engine, overlay: &LeaseOverlay, id: &str) -> Result<Option<Lease>> {
    if let Some(state) = overlay.get(id) {
        return Ok(state.clone());
    }
    match engine.get(CF_LEASES, id.as_bytes())? {
        Some(bytes) => Ok(Some(decode_lease_row(id.as_bytes(), &bytes)?)),
        None => Ok(None),
    }
}

/// The latest row of the tuple under `key`, as the group sees it.
pub(crate) fn tuple(engine: &dyn Engine, overlay: &TupleOverlay, key: &[u8]) -> Result<Option<TupleRow>> {
    if let Some(state) = overlay.get(key) {
        return Ok(state.clone());
    }
    match engine.get(CF_TUPLES, key)? {
        Some(bytes) => Ok(Some(decode_row("tuple", key, &bytes)?)),
        None => Ok(None),
    }
}
