//! Which route a request is for, decided from its method and path alone.
//!
//! The proxy forwards a fixed set of Anthropic routes and nothing else: it must never become
//! an open proxy to arbitrary upstream paths.

use crate::config::TierLimits;
use crate::error::ProxyError;

/// What a request is charged against its caller's limits (see [`Route::metering`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metering {
    /// Not admitted: the route is not metered, or the tier limits nothing it would charge.
    None,
    /// One request against `rpm`, nothing reserved, nothing to settle.
    RequestOnly,
    /// A request, its input estimate, `max_tokens` and a concurrency slot; settled afterwards.
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
    /// `GET /v1/models`
    Models,
    /// `GET /v1/models/{id}`
    Model(String),
    /// `GET /healthz`
    Health,
    /// `OPTIONS` on any path: a CORS preflight, answered by the proxy itself.
    Preflight,
    /// `GET /proxy/status`: the operator's view, for whoever presents `ADMIN_KEY`.
    Status,
}

impl Route {
    /// Routes with a JSON body the proxy reads (and forwards byte for byte), and whose
    /// attempts answer to the upstream key's shared state.
    #[must_use]
    pub fn carries_body(&self) -> bool {
        matches!(self, Route::Messages | Route::CountTokens)
    }

    /// How a request on this route is admitted against the caller's limits, given its tier's
    /// limits: a message reserves in every dimension (and settles afterwards); a token count
    /// or a model listing is one request against `rpm` (no tokens, no concurrency slot,
    /// nothing to settle: they are cheap and short, but one caller must not be able to flood
    /// them). `Metering::None` when nothing would be charged, so the caller's object is not
    /// asked at all.
    #[must_use]
    pub fn metering(&self, limits: &TierLimits) -> Metering {
        match self {
            Route::Messages if !limits.is_unlimited() => Metering::Full,
            Route::CountTokens | Route::Models | Route::Model(_) if limits.rpm.is_some() => {
                Metering::RequestOnly
            }
            _ => Metering::None,
        }
    }

    /// Routes whose answer comes from the upstream (and so carry `x-proxy-attempts`).
    pub fn is_proxied(&self) -> bool {
        matches!(
            self,
            Route::Messages | Route::CountTokens | Route::Models | Route::Model(_)
        )
    }

    /// The upstream path, without the query.
    pub fn upstream_path(&self) -> Option<String> {
        match self {
            Route::Messages => Some("/v1/messages".to_string()),
            Route::CountTokens => Some("/v1/messages/count_tokens".to_string()),
            Route::Models => Some("/v1/models".to_string()),
            Route::Model(id) => Some(format!("/v1/models/{id}")),
            Route::Health | Route::Preflight | Route::Status => None,
        }
    }

    /// A name for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Messages => "messages",
            Route::CountTokens => "count_tokens",
            Route::Models => "models",
            Route::Model(_) => "model",
            Route::Health => "healthz",
            Route::Preflight => "preflight",
            Route::Status => "status",
        }
    }
}

/// Routes a request. Unknown paths are 404; known paths with the wrong method are 405.
pub fn route(method: &str, path: &str) -> Result<Route, ProxyError> {
    if method.eq_ignore_ascii_case("OPTIONS") {
        return Ok(Route::Preflight);
    }
    let (route, allowed) = match path {
        "/v1/messages" => (Route::Messages, "POST"),
        "/v1/messages/count_tokens" => (Route::CountTokens, "POST"),
        "/v1/models" => (Route::Models, "GET"),
        "/healthz" => (Route::Health, "GET"),
        "/proxy/status" => (Route::Status, "GET"),
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if is_model_id(id) => (Route::Model(id.to_string()), "GET"),
            _ => return Err(ProxyError::NotFound),
        },
    };
    let method_ok = method == allowed || (allowed == "GET" && method == "HEAD");
    if method_ok {
        Ok(route)
    } else {
        Err(ProxyError::MethodNotAllowed(allowed))
    }
}

/// The path of a serialized URL (as the runtime hands it over): from the first `/` after the
/// host to the query or the fragment. A serialized `http(s)` URL always has one; `/` otherwise.
pub fn path_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i.saturating_add(3));
    let rest = url.get(after_scheme..).unwrap_or_default();
    let Some(path) = rest.find('/').and_then(|i| rest.get(i..)) else {
        return "/";
    };
    path.split(['?', '#']).next().unwrap_or(path)
}

/// The query of a serialized URL (as the runtime hands it over), forwarded as is; the rest of
/// the URL is not parsed (a URL parser would be the largest thing in the bundle).
pub fn query_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once('?')?;
    Some(rest.split('#').next().unwrap_or(rest))
}

/// The upstream URL for a request: the route's upstream `path` on `upstream_url`, with the
/// client's query (such as the SDK's `?beta=true`) kept.
#[must_use]
pub fn upstream_url(upstream_url: &str, path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{upstream_url}{path}?{q}"),
        _ => format!("{upstream_url}{path}"),
    }
}

