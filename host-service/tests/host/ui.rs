//! The web UI: how the host serves it, and the whole app end to end in real Chromium
//! (`ui/e2e/run.mjs`, playwright-core driving Debian's chromium) against the real host, real
//! LiteLLM in front of the fake upstream, and real incus. `scripts/dev-browser.sh` (run by
//! scripts/test.sh) installs chromium and the UI's node_modules and builds `ui/dist`, which
//! build.rs embeds in the host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use taos_e2e::fake_llm::FakeLlm;
use taos_e2e::Host;

use taos_e2e::fixtures::{require_image, Remove, LITELLM};

use crate::BIN;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const NOT_BUILT: &str = "the web UI is not built";

#[tokio::test]
async fn the_ui_is_served_with_strict_headers_and_the_api_keeps_its_404s() {
    let host = crate::start().await;
    let client = host.client();
    let index = client.get(host.url("/")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    let h = index.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    let body = index.text().await.unwrap();

    // Unknown API paths stay JSON 404s, for every method; so do non-GETs outside /api.
    for (method, path) in [
        ("GET", "/api/nope"),
        ("GET", "/api"),
        ("POST", "/api/nope"),
        ("POST", "/agents"),
        ("DELETE", "/"),
    ] {
        let r = client
            .request(method.parse().unwrap(), host.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{method} {path}");
    }
    // The API itself is untouched.
    let health = client.get(host.url("/api/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    if body.contains(NOT_BUILT) {
        // Built before ui/dist existed: the page says how to build it (cargo test on a clean
        // clone). scripts/test.sh builds the UI first, so CI checks the real app below.
        assert!(body.contains("npm run build"));
        if taos_e2e::skip_for_missing(
            "the embedded UI checks",
            "ui/dist was not built when taos-host was compiled (scripts/build-ui.sh)",
        ) {
            return;
        }
    }
    assert!(body.contains("<div id=\"app\">"), "{body}");
    assert!(!body.contains("<script>"), "no inline scripts");
    let etag = h["etag"].to_str().unwrap().to_string();
    let again = client
        .get(host.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // Deep links get the app (its router shows the page); missing hashed assets do not.
    let deep = client
        .get(host.url("/chat/some-channel"))
        .send()
        .await
        .unwrap();
    assert_eq!(deep.status(), StatusCode::OK);
    assert_eq!(deep.text().await.unwrap(), body);
    let missing = client
        .get(host.url("/assets/index-00000000.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Every script and stylesheet the page names is served, immutable, with its type.
    let assets: Vec<&str> = body
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{body}");
    for asset in assets {
        let r = client.get(host.url(asset)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let ty = r.headers()["content-type"].to_str().unwrap().to_string();
        if asset.ends_with(".js") {
            assert_eq!(ty, "text/javascript; charset=utf-8");
        } else if asset.ends_with(".css") {
            assert_eq!(ty, "text/css; charset=utf-8");
        }
    }
}

/// Why the browser test cannot run here, if it cannot.
fn browser_missing() -> Option<String> {
    let ui = repo().join("ui");
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("no /usr/bin/chromium (scripts/dev-browser.sh installs it)".into());
    }
    if !ui.join("node_modules/playwright-core").is_dir() {
        return Some("no ui/node_modules (scripts/dev-browser.sh runs npm ci)".into());
    }
    None
}

#[tokio::test]
async fn the_whole_app_in_chromium_against_the_real_host() {
    if let Some(why) = browser_missing() {
        if taos_e2e::skip_for_missing("the browser end-to-end test", &why) {
            return;
        }
    }
    require_image().await;
    let _turn = LITELLM.lock().await;
    let key = "upstream-secret-ui-e2e";
    let fake = FakeLlm::start(key, &["fake-gpt", "fake-other"]).await;
    // Home's figures every 5 s, so the browser sees one arrive live without a long wait.
    let host = Host::start_with(
        BIN,
        taos_e2e::HostOptions::with_env(&[("TAOS_OVERVIEW__SAMPLE_SECS", "5")]),
    )
    .await
    .unwrap();
    let page = host.client().get(host.url("/")).send().await.unwrap();
    assert!(
        !page.text().await.unwrap().contains(NOT_BUILT),
        "taos-host was built without ui/dist: run scripts/dev-browser.sh, then cargo test again"
    );
    // Another checkout running this test at the same time on this machine picks another name
    // (TAOS_E2E_AGENT), so the two never share a container.
    let agent = std::env::var("TAOS_E2E_AGENT").unwrap_or_else(|_| "UI Helper".into());
    let container = format!(
        "taos-{}",
        agent
            .to_lowercase()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-")
    );
    let _cleanup = Remove(container);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../ui-e2e");
    let _ = std::fs::remove_dir_all(&out);
    eprintln!("screenshots go to {}", out.display());
    let run = tokio::process::Command::new("node")
        .arg("e2e/run.mjs")
        .current_dir(repo().join("ui"))
        .env("TAOS_URL", &host.public_url)
        .env("TAOS_LOCAL_TOKEN", host.local_token())
        .env("TAOS_DATA_DIR", &host.data_dir)
        .env("TAOS_FINGERPRINT", host.pin.to_string())
        .env("TAOS_FAKE_URL", fake.url())
        .env("TAOS_FAKE_KEY", key)
        .env("TAOS_E2E_OUT", &out)
        .env("TAOS_E2E_AGENT", &agent)
        // "Connect an agent" is checked by running the real sidecar with what the page shows.
        .env("TAOS_AGENT_BIN", taos_e2e::workspace_binary("taos-agent"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("the browser test finished within 15 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}{stderr}");
    if !output.status.success() {
        let log = std::fs::read_to_string(&host.stderr_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!(
            "host log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(output.status.success(), "ui e2e failed (see above)");
    assert!(stdout.contains("ui e2e: all steps passed"));
    let shots = std::fs::read_dir(&out).unwrap().count();
    assert!(shots >= 15, "only {shots} screenshots in {}", out.display());
    assert!(
        fake.calls() >= 1,
        "the reply came through the fake upstream"
    );
}
