//! Appends, group commit, atomicity, limits, views and recovery.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;

use common::*;
use pepper_storage::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_get_contiguous_numbers_and_every_ack_is_present() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        const WRITERS: usize = 32;
        const EACH: usize = 40;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..EACH {
                    // Mix single records and two-record batches.
                    let bodies = if i % 3 == 0 {
                        vec![tuple(&format!("/w/{w}/"), "f", &i.to_string()), doc(&format!("w{w}/{i}"), b"x")]
                    } else {
                        vec![tuple(&format!("/w/{w}/"), "f", &i.to_string())]
                    };
                    let n = bodies.len() as u64;
                    let a = store.append(bodies).await.unwrap();
                    assert_eq!(a.last - a.first + 1, n);
                    acks.push((a, w, i));
                }
                acks
            }));
        }
        let mut seen = BTreeSet::new();
        let mut acks = Vec::new();
        for t in tasks {
            for (a, w, i) in t.await.unwrap() {
                for s in a.first..=a.last {
                    assert!(seen.insert(s), "seq {s} acknowledged twice");
                }
                acks.push((a, w, i));
            }
        }
        let total = seen.len() as u64;
        assert_eq!(
            seen.iter().copied().collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>(),
            "numbers are contiguous from 1"
        );
        assert_eq!(store.last_seq(), total);
        // Concurrent writers share group commits.
        let stats = store.stats();
        assert_eq!(stats.records, total);
        assert!(stats.groups < total, "no grouping happened: {stats:?}");

        let records = store.read(move |v| v.records(1, u64::MAX, 100_000)).await.unwrap();
        assert_eq!(records.len() as u64, total);
        for (a, w, i) in acks {
            let rec = &records[(a.first - 1) as usize];
            match &rec.body {
                Body::TupleSet(t) => assert_eq!(
                    (t.channel.as_str(), t.value.as_str()),
                    (format!("/w/{w}/").as_str(), i.to_string().as_str())
                ),
                other => panic!("seq {} is {other:?}", a.first),
            }
        }
    }
}

#[tokio::test]
async fn numbering_and_state_survive_reopen() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store.append(vec![tuple("/a/", "f", "1"), tuple("/a/", "f", "2")]).await.unwrap();
        store.append(vec![grant("l1", "/a/"), doc("k", b"v")]).await.unwrap();
        store.close();
        let store = backing.open();
        assert_eq!(store.last_seq(), 4);
        let a = store.append(vec![tuple("/a/", "f", "3")]).await.unwrap();
        assert_eq!(a.first, 5);
        let (t, l, d, seq) =
            store.read(|v| Ok((v.tuple("/a/", "f")?, v.lease("l1")?, v.doc("k")?, v.seq()))).await.unwrap();
        assert_eq!(t.unwrap().value, "3");
        assert_eq!(l.unwrap().granted_seq, 3);
        assert_eq!(d.unwrap().value, b"v");
        assert_eq!(seq, 5);
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store.append(vec![tuple("/a/", "f", "1")]).await.unwrap();
        let cases: Vec<Vec<Body>> = vec![
            vec![],
            vec![tuple("/a/", "f", "ok"), tuple("no-slash", "f", "x")],
            vec![tuple("/a/", "", "x")],
            vec![tuple(&format!("/{}/", "c".repeat(limits::CHANNEL_BYTES_MAX)), "f", "x")],
            vec![doc("big", &vec![0u8; limits::RECORD_BYTES_MAX])],
            (0..=limits::BATCH_RECORDS_MAX).map(|i| tuple("/a/", &i.to_string(), "x")).collect(),
            vec![event("/a/", "", b"")],
        ];
        for bodies in cases {
            let err = store.append(bodies).await.unwrap_err();
            assert!(err.is_bad_input(), "{err}");
        }
        // Lease preconditions: the whole request is refused, and it takes no
        // sequence number.
        let err = store
            .append(vec![
                tuple("/a/", "f", "2"),
                Body::LeaseRenew(LeaseRenew { id: "nope".into(), ttl_ms: 1, expires_at_us: 1 }),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { what: "lease", .. }), "{err}");
        store.append(vec![grant("l", "/a/")]).await.unwrap();
        let err = store.append(vec![grant("l", "/b/")]).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
        let err = store.append(vec![grant("m", "/b/"), grant("m", "/c/")]).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
        assert_eq!(store.last_seq(), 2);
        let (t, m) = store.read(|v| Ok((v.tuple("/a/", "f")?, v.lease("m")?))).await.unwrap();
        assert_eq!(t.unwrap().value, "1");
        assert!(m.is_none());
        let next = store.append(vec![tuple("/a/", "f", "3")]).await.unwrap();
        assert_eq!(next.first, 3, "refused requests consumed no sequence numbers");
    }
}

