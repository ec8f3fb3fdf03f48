//! Recording policy and monitors: which tuple updates a site materializes,
//! a monitor's import (copied rows, held updates, completion by origin
//! marks), stopping, and a restart while importing.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use pepper_storage::*;

fn attribute(channel: &str, field: &str, value: &str) -> Body {
    let Body::Event(mut e) = event(channel, "attribute", b"{}") else { unreachable!() };
    e.tuple = Some(TupleUpdate { field: field.into(), value: value.into(), expires_at_us: None, recorded: true });
    Body::Event(e)
}

fn import(channel: &str, field: &str, value: &str, time_us: u64, history: bool, latest: bool) -> Body {
    Body::TupleImport(TupleImport {
        channel: channel.into(),
        field: field.into(),
        value: value.into(),
        time_us,
        expires_at_us: None,
        source: Party { service: "agent".into(), instance: "h1".into() },
        history,
        latest,
    })
}

async fn values(store: &Store, channel: &str, field: &str) -> Vec<String> {
    let (c, f) = (channel.to_string(), field.to_string());
    let rows = store.read(move |v| v.history(&c, &f, HistoryRange::default())).await.unwrap();
    rows.into_iter().map(|h| h.value).collect()
}

async fn latest(store: &Store, channel: &str, field: &str) -> Option<String> {
    let (c, f) = (channel.to_string(), field.to_string());
    store.read(move |v| v.tuple(&c, &f)).await.unwrap().map(|t| t.value)
}

fn assert_clean(report: &CheckReport) {
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn a_policy_leaves_its_subtree_to_monitors() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store.set_recording_policy(vec!["/n/".into()]).unwrap();
        store.append(vec![attribute("/n/h1/", "load", "1"), attribute("/x/h1/", "load", "1")]).await.unwrap();
        // Outside the policy a site records its own updates; inside, only a
        // monitor does. The event keeps its sidecar, marked unrecorded.
        assert_eq!(latest(&store, "/x/h1/", "load").await.as_deref(), Some("1"));
        assert_eq!(latest(&store, "/n/h1/", "load").await, None);
        let records = store.read(|v| v.records(1, 2, 2)).await.unwrap();
        let Body::Event(e) = &records[0].body else { panic!("event") };
        assert!(e.tuple.as_ref().is_some_and(|t| !t.recorded));
        // Bad policies are refused.
        for bad in [vec!["/n".to_string()], vec!["/n/".into(), "/n/a/".into()], vec!["/*/".into()]] {
            let err = store.set_recording_policy(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        }
        // Monitor records go through the monitor calls only, and imports need
        // an importing monitor.
        let change = MonitorChange {
            pattern: "/n/".into(),
            state: MonitorState::Complete,
            source: String::new(),
            marks: vec![],
            reason: String::new(),
        };
        assert!(matches!(store.append(vec![Body::Monitor(change)]).await.unwrap_err(), Error::InvalidInput { .. }));
        let err = store.append(vec![import("/n/h1/", "load", "0", 5, true, true)]).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
        store.close();
        assert_clean(&backing.check());
    }
}

