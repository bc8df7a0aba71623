//! Fault injection for crash and rollback tests, compiled in only with the `fault-injection`
//! feature (the integration tests turn it on; release builds never have it).
//!
//! `TAOS_TEST_FAIL=<operation>:<step>` makes that step of that operation fail as if the
//! runtime had refused it; `TAOS_TEST_PAUSE=<operation>:<step>` stops there until the host is
//! killed, so a test can SIGKILL the host at exactly that point. Operations are `deploy`,
//! `archive`, `restore`, `purge`, `backup`, `drill` (step `restored`: the snapshot is
//! restored into the drill's folder, not yet checked), `agent-restore` (step `imported`: the
//! container imported from a backup, nothing in the database yet), `archive-move` (step
//! `stored`: an archived container's repository snapshot committed, the container not yet
//! deleted from the pool), `archive-return` (step `imported`: it is back in incus, without its
//! archive snapshot), `passphrase` (step `committed`: the new passphrase stored, the old key
//! not yet removed), `migrate-traces` (the start-up move of the old trace store;
//! step `staged`: copied, not yet renamed into place), `trace-index` (step `committed`: a trace
//! bucket's transaction committed, the agent's hour index not yet told), and `write` (for
//! `fsutil::write_atomic`, whose "step" is the path being written: it pauses after the temp
//! file is durable, before the rename).

pub const FAIL_ENV: &str = "TAOS_TEST_FAIL";
pub const PAUSE_ENV: &str = "TAOS_TEST_PAUSE";

/// What a test asks of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Fail,
    Pause,
}

/// Whether a test asked for a fault at this step of this operation.
#[cfg(feature = "fault-injection")]
pub fn at(operation: &str, step: &str) -> Option<Injected> {
    let wanted = |var: &str| {
        std::env::var(var)
            .ok()
            .is_some_and(|v| v.split_once(':') == Some((operation, step)))
    };
    if wanted(FAIL_ENV) {
        Some(Injected::Fail)
    } else if wanted(PAUSE_ENV) {
        Some(Injected::Pause)
    } else {
        None
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn at(_operation: &str, _step: &str) -> Option<Injected> {
    None
}

/// Pauses forever if a test asked to pause here (blocking: for synchronous code).
pub fn pause_blocking_if_asked(operation: &str, step: &str) {
    if at(operation, step) == Some(Injected::Pause) {
        eprintln!("fault injection: paused at {operation}:{step}");
        loop {
            #[allow(
                clippy::disallowed_methods,
                reason = "synchronous code, stopped on purpose until the test kills the host"
            )]
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Fails or pauses if a test asked to (async code). `Err` carries the message a real refusal
/// would have.
pub async fn check(operation: &str, step: &str) -> Result<(), String> {
    match at(operation, step) {
        None => Ok(()),
        Some(Injected::Fail) => Err(format!("injected failure at {operation}:{step}")),
        Some(Injected::Pause) => {
            // Tests wait for this line before they kill the host.
            tracing::warn!("fault injection: paused at {operation}:{step} until killed");
            std::future::pending().await
        }
    }
}
