//! Who may call what: the matrix of roles × routes, walked from the OpenAPI document like the
//! 401 walk in `routes.rs`. Every route in the document must have a row here (a new route fails
//! this test until it is classified), and every row must still be a route.
//!
//! Roles: the owner (browser session), a second user made with `taos-host user create`
//! (browser session), the owner's paired device, and the local admin token. Users other than
//! the owner can't pair devices (pairing tokens are the owner's, and a device acts for the
//! owner), so there is no "second user's device"; the matrix checks the second user can't make
//! a pairing token.
//!
//! The second user tries each route on the owner's real things (their agent, a channel the
//! owner made with the second user in it, one without them, the owner's message, device and
//! notification) and must get exactly the declared 403 or 404 — and the owner's view of the
//! host must be the same afterwards. The owner side, on made-up ids, must never get 401 or 403
//! where it is allowed (it may get 400 or 404: the point is who may ask).
//!
//! Below the matrix, each attack on its own: the second user revokes the owner's device, reads
//! the event stream, reads the owner's notifications, reads LiteLLM's log, posts a
//! notification, renames or deletes the owner's channel, and adds an agent to a channel.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, Session, SseReader};

use crate::routes::operations;
use crate::start;

const GUEST: &str = "guest";
const GUEST_PASSWORD: &str = "guest password 1";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Authorized: anything but 401 and 403.
    Allow,
    /// 403.
    Deny,
    /// 404: the thing must not be seen to exist.
    Hide,
}
use Expect::*;

/// owner session, owner's device, local admin.
type OwnerSide = [Expect; 3];
/// Everything on the owner side may.
const OWNER_SIDE: OwnerSide = [Allow, Allow, Allow];
/// `OwnerOrAdmin` routes: the owner's signed-in session or the local admin, not a device.
const SESSION_OR_ADMIN: OwnerSide = [Allow, Deny, Allow];
/// Only a person signed in with a password (a device or the local admin has none).
const SESSION_ONLY: OwnerSide = [Allow, Deny, Deny];

/// What the second user tries: a concrete path on the owner's things, a body, the outcome.
type Probe = (String, Option<Value>, Expect);

struct Route {
    method: &'static str,
    path: &'static str,
    owner_side: OwnerSide,
    guest: Vec<Probe>,
}

/// The owner's things the second user goes after.
struct Fixture {
    host: Host,
    owner: Session,
    guest: Session,
    device_token: String,
    device_id: String,
    slug: String,
    /// A group channel the owner made, with the second user in it.
    family: String,
    /// A group channel the owner made without the second user.
    private: String,
    /// The owner's message in `family`.
    message: String,
    /// A notification for the owner.
    owner_note: i64,
    /// The owner's user id.
    owner_id: String,
    /// A tool call of the owner's agent waiting for approval, in the agent's DM (which the
    /// second user does not see).
    approval: String,
}

