//! The change feed: catch-up, the switch to live, lagging readers, filters,
//! and `Compacted`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use pepper_storage::*;

async fn next_record(feed: &mut Feed) -> Record {
    match feed.next_timeout(Duration::from_secs(10)).await.unwrap() {
        Some(FeedItem::Record(r)) => r,
        other => panic!("expected a record, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switch_from_disk_to_live_has_no_gap_or_duplicate_under_concurrent_writes() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        // A backlog on disk, larger than one feed chunk.
        for chunk in 0..10 {
            let bodies = (0..1000).map(|i| tuple("/b/", "f", &format!("{chunk}-{i}"))).collect();
            store.append(bodies).await.unwrap();
        }
        const LIVE: u64 = 4000;
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..LIVE / 4 {
                        store.append(vec![event("/live/", "t", format!("{w}-{i}").as_bytes())]).await.unwrap();
                    }
                })
            })
            .collect();
        // Several readers start at different points while the writers run.
        let mut readers = Vec::new();
        for start in [1u64, 500, 9_999, 10_001] {
            let mut feed = store.feed(start, Filter::default());
            readers.push(tokio::spawn(async move {
                let mut expect = start;
                while expect <= 10_000 + LIVE {
                    let rec = next_record(&mut feed).await;
                    assert_eq!(rec.seq, expect, "reader from {start}: gap or duplicate");
                    expect += 1;
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        for r in readers {
            r.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_reader_blocks_no_writer_and_misses_nothing() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let mut slow = store.feed(1, Filter::default());
        let first = store.append(vec![tuple("/a/", "f", "0")]).await.unwrap();
        assert_eq!(next_record(&mut slow).await.seq, first.first);
        // The reader stops reading; the writer must not wait for it.
        let write_all = async {
            for i in 1..=5_000u64 {
                store.append(vec![tuple("/a/", "f", &i.to_string())]).await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(60), write_all).await.expect("writer was blocked by a slow reader");
        for expect in 2..=5_001 {
            assert_eq!(next_record(&mut slow).await.seq, expect);
        }
    }
}

#[tokio::test]
async fn filters_select_by_channel_prefix_and_type() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store
            .append(vec![
                event("/x/a/", "ping", b"1"),
                event("/x/b/", "pong", b"2"),
                event("/y/", "ping", b"3"),
                tuple("/x/a/", "f", "v"),
                doc("k", b"v"),
            ])
            .await
            .unwrap();
        store.append(vec![event("/x/c/", "ping", b"6")]).await.unwrap();
        let collect = |filter: Filter| {
            let mut feed = store.feed(1, filter);
            async move {
                let mut seqs = Vec::new();
                while let Some(FeedItem::Record(r)) = feed.next_timeout(Duration::from_millis(200)).await.unwrap() {
                    seqs.push(r.seq);
                }
                seqs
            }
        };
        assert_eq!(collect(Filter { channel_prefix: Some("/x/".into()), ..Filter::default() }).await, [1, 2, 4, 6]);
        assert_eq!(collect(Filter { types: vec!["ping".into()], ..Filter::default() }).await, [1, 3, 6]);
        assert_eq!(
            collect(Filter {
                channel_prefix: Some("/x/".into()),
                types: vec!["ping".into(), "tuple.set".into()],
                ..Filter::default()
            })
            .await,
            [1, 4, 6]
        );
        assert_eq!(collect(Filter { types: vec!["doc.put".into()], ..Filter::default() }).await, [5]);
        assert_eq!(collect(Filter { kinds: vec![Kind::Event], ..Filter::default() }).await, [1, 2, 3, 6]);
    }
}

#[tokio::test]
async fn a_start_below_retention_gets_compacted_with_the_earliest_seq() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        for i in 0..100 {
            store.append(vec![tuple("/a/", "f", &i.to_string())]).await.unwrap();
        }
        // Keep roughly the newest 40 records by bytes.
        let rec_bytes = store.read(|v| v.records(100, 100, 1)).await.unwrap()[0].encode().unwrap().len() as u64;
        let policy = Retention { log_max_bytes: Some(rec_bytes * 40), ..Retention::default() };
        let report = store.enforce_retention(&policy, now_us()).await.unwrap();
        assert_eq!(report.floor, 61, "{report:?}");
        assert_eq!(store.earliest_seq(), 61);

        let mut below = store.feed(10, Filter::default());
        assert_eq!(below.next().await.unwrap(), FeedItem::Compacted { earliest: 61 });
        let mut at_floor = store.feed(61, Filter::default());
        assert_eq!(next_record(&mut at_floor).await.seq, 61);

        // A reader that falls behind retention while it runs is told so too. It
        // holds one chunk in memory, so give it more than a chunk to fall behind on.
        for _ in 0..5 {
            let bodies = (0..1000).map(|i| event("/e/", "t", format!("{i}").as_bytes())).collect();
            store.append(bodies).await.unwrap();
        }
        let mut lagging = store.feed(61, Filter::default());
        assert_eq!(next_record(&mut lagging).await.seq, 61);
        let policy = Retention { log_max_bytes: Some(0), ..Retention::default() };
        store.enforce_retention(&policy, now_us()).await.unwrap();
        let mut last = 61;
        loop {
            match lagging.next().await.unwrap() {
                FeedItem::Record(r) => {
                    assert_eq!(r.seq, last + 1, "what it yields before the gap is still contiguous");
                    last = r.seq;
                }
                FeedItem::Compacted { earliest } => {
                    assert_eq!(earliest, 5101);
                    assert!(last < 5100, "the reader really was behind");
                    break;
                }
            }
        }
        // Numbering continues after a log trimmed to nothing, across a reopen.
        drop((below, at_floor, lagging));
        store.close();
        let store = backing.open();
        assert_eq!(store.append(vec![tuple("/a/", "f", "x")]).await.unwrap().first, 5101);
    }
}

/// `Feed::next` is cancel safe: a reader that keeps abandoning it (as a
/// `select!` loop does) still sees every record once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_next_loses_and_repeats_nothing() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..200u32 {
                    store.append(vec![event("/a/", "t", &i.to_le_bytes())]).await.unwrap();
                }
            })
        };
        let mut feed = store.feed(1, Filter::default());
        let mut seen = Vec::new();
        while seen.len() < 200 {
            // Give up after a few microseconds, over and over.
            if let Ok(item) = tokio::time::timeout(std::time::Duration::from_micros(5), feed.next()).await {
                match item.unwrap() {
                    FeedItem::Record(r) => seen.push(r.seq),
                    other => panic!("{other:?}"),
                }
            }
        }
        writer.await.unwrap();
        assert_eq!(seen, (1..=200).collect::<Vec<u64>>());
    }
}
