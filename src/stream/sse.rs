//! Reading Server-Sent Events as they pass through, without holding the stream.
//!
//! The proxy must look at a stream twice: its first event decides whether the attempt is
//! retried (an `overloaded_error` in a `200`), and its `message_start` / `message_delta`
//! usage settles the caller's token limits. [`EventScanner`] finds event boundaries across
//! chunk boundaries while keeping at most one partial event in memory, so memory does not
//! grow with the length of the stream.

use serde::Deserialize;

use crate::limits::prices::PricedTokens;

/// The events that carry a stream's usage: a Messages stream's `message_start` and
/// `message_delta`, and a chat completion stream's unnamed chunks (`message`).
pub const USAGE_EVENTS: &[&str] = &["message_start", "message_delta", "message"];

/// One parsed event: its `event:` name (or `message` when absent) and its joined `data:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

impl SseEvent {
    /// The `error.type` of an `error` event, e.g. `overloaded_error`.
    pub fn error_type(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct ErrorData {
            error: Option<ErrorInner>,
        }
        #[derive(Deserialize)]
        struct ErrorInner {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        if self.name != "error" {
            return None;
        }
        let kind = serde_json::from_str::<ErrorData>(&self.data)
            .ok()
            .and_then(|d| d.error)
            .and_then(|e| e.kind);
        Some(kind.unwrap_or_else(|| "api_error".to_string()))
    }
}

/// Largest partial event kept while looking for its end. Events of the Messages API are a few
/// hundred bytes; a longer run without a blank line is not looked into, only passed through.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Finds complete events in a byte stream fed chunk by chunk.
#[derive(Debug)]
pub struct EventScanner {
    partial: Vec<u8>,
    /// The current event overflowed [`MAX_EVENT_BYTES`]: skip to its end.
    skipping: bool,
    /// No byte of the current line seen yet (so a line terminator now ends the event).
    at_line_start: bool,
    /// The last byte was `\r`: a following `\n` belongs to the same terminator.
    pending_cr: bool,
    /// Only events of these names are held and parsed; `None`: every event.
    wanted: Option<&'static [&'static str]>,
}

impl Default for EventScanner {
    fn default() -> Self {
        EventScanner {
            partial: Vec::new(),
            skipping: false,
            at_line_start: true,
            pending_cr: false,
            wanted: None,
        }
    }
}

impl EventScanner {
    pub fn new() -> EventScanner {
        EventScanner::default()
    }

    /// A scanner that yields only the events named in `wanted`: any other event is not
    /// parsed, only its name looked up. A usage tap wants two events of a stream whose bulk
    /// is `content_block_delta`.
    pub fn only(wanted: &'static [&'static str]) -> EventScanner {
        EventScanner {
            wanted: Some(wanted),
            ..EventScanner::default()
        }
    }

    /// Feeds one chunk and calls `on_event` for every event completed by it. Lines may end in
    /// `\n`, `\r\n` or `\r`; an empty line ends an event.
    pub fn push(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent)) {
        let mut rest = chunk;
        loop {
            if self.pending_cr {
                if let Some(after) = rest.strip_prefix(b"\n") {
                    self.pending_cr = false;
                    rest = after;
                }
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
                if !rest.is_empty() {
                    self.pending_cr = false;
                    self.at_line_start = false;
                    self.hold(rest);
                }
                return;
            };
            let (line, after) = rest.split_at(end.saturating_add(1));
            rest = after;
            self.pending_cr = line.last() == Some(&b'\r');
            if end > 0 {
                self.at_line_start = false;
            }
            self.hold(line);
            if self.at_line_start {
                // A blank line: the event is complete.
                let wanted = self.wanted.is_none_or(|names| {
                    names
                        .iter()
                        .any(|n| n.as_bytes() == event_name(&self.partial))
                });
                if !self.skipping && wanted {
                    if let Some(event) = parse_event(&self.partial) {
                        on_event(event);
                    }
                }
                self.partial.clear();
                self.skipping = false;
            } else {
                self.at_line_start = true;
            }
        }
    }

    fn hold(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.partial.len().saturating_add(bytes.len()) > MAX_EVENT_BYTES {
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// Bytes held for an incomplete event.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }
}

/// The name an event's raw lines give it, as [`parse_event`] reads them (the last `event`
/// field; `message` when there is none), without decoding the rest.
fn event_name(raw: &[u8]) -> &[u8] {
    let mut name: &[u8] = b"message";
    for line in raw.split(|&b| b == b'\n' || b == b'\r') {
        if let Some(value) = line.strip_prefix(b"event") {
            match value.first() {
                None => name = value,
                Some(b':') => {
                    let value = value.get(1..).unwrap_or_default();
                    name = value.strip_prefix(b" ").unwrap_or(value);
                }
                Some(_) => {}
            }
        }
    }
    name
}

fn parse_event(raw: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(raw);
    let mut name: Option<String> = None;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value.to_string()),
            "data" => match data.as_mut() {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    if name.is_none() && data.is_none() {
        return None;
    }
    Some(SseEvent {
        name: name.unwrap_or_else(|| "message".to_string()),
        data: data.unwrap_or_default(),
    })
}

/// Token usage as an answer reports it, counted as Anthropic counts it against its own
/// per-minute limits: input is `input_tokens + cache_creation_input_tokens`, and
/// `cache_read_input_tokens` are free. A stream reports usage in `message_start` and again in
/// `message_delta`, whose figures are cumulative (current API versions repeat the input and
/// cache fields there): the last value reported of each field is the one that counts, nothing
/// is summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens as the caller's limits count them (cache writes in, cache reads out);
    /// `None` until a usage object said anything about input.
    pub input_tokens: Option<u64>,
    /// Output tokens: the last running count reported.
    pub output_tokens: Option<u64>,
    /// The last value reported of each input field, from which `input_tokens` is made.
    pub reported: Reported,
}

