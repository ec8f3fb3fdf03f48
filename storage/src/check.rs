//! Offline integrity check of a data folder (`pepper check`).
//!
//! The check opens the store read-only (or takes any [`crate::Engine`], for
//! a store in memory) and verifies, from one snapshot:
//!
//! 1. every log record decodes and its crc matches, and it sits under the key
//!    of its own sequence number;
//! 2. sequence numbers are contiguous from the floor to the last record, and
//!    the `next_seq` counter is one past the last record;
//! 3. record times never decrease, and the `log_bytes` counter is exact;
//! 4. the materialized views agree with the log: replaying the retained log
//!    gives exactly the latest tuples, the tombstones of ended tuples, the
//!    lease table, the documents and the event id index it touched. Each
//!    history row matches a tuple write in the log, and every write that
//!    changed the value since the oldest kept row has its row (retention
//!    trims the oldest; a write that repeats the value adds none).
//!
//! Rows older than the floor cannot be compared with a record the log no
//! longer has; they are counted as unverifiable, not as problems.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use crate::engine::rocks::RocksEngine;
use crate::engine::{Direction, Engine, KeyRange, Reader};
use crate::error::{Error, Result};
use crate::keys::{
    self, CF_DOCS, CF_EVENT_IDS, CF_HISTORY, CF_LEASES, CF_LOG, CF_META, CF_MODEL_CLASSES, CF_MODEL_CLASS_INDEX,
    CF_MODEL_INSTANCES, CF_MODEL_REF_INDEX, CF_TOMBSTONES, CF_TUPLES,
};
use crate::record::{Body, Party, Record};
use crate::rows::{decode_row, DocRow, HistoryRow, Lease, ModelClassRow, ModelInstanceRow, TombstoneRow, TupleRow};

/// Most problems a report lists one by one; the rest are only counted.
pub const CHECK_PROBLEMS_LISTED_MAX: usize = 1000;

/// The outcome of [`check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Records in the log.
    pub records: u64,
    /// The lowest retained sequence number.
    pub floor: u64,
    /// The last sequence number (0 if the log was never written).
    pub last_seq: u64,
    /// Rows checked against the log.
    pub rows_verified: u64,
    /// Rows older than the retained log, which cannot be compared.
    pub rows_unverifiable: u64,
    /// The problems found, at most [`CHECK_PROBLEMS_LISTED_MAX`] of them.
    pub problems: Vec<String>,
    /// How many problems there were in all.
    pub problem_count: u64,
}

