//! `pepper agent`: publishes this host's state as PLDB attribute events.
//!
//! The agent reads files directly (under `--root`, `/` by default, so tests
//! point it at fixtures): `/proc/loadavg`, `/proc/meminfo`, `/proc/uptime`,
//! `/proc/stat` (boot time), `/proc/cpuinfo`, the kernel release and host
//! name under `/proc/sys/kernel/`, the dpkg status file, and the running
//! kernel image under `/boot` for its checksum. It shells out only for RPM,
//! whose database has no stable file format: `rpm -qa`, when there is an RPM
//! database and no dpkg status file.
//!
//! Everything goes on `/<authority>/node/<hostname>/`, with one tuple per
//! installed package on its `packages/` sub-channel (field: the package,
//! value: its version). The agent publishes only what changed since its
//! last round, every `interval`; every `refresh` it publishes everything
//! again, which refreshes the tuples' expiries (a repeated value adds no
//! history row). A package that disappears is deleted from PLDB. Values
//! that move all the time are published coarsely (uptime in whole minutes,
//! load averages as the kernel rounds them), so "on change" stays rare.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// Most events one publish request carries (the site's limit is 1,024).
const AGENT_BATCH_EVENTS: usize = 500;

/// One attribute: the sub-channel below the node's channel ("" or
/// "packages/"), the field and the value.
pub type Attribute = (String, String, String);

