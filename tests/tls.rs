//! TLS and site keys, with certificates made in the test (`common::test_ca`):
//! a site with TLS serves HTTPS only and the CLI reaches it with
//! `--cacert`; the peer endpoints require a client certificate valid for
//! the site a request speaks for; a peer's key is pinned from its own
//! authenticated announcement, kept across a restart, and a site coming
//! back under the same name with another key is refused. The federation
//! and supervisor suites run all their sites with TLS on as well.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, Server};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-for-tls-tests-0123456789abc";

fn flags(dir: &std::path::Path, name: &str, extra: &[&str]) -> Vec<String> {
    common::federated_flags(dir, name, SECRET, extra)
}

fn site(dir: &std::path::Path, name: &str, extra: &[&str]) -> Server {
    let args = flags(dir, name, extra);
    Server::embedded(&dir.join(name), &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn get(http: &reqwest::blocking::Client, s: &Server, path: &str) -> Value {
    let res = http.get(s.at(path)).send().unwrap();
    assert!(res.status().is_success(), "{path}: {}", res.status());
    res.json().unwrap()
}

#[test]
fn a_site_with_tls_serves_https_only_and_the_cli_trusts_its_cacert() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), "solo", &[]);
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    // Trusting the CA: served.
    let http = common::admin_client(Duration::from_secs(10));
    assert_eq!(get(&http, &s, "/v1/health")["status"], "ok");
    // Not trusting it: the handshake fails, nothing is served.
    let untrusting = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let refused = untrusting.get(s.at("/v1/health")).send().expect_err("an unknown CA");
    assert!(format!("{refused:?}").to_lowercase().contains("certificate"), "{refused:?}");
    // Plain HTTP on the same port gets no answer.
    let plain = s.url.replacen("https://", "http://", 1);
    assert!(untrusting.get(format!("{plain}/v1/health")).send().is_err(), "plain HTTP is not served");

    // The CLI: --cacert makes it trust the site; without, it fails.
    let ca = dir.path().join("tls-solo").join("ca.crt");
    let cli = |cacert: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pepper"));
        command.env("PEPPER_TOKEN", common::ADMIN_TOKEN).env_remove("PEPPER_CACERT");
        if cacert {
            command.arg("--cacert").arg(&ca);
        }
        command.args(["leases", "--server", &s.url]).output().unwrap()
    };
    let trusted = cli(true);
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    let untrusted = cli(false);
    assert!(!untrusted.status.success(), "without --cacert the site's certificate is unknown");
    // A --cacert that is no certificate is a clear error.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pepper"))
        .arg("--cacert")
        .arg(&bogus)
        .args(["leases", "--server", &s.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus.pem"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_bad_certificate_or_key_stops_the_site_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let flags = common::tls_flags(dir.path(), "x");
    let (cert, key) = (flags[1].clone(), flags[3].clone());
    let (other_cert, _) = common::test_ca().issue(&["other"]);
    let mismatched = dir.path().join("other.crt");
    std::fs::write(&mismatched, other_cert).unwrap();
    let open_key = dir.path().join("open.key");
    std::fs::copy(&key, &open_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_pepper");
    for (args, says) in [
        (vec!["--tls-cert", mismatched.to_str().unwrap(), "--tls-key", &key], "does not fit"),
        (vec!["--tls-cert", &key, "--tls-key", &key], "holds no certificate"),
        (vec!["--tls-cert", &cert, "--tls-key", "/nonexistent/key.pem"], "cannot read the key"),
        (vec!["--tls-cert", &cert, "--tls-key", open_key.to_str().unwrap()], "chmod 600"),
    ] {
        let data = dir.path().join("data");
        let out = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// Posts a heartbeat to `to` as `name` with `key`, with the peer secret,
/// through `http`.
fn announce(http: &reqwest::blocking::Client, to: &Server, name: &str, key: Option<&str>) -> (u16, Value) {
    let a = json!({"name": name, "url": "https://127.0.0.1:1", "seq": 0, "time_us": 0, "key": key});
    let res = http.post(to.at("/v1/peer/heartbeat")).bearer_auth(SECRET).json(&a).send().unwrap();
    (res.status().as_u16(), res.json().unwrap_or(Value::Null))
}

fn key_hex(seed: u8) -> String {
    let key = pepper_router::SigningKey::from_bytes(&[seed; 32]);
    key.verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn peers_need_a_certificate_for_the_name_they_speak_for_and_keep_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = site(dir.path(), "b", &[]);
    let admin = common::admin_client(Duration::from_secs(10));
    // The peer secret without a client certificate: refused, on the peer
    // endpoints and as a federated query's leg alike.
    let ca = reqwest::Certificate::from_pem(common::test_ca().pem.as_bytes()).unwrap();
    let no_cert = reqwest::blocking::Client::builder().add_root_certificate(ca).build().unwrap();
    let (status, body) = announce(&no_cert, &b, "x", Some(&key_hex(1)));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("peer_certificate_required")), "{body}");
    let leg = no_cert.get(b.at("/v1/tuples?channel=/t/")).bearer_auth(SECRET).send().unwrap();
    assert_eq!(leg.status(), 401);
    // A certificate for x, y and z (the harness's): it may not speak as a.
    let harness = common::tls_client().build().unwrap();
    let (status, body) = announce(&harness, &b, "a", Some(&key_hex(1)));
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("peer_certificate_mismatch")), "{body}");
    let leg = harness.get(b.at("/v1/tuples?channel=/t/")).bearer_auth(SECRET).send().unwrap();
    assert_eq!(leg.status(), 200, "a certified peer reads through a federated leg");
    // Nor forward records from a, nor ask for a cut or a replica as a.
    let forward = |origin: &str, id: &str| {
        let record = common::peer_event(origin, 1, id, "/t/", "t");
        harness
            .post(b.at("/v1/peer/records"))
            .bearer_auth(SECRET)
            .header("x-pepper-origin", origin)
            .header("content-type", "application/octet-stream")
            .body(common::peer_batch([&record]))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(forward("a", "forged"), 403);
    for path in ["/v1/peer/cut?site=a&toward=x", "/v1/peer/replica?pattern=/t/&site=a&version=0"] {
        let res = harness.get(b.at(path)).bearer_auth(SECRET).send().unwrap();
        assert_eq!(res.status(), 403, "{path}");
        let body: Value = res.json().unwrap();
        assert_eq!(body["error"]["code"], "peer_certificate_mismatch", "{path}: {body}");
    }
    // As itself, z may forward its own records.
    assert_eq!(forward("z", "own"), 200);
    // As x it may: x's key is pinned from its own announcement.
    let (status, body) = announce(&harness, &b, "x", Some(&key_hex(1)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "b");
    assert_eq!(body["key"].as_str().map(str::len), Some(64), "b announces its own key: {body}");
    let sites = get(&admin, &b, "/v1/sites");
    let x = sites["peers"].as_array().unwrap().iter().find(|p| p["name"] == "x").unwrap().clone();
    assert_eq!(x["key"], key_hex(1), "{x}");
    // Once x's key is pinned, records under x's name need its signature.
    let record = common::peer_event("x", 1, "signed", "/t/", "t");
    let body = common::peer_batch([&record]);
    let post = |signature: Option<String>| {
        let mut req = harness
            .post(b.at("/v1/peer/records"))
            .bearer_auth(SECRET)
            .header("x-pepper-origin", "x")
            .header("content-type", "application/octet-stream")
            .body(body.clone());
        if let Some(s) = signature {
            req = req.header("x-pepper-signature", s);
        }
        let res = req.send().unwrap();
        (res.status().as_u16(), res.json::<Value>().unwrap_or(Value::Null))
    };
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
    let sign = |seed: u8, audience: &str| {
        pepper_router::batch_signature(&pepper_router::SigningKey::from_bytes(&[seed; 32]), "x", audience, "", &digest)
    };
    for (signature, why) in [(None, "unsigned"), (Some(sign(2, "b")), "another key"), (Some(sign(1, "c")), "for c")] {
        let (status, body) = post(signature);
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("bad_signature")), "{why}: {body}");
    }
    let (status, body) = post(Some(sign(1, "b")));
    assert_eq!((status, body["appended"].as_u64()), (200, Some(1)), "{body}");
    // Another key under x's name, or none: refused; the pin holds.
    for other in [Some(key_hex(2)), None] {
        let (status, body) = announce(&harness, &b, "x", other.as_deref());
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("key_mismatch")), "{body}");
    }
    let sites = get(&admin, &b, "/v1/sites");
    let x = sites["peers"].as_array().unwrap().iter().find(|p| p["name"] == "x").unwrap().clone();
    assert_eq!(x["key"], key_hex(1));
    // The refusals are counted by reason.
    let metrics = admin.get(b.at("/metrics")).send().unwrap().text().unwrap();
    for reason in ["no_peer_certificate", "peer_certificate_mismatch", "key_mismatch", "bad_signature"] {
        let line = format!("pepper_auth_refusals_total{{reason=\"{reason}\"}}");
        assert!(metrics.lines().any(|l| l.starts_with(&line)), "{reason} in\n{metrics}");
    }
    // Both changes are audited, by the site that made them.
    let seen = common::audit_entries(&get(&admin, &b, "/v1/events?channel=/pepper/audit/"));
    for want in [("peer.add", "site:x", "x"), ("peer.key_pin", "site:x", "x")] {
        assert!(seen.iter().any(|s| (s.0.as_str(), s.1.as_str(), s.2.as_str()) == want), "{want:?} in {seen:?}");
    }
}

