//! Supervisors on loopback. The smoke test of the real binary is the
//! paper's Figure 11, with `pepper serve` processes killed by SIGKILL: five
//! sites, a recording policy of R=2 for one subtree, and a publisher writing
//! tuples all along. One recording site is killed, R is restored by a
//! backfilled replica, then the other original recorder is killed, and R is
//! restored again. The two live recorders then hold the complete history,
//! no more than R replicas remain, queries are routed to the recorders, and
//! the handoff can be read as events. The other tests run their sites in
//! this process ([`Server::embedded`]); the placement and stop rules in
//! detail are the router's state machines' and the simulator's.
//!
//! The federated sites run with auth and TLS on (an admin token, a
//! certificate from the tests' CA, peer certificates required; the test's
//! requests carry the token and trust the CA), as they are deployed.
//!
//! No test waits on the clock to see that nothing happens: a steady state
//! is checked after every site's supervisor has evaluated the policy a few
//! more times (`pepper_supervisor_evaluations_total`).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Server};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const SECRET: &str = "test-secret-for-federation-0123456789";
const PATTERN: &str = "/fleet/node/";
/// Monitor interval of the test's sites: a dead monitor is noticed after
/// three of them (600 ms).
const INTERVAL_MS: &str = "200";
/// The documented bound on restoring R after a kill, with these intervals.
const RESTORE_MAX: Duration = Duration::from_secs(10);

