//! The in-memory engine: pepper's families as sorted maps, for tests.
//!
//! Each family is a `BTreeMap` of byte keys to byte values, behind an `Arc`.
//! The whole state is one `Arc` of those families, swapped under a lock:
//!
//! - a **snapshot** clones the outer `Arc`: O(families), no key copied;
//! - a **write** applies its batch to the state under the write lock. A
//!   family still shared with a live snapshot is copied first (copy on
//!   write, `Arc::make_mut`), so the snapshot keeps its state; keys and
//!   values are `Arc<[u8]>`, so that copy moves pointers, not bytes. Without
//!   a live snapshot nothing is copied;
//! - `sync` does nothing: there is no disk. The engine survives the stores
//!   opened on it, so closing a store and opening another on the same engine
//!   is a restart that loses nothing, the same as a synced RocksDB folder.
//!
//! Everything is deterministic: no background threads, no timing. A write
//! is atomic because readers only ever see the state before or after it.
//!
//! Rejected alternative: a versioned map (every key with the sequence of
//! writes that set it, snapshots as version numbers). Snapshots would cost
//! nothing at all, but old versions would need a collector that tracks live
//! snapshots; the tests this engine serves hold snapshots briefly, so copy on
//! write is the simpler right answer.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use crate::engine::{Batch, BatchOp, Direction, Engine, KeyRange, Reader, Value, Visit};
use crate::error::{Error, Result};
use crate::keys::ALL_CFS;

type Table = BTreeMap<Arc<[u8]>, Arc<[u8]>>;

/// Every family by name.
type Families = BTreeMap<&'static str, Arc<Table>>;

/// An engine that keeps every family in memory. Cloning it gives another
/// handle to the same data.
#[derive(Clone, Debug)]
pub struct MemoryEngine {
    state: Arc<RwLock<Arc<Families>>>,
}

impl Default for MemoryEngine {
    fn default() -> MemoryEngine {
        MemoryEngine::new()
    }
}

impl MemoryEngine {
    /// An empty engine with every family pepper uses ([`crate::keys::ALL_CFS`]).
    pub fn new() -> MemoryEngine {
        let families = ALL_CFS.iter().map(|name| (*name, Arc::new(Table::new()))).collect();
        MemoryEngine { state: Arc::new(RwLock::new(Arc::new(families))) }
    }

    /// The state as of now, shared with the engine until its next write.
    fn current(&self) -> Arc<Families> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn table<'a>(families: &'a Families, name: &str) -> Result<&'a Table> {
    families.get(name).map(|t| &**t).ok_or_else(|| Error::corruption(name, "column family is missing"))
}

fn get(families: &Families, family: &str, key: &[u8]) -> Result<Option<Value<'static>>> {
    Ok(table(families, family)?.get(key).map(|v| Value::from(v.clone())))
}

