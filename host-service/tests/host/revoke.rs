//! Ending a credential ends what was opened with it. A request is authenticated once, but a
//! chat WebSocket or an `/api/events` stream lives on: a stolen phone that was revoked, a
//! browser that signed out, a user whose password was reset must lose them at once — and
//! nothing they send after that may be stored. Expiry is the backstop: a socket opened with a
//! short-lived token does not outlive it.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, HostOptions, SseReader, WsClient, WsEnd, OWNER};
use tokio::io::AsyncWriteExt;

use crate::{start, BIN};

const WAIT: Duration = Duration::from_secs(30);

fn closed(reason: &str) -> Option<WsEnd> {
    Some(WsEnd::Closed {
        code: 4001,
        reason: reason.to_string(),
    })
}

/// An agent and its DM with the owner: somewhere people can post.
async fn dm(host: &Host) -> String {
    let (_, record) = AgentClient::create(host, "Helper").await;
    record["dm_channel_id"].as_str().unwrap().to_string()
}

fn message(dm: &str, text: &str) -> Value {
    json!({"type": "message", "channel_id": dm, "content": text, "client_id": client_id(text)})
}

fn client_id(text: &str) -> String {
    text.replace(' ', "-")
}

/// Posts over the socket and waits for the host's ack: the socket works.
async fn post_acked(ws: &mut WsClient, dm: &str, text: &str) {
    ws.send(message(dm, text)).await;
    let ack = ws.next_of("ack", WAIT).await.expect("an ack");
    assert_eq!(ack["client_id"], client_id(text), "{ack}");
}

