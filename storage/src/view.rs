//! Snapshot reads of the materialized views.
//!
//! A [`View`] wraps one engine snapshot ([`crate::Engine::snapshot`]). Every
//! read through it sees the same state, and [`View::seq`] names the sequence number that state reflects:
//! the `next_seq` counter is written in the same batch as the records, so
//! reading it from the snapshot gives exactly the last record the snapshot
//! contains. A view never waits for the writer and never blocks it.

use crate::engine::{Direction, Engine, KeyRange, Reader};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::keys::{self, CF_DOCS, CF_HISTORY, CF_LEASES, CF_LOG, CF_META, CF_TOMBSTONES, CF_TUPLES};
use crate::limits::{READ_ROWS_MAX, SCAN_BYTES_MAX};
use crate::record::Record;
use crate::rows::{
    decode_row, Doc, DocRow, HistoryEntry, HistoryRow, Lease, ModelClassRow, ModelInstanceRow, ModelVersion,
    MonitorRow, Tombstone, TombstoneRow, Tuple, TupleRow,
};

/// A log record with its stored bytes, crc included.
pub type Frame = (Record, Vec<u8>);

/// A page of results with the cursor to pass for the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T, C> {
    /// The rows of this page, in key order.
    pub items: Vec<T>,
    /// Where the next page starts, if there are more rows.
    pub next: Option<C>,
}

/// Where a page of tuples starts: strictly after this (channel, field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TupleCursor {
    /// The channel of the last tuple returned.
    pub channel: String,
    /// The field of the last tuple returned.
    pub field: String,
}

/// Which end of a history range comes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// A range of a tuple's history, by sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryRange {
    /// The lowest sequence number included.
    pub from_seq: u64,
    /// The highest sequence number included.
    pub to_seq: u64,
    /// Most rows to return, at most [`READ_ROWS_MAX`].
    pub limit: usize,
    /// Oldest or newest first.
    pub order: Order,
}

impl Default for HistoryRange {
    fn default() -> HistoryRange {
        HistoryRange { from_seq: 0, to_seq: u64::MAX, limit: READ_ROWS_MAX, order: Order::Asc }
    }
}

/// Rows keyed by (channel, field).
trait HasTupleKey {
    fn tuple_key(&self) -> (&str, &str);
}

impl HasTupleKey for Tuple {
    fn tuple_key(&self) -> (&str, &str) {
        (&self.channel, &self.field)
    }
}

impl HasTupleKey for Tombstone {
    fn tuple_key(&self) -> (&str, &str) {
        (&self.channel, &self.field)
    }
}

/// A consistent, read-only view of the store at one sequence number.
pub struct View<'a> {
    snap: Box<dyn Reader + 'a>,
    seq: u64,
    floor: u64,
}

fn limit_ok(limit: usize) -> Result<usize> {
    if limit == 0 {
        return Err(Error::invalid("limit", "must be at least 1"));
    }
    if limit > READ_ROWS_MAX {
        return Err(Error::TooLarge { what: "limit", size: limit, max: READ_ROWS_MAX });
    }
    Ok(limit)
}

