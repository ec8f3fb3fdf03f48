//! Federation on loopback: sites that find each other, events that cross
//! between them exactly once through a SIGKILL and a restart, federated
//! queries with manifests through a SIGSTOP, interest withdrawn when a
//! lease expires, and a retried batch dropped as a duplicate.
//!
//! Every site runs with auth and TLS on (an admin token, a certificate from
//! the tests' CA, and peer certificates required; the test's requests carry
//! the token and trust the CA), so federation is tested as it is deployed.
//!
//! Sites run in this process ([`Server::embedded`]) except those a test
//! kills or stops with a signal, which are real `pepper serve` processes:
//! the smoke tests of federation through a crash. The protocol's detail
//! (partitions, backoff, gap markers, every interleaving of a kill) is in
//! the simulator (`tests/simulator.rs`) and the router's state machines.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Server, SseReader};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const SECRET: &str = "test-secret-for-federation-0123456789";

/// Auth and TLS on, with peer certificates required: the federation
/// works through both.
fn args(dir: &std::path::Path, name: &str, extra: &[&str]) -> Vec<String> {
    common::federated_flags(dir, name, SECRET, extra)
}

/// A site in this process.
fn site(dir: &std::path::Path, name: &str, extra: &[&str]) -> Server {
    let args = args(dir, name, extra);
    Server::embedded(&dir.join(name), &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A site in a `pepper serve` process, for a test that kills or stops it.
fn process_site(dir: &std::path::Path, name: &str, extra: &[&str]) -> Server {
    let args = args(dir, name, extra);
    Server::start(&dir.join(name), &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Waits until `published` reaches `n`.
fn wait_published(published: &AtomicUsize, n: usize) {
    assert!(
        eventually(Duration::from_secs(30), || published.load(Ordering::Relaxed) >= n),
        "the publisher never reached {n} events"
    );
}

fn sites(http: &Client, s: &Server) -> Value {
    http.get(s.at("/v1/sites")).send().unwrap().json().unwrap()
}

/// Waits until `s` sees every one of `names` up.
fn wait_up(http: &Client, s: &Server, names: &[&str]) {
    assert!(
        eventually(Duration::from_secs(15), || {
            let v = sites(http, s);
            names.iter().all(|n| v["peers"].as_array().unwrap().iter().any(|p| p["name"] == *n && p["state"] == "up"))
        }),
        "{} never saw {names:?} up: {}",
        s.url,
        sites(http, s)
    );
}

fn grant(http: &Client, s: &Server, body: Value) -> String {
    let res = http.post(s.at("/v1/leases")).json(&body).send().unwrap();
    assert_eq!(res.status(), 201);
    res.json::<Value>().unwrap()["id"].as_str().unwrap().to_string()
}

fn publish(http: &Client, s: &Server, body: &Value) -> reqwest::Result<reqwest::blocking::Response> {
    http.post(s.at("/v1/events")).json(body).send()
}

/// Reads `n` events from a stream: (event id -> count), and the sites.
fn read_events(stream: &mut SseReader, n: usize) -> (BTreeMap<String, u32>, Vec<String>) {
    let mut seen = BTreeMap::new();
    let mut origins = Vec::new();
    let mut got = 0;
    while got < n {
        let e = stream.next().expect("stream ended early");
        if e.event.starts_with("pepper.") {
            panic!("unexpected {}: {}", e.event, e.data);
        }
        let v = e.json();
        *seen.entry(v["id"].as_str().unwrap().to_string()).or_insert(0) += 1;
        origins.push(v["site"].as_str().unwrap().to_string());
        got += 1;
    }
    (seen, origins)
}

#[test]
fn events_cross_sites_exactly_once_through_a_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let a = process_site(dir.path(), "a", &[]);
    let a_peer = format!("a={}", a.url);
    let b = site(dir.path(), "b", &["--peer", &a_peer]);
    let c = site(dir.path(), "c", &["--peer", &a_peer]);
    // b and c know only a; they learn of each other from a's announcements.
    wait_up(&http, &a, &["b", "c"]);
    wait_up(&http, &b, &["a", "c"]);
    wait_up(&http, &c, &["a", "b"]);
    // Each peer's entry: when it was seen, its latency, its log and our
    // cursor for it.
    // (The cursor appears once the peer's forwarder has started.)
    assert!(
        eventually(Duration::from_secs(5), || {
            sites(&http, &b)["peers"].as_array().unwrap().iter().all(|p| {
                p["last_seen"].is_string()
                    && p["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0)
                    && p["seq"].is_u64()
                    && p["cursor"].is_u64()
                    && p["cursor_lag"].is_u64()
            })
        }),
        "{}",
        sites(&http, &b)
    );
    // Sites announce themselves on /pepper/sites/, observable like any event.
    let announced: Value = http.get(a.at("/v1/events?channel=/pepper/sites/a/")).send().unwrap().json().unwrap();
    let first = &announced["events"][0];
    assert_eq!(
        (first["type"].as_str(), first["payload"]["name"].as_str()),
        (Some("pepper.heartbeat"), Some("a")),
        "{first}"
    );
    assert!(
        first["payload"]["seq"].is_u64() && first["payload"]["time"].is_string() && first["payload"]["url"].is_string()
    );

    let lease_b = grant(&http, &b, json!({"channel": "/fleet/", "ttl_s": 300}));
    let lease_c = grant(&http, &c, json!({"channel": "/fleet/", "ttl_s": 300, "types": ["ping"]}));
    let mut on_b = SseReader::open(
        &b.at(&format!("/v1/leases/{lease_b}/events")),
        &[("authorization", common::admin_auth().as_str())],
    );
    let mut on_c = SseReader::open(
        &c.at(&format!("/v1/leases/{lease_c}/events")),
        &[("authorization", common::admin_auth().as_str())],
    );

    // Delivery across sites, from every site, with the lease's type filter.
    let ev = |id: &str, ty: &str| json!({"id": id, "channel": "/fleet/n1/", "type": ty, "payload": {"n": id}});
    publish(&http, &a, &ev("from-a", "ping")).unwrap();
    publish(&http, &a, &ev("pong-a", "pong")).unwrap();
    publish(&http, &c, &ev("from-c", "ping")).unwrap();
    let (seen_b, origins_b) = read_events(&mut on_b, 3);
    assert_eq!(seen_b.keys().collect::<Vec<_>>(), ["from-a", "from-c", "pong-a"]);
    assert!(origins_b.contains(&"a".to_string()) && origins_b.contains(&"c".to_string()), "{origins_b:?}");
    let (seen_c, _) = read_events(&mut on_c, 2);
    assert_eq!(seen_c.keys().collect::<Vec<_>>(), ["from-a", "from-c"], "c's lease wants pings only");

    // A publish stream into a, which is killed with SIGKILL partway and
    // restarted on its port with its data. The publisher retries each event
    // (same id) until a acknowledges it.
    let total = 200;
    let port = a.port();
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let url = a.url.clone();
        let published = published.clone();
        std::thread::spawn(move || {
            let http = common::admin_client(Duration::from_secs(2));
            let mut retries = 0;
            for n in 0..total {
                published.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
                let body = json!({"id": format!("k{n:04}"), "channel": "/fleet/n2/", "type": "ping", "payload": n});
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match http.post(format!("{url}/v1/events")).json(&body).send() {
                        Ok(r) if r.status().is_success() => break,
                        _ if Instant::now() < deadline => {
                            retries += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        other => panic!("event {n} never acknowledged: {other:?}"),
                    }
                }
            }
            retries
        })
    };
    wait_published(&published, 50);
    a.kill();
    let listen = format!("127.0.0.1:{port}");
    let a = process_site(dir.path(), "a", &["--listen", &listen]);
    let retries = publisher.join().unwrap();
    assert!(retries > 0, "the kill landed inside the publish stream");
    for (name, stream) in [("b", &mut on_b), ("c", &mut on_c)] {
        let (seen, _) = read_events(stream, total);
        assert_eq!(seen.len(), total, "{name} got every event");
        assert!(seen.values().all(|&n| n == 1), "{name} got each exactly once");
    }
    // Nothing more arrives: no duplicate trails behind.
    publish(&http, &a, &ev("last", "ping")).unwrap();
    assert_eq!(read_events(&mut on_b, 1).0.keys().collect::<Vec<_>>(), ["last"]);
    let v = sites(&http, &a);
    let b_entry = v["peers"].as_array().unwrap().iter().find(|p| p["name"] == "b").unwrap().clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let v = sites(&http, &a);
            v["peers"].as_array().unwrap().iter().find(|p| p["name"] == "b").unwrap()["cursor_lag"] == 0
        }),
        "{b_entry}"
    );
    drop((b, c));
}

