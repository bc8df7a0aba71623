//! Migrations are forward-only and run on every database an earlier version left behind: for
//! each earlier schema level, a real SQLite file is built by applying the migrations up to that
//! level one at a time, with representative rows written after each (as a host of that version
//! would have written them), then opened by this version (`db::open` migrates it to the newest
//! schema). Every row of every table, in every column it had, must come through unchanged.
//!
//! A new migration needs rows in [`SEEDS`] once it is no longer the newest: the test fails
//! naming it otherwise, and fails if a table is left empty at any level (so its data is really
//! carried across).

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// Rows written right after each migration, in that version's schema.
const SEEDS: &[(i64, &str)] = &[
    (
        1,
        "INSERT INTO users VALUES ('u-owner', 'Owner', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', 1, 1700000000000, 1700000001000);
         INSERT INTO users VALUES ('u-kid', 'kid', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', 0, 1700000002000, NULL);
         INSERT INTO sessions VALUES ('s-hash', 'u-owner', 'csrf', 1700000000000, 1800000000000, 1700000003000);
         INSERT INTO pairing_tokens VALUES ('p-hash', 1700000000000, 1700000300000, 1700000100000, 'cli');
         INSERT INTO devices VALUES ('d-phone', 'phone', 'android', 1700000000000, 1700000004000, NULL);
         INSERT INTO device_tokens VALUES ('t-access', 'd-phone', 'access', 1700000000000, 1700003600000, NULL);
         INSERT INTO device_tokens VALUES ('t-refresh', 'd-phone', 'refresh', 1700000000000, 1800000000000, NULL);
         INSERT INTO notifications (created_at, level, source, title, message, read, data)
             VALUES (1700000005000, 'warning', 'llm', 'Budget', 'half spent', 1, '{\"agent\":\"a\"}');
         INSERT INTO host_events (created_at, kind, data) VALUES (1700000005000, 'agent.status', '{}');",
    ),
    (
        2,
        "INSERT INTO agents (id, slug, display_name, emoji, color, kind, status, model, fallback_models, created_at, paused, token_hash, delivery_seq)
             VALUES ('a-1', 'helper', 'Helper', '🤖', '#336699', 'external', 'running', 'gpt', '[\"small\"]', 1700000006000, 0, 'a1-token', 2);
         INSERT INTO channels (id, name, type, settings, created_at, last_seq, archived, dm_agent_id)
             VALUES ('c-group', 'family', 'group', '{\"mode\":\"all\"}', 1700000006000, 2, 0, NULL);
         INSERT INTO channels (id, name, type, settings, created_at, last_seq, archived, dm_agent_id)
             VALUES ('c-dm', 'helper', 'dm', '{}', 1700000006000, 0, 0, 'a-1');
         INSERT INTO channel_members VALUES ('c-group', 'user:u-owner', 1700000006000);
         INSERT INTO channel_members VALUES ('c-group', 'agent:helper', 1700000006000);
         INSERT INTO messages (id, channel_id, seq, created_seq, author_id, author_type, content, content_type, thread_id, state, client_id, metadata, created_at, edited_at, deleted_at)
             VALUES ('m-1', 'c-group', 1, 1, 'u-owner', 'user', 'hello, ünïcode 🙂', 'text', NULL, 'complete', 'client-1', '{}', 1700000007000, NULL, NULL);
         INSERT INTO messages (id, channel_id, seq, created_seq, author_id, author_type, content, content_type, thread_id, state, client_id, metadata, created_at, edited_at, deleted_at)
             VALUES ('m-2', 'c-group', 2, 2, 'helper', 'agent', 'hi!', 'markdown', 'm-1', 'complete', NULL, '{\"tools\":[]}', 1700000008000, 1700000009000, NULL);
         INSERT INTO deliveries (agent_id, seq, trace_id, message_id, channel_id, thread_id, hops_since_user, payload, created_at, reply_message_id, answered_at)
             VALUES ('a-1', 1, 'tr-1', 'm-1', 'c-group', NULL, 0, '{\"content\":\"hello\"}', 1700000007000, 'm-2', 1700000008000);
         INSERT INTO deliveries (agent_id, seq, trace_id, message_id, channel_id, thread_id, hops_since_user, payload, created_at, reply_message_id, answered_at)
             VALUES ('a-1', 2, 'tr-2', 'm-2', 'c-group', NULL, 1, '{}', 1700000008000, NULL, NULL);",
    ),
    (
        3,
        "INSERT INTO providers VALUES ('local', 'openai-compatible', 'http://127.0.0.1:9/v1', 'sealed-key', '[{\"id\":\"m\"}]', 1, 1700000010000, 1700000010000);
         UPDATE agents SET llm_key_hash = 'llm-hash-1' WHERE id = 'a-1';
         INSERT INTO agent_budgets VALUES ('a-1', 2.5, 'month');
         INSERT INTO llm_usage VALUES ('a-1', '2023-11-14', 'gpt', 3, 1, 100, 200, 0.0125);
         INSERT INTO budget_alerts VALUES ('a-1', '2023-11', 50, 1700000011000);",
    ),
    (
        4,
        "INSERT INTO agents (id, slug, display_name, kind, status, created_at, token_hash, framework, container)
             VALUES ('a-2', 'coder', 'Coder', 'container', 'running', 1700000012000, 'a2-token', 'taos-agent', 'taos-coder');
         UPDATE agents SET framework = NULL, container = NULL WHERE id = 'a-1';
         INSERT INTO deploys VALUES ('dep-1', 'a-2', 'coder', 'taos-agent', 'succeeded', '[{\"step\":\"container\",\"state\":\"done\"}]', NULL, '{\"slug\":\"coder\"}', 1700000012000, 1700000013000);",
    ),
    (
        5,
        "INSERT INTO archives VALUES ('ar-1', 'a-2', 'coder', 'Coder', 'taos-coder', 'snap0', 'archives/ar-1', 1700000014000);",
    ),
    (
        6,
        "INSERT INTO agent_disk VALUES ('a-2', 1073741824, 52428800, 'ok', 1700000015000, 0);",
    ),
    (
        7,
        "UPDATE device_tokens SET issue_id = 'issue-1', successor = 't-refresh-2' WHERE token_hash = 't-refresh';
         INSERT INTO device_tokens VALUES ('t-refresh-2', 'd-phone', 'refresh', 1700000016000, 1800000000000, NULL, 'issue-1', NULL);",
    ),
    (
        8,
        "UPDATE channels SET created_by = 'user:u-owner' WHERE id = 'c-group';
         INSERT INTO notifications (created_at, level, source, title, message, read, data, user_id)
             VALUES (1700000017000, 'info', 'api', 'For the kid', '', 0, '{}', 'u-kid');
         INSERT INTO host_events (created_at, kind, data, user_id) VALUES (1700000017000, 'notification.created', '{\"id\":2}', 'u-kid');",
    ),
    (
        9,
        "INSERT INTO agent_ops VALUES ('a-2', 'archive', 'snapshot', '{\"archive_id\":\"ar-1\"}', 1700000018000);",
    ),
    (
        10,
        "INSERT INTO llm_reservations VALUES ('res-1', 'a-1', 'gpt', 0.02, 1700000019000);",
    ),
    (
        11,
        "UPDATE agents SET network = 'lan' WHERE id = 'a-2';",
    ),
    (
        12,
        "UPDATE agents SET tool_policy = 'ask', tool_overrides = '{\"read_file\":\"auto\"}' WHERE id = 'a-2';
         INSERT INTO tool_approvals VALUES ('ap-1', 'a-2', 'tr-9', 'c-group', 'm-2', 'call-1', 0, 'shell', '{\"cmd\":\"ls\"}', 'h1', 'approved', NULL, 'u-owner', 1700000020000, 1700000320000, 1700000021000);",
    ),
    (
        13,
        "INSERT INTO backup_settings (id, destination, passphrase, keep_daily, keep_weekly, keep_monthly, repository_ready, updated_at)
             VALUES (1, '/mnt/usb/taos', 'sealed-passphrase', 7, 4, 12, 1, 1700000022000);
         INSERT INTO backup_runs (id, state, destination, created_at, started_at, finished_at, snapshot_id, data_added, total_bytes, total_files, error)
             VALUES ('run-1', 'succeeded', '/mnt/usb/taos', 1700000022000, 1700000023000, 1700000024000, 'abcd1234', 1000, 5000, 12, NULL);",
    ),
    (
        14,
        "UPDATE backup_settings SET credentials = 'sealed-credentials' WHERE id = 1;",
    ),
    (
        15,
        "UPDATE backup_settings SET schedule = '{\"kind\":\"daily\",\"at\":\"03:00\"}' WHERE id = 1;
         INSERT INTO backup_runs (id, state, destination, created_at, reason) VALUES ('run-2', 'queued', '/mnt/usb/taos', 1700000025000, 'scheduled');",
    ),
    (
        16,
        "UPDATE deliveries SET cancelled_by = 'u-owner' WHERE agent_id = 'a-1' AND seq = 2;",
    ),
    (
        17,
        "INSERT INTO host_samples VALUES (1700000030000, 12.5, 800000000, 4000000000, 5000000000, 30000000000, 200000000, 8000000000);
         INSERT INTO agent_samples VALUES ('a-1', 1700000030000, 50000000, 120000000, 2000000000);",
    ),
    (
        18,
        "UPDATE backup_runs SET containers = 1, warnings = '[\"agent x was left out\"]' WHERE id = 'run-1';
         UPDATE backup_settings SET drill_every_days = 14 WHERE id = 1;
         INSERT INTO backup_drills VALUES ('drill-1', 'passed', 'scheduled', 'abcd1234', 1700000031000, 1700000032000, '[{\"name\":\"restore\",\"ok\":true,\"detail\":\"\"}]', NULL);",
    ),
];

fn migrations_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

/// The migration files, oldest first, with their versions.
fn migration_files() -> Vec<(i64, std::path::PathBuf)> {
    let mut files: Vec<(i64, std::path::PathBuf)> = std::fs::read_dir(migrations_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let version: i64 = name.split('_').next().unwrap().parse().unwrap();
            (version, p)
        })
        .collect();
    files.sort();
    files
}

