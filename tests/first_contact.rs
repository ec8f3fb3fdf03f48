//! What a new user meets first: the install step's detection of what the
//! build needs, and the README's commands piped into `head`.
//!
//! `scripts/deps` is run against fake roots (`PEPPER_DEPS_ROOT`) in dry-run
//! mode, so what it would install is checked without touching the machine.
//! The CLI tests run the real CLI against a site in this process and close
//! its stdout under it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use reqwest::blocking::Client;
use serde_json::json;

/// What `scripts/deps` would install on a machine whose files are `root`.
fn would_install(root: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deps");
    let out = Command::new("bash")
        .arg(script)
        .env("PEPPER_DEPS_ROOT", root)
        .env("PEPPER_DEPS_DRY_RUN", "1")
        .env_remove("LIBCLANG_PATH")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn touch(root: &Path, path: &str) {
    let file = root.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "").unwrap();
}

/// A fake root with C and C++ compilers and make, and no libclang.
fn toolchain_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for tool in ["usr/bin/cc", "usr/bin/c++", "usr/bin/make"] {
        touch(root.path(), tool);
        let file = root.path().join(tool);
        let mut perms = std::fs::metadata(&file).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&file, perms).unwrap();
    }
    root
}

/// Debian 12's `libclang-cpp14` puts `libclang-cpp.so.14` in the multiarch
/// folder; the old pattern `libclang-*.so*` took it for libclang, installed
/// nothing, and the build stopped at "Unable to find libclang".
#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let root = toolchain_root();
    touch(root.path(), "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    touch(root.path(), "usr/lib/llvm-14/lib/libclang-cpp.so.14");
    assert_eq!(would_install(root.path()), "install: libclang-dev");
}

#[test]
fn each_name_bindgen_loads_counts_as_libclang() {
    for path in [
        "usr/lib/llvm-14/lib/libclang.so.1",
        "usr/lib/llvm-16/lib/libclang.so",
        "usr/lib/x86_64-linux-gnu/libclang-14.so.1",
        "usr/lib/aarch64-linux-gnu/libclang-15.so",
        "usr/lib64/libclang.so.13",
    ] {
        let root = toolchain_root();
        touch(root.path(), "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
        touch(root.path(), path);
        assert_eq!(would_install(root.path()), "install: nothing", "{path}");
    }
}

#[test]
fn an_empty_machine_needs_a_compiler_make_and_libclang() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(would_install(root.path()), "install: gcc g++ make libclang-dev");
}

/// ring (rustls, site keys) compiles C: a machine with a C++ compiler but
/// no `cc` gets gcc.
#[test]
fn a_machine_without_a_c_compiler_gets_gcc() {
    let root = toolchain_root();
    std::fs::remove_file(root.path().join("usr/bin/cc")).unwrap();
    touch(root.path(), "usr/lib/llvm-14/lib/libclang.so.1");
    assert_eq!(would_install(root.path()), "install: gcc");
}

/// Runs `pepper ARGS` with its stdout already closed by its reader, as
/// `| head` does once it has its lines, and returns its status and stderr.
fn with_closed_stdout(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (child.wait().unwrap(), stderr)
}

/// `pepper tuples "/$(hostname)/node/" --recursive | head` ended with
/// "failed printing to stdout: Broken pipe" and a backtrace.
#[test]
fn cli_commands_end_quietly_when_their_output_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let http = Client::new();
    for i in 0..50 {
        let event = json!({"channel": "/h.example/node/h1/", "type": "attribute",
                           "payload": {"field": format!("f{i}"), "value": i}});
        assert_eq!(http.post(server.at("/v1/events")).json(&event).send().unwrap().status(), 200);
    }
    let data = dir.path().to_str().unwrap().to_string();
    for args in [
        vec!["tuples", "/h.example/node/", "--recursive", "--server", &server.url],
        vec!["tuples", "/h.example/node/h1/", "--field", "f1", "--history", "--server", &server.url],
        vec!["leases", "--server", &server.url],
        vec!["recording", "--server", &server.url],
        vec!["send", "/h.example/x/", "--type", "t", "--server", &server.url],
        vec!["model", "--server", &server.url, "classes"],
    ] {
        let (status, stderr) = with_closed_stdout(&args);
        assert!(status.success(), "{args:?}: {status} {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
    drop(server);
    let (status, stderr) = with_closed_stdout(&["check", "--data", &data]);
    assert!(!stderr.contains("panicked"), "check: {status} {stderr}");
}

/// `pepper watch` prints forever: once its reader is gone it must end, not
/// go on reading the stream for nobody.
#[test]
fn watch_ends_when_its_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::embedded(dir.path(), &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pepper"))
        .args(["watch", "/w.example/", "--from-seq", "1", "--server", &server.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = Client::new();
    let publish = || {
        let event = json!({"channel": "/w.example/a/", "type": "t"});
        assert_eq!(http.post(server.at("/v1/events")).json(&event).send().unwrap().status(), 200);
    };
    publish();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("/w.example/a/"), "{first}");
    // The reader is gone; the next events must end the command.
    let ended = common::eventually(Duration::from_secs(20), || {
        publish();
        child.try_wait().unwrap().is_some()
    });
    assert!(ended, "pepper watch kept running with nobody reading");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status} {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
