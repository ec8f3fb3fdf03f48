//! Identity and permissions against a site run in this process with auth
//! on (an admin token from a file): every endpoint × {no token, unknown
//! token, revoked token, expired token, a token without the permission, a
//! token with it}, checking the status, the error shape and that a refusal
//! changed nothing; a batch with one refused event refused whole; the
//! principals' lifecycle across a restart; and `serve`'s refusal to listen
//! beyond loopback without auth.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{eventually, Server};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";
const NS: &str = "root%2Fcimv2";

fn site(dir: &std::path::Path) -> Server {
    let file = dir.join("admin-token");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    let file = file.to_str().unwrap().to_string();
    Server::embedded(&dir.join("data"), &["--admin-token-file", &file])
}

struct Api<'a> {
    http: Client,
    server: &'a Server,
}

impl Api<'_> {
    fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::blocking::Response {
        let mut req: RequestBuilder = self.http.request(method, self.server.at(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().unwrap()
    }

    fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let res = self.call(method, path, Some(ADMIN), body);
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().unwrap_or(Value::Null)
    }

    /// A principal with `grants` and a token for it.
    fn principal(&self, name: &str, grants: &[(&str, &str)]) -> String {
        let grants: Vec<Value> = grants.iter().map(|(a, r)| json!({"action": a, "resource": r})).collect();
        self.admin(Method::POST, "/v1/auth/principals", Some(&json!({"name": name, "grants": grants})));
        self.token(name, None)
    }

    fn token(&self, name: &str, expires_in_s: Option<u64>) -> String {
        let body = json!({"expires_in_s": expires_in_s, "note": "test"});
        let v = self.admin(Method::POST, &format!("/v1/auth/principals/{name}/tokens"), Some(&body));
        v["token"].as_str().unwrap().to_string()
    }

    /// What a refusal must leave unchanged: the log's head and the leases.
    fn state(&self) -> (Value, Value) {
        let health = self.admin(Method::GET, "/v1/health", None);
        let leases = self.admin(Method::GET, "/v1/leases", None);
        (health["last_seq"].clone(), leases["leases"].clone())
    }
}

/// One endpoint: how to call it and the grant it needs.
struct Case {
    method: Method,
    path: String,
    body: Option<Value>,
    grant: (&'static str, &'static str),
    /// The status with the permission.
    ok: u16,
}

fn case(method: Method, path: &str, body: Option<Value>, grant: (&'static str, &'static str), ok: u16) -> Case {
    Case { method, path: path.to_string(), body, grant, ok }
}

