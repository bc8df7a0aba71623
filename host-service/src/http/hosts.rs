//! The public listener answers only to its own names. A web page can point its own DNS name at
//! this host (DNS rebinding) and then talk to it as "same origin" from the visitor's browser —
//! for a host on loopback or the LAN that is the way in. The browser still sends the page's
//! name in `Host`, so a request naming anything but an IP address, `localhost`, the host name,
//! `<host name>.local` or a name in `[server] allowed_hosts` is refused with 421.
//!
//! Any IP literal is accepted: a browser only sends one when it was asked for that address
//! itself, which no rebinding can arrange, and addresses change (DHCP) while names don't.

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// The name part of a Host value (`name`, `name:port`, `[v6]`, `[v6]:port`), lower case and
/// without a trailing dot; `None` if it is not a well-formed authority.
fn host_part(authority: &str) -> Option<String> {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return (port_ok && inside.parse::<Ipv6Addr>().is_ok()).then(|| format!("[{inside}]"));
    }
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => authority,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.contains(':') {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// Whether the public listener answers to `authority` (a Host header or an h2 `:authority`).
pub fn allowed(authority: &str, host_name: &str, extra: &[String]) -> bool {
    let Some(name) = host_part(authority) else {
        return false;
    };
    if name.starts_with('[') || name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let host_name = host_name.trim().trim_end_matches('.');
    name == "localhost"
        || (!host_name.is_empty()
            && (name.eq_ignore_ascii_case(host_name)
                || name
                    .strip_suffix(".local")
                    .is_some_and(|n| n.eq_ignore_ascii_case(host_name))))
        || extra.iter().any(|e| name.eq_ignore_ascii_case(e))
}

/// Middleware for the public listener: refuses requests for names this host isn't.
pub async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // HTTP/1.1 carries the name in Host; HTTP/2 in the URI's authority. Check every one given.
    let header_value = request.headers().get(header::HOST).map(|v| v.to_str());
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    let mut names: Vec<String> = Vec::new();
    match header_value {
        Some(Ok(value)) => names.push(value.to_string()),
        Some(Err(_)) => return refuse("(not text)"),
        None => {}
    }
    names.extend(authority);
    if names.is_empty() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_host",
            "the request names no host (Host header)",
        )
        .into_response();
    }
    let extra = &state.config.server.allowed_hosts;
    if let Some(bad) = names.iter().find(|n| !allowed(n, &state.host_name, extra)) {
        return refuse(bad);
    }
    next.run(request).await
}

fn refuse(name: &str) -> Response {
    let shown: String = name.chars().take(100).collect();
    tracing::info!(host = %shown, "refused a request for another host name");
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "unknown_host",
        format!(
            "this host does not answer to the name {shown:?}; if that name is yours, add it to \
             [server] allowed_hosts in taos.toml"
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_and_addresses_pass_others_do_not() {
        let extra = vec!["taos.example.org".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:6969",
            "192.168.1.20:6969",
            "[::1]",
            "[::1]:6969",
            "[fe80::1]:443",
            "localhost",
            "LOCALHOST:6969",
            "pi",
            "Pi:6969",
            "pi.local",
            "pi.local.:6969",
            "taos.example.org",
            "TAOS.example.org:443",
        ] {
            assert!(allowed(ok, "pi", &extra), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:6969",
            "pi.evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "example.org",
            "",
            ":6969",
            "::1",
            "[::1",
            "[not-v6]",
            "pi:http",
            "pi:",
            "a b",
        ] {
            assert!(!allowed(bad, "pi", &extra), "{bad}");
        }
        // No host name known: only addresses, localhost and the configured names.
        assert!(!allowed(".local", "", &[]));
        assert!(!allowed("local", "", &[]));
        assert!(allowed("localhost", "", &[]));
    }
}