/// Where the agent reads the host's state from.
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// A host whose files live under `root` (`/` for this machine).
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    /// The host name, from the kernel.
    pub fn hostname(&self) -> String {
        self.read("proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(crate::host_name)
    }

    /// Every attribute the agent publishes, sorted. Files that are missing
    /// or unreadable leave their attributes out; nothing here fails.
    pub fn collect(&self) -> Vec<Attribute> {
        let mut out: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut put = |sub: &str, field: &str, value: String| {
            out.insert((sub.to_string(), field.to_string()), value);
        };
        if let Some(load) = self.read("proc/loadavg") {
            for (name, v) in ["load1", "load5", "load15"].iter().zip(load.split_whitespace()) {
                put("", name, v.to_string());
            }
        }
        if let Some(mem) = self.read("proc/meminfo") {
            for (key, field) in [
                ("MemTotal", "mem_total_kb"),
                ("MemAvailable", "mem_available_kb"),
                ("SwapTotal", "swap_total_kb"),
                ("SwapFree", "swap_free_kb"),
            ] {
                if let Some(v) = meminfo_kb(&mem, key) {
                    put("", field, v.to_string());
                }
            }
        }
        if let Some(uptime) = self.read("proc/uptime") {
            if let Some(secs) = uptime.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()) {
                put("", "uptime_min", ((secs / 60.0).floor() as u64).to_string());
            }
        }
        if let Some(btime) = self.read("proc/stat").and_then(|s| stat_btime(&s)) {
            put("", "boot_time", btime.to_string());
        }
        if let Some(cpuinfo) = self.read("proc/cpuinfo") {
            let n = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
            if n > 0 {
                put("", "cpus", n.to_string());
            }
        }
        let release = self.read("proc/sys/kernel/osrelease").map(|s| s.trim().to_string());
        if let Some(release) = &release {
            put("", "kernel", release.clone());
            if let Some(sum) = self.file_sha256(&format!("boot/vmlinuz-{release}")) {
                put("", "kernel_sha256", sum);
            }
        }
        let packages = match self.read("var/lib/dpkg/status") {
            Some(status) => Some(("dpkg", dpkg_installed(&status))),
            None if self.path("var/lib/rpm").is_dir() && self.root == Path::new("/") => {
                rpm_installed().map(|p| ("rpm", p))
            }
            None => None,
        };
        if let Some((manager, packages)) = packages {
            put("", "package_manager", manager.to_string());
            put("", "packages", packages.len().to_string());
            put("", "packages_sha256", packages_digest(&packages));
            for (name, version) in packages {
                put("packages/", &name, version);
            }
        }
        out.into_iter().map(|((sub, field), value)| (sub, field, value)).collect()
    }

    fn file_sha256(&self, rel: &str) -> Option<String> {
        let mut file = std::fs::File::open(self.path(rel)).ok()?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).ok()?;
        Some(hex(&hasher.finalize()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `/proc/meminfo` value in kB.
fn meminfo_kb(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The boot time (seconds since the epoch) from `/proc/stat`.
fn stat_btime(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// Installed packages (name, version) from a dpkg status file: stanzas
/// whose `Status` is `install ok installed`. Architecture-qualified names
/// (`libc6:amd64`) keep their qualifier when dpkg has one.
pub fn dpkg_installed(status: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stanza in status.split("\n\n") {
        let (mut name, mut version, mut installed, mut arch) = (None, None, false, None);
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim() == "install ok installed";
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            }
        }
        if let (Some(name), Some(version), true) = (name, version, installed) {
            let key = match arch {
                Some(a) if a != "all" && out.contains_key(name) => format!("{name}:{a}"),
                _ => name.to_string(),
            };
            out.insert(key, version.to_string());
        }
    }
    out
}

/// Installed RPM packages, from `rpm -qa` (the one place the agent shells
/// out: the RPM database is not a file format meant for other readers).
fn rpm_installed() -> Option<BTreeMap<String, String>> {
    let out = std::process::Command::new("rpm").args(["-qa", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\\n"]).output();
    let out = out.ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().filter_map(|l| l.split_once(' ')).map(|(n, v)| (n.to_string(), v.to_string())).collect())
}

/// A digest of the installed set: SHA-256 over `name=version\n`, in name
/// order, so two hosts with the same packages have the same digest.
fn packages_digest(packages: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, version) in packages {
        hasher.update(format!("{name}={version}\n").as_bytes());
    }
    hex(&hasher.finalize())
}

/// The agent's settings.
pub struct AgentConfig {
    /// The site, such as `http://127.0.0.1:7171`.
    pub server: String,
    /// The token and TLS trust to reach the site with.
    pub access: crate::Access,
    /// The naming authority of the node channels.
    pub authority: String,
    /// How often to look for changes.
    pub interval: Duration,
    /// The expiry given to every value, in seconds.
    pub expire_s: u64,
    /// Where the host's files are.
    pub root: PathBuf,
}

/// The agent: what it last published, and where.
struct Agent {
    http: reqwest::blocking::Client,
    config: AgentConfig,
    channel: String,
    published: BTreeMap<(String, String), String>,
    refreshed: Option<Instant>,
}

impl Agent {
    /// One round: publish what changed (or everything, when a refresh is
    /// due) and delete what disappeared. Returns how many values it sent.
    fn round(&mut self, host: &Host) -> anyhow::Result<usize> {
        let now = host.collect();
        let refresh = self
            .refreshed
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.config.expire_s / 3).max(self.config.interval));
        let mut events = Vec::new();
        let mut current = BTreeMap::new();
        for (sub, field, value) in now {
            let key = (sub.clone(), field.clone());
            if refresh || self.published.get(&key) != Some(&value) {
                events.push(serde_json::json!({
                    "channel": format!("{}{sub}", self.channel),
                    "type": "attribute",
                    "from": { "service": "pepper-agent", "instance": host.hostname() },
                    "payload": { "field": field, "value": value, "expire": self.config.expire_s },
                }));
            }
            current.insert(key, value);
        }
        let url = format!("{}/v1/events", self.config.server.trim_end_matches('/'));
        for chunk in events.chunks(AGENT_BATCH_EVENTS) {
            let res = self.http.post(&url).json(chunk).send().with_context(|| format!("cannot reach {url}"))?;
            anyhow::ensure!(res.status().is_success(), "publishing to {url}: {}", res.text().unwrap_or_default());
        }
        for (sub, field) in self.published.keys().filter(|k| !current.contains_key(*k)) {
            let url = format!("{}/v1/tuples", self.config.server.trim_end_matches('/'));
            let channel = format!("{}{sub}", self.channel);
            // 404: it already expired; either way it is gone.
            self.http.delete(&url).query(&[("channel", channel.as_str()), ("field", field.as_str())]).send()?;
        }
        if refresh {
            self.refreshed = Some(Instant::now());
        }
        self.published = current;
        Ok(events.len())
    }
}