#[tokio::test]
async fn lease_lifecycle_in_one_batch_and_across_batches() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        // Grant and renew in the same request see each other.
        store
            .append(vec![
                grant("l1", "/a/"),
                Body::LeaseRenew(LeaseRenew { id: "l1".into(), ttl_ms: 9, expires_at_us: 99 }),
            ])
            .await
            .unwrap();
        let l = store.read(|v| v.lease("l1")).await.unwrap().unwrap();
        assert_eq!((l.ttl_ms, l.expires_at_us, l.granted_seq, l.renewed_seq), (9, 99, 1, 2));
        store.append(vec![grant("l2", "/b/")]).await.unwrap();
        store.append(vec![Body::LeaseExpire(LeaseEnd { id: "l1".into() })]).await.unwrap();
        let err = store.append(vec![Body::LeaseRelease(LeaseEnd { id: "l1".into() })]).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }));
        store.append(vec![Body::LeaseRelease(LeaseEnd { id: "l2".into() })]).await.unwrap();
        assert!(store.read(|v| v.leases()).await.unwrap().is_empty());
        // A released id can be granted again.
        store.append(vec![grant("l1", "/c/")]).await.unwrap();
        assert_eq!(store.read(|v| v.leases()).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn latest_pages_by_prefix_and_history_ranges() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        for i in 0..25 {
            store.append(vec![tuple(&format!("/p/n{:02}/", i), "load", &i.to_string())]).await.unwrap();
        }
        store.append(vec![tuple("/q/", "load", "other")]).await.unwrap();
        store.append(vec![tuple("/p0/", "load", "sibling, not under /p/")]).await.unwrap();
        for i in 0..10 {
            store.append(vec![tuple("/h/", "f", &format!("v{i}"))]).await.unwrap();
        }
        let all = store
            .read(|v| {
                let mut out = Vec::new();
                let mut cursor = None;
                loop {
                    let page = v.latest("/p/", cursor.as_ref(), 10)?;
                    out.extend(page.items);
                    match page.next {
                        Some(c) => cursor = Some(c),
                        None => return Ok(out),
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 25);
        assert!(all.windows(2).all(|w| w[0].channel < w[1].channel));
        assert!(all.iter().all(|t| t.channel.starts_with("/p/")));

        let asc = store.read(|v| v.history("/h/", "f", HistoryRange::default())).await.unwrap();
        assert_eq!(
            asc.iter().map(|h| h.value.as_str()).collect::<Vec<_>>(),
            (0..10).map(|i| format!("v{i}")).collect::<Vec<_>>()
        );
        let (from, to) = (asc[2].seq, asc[6].seq);
        let desc = store
            .read(move |v| {
                v.history("/h/", "f", HistoryRange { from_seq: from, to_seq: to, limit: 3, order: Order::Desc })
            })
            .await
            .unwrap();
        assert_eq!(desc.iter().map(|h| h.value.as_str()).collect::<Vec<_>>(), ["v6", "v5", "v4"]);
        let err =
            store.read(|v| v.history("/h/", "f", HistoryRange { limit: 0, ..Default::default() })).await.unwrap_err();
        assert!(err.is_bad_input());
    }
}

#[tokio::test]
async fn documents_by_key_and_prefix() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        for k in ["m/a", "m/b", "m/c", "n/a"] {
            store.append(vec![doc(k, k.as_bytes())]).await.unwrap();
        }
        store.append(vec![Body::DocDelete(DocDelete { key: "m/b".into() })]).await.unwrap();
        let page = store.read(|v| v.docs("m/", None, 1)).await.unwrap();
        assert_eq!(page.items[0].key, "m/a");
        let next = page.next.unwrap();
        let page = store.read(move |v| v.docs("m/", Some(&next), 10)).await.unwrap();
        assert_eq!(page.items.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["m/c"]);
        assert!(page.next.is_none());
        assert!(store.read(|v| v.doc("m/b")).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_view_reflects_one_snapshot() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store.append(vec![tuple("/a/", "f", "1")]).await.unwrap();
        let store2 = store.clone();
        let (seq, before, after) = tokio::task::spawn_blocking(move || {
            store2.read_blocking(|v| {
                let before = v.tuple("/a/", "f")?;
                store2.append_blocking(vec![tuple("/a/", "f", "2")])?;
                Ok((v.seq(), before, v.tuple("/a/", "f")?))
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(seq, 1);
        assert_eq!(before, after, "a write after the snapshot is invisible to it");
        assert_eq!(store.read(|v| v.tuple("/a/", "f")).await.unwrap().unwrap().value, "2");
    }
}

#[tokio::test]
async fn corrupt_record_is_an_error_never_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.append(vec![tuple("/a/", "f", "1"), tuple("/a/", "f", "2")]).await.unwrap();
        store.close();
    }
    // Flip one byte of record 2 behind the store's back.
    {
        let cfs = keys::ALL_CFS;
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), cfs).unwrap();
        let log = db.cf_handle(keys::CF_LOG).unwrap();
        let mut v = db.get_cf(log, keys::log_key(2)).unwrap().unwrap();
        let n = v.len();
        v[n - 6] ^= 0x40;
        db.put_cf(log, keys::log_key(2), v).unwrap();
    }
    let report = check(dir.path()).unwrap();
    assert!(!report.is_ok());
    assert!(report.problems.iter().any(|p| p.contains("crc mismatch")), "{report}");
    let store = open(dir.path());
    let err = store.read(|v| v.records(1, 2, 10)).await.unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    let mut feed = store.feed(1, Filter::default());
    assert!(matches!(feed.next().await.unwrap(), FeedItem::Record(r) if r.seq == 1));
    assert!(matches!(feed.next().await, Err(Error::Corruption { .. })));
}

#[tokio::test]
async fn check_passes_on_a_healthy_store_and_catches_view_drift() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.append(vec![tuple("/a/", "f", "1"), grant("l", "/a/"), doc("d", b"1")]).await.unwrap();
        store.append(vec![tuple("/a/", "f", "2"), event("/a/", "t", b"p")]).await.unwrap();
        store.close();
    }
    let report = check(dir.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.records, 5);
    // Make the latest view disagree with the log.
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), keys::ALL_CFS).unwrap();
        let tuples = db.cf_handle(keys::CF_TUPLES).unwrap();
        db.delete_cf(tuples, keys::tuple_key("/a/", "f")).unwrap();
        let docs = db.cf_handle(keys::CF_DOCS).unwrap();
        db.put_cf(docs, b"ghost", [1u8, 1, 1, 1]).unwrap();
    }
    let report = check(dir.path()).unwrap();
    assert!(!report.is_ok());
    let text = report.to_string();
    assert!(text.contains("has no latest row"), "{text}");
    assert!(text.contains("ghost"), "{text}");
}

