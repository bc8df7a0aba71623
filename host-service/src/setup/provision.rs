//! `taos-host setup`: provisions the machine, one step at a time, each safe to run again.
//!
//! Every step first looks whether its work is already there (and then says "already done"),
//! does it otherwise, and ends in an [`Outcome`]. A step that cannot be done here (no PyPI, no
//! incus package, no image file) says why in words and the others go on; a step that fails
//! outright makes setup exit non-zero at the end. What each step ended in is kept in
//! `<data dir>/setup.json` (the record `--check`-style questions and support read later).
//!
//! Every program is run with an argv vector, never through a shell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::net;
use crate::config::{self, Config};
use crate::host_firewall;

/// The steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Incus,
    Litellm,
    AgentImage,
    Firewall,
    /// Only after `setup --restore-from`: the backup's agents' containers, imported into the
    /// runtime the steps above made, before the service starts (not in [`Step::ALL`]).
    Containers,
    Service,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Incus,
        Step::Litellm,
        Step::AgentImage,
        Step::Firewall,
        Step::Service,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Step::Incus => "incus (agents' subnets, btrfs storage pool)",
            Step::Litellm => "LiteLLM (its own venv and user)",
            Step::AgentImage => "the agent image",
            Step::Firewall => "the firewall",
            Step::Containers => "the restored agents' containers",
            Step::Service => "the service",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// Done now.
    Done(String),
    /// Found done; nothing was changed.
    AlreadyDone(String),
    /// Can't be done on this machine now; the reason and what to do, in words. Setup goes on.
    NotDone(String),
    /// Went wrong; setup goes on with what does not depend on it and exits non-zero.
    Failed(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::AlreadyDone(_) => "already done",
            Outcome::NotDone(_) => "not provisioned",
            Outcome::Failed(_) => "FAILED",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Outcome::Done(d)
            | Outcome::AlreadyDone(d)
            | Outcome::NotDone(d)
            | Outcome::Failed(d) => d,
        }
    }

    fn is_provisioned(&self) -> bool {
        matches!(self, Outcome::Done(_) | Outcome::AlreadyDone(_))
    }
}

/// What setup was told on its command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A partition (or disk) for the btrfs storage pool instead of a loop file.
    pub pool_device: Option<PathBuf>,
    /// The agent image's unified tarball; default: [`default_image_path`].
    pub agent_image: Option<PathBuf>,
    /// Never add bookworm-backports to apt's sources (the incus step then needs incus from
    /// the sources there are).
    pub no_backports: bool,
}

/// `<data dir>/setup.json`: each step's last outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub steps: BTreeMap<Step, RecordedStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedStep {
    #[serde(flatten)]
    pub outcome: Outcome,
    pub at: String,
}

pub const RECORD_FILE: &str = "setup.json";

pub fn read_record(data_dir: &Path) -> Record {
    std::fs::read(data_dir.join(RECORD_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_record(data_dir: &Path, record: &Record) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&data_dir.join(RECORD_FILE), &text)
}

/// The agent image's alias: what deploys launch (`agents::deploy`).
pub const AGENT_IMAGE_ALIAS: &str = "taos-agent";
/// The LiteLLM venv the host finds by default (`llm::supervisor::find_litellm`).
pub const LITELLM_PREFIX: &str = "/opt/taos/litellm";
/// Pinned as in scripts/dev-litellm.sh (keep the two equal): the proxy extra lacks `prisma`,
/// without which LiteLLM answers a keyless request with 500 instead of 401.
pub const LITELLM_VERSION: &str = "1.108.7";
pub const PRISMA_VERSION: &str = "0.15.0";

/// Debian's name for this machine's architecture.
pub fn deb_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86_64" => "amd64",
        other => other,
    }
}

/// Where the image packages (taos-<image>-image_<version>_<arch>.deb) put their images.
pub const IMAGES_DIR: &str = "/usr/share/taos-host/images";

/// Where the package (or the person installing) puts the agent image for this architecture.
pub fn default_image_path() -> PathBuf {
    Path::new(IMAGES_DIR).join(format!("taos-agent_{}.tar.gz", deb_arch()))
}

/// The framework images (each built-in manifest's image other than the agent image: taos-openclaw,
/// taos-opencode) whose packages put them in `dir` for `arch`, as `<alias>_<arch>.tar.zst` (how
/// scripts/build-image-deb.sh packs them) or `.tar.gz`, with their aliases. The packages are
/// optional: a framework whose image is not here is simply not imported.
pub fn framework_image_files(dir: &Path, arch: &str) -> Vec<(String, PathBuf)> {
    let mut aliases: Vec<String> = crate::agents::frameworks::all()
        .into_iter()
        .map(|m| m.image)
        .filter(|image| image != AGENT_IMAGE_ALIAS)
        .collect();
    aliases.sort();
    aliases.dedup();
    aliases
        .into_iter()
        .filter_map(|alias| {
            ["tar.zst", "tar.gz"]
                .iter()
                .map(|ext| dir.join(format!("{alias}_{arch}.{ext}")))
                .find(|file| file.is_file())
                .map(|file| (alias, file))
        })
        .collect()
}

