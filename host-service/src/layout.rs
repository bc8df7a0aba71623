//! Checks on the crate's layout that the compiler can't make (test-only).
//!
//! Domain modules never see the HTTP layer: only `http/` itself and `server` (which builds the
//! state and binds the listeners) may name `crate::http`. Anything else that reached for
//! `AppState` would bring back the module cycles issue 15 removed.
//!
//! Each table belongs to one module: only its SQL names the table; everyone else calls the
//! owner's functions (which take a connection when they must join the caller's transaction).
//! A module that wrote another's table would have to be read along with it to know what the
//! table holds.

use std::path::{Path, PathBuf};

/// Files (relative to `src/`, `/`-separated) allowed to name the HTTP layer.
fn may_name_http(relative: &str) -> bool {
    relative.starts_with("http/")
        || relative == "http.rs"
        || relative == "server.rs"
        || relative.starts_with("server/")
        // This check spells out the paths it looks for.
        || relative == "layout.rs"
}

/// Whether Rust source names the crate's `http` module: `crate::http`, `super::http`, or
/// `http` inside a `crate::{…}` group.
fn names_http(source: &str) -> bool {
    if names_path(source, "crate::http") || names_path(source, "super::http") {
        return true;
    }
    let mut rest = source;
    while let Some(start) = rest.find("crate::{") {
        let group = &rest[start + "crate::{".len()..];
        let end = group.find('}').unwrap_or(group.len());
        if group[..end]
            .split(|c: char| c == ',' || c.is_whitespace())
            .any(|item| item == "http" || item.starts_with("http::"))
        {
            return true;
        }
        rest = &group[end..];
    }
    false
}

