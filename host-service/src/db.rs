//! The host database: one SQLite file, WAL, foreign keys on, migrations embedded in the binary.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::fsutil;

pub const DB_FILE: &str = "taos.db";

pub type Db = SqlitePool;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create database file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database: {0}")]
    Open(#[from] sqlx::Error),
    #[error("cannot migrate database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// Opens (creating 0600 if needed) and migrates the host database.
pub async fn open(data_dir: &Path) -> Result<Db, DbError> {
    let path = db_path(data_dir);
    // Create the file ourselves so it is 0600 from the first byte; SQLite gives its -wal and -shm
    // files the same mode as the database file.
    fsutil::touch_private(&path).map_err(|source| DbError::Create {
        path: path.clone(),
        source,
    })?;
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(&path)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL in WAL mode fsyncs each commit: an acknowledged write survives power loss.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        // sqlx pings a pooled connection before handing it out (a round trip to the
        // connection's worker thread: two thread wake-ups), to find network connections that
        // died while idle. A SQLite connection is a file in this process: it doesn't die idle,
        // and a crashed worker fails the statement that follows anyway. Each query on the pool
        // would otherwise cost two round trips.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Whether the database exists and is on an older schema than this binary's: the next `open`
/// will migrate it (and a snapshot of the data dir should come first).
pub async fn needs_migration(data_dir: &Path) -> Result<bool, DbError> {
    use sqlx::Connection;
    let path = db_path(data_dir);
    if !path.exists() {
        return Ok(false);
    }
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(&path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    // No table yet: an empty database, nothing to protect.
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(None);
    conn.close().await?;
    Ok(applied.is_some_and(|v| v < schema_version()))
}

/// The newest migration this binary knows (the database schema it writes). Backups are tagged
/// with it; a restore refuses a backup from a newer one, which this binary could not open.
pub fn schema_version() -> i64 {
    sqlx::migrate!("./migrations")
        .migrations
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, the one time format stored in the database.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
