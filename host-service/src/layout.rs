//! Checks on the crate's layout that the compiler can't make (test-only).
//!
//! Domain modules never see the HTTP layer: only `http/` itself and `server` (which builds the
//! state and binds the listeners) may name `crate::http`. Anything else that reached for
//! `AppState` would bring back the module cycles issue 15 removed.

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
