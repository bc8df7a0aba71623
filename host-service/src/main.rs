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
    /// Follow the installed service's log in the systemd journal (journalctl).
    Logs {
        /// Print the last lines and exit instead of following.
        #[arg(long)]
        no_follow: bool,
        /// How many earlier lines to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
    },
    /// Check this machine for taos: RAM, free disk, cgroups, incus and Docker, and what setup
    /// would do. Changes nothing.
    Setup {
        /// Only report (provisioning is not built yet, so this is required).
        #[arg(long)]
        check: bool,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.unwrap_or_else(config::default_data_dir);
    match cli.command {
        Command::Logs { no_follow, lines } => Err(logs(!no_follow, lines)),
        Command::Setup { check } => {
            anyhow::ensure!(
                check,
                "`taos-host setup` (provisioning incus, LiteLLM, the agent image and the \
                 firewall) is not built yet; `taos-host setup --check` reports what this machine \
                 can run and what setup would do. See docs/install.md."
            );
            // Read the config as it would be, without writing the defaults: a check changes
            // nothing, not even the data dir.
            let path = config::config_path(&data_dir);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
            };
            let config = config::parse(&path, &text, std::env::vars())?;
            let report = taos_host::setup::check(&config, &data_dir).await;
            print!("{}", report.render());
            let blockers = report.blockers();
            anyhow::ensure!(
                blockers.is_empty(),
                "taos can't run on this machine: {}",
                blockers.join("; ")
            );
            Ok(())
        }
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
        Command::Restore {
            from,
            ssh_key,
            known_hosts,
            password_file,
            snapshot,
        } => {
            let s3_keys = match (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Ok(id), Ok(secret)) => Some((id, secret)),
                _ => None,
            };
            let restored =
                taos_host::backup::restore::restore(&taos_host::backup::restore::RestoreRequest {
                    data_dir: data_dir.clone(),
                    from,
                    ssh_key,
                    known_hosts,
                    s3_keys,
                    password_file,
                    snapshot,
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
