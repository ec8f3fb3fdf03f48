//! The real `pepper serve` for benchmarks: loopback, an ephemeral port, a
//! temporary data folder, killed when dropped.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `pepper serve` (durability `sync`).
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server and waits until it listens.
    pub fn start() -> Server {
        Server::start_with(&["--site", "bench"])
    }

    /// Starts the server with extra flags (`--site` among them).
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        // `PEPPER_BENCH_BIN` runs the same bench against another build (an
        // earlier commit's, say), so two builds are compared in one session.
        let bin = std::env::var_os("PEPPER_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pepper").into());
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--data")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").unwrap().to_string();
        Server { child, url, _dir: dir }
    }
}

impl Server {
    /// Sends `signal` (`STOP`, `CONT`...) to the server by its pid.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
