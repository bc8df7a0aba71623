//! Live connections — chat WebSockets, `/api/events` streams, LLM gateway calls — by the
//! credential that opened them, so that ending a credential ends them too. A request is
//! authenticated once; a connection lives on, so it must be told.
//!
//! A connection learns that its credential ended in one of three ways:
//! 1. at once, when this process ends it (a device revoked or caught replaying its refresh
//!    token, a logout, an LLM key rotated, an agent archived): the caller runs `revoke_*`
//!    after the change is committed;
//! 2. at its deadline: a device access token's expiry, a browser session's lifetime;
//! 3. by `recheck`, every `[auth] recheck_secs`, which reads every live credential back from
//!    the database: the backstop for idle sessions and for changes made by another process
//!    (`taos-host user reset-password` writes the database directly).
//!
//! Registering happens before the credential is checked (`open`), so a revocation that commits
//! between the request's authentication and the registration is still seen.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use super::devices;
use super::sessions::{self, SessionPolicy};
use crate::db::{now_ms, Db};

/// Credentials checked per statement (SQLite allows far more variables; this keeps each
/// statement small).
pub const BATCH: usize = 500;

/// `?, ?, ?` for an `IN (…)` list of `n` values.
pub fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// What a live connection was opened with. Secrets appear only as their stored hashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A browser session cookie.
    Session { user_id: Uuid, token_hash: String },
    /// A paired device's access token.
    Device { device_id: Uuid, token_hash: String },
    /// The local admin token: valid for as long as this process runs (it is read at start).
    LocalAdmin,
    /// An agent's LLM key (gateway calls).
    LlmKey { agent_id: Uuid, key_hash: String },
}

/// What the database says about a credential now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Still good; `until_ms` is when it ends by itself (epoch ms), if it does.
    Valid { until_ms: Option<i64> },
    /// Ran out: an access token past its expiry, a session idle too long or past its lifetime.
    Expired,
    /// Taken away: revoked, signed out, rotated, or gone with its user or agent.
    Revoked,
}

/// Why a live connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Revoked,
    Expired,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Revoked => "revoked",
            Ended::Expired => "expired",
        }
    }
}

