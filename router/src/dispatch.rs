//! Routing committed records to live subscribers (lease streams and
//! watches), as a state machine.
//!
//! [`Subscriber::meaning`] says what one record means to one subscriber: an
//! event to deliver, the end of its lease, or nothing. A stream catching up
//! from the log asks it record by record; the site's dispatcher asks it
//! through [`Dispatch`], which finds the subscribers whose pattern covers a
//! record's channel in a [`Trie`] (O(depth), whatever their number).
//!
//! [`Dispatch::step`] takes what happened (a subscriber joined or left, a
//! record was committed, a subscriber's buffer refused a push, the log was
//! lost under the driver) and returns what to do: deliver a record to a
//! subscriber, end its lease stream, or detach it with the sequence number
//! it must resume from. It reads no clock, spawns nothing and owns no
//! buffer; `pepper-adapters`' dispatcher loop reads the log, carries out
//! the actions (pushes into each subscriber's bounded buffer) and reports
//! the pushes that failed.
//!
//! **Handoff.** A subscriber starts on its own cursor: it reads the log
//! itself and joins once it is within [`HANDOFF_LAG_MAX`] records of the
//! head ([`should_join`]), giving the sequence number it reads next
//! (`from`). The driver joins it between two records, at its position `D`
//! (every record below `D` is dispatched, none at or above it). From then
//! on the machine routes it every match at or above `max(from, D)`, and if
//! `D > from` the subscriber reads `[from, D)` from the log itself before it
//! reads its buffer. So catch-up and live delivery meet exactly: no gap, no
//! duplicate, in sequence order.
//!
//! Distribution `one` needs no state here: the writer stored the chosen
//! lease of each group in the event (its `assigned` list), and live
//! delivery and catch-up read the same answer.

use std::collections::HashMap;

use crate::channel::{Channel, Pattern};
use crate::trie::Trie;

/// A catching-up subscriber joins the live stream once it is at most this
/// many records behind the log's head; it reads that gap from the log
/// itself while its buffer fills.
pub const HANDOFF_LAG_MAX: u64 = 256;

/// The type of gap markers: a lease receives them whatever its types.
pub const GAP_EVENT_TYPE: &str = "pepper.gap";

/// Whether a subscriber whose cursor is `lag` records behind the log's
/// head (0: it has read everything committed) joins the live stream.
pub fn should_join(lag: u64) -> bool {
    lag <= HANDOFF_LAG_MAX
}

/// Identifies a subscriber to the machine; the driver chooses it.
pub type SubscriberId = u64;

/// A lease's holder, matched against an event's `to`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    /// The holder's service name.
    pub service: String,
    /// The holder's instance name.
    pub instance: String,
}

/// What one subscriber wants.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// The channels it covers.
    pub pattern: Pattern,
    /// Payload types; empty means all.
    pub types: Vec<String>,
    /// The lease whose end closes the stream; `None` for a watch.
    pub lease: Option<String>,
    /// The lease holder, matched against each event's `to`; a watch has no
    /// holder and receives every matching event.
    pub holder: Option<Holder>,
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

impl Subscriber {
    /// A watch: every matching event (of `types`, if any), and with
    /// `tuples` the tuple ends too; no lease, no holder.
    pub fn watch(pattern: Pattern, types: Vec<String>, tuples: bool) -> Subscriber {
        Subscriber { pattern, types, lease: None, holder: None, group: None, granted_seq: 0, tuples }
    }
}

/// Why a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Its holder released it.
    Released,
    /// It was not renewed in time.
    Expired,
}

impl EndReason {
    /// The word streams and the API use.
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Expired => "expired",
        }
    }
}

/// An event's header: what routing reads of it.
#[derive(Clone, Copy, Debug)]
pub struct EventHead<'a> {
    /// The channel it was published on.
    pub channel: &'a str,
    /// Its payload type.
    pub event_type: &'a str,
    /// The `to` service, if given.
    pub to_service: Option<&'a str>,
    /// The `to` instance, if given.
    pub to_instance: Option<&'a str>,
    /// Distribution `one`.
    pub one: bool,
    /// The leases the writer chose for a distribution-`one` event.
    pub assigned: &'a [String],
}