/// Runs the agent until the process ends. A failed round is logged and
/// retried on the next interval.
pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    // Values must outlive at least two rounds, or they would expire between
    // refreshes and come back as new history every time.
    anyhow::ensure!(
        config.expire_s >= 2 * config.interval.as_secs(),
        "--expire-s ({}) must be at least twice --interval-s ({})",
        config.expire_s,
        config.interval.as_secs()
    );
    let host = Host::new(&config.root);
    let channel = format!("/{}/node/{}/", config.authority, host.hostname());
    pepper_router::Channel::parse(&channel).with_context(|| format!("the node channel {channel} is not valid"))?;
    tracing::info!(%channel, server = %config.server, "agent publishing");
    let http = crate::http_client(&config.access, Some(Duration::from_secs(30)))?;
    let interval = config.interval;
    let mut agent = Agent { http, config, channel, published: BTreeMap::new(), refreshed: None };
    loop {
        match agent.round(&host) {
            Ok(n) if n > 0 => tracing::debug!(values = n, "agent published"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "agent round failed; retrying"),
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("proc/loadavg", "0.52 0.58 0.59 2/1200 12345\n");
        write("proc/meminfo", "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n");
        write("proc/uptime", "3725.41 7000.00\n");
        write("proc/stat", "cpu  1 2 3\nbtime 1795770000\nprocesses 10\n");
        write("proc/cpuinfo", "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nmodel name\t: x\n");
        write("proc/sys/kernel/osrelease", "6.1.0-test\n");
        write("proc/sys/kernel/hostname", "node-7\n");
        write("boot/vmlinuz-6.1.0-test", "kernel image bytes");
        write(
            "var/lib/dpkg/status",
            "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2\n\n\
             Package: removed-one\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
             Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n",
        );
        dir
    }

    #[test]
    fn collects_host_state_from_fixture_files() {
        let dir = fixture();
        let host = Host::new(dir.path());
        assert_eq!(host.hostname(), "node-7");
        let got: BTreeMap<(String, String), String> = host.collect().into_iter().map(|(s, f, v)| ((s, f), v)).collect();
        let v = |sub: &str, f: &str| got.get(&(sub.to_string(), f.to_string())).cloned();
        assert_eq!(v("", "load1").as_deref(), Some("0.52"));
        assert_eq!(v("", "load15").as_deref(), Some("0.59"));
        assert_eq!(v("", "mem_total_kb").as_deref(), Some("24576000"));
        assert_eq!(v("", "mem_available_kb").as_deref(), Some("20000000"));
        assert_eq!(v("", "uptime_min").as_deref(), Some("62"));
        assert_eq!(v("", "boot_time").as_deref(), Some("1795770000"));
        assert_eq!(v("", "cpus").as_deref(), Some("2"));
        assert_eq!(v("", "kernel").as_deref(), Some("6.1.0-test"));
        let want = hex(&Sha256::digest(b"kernel image bytes"));
        assert_eq!(v("", "kernel_sha256"), Some(want));
        assert_eq!(v("", "packages").as_deref(), Some("2"), "only installed packages count");
        assert_eq!(v("packages/", "bash").as_deref(), Some("5.2.15-2"));
        assert_eq!(v("packages/", "libc6").as_deref(), Some("2.36-9"));
        assert_eq!(v("packages/", "removed-one"), None);
        assert_eq!(v("", "packages_sha256").map(|s| s.len()), Some(64));
        assert_eq!(v("", "package_manager").as_deref(), Some("dpkg"));
    }

    #[test]
    fn missing_files_leave_their_attributes_out() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Host::new(dir.path()).collect().is_empty());
    }

    #[test]
    fn the_package_digest_depends_on_names_and_versions_only() {
        let a = dpkg_installed("Package: a\nStatus: install ok installed\nVersion: 1\n");
        let b = dpkg_installed("Version: 1\nStatus: install ok installed\nPackage: a\n");
        assert_eq!(packages_digest(&a), packages_digest(&b));
        let c = dpkg_installed("Package: a\nStatus: install ok installed\nVersion: 2\n");
        assert_ne!(packages_digest(&a), packages_digest(&c));
    }
}