#[tokio::test]
async fn close_ends_open_feeds_and_releases_the_folder() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store.append(vec![tuple("/a/", "f", "1")]).await.unwrap();
        let mut feed = store.feed(1, Filter::default());
        assert!(matches!(feed.next().await.unwrap(), FeedItem::Record(r) if r.seq == 1));
        let waiting = tokio::spawn(async move { feed.next().await });
        let closer = store.clone();
        tokio::task::spawn_blocking(move || closer.close()).await.unwrap();
        drop(store);
        let ended =
            tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.expect("feed hung").unwrap();
        assert!(matches!(ended, Err(Error::Closed)), "{ended:?}");
        // The folder is free again.
        let store = backing.open();
        assert_eq!(store.last_seq(), 1);
    }
}

#[tokio::test]
async fn scan_pages_through_matching_records_and_reports_compaction() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        for i in 0..20 {
            let channel = if i % 2 == 0 { "/even/" } else { "/odd/" };
            store.append(vec![event(channel, "t", &[i])]).await.unwrap();
        }
        let filter = Filter { channel_prefix: Some("/even/".into()), ..Filter::default() };
        let f = filter.clone();
        let page = store.read(move |v| v.scan(1, u64::MAX, &f, 3, 1000)).await.unwrap();
        let Scan::Records { records, next_seq } = page else { panic!("compacted") };
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(next_seq, 6);
        // A scan budget smaller than the gap to the next match returns nothing
        // yet, but moves the cursor.
        let f = filter.clone();
        let page = store.read(move |v| v.scan(6, u64::MAX, &f, 3, 1)).await.unwrap();
        assert_eq!(page, Scan::Records { records: vec![], next_seq: 7 });
        let policy = Retention { log_max_bytes: Some(0), ..Retention::default() };
        store.enforce_retention(&policy, now_us()).await.unwrap();
        let page = store.read(move |v| v.scan(6, u64::MAX, &filter, 3, 100)).await.unwrap();
        assert_eq!(page, Scan::Compacted { earliest: 21 });
    }
}

