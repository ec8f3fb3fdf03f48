//! Retention of the log by age and size, and of history by count and age.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use pepper_storage::*;

#[tokio::test]
async fn log_by_age_trims_a_prefix_and_keeps_views() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        for i in 0..10 {
            store.append(vec![tuple("/a/", &format!("f{i}"), "v")]).await.unwrap();
        }
        let newest = store.read(|v| v.records(10, 10, 1)).await.unwrap()[0].time_us;
        // Nothing is older than an hour as of the newest record.
        let policy = Retention { log_max_age: Some(Duration::from_secs(3600)), ..Retention::default() };
        assert!(store.enforce_retention(&policy, newest).await.unwrap().is_empty());
        // Two hours later, every record is.
        let report = store.enforce_retention(&policy, newest + 7_200_000_000).await.unwrap();
        assert_eq!((report.log_records, report.floor), (10, 11));
        // Views are untouched by log retention.
        let latest = store.read(|v| v.latest("/a/", None, 100)).await.unwrap();
        assert_eq!(latest.items.len(), 10);
        store.close();
        let report = backing.check();
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.rows_unverifiable, 20, "10 latest + 10 history rows predate the log");
    }
}

#[tokio::test]
async fn log_by_bytes_keeps_the_newest_under_budget() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        for i in 0..50 {
            store.append(vec![event("/a/", "t", &[i as u8; 100])]).await.unwrap();
        }
        let size = store.read(|v| v.records(1, 1, 1)).await.unwrap()[0].encode().unwrap().len() as u64;
        let policy = Retention { log_max_bytes: Some(size * 20 + size / 2), ..Retention::default() };
        let report = store.enforce_retention(&policy, now_us()).await.unwrap();
        assert_eq!(report.log_records, 30);
        assert_eq!(report.log_bytes, size * 30);
        assert_eq!(store.read(|v| v.records(0, u64::MAX, 100)).await.unwrap().len(), 20);
        // A second pass finds nothing to do.
        assert!(store.enforce_retention(&policy, now_us()).await.unwrap().is_empty());
        store.close();
        assert!(backing.check().is_ok());
    }
}

#[tokio::test]
async fn history_by_count_and_age_never_touches_latest() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        for i in 0..10 {
            store.append(vec![tuple("/a/", "x", &i.to_string()), tuple("/a/", "y", &i.to_string())]).await.unwrap();
        }
        store.append(vec![tuple("/b/", "z", "only")]).await.unwrap();
        let policy = Retention { history_max_count: Some(3), ..Retention::default() };
        let report = store.enforce_retention(&policy, now_us()).await.unwrap();
        assert_eq!(report.history_tuples, 2, "x and y lose 7 rows each; z has only one");
        let hist = store.read(|v| v.history("/a/", "x", HistoryRange::default())).await.unwrap();
        assert_eq!(hist.iter().map(|h| h.value.as_str()).collect::<Vec<_>>(), ["7", "8", "9"]);
        assert_eq!(store.read(|v| v.history("/b/", "z", HistoryRange::default())).await.unwrap().len(), 1);

        let policy = Retention { history_max_age: Some(Duration::from_secs(60)), ..Retention::default() };
        let report = store.enforce_retention(&policy, now_us() + 3_600_000_000).await.unwrap();
        assert_eq!(report.history_tuples, 2, "z's one row is its newest: kept");
        let hist = store.read(|v| v.history("/a/", "x", HistoryRange::default())).await.unwrap();
        assert_eq!(hist.iter().map(|h| h.value.as_str()).collect::<Vec<_>>(), ["9"], "age keeps the newest row");
        let latest = store.read(|v| v.tuple("/a/", "x")).await.unwrap().unwrap();
        assert_eq!(latest.value, "9", "history retention never trims latest values");
        store.close();
        let report = backing.check();
        assert!(report.is_ok(), "{report}");
    }
}

/// History limits per channel prefix: the longest matching prefix decides,
/// the global limits apply elsewhere, and a rule without limits keeps all.
#[tokio::test]
async fn history_limits_follow_the_longest_matching_prefix() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        for i in 0..10 {
            let v = i.to_string();
            store
                .append(vec![
                    tuple("/a.org/node/h1/", "x", &v),
                    tuple("/a.org/node/h1/packages/", "p", &v),
                    tuple("/a.org/other/", "o", &v),
                    tuple("/b.org/", "b", &v),
                ])
                .await
                .unwrap();
        }
        let rule = |prefix: &str, max_count| HistoryRule { prefix: prefix.into(), max_count, max_age: None };
        let policy = Retention {
            history_max_count: Some(5),
            history_rules: vec![
                rule("/a.org/", Some(2)),
                rule("/a.org/node/h1/packages/", None),
                rule("/a.org/node/", Some(3)),
            ],
            ..Retention::default()
        };
        assert_eq!(policy.history_limits("/a.org/node/h1/"), (Some(3), None));
        store.enforce_retention(&policy, now_us()).await.unwrap();
        let count = |c: &'static str, f: &'static str| {
            let store = store.clone();
            async move { store.read(move |v| v.history(c, f, HistoryRange::default())).await.unwrap().len() }
        };
        assert_eq!(count("/a.org/node/h1/", "x").await, 3, "/a.org/node/ beats /a.org/");
        assert_eq!(count("/a.org/node/h1/packages/", "p").await, 10, "a rule without limits keeps everything");
        assert_eq!(count("/a.org/other/", "o").await, 2);
        assert_eq!(count("/b.org/", "b").await, 5, "the global limit elsewhere");
        store.close();
        assert!(backing.check().is_ok());
    }
}

