//! pepper's embedded, log-structured store.
//!
//! Every state change is a [`Record`] appended to one ordered log. Each
//! record's effects on the materialized views (latest tuples, history,
//! leases, documents) are written in the same batch, so a crash leaves all
//! of a record or none of it. A single writer thread group-commits
//! concurrent appends into one batch and one WAL sync. A [`Feed`] reads the
//! log from any sequence number and follows the live tail with no gap and no
//! duplicate. Reads go through a [`View`], one snapshot that states the
//! sequence number it reflects.
//!
//! The bytes live in an [`Engine`]: [`RocksEngine`] on disk in production,
//! [`MemoryEngine`] for fast deterministic tests, [`FaultEngine`] to make a
//! chosen write fail or panic. The time comes from a [`Clock`]:
//! [`SystemClock`], or a [`ManualClock`] a test moves by hand.
//!
//! Start with [`Store::open`] (or [`Store::open_memory`],
//! [`Store::open_with`]); `docs/architecture.md` follows one write from the
//! caller to the WAL and the feed, and `docs/storage-format.md` gives the
//! bytes on disk.
//!
//! The modules, from the bottom up (each uses only those above it):
//!
//! | module | what it is |
//! |---|---|
//! | `error`, `limits`, `keys` | the error type, every named limit, the families and key encodings |
//! | `record`, `rows`, `validate` | the log record and view row formats, the input rules |
//! | `clock`, `engine` | the seams: time, and the key-value store (`rocks`, `memory`, `fault`) |
//! | `fold` | what each durable group changed, for derived state kept outside the store |
//! | `shared` | the state one open store shares between its threads |
//! | `filter`, `view`, `feed` | reading: one snapshot, and the change feed |
//! | `anycast`, `recording`, `models` | the writer's helpers for anycast leases, monitors and models |
//! | `retention`, `check` | trimming plans, and the offline check |
//! | `options` | what a deployment chooses when it opens a store |
//! | `writer` | the single writer: group commit and each record's effects |
//! | `store` | the [`Store`] facade over all of it |

mod anycast;
mod check;
mod clock;
mod engine;
mod error;
mod feed;
mod filter;
mod fold;
pub mod keys;
pub mod limits;
mod models;
mod options;
mod record;
mod recording;
mod retention;
mod rows;
mod shared;
mod store;
pub mod validate;
mod view;
mod writer;

pub use check::{check, check_engine, CheckReport, CHECK_PROBLEMS_LISTED_MAX};
pub use clock::{now_us, Clock, ManualClock, SystemClock};
pub use engine::fault::{Fault, FaultEngine, Hold};
pub use engine::memory::MemoryEngine;
pub use engine::rocks::{RocksEngine, BLOCK_CACHE_BYTES, MEMTABLES_BYTES_MAX, MEMTABLE_BYTES, WAL_BYTES_MAX};
pub use engine::{Batch, BatchOp, Direction, Engine, KeyRange, Reader, Value, Visit};
pub use error::{Error, Result};
pub use feed::{Feed, FeedItem};
pub use filter::Filter;
pub use fold::{Committed, Fold, TupleState};
pub use options::{Durability, Options, DEDUPE_WINDOW_DEFAULT};
pub use record::{
    Body, Distribution, DocDelete, DocPut, Event, Kind, LeaseEnd, LeaseGrant, LeaseRenew, ModelClass, ModelDelete,
    ModelPut, MonitorChange, MonitorState, Party, Record, Target, TupleEnd, TupleImport, TupleSet, TupleUpdate,
    TupleWrite, RECORD_VERSION,
};
pub use retention::{HistoryRule, Retention, RetentionReport, RETENTION_INTERVAL_DEFAULT};
pub use rows::{
    Doc, HistoryEntry, Lease, ModelClassRow, ModelInstanceRow, ModelVersion, MonitorRow, Tombstone, TombstoneReason,
    Tuple, ROW_VERSION,
};
pub use store::{StatsSnapshot, Store, FORMAT_VERSION};
pub use validate::validate_site;
pub use view::{Frame, HistoryRange, Order, Page, Scan, TupleCursor, View};
pub use writer::request::Appended;