fn event_with_id(id: &str) -> Body {
    let Body::Event(mut e) = event("/a/", "t", b"p") else { unreachable!() };
    e.id = id.into();
    Body::Event(e)
}

#[tokio::test]
async fn a_retried_event_id_returns_the_original_sequence_numbers() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let first = store.append(vec![event_with_id("a")]).await.unwrap();
        assert!(!first.replayed);
        let again = store.append(vec![event_with_id("a")]).await.unwrap();
        assert_eq!((again.first, again.last, again.replayed), (first.first, first.first, true));
        let batch = store.append(vec![event_with_id("b"), event_with_id("c")]).await.unwrap();
        let retry = store.append(vec![event_with_id("b"), event_with_id("c")]).await.unwrap();
        assert_eq!((retry.first, retry.last, retry.replayed), (batch.first, batch.last, true));
        // Mixing a retry with a new event is refused and writes nothing.
        let err = store.append(vec![event_with_id("c"), event_with_id("d")]).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }) && err.to_string().contains("c (seq"), "{err}");
        assert_eq!(store.last_seq(), 3);
        // Two requests with the same id in one group: the second is a retry.
        let (x, y) = tokio::join!(store.append(vec![event_with_id("e")]), store.append(vec![event_with_id("e")]));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.first, y.first);
        assert!(x.replayed != y.replayed);
        assert_eq!(store.last_seq(), 4);
        store.close();
        // After a restart the ids are still remembered.
        let store = backing.open();
        assert!(store.append(vec![event_with_id("a")]).await.unwrap().replayed);
        store.close();
        assert!(backing.check().is_ok());
    }
}