struct Entry {
    credential: Credential,
    ended: watch::Sender<Option<Ended>>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

/// The registry of live connections. One per host.
#[derive(Default)]
pub struct Live {
    registry: Mutex<Registry>,
    /// How many times an agent's LLM key was ended in this process ([`Live::revoke_agent_llm`]):
    /// a gateway call that read its key before registering knows from it, without reading the
    /// key again, that no ending could have slipped between the two.
    llm_revocations: std::sync::atomic::AtomicU64,
}

impl Live {
    pub fn new() -> Arc<Live> {
        Arc::new(Live::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection. It stays registered until the guard is dropped.
    pub fn register(self: &Arc<Self>, credential: Credential) -> LiveGuard {
        let (tx, rx) = watch::channel(None);
        let mut registry = self.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        registry.entries.insert(
            id,
            Entry {
                credential: credential.clone(),
                ended: tx,
            },
        );
        LiveGuard {
            live: self.clone(),
            id,
            credential,
            ended: rx,
            deadline: None,
        }
    }

    /// Registers a connection and checks its credential against the database; `None` if the
    /// credential is no longer good (the connection must not start).
    pub async fn open(
        self: &Arc<Self>,
        db: &Db,
        policy: &SessionPolicy,
        credential: Credential,
    ) -> Result<Option<LiveGuard>, sqlx::Error> {
        let mut guard = self.register(credential);
        match check_one(db, policy, &guard.credential).await? {
            TokenState::Valid { until_ms } => {
                guard.deadline = until_ms.map(instant_at);
                Ok(Some(guard))
            }
            TokenState::Expired | TokenState::Revoked => Ok(None),
        }
    }

    /// The count of LLM key endings so far: read it before reading an LLM key from the database,
    /// and hand it to [`Live::open_llm_key`].
    pub fn llm_revocations(&self) -> u64 {
        self.llm_revocations
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// [`Live::open`] for an LLM key that was read from the database after `seen` was taken from
    /// [`Live::llm_revocations`]. Every ending of an LLM key commits first and then calls
    /// [`Live::revoke_agent_llm`], which counts before it ends connections. So if the count is
    /// still `seen` once the call is registered, any ending after our read will reach the
    /// registered call, and one before it was seen by the read: the key needs no second read.
    /// Otherwise (a key ended somewhere meanwhile) it is read again, as `open` does.
    pub async fn open_llm_key(
        self: &Arc<Self>,
        db: &Db,
        policy: &SessionPolicy,
        credential: Credential,
        seen: u64,
    ) -> Result<Option<LiveGuard>, sqlx::Error> {
        if !matches!(credential, Credential::LlmKey { .. }) {
            return self.open(db, policy, credential).await;
        }
        let guard = self.register(credential);
        // Registered under the registry's lock, which `revoke_agent_llm` takes after counting:
        // a count we don't see here belongs to an ending that will find our entry.
        if self.llm_revocations() == seen {
            // An LLM key has no deadline of its own.
            return Ok(Some(guard));
        }
        match check_one(db, policy, &guard.credential).await? {
            TokenState::Valid { .. } => Ok(Some(guard)),
            TokenState::Expired | TokenState::Revoked => Ok(None),
        }
    }

    /// Ends every connection whose credential matches; returns how many.
    fn end_where(&self, reason: Ended, matches: impl Fn(&Credential) -> bool) -> usize {
        let registry = self.lock();
        let mut ended = 0;
        for entry in registry.entries.values() {
            if matches(&entry.credential) {
                // The first reason wins; a connection ends once.
                entry.ended.send_if_modified(|state| {
                    if state.is_none() {
                        *state = Some(reason);
                        true
                    } else {
                        false
                    }
                });
                ended += 1;
            }
        }
        ended
    }

    /// A device was revoked: every connection opened with any of its access tokens ends.
    pub fn revoke_device(&self, device_id: Uuid) -> usize {
        self.end_where(
            Ended::Revoked,
            |c| matches!(c, Credential::Device { device_id: d, .. } if *d == device_id),
        )
    }

    /// A browser session ended (logout): its connections end.
    pub fn revoke_session(&self, token_hash: &str) -> usize {
        self.end_where(
            Ended::Revoked,
            |c| matches!(c, Credential::Session { token_hash: h, .. } if h == token_hash),
        )
    }

    /// A user was signed out everywhere (password reset, user deleted): every connection of
    /// every session of theirs ends.
    pub fn revoke_user(&self, user_id: Uuid) -> usize {
        self.end_where(
            Ended::Revoked,
            |c| matches!(c, Credential::Session { user_id: u, .. } if *u == user_id),
        )
    }

    /// An agent's LLM key was rotated or taken away (archive, removal): its gateway calls end.
    pub fn revoke_agent_llm(&self, agent_id: Uuid) -> usize {
        // Counted before the registry is searched: see `open_llm_key`.
        self.llm_revocations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.end_where(
            Ended::Revoked,
            |c| matches!(c, Credential::LlmKey { agent_id: a, .. } if *a == agent_id),
        )
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads every live credential back from the database and ends the connections whose
    /// credential is no longer good. Returns how many ended.
    pub async fn recheck(&self, db: &Db, policy: &SessionPolicy) -> Result<usize, sqlx::Error> {
        let credentials: Vec<Credential> = {
            let registry = self.lock();
            let distinct: HashSet<&Credential> =
                registry.entries.values().map(|e| &e.credential).collect();
            distinct.into_iter().cloned().collect()
        };
        if credentials.is_empty() {
            return Ok(0);
        }
        let states = check_all(db, policy, &credentials).await?;
        let mut ended = 0;
        for (credential, state) in states {
            let reason = match state {
                TokenState::Valid { .. } => continue,
                TokenState::Expired => Ended::Expired,
                TokenState::Revoked => Ended::Revoked,
            };
            ended += self.end_where(reason, |c| *c == credential);
        }
        Ok(ended)
    }
}

/// Runs `recheck` every `every` until shutdown.
pub fn spawn_recheck(
    live: Arc<Live>,
    db: Db,
    policy: SessionPolicy,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if live.is_empty() {
                continue;
            }
            match live.recheck(&db, &policy).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    connections = n,
                    "closed connections whose credentials ended"
                ),
                Err(e) => tracing::warn!(error = %e, "re-checking live credentials failed"),
            }
        }
    });
}

