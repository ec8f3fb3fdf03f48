//! The forwarder against a model log and a model peer, with a manual clock.
//!
//! The driver here carries out the forwarder's actions the way the adapters
//! do: it reads a model log (records `1..=head`, those below `earliest`
//! trimmed) with the limits a scan gives, and sends to a model peer that
//! drops what it already has by origin sequence number, as
//! `Store::receive` does. Each send's fate is chosen by the test: the peer
//! acknowledges it, the request is lost, the peer appends but the answer is
//! lost, or the peer refuses or is busy.
//!
//! What this proves, for every run: each send starts at the forwarder's
//! cursor and never below what the peer acknowledged; each batch holds
//! exactly the wanted records of its range; the cursor never moves back;
//! and once the network heals, the peer has every wanted record exactly
//! once and in order, except records retention trimmed first, which a gap
//! marker covers instead. What it cannot prove: that the adapters carry the
//! actions out as this driver does, or that the store's scan honours the
//! limits the way the model's does.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use pepper_router::{
    Filter, Forwarder, ForwarderAction as Action, ForwarderInput as Input, Interest, Outgoing, PeerWants, Wants,
    BACKOFF_MAX, FORWARD_BATCH_BYTES, FORWARD_BATCH_RECORDS, FORWARD_SCAN_MAX,
};
use proptest::prelude::*;

const SITE: &str = "a";

/// A log record as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    seq: u64,
    origin: &'static str,
    /// Channel and type, for events.
    event: Option<(&'static str, &'static str)>,
    bytes: usize,
}

/// Kinds of records, from the peer's point of view (see [`peer_wants`]).
const KINDS: [(&str, Option<(&str, &str)>); 7] = [
    (SITE, Some(("/x/", "t"))),
    (SITE, Some(("/x/deep/", "u"))),
    (SITE, Some(("/y/h1/", "t"))),
    (SITE, Some(("/y/h1/", "u"))),
    (SITE, Some(("/y/", "t"))),
    ("b", Some(("/x/", "t"))),
    (SITE, None),
];

/// The peer wants `/x/` of any type and `/y/*/` of type `t`: kinds 0, 1
/// and 2 above.
fn peer_wants(first_cursor: u64) -> PeerWants {
    let list = [
        Interest { pattern: "/x/".into(), types: Vec::new() },
        Interest { pattern: "/y/*/".into(), types: vec!["t".into()] },
    ];
    PeerWants { wants: Arc::new(Wants::parse(&list).expect("wants")), first_cursor }
}

fn wanted(r: &Rec) -> bool {
    r.origin == SITE && matches!(r.event, Some(("/x/", _) | ("/x/deep/", _) | ("/y/h1/", "t")))
}

#[derive(Default)]
struct Log {
    records: Vec<Rec>,
    earliest: u64,
}

impl Log {
    fn head(&self) -> u64 {
        self.records.len() as u64
    }

    fn append(&mut self, kind: usize, bytes: usize) {
        let (origin, event) = KINDS[kind % KINDS.len()];
        self.records.push(Rec { seq: self.head() + 1, origin, event, bytes });
    }

    fn get(&self, seq: u64) -> &Rec {
        &self.records[(seq - 1) as usize]
    }

    /// What the store's frames read answers (`View::frames`, with the
    /// retention check the adapter makes first).
    fn scan(&self, id: u64, from: u64, filter: &Filter, limits: (usize, usize, u64)) -> Input<Rec> {
        let (records_max, bytes_max, scan_max) = limits;
        if from < self.earliest.max(1) {
            return Input::Compacted { id, earliest: self.earliest.max(1) };
        }
        let to = self.head().min(from + scan_max - 1);
        let (mut records, mut bytes) = (Vec::new(), 0);
        for seq in from..=to {
            let r = self.get(seq);
            if filter.keep(r.origin, r.event) {
                bytes += r.bytes;
                records.push(Outgoing { seq, bytes: r.bytes, record: r.clone() });
                if records.len() >= records_max || bytes >= bytes_max {
                    return Input::Scanned { id, records, next: seq + 1 };
                }
            }
        }
        Input::Scanned { id, records, next: to.max(from - 1) + 1 }
    }
}

