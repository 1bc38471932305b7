//! The Files API and Message Batches, kept in memory: uploads (multipart) listed, described,
//! downloaded and deleted; batches that end a short while after they are created, with JSONL
//! results of one simulated message per request. The ids are the API's shapes (`file_…`,
//! `msgbatch_…`), and `results_url` names this server's own origin, as the API names its own.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{json, Value};

/// How long a batch stays `in_progress` after it is created.
pub const BATCH_MS: f64 = 300.0;

/// A stored file.
pub struct File {
    pub meta: Value,
    pub bytes: Bytes,
}

/// A stored batch: its requests, when it was made, and a cancel if one came.
pub struct Batch {
    pub id: String,
    pub requests: Vec<(String, Value)>,
    pub created_ms: f64,
    pub canceled_ms: Option<f64>,
    pub origin: String,
}

#[derive(Default)]
pub struct Store {
    next: u64,
    pub files: BTreeMap<String, File>,
    pub batches: BTreeMap<String, Batch>,
}

fn rfc3339(ms: f64) -> String {
    // Seconds since the epoch are enough for a simulated timestamp's ordering; shown in the
    // API's format with a fixed date part derived from them.
    let secs = (ms / 1000.0) as u64;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One part of a `multipart/form-data` body: its name, filename, content type and bytes.
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

/// The parts of a multipart body with `boundary`.
pub fn multipart(body: &Bytes, boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = &body[..];
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let Some(start) = find(rest, delimiter.as_bytes()) else {
        return parts;
    };
    rest = &rest[start + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        let rest_after_crlf = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        let Some(head_end) = find(rest_after_crlf, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest_after_crlf[..head_end]).into_owned();
        let content = &rest_after_crlf[head_end + 4..];
        let end_marker = format!("\r\n{delimiter}");
        let Some(end) = find(content, end_marker.as_bytes()) else {
            break;
        };
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            bytes: Bytes::copy_from_slice(&content[..end]),
        };
        for line in head.split("\r\n") {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                part.name = param(line, "name").unwrap_or_default();
                part.filename = param(line, "filename");
            } else if lower.starts_with("content-type:") {
                part.content_type = line.split_once(':').map(|(_, v)| v.trim().to_string());
            }
        }
        parts.push(part);
        rest = &content[end + end_marker.len()..];
    }
    parts
}

fn param(line: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let mut search = line;
    while let Some(at) = search.find(&key) {
        let before = search[..at].chars().last();
        let after = &search[at + key.len()..];
        if matches!(before, Some(' ' | ';')) {
            return after.split('"').next().map(str::to_string);
        }
        search = after;
    }
    None
}

impl Store {
    fn id(&mut self, prefix: &str, seed: u64) -> String {
        self.next += 1;
        format!(
            "{prefix}_sim{:016x}",
            crate::respond::mix64(seed ^ self.next)
        )
    }

    pub fn add_file(&mut self, seed: u64, now_ms: f64, part: Part) -> Value {
        let id = self.id("file", seed);
        let meta = json!({
            "id": id,
            "type": "file",
            "filename": part.filename.unwrap_or_else(|| "upload".to_string()),
            "mime_type": part.content_type.unwrap_or_else(|| "application/octet-stream".to_string()),
            "size_bytes": part.bytes.len(),
            "created_at": rfc3339(now_ms),
            "downloadable": true,
        });
        self.files.insert(
            id,
            File {
                meta: meta.clone(),
                bytes: part.bytes,
            },
        );
        meta
    }

    pub fn list_files(&self) -> Value {
        let data: Vec<&Value> = self.files.values().map(|f| &f.meta).collect();
        json!({
            "data": data,
            "has_more": false,
            "first_id": data.first().and_then(|m| m.get("id")),
            "last_id": data.last().and_then(|m| m.get("id")),
        })
    }

    pub fn add_batch(
        &mut self,
        seed: u64,
        now_ms: f64,
        requests: Vec<(String, Value)>,
        origin: String,
    ) -> Value {
        let id = self.id("msgbatch", seed);
        let batch = Batch {
            id: id.clone(),
            requests,
            created_ms: now_ms,
            canceled_ms: None,
            origin,
        };
        let value = batch.object(now_ms);
        self.batches.insert(id, batch);
        value
    }

    pub fn list_batches(&self, now_ms: f64) -> Value {
        let data: Vec<Value> = self.batches.values().map(|b| b.object(now_ms)).collect();
        json!({
            "data": data,
            "has_more": false,
            "first_id": data.first().and_then(|m| m.get("id")).cloned(),
            "last_id": data.last().and_then(|m| m.get("id")).cloned(),
        })
    }
}

