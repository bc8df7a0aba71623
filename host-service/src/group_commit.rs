//! Group commit: writers that each need a durable commit of their own share one.
//!
//! A writer queues its work; one task takes everything waiting (up to [`MAX_BATCH`]), runs
//! each piece in queue order inside one transaction, each in a savepoint of its own (so one
//! that fails takes only itself back), commits once — one fsync for the lot — and then
//! finishes each piece in queue order. A writer hears "done" only from its finish, after the
//! commit: nothing is acknowledged before it is on disk.
//!
//! Every piece names an order lock (for chat, its channel's write lock). The task holds the
//! locks of the whole batch, taken in key order, from before the transaction begins until the
//! last piece is finished, so anything else that serializes on those locks sees the batch as
//! one step: a chat edit can't publish between a batched message's commit and its publish.
//! A piece's place in the order is its place in the queue. A writer must not wait for its
//! answer while it holds its order lock (the task may be waiting for that lock).
//!
//! The task keeps its pooled connection between batches that follow each other closely
//! ([`KEEP_CONNECTION`]), and gives it back before it waits for an order lock someone holds
//! (that holder may need a connection).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, Mutex};

use crate::db::Db;

/// Most pieces in one transaction: bounds how long the first waits behind the others.
const MAX_BATCH: usize = 64;

/// How long the task keeps its connection after a batch, for the next one. Taking a pooled
/// connection and giving it back costs round trips to its worker thread, and a connection
/// that comes back after others committed starts with an empty page cache; the writer's own
/// commits leave its cache as it was. A person posting one message after another (or an
/// agent streaming an answer) keeps the same connection; an idle host holds none.
const KEEP_CONNECTION: std::time::Duration = std::time::Duration::from_millis(100);

/// The batch could not be made durable; no piece of it is stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("could not store it: {0}")]
pub struct CommitFailed(pub String);

/// Called once, after the batch: `Ok` when the piece is on disk, `Err` when the batch's
/// transaction was rolled back.
pub type Finish = Box<dyn FnOnce(Result<(), CommitFailed>) + Send>;

/// One writer's piece, run inside the batch's transaction. `Some(finish)`: it wrote, and is
/// finished after the commit. `None`: it wrote nothing that should stay (it failed, or found
/// its work already done) and has told its writer itself; its savepoint is rolled back.
/// A piece dropped without being run (the transaction could not begin) drops whatever it
/// captured, which its writer sees as a closed reply channel.
pub type Work =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Option<Finish>> + Send>;

struct Piece {
    order_key: String,
    order: Arc<Mutex<()>>,
    work: Work,
}

/// The queue to the committing task. Clones share it.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Piece>,
}

impl GroupCommit {
    /// Starts the committing task on `db`. It ends when the last `GroupCommit` is dropped.
    pub fn start(db: Db) -> GroupCommit {
        // Unbounded so that queueing never waits while the writer holds its order lock (the
        // task may be waiting for that lock). What bounds it is the callers: HTTP requests and
        // WebSocket frames, each with their own limits.
        let (queue, pieces) = mpsc::unbounded_channel();
        tokio::spawn(run(db, pieces));
        GroupCommit { queue }
    }

    /// Queues `work`, ordered by `order` (see the module docs).
    pub fn submit(
        &self,
        order_key: &str,
        order: Arc<Mutex<()>>,
        work: Work,
    ) -> Result<(), CommitFailed> {
        self.queue
            .send(Piece {
                order_key: order_key.to_string(),
                order,
                work,
            })
            .map_err(|_| CommitFailed("the host is shutting down".into()))
    }
}

async fn run(db: Db, mut pieces: mpsc::UnboundedReceiver<Piece>) {
    let mut kept: Option<PoolConnection<Sqlite>> = None;
    loop {
        let next = match kept {
            None => pieces.recv().await,
            Some(_) => match tokio::time::timeout(KEEP_CONNECTION, pieces.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    kept = None;
                    continue;
                }
            },
        };
        let Some(first) = next else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pieces.try_recv() {
                Ok(piece) => batch.push(piece),
                Err(_) => break,
            }
        }
        let mut locks: Vec<(String, Arc<Mutex<()>>)> = batch
            .iter()
            .map(|p| (p.order_key.clone(), p.order.clone()))
            .collect();
        locks.sort_by(|a, b| a.0.cmp(&b.0));
        locks.dedup_by(|a, b| a.0 == b.0);
        let mut held = Vec::with_capacity(locks.len());
        for (_, lock) in locks {
            let guard = match lock.clone().try_lock_owned() {
                Ok(guard) => guard,
                Err(_) => {
                    // Its holder may need a connection: don't sit on one while waiting.
                    kept = None;
                    lock.lock_owned().await
                }
            };
            held.push(guard);
        }
        let mut conn = match kept.take() {
            Some(conn) => conn,
            None => match db.acquire().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Dropping the batch tells every writer (their reply channels close).
                    tracing::error!("group commit: no database connection: {e}");
                    continue;
                }
            },
        };
        // A batch that failed gives its connection back: it may be what failed.
        if commit_batch(&mut conn, batch).await {
            kept = Some(conn);
        }
        drop(held);
    }
}

