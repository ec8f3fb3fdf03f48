//! The RocksDB engine: pepper's production storage, with every option it
//! relies on set explicitly.
//!
//! One RocksDB database per data folder, one column family per pepper family
//! ([`crate::keys::ALL_CFS`]). A [`Batch`] becomes one RocksDB `WriteBatch`
//! and one WAL write (fsynced under `sync`); a snapshot is a RocksDB
//! snapshot; a scan is a raw iterator bounded by the range, so RocksDB never
//! reads past it. Every read verifies block checksums.
//!
//! RocksDB's defaults change between releases. pepper's guarantees rest on a
//! handful of options, so each is set here, by name, with the reason; the
//! list is repeated in docs/storage-format.md. Options that only tune speed
//! are set here too, so a benchmark figure always names its configuration.
//! The bytes this engine writes are pepper's file format, specified in
//! docs/storage-format.md.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, Options,
    ReadOptions, SnapshotWithThreadMode, WriteBatch, WriteBufferManager, WriteOptions, DB,
};

use crate::engine::{Batch, BatchOp, Direction, Engine, KeyRange, Reader, Value, Visit};
use crate::error::{Error, Result};
use crate::keys::{ALL_CFS, CF_EVENT_IDS, CF_HISTORY, CF_LOG, CF_MODEL_INSTANCES, CF_TOMBSTONES, CF_TUPLES};

/// Block cache shared by every column family, in bytes. It is a cache: at the
/// limit it evicts.
pub const BLOCK_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Size of one memtable, in bytes, before it is flushed to an SST file.
pub const MEMTABLE_BYTES: usize = 32 * 1024 * 1024;

/// Memory all memtables of all column families may use together, in bytes.
/// Past it, RocksDB flushes the largest memtables early; writers do not stall.
pub const MEMTABLES_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Total WAL size after which RocksDB flushes the column families that pin
/// the oldest WAL file, so recovery never replays more than this.
pub const WAL_BYTES_MAX: u64 = 256 * 1024 * 1024;

fn db_options() -> Options {
    let mut o = Options::default();
    o.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(MEMTABLES_BYTES_MAX, false));
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // Correctness: refuse to open on detected corruption rather than serve
    // damaged data.
    o.set_paranoid_checks(true);
    // Correctness: recover the WAL up to the first damaged entry and stop
    // there. A torn tail (the write in flight at a crash) was never
    // acknowledged under `sync`, so dropping it loses nothing acknowledged,
    // and nothing after a hole is ever replayed.
    o.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // Correctness: every write goes to the WAL immediately; pepper never
    // buffers WAL writes in user space (that would make `sync` a lie).
    o.set_manual_wal_flush(false);
    // Correctness: flush all column families together, so the families stay
    // mutually consistent on disk even when a WAL file is retired.
    o.set_atomic_flush(true);
    // Correctness: record WAL files in the MANIFEST so a missing WAL file is
    // detected at open instead of silently skipped.
    o.set_track_and_verify_wals_in_manifest(true);
    // Write path: pepper does its own group commit on one writer thread, so
    // RocksDB's write ordering options stay at their strict settings.
    o.set_unordered_write(false);
    o.set_enable_pipelined_write(false);
    o.set_max_total_wal_size(WAL_BYTES_MAX);
    // Smooth background I/O instead of large bursts at flush time.
    o.set_bytes_per_sync(1024 * 1024);
    o.set_max_background_jobs(2);
    o.increase_parallelism(2);
    o.set_keep_log_file_num(4);
    o
}

/// Share of the event id memtable spent on its bloom filter.
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(MEMTABLE_BYTES);
    o.set_level_compaction_dynamic_level_bytes(true);
    o.set_compression_type(DBCompressionType::Lz4);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Point lookups hit a bloom filter first: latest tuples, and event ids,
    // which the writer looks up for every event (nearly always a miss). The
    // log and history are read by range and gain nothing from one.
    if name == CF_TUPLES || name == CF_EVENT_IDS || name == CF_TOMBSTONES || name == CF_MODEL_INSTANCES {
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
    }
    // The id lookups miss in the memtable too, where a bloom filter saves
    // the skiplist search (measured: 6% of the server's CPU under
    // single-event publishing without it).
    if name == CF_EVENT_IDS {
        o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        o.set_memtable_whole_key_filtering(true);
    }
    if name == CF_LOG || name == CF_HISTORY {
        table.set_block_size(16 * 1024);
    }
    o.set_block_based_table_factory(&table);
    o
}

/// Read-ahead for forward scans of the log: feeds and retention read it in
/// long runs of sequential keys.
const LOG_READAHEAD_BYTES: usize = 2 * 1024 * 1024;

/// Bytes a RocksDB write batch adds to the keys and values: a header
/// (sequence number and count), then per operation a tag, a family id and
/// two lengths. For sizing it in one allocation; a batch that needs more
/// grows.
const WRITE_BATCH_HEADER_BYTES: usize = 12;
const WRITE_BATCH_OP_OVERHEAD_BYTES: usize = 16;

/// The production engine: a RocksDB database in a data folder.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
    /// Read options of every point read of the latest state, made once:
    /// creating them is a C++ allocation per read otherwise.
    latest: ReadOptions,
}

impl RocksEngine {
    /// Opens (creating if needed) the database in `path` with every family.
    ///
    /// # Errors
    /// `Io` if the folder cannot be created or another process has it open,
    /// `Rocks` if RocksDB cannot open or recover it.
    pub fn open(path: impl AsRef<Path>) -> Result<RocksEngine> {
        let path = path.as_ref();
        std::fs::create_dir_all(path)?;
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = ALL_CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors(&db_options(), path, cfs).map_err(|e| describe_open_error(path, e))?;
        Ok(RocksEngine { db, path: path.to_path_buf(), latest: ReadOptions::default() })
    }

