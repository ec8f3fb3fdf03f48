//! The dispatcher: one pass over the log routes every record to the live
//! subscribers (lease streams and watches) it matches.
//!
//! One task per site follows the log with a single change feed (while
//! anyone is subscribed; an idle site reads nothing back). For each
//! event it walks the routing trie ([`pepper_router::Trie`]) of the
//! subscribers' channel patterns, O(depth) whatever their number, checks
//! each hit's type filter, `to` and anycast assignment, encodes the event's
//! JSON once, and pushes a shared copy into each receiver's bounded buffer
//! ([`SUBSCRIBER_BUFFER_EVENTS`] events by default, and at most
//! [`SUBSCRIBER_BUFFER_BYTES_MAX`] of JSON). It never waits for a subscriber: a push
//! that finds the buffer full detaches that subscriber and records the
//! sequence number it must resume from; its stream then drains what it has
//! and ends with that position (never a silent skip). A lease's release or
//! expire record ends its streams the same way, in log order.
//!
//! **Handoff.** A subscriber starts on its own cursor: it catches up from the
//! log with its own feed, and registers here once it is within
//! [`HANDOFF_LAG_MAX`] records of the head, giving the sequence number it
//! will read next (`from`). The dispatcher handles the registration between
//! two records, at its position `D` (every record below `D` is dispatched,
//! none at or above it). From then on it sends the subscriber every match at
//! or above `max(from, D)`. If `D > from`, the subscriber reads `[from, D)`
//! from the log itself before it reads its buffer. So the catch-up and live
//! parts meet exactly: no gap, no duplicate, in sequence order.
//!
//! Distribution `one` needs no state here: the writer stored the chosen
//! lease of each group in the event (`Event::assigned`), and live delivery
//! and catch-up read the same answer.
//!
//! Rejected: one feed per subscriber (the first version). It is correct by
//! construction, but every commit wakes every subscriber to re-read the log,
//! so with 1,000 leases each event cost 1,000 disk reads and the delivery
//! p99 grew past 60 ms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pepper_router::{Channel, Pattern, Trie};
use pepper_storage::{Body, Event, Feed, FeedItem, Filter, Kind, Party, Record, Store};
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

/// A catching-up subscriber joins the live stream once it is at most this
/// many records behind the log's head; it reads that gap from the log
/// itself while its buffer fills.
pub const HANDOFF_LAG_MAX: u64 = 256;

/// Most registrations and departures queued for the dispatcher.
pub const DISPATCH_COMMANDS_MAX: usize = 4096;

/// How often the dispatcher drops subscribers whose stream has gone.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What one subscriber wants.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub pattern: Pattern,
    /// Payload types; empty means all.
    pub types: Vec<String>,
    /// The lease whose end closes the stream; `None` for a watch.
    pub lease: Option<String>,
    /// The lease holder, matched against each event's `to`; a watch has no
    /// holder and receives every matching event.
    pub holder: Option<Party>,
    /// The lease's anycast group: it receives a distribution-`one` event
    /// only if the writer assigned the event to it.
    pub group: Option<String>,
    /// The sequence number of the lease's grant (0 for a watch). Lease ids
    /// can be reused once a lease ends: an end record or an anycast
    /// assignment at or below it belongs to an earlier lease of that id.
    pub granted_seq: u64,
    /// Whether the stream also carries tuple ends (`tuple.expired`,
    /// `tuple.deleted`): a watch with `snapshot=true`.
    pub tuples: bool,
}

/// What a log record means to one subscriber.
pub(crate) enum Wants {
    Event,
    LeaseEnded { reason: &'static str },
    Nothing,
}

impl Subscription {
    /// The records a subscriber's own feed reads.
    pub(crate) fn filter(&self) -> Filter {
        let mut kinds = vec![Kind::Event];
        if self.lease.is_some() {
            kinds.extend([Kind::LeaseRelease, Kind::LeaseExpire]);
        }
        if self.tuples {
            kinds.extend([Kind::TupleExpire, Kind::TupleDelete]);
        }
        Filter { kinds, ..Filter::default() }
    }