#[test]
fn every_endpoint_refuses_each_kind_of_bad_caller_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::builder().timeout(Duration::from_secs(10)).build().unwrap(), server: &server };
    // Something to read, hold and delete.
    let attr = json!({"channel": "/m/x/", "type": "attribute", "payload": {"field": "f", "value": "1"}});
    api.admin(Method::POST, "/v1/events", Some(&attr));
    // A lease belongs to the principal it was granted to: the cases on it
    // are served to its holder.
    let holder = api.principal("holder", &[("subscribe", "/m/")]);
    let res = api.call(Method::POST, "/v1/leases", Some(&holder), Some(&json!({"channel": "/m/", "ttl_s": 600})));
    let lease = res.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    let class = json!({"name": "Lab_Host", "superclass": "CIM_ComputerSystem"});

    let cases = vec![
        case(Method::POST, "/v1/events", Some(json!({"channel": "/m/y/", "type": "t"})), ("publish", "/m/"), 200),
        case(Method::GET, "/v1/events?channel=/m/", None, ("subscribe", "/m/"), 200),
        case(Method::POST, "/v1/leases", Some(json!({"channel": "/m/", "ttl_s": 60})), ("subscribe", "/m/"), 201),
        case(Method::GET, &format!("/v1/leases/{lease}"), None, ("subscribe", "/m/"), 200),
        case(Method::POST, &format!("/v1/leases/{lease}/renew"), Some(json!({})), ("subscribe", "/m/"), 200),
        case(Method::GET, &format!("/v1/leases/{lease}/events?wait_ms=0&max=1"), None, ("subscribe", "/m/"), 200),
        case(Method::GET, "/v1/tuples?channel=/m/x/", None, ("tuples.read", "/m/"), 200),
        case(Method::GET, "/v1/tuples?channel=/m/&recursive=true", None, ("tuples.read", "/m/"), 200),
        case(Method::GET, "/v1/tuples?channel=/m/x/&scope=all", None, ("tuples.read", "/m/"), 200),
        case(Method::GET, "/v1/tuples/history?channel=/m/x/&field=f", None, ("tuples.read", "/m/x/"), 200),
        case(Method::GET, &format!("/v1/namespaces/{NS}/classes"), None, ("models.read", "root/cimv2"), 200),
        case(Method::POST, &format!("/v1/namespaces/{NS}/classes"), Some(class), ("models.write", "root/cimv2"), 201),
        case(
            Method::GET,
            &format!("/v1/namespaces/{NS}/instances?class=CIM_ComputerSystem"),
            None,
            ("models.read", "*"),
            200,
        ),
        case(Method::GET, "/v1/recording", None, ("recording", "*"), 200),
        case(Method::GET, "/v1/sites", None, ("sites", "*"), 200),
        case(Method::DELETE, "/v1/sites/nobody/key", None, ("admin", "*"), 404),
        case(Method::GET, "/metrics", None, ("metrics", "*"), 200),
        case(Method::GET, "/v1/auth/principals", None, ("admin", "*"), 200),
        case(Method::DELETE, "/v1/tuples?channel=/m/x/&field=f", None, ("tuples.delete", "/m/"), 200),
        case(Method::DELETE, &format!("/v1/leases/{lease}"), None, ("subscribe", "/m/"), 204),
        // Last: once a policy is set, the supervisor starts writing on its own.
        case(
            Method::PUT,
            "/v1/recording/policies",
            Some(json!({"pattern": "/r/", "replicas": 1})),
            ("recording", "*"),
            200,
        ),
    ];

    // Tokens that are no good, each for its own reason.
    let revoked = api.principal("revoked", &[("admin", "*")]);
    let id = revoked.split('_').nth(1).unwrap().to_string();
    api.admin(Method::DELETE, &format!("/v1/auth/principals/revoked/tokens/{id}"), None);
    api.admin(
        Method::POST,
        "/v1/auth/principals",
        Some(&json!({"name": "expiring", "grants": [{"action": "admin", "resource": "*"}]})),
    );
    let expired = api.token("expiring", Some(1));
    assert!(
        eventually(Duration::from_secs(5), || api.call(Method::GET, "/v1/auth/whoami", Some(&expired), None).status()
            == 401),
        "the token never expired"
    );
    let unknown = format!("pepper_{}_{}", "0".repeat(16), "1".repeat(64));
    // A principal holding every grant but the one each case needs.
    let mut other: Vec<(&str, &str)> = vec![("publish", "/n/"), ("subscribe", "/n/"), ("tuples.read", "/n/")];
    other.extend([("tuples.delete", "/n/"), ("models.read", "root/other"), ("models.write", "root/other")]);
    let without = api.principal("without", &other);

    for (i, c) in cases.iter().enumerate() {
        // A lease the caller may not hold is answered as if it did not
        // exist, so ids cannot be probed.
        let denied = if c.path.starts_with("/v1/leases/") { (404, "not_found") } else { (403, "forbidden") };
        for (who, token, status, code) in [
            ("no token", None, 401, "unauthorized"),
            ("an unknown token", Some(unknown.as_str()), 401, "unauthorized"),
            ("a revoked token", Some(revoked.as_str()), 401, "unauthorized"),
            ("an expired token", Some(expired.as_str()), 401, "unauthorized"),
            ("a token without the grant", Some(without.as_str()), denied.0, denied.1),
        ] {
            let before = api.state();
            let res = api.call(c.method.clone(), &c.path, token, c.body.as_ref());
            assert_eq!(res.status().as_u16(), status, "{} {} with {who}", c.method, c.path);
            if status == 401 {
                assert_eq!(res.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
            }
            let body: Value = res.json().unwrap();
            assert_eq!(body["error"]["code"], code, "{} {} with {who}: {body}", c.method, c.path);
            let message = body["error"]["message"].as_str().unwrap();
            if let Some(t) = token {
                assert!(!message.contains(&t[24..]), "a token's secret in an error: {message}");
            }
            assert_eq!(api.state(), before, "{} {} with {who} changed something", c.method, c.path);
        }
        // With the grant (and nothing else), it is served.
        let name = format!("with{i}");
        let token = match c.path.starts_with("/v1/leases/") {
            true => holder.clone(),
            false => api.principal(&name, &[c.grant]),
        };
        let res = api.call(c.method.clone(), &c.path, Some(&token), c.body.as_ref());
        let status = res.status().as_u16();
        assert_eq!(status, c.ok, "{} {} with {:?}: {}", c.method, c.path, c.grant, res.text().unwrap());
    }

    // A watch, an SSE stream: refused before it opens, opened with the grant.
    let watch = |token: &str| api.call(Method::GET, "/v1/watch?channel=/m/", Some(token), None).status().as_u16();
    assert_eq!(watch(&without), 403);
    assert_eq!(watch(&api.principal("watcher", &[("subscribe", "/m/")])), 200);
    // A snapshot is latest values: it needs tuples.read too.
    let snapshot = api.principal("snapshotter", &[("subscribe", "/m/")]);
    let res = api.call(Method::GET, "/v1/watch?channel=/m/&snapshot=true", Some(&snapshot), None);
    assert_eq!(res.status(), 403);
    // Health stays open, for load balancers.
    assert_eq!(api.call(Method::GET, "/v1/health", None, None).status(), 200);
}