#[test]
fn a_peers_key_is_pinned_kept_across_a_restart_and_a_new_key_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = site(dir.path(), "a", &[]);
    let b = site(dir.path(), "b", &["--peer", &format!("a={}", a.url)]);
    let http = common::admin_client(Duration::from_secs(10));
    let a_key = get(&http, &a, "/v1/sites")["key"].as_str().unwrap().to_string();
    let key_on_b = |b: &Server| {
        let sites = get(&http, b, "/v1/sites");
        sites["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "a")
            .and_then(|p| p["key"].as_str().map(String::from))
    };
    assert!(eventually(Duration::from_secs(10), || key_on_b(&b).as_deref() == Some(a_key.as_str())));
    // The key file: in the data folder, readable by its owner only.
    let key_file = dir.path().join("a").join(pepper_adapters::keys::SITE_KEY_FILE);
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Both stop; b restarts alone and still holds a's key.
    let a_port = a.port();
    assert!(a.stop().success());
    assert!(b.stop().success());
    let b = site(dir.path(), "b", &["--peer", &format!("a=https://127.0.0.1:{a_port}")]);
    assert_eq!(key_on_b(&b).as_deref(), Some(a_key.as_str()), "the pin outlives b's restart");
    // a comes back under its name with another key: b refuses it.
    std::fs::remove_file(&key_file).unwrap();
    let listen = format!("127.0.0.1:{a_port}");
    let a = site(dir.path(), "a", &["--listen", &listen, "--peer", &format!("b={}", b.url)]);
    let new_key = get(&http, &a, "/v1/sites")["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, a_key);
    let b_error_on_a = || {
        let sites = get(&http, &a, "/v1/sites");
        let peer = sites["peers"].as_array().unwrap().iter().find(|p| p["name"] == "b").cloned();
        peer.and_then(|p| p["last_error"].as_str().map(String::from)).unwrap_or_default()
    };
    assert!(eventually(Duration::from_secs(10), || b_error_on_a().contains("key_mismatch")), "{}", b_error_on_a());
    assert_eq!(key_on_b(&b).as_deref(), Some(a_key.as_str()), "the old pin holds");
    // An operator who knows a lost its key unpins it on b (the admin: a
    // reader of the federation may not): a's next announcement pins the
    // new one. Unpinning is audited.
    let reader = {
        let body = json!({"name": "reader", "grants": [{"action": "sites", "resource": "*"}]});
        assert_eq!(http.post(b.at("/v1/auth/principals")).json(&body).send().unwrap().status(), 201);
        let token: Value =
            http.post(b.at("/v1/auth/principals/reader/tokens")).json(&json!({})).send().unwrap().json().unwrap();
        token["token"].as_str().unwrap().to_string()
    };
    let as_reader = http.delete(b.at("/v1/sites/a/key")).bearer_auth(&reader).send().unwrap();
    assert_eq!(as_reader.status(), 403);
    assert_eq!(http.delete(b.at("/v1/sites/a/key")).send().unwrap().status(), 204);
    assert!(eventually(Duration::from_secs(10), || key_on_b(&b).as_deref() == Some(new_key.as_str())));
    assert_eq!(http.delete(b.at("/v1/sites/nobody/key")).send().unwrap().status(), 404);
    let seen = common::audit_entries(&get(&http, &b, "/v1/events?channel=/pepper/audit/"));
    assert!(
        seen.iter()
            .any(|(action, by, target)| (action.as_str(), by.as_str(), target.as_str())
                == ("peer.key_unpin", "admin", "a")),
        "{seen:?}"
    );
}

/// With TLS on, a peer is reached over https only, and only a server whose
/// certificate names the peer asked completes the handshake: a url that
/// leads to another site (a certified peer announcing someone else's name
/// with its own url, say) gets nothing meant for that name, not even the
/// request.
#[test]
fn peers_are_reached_over_https_and_answers_come_from_the_named_site() {
    let dir = tempfile::tempdir().unwrap();
    let b = site(dir.path(), "b", &[]);
    // a believes c is at b's url.
    let a = site(dir.path(), "a", &["--peer", &format!("c={}", b.url)]);
    let http = common::admin_client(Duration::from_secs(10));
    let c_error = || {
        let sites = get(&http, &a, "/v1/sites");
        let c = sites["peers"].as_array().unwrap().iter().find(|p| p["name"] == "c").cloned().unwrap();
        (c["state"].as_str().unwrap().to_string(), c["last_error"].as_str().unwrap_or_default().to_string())
    };
    assert!(eventually(Duration::from_secs(10), || c_error().1.contains("does not name")), "{:?}", c_error());
    assert_ne!(c_error().0, "up", "an answer from b is not c's");
    // The handshake failed before a byte of the heartbeat was sent: b never
    // heard of a.
    let b_peers = get(&http, &b, "/v1/sites")["peers"].clone();
    assert!(b_peers.as_array().unwrap().iter().all(|p| p["name"] != "a"), "{b_peers}");

    let args = flags(dir.path(), "d", &["--peer", "x=http://127.0.0.1:1", "--listen", "127.0.0.1:0"]);
    let out = Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["serve", "--data"])
        .arg(dir.path().join("d"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not https"), "{stderr}");
}

/// `pepper serve --agent` with TLS and auth on: the agent inside the site
/// reaches it over HTTPS, trusting exactly the site's certificate, with
/// the admin token.
#[test]
fn the_agent_inside_a_site_with_tls_publishes_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let args = flags(dir.path(), "agented", &["--agent"]);
    let server = Server::start(&dir.path().join("agented"), &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let http = common::admin_client(Duration::from_secs(10));
    let kernel_published = || {
        let v = get(&http, &server, "/v1/tuples?channel=/agented/node/&recursive=true&limit=1000");
        v["tuples"].as_array().is_some_and(|t| t.iter().any(|t| t["field"] == "kernel"))
    };
    assert!(eventually(Duration::from_secs(10), kernel_published), "the agent published nothing");
}

/// A client that opens a connection and never finishes its TLS handshake
/// (silent, or a few bytes of a ClientHello) is cut off by the header
/// timeout, and the site keeps serving.
#[test]
fn a_handshake_that_never_finishes_is_cut_off() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path(), "slow", &["--header-read-timeout-s", "1"]);
    let connect = || {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", s.port())).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tcp
    };
    let silent = connect();
    let mut trickling = connect();
    trickling.write_all(&[0x16, 0x03, 0x01]).unwrap();
    for mut tcp in [silent, trickling] {
        let start = std::time::Instant::now();
        let mut answer = Vec::new();
        let closed = tcp.read_to_end(&mut answer);
        assert!(closed.is_ok(), "the site closed the connection: {closed:?}");
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }
    let http = common::admin_client(Duration::from_secs(10));
    assert_eq!(get(&http, &s, "/v1/health")["status"], "ok");
}
