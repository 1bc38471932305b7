//! Which headers cross the proxy, in each direction.
//!
//! Upstream: everything the client sends that the API understands (`anthropic-version`,
//! `anthropic-beta`, content type, SDK telemetry) goes through unchanged; the caller's
//! credential, hop-by-hop headers, cookies and the edge's own headers never do.
//! Downstream: the upstream's answer comes back with its `request-id`, minus hop-by-hop and
//! encoding headers (the runtime re-frames the body) and minus the upstream key's own
//! `anthropic-ratelimit-*` figures, which describe a key the caller does not own.

/// Headers that never go upstream (lowercase). Credentials are replaced, hop-by-hop headers
/// belong to one connection, and the rest would tell the upstream about the caller's browser.
const REQUEST_DROPPED: &[&str] = &[
    "x-api-key",
    "authorization",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "cookie",
    "origin",
    "referer",
    "accept-encoding",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "cdn-loop",
];

/// Prefixes of headers that never go upstream: the edge's own, the browser's fetch metadata,
/// and the proxy's control headers.
const REQUEST_DROPPED_PREFIXES: &[&str] = &["cf-", "x-forwarded-", "sec-", "x-proxy-"];

/// Whether a client request header is forwarded upstream.
pub fn forward_upstream(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !REQUEST_DROPPED.contains(&name.as_str())
        && !REQUEST_DROPPED_PREFIXES.iter().any(|p| name.starts_with(p))
}

const RESPONSE_DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "trailer",
    "upgrade",
    "set-cookie",
    "alt-svc",
    "server",
    "via",
];

const RESPONSE_DROPPED_PREFIXES: &[&str] = &["anthropic-ratelimit-", "cf-", "access-control-"];

/// Whether an upstream response header is passed back to the client.
pub fn forward_downstream(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !RESPONSE_DROPPED.contains(&name.as_str())
        && !RESPONSE_DROPPED_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
}

/// Headers every answer for an allowed browser origin exposes to page code.
pub const EXPOSED_HEADERS: &str = "Retry-After, retry-after-ms, RateLimit, RateLimit-Policy, \
    request-id, x-proxy-attempts, x-should-retry, anthropic-ratelimit-requests-limit, \
    anthropic-ratelimit-requests-remaining, anthropic-ratelimit-requests-reset, \
    anthropic-ratelimit-input-tokens-limit, anthropic-ratelimit-input-tokens-remaining, \
    anthropic-ratelimit-input-tokens-reset, anthropic-ratelimit-output-tokens-limit, \
    anthropic-ratelimit-output-tokens-remaining, anthropic-ratelimit-output-tokens-reset";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_headers_reach_the_upstream() {
        for name in [
            "anthropic-version",
            "Anthropic-Beta",
            "content-type",
            "accept",
            "user-agent",
            "x-stainless-lang",
            "anthropic-dangerous-direct-browser-access",
        ] {
            assert!(forward_upstream(name), "{name}");
        }
    }

    #[test]
    fn credentials_and_hop_by_hop_never_do() {
        for name in [
            "x-api-key",
            "Authorization",
            "Host",
            "connection",
            "Transfer-Encoding",
            "cookie",
            "origin",
            "cf-connecting-ip",
            "x-forwarded-for",
            "sec-fetch-mode",
            "x-proxy-budget-ms",
        ] {
            assert!(!forward_upstream(name), "{name}");
        }
    }

    #[test]
    fn downstream_keeps_request_id_and_drops_the_upstream_keys_limits() {
        assert!(forward_downstream("request-id"));
        assert!(forward_downstream("content-type"));
        assert!(forward_downstream("retry-after"));
        assert!(!forward_downstream("anthropic-ratelimit-tokens-remaining"));
        assert!(!forward_downstream("content-encoding"));
        assert!(!forward_downstream("Set-Cookie"));
    }
}
