//! One peer's forwarder: which local records go to the peer, in what
//! batches, and what happens when a batch does not get through.
//!
//! A forwarder is a **cursor over the local log**: the next sequence number
//! to send the peer. It reads the log from the cursor, keeps the records the
//! peer wants ([`Filter`]: events that originated on this site, on a
//! channel and of a type the peer's interests cover), and sends them as one
//! batch. Only when the peer has acknowledged the batch does the cursor
//! advance, past everything that was scanned, kept or not. A failed send
//! moves nothing: the same range is read and sent again, and the receiver,
//! which drops what it already appended by (origin, origin seq), appends
//! each record once. So every wanted record reaches the peer, in order,
//! while the log still holds it, whatever fails in between.
//!
//! - **Waiting for interests.** Until the peer has announced its interests
//!   in this run, the forwarder sends nothing and skips nothing. A peer
//!   never sent to starts at this site's log head + 1 when it was first
//!   heard ([`crate::PeerWants::first_cursor`]); otherwise at its durable
//!   cursor.
//! - **Batches** hold at most [`FORWARD_BATCH_RECORDS`] records or about
//!   [`FORWARD_BATCH_BYTES`] (the record that crosses it included), from at
//!   most [`FORWARD_SCAN_MAX`] records scanned. A scan that kept nothing
//!   still moves the cursor; that move is kept durably at most once per
//!   [`CURSOR_SAVE_INTERVAL`] (losing it only rescans).
//! - **Interests that change during a read** may have arrived before a
//!   record the read filtered with the old ones: the read's result is
//!   dropped and the range read again.
//! - **Backoff.** A failure is retried after [`BACKOFF_MIN`], doubling after
//!   each further failure up to [`BACKOFF_MAX`]; a success resets it.
//! - **Stalled.** A peer that refuses a batch (HTTP 4xx other than 409)
//!   will refuse it again: the forwarder reports it once
//!   ([`Action::Stalled`]) and retries every [`BACKOFF_MAX`] until a send
//!   passes. It never skips the batch, since that would lose it.
//! - **Gaps.** When the cursor has fallen below what retention kept, the
//!   records in between are gone: the forwarder sends a gap marker for them
//!   ([`Action::SendGap`]) and moves on once it is acknowledged, so the loss
//!   is told, never silent. A receiver answers 409 to a gap its origin has
//!   not announced yet; that passes by itself after the next heartbeat, so
//!   it is retried as an ordinary failure.
//!
//! The forwarder is a state machine. [`Forwarder::step`] takes what
//! happened (interests arrived, the log was read, a batch was acknowledged
//! or failed) and [`Forwarder::tick`] the time; both return the
//! [`Action`]s to carry out: load the cursor, read the log, send, keep the
//! cursor, wake later. It reads no clock and holds no socket; records are
//! whatever the driver reads ([`Outgoing`] carries their sequence number
//! and size), so it needs no storage types. Each read and send carries an
//! id, and an answer whose id is not the one awaited is ignored, so a late
//! answer can never move the cursor.
//!
//! Rejected alternatives: a queue per peer filled by the write path as
//! records commit. A cut-off peer's queue then either blocks the writer or
//! drops records; the log already is that queue, durable and bounded by
//! retention. And skipping a batch the peer refuses: forwarding would go
//! on, one batch short, with nothing to say so.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::channel::{Channel, Pattern};
use crate::error::Result;
use crate::peers::{Interest, PeerWants};
use crate::trie::Trie;

/// Most records in one forwarded batch.
pub const FORWARD_BATCH_RECORDS: usize = 1000;
/// About the most bytes of records in one forwarded batch: a read stops
/// after the record that reaches it.
pub const FORWARD_BATCH_BYTES: usize = 1024 * 1024;
/// Most log records one read scans, kept or not; the cursor then moves past
/// them, so a peer that wants little does not make each read walk the log.
pub const FORWARD_SCAN_MAX: u64 = 100_000;

/// The retry delay after a first failure; it doubles after each further
/// one...
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...up to this, which is also the delay after a refusal and after a
/// failure to load the cursor.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Least time between durable saves of a cursor moved by a read that kept
/// nothing. A cursor moved by an acknowledged batch is always saved.
pub const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);