/// Every message content stored in the channel.
async fn stored(host: &Host, dm: &str) -> Vec<String> {
    let messages: Vec<Value> = host
        .admin(
            Method::GET,
            &format!("/api/chat/channels/{dm}/messages?after_seq=0"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    messages
        .iter()
        .filter_map(|m| m["content"].as_str().map(String::from))
        .collect()
}

async fn events(request: RequestBuilder) -> SseReader {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "event stream");
    SseReader::new(response)
}

/// The stream's last event says why it ends, and then it ends. (Host events from before the
/// revocation, such as the pairing's own `device.paired`, may come first.)
async fn assert_ends_unauthorized(events: &mut SseReader, reason: &str) {
    let last = loop {
        let event = events
            .next(WAIT)
            .await
            .expect("an `unauthorized` event ends the stream");
        if event.event.as_deref() == Some("unauthorized") {
            break event;
        }
        assert!(
            event
                .event
                .as_deref()
                .is_some_and(|kind| kind.contains('.')),
            "only host events come before `unauthorized`: {event:?}"
        );
    };
    assert_eq!(last.event.as_deref(), Some("unauthorized"), "{last:?}");
    let data: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(data["reason"], reason);
    assert!(
        events.next(Duration::from_secs(5)).await.is_none(),
        "nothing after it"
    );
}

async fn sql(host: &Host, statement: &str) {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(host.data_dir.join("taos.db"))
        .connect()
        .await
        .unwrap();
    sqlx::query(statement).execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn revoking_a_device_closes_its_socket_and_event_stream_at_once() {
    let host = start().await;
    let owner = host.setup_owner().await;
    let dm = dm(&host).await;
    let stolen = host.pair_device("stolen phone").await;
    let access = stolen["access_token"].as_str().unwrap().to_string();
    let mut ws = WsClient::connect(&host, &access).await.unwrap();
    post_acked(&mut ws, &dm, "before revocation").await;
    let mut stream = events(
        host.client()
            .get(host.url("/api/events"))
            .bearer_auth(&access),
    )
    .await;
    // The owner's other device must not be touched.
    let laptop = host.pair_device("laptop").await;
    let mut laptop_ws = WsClient::connect(&host, laptop["access_token"].as_str().unwrap())
        .await
        .unwrap();

    let id = stolen["device_id"].as_str().unwrap();
    let revoked = owner
        .request(Method::DELETE, &format!("/api/devices/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    // The thief keeps typing on the socket it already has.
    let _ = ws.try_send(message(&dm, "after revocation")).await;

    assert_eq!(ws.end(WAIT).await, closed("revoked"));
    assert_ends_unauthorized(&mut stream, "revoked").await;
    let contents = stored(&host, &dm).await;
    assert!(contents.contains(&"before revocation".to_string()));
    assert!(
        !contents.contains(&"after revocation".to_string()),
        "a frame sent after revocation was stored: {contents:?}"
    );
    post_acked(&mut laptop_ws, &dm, "from the laptop").await;
}

/// A refresh token presented twice means two parties hold the device's credentials: the host
/// revokes the device, and the socket the thief opened with its fresh access token goes too.
#[tokio::test]
async fn a_replayed_refresh_token_closes_the_devices_sockets() {
    let host = start().await;
    host.setup_owner().await;
    let dm = dm(&host).await;
    let device = host.pair_device("phone").await;
    let refresh = |token: Value| {
        host.client()
            .post(host.url("/api/auth/refresh"))
            .json(&json!({"refresh_token": token}))
            .send()
    };
    // The thief refreshes with a copied refresh token and opens a socket with the result...
    let stolen: Value = refresh(device["refresh_token"].clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ws = WsClient::connect(&host, stolen["access_token"].as_str().unwrap())
        .await
        .unwrap();
    post_acked(&mut ws, &dm, "from the thief").await;
    // ...then the phone presents the same, now used, refresh token.
    let replay = refresh(device["refresh_token"].clone()).await.unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let _ = ws.try_send(message(&dm, "after the replay")).await;
    assert_eq!(ws.end(WAIT).await, closed("revoked"));
    assert!(!stored(&host, &dm)
        .await
        .contains(&"after the replay".to_string()));
}

#[tokio::test]
async fn logging_out_closes_that_sessions_socket_and_event_stream() {
    let host = start().await;
    let session = host.setup_owner().await;
    let dm = dm(&host).await;
    let cookie = vec![("cookie".to_string(), session.cookie())];
    let mut ws = WsClient::connect_with(&host, cookie).await.unwrap();
    post_acked(&mut ws, &dm, "before logout").await;
    let mut stream = events(session.request_without_csrf(Method::GET, "/api/events")).await;
    // The same user signed in elsewhere keeps that session.
    let other =
        taos_e2e::Session::from_response(&host, host.login(OWNER, taos_e2e::OWNER_PASSWORD).await)
            .await;
    let mut other_ws = WsClient::connect_with(&host, vec![("cookie".into(), other.cookie())])
        .await
        .unwrap();

    let out = session
        .request(Method::POST, "/api/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let _ = ws.try_send(message(&dm, "after logout")).await;

    assert_eq!(ws.end(WAIT).await, closed("revoked"));
    assert_ends_unauthorized(&mut stream, "revoked").await;
    assert!(!stored(&host, &dm)
        .await
        .contains(&"after logout".to_string()));
    post_acked(&mut other_ws, &dm, "from the other browser").await;
}

/// `taos-host user reset-password` runs as its own process and changes only the database: the
/// running host must still cut the user's connections, and refuse what they send meanwhile.
#[tokio::test]
async fn a_password_reset_from_the_cli_closes_the_users_connections() {
    let host = start().await;
    let session = host.setup_owner().await;
    let dm = dm(&host).await;
    let mut ws = WsClient::connect_with(&host, vec![("cookie".into(), session.cookie())])
        .await
        .unwrap();
    post_acked(&mut ws, &dm, "before the reset").await;
    let mut stream = events(session.request_without_csrf(Method::GET, "/api/events")).await;

    let mut cli = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&host.data_dir)
        .args(["user", "reset-password", OWNER, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    stdin.write_all(b"a brand new password\n").await.unwrap();
    drop(stdin);
    let output = cli.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Sent at once, before the host's periodic re-check can have run.
    let _ = ws.try_send(message(&dm, "after the reset")).await;

    assert_eq!(ws.end(WAIT).await, closed("revoked"));
    assert_ends_unauthorized(&mut stream, "revoked").await;
    assert!(!stored(&host, &dm)
        .await
        .contains(&"after the reset".to_string()));
}

/// The backstop: a socket does not outlive the access token it was opened with, nor a
/// session that ran out; the app refreshes and comes back.
#[tokio::test]
async fn expired_tokens_and_sessions_close_their_sockets_and_streams() {
    let host = Host::start_with(
        BIN,
        HostOptions {
            env: vec![
                ("TAOS_AUTH__ACCESS_TOKEN_SECS".into(), "4".into()),
                ("TAOS_AUTH__RECHECK_SECS".into(), "1".into()),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let session = host.setup_owner().await;
    let dm = dm(&host).await;
    let device = host.pair_device("phone").await;
    assert_eq!(device["expires_in"], 4);
    let access = device["access_token"].as_str().unwrap().to_string();
    let mut ws = WsClient::connect(&host, &access).await.unwrap();
    let mut stream = events(
        host.client()
            .get(host.url("/api/events"))
            .bearer_auth(&access),
    )
    .await;
    assert_eq!(ws.end(WAIT).await, closed("expired"));
    assert_ends_unauthorized(&mut stream, "expired").await;
    // What the app does next: refresh, reconnect, carry on.
    let fresh: Value = host
        .client()
        .post(host.url("/api/auth/refresh"))
        .json(&json!({"refresh_token": device["refresh_token"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ws = WsClient::connect(&host, fresh["access_token"].as_str().unwrap())
        .await
        .unwrap();
    post_acked(&mut ws, &dm, "after a refresh").await;

    // A browser session that went idle past its expiry while only its socket was open.
    let mut browser = WsClient::connect_with(&host, vec![("cookie".into(), session.cookie())])
        .await
        .unwrap();
    let mut browser_events = events(session.request_without_csrf(Method::GET, "/api/events")).await;
    sql(&host, "UPDATE sessions SET expires_at = 0").await;
    assert_eq!(browser.end(WAIT).await, closed("expired"));
    assert_ends_unauthorized(&mut browser_events, "expired").await;
}

/// A WebSocket over HTTP/2 would be an extended CONNECT (RFC 8441), with no `Upgrade` header
/// for the cookie's Origin check to key on. The public listener speaks HTTP/2 but does not offer
/// extended CONNECT, so no browser opens one; and the WebSocket route answers nothing but an
/// HTTP/1.1 upgrade, so the cookie with a foreign Origin gets no socket over HTTP/2 either.
#[tokio::test]
async fn websockets_over_http2_are_not_possible() {
    let host = start().await;
    let session = host.setup_owner().await;
    let answer = taos_e2e::h2_request(
        &host,
        Method::GET,
        "/api/chat/ws",
        vec![
            ("cookie".into(), session.cookie()),
            ("origin".into(), "https://evil.example".into()),
            ("sec-websocket-version".into(), "13".into()),
            ("sec-websocket-protocol".into(), "taos.v1".into()),
        ],
    )
    .await
    .unwrap();
    assert!(
        !answer.extended_connect,
        "the host now offers WebSockets over HTTP/2: give them a test like \
         chat::websocket_auth_takes_subprotocol_bearer_and_refuses_foreign_origins"
    );
    assert!(
        (400..500).contains(&answer.status),
        "an HTTP/2 request got a socket: {answer:?}"
    );
    // The same request over HTTP/1.1 is refused for its Origin.
    let foreign = WsClient::connect_with(
        &host,
        vec![
            ("cookie".into(), session.cookie()),
            ("origin".into(), "https://evil.example".into()),
        ],
    )
    .await;
    assert!(foreign.is_err());
}