/// The peer: appends what passes its mark, like `Store::receive`.
#[derive(Default)]
struct Peer {
    mark: u64,
    appended: Vec<u64>,
    gaps: Vec<(u64, u64)>,
}

impl Peer {
    fn receive(&mut self, records: &[Outgoing<Rec>]) {
        for r in records {
            assert_eq!(r.seq, r.record.seq);
            if r.seq > self.mark {
                self.appended.push(r.seq);
                self.mark = r.seq;
            }
        }
    }

    fn gap(&mut self, from: u64, to: u64) {
        if to > self.mark {
            self.gaps.push((from.max(self.mark + 1), to));
            self.mark = to;
        }
    }
}

/// What becomes of a send.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Appended and acknowledged.
    Ack,
    /// Never reached the peer.
    Lost,
    /// Appended, but the answer was lost.
    Unanswered,
    /// 400: the peer refuses it.
    Refused,
    /// 409: a gap the peer does not take yet.
    Conflict,
    /// 503.
    Busy,
}

enum Pending {
    Batch { id: u64, next: u64, records: Vec<Outgoing<Rec>> },
    Gap { id: u64, from: u64, to: u64 },
}

struct Scan {
    id: u64,
    from: u64,
    filter: Filter,
    limits: (usize, usize, u64),
}

/// The driver: the log, the peer, the clock and what is out.
struct World {
    now: Duration,
    log: Log,
    peer: Peer,
    fwd: Forwarder<Rec>,
    first_cursor: u64,
    /// The store's durable cursor for the peer.
    durable: Option<u64>,
    /// The last cursor saved in this run of the forwarder.
    saved: Option<u64>,
    /// The cursor after the last acknowledged send.
    acked_next: u64,
    scan: Option<Scan>,
    send: Option<Pending>,
    waiting: Option<u64>,
    ids_seen: Vec<u64>,
    stalls: usize,
    sends: usize,
}

impl World {
    fn new(first_cursor: u64) -> World {
        let mut w = World {
            now: Duration::ZERO,
            log: Log { records: Vec::new(), earliest: 1 },
            peer: Peer::default(),
            fwd: Forwarder::new(SITE, Duration::ZERO),
            first_cursor,
            durable: None,
            saved: None,
            acked_next: first_cursor,
            scan: None,
            send: None,
            waiting: None,
            ids_seen: Vec::new(),
            stalls: 0,
            sends: 0,
        };
        w.log.earliest = 1;
        for _ in 1..first_cursor {
            w.log.append(6, 10);
        }
        w.step(Input::Interests(peer_wants(first_cursor)));
        w
    }

    fn step(&mut self, input: Input<Rec>) {
        let actions = self.fwd.step(self.now, input);
        self.carry_out(actions);
    }

    fn carry_out(&mut self, actions: Vec<Action<Rec>>) {
        for action in actions {
            let cursor = self.fwd.cursor();
            match action {
                Action::LoadCursor { or_else } => {
                    let c = *self.durable.get_or_insert(or_else);
                    self.step(Input::CursorLoaded { next: c });
                }
                Action::WaitForSeq(seq) => {
                    assert_eq!(Some(seq), cursor, "waits for its cursor");
                    if self.log.head() >= seq {
                        self.step(Input::Appended { last_seq: self.log.head() });
                    } else {
                        self.waiting = Some(seq);
                    }
                }
                Action::Scan { id, from, filter, records_max, bytes_max, scan_max } => {
                    assert_eq!(Some(from), cursor, "reads from its cursor");
                    assert!(self.scan.is_none() && self.send.is_none(), "one thing out at a time");
                    self.ids_seen.push(id);
                    self.scan = Some(Scan { id, from, filter, limits: (records_max, bytes_max, scan_max) });
                }
                Action::Send { id, from, next, records } => {
                    assert_eq!(Some(from), cursor, "sends from its cursor");
                    assert!(from >= self.acked_next, "resends nothing acknowledged: {from} < {}", self.acked_next);
                    let want: Vec<u64> = (from.max(self.log.earliest)..next.min(self.log.head() + 1))
                        .filter(|s| wanted(self.log.get(*s)))
                        .collect();
                    let got: Vec<u64> = records.iter().map(|r| r.seq).collect();
                    assert_eq!(got, want, "a batch holds exactly the wanted records of {from}..{next}");
                    assert!(records.len() <= FORWARD_BATCH_RECORDS);
                    self.ids_seen.push(id);
                    self.sends += 1;
                    self.send = Some(Pending::Batch { id, next, records });
                }
                Action::SendGap { id, from, to } => {
                    assert_eq!(Some(from), cursor, "a gap starts at the cursor");
                    assert!(from >= self.acked_next);
                    assert!(to < self.log.earliest, "a gap covers only trimmed records");
                    self.ids_seen.push(id);
                    self.send = Some(Pending::Gap { id, from, to });
                }
                Action::SaveCursor { next, durable } => {
                    assert!(self.saved.is_none_or(|s| s <= next), "the cursor moves back");
                    self.saved = Some(next);
                    if durable {
                        assert!(self.durable.is_none_or(|d| d <= next), "the durable cursor moves back");
                        self.durable = Some(next);
                    }
                }
                Action::Stalled { .. } => self.stalls += 1,
                Action::WakeAt(t) => assert_eq!(Some(t), self.fwd.next_wake()),
            }
        }
    }

