//! Federation against real `pepper serve` processes on loopback.
//!
//! Run: `cargo bench --bench federation`. It prints `SUMMARY` lines for:
//!
//! - **cross-site delivery**: sites a and b; a lease on each for
//!   `/bench/`, each with its SSE stream; events published on a at 2,000/s
//!   for 5 s. Latency from publish to arrival on b's stream (through a's
//!   forwarder and b's log), p50/p99; the reference from the same run is
//!   the same events' arrival on a's own stream.
//! - **forwarding throughput** of one peer link: b is stopped (SIGSTOP)
//!   while 50,000 matching events are published on a in batches of 100,
//!   then continued; records per second from the first progress of a's
//!   cursor for b until its lag is zero.
//! - **federated latest-value query** over 5 sites (200 tuples each),
//!   `scope=all&deadline_ms=250`: p50/p99 of 200 queries, against
//!   `scope=local` on the same site; then with 2 sites stopped (SIGSTOP),
//!   every query must return within the deadline plus 50 ms.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Server;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const SECRET: &str = "bench-secret-for-federation-0123456789";

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn site(name: &str, peer: Option<&Server>) -> Server {
    let peer_arg = peer.map(|p| format!("a={}", p.url));
    // The secret's folder lives as long as the site, then is removed.
    let dir = tempfile::tempdir().unwrap();
    let secret = common::secret_file(dir.path(), SECRET);
    let mut args = vec!["--site", name, "--peer-secret-file", &secret, "--heartbeat-ms", "200"];
    if let Some(p) = &peer_arg {
        args.extend(["--peer", p.as_str()]);
    }
    let mut server = Server::temporary(&args);
    server.keep(dir);
    server
}

async fn sites(client: &reqwest::Client, s: &Server) -> Value {
    client.get(format!("{}/v1/sites", s.url)).send().await.unwrap().json().await.unwrap()
}

async fn wait_up(client: &reqwest::Client, s: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = sites(client, s).await;
        let up = v["peers"].as_array().unwrap().iter().filter(|p| p["state"] == "up").count();
        if up >= n {
            return;
        }
        assert!(Instant::now() < deadline, "peers never came up: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn peer_entry(v: &Value, name: &str) -> Value {
    v["peers"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null)
}

/// Reads an SSE lease stream, recording publish-to-arrival latency.
fn follow(res: reqwest::Response, hist: Arc<Mutex<Histogram<u64>>>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        let mut got = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(at) = buf.find("\n\n") {
                let event: String = buf.drain(..at + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                    let v: Value = serde_json::from_str(data.trim()).unwrap();
                    if let Some(t) = v["payload"]["t_us"].as_u64() {
                        hist.lock().unwrap().saturating_record(now_us().saturating_sub(t));
                        got += 1;
                    }
                }
            }
        }
        got
    })
}

