//! End-to-end publish-to-SSE delivery latency against the real binary.
//!
//! Run: `cargo bench --bench delivery` (`PEPPER_BENCH_LEASES`, default
//! 1000, and `PEPPER_BENCH_RATE`, default 2000 events/s, change the load).
//! The bench starts `pepper serve` (durability `sync`) on loopback, grants
//! one lease per node channel, opens one SSE stream per lease, and publishes
//! events spread over the nodes at a fixed rate. Each event carries its
//! publish time; each stream records the delay to its arrival. Every event
//! must reach exactly its lease: the counts are checked before the figures
//! are printed as `SUMMARY` lines. The reference from the same run is the
//! publish round trip itself (HTTP plus the durable commit): delivery can be
//! no faster, and the difference is what routing and SSE add.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn delivery(c: &mut Criterion) {
    let leases = env_or("PEPPER_BENCH_LEASES", 1000) as usize;
    let rate = env_or("PEPPER_BENCH_RATE", 2000);
    let seconds = env_or("PEPPER_BENCH_SECONDS", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("delivery");
    group.sample_size(10);
    group.bench_function(format!("sse-{leases}-leases-{rate}-per-s"), |b| {
        b.iter_custom(|iters| {
            // One scenario run per criterion sample is enough: the figures
            // that matter are the latency percentiles printed below.
            let server = common::Server::temporary(&["--site", "bench"]);
            let client = reqwest::Client::builder().pool_max_idle_per_host(leases + 64).build().unwrap();
            let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
            let received = Arc::new(AtomicU64::new(0));
            let acks = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
            let total = rate * seconds;
            let elapsed = runtime.block_on(async {
                let mut streams = Vec::new();
                for n in 0..leases {
                    let lease: serde_json::Value = client
                        .post(format!("{}/v1/leases", server.url))
                        .json(&json!({"channel": format!("/bench.example.com/node/n{n}/"), "ttl_s": 3600}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let id = lease["id"].as_str().unwrap().to_string();
                    let res = client.get(format!("{}/v1/leases/{id}/events", server.url)).send().await.unwrap();
                    let (hist, received) = (hist.clone(), received.clone());
                    streams.push(tokio::spawn(async move {
                        let mut body = res.bytes_stream();
                        let mut buf = String::new();
                        let mut mine = 0u64;
                        while let Some(chunk) = body.next().await {
                            let Ok(chunk) = chunk else { break };
                            buf.push_str(&String::from_utf8_lossy(&chunk));
                            while let Some(at) = buf.find("\n\n") {
                                let event: String = buf.drain(..at + 2).collect();
                                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                                    let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
                                    if let Some(t) = v["payload"]["t_us"].as_u64() {
                                        hist.lock().unwrap().saturating_record(now_us().saturating_sub(t));
                                        mine += 1;
                                        received.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                        mine
                    }));
                }
                // Publish at the rate, spread over the nodes, from 8 clients.
                let start = Instant::now();
                let per_client = total / 8;
                let publishers: Vec<_> = (0..8u64)
                    .map(|p| {
                        let (client, url) = (client.clone(), format!("{}/v1/events", server.url));
                        let acks = acks.clone();
                        tokio::spawn(async move {
                            let interval = Duration::from_secs_f64(8.0 / rate as f64);
                            let mut tick = tokio::time::interval(interval);
                            for i in 0..per_client {
                                tick.tick().await;
                                let n = (p * per_client + i) % leases as u64;
                                let body = json!({"channel": format!("/bench.example.com/node/n{n}/load/"),
                                                  "type": "attribute",
                                                  "payload": {"field": "load", "value": i.to_string(), "t_us": now_us()}});
                                let sent_us = now_us();
                                let res = client.post(&url).json(&body).send().await.unwrap();
                                assert!(res.status().is_success(), "publish: {}", res.status());
                                acks.lock().unwrap().saturating_record(now_us().saturating_sub(sent_us));
                            }
                        })
                    })
                    .collect();
                for p in publishers {
                    p.await.unwrap();
                }
                let sent = per_client * 8;
                let deadline = Instant::now() + Duration::from_secs(30);
                while received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let got = received.load(Ordering::Relaxed);
                assert_eq!(got, sent, "every event reaches its one matching lease");
                for s in streams {
                    s.abort();
                }
                start.elapsed()
            });
            let (h, a) = (hist.lock().unwrap(), acks.lock().unwrap());
            let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "SUMMARY delivery/{leases}-leases-{rate}-per-s: {} events, publish-to-SSE latency p50 {:.2} ms, \
                 p99 {:.2} ms, max {:.2} ms; reference: publish acknowledged p50 {:.2} ms, p99 {:.2} ms",
                h.len(),
                ms(&h, 0.5),
                ms(&h, 0.99),
                h.max() as f64 / 1000.0,
                ms(&a, 0.5),
                ms(&a, 0.99),
            );
            let _ = iters;
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, delivery);
criterion_main!(benches);
