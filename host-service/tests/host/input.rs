//! Bad input gets a clear 4xx and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{start, BIN};

async fn notifications(host: &taos_e2e::Host) -> Vec<Value> {
    host.admin(Method::GET, "/api/notifications")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400() {
    let host = start().await;
    let cases: &[(&str, &str)] = &[
        (
            "/api/auth/setup",
            "{\"username\": \"owner\", \"password\": ",
        ),
        (
            "/api/auth/setup",
            "{\"username\": 12, \"password\": \"long enough pass\"}",
        ),
        ("/api/auth/setup", "[]"),
        ("/api/auth/login", "not json"),
        (
            "/api/devices/pair",
            "{\"token\": null, \"device_name\": \"x\", \"platform\": \"linux\"}",
        ),
        ("/api/auth/refresh", "{\"refresh_token\": [\"x\"]}"),
        (
            "/api/auth/setup",
            "{\"username\": \"owner\", \"password\": \"long enough pass\", \"setup_code\": \"x\", \"admin\": true}",
        ),
    ];
    for (path, body) in cases {
        let r = host
            .client()
            .post(host.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_json", "{path} {body}");
    }
    let status: Value = host
        .client()
        .get(host.url("/api/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["configured"], false,
        "no refused setup created a user"
    );

    let wrong_level = host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "panic", "title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_level.status(), StatusCode::BAD_REQUEST);
    let empty_title = host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "info", "title": "  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty_title.status(), StatusCode::BAD_REQUEST);
    let bad_source = host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "info", "title": "x", "source": "../etc/passwd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_source.status(), StatusCode::BAD_REQUEST);
    let no_content_type = host
        .admin(Method::POST, "/api/notifications")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_content_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A notification's data is capped at 4 KiB of JSON, so a script can't fill the database.
    let big = host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "info", "title": "x", "data": {"blob": "a".repeat(4096)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::BAD_REQUEST);
    let err: Value = big.json().await.unwrap();
    assert!(
        err["error"]["message"].as_str().unwrap().contains("4096"),
        "{err}"
    );
    assert!(notifications(&host).await.is_empty());
    let fits = host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "info", "title": "x", "data": {"blob": "a".repeat(4000)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn bad_query_and_path_values_are_400() {
    let host = start().await;
    for path in [
        "/api/notifications?limit=0",
        "/api/notifications?limit=100000",
        "/api/notifications?limit=abc",
        "/api/notifications?unread_only=perhaps",
    ] {
        let r = host.admin(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    for path in [
        "/api/notifications/abc/read",
        "/api/notifications/%00/read",
        "/api/notifications/..%2F..%2Fx/read",
    ] {
        let r = host.admin(Method::POST, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    let unknown = host
        .admin(Method::POST, "/api/notifications/999999/read")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let host = start().await;
    let huge = json!({"level": "info", "title": "x", "message": "a".repeat(2 * 1024 * 1024)});
    let r = host
        .admin(Method::POST, "/api/notifications")
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "payload_too_large");
    let unauth = host
        .client()
        .post(host.url("/api/auth/login"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(notifications(&host).await.is_empty());
}

#[tokio::test]
async fn body_limit_is_configurable() {
    let host = taos_e2e::Host::start_with(
        BIN,
        taos_e2e::HostOptions {
            env: vec![("TAOS_SERVER__MAX_BODY_BYTES".into(), "2048".into())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let body = json!({"level": "info", "title": "x", "message": "a".repeat(3000)});
    let r = host
        .admin(Method::POST, "/api/notifications")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

fn serve_once(data_dir: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    command.arg("--data-dir").arg(data_dir).arg("serve");
    command
        .env("TAOS_SERVER__BIND", "127.0.0.1:0")
        .env("TAOS_SERVER__AGENT_BIND", "127.0.0.1:0");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn unknown_config_key_stops_the_host_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("taos.toml"),
        "[server]\nbindd = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = serve_once(&data, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bindd"), "{stderr}");

    std::fs::write(data.join("taos.toml"), "").unwrap();
    let out = serve_once(&data, &[("TAOS_SERVER__BINDD", "x")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TAOS_SERVER__BINDD"));
}

#[test]
fn insecure_http_off_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = serve_once(
        &data,
        &[
            ("TAOS_SERVER__INSECURE_HTTP", "true"),
            ("TAOS_SERVER__BIND", "0.0.0.0:0"),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("insecure_http") && stderr.contains("loopback"),
        "{stderr}"
    );
}

#[tokio::test]
async fn insecure_http_on_loopback_serves_plain_http() {
    let host = taos_e2e::Host::start_with(
        BIN,
        taos_e2e::HostOptions {
            env: vec![("TAOS_SERVER__INSECURE_HTTP".into(), "true".into())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(host.public_url.starts_with("http://"));
    let health: Value = taos_e2e::http_client()
        .get(host.url("/api/health"))
        .bearer_auth(host.local_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["subsystems"]["tls"], "disabled");
    let private = taos_e2e::http_client()
        .get(host.url("/api/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), StatusCode::UNAUTHORIZED);
}