#[tokio::test]
async fn ids_outside_the_window_or_trimmed_are_new_events() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let options = Options { dedupe_window: std::time::Duration::ZERO, ..Options::new("s") };
        let store = backing.open_with(options);
        let a = store.append(vec![event_with_id("a")]).await.unwrap();
        backing.clock.advance(std::time::Duration::from_millis(2));
        let b = store.append(vec![event_with_id("a")]).await.unwrap();
        assert!(!b.replayed && b.first == a.first + 1, "outside a zero window the id is new");
        store.close();
        assert!(backing.check().is_ok(), "the index points at the newest event with the id");

        let store = backing.open();
        let policy = Retention { log_max_bytes: Some(0), ..Retention::default() };
        store.enforce_retention(&policy, now_us()).await.unwrap();
        let c = store.append(vec![event_with_id("a")]).await.unwrap();
        assert!(!c.replayed, "a trimmed event's id is forgotten");
        store.close();
        let report = backing.check();
        assert!(report.is_ok(), "{report}");
    }
}

#[test]
fn a_format_1_folder_is_upgraded_and_indexed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.append_blocking(vec![event_with_id("old")]).unwrap();
        store.close();
    }
    // Make it look like format 1: no id index, format byte 1.
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), keys::ALL_CFS).unwrap();
        db.delete_cf(db.cf_handle(keys::CF_EVENT_IDS).unwrap(), b"old").unwrap();
        db.put_cf(db.cf_handle(keys::CF_META).unwrap(), keys::META_FORMAT, [1u8]).unwrap();
    }
    assert!(!check(dir.path()).unwrap().is_ok(), "before the upgrade the index is missing");
    let store = open(dir.path());
    assert!(store.append_blocking(vec![event_with_id("old")]).unwrap().replayed);
    store.close();
    assert!(check(dir.path()).unwrap().is_ok());
}

#[test]
fn buffered_durability_acknowledges_and_recovers_what_it_acknowledged() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let options = Options { durability: Durability::Buffered, ..Options::new("s") };
        let store = backing.open_with(options.clone());
        assert_eq!(store.durability(), Durability::Buffered);
        let a = store.append_blocking((0..100).map(|i| tuple("/b/", &format!("f{i}"), "v")).collect()).unwrap();
        assert_eq!((a.first, a.last), (1, 100));
        store.close();
        let store = backing.open_with(options);
        assert_eq!(store.last_seq(), 100);
        assert_eq!(store.read_blocking(|v| v.latest("/b/", None, 1000)).unwrap().items.len(), 100);
        store.close();
        assert!(backing.check().is_ok());
    }
}

fn group_grant(id: &str, group: &str, pattern: &str, expires_at_us: u64) -> Body {
    let Body::LeaseGrant(mut g) = grant(id, pattern) else { unreachable!() };
    g.group = Some(group.into());
    g.expires_at_us = expires_at_us;
    Body::LeaseGrant(g)
}

fn one_event(channel: &str) -> Body {
    let Body::Event(mut e) = event(channel, "t", b"1") else { unreachable!() };
    e.distribution = pepper_storage::Distribution::One;
    Body::Event(e)
}

async fn assigned(store: &Store, seq: u64) -> Vec<String> {
    let records = store.read(move |v| v.records(seq, seq, 1)).await.unwrap();
    match &records[0].body {
        Body::Event(e) => e.assigned.clone(),
        other => panic!("seq {seq} is {other:?}"),
    }
}

