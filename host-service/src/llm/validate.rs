//! Checks on a gateway request body before anything is sent upstream: the types OpenAI defines
//! for `stream`, `n` and the token limits, and the URLs inside content parts.
//!
//! LiteLLM fetches `http(s)` URLs it finds in image, audio and file parts (to inline them for
//! providers that want bytes), from the host's own network position. An agent could use that to
//! reach loopback services, the LAN or a cloud metadata address. So a content part may carry
//! only a `data:` URL or an `https` URL whose host is a public address or a DNS name that is not
//! obviously local. A DNS name is not resolved here: a public name that resolves to a private
//! address (or is rebound to one) still gets through, and the agents' network rules don't help
//! there, since LiteLLM fetches from the host's network (a known limit, in docs/architecture.md
//! "Security model").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use reqwest::Url;
use serde_json::Value;

/// OpenAI's own limit on `n`.
pub const MAX_N: u64 = 128;
/// No model writes more than this in one answer; a larger `max_tokens` is a mistake or an
/// attempt to make the budget reservation meaningless.
pub const MAX_TOKENS_LIMIT: u64 = 1_000_000;

/// What the validated body asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub stream: bool,
    /// How many choices (`n`), 1 when absent.
    pub n: u64,
    /// The output limit the caller set (`max_tokens` or `max_completion_tokens`; the larger if
    /// both, since a provider may honour either).
    pub max_tokens: Option<u64>,
}

/// Checks the typed fields. `null` counts as absent, as in OpenAI's API.
pub fn check_fields(body: &Value) -> Result<Shape, String> {
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"stream\" must be a boolean".into()),
    };
    let n = integer_field(body, "n", 1, MAX_N)?.unwrap_or(1);
    let max_tokens = integer_field(body, "max_tokens", 1, MAX_TOKENS_LIMIT)?;
    let max_completion = integer_field(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)?;
    let max_tokens = match (max_tokens, max_completion) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Ok(Shape {
        stream,
        n,
        max_tokens,
    })
}

fn integer_field(body: &Value, name: &str, min: u64, max: u64) -> Result<Option<u64>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(format!("\"{name}\" must be an integer from {min} to {max}")),
        },
    }
}

/// Keys of a content part that hold free text or plain labels, never something LiteLLM
/// fetches. Every other string in a part that looks like a URL is checked.
const TEXT_KEYS: &[&str] = &[
    "type",
    "text",
    "refusal",
    "thinking",
    "signature",
    "detail",
    "format",
    "filename",
    "mime_type",
    "media_type",
    "cache_control",
];

/// Checks every URL in the content parts of `messages` (chat) and every `input` item that is
/// a whole URL (embeddings: some providers' multimodal embeddings fetch those).
pub fn check_urls(body: &Value) -> Result<(), String> {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for message in messages {
            if let Some(parts) = message.get("content").and_then(Value::as_array) {
                for part in parts {
                    check_part(part)?;
                }
            }
        }
    }
    match body.get("input") {
        Some(Value::String(s)) => check_bare(s)?,
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => check_bare(s)?,
                    other => check_part(other)?,
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_bare(s: &str) -> Result<(), String> {
    if looks_like_url(s) && !s.chars().any(char::is_whitespace) {
        check_media_url(s)?;
    }
    Ok(())
}

/// Walks one content part: strings under any key but the text ones are checked if they look
/// like URLs, at any depth (`image_url.url`, `file.file_data`, `file.file_id`, `video_url`…).
fn check_part(value: &Value) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if TEXT_KEYS.contains(&key.as_str()) {
                    continue;
                }
                check_part(v)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_part),
        Value::String(s) if looks_like_url(s) => check_media_url(s),
        _ => Ok(()),
    }
}

/// `scheme:` at the start (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`). Base64
/// data, file ids and MIME types never contain a colon there.
fn looks_like_url(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// A `data:` URL, or an `https` URL to a public address or a non-local DNS name.
pub fn check_media_url(raw: &str) -> Result<(), String> {
    if raw.len() >= 5 && raw[..5].eq_ignore_ascii_case("data:") {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(format!(
            "content URLs must be data: URLs or https URLs to public hosts ({why})"
        ))
    };
    let Ok(url) = Url::parse(raw) else {
        return refuse("not a valid URL");
    };
    if url.scheme() != "https" {
        return refuse(&format!("scheme {:?} is not allowed", url.scheme()));
    }
    // The URL parser already turned every IPv4 spelling (`0x7f.1`, `2130706433`) into dotted
    // form and put IPv6 in brackets.
    let Some(host) = url.host_str() else {
        return refuse("no host");
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) if !is_public(ip) => refuse(&format!("{ip} is not a public address")),
        Ok(_) => Ok(()),
        Err(_) if is_local_name(bare) => refuse(&format!("{bare} is a local name")),
        Err(_) => Ok(()),
    }
}

