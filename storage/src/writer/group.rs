//! The group-commit loop: one thread, one batch and one WAL sync per group.
//!
//! The writer takes the first queued request, drains whatever else is
//! already queued (up to [`GROUP_RECORDS_MAX`] records or
//! [`GROUP_BYTES_MAX`] bytes), builds one batch from all of them
//! ([`crate::writer::append`], [`crate::writer::trim`]) and writes it with
//! one engine write, synced under `sync`. Only then does it publish the new
//! durable sequence number to feeds and answer the callers. A monitor change
//! is a group of its own ([`crate::writer::monitor`]).
//!
//! What can go wrong, and what each caller hears:
//!
//! - a request that fails its checks gets its error at once and consumes no
//!   sequence number; the rest of its group commits;
//! - a request that fails while its records were going into the batch (a
//!   read error, say) aborts the whole group unwritten: the batch may hold
//!   part of it. Every caller in the group hears `Corruption`; nothing
//!   reached the engine, so the store is not poisoned;
//! - a failed write or sync poisons the store: the outcome on disk is
//!   unknown, so every caller of the group and every later request hears
//!   `Poisoned` until the store is reopened and recovery decides;
//! - a panic while building or writing a group (a bug) poisons the store
//!   the same way. The answers of the group are held outside the code that
//!   may panic, so every waiting caller hears `Poisoned` rather than a
//!   closed channel, and the store says why through
//!   [`crate::Store::poisoned`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::engine::Batch;
use crate::error::{Error, Result};
use crate::fold::Committed;
use crate::limits::{BATCH_BUFFER_KEPT_BYTES_MAX, GROUP_BYTES_MAX, GROUP_RECORDS_MAX};
use crate::options::Durability;
use crate::retention::TrimPlan;
use crate::shared::Shared;
use crate::writer::append::{self, Outcome};
use crate::writer::monitor;
use crate::writer::request::{Appended, MonitorOp, Origin, Prepared, Reply, Request};
use crate::writer::state::{Draft, LogTail, Overlays, WriterState};
use crate::writer::trim;

/// The work of one request of a group, split from its reply.
enum Work {
    Append {
        records: Vec<Prepared>,
        origin: Option<Origin>,
    },
    Trim {
        plan: TrimPlan,
    },
    /// Never grouped (see [`Writer::run`]); refused if it were.
    Monitor {
        pattern: String,
    },
}

/// Where one request's answer goes. A group's answers stay with the loop,
/// outside the code that may panic.
enum Answer {
    Append(Reply<Appended>),
    Trim(Reply<()>),
}

