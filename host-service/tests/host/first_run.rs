//! First-run takeover: whoever reaches a fresh host first must not become its owner. Setup from
//! the browser needs the code the host keeps in its data dir, and the public listener answers
//! only to its own names, so a web page that rebinds its DNS name to the host gets nowhere.

use std::os::unix::fs::PermissionsExt;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{Host, OWNER, OWNER_PASSWORD};

use crate::start;

async fn configured(host: &Host) -> bool {
    let status: Value = host
        .client()
        .get(host.url("/api/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["configured"].as_bool().unwrap()
}

async fn setup(host: &Host, code: Option<&str>) -> reqwest::Response {
    let mut body = json!({"username": "intruder", "password": "long enough password"});
    if let Some(code) = code {
        body["setup_code"] = json!(code);
    }
    host.client()
        .post(host.url("/api/auth/setup"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn setup_without_the_code_from_the_data_dir_creates_no_owner() {
    let host = start().await;
    // The attack: the first visitor of a fresh host posts setup without a code, or with
    // guesses.
    let none = setup(&host, None).await;
    assert_eq!(
        none.status(),
        StatusCode::BAD_REQUEST,
        "setup without a code was not refused"
    );
    assert!(
        !configured(&host).await,
        "a setup without a code created an owner"
    );
    for guess in ["", "0000-0000-0000", "not a code at all"] {
        let r = setup(&host, Some(guess)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "guess {guess:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_setup_code");
    }
    assert!(!configured(&host).await, "a refused setup created an owner");

    // The code is private to the host: 0600 in the data dir, printed for the person at the
    // console (stdout), never into the log.
    let code_file = host.data_dir.join("setup-code");
    let code = host.setup_code().expect("a fresh host writes a setup code");
    let mode = std::fs::metadata(&code_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the setup code is private");
    let log = std::fs::read_to_string(&host.stderr_log).unwrap();
    assert!(!log.contains(&code), "the setup code is in the log");

    // Someone at the host types the code (case and dashes don't matter): the owner exists,
    // and the code is gone.
    let typed = code.to_lowercase().replace('-', " ");
    let response = host
        .client()
        .post(host.url("/api/auth/setup"))
        .json(&json!({"username": OWNER, "password": OWNER_PASSWORD, "setup_code": typed}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(configured(&host).await);
    assert!(!code_file.exists(), "the used setup code was removed");
    let again = setup(&host, Some(&code)).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn guessing_the_setup_code_is_rate_limited() {
    let host = start().await;
    let code = host.setup_code().unwrap();
    for i in 0..5 {
        let r = setup(&host, Some("AAAA-AAAA-AAAA")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "guess {i}");
    }
    // Locked out: even the right code waits, so guessing costs a minute per five tries.
    let locked = setup(&host, Some(&code)).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(locked.headers().contains_key("retry-after"));
    assert!(!configured(&host).await);
}

#[tokio::test]
async fn the_owner_made_on_the_host_needs_no_code_and_closes_setup() {
    let mut host = start().await;
    let code = host.setup_code().unwrap();
    host.create_user(OWNER, OWNER_PASSWORD);
    assert!(
        host.setup_code().is_none(),
        "`user create` removed the setup code"
    );
    let late = setup(&host, Some(&code)).await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    assert_eq!(
        host.login(OWNER, OWNER_PASSWORD).await.status(),
        StatusCode::OK
    );

    // A host restarted with an owner makes no code.
    let temp = host.take_temp();
    let data_dir = host.data_dir.clone();
    host.terminate().await.unwrap();
    let host = Host::start_with(
        crate::BIN,
        taos_e2e::HostOptions {
            data_dir: Some(data_dir),
            env: vec![],
        },
    )
    .await
    .unwrap();
    assert!(host.setup_code().is_none());
    drop(temp);
}

/// A client that reaches this host under another name, as a browser does after a page's DNS
/// name was rebound to the host's address. HTTP/2: the name is in `:authority`.
fn rebound_client(host: &Host, name: &str) -> (reqwest::Client, String) {
    rebound_client_with(host, name, taos_pin::pinned_client_config(host.pin))
}

/// The same over HTTP/1.1: the name is in the `Host` header.
fn rebound_http1_client(host: &Host, name: &str) -> (reqwest::Client, String) {
    let mut tls = taos_pin::pinned_client_config(host.pin);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    rebound_client_with(host, name, tls)
}

fn rebound_client_with(
    host: &Host,
    name: &str,
    tls: rustls::ClientConfig,
) -> (reqwest::Client, String) {
    let addr: std::net::SocketAddr = host
        .public_url
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(name, addr)
        .build()
        .unwrap();
    (client, format!("https://{name}:{}", addr.port()))
}

#[tokio::test]
async fn a_request_for_a_foreign_host_name_is_refused_and_changes_nothing() {
    let host = start().await;
    let (evil, base) = rebound_client(&host, "evil.example");

    // The page tries first-run setup with the right code (say it was read somewhere): refused
    // before anything runs.
    let mut setup_body = json!({"username": "intruder", "password": "long enough password"});
    if let Some(code) = host.setup_code() {
        setup_body["setup_code"] = json!(code);
    }
    let r = evil
        .post(format!("{base}/api/auth/setup"))
        .json(&setup_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_host");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allowed_hosts"));
    assert!(
        !configured(&host).await,
        "the rebound page created an owner"
    );
    assert!(host.setup_code().is_some());

    // Nothing else answers under that name either, over HTTP/2 or HTTP/1.1: the UI, health,
    // the status; nor setup over HTTP/1.1.
    let (evil_h1, _) = rebound_http1_client(&host, "evil.example");
    for path in ["/", "/api/health", "/api/auth/status"] {
        for (client, version) in [
            (&evil, reqwest::Version::HTTP_2),
            (&evil_h1, reqwest::Version::HTTP_11),
        ] {
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.version(), version);
            assert_eq!(
                r.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "{path} {version:?}"
            );
        }
    }
    let r = evil_h1
        .post(format!("{base}/api/auth/setup"))
        .json(&setup_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(!configured(&host).await);

    // With an owner and a session cookie the browser would attach: still refused.
    let session = host.setup_owner().await;
    let r = evil
        .post(format!("{base}/api/chat/channels"))
        .header("cookie", format!("taos_session={}", session.session_cookie))
        .header("x-csrf-token", &session.csrf_token)
        .json(&json!({"name": "planted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let channels: Vec<Value> = host
        .admin(Method::GET, "/api/chat/channels")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(channels.iter().all(|c| c["name"] != "planted"));

    // The host's own names and addresses answer.
    for (local, base) in [
        rebound_client(&host, "localhost"),
        rebound_http1_client(&host, "localhost"),
    ] {
        let r = local
            .get(format!("{base}/api/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = host
        .client()
        .get(host.url("/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "by address");
}

#[tokio::test]
async fn configured_names_are_answered() {
    let host = Host::start_with(
        crate::BIN,
        taos_e2e::HostOptions {
            data_dir: None,
            env: vec![
                (
                    "TAOS_SERVER__ALLOWED_HOSTS".into(),
                    "taos.example.org".into(),
                ),
                ("TAOS_SERVER__HOST_NAME".into(), "kitchen-pi".into()),
            ],
        },
    )
    .await
    .unwrap();
    for (name, expect) in [
        ("taos.example.org", StatusCode::OK),
        ("kitchen-pi", StatusCode::OK),
        ("kitchen-pi.local", StatusCode::OK),
        ("other.example.org", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let (client, base) = rebound_client(&host, name);
        let r = client
            .get(format!("{base}/api/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expect, "{name}");
    }
}

#[tokio::test]
async fn the_login_page_can_show_the_hosts_fingerprint() {
    let host = start().await;
    let status: Value = host
        .client()
        .get(host.url("/api/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cli = host.cli(&["fingerprint"]);
    assert!(cli.status.success());
    let printed = String::from_utf8(cli.stdout).unwrap();
    assert_eq!(status["fingerprint"], printed.trim());
    assert!(printed.starts_with("sha256/"));
}
