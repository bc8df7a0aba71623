//! The web UI (`ui/`, a Svelte single-page app), embedded in the binary by `build.rs`.
//!
//! Every GET that no API route takes lands here: a file of the build if there is one, else
//! `index.html` so the app's own router can show the page (a deep link or a reload). Paths under
//! `/api/` and `/metrics` never get the app: they stay JSON 404s. Hashed assets (`/assets/…`,
//! names change with their content) are cached for a year; `index.html` is revalidated every
//! time (by ETag) so a new build is picked up at once. The CSP allows only this origin: the app
//! has no inline scripts or styles.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

mod files {
    include!(concat!(env!("OUT_DIR"), "/ui_files.rs"));
}

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// Shown when the binary was built before `ui/dist` existed.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>taos</title></head><body>\
<h1>taos: the web UI is not built</h1><p>This taos-host binary was compiled without the web UI. \
Build it and then the host:</p><pre>cd ui &amp;&amp; npm ci &amp;&amp; npm run build\n\
cargo build -p taos-host</pre><p><code>scripts/run.sh</code> does both. The API works without \
it: see <code>/api/health</code>.</p></body></html>";

struct Asset {
    body: &'static [u8],
    etag: HeaderValue,
    content_type: &'static str,
}

fn assets() -> &'static HashMap<&'static str, Asset> {
    static ASSETS: OnceLock<HashMap<&'static str, Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        files::FILES
            .iter()
            .map(|(path, body)| {
                let digest = Sha256::digest(body);
                let tag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                let etag = HeaderValue::from_str(&format!("\"{tag}\""))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
                let asset = Asset {
                    body,
                    etag,
                    content_type: content_type(path),
                };
                (*path, asset)
            })
            .collect()
    })
}

/// Whether this binary carries a UI build.
pub fn built() -> bool {
    assets().contains_key("index.html")
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Paths that belong to the API: never answered with the app.
fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/") || path == "/metrics"
}

/// The public listener's fallback: the UI for GET/HEAD outside the API, JSON 404 otherwise.
pub async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if is_api(path) || (method != Method::GET && method != Method::HEAD) {
        return ApiError::not_found("no such route").into_response();
    }
    let rel = path.trim_start_matches('/');
    let (name, asset) = match assets().get_key_value(rel) {
        Some((name, asset)) if !rel.is_empty() => (*name, asset),
        // A missing hashed asset is a 404, not the app: a stale page must not get HTML for JS.
        _ if rel.starts_with("assets/") => {
            return ApiError::not_found("no such file").into_response()
        }
        _ => match assets().get_key_value("index.html") {
            Some((name, asset)) => (*name, asset),
            None => return not_built(),
        },
    };
    let cache = if name.starts_with("assets/") {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tag| tag.as_bytes() == asset.etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(asset.body))
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::ETAG, asset.etag.clone());
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

fn not_built() -> Response {
    let mut response = Response::new(Body::from(NOT_BUILT));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_never_get_the_app() {
        assert!(is_api("/api/nope"));
        assert!(is_api("/api"));
        assert!(is_api("/metrics"));
        assert!(!is_api("/apis"));
        assert!(!is_api("/chat/abc"));
        assert!(!is_api("/"));
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(
            content_type("assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/x.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }

    #[cfg(ui_built)]
    #[test]
    fn the_build_is_embedded() {
        assert!(built());
        assert!(assets().keys().any(|k| k.starts_with("assets/")));
    }
}
