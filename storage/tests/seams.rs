//! The engine and clock seams: a failed write, a failed sync and a panic on
//! the writer thread each poison the store, nothing unacknowledged becomes
//! visible, and a restart finds all of the failed batch or none of it;
//! records carry the store's clock's time.
//!
//! What this cannot prove: how a real disk fails. The fault engine stands
//! for RocksDB's behaviour after a WAL error (the batch is not applied, later
//! writes are refused) and for an fsync that failed after the bytes reached
//! the disk; `tests/crash_loop.rs` at the root kills a real process instead.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pepper_storage::*;

/// A store on a memory engine behind a fault engine, both kept by the test.
fn faulty(clock: &ManualClock) -> (Store, Arc<FaultEngine>, MemoryEngine) {
    let memory = MemoryEngine::new();
    let faults = Arc::new(FaultEngine::new(Arc::new(memory.clone())));
    let store = Store::open_with(faults.clone(), Arc::new(clock.clone()), Options::new("s")).unwrap();
    (store, faults, memory)
}

/// Every record in the store's log, by sequence number.
fn seqs(store: &Store) -> Vec<u64> {
    store.read_blocking(|v| v.records(1, u64::MAX, 1000)).unwrap().iter().map(|r| r.seq).collect()
}

fn reopen(memory: &MemoryEngine) -> Store {
    Store::open_with(Arc::new(memory.clone()), Arc::new(SystemClock), Options::new("s")).unwrap()
}

fn assert_poisoned(result: Result<Appended>, says: &str) {
    match result {
        Err(Error::Poisoned(reason)) => assert!(reason.contains(says), "{reason}"),
        other => panic!("expected Poisoned({says}...), got {other:?}"),
    }
}

#[test]
fn a_failed_write_poisons_the_store_and_a_restart_finds_none_of_its_batch() {
    let (store, faults, memory) = faulty(&ManualClock::starting_now());
    store.append_blocking(vec![tuple("/a/", "f", "1")]).unwrap();
    faults.arm(Fault::FailWrite(1));
    assert_poisoned(store.append_blocking(vec![tuple("/a/", "f", "2"), doc("d", b"2")]), "injected write failure");
    assert!(store.poisoned().is_some());
    assert_poisoned(store.append_blocking(vec![tuple("/a/", "f", "3")]), "injected write failure");
    assert!(matches!(store.set_peer_cursor("peer", 9), Err(Error::Poisoned(_))));
    // Nothing unacknowledged is visible: not in the views, not to a feed.
    assert_eq!((store.last_seq(), seqs(&store)), (1, vec![1]));
    assert_eq!(store.read_blocking(|v| v.tuple("/a/", "f")).unwrap().unwrap().value, "1");
    assert!(store.read_blocking(|v| v.doc("d")).unwrap().is_none());
    assert_eq!(store.feed(1, Filter::default()).lag(), 1, "the feed sees only the acknowledged record");
    store.close();
    drop(faults);
    let store = reopen(&memory);
    assert_eq!((store.poisoned(), store.last_seq(), seqs(&store)), (None, 1, vec![1]));
    assert_eq!(store.append_blocking(vec![tuple("/a/", "f", "4")]).unwrap().first, 2);
    store.close();
    assert!(check_engine(&memory).unwrap().is_ok());
}

