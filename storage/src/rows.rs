//! Rows of the materialized views, and the values reads return.
//!
//! A view row is derived from log records and written in the same
//! batch as the record that caused it. Rows are framed as one version
//! byte followed by a postcard body. They carry no crc of their own: RocksDB's
//! block checksums cover them at rest (reads verify them), and `pepper check`
//! compares every row against the log record it came from.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{LeaseGrant, MonitorState, Party};

/// The row frame version this build writes.
pub const ROW_VERSION: u8 = 1;

pub(crate) fn encode_row<T: Serialize>(row: &T) -> Vec<u8> {
    let mut out = vec![ROW_VERSION];
    // Writing into a Vec cannot fail, and every row type serializes without
    // custom logic, so an error here would be a bug in postcard.
    if let Err(e) = postcard::to_io(row, &mut out) {
        unreachable!("postcard failed to encode a view row into a Vec: {e}");
    }
    out
}

pub(crate) fn decode_row<T: DeserializeOwned>(what: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    let at = || format!("{what} {}", String::from_utf8_lossy(key));
    match bytes.split_first() {
        Some((&ROW_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| Error::corruption(at(), format!("row does not decode: {e}")))
        }
        Some((v, _)) => Err(Error::corruption(at(), format!("unknown row version {v}"))),
        None => Err(Error::corruption(at(), "empty row")),
    }
}

/// The time of a history row, without decoding the rest of it: `time_us` is
/// the row's first field.
pub(crate) fn history_row_time(key: &[u8], bytes: &[u8]) -> Result<u64> {
    match bytes.split_first() {
        Some((&ROW_VERSION, body)) => postcard::take_from_bytes::<u64>(body)
            .map(|(t, _)| t)
            .map_err(|e| Error::corruption(format!("history {}", String::from_utf8_lossy(key)), e.to_string())),
        _ => decode_row::<HistoryRow>("history", key, bytes).map(|r| r.time_us),
    }
}

/// The stored latest value of a tuple; the key holds channel and field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TupleRow {
    pub seq: u64,
    pub time_us: u64,
    pub value: String,
    pub expires_at_us: Option<u64>,
    pub source: Party,
}

/// The stored history row; the key holds channel, field and seq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HistoryRow {
    pub time_us: u64,
    pub value: String,
    pub expires_at_us: Option<u64>,
    pub source: Party,
}

/// Why a tuple left the latest values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TombstoneReason {
    /// Its expiry passed.
    Expired,
    /// A client deleted it.
    Deleted,
}

impl TombstoneReason {
    /// `expired` or `deleted`.
    pub fn name(self) -> &'static str {
        match self {
            TombstoneReason::Expired => "expired",
            TombstoneReason::Deleted => "deleted",
        }
    }
}

/// The stored tombstone of a tuple; the key holds channel and field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TombstoneRow {
    pub seq: u64,
    pub time_us: u64,
    pub reason: TombstoneReason,
}

/// A tuple that left the latest values, and the record that ended it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tombstone {
    /// The channel.
    pub channel: String,
    /// The field.
    pub field: String,
    /// The sequence number of the expire or delete record.
    pub seq: u64,
    /// When it ended, in microseconds since the Unix epoch.
    pub time_us: u64,
    /// Why.
    pub reason: TombstoneReason,
}

/// The stored model class; the key holds namespace and lowercase name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelClassRow {
    /// The record that defined it.
    pub seq: u64,
    /// When.
    pub time_us: u64,
    /// The class name as declared.
    pub name: String,
    /// The definition, JSON.
    pub definition: Vec<u8>,
}

/// The stored model instance; the key holds namespace and path identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInstanceRow {
    /// The record that last created or changed it.
    pub seq: u64,
    /// When.
    pub time_us: u64,
    /// Its class as declared.
    pub class: String,
    /// Its canonical object path.
    pub path: String,
    /// Its properties, JSON.
    pub properties: Vec<u8>,
    /// The identities its references point at.
    pub refs: Vec<String>,
}