#[tokio::test]
async fn a_busy_tuple_never_starves_the_others_and_passes_resume() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        // "/a/" sorts first and holds far more rows than one pass may walk.
        for chunk in 0..10 {
            let bodies = (0..100).map(|i| tuple("/a/", "busy", &format!("{chunk}-{i}"))).collect();
            store.append(bodies).await.unwrap();
        }
        for c in ["/b/", "/c/", "/d/"] {
            for i in 0..5 {
                store.append(vec![tuple(c, "f", &i.to_string())]).await.unwrap();
            }
        }
        let policy = Retention { history_max_count: Some(2), history_steps_per_pass: 4, ..Retention::default() };
        let mut passes = 0;
        loop {
            passes += 1;
            assert!(passes < 50, "retention never converged");
            let report = store.enforce_retention(&policy, now_us()).await.unwrap();
            let done = store
                .read(|v| {
                    let mut lens = Vec::new();
                    for (c, f) in [("/a/", "busy"), ("/b/", "f"), ("/c/", "f"), ("/d/", "f")] {
                        lens.push(v.history(c, f, HistoryRange::default())?.len());
                    }
                    Ok(lens)
                })
                .await
                .unwrap();
            if done == [2, 2, 2, 2] {
                assert!(passes > 1, "a 4-step budget cannot cover four tuples in one pass: {report:?}");
                break;
            }
        }
        let kept = store.read(|v| v.history("/a/", "busy", HistoryRange::default())).await.unwrap();
        assert_eq!(kept.iter().map(|h| h.value.as_str()).collect::<Vec<_>>(), ["9-98", "9-99"]);
        store.close();
        assert!(backing.check().is_ok());
    }
}

#[tokio::test]
async fn an_old_prefix_longer_than_a_pass_is_trimmed_over_several() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let bodies = (0..500).map(|i| tuple("/a/", "f", &i.to_string())).collect();
        store.append(bodies).await.unwrap();
        let policy = Retention {
            history_max_age: Some(Duration::from_secs(1)),
            history_steps_per_pass: 100,
            ..Retention::default()
        };
        let later = now_us() + 60_000_000;
        let mut passes = 0;
        // Age keeps the newest row: the trim is done when one row is left.
        while store.read(|v| v.history("/a/", "f", HistoryRange::default())).await.unwrap().len() > 1 {
            passes += 1;
            assert!(passes <= 10, "the old prefix is not shrinking");
            store.enforce_retention(&policy, later).await.unwrap();
        }
        assert!(passes >= 5, "500 old rows at 100 steps a pass take several passes, took {passes}");
        let left = store.read(|v| v.history("/a/", "f", HistoryRange::default())).await.unwrap();
        assert_eq!(left[0].value, "499");
        assert_eq!(store.read(|v| v.tuple("/a/", "f")).await.unwrap().unwrap().value, "499");
    }
}

#[test]
fn the_background_task_trims_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        retention: Retention { log_max_bytes: Some(0), interval: Duration::from_millis(20), ..Retention::default() },
        ..Options::new("s")
    };
    let store = Store::open(dir.path(), options).unwrap();
    store.append_blocking(vec![tuple("/a/", "f", "1")]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.earliest_seq() != 2 {
        assert!(std::time::Instant::now() < deadline, "background retention never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    store.close();
}

/// Tombstones older than their age limit go, and the tombstone floor says
/// from where "what ended since" is no longer complete.
#[tokio::test]
async fn old_tombstones_are_trimmed_and_raise_the_tombstone_floor() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        let end = |f: &str| Body::TupleDelete(TupleEnd { channel: "/a/".into(), field: f.into() });
        store.append(vec![tuple("/a/", "x", "1"), tuple("/a/", "y", "1")]).await.unwrap();
        let x_end = store.append(vec![end("x")]).await.unwrap().first;
        store.append(vec![end("y")]).await.unwrap();
        assert_eq!(store.read(|v| v.tombstone_floor()).await.unwrap(), 0);
        let policy = Retention { tombstone_max_age: Some(Duration::from_secs(60)), ..Retention::default() };
        // Nothing is old yet.
        assert_eq!(store.enforce_retention(&policy, now_us()).await.unwrap().tombstones, 0);
        // y comes back and ends again: its tombstone is new, x's is old.
        store.append(vec![tuple("/a/", "y", "2")]).await.unwrap();
        let later = now_us() + 3_600_000_000;
        let y_end = store.append(vec![end("y")]).await.unwrap().first;
        let report = store.enforce_retention(&policy, later).await.unwrap();
        assert_eq!(report.tombstones, 2, "both rows are older than an hour from `later`");
        assert_eq!(store.read(|v| v.tombstone_floor()).await.unwrap(), y_end + 1);
        assert!(store.read(|v| v.tombstones("/", None, 10)).await.unwrap().items.is_empty());
        assert!(x_end < y_end);
        store.close();
        let report = backing.check();
        assert!(report.is_ok(), "{report}");
    }
}
