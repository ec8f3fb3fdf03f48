//! The store handle: open, append, read, feed, retention, close.
//!
//! [`Store`] is a cheap, cloneable handle. Writes go through the single
//! writer thread (see `writer.rs`); reads open a RocksDB snapshot on the
//! calling thread (or a blocking pool thread, for the async API) and never
//! wait for the writer. Recovery is RocksDB's WAL replay plus one rule:
//! numbering continues at the larger of the persisted `next_seq` counter and
//! the last log key plus one, so a sequence number is never reused even
//! after retention trimmed the whole log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::{ColumnFamily, IteratorMode, DB};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::feed::{Feed, Filter};
use crate::keys::{self, CF_LOG, CF_META};
use crate::limits::*;
use crate::record::{Body, Distribution, MonitorState};
use crate::retention::{Retention, RetentionReport};
use crate::view::View;
use crate::writer::{Appended, MonitorOp, Prepared, Request, Writer};

/// The data format version this build writes and the newest it reads.
/// Version 2 added the `event_ids` index; a version-1 folder is upgraded on
/// open.
pub const FORMAT_VERSION: u8 = 6;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the WAL is fsynced: an acknowledged record survives power loss.
    #[default]
    Sync,
    /// After the WAL is written to the operating system: an acknowledged
    /// record survives a crash of pepper, but not of the machine.
    Buffered,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct Options {
    /// This site's name, stamped as the origin of every local record.
    pub site: String,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// What the background retention task trims.
    pub retention: Retention,
    /// How long an event id is remembered for idempotent retries. The log's
    /// retention bounds it too: a trimmed event's id is forgotten.
    pub dedupe_window: Duration,
}

/// Default of [`Options::dedupe_window`].
pub const DEDUPE_WINDOW_DEFAULT: Duration = Duration::from_secs(600);

impl Options {
    /// Options for a site with the default durability (`sync`) and no
    /// retention.
    pub fn new(site: impl Into<String>) -> Options {
        Options {
            site: site.into(),
            durability: Durability::Sync,
            retention: Retention::default(),
            dedupe_window: DEDUPE_WINDOW_DEFAULT,
        }
    }
}

/// Counters of the writer, for benchmarks and metrics.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub groups: AtomicU64,
    pub records: AtomicU64,
}

/// A point-in-time copy of the writer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Group commits written (each one WriteBatch and, under `sync`, one fsync).
    pub groups: u64,
    /// Records committed.
    pub records: u64,
}

/// State shared by the handle, the writer thread and readers.
pub(crate) struct Shared {
    pub db: DB,
    pub site: String,
    pub durability: Durability,
    /// How long event ids are remembered for retries.
    pub dedupe_window: Duration,
    /// The last durable sequence number (0 before the first record).
    pub durable: watch::Sender<u64>,
    /// The lowest sequence number retention kept.
    pub floor: AtomicU64,
    poisoned: OnceLock<String>,
    pub stats: Stats,
    /// Where the next history retention pass resumes (a tuple's key prefix).
    pub history_resume: Mutex<Option<Vec<u8>>>,
    /// The recording policy's patterns ([`crate::recording`]).
    pub policy: std::sync::RwLock<Arc<std::collections::BTreeSet<String>>>,
    /// The running monitors' states, as the writer last committed them.
    pub monitor_states: std::sync::RwLock<std::collections::BTreeMap<String, crate::record::MonitorState>>,
    /// Test hook: the writer's next batch write fails as if the WAL did.
    #[cfg(test)]
    pub fail_next_write: std::sync::atomic::AtomicBool,
    /// Test hook: held by a test, it stops the writer between taking a
    /// group's first request and gathering the rest, so requests sent
    /// meanwhile land in one group.
    #[cfg(test)]
    pub writer_gate: Mutex<()>,
}

