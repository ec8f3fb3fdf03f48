//! Running sites for integration tests and benchmarks (which include this
//! file with `#[path]`), on loopback, an ephemeral port and a temporary
//! data folder:
//!
//! - [`Server::start`] runs the real `pepper` binary, stopped by its pid:
//!   for the smoke tests of the binary itself (signals, kills, crash
//!   loops) and for benchmarks, which may compare another build;
//! - [`Server::embedded`] runs the same [`pepper_adapters::Site`] in this
//!   process, from the same flags, parsed by `pepper serve`'s own parser,
//!   for the detailed API tests: nothing to spawn, and no process boundary
//!   to wait across.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running site.
pub struct Server {
    run: Running,
    /// `http://127.0.0.1:PORT` (`https://` with TLS on).
    pub url: String,
    /// Folders removed when the server is dropped: its data folder when it
    /// owns it ([`Server::temporary`]), and any it was told to keep.
    _dirs: Vec<tempfile::TempDir>,
}

enum Running {
    /// `pepper serve`, a child process.
    Process(Child),
    /// A site in this process, on a thread of its own with its own runtime;
    /// the thread answers whether the site ran and closed cleanly.
    Embedded { stopper: pepper_adapters::Stopper, thread: Option<std::thread::JoinHandle<Result<(), String>>> },
}

/// How a stopped server ended.
#[derive(Debug)]
pub struct Exit(Result<(), String>);

impl Exit {
    /// Whether it ended cleanly.
    pub fn success(&self) -> bool {
        self.0.is_ok()
    }
}

/// `extra` with the flags every test site needs added when missing.
fn with_defaults<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = Vec::new();
    if !extra.contains(&"--site") && !extra.contains(&"--config") {
        flags.extend(["--site", "test-site"]);
    }
    if !extra.contains(&"--listen") {
        flags.extend(["--listen", "127.0.0.1:0"]);
    }
    flags.extend_from_slice(extra);
    flags
}