fn scan(
    families: &Families,
    family: &str,
    range: KeyRange<'_>,
    direction: Direction,
    visit: &mut Visit<'_>,
) -> Result<()> {
    let table = table(families, family)?;
    if range.is_empty() {
        return Ok(());
    }
    let end = range.end.map_or(Bound::Unbounded, Bound::Excluded);
    let entries = table.range::<[u8], _>((Bound::Included(range.start), end));
    let mut go = |(k, v): (&Arc<[u8]>, &Arc<[u8]>)| visit(k, v);
    match direction {
        Direction::Forward => {
            for entry in entries {
                if !go(entry)? {
                    break;
                }
            }
        }
        Direction::Backward => {
            for entry in entries.rev() {
                if !go(entry)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

impl Reader for MemoryEngine {
    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Value<'_>>> {
        get(&self.current(), family, key)
    }

    fn scan(&self, family: &str, range: KeyRange<'_>, direction: Direction, visit: &mut Visit<'_>) -> Result<()> {
        // The visitor runs on a snapshot, outside the lock: it may take its
        // time, or read the engine again.
        scan(&self.current(), family, range, direction, visit)
    }
}

impl Engine for MemoryEngine {
    fn write(&self, batch: &Batch, _sync: bool) -> Result<()> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        // All or nothing: check every family before changing any.
        for op in batch.ops() {
            let (BatchOp::Put { family, .. } | BatchOp::Delete { family, .. } | BatchOp::DeleteRange { family, .. }) =
                op;
            table(&state, family)?;
        }
        let families = Arc::make_mut(&mut state);
        for op in batch.ops() {
            match op {
                BatchOp::Put { family, key, value } => {
                    if let Some(t) = families.get_mut(family) {
                        Arc::make_mut(t).insert(Arc::from(key), Arc::from(value));
                    }
                }
                BatchOp::Delete { family, key } => {
                    if let Some(t) = families.get_mut(family) {
                        if t.contains_key(key) {
                            Arc::make_mut(t).remove(key);
                        }
                    }
                }
                BatchOp::DeleteRange { family, start, end } => {
                    if let Some(t) = families.get_mut(family) {
                        if start >= end {
                            continue;
                        }
                        let doomed: Vec<Arc<[u8]>> = t
                            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                            .map(|(k, _)| k.clone())
                            .collect();
                        if !doomed.is_empty() {
                            let t = Arc::make_mut(t);
                            for k in doomed {
                                t.remove(&k);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn Reader + '_> {
        Box::new(MemorySnapshot(self.current()))
    }

    fn has_family(&self, family: &str) -> bool {
        self.current().contains_key(family)
    }
}

/// A frozen state of every family.
struct MemorySnapshot(Arc<Families>);

impl Reader for MemorySnapshot {
    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Value<'_>>> {
        get(&self.0, family, key)
    }

    fn scan(&self, family: &str, range: KeyRange<'_>, direction: Direction, visit: &mut Visit<'_>) -> Result<()> {
        scan(&self.0, family, range, direction, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{CF_DOCS, CF_LOG};

    fn keys_of(r: &dyn Reader, family: &str, range: KeyRange<'_>, direction: Direction) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        r.scan(family, range, direction, &mut |k, _| {
            out.push(k.to_vec());
            Ok(true)
        })
        .expect("scan");
        out
    }

    #[test]
    fn a_snapshot_keeps_its_state_while_the_engine_moves_on() {
        let e = MemoryEngine::new();
        let mut b = Batch::new();
        b.put(CF_DOCS, b"a", b"1");
        b.put(CF_DOCS, b"b", b"1");
        e.write(&b, true).expect("write");
        let snap = e.snapshot();
        let mut b = Batch::new();
        b.put(CF_DOCS, b"a", b"2");
        b.delete(CF_DOCS, b"b");
        b.put(CF_DOCS, b"c", b"2");
        e.write(&b, false).expect("write");
        assert_eq!(snap.get(CF_DOCS, b"a").expect("get").as_deref(), Some(&b"1"[..]));
        assert_eq!(keys_of(&*snap, CF_DOCS, KeyRange::ALL, Direction::Forward), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(e.get(CF_DOCS, b"a").expect("get").as_deref(), Some(&b"2"[..]));
        assert_eq!(keys_of(&e, CF_DOCS, KeyRange::ALL, Direction::Backward), [b"c".to_vec(), b"a".to_vec()]);
    }

    #[test]
    fn range_deletes_and_scans_honour_both_bounds() {
        let e = MemoryEngine::new();
        let mut b = Batch::new();
        for k in 1u8..=6 {
            b.put(CF_LOG, [k], [k]);
        }
        b.delete_range(CF_LOG, [2], [4]);
        e.write(&b, true).expect("write");
        let all = keys_of(&e, CF_LOG, KeyRange::ALL, Direction::Forward);
        assert_eq!(all, [vec![1], vec![4], vec![5], vec![6]]);
        let some = keys_of(&e, CF_LOG, KeyRange::new(&[4], Some(&[6])), Direction::Backward);
        assert_eq!(some, [vec![5], vec![4]]);
        let mut first = None;
        e.scan(CF_LOG, KeyRange::ALL, Direction::Backward, &mut |k, _| {
            first = Some(k.to_vec());
            Ok(false)
        })
        .expect("scan");
        assert_eq!(first, Some(vec![6]));
    }

    #[test]
    fn a_batch_naming_a_missing_family_changes_nothing() {
        let e = MemoryEngine::new();
        let mut b = Batch::new();
        b.put(CF_DOCS, b"a", b"1");
        b.put("no_such_family", b"a", b"1");
        assert!(matches!(e.write(&b, true), Err(Error::Corruption { .. })));
        assert!(e.get(CF_DOCS, b"a").expect("get").is_none());
        assert!(!e.has_family("no_such_family") && e.has_family(CF_DOCS));
    }
}