    /// Whether an event whose channel the pattern matches is for this
    /// subscriber: its type, its `to`, and for distribution `one`, the
    /// writer's choice.
    fn wants_event(&self, seq: u64, e: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&e.event_type) || e.event_type == crate::wire::frames::GAP_TYPE)
            && self.holder.as_ref().is_none_or(|h| e.to.admits(h))
            && match (&self.group, &self.lease) {
                (Some(_), Some(lease)) if e.distribution == pepper_storage::Distribution::One => {
                    seq > self.granted_seq && e.assigned.contains(lease)
                }
                _ => true,
            }
    }

    /// Whether a release or expire record of lease `id` at `seq` ends this
    /// subscriber's lease.
    fn ended_by(&self, seq: u64, id: &str) -> bool {
        seq > self.granted_seq && self.lease.as_deref() == Some(id)
    }

    /// What `record` means to this subscriber.
    pub(crate) fn wants(&self, record: &Record) -> Wants {
        match &record.body {
            Body::Event(e) if self.pattern.matches_name(&e.channel) && self.wants_event(record.seq, e) => Wants::Event,
            Body::TupleExpire(t) | Body::TupleDelete(t) if self.tuples && self.pattern.matches_name(&t.channel) => {
                Wants::Event
            }
            Body::LeaseRelease(end) if self.ended_by(record.seq, &end.id) => Wants::LeaseEnded { reason: "released" },
            Body::LeaseExpire(end) if self.ended_by(record.seq, &end.id) => Wants::LeaseEnded { reason: "expired" },
            _ => Wants::Nothing,
        }
    }
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

/// Why the dispatcher detached a live subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detach {
    /// Its buffer held `stream_buffer_events` events.
    Full = 1,
    /// Its buffer held [`SUBSCRIBER_BUFFER_BYTES_MAX`] bytes of JSON.
    Bytes = 2,
    /// Retention trimmed the log ahead of the dispatcher itself.
    Behind = 3,
    /// The dispatcher's feed failed (the site's log says why).
    Failed = 4,
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
        self.at.store(at, Ordering::Release);
        self.why.store(why as u8, Ordering::Release);
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
            trie: Trie::new(),
            subscribers: HashMap::new(),
            by_lease: HashMap::new(),
            next_id: 1,
            hits: Vec::new(),
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

struct Entry {
    sub: Subscription,
    /// The lowest sequence number this subscriber takes from the dispatcher.
    from: u64,
    tx: mpsc::Sender<Item>,
    detached: Arc<Detached>,
    /// Bytes of event JSON sent and not yet received.
    queued: Arc<AtomicUsize>,
}