const _: () = assert!(BACKOFF_MIN.as_nanos() > 0 && BACKOFF_MIN.as_nanos() <= BACKOFF_MAX.as_nanos());
const _: () = assert!(FORWARD_BATCH_RECORDS as u64 <= FORWARD_SCAN_MAX);

/// A peer's interests, parsed into a routing trie: each pattern maps to its
/// types (empty means all), so matching a record is O(channel depth)
/// whatever the number of interests.
#[derive(Debug, Default)]
pub struct Wants {
    trie: Trie<Vec<String>>,
}

impl Wants {
    /// Parses interests as an announcement carries them.
    ///
    /// # Errors
    /// [`crate::Error::InvalidChannel`] for the first pattern that does not
    /// parse.
    pub fn parse(interests: &[Interest]) -> Result<Wants> {
        let mut trie = Trie::new();
        for i in interests {
            trie.insert(&Pattern::parse(&i.pattern)?, i.types.clone());
        }
        Ok(Wants { trie })
    }

    /// How many (pattern, types) there are.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Whether an event on `channel` of type `event_type` is wanted. A
    /// channel that does not parse is not.
    pub fn covers(&self, channel: &str, event_type: &str) -> bool {
        let Ok(channel) = Channel::parse(channel) else { return false };
        let mut hit = false;
        self.trie.for_each_match(&channel, |types| {
            hit = hit || types.is_empty() || types.iter().any(|t| t == event_type);
        });
        hit
    }
}

/// Which records of the local log go to the peer, as of one read.
#[derive(Clone, Debug)]
pub struct Filter {
    site: Arc<str>,
    wants: Arc<Wants>,
}

impl Filter {
    /// Whether a record goes to the peer: an event (`event` is its channel
    /// and type; `None` for any other record) that originated on this site
    /// (`origin`), on a channel and of a type the peer wants. Records
    /// received from other sites are never forwarded again: each origin
    /// sends its own to every interested peer directly.
    pub fn keep(&self, origin: &str, event: Option<(&str, &str)>) -> bool {
        match event {
            Some((channel, event_type)) => origin == &*self.site && self.wants.covers(channel, event_type),
            None => false,
        }
    }
}

/// A record read for the peer: its local sequence number, its size as sent
/// (its log frame), and the record itself, which the forwarder only carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing<T> {
    /// Its sequence number in the local log.
    pub seq: u64,
    /// Its size as sent, in bytes.
    pub bytes: usize,
    /// The record (a log frame), as the driver read it.
    pub record: T,
}