/// Distribution `one` is decided by the writer and stored in the record:
/// one live member per group, round robin, lapsed members skipped at once,
/// and the groups survive a reopen.
#[tokio::test]
async fn distribution_one_assigns_one_live_member_per_group_at_commit() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        // Granted in the same batch as the first event: the event sees them.
        let first = store
            .append(vec![
                group_grant("a", "g", "/x/", far_future()),
                group_grant("b", "g", "/x/", far_future()),
                group_grant("z", "h", "/", far_future()),
                grant("plain", "/x/"),
                one_event("/x/y/"),
            ])
            .await
            .unwrap();
        assert_eq!(assigned(&store, first.last).await, ["a", "z"]);
        let mut picks = Vec::new();
        for _ in 0..4 {
            let seq = store.append(vec![one_event("/x/")]).await.unwrap().first;
            picks.push(assigned(&store, seq).await.concat());
        }
        assert_eq!(picks, ["bz", "az", "bz", "az"]);
        // An `all` event is never assigned; a channel outside every group is
        // assigned to nobody.
        let all = store.append(vec![event("/x/", "t", b"1")]).await.unwrap().first;
        assert!(assigned(&store, all).await.is_empty());
        let outside = store.append(vec![one_event("/elsewhere/")]).await.unwrap().first;
        assert_eq!(assigned(&store, outside).await, ["z"]);

        // A member that lapsed is skipped before any expire record exists.
        store.append(vec![group_grant("c", "g", "/x/", store.now_us() + 1)]).await.unwrap();
        backing.clock.advance(std::time::Duration::from_millis(5));
        for _ in 0..4 {
            let seq = store.append(vec![one_event("/x/")]).await.unwrap().first;
            assert!(!assigned(&store, seq).await.contains(&"c".to_string()));
        }

        // The groups are rebuilt from the lease table on reopen.
        store.close();
        let store = backing.open();
        store.append(vec![Body::LeaseRelease(pepper_storage::LeaseEnd { id: "a".into() })]).await.unwrap();
        for _ in 0..3 {
            let seq = store.append(vec![one_event("/x/")]).await.unwrap().first;
            assert_eq!(assigned(&store, seq).await, ["b", "z"]);
        }
    }
}

#[tokio::test]
async fn anycast_groups_are_a_named_limit() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let max = pepper_storage::limits::ANYCAST_GROUPS_MAX;
        let grants: Vec<Body> =
            (0..max).map(|i| group_grant(&format!("l{i}"), &format!("g{i}"), "/x/", far_future())).collect();
        store.append(grants).await.unwrap();
        let err = store.append(vec![group_grant("over", "one-more", "/x/", far_future())]).await.unwrap_err();
        assert!(matches!(err, pepper_storage::Error::TooLarge { what: "anycast groups", .. }), "{err}");
        // Joining an existing group still works.
        store.append(vec![group_grant("join", "g0", "/x/", far_future())]).await.unwrap();
        // Several new groups in one request count together.
        store.append(vec![Body::LeaseRelease(pepper_storage::LeaseEnd { id: "l1".into() })]).await.unwrap();
        let two =
            vec![group_grant("n1", "new-1", "/x/", far_future()), group_grant("n2", "new-2", "/x/", far_future())];
        assert!(matches!(store.append(two).await, Err(pepper_storage::Error::TooLarge { .. })));
        // A group that lived only inside one write group leaves nothing behind.
        store
            .append(vec![
                group_grant("brief", "brief", "/x/", far_future()),
                one_event("/x/"),
                Body::LeaseRelease(pepper_storage::LeaseEnd { id: "brief".into() }),
            ])
            .await
            .unwrap();
        store.append(vec![group_grant("last", "the-last-one", "/x/", far_future())]).await.unwrap();
    }
}

#[tokio::test]
async fn events_must_leave_assigned_empty_and_use_router_channels() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let Body::Event(mut e) = one_event("/x/") else { unreachable!() };
        e.assigned = vec!["someone".into()];
        let err = store.append(vec![Body::Event(e)]).await.unwrap_err();
        assert!(err.to_string().contains("assigned"), "{err}");
        for bad in ["/a//b/", "/a/*/", "/"] {
            let err = store.append(vec![event(bad, "t", b"1")]).await.unwrap_err();
            assert!(matches!(err, pepper_storage::Error::InvalidInput { .. }), "{bad}: {err}");
        }
        assert_eq!(store.last_seq(), 0);
    }
}

fn attribute(channel: &str, field: &str, value: &str, expires_at_us: Option<u64>) -> Body {
    let Body::Event(mut e) = event(channel, "attribute", b"{}") else { unreachable!() };
    e.from = Party { service: "agent".into(), instance: "h1".into() };
    e.tuple = Some(TupleUpdate { field: field.into(), value: value.into(), expires_at_us, recorded: true });
    Body::Event(e)
}

