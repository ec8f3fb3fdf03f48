//! The fault-injecting engine: another engine that fails, or panics, on
//! cue.
//!
//! A store must never carry on in an unknown state: after a failed WAL write
//! or fsync it is poisoned (see [`crate::Store::poisoned`]), and a panic on
//! its writer thread poisons it too. Those paths cannot be reached by
//! breaking a real disk in a test, so [`FaultEngine`] wraps any engine and
//! breaks on the write a test chooses, counted from when the fault is armed:
//!
//! - [`Fault::FailWrite`]: the write returns an I/O error and applies
//!   nothing, as when RocksDB cannot append to its WAL;
//! - [`Fault::FailSync`]: a synced write returns an I/O error after its batch
//!   reached the log but before it was applied, as when RocksDB's WAL fsync
//!   fails. Readers of this engine never see the batch; the inner engine
//!   gets it when this one is dropped, the way recovery replays a WAL record
//!   that did reach the disk. A restart may find such a batch or not, and
//!   the store must be right either way;
//! - [`Fault::Panic`]: the write panics before applying anything, standing
//!   for a bug anywhere in the writer.
//!
//! After a failed write or sync every later write fails too, as RocksDB
//! refuses writes after a WAL error. A panic leaves the engine working.
//!
//! [`FaultEngine::hold_next_write`] stops the next write until the test lets
//! it go, so requests sent meanwhile queue up and the writer takes them as one
//! group: grouping is tested with no sleep and no hook inside the writer.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::engine::{Batch, Direction, Engine, KeyRange, Reader, Value, Visit};
use crate::error::{Error, Result};

/// What goes wrong, and on which write. `n` counts from 1, from the moment
/// the fault is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The `n`th write fails with an I/O error; nothing of it is applied.
    FailWrite(u64),
    /// The `n`th synced write (`sync = true`) fails with an I/O error; its
    /// batch reaches the inner engine only when this engine is dropped.
    FailSync(u64),
    /// The `n`th write panics; nothing of it is applied.
    Panic(u64),
}

#[derive(Debug, Default)]
struct State {
    /// The armed fault and how many writes (or synced writes) remain
    /// before it fires.
    armed: Option<(Fault, u64)>,
    /// Why every write fails now, once a write or sync failed.
    failed: Option<String>,
    /// A batch whose sync failed, for the inner engine when this one drops.
    torn: Option<Batch>,
    /// The next write waits while this is set.
    hold: Option<HoldState>,
    /// Writes this engine passed to the inner one.
    writes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldState {
    /// No write reached the hold yet.
    Armed,
    /// A write is waiting at the hold.
    Holding,
}

/// An engine that fails or panics on a chosen write of the engine it wraps.
pub struct FaultEngine {
    inner: Arc<dyn Engine>,
    state: Mutex<State>,
    changed: Condvar,
}

impl FaultEngine {
    /// Wraps `inner`, with no fault armed.
    pub fn new(inner: Arc<dyn Engine>) -> FaultEngine {
        FaultEngine { inner, state: Mutex::new(State::default()), changed: Condvar::new() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms `fault`, replacing any armed one; its count starts now.
    pub fn arm(&self, fault: Fault) {
        let n = match fault {
            Fault::FailWrite(n) | Fault::FailSync(n) | Fault::Panic(n) => n.max(1),
        };
        self.state().armed = Some((fault, n));
    }

    /// Writes applied to the inner engine so far.
    pub fn writes(&self) -> u64 {
        self.state().writes
    }

    /// Makes the next write wait, before anything of it happens, until the
    /// returned [`Hold`] is released or dropped.
    pub fn hold_next_write(&self) -> Hold<'_> {
        self.state().hold = Some(HoldState::Armed);
        Hold { engine: self }
    }

    /// Decides what the write in hand meets: `Ok(true)` to apply it,
    /// `Ok(false)` to keep it as a torn batch, an error to fail it.
    fn fate(&self, sync: bool) -> Result<bool> {
        let mut state = self.state();
        if state.hold == Some(HoldState::Armed) {
            state.hold = Some(HoldState::Holding);
            self.changed.notify_all();
            while state.hold.is_some() {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        }
        if let Some(reason) = &state.failed {
            return Err(Error::Io(std::io::Error::other(format!("{reason}; the engine refuses writes"))));
        }
        let Some((fault, left)) = state.armed else { return Ok(true) };
        let counts = !matches!(fault, Fault::FailSync(_)) || sync;
        if !counts {
            return Ok(true);
        }
        if left > 1 {
            state.armed = Some((fault, left - 1));
            return Ok(true);
        }
        state.armed = None;
        match fault {
            Fault::FailWrite(_) => {
                let reason = "injected write failure".to_string();
                state.failed = Some(reason.clone());
                Err(Error::Io(std::io::Error::other(reason)))
            }
            Fault::FailSync(_) => {
                state.failed = Some("injected sync failure".to_string());
                Ok(false)
            }
            Fault::Panic(_) => {
                drop(state);
                panic!("injected panic in an engine write");
            }
        }
    }
}

impl Reader for FaultEngine {
    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Value<'_>>> {
        self.inner.get(family, key)
    }

    fn scan(&self, family: &str, range: KeyRange<'_>, direction: Direction, visit: &mut Visit<'_>) -> Result<()> {
        self.inner.scan(family, range, direction, visit)
    }
}

impl Engine for FaultEngine {
    fn write(&self, batch: &Batch, sync: bool) -> Result<()> {
        if !self.fate(sync)? {
            self.state().torn = Some(batch.clone());
            return Err(Error::Io(std::io::Error::other("injected sync failure")));
        }
        self.inner.write(batch, sync)?;
        self.state().writes += 1;
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn Reader + '_> {
        self.inner.snapshot()
    }