/// One version of a model instance; the key holds namespace, identity and
/// the seq of the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// When.
    pub time_us: u64,
    /// Its class.
    pub class: String,
    /// Its properties then, JSON (empty for a deletion).
    pub properties: Vec<u8>,
    /// Whether this version is its deletion.
    pub deleted: bool,
}

/// The stored document; the key is the document key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DocRow {
    pub seq: u64,
    pub time_us: u64,
    pub value: Vec<u8>,
}

/// The latest value of a tuple (channel, field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tuple {
    /// The channel.
    pub channel: String,
    /// The field.
    pub field: String,
    /// The value.
    pub value: String,
    /// The sequence number of the record that set it.
    pub seq: u64,
    /// When it was set, in microseconds since the Unix epoch.
    pub time_us: u64,
    /// When it expires, in microseconds since the Unix epoch.
    pub expires_at_us: Option<u64>,
    /// Who set it.
    pub source: Party,
}

impl Tuple {
    pub(crate) fn from_row(channel: &str, field: &str, row: TupleRow) -> Tuple {
        Tuple {
            channel: channel.to_string(),
            field: field.to_string(),
            value: row.value,
            seq: row.seq,
            time_us: row.time_us,
            expires_at_us: row.expires_at_us,
            source: row.source,
        }
    }
}

/// One past value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The sequence number of the record that set it.
    pub seq: u64,
    /// When it was set, in microseconds since the Unix epoch.
    pub time_us: u64,
    /// The value.
    pub value: String,
    /// When it expired or expires.
    pub expires_at_us: Option<u64>,
    /// Who set it.
    pub source: Party,
}

/// A live lease, as kept in the lease table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease id.
    pub id: String,
    /// The channel pattern it covers, subtree included.
    pub pattern: String,
    /// Payload types it wants; empty means all.
    pub types: Vec<String>,
    /// The granted time to live, in milliseconds.
    pub ttl_ms: u64,
    /// When it lapses unless renewed, in microseconds since the epoch.
    pub expires_at_us: u64,
    /// Anycast group.
    pub group: Option<String>,
    /// Where its stream starts.
    pub from_seq: Option<u64>,
    /// The sequence number of the grant record.
    pub granted_seq: u64,
    /// The sequence number of the latest grant or renew record.
    pub renewed_seq: u64,
    /// Who holds it, matched against an event's `to`.
    pub holder: Party,
    /// The principal it was granted to, when auth was on (row version 3).
    pub owner: Option<String>,
}

/// The version of lease rows this build writes; version 1 had no holder,
/// version 2 no owner.
pub(crate) const LEASE_ROW_VERSION: u8 = 3;

/// The fields every version of a lease row starts with: all of version 1.
/// Later versions only append (`holder` in 2, `owner` in 3), so an older
/// row decodes as this followed by what its version appended.
#[derive(Deserialize)]
struct LeaseV1 {
    id: String,
    pattern: String,
    types: Vec<String>,
    ttl_ms: u64,
    expires_at_us: u64,
    group: Option<String>,
    from_seq: Option<u64>,
    granted_seq: u64,
    renewed_seq: u64,
}

impl LeaseV1 {
    /// The lease, with what later versions added.
    fn with(self, holder: Party, owner: Option<String>) -> Lease {
        let LeaseV1 { id, pattern, types, ttl_ms, expires_at_us, group, from_seq, granted_seq, renewed_seq } = self;
        Lease { id, pattern, types, ttl_ms, expires_at_us, group, from_seq, granted_seq, renewed_seq, holder, owner }
    }
}

pub(crate) fn encode_lease_row(lease: &Lease) -> Vec<u8> {
    let mut out = encode_row(lease);
    out[0] = LEASE_ROW_VERSION;
    out
}

pub(crate) fn decode_lease_row(key: &[u8], bytes: &[u8]) -> Result<Lease> {
    let at = || format!("lease {}", String::from_utf8_lossy(key));
    let decode_error = |e: postcard::Error| Error::corruption(at(), format!("row does not decode: {e}"));
    match bytes.split_first() {
        Some((&LEASE_ROW_VERSION, body)) => postcard::from_bytes(body).map_err(decode_error),
        Some((1, body)) => {
            Ok(postcard::from_bytes::<LeaseV1>(body).map_err(decode_error)?.with(Party::default(), None))
        }
        Some((2, body)) => {
            let (lease, holder) = postcard::from_bytes::<(LeaseV1, Party)>(body).map_err(decode_error)?;
            Ok(lease.with(holder, None))
        }
        Some((v, _)) => Err(Error::corruption(at(), format!("unknown lease row version {v}"))),
        None => Err(Error::corruption(at(), "empty row")),
    }
}

