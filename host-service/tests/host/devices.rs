use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::start;

async fn new_pairing_token(host: &taos_e2e::Host) -> Value {
    let response = host
        .admin(Method::POST, "/api/devices/pairing-tokens")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn pair(host: &taos_e2e::Host, token: &str) -> reqwest::Response {
    host.client()
        .post(host.url("/api/devices/pair"))
        .json(&json!({"token": token, "device_name": "Jay's phone", "platform": "android"}))
        .send()
        .await
        .unwrap()
}

async fn refresh_with(host: &taos_e2e::Host, refresh_token: &str) -> reqwest::Response {
    host.client()
        .post(host.url("/api/auth/refresh"))
        .json(&json!({"refresh_token": refresh_token}))
        .send()
        .await
        .unwrap()
}

async fn sql(host: &taos_e2e::Host, statement: &str) {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(host.data_dir.join("taos.db"))
        .connect()
        .await
        .unwrap();
    sqlx::query(statement).execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn pairing_token_carries_what_the_app_needs() {
    let host = start().await;
    let created = new_pairing_token(&host).await;
    let token = created["token"].as_str().unwrap();
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap();
    assert_eq!(payload["v"], 1);
    assert_eq!(payload["spki_sha256"], host.pin.to_base64());
    let port = host.public_url.rsplit(':').next().unwrap();
    let addresses: Vec<&str> = payload["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        addresses.iter().any(|a| a.ends_with(&format!(":{port}"))),
        "{addresses:?}"
    );
    assert!(payload["secret"].as_str().unwrap().len() >= 43);
    let expires =
        chrono::DateTime::parse_from_rfc3339(payload["expires_at"].as_str().unwrap()).unwrap();
    let ttl = expires.signed_duration_since(chrono::Utc::now());
    assert!(
        ttl <= chrono::Duration::minutes(5) && ttl > chrono::Duration::minutes(4),
        "{ttl}"
    );
    assert!(created["qr_svg"].as_str().unwrap().starts_with("<?xml"));
    assert_eq!(created["payload"], payload);
}

#[tokio::test]
async fn pairing_token_works_once() {
    let host = start().await;
    let token = new_pairing_token(&host).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let first = pair(&host, &token).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let tokens: Value = first.json().await.unwrap();
    assert!(tokens["access_token"]
        .as_str()
        .unwrap()
        .starts_with("taos_at_"));
    assert!(tokens["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("taos_rt_"));
    assert_eq!(tokens["expires_in"], 900);
    let second = pair(&host, &token).await;
    assert_eq!(second.status(), StatusCode::UNAUTHORIZED);
    let devices: Vec<Value> = host
        .admin(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        devices.len(),
        1,
        "the refused second pairing made no device"
    );
    assert_eq!(devices[0]["name"], "Jay's phone");
    assert_eq!(devices[0]["platform"], "android");
}

#[tokio::test]
async fn expired_wrong_and_malformed_pairing_tokens_are_refused() {
    let host = start().await;
    let token = new_pairing_token(&host).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    sql(&host, "UPDATE pairing_tokens SET expires_at = 0").await;
    assert_eq!(pair(&host, &token).await.status(), StatusCode::UNAUTHORIZED);

    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&token).unwrap()).unwrap();
    payload["secret"] = json!("guessed-secret-guessed-secret-guessed-secret");
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    assert_eq!(
        pair(&host, &forged).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        pair(&host, "not-a-token").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(pair(&host, "").await.status(), StatusCode::UNAUTHORIZED);

    let fresh = new_pairing_token(&host).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let bad_platform = host
        .client()
        .post(host.url("/api/devices/pair"))
        .json(&json!({"token": fresh, "device_name": "x", "platform": "../../etc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_platform.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        pair(&host, &fresh).await.status(),
        StatusCode::CREATED,
        "a refused request did not burn the token"
    );
    let devices: Vec<Value> = host
        .admin(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(devices.len(), 1);
}

#[tokio::test]
async fn only_owner_or_local_admin_make_pairing_tokens() {
    let host = start().await;
    let session = host.setup_owner().await;
    let by_owner = session
        .request(Method::POST, "/api/devices/pairing-tokens")
        .send()
        .await
        .unwrap();
    assert_eq!(by_owner.status(), StatusCode::CREATED);
    let device = host.pair_device("laptop").await;
    let by_device = host
        .client()
        .post(host.url("/api/devices/pairing-tokens"))
        .bearer_auth(device["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(by_device.status(), StatusCode::FORBIDDEN);
    // A device acts for the owner, and says so when asked who is signed in.
    let status: serde_json::Value = host
        .client()
        .get(host.url("/api/auth/status"))
        .bearer_auth(device["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["authenticated"], true);
    assert_eq!(status["user"]["username"], taos_e2e::OWNER);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_device() {
    let host = start().await;
    let first = host.pair_device("phone").await;
    let host_ref = &host;
    let refresh = |token: String| async move { refresh_with(host_ref, &token).await };
    let rotated = refresh(first["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let second: Value = rotated.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(second["device_id"], first["device_id"]);
    let new_access = second["access_token"].as_str().unwrap().to_string();
    let ok = host
        .client()
        .get(host.url("/api/devices"))
        .bearer_auth(&new_access)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    // The old refresh token again: someone else has it. Both copies lose the device.
    let reuse = refresh(first["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(reuse.status(), StatusCode::UNAUTHORIZED);
    let after = host
        .client()
        .get(host.url("/api/devices"))
        .bearer_auth(&new_access)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let newest = refresh(second["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(newest.status(), StatusCode::UNAUTHORIZED);
    let devices: Vec<Value> = host
        .admin(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(devices.is_empty());

    assert_eq!(
        refresh("taos_rt_garbage".to_string()).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn revoked_device_is_refused_at_once_and_last_seen_is_tracked() {
    let host = start().await;
    let device = host.pair_device("tablet").await;
    let access = device["access_token"].as_str().unwrap();
    let listed: Vec<Value> = host
        .client()
        .get(host.url("/api/devices"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0]["last_seen_at"].is_string());
    let id = device["device_id"].as_str().unwrap();

    let unknown = host
        .admin(
            Method::DELETE,
            &format!("/api/devices/{}", uuid::Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let not_uuid = host
        .admin(Method::DELETE, "/api/devices/..%2f..%2fetc")
        .send()
        .await
        .unwrap();
    assert_eq!(not_uuid.status(), StatusCode::BAD_REQUEST);

    let revoke = host
        .admin(Method::DELETE, &format!("/api/devices/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let after = host
        .client()
        .get(host.url("/api/devices"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let refresh = host
        .client()
        .post(host.url("/api/auth/refresh"))
        .json(&json!({"refresh_token": device["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn pair_command_prints_a_usable_token() {
    let host = start().await;
    let out = host.cli(&["pair", "--token-only"]);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(pair(&host, &token).await.status(), StatusCode::CREATED);
    let with_qr = host.cli(&["pair"]);
    let text = String::from_utf8(with_qr.stdout).unwrap();
    assert!(
        text.contains('█') || text.contains('▀'),
        "a terminal QR code is printed"
    );
    assert!(text.contains(&host.pin.to_string()));
}

#[tokio::test]
async fn local_token_is_accepted_from_loopback_and_must_match() {
    let host = start().await;
    let ok = host
        .admin(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let wrong = host
        .client()
        .get(host.url("/api/devices"))
        .bearer_auth("taos_lt_not-the-token-not-the-token-not-the")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // Refusal from non-loopback addresses is covered by the unit test of is_local_client;
    // reaching this host from a non-loopback address would need traffic off loopback.
}

/// A refresh whose answer never arrived (the network dropped it) can be retried: nothing of what
/// it was exchanged for was used, so the device gets fresh tokens rather than losing its pairing.
/// Once any of those was used, or when the unused ones turn up later, it is a replay again.
#[tokio::test]
async fn a_lost_refresh_answer_can_be_retried_but_replays_still_revoke() {
    let host = start().await;
    let host_ref = &host;
    let refresh = |token: &Value| {
        let token = token.as_str().unwrap().to_string();
        async move { refresh_with(host_ref, &token).await }
    };
    let access_status = |token: &Value| {
        let request = host
            .client()
            .get(host.url("/api/devices"))
            .bearer_auth(token.as_str().unwrap());
        async move { request.send().await.unwrap().status() }
    };
    let paired_count = || async {
        let devices: Vec<Value> = host
            .admin(Method::GET, "/api/devices")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        devices.len()
    };

    // Phone: the answer to its refresh is lost; it retries with the same token and carries on.
    let phone = host.pair_device("phone").await;
    let lost: Value = refresh(&phone["refresh_token"]).await.json().await.unwrap();
    let retried = refresh(&phone["refresh_token"]).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_ne!(retried["refresh_token"], lost["refresh_token"]);
    assert_eq!(retried["device_id"], phone["device_id"]);
    assert_eq!(
        access_status(&lost["access_token"]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        access_status(&retried["access_token"]).await,
        StatusCode::OK
    );
    assert_eq!(paired_count().await, 1);
    // Now the retried tokens are in use: the old token once more is a replay.
    assert_eq!(
        refresh(&phone["refresh_token"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        access_status(&retried["access_token"]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(paired_count().await, 0);

    // Tablet: same loss and retry, then the lost answer's refresh token turns up (someone
    // captured it): it was retired, so presenting it is a replay and revokes the device.
    let tablet = host.pair_device("tablet").await;
    let lost: Value = refresh(&tablet["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    let retried: Value = refresh(&tablet["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        refresh(&lost["refresh_token"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        access_status(&retried["access_token"]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&retried["refresh_token"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(paired_count().await, 0);

    // Laptop: its answer went unused for longer than a lost answer takes to be retried (an
    // hour): the device went quiet, and the old token coming back now is a replay.
    let laptop = host.pair_device("laptop").await;
    let quiet: Value = refresh(&laptop["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    sql(
        &host,
        "UPDATE device_tokens SET created_at = created_at - 2 * 3600 * 1000 \
         WHERE used_at IS NULL AND kind = 'refresh'",
    )
    .await;
    assert_eq!(
        refresh(&laptop["refresh_token"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        access_status(&quiet["access_token"]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(paired_count().await, 0);
}
