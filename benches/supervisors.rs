//! Supervisors against real `pepper serve` processes on loopback.
//!
//! Run: `cargo bench --bench supervisors`. It prints `SUMMARY` lines for:
//!
//! - **time to restore R** after a recorder's SIGKILL: five sites, R=2 for
//!   `/bench/node/`, heartbeat 100 ms, monitor interval 200 ms (a monitor is
//!   dead 3 intervals, 600 ms, after its last announcement, which came up to
//!   one interval before the kill: the reference floor), 20,000 history
//!   rows in the subtree. From the kill until a surviving site sees two
//!   complete replicas, neither the dead one. Each sample is a fresh
//!   cluster with two kills in a row (the second restores from the replica
//!   the first made).
//! - **backfill rate**: a site holding 100,000 history rows (1,000
//!   channels of 100 values) and a second site that starts a monitor of
//!   the subtree, copies it and completes, again and again (its policy is
//!   dropped, which stops it and removes its rows, and put back). Rows per
//!   second from the monitor's start to its completion, as the monitor
//!   reports it; the reference is publishing the same rows on the first
//!   site, in batches of 1,000, in the same run.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Server;
use criterion::{criterion_group, criterion_main, Criterion};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const SECRET: &str = "bench-secret-for-federation-0123456789";
const PATTERN: &str = "/bench/node/";

fn site(name: &str, region: &str, seed: Option<&Server>, interval_ms: &str) -> Server {
    let peer = seed.map(|p| format!("s1={}", p.url));
    // The secret's folder lives as long as the site, then is removed.
    let dir = tempfile::tempdir().unwrap();
    let secret = common::secret_file(dir.path(), SECRET);
    let mut args = vec![
        "--site",
        name,
        "--region",
        region,
        "--peer-secret-file",
        &secret,
        "--heartbeat-ms",
        "100",
        "--monitor-interval-ms",
        interval_ms,
        "--record",
        "/bench/node/=2",
    ];
    if let Some(p) = &peer {
        args.extend(["--peer", p.as_str()]);
    }
    let mut server = Server::temporary(&args);
    server.keep(dir);
    server
}

async fn recording(client: &reqwest::Client, s: &Server) -> Value {
    client.get(format!("{}/v1/recording", s.url)).send().await.unwrap().json().await.unwrap()
}

async fn complete(client: &reqwest::Client, s: &Server) -> Vec<String> {
    let v = recording(client, s).await;
    v["policies"][0]["monitors"]
        .as_array()
        .map(|ms| {
            ms.iter().filter(|m| m["state"] == "complete").map(|m| m["site"].as_str().unwrap().to_string()).collect()
        })
        .unwrap_or_default()
}

