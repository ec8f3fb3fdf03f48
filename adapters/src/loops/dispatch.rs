//! The dispatcher: one pass over the log routes every record to the live
//! subscribers (lease streams and watches) it matches.
//!
//! The decisions are [`pepper_router::Dispatch`]'s: which subscribers a
//! record goes to, where each joins (the handoff from its own cursor, with
//! no gap and no duplicate), when a lease's end closes its stream, and
//! where a detached subscriber resumes. This module carries them out. One
//! task per site follows the log with a single change feed (while anyone
//! is subscribed; an idle site reads nothing back), steps the machine with
//! each record, encodes an event's JSON once, and pushes a shared copy into
//! each receiver's bounded buffer ([`SUBSCRIBER_BUFFER_EVENTS`] events by
//! default, and at most [`SUBSCRIBER_BUFFER_BYTES_MAX`] of JSON). It never
//! waits for a subscriber: a push that finds the buffer full is reported
//! back to the machine, which detaches that subscriber with the sequence
//! number it must resume from; its stream then drains what it has and ends
//! with that position (never a silent skip).
//!
//! Rejected: one feed per subscriber (the first version). It is correct by
//! construction, but every commit wakes every subscriber to re-read the log,
//! so with 1,000 leases each event cost 1,000 disk reads and the delivery
//! p99 grew past 60 ms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use pepper_router::HANDOFF_LAG_MAX;
use pepper_router::{
    Detach, Dispatch, DispatchAction as Action, DispatchInput as Input, EndReason, EventHead, Meaning, Routed,
    Subscriber,
};
use pepper_storage::{Body, Feed, FeedItem, Filter, Kind, Record, Store};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::wire::envelope::EventOut;

/// Default for the most events buffered for one subscriber between the
/// dispatcher and its socket (`stream_buffer_events` in the site's
/// settings). A subscriber whose buffer is full is disconnected with the
/// sequence number to resume from.
pub const SUBSCRIBER_BUFFER_EVENTS: usize = 1024;

/// Most bytes of event JSON buffered for one subscriber, whatever the
/// event count: a subscriber over it is disconnected like one whose buffer
/// is full. (Events are shared between subscribers, so this bounds what one
/// slow client can pin in memory.)
pub const SUBSCRIBER_BUFFER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most registrations and departures queued for the dispatcher.
pub const DISPATCH_COMMANDS_MAX: usize = 4096;

/// How often the dispatcher drops subscribers whose stream has gone.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What one subscriber wants: the router's [`Subscriber`].
pub(crate) type Subscription = Subscriber;

/// The records a subscriber's own feed reads.
pub(crate) fn filter(sub: &Subscription) -> Filter {
    let mut kinds = vec![Kind::Event];
    if sub.lease.is_some() {
        kinds.extend([Kind::LeaseRelease, Kind::LeaseExpire]);
    }
    if sub.tuples {
        kinds.extend([Kind::TupleExpire, Kind::TupleDelete]);
    }
    Filter { kinds, ..Filter::default() }
}

/// A stored record as routing sees it.
pub fn routed(record: &Record) -> Routed<'_> {
    match &record.body {
        Body::Event(e) => Routed::Event(EventHead {
            channel: &e.channel,
            event_type: &e.event_type,
            to_service: e.to.service.as_deref(),
            to_instance: e.to.instance.as_deref(),
            one: e.distribution == pepper_storage::Distribution::One,
            assigned: &e.assigned,
        }),
        Body::TupleExpire(t) | Body::TupleDelete(t) => Routed::TupleEnd { channel: &t.channel },
        Body::LeaseRelease(end) => Routed::LeaseEnd { lease: &end.id, reason: EndReason::Released },
        Body::LeaseExpire(end) => Routed::LeaseEnd { lease: &end.id, reason: EndReason::Expired },
        _ => Routed::Other,
    }
}

/// What `record` means to `sub` (the catch-up reader asks this; the
/// dispatcher asks the machine).
pub(crate) fn meaning(sub: &Subscription, record: &Record) -> Meaning {
    sub.meaning(record.seq, &routed(record))
}

/// An event ready for the wire: its JSON is encoded once, whatever the
/// number of receivers.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub seq: u64,
    pub event_type: String,
    pub json: String,
}