/// A committed record as routing sees it.
#[derive(Clone, Copy, Debug)]
pub enum Routed<'a> {
    /// An event.
    Event(EventHead<'a>),
    /// A latest tuple on `channel` expired or was deleted.
    TupleEnd {
        /// The tuple's channel.
        channel: &'a str,
    },
    /// A lease ended.
    LeaseEnd {
        /// The lease's id.
        lease: &'a str,
        /// Why.
        reason: EndReason,
    },
    /// Anything else: nobody's business here.
    Other,
}

/// What one record means to one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// Send it to the subscriber.
    Deliver,
    /// The subscriber's lease ended: send the end and close the stream.
    LeaseEnded(EndReason),
    /// Not for this subscriber.
    Nothing,
}

impl Subscriber {
    /// Whether an event whose channel the pattern matches is for this
    /// subscriber: its type, its `to`, and for distribution `one`, the
    /// writer's choice.
    fn wants_event(&self, seq: u64, e: &EventHead<'_>) -> bool {
        let typed = self.types.is_empty() || self.types.iter().any(|t| t == e.event_type);
        let admitted = self.holder.as_ref().is_none_or(|h| {
            e.to_service.is_none_or(|s| s == h.service) && e.to_instance.is_none_or(|i| i == h.instance)
        });
        let assigned = match (&self.group, &self.lease) {
            (Some(_), Some(lease)) if e.one => seq > self.granted_seq && e.assigned.iter().any(|a| a == lease),
            _ => true,
        };
        (typed || e.event_type == GAP_EVENT_TYPE) && admitted && assigned
    }

    /// Whether an end record of lease `id` at `seq` ends this subscriber's
    /// lease.
    fn ended_by(&self, seq: u64, id: &str) -> bool {
        seq > self.granted_seq && self.lease.as_deref() == Some(id)
    }

    /// What the record at `seq` means to this subscriber.
    pub fn meaning(&self, seq: u64, record: &Routed<'_>) -> Meaning {
        match record {
            Routed::Event(e) if self.pattern.matches_name(e.channel) && self.wants_event(seq, e) => Meaning::Deliver,
            Routed::TupleEnd { channel } if self.tuples && self.pattern.matches_name(channel) => Meaning::Deliver,
            Routed::LeaseEnd { lease, reason } if self.ended_by(seq, lease) => Meaning::LeaseEnded(*reason),
            _ => Meaning::Nothing,
        }
    }
}

/// Why a live subscriber was detached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detach {
    /// Its buffer held as many events as it may.
    Full,
    /// Its buffer held as many bytes as it may.
    Bytes,
    /// Retention trimmed the log ahead of the dispatcher itself.
    Behind,
    /// The dispatcher's read of the log failed.
    Failed,
}

/// What happened, for [`Dispatch::step`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A subscriber joins.
    Join {
        /// Chosen by the driver, unique among the live.
        id: SubscriberId,
        /// What it wants.
        subscriber: Subscriber,
        /// The sequence number its own cursor reads next.
        from: u64,
        /// The driver's position: the first sequence number it has not
        /// dispatched.
        position: u64,
    },
    /// A subscriber went away.
    Leave {
        /// Which.
        id: SubscriberId,
    },
    /// A record is committed, and is the driver's next.
    Record {
        /// Its sequence number.
        seq: u64,
        /// What routing reads of it.
        record: Routed<'a>,
    },
    /// A subscriber's buffer refused a record.
    Refused {
        /// Whose.
        id: SubscriberId,
        /// The record's sequence number.
        seq: u64,
        /// Full of events, or of bytes.
        why: Detach,
    },
    /// The driver cannot go on reading the log.
    Lost {
        /// Retention overtook it, or the read failed.
        why: Detach,
        /// Its position: the first sequence number it did not dispatch.
        at: u64,
    },
}