async fn ok_json(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

async fn fixture() -> Fixture {
    let host = start().await;
    let owner = host.setup_owner().await;
    host.create_user(GUEST, GUEST_PASSWORD);
    let guest = host.session(GUEST, GUEST_PASSWORD).await;
    let device = host.pair_device("owner's phone").await;
    let (agent, record) = AgentClient::create(&host, "Owner Bot").await;
    let family = ok_json(
        owner
            .request(Method::POST, "/api/chat/channels")
            .json(&json!({"name": "family", "members": [format!("user:{GUEST}")]})),
    )
    .await;
    let private = ok_json(
        owner
            .request(Method::POST, "/api/chat/channels")
            .json(&json!({"name": "owner only"})),
    )
    .await;
    let family_id = family["id"].as_str().unwrap().to_string();
    let message = ok_json(
        owner
            .request(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": family_id, "content": "dinner at 7"})),
    )
    .await;
    let users = ok_json(host.admin(Method::GET, "/api/users")).await;
    let owner_id = users[0]["id"].as_str().unwrap().to_string();
    let note = ok_json(host.admin(Method::POST, "/api/notifications").json(
        &json!({"level": "warning", "title": "owner's secret", "message": "disk of agent x"}),
    ))
    .await;
    let approval = pending_approval(&host, &agent, &record).await;
    Fixture {
        approval,
        device_token: device["access_token"].as_str().unwrap().to_string(),
        device_id: device["device_id"].as_str().unwrap().to_string(),
        slug: record["slug"].as_str().unwrap().to_string(),
        family: family_id,
        private: private["id"].as_str().unwrap().to_string(),
        message: message["id"].as_str().unwrap().to_string(),
        owner_note: note["id"].as_i64().unwrap(),
        owner_id,
        host,
        owner,
        guest,
    }
}

/// Puts the agent on `ask`, sends it a message in its DM and has it ask to run a tool: the
/// pending approval's id.
async fn pending_approval(host: &Host, agent: &AgentClient, record: &Value) -> String {
    let slug = record["slug"].as_str().unwrap();
    ok_json(
        host.admin(Method::PATCH, &format!("/api/agents/{slug}"))
            .json(&json!({"tool_policy": "ask"})),
    )
    .await;
    let asked = ok_json(
        host.admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": record["dm_channel_id"], "content": "tidy up"})),
    )
    .await;
    let answer = ok_json(
        agent
            .request(
                Method::POST,
                &format!("/api/openclaw/sessions/{slug}/approvals"),
            )
            .json(
                &json!({"trace_id": asked["id"], "call_id": "c1", "tool": "shell",
                "args": {"command": "rm -r logs"}, "step": 0, "wait_secs": 0}),
            ),
    )
    .await;
    assert_eq!(answer["state"], "pending", "{answer}");
    answer["id"].as_str().unwrap().to_string()
}

/// Every route of the public API, and who may call it.
fn table(f: &Fixture) -> Vec<Route> {
    let slug = &f.slug;
    let agent = |suffix: &str| format!("/api/agents/{slug}{suffix}");
    let no_body = |path: String, expect: Expect| -> Probe { (path, None, expect) };
    let with = |path: String, body: Value, expect: Expect| -> Probe { (path, Some(body), expect) };
    let route = |method, path, owner_side, guest: Vec<Probe>| Route {
        method,
        path,
        owner_side,
        guest,
    };
    let family = format!("/api/chat/channels/{}", f.family);
    let private = format!("/api/chat/channels/{}", f.private);
    let message = format!("/api/chat/messages/{}", f.message);
    let unknown = "00000000-0000-4000-8000-000000000000";
    vec![
        // Public: anyone, signed in or not.
        route(
            "GET",
            "/api/health",
            OWNER_SIDE,
            vec![no_body("/api/health".into(), Allow)],
        ),
        route(
            "GET",
            "/api/auth/status",
            OWNER_SIDE,
            vec![no_body("/api/auth/status".into(), Allow)],
        ),
        route(
            "GET",
            "/api/auth/certificate",
            OWNER_SIDE,
            vec![no_body("/api/auth/certificate".into(), Allow)],
        ),
        route(
            "POST",
            "/api/auth/login",
            OWNER_SIDE,
            vec![with("/api/auth/login".into(), json!({}), Allow)],
        ),
        route(
            "POST",
            "/api/auth/setup",
            OWNER_SIDE,
            vec![with("/api/auth/setup".into(), json!({}), Allow)],
        ),
        route(
            "POST",
            "/api/auth/refresh",
            OWNER_SIDE,
            vec![with("/api/auth/refresh".into(), json!({}), Allow)],
        ),
        route(
            "POST",
            "/api/devices/pair",
            OWNER_SIDE,
            vec![with("/api/devices/pair".into(), json!({}), Allow)],
        ),
        // Anyone signed in: their own session, documentation, static catalogs.
        route(
            "POST",
            "/api/auth/logout",
            OWNER_SIDE,
            vec![no_body("/api/auth/logout".into(), Allow)],
        ),
        // Their own password (the probe's body is incomplete: nothing changes).
        route(
            "POST",
            "/api/auth/password",
            SESSION_ONLY,
            vec![with("/api/auth/password".into(), json!({}), Allow)],
        ),
        // Accounts are the owner's to make and remove; a device can't mint them.
        route(
            "GET",
            "/api/users",
            OWNER_SIDE,
            vec![no_body("/api/users".into(), Deny)],
        ),
        route(
            "POST",
            "/api/users",
            SESSION_OR_ADMIN,
            vec![with(
                "/api/users".into(),
                json!({"username": "guest2", "password": "guest2 password"}),
                Deny,
            )],
        ),
        route(
            "DELETE",
            "/api/users/{id}",
            SESSION_OR_ADMIN,
            vec![no_body(format!("/api/users/{}", f.owner_id), Deny)],
        ),
        // Where the host is reached: its network addresses.
        route(
            "GET",
            "/api/host",
            OWNER_SIDE,
            vec![no_body("/api/host".into(), Deny)],
        ),
        // The home screen: the host's figures, every agent's, and today's spend.
        route(
            "GET",
            "/api/host/overview",
            OWNER_SIDE,
            vec![no_body("/api/host/overview".into(), Deny)],
        ),
        route(
            "GET",
            "/api/host/samples",
            OWNER_SIDE,
            vec![no_body("/api/host/samples".into(), Deny)],
        ),
        route(
            "GET",
            "/api/openapi.json",
            OWNER_SIDE,
            vec![no_body("/api/openapi.json".into(), Allow)],
        ),
        route(
            "GET",
            "/api/frameworks",
            OWNER_SIDE,
            vec![no_body("/api/frameworks".into(), Allow)],
        ),
        // What the host has free, beside the frameworks in the picker: no secrets in it.
        route(
            "GET",
            "/api/host/capacity",
            OWNER_SIDE,
            vec![no_body("/api/host/capacity".into(), Allow)],
        ),
        route(
            "GET",
            "/api/admin-prompts",
            OWNER_SIDE,
            vec![no_body("/api/admin-prompts".into(), Allow)],
        ),
        route(
            "GET",
            "/api/admin-prompts/{name}",
            OWNER_SIDE,
            vec![no_body("/api/admin-prompts/disk-audit".into(), Allow)],
        ),
        route(
            "GET",
            "/api/providers/models",
            OWNER_SIDE,
            vec![
                no_body("/api/providers/models".into(), Allow),
                // A GET never rewrites the catalog, refresh or not.
                no_body("/api/providers/models?refresh=true".into(), Allow),
            ],
        ),
        route(
            "POST",
            "/api/providers/models/refresh",
            OWNER_SIDE,
            // Re-discovering rewrites the catalog.
            vec![no_body("/api/providers/models/refresh".into(), Deny)],
        ),
        // Backups hold everything: the owner side only; the passphrase not from a device.
        route(
            "GET",
            "/api/backups/settings",
            OWNER_SIDE,
            vec![no_body("/api/backups/settings".into(), Deny)],
        ),
        route(
            "PUT",
            "/api/backups/settings",
            SESSION_OR_ADMIN,
            vec![with("/api/backups/settings".into(), json!({}), Deny)],
        ),
        // A new passphrase is shown once, to a person: not from a device.
        route(
            "POST",
            "/api/backups/passphrase",
            SESSION_OR_ADMIN,
            vec![with("/api/backups/passphrase".into(), json!({}), Deny)],
        ),
        route(
            "GET",
            "/api/backups",
            OWNER_SIDE,
            vec![no_body("/api/backups".into(), Deny)],
        ),
        // Not configured in the fixture: the owner side gets 409, the guest 403.
        route(
            "POST",
            "/api/backups",
            OWNER_SIDE,
            vec![no_body("/api/backups".into(), Deny)],
        ),
        route(
            "GET",
            "/api/backups/{id}",
            OWNER_SIDE,
            vec![no_body(format!("/api/backups/{unknown}"), Deny)],
        ),
        // Not configured in the fixture: the owner side gets 409, the guest 403.
        route(
            "POST",
            "/api/backups/drill",
            OWNER_SIDE,
            vec![no_body("/api/backups/drill".into(), Deny)],
        ),
        route(
            "GET",
            "/api/backups/drills",
            OWNER_SIDE,
            vec![no_body("/api/backups/drills".into(), Deny)],
        ),
        route(
            "POST",
            "/api/backups/agents",
            OWNER_SIDE,
            vec![with(
                "/api/backups/agents".into(),
                json!({"agent": "nobody"}),
                Deny,
            )],
        ),
        route(
            "GET",
            "/api/backups/drills/{id}",
            OWNER_SIDE,
            vec![no_body(format!("/api/backups/drills/{unknown}"), Deny)],
        ),
        // Agents: everyone sees them, only the owner side runs them.
        route(
            "GET",
            "/api/agents",
            OWNER_SIDE,
            vec![no_body("/api/agents".into(), Allow)],
        ),
        route(
            "GET",
            "/api/agents/{slug}",
            OWNER_SIDE,
            vec![no_body(agent(""), Allow)],
        ),
        route(
            "POST",
            "/api/agents",
            OWNER_SIDE,
            vec![with(
                "/api/agents".into(),
                json!({"name": "Guest Bot"}),
                Deny,
            )],
        ),
        route(
            "PATCH",
            "/api/agents/{slug}",
            OWNER_SIDE,
            vec![with(agent(""), json!({"paused": true}), Deny)],
        ),
        route(
            "DELETE",
            "/api/agents/{slug}",
            OWNER_SIDE,
            vec![no_body(agent(""), Deny)],
        ),
        route(
            "POST",
            "/api/agents/deploy",
            OWNER_SIDE,
            vec![with(
                "/api/agents/deploy".into(),
                json!({"name": "Guest Bot", "framework": "direct", "model": "fake-gpt"}),
                Deny,
            )],
        ),
        route(
            "GET",
            "/api/agents/{slug}/deploy",
            OWNER_SIDE,
            vec![no_body(agent("/deploy"), Deny)],
        ),
        route(
            "GET",
            "/api/agents/archived",
            OWNER_SIDE,
            vec![no_body("/api/agents/archived".into(), Deny)],
        ),
        route(
            "POST",
            "/api/agents/archived/{id}/restore",
            OWNER_SIDE,
            vec![no_body(
                format!("/api/agents/archived/{unknown}/restore"),
                Deny,
            )],
        ),
        route(
            "DELETE",
            "/api/agents/archived/{id}",
            OWNER_SIDE,
            vec![no_body(format!("/api/agents/archived/{unknown}"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/token/rotate",
            OWNER_SIDE,
            vec![no_body(agent("/token/rotate"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/llm-key/rotate",
            OWNER_SIDE,
            vec![no_body(agent("/llm-key/rotate"), Deny)],
        ),
        route(
            "GET",
            "/api/agents/{slug}/trace",
            OWNER_SIDE,
            vec![no_body(agent("/trace"), Deny)],
        ),
        route(
            "GET",
            "/api/agents/{slug}/trace/totals",
            OWNER_SIDE,
            vec![no_body(agent("/trace/totals"), Deny)],
        ),
        route(
            "GET",
            "/api/agents/{slug}/trace/histogram",
            OWNER_SIDE,
            vec![no_body(agent("/trace/histogram"), Deny)],
        ),
        route(
            "GET",
            "/api/agents/{slug}/logs",
            OWNER_SIDE,
            vec![no_body(agent("/logs"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/bridge-check",
            OWNER_SIDE,
            vec![no_body(agent("/bridge-check"), Deny)],
        ),
        route(
            "GET",
            "/api/agents/{slug}/usage",
            OWNER_SIDE,
            vec![no_body(agent("/usage"), Deny)],
        ),
        route(
            "GET",
            "/api/usage",
            OWNER_SIDE,
            vec![no_body("/api/usage".into(), Deny)],
        ),
        route(
            "PUT",
            "/api/agents/{slug}/budget",
            OWNER_SIDE,
            vec![with(
                agent("/budget"),
                json!({"limit_usd": 1000.0, "period": "day"}),
                Deny,
            )],
        ),
        route(
            "GET",
            "/api/agents/{slug}/disk",
            OWNER_SIDE,
            vec![no_body(agent("/disk"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/quota",
            OWNER_SIDE,
            vec![with(agent("/quota"), json!({"size_gib": 1}), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/start",
            OWNER_SIDE,
            vec![no_body(agent("/start"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/stop",
            OWNER_SIDE,
            vec![no_body(agent("/stop"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/restart",
            OWNER_SIDE,
            vec![no_body(agent("/restart"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/pause",
            OWNER_SIDE,
            vec![no_body(agent("/pause"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/resume",
            OWNER_SIDE,
            vec![no_body(agent("/resume"), Deny)],
        ),
        route(
            "GET",
            "/api/agents/{slug}/recycle",
            OWNER_SIDE,
            vec![no_body(agent("/recycle"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/recycle/restore",
            OWNER_SIDE,
            vec![with(
                agent("/recycle/restore"),
                json!({"id": "1-abc"}),
                Deny,
            )],
        ),
        route(
            "DELETE",
            "/api/agents/{slug}/recycle/{id}",
            OWNER_SIDE,
            vec![no_body(agent("/recycle/1-abc"), Deny)],
        ),
        route(
            "POST",
            "/api/agents/{slug}/admin-prompts/{name}",
            OWNER_SIDE,
            vec![with(agent("/admin-prompts/disk-audit"), json!({}), Deny)],
        ),
        route(
            "GET",
            "/api/recycle",
            OWNER_SIDE,
            vec![no_body("/api/recycle".into(), Deny)],
        ),
        route(
            "POST",
            "/api/disk-quota/scan",
            OWNER_SIDE,
            vec![no_body("/api/disk-quota/scan".into(), Deny)],
        ),
        // Models and providers: the owner's keys and spending.
        route(
            "GET",
            "/api/llm/status",
            OWNER_SIDE,
            vec![no_body("/api/llm/status".into(), Deny)],
        ),
        route(
            "GET",
            "/api/providers",
            OWNER_SIDE,
            vec![no_body("/api/providers".into(), Deny)],
        ),
        route(
            "POST",
            "/api/providers",
            OWNER_SIDE,
            vec![with(
                "/api/providers".into(),
                json!({"name": "mine", "type": "openai-compatible", "url": "http://127.0.0.1:9/v1", "models": [{"id": "m"}]}),
                Deny,
            )],
        ),
        route(
            "PATCH",
            "/api/providers/{name}",
            OWNER_SIDE,
            vec![with("/api/providers/openai".into(), json!({}), Deny)],
        ),
        route(
            "DELETE",
            "/api/providers/{name}",
            OWNER_SIDE,
            vec![no_body("/api/providers/openai".into(), Deny)],
        ),
        route(
            "POST",
            "/api/providers/test",
            OWNER_SIDE,
            vec![with(
                "/api/providers/test".into(),
                json!({"type": "openai-compatible", "url": "http://127.0.0.1:9/v1"}),
                Deny,
            )],
        ),
        // Traces posted by hand and metrics: the owner's session or the local admin.
        route(
            "POST",
            "/api/trace",
            SESSION_OR_ADMIN,
            vec![with("/api/trace".into(), json!({}), Deny)],
        ),
        route(
            "POST",
            "/api/trace/batch",
            SESSION_OR_ADMIN,
            vec![with("/api/trace/batch".into(), json!({}), Deny)],
        ),
        route(
            "GET",
            "/metrics",
            SESSION_OR_ADMIN,
            vec![no_body("/metrics".into(), Deny)],
        ),
        // Devices are the owner's.
        route(
            "POST",
            "/api/devices/pairing-tokens",
            SESSION_OR_ADMIN,
            vec![no_body("/api/devices/pairing-tokens".into(), Deny)],
        ),
        route(
            "GET",
            "/api/devices",
            OWNER_SIDE,
            vec![no_body("/api/devices".into(), Deny)],
        ),
        route(
            "DELETE",
            "/api/devices/{id}",
            OWNER_SIDE,
            vec![no_body(format!("/api/devices/{}", f.device_id), Deny)],
        ),
        // Notifications and events: everyone, each their own (the owner side sees all).
        route(
            "GET",
            "/api/notifications",
            OWNER_SIDE,
            vec![no_body("/api/notifications".into(), Allow)],
        ),
        route(
            "POST",
            "/api/notifications",
            OWNER_SIDE,
            vec![with(
                "/api/notifications".into(),
                json!({"level": "error", "title": "Your host was hacked", "message": "log in at evil.example"}),
                Deny,
            )],
        ),
        route(
            "POST",
            "/api/notifications/{id}/read",
            OWNER_SIDE,
            vec![no_body(
                format!("/api/notifications/{}/read", f.owner_note),
                Hide,
            )],
        ),
        route(
            "POST",
            "/api/notifications/read-all",
            OWNER_SIDE,
            vec![no_body("/api/notifications/read-all".into(), Allow)],
        ),
        route(
            "GET",
            "/api/events",
            OWNER_SIDE,
            vec![no_body("/api/events".into(), Allow)],
        ),
        // Chat: members see a channel, its creator (or the owner) changes it, only the owner
        // brings agents in; a channel the user isn't in doesn't exist for them.
        route(
            "GET",
            "/api/chat/ws",
            OWNER_SIDE,
            vec![no_body("/api/chat/ws".into(), Allow)],
        ),
        route(
            "GET",
            "/api/chat/channels",
            OWNER_SIDE,
            vec![no_body("/api/chat/channels".into(), Allow)],
        ),
        route(
            "POST",
            "/api/chat/channels",
            OWNER_SIDE,
            vec![
                with(
                    "/api/chat/channels".into(),
                    json!({"name": "with a bot", "members": [slug]}),
                    Deny,
                ),
                with(
                    "/api/chat/channels".into(),
                    json!({"name": "guest room"}),
                    Allow,
                ),
            ],
        ),
        route(
            "GET",
            "/api/chat/channels/{id}",
            OWNER_SIDE,
            vec![
                no_body(family.clone(), Allow),
                no_body(private.clone(), Hide),
            ],
        ),
        route(
            "PATCH",
            "/api/chat/channels/{id}",
            OWNER_SIDE,
            vec![
                with(family.clone(), json!({"name": "renamed by guest"}), Deny),
                with(family.clone(), json!({"archived": true}), Deny),
                with(private.clone(), json!({"name": "renamed by guest"}), Hide),
            ],
        ),
        route(
            "DELETE",
            "/api/chat/channels/{id}",
            OWNER_SIDE,
            vec![
                no_body(family.clone(), Deny),
                no_body(private.clone(), Hide),
            ],
        ),
        route(
            "POST",
            "/api/chat/channels/{id}/members",
            OWNER_SIDE,
            vec![
                with(
                    format!("{family}/members"),
                    json!({"action": "add", "member": slug}),
                    Deny,
                ),
                with(
                    format!("{family}/members"),
                    json!({"action": "remove", "member": "user:owner"}),
                    Deny,
                ),
                with(
                    format!("{private}/members"),
                    json!({"action": "add", "member": format!("user:{GUEST}")}),
                    Hide,
                ),
            ],
        ),
        route(
            "GET",
            "/api/chat/channels/{id}/messages",
            OWNER_SIDE,
            vec![
                no_body(format!("{family}/messages"), Allow),
                no_body(format!("{private}/messages"), Hide),
            ],
        ),
        route(
            "POST",
            "/api/chat/messages",
            OWNER_SIDE,
            vec![
                with(
                    "/api/chat/messages".into(),
                    json!({"channel_id": f.private, "content": "let me in"}),
                    Deny,
                ),
                with(
                    "/api/chat/messages".into(),
                    json!({"channel_id": f.family, "content": "see you"}),
                    Allow,
                ),
            ],
        ),
        route(
            "PATCH",
            "/api/chat/messages/{id}",
            OWNER_SIDE,
            vec![with(message.clone(), json!({"content": "forged"}), Deny)],
        ),
        route(
            "DELETE",
            "/api/chat/messages/{id}",
            OWNER_SIDE,
            vec![no_body(message.clone(), Deny)],
        ),
        // Anyone who sees the channel may stop an agent's answer in it (here the message is a
        // person's, so the guest is let through to a 400, not refused).
        route(
            "POST",
            "/api/chat/messages/{id}/cancel",
            OWNER_SIDE,
            vec![no_body(format!("{message}/cancel"), Allow)],
        ),
        // Approvals: anyone who sees the agent's channel; the owner's agent's DM is not the
        // second user's to answer.
        route(
            "GET",
            "/api/approvals",
            OWNER_SIDE,
            vec![no_body("/api/approvals".into(), Allow)],
        ),
        route(
            "POST",
            "/api/approvals/{id}",
            OWNER_SIDE,
            vec![with(
                format!("/api/approvals/{}", f.approval),
                json!({"decision": "approve"}),
                Deny,
            )],
        ),
    ]
}

/// The owner's view of the host, for "nothing changed".
async fn owner_view(f: &Fixture) -> Value {
    let get = |path: String| {
        let host = &f.host;
        async move { ok_json(host.admin(Method::GET, &path)).await }
    };
    json!({
        "agents": get("/api/agents".into()).await,
        "agent": get(format!("/api/agents/{}", f.slug)).await,
        "budget": get(format!("/api/agents/{}/usage", f.slug)).await,
        "channels": get("/api/chat/channels".into()).await,
        "family": get(format!("/api/chat/channels/{}/messages?after_seq=0", f.family)).await,
        "private": get(format!("/api/chat/channels/{}/messages?after_seq=0", f.private)).await,
        "devices": get("/api/devices".into()).await,
        "notifications": get("/api/notifications".into()).await,
        "providers": get("/api/providers".into()).await,
        "archived": get("/api/agents/archived".into()).await,
        "users": get("/api/users".into()).await,
        "approvals": get("/api/approvals".into()).await,
    })
}

fn matches(status: StatusCode, expect: Expect) -> bool {
    match expect {
        Allow => status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
        Deny => status == StatusCode::FORBIDDEN,
        Hide => status == StatusCode::NOT_FOUND,
    }
}

/// Made-up ids in a route's path, for the owner side (which may do anything, so it gets
/// nothing real to break).
fn made_up(path: &str, op: &Value) -> String {
    let id = if op["parameters"].to_string().contains("\"integer\"") {
        "999999"
    } else {
        "00000000-0000-4000-8000-000000000000"
    };
    path.replace("{id}", id)
        .replace("{slug}", "no-such-agent")
        .replace("{name}", "no-such-name")
}

#[tokio::test]
async fn every_route_declares_who_may_call_it_and_others_are_refused() {
    let f = fixture().await;
    let table = table(&f);

    // The table and the document list the same routes.
    let ops = operations(&f.host).await;
    let documented: BTreeSet<(String, String)> =
        ops.iter().map(|(m, p, _)| (m.clone(), p.clone())).collect();
    let classified: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = documented.difference(&classified).collect();
    assert!(
        missing.is_empty(),
        "routes without a row in the roles table (say who may call them): {missing:?}"
    );
    let stale: Vec<_> = classified.difference(&documented).collect();
    assert!(stale.is_empty(), "rows for routes that are gone: {stale:?}");
    assert_eq!(classified.len(), table.len(), "one row per route");

    // The second user goes after the owner's things: exactly the declared refusals, and the
    // owner's view of the host is the same afterwards.
    let before = owner_view(&f).await;
    let mut allowed_later = Vec::new();
    let mut failures = Vec::new();
    for route in &table {
        assert!(
            !route.guest.is_empty(),
            "{} {}: no probe",
            route.method,
            route.path
        );
        for (path, body, expect) in &route.guest {
            if *expect == Allow {
                allowed_later.push((route.method, path.clone(), body.clone()));
                continue;
            }
            let method = Method::from_bytes(route.method.as_bytes()).unwrap();
            let mut request = f.guest.request(method, path);
            if let Some(body) = body {
                request = request.json(body);
            }
            let status = request.send().await.unwrap().status();
            if !matches(status, *expect) {
                failures.push(format!(
                    "second user {} {path}: {status}, want {expect:?}",
                    route.method
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let after = owner_view(&f).await;
    assert_eq!(before, after, "a refused request changed the owner's data");
    let device_works = f
        .host
        .client()
        .get(f.host.url("/api/agents"))
        .bearer_auth(&f.device_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        device_works.status(),
        StatusCode::OK,
        "the owner's device still works"
    );

    // What the second user may do, they can (their session ends last).
    allowed_later.sort_by_key(|(m, p, _)| (*m == "POST" && p == "/api/auth/logout", p.clone()));
    for (method, path, body) in allowed_later {
        let mut request = f
            .guest
            .request(Method::from_bytes(method.as_bytes()).unwrap(), &path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let status = request.send().await.unwrap().status();
        if !matches(status, Allow) {
            failures.push(format!("second user {method} {path}: {status}, want Allow"));
        }
    }

    // The owner side, on made-up ids: allowed where declared, refused where declared. The
    // owner's session signs out last.
    let mut owner_side: Vec<(&Route, &Value)> = table
        .iter()
        .map(|r| {
            let op = &ops
                .iter()
                .find(|(m, p, _)| m == r.method && p == r.path)
                .unwrap()
                .2;
            (r, op)
        })
        .collect();
    owner_side.sort_by_key(|(r, _)| r.path == "/api/auth/logout");
    for (route, op) in owner_side {
        let path = made_up(route.path, op);
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
        let requests = [
            ("owner", f.owner.request(method.clone(), &path)),
            (
                "owner's device",
                f.host
                    .client()
                    .request(method.clone(), f.host.url(&path))
                    .bearer_auth(&f.device_token),
            ),
            ("local admin", f.host.admin(method.clone(), &path)),
        ];
        for ((who, mut request), expect) in requests.into_iter().zip(route.owner_side) {
            if let Some(body) = &body {
                request = request.json(body);
            }
            let status = request.send().await.unwrap().status();
            if !matches(status, expect) {
                failures.push(format!(
                    "{who} {} {path}: {status}, want {expect:?}",
                    route.method
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const WAIT: Duration = Duration::from_secs(10);

async fn notify(host: &Host, body: Value) -> Value {
    let response = host
        .admin(Method::POST, "/api/notifications")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

#[tokio::test]
async fn a_second_user_cannot_revoke_or_list_the_owners_devices() {
    let f = fixture().await;
    let list = f
        .guest
        .request(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::FORBIDDEN);
    let revoke = f
        .guest
        .request(Method::DELETE, &format!("/api/devices/{}", f.device_id))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::FORBIDDEN);
    let still = f
        .host
        .client()
        .get(f.host.url("/api/agents"))
        .bearer_auth(&f.device_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        still.status(),
        StatusCode::OK,
        "the owner's device was revoked"
    );
    let pairing = f
        .guest
        .request(Method::POST, "/api/devices/pairing-tokens")
        .send()
        .await
        .unwrap();
    assert_eq!(pairing.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_second_user_reads_only_their_own_events() {
    let f = fixture().await;
    let stream = |after: Option<&str>| {
        let mut request = f.guest.request(Method::GET, "/api/events");
        if let Some(id) = after {
            request = request.header("last-event-id", id);
        }
        request.send()
    };
    let live = stream(None).await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let mut live = SseReader::new(live);

    // The host raises something for the owner, then the owner's script writes to the guest:
    // the first event on the guest's stream must be the guest's.
    notify(
        &f.host,
        json!({"level": "error", "title": "budget of owner bot exceeded"}),
    )
    .await;
    let for_guest = f
        .host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "info", "title": "backup done", "user": GUEST}))
        .send()
        .await
        .unwrap();
    let first = live.next(WAIT).await.expect("an event");
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(
        data["data"]["title"], "backup done",
        "the second user's stream carried the owner's event: {data}"
    );
    assert_eq!(for_guest.status(), StatusCode::CREATED);
    let theirs: Value = for_guest.json().await.unwrap();
    assert_eq!(theirs["user"], GUEST);

    // The same from the backlog: resuming from the start skips everything of the owner's.
    let replay = stream(Some("0")).await.unwrap();
    let mut replay = SseReader::new(replay);
    let first = replay.next(WAIT).await.expect("an event");
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(data["kind"], "notification.created");
    assert_eq!(data["data"]["id"], theirs["id"], "{data}");

    // The owner side still sees everything.
    let owner = f
        .host
        .admin(Method::GET, "/api/events")
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    let mut owner = SseReader::new(owner);
    let mut titles = Vec::new();
    while titles.len() < 4 {
        let event = owner.next(WAIT).await.expect("owner's events");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        if data["kind"] == "notification.created" {
            titles.push(data["data"]["title"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        titles,
        [
            "owner's secret",
            // The fixture's pending approval.
            "Owner Bot wants to run `rm -r logs`",
            "budget of owner bot exceeded",
            "backup done"
        ]
    );
}

#[tokio::test]
async fn a_second_user_cannot_read_or_mark_the_owners_notifications() {
    let f = fixture().await;
    // The attack: list, mark one and mark all of the owner's notifications.
    let listed = ok_json(f.guest.request(Method::GET, "/api/notifications")).await;
    assert_eq!(
        listed,
        json!([]),
        "the second user read the owner's notifications"
    );
    let read = f
        .guest
        .request(
            Method::POST,
            &format!("/api/notifications/{}/read", f.owner_note),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::NOT_FOUND);
    let all = ok_json(f.guest.request(Method::POST, "/api/notifications/read-all")).await;
    assert_eq!(
        all["updated"], 0,
        "the second user marked the owner's notifications read"
    );

    // Their own they see and mark.
    let theirs = notify(
        &f.host,
        json!({"level": "info", "title": "for the guest", "user": GUEST}),
    )
    .await;
    let listed: Vec<Value> = ok_json(f.guest.request(Method::GET, "/api/notifications"))
        .await
        .as_array()
        .unwrap()
        .clone();
    let ids: Vec<i64> = listed.iter().map(|n| n["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [theirs["id"].as_i64().unwrap()], "{listed:?}");
    let all = ok_json(f.guest.request(Method::POST, "/api/notifications/read-all")).await;
    assert_eq!(all["updated"], 1, "only their own");

    let owners: Vec<Value> = ok_json(f.host.admin(Method::GET, "/api/notifications"))
        .await
        .as_array()
        .unwrap()
        .clone();
    let owner_note = owners
        .iter()
        .find(|n| n["id"] == f.owner_note)
        .expect("the owner's notification");
    assert_eq!(owner_note["read"], false, "the second user marked it read");
    let guest_note = owners.iter().find(|n| n["id"] == theirs["id"]).unwrap();
    assert_eq!(guest_note["read"], true);
    assert_eq!(guest_note["user"], GUEST);
}

#[tokio::test]
async fn a_second_user_cannot_read_the_litellm_log() {
    let f = fixture().await;
    let status = f
        .guest
        .request(Method::GET, "/api/llm/status")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::FORBIDDEN);
    let body = status.text().await.unwrap();
    assert!(!body.contains("log_tail"), "{body}");
    // The owner still can.
    let owner = f
        .owner
        .request(Method::GET, "/api/llm/status")
        .send()
        .await
        .unwrap();
    assert_eq!(owner.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_second_user_cannot_post_notifications() {
    let f = fixture().await;
    let before = ok_json(f.host.admin(Method::GET, "/api/notifications")).await;
    for body in [
        json!({"level": "error", "title": "Your host was hacked", "message": "log in at evil.example"}),
        json!({"level": "info", "title": "to myself", "user": GUEST}),
    ] {
        let r = f
            .guest
            .request(Method::POST, "/api/notifications")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{body}");
    }
    let after = ok_json(f.host.admin(Method::GET, "/api/notifications")).await;
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_second_user_cannot_rename_archive_or_delete_the_owners_channel() {
    let f = fixture().await;
    let family = format!("/api/chat/channels/{}", f.family);
    let before = ok_json(f.host.admin(Method::GET, &family)).await;
    for patch in [json!({"name": "pwned"}), json!({"archived": true})] {
        let r = f
            .guest
            .request(Method::PATCH, &family)
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{patch}");
    }
    let delete = f
        .guest
        .request(Method::DELETE, &family)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::FORBIDDEN);
    let after = ok_json(f.host.admin(Method::GET, &family)).await;
    assert_eq!(before, after);
    assert_eq!(after["created_by"], "user:owner");
    let messages = ok_json(
        f.host
            .admin(Method::GET, &format!("{family}/messages?after_seq=0")),
    )
    .await;
    assert_eq!(
        messages.as_array().unwrap().len(),
        1,
        "the owner's message is still there"
    );

    // Their own channel is theirs to change.
    let own = ok_json(
        f.guest
            .request(Method::POST, "/api/chat/channels")
            .json(&json!({"name": "guest room"})),
    )
    .await;
    assert_eq!(own["created_by"], format!("user:{GUEST}"));
    let own_path = format!("/api/chat/channels/{}", own["id"].as_str().unwrap());
    let renamed = ok_json(
        f.guest
            .request(Method::PATCH, &own_path)
            .json(&json!({"name": "guest lounge"})),
    )
    .await;
    assert_eq!(renamed["name"], "guest lounge");
    let deleted = f
        .guest
        .request(Method::DELETE, &own_path)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_second_user_cannot_add_an_agent_to_a_channel() {
    let f = fixture().await;
    // Their own channel: adding the owner's agent, or making one with it, is refused.
    let own = ok_json(
        f.guest
            .request(Method::POST, "/api/chat/channels")
            .json(&json!({"name": "guest room"})),
    )
    .await;
    let own_members = format!("/api/chat/channels/{}/members", own["id"].as_str().unwrap());
    let add = f
        .guest
        .request(Method::POST, &own_members)
        .json(&json!({"action": "add", "member": f.slug}))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), StatusCode::FORBIDDEN);
    let with_agent = f
        .guest
        .request(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "bot room", "members": [f.slug]}))
        .send()
        .await
        .unwrap();
    assert_eq!(with_agent.status(), StatusCode::FORBIDDEN);
    // The owner's channel they are in: no agents, no people either (they didn't make it).
    let family_members = format!("/api/chat/channels/{}/members", f.family);
    for member in [f.slug.as_str(), "user:owner"] {
        let r = f
            .guest
            .request(Method::POST, &family_members)
            .json(&json!({"action": "add", "member": member}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{member}");
    }
    let channels: Vec<Value> = ok_json(f.host.admin(Method::GET, "/api/chat/channels"))
        .await
        .as_array()
        .unwrap()
        .clone();
    for channel in &channels {
        let members = channel["members"].as_array().unwrap();
        let has_agent = members.iter().any(|m| m == &json!(f.slug));
        let is_dm = channel["type"] == "dm";
        assert!(is_dm || !has_agent, "the agent was added to {channel}");
    }
    assert!(channels.iter().all(|c| c["name"] != "bot room"));

    // They may still leave the owner's channel, and the owner adds the agent.
    let leave = ok_json(
        f.guest
            .request(Method::POST, &family_members)
            .json(&json!({"action": "remove", "member": format!("user:{GUEST}")})),
    )
    .await;
    assert!(!leave["members"]
        .as_array()
        .unwrap()
        .contains(&json!(format!("user:{GUEST}"))));
    let owner_adds = ok_json(
        f.owner
            .request(Method::POST, &family_members)
            .json(&json!({"action": "add", "member": f.slug})),
    )
    .await;
    assert!(owner_adds["members"]
        .as_array()
        .unwrap()
        .contains(&json!(f.slug)));
}