#[test]
fn a_batch_with_one_refused_event_is_refused_whole_and_a_grant_covers_only_its_subtree() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    let token = api.principal("pub", &[("publish", "/a/*/cpu/"), ("subscribe", "/a/")]);
    let before = api.state();
    let batch = json!([{"channel": "/a/h1/cpu/", "type": "t"}, {"channel": "/a/h1/mem/", "type": "t"}]);
    let res = api.call(Method::POST, "/v1/events", Some(&token), Some(&batch));
    assert_eq!(res.status(), 403);
    let body: Value = res.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("event 2:") && message.contains("/a/h1/mem/"), "{message}");
    assert_eq!(api.state(), before);
    let ok = json!([{"channel": "/a/h1/cpu/", "type": "t"}, {"channel": "/a/h2/cpu/x/", "type": "t"}]);
    assert_eq!(api.call(Method::POST, "/v1/events", Some(&token), Some(&ok)).status(), 200);
    // A subscription wider than the grant is refused, a narrower one served.
    let lease = |channel: &str| {
        let body = json!({"channel": channel, "ttl_s": 60});
        api.call(Method::POST, "/v1/leases", Some(&token), Some(&body)).status().as_u16()
    };
    assert_eq!(lease("/"), 403);
    assert_eq!(lease("/*/"), 403);
    assert_eq!(lease("/a/*/"), 201);
    // The lease list shows only the leases a principal may hold.
    api.admin(Method::POST, "/v1/leases", Some(&json!({"channel": "/b/", "ttl_s": 60, "id": "not-yours"})));
    let mine = api.call(Method::GET, "/v1/leases", Some(&token), None).json::<Value>().unwrap();
    assert!(mine["leases"].as_array().unwrap().iter().all(|l| l["id"] != "not-yours"), "{mine}");
    let res = api.call(Method::GET, "/v1/leases/not-yours", Some(&token), None);
    assert_eq!(res.status(), 404);
    assert!(!res.text().unwrap().contains("/b/"), "nothing about the lease's pattern");
}

#[test]
fn principals_tokens_and_grants_are_managed_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    let token = api.principal("ops", &[("publish", "/x/")]);
    // whoami tells a caller who it is.
    let me = api.call(Method::GET, "/v1/auth/whoami", Some(&token), None).json::<Value>().unwrap();
    assert_eq!((me["principal"].as_str(), me["auth"].as_bool()), (Some("ops"), Some(true)), "{me}");
    // The token is shown once: the list has ids, never secrets or hashes.
    let list = api.admin(Method::GET, "/v1/auth/principals", None);
    let text = list.to_string();
    assert!(!text.contains(&token[24..]) && !text.contains("hash"), "{text}");
    // Grants are added and removed; bad ones are refused with the reason.
    let grant = |body: Value| api.call(Method::POST, "/v1/auth/principals/ops/grants", Some(ADMIN), Some(&body));
    assert_eq!(grant(json!({"action": "subscribe", "resource": "/x/"})).status(), 200);
    for (bad, needle) in [
        (json!({"action": "write", "resource": "/x/"}), "unknown action"),
        (json!({"action": "publish", "resource": "x"}), "channel pattern"),
        (json!({"action": "recording", "resource": "/x/"}), "whole site"),
    ] {
        let res = grant(bad.clone());
        assert_eq!(res.status(), 400, "{bad}");
        assert!(res.text().unwrap().contains(needle), "{bad}");
    }
    let lease = json!({"channel": "/x/", "ttl_s": 60});
    assert_eq!(api.call(Method::POST, "/v1/leases", Some(&token), Some(&lease)).status(), 201);
    let res =
        api.call(Method::DELETE, "/v1/auth/principals/ops/grants?action=subscribe&resource=/x/", Some(ADMIN), None);
    assert_eq!(res.status(), 204);
    assert_eq!(api.call(Method::POST, "/v1/leases", Some(&token), Some(&lease)).status(), 403);
    // Only an admin manages principals; names are checked; admin is taken.
    let body = json!({"name": "eve", "grants": [{"action": "admin", "resource": "*"}]});
    assert_eq!(api.call(Method::POST, "/v1/auth/principals", Some(&token), Some(&body)).status(), 403);
    for name in ["admin", "a/b", ""] {
        let res = api.call(Method::POST, "/v1/auth/principals", Some(ADMIN), Some(&json!({"name": name})));
        assert_eq!(res.status(), 400, "{name:?}");
    }
    let res = api.call(Method::POST, "/v1/auth/principals", Some(ADMIN), Some(&json!({"name": "ops"})));
    assert_eq!(res.status(), 409);

    // Everything survives a restart, the tokens' hashes included.
    assert!(server.stop().success());
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    let event = json!({"channel": "/x/y/", "type": "t"});
    assert_eq!(api.call(Method::POST, "/v1/events", Some(&token), Some(&event)).status(), 200);
    // Removing the principal ends its tokens at once.
    assert_eq!(api.call(Method::DELETE, "/v1/auth/principals/ops", Some(ADMIN), None).status(), 204);
    assert_eq!(api.call(Method::POST, "/v1/events", Some(&token), Some(&event)).status(), 401);
    // Its history is in the log: the puts and the delete.
    let v = api.admin(Method::GET, "/v1/health", None);
    assert!(v["last_seq"].as_u64().unwrap() >= 5, "{v}");
}

