//! The engine seam: the few things pepper asks of an ordered key-value store.
//!
//! Everything pepper keeps lives in named families of sorted byte keys (the
//! families and key encodings are in [`crate::keys`]). The store needs only
//! five things from whatever holds them:
//!
//! - **write a batch** of puts, deletes and range deletes over any families,
//!   all or nothing, and with `sync` durable before the call returns;
//! - **take a snapshot**, a read-only state that later writes never change;
//! - **get** one key and **scan** a key range, forward or backward, from a
//!   snapshot or from the latest state (the writer reads its own last writes
//!   there, with no snapshot to pay for);
//! - say whether a **family exists** (a read-only open of an old folder may
//!   lack the newer ones);
//! - say **where** it keeps its files, if anywhere.
//!
//! [`Engine`] is that interface and nothing more. [`RocksEngine`] is the
//! production engine, whose bytes are pepper's file format
//! (docs/storage-format.md), [`MemoryEngine`]
//! keeps the same families in memory for fast, deterministic tests, and
//! [`FaultEngine`] wraps either to fail or panic on a chosen write, which is
//! how the store's poisoning is tested.
//!
//! A scan hands each entry to a visitor as borrowed slices and stops when the
//! visitor returns `false`. Nothing is copied per entry, so a feed catching
//! up over a million records pays one indirect call per record on top of
//! RocksDB's own iterator. A batch keeps its keys and values in one buffer,
//! which the writer reuses from one group to the next; the RocksDB engine
//! copies it into a RocksDB write batch once per group commit.
//!
//! Rejected alternative: a trait mirroring RocksDB's API (column family
//! handles, read and write options, raw iterators with `seek`, `prev` and
//! `status`). Every other engine would have to imitate RocksDB's quirks, and
//! the store would keep depending on them. The rejected trait would also have
//! let retention walk the history family with one iterator; with scans it
//! opens up to three per tuple it visits, which is RocksDB's own cost and
//! happens only in the background retention pass.
//!
//! [`RocksEngine`]: crate::RocksEngine
//! [`MemoryEngine`]: crate::MemoryEngine
//! [`FaultEngine`]: crate::FaultEngine

pub mod fault;
pub mod memory;
pub mod rocks;

use std::fmt;
use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;

/// Which way a scan walks its range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// From the lowest key up.
    #[default]
    Forward,
    /// From the highest key down.
    Backward,
}

/// A range of keys: `start` included, `end` excluded (`None`: to the last
/// key of the family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange<'a> {
    /// The lowest key included.
    pub start: &'a [u8],
    /// The first key past the range, if the range has an end.
    pub end: Option<&'a [u8]>,
}

impl<'a> KeyRange<'a> {
    /// Every key of the family.
    pub const ALL: KeyRange<'static> = KeyRange { start: b"", end: None };

    /// Keys from `start` (included) to `end` (excluded).
    pub fn new(start: &'a [u8], end: Option<&'a [u8]>) -> KeyRange<'a> {
        KeyRange { start, end }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start && self.end.is_none_or(|end| key < end)
    }

    /// Whether no key can lie in the range.
    pub fn is_empty(&self) -> bool {
        self.end.is_some_and(|end| end <= self.start)
    }
}

/// A value read by [`Reader::get`]: the engine's own bytes where it can
/// lend them (RocksDB pins the block), otherwise shared or owned bytes.
pub struct Value<'a>(ValueRepr<'a>);

enum ValueRepr<'a> {
    Pinned(rocksdb::DBPinnableSlice<'a>),
    Shared(Arc<[u8]>),
    Owned(Vec<u8>),
}

impl Value<'_> {
    pub(crate) fn pinned(slice: rocksdb::DBPinnableSlice<'_>) -> Value<'_> {
        Value(ValueRepr::Pinned(slice))
    }
}

impl Deref for Value<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            ValueRepr::Pinned(p) => p,
            ValueRepr::Shared(s) => s,
            ValueRepr::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for Value<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({:02x?})", &**self)
    }
}

impl From<Arc<[u8]>> for Value<'static> {
    fn from(bytes: Arc<[u8]>) -> Value<'static> {
        Value(ValueRepr::Shared(bytes))
    }
}

impl From<Vec<u8>> for Value<'static> {
    fn from(bytes: Vec<u8>) -> Value<'static> {
        Value(ValueRepr::Owned(bytes))
    }
}

/// The visitor a scan calls with each (key, value); it returns whether to go
/// on.
pub type Visit<'v> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'v;

/// Point reads and range scans, of a snapshot or of an engine's latest state.
pub trait Reader {
    /// The value under `key` in `family`, if any.
    ///
    /// # Errors
    /// `Corruption` if the family does not exist; the engine's read errors.
    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Value<'_>>>;

    /// Calls `visit` on each entry of `family` in `range`, in key order
    /// (`Forward`) or its reverse (`Backward`), until it returns `false` or
    /// the range ends. Block checksums are verified on the way.
    ///
    /// # Errors
    /// `Corruption` if the family does not exist; the engine's read errors;
    /// whatever `visit` returns.
    fn scan(&self, family: &str, range: KeyRange<'_>, direction: Direction, visit: &mut Visit<'_>) -> Result<()>;
}

