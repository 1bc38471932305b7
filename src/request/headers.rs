//! Which headers cross the proxy, in each direction.
//!
//! Upstream: everything the client sends that the API understands (`anthropic-version`,
//! `anthropic-beta`, content type, SDK telemetry) goes through unchanged; the caller's
//! credential, hop-by-hop headers, cookies and the edge's own headers never do.
//! Downstream: an allow-list. The upstream's answer comes back with what clients and the SDKs
//! read (`content-type`, `request-id`, the retry hints, `cache-control`) and the API's own
//! `anthropic-*` headers, minus those that describe the upstream key and its organization
//! (`anthropic-ratelimit-*`, `anthropic-priority-*`, `anthropic-organization-id`). Anything
//! else (cookies, `server`, `via`, the upstream's CDN headers, whatever it adds tomorrow)
//! stays behind; framing headers are the runtime's to set.

use crate::error::ProxyError;

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

/// Upstream response headers passed back to the client (lowercase).
const RESPONSE_ALLOWED: &[&str] = &[
    "content-type",
    "request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "cache-control",
];

/// The API's own headers are passed back, except these prefixes and names: they describe the
/// upstream key's limits and its organization, which the caller does not own.
const RESPONSE_ANTHROPIC_PREFIX: &str = "anthropic-";
const RESPONSE_ANTHROPIC_DROPPED_PREFIXES: &[&str] =
    &["anthropic-ratelimit-", "anthropic-priority-"];
const RESPONSE_ANTHROPIC_DROPPED: &[&str] = &["anthropic-organization-id"];

/// Whether an upstream response header is passed back to the client.
pub fn forward_downstream(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if RESPONSE_ALLOWED.contains(&name.as_str()) {
        return true;
    }
    name.starts_with(RESPONSE_ANTHROPIC_PREFIX)
        && !RESPONSE_ANTHROPIC_DROPPED.contains(&name.as_str())
        && !RESPONSE_ANTHROPIC_DROPPED_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
}

/// Headers every answer for an allowed browser origin exposes to page code.
pub const EXPOSED_HEADERS: &str = "Retry-After, retry-after-ms, RateLimit, RateLimit-Policy, \
    request-id, x-proxy-attempts, x-proxy-model, x-should-retry, \
    anthropic-ratelimit-requests-limit, \
    anthropic-ratelimit-requests-remaining, anthropic-ratelimit-requests-reset, \
    anthropic-ratelimit-input-tokens-limit, anthropic-ratelimit-input-tokens-remaining, \
    anthropic-ratelimit-input-tokens-reset, anthropic-ratelimit-output-tokens-limit, \
    anthropic-ratelimit-output-tokens-remaining, anthropic-ratelimit-output-tokens-reset";

/// Longest beta name quoted back in an error; longer or odd ones are not echoed.
const MAX_QUOTED_BETA: usize = 128;

/// Checks a request's `anthropic-beta` header (a comma-separated list, as the SDKs send it;
/// repeated headers arrive joined the same way) against its tier's allow-list. `None` allows
/// every beta. A beta not on the list is a `400 invalid_request_error` naming it, so the
/// client can tell which one to drop.
pub fn check_betas(allowed: Option<&[String]>, header: Option<&str>) -> Result<(), ProxyError> {
    let (Some(allowed), Some(header)) = (allowed, header) else {
        return Ok(());
    };
    let refused = header
        .split(',')
        .map(str::trim)
        .filter(|beta| !beta.is_empty())
        .find(|beta| !allowed.iter().any(|a| a == beta));
    match refused {
        None => Ok(()),
        Some(beta) if is_quotable_beta(beta) => Err(ProxyError::InvalidRequest(format!(
            "anthropic-beta: \"{beta}\" is not enabled for this key"
        ))),
        Some(_) => Err(ProxyError::InvalidRequest(
            "anthropic-beta: a value is not enabled for this key".to_string(),
        )),
    }
}

/// Whether a beta name looks like one (`prompt-caching-2024-07-31`), and so may be quoted.
#[must_use]
pub fn is_quotable_beta(beta: &str) -> bool {
    !beta.is_empty()
        && beta.len() <= MAX_QUOTED_BETA
        && beta
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn betas_outside_the_tier_list_are_refused_by_name() {
        let list = vec![
            "prompt-caching-2024-07-31".to_string(),
            "token-counting-2024-11-01".to_string(),
        ];
        let allowed = Some(list.as_slice());
        assert_eq!(check_betas(None, Some("files-api-2025-04-14")), Ok(()));
        assert_eq!(check_betas(allowed, None), Ok(()));
        assert_eq!(check_betas(allowed, Some("")), Ok(()));
        assert_eq!(
            check_betas(
                allowed,
                Some(" prompt-caching-2024-07-31 ,token-counting-2024-11-01,")
            ),
            Ok(())
        );
        let refused = check_betas(
            allowed,
            Some("prompt-caching-2024-07-31, files-api-2025-04-14"),
        )
        .unwrap_err();
        assert_eq!(refused.status(), 400);
        assert_eq!(refused.error_type(), "invalid_request_error");
        assert_eq!(
            refused.message(),
            "anthropic-beta: \"files-api-2025-04-14\" is not enabled for this key"
        );
        // Only exact names: no prefixes, no case folding.
        assert!(check_betas(allowed, Some("prompt-caching")).is_err());
        assert!(check_betas(allowed, Some("PROMPT-CACHING-2024-07-31")).is_err());
        // An empty list allows none; odd values are refused without being echoed.
        assert!(check_betas(Some(&[]), Some("prompt-caching-2024-07-31")).is_err());
        let odd = check_betas(allowed, Some("<script>")).unwrap_err();
        assert_eq!(
            odd.message(),
            "anthropic-beta: a value is not enabled for this key"
        );
        let long = "a".repeat(129);
        assert!(!check_betas(allowed, Some(&long))
            .unwrap_err()
            .message()
            .contains(&long));
    }

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
            "x-proxy-fallback",
        ] {
            assert!(!forward_upstream(name), "{name}");
        }
    }

    #[test]
    fn downstream_keeps_request_id_and_drops_the_upstream_keys_limits() {
        for name in [
            "request-id",
            "Request-Id",
            "content-type",
            "retry-after",
            "retry-after-ms",
            "x-should-retry",
            "cache-control",
            "anthropic-beta-something",
        ] {
            assert!(forward_downstream(name), "{name}");
        }
        for name in [
            "anthropic-ratelimit-tokens-remaining",
            "Anthropic-RateLimit-Requests-Limit",
            "anthropic-priority-input-tokens-limit",
            "content-encoding",
            "content-length",
            "transfer-encoding",
            "connection",
            "Set-Cookie",
            "server",
            "via",
            "alt-svc",
            "cf-ray",
            "access-control-allow-origin",
        ] {
            assert!(!forward_downstream(name), "{name}");
        }
    }

    #[test]
    fn regression_the_organization_id_reached_callers() {
        // The deny list let through anything it did not name, the upstream organization's id
        // and headers the upstream may add in the future alike.
        for name in [
            "anthropic-organization-id",
            "Anthropic-Organization-Id",
            "x-envoy-upstream-service-time",
            "x-internal-debug",
            "strict-transport-security",
            "x-robots-tag",
        ] {
            assert!(!forward_downstream(name), "{name}");
        }
    }
}
