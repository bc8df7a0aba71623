//! `taos-host`: run the host (`serve`) and administer it from the machine it runs on.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use taos_host::config::{self, LogFormat};
use taos_host::{auth, qr, server, tls};

#[derive(Parser)]
#[command(name = "taos-host", version, about = "The taos agent host")]
struct Cli {
    /// Data directory (config, database, TLS key, traces). Default: /var/lib/taos as root,
    /// else $XDG_DATA_HOME/taos.
    #[arg(long, env = "TAOS_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: HTTPS API for people, HTTP API for agents on loopback.
    Serve,
    /// Print a one-time pairing token (valid 5 minutes) and its QR code, for the app.
    Pair {
        /// Print only the token.
        #[arg(long)]
        token_only: bool,
    },
    /// Print the SPKI pin of the host's TLS key (`sha256/<base64>`).
    Fingerprint,
    /// Print the OpenAPI 3.1 document of the public API.
    Openapi,
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check or change taos.toml.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Bring a backup back into an empty data dir (a new board, a wiped card), then start the
    /// host with `serve` as usual.
    Restore {
        /// The backup repository: the destination folder the backups went to,
        /// `sftp://user@host[:port]/path` (with --ssh-key and --known-hosts), or
        /// `s3:https://host[:port]/bucket` (with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
        /// in the environment).
        #[arg(long)]
        from: String,
        /// SFTP: the private key file ssh signs in with.
        #[arg(long)]
        ssh_key: Option<PathBuf>,
        /// SFTP: a known_hosts file holding the server's host key (checked strictly).
        #[arg(long)]
        known_hosts: Option<PathBuf>,
        /// A file holding the backup passphrase (restic reads it; it is never copied).
        #[arg(long)]
        password_file: PathBuf,
        /// The snapshot to restore (its id or a prefix of it); default: the newest.
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Take a read-only btrfs snapshot of the data dir now (when it is a btrfs subvolume), or
    /// list them. The host also takes one every hour and before migrating its database.
    Snapshot {
        /// List the snapshots instead of taking one.
        #[arg(long)]
        list: bool,
        /// Why (kept in its name; retention keeps each kind apart): `manual` or `update`.
        #[arg(long, default_value = "manual", value_parser = ["manual", "update"])]
        reason: String,
    },
    /// Follow the installed service's log in the systemd journal (journalctl).
    Logs {
        /// Print the last lines and exit instead of following.
        #[arg(long)]
        no_follow: bool,
        /// How many earlier lines to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
    },
    /// Install a new taos-host package, check it comes up healthy (health, TLS key, database,
    /// agents) within 60 s, and roll back to the running version if it does not.
    #[command(group(clap::ArgGroup::new("what").required(true)))]
    Update {
        /// The taos-host_<version>_<arch>.deb to install.
        #[arg(group = "what")]
        package: Option<PathBuf>,
        /// Finish an interrupted update by rolling it back.
        #[arg(long, group = "what")]
        resume: bool,
        /// Print the state of the last update.
        #[arg(long, group = "what")]
        status: bool,
        /// For the package's preinst: back up and stop before dpkg unpacks <VERSION>.
        #[arg(long, group = "what", value_name = "VERSION", hide = true)]
        prepare: Option<String>,
        /// For the package's postinst: start and gate what dpkg unpacked.
        #[arg(long, group = "what", hide = true)]
        finish: bool,
        /// For the unit's ExecStartPre: roll back an update whose updater died.
        #[arg(long, group = "what", hide = true)]
        recover: bool,
    },
    /// The host's nftables table (`inet taos`): the public port for the LAN only, the agent
    /// listener for agents only.
    Firewall {
        #[command(subcommand)]
        command: FirewallCommand,
    },
    /// Check this machine, then provision it: incus (fixed, collision-checked subnets, a btrfs
    /// pool), LiteLLM in its own venv and user, the agent image, the firewall, and the service;
    /// ends with the URL, the key fingerprint, the setup code and a pairing QR. Safe to re-run.
    Setup {
        /// Only report what this machine can run and what setup would do; change nothing.
        #[arg(long)]
        check: bool,
        /// A partition (or disk) for the btrfs storage pool, instead of a loop file. Its
        /// contents are lost.
        #[arg(long, value_name = "DEVICE")]
        pool_device: Option<PathBuf>,
        /// The agent image (a unified tarball) to import; default:
        /// /usr/share/taos-host/images/taos-agent_<arch>.tar.gz.
        #[arg(long, value_name = "FILE")]
        agent_image: Option<PathBuf>,
        /// Leave apt's sources as they are: on Debian 12, setup otherwise adds
        /// bookworm-backports, the only place incus is packaged for it.
        #[arg(long)]
        no_backports: bool,
        /// A new board as the host a backup holds: restore the backup from this repository
        /// into the (empty) data dir first, then provision with its taos.toml and bring its
        /// agents' containers back. A folder (absolute path), `sftp://user@host[:port]/path`
        /// (with --ssh-key and --known-hosts), or `s3:https://host[:port]/bucket` (with
        /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment).
        #[arg(long, value_name = "REPOSITORY", requires = "passphrase")]
        restore_from: Option<String>,
        /// With --restore-from: a file holding the backup passphrase, readable by its owner
        /// only (mode 0600).
        #[arg(
            long,
            value_name = "FILE",
            group = "passphrase",
            requires = "restore_from"
        )]
        password_file: Option<PathBuf>,
        /// With --restore-from: read the backup passphrase from one line of standard input.
        #[arg(long, group = "passphrase", requires = "restore_from")]
        password_stdin: bool,
        /// With --restore-from: the snapshot (its id or a prefix); default: the newest.
        #[arg(long, requires = "restore_from")]
        snapshot: Option<String>,
        /// With an SFTP --restore-from: the private key file ssh signs in with.
        #[arg(long, requires = "restore_from")]
        ssh_key: Option<PathBuf>,
        /// With an SFTP --restore-from: a known_hosts file holding the server's host key.
        #[arg(long, requires = "restore_from")]
        known_hosts: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_follows_the_units_journal() {
        assert_eq!(
            super::journalctl_args(true, 50),
            [
                "--unit",
                "taos-host.service",
                "--lines",
                "50",
                "--no-pager",
                "--follow"
            ]
        );
        assert!(!super::journalctl_args(false, 5).contains(&"--follow".to_string()));
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the first one becomes the owner.
    Create {
        username: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password and sign the user out everywhere.
    ResetPassword {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum FirewallCommand {
    /// Load the rules and save them in the data dir (the service loads them at every start).
    Apply {
        /// A network allowed to reach the public port (repeat it); default: the private,
        /// link-local and unique-local ranges.
        #[arg(long = "lan", value_name = "ADDRESS/PREFIX")]
        lan: Vec<String>,
    },
    /// Print the rules `apply` would load; changes nothing.
    Show {
        #[arg(long = "lan", value_name = "ADDRESS/PREFIX")]
        lan: Vec<String>,
    },
    /// Delete the table and the saved rules.
    Remove,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate taos.toml plus TAOS_* overrides and print the effective config.
    Check,
    /// Set one key (e.g. `server.bind 127.0.0.1:7443`), keeping comments; atomic.
    Set { key: String, value: String },
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("Password (at least 10 characters): ")?;
    let second = rpassword::prompt_password("Again: ")?;
    anyhow::ensure!(first == second, "the passwords differ");
    Ok(first)
}

/// The installed service's unit (packaging/deb/taos-host/taos-host.service).
const UNIT: &str = "taos-host.service";

/// journalctl's arguments for `taos-host logs`.
fn journalctl_args(follow: bool, lines: u32) -> Vec<String> {
    let mut args = vec![
        "--unit".to_string(),
        UNIT.to_string(),
        "--lines".to_string(),
        lines.to_string(),
        "--no-pager".to_string(),
    ];
    if follow {
        args.push("--follow".to_string());
    }
    args
}

/// Runs journalctl in this process's place (argv, no shell), so Ctrl-C and its exit status are
/// its own.
fn logs(follow: bool, lines: u32) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new("journalctl")
        .args(journalctl_args(follow, lines))
        .exec();
    anyhow::anyhow!(
        "cannot run journalctl: {error}. `taos-host logs` reads the systemd journal of the \
         installed service ({UNIT}); a host started by hand logs to its own standard error"
    )
}

/// `taos-host firewall`: the ports come from taos.toml as it is (nothing is written to it).
fn firewall(data_dir: &std::path::Path, command: FirewallCommand) -> anyhow::Result<()> {
    use taos_host::host_firewall::{self, Plan};
    let plan = |lan: &[String]| -> anyhow::Result<Plan> {
        let path = config::config_path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let config = config::parse(&path, &text, std::env::vars())?;
        Ok(Plan::new(
            config.server.bind.port(),
            config.server.agent_bind.port(),
            lan,
        )?)
    };
    match command {
        FirewallCommand::Show { lan } => {
            print!("{}", host_firewall::ruleset(&plan(&lan)?));
            Ok(())
        }
        FirewallCommand::Apply { lan } => {
            let plan = plan(&lan)?;
            anyhow::ensure!(
                taos_host::sys::is_root(),
                "`taos-host firewall apply` changes the machine's firewall: run it as root (sudo)"
            );
            let path = host_firewall::apply(data_dir, &plan)?;
            let lan: Vec<String> = plan.lan.iter().map(ToString::to_string).collect();
            println!(
                "nftables table inet {} loaded and saved in {}: port {} open to {}; port {} to \
                 this machine and the agents' bridges only",
                host_firewall::TABLE,
                path.display(),
                plan.public_port,
                lan.join(", "),
                plan.agent_port
            );
            Ok(())
        }
        FirewallCommand::Remove => {
            anyhow::ensure!(
                taos_host::sys::is_root(),
                "`taos-host firewall remove` changes the machine's firewall: run it as root (sudo)"
            );
            if host_firewall::remove(data_dir)? {
                println!("removed the nftables table inet {}", host_firewall::TABLE);
            } else {
                println!("no taos firewall rules were in place");
            }
            Ok(())
        }
    }
}

/// `taos-host setup [--check] [--restore-from …]`: the check first; then, unless only
/// checking, the restore if asked (`setup::restore_from` says why it comes first), then the
/// steps.
async fn setup(
    data_dir: &std::path::Path,
    check: bool,
    options: taos_host::setup::provision::Options,
    restore_from: Option<taos_host::setup::restore_from::RestoreFrom>,
) -> anyhow::Result<()> {
    use taos_host::setup::provision::{self, Outcome};
    use taos_host::setup::restore_from::DataDir;
    let mut data_dir_state = DataDir::Empty;
    if let Some(request) = &restore_from {
        // Bad input is refused before anything else, even a check.
        data_dir_state = taos_host::setup::restore_from::validate(data_dir, request).await?;
    }
    // Read the config as it would be, without writing the defaults: a check changes nothing,
    // not even the data dir.
    let path = config::config_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let config = config::parse(&path, &text, std::env::vars())?;
    let report = taos_host::setup::check(&config, data_dir).await;
    print!("{}", report.render());
    let blockers = report.blockers();
    anyhow::ensure!(
        blockers.is_empty(),
        "taos can't run on this machine: {}",
        blockers.join("; ")
    );
    if check {
        if let Some(request) = &restore_from {
            println!(
                "\nWith --restore-from, setup first restores the newest backup (or the one \
                 named) from {} into {}, then provisions with the restored taos.toml (its \
                 subnets and ports may differ from the defaults above) and imports its agents' \
                 containers.",
                request.from,
                data_dir.display()
            );
            if data_dir_state == DataDir::UnusedFirstStart {
                println!(
                    "{} is the data dir the service made at its first start, unused: setup \
                     stops the service and moves it aside first.",
                    data_dir.display()
                );
            }
        }
        println!(
            "\nThis was a check only: nothing was changed. `sudo taos-host setup` does the steps \
             above."
        );
        return Ok(());
    }
    anyhow::ensure!(
        taos_host::sys::is_root(),
        "`taos-host setup` installs packages, makes a user, a storage pool and firewall rules, \
         and starts the service: run it as root (sudo)"
    );
    if let Some(device) = &options.pool_device {
        anyhow::ensure!(
            device.exists(),
            "--pool-device {}: no such device",
            device.display()
        );
    }
    if let Some(file) = &options.agent_image {
        anyhow::ensure!(
            file.is_file(),
            "--agent-image {}: no such file",
            file.display()
        );
    }
    if let Some(request) = &restore_from {
        println!("\nrestoring from {} first:", request.from);
        if data_dir_state == DataDir::UnusedFirstStart {
            let aside = taos_host::setup::restore_from::set_aside_unused(data_dir).await?;
            println!(
                "  stopped taos-host.service and moved the unused data dir of its first start \
                 to {}",
                aside.display()
            );
        }
        let restored = taos_host::setup::restore_from::restore_first(
            data_dir,
            request,
            s3_keys(),
            std::io::stdin().lock(),
        )
        .await?;
        println!(
            "  restored snapshot {} of {} (database schema {}) into {}{}",
            restored.snapshot_id,
            restored.time.to_rfc3339(),
            restored.schema_version,
            data_dir.display(),
            if restored.containers > 0 {
                format!(
                    "; its {} agent container(s) come back once the runtime is provisioned",
                    restored.containers
                )
            } else {
                String::new()
            }
        );
    }
    println!("\nsetting up:");
    let outcomes = provision::run_all(
        data_dir,
        &options,
        report.disk_free_mib.unwrap_or(0),
        |step, outcome| {
            println!(
                "  - {}: {}{}",
                step.title(),
                outcome.label(),
                if outcome.detail().is_empty() {
                    String::new()
                } else {
                    format!(": {}", outcome.detail())
                }
            )
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let service_up = outcomes.iter().any(|(step, o)| {
        *step == provision::Step::Service && matches!(o, Outcome::Done(_) | Outcome::AlreadyDone(_))
    });
    if service_up {
        print_welcome(data_dir).await?;
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .map(|(step, _)| step.title().to_string())
        .collect();
    let missing: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::NotDone(_)))
        .map(|(step, _)| step.title().to_string())
        .collect();
    if !missing.is_empty() {
        println!(
            "\nnot provisioned (see the reasons above; run `sudo taos-host setup` again once \
             fixed): {}",
            missing.join(", ")
        );
    }
    anyhow::ensure!(
        failed.is_empty(),
        "setup failed at: {} (the reasons are above; re-running is safe)",
        failed.join(", ")
    );
    if provision::all_provisioned(&outcomes) {
        println!("\nsetup is complete.");
    }
    Ok(())
}

/// The end of setup: where to go, how to trust it, how to become its owner, how to pair.
async fn print_welcome(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let opened = server::open(data_dir).await?;
    let addresses = server::pairing_addresses(opened.config.server.bind);
    println!();
    for address in &addresses {
        println!("URL:         https://{address}/");
    }
    println!("Fingerprint: {}", opened.identity.pin);
    match std::fs::read_to_string(auth::setup_code::path(data_dir)) {
        Ok(code) => println!(
            "Setup code:  {} (enter it at the URL to create the owner account)",
            code.trim()
        ),
        Err(_) => println!("Setup code:  none: an owner exists; sign in at the URL"),
    }
    let (token, payload) = auth::devices::create_pairing_token(
        &opened.db,
        &server::host_name(&opened.config),
        addresses,
        &opened.identity.pin,
        "setup",
    )
    .await?;
    println!(
        "\nPair the app: scan this code (single use, expires {}), or run `sudo taos-host pair` \
         later:",
        payload.expires_at
    );
    println!("{}", qr::terminal(&token)?);
    opened.db.close().await;
    Ok(())
}

/// `taos-host update`: each mode of the updater (taos_host::update).
async fn update(
    data_dir: &std::path::Path,
    package: Option<PathBuf>,
    resume: bool,
    status: bool,
    prepare: Option<String>,
    finish: bool,
    recover: bool,
) -> anyhow::Result<()> {
    use taos_host::update::{self, Paths};
    let paths = Paths::new(data_dir);
    let describe = |state: &update::UpdateState| {
        format!(
            "{:?}: {} → {}{}",
            state.phase,
            state.from_version,
            state.to_version,
            state
                .failure
                .as_deref()
                .map(|f| format!(" (failed: {f})"))
                .unwrap_or_default()
        )
    };
    if status {
        match update::read_state(&paths)? {
            Some(state) => println!("{}", describe(&state)),
            None => println!("no update has run on {}", data_dir.display()),
        }
        return Ok(());
    }
    // Not root: every step below needs it (systemctl, apt, /usr/bin, the data dir).
    anyhow::ensure!(
        taos_host::sys::is_root(),
        "`taos-host update` changes the installed package and its service: run it as root (sudo)"
    );
    if recover {
        // The unit's ExecStartPre: say what happened in the journal, never block the start.
        match update::recover_before_start(&paths).await {
            Ok(Some(reason)) => {
                eprintln!("taos-host update: rolled back an unfinished update: {reason}")
            }
            Ok(None) => {}
            Err(e) => eprintln!("taos-host update: could not recover an unfinished update: {e}"),
        }
        return Ok(());
    }
    if let Some(version) = prepare {
        update::prepare_for_package(&paths, &version).await?;
        println!(
            "taos-host: backed up the database and the running binary before installing {version}"
        );
        return Ok(());
    }
    if finish {
        if let Some(state) = update::finish_for_package(&paths).await? {
            println!(
                "taos-host: updated, all checks passed ({})",
                describe(&state)
            );
        }
        return Ok(());
    }
    if resume {
        match update::resume(&paths).await? {
            Some(state) => println!("nothing to resume; the last update: {}", describe(&state)),
            None => println!("nothing to resume; no update has run"),
        }
        return Ok(());
    }
    let package = package.ok_or_else(|| anyhow::anyhow!("name the package to install"))?;
    let state = update::run(&paths, &package).await?;
    println!(
        "updated taos-host {} → {}; health, TLS key, database and agents checked ({} of {} \
         agents connected before answered a bridge round trip)",
        state.from_version,
        state.to_version,
        state.round_trips.len(),
        state.connected_before.len()
    );
    Ok(())
}

/// An S3 repository's keys, from the environment (never the command line).
fn s3_keys() -> Option<(String, String)> {
    match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(id), Ok(secret)) => Some((id, secret)),
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.unwrap_or_else(config::default_data_dir);
    match cli.command {
        Command::Logs { no_follow, lines } => Err(logs(!no_follow, lines)),
        Command::Setup {
            check,
            pool_device,
            agent_image,
            no_backports,
            restore_from,
            password_file,
            password_stdin,
            snapshot,
            ssh_key,
            known_hosts,
        } => {
            use taos_host::setup::restore_from::{Passphrase, RestoreFrom};
            let restore_from = restore_from.map(|from| RestoreFrom {
                from,
                passphrase: match password_file {
                    Some(file) => Passphrase::File(file),
                    None => {
                        debug_assert!(password_stdin, "clap requires one of the two");
                        Passphrase::Stdin
                    }
                },
                ssh_key,
                known_hosts,
                snapshot,
            });
            let options = taos_host::setup::provision::Options {
                pool_device,
                agent_image,
                no_backports,
            };
            setup(&data_dir, check, options, restore_from).await
        }
        Command::Update {
            package,
            resume,
            status,
            prepare,
            finish,
            recover,
        } => update(&data_dir, package, resume, status, prepare, finish, recover).await,
        Command::Firewall { command } => firewall(&data_dir, command),
        Command::Serve => {
            let opened = server::open(&data_dir).await?;
            init_logging(opened.config.log.format, &opened.config.log.level);
            server::serve(opened).await
        }
        Command::Pair { token_only } => {
            let opened = server::open(&data_dir).await?;
            let (token, payload) = auth::devices::create_pairing_token(
                &opened.db,
                &server::host_name(&opened.config),
                server::pairing_addresses(opened.config.server.bind),
                &opened.identity.pin,
                "cli",
            )
            .await?;
            if token_only {
                println!("{token}");
            } else {
                println!("{}", qr::terminal(&token)?);
                println!(
                    "Pairing token (single use, expires {}):\n{token}\n",
                    payload.expires_at
                );
                println!("Host:        {}", payload.host_name);
                println!("Addresses:   {}", payload.addresses.join(", "));
                println!("Fingerprint: {}", opened.identity.pin);
            }
            Ok(())
        }
        Command::Openapi => {
            println!("{}", taos_host::http::openapi_json());
            Ok(())
        }
        Command::Fingerprint => match tls::read_pin(&data_dir)? {
            Some(pin) => {
                println!("{pin}");
                Ok(())
            }
            None => anyhow::bail!(
                "no TLS key in {} yet; run `taos-host serve` once to make it",
                data_dir.display()
            ),
        },
        Command::User { command } => {
            let opened = server::open(&data_dir).await?;
            match command {
                UserCommand::Create {
                    username,
                    password_stdin,
                } => {
                    let password = read_password(password_stdin)?;
                    let user = auth::users::create(&opened.db, &username, &password).await?;
                    if user.is_owner {
                        // The browser's first-run setup is closed now; its code is useless.
                        auth::setup_code::remove(&opened.data_dir)?;
                    }
                    let role = if user.is_owner { "owner" } else { "user" };
                    println!("created {role} {}", user.username);
                }
                UserCommand::ResetPassword {
                    username,
                    password_stdin,
                } => {
                    let password = read_password(password_stdin)?;
                    auth::users::reset_password(&opened.db, &username, &password)
                        .await
                        .map_err(|e| match e {
                            auth::AuthError::NotFound => anyhow::anyhow!("no user {username}"),
                            e => e.into(),
                        })?;
                    println!("password reset for {username}; their sessions were ended");
                }
            }
            opened.db.close().await;
            Ok(())
        }
        Command::Snapshot { list, reason } => {
            use taos_host::snapshots;
            let support = snapshots::support(&data_dir)?;
            if list {
                println!("{}", support.explain());
                for s in snapshots::list(&data_dir)? {
                    println!(
                        "{}\t{:?}\t{}",
                        s.name,
                        s.reason,
                        data_dir
                            .join(snapshots::SNAPSHOT_DIR)
                            .join(&s.name)
                            .display()
                    );
                }
                return Ok(());
            }
            // Refused before anything is written (not even the config).
            anyhow::ensure!(
                support == snapshots::Support::Ready,
                "cannot snapshot {}: {}",
                data_dir.display(),
                support.explain()
            );
            let config = config::load_or_init(&data_dir)?;
            let why = if reason == "update" {
                snapshots::Reason::Update
            } else {
                snapshots::Reason::Manual
            };
            let taken = snapshots::take(&data_dir, why).await?;
            snapshots::prune(&data_dir, config.snapshots.retention()).await?;
            println!(
                "{}",
                data_dir
                    .join(snapshots::SNAPSHOT_DIR)
                    .join(&taken.name)
                    .display()
            );
            Ok(())
        }
        Command::Restore {
            from,
            ssh_key,
            known_hosts,
            password_file,
            snapshot,
        } => {
            let s3_keys = s3_keys();
            let restored =
                taos_host::backup::restore::restore(&taos_host::backup::restore::RestoreRequest {
                    data_dir: data_dir.clone(),
                    from,
                    ssh_key,
                    known_hosts,
                    s3_keys,
                    password_file,
                    snapshot,
                    defer_containers: false,
                })
                .await?;
            println!(
                "restored snapshot {} of {} (database schema {}) into {}",
                restored.snapshot_id,
                restored.time.to_rfc3339(),
                restored.schema_version,
                data_dir.display()
            );
            if restored.containers > 0 {
                println!(
                    "{} agent container(s) imported (those that were running started)",
                    restored.containers
                );
            }
            if restored.archives_moved > 0 {
                println!(
                    "{} archived agent(s) moved from {} to this data dir",
                    restored.archives_moved, restored.old_data_dir
                );
            }
            println!(
                "start the host with `taos-host --data-dir {} serve`",
                data_dir.display()
            );
            Ok(())
        }
        Command::Config { command } => match command {
            ConfigCommand::Check => {
                let config = config::load_or_init(&data_dir)?;
                println!(
                    "# {} is valid; effective config:\n{}",
                    config::config_path(&data_dir).display(),
                    toml::to_string(&config)?
                );
                Ok(())
            }
            ConfigCommand::Set { key, value } => {
                config::load_or_init(&data_dir)?;
                config::set_key(&data_dir, &key, &value)?;
                println!("set {key} = {value}");
                Ok(())
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taos-host: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taos-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}
