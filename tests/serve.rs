//! `pepper serve` and `pepper check` as a user runs them: the real binary,
//! on loopback and an ephemeral port, with a temporary data folder.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use common::Server;

#[test]
fn serve_answers_health_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pepper-data");
    let server = Server::start(&data, &[]);
    let http = reqwest::blocking::Client::new();

    let res = http.get(format!("{}/v1/health", server.url)).send().unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["site"], "test-site");
    assert_eq!(body["durability"], "sync");
    assert_eq!(body["last_seq"], 0);

    let res = http.get(format!("{}/v1/nope", server.url)).send().unwrap();
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().unwrap();
    assert_eq!(body["error"]["code"], "no_route");

    // A second site on the same folder is refused with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));

    assert!(server.stop().success(), "SIGTERM is a clean shutdown");
    let out = Command::new(env!("CARGO_BIN_EXE_pepper")).args(["check", "--data"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: no problems found"));
}

#[test]
fn check_refuses_a_folder_without_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pepper")).args(["check", "--data"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no pepper store"));
}

#[test]
fn bad_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["serve", "--durability", "sometimes", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: sync, buffered"));
    let out = Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["serve", "--retention-interval-s", "0", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--retention-interval-s"));
    // An agent whose values would expire between two rounds is refused
    // before it publishes anything (the server it names is never reached).
    let out = Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["agent", "--interval-s", "600", "--expire-s", "300", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be at least twice --interval-s"));
}

#[test]
fn a_config_file_sets_what_flags_leave_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pepper.toml");
    std::fs::write(
        &config,
        "site = \"from-file\"\nlease_ttl_max_s = 7\n[retention]\nhistory_max_count = 3\ninterval_s = 1\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    // The site's name, and the TTL it grants when asked for 600 s.
    let site_and_granted_ttl = |server: &Server| {
        let http = reqwest::blocking::Client::new();
        let health: serde_json::Value = http.get(server.at("/v1/health")).send().unwrap().json().unwrap();
        let lease: serde_json::Value = http
            .post(server.at("/v1/leases"))
            .json(&serde_json::json!({"channel": "/a.org/", "ttl_s": 600}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        (health["site"].as_str().unwrap().to_string(), lease["ttl_s"].as_u64().unwrap())
    };
    // The file's site name and TTL cap apply...
    let server = Server::start(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(site_and_granted_ttl(&server), ("from-file".to_string(), 7));
    drop(server);
    // ...and a flag beats the file.
    let config2 = dir.path().join("pepper2.toml");
    std::fs::write(&config2, "site = \"from-file\"\nlease_ttl_max_s = 9\n").unwrap();
    let args = ["--config", config2.to_str().unwrap(), "--lease-ttl-max-s", "5", "--site", "from-flag"];
    let server = Server::start(&data, &args);
    assert_eq!(site_and_granted_ttl(&server), ("from-flag".to_string(), 5));
    drop(server);
    // A misspelt key is refused, naming it, and so is a value out of range.
    let refused = |contents: &str| -> String {
        std::fs::write(&config, contents).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pepper"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap(), "--data"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{contents}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("lease_ttl_max = 7\n");
    assert!(err.contains("invalid config file") && err.contains("lease_ttl_max"), "{err}");
    let err = refused("[[retention.history]]\nprefix = \"nope\"\nmax_count = 3\n");
    assert!(err.contains("retention.history prefix"), "{err}");
    let err = refused("stream_buffer_events = 0\n");
    assert!(err.contains("stream_buffer_events must be 1 to 1048576"), "{err}");
}