#[test]
fn federated_queries_answer_within_their_deadline_with_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let a = site(dir.path(), "a", &["--region", "eu"]);
    let a_peer = format!("a={}", a.url);
    let b = site(dir.path(), "b", &["--peer", &a_peer, "--region", "eu"]);
    // c is a process, so a signal can freeze it.
    let c = process_site(dir.path(), "c", &["--peer", &a_peer, "--region", "us"]);
    wait_up(&http, &a, &["b", "c"]);
    for (s, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let body = json!({"channel": format!("/fleet/{name}/"), "type": "attribute", "payload": {"field": "load", "value": name}});
        assert!(publish(&http, s, &body).unwrap().status().is_success());
    }
    let query = |scope: &str, extra: &str| -> (reqwest::StatusCode, Value, Duration) {
        let t = Instant::now();
        let res =
            http.get(a.at(&format!("/v1/tuples?channel=/fleet/&recursive=true&scope={scope}{extra}"))).send().unwrap();
        let status = res.status();
        (status, res.json().unwrap(), t.elapsed())
    };
    let (status, v, _) = query("all", "");
    assert_eq!(status, 200, "{v}");
    let got: Vec<(&str, &str)> = v["tuples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["channel"].as_str().unwrap(), t["site"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [("/fleet/a/", "a"), ("/fleet/b/", "b"), ("/fleet/c/", "c")]);
    let m = &v["manifest"];
    assert_eq!((m["asked"].as_u64(), m["answered"].as_u64(), m["complete"].as_bool()), (Some(3), Some(3), Some(true)));
    for s in m["sites"].as_array().unwrap() {
        assert_eq!(s["status"], "answered", "{s}");
        assert!(s["seq"].as_u64().unwrap() > 0 && s["latency_ms"].is_number() && s["data_age_ms"].is_number(), "{s}");
    }
    // Scopes: a region, named sites (one unknown), a sample.
    let names = |v: &Value| -> Vec<String> {
        v["manifest"]["sites"].as_array().unwrap().iter().map(|s| s["site"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&query("region:eu", "").1), ["a", "b"]);
    let (_, v, _) = query("sites:c,zz", "");
    assert_eq!(names(&v), ["c", "zz"]);
    assert_eq!(v["manifest"]["sites"][1]["status"], "unreachable");
    assert_eq!(v["manifest"]["complete"], false);
    assert_eq!(query("sample:2", "").1["manifest"]["asked"], 2);
    // Local stays as it was: no manifest.
    assert!(query("local", "").1.get("manifest").is_none());
    assert_eq!(query("nowhere", "").0, 400);
    // A parameter every site refuses is the caller's error, with the manifest.
    let (status, v, _) = query("all", "&limit=lots");
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["manifest"]["answered"], 0);
    assert_eq!(names(&query("sites:b,b", "").1), ["b"], "a site named twice is asked once");

    // c stopped: the query returns within its deadline, c timed out.
    c.signal("STOP");
    let (status, v, took) = query("all", "&deadline_ms=400");
    assert_eq!(status, 200, "{v}");
    assert!(took < Duration::from_millis(400 + 300), "took {took:?}");
    let c_entry = v["manifest"]["sites"].as_array().unwrap().iter().find(|s| s["site"] == "c").unwrap().clone();
    assert_eq!(c_entry["status"], "timed_out", "{v}");
    assert_eq!(v["manifest"]["complete"], false);
    assert_eq!(v["tuples"].as_array().unwrap().len(), 2);
    // partial=deny: 503 carrying the manifest; min_sites=2 accepts it.
    let (status, v, _) = query("all", "&deadline_ms=300&partial=deny");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["manifest"]["answered"], 2);
    assert_eq!(query("all", "&deadline_ms=300&partial=deny&min_sites=2").0, 200);
    c.signal("CONT");
    assert!(eventually(Duration::from_secs(10), || query("all", "&deadline_ms=1000").1["manifest"]["complete"] == true));

    // Model queries take a scope too.
    let res =
        http.get(a.at("/v1/namespaces/root%2Fcimv2/instances?class=CIM_ComputerSystem&scope=all")).send().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().unwrap()["manifest"]["answered"], 3);
    let res = http
        .post(a.at("/v1/namespaces/root%2Fcimv2/query?scope=region:eu"))
        .json(&json!({"query": "SELECT * FROM CIM_ComputerSystem"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().unwrap()["manifest"]["asked"], 2);
    let history: Value =
        http.get(a.at("/v1/tuples/history?channel=/fleet/b/&field=load&scope=all")).send().unwrap().json().unwrap();
    assert_eq!(history["history"].as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history["history"][0]["site"], "b");
    // Writes are never fanned out.
    assert_eq!(http.delete(a.at("/v1/tuples?channel=/fleet/a/&field=load&scope=all")).send().unwrap().status(), 400);
}

#[test]
fn expired_leases_withdraw_interest_and_retried_batches_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let a = site(dir.path(), "a", &[]);
    let b = site(dir.path(), "b", &["--peer", &format!("a={}", a.url)]);
    wait_up(&http, &a, &["b"]);
    let interests_of_b = || -> u64 {
        let v = sites(&http, &a);
        v["peers"].as_array().unwrap().iter().find(|p| p["name"] == "b").unwrap()["interests"].as_u64().unwrap_or(0)
    };
    // Every site holds one standing interest: monitor announcements.
    assert!(eventually(Duration::from_secs(5), || interests_of_b() == 1));
    grant(&http, &b, json!({"channel": "/gone/", "ttl_s": 1}));
    assert_eq!(interests_of_b(), 2, "the grant pushed its interest before answering");
    publish(&http, &a, &json!({"channel": "/gone/x/", "type": "t", "payload": 1})).unwrap();
    let on_b = |ch: &str| -> usize {
        let v: Value = http.get(b.at(&format!("/v1/events?channel={ch}"))).send().unwrap().json().unwrap();
        v["events"].as_array().unwrap().len()
    };
    assert!(eventually(Duration::from_secs(5), || on_b("/gone/") == 1), "{}", sites(&http, &a));
    // The lease expires; the next heartbeat withdraws the interest, and a's
    // forwarder sends b nothing more of it.
    assert!(eventually(Duration::from_secs(10), || interests_of_b() == 1));
    publish(&http, &a, &json!({"channel": "/gone/y/", "type": "t", "payload": 2})).unwrap();
    let head = sites(&http, &a)["seq"].as_u64().unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        let v = sites(&http, &a);
        v["peers"].as_array().unwrap().iter().find(|p| p["name"] == "b").unwrap()["cursor"].as_u64().unwrap() > head
    }));
    assert_eq!(on_b("/gone/"), 1, "nothing forwarded after the interest was withdrawn");

    // A batch sent twice (a retry after a lost answer) is appended once.
    let record = common::peer_event("z", 7, "retried", "/dup/", "t");
    let body = common::peer_batch([&record]);
    let send = |secret: &str, body: Vec<u8>| {
        http.post(b.at("/v1/peer/records"))
            .header("authorization", format!("Bearer {secret}"))
            .header("x-pepper-origin", "z")
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .unwrap()
    };
    let first: Value = send(SECRET, body.clone()).json().unwrap();
    assert_eq!((first["appended"].as_u64(), first["dropped"].as_u64()), (Some(1), Some(0)), "{first}");
    let again: Value = send(SECRET, body.clone()).json().unwrap();
    assert_eq!((again["appended"].as_u64(), again["dropped"].as_u64()), (Some(0), Some(1)), "{again}");
    assert_eq!(on_b("/dup/"), 1);
    // A full batch (two records near the record limit) goes through; a body
    // over the peer batch limit gets 413 in the API's error shape.
    let big: Vec<_> = (8..10u64)
        .map(|seq| {
            let mut r = common::peer_event("z", seq, &format!("big-{seq}"), "/big/", "t");
            if let pepper_storage::Body::Event(e) = &mut r.body {
                e.payload = vec![b'x'; 1_000_000];
            }
            r
        })
        .collect();
    let res = send(SECRET, common::peer_batch(&big));
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().unwrap()["appended"], 2);
    let res = send(SECRET, vec![0; pepper_adapters::wire::frames::PEER_BODY_BYTES_MAX + 1]);
    assert_eq!(res.status(), 413);
    assert_eq!(res.json::<Value>().unwrap()["error"]["code"], "too_large");
    // The wrong secret, or a damaged frame, is refused and changes nothing.
    assert_eq!(send("wrong", body.clone()).status(), 401);
    let mut damaged = body.clone();
    let n = damaged.len();
    damaged[n - 6] ^= 0x40;
    assert_eq!(send(SECRET, damaged).status(), 400);
    assert_eq!(on_b("/dup/"), 1);
}