/// A site of the test's federation in this process; `peer` is another
/// site as NAME=URL.
fn site(dir: &std::path::Path, name: &str, region: &str, peer: Option<&str>) -> Server {
    let args = args(dir, name, region, peer);
    Server::embedded(&dir.join(name), &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The same site as a `pepper serve` process, which a test can kill.
fn process_site(dir: &std::path::Path, name: &str, region: &str, peer: Option<&str>) -> Server {
    let args = args(dir, name, region, peer);
    Server::start(&dir.join(name), &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Auth and TLS on, with peer certificates required.
fn args(dir: &std::path::Path, name: &str, region: &str, peer: Option<&str>) -> Vec<String> {
    let mut extra = vec!["--region", region, "--monitor-interval-ms", INTERVAL_MS, "--record", "/fleet/node/=2"];
    if let Some(p) = peer {
        extra.extend(["--peer", p]);
    }
    common::federated_flags(dir, name, SECRET, &extra)
}

/// How many times `s`'s supervisor has evaluated the policy.
fn evaluations(http: &Client, s: &Server) -> u64 {
    let text = http.get(s.at("/metrics")).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("pepper_supervisor_evaluations_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no evaluation count in {text}"))
}

/// Waits until each of `sites` has evaluated the policy `n` more times: a
/// window in which a wrong decision would have been taken, counted in the
/// supervisors' own steps rather than in wall-clock time.
fn wait_evaluations<'a>(http: &Client, sites: impl IntoIterator<Item = &'a Server>, n: u64) {
    let sites: Vec<(&Server, u64)> = sites.into_iter().map(|s| (s, evaluations(http, s))).collect();
    for (s, from) in sites {
        assert!(
            eventually(Duration::from_secs(30), || evaluations(http, s) >= from + n),
            "{} did not evaluate {n} more times",
            s.url
        );
    }
}

fn get(http: &Client, s: &Server, path: &str) -> Value {
    http.get(s.at(path)).send().unwrap().json().unwrap()
}

/// The sites `s` sees recording the test's pattern completely.
fn complete_recorders(http: &Client, s: &Server) -> BTreeSet<String> {
    complete_recorders_of(http, s, PATTERN).into_iter().collect()
}

fn live_monitors(http: &Client, s: &Server) -> usize {
    let v = get(http, s, "/v1/recording");
    v["policies"][0]["live"].as_u64().unwrap() as usize
}

/// A site's own history of (channel, field), read locally, every page.
fn local_history(http: &Client, s: &Server, channel: &str, field: &str) -> Vec<String> {
    history(http, s, channel, field, "local")
}

fn history(http: &Client, s: &Server, channel: &str, field: &str, scope: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut since = 0u64;
    loop {
        let path = format!("/v1/tuples/history?channel={channel}&field={field}&scope={scope}&limit=1000&since={since}");
        let v = get(http, s, &path);
        let rows = v["history"].as_array().unwrap_or_else(|| panic!("{v}"));
        out.extend(rows.iter().map(|h| h["value"].as_str().unwrap().to_string()));
        match rows.last() {
            Some(last) if rows.len() == 1000 => since = last["seq"].as_u64().unwrap() + 1,
            _ => return out,
        }
    }
}

#[test]
fn recorders_are_replaced_with_their_history_after_kills() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let s1 = process_site(dir.path(), "s1", "r1", None);
    let seed = format!("s1={}", s1.url);
    let mut servers: BTreeMap<String, Server> = BTreeMap::new();
    for (name, region) in [("s2", "r1"), ("s3", "r2"), ("s4", "r2"), ("s5", "r3")] {
        servers.insert(name.into(), process_site(dir.path(), name, region, Some(&seed)));
    }
    servers.insert("s1".into(), s1);
    let any = |servers: &BTreeMap<String, Server>, not: &BTreeSet<String>| -> String {
        servers.keys().find(|k| !not.contains(*k)).unwrap().clone()
    };

    // The supervisors converge on exactly two complete monitors.
    let mut original = BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            original = complete_recorders(&http, &servers["s1"]);
            original.len() == 2 && servers.values().all(|s| complete_recorders(&http, s) == original)
        }),
        "never two recorders: {}",
        get(&http, &servers["s1"], "/v1/recording")
    );

    // A publisher writes tuples all along into the sites that do not record
    // (they are never killed), each value unique.
    let publishers: Vec<String> =
        servers.iter().filter(|(k, _)| !original.contains(*k)).map(|(_, s)| s.url.clone()).collect();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let http = common::admin_client(Duration::from_secs(5));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Each node's channel is published through one site, as a
                // node's agent does: its updates have one order everywhere.
                let node = n % 4;
                let channel = format!("{PATTERN}h{node}/");
                let value = format!("v{n:06}");
                let url = &publishers[node as usize % publishers.len()];
                let body = json!({"id": format!("p{n}"), "channel": channel, "type": "attribute",
                                  "from": {"service": "agent", "instance": "test"},
                                  "payload": {"field": "load", "value": value}});
                let res = http.post(format!("{url}/v1/events")).json(&body).send().unwrap();
                assert!(res.status().is_success(), "{}", res.text().unwrap());
                acked.lock().unwrap().push((channel, value));
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let published = |n: usize| {
        assert!(eventually(Duration::from_secs(30), || acked.lock().unwrap().len() >= n), "the publisher stalled");
    };
    published(100);

    // Kill one recorder; wait until R is restored without it.
    let mut dead = BTreeSet::new();
    let mut restore_times = Vec::new();
    for round in 0..2 {
        let victim = original.iter().nth(round).unwrap().clone();
        servers.remove(&victim).unwrap().kill();
        dead.insert(victim.clone());
        let killed_at = Instant::now();
        let watcher = any(&servers, &BTreeSet::new());
        let mut now_recording = BTreeSet::new();
        assert!(
            eventually(RESTORE_MAX, || {
                now_recording = complete_recorders(&http, &servers[&watcher]);
                now_recording.len() == 2 && now_recording.is_disjoint(&dead)
            }),
            "round {round}: R not restored within {RESTORE_MAX:?} of killing {victim}: {}",
            get(&http, &servers[&watcher], "/v1/recording")
        );
        restore_times.push(killed_at.elapsed());
        // Keep publishing a little across the restored state.
        let so_far = acked.lock().unwrap().len();
        published(so_far + 50);
    }
    eprintln!("R restored after each kill in {restore_times:?}");
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the publisher wrote {} tuples", acked.len());

    // Two live recorders, neither an original, each with the complete
    // history of every tuple, in order and without repeats.
    // A replacement may briefly make a third complete replica before the
    // stop rule retires one (docs/supervisors.md): wait for exactly R.
    let watcher = any(&servers, &BTreeSet::new());
    assert!(
        eventually(Duration::from_secs(10), || complete_recorders(&http, &servers[&watcher]).len() == 2),
        "{:?}",
        complete_recorders(&http, &servers[&watcher])
    );
    let recorders = complete_recorders(&http, &servers[&watcher]);
    assert!(recorders.is_disjoint(&original));
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (channel, value) in &acked {
        want.entry(channel.clone()).or_default().push(value.clone());
    }
    for r in &recorders {
        let s = &servers[r];
        assert!(
            eventually(Duration::from_secs(10), || want
                .iter()
                .all(|(channel, values)| local_history(&http, s, channel, "load") == *values)),
            "{r} does not hold the complete history: {}",
            want.iter()
                .map(|(c, values)| {
                    let got = local_history(&http, s, c, "load");
                    let missing: Vec<&String> = values.iter().filter(|v| !got.contains(v)).collect();
                    let extra: Vec<&String> = got.iter().filter(|v| !values.contains(v)).collect();
                    format!("{c}: want {} got {}, missing {missing:?}, extra {extra:?}; ", values.len(), got.len())
                })
                .collect::<String>()
        );
    }

    // Steady state: no more than R replicas, and the others record nothing,
    // after every site has evaluated the policy five more times.
    wait_evaluations(&http, servers.values(), 5);
    for (name, s) in &servers {
        assert!(live_monitors(&http, s) <= 2, "{name} sees {}", get(&http, s, "/v1/recording"));
        assert_eq!(complete_recorders(&http, s), recorders, "{name}");
        if !recorders.contains(name) {
            let channel = &acked[0].0;
            assert!(local_history(&http, s, channel, "load").is_empty(), "{name} records without a monitor");
        }
    }

    // A query on a non-recorder, without a scope, goes to a recorder.
    let reader = servers.keys().find(|k| !recorders.contains(*k)).unwrap();
    let (last_channel, last_value) = acked.last().unwrap();
    let v = get(&http, &servers[reader], &format!("/v1/tuples?channel={last_channel}&field=load"));
    assert_eq!(v["tuples"][0]["value"].as_str(), Some(last_value.as_str()), "{v}");
    let used: Vec<&Value> = v["manifest"]["sites"].as_array().unwrap().iter().filter(|s| s["used"] == true).collect();
    assert_eq!(used.len(), 1, "{v}");
    assert!(recorders.contains(used[0]["site"].as_str().unwrap()), "{v}");
    // And with scope=recorders, the history too.
    let values = history(&http, &servers[reader], last_channel, "load", "recorders");
    assert_eq!(values, want[last_channel.as_str()]);

    // The handoff is visible as events on the pattern's monitor channel.
    let events = get(&http, &servers[&watcher], "/v1/events?channel=/pepper/monitors/fleet/node/&limit=1000");
    let types: BTreeSet<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["payload"]["site"].as_str().unwrap().to_string()))
        .collect();
    for r in &recorders {
        for ty in ["pepper.monitor.start", "pepper.monitor.backfill", "pepper.monitor.complete"] {
            assert!(types.contains(&(ty.to_string(), r.clone())), "no {ty} from {r}: {types:?}");
        }
    }

    // A recorder's store replays clean: every row it holds, copied or
    // recorded, follows from its log.
    let r = recorders.iter().next().unwrap().clone();
    let status = servers.remove(&r).unwrap().stop();
    assert!(status.success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["check", "--data"])
        .arg(dir.path().join(&r))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn one_monitor_stops_when_there_are_too_many() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let a = site(dir.path(), "s1", "r1", None);
    let seed = format!("s1={}", a.url);
    let b = site(dir.path(), "s2", "r1", Some(&seed));
    let c = site(dir.path(), "s3", "r2", Some(&seed));
    let all = [&a, &b, &c];
    let policy = |r: u64| {
        for s in all {
            let res = http.put(s.at("/v1/recording/policies")).json(&json!({"pattern": PATTERN, "replicas": r})).send();
            assert_eq!(res.unwrap().status(), 200);
        }
    };
    policy(3);
    let three: BTreeSet<String> = ["s1", "s2", "s3"].into_iter().map(String::from).collect();
    assert!(
        eventually(Duration::from_secs(20), || all.iter().all(|s| complete_recorders(&http, s) == three)),
        "{}",
        get(&http, &a, "/v1/recording")
    );
    let body = json!({"channel": "/fleet/node/h1/", "type": "attribute", "payload": {"field": "f", "value": "1"}});
    assert!(http.post(c.at("/v1/events")).json(&body).send().unwrap().status().is_success());
    // R lowered to 2: exactly one stops, by the rule every site computes
    // alike: of the region with the most monitors (r1: s1 and s2), the one
    // that completed last.
    policy(2);
    let mut two = BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            two = complete_recorders(&http, &c);
            two.len() == 2 && all.iter().all(|s| complete_recorders(&http, s) == two)
        }),
        "{}",
        get(&http, &a, "/v1/recording")
    );
    assert!(two.contains("s3"), "the site alone in its region keeps its monitor: {two:?}");
    // It stays at two, through five more evaluations on every site, and the
    // stopped site no longer holds the rows.
    wait_evaluations(&http, all, 5);
    assert_eq!(complete_recorders(&http, &c), two);
    let stopped = all.iter().find(|s| !two.contains(get(&http, s, "/v1/health")["site"].as_str().unwrap()));
    let stopped = stopped.unwrap();
    assert!(local_history(&http, stopped, "/fleet/node/h1/", "f").is_empty());
    for s in all.iter().filter(|s| s.url != stopped.url) {
        assert_eq!(local_history(&http, s, "/fleet/node/h1/", "f"), ["1"]);
    }
    // A restarted non-recorder hears the others before it counts: it does
    // not take the silence of its first moments for a lost subtree and
    // start an empty replica.
    let name = get(&http, stopped, "/v1/health")["site"].as_str().unwrap().to_string();
    let seed = all.iter().find(|s| s.url != stopped.url).unwrap();
    let seed_peer = format!("{}={}", get(&http, seed, "/v1/health")["site"].as_str().unwrap(), seed.url);
    let region = if name == "s3" { "r2" } else { "r1" };
    let mut servers = vec![a, b, c];
    let at = servers.iter().position(|s| get(&http, s, "/v1/health")["site"] == name.as_str()).unwrap();
    assert!(servers.remove(at).stop().success());
    let restarted = site(dir.path(), &name, region, Some(&seed_peer));
    // Checked after each of its first ten evaluations (its warm-up and
    // beyond).
    loop {
        let done = evaluations(&http, &restarted);
        let v = get(&http, &restarted, "/v1/recording");
        assert!(v["local"][0]["state"] == "stopped", "{name} started a monitor after its restart: {v}");
        if done >= 10 {
            break;
        }
        assert!(eventually(Duration::from_secs(10), || evaluations(&http, &restarted) > done));
    }
    assert_eq!(complete_recorders(&http, &restarted), two);
}

