//! The store handle: open, append, read, feed, retention, close.
//!
//! [`Store`] is the crate's facade, a cheap, cloneable handle over the
//! layers below it: writes go through the single writer thread
//! ([`crate::writer`]); reads take an engine snapshot on the calling thread
//! (or a blocking pool thread, for the async API) and never wait for the
//! writer; feeds follow the durable sequence number. What the store runs on
//! is chosen at open: [`Store::open`] puts a folder on RocksDB with the
//! system clock, [`Store::open_memory`] keeps everything in memory, and
//! [`Store::open_with`] takes any [`Engine`] and [`Clock`].
//!
//! Recovery is the engine's own (RocksDB's WAL replay) plus one rule:
//! numbering continues at the larger of the persisted `next_seq` counter and
//! the last log key plus one, so a sequence number is never reused even
//! after retention trimmed the whole log.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::anycast::Anycast;
use crate::clock::{Clock, SystemClock};
use crate::engine::memory::MemoryEngine;
use crate::engine::rocks::RocksEngine;
use crate::engine::{Batch, Direction, Engine, KeyRange};
use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::filter::Filter;
use crate::keys::{self, CF_LOG, CF_META};
use crate::limits::*;
use crate::options::{Durability, Options};
use crate::record::{Body, Distribution, MonitorState};
use crate::recording::Recording;
use crate::retention::{Retention, RetentionReport};
use crate::shared::Shared;
use crate::validate::validate_site;
use crate::view::View;
use crate::writer::group::Writer;
use crate::writer::request::{Appended, MonitorOp, Origin, Prepared, Request};
use crate::writer::state::{LogTail, WriterState};

/// The data format version this build writes and the newest it reads.
/// Version 2 added the `event_ids` index; a version-1 folder is upgraded on
/// open.
pub const FORMAT_VERSION: u8 = 6;

/// A point-in-time copy of the writer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Group commits written (each one batch and, under `sync`, one fsync).
    pub groups: u64,
    /// Records committed.
    pub records: u64,
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
    durability: Durability,
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

fn read_meta(engine: &dyn Engine, key: &[u8]) -> Result<Option<u64>> {
    match engine.get(CF_META, key)? {
        None => Ok(None),
        Some(v) => keys::decode_u64(&v)
            .map(Some)
            .ok_or_else(|| Error::corruption(format!("meta {}", String::from_utf8_lossy(key)), "not a u64")),
    }
}

/// Writes this build's format version, synced.
fn stamp_format(engine: &dyn Engine) -> Result<()> {
    let mut batch = Batch::new();
    batch.put(CF_META, keys::META_FORMAT, [FORMAT_VERSION]);
    engine.write(&batch, true)
}