/// What to do, from [`Dispatch::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Push the record at `seq` into `id`'s buffer (and report a push that
    /// fails as [`Input::Refused`]).
    Deliver {
        /// To whom.
        id: SubscriberId,
        /// The record's sequence number.
        seq: u64,
    },
    /// `id`'s lease ended at `seq`: send it the end, then close its stream.
    /// The machine has forgotten it.
    End {
        /// Whose.
        id: SubscriberId,
        /// The end record's sequence number.
        seq: u64,
        /// Released or expired.
        reason: EndReason,
    },
    /// Close `id`'s stream; it resumes from `at`. The machine has
    /// forgotten it.
    Detach {
        /// Whose.
        id: SubscriberId,
        /// Why.
        why: Detach,
        /// The first sequence number it did not get (never below where it
        /// joined).
        at: u64,
    },
    /// The record at `seq` names a channel the router cannot parse (only a
    /// damaged log holds one): log it.
    Unroutable {
        /// The record's sequence number.
        seq: u64,
    },
}

struct Entry {
    subscriber: Subscriber,
    /// The lowest sequence number this subscriber takes from the machine.
    from: u64,
}

/// The site's routing of committed records to live subscribers.
#[derive(Default)]
pub struct Dispatch {
    trie: Trie<SubscriberId>,
    subscribers: HashMap<SubscriberId, Entry>,
    by_lease: HashMap<String, Vec<SubscriberId>>,
    /// Scratch space for one record's trie hits.
    hits: Vec<SubscriberId>,
}

impl Dispatch {
    /// A machine with no subscribers.
    pub fn new() -> Dispatch {
        Dispatch::default()
    }

