//! Leases and live delivery over HTTP against a site run in this process
//! ([`Server::embedded`]; `pepper watch` is the real CLI): grant,
//! renew, release, server-side expiry, SSE order and filters, resume after
//! a restart, watch and long-poll.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Server, SseReader};
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn publish(http: &Client, server: &Server, channel: &str, ty: &str, n: u64) -> u64 {
    let res: Value = http
        .post(server.at("/v1/events"))
        .json(&json!({"channel": channel, "type": ty, "payload": {"n": n}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    res["seq"].as_u64().unwrap()
}

fn grant(http: &Client, server: &Server, body: Value) -> Value {
    let res = http.post(server.at("/v1/leases")).json(&body).send().unwrap();
    assert_eq!(res.status(), 201);
    res.json().unwrap()
}

#[test]
fn grant_renew_release_and_the_ttl_cap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &["--lease-ttl-max-s", "60"]);
    let http = Client::new();
    let lease =
        grant(&http, &server, json!({"channel": "/example.com/", "ttl_s": 1000, "types": ["attribute"], "id": "mine"}));
    assert_eq!((lease["id"].as_str(), lease["ttl_s"].as_u64()), (Some("mine"), Some(60)), "TTL capped");
    assert!(lease["expires_at"].as_str().unwrap().ends_with('Z'));

    let res = http
        .post(server.at("/v1/leases"))
        .json(&json!({"channel": "/example.com/", "ttl_s": 5, "id": "mine"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 409);
    for (body, needle) in [
        (json!({"channel": "nope", "ttl_s": 5}), "start with '/'"),
        (json!({"channel": "/a.org/x*/", "ttl_s": 5}), "whole element"),
        (json!({"channel": "/a.org/", "ttl_s": 0}), "ttl_s"),
        (json!({"channel": "/a.org/", "ttl_s": 5, "colour": 1}), "unknown field"),
        (json!({"channel": "/a.org/", "ttl_s": 5, "group": ""}), "group"),
    ] {
        let res = http.post(server.at("/v1/leases")).json(&body).send().unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().unwrap();
        assert!(err["error"]["message"].as_str().unwrap().contains(needle), "{body}: {err}");
    }

    let renewed: Value =
        http.post(server.at("/v1/leases/mine/renew")).json(&json!({"ttl_s": 30})).send().unwrap().json().unwrap();
    assert_eq!(renewed["ttl_s"], 30);
    // Renew is idempotent and keeps the granted TTL without a body.
    let again: Value = http
        .post(server.at("/v1/leases/mine/renew"))
        .header("content-type", "application/json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(again["ttl_s"], 30);
    let listed: Value = http.get(server.at("/v1/leases")).send().unwrap().json().unwrap();
    assert_eq!(listed["leases"].as_array().unwrap().len(), 1);
    assert_eq!(
        http.get(server.at("/v1/leases/mine")).send().unwrap().json::<Value>().unwrap()["types"],
        json!(["attribute"])
    );

    assert_eq!(http.delete(server.at("/v1/leases/mine")).send().unwrap().status(), 204);
    assert_eq!(http.delete(server.at("/v1/leases/mine")).send().unwrap().status(), 404);
    assert_eq!(
        http.post(server.at("/v1/leases/mine/renew"))
            .header("content-type", "application/json")
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(http.get(server.at("/v1/leases/mine/events")).send().unwrap().status(), 404);
}

#[test]
fn sse_delivers_in_order_with_subtree_wildcard_and_type_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let lease = grant(&http, &server, json!({"channel": "/example.com/node/*/", "ttl_s": 60, "types": ["ping"]}));
    let id = lease["id"].as_str().unwrap().to_string();
    let mut stream = SseReader::open(&server.at(&format!("/v1/leases/{id}/events")), &[]);
    let mut want = Vec::new();
    for n in 0..20 {
        match n % 4 {
            0 => want.push(publish(&http, &server, &format!("/example.com/node/h{n}/"), "ping", n)),
            1 => want.push(publish(&http, &server, &format!("/example.com/node/h{n}/deep/er/"), "ping", n)),
            2 => drop(publish(&http, &server, "/example.com/node/", "ping", n)), // `*` needs an element
            _ => drop(publish(&http, &server, &format!("/example.com/node/h{n}/"), "pong", n)), // wrong type
        }
    }
    for seq in &want {
        let e = stream.next().unwrap();
        assert_eq!(e.event, "ping");
        assert_eq!(e.id.as_deref(), Some(seq.to_string().as_str()), "in log order, nothing skipped");
        assert_eq!(e.json()["seq"].as_u64(), Some(*seq));
    }
    // Releasing the lease ends its stream explicitly, after everything before it.
    let last = publish(&http, &server, "/example.com/node/last/", "ping", 99);
    assert_eq!(http.delete(server.at(&format!("/v1/leases/{id}"))).send().unwrap().status(), 204);
    let e = stream.next().unwrap();
    assert_eq!(e.id.as_deref(), Some(last.to_string().as_str()));
    let end = stream.next().unwrap();
    assert_eq!(end.event, "pepper.lease_ended");
    assert_eq!(end.json()["reason"], "released");
    assert!(stream.next().is_none(), "the stream closes after lease_ended");
}

#[test]
fn an_expired_lease_ends_within_a_second_and_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let lease = grant(&http, &server, json!({"channel": "/a.org/", "ttl_s": 1}));
    let id = lease["id"].as_str().unwrap().to_string();
    let mut stream = SseReader::open(&server.at(&format!("/v1/leases/{id}/events")), &[]);
    let start = Instant::now();
    let end = stream.next().unwrap();
    let waited = start.elapsed();
    assert_eq!(end.event, "pepper.lease_ended");
    assert_eq!(end.json()["reason"], "expired");
    assert!(waited < Duration::from_millis(2500), "ended {waited:?} after a 1 s lease was opened");
    assert_eq!(http.get(server.at(&format!("/v1/leases/{id}"))).send().unwrap().status(), 404);
    let control: Value = http.get(server.at("/v1/events?channel=/pepper/leases/")).send().unwrap().json().unwrap();
    let expired = &control["events"][0];
    assert_eq!((expired["type"].as_str(), &expired["payload"]["id"]), (Some("lease.expired"), &json!(id)));
}

#[test]
fn renewal_keeps_a_lease_alive_past_its_first_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    // Two leases of one second; only `kept` is renewed, for a minute. No
    // timing is assumed: once `control` has lapsed, `kept`'s first TTL has
    // passed too.
    let lease = grant(&http, &server, json!({"channel": "/a.org/", "ttl_s": 1, "id": "kept"}));
    assert_eq!(lease["ttl_s"], 1);
    grant(&http, &server, json!({"channel": "/a.org/", "ttl_s": 1, "id": "control"}));
    let renew = |ttl_s: u64| {
        let body = json!({ "ttl_s": ttl_s }).to_string();
        let url = server.at("/v1/leases/kept/renew");
        http.post(url).header("content-type", "application/json").body(body).send().unwrap().status()
    };
    assert_eq!(renew(60), 200, "renewed in time, the lease must still be live");
    assert!(eventually(Duration::from_secs(10), || {
        http.get(server.at("/v1/leases/control")).send().unwrap().status() == 404
    }));
    let kept: Value = http.get(server.at("/v1/leases/kept")).send().unwrap().json().unwrap();
    assert_eq!(kept["ttl_s"], 60, "{kept}");
    // Renewed with a TTL of one second, it lapses again when left alone.
    assert_eq!(renew(1), 200);
    assert!(
        eventually(Duration::from_secs(10), || http.get(server.at("/v1/leases/kept")).send().unwrap().status() == 404)
    );
}

#[test]
fn resume_with_last_event_id_across_a_restart_has_no_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let http = Client::new();
    let server = Server::embedded(dir.path(), &[]);
    let lease = grant(&http, &server, json!({"channel": "/a.org/", "ttl_s": 600}));
    let id = lease["id"].as_str().unwrap().to_string();
    let mut seqs: Vec<u64> = (0..5).map(|n| publish(&http, &server, "/a.org/x/", "t", n)).collect();
    let mut stream = SseReader::open(&server.at(&format!("/v1/leases/{id}/events")), &[]);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(stream.next().unwrap().id.unwrap().parse::<u64>().unwrap());
    }
    // Stopping the server with a stream open ends the stream instead of
    // hanging the shutdown.
    assert!(server.stop().success());
    // What was already sent can still be read; then the stream ends.
    while let Some(e) = stream.next() {
        got.push(e.id.unwrap().parse().unwrap());
    }

    let server = Server::embedded(dir.path(), &[]);
    seqs.extend((5..8).map(|n| publish(&http, &server, "/a.org/y/", "t", n)));
    let last = got.last().unwrap().to_string();
    let mut stream = SseReader::open(&server.at(&format!("/v1/leases/{id}/events")), &[("last-event-id", &last)]);
    while got.len() < seqs.len() {
        got.push(stream.next().unwrap().id.unwrap().parse().unwrap());
    }
    assert_eq!(got, seqs);
    // ?from_seq does the same.
    let mut stream = SseReader::open(&server.at(&format!("/v1/leases/{id}/events?from_seq={}", seqs[6])), &[]);
    assert_eq!(stream.next().unwrap().id.unwrap(), seqs[6].to_string());
    let res = http.get(server.at(&format!("/v1/leases/{id}/events"))).header("last-event-id", "x").send().unwrap();
    assert_eq!(res.status(), 400);
}