impl Store {
    /// Opens the store in `path` on RocksDB, creating it if needed, and
    /// recovers. Records are stamped with the system clock.
    ///
    /// # Errors
    /// `InvalidInput` for a bad site name, `UnsupportedFormat` for data from a
    /// newer pepper, `Io` if another process has the folder open, and
    /// `Rocks` or `Corruption` if the data cannot be recovered.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Store> {
        validate_site(&options.site)?;
        let engine = RocksEngine::open(path)?;
        Store::open_with(Arc::new(engine), Arc::new(SystemClock), options)
    }

    /// Opens a new, empty store kept in memory ([`MemoryEngine`]), with the
    /// system clock. Nothing outlives the store; to reopen the same data,
    /// keep a [`MemoryEngine`] and pass it to [`Store::open_with`].
    ///
    /// # Errors
    /// `InvalidInput` for a bad site name.
    pub fn open_memory(options: Options) -> Result<Store> {
        Store::open_with(Arc::new(MemoryEngine::new()), Arc::new(SystemClock), options)
    }

    /// Opens the store kept by `engine`, stamping records with `clock`, and
    /// recovers. An empty engine becomes a new store. One store at a time
    /// may run on an engine: closing one and opening another on the same
    /// engine is a restart.
    ///
    /// # Errors
    /// `InvalidInput` for a bad site name, `UnsupportedFormat` for data from
    /// a newer pepper, the engine's errors, and `Corruption` if the data
    /// cannot be recovered.
    pub fn open_with(engine: Arc<dyn Engine>, clock: Arc<dyn Clock>, options: Options) -> Result<Store> {
        validate_site(&options.site)?;
        match engine.get(CF_META, keys::META_FORMAT)?.map(|v| v.to_vec()) {
            Some(v) if v == [FORMAT_VERSION] => {}
            Some(v) if v == [1] => migrate_v1(&*engine)?,
            // Versions 3, 4, 5 and 6 added families (`tombstones`; the
            // `model_*` ones; `origins` and `peer_cursors`; `monitors`),
            // which opening creates empty: nothing to rewrite.
            Some(v) if v == [2] || v == [3] || v == [4] || v == [5] => stamp_format(&*engine)?,
            Some(v) if v.len() == 1 => return Err(Error::UnsupportedFormat { found: v[0], supported: FORMAT_VERSION }),
            Some(_) => return Err(Error::corruption("meta format", "not one byte")),
            None => stamp_format(&*engine)?,
        }
        let mut last_key = None;
        engine.scan(CF_LOG, KeyRange::ALL, Direction::Backward, &mut |k, _| {
            last_key = Some(keys::decode_u64(k).ok_or_else(|| Error::corruption("log", "key is not a u64"))?);
            Ok(false)
        })?;
        let next_seq = read_meta(&*engine, keys::META_NEXT_SEQ)?.unwrap_or(1).max(last_key.map_or(1, |k| k + 1));
        let floor = read_meta(&*engine, keys::META_FLOOR)?.unwrap_or(1);
        let log_bytes = read_meta(&*engine, keys::META_LOG_BYTES)?.unwrap_or(0);
        let last_time_us = read_meta(&*engine, keys::META_LAST_TIME)?.unwrap_or(0);
        let (anycast, recording) = {
            let snap = engine.snapshot();
            (Anycast::load(&*snap)?, Recording::load(&*snap)?)
        };
        let path = engine.path().map(Path::to_path_buf).unwrap_or_default();
        let shared =
            Arc::new(Shared::new(engine, clock, options.site.clone(), options.dedupe_window, next_seq - 1, floor));
        shared.set_monitor_states(recording.states());
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_REQUESTS_MAX);
        let tail = LogTail { next_seq, log_bytes, last_time_us, floor };
        let writer = Writer::new(shared.clone(), options.durability, WriterState { tail, anycast, recording });
        let writer = std::thread::Builder::new().name("pepper-writer".into()).spawn(move || writer.run(rx))?;
        let retention = match options.retention.is_enabled() {
            true => Some(start_retention(shared.clone(), tx.clone(), options.retention)?),
            false => None,
        };
        tracing::info!(path = %path.display(), next_seq, floor, "store opened");
        let inner =
            Inner { shared, path, durability: options.durability, tx: Some(tx), writer: Some(writer), retention };
        Ok(Store { inner: Arc::new(inner) })
    }

    /// The folder the store lives in; empty for an engine without one (in
    /// memory).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This site's name, the origin of local records.
    pub fn site(&self) -> &str {
        &self.inner.shared.site
    }

    /// The time now on the store's clock, in microseconds since the Unix
    /// epoch: the time its next write group would carry (unless the log's
    /// last time is later).
    pub fn now_us(&self) -> u64 {
        self.inner.shared.clock.now_us()
    }

    /// The last durable sequence number, 0 if the log was never written.
    pub fn last_seq(&self) -> u64 {
        self.inner.shared.last_seq()
    }

    /// The lowest sequence number retention kept; a feed from below it gets
    /// `Compacted`.
    pub fn earliest_seq(&self) -> u64 {
        self.inner.shared.floor()
    }

    /// The durability the store was opened with.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// The writer's counters.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.shared.stats;
        StatsSnapshot { groups: s.groups.load(Ordering::Relaxed), records: s.records.load(Ordering::Relaxed) }
    }

    /// Registers `fold`, told on the writer thread what each durable group
    /// changed (the end state of every lease and latest tuple it touched),
    /// after the group is durable and before its callers are answered. One
    /// fold at a time; registering another replaces it. Register it right
    /// after reading the state it derives from, before anything else
    /// writes, or changes in between are missed.
    pub fn set_fold(&self, fold: std::sync::Arc<dyn crate::fold::Fold>) {
        self.inner.shared.set_fold(fold);
    }

    /// Why the store refuses writes, if it does: a write or sync failed, or
    /// the writer thread panicked. Reopening the store recovers.
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
        self.inner.shared.check_writable()?;
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
        let (req, rx) = self.request(bodies, Some(Origin { site: origin.to_string(), seqs, gap: false }))?;
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
        let (req, rx) = self.request(markers, Some(Origin { site: origin.to_string(), seqs, gap: true }))?;
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
        self.inner.shared.set_policy(patterns.into_iter().collect());
        Ok(())
    }

    /// The state of this site's monitor of `pattern`, if one runs (importing
    /// or complete), as of the last committed monitor record. No disk read:
    /// query routing asks it per request.
    pub fn monitor_state(&self, pattern: &str) -> Option<MonitorState> {
        self.inner.shared.monitor_state(pattern)
    }

    /// How many monitors run on this site.
    pub fn monitors_running(&self) -> usize {
        self.inner.shared.monitors_running()
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
    /// `Poisoned` once the store refuses writes; write errors.
    pub fn set_peer_cursor(&self, peer: &str, next: u64) -> Result<()> {
        let shared = &self.inner.shared;
        shared.check_writable()?;
        let mut batch = Batch::new();
        batch.put(keys::CF_PEER_CURSORS, peer.as_bytes(), next.to_be_bytes());
        shared.engine.write(&batch, false)
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
        origin: Option<Origin>,
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
        let view = View::new(&*self.inner.shared.engine)?;
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
        Feed::new(&self.inner.shared, from_seq, filter)
    }

    /// Applies the retention policy once, as of `now_us`, on the calling
    /// thread, which may block on disk and on the writer. The background task
    /// runs the same pass on its interval; tests call it with a chosen clock.
    ///
    /// # Errors
    /// Read errors while planning, or the writer's refusal.
    pub fn enforce_retention_blocking(&self, policy: &Retention, now_us: u64) -> Result<RetentionReport> {
        enforce_retention(&self.inner.shared, self.sender()?, policy, now_us)
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
    /// threads to stop, then drops its engine (closing RocksDB, unless the
    /// caller holds the engine too). Other clones of the handle keep
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
        match enforce_retention(&shared, &tx, &policy, shared.clock.now_us()) {
            Ok(report) if report.is_empty() => {}
            Ok(report) => tracing::info!(?report, "retention trimmed"),
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    })?;
    Ok((stop, handle))
}

