//! The `pepper` binary: one site per process.
//!
//! `pepper serve` opens the site's store and serves the HTTP API on loopback
//! by default; `pepper check` verifies a data folder offline. Configuration is
//! by flags (or `PEPPER_*` environment variables); the defaults are a single
//! site named after the host, with its data in `./pepper-data`, listening on
//! 127.0.0.1:7171.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pepper_storage::{Durability, Options, Retention, Store};

#[derive(Parser)]
#[command(
    name = "pepper",
    version,
    about = "Decentralized fleet management: durable pub/sub, node-state recall, federation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run this site: open the store and serve the HTTP API.
    Serve {
        /// Folder of the site's store; created if missing.
        #[arg(long, env = "PEPPER_DATA", default_value = "./pepper-data")]
        data: PathBuf,
        /// Address to listen on. Port 0 picks a free port; the chosen address
        /// is printed on stdout as `listening on http://ADDR`.
        #[arg(long, env = "PEPPER_LISTEN", default_value = "127.0.0.1:7171")]
        listen: SocketAddr,
        /// This site's name. Defaults to the host name.
        #[arg(long, env = "PEPPER_SITE")]
        site: Option<String>,
        /// When writes are acknowledged: `sync` (after the WAL is fsynced) or
        /// `buffered` (after it is written to the OS).
        #[arg(long, env = "PEPPER_DURABILITY", value_enum, default_value_t = DurabilityArg::Sync)]
        durability: DurabilityArg,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Check a data folder offline: record crcs, contiguous sequence numbers,
    /// and views that agree with the log. Exits non-zero on any problem.
    Check {
        /// Folder of the store to check.
        #[arg(long, env = "PEPPER_DATA", default_value = "./pepper-data")]
        data: PathBuf,
    },
}

/// Retention flags; each one left out keeps everything along its axis.
#[derive(clap::Args)]
struct RetentionArgs {
    /// Trim log records older than this many seconds.
    #[arg(long, env = "PEPPER_LOG_MAX_AGE_S")]
    log_max_age_s: Option<u64>,
    /// Trim the oldest log records while the log holds more than this many bytes.
    #[arg(long, env = "PEPPER_LOG_MAX_BYTES")]
    log_max_bytes: Option<u64>,
    /// Keep at most this many history rows per (channel, field).
    #[arg(long, env = "PEPPER_HISTORY_MAX_COUNT")]
    history_max_count: Option<u64>,
    /// Trim history rows older than this many seconds.
    #[arg(long, env = "PEPPER_HISTORY_MAX_AGE_S")]
    history_max_age_s: Option<u64>,
    /// Seconds between retention passes.
    #[arg(long, env = "PEPPER_RETENTION_INTERVAL_S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    retention_interval_s: u64,
}

impl From<RetentionArgs> for Retention {
    fn from(a: RetentionArgs) -> Retention {
        Retention {
            log_max_age: a.log_max_age_s.map(Duration::from_secs),
            log_max_bytes: a.log_max_bytes,
            history_max_count: a.history_max_count,
            history_max_age: a.history_max_age_s.map(Duration::from_secs),
            interval: Duration::from_secs(a.retention_interval_s),
            ..Retention::default()
        }
    }
}

/// The `--durability` values.
#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { data, listen, site, durability, retention } => {
            let options = Options {
                site: site.unwrap_or_else(host_name),
                durability: durability.into(),
                retention: retention.into(),
            };
            serve(data, listen, options)
        }
        Command::Check { data } => check(&data),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pepper: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(data: &std::path::Path) -> anyhow::Result<ExitCode> {
    let report = pepper_storage::check(data).with_context(|| format!("cannot check {}", data.display()))?;
    println!("{report}");
    Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn serve(data: PathBuf, listen: SocketAddr, options: Options) -> anyhow::Result<ExitCode> {
    let store = Store::open(&data, options).with_context(|| format!("cannot open the store in {}", data.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        tracing::info!(%addr, site = store.site(), data = %data.display(), "pepper serving");
        let app = pepper_adapters::router(pepper_adapters::AppState { store: store.clone() });
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
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