/// What happened, for [`Forwarder::step`].
#[derive(Clone, Debug)]
pub enum Input<T> {
    /// The peer announced (new) interests.
    Interests(PeerWants),
    /// The result of [`Action::LoadCursor`]: the durable cursor, or the
    /// `or_else` it stored.
    CursorLoaded {
        /// The next sequence number to send.
        next: u64,
    },
    /// [`Action::LoadCursor`] failed; it is tried again after
    /// [`BACKOFF_MAX`].
    CursorLoadFailed {
        /// What went wrong.
        error: String,
    },
    /// The local log's last durable sequence number is at least this.
    Appended {
        /// The last sequence number.
        last_seq: u64,
    },
    /// The result of [`Action::Scan`]: the kept records, in order, and the
    /// sequence number after the last one scanned.
    Scanned {
        /// The scan's id.
        id: u64,
        /// The kept records, in increasing sequence order.
        records: Vec<Outgoing<T>>,
        /// The first sequence number not scanned.
        next: u64,
    },
    /// The result of [`Action::Scan`]: the scan started below what the log
    /// still holds.
    Compacted {
        /// The scan's id.
        id: u64,
        /// The first sequence number the log holds.
        earliest: u64,
    },
    /// [`Action::Scan`] failed (a damaged record, an I/O error).
    ScanFailed {
        /// The scan's id.
        id: u64,
        /// What went wrong.
        error: String,
    },
    /// The peer acknowledged [`Action::Send`] or [`Action::SendGap`].
    Sent {
        /// The send's id.
        id: u64,
    },
    /// A send did not get through.
    SendFailed {
        /// The send's id.
        id: u64,
        /// The peer's HTTP status, if it answered.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// What to do, returned by [`Forwarder::step`] and [`Forwarder::tick`], in
/// order.
#[derive(Clone, Debug)]
pub enum Action<T> {
    /// Read the peer's durable cursor; if there is none, store `or_else`
    /// durably as its cursor. Then step [`Input::CursorLoaded`] (or
    /// [`Input::CursorLoadFailed`]).
    LoadCursor {
        /// The cursor of a peer never sent to.
        or_else: u64,
    },
    /// Nothing to read until the log holds this sequence number: step
    /// [`Input::Appended`] when it does (or now and then).
    WaitForSeq(u64),
    /// Read the log: if `from` lies below the first record it holds, step
    /// [`Input::Compacted`]; else scan from `from`, keep the records
    /// `filter` accepts, stop after `records_max` kept, after the kept
    /// record that brings their bytes to `bytes_max`, or after `scan_max`
    /// scanned, and step [`Input::Scanned`]. A failure steps
    /// [`Input::ScanFailed`].
    Scan {
        /// Echo it in the answer.
        id: u64,
        /// The first sequence number to read.
        from: u64,
        /// Which records to keep.
        filter: Filter,
        /// Most records to keep.
        records_max: usize,
        /// About the most bytes to keep.
        bytes_max: usize,
        /// Most records to scan.
        scan_max: u64,
    },
    /// Send these records to the peer as one batch, and step
    /// [`Input::Sent`] once it acknowledged them, or [`Input::SendFailed`].
    Send {
        /// Echo it in the answer.
        id: u64,
        /// The first sequence number the batch covers (the cursor).
        from: u64,
        /// The cursor once the batch is acknowledged.
        next: u64,
        /// The records, in order.
        records: Vec<Outgoing<T>>,
    },
    /// Tell the peer that records `from..=to` are gone (retention trimmed
    /// them before they could be sent), and step [`Input::Sent`] or
    /// [`Input::SendFailed`].
    SendGap {
        /// Echo it in the answer.
        id: u64,
        /// The first lost sequence number.
        from: u64,
        /// The last lost sequence number.
        to: u64,
    },
    /// Keep the cursor: in memory always, durably when `durable`. A failed
    /// durable save costs only a resend after a restart, which the peer
    /// drops.
    SaveCursor {
        /// The next sequence number to send.
        next: u64,
        /// Whether to write it to the store.
        durable: bool,
    },
    /// The peer refuses what this site sends: say so loudly. Reported once
    /// per stall; the forwarder keeps retrying every [`BACKOFF_MAX`].
    Stalled {
        /// The refusal.
        error: String,
    },
    /// Call [`Forwarder::tick`] at this time.
    WakeAt(Duration),
}

/// Where a forwarder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The peer has not announced its interests in this run.
    AwaitingInterests,
    /// [`Action::LoadCursor`] is out.
    Loading,
    /// Loading the cursor failed; try again at this time.
    LoadRetry { at: Duration },
    /// The cursor is past the log's head.
    CaughtUp,
    /// [`Action::Scan`] is out, with the interests of this generation.
    Scanning { id: u64, generation: u64 },
    /// A send is out; once acknowledged, the cursor moves to `next`.
    Sending { id: u64, next: u64, records: u64 },
    /// Waiting out a backoff after a failure.
    Backoff { until: Duration },
}

/// One peer's forwarder. See the module header. `T` is the driver's record
/// type, carried from [`Input::Scanned`] to [`Action::Send`].
#[derive(Debug)]
pub struct Forwarder<T> {
    site: Arc<str>,
    wants: Option<Arc<Wants>>,
    /// Bumped on every change of `wants`.
    generation: u64,
    first_cursor: u64,
    cursor: Option<u64>,
    /// The log's last sequence number, as far as this forwarder knows.
    head: u64,
    phase: Phase,
    /// The delay after the next failure.
    backoff: Duration,
    /// When the cursor was last saved durably (or the forwarder started).
    saved_at: Duration,
    next_id: u64,
    forwarded: u64,
    stalled: bool,
    last_error: Option<String>,
    records: PhantomData<fn() -> T>,
}

impl<T> Forwarder<T> {
    /// The forwarder, started at `now`, of site `site` toward one peer.
    pub fn new(site: &str, now: Duration) -> Forwarder<T> {
        Forwarder {
            site: site.into(),
            wants: None,
            generation: 0,
            first_cursor: 0,
            cursor: None,
            head: 0,
            phase: Phase::AwaitingInterests,
            backoff: BACKOFF_MIN,
            saved_at: now,
            next_id: 0,
            forwarded: 0,
            stalled: false,
            last_error: None,
            records: PhantomData,
        }
    }