/// An ordered key-value store with named families, as pepper uses it.
///
/// Reads through the engine itself see every write that returned, as of the
/// moment of each call; reads through a [`Engine::snapshot`] see one state.
/// Only the store's writer thread writes, but an engine must be safe to read
/// from any thread while it does.
pub trait Engine: Reader + Send + Sync {
    /// Applies every operation of `batch`, in order, atomically: a reader
    /// or a restart sees all of it or none of it. With `sync`, the batch is
    /// durable (survives power loss) when the call returns; without, it
    /// survives a crash of the process only.
    ///
    /// # Errors
    /// `Corruption` if a family does not exist (nothing is applied); the
    /// engine's write errors, after which the outcome is unknown until the
    /// engine is reopened.
    fn write(&self, batch: &Batch, sync: bool) -> Result<()>;

    /// A read-only state of every family as of now. Cheap enough to take per
    /// request.
    fn snapshot(&self) -> Box<dyn Reader + '_>;

    /// Whether `family` exists.
    fn has_family(&self, family: &str) -> bool;

    /// The folder the engine keeps its files in, if it has one.
    fn path(&self) -> Option<&Path> {
        None
    }
}

/// What one batch operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Put,
    Delete,
    DeleteRange,
}

/// One operation, with its bytes kept in the batch's buffer: `a` is the key
/// (or range start), `b` the value (or range end).
#[derive(Clone, Debug)]
struct Op {
    kind: OpKind,
    family: &'static str,
    a: Range<usize>,
    b: Range<usize>,
}

/// One operation of a [`Batch`], as an engine applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOp<'a> {
    /// Sets `key` to `value`.
    Put {
        /// The family.
        family: &'static str,
        /// The key.
        key: &'a [u8],
        /// The new value.
        value: &'a [u8],
    },
    /// Removes `key`, if present.
    Delete {
        /// The family.
        family: &'static str,
        /// The key.
        key: &'a [u8],
    },
    /// Removes every key from `start` (included) to `end` (excluded).
    DeleteRange {
        /// The family.
        family: &'static str,
        /// The lowest key removed.
        start: &'a [u8],
        /// The first key kept.
        end: &'a [u8],
    },
}

/// Writes to apply together with [`Engine::write`]: all or none.
///
/// Keys and values are copied into one growing buffer, so building a batch
/// allocates only when the buffer grows, and [`Batch::clear`] keeps the
/// buffer for the next one.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    fn push(&mut self, kind: OpKind, family: &'static str, a: &[u8], b: &[u8]) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(a);
        self.bytes.extend_from_slice(b);
        let mid = at + a.len();
        self.ops.push(Op { kind, family, a: at..mid, b: mid..mid + b.len() });
    }

    /// Sets `key` in `family` to `value`.
    pub fn put(&mut self, family: &'static str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.push(OpKind::Put, family, key.as_ref(), value.as_ref());
    }

    /// Sets `key` in `family` to the bytes `value` appends to the buffer it
    /// is given, so a value built for the batch is built in place. `value`
    /// must only append; if it fails, the batch is left as it was.
    pub(crate) fn put_with<T>(
        &mut self,
        family: &'static str,
        key: &[u8],
        value: impl FnOnce(&mut Vec<u8>) -> Result<T>,
    ) -> Result<T> {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let mid = self.bytes.len();
        match value(&mut self.bytes) {
            Ok(out) => {
                self.ops.push(Op { kind: OpKind::Put, family, a: at..mid, b: mid..self.bytes.len() });
                Ok(out)
            }
            Err(e) => {
                self.bytes.truncate(at);
                Err(e)
            }
        }
    }

    /// Removes `key` from `family`.
    pub fn delete(&mut self, family: &'static str, key: impl AsRef<[u8]>) {
        self.push(OpKind::Delete, family, key.as_ref(), b"");
    }

    /// Removes every key of `family` from `start` (included) to `end`
    /// (excluded).
    pub fn delete_range(&mut self, family: &'static str, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) {
        self.push(OpKind::DeleteRange, family, start.as_ref(), end.as_ref());
    }

    /// How many operations the batch holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values the batch holds.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ops.clear();
    }

    /// The operations, in the order they were added.
    pub fn ops(&self) -> impl ExactSizeIterator<Item = BatchOp<'_>> + '_ {
        self.ops.iter().map(|op| {
            let (a, b) = (&self.bytes[op.a.clone()], &self.bytes[op.b.clone()]);
            match op.kind {
                OpKind::Put => BatchOp::Put { family: op.family, key: a, value: b },
                OpKind::Delete => BatchOp::Delete { family: op.family, key: a },
                OpKind::DeleteRange => BatchOp::DeleteRange { family: op.family, start: a, end: b },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_hands_back_its_operations_in_order() {
        let mut b = Batch::new();
        b.put("log", [0, 1], b"v1");
        b.delete("docs", b"k");
        b.delete_range("history", b"a", b"b");
        b.put("log", b"", b"");
        let ops: Vec<_> = b.ops().collect();
        assert_eq!(
            ops,
            [
                BatchOp::Put { family: "log", key: &[0, 1], value: b"v1" },
                BatchOp::Delete { family: "docs", key: b"k" },
                BatchOp::DeleteRange { family: "history", start: b"a", end: b"b" },
                BatchOp::Put { family: "log", key: b"", value: b"" },
            ]
        );
        b.clear();
        assert!(b.is_empty() && b.bytes() == 0);
    }

    #[test]
    fn a_key_range_has_an_included_start_and_an_excluded_end() {
        let r = KeyRange::new(b"b", Some(b"d"));
        assert!(!r.contains(b"a") && r.contains(b"b") && r.contains(b"c\xff") && !r.contains(b"d"));
        assert!(KeyRange::ALL.contains(b"") && KeyRange::ALL.contains(b"\xff\xff"));
        assert!(KeyRange::new(b"d", Some(b"d")).is_empty() && !r.is_empty());
    }
}
