//! Which route a request is for, decided from its method and path alone.
//!
//! The proxy forwards a fixed set of Anthropic routes and nothing else: it must never become
//! an open proxy to arbitrary upstream paths. Ids taken from a path (a model, a file, a batch)
//! are checked against a safe charset, so no encoded slash or dot segment reaches the upstream.

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
    /// `POST /v1/chat/completions`: the upstream's OpenAI-compatible endpoint.
    ChatCompletions,
    /// `POST /v1/files`: a multipart upload, streamed through.
    FileUpload,
    /// `GET /v1/files`
    Files,
    /// `GET` or `DELETE /v1/files/{id}`
    File(String),
    /// `GET /v1/files/{id}/content`: the file's bytes, streamed.
    FileContent(String),
    /// `POST /v1/messages/batches`: a batch created; its body streamed through.
    BatchCreate,
    /// `GET /v1/messages/batches`
    Batches,
    /// `GET` or `DELETE /v1/messages/batches/{id}`
    Batch(String),
    /// `POST /v1/messages/batches/{id}/cancel`
    BatchCancel(String),
    /// `GET /v1/messages/batches/{id}/results`: JSONL, streamed.
    BatchResults(String),
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
        matches!(
            self,
            Route::Messages | Route::CountTokens | Route::ChatCompletions
        )
    }

    /// Routes that generate a message now: admitted in every dimension, paced in the model's
    /// pool, waited for like a message, settled on the answer's usage.
    #[must_use]
    pub fn generates(&self) -> bool {
        matches!(self, Route::Messages | Route::ChatCompletions)
    }

    /// The route whose pool of the upstream key a request draws on: a chat completion is a
    /// message to the upstream, and shares its model's limits.
    #[must_use]
    pub fn paced_as(&self) -> &Route {
        match self {
            Route::ChatCompletions => &Route::Messages,
            other => other,
        }
    }

    /// Whose error envelope the proxy's own errors on this route wear: the `openai` SDKs parse
    /// `{"error": {"message", "type", "param", "code"}}` on the chat completions route.
    #[must_use]
    pub fn speaks_openai(&self) -> bool {
        matches!(self, Route::ChatCompletions)
    }

    /// Routes whose body is streamed through as it arrives, never held: an upload may be far
    /// larger than a message (files up to the platform's request limit, batches up to 256 MB).
    /// Such a request is sent once: its body cannot be sent again.
    #[must_use]
    pub fn streams_body(&self) -> bool {
        matches!(self, Route::FileUpload | Route::BatchCreate)
    }

    /// The Message Batches answers whose `results_url` is rewritten to point at the proxy.
    #[must_use]
    pub fn carries_results_url(&self) -> bool {
        matches!(
            self,
            Route::BatchCreate | Route::Batches | Route::Batch(_) | Route::BatchCancel(_)
        )
    }

    /// How a request on this route is admitted against the caller's limits, given its tier's
    /// limits: a message reserves in every dimension (and settles afterwards); a token count
    /// or a model listing is one request against `rpm` and `rpd` (no tokens, no concurrency slot,
    /// nothing to settle: they are cheap and short, but one caller must not be able to flood
    /// them). `Metering::None` when nothing would be charged, so the caller's object is not
    /// asked at all.
    #[must_use]
    pub fn metering(&self, limits: &TierLimits) -> Metering {
        match self {
            Route::Messages | Route::ChatCompletions if !limits.is_unlimited() => Metering::Full,
            Route::Messages | Route::ChatCompletions => Metering::None,
            Route::Health | Route::Preflight | Route::Status => Metering::None,
            // Token counts, model listings, files and batches (not real-time: a batch's
            // messages are the upstream's to schedule) are one request against `rpm`.
            _ if limits.rpm.is_some() || limits.quotas.rpd.is_some() => Metering::RequestOnly,
            _ => Metering::None,
        }
    }

    /// Routes whose answer comes from the upstream (and so carry `x-proxy-attempts`).
    pub fn is_proxied(&self) -> bool {
        !matches!(self, Route::Health | Route::Preflight | Route::Status)
    }

    /// The upstream path, without the query.
    pub fn upstream_path(&self) -> Option<String> {
        match self {
            Route::Messages => Some("/v1/messages".to_string()),
            Route::CountTokens => Some("/v1/messages/count_tokens".to_string()),
            Route::Models => Some("/v1/models".to_string()),
            Route::Model(id) => Some(format!("/v1/models/{id}")),
            Route::ChatCompletions => Some("/v1/chat/completions".to_string()),
            Route::FileUpload | Route::Files => Some("/v1/files".to_string()),
            Route::File(id) => Some(format!("/v1/files/{id}")),
            Route::FileContent(id) => Some(format!("/v1/files/{id}/content")),
            Route::BatchCreate | Route::Batches => Some("/v1/messages/batches".to_string()),
            Route::Batch(id) => Some(format!("/v1/messages/batches/{id}")),
            Route::BatchCancel(id) => Some(format!("/v1/messages/batches/{id}/cancel")),
            Route::BatchResults(id) => Some(format!("/v1/messages/batches/{id}/results")),
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
            Route::ChatCompletions => "chat_completions",
            Route::FileUpload => "file_upload",
            Route::Files => "files",
            Route::File(_) => "file",
            Route::FileContent(_) => "file_content",
            Route::BatchCreate => "batch_create",
            Route::Batches => "batches",
            Route::Batch(_) => "batch",
            Route::BatchCancel(_) => "batch_cancel",
            Route::BatchResults(_) => "batch_results",
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
    let is = |m: &str| method == m || (m == "GET" && method == "HEAD");
    let wrong = ProxyError::MethodNotAllowed;
    match path {
        "/v1/messages" => only(is("POST"), Route::Messages, "POST"),
        "/v1/messages/count_tokens" => only(is("POST"), Route::CountTokens, "POST"),
        "/v1/models" => only(is("GET"), Route::Models, "GET"),
        "/v1/chat/completions" => only(is("POST"), Route::ChatCompletions, "POST"),
        "/healthz" => only(is("GET"), Route::Health, "GET"),
        "/proxy/status" => only(is("GET"), Route::Status, "GET"),
        "/v1/files" if is("POST") => Ok(Route::FileUpload),
        "/v1/files" => only(is("GET"), Route::Files, "GET, POST"),
        "/v1/messages/batches" if is("POST") => Ok(Route::BatchCreate),
        "/v1/messages/batches" => only(is("GET"), Route::Batches, "GET, POST"),
        _ => {
            if let Some(id) = path.strip_prefix("/v1/models/") {
                if !is_model_id(id) {
                    return Err(ProxyError::NotFound);
                }
                return only(is("GET"), Route::Model(id.to_string()), "GET");
            }
            if let Some(rest) = path.strip_prefix("/v1/files/") {
                return match rest.split_once('/') {
                    None if is_object_id(rest) && (is("GET") || is("DELETE")) => {
                        Ok(Route::File(rest.to_string()))
                    }
                    None if is_object_id(rest) => Err(wrong("GET, DELETE")),
                    Some((id, "content")) if is_object_id(id) => {
                        only(is("GET"), Route::FileContent(id.to_string()), "GET")
                    }
                    _ => Err(ProxyError::NotFound),
                };
            }
            if let Some(rest) = path.strip_prefix("/v1/messages/batches/") {
                return match rest.split_once('/') {
                    None if is_object_id(rest) && (is("GET") || is("DELETE")) => {
                        Ok(Route::Batch(rest.to_string()))
                    }
                    None if is_object_id(rest) => Err(wrong("GET, DELETE")),
                    Some((id, "cancel")) if is_object_id(id) => {
                        only(is("POST"), Route::BatchCancel(id.to_string()), "POST")
                    }
                    Some((id, "results")) if is_object_id(id) => {
                        only(is("GET"), Route::BatchResults(id.to_string()), "GET")
                    }
                    _ => Err(ProxyError::NotFound),
                };
            }
            Err(ProxyError::NotFound)
        }
    }
}

/// A route served under one method, or a 405 naming it.
fn only(method_ok: bool, route: Route, allowed: &'static str) -> Result<Route, ProxyError> {
    if method_ok {
        Ok(route)
    } else {
        Err(ProxyError::MethodNotAllowed(allowed))
    }
}

/// The path of a serialized URL (as the runtime hands it over): from the first `/` after the
/// host to the query or the fragment. A serialized `http(s)` URL always has one; `/` otherwise.
pub fn path_of(url: &str) -> &str {
    // A byte search: a `str` pattern brings the standard library's substring searcher.
    let after_scheme = url
        .as_bytes()
        .windows(3)
        .position(|w| w == b"://")
        .map_or(0, |i| i.saturating_add(3));
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

/// File and batch ids are opaque tokens like `file_011CNha8iCJcU1wXNR6q4V8w` or
/// `msgbatch_013Zva2CMHLNnXjNJJKqJ2EF`: letters, digits, `_` and `-`, nothing that could
/// climb or split a path once it is pasted into the upstream URL.
fn is_object_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
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
            route("GET", "/v1/models/claude-sonnet-4-6").unwrap(),
            Route::Model("claude-sonnet-4-6".into())
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
            quotas: Default::default(),
        };
        let tokens_only = TierLimits { rpm: None, ..all };
        let unlimited = TierLimits::default();
        let model = Route::Model("claude-sonnet-4-6".into());
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

    #[test]
    fn files_batches_and_chat_completions_are_explicit_routes() {
        let file = "file_011CNha8iCJcU1wXNR6q4V8w";
        let batch = "msgbatch_013Zva2CMHLNnXjNJJKqJ2EF";
        let cases = [
            (
                "POST",
                "/v1/chat/completions".to_string(),
                Route::ChatCompletions,
            ),
            ("POST", "/v1/files".to_string(), Route::FileUpload),
            ("GET", "/v1/files".to_string(), Route::Files),
            ("GET", format!("/v1/files/{file}"), Route::File(file.into())),
            (
                "DELETE",
                format!("/v1/files/{file}"),
                Route::File(file.into()),
            ),
            (
                "GET",
                format!("/v1/files/{file}/content"),
                Route::FileContent(file.into()),
            ),
            (
                "POST",
                "/v1/messages/batches".to_string(),
                Route::BatchCreate,
            ),
            ("GET", "/v1/messages/batches".to_string(), Route::Batches),
            (
                "GET",
                format!("/v1/messages/batches/{batch}"),
                Route::Batch(batch.into()),
            ),
            (
                "DELETE",
                format!("/v1/messages/batches/{batch}"),
                Route::Batch(batch.into()),
            ),
            (
                "POST",
                format!("/v1/messages/batches/{batch}/cancel"),
                Route::BatchCancel(batch.into()),
            ),
            (
                "GET",
                format!("/v1/messages/batches/{batch}/results"),
                Route::BatchResults(batch.into()),
            ),
        ];
        for (method, path, expected) in cases {
            let routed = route(method, &path).unwrap();
            assert_eq!(routed, expected, "{method} {path}");
            assert!(routed.is_proxied());
            // The upstream path is the one the client asked for, never another.
            assert_eq!(routed.upstream_path().as_deref(), Some(path.as_str()));
        }
        assert_eq!(
            route("GET", "/v1/chat/completions").unwrap_err().status(),
            405
        );
        assert_eq!(route("PUT", "/v1/files").unwrap_err().status(), 405);
        assert_eq!(
            route("POST", &format!("/v1/files/{file}"))
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            route("DELETE", &format!("/v1/messages/batches/{batch}/results"))
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            route("DELETE", "/v1/messages/batches")
                .unwrap_err()
                .status(),
            405
        );
    }

    #[test]
    fn ids_cannot_reach_another_upstream_path() {
        for id in [
            "..", ".", "%2e%2e", "a%2Fb", "a%2fb", "a%5Cb", "a\\b", "a.b", "a b", "a%20b", "a?b",
            "a#b", "a;b", "a@b", "a:b", "", "é",
        ] {
            for method in ["GET", "DELETE", "POST"] {
                for path in [
                    format!("/v1/files/{id}"),
                    format!("/v1/files/{id}/content"),
                    format!("/v1/messages/batches/{id}"),
                    format!("/v1/messages/batches/{id}/cancel"),
                    format!("/v1/messages/batches/{id}/results"),
                ] {
                    assert_eq!(route(method, &path).unwrap_err().status(), 404, "{path}");
                }
            }
        }
        let long = "f".repeat(129);
        assert_eq!(
            route("GET", &format!("/v1/files/{long}"))
                .unwrap_err()
                .status(),
            404
        );
        for path in [
            "/v1/files/",
            "/v1/files/f/",
            "/v1/files/f/content/",
            "/v1/files/f/content/x",
            "/v1/files/f/../../messages",
            "/v1/files/f/metadata",
            "/v1/files//content",
            "/v1/messages/batches/",
            "/v1/messages/batches/b/",
            "/v1/messages/batches/b/results/x",
            "/v1/messages/batches/b/retry",
            "/v1/messages/batches/b/%2e%2e/%2e%2e/models",
            "/v1/chat/completions/",
            "/v1/chat",
            "/v1/completions",
            "/v1/embeddings",
        ] {
            assert_eq!(route("GET", path).unwrap_err().status(), 404, "{path}");
            assert_eq!(route("POST", path).unwrap_err().status(), 404, "{path}");
        }
    }

    #[test]
    fn files_and_batches_are_one_request_and_chat_completions_a_message() {
        use std::num::NonZeroU32;
        let all = TierLimits {
            rpm: NonZeroU32::new(5),
            input_tpm: NonZeroU32::new(1_000),
            output_tpm: NonZeroU32::new(1_000),
            concurrency: NonZeroU32::new(1),
            quotas: Default::default(),
        };
        assert_eq!(Route::ChatCompletions.metering(&all), Metering::Full);
        assert_eq!(Route::ChatCompletions.paced_as(), &Route::Messages);
        assert!(Route::ChatCompletions.generates() && Route::ChatCompletions.speaks_openai());
        for route in [
            Route::FileUpload,
            Route::Files,
            Route::File("f".into()),
            Route::FileContent("f".into()),
            Route::BatchCreate,
            Route::Batches,
            Route::Batch("b".into()),
            Route::BatchCancel("b".into()),
            Route::BatchResults("b".into()),
        ] {
            assert_eq!(route.metering(&all), Metering::RequestOnly, "{route:?}");
            assert!(!route.carries_body() && !route.generates(), "{route:?}");
            let streamed = matches!(route, Route::FileUpload | Route::BatchCreate);
            assert_eq!(route.streams_body(), streamed, "{route:?}");
            assert_eq!(route.paced_as(), &route);
        }
    }
}