impl Outgoing {
    /// An event, or a tuple's end (`tuple.expired` or `tuple.deleted`).
    pub(crate) fn from_record(record: &Record) -> Option<Outgoing> {
        let (t, reason) = match &record.body {
            Body::TupleExpire(t) => (t, pepper_storage::TombstoneReason::Expired),
            Body::TupleDelete(t) => (t, pepper_storage::TombstoneReason::Deleted),
            _ => {
                let out = EventOut::from_record(record)?;
                let json = serde_json::to_string(&out).ok()?;
                return Some(Outgoing { seq: record.seq, event_type: out.event_type, json });
            }
        };
        let gone = pepper_storage::Tombstone {
            channel: t.channel.clone(),
            field: t.field.clone(),
            seq: record.seq,
            time_us: record.time_us,
            reason,
        };
        let json = crate::wire::tuples::tombstone_json(&gone).to_string();
        Some(Outgoing { seq: record.seq, event_type: format!("tuple.{}", reason.name()), json })
    }
}

/// What the dispatcher sends a live subscriber.
#[derive(Debug)]
pub(crate) enum Item {
    Event(Arc<Outgoing>),
    LeaseEnded { seq: u64, reason: &'static str },
}

/// A registered subscriber's end of the live stream.
pub(crate) struct Live {
    /// The items at or above `from`, in sequence order.
    rx: mpsc::Receiver<Item>,
    /// Bytes of event JSON in `rx`.
    queued: Arc<AtomicUsize>,
    /// The dispatcher's position when it registered the subscriber: the
    /// subscriber reads anything below it (and at or above its own cursor)
    /// from the log.
    pub from: u64,
    /// Why and where the dispatcher detached the subscriber, if it did.
    detached: Arc<Detached>,
    id: u64,
    commands: mpsc::Sender<Command>,
}

impl Live {
    /// The next item, or `None` once the dispatcher detached the subscriber
    /// (see [`Live::detached`]) or stopped.
    pub(crate) async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await?;
        if let Item::Event(out) = &item {
            self.queued.fetch_sub(out.json.len(), Ordering::AcqRel);
        }
        Some(item)
    }

    /// Why the dispatcher detached this subscriber, and the first sequence
    /// number it did not deliver; `None` if it did not (the site is
    /// stopping).
    pub(crate) fn detached(&self) -> Option<(Detach, u64)> {
        self.detached.get()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // If the queue is full, the periodic sweep finds the closed buffer.
        let _ = self.commands.try_send(Command::Leave { id: self.id });
    }
}

/// Where the dispatcher records a detach, for the subscriber to read after
/// its buffer runs dry. Written before the sender is dropped.
#[derive(Debug, Default)]
struct Detached {
    why: AtomicU8,
    at: AtomicU64,
}

impl Detached {
    fn set(&self, why: Detach, at: u64) {
        let code = match why {
            Detach::Full => 1,
            Detach::Bytes => 2,
            Detach::Behind => 3,
            Detach::Failed => 4,
        };
        self.at.store(at, Ordering::Release);
        self.why.store(code, Ordering::Release);
    }

    fn get(&self) -> Option<(Detach, u64)> {
        let why = match self.why.load(Ordering::Acquire) {
            1 => Detach::Full,
            2 => Detach::Bytes,
            3 => Detach::Behind,
            4 => Detach::Failed,
            _ => return None,
        };
        Some((why, self.at.load(Ordering::Acquire)))
    }
}

/// Why a registration failed.
#[derive(Debug)]
pub(crate) enum RegisterError {
    /// The dispatcher has stopped: the site is shutting down.
    Stopped,
}

enum Command {
    Join { sub: Subscription, from: u64, reply: oneshot::Sender<Live> },
    Leave { id: u64 },
}

/// The handle to the site's dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    commands: mpsc::Sender<Command>,
}

