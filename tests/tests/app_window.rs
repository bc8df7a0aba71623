//! The taos app in a real window against a real host, driven through WebDriver
//! (tauri-driver → WebKitWebDriver): pair with a fresh code → chat with an agent (its reply
//! streams in) → the host stops: the chat is still readable, two messages are shown queued →
//! the host is back: both delivered exactly once (checked on the host) → a disk-quota alert
//! from the host is a native notification (a `Notify` call on the session bus) → an agent's
//! tool call waiting for approval is a notification with Approve and Deny, and each button
//! (the notification server's `ActionInvoked`) answers it on the host → the device
//! is revoked: the app is back on pairing, saying why. Screenshots of every step are kept.
//!
//! Needs a display, a D-Bus session and a Secret Service, so it is `#[ignore]`d in the plain
//! workspace run: `scripts/app-e2e.sh` runs it (`--ignored`) under `xvfb-run` and
//! `dbus-run-session` with GNOME Keyring, and `scripts/test.sh` runs that script.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{free_port, workspace_binary, AgentClient, Host};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Just enough of W3C WebDriver over plain HTTP to drive the app.
struct Driver {
    http: reqwest::Client,
    base: String,
    session: String,
    shots: PathBuf,
}

impl Driver {
    async fn start(port: u16, app: &Path, shots: PathBuf) -> Driver {
        let http = taos_e2e::plain_client(Duration::from_secs(120));
        let base = format!("http://127.0.0.1:{port}");
        let created: Value = http
            .post(format!("{base}/session"))
            .json(
                &json!({"capabilities": {"alwaysMatch": {"tauri:options": {"application": app}}}}),
            )
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Driver {
            http,
            base,
            session,
            shots,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request
            .send()
            .await
            .expect("webdriver")
            .json::<Value>()
            .await
            .expect("webdriver json")["value"]
            .take()
    }

    /// The first element matching `css`, waiting up to `wait` for it to appear.
    async fn find(&self, css: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let found = self
                .call(
                    Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = found[ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(Instant::now() < deadline, "no element {css} after {wait:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.find(css, Duration::from_secs(20)).await;
        self.call(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css, Duration::from_secs(20)).await;
        self.call(
            Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The page's visible text.
    async fn text(&self) -> String {
        self.call(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": "return document.body.innerText", "args": []})),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    async fn wait_for_text(&self, needle: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let text = self.text().await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared; the page says:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.call(
            Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
    }

    async fn screenshot(&self, name: &str) {
        let shot = self.call(Method::GET, "/screenshot", None).await;
        if let Some(b64) = shot.as_str() {
            if let Ok(png) = base64::engine::general_purpose::STANDARD.decode(b64) {
                let _ = std::fs::write(self.shots.join(format!("{name}.png")), png);
            }
        }
    }

    async fn quit(&self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

/// The owner writes in a channel through the host's API (not the app).
async fn owner_says(host: &Host, channel_id: &str, content: &str) {
    let r = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": channel_id, "content": content}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Opens a screen of the UI, as its own links do.
async fn go_to(ui: &Driver, path: &str) {
    ui.call(
        Method::POST,
        "/execute/sync",
        Some(json!({"script": format!("history.pushState(null, '', '{path}'); dispatchEvent(new PopStateEvent('popstate'))"), "args": []})),
    )
    .await;
}

async fn wait_for_tray_label(expected: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tray_label().as_deref() != Some(expected) {
        assert!(
            Instant::now() < deadline,
            "{what}: the tray label did not become {expected:?} (it is {:?})",
            tray_label()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Does to taos's top-level X window what a window manager would (there is none under Xvfb):
/// `close` sends it `WM_DELETE_WINDOW` (the close button), `focus` gives it the keyboard focus,
/// `state` prints whether it is `viewable` or `unmapped`.
fn x11_window(action: &str, title: &str) -> String {
    const SCRIPT: &str = r#"
import sys
from Xlib import X, display, protocol
action, title = sys.argv[1], sys.argv[2]
d = display.Display()
protocols, delete = d.intern_atom("WM_PROTOCOLS"), d.intern_atom("WM_DELETE_WINDOW")
def windows(w):
    for child in w.query_tree().children:
        yield child
        yield from windows(child)
for w in windows(d.screen().root):
    try:
        if w.get_wm_name() != title or delete not in (w.get_wm_protocols() or []):
            continue
    except Exception:
        continue
    if action == "close":
        w.send_event(protocol.event.ClientMessage(window=w, client_type=protocols,
                     data=(32, [delete, X.CurrentTime, 0, 0, 0])), event_mask=X.NoEventMask)
    elif action == "focus":
        w.set_input_focus(X.RevertToParent, X.CurrentTime)
    else:
        print("viewable" if w.get_attributes().map_state == X.IsViewable else "unmapped")
    d.flush()
    sys.exit(0)
sys.exit(1)
"#;
    // Debian's python3, which has python3-xlib (not whichever python3 comes first on PATH).
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT, action, title])
        .output()
        .expect("/usr/bin/python3");
    assert!(out.status.success(), "no window titled {title} to {action}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Maps a small X window of another client and gives it the keyboard focus, as switching to
/// another app does; returns once it has the focus, and it lives until the process is killed.
fn steal_focus() -> std::process::Child {
    const SCRIPT: &str = r#"
import sys, time
from Xlib import X, display
d = display.Display()
screen = d.screen()
w = screen.root.create_window(0, 0, 200, 100, 0, screen.root_depth, X.InputOutput,
                              X.CopyFromParent, event_mask=X.StructureNotifyMask)
w.set_wm_name("another app")
w.map()
while d.next_event().type != X.MapNotify:
    pass
w.set_input_focus(X.RevertToParent, X.CurrentTime)
d.sync()
print("focused", flush=True)
time.sleep(120)
"#;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "focused");
    // Let the app hear of it before anything depends on it.
    #[allow(
        clippy::disallowed_methods,
        reason = "a synchronous helper that waits for the window manager"
    )]
    std::thread::sleep(Duration::from_millis(300));
    child
}

/// The XDG autostart entry that starts taos at login, if there is one.
fn autostart_entry() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("HOME")?).join(".config/autostart");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "desktop"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .find(|text| text.contains("taos"))
}

/// The label of taos's tray icon (a StatusNotifierItem exported by libayatana-appindicator),
/// read over the session bus from whichever peer exports it; `None` when none does.
fn tray_label() -> Option<String> {
    tray_property("XAyatanaLabel")
}

/// Whether taos's tray icon is shown (`Status` is `Active`; a hidden one is `Passive`).
fn tray_shown() -> bool {
    tray_property("Status").as_deref() == Some("Active")
}

/// A property of taos's tray item, from whichever bus peer exports it.
fn tray_property(property: &str) -> Option<String> {
    // The peer that answered last time is asked first; the others only when it doesn't.
    static PEER: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let gdbus = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("gdbus")
            .args(["call", "--session", "--timeout", "2"])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let read_at = |peer: &str| -> Option<String> {
        let reply = gdbus(&[
            "--dest",
            peer,
            "--object-path",
            TRAY_OBJECT,
            "--method",
            "org.freedesktop.DBus.Properties.Get",
            "org.kde.StatusNotifierItem",
            property,
        ])?;
        // `(<'1'>,)`
        Some(reply.split('\'').nth(1).unwrap_or("").to_string())
    };
    let known = PEER.lock().unwrap().clone();
    if let Some(value) = known.as_deref().and_then(read_at) {
        return Some(value);
    }
    let names = gdbus(&[
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
        "--method",
        "org.freedesktop.DBus.ListNames",
    ])?;
    names
        .split('\'')
        .filter(|n| n.starts_with(':') && Some(*n) != known.as_deref())
        .find_map(|peer| {
            let value = read_at(peer)?;
            *PEER.lock().unwrap() = Some(peer.to_string());
            Some(value)
        })
}

/// Where libayatana-appindicator exports taos's tray item: tray-icon names the indicator
/// "tray-icon tray app <id>", and the library turns what is not alphanumeric into '_'.
const TRAY_OBJECT: &str = "/org/ayatana/NotificationItem/tray_icon_tray_app_taos";

async fn wait_for_status(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = taos_e2e::plain_client(Duration::from_secs(120));
    loop {
        // tauri-driver answers before WebKitWebDriver listens; only a 200 means ready.
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .await
        {
            if r.status() == StatusCode::OK {
                return;
            }
        }
        assert!(Instant::now() < deadline, "tauri-driver never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tauri_driver() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let installed = cargo_home.join("bin/tauri-driver");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("tauri-driver")
    }
}

#[tokio::test]
#[ignore = "needs a display, D-Bus and a keychain: scripts/app-e2e.sh runs it"]
async fn the_app_pairs_chats_queues_offline_delivers_once_and_notifies() {
    assert_eq!(
        std::env::var("TAOS_APP_E2E").ok().as_deref(),
        Some("1"),
        "run through scripts/app-e2e.sh, which provides the display, D-Bus session and keychain"
    );
    let app = workspace_binary("taos-app");
    assert!(app.exists(), "build the app first: {}", app.display());
    let out = PathBuf::from(
        std::env::var("TAOS_APP_E2E_OUT").unwrap_or_else(|_| "/tmp/taos-app-e2e".into()),
    );
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();

    // Watch the session bus for notifications.
    let bus_log = out.join("dbus-monitor.log");
    let mut monitor = tokio::process::Command::new("dbus-monitor")
        // Method returns too: a Notify call's answer is the notification's id.
        .args([
            "--session",
            "interface='org.freedesktop.Notifications'",
            "type='method_return'",
        ])
        .stdout(Stdio::from(std::fs::File::create(&bus_log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("dbus-monitor");

    let port = free_port();
    let mut host = Host::start_on(port, None).await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Helper").await;
    let answering = agent.clone().answer_everything(Duration::from_millis(150));
    let token = host.pairing_token().await;

    let app_data = tempfile::tempdir().unwrap();
    let driver_port = free_port();
    let mut driver_process = tokio::process::Command::new(tauri_driver())
        .args([
            "--port",
            &driver_port.to_string(),
            "--native-port",
            &free_port().to_string(),
        ])
        .env("TAOS_APP_DATA_DIR", app_data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(out.join("tauri-driver.log")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("tauri-driver");
    wait_for_status(driver_port).await;
    let ui = Driver::start(driver_port, &app, out.clone()).await;

    // Pair with a fresh code.
    ui.wait_for_text("Pair with your taos host", Duration::from_secs(30))
        .await;
    ui.screenshot("01-pairing").await;
    ui.type_into("#pair-token", &token).await;
    ui.type_into("#device-name", "window test").await;
    ui.click("button[type=submit]").await;
    ui.wait_for_text("Agents", Duration::from_secs(30)).await;
    ui.screenshot("02-paired").await;

    // Chat with the agent: the reply streams in.
    let dm: Vec<Value> = host
        .admin(Method::GET, "/api/chat/channels?member=helper")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dm = dm[0]["id"].as_str().unwrap().to_string();
    go_to(&ui, &format!("/chat/{dm}")).await;
    ui.type_into("form.composer textarea", "hi from the window")
        .await;
    ui.click("form.composer button[type=submit]").await;
    ui.wait_for_text("Hello from the agent", Duration::from_secs(30))
        .await;
    ui.screenshot("03-reply").await;
    // Replies in this chat can be muted (and unmuted) for notifications.
    ui.click("[data-testid=mute]").await;
    ui.wait_for_text("Unmute", Duration::from_secs(10)).await;
    ui.click("[data-testid=mute]").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ui.text().await.contains("Unmute") {
        assert!(Instant::now() < deadline, "mute did not toggle back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The host stops: the chat stays readable; two messages show as queued.
    host.terminate().await.unwrap();
    answering.abort();
    ui.find("[data-testid=offline-banner]", Duration::from_secs(60))
        .await;
    let text = ui.text().await;
    assert!(text.contains("hi from the window"), "{text}");
    assert!(text.contains("Hello from the agent"), "{text}");
    for line in ["offline one", "offline two"] {
        ui.type_into("form.composer textarea", line).await;
        ui.click("form.composer button[type=submit]").await;
    }
    ui.wait_for_text("offline two", Duration::from_secs(10))
        .await;
    assert_eq!(ui.count("[data-testid=pending]").await, 2, "both queued");
    ui.wait_for_text("queued", Duration::from_secs(10)).await;
    ui.screenshot("04-offline-queued").await;

    // The host is back: both delivered, once each, in order.
    let data_dir = host.data_dir.clone();
    let _keep = host.take_temp();
    drop(host);
    let host = Host::start_on(port, Some(data_dir)).await;
    let _answering = agent
        .with_base(&host.agent_url)
        .answer_everything(Duration::from_millis(150));
    ui.click("[data-testid=offline-banner] button").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ui.count("[data-testid=pending]").await > 0 {
        assert!(Instant::now() < deadline, "queued messages never went out");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ui.screenshot("05-delivered").await;
    let stored: Vec<Value> = host
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
    let ours: Vec<&str> = stored
        .iter()
        .filter_map(|m| m["content"].as_str())
        .filter(|c| c.starts_with("offline"))
        .collect();
    assert_eq!(
        ours,
        ["offline one", "offline two"],
        "exactly once, in order"
    );

    // A disk-quota alert from the host becomes a native notification (the only one shown, so
    // the click below is on it).
    let _ = std::process::Command::new("dunstctl")
        .arg("close-all")
        .output();
    let r = host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "warning", "title": "Helper's disk is 91% full",
                      "message": "1.8 of 2 GiB", "source": "disk_quota", "data": {"agent": "helper"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&bus_log).unwrap_or_default();
        if log.contains("member=Notify") && log.contains("Helper's disk is 91% full") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Notify call on the session bus:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ui.screenshot("06-notified").await;
    // Clicking it (dunst invokes its default action, as a click on the body does) opens the
    // agent it is about: one click, then the window follows.
    click_notification().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = ui
            .call(
                Method::POST,
                "/execute/sync",
                Some(json!({"script": "return location.pathname", "args": []})),
            )
            .await;
        if path == "/agents/helper" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clicking the notification did not open the agent (at {path})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ui.screenshot("06a-notification-opened").await;

    // An agent's tool call waiting for approval: the notification carries Approve and Deny,
    // and each button answers it on the host with this device's credentials.
    approvals_from_notifications(&host, &bus_log).await;
    ui.screenshot("06a2-approvals-answered").await;

    // The paired hosts are listed, this one active.
    go_to(&ui, "/devices").await;
    ui.find("[data-testid=paired-hosts]", Duration::from_secs(10))
        .await;
    let text = ui.wait_for_text("active", Duration::from_secs(10)).await;
    assert!(text.contains("Hosts this app is paired with"), "{text}");
    ui.screenshot("06b-hosts").await;

    // Desktop extras. "Start at login" writes the XDG autostart entry that starts this app.
    ui.find("[data-testid=desktop-settings]", Duration::from_secs(10))
        .await;
    assert!(
        autostart_entry().is_none(),
        "autostart on before it was chosen"
    );
    ui.click("[data-testid=setting-autostart]").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let entry = loop {
        if let Some(entry) = autostart_entry() {
            break entry;
        }
        if Instant::now() > deadline {
            ui.screenshot("06c-no-autostart").await;
            panic!("no autostart entry was written:\n{}", ui.text().await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        entry.contains(&format!("Exec={}", app.display())),
        "{entry}"
    );
    // The tray icon: a StatusNotifierItem on the session bus, whose label is the number of
    // unread replies. A reply in the chat (no longer on screen) adds one.
    ui.click("[data-testid=setting-tray]").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !tray_shown() {
        assert!(Instant::now() < deadline, "no tray icon on the session bus");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Replies that finished after the chat was left already count (the agent may still have
    // been answering the queued messages): the label is that count, empty for none.
    let unread_before: u32 = tray_label().unwrap().parse().unwrap_or(0);
    let expected = (unread_before + 1).to_string();
    owner_says(&host, &dm, "anything new?").await;
    wait_for_tray_label(&expected, "a reply in a chat not on screen").await;
    ui.screenshot("06c-desktop-settings").await;

    // Closing the window with the tray on hides it and keeps taos running; while hidden even
    // the chat that was open counts as off screen, so its replies notify and count.
    go_to(&ui, &format!("/chat/{dm}")).await;
    ui.find("textarea", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_screen = tray_label().unwrap();
    let _ = std::process::Command::new("dunstctl")
        .arg("close-all")
        .output();
    assert_eq!(x11_window("state", "taos"), "viewable");
    x11_window("close", "taos");
    let deadline = Instant::now() + Duration::from_secs(10);
    while x11_window("state", "taos") != "unmapped" {
        assert!(
            Instant::now() < deadline,
            "closing with the tray on did not hide the window"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    owner_says(&host, &dm, "still there?").await;
    let hidden_count = (on_screen.parse::<u32>().unwrap_or(0) + 1).to_string();
    wait_for_tray_label(&hidden_count, "a reply while the window is hidden").await;
    // Clicking that reply's notification raises the window on that chat: on screen again, so
    // its replies count as read.
    click_notification().await;
    wait_for_tray_label("", "raising the window marks the chat read").await;
    assert_eq!(x11_window("state", "taos"), "viewable");
    ui.screenshot("06d-raised-from-tray").await;

    // The same when the window is shown but another one has the focus: nobody is looking at
    // the chat, so its reply notifies and counts; focus back on taos, and it is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = std::process::Command::new("dunstctl")
        .arg("close-all")
        .output();
    let mut other_window = steal_focus();
    owner_says(&host, &dm, "are you there?").await;
    wait_for_tray_label("1", "a reply while another window has the focus").await;
    x11_window("focus", "taos");
    wait_for_tray_label("", "taos focused again").await;
    let _ = other_window.kill();
    let _ = other_window.wait();

    // Both off again: the entry is gone, and the icon hidden.
    go_to(&ui, "/devices").await;
    ui.find("[data-testid=desktop-settings]", Duration::from_secs(10))
        .await;
    ui.click("[data-testid=setting-autostart]").await;
    ui.click("[data-testid=setting-tray]").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while autostart_entry().is_some() || tray_shown() {
        assert!(
            Instant::now() < deadline,
            "still on: autostart {}, tray {}",
            autostart_entry().is_some(),
            tray_shown()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A second launch (the menu entry clicked again, or start at login with taos already up)
    // hands over to the running app and exits; the first carries on.
    let second = tokio::process::Command::new(&app)
        .env("TAOS_APP_DATA_DIR", app_data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("a second launch kept running beside the first")
        .unwrap();
    assert!(status.success(), "{status}");
    ui.find("[data-testid=desktop-settings]", Duration::from_secs(10))
        .await;

    // The owner revokes the device: the app goes back to pairing and says why.
    let devices: Vec<Value> = host
        .admin(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = devices[0]["id"].as_str().unwrap();
    host.admin(Method::DELETE, &format!("/api/devices/{id}"))
        .send()
        .await
        .unwrap();
    go_to(&ui, "/agents").await;
    ui.wait_for_text("signed out by the host", Duration::from_secs(60))
        .await;
    // It was the only paired host: nothing to go back to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = ui.text().await;
    assert!(!text.contains("Continue with"), "{text}");
    ui.screenshot("07-revoked").await;

    ui.quit().await;
    let _ = driver_process.kill().await;
    let _ = monitor.kill().await;
    eprintln!("screenshots in {}", out.display());
}

/// Two tool calls of an agent on `ask`, played over the real agent listener: each becomes a
/// native notification with Approve and Deny (checked in the `Notify` call on the bus); the
/// notification server's answer to a button is the `ActionInvoked(id, action)` signal, sent
/// here as a server sends it (dunst can't press a named button from the command line) to the
/// id the server gave that notification. The app answers through `taos_client::approvals`,
/// the host records it (the agent asking again is told), and a notification says how it went.
async fn approvals_from_notifications(host: &Host, bus_log: &Path) {
    let (agent, record) = AgentClient::create(host, "Tooler").await;
    let r = host
        .admin(Method::PATCH, &format!("/api/agents/{}", agent.slug))
        .json(&json!({"tool_policy": "ask"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let dm = record["dm_channel_id"].as_str().unwrap();
    let turn: Value = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": dm, "content": "clean up the old logs"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let trace_id = turn["id"].as_str().unwrap();
    for (step, command, action, state) in [
        (0, "rm -r ~/logs/2024", "approve", "approved"),
        (1, "rm -r ~/logs/2025", "deny", "denied"),
    ] {
        let call_id = format!("c{step}");
        let r = agent
            .reply(
                json!({"kind": "tool_call", "trace_id": trace_id, "call_id": call_id,
                "tool": "shell", "args": {"command": command}}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let ask = || async {
            let r = agent
                .request(
                    Method::POST,
                    &format!("/api/openclaw/sessions/{}/approvals", agent.slug),
                )
                .json(
                    &json!({"trace_id": trace_id, "call_id": call_id, "tool": "shell",
                    "args": {"command": command}, "step": step, "wait_secs": 0}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["state"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(ask().await, "pending");
        let title = format!("Tooler wants to run `{command}`");
        let id = notification_id(bus_log, &title, &["approve", "Approve", "deny", "Deny"]).await;
        let pressed = std::process::Command::new("gdbus")
            .args([
                "emit",
                "--session",
                "--object-path",
                "/org/freedesktop/Notifications",
                "--signal",
                "org.freedesktop.Notifications.ActionInvoked",
                &format!("uint32 {id}"),
                &format!("'{action}'"),
            ])
            .status()
            .expect("gdbus");
        assert!(pressed.success(), "gdbus emit: {pressed}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = ask().await;
            if now == state {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{action} on the notification left the approval {now}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // And the app said how it went.
        let outcome = format!("{}{} for tooler", state[..1].to_uppercase(), &state[1..]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(bus_log)
            .unwrap_or_default()
            .contains(&outcome)
        {
            assert!(Instant::now() < deadline, "no \"{outcome}\" notification");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let pending: Vec<Value> = host.get("/api/approvals").await;
    assert!(pending.is_empty(), "{pending:?}");
}

/// The id the notification server gave the `Notify` call whose text has `title`, once the
/// call (with `needles` among its arguments: the buttons) and its answer are in the bus log.
async fn notification_id(bus_log: &Path, title: &str, needles: &[&str]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(bus_log).unwrap_or_default();
        if let Some(id) = notify_answer(&log, title, needles) {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "no Notify call for {title:?} with {needles:?} answered on the bus:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// dbus-monitor's log is blocks: a header line (`method call … sender=:1.7 … serial=12 …
/// member=Notify`, `method return … destination=:1.7 serial=30 reply_serial=12`) and the
/// arguments indented below it.
fn notify_answer(log: &str, title: &str, needles: &[&str]) -> Option<u32> {
    let mut blocks: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in log.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some((_, body)) = blocks.last_mut() {
                body.push(line.trim());
            }
        } else {
            blocks.push((line, Vec::new()));
        }
    }
    let field = |header: &str, name: &str| -> Option<String> {
        header
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(|v| v.trim_end_matches(';').to_string())
    };
    let (call, _) = blocks.iter().rev().find(|(header, body)| {
        header.starts_with("method call")
            && header.contains("member=Notify")
            && body.iter().any(|l| l.contains(title))
            && needles
                .iter()
                .all(|n| body.iter().any(|l| *l == format!("string \"{n}\"")))
    })?;
    let (sender, serial) = (field(call, "sender=")?, field(call, "serial=")?);
    blocks.iter().find_map(|(header, body)| {
        (header.starts_with("method return")
            && field(header, "destination=").as_deref() == Some(sender.as_str())
            && field(header, "reply_serial=").as_deref() == Some(serial.as_str()))
        .then(|| body.first()?.strip_prefix("uint32 ")?.parse().ok())
        .flatten()
    })
}

#[test]
fn a_notify_answer_is_found_in_a_dbus_monitor_log() {
    let log = r#"signal time=1.0 sender=org.freedesktop.DBus -> destination=:1.9 serial=2 path=/org/freedesktop/DBus; interface=org.freedesktop.DBus; member=NameAcquired
   string ":1.9"
method call time=2.0 sender=:1.7 -> destination=org.freedesktop.Notifications serial=12 path=/org/freedesktop/Notifications; interface=org.freedesktop.Notifications; member=Notify
   string "taos"
   uint32 0
   string ""
   string "Tooler wants to run `rm -r ~/logs/2024`"
   string "Approve or deny it"
   array [
      string "default"
      string "Open"
      string "approve"
      string "Approve"
      string "deny"
      string "Deny"
   ]
method return time=2.1 sender=:1.3 -> destination=:1.5 serial=29 reply_serial=12
   uint32 3
method return time=2.1 sender=:1.3 -> destination=:1.7 serial=30 reply_serial=12
   uint32 4
"#;
    let title = "Tooler wants to run `rm -r ~/logs/2024`";
    assert_eq!(notify_answer(log, title, &["approve", "deny"]), Some(4));
    assert_eq!(notify_answer(log, title, &["snooze"]), None);
    assert_eq!(notify_answer(log, "another", &[]), None);
}

/// Clicks the newest notification once dunst shows it: dunst invokes its default action, as a
/// click on its body does. Once, so a click that does nothing fails the test.
async fn click_notification() {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = std::process::Command::new("dunstctl")
            .args(["count", "displayed"])
            .output()
            .expect("dunstctl");
        let shown: u32 = String::from_utf8_lossy(&count.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if shown > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dunst never showed the notification"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let clicked = std::process::Command::new("dunstctl")
        .args(["action", "0"])
        .status()
        .expect("dunstctl");
    assert!(clicked.success(), "dunstctl action: {clicked}");
}