    fn append(&mut self, kinds: &[(usize, usize)]) {
        for &(kind, bytes) in kinds {
            self.log.append(kind, bytes);
        }
        if self.waiting.is_some_and(|s| s <= self.log.head()) {
            self.waiting = None;
            self.step(Input::Appended { last_seq: self.log.head() });
        }
    }

    fn trim(&mut self, n: u64) {
        self.log.earliest = (self.log.earliest + n).min(self.log.head() + 1);
    }

    fn read(&mut self) {
        if let Some(s) = self.scan.take() {
            let result = self.log.scan(s.id, s.from, &s.filter, s.limits);
            self.step(result);
        }
    }

    fn deliver(&mut self, fate: Fate) {
        let Some(pending) = self.send.take() else { return };
        let (id, next) = match &pending {
            Pending::Batch { id, next, .. } => (*id, *next),
            Pending::Gap { id, to, .. } => (*id, to + 1),
        };
        let appended = matches!(fate, Fate::Ack | Fate::Unanswered);
        if appended {
            match &pending {
                Pending::Batch { records, .. } => self.peer.receive(records),
                Pending::Gap { from, to, .. } => self.peer.gap(*from, *to),
            }
        }
        let input = match fate {
            Fate::Ack => {
                self.acked_next = next;
                Input::Sent { id }
            }
            Fate::Lost | Fate::Unanswered => Input::SendFailed { id, status: None, error: "timed out".into() },
            Fate::Refused => Input::SendFailed { id, status: Some(400), error: "bad".into() },
            Fate::Conflict => Input::SendFailed { id, status: Some(409), error: "gap_refused".into() },
            Fate::Busy => Input::SendFailed { id, status: Some(503), error: "busy".into() },
        };
        self.step(input);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.fwd.next_wake().is_some_and(|t| t <= self.now) {
            let actions = self.fwd.tick(self.now);
            self.carry_out(actions);
        }
    }

    /// A restart of this site: the forwarder starts over from the durable
    /// cursor; what was out is never answered.
    fn restart(&mut self) {
        self.fwd = Forwarder::new(SITE, self.now);
        self.saved = None;
        self.scan = None;
        self.send = None;
        self.waiting = None;
        self.step(Input::Interests(peer_wants(self.first_cursor)));
    }

    /// An answer to something no longer out is ignored.
    fn late_answer(&mut self, pick: usize) {
        let out = [
            self.scan.as_ref().map(|s| s.id),
            self.send.as_ref().map(|p| match p {
                Pending::Batch { id, .. } | Pending::Gap { id, .. } => *id,
            }),
        ];
        let old: Vec<u64> = self.ids_seen.iter().copied().filter(|id| !out.contains(&Some(*id))).collect();
        let Some(&id) = old.get(pick % old.len().max(1)) else { return };
        let cursor = self.fwd.cursor();
        for input in [
            Input::Sent { id },
            Input::SendFailed { id, status: Some(400), error: "late".into() },
            Input::Scanned { id, records: Vec::new(), next: u64::MAX },
            Input::Compacted { id, earliest: u64::MAX },
        ] {
            assert!(self.fwd.step(self.now, input).is_empty(), "a late answer is ignored");
        }
        assert_eq!(self.fwd.cursor(), cursor);
    }