impl Dispatcher {
    /// Starts the dispatcher on `store`, from the log's head, until
    /// `stopping` turns true or the store closes.
    pub(crate) fn spawn(
        store: Store,
        metrics: Arc<Metrics>,
        stopping: watch::Receiver<bool>,
        buffer_events: usize,
    ) -> Dispatcher {
        let (commands, rx) = mpsc::channel(DISPATCH_COMMANDS_MAX);
        let task = Task {
            store,
            metrics,
            commands: commands.clone(),
            machine: Dispatch::new(),
            buffers: HashMap::new(),
            next_id: 1,
            actions: Vec::new(),
            buffer_events,
        };
        tokio::spawn(task.run(rx, stopping));
        Dispatcher { commands }
    }

    /// Joins the live stream for `sub`, whose own cursor is at `from`.
    pub(crate) async fn join(&self, sub: Subscription, from: u64) -> Result<Live, RegisterError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Join { sub, from, reply }).await.map_err(|_| RegisterError::Stopped)?;
        rx.await.map_err(|_| RegisterError::Stopped)
    }
}

async fn next_item(feed: &mut Option<Feed>) -> pepper_storage::Result<FeedItem> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

/// A live subscriber's buffer, as the driver holds it.
struct Entry {
    tx: mpsc::Sender<Item>,
    detached: Arc<Detached>,
    /// Bytes of event JSON sent and not yet received.
    queued: Arc<AtomicUsize>,
    /// The lease whose stream this is, for the log.
    lease: Option<String>,
}

