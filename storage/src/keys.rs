//! Column families and key encodings.
//!
//! pepper keeps one RocksDB database per site with these column families
//! (docs/storage-format.md gives hex examples):
//!
//! | family    | key                                   | value                 |
//! |-----------|---------------------------------------|-----------------------|
//! | `log`     | seq, u64 big-endian                   | encoded [`Record`]    |
//! | `tuples`  | channel `00` field                    | latest-value row      |
//! | `history` | channel `00` field `00` seq (u64 BE)  | history row           |
//! | `leases`  | lease id                              | lease row             |
//! | `docs`    | document key                          | document row          |
//! | `event_ids` | event id                            | seq, time (u64 BE each) |
//! | `tombstones` | channel `00` field                 | tombstone row         |
//! | `meta`    | ASCII name                            | u64 BE or u8          |
//!
//! Big-endian sequence numbers sort numerically under RocksDB's bytewise
//! comparator, so a log scan from a sequence number is one seek. Channels and
//! fields may not contain the byte `00`, which makes it an unambiguous
//! separator, and a channel prefix scan is a byte prefix scan.
//!
//! [`Record`]: crate::Record

/// The ordered log of records.
pub const CF_LOG: &str = "log";
/// Latest value per (channel, field).
pub const CF_TUPLES: &str = "tuples";
/// Every value per (channel, field), by sequence number.
pub const CF_HISTORY: &str = "history";
/// Live leases.
pub const CF_LEASES: &str = "leases";
/// Keyed documents.
pub const CF_DOCS: &str = "docs";
/// Counters and markers kept in the same batches as the records.
pub const CF_META: &str = "meta";
/// The sequence number and time of the last event logged under each event
/// id, for idempotent retries.
pub const CF_EVENT_IDS: &str = "event_ids";

/// Tuples that left the latest values (expired or deleted), with the
/// sequence number of the record that ended them, so a client can ask what
/// changed since a sequence number, removals included.
pub const CF_TOMBSTONES: &str = "tombstones";

/// Model classes: namespace `00` lowercase class name.
pub const CF_MODEL_CLASSES: &str = "model_classes";
/// Model instances: namespace `00` path identity.
pub const CF_MODEL_INSTANCES: &str = "model_instances";
/// Every version of each instance: namespace `00` identity `00` seq.
pub const CF_MODEL_HISTORY: &str = "model_history";
/// Instances by class: namespace `00` lowercase class `00` identity.
pub const CF_MODEL_CLASS_INDEX: &str = "model_class_index";
/// Who refers to whom: namespace `00` target identity `00` source identity.
pub const CF_MODEL_REF_INDEX: &str = "model_ref_index";

/// Received records: origin site -> the highest of its sequence numbers
/// appended here (u64 big-endian), written in the same batch as the
/// records. A peer's retried batch is dropped below it.
pub const CF_ORIGINS: &str = "origins";
/// Forwarding: peer site -> the next local sequence number to send it (u64
/// big-endian), advanced only after the peer acknowledged what came before.
pub const CF_PEER_CURSORS: &str = "peer_cursors";
/// Monitors: recording pattern -> its state row, written by monitor records.
pub const CF_MONITORS: &str = "monitors";

/// Every column family pepper opens, in a fixed order.
pub const ALL_CFS: [&str; 16] = [
    CF_LOG,
    CF_TUPLES,
    CF_HISTORY,
    CF_LEASES,
    CF_DOCS,
    CF_META,
    CF_EVENT_IDS,
    CF_TOMBSTONES,
    CF_MODEL_CLASSES,
    CF_MODEL_INSTANCES,
    CF_MODEL_HISTORY,
    CF_MODEL_CLASS_INDEX,
    CF_MODEL_REF_INDEX,
    CF_ORIGINS,
    CF_PEER_CURSORS,
    CF_MONITORS,
];

