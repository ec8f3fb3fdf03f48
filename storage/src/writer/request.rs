//! What callers ask the writer, and what it answers.
//!
//! A caller validates and encodes its records on its own thread
//! ([`crate::Store`] does this), then queues one [`Request`] on the writer's
//! bounded channel with a oneshot sender for the answer. The writer answers
//! every request exactly once: with the sequence numbers it committed
//! ([`Appended`]) after the group's batch is durable, or with the error that
//! refused it. A request the writer never answers (the store closed under
//! it) reads as `Closed` to its caller.

use tokio::sync::oneshot;

use crate::error::Result;
use crate::record::Body;
use crate::retention::TrimPlan;

/// The sequence numbers one append was given: `first..=last`, contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The first record's sequence number.
    pub first: u64,
    /// The last record's sequence number.
    pub last: u64,
    /// True when every record was an event already logged under the same id
    /// within the dedupe window: nothing new was written, and `first..=last`
    /// are the original sequence numbers.
    pub replayed: bool,
    /// Records received from a peer and dropped because their origin's
    /// mark showed they were appended before (see [`crate::Store::receive`]).
    pub dropped: u64,
}

impl Appended {
    /// How many records this append wrote: none when it was a replay of
    /// event ids already logged, or a received batch that was all repeats
    /// (whose range is then empty).
    pub fn written(&self) -> u64 {
        if self.replayed {
            0
        } else {
            (self.last + 1).saturating_sub(self.first)
        }
    }
}

/// Where received records come from: their origin site and, for each
/// record, its sequence number there.
pub(crate) struct Origin {
    pub site: String,
    pub seqs: Vec<u64>,
    /// The records are markers of a gap ending at `seqs[0]` (every entry
    /// the same): all of them or none are appended.
    pub gap: bool,
}

/// A record validated and encoded by its caller, waiting for a sequence number.
pub(crate) struct Prepared {
    pub body: Body,
    pub encoded_body: Vec<u8>,
}

/// Where the answer to a request goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// What the writer is asked to do.
pub(crate) enum Request {
    Append {
        records: Vec<Prepared>,
        bytes: usize,
        /// Set for records received from a peer ([`crate::Store::receive`]).
        origin: Option<Origin>,
        reply: Reply<Appended>,
    },
    Trim {
        plan: TrimPlan,
        reply: Reply<()>,
    },
    /// A monitor changes state: committed as a group of its own.
    Monitor {
        op: MonitorOp,
        reply: Reply<Appended>,
    },
}

/// A monitor state change ([`crate::recording`]).
pub(crate) enum MonitorOp {
    /// Start importing `pattern`.
    Start { pattern: String, reason: String },
    /// Complete the import of `pattern`, whose copy came from `source` and
    /// included, per origin, everything up to `marks`.
    Complete { pattern: String, source: String, marks: Vec<(String, u64)> },
    /// Stop the monitor of `pattern`.
    Stop { pattern: String, reason: String },
}

impl Request {
    /// The records and bytes the request adds to a group.
    pub(crate) fn size(&self) -> (usize, usize) {
        match self {
            Request::Append { records, bytes, .. } => (records.len(), *bytes),
            Request::Trim { .. } | Request::Monitor { .. } => (0, 0),
        }
    }
}

impl MonitorOp {
    /// The pattern the monitor covers.
    pub(crate) fn pattern(&self) -> &str {
        match self {
            MonitorOp::Start { pattern, .. }
            | MonitorOp::Complete { pattern, .. }
            | MonitorOp::Stop { pattern, .. } => pattern,
        }
    }
}