#[test]
fn serve_refuses_a_public_address_without_auth_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pepper"))
            .args(["serve", "--site", "t", "--data"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env_remove("PEPPER_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    // Refused before anything binds: nothing listens, nothing is reached.
    let out = run(&["--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without auth") && err.contains("--insecure"), "{err}");
    // A short admin token is refused too, and the message never shows it.
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort").unwrap();
    let out = run(&["--admin-token-file", short.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32") && !err.contains("tooshort"), "{err}");
    // The peer secret is as hard to guess as the admin token, and differs
    // from it (a peer would be an admin).
    let admin = dir.path().join("admin");
    std::fs::write(&admin, ADMIN).unwrap();
    let resolve = |flags: &[&str]| {
        let args = pepper::config::parse_serve_flags(flags.iter().copied().chain(["--site", "t"])).unwrap();
        pepper::config::resolve(args).map(|_| ()).map_err(|e| format!("{e:#}"))
    };
    let weak = common::secret_file(&dir.path().join("weak"), "short");
    let err = resolve(&["--peer-secret-file", &weak]).expect_err("a short peer secret");
    assert!(err.contains("at least 32") && !err.contains("short"), "{err}");
    let same = common::secret_file(&dir.path().join("same"), ADMIN);
    let err = resolve(&["--peer-secret-file", &same, "--admin-token-file", admin.to_str().unwrap()]).expect_err("same");
    assert!(err.contains("must differ"), "{err}");
    // --insecure is accepted by the parser (checked without binding beyond
    // loopback here: the flag resolves, and loopback needs no auth).
    let args = pepper::config::parse_serve_flags(["--listen", "0.0.0.0:0", "--insecure", "--site", "t"]).unwrap();
    let resolved = pepper::config::resolve(args).unwrap();
    assert!(resolved.insecure && resolved.api.admin_token.is_none());
}

/// Events carry who published them, stamped by the site; a client cannot
/// set it. `pldbget` answers as the request's publisher: what it may read,
/// on a channel it may publish on.
#[test]
fn events_are_stamped_with_their_principal_and_pldbget_answers_as_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    let attr = json!({"channel": "/lab/h1/", "type": "attribute", "payload": {"field": "load", "value": "0.5"}});
    api.admin(Method::POST, "/v1/events", Some(&attr));
    let reader = api.principal(
        "reader",
        &[("publish", "/pldb/"), ("publish", "/replies/"), ("tuples.read", "/lab/"), ("subscribe", "/replies/")],
    );
    let nosy = api.principal("nosy", &[("publish", "/pldb/"), ("publish", "/replies/"), ("subscribe", "/replies/")]);
    // A claimed principal in the body is not taken.
    let forged = json!({"channel": "/replies/x/", "type": "t", "principal": "admin"});
    let res = api.call(Method::POST, "/v1/events", Some(&nosy), Some(&forged));
    assert!(res.status().is_success() || res.status() == 400, "{}", res.status());
    let ask = |token: &str, reply: &str| {
        let body = json!({"channel": "/pldb/", "type": "pldbget", "payload": {"channel": "/lab/", "reply": reply}});
        assert_eq!(api.call(Method::POST, "/v1/events", Some(token), Some(&body)).status(), 200);
    };
    ask(&nosy, "/replies/nosy/");
    ask(&reader, "/replies/reader/");
    let replies = |channel: &str| -> Vec<Value> {
        let v = api.admin(Method::GET, &format!("/v1/events?channel={channel}"), None);
        v["events"].as_array().unwrap().clone()
    };
    // Requests are answered in log order: once the reader's reply is there,
    // the nosy request was decided too.
    assert!(eventually(Duration::from_secs(10), || !replies("/replies/reader/").is_empty()), "no reply");
    let reply = &replies("/replies/reader/")[0];
    assert_eq!(reply["payload"]["attribute"][0]["value"], "0.5", "{reply}");
    assert!(replies("/replies/nosy/").is_empty(), "nosy may not read /lab/ and got an answer");
    // The stamps, as a subscriber sees them.
    let pldb = api.admin(Method::GET, "/v1/events?channel=/pldb/", None);
    let stamps: Vec<&str> =
        pldb["events"].as_array().unwrap().iter().map(|e| e["principal"].as_str().unwrap()).collect();
    assert_eq!(stamps, ["nosy", "reader"]);
    let admin_attr = api.admin(Method::GET, "/v1/events?channel=/lab/", None);
    assert_eq!(admin_attr["events"][0]["principal"], "admin");
    for e in replies("/replies/x/") {
        assert_eq!(e["principal"], "nosy", "{e}");
    }
}

/// The CLI end to end: `pepper auth` manages principals with the admin
/// token from `PEPPER_TOKEN`, and every command takes the token the same way.
#[test]
fn the_cli_manages_principals_and_sends_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let pepper = |token: Option<&str>, args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pepper"));
        command.args(args).env("PEPPER_SERVER", &server.url).env_remove("PEPPER_TOKEN");
        if let Some(t) = token {
            command.env("PEPPER_TOKEN", t);
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = pepper(Some(ADMIN), &["auth", "principal", "add", "ops", "--grant", "publish=/x/"]);
    assert!(ok, "{text}");
    let (ok, text) = pepper(Some(ADMIN), &["auth", "principal", "add", "bad", "--grant", "publish"]);
    assert!(!ok && text.contains("ACTION=RESOURCE"), "{text}");
    let (ok, text) = pepper(Some(ADMIN), &["auth", "token", "create", "ops", "--note", "cli test"]);
    assert!(ok, "{text}");
    let created: Value = serde_json::from_str(text.trim()).unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let (ok, text) = pepper(Some(&token), &["auth", "whoami"]);
    assert!(ok && text.contains("\"ops\""), "{text}");
    let (ok, text) = pepper(Some(&token), &["send", "/x/a/", "--type", "t"]);
    assert!(ok, "{text}");
    let (ok, text) = pepper(None, &["send", "/x/a/", "--type", "t"]);
    assert!(!ok && text.contains("401"), "{text}");
    let (ok, text) = pepper(Some(&token), &["send", "/y/", "--type", "t"]);
    assert!(!ok && text.contains("403"), "{text}");
    let (ok, text) = pepper(Some(ADMIN), &["auth", "grant", "ops", "subscribe", "/x/"]);
    assert!(ok, "{text}");
    let (ok, text) = pepper(Some(&token), &["leases"]);
    assert!(ok && text.contains("0 lease(s)"), "{text}");
    let (ok, text) = pepper(Some(ADMIN), &["auth", "revoke", "ops", "subscribe", "/x/"]);
    assert!(ok, "{text}");
    let id = &token[7..23];
    let (ok, text) = pepper(Some(ADMIN), &["auth", "token", "revoke", "ops", id]);
    assert!(ok, "{text}");
    let (ok, text) = pepper(Some(&token), &["auth", "whoami"]);
    assert!(!ok && text.contains("revoked"), "{text}");
    let (ok, text) = pepper(Some(ADMIN), &["auth", "principal", "list"]);
    assert!(ok && text.contains("revoked_at") && !text.contains(&token[24..]), "{text}");
    let (ok, text) = pepper(Some(ADMIN), &["auth", "principal", "remove", "ops"]);
    assert!(ok, "{text}");
}

/// Federation with auth on at both sites: events cross with their origin's
/// stamp, and a federated query is checked once at the asking site, whose
/// legs the other site takes as a peer's (reads only).
#[test]
fn federation_works_with_auth_on_and_legs_only_read() {
    let dir = tempfile::tempdir().unwrap();
    let secret = common::secret_file(dir.path(), "peer-secret-for-tests-0123456789abcd");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).unwrap();
    let token_file = token_file.to_str().unwrap().to_string();
    let flags = |name: &'static str, peer: Option<String>| {
        let mut f: Vec<String> = ["--site", name, "--peer-secret-file", &secret, "--admin-token-file", &token_file]
            .into_iter()
            .map(String::from)
            .collect();
        f.extend(["--heartbeat-ms".into(), "100".into()]);
        if let Some(p) = peer {
            f.extend(["--peer".into(), p]);
        }
        f
    };
    let embedded = |name: &'static str, peer: Option<String>| {
        let f = flags(name, peer);
        Server::embedded(&dir.path().join(name), &f.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let a = embedded("a", None);
    let b = embedded("b", Some(format!("a={}", a.url)));
    let on_a = Api { http: Client::new(), server: &a };
    let on_b = Api { http: Client::new(), server: &b };
    let up = |api: &Api, other: &str| {
        let v = api.admin(Method::GET, "/v1/sites", None);
        v["peers"].as_array().unwrap().iter().any(|p| p["name"] == other && p["state"] == "up")
    };
    assert!(eventually(Duration::from_secs(15), || up(&on_a, "b") && up(&on_b, "a")), "the sites never met");
    // An event published on b by a principal of b reaches a's subscriber
    // with b's stamp.
    let lease = on_a.admin(Method::POST, "/v1/leases", Some(&json!({"channel": "/f/", "ttl_s": 300})));
    let lease = lease["id"].as_str().unwrap().to_string();
    let writer = on_b.principal("writer", &[("publish", "/f/")]);
    let event = json!({"channel": "/f/x/", "type": "attribute", "payload": {"field": "v", "value": "1"}});
    assert_eq!(on_b.call(Method::POST, "/v1/events", Some(&writer), Some(&event)).status(), 200);
    let got = |api: &Api| {
        let v = api.admin(Method::GET, &format!("/v1/leases/{lease}/events?wait_ms=0&max=10&from_seq=1"), None);
        v["events"].as_array().unwrap().clone()
    };
    assert!(eventually(Duration::from_secs(15), || !got(&on_a).is_empty()), "the event never crossed");
    let e = &got(&on_a)[0];
    assert_eq!((e["site"].as_str(), e["principal"].as_str()), (Some("b"), Some("writer")), "{e}");
    // A federated query: allowed for a reader of a, refused for one without.
    let reader = on_a.principal("reader", &[("tuples.read", "/f/")]);
    let query = "/v1/tuples?channel=/f/&recursive=true&scope=all";
    let v: Value = on_a.call(Method::GET, query, Some(&reader), None).json().unwrap();
    assert_eq!(v["manifest"]["answered"], 2, "{v}");
    let outsider = on_a.principal("outsider", &[("tuples.read", "/g/")]);
    assert_eq!(on_a.call(Method::GET, query, Some(&outsider), None).status(), 403);
    // The peer secret on the public API reads, and nothing else.
    let leg = "peer-secret-for-tests-0123456789abcd";
    assert_eq!(on_b.call(Method::GET, "/v1/tuples?channel=/f/x/", Some(leg), None).status(), 200);
    assert_eq!(on_b.call(Method::POST, "/v1/events", Some(leg), Some(&event)).status(), 403);
    assert_eq!(on_b.call(Method::GET, "/v1/auth/principals", Some(leg), None).status(), 403);
}

/// Changes to principals, tokens, grants and the recording policy are
/// audit events on `/pepper/audit/`, logged with the change; refusals are
/// counted in `/metrics` by reason. Neither ever holds a token's secret.
#[test]
fn changes_are_audited_and_refusals_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    let token = api.principal("ops", &[("publish", "/x/")]);
    api.admin(Method::POST, "/v1/auth/principals/ops/grants", Some(&json!({"action": "subscribe", "resource": "/x/"})));
    let id = &token[7..23];
    api.admin(Method::DELETE, &format!("/v1/auth/principals/ops/tokens/{id}"), None);
    api.admin(Method::PUT, "/v1/recording/policies", Some(&json!({"pattern": "/r/", "replicas": 1})));
    let res = api.call(Method::DELETE, "/v1/recording/policies?pattern=/r/", Some(ADMIN), None);
    assert_eq!(res.status(), 204);
    api.admin(Method::DELETE, "/v1/auth/principals/ops", None);
    let audit = api.admin(Method::GET, "/v1/events?channel=/pepper/audit/", None);
    let seen = common::audit_entries(&audit);
    let want: Vec<(String, String, String)> = [
        ("principal.create", "ops"),
        ("token.create", "ops"),
        ("grant.add", "ops"),
        ("token.revoke", "ops"),
        ("policy.put", "/r/"),
        ("policy.remove", "/r/"),
        ("principal.remove", "ops"),
    ]
    .into_iter()
    .map(|(a, t)| (a.to_string(), "admin".to_string(), t.to_string()))
    .collect();
    assert_eq!(seen, want);
    assert!(!audit.to_string().contains(&token[24..]), "a secret in the audit log");
    // Clients cannot write audit events.
    let forged = json!({"channel": "/pepper/audit/", "type": "pepper.audit"});
    assert_eq!(api.call(Method::POST, "/v1/events", Some(ADMIN), Some(&forged)).status(), 403);

    // Refusals by reason.
    let reader = api.principal("reader", &[("tuples.read", "/x/")]);
    assert_eq!(api.call(Method::GET, "/v1/sites", None, None).status(), 401);
    assert_eq!(api.call(Method::GET, "/v1/sites", Some(&token), None).status(), 401);
    assert_eq!(api.call(Method::GET, "/v1/sites", Some(&reader), None).status(), 403);
    let metrics = api.call(Method::GET, "/metrics", Some(ADMIN), None).text().unwrap();
    for reason in ["no_token", "unknown_token", "forbidden"] {
        let line = format!("pepper_auth_refusals_total{{reason=\"{reason}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {reason} count in {metrics}"));
        assert!(count >= 1, "{reason}: {count}");
    }
    assert!(!metrics.contains(&token[24..]) && !metrics.contains(ADMIN));
}

