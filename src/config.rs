//! `pepper serve`'s settings: flags, environment variables and a TOML file.
//!
//! Each setting comes from, in order of precedence: its flag, its
//! `PEPPER_*` environment variable, the config file (`--config FILE`), then
//! the built-in default. Every key of the file is a flag's name with `_` for
//! `-`, and retention keys sit in a `[retention]` table:
//!
//! ```toml
//! site = "lab-1"
//! listen = "127.0.0.1:7171"
//! data = "/var/lib/pepper"
//! durability = "sync"          # or "buffered"
//! lease_ttl_max_s = 3600
//! dedupe_window_s = 600
//! stream_buffer_events = 1024  # per live stream; a full one is disconnected
//!
//! # Federation (docs/federation.md): peers need the shared peer secret.
//! region = "eu-west"
//! url = "http://10.0.0.5:7171"  # how peers reach this site
//! peers = ["lab-2=http://10.0.0.6:7171"]
//! peer_secret_file = "/etc/pepper/peer-secret"  # or PEPPER_PEER_SECRET
//! heartbeat_ms = 1000
//!
//! # Recording policy (docs/supervisors.md): subtrees kept by R monitors
//! # across sites. Give every site the same policy.
//! record = ["/example.com/node/=2"]
//! monitor_interval_ms = 1000
//!
//! # The HTTP edge (docs/api.md, "Limits and the edge").
//! allowed_hosts = ["pepper.example.org"]  # besides IPs, localhost, site, url
//! cors_origins = []             # e.g. ["https://console.example.org"]
//! header_read_timeout_s = 30    # also the keep-alive idle limit
//! body_read_timeout_s = 60
//! connections_max = 16384
//!
//! # Auth (docs/security.md): the admin token, and each principal's
//! # publish quota (events/s, bursts of twice that).
//! admin_token_file = "/etc/pepper/admin-token"
//! publish_quota_per_s = 2000
//!
//! # TLS (docs/security.md): HTTPS only, and peers must present a
//! # certificate the peer CA signed for their site name.
//! tls_cert = "/etc/pepper/site.crt"
//! tls_key = "/etc/pepper/site.key"
//! tls_peer_ca = "/etc/pepper/peer-ca.crt"
//!
//! [retention]
//! log_max_age_s = 604800
//! log_max_bytes = 10737418240
//! history_max_count = 1000
//! history_max_age_s = 2592000
//! interval_s = 10
//! tombstone_max_age_s = 604800  # how long removals are remembered
//!
//! # History limits for a channel subtree; the longest matching prefix
//! # wins, and a limit left out keeps everything for that subtree.
//! [[retention.history]]
//! prefix = "/example.com/node/"
//! max_count = 100
//! max_age_s = 86400
//! ```
//!
//! Unknown keys are refused, so a misspelt setting never silently falls
//! back to its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use pepper_storage::{Durability, Options, Retention};
use serde::Deserialize;

/// How long tombstones are kept unless configured: a week.
const TOMBSTONE_MAX_AGE_S_DEFAULT: u64 = 7 * 24 * 3600;

/// The default listen address: loopback only.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7171";
/// The default data folder.
pub const DATA_DEFAULT: &str = "./pepper-data";
/// The default seconds between retention passes.
pub const RETENTION_INTERVAL_S_DEFAULT: u64 = 10;

/// `--durability` and `durability =` values.
#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// Acknowledge after the WAL is fsynced.
    Sync,
    /// Acknowledge after the WAL is written to the operating system.
    Buffered,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Durability {
        match d {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Buffered => Durability::Buffered,
        }
    }
}

/// `pepper serve`'s flags read from `flags` (what follows `pepper serve`
/// on a command line), exactly as the binary reads them, `PEPPER_*`
/// variables included.
///
/// # Errors
/// An unknown flag or a value that does not parse, with clap's message.
pub fn parse_serve_flags<I, T>(flags: I) -> Result<ServeArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    #[derive(clap::Parser)]
    #[command(name = "pepper serve")]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let args = std::iter::once(std::ffi::OsString::from("pepper serve")).chain(flags.into_iter().map(Into::into));
    <Flags as clap::Parser>::try_parse_from(args).map(|f| f.serve)
}