async fn connect(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .foreign_keys(true);
    SqliteConnection::connect_with(&options).await.unwrap()
}

/// Every table's rows in every column, as SQLite quotes them, in rowid order.
async fn dump(conn: &mut SqliteConnection) -> BTreeMap<String, Vec<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name != '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for table in tables {
        let columns: Vec<String> =
            sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        out.insert(table.clone(), dump_columns(conn, &table, &columns).await);
    }
    out
}

/// One table's rows in the given columns (those it had before migrating).
async fn dump_columns(conn: &mut SqliteConnection, table: &str, columns: &[String]) -> Vec<String> {
    let row = columns
        .iter()
        .map(|c| format!("'{c}=' || quote(\"{c}\")"))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    sqlx::query_scalar(&format!("SELECT {row} FROM \"{table}\" ORDER BY rowid"))
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("reading {table} ({columns:?}) after migrating: {e}"))
}

#[tokio::test]
async fn every_earlier_schema_migrates_forward_with_its_data() {
    let files = migration_files();
    let newest = files.last().unwrap().0;
    assert_eq!(newest, taos_host::db::schema_version());
    for (version, _) in &files[..files.len() - 1] {
        assert!(
            SEEDS.iter().any(|(v, _)| v == version),
            "migration {version} has no rows in SEEDS (tests/host/migrations.rs): add what a \
             host of that version writes, so upgrades from it are tested with data"
        );
    }
    // Level 0 is a host that never started; then every level short of the newest.
    for level in 0..files.len() {
        let dir = tempfile::tempdir().unwrap();
        let sources = tempfile::tempdir().unwrap();
        let db_path = taos_host::db::db_path(dir.path());
        let mut conn = connect(&db_path).await;
        for (version, file) in &files[..level] {
            // A migrator that knows only the migrations up to this one, as that version's
            // binary did.
            std::fs::copy(file, sources.path().join(file.file_name().unwrap())).unwrap();
            let migrator = sqlx::migrate::Migrator::new(sources.path()).await.unwrap();
            migrator.run(&mut conn).await.unwrap();
            if let Some((_, seed)) = SEEDS.iter().find(|(v, _)| v == version) {
                sqlx::raw_sql(seed)
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("seed of migration {version}: {e}"));
            }
        }
        let before = dump(&mut conn).await;
        for (table, rows) in &before {
            assert!(
                !rows.is_empty(),
                "level {level}: the seeds leave {table} empty"
            );
        }
        let columns_before: BTreeMap<String, Vec<String>> = {
            let mut map = BTreeMap::new();
            for table in before.keys() {
                let columns: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                map.insert(table.clone(), columns);
            }
            map
        };
        conn.close().await.unwrap();

        // This version opens it as it opens any data dir.
        let db = taos_host::db::open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("level {level}: this version cannot open it: {e}"));
        let mut conn = db.acquire().await.unwrap();
        let applied: i64 =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(
            applied, newest,
            "level {level}: not migrated to the newest schema"
        );
        for (table, rows) in &before {
            let after = dump_columns(&mut conn, table, &columns_before[table]).await;
            assert_eq!(
                &after, rows,
                "level {level}: {table} changed when migrating"
            );
        }
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(check, "ok", "level {level}");
        let violations: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
        assert!(
            violations.is_empty(),
            "level {level}: foreign keys broken: {violations:?}"
        );
        drop(conn);
        db.close().await;
    }
}