/// The tokio instant of an epoch-milliseconds time (now, if it has passed).
fn instant_at(epoch_ms: i64) -> tokio::time::Instant {
    let left = u64::try_from(epoch_ms.saturating_sub(now_ms())).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(left)
}

async fn check_one(
    db: &Db,
    policy: &SessionPolicy,
    credential: &Credential,
) -> Result<TokenState, sqlx::Error> {
    let states = check_all(db, policy, std::slice::from_ref(credential)).await?;
    Ok(states
        .get(credential)
        .copied()
        .unwrap_or(TokenState::Revoked))
}

/// The state of each credential, one statement per kind (per `BATCH`).
async fn check_all(
    db: &Db,
    policy: &SessionPolicy,
    credentials: &[Credential],
) -> Result<HashMap<Credential, TokenState>, sqlx::Error> {
    let mut session_hashes = Vec::new();
    let mut device_hashes = Vec::new();
    let mut key_hashes = Vec::new();
    for credential in credentials {
        match credential {
            Credential::Session { token_hash, .. } => session_hashes.push(token_hash.as_str()),
            Credential::Device { token_hash, .. } => device_hashes.push(token_hash.as_str()),
            Credential::LlmKey { key_hash, .. } => key_hashes.push(key_hash.as_str()),
            Credential::LocalAdmin => {}
        }
    }
    let session_states = if session_hashes.is_empty() {
        HashMap::new()
    } else {
        sessions::states(db, &session_hashes, policy).await?
    };
    let device_states = if device_hashes.is_empty() {
        HashMap::new()
    } else {
        devices::access_states(db, &device_hashes).await?
    };
    let key_states = if key_hashes.is_empty() {
        HashMap::new()
    } else {
        crate::agents::llm_key_states(db, &key_hashes).await?
    };
    let revoked = TokenState::Revoked;
    Ok(credentials
        .iter()
        .map(|credential| {
            let state = match credential {
                Credential::Session { token_hash, .. } => {
                    *session_states.get(token_hash).unwrap_or(&revoked)
                }
                Credential::Device { token_hash, .. } => {
                    *device_states.get(token_hash).unwrap_or(&revoked)
                }
                Credential::LlmKey { key_hash, .. } => {
                    *key_states.get(key_hash).unwrap_or(&revoked)
                }
                Credential::LocalAdmin => TokenState::Valid { until_ms: None },
            };
            (credential.clone(), state)
        })
        .collect())
}

/// A registered live connection. Dropping it unregisters the connection.
pub struct LiveGuard {
    live: Arc<Live>,
    id: u64,
    credential: Credential,
    ended: watch::Receiver<Option<Ended>>,
    deadline: Option<tokio::time::Instant>,
}

impl LiveGuard {
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// Whether the connection has been told to end (without waiting).
    pub fn ended_now(&self) -> Option<Ended> {
        if let Some(reason) = *self.ended.borrow() {
            return Some(reason);
        }
        match self.deadline {
            Some(deadline) if deadline <= tokio::time::Instant::now() => Some(Ended::Expired),
            _ => None,
        }
    }

