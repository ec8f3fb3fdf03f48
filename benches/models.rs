//! The CIM model repository over HTTP against the real `pepper` binary.
//!
//! Run: `cargo bench --bench models`. The bench starts `pepper serve`
//! (durability `sync`), defines `Lab_Host` (a CIM_ComputerSystem subclass),
//! and creates 100,000 instances of about 1 KB each (90,000
//! CIM_ComputerSystem, 10,000 Lab_Host) from 64 concurrent clients, then
//! 10,000 CIM_Service instances and 10,000 CIM_HostedService associations
//! (host i hosts service i). It measures, printing `SUMMARY` lines:
//!
//! - deep enumeration of CIM_ComputerSystem (all 100,000, pages of 1,000),
//!   instances per second; the reference in the same run is the shallow
//!   enumeration (90,000, one class), and the published figure for
//!   OpenPegasus is about 9,000-10,000 instances of 1 KB per second;
//! - get by path, p50/p99 of 5,000 sequential requests;
//! - associators of a host (through 10,000 associations), p50/p99;
//! - a WHERE query over the 100,000 instances, time per query.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const HOSTS: usize = 100_000;
const LAB_HOSTS: usize = 10_000;
const ASSOCIATIONS: usize = 10_000;
const CLIENTS: usize = 64;

fn url(base: &str, parts: &[&str]) -> reqwest::Url {
    let mut u = reqwest::Url::parse(base).unwrap();
    u.path_segments_mut().unwrap().extend(["v1", "namespaces", "root/cimv2"]).extend(parts);
    u
}

fn host_path(n: usize) -> String {
    let class = if n < LAB_HOSTS { "Lab_Host" } else { "CIM_ComputerSystem" };
    format!("root/cimv2:{class}.CreationClassName=\"{class}\",Name=\"host-{n:06}\"")
}

fn service_path(n: usize) -> String {
    format!(
        "root/cimv2:CIM_Service.CreationClassName=\"CIM_Service\",Name=\"svc-{n:06}\",SystemCreationClassName=\"Lab_Host\",SystemName=\"host-{n:06}\""
    )
}