/// Names that resolve on the local machine or network: `localhost`, single labels (completed
/// by the resolver's search domains) and the suffixes used for LANs.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    const LOCAL_SUFFIXES: &[&str] = &[
        "localhost",
        "local",
        "localdomain",
        "internal",
        "intranet",
        "lan",
        "home",
        "corp",
        "private",
        "home.arpa",
    ];
    !name.contains('.')
        || LOCAL_SUFFIXES
            .iter()
            .any(|s| name == *s || name.ends_with(&format!(".{s}")))
}

/// Globally routable unicast: not loopback, private, shared, link-local, documentation,
/// benchmarking, multicast or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    // 6to4 (2002::/16) likewise, in bits 16..48.
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    // Documentation (2001:db8::/32) and Teredo (2001::/32).
    if s[0] == 0x2001 && (s[1] == 0x0db8 || s[1] == 0) {
        return false;
    }
    // Everything else public is global unicast (2000::/3): this leaves out loopback,
    // unspecified, ULA, link-local, site-local and multicast.
    s[0] & 0xe000 == 0x2000
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_fields() {
        assert_eq!(
            check_fields(&json!({"stream": true, "n": 2, "max_tokens": 10})).unwrap(),
            Shape {
                stream: true,
                n: 2,
                max_tokens: Some(10)
            }
        );
        assert_eq!(
            check_fields(&json!({"stream": null, "max_tokens": 5, "max_completion_tokens": 9}))
                .unwrap()
                .max_tokens,
            Some(9)
        );
        for bad in [
            json!({"stream": "true"}),
            json!({"stream": 1}),
            json!({"n": 0}),
            json!({"n": -1}),
            json!({"n": 1.5}),
            json!({"n": "2"}),
            json!({"n": 129}),
            json!({"max_tokens": 0}),
            json!({"max_tokens": -5}),
            json!({"max_tokens": 2.0}),
            json!({"max_tokens": 1e12}),
            json!({"max_tokens": 1000001}),
            json!({"max_completion_tokens": "10"}),
        ] {
            assert!(check_fields(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_urls() {
        for ok in [
            "data:image/png;base64,AAAA",
            "DATA:image/png;base64,AAAA",
            "https://example.com/cat.png",
            "https://93.184.215.14/x",
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/x",
        ] {
            assert!(check_media_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/cat.png",
            "https://127.0.0.1/",
            "https://0x7f.1/",
            "https://2130706433/",
            "https://10.1.2.3/",
            "https://172.20.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:c0a8:0101::1]/",
            "https://localhost/",
            "https://foo.localhost/",
            "https://printer.local/",
            "https://nas.lan/",
            "https://intranet/",
            "file:///etc/passwd",
            "gs://bucket/object",
            "ftp://example.com/x",
        ] {
            assert!(check_media_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_found_in_every_part_shape() {
        let ask = |part: Value| json!({"messages": [{"role": "user", "content": [part]}]});
        for bad in [
            json!({"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/"}}),
            json!({"type": "image_url", "image_url": "https://localhost/x.png"}),
            json!({"type": "input_audio", "input_audio": {"data": "http://10.0.0.1/a.wav", "format": "wav"}}),
            json!({"type": "file", "file": {"file_data": "http://192.168.0.1/a.pdf"}}),
            json!({"type": "file", "file": {"file_id": "https://169.254.169.254/"}}),
            json!({"type": "file", "file": {"file_url": "http://[::1]/"}}),
            json!({"type": "video_url", "video_url": {"url": "http://127.0.0.1/"}}),
        ] {
            assert!(check_urls(&ask(bad.clone())).is_err(), "{bad}");
        }
        for ok in [
            json!({"type": "text", "text": "see http://127.0.0.1/ for details"}),
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "auto"}}),
            json!({"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}),
            json!({"type": "file", "file": {"file_id": "file-abc123", "filename": "a.pdf"}}),
        ] {
            assert!(check_urls(&ask(ok.clone())).is_ok(), "{ok}");
        }
        assert!(check_urls(&json!({"input": "http://127.0.0.1/"})).is_err());
        assert!(check_urls(&json!({"input": ["plain text", "https://example.com/a.png"]})).is_ok());
        assert!(check_urls(&json!({"input": "note: remember this"})).is_ok());
    }
}