/// `pepper serve`'s flags. Those left out fall back to the config file, then
/// to the defaults named in their help.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A TOML file of settings (see the README); flags override it.
    #[arg(long, env = "PEPPER_CONFIG")]
    config: Option<PathBuf>,
    /// Also run the node agent: publish this host's state to this site, on
    /// `/<site>/node/<hostname>/`.
    #[arg(long, env = "PEPPER_AGENT")]
    agent: bool,
    /// A file holding the admin token (at least 32 characters; its first
    /// line). With an admin token, auth is on: every request needs a token
    /// (docs/security.md). The token itself may instead be in the
    /// environment variable PEPPER_ADMIN_TOKEN; it is never a flag, which
    /// `ps` would show.
    #[arg(long, env = "PEPPER_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Events a principal may publish per second, sustained, in bursts of
    /// twice that [default: 2000]; past it, 429 (docs/security.md).
    #[arg(long, env = "PEPPER_PUBLISH_QUOTA_PER_S", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    publish_quota_per_s: Option<u32>,
    /// Serve beyond loopback without auth. Anyone who reaches the port can
    /// then publish, read and change everything: for a closed lab network
    /// only. Logged loudly at start.
    #[arg(long, env = "PEPPER_INSECURE")]
    insecure: bool,
    /// Folder of the site's store; created if missing [default: ./pepper-data].
    #[arg(long, env = "PEPPER_DATA")]
    data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7171]. Port 0 picks a free
    /// port; the chosen address is printed as `listening on http://ADDR`.
    #[arg(long, env = "PEPPER_LISTEN")]
    listen: Option<SocketAddr>,
    /// This site's name [default: the host name].
    #[arg(long, env = "PEPPER_SITE")]
    site: Option<String>,
    /// When writes are acknowledged [default: sync]: after the WAL is
    /// fsynced, or (buffered) after it is written to the OS.
    #[arg(long, env = "PEPPER_DURABILITY", value_enum)]
    durability: Option<DurabilityArg>,
    /// The longest time to live a lease is granted, in seconds [default: 3600].
    #[arg(long, env = "PEPPER_LEASE_TTL_MAX_S", value_parser = clap::value_parser!(u64).range(1..))]
    lease_ttl_max_s: Option<u64>,
    /// Events buffered per live stream before a client that does not keep
    /// up is disconnected with a position to resume from [default: 1024].
    #[arg(long, env = "PEPPER_STREAM_BUFFER_EVENTS", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    stream_buffer_events: Option<u64>,
    /// How long an event id is remembered for idempotent retries, in
    /// seconds [default: 600].
    #[arg(long, env = "PEPPER_DEDUPE_WINDOW_S")]
    dedupe_window_s: Option<u64>,
    /// Trim log records older than this many seconds.
    #[arg(long, env = "PEPPER_LOG_MAX_AGE_S")]
    log_max_age_s: Option<u64>,
    /// Trim the oldest log records while the log holds more bytes than this.
    #[arg(long, env = "PEPPER_LOG_MAX_BYTES")]
    log_max_bytes: Option<u64>,
    /// Keep at most this many history rows per (channel, field).
    #[arg(long, env = "PEPPER_HISTORY_MAX_COUNT")]
    history_max_count: Option<u64>,
    /// Trim history rows older than this many seconds.
    #[arg(long, env = "PEPPER_HISTORY_MAX_AGE_S")]
    history_max_age_s: Option<u64>,
    /// How long the tombstones of expired or deleted tuples are kept, in
    /// seconds [default: 604800, a week]. A watch resuming from before the
    /// oldest one kept gets a full snapshot instead of the changes since.
    #[arg(long, env = "PEPPER_TOMBSTONE_MAX_AGE_S")]
    tombstone_max_age_s: Option<u64>,
    /// Seconds between retention passes [default: 10].
    #[arg(long, env = "PEPPER_RETENTION_INTERVAL_S", value_parser = clap::value_parser!(u64).range(1..))]
    retention_interval_s: Option<u64>,
    /// This site's region, for federated queries with `scope=region:R` and
    /// for placement.
    #[arg(long, env = "PEPPER_REGION")]
    region: Option<String>,
    /// The url peers reach this site at [default: http:// and the listen
    /// address].
    #[arg(long, env = "PEPPER_URL")]
    url: Option<String>,
    /// A peer site, NAME=URL; repeat for more. Peers also learn of each
    /// other from their announcements.
    #[arg(long = "peer", env = "PEPPER_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// A file holding the shared secret of site-to-site requests (its first
    /// line); without a secret the site takes part in no federation. The
    /// secret itself may instead be in PEPPER_PEER_SECRET; it is never a
    /// flag, which `ps` would show.
    #[arg(long, env = "PEPPER_PEER_SECRET_FILE")]
    peer_secret_file: Option<PathBuf>,
    /// Milliseconds between heartbeats to peers [default: 1000].
    #[arg(long, env = "PEPPER_HEARTBEAT_MS", value_parser = clap::value_parser!(u64).range(10..=60_000))]
    heartbeat_ms: Option<u64>,
    /// A recording policy entry, PATTERN=R: the subtree PATTERN is recorded
    /// by R monitors across the sites; repeat for more. Kept in the store,
    /// and changed at run time with `PUT /v1/recording/policies`.
    #[arg(long = "record", env = "PEPPER_RECORD", value_delimiter = ',')]
    record: Vec<String>,
    /// Milliseconds between supervisor evaluations and monitor
    /// announcements [default: 1000].
    #[arg(long, env = "PEPPER_MONITOR_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(10..=60_000))]
    monitor_interval_ms: Option<u64>,
    /// A host name this site answers to besides IP addresses, `localhost`,
    /// its name and its url's host; repeat for more. Requests naming any
    /// other host get 403 (DNS rebinding protection).
    #[arg(long = "allowed-host", env = "PEPPER_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// An origin (`scheme://host[:port]`) allowed cross-origin requests
    /// from browsers; repeat for more. None: CORS is off.
    #[arg(long = "cors-origin", env = "PEPPER_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Seconds a client may take to send a request header, and that an
    /// idle keep-alive connection is kept [default: 30].
    #[arg(long, env = "PEPPER_HEADER_READ_TIMEOUT_S", value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_read_timeout_s: Option<u64>,
    /// Seconds a client may take to send a request body, whole [default: 60].
    #[arg(long, env = "PEPPER_BODY_READ_TIMEOUT_S", value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_read_timeout_s: Option<u64>,
    /// Most connections open at once; at the limit new ones wait to be
    /// accepted [default: 16384].
    #[arg(long, env = "PEPPER_CONNECTIONS_MAX", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    connections_max: Option<u64>,
    /// The site's TLS certificate chain (PEM, leaf first). With it and
    /// --tls-key the site serves HTTPS only (docs/security.md).
    #[arg(long, env = "PEPPER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "PEPPER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs the sites' certificates. With it, peers
    /// must present a client certificate it signed, valid for their site
    /// name, and this site presents its own to them.
    #[arg(long, env = "PEPPER_TLS_PEER_CA")]
    tls_peer_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    admin_token_file: Option<PathBuf>,
    publish_quota_per_s: Option<u32>,
    insecure: Option<bool>,
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    site: Option<String>,
    durability: Option<DurabilityArg>,
    lease_ttl_max_s: Option<u64>,
    stream_buffer_events: Option<u64>,
    dedupe_window_s: Option<u64>,
    agent: Option<bool>,
    region: Option<String>,
    url: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    peer_secret: Option<String>,
    peer_secret_file: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    record: Vec<String>,
    monitor_interval_ms: Option<u64>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    cors_origins: Vec<String>,
    header_read_timeout_s: Option<u64>,
    body_read_timeout_s: Option<u64>,
    connections_max: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_peer_ca: Option<PathBuf>,
    #[serde(default)]
    retention: FileRetention,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    log_max_age_s: Option<u64>,
    log_max_bytes: Option<u64>,
    history_max_count: Option<u64>,
    history_max_age_s: Option<u64>,
    interval_s: Option<u64>,
    tombstone_max_age_s: Option<u64>,
    #[serde(default)]
    history: Vec<FileHistoryRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHistoryRule {
    prefix: String,
    max_count: Option<u64>,
    max_age_s: Option<u64>,
}

