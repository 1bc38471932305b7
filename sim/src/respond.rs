//! Response building blocks shared by the Messages API and the control API:
//! the body type, the Anthropic error envelope, default error types by
//! status, and the clock/date helpers used in headers and logs.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

/// Every response body the simulator sends: a full buffer or a lazy stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::<Bytes>::new().boxed_unsync()
}

/// A response with the given status and body and no headers yet.
pub fn response(status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

/// A JSON response with `content-type: application/json`.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes_response(status, Bytes::from(bytes))
}

pub fn json_bytes_response(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let len = bytes.len();
    let mut resp = response(status, full(bytes));
    set_header(&mut resp, CONTENT_TYPE, "application/json");
    set_header(&mut resp, CONTENT_LENGTH, &len.to_string());
    resp
}

/// Inserts a header, silently skipping values that are not valid header text.
pub fn set_header<B>(resp: &mut Response<B>, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// The `type` Anthropic uses in the error envelope for a given HTTP status.
pub fn default_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        405 => "invalid_request_error",
        408 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// A plausible human message for a given HTTP status.
pub fn default_error_message(status: u16) -> &'static str {
    match status {
        400 => "Invalid request",
        401 => "invalid x-api-key",
        402 => "Your credit balance is too low to access the Anthropic API.",
        403 => "Your API key does not have permission to use the specified resource.",
        404 => "Not found",
        405 => "Method not allowed",
        408 => "Request timed out",
        409 => "Conflict",
        413 => "Request exceeds the maximum allowed number of bytes.",
        429 => "This request would exceed the rate limit for your organization. Please try again later.",
        500 => "Internal server error",
        502 => "Bad gateway",
        503 => "Service unavailable",
        504 => "Gateway timeout",
        529 => "Overloaded",
        _ => "Simulated error",
    }
}

/// The `error` object inside envelopes and `error` events.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub message: &'a str,
}

/// `{"type":"error","error":{...},"request_id":R}`, fields in the API's order.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorBody<'a>,
    request_id: &'a str,
}

/// `{"type":"error","error":{"type":T,"message":M},"request_id":R}` as bytes.
pub fn error_envelope(error_type: &str, message: &str, request_id: &str) -> Bytes {
    let envelope = Envelope {
        kind: "error",
        error: ErrorBody {
            kind: error_type,
            message,
        },
        request_id,
    };
    serde_json::to_vec(&envelope)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(b"{}"))
}

/// An error response with the Anthropic envelope.
pub fn error_response(
    status: u16,
    error_type: &str,
    message: &str,
    request_id: &str,
) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_bytes_response(code, error_envelope(error_type, message, request_id))
}

/// An error response with the default type and message for `status`.
pub fn default_error(status: u16, request_id: &str) -> Response<Body> {
    error_response(
        status,
        default_error_type(status),
        default_error_message(status),
        request_id,
    )
}

/// Milliseconds since the Unix epoch, with sub-millisecond precision.
pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Formats Unix seconds as RFC 3339 in UTC, e.g. `2025-09-29T00:00:00Z`.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// SplitMix64: a tiny, well-mixed deterministic hash used for seeded choices.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a over bytes, for turning text into a seed.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_759_104_000), "2025-09-29T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn error_types() {
        assert_eq!(default_error_type(529), "overloaded_error");
        assert_eq!(default_error_type(429), "rate_limit_error");
        assert_eq!(default_error_type(503), "api_error");
    }
}