/// One step's outcome from several (the agent image and the framework images): the worst of
/// them (failed, then not provisioned, then done), with each one's words once.
fn combine(outcomes: &[Outcome]) -> Outcome {
    let rank = |o: &Outcome| match o {
        Outcome::Failed(_) => 3,
        Outcome::NotDone(_) => 2,
        Outcome::Done(_) => 1,
        Outcome::AlreadyDone(_) => 0,
    };
    let mut words: Vec<&str> = Vec::new();
    for o in outcomes {
        if !words.contains(&o.detail()) {
            words.push(o.detail());
        }
    }
    let words = words.join("; ");
    match outcomes.iter().map(rank).max() {
        Some(3) => Outcome::Failed(words),
        Some(2) => Outcome::NotDone(words),
        Some(1) => Outcome::Done(words),
        _ => Outcome::AlreadyDone(words),
    }
}

/// The loop file's size: half the free disk, between 2 and 100 GiB (the file is sparse; the
/// size is the ceiling agents' disks share).
pub fn pool_size_gib(free_mib: u64) -> u64 {
    (free_mib / 2 / 1024).clamp(2, 100)
}

/// A program's run: success, or its words.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    let tail: Vec<&str> = text.lines().rev().take(6).collect();
    Err(format!(
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const APT_ENV: &[(&str, &str)] = &[("DEBIAN_FRONTEND", "noninteractive")];

/// Whether apt has a version of `package` to install (from the sources as configured).
fn apt_has(package: &str) -> bool {
    run("apt-cache", &["policy", package], &[]).is_ok_and(|text| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .is_some_and(|c| c.trim() != "(none)")
    })
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run("apt-get", &args, APT_ENV).map(|_| ())
}

fn systemd_runs() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// incus: the daemon (installed from apt when missing and installable), the agents' bridges'
/// subnets (fixed, checked against this machine's addresses and routes, written to the
/// config; the host makes the bridges at start) and the btrfs storage pool for their disks.
pub struct IncusStep<'a> {
    pub socket: &'a str,
    pub pool: &'a str,
    pub pool_device: Option<&'a Path>,
    pub free_disk_mib: u64,
    pub no_backports: bool,
}

impl IncusStep<'_> {
    pub async fn run(&self, data_dir: &Path, config: &Config) -> Outcome {
        let mut did = Vec::new();
        let client = crate::runtime::incus::Incus::new(self.socket, None, "default");
        if !client.available().await {
            match install_incus(self.no_backports) {
                Ok(words) => did.push(words),
                Err(outcome) => return outcome,
            }
            if !client.available().await {
                return Outcome::Failed(format!(
                    "incus was installed but its socket {} does not answer; see `journalctl -u \
                     incus`",
                    self.socket
                ));
            }
        }
        match choose_agent_subnets(config) {
            Ok(chosen) => {
                let current = [
                    config.runtime.incus_internet_subnet.as_str(),
                    config.runtime.incus_lan_subnet.as_str(),
                ];
                for ((key, was), now) in
                    ["runtime.incus_internet_subnet", "runtime.incus_lan_subnet"]
                        .iter()
                        .zip(current)
                        .zip(&chosen)
                {
                    if was != now {
                        if let Err(e) = config::set_key(data_dir, key, now) {
                            return Outcome::Failed(format!("cannot write {key}: {e}"));
                        }
                        did.push(format!(
                            "{key} {was} collides with this machine's networks: set to {now}"
                        ));
                    }
                }
                if did.is_empty() {
                    did.push(String::new());
                }
                let subnets = format!("agents' bridges {} and {}", chosen[0], chosen[1]);
                match self.ensure_pool() {
                    Ok((changed, words)) => {
                        let changed = changed || did.iter().any(|d| !d.is_empty());
                        did.retain(|d| !d.is_empty());
                        did.push(subnets);
                        did.push(words);
                        if changed {
                            Outcome::Done(did.join("; "))
                        } else {
                            Outcome::AlreadyDone(did.join("; "))
                        }
                    }
                    Err(e) => Outcome::Failed(e),
                }
            }
            Err(e) => Outcome::Failed(e),
        }
    }

    /// The storage pool: made when missing (btrfs, on a loop file or `pool_device`); an
    /// existing one is left as it is. Returns whether it made it, and words.
    pub fn ensure_pool(&self) -> Result<(bool, String), String> {
        if let Ok(text) = run("incus", &["storage", "show", self.pool], &[]) {
            let driver = text
                .lines()
                .find_map(|l| l.strip_prefix("driver:"))
                .map(|d| d.trim().to_string())
                .unwrap_or_default();
            let note = if driver == "btrfs" {
                "agents' disk quotas are enforced".to_string()
            } else {
                format!(
                    "its driver is {driver}, which does not enforce agents' disk quotas; setup \
                     leaves an existing pool alone"
                )
            };
            return Ok((false, format!("storage pool {} exists ({note})", self.pool)));
        }
        if !succeeds("mkfs.btrfs", &["--version"]) {
            apt_install(&["btrfs-progs"])
                .map_err(|e| format!("the btrfs pool needs btrfs-progs: {e}"))?;
        }
        let source = match self.pool_device {
            Some(device) => format!("source={}", device.display()),
            None => format!("size={}GiB", pool_size_gib(self.free_disk_mib)),
        };
        run(
            "incus",
            &["storage", "create", self.pool, "btrfs", &source],
            &[],
        )?;
        Ok((
            true,
            format!(
                "created the btrfs storage pool {} ({})",
                self.pool,
                match self.pool_device {
                    Some(d) => format!("on {}", d.display()),
                    None => format!(
                        "a {} GiB loop file under /var/lib/incus/disks",
                        pool_size_gib(self.free_disk_mib)
                    ),
                }
            ),
        ))
    }
}

