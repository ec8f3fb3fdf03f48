//! The `pepper` binary: one site per process.
//!
//! `pepper serve` opens the site's store and serves the HTTP API on loopback
//! by default; `pepper check` verifies a data folder offline. Configuration is
//! by flags (or `PEPPER_*` environment variables); the defaults are a single
//! site named after the host, with its data in `./pepper-data`, listening on
//! 127.0.0.1:7171.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod agent;
mod auth_cli;
mod model_cli;

use pepper::config::{self, host_name};

/// mimalloc instead of the system allocator: the server allocates small,
/// short-lived buffers per request and per record, where glibc's malloc
/// and free showed as about 15% of its CPU under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use pepper_adapters::{Site, SiteConfig};

#[derive(Parser)]
#[command(
    name = "pepper",
    version,
    about = "Decentralized fleet management: durable pub/sub, node-state recall, federation"
)]
struct Cli {
    /// The bearer token for a site with auth on (docs/security.md). Prefer
    /// the environment variable: a flag shows in `ps`.
    #[arg(long, env = "PEPPER_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A CA certificate (PEM) to trust for a site that serves HTTPS,
    /// besides the system's roots.
    #[arg(long, env = "PEPPER_CACERT", global = true)]
    cacert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run this site: open the store and serve the HTTP API.
    Serve(Box<config::ServeArgs>),
    /// Check a data folder offline: record crcs, contiguous sequence numbers,
    /// and views that agree with the log. Exits non-zero on any problem.
    Check {
        /// Folder of the store to check.
        #[arg(long, env = "PEPPER_DATA", default_value = "./pepper-data")]
        data: PathBuf,
    },
    /// Publish one event to a site and print its sequence number.
    ///
    /// The payload is an attribute (`--field F --value V`), any JSON value
    /// (`--json P`), or nothing. `--xml FILE` instead posts a whole PsEPR
    /// XML envelope (`<event>` or `<events>`) from FILE, or stdin for `-`.
    Send(SendArgs),
    /// Print the events on a channel as they arrive, one JSON object per
    /// line. A dropped connection is resumed from the last event seen, with
    /// nothing skipped and nothing repeated.
    Watch {
        /// The channel pattern to watch (`*` matches one element).
        channel: String,
        /// Only these payload types (comma-separated).
        #[arg(long)]
        types: Option<String>,
        /// Start at this sequence number instead of with the next event.
        #[arg(long)]
        from_seq: Option<u64>,
        /// The site to talk to.
        #[arg(long, env = "PEPPER_SERVER", default_value = "http://127.0.0.1:7171")]
        server: String,
    },
    /// Publish this host's state (load, memory, uptime, kernel, CPUs,
    /// installed packages, kernel checksum) to a site as PLDB attributes,
    /// on `/<authority>/node/<hostname>/`, whenever a value changes.
    Agent {
        /// The site to publish to.
        #[arg(long, env = "PEPPER_SERVER", default_value = "http://127.0.0.1:7171")]
        server: String,
        /// The naming authority of the node channel.
        #[arg(long, default_value = "local")]
        authority: String,
        /// Seconds between looks for changes.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        interval_s: u64,
        /// Seconds each value lives unless refreshed (the agent refreshes
        /// every third of it).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(3..))]
        expire_s: u64,
        /// Read the host's files under this folder instead of `/`.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Print the latest values under a channel, or one tuple's history.
    Tuples {
        /// The channel, such as /local/node/host1/.
        channel: String,
        /// One field only.
        #[arg(long)]
        field: Option<String>,
        /// The whole subtree under the channel.
        #[arg(long, short)]
        recursive: bool,
        /// The field's history instead of its latest value.
        #[arg(long, requires = "field")]
        history: bool,
        /// History from this sequence number or RFC 3339 time.
        #[arg(long, requires = "history")]
        since: Option<String>,
        /// History up to this sequence number or RFC 3339 time.
        #[arg(long, requires = "history")]
        until: Option<String>,
        /// The site to talk to.
        #[arg(long, env = "PEPPER_SERVER", default_value = "http://127.0.0.1:7171")]
        server: String,
    },
    /// Work with the CIM model repository: classes, instances, queries.
    Model {
        /// The namespace.
        #[arg(long, short, default_value = "root/cimv2", global = true)]
        namespace: String,
        /// The site to talk to.
        #[arg(long, env = "PEPPER_SERVER", default_value = "http://127.0.0.1:7171", global = true)]
        server: String,
        #[command(subcommand)]
        command: model_cli::ModelCommand,
    },
    /// Show the recording policy and who records each pattern, or change
    /// the policy (`--set PATTERN=R`, `--drop PATTERN`).
    Recording {
        /// Add a pattern or change its replication factor, PATTERN=R.
        #[arg(long, conflicts_with = "drop")]
        set: Option<String>,
        /// Remove a pattern from the policy; this site's monitor of it stops.
        #[arg(long)]
        drop: Option<String>,
        /// The site to talk to.
        #[arg(long, env = "PEPPER_SERVER", default_value = "http://127.0.0.1:7171")]
        server: String,
    },
    /// Principals, tokens and grants (docs/security.md), and who you are.
    Auth {
        /// The site to talk to.
        #[arg(long, env = "PEPPER_SERVER", default_value = "http://127.0.0.1:7171", global = true)]
        server: String,
        #[command(subcommand)]
        command: auth_cli::AuthCommand,
    },
    /// List the site's live leases.
    Leases {
        /// The site to talk to.
        #[arg(long, env = "PEPPER_SERVER", default_value = "http://127.0.0.1:7171")]
        server: String,
    },
}

/// `pepper send`'s arguments.
#[derive(clap::Args)]
struct SendArgs {
    /// The channel to publish on, such as /example.com/node/h1/.
    #[arg(required_unless_present = "xml")]
    channel: Option<String>,
    /// The payload type; `attribute` with --field, otherwise required.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Attribute payload: the field name.
    #[arg(long, requires = "value", conflicts_with_all = ["json", "xml"])]
    field: Option<String>,
    /// Attribute payload: the value.
    #[arg(long, requires = "field")]
    value: Option<String>,
    /// Attribute payload: seconds until the value expires.
    #[arg(long, requires = "field")]
    expire: Option<u64>,
    /// The payload as JSON.
    #[arg(long, conflicts_with = "xml")]
    json: Option<String>,
    /// Post this PsEPR XML envelope instead (`-` for stdin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["channel", "event_type"])]
    xml: Option<PathBuf>,
    /// Event id, for an idempotent retry.
    #[arg(long)]
    id: Option<String>,
    /// The sender's service.
    #[arg(long, default_value = "pepper-cli")]
    from_service: String,
    /// The sender's instance (default: this host's name).
    #[arg(long)]
    from_instance: Option<String>,
    /// Deliver to one lease of each anycast group instead of all.
    #[arg(long)]
    one: bool,
    /// The site to talk to.
    #[arg(long, env = "PEPPER_SERVER", default_value = "http://127.0.0.1:7171")]
    server: String,
}

/// `println!` that returns the error instead of panicking: a closed
/// stdout (the reader of a pipe went away, as `| head` does) ends the
/// command, and [`main`] ends it quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// How long a CLI request may take (a watch has no limit).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the CLI and the agent reach a site: the token and the TLS trust.
#[derive(Clone, Default)]
pub(crate) struct Access {
    /// The bearer token, for a site with auth on.
    pub token: Option<String>,
    /// A CA certificate file to trust besides the system's roots.
    pub cacert: Option<PathBuf>,
    /// A whole TLS configuration instead (the site's own agent trusts its
    /// site's certificate exactly).
    pub tls: Option<rustls::ClientConfig>,
}

/// The CLI's HTTP client: every request carries the token as a bearer
/// token, marked sensitive so it is never shown in debug output, and
/// HTTPS trusts the system's roots and `--cacert`.
pub(crate) fn http_client(access: &Access, timeout: Option<Duration>) -> anyhow::Result<reqwest::blocking::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &access.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| anyhow::anyhow!("the token has characters an HTTP header cannot carry"))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::blocking::Client::builder().default_headers(headers).timeout(timeout);
    if let Some(path) = &access.cacert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("{} holds no certificate", path.display());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(tls) = &access.tls {
        builder = builder.use_preconfigured_tls(tls.clone());
    }
    Ok(builder.build()?)
}

