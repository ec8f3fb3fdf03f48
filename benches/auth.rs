//! What auth costs.
//!
//! Run: `cargo bench --bench auth`.
//!
//! - `token-check`: authenticating a principal's bearer token (parse, find
//!   by id, SHA-256, constant-time compare) and checking one grant, in
//!   process; the admin token's check beside it.
//! - `publish-64-clients`: single-event publishes from 64 keep-alive
//!   clients to two `pepper serve` processes on loopback, one with auth off
//!   and one with auth on (a principal's token on every request), each
//!   measured by criterion; then `SUMMARY` lines from interleaved turns
//!   (off, on, off, on, ...) so both see the same machine state, with the
//!   median rate of each and their ratio. The bound: auth on at
//!   most 5% slower.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pepper_adapters::auth::{new_token, Auth, GrantDoc, PrincipalDoc, Principals};
use pepper_router::{Action, Channel, Resource};
use pepper_storage::{Body, DocPut, MemoryEngine, Options, Store, SystemClock};

const CLIENTS: usize = 64;
const ADMIN: &str = "bench-admin-token-0123456789abcdef0123";

fn token_check(c: &mut Criterion) {
    let store = Store::open_with(Arc::new(MemoryEngine::new()), Arc::new(SystemClock), Options::new("bench")).unwrap();
    let principals = Arc::new(Principals::default());
    store.set_fold(principals.clone());
    let token = new_token(1, None, String::new());
    let doc = PrincipalDoc {
        name: "bench".into(),
        grants: vec![GrantDoc { action: "publish".into(), resource: "/bench.example.com/".into() }],
        tokens: vec![token.doc.clone()],
        created_us: 1,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(store.append(vec![Body::DocPut(DocPut { key: PrincipalDoc::key("bench"), value: doc.encode() })]))
        .unwrap();
    let auth = Auth::new(Some(ADMIN), None, principals);
    let header = format!("Bearer {}", token.text);
    let admin = format!("Bearer {ADMIN}");
    let channel = Channel::parse("/bench.example.com/node/n1/").unwrap();
    let mut group = c.benchmark_group("token-check");
    group.throughput(Throughput::Elements(1));
    group.bench_function("principal-token-and-grant", |b| {
        b.iter(|| {
            let caller = auth.authenticate(Some(&header), 2).unwrap();
            assert!(caller.may(Action::Publish, &Resource::Channel(&channel)));
        })
    });
    group.bench_function("admin-token", |b| b.iter(|| auth.authenticate(Some(&admin), 2).unwrap()));
    group.finish();
}

/// A site with auth on and a principal that may publish the load: its url
/// and the principal's token.
fn auth_site() -> (common::Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, ADMIN).unwrap();
    let mut server = common::Server::start(
        &dir.path().join("data"),
        &["--site", "bench", "--admin-token-file", file.to_str().unwrap()],
    );
    let http = reqwest::blocking::Client::new();
    let body =
        serde_json::json!({"name": "load", "grants": [{"action": "publish", "resource": "/bench.example.com/"}]});
    let res = http.post(server.at("/v1/auth/principals")).bearer_auth(ADMIN).json(&body).send().unwrap();
    assert!(res.status().is_success());
    let res = http
        .post(server.at("/v1/auth/principals/load/tokens"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    let token = res.json::<serde_json::Value>().unwrap()["token"].as_str().unwrap().to_string();
    server.keep(dir);
    (server, token)
}

fn publish(c: &mut Criterion) {
    let off = common::Server::temporary(&["--site", "bench"]);
    let (on, token) = auth_site();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let sides = [("off", format!("{}/v1/events", off.url), None), ("on", format!("{}/v1/events", on.url), Some(token))];
    let mut group = c.benchmark_group("publish-64-clients");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    for (name, url, token) in &sides {
        group.bench_function(BenchmarkId::new("auth", name), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(CLIENTS as u64);
                let start = Instant::now();
                runtime.block_on(common::publish_load(
                    &client,
                    url,
                    token.as_deref(),
                    CLIENTS,
                    per,
                    1,
                    "metric",
                    &counter,
                ));
                start.elapsed().mul_f64(iters as f64 / (per * CLIENTS as u64) as f64)
            })
        });
    }
    group.finish();
    // Interleaved turns: the same load, alternately, so drift in the
    // machine's disk and CPU falls on both sides alike.
    const TURNS: usize = 10;
    const PER_CLIENT: u64 = 50;
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..TURNS {
        for (i, (_, url, token)) in sides.iter().enumerate() {
            let start = Instant::now();
            runtime.block_on(common::publish_load(
                &client,
                url,
                token.as_deref(),
                CLIENTS,
                PER_CLIENT,
                1,
                "metric",
                &counter,
            ));
            rates[i].push((CLIENTS as u64 * PER_CLIENT) as f64 / start.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off_rate, on_rate) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "SUMMARY publish, 64 clients, 1 event per request, {TURNS} interleaved turns of {} requests: auth off {off_rate:.0}/s, auth on {on_rate:.0}/s, on/off {:.3}",
        CLIENTS as u64 * PER_CLIENT,
        on_rate / off_rate
    );
}

criterion_group!(benches, token_check, publish);
criterion_main!(benches);
