//! Routing-table match cost: one channel against 100,000 lease patterns.
//!
//! Run: `cargo bench --bench router`. The lease set is a realistic mix for a
//! fleet: one lease per node subtree, a few hundred on per-node attributes,
//! some with `*` wildcards across nodes, and a handful on whole authorities.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pepper_router::{Channel, Pattern, Trie};
use rand::Rng;

const LEASES: usize = 100_000;
const NODES: usize = 90_000;

fn table() -> (Trie<u32>, Vec<Pattern>) {
    let mut trie = Trie::new();
    let mut patterns = Vec::new();
    let mut id = 0u32;
    let mut add = |p: String| {
        let p = Pattern::parse(&p).unwrap();
        trie.insert(&p, id);
        patterns.push(p);
        id += 1;
    };
    for n in 0..NODES {
        add(format!("/example.com/node/n{n}/"));
    }
    for n in 0..9_000 {
        add(format!("/example.com/node/n{n}/load/"));
    }
    for i in 0..900 {
        add(format!("/example.com/node/*/attr{i}/"));
    }
    for i in 0..(LEASES - NODES - 9_900) {
        add(format!("/tenant{i}.example.org/"));
    }
    assert_eq!(trie.len(), LEASES);
    (trie, patterns)
}

fn routing(c: &mut Criterion) {
    let (trie, patterns) = table();
    let mut rng = rand::thread_rng();
    let channels: Vec<Channel> = (0..10_000)
        .map(|_| {
            let n = rng.gen_range(0..NODES);
            let leaf = ["load", "attr7", "packages/libc6", "uptime"][rng.gen_range(0..4)];
            Channel::parse(&format!("/example.com/node/n{n}/{leaf}/")).unwrap()
        })
        .collect();
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("match-100k-leases", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            trie.for_each_match(&channels[i % channels.len()], |_| hits += 1);
            i += 1;
            assert!(hits >= 1);
            hits
        })
    });
    let texts: Vec<String> = channels.iter().map(|c| c.as_str().to_string()).collect();
    group.bench_function("parse-and-match-100k-leases", |b| {
        b.iter(|| {
            let channel = Channel::parse(&texts[i % texts.len()]).unwrap();
            let mut hits = 0u32;
            trie.for_each_match(&channel, |_| hits += 1);
            i += 1;
            hits
        })
    });
    // The reference: test every lease's pattern, as the original PsEPR
    // routers did.
    group.sample_size(20);
    group.bench_function("linear-scan-100k-leases", |b| {
        b.iter(|| {
            let channel = &channels[i % channels.len()];
            i += 1;
            patterns.iter().filter(|p| p.matches(channel)).count()
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
