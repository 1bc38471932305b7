//! Browsers: which origin is granted, and the CORS headers of answers and preflights.
//!
//! An origin in `ALLOWED_ORIGINS` is echoed back on every answer, errors included, with the
//! headers page code needs to read a retry-after exposed; any other origin is refused without
//! a grant. A request without `Origin` is a server or a CLI and is not subject to CORS.

use crate::config::AllowedOrigins;
use crate::request::headers::EXPOSED_HEADERS;

/// What CORS grants this request's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin` header: a server or a CLI, not subject to CORS.
    NotBrowser,
    /// An allowed origin, echoed back in `Access-Control-Allow-Origin`.
    Allowed(String),
    /// An origin that `ALLOWED_ORIGINS` does not list (or one unsafe to echo).
    Denied,
}

impl Cors {
    #[must_use]
    pub fn decide(allowed: &AllowedOrigins, origin: Option<&str>) -> Cors {
        match origin {
            None => Cors::NotBrowser,
            Some(origin) if allowed.allows(origin) && is_header_safe(origin) => {
                Cors::Allowed(origin.to_string())
            }
            Some(_) => Cors::Denied,
        }
    }

    /// Headers every answer carries. Every answer depends on the Origin it was asked with
    /// (granted, refused or not a browser), so a cache must never hand one origin's answer
    /// to another: `Vary: Origin` always (appended, the others set).
    #[must_use]
    pub fn answer_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("vary", "Origin".to_string())];
        if let Cors::Allowed(origin) = self {
            headers.push(("access-control-allow-origin", origin.clone()));
            headers.push(("access-control-expose-headers", EXPOSED_HEADERS.to_string()));
        }
        headers
    }

    /// The headers of a preflight's `204`: the requested method (else `GET, POST`) and
    /// headers granted to an allowed origin, when they are safe to echo; nothing otherwise.
    #[must_use]
    pub fn preflight_headers(
        &self,
        requested_method: Option<&str>,
        requested_headers: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        if !matches!(self, Cors::Allowed(_)) {
            return Vec::new();
        }
        let method = requested_method
            .filter(|m| is_token_list(m))
            .unwrap_or("GET, POST");
        let mut headers = vec![("access-control-allow-methods", method.to_string())];
        if let Some(requested) = requested_headers.filter(|h| is_token_list(h)) {
            headers.push(("access-control-allow-headers", requested.to_string()));
        }
        headers.push(("access-control-max-age", "86400".to_string()));
        headers.push((
            "vary",
            "Access-Control-Request-Method, Access-Control-Request-Headers".to_string(),
        ));
        headers
    }
}

/// A comma-separated list of HTTP tokens (method or header names): safe to echo back.
fn is_token_list(value: &str) -> bool {
    value.len() <= 2048
        && value.split(',').all(|t| {
            let t = t.trim();
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        })
}

/// Printable ASCII without control characters: safe to echo in a header.
fn is_header_safe(value: &str) -> bool {
    value.len() <= 1024 && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn allowed(origins: &str) -> AllowedOrigins {
        let config =
            Config::from_lookup(|name| (name == "ALLOWED_ORIGINS").then(|| origins.to_string()));
        config.unwrap().allowed_origins
    }

    #[test]
    fn origins_are_granted_refused_or_not_browsers() {
        let list = allowed("https://chat.example.com");
        assert_eq!(Cors::decide(&list, None), Cors::NotBrowser);
        assert_eq!(
            Cors::decide(&list, Some("https://chat.example.com")),
            Cors::Allowed("https://chat.example.com".to_string())
        );
        assert_eq!(
            Cors::decide(&list, Some("https://evil.example")),
            Cors::Denied
        );
        assert_eq!(
            Cors::decide(&allowed(""), Some("https://chat.example.com")),
            Cors::Denied
        );
        let any = allowed("*");
        assert_eq!(
            Cors::decide(&any, Some("null")),
            Cors::Allowed("null".to_string())
        );
        // Never echoed: control characters, non-ASCII, overlong.
        assert_eq!(Cors::decide(&any, Some("https://a\u{7f}b")), Cors::Denied);
        assert_eq!(Cors::decide(&any, Some("https://é.example")), Cors::Denied);
        assert_eq!(
            Cors::decide(&any, Some(&format!("https://{}", "a".repeat(1100)))),
            Cors::Denied
        );
    }

    #[test]
    fn answers_always_vary_and_grant_only_allowed_origins() {
        assert_eq!(
            Cors::NotBrowser.answer_headers(),
            [("vary", "Origin".to_string())]
        );
        assert_eq!(
            Cors::Denied.answer_headers(),
            [("vary", "Origin".to_string())]
        );
        let granted = Cors::Allowed("https://a.example".to_string()).answer_headers();
        assert!(granted.contains(&(
            "access-control-allow-origin",
            "https://a.example".to_string()
        )));
        let exposed = &granted
            .iter()
            .find(|(n, _)| *n == "access-control-expose-headers")
            .unwrap()
            .1;
        for name in [
            "Retry-After",
            "retry-after-ms",
            "RateLimit",
            "RateLimit-Policy",
            "request-id",
            "x-proxy-attempts",
            "x-should-retry",
        ] {
            assert!(exposed.contains(name), "{name}");
        }
    }

    #[test]
    fn preflights_echo_only_safe_token_lists() {
        let cors = Cors::Allowed("https://a.example".to_string());
        let h = cors.preflight_headers(Some("POST"), Some("content-type, x-api-key"));
        assert!(h.contains(&("access-control-allow-methods", "POST".to_string())));
        assert!(h.contains(&(
            "access-control-allow-headers",
            "content-type, x-api-key".to_string()
        )));
        assert!(h.contains(&("access-control-max-age", "86400".to_string())));
        let h = cors.preflight_headers(Some("PO ST"), Some("x\r\nset-cookie: a"));
        assert!(h.contains(&("access-control-allow-methods", "GET, POST".to_string())));
        assert!(!h.iter().any(|(n, _)| *n == "access-control-allow-headers"));
        assert!(Cors::Denied
            .preflight_headers(Some("POST"), None)
            .is_empty());
        assert!(Cors::NotBrowser
            .preflight_headers(Some("POST"), None)
            .is_empty());
    }
}