fn choose_agent_subnets(config: &Config) -> Result<Vec<String>, String> {
    let routes = net::gather_routes()?;
    let taken = net::taken_ranges(&net::gather_addresses(), &routes);
    net::choose_subnets(
        &[
            &config.runtime.incus_internet_subnet,
            &config.runtime.incus_lan_subnet,
        ],
        net::SUBNET_CANDIDATES,
        &taken,
    )
    .map_err(|e| e.to_string())
}

/// Where setup adds Debian 12's backports, the only place incus is packaged for it.
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/taos-bookworm-backports.list";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// The apt source line for bookworm-backports when this is Debian 12 (or Raspberry Pi OS on
/// it), from the same mirror as its bookworm sources; `None` on any other system. `sources`
/// are the texts of sources.list and sources.list.d/*.list and *.sources (one-line and deb822).
fn backports_line(os_release: &str, sources: &[String]) -> Option<String> {
    let field = |name: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    let id = field("ID").unwrap_or_default();
    let like = field("ID_LIKE").unwrap_or_default();
    let debian = id == "debian" || id == "raspbian" || like.split(' ').any(|l| l == "debian");
    if !debian || field("VERSION_CODENAME").as_deref() != Some("bookworm") {
        return None;
    }
    let mirror = sources
        .iter()
        .find_map(|text| bookworm_mirror(text))
        .unwrap_or_else(|| DEBIAN_MIRROR.to_string());
    Some(format!("deb {mirror} bookworm-backports main\n"))
}

/// The URI of a Debian `bookworm` main source in one sources file, either format.
fn bookworm_mirror(text: &str) -> Option<String> {
    let usable = |uri: &str| {
        (uri.starts_with("http://") || uri.starts_with("https://"))
            && !uri.contains("security")
            && !uri.contains("raspberrypi")
    };
    // One-line: `deb [options] URI SUITE COMPONENT...`.
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let close = rest.iter().position(|w| w.ends_with(']'))?;
            rest.drain(..=close);
        }
        if let [uri, "bookworm", ..] = rest.as_slice() {
            if usable(uri) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    // deb822: stanzas of `Types:`, `URIs:`, `Suites:`.
    for stanza in text.split("\n\n") {
        let value = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key).map(str::trim))
                .unwrap_or("")
        };
        let types = value("Types:");
        let suites = value("Suites:");
        if types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == "bookworm")
        {
            if let Some(uri) = value("URIs:").split_whitespace().find(|u| usable(u)) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// On Debian 12 without incus in its sources: adds bookworm-backports (pinned below stable by
/// Debian itself, so only what is asked for comes from it) and refreshes apt's lists.
/// `Ok(None)`: not Debian 12, nothing changed.
fn enable_backports() -> Result<Option<String>, String> {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let mut sources = Vec::new();
    sources.extend(std::fs::read_to_string("/etc/apt/sources.list").ok());
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        sources.extend(
            files
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
                .filter_map(|p| std::fs::read_to_string(p).ok()),
        );
    }
    let Some(line) = backports_line(&os_release, &sources) else {
        return Ok(None);
    };
    crate::fsutil::write_atomic(Path::new(BACKPORTS_LIST), line.as_bytes())
        .map_err(|e| format!("cannot write {BACKPORTS_LIST}: {e}"))?;
    run("apt-get", &["update", "-q"], APT_ENV)?;
    Ok(Some(format!(
        "added bookworm-backports to apt's sources ({BACKPORTS_LIST}: {})",
        line.trim()
    )))
}

