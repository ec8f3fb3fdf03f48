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
}
