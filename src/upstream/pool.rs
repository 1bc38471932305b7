//! Which pool of the upstream key a request draws on. Anthropic keeps its limits per route
//! and, for messages, per model family (the Opus 4.x models share one limit, the Sonnet 4.x
//! another), so the shared state is kept per pool: a 429 on `count_tokens` never holds back
//! `/v1/messages`, and one family's overload never holds back another's.

use crate::request::route::Route;

/// The pool of a request: `count_tokens`, `models`, or `messages:<family>`.
#[must_use]
pub fn pool_of(route: &Route, model: Option<&str>) -> String {
    match route {
        Route::Messages => format!("messages:{}", family(model.unwrap_or(""))),
        Route::CountTokens => "count_tokens".to_string(),
        _ => "models".to_string(),
    }
}

/// A model's family: the id without its date (`-20250929`) and minor version, e.g.
/// `claude-sonnet-4-5-20250929` → `claude-sonnet-4`, `claude-3-5-haiku-20241022` →
/// `claude-3-haiku`. Ids of another shape are their own family.
#[must_use]
pub fn family(model: &str) -> String {
    let mut parts: Vec<&str> = model.split('-').collect();
    if parts
        .last()
        .is_some_and(|p| p.len() == 8 && p.bytes().all(|b| b.is_ascii_digit()))
    {
        parts.pop();
    }
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let alpha = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    match parts.as_slice() {
        // claude-<name>-<major>-<minor>
        ["claude", name, major, minor] if alpha(name) && numeric(major) && numeric(minor) => {
            format!("claude-{name}-{major}")
        }
        // claude-<major>-<minor>-<name>
        ["claude", major, minor, name] if numeric(major) && numeric(minor) && alpha(name) => {
            format!("claude-{major}-{name}")
        }
        // Joined by hand: `join` is a kilobyte of module for this and two error messages.
        _ => {
            let mut joined = String::with_capacity(model.len());
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    joined.push('-');
                }
                joined.push_str(part);
            }
            joined
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_pool_the_minor_versions_and_dates() {
        for (model, family_of) in [
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4"),
            ("claude-sonnet-4-6", "claude-sonnet-4"),
            ("claude-sonnet-4-20250514", "claude-sonnet-4"),
            ("claude-opus-4-1", "claude-opus-4"),
            ("claude-opus-4-7", "claude-opus-4"),
            ("claude-haiku-4-5", "claude-haiku-4"),
            ("claude-sonnet-5", "claude-sonnet-5"),
            ("claude-3-5-haiku-20241022", "claude-3-haiku"),
            ("claude-3-7-sonnet-latest", "claude-3-7-sonnet-latest"),
            ("", ""),
            ("--", "--"),
        ] {
            assert_eq!(family(model), family_of, "{model}");
        }
    }

    #[test]
    fn routes_are_pools_of_their_own() {
        let messages = pool_of(&Route::Messages, Some("claude-opus-4-7"));
        assert_eq!(messages, "messages:claude-opus-4");
        assert_eq!(
            pool_of(&Route::Messages, Some("claude-opus-4-1-20250805")),
            messages
        );
        assert_ne!(
            pool_of(&Route::Messages, Some("claude-sonnet-4-6")),
            messages
        );
        assert_eq!(
            pool_of(&Route::CountTokens, Some("claude-opus-4-7")),
            "count_tokens"
        );
        assert_eq!(pool_of(&Route::Models, None), "models");
    }
}
