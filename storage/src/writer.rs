//! The single writer: group commit of concurrent appends.
//!
//! One OS thread owns every write to the engine. Callers validate and encode
//! their records on their own threads, then queue a request on a bounded
//! channel and await a oneshot reply ([`request`]). The writer takes the
//! first request, drains whatever else is already queued, assigns sequence
//! numbers, and puts the log records and all their materialized effects
//! (latest tuple, history row, lease row, document row, counters) into one
//! batch. It writes that batch with one WAL write and, under `sync`, one
//! fsync. Only then does it publish the new durable sequence number to feeds
//! and answer the callers. The more callers wait, the more records share one
//! fsync; with one caller it degenerates to one record per sync, which is
//! the best a durable store can do.
//!
//! Why a thread of our own and not RocksDB's internal write grouping: the
//! sequence number must be assigned in the same critical section that orders
//! the batch, and preconditions (a renew needs a live lease) must see every
//! earlier write, including those of the same group. One writer makes both
//! trivially true with no locks. The rejected alternative, a mutex around
//! "assign seq + write", serializes fsyncs one caller at a time.
//!
//! The parts, each building on the ones before it:
//!
//! - [`request`]: what callers send and what they are answered;
//! - [`state`]: the log's tail, and what a group wrote so far;
//! - [`checks`]: what a request must pass before it touches the batch;
//! - [`effects`]: each record's effects on the views;
//! - [`append`]: one append request into records and effects;
//! - [`trim`]: a retention plan applied in a group;
//! - [`monitor`]: a monitor's state change, a group of its own;
//! - [`group`]: the loop that gathers, writes, publishes and answers, and
//!   poisons the store when a write fails or the thread panics.

pub(crate) mod append;
pub(crate) mod checks;
pub(crate) mod effects;
pub(crate) mod group;
pub(crate) mod monitor;
pub(crate) mod request;
pub(crate) mod state;
pub(crate) mod trim;
