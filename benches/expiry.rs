//! Server-side lease expiry at scale: how long after 100,000 leases lapse
//! together until every one has its expire record in the log.
//!
//! Run: `cargo bench --bench expiry` (`PEPPER_BENCH_LEASES` changes the
//! count). Each sample opens a fresh store (durability `sync`), grants the
//! leases in batches with one shared expiry 1.5 s ahead, starts the site's
//! expiry task (`pepper_adapters::loops::expiry::run_expiry`, as `pepper serve` does)
//! and measures from the moment they lapse until the lease index is empty.
//! The log is then checked: one `lease.expire` record and one
//! `lease.expired` event per lease. The figure printed as `SUMMARY` is the
//! issue's "within 1 s, however many leases there are".
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pepper_adapters::{ApiConfig, AppState};
use pepper_storage::{now_us, Body, Filter, Kind, LeaseGrant, Options, Party, Scan, Store};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn scenario(leases: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::new("bench")).unwrap();
    let lapse_us = now_us() + 1_500_000;
    let ids: Vec<u64> = (0..leases).collect();
    for chunk in ids.chunks(1000) {
        let grants = chunk
            .iter()
            .map(|n| {
                Body::LeaseGrant(LeaseGrant {
                    id: format!("lease-{n}"),
                    pattern: format!("/bench.example.com/node/n{n}/"),
                    types: Vec::new(),
                    ttl_ms: 1000,
                    expires_at_us: lapse_us,
                    group: None,
                    from_seq: None,
                    holder: Party::default(),
                    owner: None,
                })
            })
            .collect();
        store.append(grants).await.unwrap();
    }
    assert!(now_us() < lapse_us, "granting took longer than the lead time");
    let state = AppState::load(store.clone(), ApiConfig::default()).await.unwrap();
    let expiry = tokio::spawn(pepper_adapters::loops::expiry::run_expiry(state.clone()));
    tokio::time::sleep(Duration::from_micros(lapse_us.saturating_sub(now_us()))).await;
    let start = Instant::now();
    while !state.leases.is_empty() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    expiry.abort();
    state.begin_shutdown();
    // Every lease was expired in the log, once.
    let filter = Filter { kinds: vec![Kind::LeaseExpire], ..Filter::default() };
    let (mut from, mut expired) = (1, 0u64);
    loop {
        let f = filter.clone();
        match store.read(move |v| v.scan(from, u64::MAX, &f, 10_000, u64::MAX)).await.unwrap() {
            Scan::Records { records, next_seq } => {
                expired += records.len() as u64;
                if records.is_empty() {
                    break;
                }
                from = next_seq;
            }
            Scan::Compacted { .. } => unreachable!(),
        }
    }
    assert_eq!(expired, leases, "one expire record per lease");
    let left = store.read(|v| v.leases()).await.unwrap();
    assert!(left.is_empty(), "{} leases left in the table", left.len());
    took
}

fn expiry(c: &mut Criterion) {
    let leases = env_or("PEPPER_BENCH_LEASES", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("lease-expiry");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(1));
    let mut worst = Duration::ZERO;
    group.bench_function(format!("{leases}-leases-lapse-together"), |b| {
        b.iter_custom(|iters| {
            // One scenario per sample stands for each of its iterations: it
            // takes seconds, and its duration is the figure.
            let took = runtime.block_on(scenario(leases));
            worst = worst.max(took);
            println!("SUMMARY lease-expiry/{leases}: all expired {:.0} ms after they lapsed", took.as_secs_f64() * 1e3);
            took * u32::try_from(iters).unwrap_or(u32::MAX)
        })
    });
    group.finish();
    println!("SUMMARY lease-expiry/{leases}: worst {:.0} ms", worst.as_secs_f64() * 1e3);
}

criterion_group!(benches, expiry);
criterion_main!(benches);
