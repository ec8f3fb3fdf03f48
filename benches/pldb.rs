//! PLDB queries against the real `pepper` binary on loopback.
//!
//! Run: `cargo bench --bench pldb`. The bench starts `pepper serve`
//! (durability `sync`), stores 50,000 tuples (10,000 nodes with 5 fields
//! each, as attribute events in batches) and one tuple with 50 versions,
//! then measures:
//!
//! - `point`: latest-value point queries (`GET /v1/tuples?channel=&field=`)
//!   from 16 concurrent clients, requests per second; the reference, in the
//!   same run, is `GET /v1/health` the same way (the HTTP stack alone);
//! - `prefix`: one node's 5 fields, p50/p99 latency of sequential queries;
//! - `history`: the 50 versions of one tuple, p50/p99;
//! - `snapshot`: `GET /v1/watch?snapshot=true` over all 50,000 tuples, time
//!   from the request to the `pepper.snapshot` marker.
//!
//! Latencies are printed as `SUMMARY` lines (hdrhistogram), alongside
//! criterion's own figures.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;

const NODES: usize = 10_000;
const FIELDS: [&str; 5] = ["load", "mem", "uptime", "kernel", "cpus"];
const CLIENTS: usize = 16;
const VERSIONS: usize = 50;

fn node(n: usize) -> String {
    format!("/bench.example.com/node/n{n}/")
}

async fn load(client: &reqwest::Client, url: &str) {
    let events: Vec<_> = (0..NODES)
        .flat_map(|n| {
            FIELDS.iter().map(move |f| {
                json!({"channel": node(n), "type": "attribute", "payload": {"field": f, "value": format!("{n}-{f}")}})
            })
        })
        .collect();
    for chunk in events.chunks(1000) {
        let res = client.post(format!("{url}/v1/events")).json(chunk).send().await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }
    for v in 0..VERSIONS {
        let body = json!({"channel": "/bench.example.com/hist/", "type": "attribute",
                          "payload": {"field": "temp", "value": v.to_string()}});
        client.post(format!("{url}/v1/events")).json(&body).send().await.unwrap();
    }
}

fn pldb(c: &mut Criterion) {
    let server = common::Server::temporary(&["--site", "bench"]);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let url = server.url.clone();
    runtime.block_on(load(&client, &url));

    let mut group = c.benchmark_group("pldb");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    let counter = Arc::new(AtomicU64::new(0));
    for (name, path) in [
        (
            "point",
            Box::new(|n: u64| format!("/v1/tuples?channel={}&field=load", node(n as usize % NODES)))
                as Box<dyn Fn(u64) -> String + Send + Sync>,
        ),
        ("health-reference", Box::new(|_| "/v1/health".to_string())),
    ] {
        let path = Arc::new(path);
        group.bench_function(BenchmarkId::new(name, format!("{CLIENTS}-clients")), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(CLIENTS as u64);
                let start = Instant::now();
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..CLIENTS)
                        .map(|_| {
                            let (client, url, counter, path) =
                                (client.clone(), url.clone(), counter.clone(), path.clone());
                            tokio::spawn(async move {
                                for _ in 0..per {
                                    let n = counter.fetch_add(7919, Ordering::Relaxed);
                                    let res = client.get(format!("{url}{}", path(n))).send().await.unwrap();
                                    assert!(res.status().is_success());
                                    res.bytes().await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
                start.elapsed().mul_f64(iters as f64 / (per * CLIENTS as u64) as f64)
            })
        });
    }
    group.finish();

    // Latency of sequential queries, one client.
    let latency = |path: &dyn Fn(usize) -> String, check: &dyn Fn(&serde_json::Value)| {
        let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
        runtime.block_on(async {
            for i in 0..5000usize {
                let t = Instant::now();
                let v: serde_json::Value =
                    client.get(format!("{url}{}", path(i * 7919))).send().await.unwrap().json().await.unwrap();
                h.record(t.elapsed().as_micros() as u64).unwrap();
                if i == 0 {
                    check(&v);
                }
            }
        });
        h
    };
    let report = |name: &str, h: &Histogram<u64>| {
        println!(
            "SUMMARY pldb/{name}: {} queries, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    };
    let prefix = latency(&|n| format!("/v1/tuples?channel={}", node(n % NODES)), &|v| {
        assert_eq!(v["tuples"].as_array().unwrap().len(), 5)
    });
    report("prefix-5-fields", &prefix);
    let history =
        latency(&|_| "/v1/tuples/history?channel=/bench.example.com/hist/&field=temp&limit=50".into(), &|v| {
            assert_eq!(v["history"].as_array().unwrap().len(), VERSIONS)
        });
    report("history-50-versions", &history);
    let health = latency(&|_| "/v1/health".into(), &|_| {});
    report("health-reference", &health);

    // The snapshot of every tuple, streamed.
    let mut snap = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for _ in 0..5 {
        let (took, tuples) = runtime.block_on(async {
            let t = Instant::now();
            let res = client
                .get(format!("{url}/v1/watch?channel=/bench.example.com/node/&snapshot=true"))
                .send()
                .await
                .unwrap();
            let mut body = res.bytes_stream();
            let mut tail = String::new();
            let mut tuples = 0u64;
            'read: while let Some(chunk) = body.next().await {
                tail.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                while let Some(at) = tail.find("\n\n") {
                    let event: String = tail.drain(..at + 2).collect();
                    if event.contains("event: tuples\n") {
                        let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                        tuples +=
                            serde_json::from_str::<serde_json::Value>(data).unwrap().as_array().unwrap().len() as u64;
                    } else if event.contains("event: pepper.snapshot") {
                        break 'read;
                    }
                }
            }
            (t.elapsed(), tuples)
        });
        assert_eq!(tuples, (NODES * FIELDS.len()) as u64, "every tuple in the snapshot");
        snap.record(took.as_micros() as u64).unwrap();
    }
    println!(
        "SUMMARY pldb/snapshot-{}-tuples: 5 runs, median {:.1} ms, max {:.1} ms",
        NODES * FIELDS.len(),
        snap.value_at_quantile(0.5) as f64 / 1000.0,
        snap.max() as f64 / 1000.0
    );
}

criterion_group!(benches, pldb);
criterion_main!(benches);