/// incus from apt, started by systemd. No `incus admin init`: the host makes its own bridges
/// and profile, setup makes the pool, so nothing probes for a free subnet.
fn install_incus(no_backports: bool) -> Result<String, Outcome> {
    let mut did = Vec::new();
    if !no_backports && !apt_has("incus-base") && !apt_has("incus") {
        match enable_backports() {
            Ok(Some(words)) => did.push(words),
            Ok(None) => {}
            Err(e) => return Err(Outcome::Failed(e)),
        }
    }
    if !apt_has("incus-base") && !apt_has("incus") {
        return Err(Outcome::NotDone(
            "incus is not running and this machine's apt sources have no incus package (Debian \
             12 gets it from bookworm-backports, which setup adds unless told --no-backports; \
             Debian 13 and Ubuntu 24.04 have it). Agents need incus (or Docker with \
             userns-remap, without disk quotas); run setup again once it can be installed"
                .to_string(),
        ));
    }
    let package = if apt_has("incus-base") {
        "incus-base"
    } else {
        "incus"
    };
    if let Err(e) = apt_install(&[package, "dnsmasq-base", "btrfs-progs"]) {
        return Err(Outcome::Failed(format!("cannot install incus: {e}")));
    }
    if !systemd_runs() {
        return Err(Outcome::NotDone(
            "incus is installed, but systemd is not running here to start it; start incusd \
             and run setup again"
                .to_string(),
        ));
    }
    run(
        "systemctl",
        &["enable", "--now", "incus.socket", "incus.service"],
        &[],
    )
    .map_err(|e| Outcome::Failed(format!("cannot start incus: {e}")))?;
    run("incus", &["admin", "waitready", "--timeout=60"], &[])
        .map_err(|e| Outcome::Failed(format!("incus did not get ready: {e}")))?;
    did.push(format!("installed and started {package}"));
    Ok(did.join("; "))
}

/// LiteLLM in its own venv at [`LITELLM_PREFIX`], runnable by its own user.
pub fn litellm(user: &str) -> Outcome {
    let prefix = Path::new(LITELLM_PREFIX);
    let mut did = Vec::new();
    if !succeeds("getent", &["passwd", user]) {
        if let Err(e) = run(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "taos LiteLLM",
                user,
            ],
            &[],
        ) {
            return Outcome::Failed(format!("cannot create the user {user}: {e}"));
        }
        did.push(format!("created the system user {user}"));
    }
    let stamp = prefix.join(format!(
        ".taos-installed-{LITELLM_VERSION}-{PRISMA_VERSION}"
    ));
    let python = prefix.join("bin/python3");
    let python_text = python.to_string_lossy().into_owned();
    let usable = || {
        succeeds(
            "runuser",
            &[
                "-u",
                user,
                "--",
                "env",
                "-i",
                "HOME=/tmp",
                "LITELLM_LOCAL_MODEL_COST_MAP=True",
                &python_text,
                "-c",
                "import litellm",
            ],
        )
    };
    if stamp.exists() && prefix.join("bin/litellm").exists() && usable() {
        did.push(format!(
            "LiteLLM {LITELLM_VERSION} is in {}, runnable by {user}",
            prefix.display()
        ));
        return Outcome::AlreadyDone(did.join("; "));
    }
    if !succeeds("/usr/bin/python3", &["-c", "import ensurepip, venv"]) {
        if let Err(e) = apt_install(&["python3-venv"]) {
            return Outcome::NotDone(format!(
                "LiteLLM needs Python's venv (python3-venv), which could not be installed: {e}"
            ));
        }
    }
    let prefix_text = prefix.to_string_lossy().into_owned();
    if let Err(e) = run(
        "/usr/bin/python3",
        &["-m", "venv", "--clear", &prefix_text],
        &[],
    ) {
        return Outcome::Failed(format!("cannot make the venv: {e}"));
    }
    let pip = prefix.join("bin/pip").to_string_lossy().into_owned();
    let litellm = format!("litellm[proxy]=={LITELLM_VERSION}");
    let prisma = format!("prisma=={PRISMA_VERSION}");
    if let Err(e) = run(
        &pip,
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--timeout",
            "30",
            &litellm,
            &prisma,
        ],
        &[],
    ) {
        let words = if e.contains("NewConnectionError")
            || e.contains("Could not find a version")
            || e.contains("Temporary failure in name resolution")
            || e.contains("No matching distribution")
        {
            "pip could not reach PyPI (the Python package index)"
        } else {
            "pip could not install LiteLLM"
        };
        return Outcome::NotDone(format!(
            "{words}, so LiteLLM is not installed and LLM calls stay off; run `sudo taos-host \
             setup` again once this machine reaches PyPI. pip said: {e}"
        ));
    }
    if !usable() {
        return Outcome::Failed(format!(
            "LiteLLM is in {} but {user} cannot run it",
            prefix.display()
        ));
    }
    if let Err(e) = std::fs::write(&stamp, b"") {
        return Outcome::Failed(format!("cannot write {}: {e}", stamp.display()));
    }
    did.push(format!(
        "installed LiteLLM {LITELLM_VERSION} into {}",
        prefix.display()
    ));
    Outcome::Done(did.join("; "))
}

