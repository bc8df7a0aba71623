//! The Settings screen's host side: a user changes their own password (their other sessions
//! end, with their open connections), the owner adds and deletes family accounts (a deleted
//! account's connections close and it leaves its channels), and the host says where it is
//! reached. The periodic credential re-check is turned off (an hour), so a connection that
//! closes here was closed by the change itself.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, HostOptions, Session, SseReader, WsClient, WsEnd, OWNER};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(30);
const NEW_PASSWORD: &str = "a much longer new password";

async fn start_without_recheck() -> Host {
    Host::start_with(
        BIN,
        HostOptions {
            env: vec![("TAOS_AUTH__RECHECK_SECS".into(), "3600".into())],
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn cookie(session: &Session) -> Vec<(String, String)> {
    vec![("cookie".into(), session.cookie())]
}

async fn status(request: reqwest::RequestBuilder) -> StatusCode {
    request.send().await.unwrap().status()
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    (status, body["error"]["code"].as_str().unwrap_or("").into())
}

fn revoked() -> Option<WsEnd> {
    Some(WsEnd::Closed {
        code: 4001,
        reason: "revoked".into(),
    })
}

async fn events(session: &Session) -> SseReader {
    let response = session
        .request_without_csrf(Method::GET, "/api/events")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    SseReader::new(response)
}

async fn ends_unauthorized(stream: &mut SseReader) {
    loop {
        let event = stream
            .next(WAIT)
            .await
            .expect("the stream ends with an event");
        if event.event.as_deref() == Some("unauthorized") {
            return;
        }
    }
}

#[tokio::test]
async fn changing_the_password_ends_the_users_other_sessions_and_their_connections() {
    let host = start_without_recheck().await;
    let here = host.setup_owner().await;
    let elsewhere = host.session(OWNER, taos_e2e::OWNER_PASSWORD).await;
    let mut elsewhere_ws = WsClient::connect_with(&host, cookie(&elsewhere))
        .await
        .unwrap();
    let mut elsewhere_events = events(&elsewhere).await;
    let change = |current: &str, new: &str| {
        here.request(Method::POST, "/api/auth/password")
            .json(&json!({"current_password": current, "new_password": new}))
    };

    // A wrong current password changes nothing (and is not a 401: the user stays signed in).
    let (code, error) = error_code(
        change("not my password", NEW_PASSWORD)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, error.as_str()),
        (StatusCode::FORBIDDEN, "wrong_password")
    );
    let (code, _) = error_code(
        change(taos_e2e::OWNER_PASSWORD, "short")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        status(elsewhere.request(Method::GET, "/api/agents")).await,
        StatusCode::OK
    );
    assert_eq!(
        host.login(OWNER, taos_e2e::OWNER_PASSWORD).await.status(),
        StatusCode::OK
    );
    // Without CSRF, as a page on another site would send it: refused.
    let forged = here
        .request_without_csrf(Method::POST, "/api/auth/password")
        .json(&json!({"current_password": taos_e2e::OWNER_PASSWORD, "new_password": NEW_PASSWORD}));
    assert_eq!(status(forged).await, StatusCode::FORBIDDEN);

    assert_eq!(
        status(change(taos_e2e::OWNER_PASSWORD, NEW_PASSWORD)).await,
        StatusCode::NO_CONTENT
    );
    // The other session is gone, and so are the connections it had open.
    assert_eq!(elsewhere_ws.end(WAIT).await, revoked());
    ends_unauthorized(&mut elsewhere_events).await;
    assert_eq!(
        status(elsewhere.request(Method::GET, "/api/agents")).await,
        StatusCode::UNAUTHORIZED
    );
    // The session that changed it stays; the old password is no longer good.
    assert_eq!(
        status(here.request(Method::GET, "/api/agents")).await,
        StatusCode::OK
    );
    assert_eq!(
        host.login(OWNER, taos_e2e::OWNER_PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        host.login(OWNER, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );

    // A device and the local admin have no password to change.
    let device = host.pair_device("phone").await;
    let by_device = host
        .client()
        .post(host.url("/api/auth/password"))
        .bearer_auth(device["access_token"].as_str().unwrap())
        .json(&json!({"current_password": NEW_PASSWORD, "new_password": "yet another password"}));
    assert_eq!(status(by_device).await, StatusCode::FORBIDDEN);
    let by_admin = host
        .admin(Method::POST, "/api/auth/password")
        .json(&json!({"current_password": NEW_PASSWORD, "new_password": "yet another password"}));
    assert_eq!(status(by_admin).await, StatusCode::FORBIDDEN);
    assert_eq!(
        host.login(OWNER, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}

/// Guessing the current password from a stolen session is limited like guessing at login.
#[tokio::test]
async fn wrong_current_passwords_are_rate_limited() {
    let host = start_without_recheck().await;
    let owner = host.setup_owner().await;
    let mut last = StatusCode::OK;
    for i in 0..8 {
        last = owner
            .request(Method::POST, "/api/auth/password")
            .json(&json!({"current_password": format!("guess {i}"), "new_password": NEW_PASSWORD}))
            .send()
            .await
            .unwrap()
            .status();
        if last == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(last, StatusCode::FORBIDDEN);
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    // Even the right one now waits.
    let right = owner
        .request(Method::POST, "/api/auth/password")
        .json(&json!({"current_password": taos_e2e::OWNER_PASSWORD, "new_password": NEW_PASSWORD}));
    assert_eq!(status(right).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_owner_adds_and_deletes_family_accounts() {
    let host = start_without_recheck().await;
    let owner = host.setup_owner().await;
    let create = |name: &str, password: &str| {
        owner
            .request(Method::POST, "/api/users")
            .json(&json!({"username": name, "password": password}))
    };

    let response = create("kim", "kim's password 1").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let kim: Value = response.json().await.unwrap();
    assert_eq!(kim["is_owner"], false);
    // Taken names and short passwords are refused.
    assert_eq!(
        status(create("Kim", "another password")).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(create("lee", "short")).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(create("../x", "long enough pass")).await,
        StatusCode::BAD_REQUEST
    );
    let users: Vec<Value> = owner
        .request(Method::GET, "/api/users")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = users
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, [OWNER, "kim"]);

    // Kim signs in, is put in a family channel, makes one of her own, and keeps a socket open.
    let kim_session = host.session("kim", "kim's password 1").await;
    let family: Value = owner
        .request(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "family", "members": ["user:kim"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let family_id = family["id"].as_str().unwrap().to_string();
    let hers: Value = kim_session
        .request(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "kim's room"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hers_id = hers["id"].as_str().unwrap().to_string();
    let mut ws = WsClient::connect_with(&host, cookie(&kim_session))
        .await
        .unwrap();
    let mut kim_events = events(&kim_session).await;

    // Kim can't add accounts or delete anyone; the owner can't be deleted.
    let by_kim = kim_session
        .request(Method::POST, "/api/users")
        .json(&json!({"username": "kim2", "password": "kim's password 2"}));
    assert_eq!(status(by_kim).await, StatusCode::FORBIDDEN);
    let owner_id = users[0]["id"].as_str().unwrap();
    let (code, _) = error_code(
        owner
            .request(Method::DELETE, &format!("/api/users/{owner_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    let kim_id = kim["id"].as_str().unwrap();
    let deleted = owner.request(Method::DELETE, &format!("/api/users/{kim_id}"));
    assert_eq!(status(deleted).await, StatusCode::NO_CONTENT);
    assert_eq!(ws.end(WAIT).await, revoked());
    ends_unauthorized(&mut kim_events).await;
    assert_eq!(
        status(kim_session.request(Method::GET, "/api/chat/channels")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        host.login("kim", "kim's password 1").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let again = owner.request(Method::DELETE, &format!("/api/users/{kim_id}"));
    assert_eq!(status(again).await, StatusCode::NOT_FOUND);

    // She left the family channel; a new "kim" starts with nothing of hers.
    let channel: Value = owner
        .request(Method::GET, &format!("/api/chat/channels/{family_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !channel["members"].to_string().contains("user:kim"),
        "{channel}"
    );
    assert_eq!(
        status(create("kim", "a new kim's password")).await,
        StatusCode::CREATED
    );
    let new_kim = host.session("kim", "a new kim's password").await;
    let visible: Vec<Value> = new_kim
        .request(Method::GET, "/api/chat/channels")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(visible.is_empty(), "{visible:?}");
    for id in [&family_id, &hers_id] {
        let rename = new_kim
            .request(Method::PATCH, &format!("/api/chat/channels/{id}"))
            .json(&json!({"name": "mine now"}));
        assert_eq!(status(rename).await, StatusCode::NOT_FOUND, "{id}");
    }
}

#[tokio::test]
async fn the_host_says_where_phones_and_agents_reach_it() {
    let host = start_without_recheck().await;
    let owner = host.setup_owner().await;
    let info: Value = owner
        .request(Method::GET, "/api/host")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The test host listens on 127.0.0.1 only: a phone could not reach the pairing address.
    let public = host.public_url.trim_start_matches("https://");
    assert_eq!(info["pairing_addresses"], json!([public]), "{info}");
    assert_eq!(info["pairing_reachable"], false);
    assert_eq!(info["agent_url"], host.agent_url);
    assert_eq!(info["gateway_url"], format!("{}/v1", host.agent_url));
    assert_eq!(info["fingerprint"], host.pin.to_string());

    // The URL it gives is the one a sidecar uses: an agent's bridge stream opens there.
    let (agent, _) = AgentClient::create(&host, "Reachable").await;
    let base = info["agent_url"].as_str().unwrap();
    let stream = agent.with_base(base).events_for(&agent.slug, None).await;
    assert_eq!(stream.status(), StatusCode::OK);

    // Other users don't learn the host's addresses.
    host.create_user("guest", "guest password 1");
    let guest = host.session("guest", "guest password 1").await;
    assert_eq!(
        status(guest.request(Method::GET, "/api/host")).await,
        StatusCode::FORBIDDEN
    );
}