/// A principal publishing faster than its quota gets 429 with
/// `Retry-After`, and the refused batch is not logged; the admin is not
/// limited.
#[test]
fn a_principal_over_its_publish_rate_gets_429_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    let token = api.principal("busy", &[("publish", "/q/")]);
    let batch: Vec<Value> = (0..1024).map(|i| json!({"channel": "/q/", "type": "t", "payload": i})).collect();
    let batch = json!(batch);
    // Batches of 1,024 events, far faster than 2,000 events/s: the bucket
    // (4,000) runs dry within a few requests.
    let mut refused = None;
    for _ in 0..20 {
        let before = api.state();
        let res = api.call(Method::POST, "/v1/events", Some(&token), Some(&batch));
        if res.status() == 429 {
            let retry = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body: Value = res.json().unwrap();
            assert_eq!(api.state(), before, "a refused batch is not logged");
            refused = Some((retry, body));
            break;
        }
        assert_eq!(res.status(), 200);
    }
    let (retry, body) = refused.expect("never limited");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)), "Retry-After");
    assert!(body["error"]["message"].as_str().unwrap().contains("busy"), "{body}");
    // The admin is the operator: no quota.
    for _ in 0..6 {
        assert_eq!(api.call(Method::POST, "/v1/events", Some(ADMIN), Some(&batch)).status(), 200);
    }
}