/// An image, imported from a file as `alias` ([`AGENT_IMAGE_ALIAS`], or a framework image from
/// [`framework_image_files`]; never built here). A unified tarball's sha256 is its incus
/// fingerprint, so a newer file (the taos-<image>-image package upgraded) replaces the image
/// under the alias; agents already deployed keep theirs (a container is a copy), new deploys
/// get the new one.
pub async fn agent_image(socket: &str, file: &Path, alias: &str) -> Outcome {
    let client = crate::runtime::incus::Incus::new(socket, None, "default");
    if !client.available().await {
        return Outcome::NotDone(
            "no incus, so no agent image to import (see the incus step)".to_string(),
        );
    }
    let current = image_fingerprint(alias);
    if !file.is_file() {
        if current.is_some() {
            return Outcome::AlreadyDone(format!(
                "incus has the image {alias} (there is no image file at {} to compare)",
                file.display()
            ));
        }
        return Outcome::NotDone(format!(
            "no agent image file at {}: install the taos-agent-image package for this machine \
             (`sudo apt install ./taos-agent-image_<version>_<arch>.deb`) and run setup again, \
             or build an image with scripts/build-agent-image.sh (from the taos repository) \
             and run `sudo taos-host setup --agent-image FILE`",
            file.display()
        ));
    }
    let wanted = match sha256_file(file) {
        Ok(sum) => sum,
        Err(e) => return Outcome::Failed(format!("cannot read {}: {e}", file.display())),
    };
    if current.as_deref() == Some(wanted.as_str()) {
        return Outcome::AlreadyDone(format!(
            "incus has the image {alias} from {}",
            file.display()
        ));
    }
    match replace_image(file, &wanted, alias, current.as_deref()) {
        Ok(words) => Outcome::Done(words),
        Err(e) => Outcome::Failed(format!("cannot import the image {alias}: {e}")),
    }
}

/// The image step: each `(alias, file)` imported by [`agent_image`], in order (the agent image
/// first, then the framework images found by [`framework_image_files`]), as one outcome
/// ([`combine`]). With the agent image alone it is that import's outcome, unchanged.
pub async fn image_step(socket: &str, images: &[(String, PathBuf)]) -> Outcome {
    let mut imports = Vec::with_capacity(images.len());
    for (alias, file) in images {
        imports.push(agent_image(socket, file, alias).await);
    }
    combine(&imports)
}