/// A key of parts joined by `00` (no part may contain `00`).
pub fn joined(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// The `event_ids` value: seq then time, u64 big-endian each.
pub fn event_id_value(seq: u64, time_us: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(&time_us.to_be_bytes());
    v
}

/// Decodes an `event_ids` value into (seq, time).
pub fn decode_event_id_value(v: &[u8]) -> Option<(u64, u64)> {
    Some((decode_u64(v.get(..8)?)?, decode_u64(v.get(8..16)?)?))
}

/// `meta` key: the next sequence number to assign (u64 BE). Written with
/// every group, so numbering survives even a log trimmed to nothing.
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
/// `meta` key: the lowest sequence number retention kept (u64 BE).
pub const META_FLOOR: &[u8] = b"floor";
/// `meta` key: the sum of the encoded sizes of the records in `log` (u64 BE).
pub const META_LOG_BYTES: &[u8] = b"log_bytes";
/// `meta` key: the time of the newest record (u64 BE, microseconds).
pub const META_LAST_TIME: &[u8] = b"last_time_us";
/// `meta` key: tombstones with a lower sequence number may have been
/// trimmed by retention (u64 BE; absent means none were).
pub const META_TOMBSTONE_FLOOR: &[u8] = b"tombstone_floor";
/// `meta` key: the data format version (one byte).
pub const META_FORMAT: &[u8] = b"format";

/// The separator between channel, field and seq in tuple and history keys.
pub const SEP: u8 = 0;

/// The `log` key of a sequence number.
pub fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes a `log` key or a `meta` counter.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

/// The `tuples` key of (channel, field).
pub fn tuple_key(channel: &str, field: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(channel.len() + 1 + field.len());
    k.extend_from_slice(channel.as_bytes());
    k.push(SEP);
    k.extend_from_slice(field.as_bytes());
    k
}

/// Splits a `tuples` key into (channel, field).
pub fn split_tuple_key(key: &[u8]) -> Option<(&str, &str)> {
    let at = key.iter().position(|b| *b == SEP)?;
    let channel = std::str::from_utf8(&key[..at]).ok()?;
    let field = std::str::from_utf8(&key[at + 1..]).ok()?;
    Some((channel, field))
}

/// The prefix shared by every `history` key of (channel, field).
pub fn history_prefix(channel: &str, field: &str) -> Vec<u8> {
    let mut k = tuple_key(channel, field);
    k.push(SEP);
    k
}

/// The `history` key of (channel, field) at `seq`.
pub fn history_key(channel: &str, field: &str, seq: u64) -> Vec<u8> {
    let mut k = history_prefix(channel, field);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a `history` key into (channel, field, seq).
pub fn split_history_key(key: &[u8]) -> Option<(&str, &str, u64)> {
    if key.len() < 10 {
        return None;
    }
    let (head, seq) = key.split_at(key.len() - 8);
    let (tuple, sep) = head.split_at(head.len() - 1);
    if sep != [SEP] {
        return None;
    }
    let (channel, field) = split_tuple_key(tuple)?;
    Some((channel, field, decode_u64(seq)?))
}

/// The smallest key greater than every key that starts with `prefix`, or
/// `None` when there is none (the prefix is all `ff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_numerically() {
        let mut seqs = [1u64, 255, 256, 65_536, 2, u64::MAX, 0];
        let mut keys: Vec<_> = seqs.iter().map(|s| log_key(*s)).collect();
        keys.sort();
        seqs.sort();
        let back: Vec<u64> = keys.iter().filter_map(|k| decode_u64(k)).collect();
        assert_eq!(back, seqs);
    }

    #[test]
    fn history_key_round_trips_and_groups_by_tuple() {
        let k = history_key("/a/b/", "f", 258);
        assert_eq!(hex(&k), "2f612f622f0066000000000000000102");
        assert_eq!(split_history_key(&k), Some(("/a/b/", "f", 258)));
        assert!(k.starts_with(&history_prefix("/a/b/", "f")));
        assert!(!k.starts_with(&history_prefix("/a/b/", "")));
    }

    #[test]
    fn tuple_key_example() {
        assert_eq!(hex(&tuple_key("/a/", "load")), "2f612f006c6f6164");
        assert_eq!(split_tuple_key(&tuple_key("/a/", "load")), Some(("/a/", "load")));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