/// Publishes `channels` x `values` attribute updates to `s` in batches of
/// 1,000; returns the time it took.
async fn preload(client: &reqwest::Client, s: &Server, channels: usize, values: usize) -> Duration {
    let started = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for v in 0..values {
        for c in 0..channels {
            batch.push(json!({"channel": format!("{PATTERN}h{c:04}/"), "type": "attribute",
                              "payload": {"field": "load", "value": format!("{v}")}}));
            if batch.len() == 1000 {
                let res = client.post(format!("{}/v1/events", s.url)).json(&batch).send().await.unwrap();
                assert!(res.status().is_success(), "{}", res.text().await.unwrap());
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        client.post(format!("{}/v1/events", s.url)).json(&batch).send().await.unwrap();
    }
    started.elapsed()
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn supervisors(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let mut group = c.benchmark_group("supervisors");
    group.sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(1));

    let mut restore = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    group.bench_function("restore-r-after-kill", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                runtime.block_on(async {
                    let s1 = site("s1", "r1", None, "200");
                    let mut sites = vec![s1];
                    for (name, region) in [("s2", "r1"), ("s3", "r2"), ("s4", "r2"), ("s5", "r3")] {
                        let s = site(name, region, Some(&sites[0]), "200");
                        sites.push(s);
                    }
                    let mut names: Vec<String> = (1..=5).map(|i| format!("s{i}")).collect();
                    let mut recorders = Vec::new();
                    wait_for("two recorders", Duration::from_secs(30), async || {
                        recorders = complete(&client, &sites[0]).await;
                        recorders.len() == 2
                    })
                    .await;
                    let publisher = names.iter().position(|n| !recorders.contains(n)).unwrap();
                    preload(&client, &sites[publisher], 200, 100).await;
                    // Kill one original recorder, wait for R, then the other.
                    let original = recorders.clone();
                    let mut dead: Vec<String> = Vec::new();
                    for (round, victim) in original.iter().enumerate() {
                        let at = names.iter().position(|n| n == victim).unwrap();
                        let server = sites.remove(at);
                        names.remove(at);
                        let killed = Instant::now();
                        server.kill();
                        dead.push(victim.clone());
                        let watcher = &sites[0];
                        wait_for("R restored", Duration::from_secs(30), async || {
                            let now = complete(&client, watcher).await;
                            now.len() == 2 && now.iter().all(|s| !dead.contains(s))
                        })
                        .await;
                        let took = killed.elapsed();
                        restore.saturating_record(took.as_micros() as u64);
                        if round == 0 {
                            total += took;
                        }
                    }
                });
            }
            total
        })
    });
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "SUMMARY supervisors/restore-r-after-kill: {} kills (5 sites, R=2, 20,000 rows, interval 200 ms), \
         p50 {:.0} ms, max {:.0} ms, min {:.0} ms; reference: a monitor counts as dead 600 ms (3 intervals) \
         after its last announcement, made up to 200 ms before the kill",
        restore.len(),
        ms(&restore, 0.5),
        restore.max() as f64 / 1000.0,
        restore.min() as f64 / 1000.0
    );

    // Backfill rate.
    let a = site("s1", "r1", None, "100");
    let b = site("s2", "r2", Some(&a), "100");
    let (channels, values) = (1000usize, 100usize);
    let rows = (channels * values) as f64;
    let ingest = runtime.block_on(async {
        wait_for("a's monitor", Duration::from_secs(30), async || complete(&client, &a).await.len() == 2).await;
        // Only one site may record while the rows go in: b steps out.
        let res = client.delete(format!("{}/v1/recording/policies?pattern={PATTERN}", b.url)).send().await.unwrap();
        assert_eq!(res.status(), 204);
        wait_for("b stopped", Duration::from_secs(30), async || complete(&client, &a).await.len() == 1).await;
        preload(&client, &a, channels, values).await
    });
    let mut rates = Vec::new();
    group.bench_function("backfill-100000-rows", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                runtime.block_on(async {
                    let res = client
                        .put(format!("{}/v1/recording/policies", b.url))
                        .json(&json!({"pattern": PATTERN, "replicas": 2}))
                        .send()
                        .await
                        .unwrap();
                    assert!(res.status().is_success());
                    wait_for("b's backfill", Duration::from_secs(120), async || {
                        recording(&client, &b).await["local"][0]["state"] == "complete"
                    })
                    .await;
                    let last = recording(&client, &b).await["last_backfill"].clone();
                    assert_eq!(last["rows"].as_f64(), Some(rows + channels as f64), "{last}");
                    let took = Duration::from_secs_f64(last["elapsed_ms"].as_f64().unwrap() / 1000.0);
                    rates.push(last["rows_per_s"].as_f64().unwrap());
                    total += took;
                    let res = client
                        .delete(format!("{}/v1/recording/policies?pattern={PATTERN}", b.url))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 204);
                    wait_for("b stopped", Duration::from_secs(30), async || {
                        recording(&client, &b).await["local"][0]["state"] == "stopped"
                    })
                    .await;
                });
            }
            total
        })
    });
    group.finish();
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    println!(
        "SUMMARY supervisors/backfill: {} backfills of {rows} history rows + {channels} latest values, \
         median {median:.0} rows/s (min {:.0}, max {:.0}); reference: publishing them on the source, {:.0} rows/s",
        rates.len(),
        rates.first().copied().unwrap_or(0.0),
        rates.last().copied().unwrap_or(0.0),
        rows / ingest.as_secs_f64()
    );
}

criterion_group!(benches, supervisors);
criterion_main!(benches);