    /// The next local sequence number to send the peer, once loaded.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// Records the peer acknowledged from this forwarder.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// Whether the peer refuses what is sent, since the last success.
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// The last failure, cleared by a success.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The delay the next failure will wait.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// When [`Forwarder::tick`] has something to do: the end of a backoff.
    pub fn next_wake(&self) -> Option<Duration> {
        match self.phase {
            Phase::Backoff { until } => Some(until),
            Phase::LoadRetry { at } => Some(at),
            _ => None,
        }
    }

    /// Takes in what happened at `now` (the driver's monotonic clock). An
    /// answer to a read or send that is not the one awaited is ignored.
    pub fn step(&mut self, now: Duration, input: Input<T>) -> Vec<Action<T>> {
        match input {
            Input::Interests(w) => {
                self.wants = Some(w.wants);
                self.generation += 1;
                if self.phase != Phase::AwaitingInterests {
                    return Vec::new();
                }
                self.first_cursor = w.first_cursor;
                self.phase = Phase::Loading;
                vec![Action::LoadCursor { or_else: self.first_cursor }]
            }
            Input::CursorLoaded { next } => {
                if self.phase != Phase::Loading {
                    return Vec::new();
                }
                self.cursor = Some(next);
                self.proceed()
            }
            Input::CursorLoadFailed { .. } => {
                if self.phase != Phase::Loading {
                    return Vec::new();
                }
                let at = now + BACKOFF_MAX;
                self.phase = Phase::LoadRetry { at };
                vec![Action::WakeAt(at)]
            }
            Input::Appended { last_seq } => {
                self.head = self.head.max(last_seq);
                if self.phase == Phase::CaughtUp {
                    return self.proceed();
                }
                Vec::new()
            }
            Input::Scanned { id, records, next } => {
                let Some((from, fresh)) = self.scan_answered(id) else { return Vec::new() };
                if !fresh {
                    return self.scan();
                }
                if let Err(why) = check_scan(from, &records, next) {
                    return self.failed(now, None, format!("cannot read the log: {why}"));
                }
                if next == from {
                    // Nothing past the cursor yet.
                    self.head = from.saturating_sub(1);
                    return self.proceed();
                }
                self.head = self.head.max(next - 1);
                if records.is_empty() {
                    // Nothing for this peer in what was scanned: move on,
                    // and keep the cursor durably now and then.
                    let durable = now.saturating_sub(self.saved_at) >= CURSOR_SAVE_INTERVAL;
                    let mut actions = vec![self.advance(now, next, durable)];
                    actions.extend(self.proceed());
                    return actions;
                }
                let id = self.new_id();
                self.phase = Phase::Sending { id, next, records: records.len() as u64 };
                vec![Action::Send { id, from, next, records }]
            }
            Input::Compacted { id, earliest } => {
                let Some((from, fresh)) = self.scan_answered(id) else { return Vec::new() };
                if !fresh {
                    return self.scan();
                }
                if earliest <= from {
                    return self.failed(
                        now,
                        None,
                        format!("cannot read the log: it says it starts at seq {earliest}, not past the cursor {from}"),
                    );
                }
                let id = self.new_id();
                self.phase = Phase::Sending { id, next: earliest, records: 0 };
                vec![Action::SendGap { id, from, to: earliest - 1 }]
            }
            Input::ScanFailed { id, error } => {
                let Some((_, fresh)) = self.scan_answered(id) else { return Vec::new() };
                if !fresh {
                    return self.scan();
                }
                self.failed(now, None, format!("cannot read the log: {error}"))
            }
            Input::Sent { id } => {
                let Phase::Sending { id: awaited, next, records } = self.phase else { return Vec::new() };
                if id != awaited {
                    return Vec::new();
                }
                self.backoff = BACKOFF_MIN;
                self.forwarded += records;
                self.last_error = None;
                self.stalled = false;
                let mut actions = vec![self.advance(now, next, true)];
                actions.extend(self.proceed());
                actions
            }
            Input::SendFailed { id, status, error } => {
                match self.phase {
                    Phase::Sending { id: awaited, .. } if awaited == id => {}
                    _ => return Vec::new(),
                }
                self.failed(now, status, error)
            }
        }
    }