struct Task {
    store: Store,
    metrics: Arc<Metrics>,
    commands: mpsc::Sender<Command>,
    machine: Dispatch,
    buffers: HashMap<u64, Entry>,
    next_id: u64,
    /// The machine's actions for one input (reused).
    actions: Vec<Action>,
    /// Each subscriber's buffer, in events.
    buffer_events: usize,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut stopping: watch::Receiver<bool>) {
        // `None` while nobody is subscribed: an idle site reads nothing back
        // from its log. A join starts a feed at the head; the subscriber
        // reads anything before that itself.
        let mut feed: Option<Feed> = None;
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                biased;
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => break,
                command = commands.recv() => match command {
                    Some(Command::Join { sub, from, reply }) => {
                        let feed = feed.get_or_insert_with(|| self.store.feed(self.store.last_seq() + 1, Self::filter()));
                        self.join(sub, from, feed.position(), reply);
                    }
                    Some(Command::Leave { id }) => self.step(Input::Leave { id }, None),
                    None => break,
                },
                next = next_item(&mut feed), if feed.is_some() => match next {
                    Ok(FeedItem::Record(record)) => {
                        self.step(Input::Record { seq: record.seq, record: routed(&record) }, Some(&record));
                    }
                    Ok(FeedItem::Compacted { earliest }) => {
                        // Retention overtook the dispatcher itself: detach
                        // everyone at its position; each resumes from its own
                        // cursor, or learns it was compacted.
                        let at = feed.as_ref().map_or(earliest, Feed::position);
                        tracing::warn!(position = at, earliest, "dispatcher fell behind retention");
                        self.step(Input::Lost { why: Detach::Behind, at }, None);
                    }
                    Err(pepper_storage::Error::Closed) => break,
                    Err(e) => {
                        // Ending every stream sends each client back to its
                        // own cursor, where it meets the same error with a
                        // message, instead of waiting on a silent feed.
                        tracing::error!(error = %e, "dispatcher feed failed; ending live streams");
                        let at = feed.as_ref().map_or(0, Feed::position);
                        self.step(Input::Lost { why: Detach::Failed, at }, None);
                    }
                },
                _ = sweep.tick() => {
                    let gone: Vec<u64> =
                        self.buffers.iter().filter(|(_, e)| e.tx.is_closed()).map(|(id, _)| *id).collect();
                    gone.into_iter().for_each(|id| self.step(Input::Leave { id }, None));
                }
            }
            if self.machine.is_empty() {
                feed = None;
            }
        }
        tracing::debug!(subscribers = self.machine.len(), "dispatcher stopped");
    }

    /// The records the dispatcher reads: events, the lease ends that close
    /// lease streams, and tuple ends.
    fn filter() -> Filter {
        let kinds = vec![Kind::Event, Kind::LeaseRelease, Kind::LeaseExpire, Kind::TupleExpire, Kind::TupleDelete];
        Filter { kinds, ..Filter::default() }
    }

    fn join(&mut self, sub: Subscription, from: u64, position: u64, reply: oneshot::Sender<Live>) {
        let id = self.next_id;
        self.next_id += 1;
        // One slot more than the events may fill: a lease's end always fits.
        let (tx, rx) = mpsc::channel(self.buffer_events + 1);
        let detached = Arc::new(Detached::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let live = Live {
            rx,
            queued: queued.clone(),
            from: position,
            detached: detached.clone(),
            id,
            commands: self.commands.clone(),
        };
        if reply.send(live).is_err() {
            // The subscriber went away while it waited.
            return;
        }
        let lease = sub.lease.clone();
        self.buffers.insert(id, Entry { tx, detached, queued, lease });
        self.step(Input::Join { id, subscriber: sub, from, position }, None);
    }

    /// Steps the machine with `input` and carries out what it says;
    /// `record` is the record a [`Input::Record`] routes.
    fn step(&mut self, input: Input<'_>, record: Option<&Record>) {
        if let Input::Leave { id } = input {
            self.buffers.remove(&id);
        }
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        self.machine.step(input, &mut actions);
        let mut out: Option<Arc<Outgoing>> = None;
        let mut delivered = 0u64;
        let mut refused = Vec::new();
        for action in actions.drain(..) {
            match action {
                Action::Deliver { id, seq } => {
                    let Some(record) = record else { continue };
                    let item = match &out {
                        Some(item) => item.clone(),
                        None => match Outgoing::from_record(record) {
                            Some(o) => out.insert(Arc::new(o)).clone(),
                            None => break,
                        },
                    };
                    match self.push(id, item) {
                        Ok(()) => delivered += 1,
                        Err(Some(why)) => refused.push(Input::Refused { id, seq, why }),
                        Err(None) => refused.push(Input::Leave { id }),
                    }
                }
                Action::End { id, seq, reason } => {
                    if let Some(entry) = self.buffers.remove(&id) {
                        // The last slot is kept for the lease's end, so this
                        // fails only if the stream has gone.
                        if let Err(TrySendError::Full(_)) =
                            entry.tx.try_send(Item::LeaseEnded { seq, reason: reason.name() })
                        {
                            tracing::error!(subscriber = id, seq, "no slot left for a lease's end");
                        }
                    }
                }
                Action::Detach { id, why, at } => {
                    if let Some(entry) = self.buffers.remove(&id) {
                        entry.detached.set(why, at);
                        if matches!(why, Detach::Full | Detach::Bytes) {
                            self.metrics.overflows.inc();
                        }
                        tracing::info!(subscriber = id, lease = ?entry.lease, ?why, resume_seq = at, "live stream detached");
                    }
                }
                Action::Unroutable { seq } => {
                    // The store takes only channels the router parses; this
                    // came from a damaged log.
                    let channel = record.and_then(|r| r.body.channel()).unwrap_or_default();
                    tracing::warn!(seq, %channel, "record on an unroutable channel");
                }
            }
        }
        self.actions = actions;
        if let Some(record) = record.filter(|_| delivered > 0) {
            self.metrics.deliveries.inc_by(delivered);
            self.metrics.delivery_lag.observe(self.store.last_seq().saturating_sub(record.seq) as f64);
        }
        for input in refused {
            self.step(input, None);
        }
    }

    /// Pushes `item` into `id`'s buffer: `Err(Some(why))` when the buffer
    /// is full, `Err(None)` when the subscriber has gone.
    fn push(&mut self, id: u64, item: Arc<Outgoing>) -> Result<(), Option<Detach>> {
        let Some(entry) = self.buffers.get(&id) else { return Err(None) };
        // The last slot is kept for the lease's end.
        if entry.tx.capacity() <= 1 {
            return Err(Some(Detach::Full));
        }
        let bytes = item.json.len();
        if entry.queued.load(Ordering::Acquire) + bytes > SUBSCRIBER_BUFFER_BYTES_MAX {
            return Err(Some(Detach::Bytes));
        }
        entry.queued.fetch_add(bytes, Ordering::AcqRel);
        match entry.tx.try_send(Item::Event(item)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Some(Detach::Full)),
            Err(TrySendError::Closed(_)) => Err(None),
        }
    }
}