fn federation(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let mut group = c.benchmark_group("federation");
    group.sample_size(10).warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_secs(1));

    // Cross-site delivery latency and one link's forwarding throughput.
    let a = site("a", None);
    let b = site("b", Some(&a));
    let (remote, local) = (
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap())),
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap())),
    );
    let acks = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
    let rate = 2000u64;
    let seconds = 5u64;
    runtime.block_on(async {
        wait_up(&client, &a, 1).await;
        wait_up(&client, &b, 1).await;
        let mut streams = Vec::new();
        let no_remote = std::env::var("PEPPER_BENCH_NO_REMOTE").is_ok();
        for (s, hist) in [(&b, remote.clone()), (&a, local.clone())] {
            if no_remote && s.url == b.url {
                continue;
            }
            let lease: Value = client
                .post(format!("{}/v1/leases", s.url))
                .json(&json!({"channel": "/bench/", "ttl_s": 3600, "types": ["tick"]}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = lease["id"].as_str().unwrap();
            let res = client.get(format!("{}/v1/leases/{id}/events", s.url)).send().await.unwrap();
            streams.push(follow(res, hist));
        }
        // Warm up (connections, the first forwarded batches, memtables):
        // one second at the rate, then measure from scratch.
        for i in 0..rate {
            let body = json!({"channel": "/bench/warm/", "type": "tick", "payload": {"i": i, "t_us": now_us()}});
            assert!(client.post(format!("{}/v1/events", a.url)).json(&body).send().await.unwrap().status().is_success());
            tokio::time::sleep(Duration::from_micros(1_000_000 / rate)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while (!no_remote && remote.lock().unwrap().len() < rate) || local.lock().unwrap().len() < rate {
            assert!(Instant::now() < deadline, "warm-up events never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        remote.lock().unwrap().reset();
        local.lock().unwrap().reset();
        let total = rate * seconds;
        let publishers: Vec<_> = (0..8u64)
            .map(|p| {
                let (client, url, acks) = (client.clone(), format!("{}/v1/events", a.url), acks.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs_f64(8.0 / rate as f64));
                    for i in 0..total / 8 {
                        tick.tick().await;
                        let body = json!({"channel": format!("/bench/n{p}/"), "type": "tick", "payload": {"i": i, "t_us": now_us()}});
                        let sent = now_us();
                        assert!(client.post(&url).json(&body).send().await.unwrap().status().is_success());
                        acks.lock().unwrap().saturating_record(now_us().saturating_sub(sent));
                    }
                })
            })
            .collect();
        for p in publishers {
            p.await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(if no_remote { 0 } else { 30 });
        while remote.lock().unwrap().len() < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(no_remote || remote.lock().unwrap().len() == total, "every event reached b exactly once");
        for s in streams {
            s.abort();
        }
    });
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    {
        let (r, l, k) = (remote.lock().unwrap(), local.lock().unwrap(), acks.lock().unwrap());
        println!(
            "SUMMARY federation/cross-site-delivery-{rate}-per-s: {} events a -> b, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             reference (same events on a's own lease): p50 {:.2} ms, p99 {:.2} ms; publish acknowledged p50 {:.2} ms, p99 {:.2} ms",
            r.len(),
            ms(&r, 0.5),
            ms(&r, 0.99),
            r.max() as f64 / 1000.0,
            ms(&l, 0.5),
            ms(&l, 0.99),
            ms(&k, 0.5),
            ms(&k, 0.99)
        );
    }

    if std::env::var("PEPPER_BENCH_ONLY").is_ok_and(|v| v == "delivery") {
        return;
    }
    group.bench_function("forwarding-50000", |bench| {
        bench.iter_custom(|iters| {
            let took = runtime.block_on(async {
                let backlog = 50_000u64;
                b.signal("STOP");
                let publish_start = Instant::now();
                let url = format!("{}/v1/events", a.url);
                for chunk in 0..backlog / 100 {
                    let batch: Vec<Value> = (0..100)
                        .map(|i| json!({"channel": "/bench/backlog/", "type": "tick", "payload": {"i": chunk * 100 + i}}))
                        .collect();
                    assert!(client.post(&url).json(&batch).send().await.unwrap().status().is_success());
                }
                let published = publish_start.elapsed();
                b.signal("CONT");
                let lag = || async { peer_entry(&sites(&client, &a).await, "b")["cursor_lag"].as_u64().unwrap_or(u64::MAX) };
                let start_lag = lag().await;
                let mut started = None;
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let l = lag().await;
                    if started.is_none() && l < start_lag {
                        started = Some(Instant::now());
                    }
                    if l == 0 {
                        break;
                    }
                    assert!(Instant::now() < deadline, "b never caught up (lag {l})");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let took = started.map_or(Duration::from_millis(1), |s| s.elapsed());
                println!(
                    "SUMMARY federation/forwarding: {backlog} records a -> b in {:.0} ms, {:.0} records/s; \
                     reference: publishing them on a (batches of 100) took {:.0} ms, {:.0} records/s",
                    took.as_secs_f64() * 1e3,
                    backlog as f64 / took.as_secs_f64(),
                    published.as_secs_f64() * 1e3,
                    backlog as f64 / published.as_secs_f64()
                );
                took
            });
            took * u32::try_from(iters).unwrap_or(u32::MAX)
        })
    });
    group.finish();
    drop((a, b));

    // Federated latest-value queries over 5 sites, then with 2 stopped.
    let first = site("a", None);
    let mut all = vec![];
    for name in ["b", "c", "d", "e"] {
        all.push(site(name, Some(&first)));
    }
    all.insert(0, first);
    let names = ["a", "b", "c", "d", "e"];
    runtime.block_on(async {
        for s in &all {
            wait_up(&client, s, 4).await;
        }
        for (s, name) in all.iter().zip(names) {
            let batch: Vec<Value> = (0..200)
                .map(|i| json!({"channel": format!("/fleet/{name}/n{i}/"), "type": "attribute", "payload": {"field": "load", "value": i}}))
                .collect();
            assert!(client.post(format!("{}/v1/events", s.url)).json(&batch).send().await.unwrap().status().is_success());
        }
    });
    let query = |scope: &str, n: usize, check: &dyn Fn(&Value)| -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        runtime.block_on(async {
            for _ in 0..n {
                let t = Instant::now();
                let v: Value = client
                    .get(format!(
                        "{}/v1/tuples?channel=/fleet/&recursive=true&limit=1000&scope={scope}&deadline_ms=250",
                        all[0].url
                    ))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                h.saturating_record(t.elapsed().as_micros() as u64);
                check(&v);
            }
        });
        h
    };
    let local_h = query("local", 200, &|v| assert_eq!(v["tuples"].as_array().unwrap().len(), 200));
    let all_h = query("all", 200, &|v| {
        assert_eq!(v["manifest"]["answered"], 5, "{}", v["manifest"]);
        assert_eq!(v["tuples"].as_array().unwrap().len(), 1000);
    });
    all[3].signal("STOP");
    all[4].signal("STOP");
    let dead_h = query("all", 50, &|v| {
        assert_eq!(v["manifest"]["answered"], 3, "{}", v["manifest"]);
        assert_eq!(v["tuples"].as_array().unwrap().len(), 600);
    });
    all[3].signal("CONT");
    all[4].signal("CONT");
    println!(
        "SUMMARY federation/query-5-sites: 1000 tuples, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         reference scope=local (200 tuples): p50 {:.2} ms, p99 {:.2} ms",
        ms(&all_h, 0.5),
        ms(&all_h, 0.99),
        all_h.max() as f64 / 1000.0,
        ms(&local_h, 0.5),
        ms(&local_h, 0.99)
    );
    println!(
        "SUMMARY federation/query-5-sites-2-stopped: deadline 250 ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         (must be <= 300 ms: {})",
        ms(&dead_h, 0.5),
        ms(&dead_h, 0.99),
        dead_h.max() as f64 / 1000.0,
        if dead_h.max() <= 300_000 { "yes" } else { "NO" }
    );
}

criterion_group!(benches, federation);
criterion_main!(benches);