/// Whether `path` occurs as a whole path segment (`crate::http` but not `crate::httpx`).
fn names_path(source: &str, path: &str) -> bool {
    source.match_indices(path).any(|(at, _)| {
        source[at + path.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

/// Which module owns each table (paths relative to `src/`; a path ending in `/` is a folder).
/// A new migration's tables go here, or the check below fails on the first SQL that names them.
const TABLE_OWNERS: &[(&str, &str)] = &[
    ("users", "auth/"),
    ("sessions", "auth/"),
    ("pairing_tokens", "auth/"),
    ("devices", "auth/"),
    ("device_tokens", "auth/"),
    ("notifications", "notify.rs"),
    ("host_events", "notify.rs"),
    ("agents", "agents/records.rs"),
    ("channels", "chat/"),
    ("channel_members", "chat/"),
    ("messages", "chat/"),
    ("deliveries", "bridge.rs"),
    ("providers", "llm/"),
    ("agent_budgets", "llm/"),
    ("llm_usage", "llm/"),
    ("budget_alerts", "llm/"),
    ("llm_reservations", "llm/"),
    ("deploys", "agents/deploy.rs"),
    ("archives", "agents/archive.rs"),
    ("agent_ops", "agents/archive.rs"),
    ("agent_disk", "agents/quota.rs"),
    ("tool_approvals", "approvals.rs"),
    ("backup_settings", "backup/"),
    ("backup_runs", "backup/"),
    ("host_samples", "overview.rs"),
    ("agent_samples", "overview.rs"),
    ("backup_drills", "backup/"),
];

/// SQL that names another module's table on purpose: (file, table, why). Only a read inside a
/// single statement whose answer must come from one snapshot belongs here.
const SHARED_READS: &[(&str, &str, &str)] = &[
    (
        "notify.rs",
        "users",
        "a notification's recipient name is joined in the statement that reads it",
    ),
    (
        "llm/budget.rs",
        "agents",
        "usage is recorded only while the agent exists, checked in the same INSERT so a purge \
         racing the call leaves no orphan row",
    ),
    (
        "bridge.rs",
        "agents",
        "a new delivery reads the agent's delivery seq in the INSERT that stores it, sent in one \
         round trip after `agents::TAKE_DELIVERY_SEQ` took it",
    ),
];

/// The tables each piece of SQL in `source` names: the word after `FROM`, `JOIN`, `INTO`,
/// `UPDATE`, `TABLE` or `EXISTS` (upper case, as the crate writes SQL), skipping spaces,
/// quotes and line continuations. Test modules at the end of a file are not looked at.
fn sql_tables(source: &str) -> Vec<&str> {
    let source = match source.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &source[..at],
        None => source,
    };
    let mut tables = Vec::new();
    for keyword in ["FROM", "JOIN", "INTO", "UPDATE", "TABLE", "EXISTS"] {
        for (at, _) in source.match_indices(keyword) {
            let before = source[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let after = &source[at + keyword.len()..];
            let rest =
                after.trim_start_matches(|c: char| c.is_whitespace() || c == '"' || c == '\\');
            // `FROM` must be a word of its own: something was skipped after it.
            if rest.len() == after.len() {
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 {
                tables.push(&rest[..end]);
            }
        }
    }
    tables
}

fn owner_of(table: &str) -> Option<&'static str> {
    TABLE_OWNERS
        .iter()
        .find(|(name, _)| *name == table)
        .map(|(_, owner)| *owner)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_http_and_server_name_the_http_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "the source tree was not found at {}",
        src.display()
    );
    let mut offenders = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .expect("under src/")
            .to_string_lossy()
            .replace('\\', "/");
        if may_name_http(&relative) {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("readable source");
        if names_http(&source) {
            offenders.push(relative);
        }
    }
    assert!(
        offenders.is_empty(),
        "domain code must not use the HTTP layer (take plain types or agents::AgentHost \
         instead): {offenders:?}"
    );
}

#[test]
fn each_table_is_named_only_by_its_owner() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offenders = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .expect("under src/")
            .to_string_lossy()
            .replace('\\', "/");
        // This file names every table; `trace/tests.rs` is a test module of its own.
        if relative == "layout.rs" || relative.ends_with("/tests.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("readable source");
        for table in sql_tables(&source) {
            let Some(owner) = owner_of(table) else {
                continue;
            };
            let owned = if owner.ends_with('/') {
                relative.starts_with(owner)
            } else {
                relative == owner
            };
            let shared = SHARED_READS
                .iter()
                .any(|(f, t, _)| *f == relative && *t == table);
            if !owned && !shared {
                offenders.push(format!("{relative} names {table} (owned by {owner})"));
            }
        }
    }
    offenders.sort();
    offenders.dedup();
    assert!(
        offenders.is_empty(),
        "SQL names another module's table (call the owner's functions instead): {offenders:#?}"
    );
}

#[test]
fn every_table_in_the_migrations_has_an_owner() {
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut count = 0;
    for entry in std::fs::read_dir(&migrations).expect("the migrations folder") {
        let path = entry.expect("a directory entry").path();
        let sql = std::fs::read_to_string(&path).expect("a readable migration");
        let upper = sql.to_uppercase();
        for (at, _) in upper.match_indices("CREATE TABLE") {
            let rest = sql[at + "CREATE TABLE".len()..].trim_start();
            let rest = rest
                .strip_prefix("IF NOT EXISTS")
                .or_else(|| rest.strip_prefix("if not exists"))
                .unwrap_or(rest)
                .trim_start();
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let table = &rest[..end];
            count += 1;
            assert!(
                owner_of(table).is_some(),
                "{} creates {table}, which has no owner in layout.rs",
                path.display()
            );
        }
    }
    assert!(count > 10, "no tables found in {}", migrations.display());
}

#[test]
fn the_table_check_reads_sql_as_the_crate_writes_it() {
    assert_eq!(
        sql_tables("\"SELECT id FROM agents WHERE x = ?\""),
        ["agents"]
    );
    assert_eq!(
        sql_tables("\"SELECT a FROM channels c \\\n    JOIN channel_members m ON 1\""),
        ["channels", "channel_members"]
    );
    assert_eq!(
        sql_tables("\"UPDATE agent_disk SET x = 1\""),
        ["agent_disk"]
    );
    assert_eq!(
        sql_tables("\"INSERT INTO deliveries (a) VALUES (1)\""),
        ["deliveries"]
    );
    // Rust and prose are not SQL.
    assert!(sql_tables("impl From<Foo> for Bar {} // read from agents").is_empty());
    assert!(sql_tables("#[cfg(test)]\nmod tests {\n \"DELETE FROM users\" }").is_empty());
}

#[test]
fn the_check_sees_every_way_of_naming_http() {
    assert!(names_http("use crate::http::AppState;"));
    assert!(names_http("fn f(s: &crate::http::AppState) {}"));
    assert!(names_http("use super::http;"));
    assert!(names_http("use crate::{db, http};"));
    assert!(names_http("use crate::{http::AppState, db};"));
    assert!(!names_http("use crate::{db, runtime};"));
    assert!(!names_http("let url = \"http://127.0.0.1\";"));
    assert!(!names_http("use crate::httpish;"));
    assert!(may_name_http("http/agents.rs"));
    assert!(may_name_http("server/listener.rs"));
    assert!(!may_name_http("agents/deploy.rs"));
}
