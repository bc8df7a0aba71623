//! `taos-agent`: configured by environment only (see `taos_agent::config`); `--version` prints
//! its version. Exit codes: 0 after SIGTERM/SIGINT, 2 for a configuration error, 1 when it
//! cannot start.

use std::process::ExitCode;

use taos_agent::shutdown::{self, ShutdownTrigger};
use taos_agent::{Config, CONFIG_EXIT_CODE};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    // The one argument it takes: a packaged or cross-built binary (an arm64 image checked
    // under qemu) proves it runs without a host to talk to.
    if matches!(std::env::args().nth(1).as_deref(), Some("--version" | "-V")) {
        println!("taos-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    init_logging();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            // Plain stderr rather than the log, so RUST_LOG=off cannot hide a setup mistake.
            eprintln!("taos-agent: configuration error: {e}");
            return ExitCode::from(CONFIG_EXIT_CODE);
        }
    };
    if !config.mode.runs_as_tools_account() {
        drop_capabilities();
    }
    // One thread is plenty: the sidecar waits on the network, and agent machines are small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        if let Err(e) = watch_signals(trigger) {
            tracing::error!("could not install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        match taos_agent::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Triggers shutdown on the first SIGTERM or SIGINT. Handlers are installed before this
/// returns, so a signal arriving right after start is not lost.
fn watch_signals(trigger: ShutdownTrigger) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received; stopping");
        trigger.trigger();
        // Keep the trigger alive (dropping it also means stop) and absorb further signals so
        // they do not kill the process mid-cleanup.
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    });
    Ok(())
}

/// The image's unit grants CAP_SETUID, CAP_SETGID and CAP_KILL for tools mode, which starts
/// its tools as another user, openclaw mode (which starts openclaw as that user) and acp mode
/// (which starts its agent so). Other modes start nothing: they give them up before any thread
/// exists, so every later thread has none either.
fn drop_capabilities() {
    use rustix::thread::{set_capabilities, CapabilitySet, CapabilitySets};
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    if let Err(e) = set_capabilities(None, none) {
        tracing::warn!(error = %e, "could not drop capabilities");
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