/// Model ids are short tokens like `claude-sonnet-4-5-20250929`; anything else (slashes,
/// dots that could climb paths, escapes) is not a model route.
fn is_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_keep_the_query() {
        let base = "https://api.anthropic.com";
        assert_eq!(
            upstream_url(base, "/v1/messages", None),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            upstream_url(base, "/v1/messages", Some("")),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            upstream_url(
                base,
                "/v1/messages",
                query_of("https://proxy/v1/messages?beta=true#x")
            ),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
    }

    #[test]
    fn contract_routes() {
        assert_eq!(route("POST", "/v1/messages").unwrap(), Route::Messages);
        assert_eq!(
            route("POST", "/v1/messages/count_tokens").unwrap(),
            Route::CountTokens
        );
        assert_eq!(route("GET", "/v1/models").unwrap(), Route::Models);
        assert_eq!(
            route("GET", "/v1/models/claude-sonnet-4-5").unwrap(),
            Route::Model("claude-sonnet-4-5".into())
        );
        assert_eq!(route("GET", "/healthz").unwrap(), Route::Health);
        assert_eq!(route("OPTIONS", "/anything").unwrap(), Route::Preflight);
        assert_eq!(route("GET", "/proxy/status").unwrap(), Route::Status);
        assert_eq!(route("POST", "/proxy/status").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/proxy/status/x").unwrap_err().status(), 404);
        assert!(!Route::Status.is_proxied() && !Route::Status.carries_body());
    }

    #[test]
    fn wrong_method_is_405_and_names_the_right_one() {
        let err = route("GET", "/v1/messages").unwrap_err();
        assert_eq!(err.status(), 405);
        assert_eq!(err, ProxyError::MethodNotAllowed("POST"));
        assert_eq!(route("POST", "/v1/models").unwrap_err().status(), 405);
        assert_eq!(route("DELETE", "/healthz").unwrap_err().status(), 405);
    }

    #[test]
    fn queries_are_kept_as_sent() {
        assert_eq!(
            query_of("https://p.example/v1/messages?beta=true"),
            Some("beta=true")
        );
        assert_eq!(
            query_of("https://p.example/v1/messages?a=1&b=%20#frag"),
            Some("a=1&b=%20")
        );
        assert_eq!(query_of("https://p.example/v1/messages"), None);
        assert_eq!(query_of("https://p.example/v1/messages?"), Some(""));
    }

    #[test]
    fn paths_are_read_from_the_serialized_url() {
        assert_eq!(path_of("https://p.example/v1/messages"), "/v1/messages");
        assert_eq!(
            path_of("http://127.0.0.1:8787/v1/messages?beta=true#x"),
            "/v1/messages"
        );
        assert_eq!(path_of("https://p.example/v1/models#top"), "/v1/models");
        assert_eq!(path_of("https://p.example/"), "/");
        assert_eq!(path_of("https://p.example"), "/");
        assert_eq!(path_of("https://p.example/a%2Fb/c"), "/a%2Fb/c");
        assert_eq!(path_of(""), "/");
    }

    #[test]
    fn count_tokens_and_models_count_against_rpm() {
        use std::num::NonZeroU32;
        let all = TierLimits {
            rpm: NonZeroU32::new(5),
            input_tpm: NonZeroU32::new(1_000),
            output_tpm: NonZeroU32::new(1_000),
            concurrency: NonZeroU32::new(1),
        };
        let tokens_only = TierLimits { rpm: None, ..all };
        let unlimited = TierLimits::default();
        let model = Route::Model("claude-sonnet-4-5".into());
        assert_eq!(Route::Messages.metering(&all), Metering::Full);
        assert_eq!(Route::Messages.metering(&tokens_only), Metering::Full);
        assert_eq!(Route::Messages.metering(&unlimited), Metering::None);
        for route in [Route::CountTokens, Route::Models, model] {
            assert_eq!(route.metering(&all), Metering::RequestOnly, "{route:?}");
            // Nothing to charge without an rpm limit: the object is not asked.
            assert_eq!(route.metering(&tokens_only), Metering::None, "{route:?}");
            assert_eq!(route.metering(&unlimited), Metering::None, "{route:?}");
        }
        assert_eq!(Route::Health.metering(&all), Metering::None);
        assert_eq!(Route::Preflight.metering(&all), Metering::None);
    }

    #[test]
    fn never_an_open_proxy() {
        for path in [
            "/",
            "/v1",
            "/v1/messages/",
            "/v1/complete",
            "/v1/messages/batches",
            "/v1/models/",
            "/v1/models/a/b",
            "/v1/models/..",
            "/v1/models/%2e%2e",
            "/v2/messages",
            "//v1/messages",
        ] {
            assert_eq!(route("POST", path).unwrap_err().status(), 404, "{path}");
            assert_eq!(route("GET", path).unwrap_err().status(), 404, "{path}");
        }
    }
}