impl CheckReport {
    /// Whether the store passed.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < CHECK_PROBLEMS_LISTED_MAX {
            self.problems.push(p);
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "log: {} records, seq {}..={} ({} rows verified against the log, {} older than the retained log)",
            self.records, self.floor, self.last_seq, self.rows_verified, self.rows_unverifiable
        )?;
        if self.is_ok() {
            return write!(f, "ok: no problems found");
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if self.problem_count > self.problems.len() as u64 {
            writeln!(f, "... and {} more", self.problem_count - self.problems.len() as u64)?;
        }
        write!(f, "FAILED: {} problem(s)", self.problem_count)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Set {
    seq: u64,
    time_us: u64,
    value: String,
    expires_at_us: Option<u64>,
    source: Party,
}

/// A tuple after the records replayed so far.
enum TupleState {
    Live(Set),
    Gone(TombstoneRow),
}

/// A replayed tuple write, and whether it changed the value: `None` when
/// the value before it lies below the floor, unknown.
type Write = (Set, Option<bool>);

enum LeaseState {
    Granted(Lease),
    /// Renewed, but granted before the floor: only the renewed fields are known.
    Renewed {
        ttl_ms: u64,
        expires_at_us: u64,
        seq: u64,
    },
    Ended,
}

#[derive(Default)]
struct Replay {
    /// Whether the retained log starts at seq 1, so nothing came before it.
    whole_log: bool,
    tuples: HashMap<(String, String), TupleState>,
    history: HashMap<(String, String), Vec<Write>>,
    leases: HashMap<String, LeaseState>,
    docs: HashMap<String, Option<(u64, u64, Vec<u8>)>>,
    event_ids: HashMap<String, (u64, u64)>,
    /// (namespace, identity) -> the last put, or `None` once deleted.
    instances: HashMap<(String, String), Option<ModelInstanceRow>>,
    /// (namespace, lowercase class) -> the last definition.
    classes: HashMap<(String, String), ModelClassRow>,
}

impl Replay {
    fn apply(&mut self, rec: &Record) {
        if let Some(w) = rec.body.tuple_write() {
            let set = Set {
                seq: rec.seq,
                time_us: rec.time_us,
                value: w.value.to_string(),
                expires_at_us: w.expires_at_us,
                source: w.source.clone(),
            };
            let key = (w.channel.to_string(), w.field.to_string());
            let changed = match self.tuples.get(&key) {
                // A tuple past its expiry is not live, even before its
                // expire record: setting it again is a change.
                Some(TupleState::Live(prev)) if prev.expires_at_us.is_some_and(|at| at <= rec.time_us) => Some(true),
                Some(TupleState::Live(prev)) => Some(prev.value != set.value),
                Some(TupleState::Gone(_)) => Some(true),
                None if self.whole_log => Some(true),
                None => None,
            };
            self.history.entry(key.clone()).or_default().push((set.clone(), changed));
            self.tuples.insert(key, TupleState::Live(set));
        }
        match &rec.body {
            Body::Event(e) if e.id.is_empty() => {}
            Body::Event(e) => {
                self.event_ids.insert(e.id.clone(), (rec.seq, rec.time_us));
            }
            Body::TupleSet(_) => {}
            Body::TupleExpire(t) | Body::TupleDelete(t) => {
                let reason = match &rec.body {
                    Body::TupleExpire(_) => crate::rows::TombstoneReason::Expired,
                    _ => crate::rows::TombstoneReason::Deleted,
                };
                let gone = TombstoneRow { seq: rec.seq, time_us: rec.time_us, reason };
                self.tuples.insert((t.channel.clone(), t.field.clone()), TupleState::Gone(gone));
            }
            Body::LeaseGrant(g) => {
                self.leases.insert(g.id.clone(), LeaseState::Granted(Lease::granted(g, rec.seq)));
            }
            Body::LeaseRenew(r) => {
                let next = match self.leases.remove(&r.id) {
                    Some(LeaseState::Granted(mut l)) => {
                        l.ttl_ms = r.ttl_ms;
                        l.expires_at_us = r.expires_at_us;
                        l.renewed_seq = rec.seq;
                        LeaseState::Granted(l)
                    }
                    _ => LeaseState::Renewed { ttl_ms: r.ttl_ms, expires_at_us: r.expires_at_us, seq: rec.seq },
                };
                self.leases.insert(r.id.clone(), next);
            }
            Body::LeaseRelease(e) | Body::LeaseExpire(e) => {
                self.leases.insert(e.id.clone(), LeaseState::Ended);
            }
            Body::DocPut(d) => {
                self.docs.insert(d.key.clone(), Some((rec.seq, rec.time_us, d.value.clone())));
            }
            Body::DocDelete(d) => {
                self.docs.insert(d.key.clone(), None);
            }
            Body::ModelClass(c) => {
                let row = ModelClassRow {
                    seq: rec.seq,
                    time_us: rec.time_us,
                    name: c.name.clone(),
                    definition: c.definition.clone(),
                };
                self.classes.insert((c.namespace.clone(), c.name.to_ascii_lowercase()), row);
            }
            Body::ModelPut(p) => {
                let row = ModelInstanceRow {
                    seq: rec.seq,
                    time_us: rec.time_us,
                    class: p.class.clone(),
                    path: p.path.clone(),
                    properties: p.properties.clone(),
                    refs: p.refs.clone(),
                };
                self.instances.insert((p.namespace.clone(), p.identity.clone()), Some(row));
            }
            Body::ModelDelete(d) => {
                self.instances.insert((d.namespace.clone(), d.identity.clone()), None);
            }
            Body::TupleImport(t) => {
                let set = Set {
                    seq: rec.seq,
                    time_us: t.time_us,
                    value: t.value.clone(),
                    expires_at_us: t.expires_at_us,
                    source: t.source.clone(),
                };
                let key = (t.channel.clone(), t.field.clone());
                self.history.entry(key.clone()).or_default().push((set.clone(), Some(t.history)));
                if t.latest {
                    self.tuples.insert(key, TupleState::Live(set));
                }
            }
            // Starting and stopping a monitor clear its subtree's rows.
            Body::Monitor(m) if m.state != crate::record::MonitorState::Complete => {
                let under = |(channel, _): &(String, String)| channel.starts_with(&m.pattern);
                self.tuples.retain(|k, _| !under(k));
                self.history.retain(|k, _| !under(k));
            }
            Body::Monitor(_) => {}
        }
    }
}

/// Calls `f` on every entry of `family` in `snap`, in key order.
fn each(snap: &dyn Reader, family: &str, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
    snap.scan(family, KeyRange::ALL, Direction::Forward, &mut |key, value| {
        f(key, value)?;
        Ok(true)
    })
}

/// Model rows against the log, and the two model indexes against the
/// instance rows (the indexes need no log to be checked).
fn check_models(snap: &dyn Reader, replay: &mut Replay, floor: u64, report: &mut CheckReport) -> Result<()> {
    let split = |key: &[u8]| -> Option<(String, String)> {
        let at = key.iter().position(|b| *b == keys::SEP)?;
        Some((String::from_utf8(key[..at].to_vec()).ok()?, String::from_utf8(key[at + 1..].to_vec()).ok()?))
    };
    let mut live: HashMap<(String, String), ModelInstanceRow> = HashMap::new();
    each(snap, CF_MODEL_INSTANCES, |key, value| {
        let Some(k) = split(key) else {
            report.problem(format!("model instance key {key:02x?} has no separator"));
            return Ok(());
        };
        match decode_row::<ModelInstanceRow>("model instance", key, value) {
            Err(e) => report.problem(e.to_string()),
            Ok(row) => {
                match replay.instances.remove(&k) {
                    Some(Some(want)) if want == row => report.rows_verified += 1,
                    Some(Some(want)) => report
                        .problem(format!("instance {}: row disagrees with the log's put at seq {}", k.1, want.seq)),
                    Some(None) => report.problem(format!("instance {}: the log deleted it but its row remains", k.1)),
                    None if row.seq >= floor => {
                        report.problem(format!("instance {}: row names seq {} but the log has no put", k.1, row.seq))
                    }
                    None => report.rows_unverifiable += 1,
                }
                live.insert(k, row);
            }
        }
        Ok(())
    })?;
    for ((_, identity), state) in replay.instances.drain() {
        if let Some(want) = state {
            report.problem(format!("instance {identity}: the log puts it at seq {} but it has no row", want.seq));
        }
    }
    each(snap, CF_MODEL_CLASSES, |key, value| {
        if let (Some(k), Ok(row)) = (split(key), decode_row::<ModelClassRow>("model class", key, value)) {
            match replay.classes.remove(&k) {
                Some(want) if want == row => report.rows_verified += 1,
                Some(_) => report.problem(format!("class {}: row disagrees with the log", k.1)),
                None if row.seq >= floor => {
                    report.problem(format!("class {}: row names seq {} but the log has no definition", k.1, row.seq))
                }
                None => report.rows_unverifiable += 1,
            }
        } else {
            report.problem(format!("model class row {key:02x?} is malformed"));
        }
        Ok(())
    })?;
    for ((_, name), want) in replay.classes.drain() {
        report.problem(format!("class {name}: the log defines it at seq {} but it has no row", want.seq));
    }
    // The indexes hold exactly the live instances' classes and references.
    let mut want_class: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut want_refs: BTreeSet<Vec<u8>> = BTreeSet::new();
    for ((ns, identity), row) in &live {
        want_class.insert(keys::joined(&[ns, &row.class.to_ascii_lowercase(), identity]));
        for r in &row.refs {
            want_refs.insert(keys::joined(&[ns, r, identity]));
        }
    }
    for (cf, want, what) in
        [(CF_MODEL_CLASS_INDEX, want_class, "class index"), (CF_MODEL_REF_INDEX, want_refs, "reference index")]
    {
        let mut got = BTreeSet::new();
        each(snap, cf, |k, _| {
            got.insert(k.to_vec());
            Ok(())
        })?;
        for k in want.difference(&got) {
            report.problem(format!("{what}: missing entry {}", String::from_utf8_lossy(k).replace('\0', " | ")));
        }
        for k in got.difference(&want) {
            report.problem(format!("{what}: stray entry {}", String::from_utf8_lossy(k).replace('\0', " | ")));
        }
        report.rows_verified += want.len().min(got.len()) as u64;
    }
    Ok(())
}

/// Whether the snapshot has a latest row for (channel, field).
fn latest_seen(snap: &dyn Reader, channel: &str, field: &str) -> Result<bool> {
    Ok(snap.get(CF_TUPLES, &keys::tuple_key(channel, field))?.is_some())
}

/// Checks the store in `path` without modifying it.
///
/// # Errors
/// `InvalidInput` if the folder holds no store, `Rocks` if RocksDB cannot
/// open it. Damage inside the store is reported in the [`CheckReport`], not
/// as an error.
pub fn check(path: &Path) -> Result<CheckReport> {
    check_engine(&RocksEngine::open_read_only(path)?)
}

/// Checks the store kept by `engine`, from one snapshot, without modifying
/// it. A store may go on writing meanwhile.
///
/// # Errors
/// Read errors. Damage inside the store is reported in the [`CheckReport`],
/// not as an error.
pub fn check_engine(engine: &dyn Engine) -> Result<CheckReport> {
    let snap = engine.snapshot();
    let mut report = CheckReport::default();
    let meta = |key: &[u8]| -> Result<Option<u64>> {
        match snap.get(CF_META, key)? {
            Some(v) => Ok(Some(keys::decode_u64(&v).ok_or_else(|| Error::corruption("meta", "not a u64"))?)),
            None => Ok(None),
        }
    };
    let floor = meta(keys::META_FLOOR)?.unwrap_or(1);
    let tombstone_floor = meta(keys::META_TOMBSTONE_FLOOR)?.unwrap_or(0);
    let next_seq = meta(keys::META_NEXT_SEQ)?.unwrap_or(1);
    let log_bytes = meta(keys::META_LOG_BYTES)?.unwrap_or(0);
    report.floor = floor;

    // 1-3: the log itself.
    let mut replay = Replay { whole_log: floor <= 1, ..Replay::default() };
    let mut expect = floor;
    let mut last_time = 0u64;
    let mut bytes = 0u64;
    let mut last_seq = None;
    each(&*snap, CF_LOG, |key, value| {
        report.records += 1;
        bytes += value.len() as u64;
        let Some(seq) = keys::decode_u64(key) else {
            report.problem(format!("log key {key:02x?} is not a sequence number"));
            return Ok(());
        };
        if seq != expect {
            if seq < floor {
                report.problem(format!("seq {seq}: record below the floor {floor} survived retention"));
            } else {
                report.problem(format!(
                    "seq {expect}..{seq}: sequence numbers are not contiguous (missing {})",
                    seq - expect
                ));
            }
        }
        expect = seq + 1;
        last_seq = Some(seq);
        match Record::decode(value) {
            Ok(rec) if rec.seq != seq => report.problem(format!("seq {seq}: record says it is seq {}", rec.seq)),
            Ok(rec) => {
                if rec.time_us < last_time {
                    report.problem(format!(
                        "seq {seq}: time {} is before the previous record's {last_time}",
                        rec.time_us
                    ));
                }
                last_time = rec.time_us;
                replay.apply(&rec);
            }
            Err(e) => report.problem(e.to_string()),
        }
        Ok(())
    })?;
    report.last_seq = next_seq - 1;
    match last_seq {
        Some(last) if last + 1 != next_seq => {
            report.problem(format!("next_seq counter is {next_seq} but the last record is {last}"))
        }
        None if floor != next_seq && next_seq != 1 => {
            report.problem(format!("log is empty but floor {floor} differs from next_seq {next_seq}"))
        }
        _ => {}
    }
    if bytes != log_bytes {
        report.problem(format!("log_bytes counter is {log_bytes} but the records hold {bytes} bytes"));
    }

    // 4: latest tuples.
    each(&*snap, CF_TUPLES, |key, value| {
        let Some((channel, field)) = keys::split_tuple_key(key) else {
            report.problem(format!("tuples key {key:02x?} has no separator"));
            return Ok(());
        };
        let name = format!("tuple ({channel}, {field})");
        match decode_row::<TupleRow>("tuple", key, value) {
            Err(e) => report.problem(e.to_string()),
            Ok(row) => match replay.tuples.get(&(channel.to_string(), field.to_string())) {
                Some(TupleState::Live(want)) => {
                    report.rows_verified += 1;
                    let got = Set {
                        seq: row.seq,
                        time_us: row.time_us,
                        value: row.value,
                        expires_at_us: row.expires_at_us,
                        source: row.source,
                    };
                    if got != *want {
                        report
                            .problem(format!("{name}: latest row {got:?} disagrees with the log's last set {want:?}"));
                    }
                }
                Some(TupleState::Gone(g)) => {
                    report.problem(format!("{name}: has a latest row but the log ended it at seq {}", g.seq))
                }
                None if row.seq >= floor => {
                    report.problem(format!("{name}: latest row names seq {} but the log has no set for it", row.seq))
                }
                None => report.rows_unverifiable += 1,
            },
        }
        Ok(())
    })?;

    // 4: tombstones (a folder from before format 3 has none).
    if engine.has_family(CF_TOMBSTONES) {
        each(&*snap, CF_TOMBSTONES, |key, value| {
            let Some((channel, field)) = keys::split_tuple_key(key) else {
                report.problem(format!("tombstones key {key:02x?} has no separator"));
                return Ok(());
            };
            let name = format!("tombstone ({channel}, {field})");
            match decode_row::<TombstoneRow>("tombstone", key, value) {
                Err(e) => report.problem(e.to_string()),
                Ok(row) => match replay.tuples.remove(&(channel.to_string(), field.to_string())) {
                    Some(TupleState::Gone(want)) => {
                        report.rows_verified += 1;
                        if row != want {
                            report.problem(format!("{name}: row {row:?} disagrees with the log's end {want:?}"));
                        }
                    }
                    Some(TupleState::Live(set)) => {
                        report.problem(format!("{name}: the tuple is live again since seq {}", set.seq))
                    }
                    None if row.seq >= floor => {
                        report.problem(format!("{name}: names seq {} but the log has no end there", row.seq))
                    }
                    None => report.rows_unverifiable += 1,
                },
            }
            Ok(())
        })?;
    }
    for ((channel, field), state) in replay.tuples.drain() {
        match state {
            TupleState::Live(want) if !latest_seen(&*snap, &channel, &field)? => report.problem(format!(
                "tuple ({channel}, {field}): the log sets it at seq {} but it has no latest row",
                want.seq
            )),
            TupleState::Gone(g) if g.seq < tombstone_floor => report.rows_unverifiable += 1,
            TupleState::Gone(g) => report.problem(format!(
                "tuple ({channel}, {field}): the log ended it at seq {} but it has no tombstone",
                g.seq
            )),
            TupleState::Live(_) => {}
        }
    }

    // 4: history.
    let mut rows: BTreeMap<(String, String), Vec<Set>> = BTreeMap::new();
    each(&*snap, CF_HISTORY, |key, value| {
        match (keys::split_history_key(key), decode_row::<HistoryRow>("history", key, value)) {
            (None, _) => report.problem(format!("history key {key:02x?} is malformed")),
            (_, Err(e)) => report.problem(e.to_string()),
            (Some((_, _, seq)), Ok(_)) if seq < floor => report.rows_unverifiable += 1,
            (Some((c, f, seq)), Ok(row)) => rows.entry((c.to_string(), f.to_string())).or_default().push(Set {
                seq,
                time_us: row.time_us,
                value: row.value,
                expires_at_us: row.expires_at_us,
                source: row.source,
            }),
        }
        Ok(())
    })?;
    for (key, got) in rows {
        let writes = replay.history.remove(&key).unwrap_or_default();
        report.rows_verified += got.len() as u64;
        let by_seq: HashMap<u64, &Set> = writes.iter().map(|(s, _)| (s.seq, s)).collect();
        for row in &got {
            if by_seq.get(&row.seq) != Some(&row) {
                report.problem(format!(
                    "history of ({}, {}): row at seq {} matches no write in the log",
                    key.0, key.1, row.seq
                ));
            }
        }
        let oldest = got.first().map_or(u64::MAX, |s| s.seq);
        let have: std::collections::HashSet<u64> = got.iter().map(|s| s.seq).collect();
        for (set, changed) in &writes {
            if *changed == Some(false) && have.contains(&set.seq) {
                report.problem(format!(
                    "history of ({}, {}): seq {} repeated the value but has a row",
                    key.0, key.1, set.seq
                ));
            }
            if set.seq >= oldest && *changed == Some(true) && !have.contains(&set.seq) {
                report.problem(format!(
                    "history of ({}, {}): the value changed at seq {} but no row records it",
                    key.0, key.1, set.seq
                ));
            }
        }
    }

    // 4: leases.
    each(&*snap, CF_LEASES, |key, value| {
        let id = String::from_utf8_lossy(key).to_string();
        match crate::rows::decode_lease_row(key, value) {
            Err(e) => report.problem(e.to_string()),
            Ok(row) => match replay.leases.remove(&id) {
                Some(LeaseState::Granted(want)) => {
                    report.rows_verified += 1;
                    if row != want {
                        report.problem(format!("lease {id}: row {row:?} disagrees with the log {want:?}"));
                    }
                }
                Some(LeaseState::Renewed { ttl_ms, expires_at_us, seq }) => {
                    report.rows_verified += 1;
                    if (row.ttl_ms, row.expires_at_us, row.renewed_seq) != (ttl_ms, expires_at_us, seq) {
                        report.problem(format!("lease {id}: row {row:?} disagrees with its renewal at seq {seq}"));
                    }
                }
                Some(LeaseState::Ended) => report.problem(format!("lease {id}: the log ended it but its row remains")),
                None if row.renewed_seq >= floor => report
                    .problem(format!("lease {id}: row names seq {} but the log has no record of it", row.renewed_seq)),
                None => report.rows_unverifiable += 1,
            },
        }
        Ok(())
    })?;
    for (id, state) in replay.leases.drain() {
        if !matches!(state, LeaseState::Ended) {
            report.problem(format!("lease {id}: the log holds it live but it has no row"));
        }
    }

    // 4: documents.
    each(&*snap, CF_DOCS, |key, value| {
        let k = String::from_utf8_lossy(key).to_string();
        match decode_row::<DocRow>("doc", key, value) {
            Err(e) => report.problem(e.to_string()),
            Ok(row) => match replay.docs.remove(&k) {
                Some(Some(want)) => {
                    report.rows_verified += 1;
                    if (row.seq, row.time_us, row.value) != want {
                        report.problem(format!("document {k}: row disagrees with the log's put at seq {}", want.0));
                    }
                }
                Some(None) => report.problem(format!("document {k}: the log deleted it but its row remains")),
                None if row.seq >= floor => {
                    report.problem(format!("document {k}: row names seq {} but the log has no put for it", row.seq))
                }
                None => report.rows_unverifiable += 1,
            },
        }
        Ok(())
    })?;
    for (k, state) in replay.docs.drain() {
        if let Some((seq, _, _)) = state {
            report.problem(format!("document {k}: the log puts it at seq {seq} but it has no row"));
        }
    }

    // 4: model classes and instances, against the log.
    if engine.has_family(CF_MODEL_INSTANCES) {
        check_models(&*snap, &mut replay, floor, &mut report)?;
    }

    // 4: the event id index.
    each(&*snap, CF_EVENT_IDS, |key, value| {
        let id = String::from_utf8_lossy(key).to_string();
        match (keys::decode_event_id_value(value), replay.event_ids.remove(&id)) {
            (None, _) => report.problem(format!("event id {id}: index value is not 16 bytes")),
            (Some(got), Some(want)) => {
                report.rows_verified += 1;
                if got != want {
                    report.problem(format!(
                        "event id {id}: index says seq {} but the log's last event with it is {}",
                        got.0, want.0
                    ));
                }
            }
            (Some((seq, _)), None) if seq >= floor => {
                report.problem(format!("event id {id}: index names seq {seq} but the log has no event with that id"))
            }
            (Some((seq, _)), None) => {
                report.problem(format!("event id {id}: index entry for seq {seq} survived retention of its event"))
            }
        }
        Ok(())
    })?;
    for (id, (seq, _)) in replay.event_ids.drain() {
        report.problem(format!("event id {id}: the log has it at seq {seq} but the index does not"));
    }
    Ok(report)
}