impl Server {
    /// Starts `pepper serve` on `data` with extra flags, and waits until it
    /// prints the address it listens on.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        // `PEPPER_BENCH_BIN` runs the same bench or test against another
        // build (an earlier commit's, say), so two builds are compared in
        // one session.
        let bin = std::env::var_os("PEPPER_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pepper").into());
        let mut command = Command::new(bin);
        command.args(["serve", "--data"]).arg(data);
        // Its log goes nowhere; `warn` keeps it from costing a benchmark.
        command.env("RUST_LOG", "warn");
        let mut child =
            command.args(with_defaults(extra)).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"), "{url}");
        Server { run: Running::Process(child), url, _dirs: Vec::new() }
    }

    /// Runs a site in this process on `data`, configured by the flags
    /// `pepper serve` takes, and returns once it listens. `--agent` is the
    /// binary's, not the site's: use [`Server::start`] for it.
    pub fn embedded(data: &Path, extra: &[&str]) -> Server {
        assert!(!extra.contains(&"--agent"), "the agent runs only in the binary");
        let mut flags: Vec<std::ffi::OsString> = vec!["--data".into(), data.into()];
        flags.extend(with_defaults(extra).into_iter().map(Into::into));
        let args = pepper::config::parse_serve_flags(flags).unwrap_or_else(|e| panic!("{e}"));
        let pepper::config::Site { data, listen, options, api, server, agent: _, insecure: _, tls } =
            pepper::config::resolve(args).unwrap_or_else(|e| panic!("{e:#}"));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let config = pepper_adapters::SiteConfig { data, listen, options, api, server, tls };
        let (opened, open) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("embedded-site".into())
            .spawn(move || -> Result<(), String> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let store = runtime.block_on(async move {
                    let site = match pepper_adapters::Site::open(config).await {
                        Ok(site) => site,
                        Err(e) => {
                            let _ = opened.send(Err(e.to_string()));
                            return Err(e.to_string());
                        }
                    };
                    let store = site.store().clone();
                    let _ = opened.send(Ok((site.addr(), site.stopper())));
                    site.run(std::future::pending()).await.map_err(|e| e.to_string())?;
                    Ok(store)
                })?;
                // As `pepper serve` does: the runtime's tasks end first, then
                // the store closes with its last writes durable.
                drop(runtime);
                store.close();
                Ok(())
            })
            .unwrap();
        let (addr, stopper) = open.recv().unwrap().unwrap_or_else(|e| panic!("the site did not open: {e}"));
        Server {
            run: Running::Embedded { stopper, thread: Some(thread) },
            url: format!("{scheme}://{addr}"),
            _dirs: Vec::new(),
        }
    }

    /// Starts `pepper serve` on a temporary data folder of its own, removed
    /// when the server is dropped.
    pub fn temporary(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::start(dir.path(), extra);
        server._dirs.push(dir);
        server
    }

    /// Keeps `dir` (the server's data and files) until the server is
    /// dropped, with any it keeps already.
    pub fn keep(&mut self, dir: tempfile::TempDir) {
        self._dirs.push(dir);
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap()
    }

    fn child(&self) -> &Child {
        match &self.run {
            Running::Process(child) => child,
            Running::Embedded { .. } => panic!("signals and kills need a process: start it with Server::start"),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`...) to the server by its pid.
    pub fn signal(&self, signal: &str) {
        let pid = self.child().id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
        if signal == "STOP" {
            self.wait_stopped();
        }
    }

    /// Waits until every thread of the server is stopped (state `T` in
    /// `/proc`): `kill` returns once SIGSTOP is queued, and a thread running
    /// on another core can still answer a request before it takes effect.
    fn wait_stopped(&self) {
        let tasks = format!("/proc/{}/task", self.child().id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let states: Vec<char> = std::fs::read_dir(&tasks)
                .unwrap()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                .filter_map(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
                .collect();
            if !states.is_empty() && states.iter().all(|s| *s == 'T' || *s == 't') {
                return;
            }
            assert!(Instant::now() < deadline, "the server's threads did not stop: {states:?}");
            std::thread::yield_now();
        }
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub fn kill(mut self) {
        self.child();
        if let Running::Process(child) = &mut self.run {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops the server (a process by its own pid, with SIGTERM) and says
    /// how it ended.
    pub fn stop(mut self) -> Exit {
        match &mut self.run {
            Running::Process(child) => {
                let pid = child.id().to_string();
                assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
                let status = child.wait().unwrap();
                Exit(if status.success() { Ok(()) } else { Err(status.to_string()) })
            }
            Running::Embedded { stopper, thread } => {
                stopper.stop();
                let thread = thread.take().unwrap();
                Exit(thread.join().unwrap_or_else(|_| Err("the site's thread panicked".into())))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.run {
            Running::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Embedded { stopper, thread } => {
                stopper.stop();
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// Writes `secret` to a file in `dir` for `--peer-secret-file` (secrets
/// are never flags) and returns its path.
pub fn secret_file(dir: &Path, secret: &str) -> String {
    secret_in(dir, "peer-secret", secret)
}

/// `value` as the first line of `dir/name`, created with `dir`; its path.
fn secret_in(dir: &Path, name: &str, value: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

/// The admin token of the tests that run with auth on.
pub const ADMIN_TOKEN: &str = "admin-token-for-the-test-suite-0123456789";

/// Writes [`ADMIN_TOKEN`] to a file in `dir` for `--admin-token-file` and
/// returns its path.
pub fn admin_token_file(dir: &Path) -> String {
    secret_in(dir, "admin-token", ADMIN_TOKEN)
}

/// `Authorization` with [`ADMIN_TOKEN`].
pub fn admin_auth() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// A client whose every request carries [`ADMIN_TOKEN`] (unless it sets
/// its own `Authorization`). It trusts the [`test_ca`] and presents the
/// [`harness_identity`], so it reaches sites with TLS on too.
pub fn admin_client(timeout: Duration) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, admin_auth().parse().unwrap());
    tls_client().default_headers(headers).timeout(timeout).build().unwrap()
}

/// A client builder that trusts the [`test_ca`] and presents the
/// [`harness_identity`] to a site that asks for a certificate.
pub fn tls_client() -> reqwest::blocking::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(test_ca().pem.as_bytes()).unwrap();
    reqwest::blocking::Client::builder().add_root_certificate(ca).identity(harness_identity())
}

/// The tests' certificate authority, made once per test process: it signs
/// every site's certificate and the harness's.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// The tests' CA.
pub fn test_ca() -> &'static TestCa {
    static CA: std::sync::OnceLock<TestCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(rcgen::DnType::CommonName, "pepper test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        TestCa { cert, key, pem }
    })
}

impl TestCa {
    /// A certificate and its key (PEM) for `names` (DNS names) and
    /// 127.0.0.1, for servers and clients both.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The harness's own certificate: it speaks for the made-up peers the
/// tests post as (`x`, `y`, `z`) where a site requires peer certificates.
pub fn harness_identity() -> reqwest::Identity {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let pem = PEM.get_or_init(|| {
        let (cert, key) = test_ca().issue(&["x", "y", "z", "harness"]);
        format!("{cert}\n{key}")
    });
    reqwest::Identity::from_pem(pem.as_bytes()).unwrap()
}

/// The flags of a federated site `name` as the tests run one: the peer
/// secret `secret` and the admin token (files under `dir`), heartbeats
/// every 100 ms, and TLS with peer certificates required ([`tls_flags`]);
/// then `extra`.
pub fn federated_flags(dir: &Path, name: &str, secret: &str, extra: &[&str]) -> Vec<String> {
    let secret = secret_file(dir, secret);
    let admin = admin_token_file(dir);
    let mut args: Vec<String> =
        ["--site", name, "--peer-secret-file", &secret, "--admin-token-file", &admin, "--heartbeat-ms", "100"]
            .into_iter()
            .map(String::from)
            .collect();
    args.extend(tls_flags(dir, name));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `(action, by, target)` of each audit event in a `GET /v1/events` answer.
pub fn audit_entries(answer: &serde_json::Value) -> Vec<(String, String, String)> {
    let events = answer["events"].as_array().map(Vec::as_slice).unwrap_or_default();
    events
        .iter()
        .map(|e| {
            let text = |k: &str| e["payload"][k].as_str().unwrap_or_default().to_string();
            (text("action"), text("by"), text("target"))
        })
        .collect()
}

/// The flags that give site `site` TLS: a certificate for its name (and
/// 127.0.0.1) signed by the [`test_ca`], its key, and the CA as the peer
/// CA, all written under `dir`.
pub fn tls_flags(dir: &Path, site: &str) -> Vec<String> {
    let folder = dir.join(format!("tls-{site}"));
    std::fs::create_dir_all(&folder).unwrap();
    let (cert, key) = test_ca().issue(&[site, "localhost"]);
    let write = |name: &str, text: &str| {
        let path = folder.join(name);
        std::fs::write(&path, text).unwrap();
        // A key readable by anyone is refused, as an operator's would be.
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
        std::fs::set_permissions(&path, permissions).unwrap();
        path.to_str().unwrap().to_string()
    };
    vec![
        "--tls-cert".into(),
        write("site.crt", &cert),
        "--tls-key".into(),
        write("site.key", &key),
        "--tls-peer-ca".into(),
        write("ca.crt", &test_ca().pem),
    ]
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Sse {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// Reads Server-Sent Events from a streaming response.
pub struct SseReader {
    lines: std::io::Lines<BufReader<reqwest::blocking::Response>>,
}

impl SseReader {
    /// Opens `url` as an event stream, with optional extra headers.
    pub fn open(url: &str, headers: &[(&str, &str)]) -> SseReader {
        let client = tls_client().timeout(Duration::from_secs(60)).build().unwrap();
        let mut req = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().unwrap();
        assert_eq!(res.status(), 200, "{url}");
        SseReader { lines: BufReader::new(res).lines() }
    }

    /// The next event, or `None` when the stream ends.
    pub fn next(&mut self) -> Option<Sse> {
        let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
        let mut any = false;
        for line in self.lines.by_ref() {
            let line = line.ok()?;
            if line.is_empty() {
                if any {
                    return Some(Sse { id, event, data });
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // keep-alive comment
            }
            let (field, value) = line.split_once(':').map_or((line.as_str(), ""), |(f, v)| (f, v.trim_start()));
            any = true;
            match field {
                "id" => id = Some(value.to_string()),
                "event" => event = value.to_string(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
        None
    }
}

/// An event record as site `origin` logged it at `seq`, on `channel`, as a
/// peer would forward it.
pub fn peer_event(origin: &str, seq: u64, id: &str, channel: &str, event_type: &str) -> pepper_storage::Record {
    pepper_storage::Record {
        seq,
        time_us: pepper_storage::now_us(),
        origin: origin.into(),
        body: pepper_storage::Body::Event(pepper_storage::Event {
            id: id.into(),
            channel: channel.into(),
            event_type: event_type.into(),
            from: pepper_storage::Party::default(),
            to: pepper_storage::Target::default(),
            distribution: pepper_storage::Distribution::All,
            payload: b"{}".to_vec(),
            assigned: Vec::new(),
            principal: None,
            tuple: None,
        }),
    }
}

/// A `POST /v1/peer/records` body: each record's frame after its `u32`
/// big-endian length.
pub fn peer_batch<'a>(records: impl IntoIterator<Item = &'a pepper_storage::Record>) -> Vec<u8> {
    let mut body = Vec::new();
    for record in records {
        let frame = record.encode().unwrap();
        body.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        body.extend_from_slice(&frame);
    }
    body
}

/// The benches' publish load: `clients` concurrent keep-alive clients each
/// posting `per` requests of `batch` events of type `ty` to `url` (with a
/// bearer `token` if given), every value distinct (`counter`). Panics on
/// any refusal: a benchmark measures only acknowledged writes.
#[allow(clippy::too_many_arguments)]
pub async fn publish_load(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    clients: usize,
    per: u64,
    batch: usize,
    ty: &'static str,
    counter: &std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let (client, url, counter) = (client.clone(), url.to_string(), counter.clone());
            let token = token.map(str::to_string);
            tokio::spawn(async move {
                for _ in 0..per {
                    let events: Vec<_> = (0..batch)
                        .map(|_| {
                            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            serde_json::json!({"channel": format!("/bench.example.com/node/n{w}/"), "type": ty,
                                   "payload": {"field": format!("f{}", n % 64), "value": format!("{n:0100}")}})
                        })
                        .collect();
                    let body = if batch == 1 { events[0].clone() } else { serde_json::json!(events) };
                    let mut req = client.post(&url).json(&body);
                    if let Some(t) = &token {
                        req = req.bearer_auth(t);
                    }
                    let res = req.send().await.unwrap();
                    assert!(res.status().is_success(), "{}", res.status());
                    res.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}