/// An attribute event sets its tuple; a repeated value refreshes the latest
/// row without a history row; an expire applies only once the expiry
/// passed, leaves a tombstone and keeps the history; a new set clears it.
#[tokio::test]
async fn attribute_events_set_tuples_and_tuples_expire_into_tombstones() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let ch = "/a.org/node/h1/";
        let first = store.append(vec![attribute(ch, "load", "0.5", None)]).await.unwrap().first;
        let soon = store.now_us() + 50_000;
        let again = store.append(vec![attribute(ch, "load", "0.5", Some(soon))]).await.unwrap().first;
        let t = store.read(move |v| v.tuple(ch, "load")).await.unwrap().unwrap();
        assert_eq!(
            (t.value.as_str(), t.seq, t.expires_at_us, t.source.service.as_str()),
            ("0.5", again, Some(soon), "agent")
        );
        let history = |store: &Store| {
            let store = store.clone();
            async move {
                store
                    .read(move |v| v.history(ch, "load", HistoryRange::default()))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.seq, h.value))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(history(&store).await, [(first, "0.5".to_string())], "a repeat adds no history row");
        // Not expired yet: the expire record is refused and changes nothing.
        let end = |field: &str| Body::TupleExpire(TupleEnd { channel: ch.into(), field: field.into() });
        assert!(matches!(store.append(vec![end("load")]).await, Err(Error::Conflict { .. })));
        assert!(matches!(store.append(vec![end("nope")]).await, Err(Error::NotFound { .. })));
        backing.clock.advance(std::time::Duration::from_millis(60));
        let expired = store.append(vec![end("load")]).await.unwrap().first;
        assert!(store.read(move |v| v.tuple(ch, "load")).await.unwrap().is_none());
        let stones = store.read(|v| v.tombstones("/a.org/", None, 10)).await.unwrap().items;
        assert_eq!(stones.len(), 1);
        assert_eq!((stones[0].seq, stones[0].reason), (expired, TombstoneReason::Expired));
        assert_eq!(history(&store).await.len(), 1, "the history stays");
        // Set again, to the same value: live again, a history row, no tombstone.
        let back = store.append(vec![attribute(ch, "load", "0.5", None)]).await.unwrap().first;
        assert_eq!(history(&store).await.last().unwrap().0, back);
        assert!(store.read(|v| v.tombstones("/", None, 10)).await.unwrap().items.is_empty());
        // Deleting leaves a "deleted" tombstone.
        store.append(vec![Body::TupleDelete(TupleEnd { channel: ch.into(), field: "load".into() })]).await.unwrap();
        let stones = store.read(|v| v.tombstones("/", None, 10)).await.unwrap().items;
        assert_eq!(stones[0].reason, TombstoneReason::Deleted);
        store.close();
        let report = backing.check();
        assert!(report.is_ok(), "{report}");
    }
}

/// Past its expiry a tuple is not live, even before its expire record: a
/// delete finds nothing, and setting the same value again is a change.
#[tokio::test]
async fn a_lapsed_tuple_is_not_live_before_its_expire_record() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let ch = "/a.org/node/h2/";
        store.append(vec![attribute(ch, "k", "v", Some(store.now_us() + 20_000))]).await.unwrap();
        backing.clock.advance(std::time::Duration::from_millis(30));
        let del = Body::TupleDelete(TupleEnd { channel: ch.into(), field: "k".into() });
        assert!(matches!(store.append(vec![del]).await, Err(Error::NotFound { .. })));
        let again = store.append(vec![attribute(ch, "k", "v", None)]).await.unwrap().first;
        let hist = store.read(move |v| v.history(ch, "k", HistoryRange::default())).await.unwrap();
        assert_eq!(hist.last().map(|h| h.seq), Some(again), "the same value after a lapse is a change");
        store.close();
        assert!(backing.check().is_ok());
    }
}