#[test]
fn peer_endpoints_refuse_what_they_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let s = site(dir.path(), "s1", "r1", None);
    let auth = format!("Bearer {SECRET}");
    let call = |path: &str, with_auth: bool| {
        let mut req = http.get(s.at(path));
        if with_auth {
            req = req.header("authorization", &auth);
        }
        let res = req.send().unwrap();
        (res.status().as_u16(), res.json::<Value>().unwrap_or(Value::Null))
    };
    // The secret is checked first.
    assert_eq!(call("/v1/peer/replica?pattern=/fleet/node/&site=x&version=1", false).0, 401);
    // Missing or unknown parameters, and bad names: the API's JSON 400.
    for bad in [
        "/v1/peer/replica?pattern=/fleet/node/",
        "/v1/peer/replica?pattern=/fleet/node&site=x&version=1",
        "/v1/peer/replica?pattern=/fleet/node/&site=x&version=1&more=1",
        "/v1/peer/cut?site=x",
        "/v1/peer/cut?site=a/b&toward=y",
    ] {
        let (status, body) = call(bad, true);
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{bad}: {body}");
    }
    // A site that does not hold the asker's interests yet says so.
    let (status, body) = call("/v1/peer/replica?pattern=/fleet/node/&site=x&version=1", true);
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("interests_pending")), "{body}");
    // A site without a complete monitor of the subtree is no replica of it.
    let (status, body) = call("/v1/peer/replica?pattern=/other/&site=x&version=0", true);
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_a_replica")), "{body}");
    // With its monitor complete, it serves the subtree: header, rows, end.
    let event = json!({"channel": "/fleet/node/h1/", "type": "attribute", "payload": {"field": "f", "value": "1"}});
    assert!(eventually(Duration::from_secs(10), || complete_recorders(&http, &s).len() == 1));
    assert!(http.post(s.at("/v1/events")).json(&event).send().unwrap().status().is_success());
    let text = http
        .get(s.at("/v1/peer/replica?pattern=/fleet/node/&site=x&version=0"))
        .header("authorization", &auth)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0]["replica"]["site"], "s1");
    assert!(lines[0]["replica"]["marks"].as_array().unwrap().iter().any(|m| m[0] == "s1"), "{text}");
    assert_eq!(lines[1]["h"][3], "1");
    assert_eq!(lines[2]["l"][3], "1");
    assert_eq!(lines[3]["end"], json!({"history": 1, "latest": 1}));
    // The cut answers with this site's position.
    let (status, body) = call("/v1/peer/cut?site=x&toward=y", true);
    assert_eq!(status, 200);
    assert!(body["seq"].as_u64().unwrap() > 0 && body["cursor"].is_null(), "{body}");
}

