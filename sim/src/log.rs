//! What the simulator remembers about the traffic it saw: the request log
//! behind `GET /_sim/log` (so tests can assert what the proxy sent upstream)
//! and the counters behind `GET /_sim/stats` (so benchmarks can plot
//! upstream calls over time). A body is kept up to 64 KiB, and its SHA-256 in
//! full, so a test can tell the whole of what arrived from what was sent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::script::Fault;

/// At most this many log entries are kept (the oldest are dropped).
pub const MAX_LOG_ENTRIES: usize = 10_000;
/// Bodies longer than this are stored truncated.
pub const MAX_LOGGED_BODY: usize = 64 * 1024;
/// At most this many seconds of per-second counters are kept (one day).
pub const MAX_SECONDS: usize = 86_400;

/// One request on `/v1/*`.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Arc<Map<String, Value>>,
    pub body: Arc<str>,
    pub body_len: usize,
    /// The SHA-256 of the whole body, lowercase hex; `None` when the body was
    /// refused for its size and never read.
    pub body_sha256: Option<Arc<str>>,
    pub received_at_ms: f64,
    pub status: Option<u16>,
    pub fault: Option<Arc<Fault>>,
    pub mode: Option<&'static str>,
    /// The usage a complete answer reports (the JSON `usage`, a stream's final
    /// `message_delta` usage; `message_start` carries the same input and cache
    /// fields), `None` when the answer carries none (errors, malformed bodies).
    pub usage: Option<Map<String, Value>>,
}

impl LogEntry {
    pub fn to_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": &*self.headers,
            "body": &*self.body,
            "body_len": self.body_len,
            "body_sha256": self.body_sha256.as_deref(),
            "received_at_ms": self.received_at_ms,
            "status": self.status,
            "fault": self.fault.as_ref().map(|f| f.raw.clone()),
            "mode": self.mode,
            "usage": self.usage,
        })
    }
}

/// Builds the stored form of a request body: lossy UTF-8, cut at 64 KiB.
pub fn logged_body(body: &[u8]) -> Arc<str> {
    let cut = &body[..body.len().min(MAX_LOGGED_BODY)];
    Arc::from(String::from_utf8_lossy(cut).as_ref())
}

/// The SHA-256 of a whole request body, lowercase hex.
pub fn body_digest(body: &[u8]) -> Arc<str> {
    use std::fmt::Write;
    let mut hex = String::with_capacity(64);
    for byte in Sha256::digest(body) {
        let _ = write!(hex, "{byte:02x}");
    }
    Arc::from(hex)
}

/// The bounded, ordered request log.
#[derive(Default)]
pub struct RequestLog {
    entries: VecDeque<LogEntry>,
    next_seq: u64,
}

impl RequestLog {
    /// Appends an entry, assigning its sequence number (1, 2, ...).
    pub fn push(&mut self, mut entry: LogEntry) -> u64 {
        self.next_seq += 1;
        entry.seq = self.next_seq;
        self.entries.push_back(entry);
        while self.entries.len() > MAX_LOG_ENTRIES {
            self.entries.pop_front();
        }
        self.next_seq
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut LogEntry> {
        let first = self.entries.front()?.seq;
        let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.entries.get_mut(idx)
    }

    /// Entries with `seq > after`, in arrival order.
    pub fn snapshot(&self, after: u64) -> Vec<LogEntry> {
        self.entries
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.next_seq = 0;
    }
}

/// Request counters.
#[derive(Default)]
pub struct Stats {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// `[unix_second, requests, ok]`, in increasing second order.
    per_second: VecDeque<[u64; 3]>,
}

impl Stats {
    pub fn arrival(&mut self, second: u64) {
        self.requests += 1;
        match self.per_second.back_mut() {
            Some(last) if last[0] == second => last[1] += 1,
            Some(last) if last[0] > second => {
                if let Some(slot) = self.slot(second) {
                    slot[1] += 1;
                }
            }
            _ => {
                self.per_second.push_back([second, 1, 0]);
                while self.per_second.len() > MAX_SECONDS {
                    self.per_second.pop_front();
                }
            }
        }
    }

    fn slot(&mut self, second: u64) -> Option<&mut [u64; 3]> {
        let idx = self
            .per_second
            .binary_search_by_key(&second, |s| s[0])
            .ok()?;
        self.per_second.get_mut(idx)
    }

    pub fn answered(&mut self, second: u64, status: u16, ok: bool) {
        *self.by_status.entry(status).or_insert(0) += 1;
        if ok {
            if let Some(slot) = self.slot(second) {
                slot[2] += 1;
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let by_status: Map<String, Value> = self
            .by_status
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "requests": self.requests,
            "by_status": by_status,
            "per_second": self.per_second.iter().map(|s| json!(s)).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> LogEntry {
        LogEntry {
            seq: 0,
            method: "POST".into(),
            path: "/v1/messages".into(),
            query: None,
            headers: Arc::new(Map::new()),
            body: Arc::from(""),
            body_len: 0,
            body_sha256: None,
            received_at_ms: 0.0,
            status: None,
            fault: None,
            mode: None,
            usage: None,
        }
    }

    #[test]
    fn log_is_bounded_and_addressable() {
        let mut log = RequestLog::default();
        for _ in 0..MAX_LOG_ENTRIES + 5 {
            log.push(entry());
        }
        assert_eq!(log.snapshot(0).len(), MAX_LOG_ENTRIES);
        assert!(log.get_mut(3).is_none());
        log.get_mut(10).unwrap().status = Some(200);
        assert_eq!(log.snapshot(9)[0].status, Some(200));
    }

    #[test]
    fn the_digest_covers_the_whole_body_where_the_kept_text_stops() {
        // The known SHA-256 of the empty string.
        assert_eq!(
            &*body_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut a = vec![b'x'; MAX_LOGGED_BODY + 10];
        let mut b = a.clone();
        b[MAX_LOGGED_BODY + 5] = b'y';
        assert_eq!(logged_body(&a), logged_body(&b));
        assert_ne!(body_digest(&a), body_digest(&b));
        a[MAX_LOGGED_BODY + 5] = b'y';
        assert_eq!(body_digest(&a), body_digest(&b));
    }

    #[test]
    fn stats_per_second() {
        let mut s = Stats::default();
        s.arrival(10);
        s.arrival(10);
        s.arrival(12);
        s.arrival(11); // out of order and no slot: counted in total only
        s.answered(10, 200, true);
        s.answered(12, 529, false);
        let v = s.to_json();
        assert_eq!(v["requests"], 4);
        assert_eq!(v["by_status"]["529"], 1);
        assert_eq!(v["per_second"], json!([[10, 2, 1], [12, 1, 0]]));
    }
}
