//! Crash loop: a child process writes and prints what was acknowledged; the
//! parent kills it with SIGKILL at a random moment, reopens the store and
//! checks that every acknowledged record is there and intact, that no batch
//! is torn, that numbering continues, and that `pepper check` passes.
//!
//! SIGKILL ends the process, not the machine: the operating system still
//! holds whatever the WAL write handed it, so this test proves atomicity,
//! recovery and numbering, but cannot tell `sync` from `buffered` (that would
//! take a power cut; `sync`'s fsync is covered by setting it explicitly and by
//! the poisoning test of the write path).
//!
//! The child is this same test binary, re-run with a filter that selects the
//! ignored `crash_child` test and an environment variable naming the folder.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pepper_storage::{Body, DocPut, Options, Party, Store, TupleSet};
use rand::Rng;

const DIR_ENV: &str = "PEPPER_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "PEPPER_CRASH_CHILD_ROUND";
const CHILD_WRITERS: usize = 4;

fn pair(round: u32, w: usize, i: u64) -> Vec<Body> {
    vec![
        Body::TupleSet(TupleSet {
            channel: format!("/crash/w{w}/"),
            field: format!("f{}", i % 8),
            value: format!("r{round}-w{w}-i{i}"),
            expires_at_us: None,
            source: Party::default(),
        }),
        Body::DocPut(DocPut { key: format!("r{round}/w{w}/i{i}"), value: i.to_le_bytes().to_vec() }),
    ]
}

#[test]
#[ignore = "the child process of the crash loop; the crash_loop tests run it"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let round: u32 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let store = Store::open(dir, Options::new("crash")).unwrap();
    let threads: Vec<_> = (0..CHILD_WRITERS)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let a = store.append_blocking(pair(round, w, i)).unwrap();
                    // One println is one locked write of a whole line.
                    println!("ack {} {} {w} {i}", a.first, a.last);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

struct Ack {
    round: u32,
    w: usize,
    i: u64,
}

fn run_child_and_kill(dir: &std::path::Path, round: u32) -> Vec<(u64, u64, Ack)> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        // A line cut by the kill has no trailing newline: `lines` still yields
        // it, so only lines that parse completely count as acknowledged.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let ["ack", first, last, w, i] = parts[..] {
                if let (Ok(first), Ok(last), Ok(w), Ok(i)) = (first.parse(), last.parse(), w.parse(), i.parse()) {
                    if acks.is_empty() {
                        let _ = tx.send(());
                    }
                    acks.push((first, last, Ack { round, w, i }));
                }
            }
        }
        acks
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the child never acknowledged a write");
    let delay = rand::thread_rng().gen_range(0..250);
    std::thread::sleep(Duration::from_millis(delay));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap()
}

fn run_rounds(rounds: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, Ack> = BTreeMap::new();
    let mut last_seen = 0u64;
    for round in 0..rounds {
        let acks = run_child_and_kill(dir.path(), round);
        assert!(!acks.is_empty());
        for (first, last, ack) in acks {
            assert_eq!(last, first + 1, "each child append is a pair");
            assert!(acked.insert(first, ack).is_none(), "seq {first} acknowledged twice across rounds");
        }
        let store = Store::open(dir.path(), Options::new("crash")).unwrap();
        let last_seq = store.last_seq();
        let max_acked = acked.keys().next_back().map_or(0, |f| f + 1);
        assert!(last_seq >= max_acked, "round {round}: last seq {last_seq} is below acknowledged {max_acked}");
        assert!(last_seq >= last_seen, "round {round}: numbering went backwards");
        let records = store.read_blocking(|v| v.records(1, u64::MAX, usize::MAX)).unwrap();
        assert_eq!(records.len() as u64, last_seq, "round {round}: every record from 1 is present and intact");
        // Every acknowledged pair is there with the content that was written.
        for (&first, ack) in &acked {
            let want = pair(ack.round, ack.w, ack.i);
            assert_eq!(records[(first - 1) as usize].body, want[0], "round {round}: seq {first}");
            assert_eq!(records[first as usize].body, want[1], "round {round}: seq {}", first + 1);
        }
        // No torn batch: every tuple set from a child is followed by its doc.
        let mut s = 0;
        while s < records.len() {
            match &records[s].body {
                Body::TupleSet(t) if t.channel.starts_with("/crash/") => {
                    let Body::DocPut(d) = &records[s + 1].body else {
                        panic!("round {round}: seq {} is a torn pair", s + 1)
                    };
                    assert!(
                        d.key.ends_with(t.value.rsplit('-').next().unwrap()),
                        "round {round}: seq {} mismatched",
                        s + 1
                    );
                    s += 2;
                }
                _ => s += 1,
            }
        }
        // Numbering continues after the last durable record.
        let next = store.append_blocking(vec![Body::TupleSet(TupleSet {
            channel: "/parent/".into(),
            field: "round".into(),
            value: round.to_string(),
            expires_at_us: None,
            source: Party::default(),
        })]);
        let next = next.unwrap();
        assert_eq!(next.first, last_seq + 1);
        last_seen = next.first;
        store.close();
        let out =
            Command::new(env!("CARGO_BIN_EXE_pepper")).args(["check", "--data"]).arg(dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "round {round}: pepper check failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn crash_loop_20_rounds() {
    run_rounds(20);
}

#[test]
#[ignore = "long variant: cargo test --release --test crash_loop -- --ignored crash_loop_long"]
fn crash_loop_long() {
    run_rounds(200);
}