/// Runs and commits one batch on `conn`; whether it committed.
async fn commit_batch(conn: &mut SqliteConnection, batch: Vec<Piece>) -> bool {
    // IMMEDIATE: take the write lock up front, so a piece that reads before it writes can't
    // find its snapshot outdated half way (SQLITE_BUSY_SNAPSHOT is not retried).
    let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            // Dropping the batch tells every writer (their reply channels close).
            tracing::error!("group commit: cannot begin a transaction: {e}");
            return false;
        }
    };
    let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
    let mut broken = None;
    // A piece alone needs no savepoint: taking it back is rolling the transaction back. Each
    // statement is a round trip to SQLite's worker thread, and a writer posting alone (one
    // person in a conversation) is the common case.
    if batch.len() == 1 {
        if let Some(piece) = batch.into_iter().next() {
            match (piece.work)(&mut tx).await {
                Some(finish) => finishes.push(finish),
                None => {
                    if let Err(e) = tx.rollback().await {
                        tracing::error!("group commit: rollback failed: {e}");
                        return false;
                    }
                    return true;
                }
            }
        }
    } else {
        for piece in batch {
            if broken.is_some() {
                break;
            }
            if let Err(e) = sqlx::query("SAVEPOINT batched").execute(&mut *tx).await {
                broken = Some(e);
                break;
            }
            let kept = match (piece.work)(&mut tx).await {
                Some(finish) => {
                    finishes.push(finish);
                    sqlx::query("RELEASE batched").execute(&mut *tx).await
                }
                None => {
                    sqlx::query("ROLLBACK TO batched; RELEASE batched")
                        .execute(&mut *tx)
                        .await
                }
            };
            if let Err(e) = kept {
                broken = Some(e);
            }
        }
    }
    let outcome = match broken {
        // A savepoint statement failed: the transaction's state is unknown, so none of it stays.
        Some(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::error!("group commit: rollback failed: {rollback}");
            }
            Err(e)
        }
        None => tx.commit().await,
    };
    let outcome = outcome.map_err(|e| {
        tracing::error!("group commit: the batch was not stored: {e}");
        CommitFailed(e.to_string())
    });
    let committed = outcome.is_ok();
    for finish in finishes {
        finish(outcome.clone());
    }
    committed
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;
    use tokio::sync::oneshot;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER NOT NULL UNIQUE)")
            .execute(&db)
            .await
            .unwrap();
        (dir, db)
    }

    fn insert(n: i64, reply: oneshot::Sender<Result<(), String>>) -> Work {
        Box::new(move |conn| {
            Box::pin(async move {
                match sqlx::query("INSERT INTO t (n) VALUES (?)")
                    .bind(n)
                    .execute(&mut *conn)
                    .await
                {
                    Ok(_) => Some(Box::new(move |done: Result<(), CommitFailed>| {
                        let _ = reply.send(done.map_err(|e| e.to_string()));
                    }) as Finish),
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        None
                    }
                }
            })
        })
    }

    #[tokio::test]
    async fn pieces_commit_together_in_order_and_a_failing_one_takes_only_itself_back() {
        let (_dir, db) = db().await;
        let commits = GroupCommit::start(db.clone());
        let order = Arc::new(Mutex::new(()));
        // Held while queueing, so the task batches all of them at once.
        let holding = order.clone().lock_owned().await;
        let mut answers = Vec::new();
        for n in [1, 2, 2, 3] {
            let (tx, rx) = oneshot::channel();
            commits.submit("c", order.clone(), insert(n, tx)).unwrap();
            answers.push(rx);
        }
        drop(holding);
        let mut results = Vec::new();
        for rx in answers {
            results.push(rx.await.unwrap());
        }
        assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok());
        assert!(
            results[2].as_ref().unwrap_err().contains("UNIQUE"),
            "{results:?}"
        );
        let rows: Vec<i64> = sqlx::query("SELECT n FROM t ORDER BY rowid")
            .fetch_all(&db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(rows, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_piece_alone_that_fails_leaves_nothing_and_the_next_one_commits() {
        let (_dir, db) = db().await;
        let commits = GroupCommit::start(db.clone());
        let order = Arc::new(Mutex::new(()));
        for (n, ok) in [(5, true), (5, false), (6, true)] {
            let (tx, rx) = oneshot::channel();
            commits.submit("c", order.clone(), insert(n, tx)).unwrap();
            let result = rx.await.unwrap();
            assert_eq!(result.is_ok(), ok, "{n}: {result:?}");
        }
        let rows: Vec<i64> = sqlx::query("SELECT n FROM t ORDER BY rowid")
            .fetch_all(&db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(rows, vec![5, 6]);
    }

    #[tokio::test]
    async fn the_order_lock_is_held_until_every_piece_is_finished() {
        let (_dir, db) = db().await;
        let commits = GroupCommit::start(db.clone());
        let order = Arc::new(Mutex::new(()));
        let (tx, rx) = oneshot::channel();
        let seen_locked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, lock) = (seen_locked.clone(), order.clone());
        let work: Work = Box::new(move |conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (n) VALUES (7)")
                    .execute(&mut *conn)
                    .await
                    .ok()?;
                Some(Box::new(move |done: Result<(), CommitFailed>| {
                    seen.store(
                        lock.try_lock().is_err(),
                        std::sync::atomic::Ordering::SeqCst,
                    );
                    let _ = tx.send(done);
                }) as Finish)
            })
        });
        commits.submit("c", order, work).unwrap();
        rx.await.unwrap().unwrap();
        assert!(seen_locked.load(std::sync::atomic::Ordering::SeqCst));
    }
}
