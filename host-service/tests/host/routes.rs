//! Walks the OpenAPI document: every route not on the public list must refuse callers without
//! credentials, with a revoked device token, and (for writes) with a cookie but no CSRF header.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::start;

/// The only routes that answer without credentials (the list).
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/api/health"),
    ("GET", "/api/auth/status"),
    // The host's certificate, to install so a browser trusts the host (offline reading): every
    // TLS handshake shows it anyway.
    ("GET", "/api/auth/certificate"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/setup"),
    ("POST", "/api/devices/pair"),
    ("POST", "/api/auth/refresh"),
];

fn concrete(path: &str) -> String {
    // Path parameters get well-formed values, so a 401 can't be a parse error in disguise.
    path.replace("{id}", "00000000-0000-4000-8000-000000000000")
        .replace("{slug}", "some-agent")
}

fn numeric(path: &str) -> String {
    path.replace("{id}", "1")
}

pub(crate) async fn operations(host: &taos_e2e::Host) -> Vec<(String, String, Value)> {
    let doc: Value = host
        .admin(Method::GET, "/api/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1"
    );
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    assert!(
        ops.len() >= 15,
        "the document covers the API: {}",
        ops.len()
    );
    ops
}

#[tokio::test]
async fn every_private_route_refuses_missing_revoked_and_csrf_less_credentials() {
    let host = start().await;
    let session = host.setup_owner().await;
    let device = host.pair_device("soon revoked").await;
    let revoked_access = device["access_token"].as_str().unwrap().to_string();
    let id = device["device_id"].as_str().unwrap();
    let revoke = host
        .admin(Method::DELETE, &format!("/api/devices/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);

    let public: BTreeSet<(String, String)> = PUBLIC
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let client = host.client();
    let mut checked = 0;
    for (method, path, op) in operations(&host).await {
        let is_public = public.contains(&(method.clone(), path.clone()));
        // The document must agree with the list: public routes carry an empty requirement.
        let declared_public = op["security"].as_array().is_some_and(|reqs| {
            reqs.iter()
                .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
        });
        assert_eq!(
            is_public, declared_public,
            "{method} {path}: document and public list disagree"
        );
        if is_public {
            continue;
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let param = if op["parameters"].to_string().contains("\"integer\"") {
            numeric(&path)
        } else {
            concrete(&path)
        };
        let url = host.url(&param);

        let none = client.request(m.clone(), &url).send().await.unwrap();
        assert_eq!(
            none.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} without credentials"
        );
        let body: Value = none.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "unauthorized",
            "{method} {path} error body"
        );

        let revoked = client
            .request(m.clone(), &url)
            .bearer_auth(&revoked_access)
            .send()
            .await
            .unwrap();
        assert_eq!(
            revoked.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a revoked device"
        );

        let garbage = client
            .request(m.clone(), &url)
            .bearer_auth("nonsense")
            .send()
            .await
            .unwrap();
        assert_eq!(
            garbage.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a garbage bearer"
        );

        if m != Method::GET {
            let no_csrf = session
                .request_without_csrf(m.clone(), &param)
                .send()
                .await
                .unwrap();
            assert_eq!(
                no_csrf.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} cookie without CSRF"
            );
        }
        checked += 1;
    }
    assert!(checked >= 9, "checked {checked} private routes");
}

#[tokio::test]
async fn public_routes_answer_without_credentials() {
    let host = start().await;
    let client = host.client();
    let health = client.get(host.url("/api/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let status = client
        .get(host.url("/api/auth/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    let certificate = client
        .get(host.url("/api/auth/certificate"))
        .send()
        .await
        .unwrap();
    assert_eq!(certificate.status(), StatusCode::OK);
    for path in ["/api/auth/login", "/api/devices/pair", "/api/auth/refresh"] {
        let r = client
            .post(host.url(path))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "{path} validates instead of asking for auth"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let host = start().await;
    let missing = host.admin(Method::GET, "/api/nope").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let wrong_method = host.admin(Method::PUT, "/api/health").send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
}