/// The input fields of the usage objects seen so far, each as last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    pub input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    /// `cache_creation.ephemeral_5m_input_tokens` and `ephemeral_1h_input_tokens`: how the
    /// cache writes split by lifetime, which their price depends on.
    pub cache_write_5m: Option<u64>,
    pub cache_write_1h: Option<u64>,
}

impl Reported {
    /// Anthropic's rule: uncached input plus cache writes; cache reads are not counted.
    #[must_use]
    pub fn counted_input(&self) -> Option<u64> {
        match (self.input_tokens, self.cache_creation_input_tokens) {
            (None, None) => None,
            (input, creation) => Some(input.unwrap_or(0).saturating_add(creation.unwrap_or(0))),
        }
    }

    /// The tokens as they are priced: cache writes by lifetime (all five-minute writes when
    /// the answer does not split them), cache reads apart.
    #[must_use]
    pub fn priced(&self, output_tokens: u64) -> PricedTokens {
        let (cache_write_5m, cache_write_1h) = match (self.cache_write_5m, self.cache_write_1h) {
            (None, None) => (self.cache_creation_input_tokens.unwrap_or(0), 0),
            (five, hour) => (five.unwrap_or(0), hour.unwrap_or(0)),
        };
        PricedTokens {
            input: self.input_tokens.unwrap_or(0),
            output: output_tokens,
            cache_write_5m,
            cache_write_1h,
            cache_read: self.cache_read_input_tokens.unwrap_or(0),
        }
    }
}

/// A `usage` object of the Messages API, in a JSON answer, `message_start` or `message_delta`;
/// or of the OpenAI-compatible chat completions, whose names for the same two counts are
/// `prompt_tokens` and `completion_tokens`.
#[derive(Deserialize)]
pub(crate) struct Counts {
    #[serde(alias = "prompt_tokens")]
    input_tokens: Option<u64>,
    #[serde(alias = "completion_tokens")]
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation: Option<CacheCreation>,
}

/// The split of an answer's cache writes by lifetime.
#[derive(Deserialize)]
pub(crate) struct CacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
}

impl Usage {
    /// Takes in one `usage` object: every field it carries replaces the value reported before.
    pub(crate) fn apply(&mut self, counts: &Counts) {
        let r = &mut self.reported;
        r.input_tokens = counts.input_tokens.or(r.input_tokens);
        r.cache_creation_input_tokens = counts
            .cache_creation_input_tokens
            .or(r.cache_creation_input_tokens);
        r.cache_read_input_tokens = counts.cache_read_input_tokens.or(r.cache_read_input_tokens);
        if let Some(split) = &counts.cache_creation {
            r.cache_write_5m = split.ephemeral_5m_input_tokens.or(r.cache_write_5m);
            r.cache_write_1h = split.ephemeral_1h_input_tokens.or(r.cache_write_1h);
        }
        self.input_tokens = r.counted_input().or(self.input_tokens);
        self.output_tokens = counts.output_tokens.or(self.output_tokens);
    }