/// Whether an error is stdout closing under the command: not a failure to
/// report, just the end of its reader's interest.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let access = Access { token: cli.token, cacert: cli.cacert, tls: None };
    let token = &access;
    let result = match cli.command {
        Command::Serve(args) => config::resolve(*args).and_then(serve),
        Command::Check { data } => check(&data),
        Command::Send(args) => send(args, token),
        Command::Watch { channel, types, from_seq, server } => {
            watch(&server, token, &channel, types.as_deref(), from_seq)
        }
        Command::Leases { server } => leases(&server, token),
        Command::Recording { set, drop, server } => recording(&server, token, set.as_deref(), drop.as_deref()),
        Command::Model { namespace, server, command } => model_cli::run(&server, token, &namespace, command),
        Command::Auth { server, command } => auth_cli::run(&server, token, command),
        Command::Agent { server, authority, interval_s, expire_s, root } => agent::run(agent::AgentConfig {
            server,
            access: access.clone(),
            authority,
            interval: Duration::from_secs(interval_s),
            expire_s,
            root,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Tuples { channel, field, recursive, history, since, until, server } => {
            tuples(&server, token, &channel, field.as_deref(), recursive, history.then_some((since, until)))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pepper: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(data: &std::path::Path) -> anyhow::Result<ExitCode> {
    let report = pepper_storage::check(data).with_context(|| format!("cannot check {}", data.display()))?;
    let code = if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    // The verdict is the exit code, whether or not anyone reads the report.
    match std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("{report}\n")) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(code),
    }
}

/// Sends a request and prints the JSON answer, or the API's error message.
fn answer(response: reqwest::blocking::Response) -> anyhow::Result<ExitCode> {
    let status = response.status();
    let text = response.text().context("the server's answer was cut off")?;
    if status.is_success() && text.trim().is_empty() {
        // 204: done, nothing to show.
        return Ok(ExitCode::SUCCESS);
    }
    let body: serde_json::Value = serde_json::from_str(&text).context("the server's answer is not JSON")?;
    if status.is_success() {
        out!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let message = body["error"]["message"].as_str().unwrap_or("no message");
    let code = body["error"]["code"].as_str().unwrap_or("unknown");
    anyhow::bail!("{status} {code}: {message}")
}

fn send(args: SendArgs, token: &Access) -> anyhow::Result<ExitCode> {
    let http = http_client(token, Some(HTTP_TIMEOUT))?;
    let url = format!("{}/v1/events", args.server.trim_end_matches('/'));
    let request = match (&args.xml, &args.channel) {
        (Some(file), _) => {
            let body = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read the XML envelope from stdin")?
            } else {
                std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
            };
            http.post(&url).header("content-type", "application/xml").body(body)
        }
        (None, Some(channel)) => {
            let (event_type, payload) = match (&args.field, &args.json) {
                (Some(field), _) => {
                    let mut p = serde_json::json!({ "field": field, "value": args.value.clone().unwrap_or_default() });
                    if let Some(expire) = args.expire {
                        p["expire"] = expire.into();
                    }
                    (args.event_type.clone().unwrap_or_else(|| "attribute".into()), p)
                }
                (None, json) => {
                    let payload = match json {
                        Some(text) => serde_json::from_str(text).context("--json is not valid JSON")?,
                        None => serde_json::Value::Null,
                    };
                    let Some(t) = args.event_type.clone() else { anyhow::bail!("--type is required without --field") };
                    (t, payload)
                }
            };
            let mut event = serde_json::json!({
                "channel": channel,
                "type": event_type,
                "payload": payload,
                "from": { "service": args.from_service, "instance": args.from_instance.clone().unwrap_or_else(host_name) },
                "distribution": if args.one { "one" } else { "all" },
            });
            if let Some(id) = &args.id {
                event["id"] = id.clone().into();
            }
            http.post(&url).json(&event)
        }
        (None, None) => anyhow::bail!("a channel or --xml is required"),
    };
    let response = request.send().with_context(|| format!("cannot reach {}", args.server))?;
    answer(response)
}

/// `pepper recording`: prints one line per pattern and the monitors seen,
/// or changes the policy.
fn recording(server: &str, token: &Access, set: Option<&str>, drop: Option<&str>) -> anyhow::Result<ExitCode> {
    let root = server.trim_end_matches('/');
    let http = http_client(token, Some(HTTP_TIMEOUT))?;
    if let Some(entry) = set {
        let (pattern, replicas) = pepper_adapters::supervisor::parse_policy(entry).map_err(anyhow::Error::msg)?;
        let response = http
            .put(format!("{root}/v1/recording/policies"))
            .json(&serde_json::json!({ "pattern": pattern, "replicas": replicas }))
            .send()
            .with_context(|| format!("cannot reach {server}"))?;
        return answer(response);
    }
    if let Some(pattern) = drop {
        let response = http
            .delete(format!("{root}/v1/recording/policies"))
            .query(&[("pattern", pattern)])
            .send()
            .with_context(|| format!("cannot reach {server}"))?;
        if response.status().is_success() {
            out!("dropped {pattern}");
            return Ok(ExitCode::SUCCESS);
        }
        return answer(response);
    }
    let response = http.get(format!("{root}/v1/recording")).send().with_context(|| format!("cannot reach {server}"))?;
    if !response.status().is_success() {
        return answer(response);
    }
    let body: serde_json::Value = response.json().context("the server's answer is not JSON")?;
    out!("{:<40} {:>8} {:>5} {:>9}  monitors", "pattern", "replicas", "live", "complete");
    for p in body["policies"].as_array().cloned().unwrap_or_default() {
        let monitors: Vec<String> = p["monitors"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| format!("{} ({})", m["site"].as_str().unwrap_or("?"), m["state"].as_str().unwrap_or("?")))
            .collect();
        out!(
            "{:<40} {:>8} {:>5} {:>9}  {}",
            p["pattern"].as_str().unwrap_or(""),
            p["replicas"],
            p["live"],
            p["complete"],
            monitors.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn leases(server: &str, token: &Access) -> anyhow::Result<ExitCode> {
    let url = format!("{}/v1/leases", server.trim_end_matches('/'));
    let response =
        http_client(token, Some(HTTP_TIMEOUT))?.get(&url).send().with_context(|| format!("cannot reach {server}"))?;
    if !response.status().is_success() {
        return answer(response);
    }
    let body: serde_json::Value = response.json().context("the server's answer is not JSON")?;
    let leases = body["leases"].as_array().cloned().unwrap_or_default();
    out!("{:<34} {:<40} {:>7}  {:<28} types", "id", "channel", "ttl_s", "expires_at");
    for l in &leases {
        let types = l["types"].as_array().map(|t| t.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","));
        out!(
            "{:<34} {:<40} {:>7}  {:<28} {}",
            l["id"].as_str().unwrap_or_default(),
            l["channel"].as_str().unwrap_or_default(),
            l["ttl_s"].as_u64().unwrap_or_default(),
            l["expires_at"].as_str().unwrap_or_default(),
            types.filter(|t| !t.is_empty()).unwrap_or_else(|| "*".into())
        );
    }
    out!("{} lease(s) as of seq {}", leases.len(), body["seq"]);
    Ok(ExitCode::SUCCESS)
}

/// Prints latest values (following every page) or one tuple's history.
fn tuples(
    server: &str,
    token: &Access,
    channel: &str,
    field: Option<&str>,
    recursive: bool,
    history: Option<(Option<String>, Option<String>)>,
) -> anyhow::Result<ExitCode> {
    let http = http_client(token, Some(HTTP_TIMEOUT))?;
    let root = server.trim_end_matches('/');
    if let (Some((since, until)), Some(field)) = (history, field) {
        let mut query = vec![("channel", channel.to_string()), ("field", field.to_string()), ("limit", "1000".into())];
        query.extend(since.map(|s| ("since", s)));
        query.extend(until.map(|u| ("until", u)));
        let res = http.get(format!("{root}/v1/tuples/history")).query(&query).send();
        let res = res.with_context(|| format!("cannot reach {server}"))?;
        if !res.status().is_success() {
            return answer(res);
        }
        let body: serde_json::Value = res.json().context("the server's answer is not JSON")?;
        for h in body["history"].as_array().into_iter().flatten() {
            out!(
                "{:>10}  {}  {}",
                h["seq"],
                h["time"].as_str().unwrap_or_default(),
                h["value"].as_str().unwrap_or_default()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut cursor: Option<String> = None;
    let mut count = 0usize;
    loop {
        let mut query = vec![("channel", channel.to_string()), ("limit", "1000".to_string())];
        query.extend(field.map(|f| ("field", f.to_string())));
        if recursive {
            query.push(("recursive", "true".into()));
        }
        query.extend(cursor.take().map(|c| ("cursor", c)));
        let res = http.get(format!("{root}/v1/tuples")).query(&query).send();
        let res = res.with_context(|| format!("cannot reach {server}"))?;
        if !res.status().is_success() {
            return answer(res);
        }
        let body: serde_json::Value = res.json().context("the server's answer is not JSON")?;
        for t in body["tuples"].as_array().into_iter().flatten() {
            count += 1;
            out!(
                "{}{}  {}",
                t["channel"].as_str().unwrap_or_default(),
                t["field"].as_str().unwrap_or_default(),
                t["value"].as_str().unwrap_or_default()
            );
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                eprintln!("{count} tuple(s) as of seq {}", body["seq"]);
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Longest wait between reconnection attempts of `pepper watch`.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

fn watch(
    server: &str,
    token: &Access,
    channel: &str,
    types: Option<&str>,
    from_seq: Option<u64>,
) -> anyhow::Result<ExitCode> {
    use std::io::{BufRead, Write};
    let http = http_client(token, None)?;
    let root = server.trim_end_matches('/');
    // Pin the start to a sequence number, so a reconnect before the first
    // event still resumes exactly where this watch began.
    let mut next = match from_seq {
        Some(f) => f,
        None => {
            let health: serde_json::Value = http
                .get(format!("{root}/v1/health"))
                .send()
                .with_context(|| format!("cannot reach {server}"))?
                .json()
                .context("the server's health answer is not JSON")?;
            health["last_seq"].as_u64().context("the server's health answer has no last_seq")? + 1
        }
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut query = vec![("channel", channel.to_string()), ("from_seq", next.to_string())];
        if let Some(t) = types {
            query.push(("types", t.to_string()));
        }
        let request = http.get(format!("{root}/v1/watch")).query(&query).header("accept", "text/event-stream");
        let response = match request.send() {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().is_client_error() => return answer(r),
            Ok(r) => {
                eprintln!("pepper watch: {} from {server}; retrying", r.status());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                eprintln!("pepper watch: cannot reach {server} ({e}); retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let (mut id, mut event, mut data) = (None::<u64>, String::new(), String::new());
        for line in std::io::BufReader::new(response).lines() {
            let Ok(line) = line else { break };
            if line.is_empty() {
                if event == "pepper.compacted" {
                    let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                    let earliest = v["earliest_seq"].as_u64().unwrap_or(next);
                    eprintln!(
                        "pepper watch: events before seq {earliest} were trimmed by retention; continuing from there"
                    );
                    next = earliest;
                } else if event == "pepper.overflow" {
                    eprintln!("pepper watch: this terminal fell behind the live stream; resuming from seq {next}");
                } else if let (Some(seq), false) = (id, data.is_empty()) {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{data}")?;
                    out.flush()?;
                    next = seq + 1;
                }
                (id, event, data) = (None, String::new(), String::new());
                continue;
            }
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        eprintln!("pepper watch: connection to {server} ended; resuming from seq {next}");
        std::thread::sleep(backoff);
    }
}

fn serve(site: config::Site) -> anyhow::Result<ExitCode> {
    let config::Site { data, listen, options, api, agent, server, insecure, tls } = site;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let auth = api.admin_token.is_some();
    let agent_token = api.admin_token.as_ref().map(|t| t.expose().to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = runtime.block_on(async {
        let site = Site::open(SiteConfig { data: data.clone(), listen, options, api, server, tls }).await?;
        let addr = site.addr();
        let own_tls = site.own_client_tls().map_err(anyhow::Error::msg)?;
        let store = site.store().clone();
        // Tests and scripts read the chosen port from this line; a closed
        // stdout must not stop the site.
        let _ = std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("listening on {scheme}://{addr}\n"));
        if agent {
            // The agent talks to this site like any client: on the address
            // it listens on, or the loopback of that family when it listens
            // on all of them.
            let target = pepper_adapters::federation::loopback_of(addr);
            let authority = store.site().to_string();
            std::thread::Builder::new().name("pepper-agent".into()).spawn(move || {
                let config = agent::AgentConfig {
                    server: format!("{scheme}://{target}"),
                    // The site's own agent, in its process: with auth on it
                    // acts with the site's admin token.
                    access: Access { token: agent_token.clone(), cacert: None, tls: own_tls.clone() },
                    authority,
                    interval: Duration::from_secs(10),
                    expire_s: 300,
                    root: PathBuf::from("/"),
                };
                if let Err(e) = agent::run(config) {
                    tracing::error!(error = %format!("{e:#}"), "the node agent stopped");
                }
            })?;
        }
        tracing::info!(%addr, site = store.site(), data = %data.display(), auth, tls = scheme == "https", "pepper serving");
        if !auth && insecure && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "INSECURE: auth is off and this site serves beyond loopback; anyone who reaches it can publish, read and change everything");
        } else if !auth {
            tracing::info!("auth is off: every caller may do everything (loopback only); docs/security.md turns it on");
        }
        if scheme == "http" && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "no TLS beyond loopback: tokens and the peer secret cross the network in clear text; docs/security.md sets up TLS");
        }
        site.run(shutdown_signal()).await?;
        anyhow::Ok(store)
    })?;
    // Dropping the runtime ends every task the site spawned; the store
    // closes, its last writes durable, with the last handle.
    tracing::info!("shutting down; closing the store");
    drop(runtime);
    store.close();
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
