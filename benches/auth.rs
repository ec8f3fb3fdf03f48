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
//!   most 5% slower. A third side runs auth on over TLS (a certificate
//!   from the tests' CA): what HTTPS costs on kept-alive connections.
//! - `control-request`: signing a control request with a site key, and
//!   verifying one (size, parse, Ed25519 strict verification, scope,
//!   validity, nonce), in process.
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
fn auth_site(tls: bool) -> (common::Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, ADMIN).unwrap();
    // The quota far above the load: what is measured is the check, not
    // the throttle (which is 2,000 events/s by default).
    let mut flags: Vec<String> =
        ["--site", "bench", "--admin-token-file", file.to_str().unwrap(), "--publish-quota-per-s", "10000000"]
            .into_iter()
            .map(String::from)
            .collect();
    if tls {
        flags.extend(common::tls_flags(dir.path(), "bench"));
    }
    let mut server =
        common::Server::start(&dir.path().join("data"), &flags.iter().map(String::as_str).collect::<Vec<_>>());
    let http = common::tls_client().build().unwrap();
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
    let (on, token) = auth_site(false);
    let (on_tls, tls_token) = auth_site(true);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let ca = reqwest::Certificate::from_pem(common::test_ca().pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).add_root_certificate(ca).build().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let sides = [
        ("off", format!("{}/v1/events", off.url), None),
        ("on", format!("{}/v1/events", on.url), Some(token)),
        ("on-tls", format!("{}/v1/events", on_tls.url), Some(tls_token)),
    ];
    // `per` single-event requests from each of the 64 clients to `url`;
    // how long they took.
    let load = |url: &str, token: Option<&str>, per: u64| {
        let start = Instant::now();
        runtime.block_on(common::publish_load(&client, url, token, CLIENTS, per, 1, "metric", &counter));
        start.elapsed()
    };
    let mut group = c.benchmark_group("publish-64-clients");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    for (name, url, token) in &sides {
        group.bench_function(BenchmarkId::new("auth", name), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(CLIENTS as u64);
                load(url, token.as_deref(), per).mul_f64(iters as f64 / (per * CLIENTS as u64) as f64)
            })
        });
    }
    group.finish();
    // Interleaved turns: the same load, alternately, so drift in the
    // machine's disk and CPU falls on both sides alike.
    // Longer or more turns steady the medians on a noisy machine:
    // PEPPER_BENCH_TURNS (10) and PEPPER_BENCH_PER_CLIENT (50).
    let knob = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let turns = usize::try_from(knob("PEPPER_BENCH_TURNS", 10)).unwrap();
    let per_client = knob("PEPPER_BENCH_PER_CLIENT", 50);
    let mut rates: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..turns {
        for (i, (_, url, token)) in sides.iter().enumerate() {
            let took = load(url, token.as_deref(), per_client);
            rates[i].push((CLIENTS as u64 * per_client) as f64 / took.as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [off_rates, on_rates, tls_rates] = &mut rates;
    let (off_rate, on_rate, tls_rate) = (median(off_rates), median(on_rates), median(tls_rates));
    println!(
        "SUMMARY publish, 64 clients, 1 event per request, {turns} interleaved turns of {} requests: auth off {off_rate:.0}/s, auth on {on_rate:.0}/s, on/off {:.3}; auth on over TLS {tls_rate:.0}/s, tls/on {:.3}",
        CLIENTS as u64 * per_client,
        on_rate / off_rate,
        tls_rate / on_rate
    );
}

fn control_request(c: &mut Criterion) {
    use pepper_router::{sign, ControlRequest, Pattern, Scope, SigningKey, Verifier};
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let now = pepper_storage::now_us();
    let request = |nonce: u64| ControlRequest {
        principal: "deployer".into(),
        site: "a".into(),
        audience: "b".into(),
        action: "deploy".into(),
        channel: "/bench.example.com/deploy/web/".into(),
        body: serde_json::json!({"step": "install", "package": "nginx", "version": "1.24"}),
        nonce: format!("{nonce:032x}"),
        issued_us: now,
        expires_us: now + 60_000_000,
    };
    let scope = Scope { action: "deploy".into(), subtree: Pattern::parse("/bench.example.com/deploy/").unwrap() };
    let mut group = c.benchmark_group("control-request");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |b| b.iter(|| sign(&request(1), &key).unwrap()));
    // Fresh nonces, signed ahead: a verifier remembers each it takes.
    let signed: Vec<_> = (0..50_000u64).map(|n| sign(&request(n), &key).unwrap()).collect();
    let mut verifier = Verifier::new("b", now - 60_000_000);
    let mut next = 0usize;
    group.bench_function("verify", |b| {
        b.iter(|| {
            if next == signed.len() {
                verifier = Verifier::new("b", now - 60_000_000);
                next = 0;
            }
            let one = &signed[next];
            next += 1;
            verifier.verify(one, |_| Some(public), &scope, now).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, token_check, control_request, publish);
criterion_main!(benches);
