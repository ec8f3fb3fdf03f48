//! The state one open store shares between its handle, the writer thread,
//! readers and feeds.
//!
//! [`Shared`] sits in the middle of the crate's layers: it depends only on
//! the engine, the clock and the record types, and everything above it (the
//! views, the feed, the writer, retention, the [`crate::Store`] facade)
//! reaches the store's state through it. The writer owns every write; what
//! others may read of its progress is published here: the durable sequence
//! number (a `watch`, which wakes feeds), the retention floor, the counters
//! and, once a write failed or the writer panicked, the poison reason.
//!
//! Rejected alternative: keeping this state on the `Store` handle. Every
//! module that needs it would then import the facade that imports them all,
//! which is the circle this module exists to break.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::fold::Fold;
use crate::keys;
use crate::record::MonitorState;

/// Counters of the writer, for benchmarks and metrics.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Group commits written.
    pub groups: AtomicU64,
    /// Records committed.
    pub records: AtomicU64,
}

/// State shared by the handle, the writer thread and readers.
pub(crate) struct Shared {
    /// Where the bytes live.
    pub engine: Arc<dyn Engine>,
    /// Where the time comes from.
    pub clock: Arc<dyn Clock>,
    /// This site's name, the origin of local records.
    pub site: String,
    /// How long event ids are remembered for retries.
    pub dedupe_window: Duration,
    /// The last durable sequence number (0 before the first record).
    pub durable: watch::Sender<u64>,
    /// The lowest sequence number retention kept.
    pub floor: AtomicU64,
    /// Why the store refuses writes, once it does; set once, never cleared.
    poisoned: OnceLock<String>,
    /// The writer's counters.
    pub stats: Stats,
    /// Where the next history retention pass resumes (a tuple's key prefix).
    pub history_resume: Mutex<Option<Vec<u8>>>,
    /// The recording policy's patterns: the channel subtrees only monitors
    /// record.
    policy: RwLock<Arc<BTreeSet<String>>>,
    /// The running monitors' states, as the writer last committed them.
    monitor_states: RwLock<BTreeMap<String, MonitorState>>,
    /// Told what each durable group changed ([`crate::fold`]).
    fold: RwLock<Option<Arc<dyn Fold>>>,
}

impl Shared {
    /// The shared state of a store whose last durable record is `last_seq`
    /// and whose retention floor is `floor`.
    pub fn new(
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        site: String,
        dedupe_window: Duration,
        last_seq: u64,
        floor: u64,
    ) -> Shared {
        let (durable, _) = watch::channel(last_seq);
        Shared {
            engine,
            clock,
            site,
            dedupe_window,
            durable,
            floor: AtomicU64::new(floor),
            poisoned: OnceLock::new(),
            stats: Stats::default(),
            history_resume: Mutex::new(None),
            policy: RwLock::default(),
            monitor_states: RwLock::default(),
            fold: RwLock::new(None),
        }
    }

    /// Registers the fold told of each durable group (replacing any other).
    pub fn set_fold(&self, fold: Arc<dyn Fold>) {
        *self.fold.write().unwrap_or_else(|p| p.into_inner()) = Some(fold);
    }

    /// The registered fold, if any.
    pub fn fold(&self) -> Option<Arc<dyn Fold>> {
        self.fold.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Refuses every later write, for `reason`. The first reason stays.
    pub fn poison(&self, reason: String) {
        let _ = self.poisoned.set(reason);
    }

    /// Why the store refuses writes, if it does.
    pub fn poison_reason(&self) -> Option<String> {
        self.poisoned.get().cloned()
    }

    /// `Poisoned` if the store refuses writes.
    pub fn check_writable(&self) -> Result<()> {
        match self.poisoned.get() {
            Some(reason) => Err(Error::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Publishes the writer's monitors, once their records are durable.
    pub fn set_monitor_states(&self, states: BTreeMap<String, MonitorState>) {
        *self.monitor_states.write().unwrap_or_else(|p| p.into_inner()) = states;
    }

    /// The state of the monitor of `pattern`, if one runs.
    pub fn monitor_state(&self, pattern: &str) -> Option<MonitorState> {
        self.monitor_states.read().unwrap_or_else(|p| p.into_inner()).get(pattern).copied()
    }

    /// How many monitors run.
    pub fn monitors_running(&self) -> usize {
        self.monitor_states.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The recording policy's patterns now.
    pub fn policy(&self) -> Arc<BTreeSet<String>> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the recording policy's patterns.
    pub fn set_policy(&self, patterns: BTreeSet<String>) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(patterns);
    }

    /// The durable sequence number now.
    pub fn last_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The retention floor now.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// A u64 (big-endian) kept under `key` in family `cf`, if any.
    pub fn read_u64(&self, cf: &str, key: &str) -> Result<Option<u64>> {
        let got = self.engine.get(cf, key.as_bytes())?;
        match got.as_deref().map(<[u8; 8]>::try_from) {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(u64::from_be_bytes(b))),
            Some(Err(_)) => Err(Error::corruption(cf, format!("{key}: not 8 bytes"))),
        }
    }

    /// The highest sequence number of site `origin` appended here, 0 if none.
    pub fn origin_mark(&self, origin: &str) -> Result<u64> {
        Ok(self.read_u64(keys::CF_ORIGINS, origin)?.unwrap_or(0))
    }
}
