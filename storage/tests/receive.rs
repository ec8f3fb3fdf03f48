//! Records received from peer sites: appended with their origin, deduped
//! by the origin's mark (durably, in the same batch), not materialized as
//! tuples without a monitor (`recording.rs` has those); and the forwarders' durable per-peer cursors.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use pepper_storage::*;

fn attribute(channel: &str, field: &str, value: &str) -> Body {
    let Body::Event(mut e) = event(channel, "attribute", b"{}") else { unreachable!() };
    e.id = format!("{channel}{field}{value}");
    e.tuple = Some(TupleUpdate { field: field.into(), value: value.into(), expires_at_us: None, recorded: true });
    Body::Event(e)
}

#[tokio::test]
async fn received_records_keep_their_origin_and_a_retry_is_dropped() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store.append(vec![event("/a/", "t", b"local")]).await.unwrap();
        let batch =
            vec![(3, event("/a/", "t", b"r3")), (7, attribute("/a/n/", "load", "1")), (9, event("/a/", "t", b"r9"))];
        let got = store.receive("site-b", batch.clone()).await.unwrap();
        assert_eq!((got.first, got.last, got.dropped), (2, 4, 0));
        assert_eq!(store.origin_mark("site-b").unwrap(), 9);
        // The same batch again: all dropped, nothing written.
        let again = store.receive("site-b", batch.clone()).await.unwrap();
        assert_eq!((again.dropped, again.replayed), (3, true));
        assert_eq!(store.last_seq(), 4);
        // A batch overlapping the mark: only the new part is appended.
        let more = vec![(9, event("/a/", "t", b"r9")), (12, event("/a/", "t", b"r12"))];
        let got = store.receive("site-b", more).await.unwrap();
        assert_eq!((got.first, got.last, got.dropped), (5, 5, 1));
        let records = store.read(|v| v.records(1, 10, 10)).await.unwrap();
        let origins: Vec<&str> = records.iter().map(|r| r.origin.as_str()).collect();
        assert_eq!(origins, ["test-site", "site-b", "site-b", "site-b", "site-b"]);
        // An attribute from elsewhere is delivered as an event but sets no tuple
        // here: without a monitor of its channel, a site records its own.
        assert!(store.read(|v| v.tuple("/a/n/", "load")).await.unwrap().is_none());
        let Body::Event(e) = &records[2].body else { panic!("not an event") };
        assert!(e.tuple.as_ref().is_some_and(|t| !t.recorded) && e.event_type == "attribute");
        // Refused, changing nothing: this site's own name, a non-event, seqs
        // out of order.
        for (origin, batch) in [
            ("test-site", vec![(20, event("/a/", "t", b"x"))]),
            ("site-b", vec![(20, doc("k", b"v"))]),
            ("site-b", vec![(21, event("/a/", "t", b"x")), (20, event("/a/", "t", b"y"))]),
        ] {
            let err = store.receive(origin, batch).await.unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        }
        assert_eq!(store.last_seq(), 5);
        // A gap marker (the origin trimmed up to 20 before sending it): its
        // markers are appended once, with the mark, and a repeat is dropped.
        let markers = vec![event("/a/", "pepper.gap", b"1"), event("/b/", "pepper.gap", b"2")];
        let got = store.receive_gap("site-b", 11, markers.clone()).await.unwrap();
        assert_eq!((got.dropped, store.last_seq()), (2, 5), "a gap below the mark is old news");
        let got = store.receive_gap("site-b", 20, markers.clone()).await.unwrap();
        assert_eq!((got.first, got.last, got.dropped), (6, 7, 0));
        assert_eq!(store.origin_mark("site-b").unwrap(), 20);
        assert_eq!(store.receive_gap("site-b", 20, markers).await.unwrap().dropped, 2);
        let dup = store.receive("site-b", vec![(18, event("/a/", "t", b"old"))]).await.unwrap();
        assert_eq!(dup.dropped, 1);
        // Marks and cursors survive a restart, and the store checks clean.
        store.set_peer_cursor("site-c", 42).unwrap();
        assert_eq!(store.peer_cursor("site-d").unwrap(), None);
        store.close();
        let store = backing.open();
        assert_eq!(store.origin_mark("site-b").unwrap(), 20);
        assert_eq!(store.peer_cursor("site-c").unwrap(), Some(42));
        let dup = store.receive("site-b", vec![(12, event("/a/", "t", b"r12"))]).await.unwrap();
        assert_eq!(dup.dropped, 1);
        store.close();
        let report = backing.check();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// A batch of duplicates committed in the same write group as real writes:
/// its empty range must not upset the group's accounting, and every write
/// in the group lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_share_a_write_group_with_new_records() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store.receive("site-b", vec![(5, event("/a/", "t", b"r5"))]).await.unwrap();
        for round in 0..50u64 {
            let tasks: Vec<_> = (0..8u64)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        if i % 2 == 0 {
                            let dup = store.receive("site-b", vec![(5, event("/a/", "t", b"r5"))]).await.unwrap();
                            assert_eq!(dup.dropped, 1);
                        } else {
                            store.append(vec![event("/a/", "t", format!("{round}-{i}").as_bytes())]).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
        assert_eq!(store.last_seq(), 1 + 50 * 4);
    }
}