    /// Waits until the connection must end. Cancel-safe: use it in `select!`.
    pub async fn ended(&mut self) -> Ended {
        let deadline = self.deadline;
        let expire = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            told = self.ended.wait_for(Option::is_some) => match told {
                Ok(reason) => reason.unwrap_or(Ended::Revoked),
                // The registry dropped the entry: nothing vouches for the credential any more.
                Err(_) => Ended::Revoked,
            },
            _ = expire => Ended::Expired,
        }
    }

    /// Checks the credential against the database now, for actions that change state (a
    /// chat message over the socket): a revocation made by another process counts at once,
    /// not only at the next re-check. `Some(reason)` if the connection must end.
    pub async fn recheck(
        &self,
        db: &Db,
        policy: &SessionPolicy,
    ) -> Result<Option<Ended>, sqlx::Error> {
        if let Some(reason) = self.ended_now() {
            return Ok(Some(reason));
        }
        Ok(match check_one(db, policy, &self.credential).await? {
            TokenState::Valid { .. } => None,
            TokenState::Expired => Some(Ended::Expired),
            TokenState::Revoked => Some(Ended::Revoked),
        })
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.lock().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: Uuid, hash: &str) -> Credential {
        Credential::Device {
            device_id: id,
            token_hash: hash.to_string(),
        }
    }

    #[tokio::test]
    async fn revoking_ends_exactly_the_matching_connections() {
        let live = Live::new();
        let phone = Uuid::new_v4();
        let laptop = Uuid::new_v4();
        let user = Uuid::new_v4();
        let agent = Uuid::new_v4();
        let mut a = live.register(device(phone, "a"));
        let mut b = live.register(device(phone, "b"));
        let c = live.register(device(laptop, "c"));
        let mut s1 = live.register(Credential::Session {
            user_id: user,
            token_hash: "s1".into(),
        });
        let mut s2 = live.register(Credential::Session {
            user_id: user,
            token_hash: "s2".into(),
        });
        let mut key = live.register(Credential::LlmKey {
            agent_id: agent,
            key_hash: "k".into(),
        });
        let admin = live.register(Credential::LocalAdmin);
        assert_eq!(live.len(), 7);

        assert_eq!(live.revoke_device(phone), 2);
        assert_eq!(a.ended().await, Ended::Revoked);
        assert_eq!(b.ended().await, Ended::Revoked);
        assert_eq!(c.ended_now(), None);

        assert_eq!(live.revoke_session("s1"), 1);
        assert_eq!(s1.ended().await, Ended::Revoked);
        assert_eq!(s2.ended_now(), None);
        assert_eq!(live.revoke_user(user), 2);
        assert_eq!(s2.ended().await, Ended::Revoked);

        assert_eq!(live.revoke_agent_llm(agent), 1);
        assert_eq!(key.ended().await, Ended::Revoked);
        assert_eq!(admin.ended_now(), None);
        assert_eq!(c.ended_now(), None);

        drop((a, b, c, s1, s2, key, admin));
        assert!(live.is_empty(), "guards unregister when dropped");
    }

    /// A gateway call that read its key needs no second read unless an LLM key was ended in
    /// between; if one was, it reads again (here: the empty database no longer has the key).
    #[tokio::test]
    async fn an_llm_key_is_read_again_only_if_a_key_ended_since() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).await.unwrap();
        let policy = SessionPolicy::from_secs(3600, 86_400);
        let live = Live::new();
        let agent = Uuid::new_v4();
        let key = || Credential::LlmKey {
            agent_id: agent,
            key_hash: "not-in-the-database".into(),
        };
        let seen = live.llm_revocations();
        let call = live.open_llm_key(&db, &policy, key(), seen).await.unwrap();
        let call = call.expect("nothing ended since the read: no second read");
        // Another agent's key ends: this call goes on, but a call that read its key before that
        // reads it again.
        live.revoke_agent_llm(Uuid::new_v4());
        assert_eq!(call.ended_now(), None);
        let raced = live.open_llm_key(&db, &policy, key(), seen).await.unwrap();
        assert!(raced.is_none(), "read again, and the key is gone");
        // An ending after registering reaches the call.
        live.revoke_agent_llm(agent);
        assert_eq!(call.ended_now(), Some(Ended::Revoked));
    }

    #[tokio::test]
    async fn a_deadline_ends_a_connection_as_expired() {
        let live = Live::new();
        let mut guard = live.register(device(Uuid::new_v4(), "a"));
        guard.deadline = Some(tokio::time::Instant::now());
        assert_eq!(guard.ended_now(), Some(Ended::Expired));
        assert_eq!(guard.ended().await, Ended::Expired);
        // A revocation after that doesn't change the story, and doesn't panic.
        live.revoke_device(Uuid::new_v4());
    }

    #[test]
    fn placeholders_match_the_count() {
        assert_eq!(placeholders(1), "?");
        assert_eq!(placeholders(3), "?, ?, ?");
    }
}
