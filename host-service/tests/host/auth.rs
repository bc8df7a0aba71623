use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{set_cookies, Session, OWNER, OWNER_PASSWORD};

use crate::start;

#[tokio::test]
async fn setup_works_once_and_signs_the_owner_in() {
    let host = start().await;
    let client = host.client();
    let status: Value = client
        .get(host.url("/api/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status,
        json!({
            "configured": false,
            "authenticated": false,
            "user": null,
            "fingerprint": host.pin.to_string(),
        })
    );

    let short = client
        .post(host.url("/api/auth/setup"))
        .json(
            &json!({"username": "owner", "password": "123456789", "setup_code": host.setup_code()}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), StatusCode::BAD_REQUEST);
    let status: Value = client
        .get(host.url("/api/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["configured"], false,
        "a refused setup changes nothing"
    );

    let session = host.setup_owner().await;
    let again = client
        .post(host.url("/api/auth/setup"))
        .json(&json!({"username": "intruder", "password": "long enough password", "setup_code": "AAAA-AAAA-AAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "already_configured");

    let status: Value = session
        .request(Method::GET, "/api/auth/status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["configured"], true);
    assert_eq!(status["authenticated"], true);
    assert_eq!(status["user"]["username"], OWNER);
    assert_eq!(status["user"]["is_owner"], true);
}

#[tokio::test]
async fn concurrent_setups_make_exactly_one_owner() {
    let host = start().await;
    let code = host.setup_code().expect("a setup code");
    let attempts = (0..6).map(|i| {
        let client = host.client();
        let url = host.url("/api/auth/setup");
        let code = code.clone();
        async move {
            client
                .post(url)
                .json(&json!({"username": format!("user{i}"), "password": "long enough password", "setup_code": code}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
}

#[tokio::test]
async fn login_sets_strict_cookies_and_logout_revokes_the_session() {
    let host = start().await;
    host.setup_owner().await;
    let response = host.login(OWNER, OWNER_PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookies = set_cookies(response.headers());
    // `__Host-` cookies: browsers keep them only with Secure, Path=/ and no Domain, so no other
    // host can plant or shadow them.
    assert!(!cookies.contains_key("taos_session"), "{cookies:?}");
    let (_, session_attrs) = &cookies[taos_e2e::SESSION_COOKIE];
    for attr in ["httponly", "secure", "samesite=strict", "path=/"] {
        assert!(
            session_attrs.iter().any(|a| a == attr),
            "the session cookie lacks {attr}: {session_attrs:?}"
        );
    }
    let (csrf_value, csrf_attrs) = &cookies["__Host-taos_csrf"];
    for attrs in [session_attrs, csrf_attrs] {
        assert!(attrs.iter().any(|a| a == "secure"), "{attrs:?}");
        assert!(attrs.iter().any(|a| a == "path=/"), "{attrs:?}");
        assert!(!attrs.iter().any(|a| a.starts_with("domain")), "{attrs:?}");
    }
    assert!(
        !csrf_attrs.iter().any(|a| a == "httponly"),
        "the page must be able to read the CSRF cookie"
    );
    let session = Session::from_response(&host, response).await;
    assert_eq!(&session.csrf_token, csrf_value);

    let devices = session
        .request(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap();
    assert_eq!(devices.status(), StatusCode::OK);

    let logout = session
        .request(Method::POST, "/api/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let after = session
        .request(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "the old cookie is dead server-side"
    );
}

/// A stolen cookie kept busy would slide its idle expiry forever; the absolute lifetime ends it
/// anyway. The cookie itself may live that long and no longer.
#[tokio::test]
async fn a_session_ends_at_its_lifetime_however_busy_it_is() {
    let host = start().await;
    let session = host.setup_owner().await;
    let response = host.login(OWNER, OWNER_PASSWORD).await;
    let cookies = set_cookies(response.headers());
    let (_, attrs) = &cookies[taos_e2e::SESSION_COOKIE];
    assert!(attrs.iter().any(|a| a == "max-age=2592000"), "{attrs:?}");
    let busy = Session::from_response(&host, response).await;
    let ok = busy
        .request(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // The old cookie name (not `__Host-`, so another host on the domain could plant it) is no
    // longer a session, even with a live session's token.
    let legacy = host
        .client()
        .get(host.url("/api/devices"))
        .header("cookie", format!("taos_session={}", busy.session_cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), StatusCode::UNAUTHORIZED);
    // Signed in 31 days ago and used all along: its sliding expiry is still ahead.
    let day_ms: i64 = 24 * 3600 * 1000;
    let conn = sqlx::sqlite::SqliteConnectOptions::new().filename(host.data_dir.join("taos.db"));
    let mut conn = sqlx::ConnectOptions::connect(&conn).await.unwrap();
    sqlx::query("UPDATE sessions SET created_at = created_at - ?, expires_at = expires_at + ?")
        .bind(31 * day_ms)
        .bind(day_ms)
        .execute(&mut conn)
        .await
        .unwrap();
    for s in [&busy, &session] {
        let after = s.request(Method::GET, "/api/devices").send().await.unwrap();
        assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let host = start().await;
    host.setup_owner().await;
    let wrong = host.login(OWNER, "wrong password!!").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let wrong_body: Value = wrong.json().await.unwrap();
    let unknown = host.login("nobody", "wrong password!!").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let unknown_body: Value = unknown.json().await.unwrap();
    assert_eq!(wrong_body, unknown_body);
    assert_eq!(wrong_body["error"]["code"], "invalid_credentials");
}

#[tokio::test]
async fn sixth_failed_login_within_a_minute_is_rate_limited() {
    let host = start().await;
    host.setup_owner().await;
    for attempt in 1..=5 {
        let r = host.login(OWNER, "wrong password!!").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let limited = host.login(OWNER, "wrong password!!").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Even the right password waits: otherwise the lock would only slow guessing, not stop it.
    let right = host.login(OWNER, OWNER_PASSWORD).await;
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn csrf_header_is_required_for_cookie_writes_but_not_for_bearer() {
    let host = start().await;
    let session = host.setup_owner().await;
    let body = json!({"level": "info", "title": "hello"});
    let missing = session
        .request_without_csrf(Method::POST, "/api/notifications")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let code: Value = missing.json().await.unwrap();
    assert_eq!(code["error"]["code"], "csrf_failed");
    let wrong = session
        .request_without_csrf(Method::POST, "/api/notifications")
        .header("x-csrf-token", "not the token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let list: Vec<Value> = host
        .admin(Method::GET, "/api/notifications")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.is_empty(), "refused writes changed nothing");

    let ok = session
        .request(Method::POST, "/api/notifications")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    let reads_need_no_csrf = session
        .request_without_csrf(Method::GET, "/api/notifications")
        .send()
        .await
        .unwrap();
    assert_eq!(reads_need_no_csrf.status(), StatusCode::OK);

    let device = host.pair_device("phone").await;
    let bearer_write = host
        .client()
        .post(host.url("/api/notifications"))
        .bearer_auth(device["access_token"].as_str().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer_write.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn cli_creates_users_and_resets_passwords() {
    let host = start().await;
    let create = std::process::Command::new(&host.bin)
        .arg("--data-dir")
        .arg(&host.data_dir)
        .args(["user", "create", "jay", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"first password 1\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(create.status.success(), "{create:?}");
    assert!(String::from_utf8_lossy(&create.stdout).contains("created owner jay"));
    let first = host.login("jay", "first password 1").await;
    assert_eq!(first.status(), StatusCode::OK);
    let session = Session::from_response(&host, first).await;

    let reset = std::process::Command::new(&host.bin)
        .arg("--data-dir")
        .arg(&host.data_dir)
        .args(["user", "reset-password", "jay", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"second password 2\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(reset.status.success(), "{reset:?}");
    assert_eq!(
        host.login("jay", "first password 1").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        host.login("jay", "second password 2").await.status(),
        StatusCode::OK
    );
    let old = session
        .request(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap();
    assert_eq!(
        old.status(),
        StatusCode::UNAUTHORIZED,
        "reset ends existing sessions"
    );
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
        status["configured"], true,
        "a CLI-made owner closes first-run setup"
    );
}