#[test]
fn a_failed_sync_poisons_the_store_and_a_restart_finds_all_of_its_batch() {
    let (store, faults, memory) = faulty(&ManualClock::starting_now());
    store.append_blocking(vec![tuple("/a/", "f", "1")]).unwrap();
    faults.arm(Fault::FailSync(1));
    assert_poisoned(store.append_blocking(vec![tuple("/a/", "f", "2"), doc("d", b"2")]), "injected sync failure");
    assert_poisoned(store.append_blocking(vec![tuple("/a/", "f", "3")]), "injected sync failure");
    // The batch reached the log but was never acknowledged: the poisoned
    // store does not show it.
    assert_eq!((store.last_seq(), seqs(&store)), (1, vec![1]));
    assert!(store.read_blocking(|v| v.doc("d")).unwrap().is_none());
    store.close();
    // Recovery replays what reached the log: the whole batch, atomically.
    drop(faults);
    let store = reopen(&memory);
    assert_eq!((store.poisoned(), store.last_seq(), seqs(&store)), (None, 3, vec![1, 2, 3]));
    assert_eq!(store.read_blocking(|v| v.tuple("/a/", "f")).unwrap().unwrap().value, "2");
    assert!(store.read_blocking(|v| v.doc("d")).unwrap().is_some());
    assert_eq!(store.append_blocking(vec![tuple("/a/", "f", "4")]).unwrap().first, 4);
    store.close();
    assert!(check_engine(&memory).unwrap().is_ok());
}

#[test]
fn a_panic_on_the_writer_thread_poisons_the_store() {
    let (store, faults, memory) = faulty(&ManualClock::starting_now());
    store.append_blocking(vec![tuple("/a/", "f", "1")]).unwrap();
    faults.arm(Fault::Panic(1));
    assert_poisoned(store.append_blocking(vec![tuple("/a/", "f", "2")]), "the writer thread panicked");
    assert!(store.poisoned().is_some_and(|r| r.contains("injected panic")), "{:?}", store.poisoned());
    // The engine works again, but the store does not trust itself.
    assert_poisoned(store.append_blocking(vec![tuple("/a/", "f", "3")]), "the writer thread panicked");
    assert_eq!((store.last_seq(), seqs(&store)), (1, vec![1]));
    store.close();
    drop(faults);
    let store = reopen(&memory);
    assert_eq!((store.poisoned(), store.last_seq()), (None, 1));
}

#[tokio::test]
async fn a_panic_while_a_monitor_changes_state_poisons_the_store() {
    let (store, faults, _memory) = faulty(&ManualClock::starting_now());
    faults.arm(Fault::Panic(1));
    let err = store.monitor_start("/n/", "test").await.unwrap_err();
    assert!(matches!(err, Error::Poisoned(ref r) if r.contains("panicked")), "{err}");
    assert_eq!(store.monitor_state("/n/"), None, "the monitor never started");
    assert!(matches!(store.append(vec![tuple("/a/", "f", "1")]).await, Err(Error::Poisoned(_))));
}

#[test]
fn records_carry_the_stores_clock_and_never_go_back_in_time() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let clock = &backing.clock;
        clock.set(1_000_000_000);
        let store = backing.open();
        assert_eq!(store.now_us(), 1_000_000_000);
        store.append_blocking(vec![tuple("/a/", "f", "1")]).unwrap();
        clock.advance(Duration::from_secs(1));
        store.append_blocking(vec![tuple("/a/", "f", "2")]).unwrap();
        // A clock set back holds the log's time still (LOG-4).
        clock.set(5);
        store.append_blocking(vec![tuple("/a/", "f", "3")]).unwrap();
        let times: Vec<u64> = store.read_blocking(|v| v.records(1, 3, 10)).unwrap().iter().map(|r| r.time_us).collect();
        assert_eq!(times, [1_000_000_000, 1_001_000_000, 1_001_000_000]);
        // Retention by age measures against the time it is given.
        let policy = Retention { log_max_age: Some(Duration::from_millis(500)), ..Retention::default() };
        let report = store.enforce_retention_blocking(&policy, 1_001_000_000).unwrap();
        assert_eq!(report.floor, 2, "{report:?}");
        store.close();
        assert!(backing.check().is_ok());
    }
}

