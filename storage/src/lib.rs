//! pepper's embedded, log-structured store.
//!
//! Every state change is a [`Record`] appended to one ordered log in RocksDB.
//! Each record's effects on the materialized views (latest tuples, history,
//! leases, documents) are written in the same WriteBatch, so a crash leaves
//! all of a record or none of it. A single writer thread group-commits
//! concurrent appends into one batch and one WAL sync. A [`Feed`] reads the
//! log from any sequence number and follows the live tail with no gap and no
//! duplicate. Reads go through a [`View`], one snapshot that states the
//! sequence number it reflects.
//!
//! Start with [`Store::open`]; `docs/architecture.md` follows one write from
//! the caller to the WAL and the feed, and `docs/storage-format.md` gives the
//! bytes on disk.

mod anycast;
mod check;
mod db;
mod error;
mod feed;
pub mod keys;
pub mod limits;
mod models;
mod record;
mod recording;
mod retention;
mod rows;
mod store;
pub mod validate;
mod view;
mod writer;

pub use check::{check, CheckReport, CHECK_PROBLEMS_LISTED_MAX};
pub use db::{BLOCK_CACHE_BYTES, MEMTABLES_BYTES_MAX, MEMTABLE_BYTES, WAL_BYTES_MAX};
pub use error::{Error, Result};
pub use feed::{Feed, FeedItem, Filter};
pub use record::{
    Body, Distribution, DocDelete, DocPut, Event, Kind, LeaseEnd, LeaseGrant, LeaseRenew, ModelClass, ModelDelete,
    ModelPut, MonitorChange, MonitorState, Party, Record, Target, TupleEnd, TupleImport, TupleSet, TupleUpdate,
    TupleWrite, RECORD_VERSION,
};
pub use retention::{HistoryRule, Retention, RetentionReport};
pub use rows::{
    Doc, HistoryEntry, Lease, ModelClassRow, ModelInstanceRow, ModelVersion, MonitorRow, Tombstone, TombstoneReason,
    Tuple, ROW_VERSION,
};
pub use store::{
    now_us, validate_site, Durability, Options, StatsSnapshot, Store, DEDUPE_WINDOW_DEFAULT, FORMAT_VERSION,
    RETENTION_INTERVAL_DEFAULT,
};
pub use view::{Frame, HistoryRange, Order, Page, Scan, TupleCursor, View};
pub use writer::Appended;