/// Everything `serve` needs, resolved.
pub struct Site {
    /// The data folder.
    pub data: PathBuf,
    /// The listen address.
    pub listen: SocketAddr,
    /// The store's options.
    pub options: Options,
    /// The API's settings.
    pub api: pepper_adapters::ApiConfig,
    /// Whether to run the node agent too.
    pub agent: bool,
    /// Whether serving beyond loopback without auth was asked for.
    pub insecure: bool,
    /// The connection loop's limits.
    pub server: pepper_adapters::ServerLimits,
    /// The TLS files, when the site serves HTTPS.
    pub tls: Option<pepper_adapters::TlsFiles>,
}

/// Merges flags, the config file and defaults.
///
/// # Errors
/// An unreadable or invalid config file, or an out-of-range value in it.
pub fn resolve(args: ServeArgs) -> anyhow::Result<Site> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<FileConfig>(&text).with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let r = file.retention;
    let interval_s = args.retention_interval_s.or(r.interval_s).unwrap_or(RETENTION_INTERVAL_S_DEFAULT);
    let lease_ttl_max_s =
        args.lease_ttl_max_s.or(file.lease_ttl_max_s).unwrap_or(pepper_adapters::LEASE_TTL_MAX_S_DEFAULT);
    if interval_s == 0 || lease_ttl_max_s == 0 {
        anyhow::bail!("retention interval_s and lease_ttl_max_s must be at least 1");
    }
    let stream_buffer_events = match args.stream_buffer_events.or(file.stream_buffer_events) {
        None => pepper_adapters::SUBSCRIBER_BUFFER_EVENTS,
        Some(n @ 1..=1_048_576) => usize::try_from(n).context("stream_buffer_events")?,
        Some(n) => anyhow::bail!("stream_buffer_events must be 1 to 1048576, not {n}"),
    };
    let listen = match args.listen.or(file.listen) {
        Some(l) => l,
        None => LISTEN_DEFAULT.parse().context("the default listen address")?,
    };
    let admin_token = admin_token(args.admin_token_file.or(file.admin_token_file))?;
    let peer_secret = peer_secret(args.peer_secret_file.or(file.peer_secret_file), file.peer_secret)?;
    if peer_secret.is_some()
        && peer_secret.as_deref() == admin_token.as_ref().map(pepper_adapters::auth::Secret::expose)
    {
        anyhow::bail!("the peer secret and the admin token must differ: a peer would be an admin");
    }
    let insecure = args.insecure || file.insecure.unwrap_or(false);
    if admin_token.is_none() && !listen.ip().is_loopback() && !insecure {
        anyhow::bail!(
            "refusing to serve on {listen} without auth: anyone who reaches it could publish, read and change \
             everything. Give an admin token (--admin-token-file FILE or PEPPER_ADMIN_TOKEN; docs/security.md), \
             listen on loopback, or pass --insecure on a closed network"
        );
    }
    let retention = Retention {
        log_max_age: args.log_max_age_s.or(r.log_max_age_s).map(Duration::from_secs),
        log_max_bytes: args.log_max_bytes.or(r.log_max_bytes),
        history_max_count: args.history_max_count.or(r.history_max_count),
        history_max_age: args.history_max_age_s.or(r.history_max_age_s).map(Duration::from_secs),
        history_rules: r
            .history
            .into_iter()
            .map(|rule| {
                pepper_router::Channel::parse(&rule.prefix)
                    .with_context(|| format!("retention.history prefix {:?}", rule.prefix))?;
                Ok(pepper_storage::HistoryRule {
                    prefix: rule.prefix,
                    max_count: rule.max_count,
                    max_age: rule.max_age_s.map(Duration::from_secs),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        tombstone_max_age: Some(Duration::from_secs(
            args.tombstone_max_age_s.or(r.tombstone_max_age_s).unwrap_or(TOMBSTONE_MAX_AGE_S_DEFAULT),
        )),
        interval: Duration::from_secs(interval_s),
        ..Retention::default()
    };
    let options = Options {
        site: args.site.or(file.site).unwrap_or_else(host_name),
        durability: args.durability.or(file.durability).unwrap_or(DurabilityArg::Sync).into(),
        retention,
        dedupe_window: args
            .dedupe_window_s
            .or(file.dedupe_window_s)
            .map_or(pepper_storage::DEDUPE_WINDOW_DEFAULT, Duration::from_secs),
    };
    let peers = if args.peers.is_empty() { file.peers } else { args.peers };
    let peers = peers
        .iter()
        .map(|p| match p.split_once('=') {
            Some((name, url)) if !name.is_empty() && !url.is_empty() => Ok((name.to_string(), url.to_string())),
            _ => anyhow::bail!("peer {p:?} must be NAME=URL"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let heartbeat_ms = args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(1000);
    if !(10..=60_000).contains(&heartbeat_ms) {
        anyhow::bail!("heartbeat_ms must be 10 to 60000, not {heartbeat_ms}");
    }
    let federation = pepper_adapters::federation::FederationConfig {
        region: args.region.or(file.region),
        url: args.url.or(file.url),
        peers,
        secret: peer_secret,
        heartbeat: Duration::from_millis(heartbeat_ms),
        // Loaded with the site (`Site::open`): the TLS files below, the
        // site key and the pinned keys from its data folder.
        tls: None,
        site_key: None,
        pinned: Vec::new(),
    };
    let record = if args.record.is_empty() { file.record } else { args.record };
    let policies = record
        .iter()
        .map(|r| pepper_adapters::supervisor::parse_policy(r).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let monitor_interval_ms = args.monitor_interval_ms.or(file.monitor_interval_ms).unwrap_or(1000);
    if !(10..=60_000).contains(&monitor_interval_ms) {
        anyhow::bail!("monitor_interval_ms must be 10 to 60000, not {monitor_interval_ms}");
    }
    let supervisor = pepper_adapters::supervisor::SupervisorConfig {
        policies,
        interval: Duration::from_millis(monitor_interval_ms),
    };
    let timeout_s = |what: &str, v: Option<u64>, default: Duration| match v {
        None => Ok(default),
        Some(s @ 1..=3600) => Ok(Duration::from_secs(s)),
        Some(s) => anyhow::bail!("{what} must be 1 to 3600, not {s}"),
    };
    let edge = pepper_adapters::EdgeConfig {
        allowed_hosts: if args.allowed_hosts.is_empty() { file.allowed_hosts } else { args.allowed_hosts },
        cors_origins: if args.cors_origins.is_empty() { file.cors_origins } else { args.cors_origins },
        body_read_timeout: timeout_s(
            "body_read_timeout_s",
            args.body_read_timeout_s.or(file.body_read_timeout_s),
            pepper_adapters::BODY_READ_TIMEOUT,
        )?,
    };
    edge.validate().map_err(anyhow::Error::msg)?;
    let server = pepper_adapters::ServerLimits {
        connections_max: match args.connections_max.or(file.connections_max) {
            None => pepper_adapters::CONNECTIONS_MAX,
            Some(n @ 1..=1_048_576) => usize::try_from(n).context("connections_max")?,
            Some(n) => anyhow::bail!("connections_max must be 1 to 1048576, not {n}"),
        },
        connections_per_ip_max: pepper_adapters::CONNECTIONS_PER_IP_MAX,
        header_read_timeout: timeout_s(
            "header_read_timeout_s",
            args.header_read_timeout_s.or(file.header_read_timeout_s),
            pepper_adapters::HEADER_READ_TIMEOUT,
        )?,
    };
    let tls =
        match (args.tls_cert.or(file.tls_cert), args.tls_key.or(file.tls_key), args.tls_peer_ca.or(file.tls_peer_ca)) {
            (Some(cert), Some(key), peer_ca) => Some(pepper_adapters::TlsFiles { cert, key, peer_ca }),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                anyhow::bail!("tls_peer_ca needs tls_cert and tls_key: peers verify this site too")
            }
            _ => anyhow::bail!("tls_cert and tls_key go together"),
        };
    Ok(Site {
        tls,
        data: args.data.or(file.data).unwrap_or_else(|| PathBuf::from(DATA_DEFAULT)),
        listen,
        options,
        api: pepper_adapters::ApiConfig {
            lease_ttl_max_s,
            stream_buffer_events,
            federation,
            supervisor,
            edge,
            admin_token,
            publish_rate: match args.publish_quota_per_s.or(file.publish_quota_per_s) {
                None => pepper_adapters::quota::PublishRate::default(),
                Some(n @ 1..=pepper_adapters::quota::PUBLISH_QUOTA_PER_S_MAX) => {
                    pepper_adapters::quota::PublishRate::new(n)
                }
                Some(n) => anyhow::bail!(
                    "publish_quota_per_s must be 1 to {}, not {n}",
                    pepper_adapters::quota::PUBLISH_QUOTA_PER_S_MAX
                ),
            },
        },
        agent: args.agent || file.agent.unwrap_or(false),
        insecure,
        server,
    })
}

/// Shortest admin token accepted, in characters: one a person types from
/// memory is guessable.
pub const ADMIN_TOKEN_CHARS_MIN: usize = 32;

/// A secret from the first line of `file`, or else the environment
/// variable `var`, with where it came from; `None` when neither is set.
///
/// # Errors
/// An unreadable file.
fn secret_from(file: Option<PathBuf>, var: &str, what: &str) -> anyhow::Result<Option<(String, String)>> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
            Ok(Some((text.lines().next().unwrap_or_default().trim().to_string(), path.display().to_string())))
        }
        None => Ok(std::env::var(var).ok().map(|s| (s.trim().to_string(), var.to_string()))),
    }
}

/// The peer secret: the first line of `file`, or `PEPPER_PEER_SECRET`, or
/// the config file's `peer_secret`; an empty one is none.
///
/// # Errors
/// An unreadable file.
fn peer_secret(file: Option<PathBuf>, in_config: Option<String>) -> anyhow::Result<Option<String>> {
    let found = secret_from(file, "PEPPER_PEER_SECRET", "peer secret")?.map(|(s, _)| s).or(in_config);
    let Some(secret) = found.filter(|s| !s.is_empty()) else { return Ok(None) };
    // It lets its holder forward records and read through federated
    // queries: as hard to guess as the admin token.
    if secret.chars().count() < ADMIN_TOKEN_CHARS_MIN || secret.chars().any(|c| c.is_control()) {
        anyhow::bail!(
            "the peer secret must be at least {ADMIN_TOKEN_CHARS_MIN} characters without control characters \
             (try: head -c 32 /dev/urandom | base64)"
        );
    }
    Ok(Some(secret))
}

/// The admin token: the first line of `file`, or else `PEPPER_ADMIN_TOKEN`.
///
/// # Errors
/// An unreadable file, or a token shorter than [`ADMIN_TOKEN_CHARS_MIN`].
fn admin_token(file: Option<PathBuf>) -> anyhow::Result<Option<pepper_adapters::auth::Secret>> {
    let Some((token, from)) = secret_from(file, "PEPPER_ADMIN_TOKEN", "admin token")? else { return Ok(None) };
    if token.chars().count() < ADMIN_TOKEN_CHARS_MIN || token.chars().any(|c| c.is_control()) {
        anyhow::bail!(
            "the admin token in {from} must be at least {ADMIN_TOKEN_CHARS_MIN} characters without control \
             characters (try: head -c 32 /dev/urandom | base64)"
        );
    }
    Ok(Some(pepper_adapters::auth::Secret::new(token)))
}

/// This machine's host name (the default site name and agent instance),
/// or `localhost` when it has none.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