#[test]
fn a_lease_lapses_when_the_clock_passes_its_expiry() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let mut g = grant("l", "/a/");
        if let Body::LeaseGrant(g) = &mut g {
            g.expires_at_us = store.now_us() + 1_000;
        }
        store.append_blocking(vec![g]).unwrap();
        let renew = |expires_at_us| Body::LeaseRenew(LeaseRenew { id: "l".into(), ttl_ms: 1, expires_at_us });
        let expire = || Body::LeaseExpire(LeaseEnd { id: "l".into() });
        assert!(matches!(store.append_blocking(vec![expire()]), Err(Error::Conflict { .. })), "not lapsed yet");
        backing.clock.advance(Duration::from_millis(2));
        let later = store.now_us() + 1_000;
        assert!(matches!(store.append_blocking(vec![renew(later)]), Err(Error::NotFound { .. })), "lapsed");
        store.append_blocking(vec![expire()]).unwrap();
        assert!(store.read_blocking(|v| v.lease("l")).unwrap().is_none());
    }
}

/// What a fold was told, group by group.
#[derive(Default)]
struct Told(std::sync::Mutex<Vec<String>>);

impl Fold for Told {
    fn committed(&self, group: &Committed<'_>) {
        let mut lines: Vec<String> = group
            .leases()
            .map(|(id, l)| format!("lease {id} {:?}", l.map(|l| (l.expires_at_us, l.renewed_seq))))
            .chain(group.tuples().map(|(c, f, t)| format!("tuple {c} {f} {:?}", t.map(|t| (t.seq, t.expires_at_us)))))
            .chain(group.classes().map(|(ns, c)| format!("class {ns} {} {}", c.name, c.seq)))
            .collect();
        lines.sort();
        self.0.lock().unwrap().push(format!("{}: {}", group.last_seq(), lines.join(", ")));
    }
}

/// The fold hears every durable group's end state of the leases and latest
/// tuples it touched and the model classes it defined, before the caller
/// is answered; a refused append
/// tells it nothing.
#[test]
fn a_fold_hears_each_durable_group_before_its_caller() {
    let store = Store::open_memory(Options::new("s")).unwrap();
    let told = Arc::new(Told::default());
    store.set_fold(told.clone());
    let grant = Body::LeaseGrant(LeaseGrant {
        id: "l1".into(),
        pattern: "/a.org/".into(),
        types: Vec::new(),
        ttl_ms: 1000,
        expires_at_us: u64::MAX / 2,
        group: None,
        from_seq: None,
        holder: Party::default(),
        owner: None,
    });
    store.append_blocking(vec![grant]).unwrap();
    assert_eq!(told.0.lock().unwrap().last().unwrap(), &format!("1: lease l1 Some(({}, 1))", u64::MAX / 2));
    let mut expiring = tuple("/a.org/n/", "load", "1");
    if let Body::TupleSet(t) = &mut expiring {
        t.expires_at_us = Some(42);
    }
    store.append_blocking(vec![expiring, tuple("/a.org/n/", "mem", "2")]).unwrap();
    assert_eq!(
        told.0.lock().unwrap().last().unwrap(),
        "3: tuple /a.org/n/ load Some((2, Some(42))), tuple /a.org/n/ mem Some((3, None))"
    );
    store.append_blocking(vec![Body::LeaseRelease(LeaseEnd { id: "l1".into() })]).unwrap();
    assert_eq!(told.0.lock().unwrap().last().unwrap(), "4: lease l1 None");
    let before = told.0.lock().unwrap().len();
    assert!(store.append_blocking(vec![Body::LeaseRelease(LeaseEnd { id: "l1".into() })]).is_err());
    assert_eq!(told.0.lock().unwrap().len(), before, "a refused append changes nothing");
    let class = |name: &str| {
        Body::ModelClass(pepper_storage::ModelClass {
            namespace: "root/x".into(),
            name: name.into(),
            definition: br#"{"name":"X"}"#.to_vec(),
        })
    };
    store.append_blocking(vec![class("A"), class("B")]).unwrap();
    assert_eq!(told.0.lock().unwrap().last().unwrap(), "6: class root/x A 5, class root/x B 6");
}