async fn create_all(client: &reqwest::Client, base: &str, items: Vec<Value>) {
    let chunks: Vec<Vec<Value>> = items.chunks(items.len().div_ceil(CLIENTS)).map(|c| c.to_vec()).collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (client, u) = (client.clone(), url(base, &["instances"]));
            tokio::spawn(async move {
                for body in chunk {
                    let res = client.post(u.clone()).json(&body).send().await.unwrap();
                    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn models(c: &mut Criterion) {
    let server = common::Server::temporary(&["--site", "bench"]);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let base = server.url.clone();
    let load_start = Instant::now();
    runtime.block_on(async {
        let lab = json!({"name": "Lab_Host", "superclass": "CIM_ComputerSystem", "properties": [{"name": "Rack", "type": "string"}]});
        assert_eq!(client.post(url(&base, &["classes"])).json(&lab).send().await.unwrap().status(), 201);
        let filler = "x".repeat(800);
        let hosts: Vec<Value> = (0..HOSTS)
            .map(|n| {
                let class = if n < LAB_HOSTS { "Lab_Host" } else { "CIM_ComputerSystem" };
                let mut p = json!({"CreationClassName": class, "Name": format!("host-{n:06}"), "EnabledState": (n % 5) as u64,
                                   "Description": filler, "ElementName": format!("element {n}")});
                if n < LAB_HOSTS {
                    p["Rack"] = json!(format!("rack-{}", n % 40));
                }
                json!({"class": class, "properties": p})
            })
            .collect();
        create_all(&client, &base, hosts).await;
        let services: Vec<Value> = (0..ASSOCIATIONS)
            .map(|n| json!({"class": "CIM_Service", "properties": {"SystemCreationClassName": "Lab_Host",
                "SystemName": format!("host-{n:06}"), "CreationClassName": "CIM_Service", "Name": format!("svc-{n:06}")}}))
            .collect();
        create_all(&client, &base, services).await;
        let assocs: Vec<Value> = (0..ASSOCIATIONS)
            .map(|n| json!({"class": "CIM_HostedService", "properties": {"Antecedent": host_path(n), "Dependent": service_path(n)}}))
            .collect();
        create_all(&client, &base, assocs).await;
    });
    println!(
        "SUMMARY models/load: {} instances created in {:.1} s",
        HOSTS + 2 * ASSOCIATIONS,
        load_start.elapsed().as_secs_f64()
    );

    // Enumeration, deep and shallow, paging through every instance.
    let enumerate = |deep: bool| -> (usize, Duration) {
        runtime.block_on(async {
            let start = Instant::now();
            let (mut count, mut cursor): (usize, Option<String>) = (0, None);
            loop {
                let mut q = vec![
                    ("class", "CIM_ComputerSystem".to_string()),
                    ("deep", deep.to_string()),
                    ("limit", "1000".into()),
                ];
                q.extend(cursor.take().map(|c| ("cursor", c)));
                let page: Value =
                    client.get(url(&base, &["instances"])).query(&q).send().await.unwrap().json().await.unwrap();
                count += page["instances"].as_array().unwrap().len();
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            (count, start.elapsed())
        })
    };
    let mut group = c.benchmark_group("models");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(1));
    group.bench_function("deep-enumeration-100000", |b| {
        b.iter_custom(|iters| {
            let (count, took) = enumerate(true);
            assert_eq!(count, HOSTS);
            println!(
                "SUMMARY models/deep-enumeration: {count} instances in {:.0} ms, {:.0} instances/s",
                took.as_secs_f64() * 1e3,
                count as f64 / took.as_secs_f64()
            );
            took * u32::try_from(iters).unwrap_or(u32::MAX)
        })
    });
    group.finish();
    let (count, took) = enumerate(false);
    assert_eq!(count, HOSTS - LAB_HOSTS);
    println!(
        "SUMMARY models/shallow-enumeration (reference): {count} instances in {:.0} ms, {:.0} instances/s",
        took.as_secs_f64() * 1e3,
        count as f64 / took.as_secs_f64()
    );

    let latency = |name: &str, path: &dyn Fn(usize) -> reqwest::Url, check: &dyn Fn(&Value)| {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        runtime.block_on(async {
            for i in 0..5000usize {
                let t = Instant::now();
                let v: Value = client.get(path(i.wrapping_mul(7919))).send().await.unwrap().json().await.unwrap();
                h.record(t.elapsed().as_micros() as u64).unwrap();
                if i == 0 {
                    check(&v);
                }
            }
        });
        println!(
            "SUMMARY models/{name}: 5000 requests, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    };
    latency("get-by-path", &|n| url(&base, &["instances", &host_path(n % HOSTS)]), &|v| {
        assert!(v["path"].is_string(), "{v}")
    });
    latency("associators", &|n| url(&base, &["instances", &host_path(n % ASSOCIATIONS), "associators"]), &|v| {
        assert_eq!(v["instances"].as_array().unwrap().len(), 1, "{v}")
    });

    // A WHERE query over all 100,000.
    let mut times = Vec::new();
    for _ in 0..5 {
        let (n, took) = runtime.block_on(async {
            let t = Instant::now();
            let body = json!({"query": "SELECT Name FROM CIM_ComputerSystem WHERE EnabledState = 3 AND Name LIKE 'host-019%'", "limit": 1000});
            let v: Value = client.post(url(&base, &["query"])).json(&body).send().await.unwrap().json().await.unwrap();
            (v["instances"].as_array().unwrap().len(), t.elapsed())
        });
        assert_eq!(n, 200, "host-019000..host-019999 with EnabledState 3");
        times.push(took);
    }
    times.sort();
    println!(
        "SUMMARY models/where-query-100000: median {:.0} ms, max {:.0} ms (5 runs)",
        times[2].as_secs_f64() * 1e3,
        times[4].as_secs_f64() * 1e3
    );
}

criterion_group!(benches, models);
criterion_main!(benches);
