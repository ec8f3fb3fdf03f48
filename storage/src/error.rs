//! The storage crate's one error type.
//!
//! Variants are grouped by what the caller should do about them:
//! fix the input (`InvalidInput`, `TooLarge`), look elsewhere (`NotFound`),
//! resolve a conflict (`Conflict`), stop (`Closed` at shutdown), or alert an
//! operator (`Poisoned`, `Corruption`, `UnsupportedFormat`, `Rocks`). Only
//! `Io` (such as a data folder still locked by a process that is exiting) may
//! succeed on a plain retry. A full write queue is not an error: `append`
//! waits. A reader behind retention is not an error either: the feed returns
//! [`crate::FeedItem::Compacted`] as a value.

/// Result alias for the storage crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input breaks a rule; nothing was written.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// The input item at fault, such as `channel` or `field`.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The input exceeds a named limit; nothing was written.
    #[error("{what} is {size} bytes or items, over the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The thing a mutation refers to does not exist; nothing was written.
    #[error("{what} not found: {key}")]
    NotFound {
        /// The kind of thing, such as `lease`.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// The mutation conflicts with the current state; nothing was written.
    #[error("{what} conflict: {detail}")]
    Conflict {
        /// The kind of thing, such as `lease`.
        what: &'static str,
        /// What conflicted.
        detail: String,
    },
    /// A write to the WAL failed earlier; the store refuses writes until it
    /// is reopened, because the state on disk is unknown.
    #[error("store refuses writes after a failed write ({0}); reopen it to recover")]
    Poisoned(String),
    /// The store is shutting down or closed.
    #[error("store is closed")]
    Closed,
    /// Data read back failed its checks (crc, version, contiguity).
    #[error("corruption at {at}: {detail}")]
    Corruption {
        /// Where: a sequence number or a key.
        at: String,
        /// What check failed.
        detail: String,
    },
    /// The data folder was written by a newer pepper.
    #[error("data format version {found} is newer than this pepper supports ({supported})")]
    UnsupportedFormat {
        /// The version on disk.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A filesystem or thread error outside RocksDB, or a fault a
    /// [`crate::FaultEngine`] injected.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the same call may succeed if retried unchanged later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io(_))
    }

    /// Whether the caller's input was at fault (HTTP 4xx).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput { .. } | Error::TooLarge { .. } | Error::NotFound { .. } | Error::Conflict { .. }
        )
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidInput { what, reason: reason.into() }
    }

    pub(crate) fn corruption(at: impl ToString, detail: impl Into<String>) -> Error {
        Error::Corruption { at: at.to_string(), detail: detail.into() }
    }
}