impl Batch {
    pub fn ended(&self, now_ms: f64) -> bool {
        now_ms >= self.created_ms + BATCH_MS
    }

    /// The `message_batch` object as it stands at `now_ms`.
    pub fn object(&self, now_ms: f64) -> Value {
        let ended = self.ended(now_ms);
        let n = self.requests.len();
        let status = match (ended, self.canceled_ms) {
            (true, _) => "ended",
            (false, Some(_)) => "canceling",
            (false, None) => "in_progress",
        };
        let counts = match (ended, self.canceled_ms) {
            (false, _) => {
                json!({"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
            }
            (true, None) => {
                json!({"processing": 0, "succeeded": n, "errored": 0, "canceled": 0, "expired": 0})
            }
            (true, Some(_)) => {
                json!({"processing": 0, "succeeded": 0, "errored": 0, "canceled": n, "expired": 0})
            }
        };
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": ended.then(|| rfc3339(self.created_ms + BATCH_MS)),
            "created_at": rfc3339(self.created_ms),
            "expires_at": rfc3339(self.created_ms + 86_400_000.0),
            "archived_at": null,
            "cancel_initiated_at": self.canceled_ms.map(rfc3339),
            "results_url": ended.then(|| format!("{}/v1/messages/batches/{}/results", self.origin, self.id)),
        })
    }

    /// The results, one JSON line per request, in the order they were sent.
    pub fn results(&self, seed: u64) -> Bytes {
        let mut out = Vec::new();
        for (k, (custom_id, params)) in self.requests.iter().enumerate() {
            let result = if self.canceled_ms.is_some() {
                json!({"type": "canceled"})
            } else {
                let model = params.get("model").cloned().unwrap_or(Value::Null);
                let max = params
                    .get("max_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(1);
                let tokens = crate::api::DEFAULT_TOKENS.min(max);
                let prompt = params
                    .get("messages")
                    .and_then(Value::as_array)
                    .map(|m| crate::text::last_user_text(m))
                    .unwrap_or_default();
                let words = crate::text::Words::new(seed, &prompt);
                let text: String = (0..tokens)
                    .map(|t| crate::text::delta_text(words.word(t), ""))
                    .collect();
                json!({"type": "succeeded", "message": {
                    "id": format!("msg_sim_{:016x}", crate::respond::mix64(seed ^ k as u64)),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": if tokens < crate::api::DEFAULT_TOKENS { "max_tokens" } else { "end_turn" },
                    "stop_sequence": null,
                    "usage": {"input_tokens": crate::tokens::text_tokens(&prompt).max(1), "output_tokens": tokens},
                }})
            };
            let line = json!({"custom_id": custom_id, "result": result});
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_parts_are_read() {
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\nworld\r\n--XyZ--\r\n",
        );
        let parts = multipart(&body, "XyZ");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "file");
        assert_eq!(parts[0].filename.as_deref(), Some("a.txt"));
        assert_eq!(parts[0].content_type.as_deref(), Some("text/plain"));
        assert_eq!(&parts[0].bytes[..], b"hello\r\nworld");
    }

    #[test]
    fn a_batch_ends_after_its_delay_with_a_result_per_request() {
        let mut store = Store::default();
        let requests = vec![
            (
                "a".to_string(),
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
            ),
            (
                "b".to_string(),
                json!({"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "yo"}]}),
            ),
        ];
        let made = store.add_batch(1, 1_000.0, requests, "http://sim".to_string());
        assert_eq!(made["processing_status"], "in_progress");
        assert!(made["results_url"].is_null());
        let id = made["id"].as_str().unwrap().to_string();
        let batch = &store.batches[&id];
        let done = batch.object(1_000.0 + BATCH_MS);
        assert_eq!(done["processing_status"], "ended");
        assert_eq!(
            done["results_url"],
            format!("http://sim/v1/messages/batches/{id}/results")
        );
        let results = batch.results(1);
        let lines: Vec<Value> = results
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["custom_id"], "a");
        assert_eq!(lines[0]["result"]["message"]["usage"]["output_tokens"], 5);
        assert_eq!(lines[1]["result"]["type"], "succeeded");
        assert!(rfc3339(0.0).starts_with("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(1_700_000_000_000.0), "2023-11-14T22:13:20Z");
    }
}