#[test]
fn policies_are_checked_kept_and_changed_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    let s = Server::embedded(&dir.path().join("one"), &["--site", "one", "--monitor-interval-ms", "50"]);
    // Bad policies get 400 and change nothing.
    for (body, needle) in [
        (json!({"pattern": "/a", "replicas": 2}), "end with '/'"),
        (json!({"pattern": "/a/", "replicas": 0}), "replicas"),
        (json!({"pattern": "/a/", "replicas": 99}), "replicas"),
        (json!({"pattern": "/pepper/x/", "replicas": 1}), "/pepper/"),
        (json!({"pattern": "/a/", "replicas": 1, "extra": 1}), "extra"),
    ] {
        let res = http.put(s.at("/v1/recording/policies")).json(&body).send().unwrap();
        assert_eq!(res.status(), 400, "{body}");
        assert!(res.text().unwrap().contains(needle), "{body}");
    }
    let res = http.put(s.at("/v1/recording/policies")).json(&json!({"pattern": "/a/", "replicas": 1})).send().unwrap();
    assert_eq!(res.status(), 200);
    // A nesting pattern is refused.
    let res =
        http.put(s.at("/v1/recording/policies")).json(&json!({"pattern": "/a/b/", "replicas": 1})).send().unwrap();
    assert_eq!(res.status(), 400);
    // A single site starts the one monitor the policy wants, with nothing to
    // copy, and records from then on.
    assert!(eventually(Duration::from_secs(10), || complete_recorders_of(&http, &s, "/a/") == ["one"]));
    let body = json!({"channel": "/a/h/", "type": "attribute", "payload": {"field": "f", "value": "1"}});
    assert!(http.post(s.at("/v1/events")).json(&body).send().unwrap().status().is_success());
    let v = get(&http, &s, "/v1/tuples?channel=/a/h/&field=f");
    assert_eq!(v["tuples"][0]["value"], "1", "{v}");
    // Kept across a restart.
    let data = dir.path().join("one");
    assert!(s.stop().success());
    let s = Server::embedded(&data, &["--site", "one", "--monitor-interval-ms", "50"]);
    let v = get(&http, &s, "/v1/recording");
    assert_eq!(v["policies"][0]["pattern"], "/a/", "{v}");
    assert_eq!(v["local"][0]["state"], "complete", "{v}");
    // Dropping the policy stops the monitor and removes its rows.
    let res = http.delete(s.at("/v1/recording/policies?pattern=/a/")).send().unwrap();
    assert_eq!(res.status(), 204);
    assert!(eventually(Duration::from_secs(10), || get(&http, &s, "/v1/recording")["local"][0]["state"] == "stopped"));
    let v = get(&http, &s, "/v1/tuples?channel=/a/h/&field=f");
    assert!(v["tuples"].as_array().unwrap().is_empty(), "{v}");
    let res = http.delete(s.at("/v1/recording/policies?pattern=/a/")).send().unwrap();
    assert_eq!(res.status(), 404);
    // The same from the command line.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
            .arg("recording")
            .args(args)
            .args(["--server", &s.url])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = cli(&["--set", "/b/=1"]);
    assert!(ok, "{text}");
    assert!(eventually(Duration::from_secs(10), || cli(&[]).1.contains("one (complete)")));
    let (ok, text) = cli(&["--set", "/b"]);
    assert!(!ok && text.contains("PATTERN=R"), "{text}");
    let (ok, text) = cli(&["--drop", "/b/"]);
    assert!(ok && text.contains("dropped /b/"), "{text}");
    let (ok, text) = cli(&["--drop", "/b/"]);
    assert!(!ok && text.contains("404"), "{text}");
}