impl Answer {
    fn fail(self, e: Error) {
        match self {
            Answer::Append(reply) => {
                let _ = reply.send(Err(e));
            }
            Answer::Trim(reply) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// Answers request `i` with `e`, unless it was answered already.
fn fail(answers: &mut [Option<Answer>], i: usize, e: Error) {
    if let Some(answer) = answers.get_mut(i).and_then(Option::take) {
        answer.fail(e);
    }
}

/// Splits a request into its work and its answer.
fn split(req: Request) -> (Work, Answer) {
    match req {
        Request::Append { records, origin, reply, .. } => (Work::Append { records, origin }, Answer::Append(reply)),
        Request::Trim { plan, reply } => (Work::Trim { plan }, Answer::Trim(reply)),
        Request::Monitor { op, reply } => (Work::Monitor { pattern: op.pattern().to_string() }, Answer::Append(reply)),
    }
}

/// The writer thread's state. Only the writer thread touches it.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// Whether a write is synced before it is acknowledged.
    sync: bool,
    state: WriterState,
    /// The batch buffer, kept from one group to the next.
    batch: Batch,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, durability: Durability, state: WriterState) -> Writer {
        let sync = durability == Durability::Sync;
        Writer { shared, sync, state, batch: Batch::new() }
    }

    /// Runs until every sender is dropped, then returns.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut pending: Option<Request> = None;
        loop {
            let first = match pending.take() {
                Some(r) => r,
                None => match rx.blocking_recv() {
                    Some(r) => r,
                    None => return,
                },
            };
            if let Request::Monitor { op, reply } = first {
                let answer = match catch_unwind(AssertUnwindSafe(|| self.commit_monitor(op))) {
                    Ok(answer) => answer,
                    Err(panic) => Err(Error::Poisoned(self.poison_after_panic(panic.as_ref()))),
                };
                let _ = reply.send(answer);
                continue;
            }
            let (mut records, mut bytes) = first.size();
            let mut group = vec![first];
            while let Ok(next) = rx.try_recv() {
                // A monitor change is a group of its own.
                if matches!(next, Request::Monitor { .. }) {
                    pending = Some(next);
                    break;
                }
                let (r, b) = next.size();
                if records + r > GROUP_RECORDS_MAX || bytes + b > GROUP_BYTES_MAX {
                    pending = Some(next);
                    break;
                }
                records += r;
                bytes += b;
                group.push(next);
            }
            let (work, mut answers): (Vec<Work>, Vec<Option<Answer>>) =
                group.into_iter().map(split).map(|(w, a)| (w, Some(a))).unzip();
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.commit_group(work, &mut answers))) {
                let reason = self.poison_after_panic(panic.as_ref());
                for answer in answers.into_iter().flatten() {
                    answer.fail(Error::Poisoned(reason.clone()));
                }
            }
        }
    }

    /// Poisons the store after a panic on this thread and returns the reason
    /// every waiting and later caller gets.
    fn poison_after_panic(&self, panic: &(dyn std::any::Any + Send)) -> String {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        let reason = format!("the writer thread panicked: {what}");
        tracing::error!(%reason, "store poisoned; refusing writes until reopened");
        self.shared.poison(reason.clone());
        // An earlier failure's reason stays the store's reason.
        self.shared.poison_reason().unwrap_or(reason)
    }

    /// Builds, writes and publishes one group, answering every request in
    /// `answers` (indexed like `group`) that it does not leave to a panic.
    fn commit_group(&mut self, group: Vec<Work>, answers: &mut [Option<Answer>]) {
        if let Some(reason) = self.shared.poison_reason() {
            for answer in answers.iter_mut().filter_map(Option::take) {
                answer.fail(Error::Poisoned(reason.clone()));
            }
            return;
        }
        let start = self.state.tail;
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        let mut draft = Draft {
            batch,
            ov: Overlays::default(),
            time_us: self.shared.clock.now_us().max(start.last_time_us),
            policy: self.shared.policy(),
        };
        let mut acks: Vec<(usize, Appended)> = Vec::new();
        let mut trims: Vec<usize> = Vec::new();
        let mut dirty = false;
        for (i, work) in group.into_iter().enumerate() {
            match work {
                Work::Append { records, origin } => {
                    match append::request(&self.shared, &mut self.state, &mut draft, records, origin) {
                        Outcome::Written(appended) => {
                            dirty = true;
                            acks.push((i, appended));
                        }
                        Outcome::Nothing(appended) => acks.push((i, appended)),
                        Outcome::Refused(e) => fail(answers, i, e),
                        Outcome::Abort(e) => {
                            // The batch may hold part of this request: drop
                            // the whole group unwritten, and tell every
                            // caller in it. Nothing reached the engine, so
                            // the store is not poisoned.
                            let reason = e.to_string();
                            self.fail_group(start, answers, || {
                                Error::corruption("write group", format!("group aborted unwritten: {reason}"))
                            });
                            return;
                        }
                    }
                }
                Work::Trim { plan } => {
                    let engine = &*self.shared.engine;
                    match trim::apply(engine, &mut draft.batch, &mut self.state.tail, &draft.ov.tuples, &plan) {
                        Ok(()) => {
                            dirty = true;
                            trims.push(i);
                        }
                        Err(e) => fail(answers, i, e),
                    }
                }
                Work::Monitor { pattern } => fail(
                    answers,
                    i,
                    Error::invalid("monitor", format!("a monitor change of {pattern} was grouped with other writes")),
                ),
            }
        }
        if dirty {
            self.state.tail.put_meta(&mut draft.batch);
            if let Err(e) = self.shared.engine.write(&draft.batch, self.sync) {
                let reason = format!("WAL write failed: {e}");
                tracing::error!(%reason, "store poisoned; refusing writes until reopened");
                self.shared.poison(reason.clone());
                self.fail_group(start, answers, || Error::Poisoned(reason.clone()));
                return;
            }
            self.publish(draft.ov, acks.iter().map(|(_, a)| a.written()).sum());
        }
        // Without a write, only replays and received batches that were all
        // duplicates remain: their originals are durable already.
        for (i, appended) in acks {
            if let Some(Answer::Append(reply)) = answers.get_mut(i).and_then(Option::take) {
                let _ = reply.send(Ok(appended));
            }
        }
        for i in trims {
            if let Some(Answer::Trim(reply)) = answers.get_mut(i).and_then(Option::take) {
                let _ = reply.send(Ok(()));
            }
        }
        self.keep_batch(draft.batch);
    }

    /// Makes a durable group's effects visible: the writer's own state, the
    /// counters, and last the durable sequence number that wakes feeds.
    fn publish(&mut self, mut ov: Overlays, records: u64) {
        self.shared.floor.store(self.state.tail.floor, Ordering::Release);
        for (id, lease) in &ov.leases {
            if let Err(e) = self.state.anycast.apply(id, lease.as_ref()) {
                tracing::error!(lease = %id, error = %e, "lease left out of its anycast group");
            }
        }
        self.state.anycast.prune();
        self.state.recording.add_pending(std::mem::take(&mut ov.pending));
        self.shared.stats.groups.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.records.fetch_add(records, Ordering::Relaxed);
        // Derived state follows before any caller of the group hears back.
        let last_seq = self.state.tail.next_seq - 1;
        if let Some(fold) = self.shared.fold() {
            fold.committed(&Committed {
                last_seq,
                leases: &ov.leases,
                tuples: &ov.tuples,
                classes: &ov.models.classes,
                docs: &ov.docs,
            });
        }
        // FEED-2: readers learn of a record only after its batch is durable.
        self.shared.durable.send_replace(last_seq);
    }

    /// Keeps the batch buffer for the next group, unless it grew past
    /// [`BATCH_BUFFER_KEPT_BYTES_MAX`].
    fn keep_batch(&mut self, batch: Batch) {
        if batch.bytes() <= BATCH_BUFFER_KEPT_BYTES_MAX {
            self.batch = batch;
        }
    }

    /// Puts the tail back where the group started and answers every request
    /// not answered yet with `err`.
    fn fail_group(&mut self, start: LogTail, answers: &mut [Option<Answer>], err: impl Fn() -> Error) {
        self.state.tail = start;
        self.state.anycast.prune();
        for answer in answers.iter_mut().filter_map(Option::take) {
            answer.fail(err());
        }
    }

    /// Commits a monitor's state change as a group of its own: the monitor
    /// record, and for a completion the held updates its copy did not
    /// include, first. The writer's recording state changes only once the
    /// batch is durable.
    fn commit_monitor(&mut self, op: MonitorOp) -> Result<Appended> {
        self.shared.check_writable()?;
        let (imports, change) = monitor::change(&self.state.recording, op)?;
        let start = self.state.tail;
        let time_us = self.shared.clock.now_us().max(start.last_time_us);
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        let engine = &*self.shared.engine;
        let put =
            monitor::put_group(engine, &self.shared.site, &mut self.state.tail, &mut batch, imports, &change, time_us);
        if let Err(e) = put {
            self.state.tail = start;
            return Err(e);
        }
        self.state.tail.put_meta(&mut batch);
        if let Err(e) = engine.write(&batch, self.sync) {
            let reason = format!("WAL write failed: {e}");
            tracing::error!(%reason, "store poisoned; refusing writes until reopened");
            self.shared.poison(reason.clone());
            self.state.tail = start;
            return Err(Error::Poisoned(reason));
        }
        self.keep_batch(batch);
        monitor::apply(&mut self.state.recording, &change);
        self.shared.set_monitor_states(self.state.recording.states());
        let appended =
            Appended { first: start.next_seq, last: self.state.tail.next_seq - 1, replayed: false, dropped: 0 };
        self.shared.stats.groups.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.records.fetch_add(appended.written(), Ordering::Relaxed);
        self.shared.durable.send_replace(self.state.tail.next_seq - 1);
        Ok(appended)
    }
}