    /// Heals everything: every read answered, every send acknowledged,
    /// until the forwarder waits past the head.
    fn heal(&mut self) {
        for _ in 0..1_000_000 {
            if self.scan.is_some() {
                self.read();
            } else if self.send.is_some() {
                self.deliver(Fate::Ack);
            } else if let Some(t) = self.fwd.next_wake() {
                self.advance(t.saturating_sub(self.now));
            } else {
                assert_eq!(self.waiting, Some(self.log.head() + 1), "caught up");
                return;
            }
        }
        panic!("did not settle");
    }

    /// After [`World::heal`]: the peer has every wanted record from the
    /// first cursor on, once and in order, or a gap marker for it.
    fn check_delivered(&self) {
        let in_gap = |s: u64| self.peer.gaps.iter().any(|(from, to)| (*from..=*to).contains(&s));
        let want: Vec<u64> =
            (self.first_cursor..=self.log.head()).filter(|s| wanted(self.log.get(*s)) && !in_gap(*s)).collect();
        if self.peer.appended != want {
            let missing: Vec<u64> = want.iter().copied().filter(|s| !self.peer.appended.contains(s)).collect();
            let extra: Vec<u64> = self.peer.appended.iter().copied().filter(|s| !want.contains(s)).collect();
            panic!("not every wanted record once, in order: missing {missing:?}, extra {extra:?}");
        }
        assert!(self.peer.appended.iter().all(|s| !in_gap(*s)));
        assert_eq!(self.fwd.cursor(), Some(self.log.head() + 1));
    }
}

#[test]
fn a_partition_that_heals_loses_nothing_and_duplicates_nothing() {
    let mut w = World::new(5);
    let kinds: Vec<(usize, usize)> = (0..600).map(|n| (n % KINDS.len(), 200)).collect();
    w.append(&kinds);
    w.read();
    // Cut off: every send fails for a minute, some after the peer appended.
    let mut failures = 0;
    while w.now < Duration::from_secs(60) {
        w.read();
        if w.send.is_some() {
            w.deliver(if failures % 3 == 0 { Fate::Unanswered } else { Fate::Lost });
            failures += 1;
        }
        w.append(&[(failures % KINDS.len(), 100)]);
        w.advance(Duration::from_millis(250));
    }
    assert!(failures >= 12, "{failures}");
    assert_eq!(w.fwd.backoff(), BACKOFF_MAX, "backed off to the cap");
    assert_eq!(w.fwd.cursor(), Some(5), "nothing acknowledged, nothing moved");
    w.heal();
    w.check_delivered();
    assert!(w.peer.gaps.is_empty());
    assert_eq!(w.fwd.forwarded(), w.peer.appended.len() as u64);
}

#[test]
fn batches_stop_at_the_record_and_byte_limits() {
    let mut w = World::new(1);
    w.append(&vec![(0, 1); FORWARD_BATCH_RECORDS * 2 + 500]);
    let mut sizes = Vec::new();
    while w.scan.is_some() {
        w.read();
        if let Some(Pending::Batch { records, .. }) = &w.send {
            sizes.push(records.len());
        }
        w.deliver(Fate::Ack);
    }
    assert_eq!(sizes, [FORWARD_BATCH_RECORDS, FORWARD_BATCH_RECORDS, 500]);
    // Large records: the one that reaches the byte limit closes the batch.
    let big = FORWARD_BATCH_BYTES / 3 + 1;
    w.append(&[(0, big), (6, big), (1, big), (2, big), (0, big), (0, 10)]);
    let mut sizes = Vec::new();
    while w.scan.is_some() {
        w.read();
        if let Some(Pending::Batch { records, .. }) = &w.send {
            sizes.push(records.iter().map(|r| r.seq).collect::<Vec<_>>());
        }
        w.deliver(Fate::Ack);
    }
    let base = FORWARD_BATCH_RECORDS as u64 * 2 + 500;
    assert_eq!(sizes, [vec![base + 1, base + 3, base + 4], vec![base + 5, base + 6]]);
    w.heal();
    w.check_delivered();
}