#[test]
fn watch_streams_a_channel_and_long_poll_serves_clients_without_sse() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let first = publish(&http, &server, "/a.org/old/", "t", 0);
    let mut watch = SseReader::open(&server.at(&format!("/v1/watch?channel=/a.org/&from_seq={first}")), &[]);
    assert_eq!(watch.next().unwrap().id.unwrap(), first.to_string());
    let next = publish(&http, &server, "/a.org/new/", "t", 1);
    publish(&http, &server, "/b.org/", "t", 2);
    assert_eq!(watch.next().unwrap().id.unwrap(), next.to_string());

    let lease = grant(&http, &server, json!({"channel": "/a.org/", "ttl_s": 60, "from_seq": 1}));
    let id = lease["id"].as_str().unwrap().to_string();
    let page: Value =
        http.get(server.at(&format!("/v1/leases/{id}/events?max=10&wait_ms=0"))).send().unwrap().json().unwrap();
    let got: Vec<u64> = page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, [first, next]);
    let from = page["next_seq"].as_u64().unwrap();
    // A long poll with nothing new waits, and returns as soon as something arrives.
    let url = server.at(&format!("/v1/leases/{id}/events?max=10&wait_ms=10000&from_seq={from}"));
    let waiter = std::thread::spawn(move || {
        let start = Instant::now();
        let page: Value = Client::new().get(url).send().unwrap().json().unwrap();
        (page, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let late = publish(&http, &server, "/a.org/late/", "t", 3);
    let (page, waited) = waiter.join().unwrap();
    assert_eq!(page["events"][0]["seq"].as_u64(), Some(late));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let res = http.get(server.at(&format!("/v1/leases/{id}/events?max=0"))).send().unwrap();
    assert_eq!(res.status(), 400);
}

#[test]
fn pepper_watch_prints_events_and_resumes_after_a_restart() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    // A fixed port, so the watcher can find the restarted server.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::embedded(dir.path(), &["--listen", &listen]);
    let http = Client::new();
    let mut watcher = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["watch", "/a.org/", "--from-seq", "1", "--server", &server.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let first = publish(&http, &server, "/a.org/x/", "t", 0);
    let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    seen.push(line["seq"].as_u64().unwrap());
    assert_eq!(seen, [first]);
    assert!(server.stop().success());
    let server = Server::embedded(dir.path(), &["--listen", &listen]);
    let after: Vec<u64> = (1..4).map(|n| publish(&http, &server, "/a.org/y/", "t", n)).collect();
    publish(&http, &server, "/b.org/", "t", 9);
    for want in after {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(line["seq"].as_u64(), Some(want), "resumed with no gap and no duplicate");
    }
    let _ = watcher.kill();
    let _ = watcher.wait();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["leases", "--server", &server.url])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 lease(s)"));
    grant(&http, &server, json!({"channel": "/a.org/", "ttl_s": 60, "id": "listed"}));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["leases", "--server", &server.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listed") && text.contains("1 lease(s)"), "{text}");
}

#[test]
fn to_narrows_the_receivers_to_the_named_holder() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let pldb = grant(
        &http,
        &server,
        json!({"channel": "/a.org/", "ttl_s": 60, "service": "pldb", "instance": "p1", "from_seq": 1}),
    );
    let other = grant(&http, &server, json!({"channel": "/a.org/", "ttl_s": 60, "service": "agent", "from_seq": 1}));
    assert_eq!(pldb["service"], "pldb");
    let send = |to: Value| -> u64 {
        let res: Value = http
            .post(server.at("/v1/events"))
            .json(&json!({"channel": "/a.org/x/", "type": "t", "to": to}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        res["seq"].as_u64().unwrap()
    };
    let everyone = send(json!({}));
    let to_pldb = send(json!({"service": "pldb"}));
    let to_p1 = send(json!({"service": "pldb", "instance": "p1"}));
    let to_p2 = send(json!({"service": "pldb", "instance": "p2"}));
    let to_agent = send(json!({"service": "agent"}));
    let seqs = |lease: &Value| -> Vec<u64> {
        let id = lease["id"].as_str().unwrap();
        let page: Value =
            http.get(server.at(&format!("/v1/leases/{id}/events?wait_ms=0&max=100"))).send().unwrap().json().unwrap();
        page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(seqs(&pldb), [everyone, to_pldb, to_p1]);
    assert_eq!(seqs(&other), [everyone, to_agent]);
    let _ = to_p2;
}

fn publish_one(http: &Client, server: &Server, channel: &str, n: u64) -> u64 {
    let res: Value = http
        .post(server.at("/v1/events"))
        .json(&json!({"channel": channel, "type": "job", "distribution": "one", "payload": {"n": n}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    res["seq"].as_u64().unwrap()
}

/// The events a lease's log-backed long-poll gives, from its start.
fn caught_up_seqs(http: &Client, server: &Server, id: &str) -> Vec<u64> {
    let page: Value =
        http.get(server.at(&format!("/v1/leases/{id}/events?wait_ms=0&max=1000"))).send().unwrap().json().unwrap();
    page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn read_seqs(stream: &mut SseReader, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let e = stream.next().expect("stream ended early");
            assert_eq!(e.event, "job", "{}", e.data);
            e.id.unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn distribution_one_reaches_exactly_one_live_member_of_each_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let member = |name: &str| {
        grant(&http, &server, json!({"channel": "/d.org/jobs/", "ttl_s": 60, "group": "workers", "id": name}))
    };
    let (a, b, c) = (member("a"), member("b"), member("c"));
    let solo = grant(&http, &server, json!({"channel": "/d.org/", "ttl_s": 60}));
    // A member whose lease lapses: it must stop being chosen at once.
    let lapsing = grant(&http, &server, json!({"channel": "/d.org/jobs/", "ttl_s": 1, "group": "workers", "id": "d"}));
    let open = |lease: &Value| {
        SseReader::open(&server.at(&format!("/v1/leases/{}/events", lease["id"].as_str().unwrap())), &[])
    };
    let (mut sa, mut sb, mut sc, mut ssolo) = (open(&a), open(&b), open(&c), open(&solo));
    assert!(eventually(Duration::from_secs(10), || {
        http.get(server.at("/v1/leases/d")).send().unwrap().status() == 404
    }));

    // 30 events, round robin over a, b and c (lease-id order).
    let first: Vec<u64> = (0..30).map(|n| publish_one(&http, &server, "/d.org/jobs/x/", n)).collect();
    let got_a = read_seqs(&mut sa, 10);
    let got_b = read_seqs(&mut sb, 10);
    let got_c = read_seqs(&mut sc, 10);
    let mut union: Vec<u64> = got_a.iter().chain(&got_b).chain(&got_c).copied().collect();
    union.sort_unstable();
    assert_eq!(union, first, "each event went to exactly one member");
    // A lease outside the group gets every event.
    assert_eq!(read_seqs(&mut ssolo, 30), first);
    let _ = lapsing;

    // Catch-up from the log agrees with what was delivered live.
    assert_eq!(caught_up_seqs(&http, &server, "a"), got_a);
    assert_eq!(caught_up_seqs(&http, &server, "b"), got_b);

    // Release a: its stream ends, and the following events go to b and c.
    assert_eq!(http.delete(server.at("/v1/leases/a")).send().unwrap().status(), 204);
    let end = sa.next().unwrap();
    assert_eq!(end.event, "pepper.lease_ended", "{}", end.data);
    let second: Vec<u64> = (0..20).map(|n| publish_one(&http, &server, "/d.org/jobs/y/", n)).collect();
    let mut rest: Vec<u64> = read_seqs(&mut sb, 10).into_iter().chain(read_seqs(&mut sc, 10)).collect();
    rest.sort_unstable();
    assert_eq!(rest, second);
    assert_eq!(read_seqs(&mut ssolo, 20), second);
}

/// A client that stops reading is disconnected once its buffer is full (by
/// event count), with the position to resume from; nobody else is slowed,
/// and resuming from that position loses and repeats nothing.
#[test]
fn a_slow_stream_is_disconnected_with_a_resume_position_and_skips_nothing() {
    // A buffer over one publish batch (40), so a reader that keeps up
    // between batches never fills it.
    slow_stream_overflows(&["--stream-buffer-events", "64"]);
}

/// The same with the default count limit (1,024 events), where the 16 MiB
/// byte budget of 64 KiB events is what fills first.
#[test]
fn a_slow_stream_of_large_events_overflows_its_byte_budget() {
    slow_stream_overflows(&[]);
}

fn slow_stream_overflows(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), args);
    let http = Client::new();
    let slow = grant(&http, &server, json!({"channel": "/s.org/", "ttl_s": 600}));
    let id = slow["id"].as_str().unwrap().to_string();
    let url = server.at(&format!("/v1/leases/{id}/events"));
    let mut stream = SseReader::open(&url, &[]);
    let mut watcher = SseReader::open(&server.at("/v1/watch?channel=/s.org/"), &[]);
    // Enough bytes to fill the socket buffers between the server and the
    // client that does not read, and then its buffer.
    let big = "x".repeat(64 * 1024);
    let mut seqs = Vec::new();
    for _ in 0..16 {
        let batch: Vec<Value> =
            (0..40).map(|_| json!({"channel": "/s.org/a/", "type": "blob", "payload": {"b": big}})).collect();
        let res: Value = http.post(server.at("/v1/events")).json(&batch).send().unwrap().json().unwrap();
        assert!(res["first_seq"].is_u64(), "{res}");
        seqs.extend(res["first_seq"].as_u64().unwrap()..=res["last_seq"].as_u64().unwrap());
        // The watcher keeps up and sees everything, live.
        for want in res["first_seq"].as_u64().unwrap()..=res["last_seq"].as_u64().unwrap() {
            assert_eq!(watcher.next().unwrap().id.unwrap().parse::<u64>().unwrap(), want);
        }
    }
    // Now read the slow stream: contiguous events, then the overflow notice.
    let mut got = Vec::new();
    let resume = loop {
        let e = stream.next().expect("the stream ends with pepper.overflow, not silently");
        match e.event.as_str() {
            "blob" => got.push(e.id.unwrap().parse::<u64>().unwrap()),
            "pepper.overflow" => break e.json()["resume_seq"].as_u64().unwrap(),
            other => panic!("unexpected {other}: {}", e.data),
        }
    };
    assert!(stream.next().is_none(), "the stream closes after the notice");
    assert!(!got.is_empty() && got.len() < seqs.len(), "{} of {}", got.len(), seqs.len());
    assert_eq!(got, seqs[..got.len()], "in order, nothing skipped");
    assert_eq!(resume, got.last().unwrap() + 1);
    let metrics = http.get(server.at("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("pepper_stream_overflows_total 1"), "{metrics}");
    // Resuming from the last id delivers the rest, exactly once.
    let last = got.last().unwrap().to_string();
    let mut resumed = SseReader::open(&url, &[("last-event-id", last.as_str())]);
    let rest: Vec<u64> =
        (got.len()..seqs.len()).map(|_| resumed.next().unwrap().id.unwrap().parse().unwrap()).collect();
    assert_eq!(rest, seqs[got.len()..]);
}

/// A stream that starts far behind the head catches up from the log while
/// events keep arriving, and joins the live stream without a gap or a
/// duplicate.
#[test]
fn catch_up_under_load_hands_off_to_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let lease = grant(&http, &server, json!({"channel": "/h.org/", "ttl_s": 600, "from_seq": 1}));
    let id = lease["id"].as_str().unwrap().to_string();
    // A backlog well over the handoff distance.
    let mut sent = Vec::new();
    for _ in 0..4 {
        let batch: Vec<Value> =
            (0..500).map(|n| json!({"channel": "/h.org/a/", "type": "t", "payload": {"n": n}})).collect();
        let res: Value = http.post(server.at("/v1/events")).json(&batch).send().unwrap().json().unwrap();
        sent.extend(res["first_seq"].as_u64().unwrap()..=res["last_seq"].as_u64().unwrap());
    }
    // Keep publishing while the stream catches up.
    let publisher = {
        let url = server.at("/v1/events");
        std::thread::spawn(move || {
            let http = Client::new();
            (0..300)
                .map(|n| {
                    let res: Value = http
                        .post(&url)
                        .json(&json!({"channel": "/h.org/b/", "type": "t", "payload": {"n": n}}))
                        .send()
                        .unwrap()
                        .json()
                        .unwrap();
                    res["seq"].as_u64().unwrap()
                })
                .collect::<Vec<u64>>()
        })
    };
    let mut stream = SseReader::open(&server.at(&format!("/v1/leases/{id}/events")), &[]);
    let live = publisher.join().unwrap();
    sent.extend(live);
    let got: Vec<u64> = (0..sent.len()).map(|_| stream.next().unwrap().id.unwrap().parse().unwrap()).collect();
    assert_eq!(got, sent);
}

/// A lease id can be used again once its lease ended. The new lease's
/// stream, even when it starts before the old lease's end, is not ended by
/// the old end record, and does not receive anycast events the old lease
/// was given.
#[test]
fn a_reused_lease_id_is_a_new_lease() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let body = json!({"channel": "/r.org/", "ttl_s": 60, "group": "g", "id": "r", "from_seq": 1});
    grant(&http, &server, body.clone());
    let plain = publish(&http, &server, "/r.org/a/", "t", 1);
    let old_one = publish_one(&http, &server, "/r.org/a/", 2);
    assert_eq!(http.delete(server.at("/v1/leases/r")).send().unwrap().status(), 204);
    grant(&http, &server, body);
    let new_one = publish_one(&http, &server, "/r.org/a/", 3);
    let mut stream = SseReader::open(&server.at("/v1/leases/r/events"), &[]);
    let first = stream.next().unwrap();
    assert_eq!(first.id.as_deref(), Some(plain.to_string().as_str()), "{}", first.data);
    let second = stream.next().unwrap();
    assert_eq!(second.id.as_deref(), Some(new_one.to_string().as_str()), "{} {}", second.event, second.data);
    assert_eq!(caught_up_seqs(&http, &server, "r"), [plain, new_one]);
    let _ = old_one;
}
