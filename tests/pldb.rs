//! PLDB against a site run in this process ([`Server::embedded`]; the
//! agent's test runs the real binary, whose flag it is): tuples from
//! attribute events, latest and
//! history queries, expiry, delete, snapshot-then-watch, resume from before
//! retention, and pldbget over channels.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, Server, SseReader};
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn attr(http: &Client, server: &Server, channel: &str, field: &str, value: &str, expire: Option<u64>) -> u64 {
    let mut payload = json!({"field": field, "value": value});
    if let Some(e) = expire {
        payload["expire"] = json!(e);
    }
    let res: Value = http
        .post(server.at("/v1/events"))
        .json(&json!({"channel": channel, "type": "attribute", "from": {"service": "agent", "instance": "h1"},
                      "payload": payload}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    res["seq"].as_u64().unwrap_or_else(|| panic!("{res}"))
}

fn get(http: &Client, server: &Server, path: &str) -> Value {
    let res = http.get(server.at(path)).send().unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.json().unwrap()
}

fn fields(page: &Value) -> Vec<(String, String, String)> {
    page["tuples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["channel"].as_str().unwrap().to_string(),
                t["field"].as_str().unwrap().to_string(),
                t["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn latest_values_history_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let h1 = "/lab.org/node/h1/";
    let s1 = attr(&http, &server, h1, "load", "0.5", None);
    let s2 = attr(&http, &server, h1, "load", "0.5", None); // repeat: refresh only
    let s3 = attr(&http, &server, h1, "load", "0.7", None);
    attr(&http, &server, h1, "mem", "512", None);
    attr(&http, &server, "/lab.org/node/h1/packages/", "bash", "5.2", None);
    attr(&http, &server, "/lab.org/node/h2/", "load", "1.0", None);
    // XML attribute payloads set tuples too.
    let xml = r#"<event xmlns="http://psepr.org/xs/event"><to><channel>/lab.org/node/h2/</channel></to>
        <from><service>agent</service><instance>h2</instance></from>
        <payload xmlns="http://psepr.org/xs/payload/attribute"><field>mem</field><value>2048</value></payload></event>"#;
    let res = http.post(server.at("/v1/events")).header("content-type", "application/xml").body(xml).send().unwrap();
    assert_eq!(res.status(), 200);

    // The channel itself, without its subtree.
    let page = get(&http, &server, "/v1/tuples?channel=/lab.org/node/h1/");
    assert_eq!(
        fields(&page),
        [
            (h1.to_string(), "load".to_string(), "0.7".to_string()),
            (h1.to_string(), "mem".to_string(), "512".to_string())
        ]
    );
    assert!(page["seq"].as_u64().unwrap() >= s3);
    assert_eq!(page["tuples"][0]["seq"], s3);
    assert_eq!(page["tuples"][0]["source"]["service"], "agent");
    // The subtree, and one field.
    assert_eq!(fields(&get(&http, &server, "/v1/tuples?channel=/lab.org/node/&recursive=true")).len(), 5);
    let one = get(&http, &server, "/v1/tuples?channel=/lab.org/node/h2/&field=mem");
    assert_eq!(fields(&one), [("/lab.org/node/h2/".to_string(), "mem".to_string(), "2048".to_string())]);
    // Paging with a cursor covers the subtree once, in order.
    let mut seen = Vec::new();
    let mut path = "/v1/tuples?channel=/lab.org/&recursive=true&limit=2".to_string();
    loop {
        let page = get(&http, &server, &path);
        seen.extend(fields(&page));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/tuples?channel=/lab.org/&recursive=true&limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| (&w[0].0, &w[0].1) < (&w[1].0, &w[1].1)));

    // History: changes only, by sequence number or time, either order.
    let hist = |q: &str| -> Vec<u64> {
        get(&http, &server, &format!("/v1/tuples/history?channel={h1}&field=load{q}"))["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(hist(""), [s1, s3], "the repeat at {s2} adds no history row");
    assert_eq!(hist("&order=desc"), [s3, s1]);
    assert_eq!(hist(&format!("&since={}", s1 + 1)), [s3]);
    assert_eq!(hist(&format!("&until={s2}")), [s1]);
    assert_eq!(hist("&since=2000-01-01T00:00:00Z&limit=1"), [s1]);
    assert_eq!(hist("&until=2000-01-01T00:00:00Z"), Vec::<u64>::new());

    // Bad queries are 400 with a message and change nothing.
    for (q, needle) in [
        ("/v1/tuples?channel=nope/", "start with '/'"),
        ("/v1/tuples?channel=/a.org/&limit=0", "limit"),
        ("/v1/tuples?channel=/a.org/&cursor=zz", "cursor"),
        ("/v1/tuples/history?channel=/a.org/&field=f&since=soon", "since"),
        ("/v1/tuples/history?channel=/a.org/&field=f&order=up", "order"),
        ("/v1/tuples?channel=/a.org/&bogus=1", "unknown field"),
    ] {
        let res = http.get(server.at(q)).send().unwrap();
        assert_eq!(res.status(), 400, "{q}");
        let err: Value = res.json().unwrap();
        assert!(err["error"]["message"].as_str().unwrap().contains(needle), "{q}: {err}");
    }
    let overflow = http
        .get(server.at("/v1/watch?channel=/lab.org/&snapshot=true"))
        .header("last-event-id", u64::MAX.to_string())
        .send()
        .unwrap();
    assert_eq!(overflow.status(), 400, "a Last-Event-ID at u64::MAX is refused, not a crash");
    let bad = http
        .post(server.at("/v1/events"))
        .json(&json!({"channel": h1, "type": "attribute", "payload": {"value": "x"}}))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Delete: the tuple leaves the latest values, its history stays.
    let res = http.delete(server.at(&format!("/v1/tuples?channel={h1}&field=mem"))).send().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(fields(&get(&http, &server, "/v1/tuples?channel=/lab.org/node/h1/")).len(), 1);
    let again = http.delete(server.at(&format!("/v1/tuples?channel={h1}&field=mem"))).send().unwrap();
    assert_eq!(again.status(), 404);
    assert_eq!(
        get(&http, &server, &format!("/v1/tuples/history?channel={h1}&field=mem"))["history"][0]["value"],
        "512"
    );
}

#[test]
fn an_expired_tuple_leaves_the_latest_values_and_keeps_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let ch = "/lab.org/node/h1/";
    let mut watch = SseReader::open(&server.at(&format!("/v1/watch?channel={ch}&snapshot=true")), &[]);
    assert_eq!(watch.next().unwrap().event, "pepper.snapshot");
    attr(&http, &server, ch, "uptime", "10", Some(1));
    attr(&http, &server, ch, "kernel", "6.1", None);
    assert_eq!(fields(&get(&http, &server, &format!("/v1/tuples?channel={ch}"))).len(), 2);
    assert!(eventually(Duration::from_secs(3), || {
        fields(&get(&http, &server, &format!("/v1/tuples?channel={ch}"))).len() == 1
    }));
    let hist = get(&http, &server, &format!("/v1/tuples/history?channel={ch}&field=uptime"));
    assert_eq!(hist["history"].as_array().unwrap().len(), 1);
    // The watch saw both sets, then the expiry record on the channel.
    let kinds: Vec<String> = (0..3).map(|_| watch.next().unwrap().event).collect();
    assert_eq!(kinds, ["attribute", "attribute", "tuple.expired"]);
    // Refreshing before the expiry keeps a tuple alive. No timing is
    // assumed: once `control`, set with `uptime`, has expired, `uptime`'s
    // first expiry has passed too.
    attr(&http, &server, ch, "uptime", "11", Some(1));
    attr(&http, &server, ch, "control", "1", Some(1));
    attr(&http, &server, ch, "uptime", "11", Some(3600));
    assert!(eventually(Duration::from_secs(10), || {
        fields(&get(&http, &server, &format!("/v1/tuples?channel={ch}&field=control"))).is_empty()
    }));
    assert_eq!(fields(&get(&http, &server, &format!("/v1/tuples?channel={ch}&field=uptime"))).len(), 1);
}

/// The snapshot and the live changes after it meet exactly: applying both
/// gives the final state, and every change after the snapshot arrives once.
#[test]
fn snapshot_then_watch_has_no_gap_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    for n in 0..200 {
        attr(&http, &server, &format!("/lab.org/node/h{}/", n % 20), &format!("f{n}"), "0", None);
    }
    let url = server.at("/v1/events");
    // The watch opens once the writer is well under way.
    let (under_way, started) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let http = Client::new();
        let mut seqs = Vec::new();
        for i in 1..=300u64 {
            if i == 30 {
                let _ = under_way.send(());
            }
            let n = (i * 7) % 200;
            let body = json!({"channel": format!("/lab.org/node/h{}/", n % 20), "type": "attribute",
                              "payload": {"field": format!("f{n}"), "value": i.to_string()}});
            let res: Value = http.post(&url).json(&body).send().unwrap().json().unwrap();
            seqs.push(res["seq"].as_u64().unwrap());
        }
        seqs
    });
    started.recv().unwrap();
    let mut watch = SseReader::open(&server.at("/v1/watch?channel=/lab.org/&snapshot=true"), &[]);
    let mut state: BTreeMap<(String, String), String> = BTreeMap::new();
    let snapshot_seq = loop {
        let e = watch.next().unwrap();
        match e.event.as_str() {
            "tuples" => {
                for t in e.json().as_array().unwrap() {
                    state.insert(
                        (t["channel"].as_str().unwrap().into(), t["field"].as_str().unwrap().into()),
                        t["value"].as_str().unwrap().into(),
                    );
                }
            }
            "pepper.snapshot" => break e.id.unwrap().parse::<u64>().unwrap(),
            other => panic!("{other} before the snapshot ended"),
        }
    };
    assert_eq!(state.len(), 200);
    let written = writer.join().unwrap();
    let after: Vec<u64> = written.iter().copied().filter(|s| *s > snapshot_seq).collect();
    for want in &after {
        let e = watch.next().unwrap();
        assert_eq!(e.id.as_deref().unwrap().parse::<u64>().unwrap(), *want, "in order, none skipped");
        let ev = e.json();
        state.insert(
            (ev["channel"].as_str().unwrap().into(), ev["payload"]["field"].as_str().unwrap().into()),
            ev["payload"]["value"].as_str().unwrap().into(),
        );
    }
    let mut final_state = BTreeMap::new();
    let mut path = "/v1/tuples?channel=/lab.org/&recursive=true&limit=1000".to_string();
    loop {
        let page = get(&http, &server, &path);
        for (c, f, v) in fields(&page) {
            final_state.insert((c, f), v);
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/tuples?channel=/lab.org/&recursive=true&limit=1000&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(state, final_state);
}

/// A watch that resumes from a position retention already trimmed gets
/// what changed since then, removals included, instead of 410.
#[test]
fn a_resume_from_before_retention_gets_the_changes_since() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &["--log-max-bytes", "4000", "--retention-interval-s", "1"]);
    let http = Client::new();
    let ch = "/lab.org/node/h1/";
    attr(&http, &server, ch, "old", "1", None);
    attr(&http, &server, ch, "gone", "1", None);
    let mark = attr(&http, &server, ch, "marker", "1", None);
    attr(&http, &server, ch, "new", "2", None);
    assert_eq!(http.delete(server.at(&format!("/v1/tuples?channel={ch}&field=gone"))).send().unwrap().status(), 200);
    // Push the log past its byte limit so retention trims past `mark`.
    for n in 0..60 {
        attr(&http, &server, "/lab.org/filler/", &format!("x{n}"), &"v".repeat(100), None);
    }
    assert!(eventually(Duration::from_secs(10), || {
        get(&http, &server, "/v1/health")["earliest_seq"].as_u64().unwrap() > mark + 1
    }));
    let plain = http.get(server.at(&format!("/v1/watch?channel={ch}&from_seq={}", mark + 1))).send().unwrap();
    assert_eq!(plain.status(), 410, "without a snapshot, a trimmed start is 410");
    let mut watch =
        SseReader::open(&server.at(&format!("/v1/watch?channel={ch}&snapshot=true&from_seq={}", mark + 1)), &[]);
    let mut got = Vec::new();
    loop {
        let e = watch.next().unwrap();
        if e.event == "pepper.snapshot" {
            assert_eq!(e.json()["since"], mark + 1);
            break;
        }
        for item in e.json().as_array().unwrap() {
            got.push((e.event.clone(), item["field"].as_str().unwrap().to_string()));
        }
    }
    got.sort();
    assert_eq!(got, [("tuples".to_string(), "new".to_string()), ("tuples.removed".to_string(), "gone".to_string())]);
}

#[test]
fn pldbget_is_answered_on_the_reply_channel_with_relative_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    attr(&http, &server, "/lab.org/node/h1/", "load", "0.5", Some(90));
    attr(&http, &server, "/lab.org/node/h1/packages/", "bash", "5.2", None);
    attr(&http, &server, "/lab.org/node/h2/", "load", "9", None);
    let mut replies = SseReader::open(&server.at("/v1/watch?channel=/client.org/replies/"), &[]);
    let res = http
        .post(server.at("/v1/events"))
        .json(&json!({"channel": "/pldb/", "type": "http://psepr.org/xs/payload/pldbget",
                      "from": {"service": "cli", "instance": "1"},
                      "payload": {"channel": "/lab.org/node/h1/", "reply": "/client.org/replies/"}}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let reply = replies.next().unwrap();
    assert_eq!(reply.event, "pldbattrlist");
    let body = reply.json();
    assert_eq!(body["channel"], "/client.org/replies/");
    assert_eq!(body["to"]["service"], "cli");
    let attrs: Vec<(String, String)> = body["payload"]["attribute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["field"].as_str().unwrap().to_string(), a["value"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(attrs, [("load".to_string(), "0.5".to_string()), ("packages/bash".to_string(), "5.2".to_string())]);
    assert!(body["payload"]["attribute"][0]["expire"].as_u64().unwrap() <= 90);
    // The reply also reads as PsEPR XML.
    let xml = http
        .get(server.at("/v1/events?channel=/client.org/replies/"))
        .header("accept", "application/xml")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(xml.contains("<attribute><field>packages/bash</field>"), "{xml}");
    // A PsEPR client asks in XML and gets the same answer.
    let request = r#"<event xmlns="http://psepr.org/xs/event"><to><channel>/pldb/</channel></to>
        <from><service>psepr-client</service><instance>1</instance></from>
        <payload xmlns="http://psepr.org/xs/payload/pldbget"><channel>/lab.org/node/h2/</channel>
        <reply>/client.org/replies/</reply></payload></event>"#;
    let res =
        http.post(server.at("/v1/events")).header("content-type", "application/xml").body(request).send().unwrap();
    assert_eq!(res.status(), 200);
    let reply = replies.next().unwrap().json();
    assert_eq!(reply["to"]["service"], "psepr-client");
    assert_eq!(reply["payload"]["attribute"][0]["field"], "load");
    assert_eq!(reply["payload"]["attribute"][0]["value"], "9");
    assert!(reply["payload"]["truncated"].is_null());

    // A reply is one record: past its byte budget it is cut and says so.
    let big = "v".repeat(100 * 1024);
    for n in 0..8 {
        attr(&http, &server, "/lab.org/node/h3/", &format!("blob{n}"), &big, None);
    }
    let ask = json!({"channel": "/pldb/", "type": "pldbget", "payload": {"channel": "/lab.org/node/h3/", "reply": "/client.org/replies/"}});
    assert_eq!(http.post(server.at("/v1/events")).json(&ask).send().unwrap().status(), 200);
    let reply = replies.next().unwrap().json();
    assert_eq!(reply["payload"]["truncated"], true);
    let sent = reply["payload"]["attribute"].as_array().unwrap().len();
    assert!(sent > 0 && sent < 8, "{sent} of 8 attributes");
}

/// `pepper serve --agent` shows this machine's state in PLDB within
/// seconds, and `pepper tuples` prints it.
#[test]
fn the_agent_publishes_this_host_and_pepper_tuples_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--agent"]);
    let http = Client::new();
    let mut tuples = Vec::new();
    assert!(eventually(Duration::from_secs(10), || {
        tuples = fields(&get(&http, &server, "/v1/tuples?channel=/test-site/node/&recursive=true&limit=1000"));
        tuples.iter().any(|(_, f, _)| f == "kernel")
    }));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(tuples.iter().any(|(_, f, v)| f == "kernel" && v == kernel.trim()), "{tuples:?}");
    for field in ["load1", "mem_total_kb", "cpus", "uptime_min"] {
        assert!(tuples.iter().any(|(_, f, _)| f == field), "{field} missing from {tuples:?}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["tuples", "/test-site/node/", "--recursive", "--server", &server.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.contains("/kernel  ") || l.ends_with(kernel.trim())), "{text}");
}

/// A time bound skips however many rows lie outside it: the answer is
/// never cut short by the rows it skipped.
#[test]
fn history_by_time_skips_long_runs_outside_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let ch = "/lab.org/node/h1/";
    let batch: Vec<Value> = (0..300)
        .map(|v| json!({"channel": ch, "type": "attribute", "payload": {"field": "t", "value": v.to_string()}}))
        .collect();
    // One batch: one commit time for all 300. Then a later one.
    http.post(server.at("/v1/events")).json(&batch).send().unwrap();
    let newest = || {
        let all = get(&http, &server, &format!("/v1/tuples/history?channel={ch}&field=t&order=desc&limit=1"));
        all["history"][0]["time"].as_str().unwrap().to_string()
    };
    let batch_time = newest();
    // A later commit time; one commit may share the batch's microsecond.
    let (later, late_time) = (0..)
        .map(|n| (attr(&http, &server, ch, "t", &format!("late{n}"), None), newest()))
        .find(|(_, time)| *time > batch_time)
        .unwrap();
    let since = get(&http, &server, &format!("/v1/tuples/history?channel={ch}&field=t&since={late_time}&limit=5"));
    let seqs: Vec<u64> = since["history"].as_array().unwrap().iter().map(|h| h["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [later], "300 older rows skipped, the one in range found");
    let until =
        get(&http, &server, &format!("/v1/tuples/history?channel={ch}&field=t&until=2000-01-01T00:00:00Z&order=desc"));
    assert!(until["history"].as_array().unwrap().is_empty());
}

/// Once the tombstones a resume would need are trimmed, it gets a full
/// snapshot marked `reset` instead of an incomplete list of changes.
#[test]
fn a_resume_from_before_the_tombstone_floor_gets_a_reset_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--log-max-bytes", "3000", "--tombstone-max-age-s", "1", "--retention-interval-s", "1"];
    let server = Server::embedded(dir.path(), &args);
    let http = Client::new();
    let ch = "/lab.org/node/h1/";
    let first = attr(&http, &server, ch, "kept", "1", None);
    attr(&http, &server, ch, "gone", "1", None);
    assert_eq!(http.delete(server.at(&format!("/v1/tuples?channel={ch}&field=gone"))).send().unwrap().status(), 200);
    for n in 0..40 {
        attr(&http, &server, "/lab.org/filler/", &format!("x{n}"), &"v".repeat(100), None);
    }
    // Wait until the log is trimmed past `first` and the tombstone aged out
    // (retention runs every second): until a resume gets a reset.
    assert!(eventually(Duration::from_secs(10), || {
        get(&http, &server, "/v1/health")["earliest_seq"].as_u64().unwrap() > first + 1
    }));
    let resume = || {
        let url = server.at(&format!("/v1/watch?channel={ch}&snapshot=true&from_seq={}", first + 1));
        let mut watch = SseReader::open(&url, &[]);
        let mut fields_seen = Vec::new();
        loop {
            let e = watch.next().unwrap();
            match e.event.as_str() {
                "tuples" => fields_seen
                    .extend(e.json().as_array().unwrap().iter().map(|t| t["field"].as_str().unwrap().to_string())),
                "pepper.snapshot" => break (e.json(), fields_seen),
                // Before the tombstone has aged out: the changes since.
                "tuples.removed" => {}
                other => panic!("{other}: {}", e.data),
            }
        }
    };
    let mut last = None;
    assert!(
        eventually(Duration::from_secs(15), || {
            let (done, fields_seen) = resume();
            let reset = done["reset"] == true;
            last = Some((done, fields_seen));
            reset
        }),
        "{last:?}"
    );
    let (done, fields_seen) = last.unwrap();
    assert_eq!(done["reset"], true, "{done}");
    assert_eq!(fields_seen, ["kept"], "a full snapshot: the tuple set before `since` too");
}
