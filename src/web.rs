//! The web chat's edge (DESIGN.md, "Web chat"): serves the built visitor
//! page from `web.assets_dir`, the page's settings, and single-use sign-up
//! tokens minted through Synapse's admin API, rate-limited in memory.
//!
//! What this never does: read a request body, set a cookie, log or keep a
//! client address, or learn a visitor's password or account (the page
//! registers with the homeserver itself). Every answer carries the strict
//! headers below, so the page loads nothing from anywhere else.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use tracing::{debug, info, warn};

use crate::config::WebConfig;
use crate::matrix::admin::Admin;

/// How long a sign-up token works: enough for a slow phone to register.
const TOKEN_VALID: Duration = Duration::from_secs(600);

/// Everything the listener needs, shared by its connections.
pub struct Web {
    assets: PathBuf,
    admin: Admin,
    /// The JSON the page reads at `/config.json`.
    page_config: String,
    csp: String,
    limiter: Mutex<Limiter>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Web { .. }")
    }
}

impl Web {
    /// The web chat of `config`, for the bot `bot_user`.
    pub fn new(config: &WebConfig, bot_user: &str, admin: Admin) -> Result<Web> {
        let hs = origin_of(&config.public_homeserver_url)
            .with_context(|| format!("key `web.public_homeserver_url`: `{}`", config.public_homeserver_url))?;
        let page_config = serde_json::json!({
            "homeserver": config.public_homeserver_url.trim_end_matches('/'),
            "bot": bot_user,
            "quickExit": config.quick_exit_url,
            "prefix": config.account_prefix,
        })
        .to_string();
        Ok(Web {
            assets: config.assets_dir.clone(),
            admin,
            page_config,
            csp: csp(&hs),
            limiter: Mutex::new(Limiter::new(config.signups_per_minute)),
        })
    }

    /// Says at start whether the page has been built, with the fix.
    pub fn check_assets(&self) {
        if !self.assets.join("index.html").is_file() {
            warn!(
                dir = %self.assets.display(),
                "the web chat's page is not built: run `npm ci && npm run build` in web/ (see README)"
            );
        }
    }

    async fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        match (method, path) {
            (&Method::GET, "/config.json") => {
                self.respond(StatusCode::OK, "application/json", self.page_config.clone())
            }
            (&Method::POST, "/signup") => self.signup().await,
            (&Method::GET | &Method::HEAD, _) => self.file(path).await,
            _ => self.respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "not allowed\n"),
        }
    }

    async fn signup(&self) -> Response<Full<Bytes>> {
        let now = crate::clock::unix_now();
        let allowed = self.limiter.lock().is_ok_and(|mut l| l.allow(now));
        if !allowed {
            info!("web chat sign-up refused: over web.signups_per_minute");
            return self.respond(StatusCode::TOO_MANY_REQUESTS, "application/json", r#"{"error":"busy"}"#);
        }
        match self.admin.registration_token(TOKEN_VALID, now.saturating_mul(1000)).await {
            Ok(token) => {
                debug!("web chat sign-up token handed out");
                self.respond(StatusCode::OK, "application/json", serde_json::json!({ "token": token }).to_string())
            }
            Err(e) => {
                warn!(error = %crate::logging::scrub_err(&format!("{e:#}")), "web chat: minting a sign-up token failed");
                self.respond(StatusCode::SERVICE_UNAVAILABLE, "application/json", r#"{"error":"unavailable"}"#)
            }
        }
    }

    async fn file(&self, path: &str) -> Response<Full<Bytes>> {
        let Some(rel) = asset_path(path) else {
            return self.respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n");
        };
        let file = self.assets.join(&rel);
        match tokio::fs::read(&file).await {
            Ok(bytes) => self.respond(StatusCode::OK, content_type(&rel), bytes),
            Err(_) => self.respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n"),
        }
    }

    fn respond(&self, status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(body.into()));
        *r.status_mut() = status;
        let h = r.headers_mut();
        let mut put = |k: &'static str, v: &str| {
            if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
                h.insert(k, v);
            }
        };
        put("content-type", ctype);
        put("content-security-policy", &self.csp);
        put("referrer-policy", "no-referrer");
        put("x-content-type-options", "nosniff");
        put("x-frame-options", "DENY");
        put("cross-origin-opener-policy", "same-origin");
        put("cross-origin-resource-policy", "same-origin");
        put("permissions-policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()");
        // Nothing of the page in the browser's cache, and no back-forward
        // cache copy of a chat.
        put("cache-control", "no-store");
        r
    }
}