    /// How many subscribers are live.
    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    /// Whether nobody is live: the driver need not read the log.
    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// The subscribers live now.
    pub fn ids(&self) -> impl Iterator<Item = SubscriberId> + '_ {
        self.subscribers.keys().copied()
    }

    /// Takes `input` and appends what to do to `out` (a buffer the driver
    /// reuses, so routing a record allocates nothing).
    pub fn step(&mut self, input: Input<'_>, out: &mut Vec<Action>) {
        match input {
            Input::Join { id, subscriber, from, position } => self.join(id, subscriber, from.max(position)),
            Input::Leave { id } => self.remove(id),
            Input::Record { seq, record } => self.route(seq, &record, out),
            Input::Refused { id, seq, why } => self.detach(id, why, seq, out),
            Input::Lost { why, at } => {
                let mut ids: Vec<SubscriberId> = self.ids().collect();
                ids.sort_unstable();
                for id in ids {
                    self.detach(id, why, at, out);
                }
            }
        }
    }

    fn join(&mut self, id: SubscriberId, subscriber: Subscriber, from: u64) {
        self.remove(id);
        self.trie.insert(&subscriber.pattern, id);
        if let Some(lease) = &subscriber.lease {
            self.by_lease.entry(lease.clone()).or_default().push(id);
        }
        self.subscribers.insert(id, Entry { subscriber, from });
    }

    fn remove(&mut self, id: SubscriberId) {
        let Some(entry) = self.subscribers.remove(&id) else { return };
        self.trie.remove(&entry.subscriber.pattern, &id);
        if let Some(lease) = &entry.subscriber.lease {
            if let Some(ids) = self.by_lease.get_mut(lease) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_lease.remove(lease);
                }
            }
        }
    }

    fn detach(&mut self, id: SubscriberId, why: Detach, at: u64, out: &mut Vec<Action>) {
        if let Some(entry) = self.subscribers.get(&id) {
            out.push(Action::Detach { id, why, at: at.max(entry.from) });
            self.remove(id);
        }
    }

    fn route(&mut self, seq: u64, record: &Routed<'_>, out: &mut Vec<Action>) {
        let channel = match record {
            Routed::Event(e) => e.channel,
            Routed::TupleEnd { channel } => channel,
            Routed::LeaseEnd { lease, .. } => {
                let Some(ids) = self.by_lease.get(*lease) else { return };
                let ending: Vec<SubscriberId> = ids
                    .iter()
                    .copied()
                    .filter(|id| {
                        self.subscribers.get(id).is_some_and(|e| seq >= e.from && e.subscriber.ended_by(seq, lease))
                    })
                    .collect();
                for id in ending {
                    if let Routed::LeaseEnd { reason, .. } = record {
                        out.push(Action::End { id, seq, reason: *reason });
                    }
                    self.remove(id);
                }
                return;
            }
            Routed::Other => return,
        };
        let Ok(channel) = Channel::parse(channel) else {
            out.push(Action::Unroutable { seq });
            return;
        };
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        self.trie.for_each_match(&channel, |id| hits.push(*id));
        // In join order of ids, so a trace does not depend on the trie's.
        hits.sort_unstable();
        for &id in &hits {
            let Some(entry) = self.subscribers.get(&id) else { continue };
            if seq >= entry.from && entry.subscriber.meaning(seq, record) == Meaning::Deliver {
                out.push(Action::Deliver { id, seq });
            }
        }
        self.hits = hits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(pattern: &str) -> Subscriber {
        Subscriber::watch(Pattern::parse(pattern).expect("pattern"), Vec::new(), false)
    }

    fn lease(id: &str, pattern: &str, granted_seq: u64) -> Subscriber {
        Subscriber {
            lease: Some(id.into()),
            holder: Some(Holder { service: "svc".into(), instance: "i1".into() }),
            granted_seq,
            ..watch(pattern)
        }
    }

    fn event(channel: &str) -> Routed<'_> {
        Routed::Event(EventHead {
            channel,
            event_type: "t",
            to_service: None,
            to_instance: None,
            one: false,
            assigned: &[],
        })
    }

    fn step(d: &mut Dispatch, input: Input<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        d.step(input, &mut out);
        out
    }

    fn join(d: &mut Dispatch, id: u64, subscriber: Subscriber, from: u64, position: u64) {
        assert!(step(d, Input::Join { id, subscriber, from, position }).is_empty());
    }

    #[test]
    fn a_record_goes_to_every_covering_subscriber_once() {
        let mut d = Dispatch::new();
        join(&mut d, 1, watch("/a.org/"), 1, 1);
        join(&mut d, 2, watch("/a.org/x/"), 1, 1);
        join(&mut d, 3, watch("/b.org/"), 1, 1);
        let out = step(&mut d, Input::Record { seq: 5, record: event("/a.org/x/y/") });
        assert_eq!(out, [Action::Deliver { id: 1, seq: 5 }, Action::Deliver { id: 2, seq: 5 }]);
        assert!(step(&mut d, Input::Record { seq: 6, record: Routed::Other }).is_empty());
    }

    #[test]
    fn a_subscriber_gets_nothing_below_where_it_joined() {
        let mut d = Dispatch::new();
        // Its own cursor is ahead of the driver: it read up to 9 itself.
        join(&mut d, 1, watch("/a.org/"), 10, 7);
        assert!(step(&mut d, Input::Record { seq: 8, record: event("/a.org/") }).is_empty());
        assert_eq!(
            step(&mut d, Input::Record { seq: 10, record: event("/a.org/") }),
            [Action::Deliver { id: 1, seq: 10 }]
        );
    }

    #[test]
    fn types_to_and_gap_markers() {
        let mut d = Dispatch::new();
        join(&mut d, 1, Subscriber { types: vec!["load".into()], ..lease("l1", "/a.org/", 0) }, 1, 1);
        let typed = |t| EventHead { event_type: t, ..head("/a.org/") };
        assert!(step(&mut d, Input::Record { seq: 1, record: Routed::Event(typed("t")) }).is_empty());
        assert_eq!(step(&mut d, Input::Record { seq: 2, record: Routed::Event(typed("load")) }).len(), 1);
        assert_eq!(step(&mut d, Input::Record { seq: 3, record: Routed::Event(typed(GAP_EVENT_TYPE)) }).len(), 1);
        let to_other = EventHead { to_service: Some("other"), ..typed("load") };
        assert!(step(&mut d, Input::Record { seq: 4, record: Routed::Event(to_other) }).is_empty());
        let to_us = EventHead { to_service: Some("svc"), to_instance: Some("i1"), ..typed("load") };
        assert_eq!(step(&mut d, Input::Record { seq: 5, record: Routed::Event(to_us) }).len(), 1);
    }

    fn head(channel: &str) -> EventHead<'_> {
        EventHead { channel, event_type: "t", to_service: None, to_instance: None, one: false, assigned: &[] }
    }

    #[test]
    fn distribution_one_goes_only_to_the_assigned_lease_of_this_grant() {
        let mut d = Dispatch::new();
        join(&mut d, 1, Subscriber { group: Some("g".into()), ..lease("m1", "/svc/", 4) }, 5, 5);
        join(&mut d, 2, Subscriber { group: Some("g".into()), ..lease("m2", "/svc/", 4) }, 5, 5);
        let assigned = ["m2".to_string()];
        let one = EventHead { one: true, assigned: &assigned, ..head("/svc/") };
        assert_eq!(
            step(&mut d, Input::Record { seq: 6, record: Routed::Event(one) }),
            [Action::Deliver { id: 2, seq: 6 }]
        );
        // An assignment at or below the grant names an earlier lease of the id.
        let mut d = Dispatch::new();
        join(&mut d, 2, Subscriber { group: Some("g".into()), ..lease("m2", "/svc/", 9) }, 1, 1);
        assert!(step(&mut d, Input::Record { seq: 9, record: Routed::Event(one) }).is_empty());
    }

    #[test]
    fn a_lease_end_closes_only_that_grant_and_forgets_it() {
        let mut d = Dispatch::new();
        join(&mut d, 1, lease("l1", "/a.org/", 3), 4, 4);
        join(&mut d, 2, watch("/a.org/"), 4, 4);
        let end = Routed::LeaseEnd { lease: "l1", reason: EndReason::Expired };
        // An end at or below the grant belongs to an earlier lease of the id.
        assert!(step(&mut d, Input::Record { seq: 3, record: end }).is_empty());
        assert_eq!(
            step(&mut d, Input::Record { seq: 8, record: end }),
            [Action::End { id: 1, seq: 8, reason: EndReason::Expired }]
        );
        assert_eq!(d.len(), 1);
        assert_eq!(
            step(&mut d, Input::Record { seq: 9, record: event("/a.org/") }),
            [Action::Deliver { id: 2, seq: 9 }]
        );
    }

    #[test]
    fn a_refused_push_detaches_at_that_record_and_no_lower_than_the_join() {
        let mut d = Dispatch::new();
        join(&mut d, 1, watch("/a.org/"), 20, 10);
        join(&mut d, 2, watch("/a.org/"), 1, 10);
        assert_eq!(
            step(&mut d, Input::Refused { id: 2, seq: 30, why: Detach::Full }),
            [Action::Detach { id: 2, why: Detach::Full, at: 30 }]
        );
        assert_eq!(
            step(&mut d, Input::Lost { why: Detach::Behind, at: 12 }),
            [Action::Detach { id: 1, why: Detach::Behind, at: 20 }]
        );
        assert!(d.is_empty());
        assert!(step(&mut d, Input::Refused { id: 2, seq: 31, why: Detach::Full }).is_empty(), "already gone");
    }

    #[test]
    fn tuple_ends_reach_only_snapshot_watches() {
        let mut d = Dispatch::new();
        join(&mut d, 1, watch("/a.org/"), 1, 1);
        join(&mut d, 2, Subscriber { tuples: true, ..watch("/a.org/") }, 1, 1);
        let out = step(&mut d, Input::Record { seq: 1, record: Routed::TupleEnd { channel: "/a.org/n/" } });
        assert_eq!(out, [Action::Deliver { id: 2, seq: 1 }]);
    }

    #[test]
    fn an_unparsable_channel_is_reported_not_routed() {
        let mut d = Dispatch::new();
        join(&mut d, 1, watch("/a.org/"), 1, 1);
        assert_eq!(
            step(&mut d, Input::Record { seq: 1, record: event("not a channel") }),
            [Action::Unroutable { seq: 1 }]
        );
    }

    #[test]
    fn the_join_rule() {
        assert!(should_join(0), "at the head");
        assert!(should_join(HANDOFF_LAG_MAX));
        assert!(!should_join(HANDOFF_LAG_MAX + 1));
    }
}