#[test]
fn a_peer_back_after_retention_trimmed_what_it_missed_gets_a_gap_marker() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let a = site(dir.path(), "a", &["--log-max-age-s", "1", "--retention-interval-s", "1"]);
    let b = site(dir.path(), "b", &["--peer", &format!("a={}", a.url)]);
    wait_up(&http, &a, &["b"]);
    wait_up(&http, &b, &["a"]);
    let lease = grant(&http, &b, json!({"channel": "/fleet/", "ttl_s": 300, "types": ["ping"]}));
    // A lease on every channel (`/`), wanting a type nobody publishes: only
    // a gap marker can reach it.
    let everything = grant(&http, &b, json!({"channel": "/", "ttl_s": 300, "types": ["never"]}));
    let ping = |n: u32| json!({"channel": "/fleet/n/", "type": "ping", "payload": n});
    assert!(publish(&http, &a, &ping(0)).unwrap().status().is_success());
    let mut stream = SseReader::open(
        &b.at(&format!("/v1/leases/{lease}/events")),
        &[("authorization", common::admin_auth().as_str())],
    );
    assert_eq!(stream.next().unwrap().json()["payload"], 0);
    // b goes away; a's log moves on and retention trims what b missed.
    let port = b.port();
    drop(stream);
    assert!(b.stop().success());
    for n in 1..=5 {
        assert!(publish(&http, &a, &ping(n)).unwrap().status().is_success());
    }
    let first_missed = sites(&http, &a)["seq"].as_u64().unwrap() - 4;
    assert!(
        eventually(Duration::from_secs(15), || {
            let h: Value = http.get(a.at("/v1/health")).send().unwrap().json().unwrap();
            h["earliest_seq"].as_u64().unwrap() > first_missed + 4
        }),
        "retention never trimmed the missed events"
    );
    let b = site(dir.path(), "b", &["--peer", &format!("a={}", a.url), "--listen", &format!("127.0.0.1:{port}")]);
    // The lease (durable on b) receives the gap marker, whatever its types,
    // saying which of a's records are gone; then live events again.
    let mut stream = SseReader::open(
        &b.at(&format!("/v1/leases/{lease}/events?from_seq=1")),
        &[("authorization", common::admin_auth().as_str())],
    );
    let mut gap = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while gap.is_none() && Instant::now() < deadline {
        let e = stream.next().unwrap();
        if e.event == "pepper.gap" {
            gap = Some(e.json());
        }
    }
    let gap = gap.expect("no gap marker");
    let mut all = SseReader::open(
        &b.at(&format!("/v1/leases/{everything}/events?from_seq=1")),
        &[("authorization", common::admin_auth().as_str())],
    );
    // It gets every marker (`/` matches every channel), its own on a's
    // site channel included.
    let mut channels: Vec<String> = (0..2)
        .map(|_| {
            let e = all.next().unwrap();
            assert_eq!(e.event, "pepper.gap");
            e.json()["channel"].as_str().unwrap().to_string()
        })
        .collect();
    channels.sort();
    assert_eq!(channels, ["/fleet/", "/pepper/sites/a/"]);
    assert_eq!(gap["payload"]["origin"], "a", "{gap}");
    assert!(gap["payload"]["from_seq"].as_u64().unwrap() <= first_missed, "{gap}");
    assert!(gap["payload"]["to_seq"].as_u64().unwrap() >= first_missed + 4, "{gap}");
    assert!(publish(&http, &a, &ping(6)).unwrap().status().is_success());
    let next = stream.next().unwrap();
    assert_eq!((next.event.as_str(), next.json()["payload"].clone()), ("ping", json!(6)));
}

