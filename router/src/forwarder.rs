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

use crate::interest::{PeerWants, Wants};

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
                match self.phase {
                    Phase::AwaitingInterests => {
                        self.first_cursor = w.first_cursor;
                        self.phase = Phase::Loading;
                        vec![Action::LoadCursor { or_else: self.first_cursor }]
                    }
                    // The peer just sent its interests, so it runs (after a
                    // restart, for one): a backoff from failing to reach it
                    // ends now, instead of leaving a restarted site unfed
                    // for up to BACKOFF_MAX while its supervisor warms up. A
                    // stall (the peer refused a batch) keeps its pace.
                    Phase::Backoff { .. } if !self.stalled => {
                        self.backoff = BACKOFF_MIN;
                        self.proceed()
                    }
                    _ => Vec::new(),
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interest::Interest;

    type F = Forwarder<&'static str>;
    type A = Action<&'static str>;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wants(patterns: &[(&str, &[&str])]) -> PeerWants {
        let list: Vec<Interest> = patterns
            .iter()
            .map(|(p, t)| Interest { pattern: p.to_string(), types: t.iter().map(|t| t.to_string()).collect() })
            .collect();
        PeerWants { wants: Arc::new(Wants::parse(&list).expect("wants")), first_cursor: 11 }
    }

    fn out(seq: u64, bytes: usize) -> Outgoing<&'static str> {
        Outgoing { seq, bytes, record: "r" }
    }

    /// A forwarder with cursor `cursor` and a log that ends at `head`; returns
    /// it with the id of the scan it sent out.
    fn scanning(cursor: u64, head: u64) -> (F, u64) {
        let mut f = F::new("a", ms(0));
        assert!(matches!(f.step(ms(0), Input::Interests(wants(&[("/x/", &[])])))[..], [A::LoadCursor { or_else: 11 }]));
        assert!(matches!(f.step(ms(0), Input::CursorLoaded { next: cursor })[..], [A::WaitForSeq(c)] if c == cursor));
        let actions = f.step(ms(0), Input::Appended { last_seq: head });
        let [A::Scan { id, from, records_max, bytes_max, scan_max, .. }] = actions[..] else { panic!("{actions:?}") };
        assert_eq!((from, records_max, bytes_max, scan_max), (cursor, 1000, 1024 * 1024, 100_000));
        (f, id)
    }

    fn send_of(actions: &[A]) -> (u64, u64, u64, Vec<u64>) {
        match actions {
            [A::Send { id, from, next, records }] => (*id, *from, *next, records.iter().map(|r| r.seq).collect()),
            _ => panic!("{actions:?}"),
        }
    }

    fn wake_of(actions: &[A]) -> Duration {
        match actions.last() {
            Some(A::WakeAt(t)) => *t,
            _ => panic!("{actions:?}"),
        }
    }

    #[test]
    fn only_local_events_the_peer_wants_are_kept() {
        let w = wants(&[("/fleet/*/load/", &["attribute"]), ("/alerts/", &[])]).wants;
        let filter = Filter { site: "a".into(), wants: w };
        assert!(filter.keep("a", Some(("/fleet/h1/load/", "attribute"))));
        assert!(!filter.keep("a", Some(("/fleet/h1/load/", "ping"))), "wrong type");
        assert!(filter.keep("a", Some(("/alerts/disk/", "anything"))), "any type, subtree");
        assert!(!filter.keep("b", Some(("/alerts/disk/", "anything"))), "received, not ours");
        assert!(!filter.keep("a", Some(("/fleet/h1/", "attribute"))), "outside the pattern");
        assert!(!filter.keep("a", Some(("not a channel", "attribute"))));
        assert!(!filter.keep("a", None), "not an event");
        assert!(Wants::parse(&[Interest { pattern: "/a//".into(), types: Vec::new() }]).is_err());
    }

    #[test]
    fn nothing_is_read_before_the_peer_has_said_what_it_wants() {
        let mut f = F::new("a", ms(0));
        assert!(f.step(ms(0), Input::Appended { last_seq: 50 }).is_empty());
        assert!(f.tick(ms(10_000)).is_empty());
        assert_eq!(f.cursor(), None);
        assert!(matches!(f.step(ms(1), Input::Interests(wants(&[])))[..], [A::LoadCursor { or_else: 11 }]));
        // A failed load is tried again after the longest backoff.
        assert_eq!(wake_of(&f.step(ms(1), Input::CursorLoadFailed { error: "io".into() })), ms(1) + BACKOFF_MAX);
        assert!(f.tick(ms(1) + BACKOFF_MAX - ms(1)).is_empty());
        assert!(matches!(f.tick(ms(1) + BACKOFF_MAX)[..], [A::LoadCursor { or_else: 11 }]));
        // The log already holds the cursor: read at once.
        assert!(matches!(f.step(ms(6000), Input::CursorLoaded { next: 30 })[..], [A::Scan { from: 30, .. }]));
        assert_eq!(f.cursor(), Some(30));
    }

    #[test]
    fn an_acknowledged_batch_moves_the_cursor_past_all_it_scanned() {
        let (mut f, id) = scanning(11, 40);
        let records = vec![out(12, 10), out(15, 10)];
        let (send, from, next, seqs) = send_of(&f.step(ms(5), Input::Scanned { id, records, next: 41 }));
        assert_eq!((from, next, seqs), (11, 41, vec![12, 15]));
        assert_eq!(f.cursor(), Some(11), "not before the peer answered");
        let acked = f.step(ms(6), Input::Sent { id: send });
        assert!(matches!(acked[..], [A::SaveCursor { next: 41, durable: true }, A::WaitForSeq(41)]), "{acked:?}");
        assert_eq!((f.cursor(), f.forwarded(), f.last_error()), (Some(41), 2, None));
        // A late or repeated answer changes nothing.
        assert!(f.step(ms(7), Input::Sent { id: send }).is_empty());
        assert!(f.step(ms(7), Input::SendFailed { id: send, status: None, error: "late".into() }).is_empty());
        assert!(f.step(ms(7), Input::Scanned { id, records: vec![out(12, 1)], next: 41 }).is_empty());
        assert_eq!(f.cursor(), Some(41));
        assert!(matches!(f.step(ms(8), Input::Appended { last_seq: 41 })[..], [A::Scan { from: 41, .. }]));
    }

    #[test]
    fn scans_that_keep_nothing_move_on_and_save_now_and_then() {
        let (mut f, id) = scanning(1, 300_000);
        let actions = f.step(ms(10), Input::Scanned { id, records: Vec::new(), next: 100_001 });
        let [A::SaveCursor { next: 100_001, durable: false }, A::Scan { id, from: 100_001, .. }] = actions[..] else {
            panic!("{actions:?}")
        };
        // Once a second at most, the cursor is kept durably.
        let actions = f.step(ms(1000), Input::Scanned { id, records: Vec::new(), next: 200_001 });
        let [A::SaveCursor { next: 200_001, durable: true }, A::Scan { id, .. }] = actions[..] else {
            panic!("{actions:?}")
        };
        let actions = f.step(ms(1500), Input::Scanned { id, records: Vec::new(), next: 300_001 });
        assert!(matches!(actions[..], [A::SaveCursor { next: 300_001, durable: false }, A::WaitForSeq(300_001)]));
        assert_eq!(f.backoff(), BACKOFF_MIN);
    }

    #[test]
    fn a_scan_past_the_batch_limits_is_refused_as_a_failed_read() {
        let full: Vec<_> = (1..=FORWARD_BATCH_RECORDS as u64).map(|s| out(s, 1)).collect();
        assert_eq!(check_scan(1, &full, 1001), Ok(()));
        let over: Vec<_> = (1..=FORWARD_BATCH_RECORDS as u64 + 1).map(|s| out(s, 1)).collect();
        assert!(check_scan(1, &over, 1002).expect_err("over").contains("over 1000"));
        // The record that crosses the byte limit is the last one.
        let half = FORWARD_BATCH_BYTES / 2;
        assert_eq!(check_scan(1, &[out(1, half), out(2, half - 1), out(3, half)], 4), Ok(()));
        assert!(check_scan(1, &[out(1, half), out(2, half), out(3, 1)], 4).expect_err("bytes").contains("bytes"));
        assert_eq!(check_scan(1, &[out(1, FORWARD_BATCH_BYTES * 3)], 2), Ok(()), "one record always goes");
        // Order, range and the scan limit.
        assert!(check_scan(5, &[out(4, 1)], 9).is_err());
        assert!(check_scan(5, &[out(6, 1), out(6, 1)], 9).is_err());
        assert!(check_scan(5, &[out(9, 1)], 9).is_err());
        assert!(check_scan::<()>(5, &[], 4).is_err());
        assert_eq!(check_scan::<()>(5, &[], 5 + FORWARD_SCAN_MAX), Ok(()));
        assert!(check_scan::<()>(5, &[], 6 + FORWARD_SCAN_MAX).is_err());

        let (mut f, id) = scanning(5, 10);
        let actions = f.step(ms(0), Input::Scanned { id, records: vec![out(3, 1)], next: 9 });
        assert_eq!(wake_of(&actions), BACKOFF_MIN);
        assert!(
            f.last_error().is_some_and(|e| e.starts_with("forwarding: cannot read the log")),
            "{:?}",
            f.last_error()
        );
        assert_eq!(f.cursor(), Some(5));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_a_success_resets_it() {
        let (mut f, mut id) = scanning(1, 10);
        let mut now = ms(0);
        let mut delays = Vec::new();
        for _ in 0..9 {
            let (send, ..) = send_of(&f.step(now, Input::Scanned { id, records: vec![out(1, 1)], next: 11 }));
            let wake = wake_of(&f.step(now, Input::SendFailed { id: send, status: Some(503), error: "busy".into() }));
            delays.push((wake - now).as_millis());
            assert!(f.tick(wake - ms(1)).is_empty(), "not before the backoff ends");
            now = wake;
            let [A::Scan { id: again, from: 1, .. }] = f.tick(now)[..] else { panic!("rescans") };
            id = again;
        }
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(!f.stalled(), "a 5xx is not a refusal");
        assert_eq!(f.last_error(), Some("forwarding: busy"));
        let (send, ..) = send_of(&f.step(now, Input::Scanned { id, records: vec![out(1, 1)], next: 11 }));
        f.step(now, Input::Sent { id: send });
        assert_eq!((f.backoff(), f.last_error(), f.cursor()), (BACKOFF_MIN, None, Some(11)));
    }

    /// A peer that pushes its interests runs again (it restarted): the
    /// backoff from failing to reach it ends at once, and starts over from
    /// the shortest.
    #[test]
    fn interests_from_a_peer_end_the_backoff_of_failing_to_reach_it() {
        let (mut f, mut id) = scanning(1, 10);
        let mut now = ms(0);
        for _ in 0..6 {
            let (send, ..) = send_of(&f.step(now, Input::Scanned { id, records: vec![out(1, 1)], next: 11 }));
            now = wake_of(&f.step(now, Input::SendFailed { id: send, status: None, error: "refused".into() }));
            let [A::Scan { id: again, .. }] = f.tick(now)[..] else { panic!("rescans") };
            id = again;
        }
        let (send, ..) = send_of(&f.step(now, Input::Scanned { id, records: vec![out(1, 1)], next: 11 }));
        let wake = wake_of(&f.step(now, Input::SendFailed { id: send, status: None, error: "refused".into() }));
        assert_eq!(wake - now, BACKOFF_MAX);
        let back = now + ms(10);
        let actions = f.step(back, Input::Interests(wants(&[("/x/", &[])])));
        assert!(matches!(actions[..], [A::Scan { from: 1, .. }]), "{actions:?}");
        assert_eq!(f.backoff(), BACKOFF_MIN);
        // Outside a backoff, new interests change what is sent, not when.
        let (mut f, _) = scanning(1, 10);
        assert!(f.step(ms(0), Input::Interests(wants(&[("/y/", &[])]))).is_empty());
        // A stall (the peer refused a batch) keeps its pace.
        let (mut f, id) = scanning(1, 10);
        let (send, ..) = send_of(&f.step(ms(0), Input::Scanned { id, records: vec![out(1, 1)], next: 11 }));
        f.step(ms(0), Input::SendFailed { id: send, status: Some(400), error: "bad frame".into() });
        assert!(f.stalled());
        assert!(f.step(ms(10), Input::Interests(wants(&[("/x/", &[])]))).is_empty());
    }

    #[test]
    fn a_refusal_stalls_once_retries_slowly_and_clears_on_success() {
        let (mut f, id) = scanning(1, 10);
        let (send, ..) = send_of(&f.step(ms(0), Input::Scanned { id, records: vec![out(2, 1)], next: 11 }));
        let actions = f.step(ms(0), Input::SendFailed { id: send, status: Some(400), error: "bad frame".into() });
        assert!(
            matches!(&actions[..], [A::Stalled { error }, A::WakeAt(t)] if error == "bad frame" && *t == BACKOFF_MAX)
        );
        assert!(f.stalled());
        let [A::Scan { id, .. }] = f.tick(BACKOFF_MAX)[..] else { panic!("rescans") };
        let (send, ..) = send_of(&f.step(BACKOFF_MAX, Input::Scanned { id, records: vec![out(2, 1)], next: 11 }));
        let again = f.step(BACKOFF_MAX, Input::SendFailed { id: send, status: Some(413), error: "too big".into() });
        assert!(matches!(again[..], [A::WakeAt(t)] if t == BACKOFF_MAX * 2), "said once: {again:?}");
        // A success ends the stall.
        let [A::Scan { id, .. }] = f.tick(BACKOFF_MAX * 2)[..] else { panic!("rescans") };
        let (send, ..) = send_of(&f.step(BACKOFF_MAX * 2, Input::Scanned { id, records: vec![out(2, 1)], next: 11 }));
        f.step(BACKOFF_MAX * 2, Input::Sent { id: send });
        assert!(!f.stalled() && f.last_error().is_none());
        assert_eq!(f.cursor(), Some(11), "the batch was never skipped");
    }

    #[test]
    fn a_trimmed_range_becomes_one_gap_marker_and_a_conflict_is_retried() {
        let (mut f, id) = scanning(11, 90);
        let actions = f.step(ms(0), Input::Compacted { id, earliest: 50 });
        let [A::SendGap { id: gap, from: 11, to: 49 }] = actions[..] else { panic!("{actions:?}") };
        let failed = f.step(ms(0), Input::SendFailed { id: gap, status: Some(409), error: "gap_refused".into() });
        assert!(!f.stalled() && wake_of(&failed) == BACKOFF_MIN);
        let [A::Scan { id, from: 11, .. }] = f.tick(BACKOFF_MIN)[..] else { panic!("rescans") };
        let [A::SendGap { id: gap, from: 11, to: 49 }] = f.step(BACKOFF_MIN, Input::Compacted { id, earliest: 50 })[..]
        else {
            panic!("gap again")
        };
        let acked = f.step(BACKOFF_MIN, Input::Sent { id: gap });
        assert!(matches!(acked[..], [A::SaveCursor { next: 50, durable: true }, A::Scan { from: 50, .. }]));
        assert_eq!(f.forwarded(), 0, "a gap forwards no record");
        // A log that claims to start at or below the cursor is not trimmed.
        let (mut f, id) = scanning(11, 90);
        assert_eq!(wake_of(&f.step(ms(0), Input::Compacted { id, earliest: 11 })), BACKOFF_MIN);
        assert_eq!(f.cursor(), Some(11));
    }

    #[test]
    fn interests_that_change_during_a_read_make_it_read_again() {
        for answer in 0..3 {
            let (mut f, id) = scanning(11, 90);
            assert!(f.step(ms(0), Input::Interests(wants(&[("/y/", &[])]))).is_empty());
            let result = match answer {
                0 => Input::Scanned { id, records: vec![out(12, 1)], next: 91 },
                1 => Input::Compacted { id, earliest: 20 },
                _ => Input::ScanFailed { id, error: "io".into() },
            };
            let actions = f.step(ms(0), result);
            let [A::Scan { from: 11, ref filter, .. }] = actions[..] else { panic!("{actions:?}") };
            assert!(filter.keep("a", Some(("/y/z/", "t"))) && !filter.keep("a", Some(("/x/", "t"))));
        }
        // During a send, new interests wait for the next read.
        let (mut f, id) = scanning(11, 90);
        let (send, ..) = send_of(&f.step(ms(0), Input::Scanned { id, records: vec![out(12, 1)], next: 91 }));
        assert!(f.step(ms(0), Input::Interests(wants(&[("/y/", &[])]))).is_empty());
        assert!(matches!(
            f.step(ms(0), Input::Sent { id: send })[..],
            [A::SaveCursor { next: 91, .. }, A::WaitForSeq(91)]
        ));
    }

    #[test]
    fn a_read_past_the_head_waits_for_the_log() {
        let (mut f, id) = scanning(11, 90);
        // The log turned out shorter than thought: wait for it.
        assert!(matches!(f.step(ms(0), Input::Scanned { id, records: Vec::new(), next: 11 })[..], [A::WaitForSeq(11)]));
        assert!(matches!(f.step(ms(0), Input::Appended { last_seq: 10 })[..], [A::WaitForSeq(11)]));
        assert!(matches!(f.step(ms(0), Input::Appended { last_seq: 11 })[..], [A::Scan { from: 11, .. }]));
    }
}