impl Shared {
    pub fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| Error::corruption(name, "column family is missing"))
    }

    pub fn poison(&self, reason: String) {
        let _ = self.poisoned.set(reason);
    }

    pub fn poison_reason(&self) -> Option<String> {
        self.poisoned.get().cloned()
    }

    /// Publishes the writer's monitors, once their records are durable.
    pub(crate) fn set_monitor_states(&self, recording: &crate::recording::Recording) {
        let states = recording.monitors.iter().map(|(p, m)| (p.clone(), m.state)).collect();
        *self.monitor_states.write().unwrap_or_else(|p| p.into_inner()) = states;
    }

    /// The recording policy's patterns now.
    pub fn policy(&self) -> Arc<std::collections::BTreeSet<String>> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A handle to an open store. Cloning it is cheap; the store closes when the
/// last handle is dropped or [`Store::close`] is called.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    path: PathBuf,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    retention: Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The retention thread holds a sender to the writer: stop it first.
        if let Some((stop, handle)) = self.retention.take() {
            drop(stop);
            let _ = handle.join();
        }
        // Dropping the last sender lets the writer commit what is queued and
        // exit; joining it waits at most for that last group commit.
        self.tx.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

/// Microseconds since the Unix epoch, from the system clock.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn read_meta(db: &DB, meta: &ColumnFamily, key: &[u8]) -> Result<Option<u64>> {
    match db.get_pinned_cf(meta, key)? {
        None => Ok(None),
        Some(v) => keys::decode_u64(&v)
            .map(Some)
            .ok_or_else(|| Error::corruption(format!("meta {}", String::from_utf8_lossy(key)), "not a u64")),
    }
}

impl Store {
    /// Opens the store in `path`, creating it if needed, and recovers.
    ///
    /// # Errors
    /// `InvalidInput` for a bad site name, `UnsupportedFormat` for data from a
    /// newer pepper, `Io` if another process has the folder open, and
    /// `Rocks` or `Corruption` if the data cannot be recovered.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        validate_site(&options.site)?;
        let db = crate::db::open(&path)?;
        let meta = db.cf_handle(CF_META).ok_or_else(|| Error::corruption(CF_META, "column family is missing"))?;
        match db.get_pinned_cf(meta, keys::META_FORMAT)?.map(|v| v.to_vec()) {
            Some(v) if v == [FORMAT_VERSION] => {}
            Some(v) if v == [1] => migrate_v1(&db)?,
            // Versions 3, 4, 5 and 6 added families (`tombstones`; the
            // `model_*` ones; `origins` and `peer_cursors`; `monitors`),
            // which opening creates empty: nothing to rewrite.
            Some(v) if v == [2] || v == [3] || v == [4] || v == [5] => {
                let mut opts = rocksdb::WriteOptions::default();
                opts.set_sync(true);
                let mut batch = rocksdb::WriteBatch::default();
                batch.put_cf(meta, keys::META_FORMAT, [FORMAT_VERSION]);
                db.write_opt(batch, &opts)?;
            }
            Some(v) if v.len() == 1 => return Err(Error::UnsupportedFormat { found: v[0], supported: FORMAT_VERSION }),
            Some(_) => return Err(Error::corruption("meta format", "not one byte")),
            None => {
                let mut opts = rocksdb::WriteOptions::default();
                opts.set_sync(true);
                let mut batch = rocksdb::WriteBatch::default();
                batch.put_cf(meta, keys::META_FORMAT, [FORMAT_VERSION]);
                db.write_opt(batch, &opts)?;
            }
        }
        let log = db.cf_handle(CF_LOG).ok_or_else(|| Error::corruption(CF_LOG, "column family is missing"))?;
        let last_key = match db.iterator_cf(log, IteratorMode::End).next() {
            Some(item) => {
                let (k, _) = item?;
                Some(keys::decode_u64(&k).ok_or_else(|| Error::corruption("log", "key is not a u64"))?)
            }
            None => None,
        };
        let next_seq = read_meta(&db, meta, keys::META_NEXT_SEQ)?.unwrap_or(1).max(last_key.map_or(1, |k| k + 1));
        let floor = read_meta(&db, meta, keys::META_FLOOR)?.unwrap_or(1);
        let log_bytes = read_meta(&db, meta, keys::META_LOG_BYTES)?.unwrap_or(0);
        let last_time_us = read_meta(&db, meta, keys::META_LAST_TIME)?.unwrap_or(0);
        let (durable, _) = watch::channel(next_seq - 1);
        let shared = Arc::new(Shared {
            db,
            site: options.site.clone(),
            durability: options.durability,
            dedupe_window: options.dedupe_window,
            durable,
            floor: AtomicU64::new(floor),
            poisoned: OnceLock::new(),
            stats: Stats::default(),
            history_resume: Mutex::new(None),
            policy: std::sync::RwLock::new(Arc::default()),
            monitor_states: std::sync::RwLock::default(),
            #[cfg(test)]
            fail_next_write: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            writer_gate: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_REQUESTS_MAX);
        let anycast = crate::anycast::Anycast::load(&shared)?;
        let recording = crate::recording::Recording::load(&shared)?;
        shared.set_monitor_states(&recording);
        let writer = Writer::new(shared.clone(), next_seq, log_bytes, last_time_us, floor, anycast, recording);
        let writer = std::thread::Builder::new().name("pepper-writer".into()).spawn(move || writer.run(rx))?;
        let retention = match options.retention.is_enabled() {
            true => Some(start_retention(shared.clone(), tx.clone(), options.retention)?),
            false => None,
        };
        tracing::info!(path = %path.display(), next_seq, floor, "store opened");
        Ok(Store { inner: Arc::new(Inner { shared, path, tx: Some(tx), writer: Some(writer), retention }) })
    }

