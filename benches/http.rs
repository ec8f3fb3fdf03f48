//! HTTP publish throughput against the real `pepper` binary on loopback.
//!
//! Run: `cargo bench --bench http`. The bench starts `pepper serve` on an
//! ephemeral loopback port with a temporary data folder (durability `sync`),
//! and drives it from this process with 64 concurrent keep-alive clients:
//! single-event publishes, then batches of 100 events per request. Each
//! acknowledgement means the event was durably committed.
//!
//! Two kinds of event, each with a 100-byte value: `event` (type `metric`,
//! stored and routed only) and `attribute` (a PLDB attribute, which also
//! sets its tuple: a latest row and, since every value differs, a history
//! row in the same commit).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const CLIENTS: usize = 64;
const BATCH: usize = 100;

fn publish(c: &mut Criterion) {
    let server = common::Server::temporary(&["--site", "bench"]);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let url = format!("{}/v1/events", server.url);
    let counter = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("http-publish");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    for (kind, batch) in [("event", 1usize), ("event", BATCH), ("attribute", 1), ("attribute", BATCH)] {
        let ty = if kind == "event" { "metric" } else { "attribute" };
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new(kind, format!("{CLIENTS}-clients-{batch}-per-request")), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(CLIENTS as u64);
                let start = Instant::now();
                runtime.block_on(common::publish_load(&client, &url, None, CLIENTS, per, batch, ty, &counter));
                start.elapsed().mul_f64(iters as f64 / (per * CLIENTS as u64) as f64)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