/// Plans one retention pass and has the writer apply it, blocking the
/// calling thread.
fn enforce_retention(
    shared: &Shared,
    tx: &mpsc::Sender<Request>,
    policy: &Retention,
    now_us: u64,
) -> Result<RetentionReport> {
    let (plan, report) = crate::retention::plan(&*shared.engine, &shared.history_resume, policy, now_us)?;
    if plan.is_empty() {
        return Ok(report);
    }
    let (reply, rx) = oneshot::channel();
    tx.blocking_send(Request::Trim { plan, reply }).map_err(|_| Error::Closed)?;
    rx.blocking_recv().map_err(|_| Error::Closed)??;
    Ok(report)
}

/// Most index entries one upgrade batch carries; each full batch is
/// written (unsynced) before the scan goes on, so an upgrade holds at most
/// this many in memory.
const MIGRATION_BATCH_OPS_MAX: usize = 10_000;

/// Upgrades a format-1 store: format 2 adds the `event_ids` index, which is
/// rebuilt from the retained log. It can be interrupted and rerun: the
/// format byte changes only in the last, synced batch.
fn migrate_v1(engine: &dyn Engine) -> Result<()> {
    let mut batch = Batch::new();
    let mut indexed = 0u64;
    engine.scan(CF_LOG, KeyRange::ALL, Direction::Forward, &mut |_, value| {
        let record = crate::record::Record::decode(value)?;
        match &record.body {
            Body::Event(e) if !e.id.is_empty() => {
                batch.put(keys::CF_EVENT_IDS, e.id.as_bytes(), keys::event_id_value(record.seq, record.time_us));
                indexed += 1;
            }
            _ => {}
        }
        if batch.len() >= MIGRATION_BATCH_OPS_MAX {
            engine.write(&batch, false)?;
            batch.clear();
        }
        Ok(true)
    })?;
    batch.put(CF_META, keys::META_FORMAT, [FORMAT_VERSION]);
    engine.write(&batch, true)?;
    tracing::info!(indexed, "upgraded the data folder from format 1 to 2");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fault::{Fault, FaultEngine};
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
            principal: None,
            tuple: None,
        })
    }

    /// A store on RocksDB in `dir`, behind a fault engine the test keeps.
    /// Drop both before opening the folder again.
    fn open_faulty(dir: &Path) -> (Store, Arc<FaultEngine>) {
        let faults = Arc::new(FaultEngine::new(Arc::new(RocksEngine::open(dir).expect("open rocksdb"))));
        let store = Store::open_with(faults.clone(), Arc::new(SystemClock), Options::new("s")).expect("open");
        (store, faults)
    }

    fn answer(rx: oneshot::Receiver<Result<Appended>>) -> Result<Appended> {
        rx.blocking_recv().unwrap_or(Err(Error::Closed))
    }

    /// Sends `bodies` as separate appends that the writer takes as one
    /// group, and returns where their answers arrive. The writer is held in
    /// the write of a group before them (one tuple record) while they queue.
    fn one_group(
        store: &Store,
        faults: &FaultEngine,
        bodies: Vec<Vec<Body>>,
    ) -> Vec<oneshot::Receiver<Result<Appended>>> {
        let send = |b: Vec<Body>| {
            let (req, rx) = store.request(b, None).expect("request");
            store.sender().expect("sender").blocking_send(req).expect("send");
            rx
        };
        let hold = faults.hold_next_write();
        let before = send(vec![tuple("before")]);
        hold.wait_until_held();
        let replies = bodies.into_iter().map(send).collect();
        hold.release();
        answer(before).expect("the group before");
        replies
    }

    /// A retry that lands in the original's group is answered with the
    /// group, once it is durable, never before: answered early from
    /// memory, it was lost with the group by a kill at that moment.
    #[test]
    fn a_replay_in_the_originals_group_is_answered_only_once_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, faults) = open_faulty(dir.path());
        let durable = store.inner.shared.durable.subscribe();
        let mut replies = one_group(&store, &faults, vec![vec![event("dup1")], vec![event("dup1")]]);
        // The replay's answer first, and the durable seq the moment it came.
        let replay = answer(replies.remove(1)).expect("replay");
        let durable_then = *durable.borrow();
        let original = answer(replies.remove(0)).expect("original");
        assert!(!original.replayed && replay.replayed);
        assert_eq!((replay.first, replay.last), (original.first, original.last));
        assert!(durable_then >= replay.last, "answered before its original was durable");
        assert_eq!(store.last_seq(), 2, "the group before, and the event logged once");
        assert_eq!(store.stats().groups, 2, "the two appends shared one group");
    }

    /// When the group's write fails, the retry in it fails too: it may not
    /// say "replayed" for an event that was never written.
    #[test]
    fn a_replay_in_a_failed_group_fails_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, faults) = open_faulty(dir.path());
        // The group before is the first write; the one under test fails.
        faults.arm(Fault::FailWrite(2));
        let answers: Vec<_> = one_group(&store, &faults, vec![vec![event("dup1")], vec![event("dup1")]])
            .into_iter()
            .map(answer)
            .collect();
        for a in &answers {
            assert!(matches!(a, Err(Error::Poisoned(_))), "{a:?}");
        }
        store.close();
        drop(faults);
        let store = Store::open(dir.path(), Options::new("s")).expect("reopen");
        assert_eq!(store.last_seq(), 1, "only the group before was written");
        let again = store.append_blocking(vec![event("dup1")]).expect("after reopen");
        assert!(!again.replayed, "the id was never logged");
    }

    #[test]
    fn a_batch_that_carries_one_id_twice_is_refused_naming_it() {
        let store = Store::open_memory(Options::new("s")).expect("open");
        let err = store.append_blocking(vec![event("dup1"), event("other"), event("dup1")]).expect_err("twice");
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains("dup1"), "{err}");
        assert_eq!(store.last_seq(), 0);
    }

    #[test]
    fn a_failed_wal_write_poisons_the_store_until_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, faults) = open_faulty(dir.path());
        store.append_blocking(vec![tuple("1")]).expect("first append");
        faults.arm(Fault::FailWrite(1));
        let err = store.append_blocking(vec![tuple("2")]).expect_err("the injected failure must surface");
        assert!(matches!(err, Error::Poisoned(_)), "{err}");
        // Every later write is refused, the peer cursor's too.
        let err = store.append_blocking(vec![tuple("3")]).expect_err("poisoned");
        assert!(matches!(err, Error::Poisoned(ref r) if r.contains("injected")), "{err}");
        assert!(matches!(store.set_peer_cursor("p", 1), Err(Error::Poisoned(_))));
        assert!(store.poisoned().is_some());
        // Reads still work, and show only what was acknowledged.
        let t = store.read_blocking(|v| v.tuple("/a/", "f")).expect("read").expect("tuple");
        assert_eq!((t.value.as_str(), store.last_seq()), ("1", 1));
        store.close();
        drop(faults);
        let store = Store::open(dir.path(), Options::new("s")).expect("reopen");
        assert_eq!(store.poisoned(), None);
        assert_eq!(store.append_blocking(vec![tuple("4")]).expect("after reopen").first, 2);
    }

    /// A panic while a group is built or written poisons the store, and
    /// every caller waiting in that group hears `Poisoned`, not `Closed`.
    #[test]
    fn a_panic_in_a_group_answers_each_waiting_caller_with_poisoned() {
        let memory = Arc::new(MemoryEngine::new());
        let faults = Arc::new(FaultEngine::new(memory.clone()));
        let store = Store::open_with(faults.clone(), Arc::new(SystemClock), Options::new("s")).expect("open");
        faults.arm(Fault::Panic(2));
        let answers: Vec<_> = one_group(&store, &faults, vec![vec![tuple("a")], vec![tuple("b")], vec![event("e")]])
            .into_iter()
            .map(answer)
            .collect();
        for a in &answers {
            assert!(matches!(a, Err(Error::Poisoned(r)) if r.contains("panicked")), "{a:?}");
        }
        assert!(store.poisoned().is_some_and(|r| r.contains("injected panic")));
        assert!(matches!(store.append_blocking(vec![tuple("c")]), Err(Error::Poisoned(_))));
        assert_eq!(store.last_seq(), 1, "only the group before");
    }
}