/// A stream outlives its request, not its token: once the token is revoked
/// (or the grant taken back), the next event ends the stream with
/// `pepper.unauthorized` instead of being delivered.
#[test]
fn an_open_stream_ends_when_its_token_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    for (revoke, name) in [("token", "watcher"), ("grant", "granted")] {
        let token = api.principal(name, &[("subscribe", "/s/")]);
        let auth = format!("Bearer {token}");
        let mut stream = common::SseReader::open(&server.at("/v1/watch?channel=/s/"), &[("authorization", &auth)]);
        let event = json!({"channel": "/s/x/", "type": "t", "payload": 1});
        api.admin(Method::POST, "/v1/events", Some(&event));
        assert_eq!(stream.next().unwrap().event, "t");
        match revoke {
            "token" => {
                let id = &token[7..23];
                api.admin(Method::DELETE, &format!("/v1/auth/principals/{name}/tokens/{id}"), None);
            }
            _ => {
                let path = format!("/v1/auth/principals/{name}/grants?action=subscribe&resource=/s/");
                assert_eq!(api.call(Method::DELETE, &path, Some(ADMIN), None).status(), 204);
            }
        }
        let secret = json!({"channel": "/s/x/", "type": "t", "payload": "after"});
        api.admin(Method::POST, "/v1/events", Some(&secret));
        let next = stream.next().expect("an explicit end");
        assert_eq!(next.event, "pepper.unauthorized", "{revoke}: {next:?}");
        assert!(stream.next().is_none(), "{revoke}: the stream ends");
    }
}