impl Lease {
    pub(crate) fn granted(g: &LeaseGrant, seq: u64) -> Lease {
        Lease {
            id: g.id.clone(),
            pattern: g.pattern.clone(),
            types: g.types.clone(),
            ttl_ms: g.ttl_ms,
            expires_at_us: g.expires_at_us,
            group: g.group.clone(),
            from_seq: g.from_seq,
            granted_seq: seq,
            renewed_seq: seq,
            holder: g.holder.clone(),
            owner: g.owner.clone(),
        }
    }
}

/// A keyed document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Doc {
    /// The key.
    pub key: String,
    /// The document.
    pub value: Vec<u8>,
    /// The sequence number of the put.
    pub seq: u64,
    /// When it was put, in microseconds since the Unix epoch.
    pub time_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lease rows of every version read: version 2 without an owner,
    /// version 1 without a holder either. Each version only appended a
    /// field, so the older bytes are the newer ones cut short.
    #[test]
    fn older_lease_rows_still_decode() {
        let holder = Party { service: "svc".into(), instance: "i".into() };
        let lease = Lease {
            id: "l".into(),
            pattern: "/a/".into(),
            types: vec!["t".into()],
            ttl_ms: 5,
            expires_at_us: 6,
            group: Some("g".into()),
            from_seq: Some(2),
            granted_seq: 7,
            renewed_seq: 8,
            holder: holder.clone(),
            owner: Some("ops".into()),
        };
        assert_eq!(decode_lease_row(b"l", &encode_lease_row(&lease)).expect("v3"), lease);
        let versioned = |v: u8, body: &[u8]| [&[v][..], body].concat();
        // Version 2: the current layout without the trailing owner (None
        // is one byte).
        let unowned = Lease { owner: None, ..lease.clone() };
        let body = postcard::to_allocvec(&unowned).expect("encode");
        let v2 = decode_lease_row(b"l", &versioned(2, &body[..body.len() - 1])).expect("v2");
        assert_eq!(v2, unowned);
        // Version 1: without the holder either (two empty strings).
        let plain = Lease { holder: Party::default(), ..unowned };
        let body = postcard::to_allocvec(&plain).expect("encode");
        assert_eq!(decode_lease_row(b"l", &versioned(1, &body[..body.len() - 3])).expect("v1"), plain);
        assert!(decode_lease_row(b"l", &versioned(9, &body)).is_err(), "an unknown version is refused");
        assert_eq!(v2.holder, holder);
    }

    #[test]
    fn rows_round_trip_and_reject_unknown_versions() {
        let row = TupleRow { seq: 3, time_us: 4, value: "v".into(), expires_at_us: None, source: Party::default() };
        let bytes = encode_row(&row);
        assert_eq!(decode_row::<TupleRow>("tuple", b"k", &bytes).expect("decode"), row);
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert!(matches!(decode_row::<TupleRow>("tuple", b"k", &bad), Err(Error::Corruption { .. })));
        assert!(matches!(decode_row::<TupleRow>("tuple", b"k", &[]), Err(Error::Corruption { .. })));
    }
}

/// A monitor's state on this site, as its last monitor record left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRow {
    /// The recording pattern.
    pub pattern: String,
    /// Its state.
    pub state: MonitorState,
    /// The sequence number of the record that set the state.
    pub seq: u64,
    /// When the state was set, in microseconds since the Unix epoch.
    pub time_us: u64,
    /// The sequence number of the record that started the monitor.
    pub started_seq: u64,
    /// The replica its backfill copied from, once complete (empty: none).
    pub source: String,
    /// Per origin site, the highest origin sequence number the backfill's
    /// copy included.
    pub marks: Vec<(String, u64)>,
    /// Why the state last changed.
    pub reason: String,
}
