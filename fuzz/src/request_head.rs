//! The rest of what a request's head brings: `route::route` (method and path),
//! `RetryPolicy::effective_budget_ms` (`x-proxy-budget-ms`) and the header filters.
//!
//! Input: `method \0 path \0 budget header \0 header name`.
//!
//! Holds for every input:
//! - a routed path is one of the fixed routes; a model id never climbs (`/`, `.`, `%`, `\`);
//!   only `OPTIONS` is a preflight, and a wrong method is a 405 naming the allowed one;
//! - the client's budget header never lengthens the budget;
//! - credentials and `x-proxy-*` never go upstream, in any case of the name;
//! - only allow-listed headers come back downstream: a fixed set and `anthropic-*`, never
//!   the upstream key's `anthropic-ratelimit-*` / `anthropic-priority-*` or the
//!   organization's id;
//! - a beta check (the last field as an `anthropic-beta` header against a fixed list) refuses
//!   exactly when a listed value is not on the list, and quotes only well-formed names.

use breakwater::request::headers::{
    check_betas, forward_downstream, forward_upstream, is_quotable_beta,
};
use breakwater::request::route::{route, Route};
use breakwater::retry::RetryPolicy;

use crate::{split_at_byte, text};

pub fn check(data: &[u8]) {
    let (method, rest) = split_at_byte(data, 0);
    let (path, rest) = split_at_byte(rest.unwrap_or_default(), 0);
    let (budget, rest) = split_at_byte(rest.unwrap_or_default(), 0);
    let header = rest.unwrap_or_default();
    let (method, path, budget, header) = (text(method), text(path), text(budget), text(header));

    match route(&method, &path) {
        Ok(Route::Preflight) => assert!(method.eq_ignore_ascii_case("OPTIONS")),
        Ok(Route::Model(id)) => {
            assert_eq!(path, format!("/v1/models/{id}"));
            assert!(!id.is_empty());
            assert!(
                !id.contains(['/', '\\', '%', '?', '#']) && !id.starts_with('.'),
                "model id {id:?}"
            );
            assert!(method == "GET" || method == "HEAD");
        }
        Ok(r) => {
            // A proxied route goes to exactly the path the client asked for, never another.
            let expected = match &r {
                Route::Health => "/healthz".to_string(),
                Route::Status => "/proxy/status".to_string(),
                other => other
                    .upstream_path()
                    .expect("a proxied route has an upstream path"),
            };
            assert_eq!(path, expected);
            if let Route::File(id)
            | Route::FileContent(id)
            | Route::Batch(id)
            | Route::BatchCancel(id)
            | Route::BatchResults(id) = &r
            {
                assert!(
                    !id.is_empty()
                        && id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')),
                    "object id {id:?}"
                );
            }
        }
        Err(e) => {
            assert!(
                matches!(e.status(), 404 | 405),
                "route error {}",
                e.status()
            );
            if e.status() == 405 {
                assert!(!method.eq_ignore_ascii_case("OPTIONS"));
            }
        }
    }

    let policy = RetryPolicy::default();
    let budget_ms = policy.effective_budget_ms(Some(&budget));
    assert!(
        budget_ms <= policy.budget_ms,
        "the client lengthened its budget"
    );
    if let Ok(n) = budget.trim().parse::<u64>() {
        if budget.trim().bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(budget_ms, n.min(policy.budget_ms));
        }
    }

    let lower = header.to_ascii_lowercase();
    let secret_bearing = ["x-api-key", "authorization", "cookie"].contains(&lower.as_str())
        || lower.starts_with("x-proxy-");
    if secret_bearing {
        assert!(!forward_upstream(&header), "{header:?} would go upstream");
    }
    assert_eq!(
        forward_upstream(&header),
        forward_upstream(&lower),
        "case matters for {header:?}"
    );
    if lower.starts_with("anthropic-ratelimit-")
        || lower.starts_with("anthropic-priority-")
        || lower == "anthropic-organization-id"
    {
        assert!(
            !forward_downstream(&header),
            "{header:?} would reach the client"
        );
    }
    if forward_downstream(&header) {
        let allowed = [
            "content-type",
            "request-id",
            "retry-after",
            "retry-after-ms",
            "x-should-retry",
            "cache-control",
        ];
        assert!(
            allowed.contains(&lower.as_str()) || lower.starts_with("anthropic-"),
            "{header:?} is not on the allow-list"
        );
    }
    assert_eq!(
        forward_downstream(&header),
        forward_downstream(&lower),
        "case matters downstream for {header:?}"
    );

    let list = [
        "prompt-caching-2024-07-31".to_string(),
        "token-counting-2024-11-01".to_string(),
    ];
    let refused = header
        .split(',')
        .map(str::trim)
        .find(|b| !b.is_empty() && !list.iter().any(|a| a == b));
    assert_eq!(check_betas(None, Some(&header)), Ok(()));
    match (check_betas(Some(&list), Some(&header)), refused) {
        (Ok(()), None) => {}
        (Err(e), Some(beta)) => {
            assert_eq!(e.status(), 400);
            let message = e.message();
            if is_quotable_beta(beta) {
                assert_eq!(
                    message,
                    format!("anthropic-beta: \"{beta}\" is not enabled for this key")
                );
            } else {
                assert_eq!(
                    message,
                    "anthropic-beta: a value is not enabled for this key"
                );
            }
        }
        (answer, refused) => {
            panic!("beta check {answer:?} for {header:?}, expected refusal of {refused:?}")
        }
    }
}