/// A lease belongs to the principal it was granted to: another principal
/// with the same grant cannot read, renew, release or stream it, and
/// anycast groups are per principal.
#[test]
fn leases_and_groups_belong_to_their_principal() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    let alice = api.principal("alice", &[("subscribe", "/w/"), ("publish", "/w/")]);
    let mallory = api.principal("mallory", &[("subscribe", "/w/")]);
    let grant = |token: &str, id: &str| {
        let body = json!({"channel": "/w/", "ttl_s": 60, "id": id, "group": "workers"});
        let res = api.call(Method::POST, "/v1/leases", Some(token), Some(&body));
        assert_eq!(res.status(), 201);
        res.json::<Value>().unwrap()
    };
    let a = grant(&alice, "alice-1");
    assert_eq!(a["group"], "alice:workers", "{a}");
    let m = grant(&mallory, "mallory-1");
    assert_eq!(m["group"], "mallory:workers", "{m}");
    for (method, path, body) in [
        (Method::GET, "/v1/leases/alice-1", None),
        (Method::POST, "/v1/leases/alice-1/renew", Some(json!({}))),
        (Method::GET, "/v1/leases/alice-1/events?wait_ms=0&max=1", None),
        (Method::DELETE, "/v1/leases/alice-1", None),
    ] {
        let res = api.call(method.clone(), path, Some(&mallory), body.as_ref());
        assert_eq!(res.status(), 404, "{method} {path}");
        assert!(api.call(method.clone(), path, Some(&alice), body.as_ref()).status().is_success(), "{method} {path}");
    }
    let listed = api.call(Method::GET, "/v1/leases", Some(&mallory), None).json::<Value>().unwrap();
    let ids: Vec<&str> = listed["leases"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["mallory-1"]);
    // Each group gets its own copy of a distribution-one event: mallory's
    // lease does not take alice's share.
    let b = grant(&alice, "alice-2");
    assert_eq!(b["group"], "alice:workers");
    let one = json!({"channel": "/w/x/", "type": "job", "distribution": "one", "payload": 1});
    assert_eq!(api.call(Method::POST, "/v1/events", Some(&alice), Some(&one)).status(), 200);
    let got = |token: &str, id: &str| {
        let v: Value = api
            .call(Method::GET, &format!("/v1/leases/{id}/events?wait_ms=0&max=10&from_seq=1"), Some(token), None)
            .json()
            .unwrap();
        v["events"].as_array().unwrap().iter().filter(|e| e["type"] == "job").count()
    };
    assert_eq!(got(&alice, "alice-2"), 1, "alice's group gets the job");
    assert_eq!(got(&mallory, "mallory-1"), 1, "mallory's own group gets its own copy, not alice's");
}

