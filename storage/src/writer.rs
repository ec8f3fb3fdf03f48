//! The single writer: group commit of concurrent appends.
//!
//! One OS thread owns every write to the database. Callers validate and
//! encode their records on their own threads, then queue a request on a
//! bounded channel and await a oneshot reply. The writer takes the first
//! request, drains whatever else is already queued (up to
//! [`GROUP_RECORDS_MAX`] records or [`GROUP_BYTES_MAX`] bytes), assigns
//! sequence numbers, and puts the log records and all their materialized
//! effects (latest tuple, history row, lease row, document row, counters) into
//! one RocksDB WriteBatch. It writes that batch with one WAL write and, under
//! `sync`, one fsync. Only then does it publish the new durable sequence
//! number to feeds and answer the callers. The more callers wait, the more
//! records share one fsync; with one caller it degenerates to one record per
//! sync, which is the best a durable store can do.
//!
//! Why a thread of our own and not RocksDB's internal write grouping: the
//! sequence number must be assigned in the same critical section that orders
//! the batch, and preconditions (a renew needs a live lease) must see every
//! earlier write, including those of the same group. One writer makes both
//! trivially true with no locks. The rejected alternative, a mutex around
//! "assign seq + write", serializes fsyncs one caller at a time.
//!
//! A request that fails its preconditions gets its error and consumes no
//! sequence number; the rest of the group commits. If the WAL write or sync
//! fails, the writer is poisoned: the outcome on disk is unknown, so every
//! later request is refused until the store is reopened and recovery decides.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use crate::anycast::Anycast;
use crate::error::{Error, Result};
use crate::keys::{self, CF_DOCS, CF_EVENT_IDS, CF_HISTORY, CF_LEASES, CF_LOG, CF_META, CF_TOMBSTONES, CF_TUPLES};
use crate::limits::{ANYCAST_GROUPS_MAX, GROUP_BYTES_MAX, GROUP_RECORDS_MAX};
use crate::models::ModelOverlay;
use crate::record::{frame, Body, Distribution, MonitorChange, MonitorState, TupleImport};
use crate::recording::{Decision, PendingUpdate, Recording};
use crate::retention::TrimPlan;
use crate::rows::{
    decode_row, encode_row, DocRow, HistoryRow, Lease, MonitorRow, TombstoneReason, TombstoneRow, TupleRow,
};
use crate::store::{now_us, Durability, Shared};

/// The sequence numbers one append was given: `first..=last`, contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The first record's sequence number.
    pub first: u64,
    /// The last record's sequence number.
    pub last: u64,
    /// True when every record was an event already logged under the same id
    /// within the dedupe window: nothing new was written, and `first..=last`
    /// are the original sequence numbers.
    pub replayed: bool,
    /// Records received from a peer and dropped because their origin's
    /// mark showed they were appended before (see [`crate::Store::receive`]).
    pub dropped: u64,
}

impl Appended {
    /// How many records this append wrote: none when it was a replay of
    /// event ids already logged, or a received batch that was all repeats
    /// (whose range is then empty).
    pub fn written(&self) -> u64 {
        if self.replayed {
            0
        } else {
            (self.last + 1).saturating_sub(self.first)
        }
    }
}

/// Where received records come from: their origin site and, for each
/// record, its sequence number there.
pub(crate) struct Origin {
    pub site: String,
    pub seqs: Vec<u64>,
    /// The records are markers of a gap ending at `seqs[0]` (every entry
    /// the same): all of them or none are appended.
    pub gap: bool,
}

/// A record validated and encoded by its caller, waiting for a sequence number.
pub(crate) struct Prepared {
    pub body: Body,
    pub encoded_body: Vec<u8>,
}

/// What the writer is asked to do.
pub(crate) enum Request {
    Append {
        records: Vec<Prepared>,
        bytes: usize,
        /// Set for records received from a peer ([`crate::Store::receive`]).
        origin: Option<Origin>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Trim {
        plan: TrimPlan,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A monitor changes state: committed as a group of its own.
    Monitor {
        op: MonitorOp,
        reply: oneshot::Sender<Result<Appended>>,
    },
}

/// A monitor state change ([`crate::recording`]).
pub(crate) enum MonitorOp {
    /// Start importing `pattern`.
    Start { pattern: String, reason: String },
    /// Complete the import of `pattern`, whose copy came from `source` and
    /// included, per origin, everything up to `marks`.
    Complete { pattern: String, source: String, marks: Vec<(String, u64)> },
    /// Stop the monitor of `pattern`.
    Stop { pattern: String, reason: String },
}

impl Request {
    fn size(&self) -> (usize, usize) {
        match self {
            Request::Append { records, bytes, .. } => (records.len(), *bytes),
            Request::Trim { .. } | Request::Monitor { .. } => (0, 0),
        }
    }
}

/// The writer's own state. Only the writer thread touches it.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    next_seq: u64,
    log_bytes: u64,
    last_time_us: u64,
    floor: u64,
    /// Committed anycast groups, for distribution `one`.
    anycast: Anycast,
    /// The monitors running here: which tuple updates are recorded.
    recording: Recording,
}

/// Lease state as the group sees it: `Some(None)` means deleted in this group.
type LeaseOverlay = HashMap<String, Option<Lease>>;

/// Tuple state as the group sees it, by tuple key: `Some(None)` means the
/// tuple has no latest row (ended in this group).
type TupleOverlay = HashMap<Vec<u8>, Option<TupleRow>>;

/// Event ids logged earlier in this group: id -> (seq, time).
type IdOverlay = HashMap<String, (u64, u64)>;

/// What earlier requests of a write group did, as later ones (and the
/// group's own checks) must see it before the batch is written.
#[derive(Default)]
struct Overlays {
    leases: LeaseOverlay,
    tuples: TupleOverlay,
    models: ModelOverlay,
    ids: IdOverlay,
    /// Origin marks set earlier in this group.
    origins: HashMap<String, u64>,
    /// Updates held for importing monitors, by pattern, in log order.
    pending: Vec<(String, PendingUpdate)>,
}

/// What the dedupe check says about one append.
enum Dedupe {
    /// No event in it was logged before within the window.
    New,
    /// Every record is an event logged before: answer with the originals.
    Replay { first: u64, last: u64 },
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        next_seq: u64,
        log_bytes: u64,
        last_time_us: u64,
        floor: u64,
        anycast: Anycast,
        recording: Recording,
    ) -> Writer {
        Writer { shared, next_seq, log_bytes, last_time_us, floor, anycast, recording }
    }