    /// Whatever is due at `now`: the end of a backoff.
    pub fn tick(&mut self, now: Duration) -> Vec<Action<T>> {
        match self.phase {
            Phase::Backoff { until } if now >= until => self.proceed(),
            Phase::LoadRetry { at } if now >= at => {
                self.phase = Phase::Loading;
                vec![Action::LoadCursor { or_else: self.first_cursor }]
            }
            _ => Vec::new(),
        }
    }

    /// If `id` answers the scan that is out: where it started, and whether
    /// the interests are still those it filtered with.
    fn scan_answered(&self, id: u64) -> Option<(u64, bool)> {
        match self.phase {
            Phase::Scanning { id: awaited, generation } if awaited == id => {
                Some((self.cursor?, generation == self.generation))
            }
            _ => None,
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Reads on from the cursor, or waits for the log to reach it.
    fn proceed(&mut self) -> Vec<Action<T>> {
        let Some(cursor) = self.cursor else { return Vec::new() };
        if cursor > self.head {
            self.phase = Phase::CaughtUp;
            return vec![Action::WaitForSeq(cursor)];
        }
        self.scan()
    }

    fn scan(&mut self) -> Vec<Action<T>> {
        let (Some(from), Some(wants)) = (self.cursor, self.wants.clone()) else { return Vec::new() };
        let id = self.new_id();
        self.phase = Phase::Scanning { id, generation: self.generation };
        vec![Action::Scan {
            id,
            from,
            filter: Filter { site: self.site.clone(), wants },
            records_max: FORWARD_BATCH_RECORDS,
            bytes_max: FORWARD_BATCH_BYTES,
            scan_max: FORWARD_SCAN_MAX,
        }]
    }

    /// Moves the cursor forward to `next`; it never moves back.
    fn advance(&mut self, now: Duration, next: u64, durable: bool) -> Action<T> {
        debug_assert!(self.cursor.is_none_or(|c| c <= next), "the cursor moves back");
        self.cursor = Some(self.cursor.map_or(next, |c| c.max(next)));
        if durable {
            self.saved_at = now;
        }
        Action::SaveCursor { next, durable }
    }

    /// A read or send failed: wait, longer each time, and read again.
    fn failed(&mut self, now: Duration, status: Option<u16>, error: String) -> Vec<Action<T>> {
        // 409 passes by itself (a gap taken after the next heartbeat).
        let refused = status.is_some_and(|s| (400..500).contains(&s) && s != 409);
        let mut actions = Vec::new();
        if refused && !std::mem::replace(&mut self.stalled, true) {
            actions.push(Action::Stalled { error: error.clone() });
        }
        self.last_error = Some(format!("forwarding: {error}"));
        if refused {
            self.backoff = BACKOFF_MAX;
        }
        let until = now + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.phase = Phase::Backoff { until };
        actions.push(Action::WakeAt(until));
        actions
    }
}

/// Checks a scan's answer against what [`Action::Scan`] asked: kept records
/// in increasing order inside `from..next`, within the batch limits, from at
/// most [`FORWARD_SCAN_MAX`] scanned.
fn check_scan<T>(from: u64, records: &[Outgoing<T>], next: u64) -> std::result::Result<(), String> {
    if next < from || next - from > FORWARD_SCAN_MAX {
        return Err(format!("a scan from seq {from} says it ended before seq {next}"));
    }
    if records.len() > FORWARD_BATCH_RECORDS {
        return Err(format!("a scan kept {} records, over {FORWARD_BATCH_RECORDS}", records.len()));
    }
    let mut expect = from;
    for r in records {
        if r.seq < expect || r.seq >= next {
            return Err(format!("a scan from seq {from} to {next} returned seq {} out of order", r.seq));
        }
        expect = r.seq + 1;
    }
    let before_last: usize = records.iter().rev().skip(1).map(|r| r.bytes).sum();
    if before_last >= FORWARD_BATCH_BYTES {
        return Err(format!("a scan kept {before_last} bytes before its last record, over {FORWARD_BATCH_BYTES}"));
    }
    Ok(())
}