#[test]
fn a_long_run_of_unwanted_records_is_crossed_scan_by_scan() {
    let mut w = World::new(1);
    let scans = 2 * FORWARD_SCAN_MAX as usize + 10;
    w.append(&vec![(5, 1); scans]);
    w.append(&[(0, 1)]);
    let mut cursors = Vec::new();
    while w.scan.is_some() && w.send.is_none() {
        w.read();
        cursors.push(w.fwd.cursor());
    }
    let s = FORWARD_SCAN_MAX + 1;
    assert_eq!(cursors, [Some(s), Some(2 * s - 1), Some(2 * s - 1)], "the last scan found the wanted record");
    w.heal();
    w.check_delivered();
    assert_eq!(w.peer.appended, [scans as u64 + 1]);
}

#[test]
fn records_trimmed_before_they_were_sent_become_a_gap_and_the_rest_follows() {
    let mut w = World::new(1);
    w.append(&(0..100).map(|n| (n % 3, 10)).collect::<Vec<_>>());
    w.read();
    w.deliver(Fate::Lost);
    // Retention passes the cursor while the peer is cut off.
    w.trim(40);
    w.heal();
    assert_eq!(w.peer.gaps, [(1, 40)]);
    w.check_delivered();
    assert_eq!(w.peer.appended.first(), Some(&41));
}

#[test]
fn a_refusing_peer_stalls_forwarding_without_skipping_and_a_restart_resumes_from_the_durable_cursor() {
    let mut w = World::new(1);
    w.append(&[(0, 1), (1, 1)]);
    w.read();
    w.deliver(Fate::Ack);
    w.append(&[(0, 1), (2, 1)]);
    w.read();
    for _ in 0..5 {
        w.deliver(Fate::Refused);
        w.advance(BACKOFF_MAX);
        w.read();
    }
    assert_eq!((w.stalls, w.fwd.stalled(), w.fwd.cursor()), (1, true, Some(3)));
    w.restart();
    assert_eq!(w.fwd.cursor(), Some(3), "from the durable cursor");
    w.heal();
    w.check_delivered();
    assert!(!w.fwd.stalled());
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<(usize, usize)>),
    Read,
    Deliver(Fate),
    Advance(u64),
    Trim(u64),
    Interests,
    Restart,
    LateAnswer(usize),
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        4 => Just(Fate::Ack),
        2 => Just(Fate::Lost),
        2 => Just(Fate::Unanswered),
        1 => Just(Fate::Refused),
        1 => Just(Fate::Conflict),
        1 => Just(Fate::Busy),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let bytes = prop_oneof![8 => Just(100usize), 1 => Just(FORWARD_BATCH_BYTES / 4), 1 => 1..5000usize];
    prop_oneof![
        6 => prop::collection::vec((0..KINDS.len(), bytes), 0..30).prop_map(Op::Append),
        1 => (900..1100usize).prop_map(|n| Op::Append(vec![(0, 1); n])),
        8 => Just(Op::Read),
        8 => fate().prop_map(Op::Deliver),
        4 => (0..6000u64).prop_map(Op::Advance),
        1 => (0..30u64).prop_map(Op::Trim),
        1 => Just(Op::Interests),
        1 => Just(Op::Restart),
        1 => any::<usize>().prop_map(Op::LateAnswer),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn forwarding_under_random_failures_is_contiguous_lossless_and_once(
        first_cursor in 1..20u64,
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let mut w = World::new(first_cursor);
        for op in ops {
            let before = w.fwd.cursor();
            let restart = matches!(op, Op::Restart);
            match op {
                Op::Append(kinds) => w.append(&kinds),
                Op::Read => w.read(),
                Op::Deliver(fate) => w.deliver(fate),
                Op::Advance(ms) => w.advance(Duration::from_millis(ms)),
                Op::Trim(n) => w.trim(n),
                Op::Interests => w.step(Input::Interests(peer_wants(first_cursor))),
                Op::Restart => w.restart(),
                Op::LateAnswer(pick) => w.late_answer(pick),
            }
            if !restart {
                prop_assert!(before.is_none_or(|b| w.fwd.cursor().is_some_and(|c| c >= b)), "cursor moved back");
            }
        }
        w.heal();
        w.check_delivered();
    }
}