    fn has_family(&self, family: &str) -> bool {
        self.inner.has_family(family)
    }

    fn path(&self) -> Option<&Path> {
        self.inner.path()
    }
}

impl Drop for FaultEngine {
    fn drop(&mut self) {
        let torn = self.state().torn.take();
        if let Some(batch) = torn {
            // The failed sync's batch reached the log: a restart replays it.
            if let Err(e) = self.inner.write(&batch, true) {
                tracing::error!(error = %e, "the torn batch could not reach the inner engine");
            }
        }
    }
}

/// A write held back by [`FaultEngine::hold_next_write`].
pub struct Hold<'a> {
    engine: &'a FaultEngine,
}

impl Hold<'_> {
    /// Waits until a write reaches the hold and waits there.
    pub fn wait_until_held(&self) {
        let mut state = self.engine.state();
        while state.hold == Some(HoldState::Armed) {
            state = self.engine.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lets the held write (or the next one, if none came yet) go on.
    pub fn release(self) {}
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.engine.state().hold = None;
        self.engine.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::memory::MemoryEngine;
    use crate::keys::CF_DOCS;

    fn put(key: &[u8]) -> Batch {
        let mut b = Batch::new();
        b.put(CF_DOCS, key, b"v");
        b
    }

    #[test]
    fn the_nth_write_fails_and_applies_nothing_and_later_writes_fail_too() {
        let memory = Arc::new(MemoryEngine::new());
        let e = FaultEngine::new(memory.clone());
        e.arm(Fault::FailWrite(2));
        e.write(&put(b"a"), false).expect("first write");
        assert!(matches!(e.write(&put(b"b"), false), Err(Error::Io(_))));
        assert!(matches!(e.write(&put(b"c"), false), Err(Error::Io(_))));
        assert!(memory.get(CF_DOCS, b"a").expect("get").is_some());
        assert!(memory.get(CF_DOCS, b"b").expect("get").is_none());
        assert_eq!(e.writes(), 1);
    }

    #[test]
    fn a_failed_sync_hides_its_batch_until_the_engine_is_dropped() {
        let memory = Arc::new(MemoryEngine::new());
        let e = FaultEngine::new(memory.clone());
        e.arm(Fault::FailSync(1));
        e.write(&put(b"unsynced"), false).expect("a buffered write is no sync");
        assert!(matches!(e.write(&put(b"torn"), true), Err(Error::Io(_))));
        assert!(e.get(CF_DOCS, b"torn").expect("get").is_none());
        drop(e);
        assert!(memory.get(CF_DOCS, b"torn").expect("get").is_some());
    }

    #[test]
    fn a_held_write_waits_for_its_release() {
        let e = Arc::new(FaultEngine::new(Arc::new(MemoryEngine::new())));
        let hold = e.hold_next_write();
        let writer = {
            let e = e.clone();
            std::thread::spawn(move || e.write(&put(b"a"), true))
        };
        hold.wait_until_held();
        assert_eq!(e.writes(), 0);
        hold.release();
        writer.join().expect("writer thread").expect("write");
        assert_eq!(e.writes(), 1);
    }
}
