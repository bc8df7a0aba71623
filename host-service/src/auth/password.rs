//! argon2id password hashes, computed by one hashing worker.
//!
//! Each hash needs 19 MiB of working memory (argon2id, m = 19 MiB, t = 2, p = 1). Hashing on
//! whatever thread asked would let concurrent logins multiply that (300 parallel logins took a
//! host to 5.6 GiB), and glibc keeps each thread's freed 19 MiB in that thread's arena, so even
//! a few logins left the host 50-100 MiB fatter for good. So every hash and every check runs on
//! one dedicated thread that owns one preallocated memory block, and that block's pages are
//! handed back to the kernel whenever the worker has nothing queued. At most [`QUEUE_DEPTH`]
//! jobs wait; past that callers get [`AuthError::Busy`] at once instead of queueing work.

use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use super::AuthError;

pub const MIN_PASSWORD_CHARS: usize = 10;
/// Long enough for any passphrase, short enough that hashing can't be used to burn CPU.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Jobs that may wait for the worker while it hashes: enough for a household signing in at
/// once, small because a login at the back of a full queue on a Pi already waits a few seconds.
pub const QUEUE_DEPTH: usize = 8;
/// What a caller refused for a full queue is told to wait.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The parameters new hashes get: argon2's defaults (argon2id, 19 MiB, 2 passes, 1 lane).
const PARAMS: Params = Params::DEFAULT;

pub fn validate(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::BadInput(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::BadInput(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A real hash (of a throwaway password, with the parameters new hashes get), verified against
/// when the username doesn't exist, so a login for an unknown user costs what one for a known
/// user costs. A constant, so making it never costs a hash of its own.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZHVtbXlzYWx0Zm9ydGltaW5n$\
    Cri+1BtLSFnTwcrjqcTB9cLQjR9nw8kFKZtfPsBZUqw";

/// Hashes a new password on the worker.
pub async fn hash(password: String) -> Result<String, AuthError> {
    let (reply, answer) = oneshot::channel();
    submit(Job::Hash { password, reply })?;
    answer
        .await
        .map_err(|_| AuthError::Hash("the hashing worker stopped".to_string()))?
}

/// Checks a password against a stored hash on the worker. `Ok(false)` for a wrong password or
/// an unusable stored hash; `Err(Busy)` when the worker's queue is full.
pub async fn verify(password: String, stored_hash: String) -> Result<bool, AuthError> {
    let (reply, answer) = oneshot::channel();
    submit(Job::Verify {
        password,
        stored_hash,
        reply,
    })?;
    Ok(answer.await.unwrap_or(false))
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, AuthError>>,
    },
    Verify {
        password: String,
        stored_hash: String,
        reply: oneshot::Sender<bool>,
    },
}

fn submit(job: Job) -> Result<(), AuthError> {
    static WORKER: OnceLock<Result<SyncSender<Job>, String>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (jobs, queue) = mpsc::sync_channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("taos-argon2".to_string())
            .spawn(move || run_worker(&queue))
            .map(|_| jobs)
            .map_err(|e| e.to_string())
    });
    let jobs = worker
        .as_ref()
        .map_err(|e| AuthError::Hash(format!("cannot start the hashing worker: {e}")))?;
    match jobs.try_send(job) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(AuthError::Busy {
            retry_after_secs: BUSY_RETRY_AFTER_SECS,
        }),
        Err(TrySendError::Disconnected(_)) => {
            Err(AuthError::Hash("the hashing worker stopped".to_string()))
        }
    }
}

fn run_worker(queue: &mpsc::Receiver<Job>) {
    let mut memory = vec![Block::new(); PARAMS.block_count()];
    loop {
        let job = match queue.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty) => {
                // Nothing waiting: give the block's pages back before sleeping, so a host
                // that served logins is as small as one that didn't.
                release_pages(&mut memory);
                match queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        match job {
            Job::Hash { password, reply } => {
                // The login that asked may have been cancelled (client gone); the result is unwanted.
                let _ = reply.send(hash_with(&mut memory, &password));
            }
            Job::Verify {
                password,
                stored_hash,
                reply,
            } => {
                // The login that asked may have been cancelled (client gone); the result is unwanted.
                let _ = reply.send(verify_with(&mut memory, &password, &stored_hash));
            }
        }
    }
}

fn argon2id() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS)
}

/// A new PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), computed in `memory`.
fn hash_with(memory: &mut [Block], password: &str) -> Result<String, AuthError> {
    let bad = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| bad(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2id()
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_bytes,
            &mut out,
            &mut memory[..PARAMS.block_count()],
        )
        .map_err(|e| bad(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&PARAMS).try_into().map_err(|e| bad(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&out).map_err(|e| bad(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches `stored_hash`, computed in `memory`. A stored hash that needs
/// more memory than the worker has (none we write does) is refused rather than allocated for.
fn verify_with(memory: &mut [Block], password: &str, stored_hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored_hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    if params.block_count() > memory.len() {
        tracing::warn!(
            m_cost = params.m_cost(),
            "a stored password hash needs more memory than the hashing worker has"
        );
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let blocks = params.block_count();
    if Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    super::secrets_equal_bytes(out, expected.as_bytes())
}

/// Hands the pages of `memory` back to the kernel (`MADV_DONTNEED`); they read as zeros the
/// next time they are touched. The allocation itself stays, so hashing never mallocs.
#[allow(unsafe_code)]
fn release_pages(memory: &mut [Block]) {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
    if page == 0 {
        return;
    }
    let start = memory.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(memory);
    let first = start.next_multiple_of(page);
    let last = end - end % page;
    if last <= first {
        return;
    }
    // SAFETY: [first, last) lies inside `memory`, to which we hold the only (mutable)
    // reference, so nothing else reads or writes it meanwhile; it is private anonymous memory
    // from the allocator, which MADV_DONTNEED turns into zero pages on next access, and a
    // `Block` is plain `u64`s, for which all-zero is a valid value.
    unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Vec<Block> {
        vec![Block::new(); PARAMS.block_count()]
    }

    #[test]
    fn hashes_are_argon2id_with_the_default_parameters_and_verify() {
        let mut memory = memory();
        let h = hash_with(&mut memory, "correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_with(&mut memory, "correct horse battery", &h));
        assert!(!verify_with(&mut memory, "wrong horse battery", &h));
        assert!(!verify_with(&mut memory, "anything", "not a hash"));
        // Pages given back read as zeros and hashing still works after.
        release_pages(&mut memory);
        assert!(verify_with(&mut memory, "correct horse battery", &h));
    }

    #[test]
    fn hashes_made_by_the_argon2_crate_verify_and_the_dummy_is_one() {
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let h = Argon2::default()
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        let mut memory = memory();
        assert!(verify_with(&mut memory, "correct horse battery", &h));
        assert!(!verify_with(&mut memory, "correct horse battery!", &h));
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(Params::try_from(&dummy).unwrap().m_cost(), PARAMS.m_cost());
        assert!(verify_with(
            &mut memory,
            "dummy password for timing",
            DUMMY_HASH
        ));
    }

    #[test]
    fn a_hash_needing_more_memory_than_the_worker_has_is_refused() {
        let mut small = vec![Block::new(); 64];
        assert!(!verify_with(&mut small, "x", DUMMY_HASH));
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        assert!(validate("123456789").is_err());
        assert!(validate("1234567890").is_ok());
        assert!(validate(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}