/// The fingerprint of the image `alias` names in incus's default project, if any.
fn image_fingerprint(alias: &str) -> Option<String> {
    let text = run("incus", &["image", "info", alias], &[]).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Fingerprint:"))
        .map(|f| f.trim().to_string())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Imports `file` (fingerprint `wanted`) and points `alias` at it, then deletes the image the
/// alias named before (`old`): nothing runs from it, and it holds ~150 MB.
fn replace_image(
    file: &Path,
    wanted: &str,
    alias: &str,
    old: Option<&str>,
) -> Result<String, String> {
    let file_text = file.to_string_lossy().into_owned();
    // Imported earlier without the alias (a run stopped half-way): not imported twice.
    if run("incus", &["image", "info", wanted], &[]).is_err() {
        run("incus", &["image", "import", &file_text], &[])?;
    }
    if old.is_some() {
        run("incus", &["image", "alias", "delete", alias], &[])?;
    }
    run("incus", &["image", "alias", "create", alias, wanted], &[])?;
    let mut words = format!("imported {} as {alias}", file.display());
    if let Some(old) = old {
        let short = &old[..old.len().min(12)];
        match run("incus", &["image", "delete", old], &[]) {
            Ok(_) => words.push_str(&format!(" (replacing image {short}, now deleted)")),
            Err(e) => words.push_str(&format!(" (replacing image {short}, not deleted: {e})")),
        }
    }
    Ok(words)
}

/// The networks the public port opens to: `[firewall] lan`, else this machine's own networks,
/// else the private ranges.
pub fn firewall_lan(config: &Config) -> (Vec<String>, &'static str) {
    if !config.firewall.lan.is_empty() {
        return (config.firewall.lan.clone(), "from [firewall] lan");
    }
    let derived: Vec<String> = net::derive_lan(&net::gather_addresses())
        .iter()
        .map(ToString::to_string)
        .collect();
    if derived.is_empty() {
        let default = host_firewall::DEFAULT_LAN
            .iter()
            .map(ToString::to_string)
            .collect();
        return (default, "no network interface found: the private ranges");
    }
    (derived, NETWORKS_SOURCE)
}

/// What [`firewall_lan`] says when the LAN is this machine's own networks.
const NETWORKS_SOURCE: &str = "this machine's networks";

pub fn firewall(data_dir: &Path, config: &Config) -> Outcome {
    let (lan, source) = firewall_lan(config);
    let plan = match host_firewall::Plan::new(
        config.server.bind.port(),
        config.server.agent_bind.port(),
        &lan,
    ) {
        Ok(plan) if source == NETWORKS_SOURCE => plan.following_networks(),
        Ok(plan) => plan,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let words = format!(
        "table inet {}: port {} open to {} ({source}); port {} to agents only",
        host_firewall::TABLE,
        plan.public_port,
        lan.join(", "),
        plan.agent_port
    );
    let saved = std::fs::read_to_string(host_firewall::rules_path(data_dir)).unwrap_or_default();
    if !succeeds("nft", &["--version"]) {
        if let Err(e) = apt_install(&["nftables"]) {
            return Outcome::NotDone(format!(
                "the firewall needs nft (the nftables package), which could not be installed: {e}"
            ));
        }
    }
    if saved == host_firewall::ruleset(&plan)
        && succeeds("nft", &["list", "table", "inet", host_firewall::TABLE])
    {
        return Outcome::AlreadyDone(words);
    }
    match host_firewall::apply(data_dir, &plan) {
        Ok(_) => Outcome::Done(words),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

const UNIT: &str = "taos-host.service";

/// Enables and starts the service (restarts it when an earlier step changed what it reads at
/// start), then waits for /api/health.
pub async fn service(data_dir: &Path, config: &Config, restart: bool) -> Outcome {
    if !systemd_runs() {
        return Outcome::NotDone(format!(
            "systemd is not running on this machine, so {UNIT} can't be started; start the \
             host with `taos-host --data-dir {} serve`",
            data_dir.display()
        ));
    }
    let mut did = Vec::new();
    if !succeeds("systemctl", &["is-enabled", "--quiet", UNIT]) {
        if let Err(e) = run("systemctl", &["enable", UNIT], &[]) {
            return Outcome::Failed(e);
        }
        did.push("enabled (starts at boot)");
    }
    let action = if !succeeds("systemctl", &["is-active", "--quiet", UNIT]) {
        Some(("start", "started"))
    } else if restart {
        Some((
            "restart",
            "restarted (earlier steps changed what it reads at start)",
        ))
    } else {
        None
    };
    if let Some((verb, words)) = action {
        if let Err(e) = run("systemctl", &[verb, UNIT], &[]) {
            return Outcome::Failed(format!("{e}; see `taos-host logs`"));
        }
        did.push(words);
    }
    match wait_healthy(data_dir, config, Duration::from_secs(90)).await {
        Ok(status) => {
            let what = format!("{UNIT} is enabled and active; /api/health says {status}");
            if did.is_empty() {
                Outcome::AlreadyDone(what)
            } else {
                Outcome::Done(format!("{}; {what}", did.join(", ")))
            }
        }
        Err(e) => Outcome::Failed(format!(
            "{UNIT} does not answer /api/health: {e}; see `taos-host logs`"
        )),
    }
}

/// Stops the service, for `setup --restore-from` setting aside the data dir its first start
/// made: the host must not hold it open while it moves. `Ok(false)`: it was not running (or
/// systemd does not run here).
pub fn stop_service() -> Result<bool, String> {
    if !systemd_runs() || !succeeds("systemctl", &["is-active", "--quiet", UNIT]) {
        return Ok(false);
    }
    run("systemctl", &["stop", UNIT], &[])?;
    Ok(true)
}

/// Polls the public listener on loopback, pinned to the host's key, until /api/health answers.
async fn wait_healthy(
    data_dir: &Path,
    config: &Config,
    within: Duration,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + within;
    let port = config.server.bind.port();
    let url = if config.server.bind.is_ipv6() && !config.server.bind.ip().is_unspecified() {
        format!("https://[::1]:{port}/api/health")
    } else {
        format!("https://127.0.0.1:{port}/api/health")
    };
    let mut last: String;
    loop {
        if let Ok(Some(pin)) = crate::tls::read_pin(data_dir) {
            let client = reqwest::Client::builder()
                .use_preconfigured_tls(taos_pin::pinned_client_config(pin))
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())?;
            match client.get(&url).send().await {
                Ok(response) if response.status().is_success() => {
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    return Ok(body["status"].as_str().unwrap_or("?").to_string());
                }
                Ok(response) => last = format!("HTTP {}", response.status()),
                Err(e) => last = e.to_string(),
            }
        } else {
            last = "the host has not made its TLS key yet".to_string();
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs every step in order, printing each outcome as it ends (`progress`), and keeps the
/// record. Returns the outcomes.
pub async fn run_all(
    data_dir: &Path,
    options: &Options,
    free_disk_mib: u64,
    mut progress: impl FnMut(Step, &Outcome),
) -> Result<Vec<(Step, Outcome)>, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot make {}: {e}", data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let mut config = config::load_or_init(data_dir).map_err(|e| e.to_string())?;
    let mut record = read_record(data_dir);
    let mut outcomes = Vec::new();
    let mut restart = false;
    for step in steps(crate::backup::restore::has_deferred(data_dir)) {
        let containers_failed = outcomes
            .iter()
            .any(|(s, o): &(Step, Outcome)| *s == Step::Containers && !o.is_provisioned());
        let outcome = match step {
            Step::Incus => {
                IncusStep {
                    socket: &config.runtime.incus_socket,
                    pool: &config.runtime.incus_pool,
                    pool_device: options.pool_device.as_deref(),
                    free_disk_mib,
                    no_backports: options.no_backports,
                }
                .run(data_dir, &config)
                .await
            }
            Step::Litellm => tokio::task::block_in_place(|| litellm(&config.llm.litellm_user)),
            Step::AgentImage => {
                let file = options
                    .agent_image
                    .clone()
                    .unwrap_or_else(default_image_path);
                // The agent image, then the framework images whose packages are installed.
                let mut images = vec![(AGENT_IMAGE_ALIAS.to_string(), file)];
                images.extend(framework_image_files(Path::new(IMAGES_DIR), deb_arch()));
                image_step(&config.runtime.incus_socket, &images).await
            }
            Step::Firewall => tokio::task::block_in_place(|| firewall(data_dir, &config)),
            Step::Containers => match crate::backup::restore::import_deferred(data_dir).await {
                Ok(n) => Outcome::Done(format!("{n} imported (those that were running started)")),
                Err(e) => Outcome::Failed(format!(
                    "{e}; their files are kept: fix that and run `sudo taos-host setup` again"
                )),
            },
            // The host would start with agents whose containers are missing.
            Step::Service if containers_failed => Outcome::NotDone(
                "not started: the restored agents' containers are not imported yet (above)".into(),
            ),
            Step::Service => service(data_dir, &config, restart).await,
        };
        if matches!(outcome, Outcome::Done(_)) && step != Step::Service {
            // The host picks its runtime, finds LiteLLM and makes its bridges at start.
            restart |= matches!(step, Step::Incus | Step::Litellm | Step::AgentImage);
        }
        if step == Step::Incus {
            // The step may have moved the agents' subnets.
            config = config::load_or_init(data_dir).map_err(|e| e.to_string())?;
        }
        progress(step, &outcome);
        record.steps.insert(
            step,
            RecordedStep {
                outcome: outcome.clone(),
                at: chrono::Utc::now().to_rfc3339(),
            },
        );
        if let Err(e) = write_record(data_dir, &record) {
            eprintln!(
                "taos-host setup: cannot keep the record in {}: {e}",
                data_dir.join(RECORD_FILE).display()
            );
        }
        outcomes.push((step, outcome));
    }
    Ok(outcomes)
}

/// The steps to run: [`Step::ALL`], with [`Step::Containers`] just before the service while a
/// restore's containers wait for the runtime (`setup --restore-from`, or a setup run again
/// after one that stopped before importing them).
fn steps(restored_containers: bool) -> Vec<Step> {
    Step::ALL
        .into_iter()
        .flat_map(|step| {
            let containers = step == Step::Service && restored_containers;
            containers
                .then_some(Step::Containers)
                .into_iter()
                .chain([step])
        })
        .collect()
}

/// Whether every step ended provisioned (done now or before).
pub fn all_provisioned(outcomes: &[(Step, Outcome)]) -> bool {
    outcomes.iter().all(|(_, o)| o.is_provisioned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backports_come_from_the_bookworm_mirror_on_debian_12_only() {
        let bookworm = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n".to_string();
        assert_eq!(
            backports_line(bookworm, std::slice::from_ref(&deb822)).as_deref(),
            Some("deb http://mirror.example/debian bookworm-backports main\n")
        );
        // Raspberry Pi OS: its own archive is not Debian's; the Debian line is used.
        let pi = [
            "deb http://archive.raspberrypi.com/debian/ bookworm main\n".to_string(),
            "# deb-src x\ndeb [arch=arm64 signed-by=/k.gpg] https://deb.debian.org/debian bookworm main contrib\n".to_string(),
        ];
        assert_eq!(
            backports_line(bookworm, &pi).as_deref(),
            Some("deb https://deb.debian.org/debian bookworm-backports main\n")
        );
        // No bookworm source found: Debian's own mirror.
        assert_eq!(
            backports_line(bookworm, &[]).as_deref(),
            Some("deb http://deb.debian.org/debian bookworm-backports main\n")
        );
        // Debian 13 and Ubuntu have incus; nothing is added there.
        let trixie = "ID=debian\nVERSION_CODENAME=trixie\n";
        let noble = "ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n";
        assert_eq!(backports_line(trixie, std::slice::from_ref(&deb822)), None);
        assert_eq!(backports_line(noble, &[]), None);
    }

    #[test]
    fn the_pool_is_half_the_free_disk_within_bounds() {
        assert_eq!(pool_size_gib(1024), 2);
        assert_eq!(pool_size_gib(40 * 1024), 20);
        assert_eq!(pool_size_gib(10 * 1024 * 1024), 100);
    }

    #[test]
    fn a_restores_containers_come_back_after_the_runtime_and_before_the_service() {
        assert_eq!(steps(false), Step::ALL);
        assert_eq!(
            steps(true),
            [
                Step::Incus,
                Step::Litellm,
                Step::AgentImage,
                Step::Firewall,
                Step::Containers,
                Step::Service
            ]
        );
    }

    #[test]
    fn framework_images_are_found_by_alias_and_arch_and_absent_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(framework_image_files(dir.path(), "arm64"), []);
        for name in [
            "taos-openclaw_arm64.tar.zst",
            "taos-opencode_arm64.tar.gz",
            "taos-opencode_amd64.tar.zst",
            // The agent image is its own step's; an unknown image is no framework's.
            "taos-agent_arm64.tar.gz",
            "taos-other_arm64.tar.zst",
            "taos-openclaw_arm64.tar.xz",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let found = framework_image_files(dir.path(), "arm64");
        assert_eq!(
            found,
            [
                (
                    "taos-openclaw".to_string(),
                    dir.path().join("taos-openclaw_arm64.tar.zst")
                ),
                (
                    "taos-opencode".to_string(),
                    dir.path().join("taos-opencode_arm64.tar.gz")
                ),
            ]
        );
        let amd64 = framework_image_files(dir.path(), "amd64");
        assert_eq!(
            amd64,
            [(
                "taos-opencode".to_string(),
                dir.path().join("taos-opencode_amd64.tar.zst")
            )]
        );
    }

    #[test]
    fn the_image_step_is_its_worst_import_with_every_ones_words() {
        // Only the agent image (no framework package): its outcome, unchanged.
        let alone = Outcome::AlreadyDone("incus has the image taos-agent".into());
        assert_eq!(combine(std::slice::from_ref(&alone)), alone);
        let done = Outcome::Done("imported b as taos-openclaw".into());
        assert_eq!(
            combine(&[alone.clone(), done.clone()]),
            Outcome::Done("incus has the image taos-agent; imported b as taos-openclaw".into())
        );
        let failed = Outcome::Failed("cannot import the image taos-opencode: x".into());
        assert!(matches!(
            combine(&[alone, done, failed]),
            Outcome::Failed(words) if words.ends_with("; cannot import the image taos-opencode: x")
        ));
        let no_incus = Outcome::NotDone("no incus".into());
        assert_eq!(
            combine(&[no_incus.clone(), no_incus.clone(), no_incus.clone()]),
            no_incus
        );
    }

    #[test]
    fn the_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::default();
        record.steps.insert(
            Step::Litellm,
            RecordedStep {
                outcome: Outcome::NotDone("pip could not reach PyPI".into()),
                at: "2026-12-06T05:00:00Z".into(),
            },
        );
        write_record(dir.path(), &record).unwrap();
        let text = std::fs::read_to_string(dir.path().join(RECORD_FILE)).unwrap();
        assert!(text.contains("\"litellm\""), "{text}");
        assert!(text.contains("\"not_done\""), "{text}");
        let back = read_record(dir.path());
        assert_eq!(
            back.steps[&Step::Litellm].outcome,
            Outcome::NotDone("pip could not reach PyPI".into())
        );
    }
}
