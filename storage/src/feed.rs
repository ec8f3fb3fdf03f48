//! The change feed: an ordered, filtered stream over the log.
//!
//! A feed is a cursor: the next sequence number it wants. It reads the log
//! from disk in chunks, up to the last durable sequence number, then waits on
//! a `watch` channel that the writer bumps after each durable group commit,
//! and reads again. The in-memory signal only wakes readers; the records
//! always come from the log. So:
//!
//! - there is no gap and no duplicate at the switch from catch-up to live:
//!   both are the same loop over the same cursor;
//! - a slow reader never blocks the writer (a `watch` send never waits) and
//!   never misses a record (it re-reads from disk whatever it has not seen);
//! - a reader whose cursor falls below what retention kept gets
//!   [`FeedItem::Compacted`] with the earliest retained sequence number,
//!   checked in the same snapshot it reads from, never silence.
//!
//! Rejected alternative: pushing records through a bounded broadcast channel
//! and falling back to disk on `Lagged`. It saves a memtable read per record
//! but makes the switch-over a second code path where gaps hide.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::limits::FEED_CHUNK_RECORDS_MAX;
use crate::record::Record;
use crate::shared::Shared;
use crate::view::{Scan, View};

/// What a feed yields.
// `Record` is the variant on the hot path; boxing it to shrink the rare
// `Compacted` would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// The next matching record.
    Record(Record),
    /// The feed's position was trimmed by retention. `earliest` is the lowest
    /// sequence number still in the log; the feed ends here, and the caller
    /// restarts from `earliest` (after taking a snapshot of the views, if it
    /// needs the state it missed).
    Compacted {
        /// The lowest retained sequence number.
        earliest: u64,
    },
}

/// A change feed. Obtain one with [`crate::Store::feed`].
///
/// A feed does not keep the store open: once the store is closed, it ends
/// with `Closed`.
pub struct Feed {
    shared: Weak<Shared>,
    next: u64,
    filter: Filter,
    durable: watch::Receiver<u64>,
    buffer: VecDeque<Record>,
    ended: bool,
    /// The disk read in flight, kept across a cancelled [`Feed::next`].
    reading: Option<tokio::task::JoinHandle<Result<Chunk>>>,
}

enum Chunk {
    Records { records: Vec<Record>, next: u64 },
    Compacted { earliest: u64 },
}

impl Feed {
    pub(crate) fn new(shared: &Arc<Shared>, from_seq: u64, filter: Filter) -> Feed {
        let durable = shared.durable.subscribe();
        let shared = Arc::downgrade(shared);
        Feed { shared, next: from_seq.max(1), filter, durable, buffer: VecDeque::new(), ended: false, reading: None }
    }

    /// The sequence number the feed will look at next.
    pub fn position(&self) -> u64 {
        self.buffer.front().map_or(self.next, |r| r.seq)
    }

    /// How many log records the feed is behind the durable head: 0 once it
    /// has read everything committed so far.
    pub fn lag(&self) -> u64 {
        (*self.durable.borrow() + 1).saturating_sub(self.position())
    }

    /// Waits for the next matching record.
    ///
    /// Cancel safe: dropping the future loses nothing, so it can race other
    /// futures in `tokio::select!`.
    ///
    /// # Errors
    /// `Corruption` if the log is damaged, `Closed` once the store is closed.
    pub async fn next(&mut self) -> Result<FeedItem> {
        loop {
            if let Some(rec) = self.buffer.pop_front() {
                return Ok(FeedItem::Record(rec));
            }
            if self.ended {
                return Err(Error::Closed);
            }
            if self.reading.is_none() {
                let durable = *self.durable.borrow_and_update();
                if self.next <= durable {
                    let (shared, from, filter) = (self.shared.clone(), self.next, self.filter.clone());
                    self.reading = Some(tokio::task::spawn_blocking(move || match shared.upgrade() {
                        Some(shared) => read_chunk(&shared, from, durable, &filter),
                        None => Err(Error::Closed),
                    }));
                }
            }
            if let Some(reading) = &mut self.reading {
                // Cancel safety: if this await is cancelled, the read stays
                // in `reading` and the next call picks up its result.
                let chunk = reading.await;
                self.reading = None;
                let chunk =
                    chunk.map_err(|e| Error::Io(std::io::Error::other(format!("feed read task failed: {e}"))))??;
                match chunk {
                    Chunk::Records { records, next } => {
                        self.next = next;
                        self.buffer.extend(records);
                    }
                    Chunk::Compacted { earliest } => {
                        self.ended = true;
                        return Ok(FeedItem::Compacted { earliest });
                    }
                }
                continue;
            }
            if self.durable.changed().await.is_err() {
                // The store was closed.
                self.ended = true;
            }
        }
    }

    /// Like [`Feed::next`], but gives up after `timeout` with `Ok(None)`.
    ///
    /// # Errors
    /// As [`Feed::next`].
    pub async fn next_timeout(&mut self, timeout: std::time::Duration) -> Result<Option<FeedItem>> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(item) => item.map(Some),
            Err(_) => Ok(None),
        }
    }
}

fn read_chunk(shared: &Shared, from: u64, durable: u64, filter: &Filter) -> Result<Chunk> {
    match View::new(&*shared.engine)?.scan(from, durable, filter, usize::MAX, FEED_CHUNK_RECORDS_MAX)? {
        Scan::Records { records, next_seq } => Ok(Chunk::Records { records, next: next_seq }),
        Scan::Compacted { earliest } => Ok(Chunk::Compacted { earliest }),
    }
}