#[test]
fn a_receiving_site_killed_mid_stream_gets_every_event_once_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let a = site(dir.path(), "a", &[]);
    let b = process_site(dir.path(), "b", &["--peer", &format!("a={}", a.url)]);
    wait_up(&http, &a, &["b"]);
    wait_up(&http, &b, &["a"]);
    let lease = grant(&http, &b, json!({"channel": "/fleet/", "ttl_s": 300, "types": ["ping"]}));
    // a publishes 150 events while b is killed partway and restarted.
    let total = 150;
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let url = a.url.clone();
        let published = published.clone();
        std::thread::spawn(move || {
            let http = common::admin_client(Duration::from_secs(30));
            for n in 0..total {
                published.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
                let body = json!({"id": format!("r{n:04}"), "channel": "/fleet/n/", "type": "ping", "payload": n});
                assert!(http.post(format!("{url}/v1/events")).json(&body).send().unwrap().status().is_success());
            }
        })
    };
    // Killed after a third, restarted after two thirds: a's forwarder
    // meets a dead peer, then a new one, mid-stream.
    wait_published(&published, total / 3);
    let port = b.port();
    b.kill();
    wait_published(&published, 2 * total / 3);
    let b =
        process_site(dir.path(), "b", &["--peer", &format!("a={}", a.url), "--listen", &format!("127.0.0.1:{port}")]);
    publisher.join().unwrap();
    // The lease survived the kill; read it from its start.
    let mut stream = SseReader::open(
        &b.at(&format!("/v1/leases/{lease}/events?from_seq=1")),
        &[("authorization", common::admin_auth().as_str())],
    );
    let (seen, origins) = read_events(&mut stream, total);
    assert_eq!(seen.len(), total, "every event");
    assert!(seen.values().all(|&n| n == 1), "each once");
    assert!(origins.iter().all(|o| o == "a"));
    // And no repeat trails behind them.
    let last = json!({"id": "last", "channel": "/fleet/n/", "type": "ping", "payload": "last"});
    assert!(publish(&http, &a, &last).unwrap().status().is_success());
    assert_eq!(read_events(&mut stream, 1).0.keys().collect::<Vec<_>>(), ["last"]);
    assert!(eventually(Duration::from_secs(5), || {
        let v = sites(&http, &a);
        v["peers"].as_array().unwrap().iter().find(|p| p["name"] == "b").unwrap()["cursor_lag"] == 0
    }));
}