    /// Opens the database read-only, for the offline check. It replays the
    /// WAL in memory and writes nothing; a folder written by an older format
    /// lacks the newer families, and [`Engine::has_family`] says so.
    ///
    /// # Errors
    /// `InvalidInput` if the folder holds no store; otherwise as
    /// [`RocksEngine::open`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<RocksEngine> {
        let path = path.as_ref();
        if !path.join("CURRENT").exists() {
            return Err(Error::invalid("data folder", format!("{} holds no pepper store", path.display())));
        }
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut opts = db_options();
        opts.create_if_missing(false);
        // A read-only open cannot create missing families: open what it has.
        let existing = DB::list_cf(&opts, path).map_err(|e| describe_open_error(path, e))?;
        let cfs = ALL_CFS
            .iter()
            .filter(|name| existing.iter().any(|e| e == *name))
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db =
            DB::open_cf_descriptors_read_only(&opts, path, cfs, false).map_err(|e| describe_open_error(path, e))?;
        Ok(RocksEngine { db, path: path.to_path_buf(), latest: ReadOptions::default() })
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| Error::corruption(name, "column family is missing"))
    }

    /// Scans `family` in the latest state or in `snap`.
    fn scan_in(
        &self,
        snap: Option<&SnapshotWithThreadMode<'_, DB>>,
        family: &str,
        range: KeyRange<'_>,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let cf = self.cf(family)?;
        if range.is_empty() {
            return Ok(());
        }
        let mut o = ReadOptions::default();
        if let Some(snap) = snap {
            o.set_snapshot(snap);
        }
        o.set_verify_checksums(true);
        if !range.start.is_empty() {
            o.set_iterate_lower_bound(range.start.to_vec());
        }
        if let Some(end) = range.end {
            o.set_iterate_upper_bound(end.to_vec());
        }
        if family == CF_LOG && direction == Direction::Forward {
            o.set_readahead_size(LOG_READAHEAD_BYTES);
        }
        let mut it = self.db.raw_iterator_cf_opt(cf, o);
        match direction {
            Direction::Forward => it.seek_to_first(),
            Direction::Backward => it.seek_to_last(),
        }
        while it.valid() {
            let (Some(key), Some(value)) = (it.key(), it.value()) else { break };
            if !visit(key, value)? {
                return Ok(());
            }
            match direction {
                Direction::Forward => it.next(),
                Direction::Backward => it.prev(),
            }
        }
        it.status()?;
        Ok(())
    }
}

impl Reader for RocksEngine {
    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Value<'_>>> {
        Ok(self.db.get_pinned_cf_opt(self.cf(family)?, key, &self.latest)?.map(Value::pinned))
    }

    fn scan(&self, family: &str, range: KeyRange<'_>, direction: Direction, visit: &mut Visit<'_>) -> Result<()> {
        self.scan_in(None, family, range, direction, visit)
    }
}

impl Engine for RocksEngine {
    fn write(&self, batch: &Batch, sync: bool) -> Result<()> {
        let capacity = WRITE_BATCH_HEADER_BYTES + batch.bytes() + WRITE_BATCH_OP_OVERHEAD_BYTES * batch.len();
        let mut wb = WriteBatch::with_capacity_bytes(capacity);
        // Operations come in runs of one family (the counters, a record's
        // rows): look a family's handle up once per run.
        let mut last: Option<(&str, &ColumnFamily)> = None;
        let mut cf = |family: &'static str| -> Result<&ColumnFamily> {
            match last {
                Some((name, handle)) if name == family => Ok(handle),
                _ => {
                    let handle = self.cf(family)?;
                    last = Some((family, handle));
                    Ok(handle)
                }
            }
        };
        for op in batch.ops() {
            match op {
                BatchOp::Put { family, key, value } => wb.put_cf(cf(family)?, key, value),
                BatchOp::Delete { family, key } => wb.delete_cf(cf(family)?, key),
                BatchOp::DeleteRange { family, start, end } => wb.delete_range_cf(cf(family)?, start, end),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        opts.disable_wal(false);
        self.db.write_opt(wb, &opts)?;
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn Reader + '_> {
        let snap = self.db.snapshot();
        let mut read = ReadOptions::default();
        read.set_snapshot(&snap);
        Box::new(RocksSnapshot { engine: self, read, snap })
    }

    fn has_family(&self, family: &str) -> bool {
        self.db.cf_handle(family).is_some()
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// A RocksDB snapshot of every family.
struct RocksSnapshot<'a> {
    engine: &'a RocksEngine,
    /// Read options bound to `snap`, made once for every point read of it.
    /// Declared before `snap`, so they are dropped first.
    read: ReadOptions,
    snap: SnapshotWithThreadMode<'a, DB>,
}

impl Reader for RocksSnapshot<'_> {
    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Value<'_>>> {
        Ok(self.engine.db.get_pinned_cf_opt(self.engine.cf(family)?, key, &self.read)?.map(Value::pinned))
    }

    fn scan(&self, family: &str, range: KeyRange<'_>, direction: Direction, visit: &mut Visit<'_>) -> Result<()> {
        self.engine.scan_in(Some(&self.snap), family, range, direction, visit)
    }
}

fn describe_open_error(path: &Path, e: rocksdb::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("lock") || msg.contains("LOCK") {
        Error::Io(std::io::Error::other(format!(
            "data folder {} is in use by another pepper process ({msg})",
            path.display()
        )))
    } else {
        Error::Rocks(e)
    }
}