/// A principal's live leases are in at most 8 anycast groups (the site
/// holds 64): a ninth is 429 with Retry-After and grants nothing, while
/// joining a group it is in, a lease without a group, and the admin pass.
#[test]
fn a_principal_in_too_many_anycast_groups_gets_429_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = site(dir.path());
    let api = Api { http: Client::new(), server: &server };
    let token = api.principal("grouper", &[("subscribe", "/g/")]);
    let grant = |token: &str, id: &str, group: Option<&str>| {
        let body = json!({"channel": "/g/", "ttl_s": 60, "id": id, "group": group});
        api.call(Method::POST, "/v1/leases", Some(token), Some(&body))
    };
    let max = pepper_adapters::quota::GROUPS_PER_PRINCIPAL_MAX;
    for i in 0..max {
        assert_eq!(grant(&token, &format!("l{i}"), Some(&format!("g{i}"))).status(), 201);
    }
    let before = api.state();
    let res = grant(&token, "over", Some("one-too-many"));
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some(), "Retry-After");
    let body: Value = res.json().unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(api.state(), before, "nothing granted");
    assert_eq!(grant(&token, "again", Some("g0")).status(), 201, "a group it is in");
    assert_eq!(grant(&token, "plain", None).status(), 201, "no group");
    assert_eq!(grant(ADMIN, "admin", Some("admin-group")).status(), 201, "the admin has no quota");
    // Releasing a lease frees its group's place.
    assert!(api.call(Method::DELETE, "/v1/leases/l0", Some(&token), None).status().is_success());
    assert!(api.call(Method::DELETE, "/v1/leases/again", Some(&token), None).status().is_success());
    assert_eq!(grant(&token, "now", Some("new-group")).status(), 201);
}

/// The publish quota is the site's to set (`--publish-quota-per-s`): at
/// 10 events/s a principal still sends one full batch (bursts never hold
/// less), and the next event is 429 naming the configured rate.
#[test]
fn the_publish_quota_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    let file = file.to_str().unwrap().to_string();
    let server =
        Server::embedded(&dir.path().join("data"), &["--admin-token-file", &file, "--publish-quota-per-s", "10"]);
    let api = Api { http: Client::new(), server: &server };
    let token = api.principal("slow", &[("publish", "/q/")]);
    let batch: Vec<Value> = (0..1024).map(|i| json!({"channel": "/q/", "type": "t", "payload": i})).collect();
    assert_eq!(api.call(Method::POST, "/v1/events", Some(&token), Some(&json!(batch))).status(), 200);
    let one = json!({"channel": "/q/", "type": "t", "payload": "more"});
    let res = api.call(Method::POST, "/v1/events", Some(&token), Some(&one));
    assert_eq!(res.status(), 429);
    let body: Value = res.json().unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("10 events/s"), "{body}");
}
