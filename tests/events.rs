//! Publishing and paging events over HTTP, and every kind of malformed
//! input, against a site run in this process ([`Server::embedded`], the
//! binary's own configuration and `Site`); `pepper send` is the real CLI.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{eventually, Server};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const ATTR_XML: &str = r#"<event xmlns="http://psepr.org/xs/event" id="x-1">
  <to><channel>/example.com/node/h1/</channel></to>
  <from><service>agent</service><instance>h1</instance></from>
  <payload xmlns="http://psepr.org/xs/payload/attribute"><field>load</field><value>0.5</value><expire>90</expire></payload>
</event>"#;

fn last_seq(http: &Client, server: &Server) -> u64 {
    let health: Value = http.get(server.at("/v1/health")).send().unwrap().json().unwrap();
    health["last_seq"].as_u64().unwrap()
}

#[test]
fn publish_json_and_xml_then_page_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();

    let one = json!({"id": "c-1", "channel": "/example.com/node/h1/", "type": "ping", "payload": {"n": 1}});
    let res = http.post(server.at("/v1/events")).json(&one).send().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().unwrap(), json!({"seq": 1, "id": "c-1"}));

    let batch = json!([
        {"channel": "/example.com/node/h2/", "type": "ping"},
        {"channel": "/other.org/x/", "type": "pong"},
        {"channel": "/example.com/node/h1/load/", "type": "http://psepr.org/xs/payload/attribute",
         "payload": {"field": "load", "value": "0.9"}},
    ]);
    let res: Value = http.post(server.at("/v1/events")).json(&batch).send().unwrap().json().unwrap();
    assert_eq!((res["first_seq"].as_u64(), res["last_seq"].as_u64()), (Some(2), Some(4)));
    assert_eq!(res["ids"].as_array().unwrap().len(), 3);

    let res =
        http.post(server.at("/v1/events")).header("content-type", "application/xml").body(ATTR_XML).send().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().unwrap(), json!({"seq": 5, "id": "x-1"}));

    // Page through /example.com/ two at a time.
    let mut seen = Vec::new();
    let mut from = 1;
    loop {
        let page: Value = http
            .get(server.at(&format!("/v1/events?channel=/example.com/&limit=2&from_seq={from}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let events = page["events"].as_array().unwrap();
        seen.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
        assert_eq!(page["last_seq"], 5);
        from = page["next_seq"].as_u64().unwrap();
        if events.is_empty() {
            break;
        }
    }
    assert_eq!(seen, [1, 2, 4, 5]);

    // The type filter accepts the short name and the PsEPR URI alike.
    for types in ["attribute", "http://psepr.org/xs/payload/attribute"] {
        let page: Value = http.get(server.at(&format!("/v1/events?types={types}"))).send().unwrap().json().unwrap();
        let got: Vec<u64> = page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(got, [4, 5], "{types}");
    }
    let page: Value = http.get(server.at("/v1/events?from_seq=5")).send().unwrap().json().unwrap();
    let e = &page["events"][0];
    assert_eq!(e["payload"], json!({"field": "load", "value": "0.5", "expire": 90}));
    assert_eq!(e["from"], json!({"service": "agent", "instance": "h1"}));
    assert_eq!(e["site"], "test-site");
    assert!(e["time"].as_str().unwrap().ends_with('Z'));

    // XML out, and it parses back as PsEPR envelopes.
    let xml = http
        .get(server.at("/v1/events?from_seq=5"))
        .header("accept", "application/xml")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(xml.starts_with("<events xmlns=\"http://psepr.org/xs/event\">"), "{xml}");
    assert!(xml.contains("<field>load</field>") && xml.contains(r#"seq="5""#), "{xml}");
    let again = pepper_adapters::xml::parse_events(&xml).unwrap();
    assert_eq!(again[0].channel, "/example.com/node/h1/");
}

#[test]
fn malformed_input_gets_a_clear_4xx_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    http.post(server.at("/v1/events")).json(&json!({"channel": "/a.org/", "type": "t"})).send().unwrap();
    assert_eq!(last_seq(&http, &server), 1);

    let deep =
        format!(r#"<event xmlns="http://psepr.org/xs/event">{}{}</event>"#, "<n>".repeat(100), "</n>".repeat(100));
    let billion_laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;">]>
        <event xmlns="http://psepr.org/xs/event"><to><channel>/a.org/</channel></to><payload xmlns="urn:x">&lol1;</payload></event>"#;
    let huge = format!(r#"{{"channel": "/a.org/", "type": "t", "payload": "{}"}}"#, "x".repeat(5 * 1024 * 1024));
    let json_ct = "application/json";
    let xml_ct = "application/xml";
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (json_ct, br#"{"channel": "no-slash", "type": "t"}"#.to_vec(), 400, "invalid_channel", "start with '/'"),
        (json_ct, br#"{"channel": "/a.org//b/", "type": "t"}"#.to_vec(), 400, "invalid_channel", "empty"),
        (json_ct, br#"{"channel": "/a.org/", "type": "t""#.to_vec(), 400, "invalid_body", "not JSON"),
        (
            json_ct,
            br#"{"channel": "/a.org/", "type": "t", "colour": 1}"#.to_vec(),
            400,
            "invalid_event",
            "unknown field",
        ),
        (json_ct, b"[]".to_vec(), 400, "invalid_body", "no events"),
        (json_ct, br#"{"channel": "/a.org/", "type": "pepper.snapshot"}"#.to_vec(), 400, "invalid_event", "reserved"),
        (
            json_ct,
            br#"{"channel": "/a.org/", "type": "attribute", "payload": {"field": "f"}}"#.to_vec(),
            400,
            "invalid_event",
            "value",
        ),
        (json_ct, b"42".to_vec(), 400, "invalid_body", "event object or an array"),
        (
            json_ct,
            br#"[{"channel": "/a.org/", "type": "t"}, {"channel": "/pepper/x/", "type": "t"}]"#.to_vec(),
            403,
            "reserved_channel",
            "event 2",
        ),
        (json_ct, vec![b'{', 0xff, 0xfe, b'}'], 400, "invalid_body", "not UTF-8"),
        (xml_ct, b"<event".to_vec(), 400, "invalid_xml", "at byte"),
        (xml_ct, billion_laughs.as_bytes().to_vec(), 400, "invalid_xml", "DOCTYPE"),
        (xml_ct, deep.into_bytes(), 400, "invalid_xml", "deeper"),
        (
            xml_ct,
            br#"<event xmlns="http://psepr.org/xs/event"><to><channel>&ext;</channel></to></event>"#.to_vec(),
            400,
            "invalid_xml",
            "expands no entities",
        ),
    ];
    for (content_type, body, status, code, needle) in cases {
        let res = http.post(server.at("/v1/events")).header("content-type", content_type).body(body).send().unwrap();
        assert_eq!(res.status().as_u16(), status, "{code} {needle}");
        let err: Value = res.json().unwrap();
        assert_eq!(err["error"]["code"], code, "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{code}: {message}");
    }
    // An oversized body is refused as soon as the limit is crossed. The server
    // answers 413 and closes the connection without reading the rest, so a
    // client still sending may see the connection drop instead of the answer
    // (as with any server that enforces a body limit); both are refusals.
    // It goes on a client of its own, so the connection the server closes is
    // never reused for the requests that follow.
    let once = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    match once.post(server.at("/v1/events")).header("content-type", json_ct).body(huge).send() {
        Ok(res) => {
            assert_eq!(res.status(), 413);
            let err: Value = res.json().unwrap();
            assert_eq!(err["error"]["code"], "too_large");
            assert!(err["error"]["message"].as_str().unwrap().contains("limit"));
        }
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    for (query, needle) in [
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("from_seq=abc", "from_seq"),
        ("channel=nope", "start with '/'"),
        ("bogus=1", "unknown field"),
    ] {
        let res = http.get(server.at(&format!("/v1/events?{query}"))).send().unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let err: Value = res.json().unwrap();
        assert!(err["error"]["message"].as_str().unwrap().contains(needle), "{query}: {err}");
    }
    // Nothing was written, and the server keeps serving.
    assert_eq!(last_seq(&http, &server), 1);
    let res = http.post(server.at("/v1/events")).json(&json!({"channel": "/a.org/", "type": "t"})).send().unwrap();
    assert_eq!(res.json::<Value>().unwrap()["seq"], 2);
}

#[test]
fn a_page_from_before_retention_is_gone_with_the_earliest_seq() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &["--log-max-bytes", "0", "--retention-interval-s", "1"]);
    let http = Client::new();
    for _ in 0..3 {
        http.post(server.at("/v1/events")).json(&json!({"channel": "/a.org/", "type": "t"})).send().unwrap();
    }
    let trimmed = eventually(Duration::from_secs(20), || {
        let health: Value = http.get(server.at("/v1/health")).send().unwrap().json().unwrap();
        health["earliest_seq"] == 4
    });
    assert!(trimmed, "retention never trimmed the log");
    let res = http.get(server.at("/v1/events?from_seq=1")).send().unwrap();
    assert_eq!(res.status(), 410);
    let err: Value = res.json().unwrap();
    assert_eq!(err["error"]["code"], "compacted");
    assert_eq!(err["error"]["earliest_seq"], 4);
    let page: Value = http.get(server.at("/v1/events?from_seq=4")).send().unwrap().json().unwrap();
    assert_eq!(page["events"], json!([]));
}

#[test]
fn pepper_send_publishes_attributes_json_and_xml() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let send = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
            .arg("send")
            .args(args)
            .args(["--server", &server.url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    };
    let out = send(&["/example.com/node/h1/", "--field", "load", "--value", "0.5", "--expire", "90"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""seq":1"#));
    let out = send(&["/example.com/x/", "--type", "ping", "--json", r#"{"n": 2}"#, "--id", "retry-1"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = send(&["--xml", "-"], Some(ATTR_XML));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let http = Client::new();
    let page: Value = http.get(server.at("/v1/events")).send().unwrap().json().unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["payload"], json!({"field": "load", "value": "0.5", "expire": 90}));
    assert_eq!(events[0]["type"], "attribute");
    assert_eq!(events[0]["from"]["service"], "pepper-cli");
    assert_eq!((events[1]["id"].as_str(), &events[1]["payload"]), (Some("retry-1"), &json!({"n": 2})));
    assert_eq!(events[2]["id"], "x-1");

    // Errors come back as the API's message and a non-zero exit.
    let out = send(&["no-slash/", "--type", "ping"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid_channel") && err.contains("start with '/'"), "{err}");
    let out = send(&["/a.org/", "--json", "{"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--json is not valid JSON"));
}

#[test]
fn a_retried_event_id_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    let event = json!({"id": "retry-me", "channel": "/a.org/", "type": "t"});
    let first: Value = http.post(server.at("/v1/events")).json(&event).send().unwrap().json().unwrap();
    let again: Value = http.post(server.at("/v1/events")).json(&event).send().unwrap().json().unwrap();
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(again["replayed"], true);
    assert_eq!(last_seq(&http, &server), 1);
    let batch =
        json!([{"id": "b1", "channel": "/a.org/", "type": "t"}, {"id": "b2", "channel": "/a.org/", "type": "t"}]);
    let first: Value = http.post(server.at("/v1/events")).json(&batch).send().unwrap().json().unwrap();
    let again: Value = http.post(server.at("/v1/events")).json(&batch).send().unwrap().json().unwrap();
    assert_eq!((&first["first_seq"], &first["last_seq"]), (&again["first_seq"], &again["last_seq"]));
    assert_eq!(last_seq(&http, &server), 3);
    let mixed =
        json!([{"id": "b2", "channel": "/a.org/", "type": "t"}, {"id": "b3", "channel": "/a.org/", "type": "t"}]);
    let res = http.post(server.at("/v1/events")).json(&mixed).send().unwrap();
    assert_eq!(res.status(), 409);
    assert!(res.json::<Value>().unwrap()["error"]["message"].as_str().unwrap().contains("b2 (seq 3)"));
    assert_eq!(last_seq(&http, &server), 3);
    // Still remembered after a restart.
    assert!(server.stop().success());
    let server = Server::embedded(dir.path(), &[]);
    let again: Value = http.post(server.at("/v1/events")).json(&event).send().unwrap().json().unwrap();
    assert_eq!((again["seq"].as_u64(), &again["replayed"]), (Some(1), &json!(true)));
}

#[test]
fn metrics_count_commits_requests_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    for _ in 0..3 {
        http.post(server.at("/v1/events")).json(&json!({"channel": "/a.org/", "type": "t"})).send().unwrap();
    }
    http.post(server.at("/v1/leases")).json(&json!({"channel": "/a.org/", "ttl_s": 60})).send().unwrap();
    let text = http.get(server.at("/metrics")).send().unwrap().text().unwrap();
    for needle in [
        "pepper_log_last_seq 4",
        "pepper_store_records_committed 4",
        "pepper_leases_live 1",
        r#"pepper_http_requests_total{route="/v1/events",method="POST",status="200"} 3"#,
        "pepper_http_request_seconds_bucket",
        "pepper_deliveries_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}