    /// Updates the tally from one event of a Messages stream (only [`USAGE_EVENTS`] count).
    pub fn observe(&mut self, event: &SseEvent) {
        #[derive(Deserialize)]
        struct Start {
            message: Option<Body>,
        }
        #[derive(Deserialize)]
        struct Body {
            usage: Option<Counts>,
        }
        match event.name.as_str() {
            "message_start" => {
                if let Some(c) = serde_json::from_str::<Start>(&event.data)
                    .ok()
                    .and_then(|s| s.message)
                    .and_then(|m| m.usage)
                {
                    self.apply(&c);
                    // A stream that opened with a usage object has told its input, if only 0.
                    self.input_tokens = self.input_tokens.or(Some(0));
                }
            }
            // A chat completion chunk (an unnamed event) carries `usage` at its top level,
            // in the last chunk; the Messages API never sends unnamed events.
            "message_delta" | "message" => {
                if let Some(c) = serde_json::from_str::<Body>(&event.data)
                    .ok()
                    .and_then(|b| b.usage)
                {
                    self.apply(&c);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut scanner = EventScanner::new();
        let mut events = Vec::new();
        for c in chunks {
            scanner.push(c, |e| events.push(e));
        }
        events
    }

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
        event: ping\ndata: {\"type\":\"ping\"}\n\n\
        event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";

    #[test]
    fn events_are_found_whatever_the_chunking() {
        let whole = scan(&[STREAM.as_bytes()]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].name, "message_start");
        assert_eq!(whole[1].data, "{\"type\":\"ping\"}");
        for size in 1..20 {
            let chunks: Vec<&[u8]> = STREAM.as_bytes().chunks(size).collect();
            assert_eq!(scan(&chunks), whole, "chunk size {size}");
        }
    }

    #[test]
    fn crlf_and_multiline_data() {
        let events = scan(&[
            b"event: a\r\ndata: 1\r\ndata: 2\r\n\r\n",
            b": comment\n\ndata: x\n\n",
        ]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "1\n2");
        assert_eq!(events[1].name, "message");
    }

    #[test]
    fn error_events_give_their_type() {
        let events = scan(&[b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"]);
        assert_eq!(events[0].error_type().as_deref(), Some("overloaded_error"));
        let garbled = SseEvent {
            name: "error".into(),
            data: "{{{".into(),
        };
        assert_eq!(garbled.error_type().as_deref(), Some("api_error"));
        let normal = SseEvent {
            name: "ping".into(),
            data: "{}".into(),
        };
        assert_eq!(normal.error_type(), None);
    }

    #[test]
    fn usage_is_tallied() {
        let mut usage = Usage::default();
        for e in scan(&[STREAM.as_bytes()]) {
            usage.observe(&e);
        }
        assert_eq!(
            usage,
            Usage {
                input_tokens: Some(25),
                output_tokens: Some(15),
                reported: Reported {
                    input_tokens: Some(25),
                    ..Reported::default()
                },
            }
        );
    }

    fn tally(events: &[(&str, &str)]) -> Usage {
        let mut usage = Usage::default();
        for (name, data) in events {
            usage.observe(&SseEvent {
                name: (*name).to_string(),
                data: (*data).to_string(),
            });
        }
        usage
    }

    #[test]
    fn cache_writes_are_priced_by_lifetime_and_reads_apart() {
        // The split by lifetime, as current API versions report it.
        let split = tally(&[
            (
                "message_start",
                r#"{"message":{"usage":{"input_tokens":12,"cache_creation_input_tokens":3000,"cache_read_input_tokens":500,"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},"output_tokens":1}}}"#,
            ),
            ("message_delta", r#"{"usage":{"output_tokens":40}}"#),
        ]);
        // The per-minute count is unchanged: input and every cache write.
        assert_eq!(split.input_tokens, Some(3_012));
        assert_eq!(
            split.reported.priced(40),
            PricedTokens {
                input: 12,
                output: 40,
                cache_write_5m: 1_000,
                cache_write_1h: 2_000,
                cache_read: 500,
            }
        );
        // Without the split, every write is a five-minute one.
        let plain = tally(&[(
            "message_start",
            r#"{"message":{"usage":{"input_tokens":12,"cache_creation_input_tokens":3000,"output_tokens":1}}}"#,
        )]);
        assert_eq!(
            plain.reported.priced(1),
            PricedTokens {
                input: 12,
                output: 1,
                cache_write_5m: 3_000,
                cache_write_1h: 0,
                cache_read: 0,
            }
        );
    }

    #[test]
    fn regression_cache_reads_counted_against_the_input_limit() {
        // 20 000 tokens read from the cache cost nothing against Anthropic's input limit.
        let usage = tally(&[(
            "message_start",
            r#"{"message":{"usage":{"input_tokens":12,"cache_read_input_tokens":20000,"cache_creation_input_tokens":0,"output_tokens":1}}}"#,
        )]);
        assert_eq!(usage.input_tokens, Some(12));
        assert_eq!(usage.reported.cache_read_input_tokens, Some(20000));
    }

    #[test]
    fn cache_writes_count_as_input() {
        let usage = tally(&[(
            "message_start",
            r#"{"message":{"usage":{"input_tokens":12,"cache_creation_input_tokens":3000,"output_tokens":1}}}"#,
        )]);
        assert_eq!(usage.input_tokens, Some(3012));
    }

    #[test]
    fn cumulative_delta_figures_replace_the_start_ones_and_are_not_summed() {
        let start = r#"{"message":{"usage":{"input_tokens":12,"cache_creation_input_tokens":3000,"cache_read_input_tokens":500,"output_tokens":1}}}"#;
        // Current API versions repeat the (cumulative) input and cache fields in message_delta.
        let delta = r#"{"usage":{"input_tokens":12,"cache_creation_input_tokens":3000,"cache_read_input_tokens":500,"output_tokens":40}}"#;
        let usage = tally(&[("message_start", start), ("message_delta", delta)]);
        assert_eq!(usage.input_tokens, Some(3012));
        assert_eq!(usage.output_tokens, Some(40));
        // A later report of a field wins; a field a delta leaves out keeps its last value.
        let changed = r#"{"usage":{"cache_creation_input_tokens":100,"output_tokens":41}}"#;
        let usage = tally(&[("message_start", start), ("message_delta", changed)]);
        assert_eq!(usage.input_tokens, Some(112));
        assert_eq!(usage.output_tokens, Some(41));
        // Older API versions: the delta has output only.
        let old = r#"{"usage":{"output_tokens":9}}"#;
        let usage = tally(&[("message_start", start), ("message_delta", old)]);
        assert_eq!(usage.input_tokens, Some(3012));
        assert_eq!(usage.output_tokens, Some(9));
    }

    #[test]
    fn a_start_without_input_fields_means_no_input() {
        let usage = tally(&[(
            "message_start",
            r#"{"message":{"usage":{"output_tokens":1}}}"#,
        )]);
        assert_eq!(usage.input_tokens, Some(0));
        let usage = tally(&[("message_delta", r#"{"usage":{"output_tokens":5}}"#)]);
        assert_eq!(usage.input_tokens, None);
        assert_eq!(usage.output_tokens, Some(5));
    }

    #[test]
    fn memory_stays_bounded_on_an_endless_event() {
        let mut scanner = EventScanner::new();
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..64 {
            scanner.push(&chunk, |_| panic!("no event expected"));
            assert!(scanner.buffered() <= MAX_EVENT_BYTES);
        }
        let mut after = Vec::new();
        scanner.push(b"\n\ndata: next\n\n", |e| after.push(e));
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].data, "next");
    }

    #[test]
    fn a_scanner_for_some_names_skips_the_rest() {
        let mut scanner = EventScanner::only(USAGE_EVENTS);
        let mut events = Vec::new();
        scanner.push(STREAM.as_bytes(), |e| events.push(e));
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["message_start", "message_delta"]);
        // The last `event` field names the event, as the SSE format says.
        let renamed =
            b"event: ping\ndata: {}\nevent: message_delta\n\nevent: message_delta\nevent:ping\n\n";
        let mut events = Vec::new();
        scanner.push(renamed, |e| events.push(e));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "{}");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 5] = [
            "message_start",
            "message_delta",
            "content_block_delta",
            "ping",
            "error",
        ];

        fn events() -> impl Strategy<Value = Vec<(usize, String, usize)>> {
            prop::collection::vec((0..NAMES.len(), "[a-z{}\":, ]{0,24}", 0..3usize), 0..12)
        }

        fn wire(events: &[(usize, String, usize)]) -> Vec<u8> {
            let mut out = String::new();
            for (name, data, ending) in events {
                let end = ["\n", "\r\n", "\r"][*ending];
                out.push_str(&format!(
                    "event: {}{end}data: {data}{end}{end}",
                    NAMES[*name]
                ));
            }
            out.into_bytes()
        }

        fn scan_in(mut scanner: EventScanner, bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
            let mut found = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
                let cut = (*cut).clamp(at, bytes.len());
                scanner.push(&bytes[at..cut], |e| found.push(e));
                at = cut;
            }
            found
        }

        proptest! {
            #[test]
            fn every_event_is_found_whatever_the_chunking_and_line_ends(
                events in events(),
                mut cuts in prop::collection::vec(0..400usize, 0..16),
            ) {
                cuts.sort_unstable();
                let bytes = wire(&events);
                let expected: Vec<SseEvent> = events
                    .iter()
                    .map(|(name, data, _)| SseEvent { name: NAMES[*name].to_string(), data: data.clone() })
                    .collect();
                prop_assert_eq!(&scan_in(EventScanner::new(), &bytes, &cuts), &expected);
                let wanted: Vec<SseEvent> = expected
                    .into_iter()
                    .filter(|e| USAGE_EVENTS.contains(&e.name.as_str()))
                    .collect();
                prop_assert_eq!(scan_in(EventScanner::only(USAGE_EVENTS), &bytes, &cuts), wanted);
            }
        }
    }
}