impl<'a> View<'a> {
    pub(crate) fn new(engine: &'a dyn Engine) -> Result<View<'a>> {
        let snap = engine.snapshot();
        let read = |key: &[u8]| -> Result<Option<u64>> {
            match snap.get(CF_META, key)? {
                Some(v) => Ok(Some(keys::decode_u64(&v).ok_or_else(|| Error::corruption("meta", "not a u64"))?)),
                None => Ok(None),
            }
        };
        let seq = read(keys::META_NEXT_SEQ)?.map_or(0, |n| n - 1);
        let floor = read(keys::META_FLOOR)?.unwrap_or(1);
        Ok(View { snap, seq, floor })
    }

    /// The sequence number of the last record this view reflects (0 if none).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The lowest sequence number still in the log in this view.
    pub fn earliest_seq(&self) -> u64 {
        self.floor
    }

    /// The snapshot itself, for reads the view has no method for.
    pub(crate) fn reader(&self) -> &dyn Reader {
        &*self.snap
    }

    /// Tombstones with a lower sequence number may have been trimmed by
    /// retention: "what ended since seq N" is complete only for N at or
    /// above it. 0 if none were ever trimmed.
    ///
    /// # Errors
    /// `Corruption` if the counter is malformed.
    pub fn tombstone_floor(&self) -> Result<u64> {
        match self.snap.get(CF_META, keys::META_TOMBSTONE_FLOOR)? {
            Some(v) => keys::decode_u64(&v).ok_or_else(|| Error::corruption("meta tombstone_floor", "not a u64")),
            None => Ok(0),
        }
    }

    /// The latest value of one tuple.
    ///
    /// # Errors
    /// `Corruption` if the row does not decode; the engine's read errors.
    pub fn tuple(&self, channel: &str, field: &str) -> Result<Option<Tuple>> {
        let key = keys::tuple_key(channel, field);
        match self.snap.get(CF_TUPLES, &key)? {
            Some(bytes) => Ok(Some(Tuple::from_row(channel, field, decode_row::<TupleRow>("tuple", &key, &bytes)?))),
            None => Ok(None),
        }
    }

    /// The latest values of every tuple whose channel starts with
    /// `channel_prefix`, in (channel, field) order, one page at a time.
    ///
    /// # Errors
    /// `InvalidInput`/`TooLarge` for a bad limit; `Corruption` for bad rows.
    pub fn latest(
        &self,
        channel_prefix: &str,
        after: Option<&TupleCursor>,
        limit: usize,
    ) -> Result<Page<Tuple, TupleCursor>> {
        self.tuple_page(CF_TUPLES, channel_prefix, after, limit, |channel, field, key, value| {
            Ok(Tuple::from_row(channel, field, decode_row("tuple", key, value)?))
        })
    }

    /// The tombstones of tuples whose channel starts with `channel_prefix`
    /// and which left the latest values (expired or deleted), in (channel,
    /// field) order, one page at a time. A tuple set again has none.
    ///
    /// # Errors
    /// `InvalidInput`/`TooLarge` for a bad limit; `Corruption` for bad rows.
    pub fn tombstones(
        &self,
        channel_prefix: &str,
        after: Option<&TupleCursor>,
        limit: usize,
    ) -> Result<Page<Tombstone, TupleCursor>> {
        self.tuple_page(CF_TOMBSTONES, channel_prefix, after, limit, |channel, field, key, value| {
            let row: TombstoneRow = decode_row("tombstone", key, value)?;
            Ok(Tombstone {
                channel: channel.to_string(),
                field: field.to_string(),
                seq: row.seq,
                time_us: row.time_us,
                reason: row.reason,
            })
        })
    }

    /// One page of a family keyed by tuple key, under a channel prefix.
    fn tuple_page<T: HasTupleKey>(
        &self,
        cf: &str,
        channel_prefix: &str,
        after: Option<&TupleCursor>,
        limit: usize,
        decode: impl Fn(&str, &str, &[u8], &[u8]) -> Result<T>,
    ) -> Result<Page<T, TupleCursor>> {
        let limit = limit_ok(limit)?;
        let prefix = channel_prefix.as_bytes();
        let upper = keys::prefix_end(prefix);
        // Strictly after the cursor.
        let start = after.map(|c| {
            let mut start = keys::tuple_key(&c.channel, &c.field);
            start.push(0);
            start
        });
        let from = start.as_deref().filter(|s| *s > prefix).unwrap_or(prefix);
        let mut items = Vec::new();
        let mut more = false;
        self.snap.scan(cf, KeyRange::new(from, upper.as_deref()), Direction::Forward, &mut |key, value| {
            if items.len() == limit {
                more = true;
                return Ok(false);
            }
            let (channel, field) =
                keys::split_tuple_key(key).ok_or_else(|| Error::corruption(cf, "key without separator"))?;
            items.push(decode(channel, field, key, value)?);
            Ok(true)
        })?;
        let next = items.last().filter(|_| more).map(|t: &T| {
            let (channel, field) = t.tuple_key();
            TupleCursor { channel: channel.to_string(), field: field.to_string() }
        });
        Ok(Page { items, next })
    }

    /// A range of one tuple's history.
    ///
    /// # Errors
    /// `InvalidInput`/`TooLarge` for a bad limit; `Corruption` for bad rows.
    pub fn history(&self, channel: &str, field: &str, range: HistoryRange) -> Result<Vec<HistoryEntry>> {
        let limit = limit_ok(range.limit)?;
        if range.from_seq > range.to_seq {
            return Ok(Vec::new());
        }
        let lower = keys::history_key(channel, field, range.from_seq);
        let upper = match range.to_seq.checked_add(1) {
            Some(end) => keys::history_key(channel, field, end),
            None => keys::prefix_end(&keys::history_prefix(channel, field)).unwrap_or_default(),
        };
        let direction = match range.order {
            Order::Asc => Direction::Forward,
            Order::Desc => Direction::Backward,
        };
        let mut out = Vec::new();
        self.snap.scan(CF_HISTORY, KeyRange::new(&lower, Some(&upper)), direction, &mut |key, value| {
            let (_, _, seq) =
                keys::split_history_key(key).ok_or_else(|| Error::corruption("history", "malformed key"))?;
            let row: HistoryRow = decode_row("history", key, value)?;
            out.push(HistoryEntry {
                seq,
                time_us: row.time_us,
                value: row.value,
                expires_at_us: row.expires_at_us,
                source: row.source,
            });
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Every history row under the channel prefix `prefix`, in key order
    /// (channel, field, seq), until `f` returns `false`.
    ///
    /// # Errors
    /// `Corruption` for bad rows; whatever `f` returns.
    pub fn history_under(
        &self,
        prefix: &str,
        mut f: impl FnMut(&str, &str, HistoryEntry) -> Result<bool>,
    ) -> Result<()> {
        self.scan_prefix(CF_HISTORY, prefix.as_bytes(), |key, value| {
            let (channel, field, seq) =
                keys::split_history_key(key).ok_or_else(|| Error::corruption("history", "malformed key"))?;
            let row: HistoryRow = decode_row("history", key, value)?;
            let entry = HistoryEntry {
                seq,
                time_us: row.time_us,
                value: row.value,
                expires_at_us: row.expires_at_us,
                source: row.source,
            };
            f(channel, field, entry)
        })
    }

    /// Every latest tuple under the channel prefix `prefix`, in key order,
    /// until `f` returns `false`.
    ///
    /// # Errors
    /// `Corruption` for bad rows; whatever `f` returns.
    pub fn tuples_under(&self, prefix: &str, mut f: impl FnMut(Tuple) -> Result<bool>) -> Result<()> {
        self.scan_prefix(CF_TUPLES, prefix.as_bytes(), |key, value| {
            let (channel, field) =
                keys::split_tuple_key(key).ok_or_else(|| Error::corruption("tuples", "malformed key"))?;
            f(Tuple::from_row(channel, field, decode_row("tuple", key, value)?))
        })
    }

    /// The monitors this site runs or ran, by pattern: their last state.
    ///
    /// # Errors
    /// `Corruption` for bad rows.
    pub fn monitors(&self) -> Result<Vec<MonitorRow>> {
        let mut out = Vec::new();
        self.scan_prefix(keys::CF_MONITORS, b"", |key, value| {
            out.push(decode_row("monitor", key, value)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Per origin site, the highest of its sequence numbers appended here.
    ///
    /// # Errors
    /// `Corruption` for a malformed value.
    pub fn origin_marks(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        self.scan_prefix(keys::CF_ORIGINS, b"", |key, value| {
            let site = String::from_utf8_lossy(key).into_owned();
            let mark =
                keys::decode_u64(value).ok_or_else(|| Error::corruption("origins", format!("{site}: not a u64")))?;
            out.push((site, mark));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Scans family `cf` under `prefix`, calling `f` on each (key, value)
    /// until it returns `false`.
    fn scan_prefix(&self, cf: &str, prefix: &[u8], f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        self.scan_prefix_from(cf, prefix, None, f)
    }

    /// [`View::scan_prefix`] from key `start` on (when it is past `prefix`):
    /// a page after a cursor seeks to it instead of reading its way there.
    fn scan_prefix_from(
        &self,
        cf: &str,
        prefix: &[u8],
        start: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let upper = keys::prefix_end(prefix);
        let from = start.filter(|s| *s > prefix).unwrap_or(prefix);
        self.snap.scan(cf, KeyRange::new(from, upper.as_deref()), Direction::Forward, &mut f)
    }

    /// The classes defined in namespace `ns` (by lowercase name).
    ///
    /// # Errors
    /// `Corruption` for bad rows.
    pub fn model_classes(&self, ns: &str) -> Result<Vec<ModelClassRow>> {
        let mut prefix = keys::joined(&[ns]);
        prefix.push(keys::SEP);
        let mut out = Vec::new();
        self.scan_prefix(keys::CF_MODEL_CLASSES, &prefix, |k, v| {
            out.push(decode_row("model class", k, v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every class of every namespace: (namespace, row).
    ///
    /// # Errors
    /// `Corruption` for bad rows or keys.
    pub fn all_model_classes(&self) -> Result<Vec<(String, ModelClassRow)>> {
        let mut out = Vec::new();
        self.scan_prefix(keys::CF_MODEL_CLASSES, b"", |k, v| {
            let at = k
                .iter()
                .position(|b| *b == keys::SEP)
                .ok_or_else(|| Error::corruption("model class", "key without separator"))?;
            out.push((String::from_utf8_lossy(&k[..at]).into_owned(), decode_row("model class", k, v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The instance with path identity `identity` in `ns`.
    ///
    /// # Errors
    /// `Corruption` for a bad row.
    pub fn model_instance(&self, ns: &str, identity: &str) -> Result<Option<ModelInstanceRow>> {
        let key = keys::joined(&[ns, identity]);
        match self.snap.get(keys::CF_MODEL_INSTANCES, &key)? {
            Some(bytes) => Ok(Some(decode_row("model instance", &key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` instances of exactly `class` (any case) in `ns`, in
    /// identity order, strictly after identity `after`; and the identity to
    /// continue after, if more remain.
    ///
    /// # Errors
    /// `Corruption` if the class index names a missing instance.
    pub fn model_instances_of(
        &self,
        ns: &str,
        class: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<ModelInstanceRow, String>> {
        let limit = limit_ok(limit)?;
        let mut prefix = keys::joined(&[ns, &class.to_ascii_lowercase()]);
        prefix.push(keys::SEP);
        let mut identities = Vec::new();
        let start = after.map(|a| {
            let mut k = prefix.clone();
            k.extend_from_slice(a.as_bytes());
            k.push(0);
            k
        });
        self.scan_prefix_from(keys::CF_MODEL_CLASS_INDEX, &prefix, start.as_deref(), |k, _| {
            identities.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            Ok(identities.len() <= limit)
        })?;
        let next = (identities.len() > limit).then(|| identities[limit - 1].clone());
        identities.truncate(limit);
        let mut items = Vec::with_capacity(identities.len());
        for id in identities {
            let row = self
                .model_instance(ns, &id)?
                .ok_or_else(|| Error::corruption("model class index", format!("names missing instance {id}")))?;
            items.push(row);
        }
        Ok(Page { items, next })
    }

    /// Up to `limit` instances in `ns` whose identity starts with
    /// `identity_prefix`, with their identities, in identity order, strictly
    /// after identity `after`; and the identity to continue after, if more
    /// remain. One
    /// range scan of the instance family: the query layer's identities put
    /// a class's instances next to each other.
    ///
    /// # Errors
    /// `InvalidInput`/`TooLarge` for a bad limit; `Corruption` for bad rows.
    pub fn model_instances_by_prefix(
        &self,
        ns: &str,
        identity_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<(String, ModelInstanceRow), String>> {
        let limit = limit_ok(limit)?;
        let ns_len = ns.len() + 1;
        let prefix = keys::joined(&[ns, identity_prefix]);
        let start = after.map(|a| {
            let mut k = keys::joined(&[ns, a]);
            k.push(0);
            k
        });
        let mut items: Vec<(String, ModelInstanceRow)> = Vec::new();
        self.scan_prefix_from(keys::CF_MODEL_INSTANCES, &prefix, start.as_deref(), |k, v| {
            let identity = String::from_utf8_lossy(&k[ns_len..]).into_owned();
            items.push((identity, decode_row("model instance", k, v)?));
            Ok(items.len() <= limit)
        })?;
        let next = (items.len() > limit).then(|| items[limit - 1].0.clone());
        items.truncate(limit);
        Ok(Page { items, next })
    }

    /// The identities of the instances in `ns` that refer to `target`.
    ///
    /// # Errors
    /// The engine's read errors.
    pub fn model_referrers(&self, ns: &str, target: &str) -> Result<Vec<String>> {
        let mut prefix = keys::joined(&[ns, target]);
        prefix.push(keys::SEP);
        let mut out = Vec::new();
        self.scan_prefix(keys::CF_MODEL_REF_INDEX, &prefix, |k, _| {
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            Ok(out.len() < READ_ROWS_MAX)
        })?;
        Ok(out)
    }

    /// The versions of an instance with seq in `[from_seq, to_seq]`, oldest
    /// first, at most `limit`.
    ///
    /// # Errors
    /// `InvalidInput`/`TooLarge` for a bad limit; `Corruption` for bad rows.
    pub fn model_history(
        &self,
        ns: &str,
        identity: &str,
        from_seq: u64,
        to_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ModelVersion)>> {
        let limit = limit_ok(limit)?;
        let mut prefix = keys::joined(&[ns, identity]);
        prefix.push(keys::SEP);
        let mut out = Vec::new();
        self.scan_prefix(keys::CF_MODEL_HISTORY, &prefix, |k, v| {
            let seq =
                keys::decode_u64(&k[prefix.len()..]).ok_or_else(|| Error::corruption("model history", "bad key"))?;
            if seq > to_seq {
                return Ok(false);
            }
            if seq >= from_seq {
                out.push((seq, decode_row("model history", k, v)?));
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Every live lease, by id.
    ///
    /// # Errors
    /// `Corruption` for bad rows.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        self.snap.scan(CF_LEASES, KeyRange::ALL, Direction::Forward, &mut |key, value| {
            out.push(crate::rows::decode_lease_row(key, value)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// One lease by id.
    ///
    /// # Errors
    /// `Corruption` for a bad row.
    pub fn lease(&self, id: &str) -> Result<Option<Lease>> {
        match self.snap.get(CF_LEASES, id.as_bytes())? {
            Some(bytes) => Ok(Some(crate::rows::decode_lease_row(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// One document by key.
    ///
    /// # Errors
    /// `Corruption` for a bad row.
    pub fn doc(&self, key: &str) -> Result<Option<Doc>> {
        match self.snap.get(CF_DOCS, key.as_bytes())? {
            Some(bytes) => {
                let row: DocRow = decode_row("doc", key.as_bytes(), &bytes)?;
                Ok(Some(Doc { key: key.to_string(), value: row.value, seq: row.seq, time_us: row.time_us }))
            }
            None => Ok(None),
        }
    }

    /// Documents whose key starts with `prefix`, in key order, one page at a
    /// time; the cursor is the last key returned.
    ///
    /// # Errors
    /// `InvalidInput`/`TooLarge` for a bad limit; `Corruption` for bad rows.
    pub fn docs(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page<Doc, String>> {
        let limit = limit_ok(limit)?;
        let lower = prefix.as_bytes();
        let upper = keys::prefix_end(lower);
        // Strictly after the cursor.
        let start = after.map(|a| {
            let mut start = a.as_bytes().to_vec();
            start.push(0);
            start
        });
        let from = start.as_deref().filter(|s| *s > lower).unwrap_or(lower);
        let mut items: Vec<Doc> = Vec::new();
        let mut more = false;
        self.snap.scan(CF_DOCS, KeyRange::new(from, upper.as_deref()), Direction::Forward, &mut |key, value| {
            if items.len() == limit {
                more = true;
                return Ok(false);
            }
            let row: DocRow = decode_row("doc", key, value)?;
            let key = String::from_utf8(key.to_vec()).map_err(|_| Error::corruption("docs", "key is not UTF-8"))?;
            items.push(Doc { key, value: row.value, seq: row.seq, time_us: row.time_us });
            Ok(true)
        })?;
        let next = items.last().filter(|_| more).map(|d| d.key.clone());
        Ok(Page { items, next })
    }

    /// Log records from `from_seq` up to `to_seq` (inclusive), at most
    /// `limit` of them, each crc-checked. Sequence numbers must be contiguous:
    /// a hole inside the retained log is reported as corruption. Records below
    /// the floor are skipped; use [`View::scan`] to be told about them.
    ///
    /// # Errors
    /// `Corruption` for a bad record or a hole.
    pub fn records(&self, from_seq: u64, to_seq: u64, limit: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.scan_log(from_seq, to_seq, limit as u64, |rec, _| {
            out.push(rec);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The records from `from_seq` (at or above the floor) through this
    /// view's sequence number that `keep` accepts, each with its stored
    /// bytes (crc included, checked on the way), up to `limit` records or
    /// about `max_bytes` of them (at least one), scanning at most `scan_max`
    /// records. Returns them and the sequence number after the last record
    /// scanned. A forwarder sends the bytes as they are, so the receiver
    /// checks the origin's own crc.
    ///
    /// # Errors
    /// `Corruption` for a damaged record.
    pub fn frames(
        &self,
        from_seq: u64,
        limit: usize,
        max_bytes: usize,
        scan_max: u64,
        mut keep: impl FnMut(&Record) -> bool,
    ) -> Result<(Vec<Frame>, u64)> {
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        let next = self.scan_log(from_seq, self.seq, scan_max, |rec, raw| {
            if keep(&rec) {
                bytes += raw.len();
                out.push((rec, raw.to_vec()));
            }
            Ok(out.len() < limit && bytes < max_bytes)
        })?;
        Ok((out, next))
    }

    /// Reads the log from `from_seq` through `to_seq` (capped at this view's
    /// sequence number) and returns the records that pass `filter`: at most
    /// `limit` of them and about [`SCAN_BYTES_MAX`] of encoded records (at
    /// least one), after scanning at most `scan_max` records. The result says
    /// where to continue, or that `from_seq` is below the floor.
    ///
    /// Records before a damaged one are returned; the next scan, starting at
    /// the damage, reports it.
    ///
    /// # Errors
    /// `Corruption` when the first record to read is damaged.
    pub fn scan(&self, from_seq: u64, to_seq: u64, filter: &Filter, limit: usize, scan_max: u64) -> Result<Scan> {
        let from_seq = from_seq.max(1);
        // The floor comes from the same snapshot as the records: if it says
        // `from_seq` is retained, the snapshot holds every record from it on.
        if from_seq < self.floor {
            return Ok(Scan::Compacted { earliest: self.floor });
        }
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut next_seq = from_seq;
        let result = self.scan_log(from_seq, to_seq, scan_max, |rec, raw| {
            let len = raw.len();
            next_seq = rec.seq + 1;
            if filter.matches(&rec) {
                records.push(rec);
                bytes += len;
            }
            Ok(records.len() < limit && bytes < SCAN_BYTES_MAX)
        });
        match result {
            Ok(next) => Ok(Scan::Records { records, next_seq: next.max(next_seq) }),
            Err(_) if next_seq > from_seq => Ok(Scan::Records { records, next_seq }),
            Err(e) => Err(e),
        }
    }

    /// Calls `f` on each log record in `[from_seq, to_seq]` (at most `limit`),
    /// checking crc and contiguity, until `f` returns `false`. Returns the
    /// sequence number after the last record visited.
    fn scan_log(
        &self,
        from_seq: u64,
        to_seq: u64,
        limit: u64,
        mut f: impl FnMut(Record, &[u8]) -> Result<bool>,
    ) -> Result<u64> {
        let from_seq = from_seq.max(self.floor);
        let to_seq = to_seq.min(self.seq).min(from_seq.saturating_add(limit).saturating_sub(1));
        if from_seq > to_seq {
            return Ok(from_seq);
        }
        let (lower, upper) = (keys::log_key(from_seq), keys::log_key(to_seq + 1));
        let mut expect = from_seq;
        let mut stopped = false;
        self.snap.scan(CF_LOG, KeyRange::new(&lower, Some(&upper)), Direction::Forward, &mut |key, value| {
            let seq = keys::decode_u64(key).ok_or_else(|| Error::corruption("log", "key is not a u64"))?;
            if seq != expect {
                return Err(Error::corruption(
                    format!("seq {expect}"),
                    format!("log has a hole: next record is {seq}"),
                ));
            }
            let rec = Record::decode(value)?;
            if rec.seq != seq {
                return Err(Error::corruption(format!("seq {seq}"), format!("record says it is seq {}", rec.seq)));
            }
            expect += 1;
            stopped = !f(rec, value)?;
            Ok(!stopped)
        })?;
        if !stopped && expect != to_seq + 1 {
            return Err(Error::corruption(
                format!("seq {expect}"),
                format!("log ends before {to_seq}, which the snapshot covers"),
            ));
        }
        Ok(expect)
    }
}

/// What [`View::scan`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The matching records, and the sequence number to continue from.
    Records {
        /// Records that passed the filter, in order.
        records: Vec<Record>,
        /// The first sequence number not yet scanned.
        next_seq: u64,
    },
    /// The start lies below what retention kept.
    Compacted {
        /// The lowest retained sequence number.
        earliest: u64,
    },
}