    /// The folder the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This site's name, the origin of local records.
    pub fn site(&self) -> &str {
        &self.inner.shared.site
    }

    /// The last durable sequence number, 0 if the log was never written.
    pub fn last_seq(&self) -> u64 {
        *self.inner.shared.durable.borrow()
    }

    /// The lowest sequence number retention kept; a feed from below it gets
    /// `Compacted`.
    pub fn earliest_seq(&self) -> u64 {
        self.inner.shared.floor.load(Ordering::Acquire)
    }

    /// The durability the store was opened with.
    pub fn durability(&self) -> Durability {
        self.inner.shared.durability
    }

    /// The writer's counters.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.shared.stats;
        StatsSnapshot { groups: s.groups.load(Ordering::Relaxed), records: s.records.load(Ordering::Relaxed) }
    }

    /// Why the store refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.shared.poison_reason()
    }

    /// Appends records atomically: either all of them commit, with
    /// contiguous sequence numbers, or none does. Returns once the batch is
    /// durable under the store's durability setting.
    ///
    /// # Errors
    /// `InvalidInput`/`TooLarge` for input breaking a limit, `NotFound` or
    /// `Conflict` for lease mutations that do not apply (nothing is written in
    /// any of these cases), `Poisoned` after a failed WAL write, `Closed` at
    /// shutdown.
    pub async fn append(&self, bodies: Vec<Body>) -> Result<Appended> {
        let (req, rx) = self.request(bodies, None)?;
        self.sender()?.send(req).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// [`Store::append`] for callers outside an async runtime. It blocks the
    /// calling thread; never call it on an async executor thread.
    ///
    /// # Errors
    /// As [`Store::append`].
    pub fn append_blocking(&self, bodies: Vec<Body>) -> Result<Appended> {
        let (req, rx) = self.request(bodies, None)?;
        self.sender()?.blocking_send(req).map_err(|_| Error::Closed)?;
        rx.blocking_recv().map_err(|_| Error::Closed)?
    }

    fn sender(&self) -> Result<&mpsc::Sender<Request>> {
        if let Some(reason) = self.inner.shared.poison_reason() {
            return Err(Error::Poisoned(reason));
        }
        self.inner.tx.as_ref().ok_or(Error::Closed)
    }

    /// Appends events received from peer site `origin`, each with its
    /// sequence number there, in one atomic batch, as [`Store::append`]
    /// does. Records at or below the origin's mark (the highest of its
    /// sequence numbers appended here) are dropped, and the mark moves in
    /// the same batch: a retried or repeated batch is never appended twice,
    /// and `dropped` says how many were left out. The records keep their
    /// origin; their time is this site's commit time, so the log's times
    /// stay in order. Tuple sidecars stay, and are recorded only when this
    /// site runs a monitor covering their channel (see [`crate::recording`]);
    /// an anycast assignment is left out (this site chooses among its own
    /// leases).
    ///
    /// # Errors
    /// `InvalidInput` for a bad origin (this site's own name included), a
    /// record that is not an event, or origin sequence numbers out of
    /// order; otherwise as [`Store::append`].
    pub async fn receive(&self, origin: &str, records: Vec<(u64, Body)>) -> Result<Appended> {
        validate_site(origin)?;
        if origin == self.site() {
            return Err(Error::invalid(
                "origin",
                format!("{origin} is this site; a site does not receive its own records"),
            ));
        }
        let mut seqs = Vec::with_capacity(records.len());
        let mut bodies = Vec::with_capacity(records.len());
        for (seq, body) in records {
            if seqs.last().is_some_and(|&last| seq <= last) {
                return Err(Error::invalid(
                    "origin seq",
                    format!("{seq} does not follow {}", seqs.last().copied().unwrap_or(0)),
                ));
            }
            let Body::Event(mut e) = body else {
                return Err(Error::invalid("received record", format!("origin seq {seq} is not an event")));
            };
            e.assigned.clear();
            seqs.push(seq);
            bodies.push(Body::Event(e));
        }
        let (req, rx) =
            self.request(bodies, Some(crate::writer::Origin { site: origin.to_string(), seqs, gap: false }))?;
        self.sender()?.send(req).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Appends `markers` (events saying what was lost) for a gap in what
    /// peer `origin` could send: its records up to `to_seq` are gone from
    /// its log. They are appended, with the origin's mark moved to `to_seq`
    /// in the same batch, only if the mark is below it; a repeated gap is
    /// dropped like a repeated record.
    ///
    /// # Errors
    /// As [`Store::receive`].
    pub async fn receive_gap(&self, origin: &str, to_seq: u64, markers: Vec<Body>) -> Result<Appended> {
        validate_site(origin)?;
        if origin == self.site() {
            return Err(Error::invalid(
                "origin",
                format!("{origin} is this site; a site does not receive its own records"),
            ));
        }
        if markers.iter().any(|b| !matches!(b, Body::Event(_))) {
            return Err(Error::invalid("gap marker", "markers must be events"));
        }
        let seqs = vec![to_seq; markers.len()];
        let (req, rx) =
            self.request(markers, Some(crate::writer::Origin { site: origin.to_string(), seqs, gap: true }))?;
        self.sender()?.send(req).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Sets the recording policy: the channel subtrees recorded only by
    /// their monitors. Takes effect from the next write group.
    ///
    /// # Errors
    /// `InvalidInput` for a pattern that is not a subtree channel, or
    /// patterns that nest.
    pub fn set_recording_policy(&self, patterns: Vec<String>) -> Result<()> {
        for (i, p) in patterns.iter().enumerate() {
            crate::validate::monitor_pattern(p)?;
            if let Some(q) = patterns[..i].iter().find(|q| p.starts_with(q.as_str()) || q.starts_with(p.as_str())) {
                return Err(Error::invalid("recording pattern", format!("{p} and {q} nest; patterns may not")));
            }
        }
        *self.inner.shared.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(patterns.into_iter().collect());
        Ok(())
    }

    /// The state of this site's monitor of `pattern`, if one runs (importing
    /// or complete), as of the last committed monitor record. No disk read:
    /// query routing asks it per request.
    pub fn monitor_state(&self, pattern: &str) -> Option<MonitorState> {
        self.inner.shared.monitor_states.read().unwrap_or_else(|p| p.into_inner()).get(pattern).copied()
    }

    /// How many monitors run on this site.
    pub fn monitors_running(&self) -> usize {
        self.inner.shared.monitor_states.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Starts a monitor of `pattern` here, importing: clears the subtree's
    /// rows and holds its updates until [`Store::monitor_complete`].
    ///
    /// # Errors
    /// `Conflict` if a monitor of it (or of a nesting pattern) runs here,
    /// `TooLarge` past [`crate::limits::MONITORS_MAX`]; write errors.
    pub async fn monitor_start(&self, pattern: &str, reason: &str) -> Result<Appended> {
        crate::validate::monitor_pattern(pattern)?;
        let op = MonitorOp::Start { pattern: pattern.to_string(), reason: reason.to_string() };
        self.monitor_op(op).await
    }

    /// Completes the import of `pattern`: the rows copied from `source`
    /// include, per origin site, every update up to `marks`. The held
    /// updates above their origin's mark are recorded in the same batch.
    ///
    /// # Errors
    /// `NotFound` or `Conflict` if the monitor is not importing or lost
    /// updates (a restart, [`crate::limits::MONITOR_PENDING_MAX`]); write errors.
    pub async fn monitor_complete(&self, pattern: &str, source: &str, marks: Vec<(String, u64)>) -> Result<Appended> {
        let op = MonitorOp::Complete { pattern: pattern.to_string(), source: source.to_string(), marks };
        self.monitor_op(op).await
    }

    /// Stops the monitor of `pattern` and removes the subtree's rows.
    ///
    /// # Errors
    /// `NotFound` if none runs here; write errors.
    pub async fn monitor_stop(&self, pattern: &str, reason: &str) -> Result<Appended> {
        let op = MonitorOp::Stop { pattern: pattern.to_string(), reason: reason.to_string() };
        self.monitor_op(op).await
    }

    async fn monitor_op(&self, mut op: MonitorOp) -> Result<Appended> {
        // A reason is for people: a long one is cut, never refused.
        if let MonitorOp::Start { reason, .. } | MonitorOp::Stop { reason, .. } = &mut op {
            let mut at = reason.len().min(MONITOR_REASON_BYTES_MAX);
            while !reason.is_char_boundary(at) {
                at -= 1;
            }
            reason.truncate(at);
        }
        let (reply, rx) = oneshot::channel();
        self.sender()?.send(Request::Monitor { op, reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The next local sequence number to forward to `peer`, if one was kept.
    ///
    /// # Errors
    /// Read errors, or `Corruption` for a malformed value.
    pub fn peer_cursor(&self, peer: &str) -> Result<Option<u64>> {
        self.inner.shared.read_u64(keys::CF_PEER_CURSORS, peer)
    }

    /// Keeps `next` as the next local sequence number to forward to `peer`.
    /// Called once the peer has acknowledged everything below `next`.
    ///
    /// The write goes to the WAL without an fsync of its own: it is made
    /// durable by the next synced write (any append), and a cursor lost to
    /// a machine crash only makes the forwarder send again what the peer
    /// already has, which the peer drops by its origin mark. An fsync per
    /// forwarded batch would cost every writer on the site latency for no
    /// safety.
    ///
    /// # Errors
    /// Write errors.
    pub fn set_peer_cursor(&self, peer: &str, next: u64) -> Result<()> {
        let shared = &self.inner.shared;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(false);
        shared.db.put_cf_opt(shared.cf(keys::CF_PEER_CURSORS)?, peer.as_bytes(), next.to_be_bytes(), &opts)?;
        Ok(())
    }

    /// The highest sequence number of site `origin` appended here by
    /// [`Store::receive`], 0 if none.
    ///
    /// # Errors
    /// Read errors, or `Corruption` for a malformed value.
    pub fn origin_mark(&self, origin: &str) -> Result<u64> {
        self.inner.shared.origin_mark(origin)
    }

    fn request(
        &self,
        bodies: Vec<Body>,
        origin: Option<crate::writer::Origin>,
    ) -> Result<(Request, oneshot::Receiver<Result<Appended>>)> {
        if bodies.is_empty() {
            return Err(Error::invalid("batch", "an append needs at least one record"));
        }
        if bodies.len() > BATCH_RECORDS_MAX {
            return Err(Error::TooLarge { what: "batch", size: bodies.len(), max: BATCH_RECORDS_MAX });
        }
        if origin.is_none() {
            // An id names one event: a batch that logs it twice is a client
            // mistake, refused rather than logged twice.
            let mut seen = std::collections::HashSet::with_capacity(bodies.len());
            for body in &bodies {
                if let Body::Event(e) = body {
                    if !e.id.is_empty() && !seen.insert(e.id.as_str()) {
                        return Err(Error::invalid("event id", format!("{} appears twice in one batch", e.id)));
                    }
                }
            }
        }
        let site_len = origin.as_ref().map_or(self.site().len(), |o| o.site.len());
        let overhead = crate::record::HEADER_BYTES + site_len + crate::record::CRC_BYTES;
        let mut records = Vec::with_capacity(bodies.len());
        let (mut encoded, mut bytes) = (0usize, 0usize);
        for body in bodies {
            crate::validate::body(&body)?;
            let mut encoded_body = Vec::new();
            body.encode_into(&mut encoded_body)?;
            let len = overhead + encoded_body.len();
            // The writer may add lease ids to a distribution-`one` event.
            let max = match &body {
                Body::Event(e) if e.distribution == Distribution::One => RECORD_BYTES_MAX - ASSIGNED_BYTES_RESERVE,
                _ => RECORD_BYTES_MAX,
            };
            if len > max {
                return Err(Error::TooLarge { what: "record", size: len, max });
            }
            encoded += len;
            if encoded > BATCH_BYTES_MAX {
                return Err(Error::TooLarge { what: "batch bytes", size: encoded, max: BATCH_BYTES_MAX });
            }
            // The writer's group budget also counts what the writer may add.
            bytes += len + (RECORD_BYTES_MAX - max);
            records.push(Prepared { body, encoded_body });
        }
        let (reply, rx) = oneshot::channel();
        Ok((Request::Append { records, bytes, origin, reply }, rx))
    }

    /// Runs `f` on a consistent snapshot, on a blocking-pool thread.
    ///
    /// # Errors
    /// Whatever `f` returns, or `Closed` if the runtime is shutting down.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&View<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(format!("read task failed: {e}"))))?
    }

    /// Runs `f` on a consistent snapshot on the calling thread, which may
    /// block on disk.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&View<'_>) -> Result<T>) -> Result<T> {
        let view = View::new(&self.inner.shared)?;
        f(&view)
    }

    /// Waits until the durable log reaches `seq`, for at most `timeout`.
    /// Returns whether it did.
    pub async fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.shared.durable.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|durable| *durable >= seq)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// A change feed from `from_seq` (inclusive), filtered. See [`Feed`].
    pub fn feed(&self, from_seq: u64, filter: Filter) -> Feed {
        Feed::new(self, from_seq, filter)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Applies the retention policy once, as of `now_us`, on the calling
    /// thread, which may block on disk and on the writer. The background task
    /// runs the same pass on its interval; tests call it with a chosen clock.
    ///
    /// # Errors
    /// Read errors while planning, or the writer's refusal.
    pub fn enforce_retention_blocking(&self, policy: &Retention, now_us: u64) -> Result<RetentionReport> {
        crate::retention::enforce(&self.inner.shared, self.sender()?, policy, now_us)
    }

    /// [`Store::enforce_retention_blocking`] on a blocking-pool thread.
    ///
    /// # Errors
    /// As [`Store::enforce_retention_blocking`].
    pub async fn enforce_retention(&self, policy: &Retention, now_us: u64) -> Result<RetentionReport> {
        let (store, policy) = (self.clone(), policy.clone());
        tokio::task::spawn_blocking(move || store.enforce_retention_blocking(&policy, now_us))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(format!("retention task failed: {e}"))))?
    }

    /// Closes the store: waits for queued writes to commit and the background
    /// threads to stop, then closes RocksDB. Other clones of the handle keep
    /// it open until they are dropped too; feeds do not (they end with
    /// `Closed`). It blocks: call it from a blocking context.
    pub fn close(self) {
        drop(self);
    }
}

fn start_retention(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    policy: Retention,
) -> Result<(std::sync::mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new().name("pepper-retention".into()).spawn(move || loop {
        match stopped.recv_timeout(policy.interval) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match crate::retention::enforce(&shared, &tx, &policy, now_us()) {
            Ok(report) if report.is_empty() => {}
            Ok(report) => tracing::info!(?report, "retention trimmed"),
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    })?;
    Ok((stop, handle))
}

/// Upgrades a format-1 folder: format 2 adds the `event_ids` index, which is
/// rebuilt from the retained log. It can be interrupted and rerun: the
/// format byte changes only in the last, synced batch.
fn migrate_v1(db: &DB) -> Result<()> {
    let cf = |name: &str| db.cf_handle(name).ok_or_else(|| Error::corruption(name, "column family is missing"));
    let (log, ids, meta) = (cf(CF_LOG)?, cf(keys::CF_EVENT_IDS)?, cf(CF_META)?);
    let mut batch = rocksdb::WriteBatch::default();
    let mut indexed = 0u64;
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (_, value) = item?;
        let record = crate::record::Record::decode(&value)?;
        match &record.body {
            Body::Event(e) if !e.id.is_empty() => {
                batch.put_cf(ids, e.id.as_bytes(), keys::event_id_value(record.seq, record.time_us));
                indexed += 1;
            }
            _ => {}
        }
        if batch.len() >= 10_000 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    batch.put_cf(meta, keys::META_FORMAT, [FORMAT_VERSION]);
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)?;
    tracing::info!(indexed, "upgraded the data folder from format 1 to 2");
    Ok(())
}

/// How long [`Retention::default`]'s background task sleeps between passes.
pub const RETENTION_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);

/// Checks a site name: 1 to [`SITE_BYTES_MAX`] bytes, no control
/// characters, no `/`. The rule for this site's own name, for origins of
/// received records, and for peers.
///
/// # Errors
/// `InvalidInput` saying which part of the rule the name breaks.
pub fn validate_site(site: &str) -> Result<()> {
    if site.is_empty() || site.len() > SITE_BYTES_MAX {
        return Err(Error::invalid("site", format!("site name must be 1 to {SITE_BYTES_MAX} bytes")));
    }
    if site.chars().any(|c| c.is_control() || c == '/') {
        return Err(Error::invalid("site", "site name may not contain control characters or '/'"));
    }
    Ok(())
}

impl Shared {
    /// A u64 (big-endian) kept under `key` in family `cf`, if any.
    pub(crate) fn read_u64(&self, cf: &str, key: &str) -> Result<Option<u64>> {
        let got = self.db.get_pinned_cf(self.cf(cf)?, key.as_bytes())?;
        match got.as_deref().map(<[u8; 8]>::try_from) {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(u64::from_be_bytes(b))),
            Some(Err(_)) => Err(Error::corruption(cf, format!("{key}: not 8 bytes"))),
        }
    }

    /// The highest sequence number of site `origin` appended here, 0 if none.
    pub(crate) fn origin_mark(&self, origin: &str) -> Result<u64> {
        Ok(self.read_u64(keys::CF_ORIGINS, origin)?.unwrap_or(0))
    }

    /// A `Shared` over a read-only database, for the offline check.
    pub(crate) fn read_only(db: DB) -> Shared {
        let (durable, _) = watch::channel(0);
        Shared {
            db,
            site: String::new(),
            durability: Durability::Sync,
            dedupe_window: DEDUPE_WINDOW_DEFAULT,
            durable,
            floor: AtomicU64::new(1),
            poisoned: OnceLock::new(),
            stats: Stats::default(),
            history_resume: Mutex::new(None),
            policy: std::sync::RwLock::new(Arc::default()),
            monitor_states: std::sync::RwLock::default(),
            #[cfg(test)]
            fail_next_write: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            writer_gate: Mutex::new(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Party, TupleSet};

    fn tuple(value: &str) -> Body {
        Body::TupleSet(TupleSet {
            channel: "/a/".into(),
            field: "f".into(),
            value: value.into(),
            expires_at_us: None,
            source: Party::default(),
        })
    }

    fn event(id: &str) -> Body {
        Body::Event(crate::record::Event {
            id: id.into(),
            channel: "/x/".into(),
            event_type: "t".into(),
            from: Party::default(),
            to: crate::record::Target::default(),
            distribution: crate::record::Distribution::All,
            payload: b"null".to_vec(),
            assigned: Vec::new(),
            tuple: None,
        })
    }

    /// Sends `bodies` as separate appends that the writer takes as one
    /// group, and returns where their answers arrive.
    fn one_group(store: &Store, bodies: Vec<Vec<Body>>) -> Vec<oneshot::Receiver<Result<Appended>>> {
        let gate = store.inner.shared.writer_gate.lock().unwrap_or_else(|p| p.into_inner());
        let mut replies = Vec::new();
        for b in bodies {
            let (req, rx) = store.request(b, None).expect("request");
            store.sender().expect("sender").blocking_send(req).expect("send");
            replies.push(rx);
        }
        drop(gate);
        replies
    }

    fn answer(rx: oneshot::Receiver<Result<Appended>>) -> Result<Appended> {
        rx.blocking_recv().unwrap_or(Err(Error::Closed))
    }

    /// A retry that lands in the original's group is answered with the
    /// group, once it is durable, never before: answered early from
    /// memory, it was lost with the group by a kill at that moment.
    #[test]
    fn a_replay_in_the_originals_group_is_answered_only_once_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Options::new("s")).expect("open");
        let durable = store.inner.shared.durable.subscribe();
        let mut replies = one_group(&store, vec![vec![event("dup1")], vec![event("dup1")]]);
        // The replay's answer first, and the durable seq the moment it came.
        let replay = answer(replies.remove(1)).expect("replay");
        let durable_then = *durable.borrow();
        let original = answer(replies.remove(0)).expect("original");
        assert!(!original.replayed && replay.replayed);
        assert_eq!((replay.first, replay.last), (original.first, original.last));
        assert!(durable_then >= replay.last, "answered before its original was durable");
        assert_eq!(store.last_seq(), 1, "logged once");
    }

    /// When the group's write fails, the retry in it fails too: it may not
    /// say "replayed" for an event that was never written.
    #[test]
    fn a_replay_in_a_failed_group_fails_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Options::new("s")).expect("open");
        store.inner.shared.fail_next_write.store(true, Ordering::Release);
        let answers: Vec<_> =
            one_group(&store, vec![vec![event("dup1")], vec![event("dup1")]]).into_iter().map(answer).collect();
        for a in &answers {
            assert!(matches!(a, Err(Error::Poisoned(_))), "{a:?}");
        }
        store.close();
        let store = Store::open(dir.path(), Options::new("s")).expect("reopen");
        assert_eq!(store.last_seq(), 0, "nothing was written");
        let again = store.append_blocking(vec![event("dup1")]).expect("after reopen");
        assert!(!again.replayed, "the id was never logged");
    }

    #[test]
    fn a_batch_that_carries_one_id_twice_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Options::new("s")).expect("open");
        let err = store.append_blocking(vec![event("dup1"), event("other"), event("dup1")]).expect_err("twice");
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains("dup1"), "{err}");
        assert_eq!(store.last_seq(), 0);
    }

    #[test]
    fn a_failed_wal_write_poisons_the_store_until_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Options::new("s")).expect("open");
        store.append_blocking(vec![tuple("1")]).expect("first append");
        store.inner.shared.fail_next_write.store(true, Ordering::Release);
        let err = store.append_blocking(vec![tuple("2")]).expect_err("the injected failure must surface");
        assert!(matches!(err, Error::Poisoned(_)), "{err}");
        // Every later write is refused, though the WAL would work again.
        let err = store.append_blocking(vec![tuple("3")]).expect_err("poisoned");
        assert!(matches!(err, Error::Poisoned(ref r) if r.contains("injected")), "{err}");
        assert!(store.poisoned().is_some());
        // Reads still work, and show only what was acknowledged.
        let t = store.read_blocking(|v| v.tuple("/a/", "f")).expect("read").expect("tuple");
        assert_eq!((t.value.as_str(), store.last_seq()), ("1", 1));
        store.close();
        let store = Store::open(dir.path(), Options::new("s")).expect("reopen");
        assert_eq!(store.poisoned(), None);
        assert_eq!(store.append_blocking(vec![tuple("4")]).expect("after reopen").first, 2);
    }
}