    /// Runs until every sender is dropped, then returns.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut pending: Option<Request> = None;
        loop {
            let first = match pending.take() {
                Some(r) => r,
                None => match rx.blocking_recv() {
                    Some(r) => r,
                    None => return,
                },
            };
            if let Request::Monitor { op, reply } = first {
                let _ = reply.send(self.commit_monitor(op));
                continue;
            }
            #[cfg(test)]
            drop(self.shared.writer_gate.lock().unwrap_or_else(|p| p.into_inner()));
            let (mut records, mut bytes) = first.size();
            let mut group = vec![first];
            while let Ok(next) = rx.try_recv() {
                // A monitor change is a group of its own.
                if matches!(next, Request::Monitor { .. }) {
                    pending = Some(next);
                    break;
                }
                let (r, b) = next.size();
                if records + r > GROUP_RECORDS_MAX || bytes + b > GROUP_BYTES_MAX {
                    pending = Some(next);
                    break;
                }
                records += r;
                bytes += b;
                group.push(next);
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        if let Some(reason) = self.shared.poison_reason() {
            for req in group {
                reply_err(req, Error::Poisoned(reason.clone()));
            }
            return;
        }
        let mut batch = WriteBatch::default();
        let mut ov = Overlays::default();
        let mut acks: Vec<(oneshot::Sender<Result<Appended>>, Appended)> = Vec::new();
        let mut trim_acks = Vec::new();
        let start = (self.next_seq, self.log_bytes, self.last_time_us, self.floor);
        let time_us = now_us().max(self.last_time_us);
        let policy = self.shared.policy();
        let mut dirty = false;
        let mut group = group.into_iter();
        while let Some(req) = group.next() {
            match req {
                Request::Append { mut records, reply, origin, .. } => {
                    // Received records: drop those at or below their
                    // origin's mark (a retried batch), then move the mark.
                    let mut dropped = 0u64;
                    let mut kept_seqs = Vec::new();
                    if let Some(o) = &origin {
                        let mark = match ov.origins.get(&o.site) {
                            Some(m) => *m,
                            None => match self.shared.origin_mark(&o.site) {
                                Ok(m) => m,
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                    continue;
                                }
                            },
                        };
                        let mut high = mark;
                        let mut keep = o.seqs.iter().map(|&seq| {
                            let fresh = seq > high;
                            if !o.gap {
                                high = high.max(seq);
                            }
                            fresh
                        });
                        let fresh: Vec<bool> = o.seqs.iter().map(|_| keep.next().unwrap_or(false)).collect();
                        kept_seqs = o.seqs.iter().zip(&fresh).filter(|(_, f)| **f).map(|(s, _)| *s).collect();
                        let mut flags = fresh.iter();
                        let before = records.len();
                        records.retain(|_| flags.next().copied().unwrap_or(false));
                        dropped = (before - records.len()) as u64;
                        if records.is_empty() {
                            // Nothing new. The earlier copy may still be in
                            // this group's batch: answer once it is durable.
                            let at = self.next_seq;
                            acks.push((reply, Appended { first: at, last: at - 1, replayed: true, dropped }));
                            continue;
                        }
                    }
                    // A refused request touches nothing: it is checked before
                    // any of its effects enter the batch.
                    if let Err(e) = self.check_preconditions(&ov.leases, &ov.tuples, &ov.models, &records, time_us) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let dedupe = match origin {
                        // Received records are deduplicated by their origin's
                        // mark, not by event id.
                        Some(_) => Ok(Dedupe::New),
                        None => self.dedupe(&ov.ids, &records, time_us),
                    };
                    match dedupe {
                        Ok(Dedupe::New) => {}
                        Ok(Dedupe::Replay { first, last }) => {
                            // The original may be earlier in this very group,
                            // not yet durable: the replay is answered with the
                            // group, after its WAL sync, and fails with it.
                            acks.push((reply, Appended { first, last, replayed: true, dropped: 0 }));
                            continue;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    }
                    let from = origin.as_ref().map(|o| (o.site.as_str(), kept_seqs.as_slice()));
                    let result = self.append(&mut batch, &mut ov, &policy, records, time_us, from);
                    let result = result.and_then(|appended| {
                        if let Some(o) = &origin {
                            let high = o
                                .seqs
                                .iter()
                                .copied()
                                .max()
                                .unwrap_or(0)
                                .max(ov.origins.get(&o.site).copied().unwrap_or(0));
                            batch.put_cf(self.shared.cf(keys::CF_ORIGINS)?, o.site.as_bytes(), high.to_be_bytes());
                            ov.origins.insert(o.site.clone(), high);
                        }
                        Ok(appended)
                    });
                    match result {
                        Ok(mut appended) => {
                            dirty = true;
                            appended.dropped = dropped;
                            acks.push((reply, appended));
                        }
                        Err(e) => {
                            // The batch may hold part of this request: drop the
                            // whole group unwritten, and tell every caller in it.
                            // Nothing reached the WAL, so the store is not poisoned.
                            let reason = e.to_string();
                            let abort =
                                || Error::corruption("write group", format!("group aborted unwritten: {reason}"));
                            let _ = reply.send(Err(abort()));
                            for rest in group {
                                reply_err(rest, abort());
                            }
                            self.fail_group(start, abort, acks, trim_acks);
                            return;
                        }
                    }
                }
                Request::Trim { plan, reply } => match self.trim(&mut batch, &ov.tuples, &plan) {
                    Ok(()) => {
                        dirty = true;
                        trim_acks.push(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                // Never grouped (see `run`); answered as if alone.
                Request::Monitor { op, reply } => {
                    let _ = reply.send(Err(Error::invalid(
                        "monitor",
                        format!("a monitor change of {} was grouped with other writes", op.pattern()),
                    )));
                }
            }
        }
        if !dirty {
            // Only replays and received batches that were all duplicates:
            // their originals are durable already, since nothing of this
            // group is written.
            for (reply, appended) in acks {
                let _ = reply.send(Ok(appended));
            }
            return;
        }
        if let Err(e) = self.put_meta(&mut batch) {
            let reason = e.to_string();
            self.fail_group(start, || Error::corruption("write group", reason.clone()), acks, trim_acks);
            return;
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(self.shared.durability == Durability::Sync);
        opts.disable_wal(false);
        let records = acks.iter().map(|(_, a)| a.written()).sum::<u64>();
        if let Err(e) = self.write(batch, &opts) {
            let reason = format!("WAL write failed: {e}");
            tracing::error!(%reason, "store poisoned; refusing writes until reopened");
            self.shared.poison(reason.clone());
            self.fail_group(start, || Error::Poisoned(reason.clone()), acks, trim_acks);
            return;
        }
        self.shared.floor.store(self.floor, Ordering::Release);
        for (id, lease) in &ov.leases {
            if let Err(e) = self.anycast.apply(id, lease.as_ref()) {
                tracing::error!(lease = %id, error = %e, "lease left out of its anycast group");
            }
        }
        self.anycast.prune();
        self.recording.add_pending(std::mem::take(&mut ov.pending));
        self.shared.stats.groups.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.records.fetch_add(records, Ordering::Relaxed);
        // FEED-2: readers learn of a record only after its batch is durable.
        self.shared.durable.send_replace(self.next_seq - 1);
        for (reply, appended) in acks {
            let _ = reply.send(Ok(appended));
        }
        for reply in trim_acks {
            let _ = reply.send(Ok(()));
        }
    }

    /// The one place the writer hands a batch to RocksDB.
    fn write(&self, batch: WriteBatch, opts: &WriteOptions) -> Result<(), String> {
        #[cfg(test)]
        if self.shared.fail_next_write.swap(false, Ordering::AcqRel) {
            return Err("injected WAL failure".to_string());
        }
        self.shared.db.write_opt(batch, opts).map_err(|e| e.to_string())
    }

    fn fail_group(
        &mut self,
        start: (u64, u64, u64, u64),
        err: impl Fn() -> Error,
        acks: Vec<(oneshot::Sender<Result<Appended>>, Appended)>,
        trims: Vec<oneshot::Sender<Result<()>>>,
    ) {
        (self.next_seq, self.log_bytes, self.last_time_us, self.floor) = start;
        self.anycast.prune();
        for (reply, _) in acks {
            let _ = reply.send(Err(err()));
        }
        for reply in trims {
            let _ = reply.send(Err(err()));
        }
    }

    /// Appends `records`: local ones, or (with `from`: the origin site and
    /// each record's seq there) received ones.
    fn append(
        &mut self,
        batch: &mut WriteBatch,
        ov: &mut Overlays,
        policy: &std::collections::BTreeSet<String>,
        records: Vec<Prepared>,
        time_us: u64,
        from: Option<(&str, &[u64])>,
    ) -> Result<Appended> {
        let first = self.next_seq;
        let origin = from.map(|(site, _)| site);
        for (i, mut rec) in records.into_iter().enumerate() {
            let seq = self.next_seq;
            let mut reencode = false;
            if let Body::Event(e) = &mut rec.body {
                if e.distribution == Distribution::One {
                    e.assigned = self.anycast.choose(&ov.leases, e, time_us)?;
                    reencode = !e.assigned.is_empty();
                }
                if let Some(t) = &mut e.tuple {
                    let (site, origin_seq) = match from {
                        Some((site, seqs)) => (site, seqs.get(i).copied().unwrap_or(0)),
                        None => (self.shared.site.as_str(), seq),
                    };
                    let decision = self.recording.decide(policy, &e.channel, site, origin_seq, from.is_none());
                    let recorded = decision == Decision::Record;
                    reencode |= t.recorded != recorded;
                    t.recorded = recorded;
                    if let Decision::Pend(pattern) = decision {
                        let update = PendingUpdate {
                            origin: site.to_string(),
                            origin_seq,
                            time_us,
                            channel: e.channel.clone(),
                            field: t.field.clone(),
                            value: t.value.clone(),
                            expires_at_us: t.expires_at_us,
                            source: e.from.clone(),
                        };
                        ov.pending.push((pattern, update));
                    }
                }
            }
            if reencode {
                rec.encoded_body.clear();
                rec.body.encode_into(&mut rec.encoded_body)?;
            }
            let bytes = frame(seq, time_us, origin.unwrap_or(&self.shared.site), rec.body.kind(), &rec.encoded_body)?;
            batch.put_cf(self.shared.cf(CF_LOG)?, keys::log_key(seq), &bytes);
            // A received record is an event: it touches the event-id index,
            // and the tuples only when this site records its channel.
            self.materialize(batch, &mut ov.leases, seq, time_us, &rec.body)?;
            self.materialize_tuple(batch, &mut ov.tuples, seq, time_us, &rec.body)?;
            ov.models.materialize(&self.shared, batch, seq, time_us, &rec.body)?;
            if let Body::Event(e) = &rec.body {
                if !e.id.is_empty() {
                    ov.ids.insert(e.id.clone(), (seq, time_us));
                }
            }
            self.log_bytes += bytes.len() as u64;
            self.next_seq += 1;
        }
        self.last_time_us = time_us;
        Ok(Appended { first, last: self.next_seq - 1, replayed: false, dropped: 0 })
    }

    /// Looks up the request's event ids. An id logged within the dedupe
    /// window makes its event a retry: if every record of the request is such
    /// a retry, the request is answered with the original sequence numbers
    /// and writes nothing; a request mixing retries and new records is
    /// refused, since answering it either way would be wrong.
    fn dedupe(&self, ids: &IdOverlay, records: &[Prepared], time_us: u64) -> Result<Dedupe> {
        let window_us = self.shared.dedupe_window.as_micros().min(u128::from(u64::MAX)) as u64;
        let mut seen: Vec<(String, u64)> = Vec::new();
        for rec in records {
            let Body::Event(e) = &rec.body else { continue };
            if e.id.is_empty() {
                continue;
            }
            let found = match ids.get(&e.id) {
                Some(v) => Some(*v),
                None => match self.shared.db.get_pinned_cf(self.shared.cf(CF_EVENT_IDS)?, e.id.as_bytes())? {
                    Some(v) => Some(keys::decode_event_id_value(&v).ok_or_else(|| {
                        Error::corruption(format!("event id {}", e.id), "index value is not 16 bytes")
                    })?),
                    None => None,
                },
            };
            if let Some((seq, at)) = found {
                if time_us.saturating_sub(at) <= window_us {
                    seen.push((e.id.clone(), seq));
                }
            }
        }
        if seen.is_empty() {
            return Ok(Dedupe::New);
        }
        if seen.len() == records.len() {
            let first = seen.iter().map(|(_, s)| *s).min().unwrap_or_default();
            let last = seen.iter().map(|(_, s)| *s).max().unwrap_or_default();
            return Ok(Dedupe::Replay { first, last });
        }
        let list: Vec<String> = seen.iter().map(|(id, seq)| format!("{id} (seq {seq})")).collect();
        Err(Error::Conflict {
            what: "event id",
            detail: format!(
                "{} of {} events were already published: {}; retry the batch unchanged or without them",
                seen.len(),
                records.len(),
                list.join(", ")
            ),
        })
    }

    /// Checks that every lease mutation of one request applies, without
    /// changing anything, so a refused request leaves no trace in the batch.
    ///
    /// The server enforces lease lifetimes here, against the group's time:
    /// a lease whose expiry has passed can no longer be renewed, and an
    /// expire record applies only to a lease that really has lapsed (a
    /// renewal that won the race keeps the lease alive).
    ///
    /// Tuples likewise: an expire record applies only to a live tuple whose
    /// expiry has passed (a refresh that won the race keeps it), and a delete
    /// only to a live tuple.
    fn check_preconditions(
        &self,
        overlay: &LeaseOverlay,
        tuples: &TupleOverlay,
        models: &ModelOverlay,
        records: &[Prepared],
        time_us: u64,
    ) -> Result<()> {
        self.check_tuples(tuples, records, time_us)?;
        for rec in records {
            match &rec.body {
                Body::Monitor(m) => {
                    return Err(Error::invalid(
                        "monitor",
                        format!("the monitor of {} changes state through the store's monitor calls", m.pattern),
                    ))
                }
                Body::TupleImport(t) => match self.recording.covering(&t.channel) {
                    Some((_, m)) if m.state == MonitorState::Importing => {}
                    _ => {
                        return Err(Error::Conflict {
                            what: "tuple import",
                            detail: format!("no importing monitor here covers {}", t.channel),
                        })
                    }
                },
                _ => {}
            }
        }
        let model_records: Vec<&Body> =
            records.iter().map(|r| &r.body).filter(|b| matches!(b, Body::ModelPut(_) | Body::ModelDelete(_))).collect();
        if !model_records.is_empty() {
            models.clone().check(&self.shared, &model_records)?;
        }
        // id -> its expiry while live after the records seen so far, None once ended.
        let mut local: HashMap<&str, Option<u64>> = HashMap::new();
        // Anycast groups granted into earlier in this request.
        let mut new_groups: BTreeSet<&str> = BTreeSet::new();
        let not_found = |id: &str| Error::NotFound { what: "lease", key: id.to_string() };
        for rec in records {
            let id = match &rec.body {
                Body::LeaseGrant(g) => g.id.as_str(),
                Body::LeaseRenew(r) => r.id.as_str(),
                Body::LeaseRelease(e) | Body::LeaseExpire(e) => e.id.as_str(),
                _ => continue,
            };
            let current = match local.get(id) {
                Some(state) => *state,
                None => self.lease(overlay, id)?.map(|l| l.expires_at_us),
            };
            let next = match &rec.body {
                Body::LeaseGrant(g) => match current {
                    Some(_) => {
                        return Err(Error::Conflict { what: "lease", detail: format!("lease {id} already exists") })
                    }
                    None => {
                        if let Some(name) = g.group.as_deref() {
                            let groups = self.anycast.groups_after_join(overlay, &new_groups, name);
                            if let Some(n) = groups.filter(|n| *n > ANYCAST_GROUPS_MAX) {
                                return Err(Error::TooLarge {
                                    what: "anycast groups",
                                    size: n,
                                    max: ANYCAST_GROUPS_MAX,
                                });
                            }
                            new_groups.insert(name);
                        }
                        Some(g.expires_at_us)
                    }
                },
                Body::LeaseRenew(r) => match current {
                    Some(expires) if expires > time_us => Some(r.expires_at_us),
                    Some(_) => return Err(Error::NotFound { what: "lease", key: format!("{id} (it has lapsed)") }),
                    None => return Err(not_found(id)),
                },
                Body::LeaseExpire(_) => match current {
                    Some(expires) if expires <= time_us => None,
                    Some(_) => {
                        return Err(Error::Conflict {
                            what: "lease",
                            detail: format!("lease {id} has not lapsed; it was renewed"),
                        })
                    }
                    None => return Err(not_found(id)),
                },
                _ => match current {
                    Some(_) => None,
                    None => return Err(not_found(id)),
                },
            };
            local.insert(id, next);
        }
        Ok(())
    }

    fn check_tuples(&self, tuples: &TupleOverlay, records: &[Prepared], time_us: u64) -> Result<()> {
        // tuple key -> its expiry (None: never) while live after the records
        // seen so far in this request; None once ended.
        let mut local: HashMap<Vec<u8>, Option<Option<u64>>> = HashMap::new();
        for rec in records {
            if let Some(w) = rec.body.tuple_write() {
                local.insert(keys::tuple_key(w.channel, w.field), Some(w.expires_at_us));
                continue;
            }
            let (Body::TupleExpire(t) | Body::TupleDelete(t)) = &rec.body else { continue };
            let key = keys::tuple_key(&t.channel, &t.field);
            let current = match local.get(&key) {
                Some(state) => *state,
                None => self.tuple(tuples, &key)?.map(|row| row.expires_at_us),
            };
            let what = "tuple";
            let name = || format!("({}, {})", t.channel, t.field);
            let lapsed = current.flatten().is_some_and(|at| at <= time_us);
            match (&rec.body, current) {
                (_, None) => return Err(Error::NotFound { what, key: name() }),
                // Past its expiry the tuple is gone for everything but its
                // expire record.
                (Body::TupleDelete(_), Some(_)) if lapsed => {
                    return Err(Error::NotFound { what, key: format!("{} (it expired)", name()) })
                }
                (Body::TupleExpire(_), Some(expires)) if expires.is_none_or(|e| e > time_us) => {
                    return Err(Error::Conflict { what, detail: format!("tuple {} has not expired", name()) })
                }
                _ => {}
            }
            local.insert(key, None);
        }
        Ok(())
    }

    fn tuple(&self, tuples: &TupleOverlay, key: &[u8]) -> Result<Option<TupleRow>> {
        if let Some(state) = tuples.get(key) {
            return Ok(state.clone());
        }
        match self.shared.db.get_pinned_cf(self.shared.cf(CF_TUPLES)?, key)? {
            Some(bytes) => Ok(Some(decode_row("tuple", key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The tuple effects of a record: a set (from a tuple-set record or an
    /// attribute event) writes the latest row, a history row only when the
    /// value changed (or the tuple was not live), and clears a tombstone; an
    /// expire or delete removes the latest row and leaves a tombstone. The
    /// history is never touched by an end.
    fn materialize_tuple(
        &self,
        batch: &mut WriteBatch,
        tuples: &mut TupleOverlay,
        seq: u64,
        time_us: u64,
        body: &Body,
    ) -> Result<()> {
        let s = &self.shared;
        if let Some(w) = body.tuple_write() {
            let key = keys::tuple_key(w.channel, w.field);
            let ended_here = matches!(tuples.get(&key), Some(None));
            let stored = self.tuple(tuples, &key)?;
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
            batch.put_cf(s.cf(CF_TUPLES)?, &key, encode_row(&row));
            if prev.as_ref().is_none_or(|p| p.value != row.value) {
                let hist = HistoryRow {
                    time_us,
                    value: row.value.clone(),
                    expires_at_us: row.expires_at_us,
                    source: row.source.clone(),
                };
                batch.put_cf(s.cf(CF_HISTORY)?, keys::history_key(w.channel, w.field, seq), encode_row(&hist));
            }
            if prev.is_none() && !lapsed && (ended_here || s.db.get_pinned_cf(s.cf(CF_TOMBSTONES)?, &key)?.is_some()) {
                batch.delete_cf(s.cf(CF_TOMBSTONES)?, &key);
            }
            tuples.insert(key, Some(row));
            return Ok(());
        }
        if let Body::TupleImport(t) = body {
            return self.materialize_import(batch, tuples, seq, t);
        }
        let (reason, t) = match body {
            Body::TupleExpire(t) => (TombstoneReason::Expired, t),
            Body::TupleDelete(t) => (TombstoneReason::Deleted, t),
            _ => return Ok(()),
        };
        let key = keys::tuple_key(&t.channel, &t.field);
        batch.delete_cf(s.cf(CF_TUPLES)?, &key);
        batch.put_cf(s.cf(CF_TOMBSTONES)?, &key, encode_row(&TombstoneRow { seq, time_us, reason }));
        tuples.insert(key, None);
        Ok(())
    }

    /// A backfill row: a history row under this record's seq, the latest
    /// value, or both, with the time the value was set.
    fn materialize_import(
        &self,
        batch: &mut WriteBatch,
        tuples: &mut TupleOverlay,
        seq: u64,
        t: &TupleImport,
    ) -> Result<()> {
        let s = &self.shared;
        if t.history {
            let hist = HistoryRow {
                time_us: t.time_us,
                value: t.value.clone(),
                expires_at_us: t.expires_at_us,
                source: t.source.clone(),
            };
            batch.put_cf(s.cf(CF_HISTORY)?, keys::history_key(&t.channel, &t.field, seq), encode_row(&hist));
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
            batch.put_cf(s.cf(CF_TUPLES)?, &key, encode_row(&row));
            if matches!(tuples.get(&key), Some(None)) || s.db.get_pinned_cf(s.cf(CF_TOMBSTONES)?, &key)?.is_some() {
                batch.delete_cf(s.cf(CF_TOMBSTONES)?, &key);
            }
            tuples.insert(key, Some(row));
        }
        Ok(())
    }

    /// Commits a monitor's state change as a group of its own: the monitor
    /// record, and for a completion the held updates its copy did not
    /// include, first. The writer's recording state changes only once the
    /// batch is durable.
    fn commit_monitor(&mut self, op: MonitorOp) -> Result<Appended> {
        if let Some(reason) = self.shared.poison_reason() {
            return Err(Error::Poisoned(reason));
        }
        let mut bodies = Vec::new();
        let change = match op {
            MonitorOp::Start { pattern, reason } => {
                self.recording.check_start(&pattern)?;
                MonitorChange { pattern, state: MonitorState::Importing, source: String::new(), marks: vec![], reason }
            }
            MonitorOp::Stop { pattern, reason } => {
                if !self.recording.monitors.contains_key(&pattern) {
                    return Err(Error::NotFound { what: "monitor", key: pattern });
                }
                MonitorChange { pattern, state: MonitorState::Stopped, source: String::new(), marks: vec![], reason }
            }
            MonitorOp::Complete { pattern, source, marks } => {
                let m = self.recording.completable(&pattern)?;
                let copied: HashMap<&str, u64> = marks.iter().map(|(s, n)| (s.as_str(), *n)).collect();
                let mut held = 0usize;
                for u in &m.pending {
                    held += 1;
                    if copied.get(u.origin.as_str()).is_some_and(|&mark| u.origin_seq <= mark) {
                        continue;
                    }
                    bodies.push(Body::TupleImport(TupleImport {
                        channel: u.channel.clone(),
                        field: u.field.clone(),
                        value: u.value.clone(),
                        time_us: u.time_us,
                        expires_at_us: u.expires_at_us,
                        source: u.source.clone(),
                        // Decided below against the value before it.
                        history: true,
                        latest: true,
                    }));
                }
                let reason = format!(
                    "backfilled from {}; {} of {held} updates held while importing were not in the copy",
                    if source.is_empty() { "no replica" } else { source.as_str() },
                    bodies.len()
                );
                MonitorChange { pattern, state: MonitorState::Complete, source, marks, reason }
            }
        };
        crate::validate::body(&Body::Monitor(change.clone()))?;
        let start = (self.next_seq, self.log_bytes, self.last_time_us, self.floor);
        let time_us = now_us().max(self.last_time_us);
        let mut batch = WriteBatch::default();
        let mut tuples = TupleOverlay::new();
        let first = self.next_seq;
        let written = self.put_monitor_group(&mut batch, &mut tuples, bodies, &change, time_us);
        if let Err(e) = written.and_then(|()| self.put_meta(&mut batch)) {
            (self.next_seq, self.log_bytes, self.last_time_us, self.floor) = start;
            return Err(e);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(self.shared.durability == Durability::Sync);
        if let Err(e) = self.write(batch, &opts) {
            let reason = format!("WAL write failed: {e}");
            tracing::error!(%reason, "store poisoned; refusing writes until reopened");
            self.shared.poison(reason.clone());
            (self.next_seq, self.log_bytes, self.last_time_us, self.floor) = start;
            return Err(Error::Poisoned(reason));
        }
        match change.state {
            MonitorState::Importing => {
                let m = crate::recording::Monitor {
                    state: MonitorState::Importing,
                    marks: HashMap::new(),
                    pending: Vec::new(),
                    pending_bytes: 0,
                    broken: None,
                };
                self.recording.monitors.insert(change.pattern.clone(), m);
            }
            MonitorState::Complete => {
                if let Some(m) = self.recording.monitors.get_mut(&change.pattern) {
                    m.state = MonitorState::Complete;
                    m.marks = change.marks.iter().cloned().collect();
                    m.pending = Vec::new();
                    m.pending_bytes = 0;
                }
            }
            MonitorState::Stopped => {
                self.recording.monitors.remove(&change.pattern);
            }
        }
        self.shared.set_monitor_states(&self.recording);
        let appended = Appended { first, last: self.next_seq - 1, replayed: false, dropped: 0 };
        self.shared.stats.groups.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.records.fetch_add(appended.written(), Ordering::Relaxed);
        self.shared.durable.send_replace(self.next_seq - 1);
        Ok(appended)
    }

    /// Puts a monitor group's records and effects into `batch`.
    fn put_monitor_group(
        &mut self,
        batch: &mut WriteBatch,
        tuples: &mut TupleOverlay,
        imports: Vec<Body>,
        change: &MonitorChange,
        time_us: u64,
    ) -> Result<()> {
        let s = self.shared.clone();
        for mut body in imports {
            if let Body::TupleImport(t) = &mut body {
                // The rule of a live update: a history row only for a change.
                let key = keys::tuple_key(&t.channel, &t.field);
                let prev = self.tuple(tuples, &key)?;
                let lapsed = prev.as_ref().is_some_and(|p| p.expires_at_us.is_some_and(|at| at <= t.time_us));
                t.history = lapsed || prev.as_ref().is_none_or(|p| p.value != t.value);
            }
            let seq = self.put_log(batch, &body, time_us)?;
            self.materialize_tuple(batch, tuples, seq, time_us, &body)?;
        }
        let body = Body::Monitor(change.clone());
        let seq = self.put_log(batch, &body, time_us)?;
        let cf = |name| s.cf(name);
        if change.state != MonitorState::Complete {
            // Start and stop both leave the subtree without rows.
            let from = change.pattern.as_bytes();
            let to = keys::prefix_end(from).ok_or_else(|| Error::invalid("recording pattern", "has no end"))?;
            for name in [CF_TUPLES, CF_HISTORY, CF_TOMBSTONES] {
                batch.delete_range_cf(cf(name)?, from, &to);
            }
        }
        let started_seq = match change.state {
            MonitorState::Importing => seq,
            _ => match s.db.get_pinned_cf(cf(keys::CF_MONITORS)?, change.pattern.as_bytes())? {
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
        batch.put_cf(cf(keys::CF_MONITORS)?, change.pattern.as_bytes(), encode_row(&row));
        self.last_time_us = time_us;
        Ok(())
    }

    /// Frames `body` as the next local record and puts it in the log.
    fn put_log(&mut self, batch: &mut WriteBatch, body: &Body, time_us: u64) -> Result<u64> {
        let seq = self.next_seq;
        let mut encoded = Vec::new();
        body.encode_into(&mut encoded)?;
        let bytes = frame(seq, time_us, &self.shared.site, body.kind(), &encoded)?;
        batch.put_cf(self.shared.cf(CF_LOG)?, keys::log_key(seq), &bytes);
        self.log_bytes += bytes.len() as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    fn lease(&self, overlay: &LeaseOverlay, id: &str) -> Result<Option<Lease>> {
        if let Some(state) = overlay.get(id) {
            return Ok(state.clone());
        }
        let cf = self.shared.cf(CF_LEASES)?;
        match self.shared.db.get_pinned_cf(cf, id.as_bytes())? {
            Some(bytes) => Ok(Some(crate::rows::decode_lease_row(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    fn materialize(
        &self,
        batch: &mut WriteBatch,
        overlay: &mut LeaseOverlay,
        seq: u64,
        time_us: u64,
        body: &Body,
    ) -> Result<()> {
        let s = &self.shared;
        match body {
            // An event without an id is never deduplicated, so not indexed.
            Body::Event(e) if e.id.is_empty() => {}
            Body::Event(e) => {
                batch.put_cf(s.cf(CF_EVENT_IDS)?, e.id.as_bytes(), keys::event_id_value(seq, time_us));
            }
            // Tuple effects, of these and of attribute events: materialize_tuple.
            Body::TupleSet(_) | Body::TupleExpire(_) | Body::TupleDelete(_) | Body::TupleImport(_) => {}
            // Written by `commit_monitor` only, with its own effects.
            Body::Monitor(_) => {}
            Body::LeaseGrant(g) => {
                let lease = Lease::granted(g, seq);
                batch.put_cf(s.cf(CF_LEASES)?, g.id.as_bytes(), crate::rows::encode_lease_row(&lease));
                overlay.insert(g.id.clone(), Some(lease));
            }
            Body::LeaseRenew(r) => {
                let Some(mut lease) = self.lease(overlay, &r.id)? else {
                    return Err(Error::NotFound { what: "lease", key: r.id.clone() });
                };
                lease.ttl_ms = r.ttl_ms;
                lease.expires_at_us = r.expires_at_us;
                lease.renewed_seq = seq;
                batch.put_cf(s.cf(CF_LEASES)?, r.id.as_bytes(), crate::rows::encode_lease_row(&lease));
                overlay.insert(r.id.clone(), Some(lease));
            }
            Body::LeaseRelease(e) | Body::LeaseExpire(e) => {
                batch.delete_cf(s.cf(CF_LEASES)?, e.id.as_bytes());
                overlay.insert(e.id.clone(), None);
            }
            Body::DocPut(d) => {
                let row = DocRow { seq, time_us, value: d.value.clone() };
                batch.put_cf(s.cf(CF_DOCS)?, d.key.as_bytes(), encode_row(&row));
            }
            Body::DocDelete(d) => batch.delete_cf(s.cf(CF_DOCS)?, d.key.as_bytes()),
            // Model effects: `models.rs`.
            Body::ModelClass(_) | Body::ModelPut(_) | Body::ModelDelete(_) => {}
        }
        Ok(())
    }

    fn trim(&mut self, batch: &mut WriteBatch, tuples: &TupleOverlay, plan: &TrimPlan) -> Result<()> {
        if let Some(log) = &plan.log {
            if log.from != self.floor || log.to > self.next_seq || log.bytes > self.log_bytes {
                return Err(Error::Conflict {
                    what: "retention",
                    detail: format!("plan for {}..{} is stale (floor is now {})", log.from, log.to, self.floor),
                });
            }
            batch.delete_range_cf(self.shared.cf(CF_LOG)?, keys::log_key(log.from), keys::log_key(log.to));
            // The id index follows the log: drop the ids of trimmed events,
            // unless a later event took the id over.
            let event_ids = self.shared.cf(CF_EVENT_IDS)?;
            for id in &log.event_ids {
                let current = self.shared.db.get_pinned_cf(event_ids, id.as_bytes())?;
                if current.and_then(|v| keys::decode_event_id_value(&v)).is_some_and(|(seq, _)| seq < log.to) {
                    batch.delete_cf(event_ids, id.as_bytes());
                }
            }
            self.floor = log.to;
            self.log_bytes -= log.bytes;
        }
        let history = self.shared.cf(CF_HISTORY)?;
        for (start, end) in &plan.history {
            batch.delete_range_cf(history, start, end);
        }
        if !plan.tombstones.is_empty() {
            // Remove a tombstone only if it is still the one planned: not
            // cleared by a set, nor replaced by a newer end, in this group
            // or since the plan's snapshot.
            let cf = self.shared.cf(CF_TOMBSTONES)?;
            let meta = self.shared.cf(CF_META)?;
            let mut floor = match self.shared.db.get_pinned_cf(meta, keys::META_TOMBSTONE_FLOOR)? {
                Some(v) => {
                    keys::decode_u64(&v).ok_or_else(|| Error::corruption("meta tombstone_floor", "not a u64"))?
                }
                None => 0,
            };
            for (key, seq) in &plan.tombstones {
                if tuples.contains_key(key) {
                    continue;
                }
                let Some(bytes) = self.shared.db.get_pinned_cf(cf, key)? else { continue };
                let row: TombstoneRow = decode_row("tombstone", key, &bytes)?;
                if row.seq == *seq {
                    batch.delete_cf(cf, key);
                    floor = floor.max(seq + 1);
                }
            }
            batch.put_cf(meta, keys::META_TOMBSTONE_FLOOR, floor.to_be_bytes());
        }
        Ok(())
    }

    fn put_meta(&self, batch: &mut WriteBatch) -> Result<()> {
        let meta = self.shared.cf(CF_META)?;
        batch.put_cf(meta, keys::META_NEXT_SEQ, self.next_seq.to_be_bytes());
        batch.put_cf(meta, keys::META_LOG_BYTES, self.log_bytes.to_be_bytes());
        batch.put_cf(meta, keys::META_LAST_TIME, self.last_time_us.to_be_bytes());
        batch.put_cf(meta, keys::META_FLOOR, self.floor.to_be_bytes());
        Ok(())
    }
}

fn reply_err(req: Request, e: Error) {
    match req {
        Request::Append { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Request::Trim { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Request::Monitor { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}

impl MonitorOp {
    fn pattern(&self) -> &str {
        match self {
            MonitorOp::Start { pattern, .. }
            | MonitorOp::Complete { pattern, .. }
            | MonitorOp::Stop { pattern, .. } => pattern,
        }
    }
}