#[tokio::test]
async fn an_import_merges_the_copy_with_held_updates_by_origin_marks() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        let store = backing.open();
        store.set_recording_policy(vec!["/n/".into()]).unwrap();
        // A stale row from before: a start clears the subtree.
        store.set_recording_policy(vec![]).unwrap();
        store.append(vec![attribute("/n/h1/", "stale", "x")]).await.unwrap();
        store.set_recording_policy(vec!["/n/".into()]).unwrap();
        store.monitor_start("/n/", "too few replicas").await.unwrap();
        assert_eq!(latest(&store, "/n/h1/", "stale").await, None);
        assert!(matches!(store.monitor_start("/n/a/", "nested").await.unwrap_err(), Error::Conflict { .. }));
        // While importing: updates from origin a (seqs 11..13) and one local
        // update arrive. They are logged, not recorded.
        let batch = vec![
            (11, attribute("/n/h1/", "load", "a11")),
            (12, attribute("/n/h1/", "load", "a12")),
            (13, attribute("/n/h1/", "load", "a13")),
        ];
        store.receive("a", batch).await.unwrap();
        let local = store.append(vec![attribute("/n/h2/", "load", "local")]).await.unwrap();
        assert_eq!(latest(&store, "/n/h1/", "load").await, None);
        // The copy from replica y: older history, then the latest values. It
        // includes a's updates up to 12, and none of this site's.
        store
            .append(vec![
                import("/n/h1/", "load", "y1", 100, true, false),
                import("/n/h1/", "load", "a11", 200, true, false),
                import("/n/h1/", "load", "a12", 300, true, false),
                import("/n/h1/", "load", "a12", 300, false, true),
            ])
            .await
            .unwrap();
        let done = store.monitor_complete("/n/", "y", vec![("a".into(), 12), ("y".into(), 40)]).await.unwrap();
        // a13 and the local update were not in the copy: recorded with the
        // completion, after the copied rows.
        assert_eq!(done.written(), 3);
        assert_eq!(values(&store, "/n/h1/", "load").await, ["y1", "a11", "a12", "a13"]);
        assert_eq!(latest(&store, "/n/h1/", "load").await.as_deref(), Some("a13"));
        assert_eq!(latest(&store, "/n/h2/", "load").await.as_deref(), Some("local"));
        let copied = store.read(|v| v.history("/n/h1/", "load", HistoryRange::default())).await.unwrap();
        assert_eq!(copied[0].time_us, 100, "a copied row keeps the time it was set");
        assert!(local.first > 0);
        // Complete: a received update at or below its origin's copy mark is a
        // repeat and is not recorded; above it, and from other origins, it is.
        store.receive("y", vec![(40, attribute("/n/h1/", "load", "y40"))]).await.unwrap();
        assert_eq!(latest(&store, "/n/h1/", "load").await.as_deref(), Some("a13"));
        store.receive("y", vec![(41, attribute("/n/h1/", "load", "y41"))]).await.unwrap();
        store.receive("b", vec![(1, attribute("/n/h3/", "load", "b1"))]).await.unwrap();
        store.append(vec![attribute("/n/h2/", "load", "local2")]).await.unwrap();
        assert_eq!(latest(&store, "/n/h1/", "load").await.as_deref(), Some("y41"));
        assert_eq!(latest(&store, "/n/h3/", "load").await.as_deref(), Some("b1"));
        assert_eq!(latest(&store, "/n/h2/", "load").await.as_deref(), Some("local2"));
        let monitors = store.read(|v| v.monitors()).await.unwrap();
        assert_eq!(monitors.len(), 1);
        assert_eq!((monitors[0].state, monitors[0].source.as_str()), (MonitorState::Complete, "y"));
        assert!(monitors[0].reason.contains("2 of 4"), "{}", monitors[0].reason);
        // Stopping removes the subtree's rows and records no more.
        store.monitor_stop("/n/", "too many replicas").await.unwrap();
        assert_eq!(latest(&store, "/n/h1/", "load").await, None);
        assert!(values(&store, "/n/h1/", "load").await.is_empty());
        store.append(vec![attribute("/n/h2/", "load", "after")]).await.unwrap();
        assert_eq!(latest(&store, "/n/h2/", "load").await, None);
        assert!(matches!(store.monitor_stop("/n/", "again").await.unwrap_err(), Error::NotFound { .. }));
        store.close();
        assert_clean(&backing.check());
    }
}

#[tokio::test]
async fn a_restart_while_importing_breaks_the_monitor() {
    for backing in Backing::each() {
        eprintln!("engine: {}", backing.name());
        {
            let store = backing.open();
            store.set_recording_policy(vec!["/n/".into()]).unwrap();
            store.monitor_start("/n/", "test").await.unwrap();
            store.receive("a", vec![(1, attribute("/n/h1/", "load", "1"))]).await.unwrap();
            store.close();
        }
        let store = backing.open();
        store.set_recording_policy(vec!["/n/".into()]).unwrap();
        // The held update is gone with the restart: completing would leave a hole.
        let err = store.monitor_complete("/n/", "y", vec![]).await.unwrap_err();
        assert!(err.to_string().contains("restarted"), "{err}");
        store.monitor_stop("/n/", "broken").await.unwrap();
        // A reason is for people: a long one is cut at the limit, not refused.
        let long = "é".repeat(limits::MONITOR_REASON_BYTES_MAX);
        store.monitor_start("/n/", &long).await.unwrap();
        let rows = store.read(|v| v.monitors()).await.unwrap();
        assert!(rows[0].reason.len() <= limits::MONITOR_REASON_BYTES_MAX && rows[0].reason.starts_with('é'));
        store.monitor_stop("/n/", "again").await.unwrap();
        store.monitor_start("/n/", "again").await.unwrap();
        store.monitor_complete("/n/", "", vec![]).await.unwrap();
        store.receive("a", vec![(2, attribute("/n/h1/", "load", "2"))]).await.unwrap();
        assert_eq!(latest(&store, "/n/h1/", "load").await.as_deref(), Some("2"));
        store.close();
        assert_clean(&backing.check());
    }
}