struct Task {
    store: Store,
    metrics: Arc<Metrics>,
    commands: mpsc::Sender<Command>,
    trie: Trie<u64>,
    subscribers: HashMap<u64, Entry>,
    by_lease: HashMap<String, Vec<u64>>,
    next_id: u64,
    /// Scratch space for one record's trie hits.
    hits: Vec<u64>,
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
                    Some(Command::Leave { id }) => self.remove(id),
                    None => break,
                },
                next = next_item(&mut feed), if feed.is_some() => match next {
                    Ok(FeedItem::Record(record)) => self.dispatch(&record),
                    Ok(FeedItem::Compacted { earliest }) => {
                        // Retention overtook the dispatcher itself: detach
                        // everyone at its position; each resumes from its own
                        // cursor, or learns it was compacted.
                        let at = feed.as_ref().map_or(earliest, Feed::position);
                        tracing::warn!(position = at, earliest, "dispatcher fell behind retention");
                        self.detach_all(Detach::Behind, at);
                    }
                    Err(pepper_storage::Error::Closed) => break,
                    Err(e) => {
                        // Ending every stream sends each client back to its
                        // own cursor, where it meets the same error with a
                        // message, instead of waiting on a silent feed.
                        tracing::error!(error = %e, "dispatcher feed failed; ending live streams");
                        let at = feed.as_ref().map_or(0, Feed::position);
                        self.detach_all(Detach::Failed, at);
                    }
                },
                _ = sweep.tick() => {
                    let gone: Vec<u64> =
                        self.subscribers.iter().filter(|(_, e)| e.tx.is_closed()).map(|(id, _)| *id).collect();
                    gone.into_iter().for_each(|id| self.remove(id));
                }
            }
            if self.subscribers.is_empty() {
                feed = None;
            }
        }
        tracing::debug!(subscribers = self.subscribers.len(), "dispatcher stopped");
    }

    /// The records the dispatcher reads: events, and the lease ends that
    /// close lease streams.
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
        self.trie.insert(&sub.pattern, id);
        if let Some(lease) = &sub.lease {
            self.by_lease.entry(lease.clone()).or_default().push(id);
        }
        self.subscribers.insert(id, Entry { sub, from: from.max(position), tx, detached, queued });
    }

    fn remove(&mut self, id: u64) {
        let Some(entry) = self.subscribers.remove(&id) else { return };
        self.trie.remove(&entry.sub.pattern, &id);
        if let Some(lease) = &entry.sub.lease {
            if let Some(ids) = self.by_lease.get_mut(lease) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_lease.remove(lease);
                }
            }
        }
    }

    /// Detaches subscriber `id`; `at` is the first sequence number it did
    /// not get (never below where it joined).
    fn detach(&mut self, id: u64, why: Detach, at: u64) {
        if let Some(entry) = self.subscribers.get(&id) {
            let at = at.max(entry.from);
            entry.detached.set(why, at);
            if matches!(why, Detach::Full | Detach::Bytes) {
                self.metrics.overflows.inc();
            }
            tracing::info!(subscriber = id, lease = ?entry.sub.lease, ?why, resume_seq = at, "live stream detached");
        }
        self.remove(id);
    }

    fn detach_all(&mut self, why: Detach, at: u64) {
        for id in self.subscribers.keys().copied().collect::<Vec<_>>() {
            self.detach(id, why, at);
        }
    }

    fn send(&mut self, id: u64, item: Item, seq: u64) -> bool {
        let Some(entry) = self.subscribers.get(&id) else { return false };
        if let Item::Event(out) = &item {
            // The last slot is kept for the lease's end.
            if entry.tx.capacity() <= 1 {
                self.detach(id, Detach::Full, seq);
                return false;
            }
            let bytes = out.json.len();
            if entry.queued.load(Ordering::Acquire) + bytes > SUBSCRIBER_BUFFER_BYTES_MAX {
                self.detach(id, Detach::Bytes, seq);
                return false;
            }
            entry.queued.fetch_add(bytes, Ordering::AcqRel);
        }
        match entry.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.detach(id, Detach::Full, seq);
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.remove(id);
                false
            }
        }
    }

    /// Sends `record`, on `channel`, to every subscriber whose pattern
    /// covers the channel and that `wants` it.
    fn route(&mut self, record: &Record, channel: &str, wants: impl Fn(&Subscription) -> bool) {
        let Ok(channel) = Channel::parse(channel) else {
            // The store takes only channels the router parses; anything else
            // came from a damaged log.
            tracing::warn!(seq = record.seq, %channel, "record on an unroutable channel");
            return;
        };
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        self.trie.for_each_match(&channel, |id| hits.push(*id));
        let mut out: Option<Arc<Outgoing>> = None;
        let mut delivered = 0u64;
        for &id in &hits {
            let Some(entry) = self.subscribers.get(&id) else { continue };
            if record.seq < entry.from || !wants(&entry.sub) {
                continue;
            }
            let item = match &out {
                Some(item) => item.clone(),
                None => match Outgoing::from_record(record) {
                    Some(o) => out.insert(Arc::new(o)).clone(),
                    None => break,
                },
            };
            if self.send(id, Item::Event(item), record.seq) {
                delivered += 1;
            }
        }
        self.hits = hits;
        if delivered > 0 {
            self.metrics.deliveries.inc_by(delivered);
            self.metrics.delivery_lag.observe(self.store.last_seq().saturating_sub(record.seq) as f64);
        }
    }

    fn dispatch(&mut self, record: &Record) {
        match &record.body {
            Body::Event(e) => self.route(record, &e.channel, |sub| sub.wants_event(record.seq, e)),
            Body::TupleExpire(t) | Body::TupleDelete(t) => self.route(record, &t.channel, |sub| sub.tuples),
            Body::LeaseRelease(end) | Body::LeaseExpire(end) => {
                let reason = if matches!(record.body, Body::LeaseRelease(_)) { "released" } else { "expired" };
                for id in self.by_lease.get(&end.id).cloned().unwrap_or_default() {
                    let ends = |e: &Entry| record.seq >= e.from && e.sub.ended_by(record.seq, &end.id);
                    if self.subscribers.get(&id).is_some_and(ends) {
                        self.send(id, Item::LeaseEnded { seq: record.seq, reason }, record.seq);
                        self.remove(id);
                    }
                }
            }
            _ => {}
        }
    }
}