fn complete_recorders_of(http: &Client, s: &Server, pattern: &str) -> Vec<String> {
    let v = get(http, s, "/v1/recording");
    let Some(p) = v["policies"].as_array().and_then(|ps| ps.iter().find(|p| p["pattern"] == pattern)) else {
        return Vec::new();
    };
    p["monitors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "complete")
        .map(|m| m["site"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn queries_on_a_subtree_nobody_records_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::admin_client(Duration::from_secs(10));
    // A long interval: no monitor starts during the test.
    let args = ["--site", "one", "--monitor-interval-ms", "60000", "--record", "/a/=1"];
    let s = Server::embedded(&dir.path().join("one"), &args);
    // Routed to the recorders on its own, and there are none: 503, not an
    // empty answer a client would take for "no rows".
    let res = http.get(s.at("/v1/tuples?channel=/a/x/")).send().unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.json::<Value>().unwrap()["error"]["code"], "no_recorder");
    // Outside the policy, a query is local as before.
    let res = http.get(s.at("/v1/tuples?channel=/b/x/")).send().unwrap();
    assert_eq!(res.status(), 200);
    // scope=recorders on a channel no policy covers is the caller's error.
    let res = http.get(s.at("/v1/tuples?channel=/b/x/&scope=recorders")).send().unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().unwrap().contains("no recording policy covers"));
}