/// The Content-Security-Policy: the page's own files, its WebAssembly, and
/// requests to itself and the homeserver only.
fn csp(homeserver_origin: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self'; \
         connect-src 'self' {homeserver_origin}; object-src 'none'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// `scheme://host[:port]` of an http(s) URL, or `None`.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    let ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    ok.then(|| format!("{scheme}://{host}"))
}

/// The file under the assets directory a request path names, if it is a
/// plain one (no `..`, no hidden files, no odd characters).
fn asset_path(path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let plain = rel.split('/').all(|seg| {
        !seg.is_empty()
            && !seg.starts_with('.')
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    plain.then(|| PathBuf::from(rel))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// At most `per_minute` sign-ups in any calendar minute, for all visitors
/// together: nothing is known about who asks, on purpose.
#[derive(Debug)]
struct Limiter {
    per_minute: u32,
    minute: i64,
    used: u32,
}

impl Limiter {
    fn new(per_minute: u32) -> Limiter {
        Limiter { per_minute, minute: i64::MIN, used: 0 }
    }

    fn allow(&mut self, now: i64) -> bool {
        let minute = now.div_euclid(60);
        if minute != self.minute {
            self.minute = minute;
            self.used = 0;
        }
        if self.used >= self.per_minute {
            return false;
        }
        self.used += 1;
        true
    }
}

/// Binds the listener now, so a bad or busy address stops the start.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener> {
    let addr: SocketAddr = listen.parse().with_context(|| format!("key `web.listen`: `{listen}` is not an address"))?;
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("key `web.listen`: cannot listen on {addr}"))
}

/// Serves the page until `shutdown` resolves.
pub async fn serve(listener: tokio::net::TcpListener, web: Arc<Web>, shutdown: impl Future<Output = ()>) {
    if let Ok(a) = listener.local_addr() {
        info!(address = %format!("http://{a}/"), "web chat page served");
    }
    web.check_assets();
    let answer = move |method: Method, path: String| {
        let web = web.clone();
        async move { web.answer(&method, &path).await }
    };
    crate::http::serve(listener, "web", answer, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_ups_are_capped_per_minute() {
        let mut l = Limiter::new(2);
        assert!(l.allow(120));
        assert!(l.allow(130));
        assert!(!l.allow(179));
        assert!(l.allow(180), "a new minute starts afresh");
        assert!(l.allow(181));
        assert!(!l.allow(182));
    }

    #[test]
    fn only_plain_files_are_served() {
        assert_eq!(asset_path("/"), Some(PathBuf::from("index.html")));
        assert_eq!(asset_path("/app.js"), Some(PathBuf::from("app.js")));
        assert_eq!(asset_path("/pkg/x_bg.wasm"), Some(PathBuf::from("pkg/x_bg.wasm")));
        for bad in ["/../etc/passwd", "/pkg/../../x", "/.env", "/a//b", "/a%2e%2e/b", "/a\\b"] {
            assert_eq!(asset_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn origins_and_the_policy() {
        assert_eq!(origin_of("https://matrix.example.org/").as_deref(), Some("https://matrix.example.org"));
        assert_eq!(origin_of("http://127.0.0.1:8008").as_deref(), Some("http://127.0.0.1:8008"));
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("https://a b"), None);
        let p = csp("https://hs.example");
        assert!(p.starts_with("default-src 'self';"));
        assert!(p.contains("connect-src 'self' https://hs.example;"));
        assert!(p.contains("'wasm-unsafe-eval'"));
        assert!(!p.contains("'unsafe-eval'") && !p.contains("'unsafe-inline'"));
    }
}
