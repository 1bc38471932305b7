//! The input estimate a request is admitted with, read from its content blocks.
//!
//! A caller's `input_tpm` is charged this estimate before the answer and the real count after
//! it, so the estimate must not fall short on text, yet must not charge a base64 image or PDF
//! byte by byte: a 1 MB photo is about 1,600 tokens to Anthropic, not 450,000. The estimate is
//! read while [`super::body::inspect`] parses the body, in the same pass: strings are measured
//! where they lie (never copied when they carry no escapes), and every value whose shape is
//! not a known one is skipped by serde_json's iterative skipper, so hostile nesting costs
//! neither a copy nor stack.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

/// Text: one token per three bytes. Tokenizers average about four bytes per token for English
/// and code and more for most other scripts, so this does not fall short on text.
pub const TEXT_BYTES_PER_TOKEN: u64 = 3;
/// An image block, whatever its source: Anthropic charges about width·height/750 tokens, at
/// most about 1,600 once the image is scaled to fit. The proxy does not decode images.
pub const IMAGE_TOKENS: u64 = 1_600;
/// A PDF page: Anthropic charges the page's text (1,500–3,000 tokens) and its image.
pub const PDF_PAGE_TOKENS: u64 = 3_000;
/// Bytes of PDF (decoded) assumed per page when counting pages from the data's length.
pub const PDF_PAGE_BYTES: u64 = 16 * 1024;
/// The most pages Anthropic reads from the PDFs of one request.
pub const PDF_MAX_PAGES: u64 = 100;
/// A document whose data the proxy does not see (a URL or a file id): ten pages' worth.
pub const UNSEEN_DOCUMENT_TOKENS: u64 = 10 * PDF_PAGE_TOKENS;
/// The system prompt Anthropic adds when a request defines tools (346 tokens with
/// `tool_choice` `auto` or `none`, 313 with `any` or `tool`).
pub const TOOLS_PROMPT_TOKENS: u64 = 350;
/// Per message: the turn's role and the markers around it.
pub const MESSAGE_TOKENS: u64 = 4;
/// How deep content blocks are followed through `content` (a tool result's blocks, a
/// document's content source); deeper ones are counted as text.
const MAX_BLOCK_DEPTH: u32 = 3;

/// What a part of the body costs: text bytes and tokens charged per block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub text_bytes: u64,
    pub block_tokens: u64,
}

impl Tally {
    fn text(bytes: usize) -> Tally {
        Tally {
            text_bytes: bytes as u64,
            block_tokens: 0,
        }
    }

    fn tokens(tokens: u64) -> Tally {
        Tally {
            text_bytes: 0,
            block_tokens: tokens,
        }
    }

    fn add(&mut self, other: Tally) {
        self.text_bytes = self.text_bytes.saturating_add(other.text_bytes);
        self.block_tokens = self.block_tokens.saturating_add(other.block_tokens);
    }

    /// The estimate for this much: text at [`TEXT_BYTES_PER_TOKEN`], blocks at their figure.
    #[must_use]
    pub fn estimate(&self) -> u64 {
        (self.text_bytes / TEXT_BYTES_PER_TOKEN)
            .saturating_add(self.block_tokens)
            .saturating_add(1)
    }
}

/// The tokens a base64 PDF of this many base64 characters is estimated at: pages from its
/// decoded length at [`PDF_PAGE_BYTES`] a page, at least one, at most [`PDF_MAX_PAGES`].
#[must_use]
pub fn pdf_tokens(base64_len: u64) -> u64 {
    let decoded = base64_len / 4 * 3;
    let pages = decoded.div_ceil(PDF_PAGE_BYTES).clamp(1, PDF_MAX_PAGES);
    pages.saturating_mul(PDF_PAGE_TOKENS)
}

/// The length of any JSON value as it stands in the body, skipped without recursion.
struct RawLen(usize);

impl<'de> Deserialize<'de> for RawLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawLen, D::Error> {
        let raw: &'de RawValue = Deserialize::deserialize(d)?;
        Ok(RawLen(raw.get().len()))
    }
}

/// Values of a shape the estimate does not know: strings, arrays and objects count as text
/// by their length in the body; numbers, booleans and null cost nothing.
macro_rules! other_shapes {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tally, E> {
            Ok(Tally::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Tally, E> {
            Ok(Tally::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Tally, E> {
            Ok(Tally::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Tally, E> {
            Ok(Tally::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Tally, E> {
            Ok(Tally::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Tally, E> {
            Ok(Tally::default())
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Tally, E> {
            Ok(Tally::text(s.len()))
        }
    };
}

fn raw_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Tally, A::Error> {
    let mut tally = Tally::default();
    while let Some(RawLen(n)) = seq.next_element()? {
        tally.add(Tally::text(n));
    }
    Ok(tally)
}

fn raw_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Tally, A::Error> {
    let mut tally = Tally::default();
    while let Some((RawLen(k), RawLen(v))) = map.next_entry()? {
        tally.add(Tally::text(k.saturating_add(v)));
    }
    Ok(tally)
}

/// `system`: a string or a list of blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct System(pub Tally);

impl<'de> Deserialize<'de> for System {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<System, D::Error> {
        Content { depth: 0 }.deserialize(d).map(System)
    }
}

/// `messages`: a list of turns, each with a `content` string or list of blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Messages(pub Tally);

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Messages, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Tally;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of messages")
            }
            other_shapes!();
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tally, A::Error> {
                let mut tally = Tally::default();
                while let Some(message) = seq.next_element_seed(Message)? {
                    tally.add(message);
                    tally.add(Tally::tokens(MESSAGE_TOKENS));
                }
                Ok(tally)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Tally, A::Error> {
                raw_map(map)
            }
        }
        d.deserialize_any(List).map(Messages)
    }
}

struct Message;

impl<'de> DeserializeSeed<'de> for Message {
    type Value = Tally;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tally, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Message {
    type Value = Tally;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a message")
    }
    other_shapes!();
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Tally, A::Error> {
        raw_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tally, A::Error> {
        let mut tally = Tally::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Content => tally.add(map.next_value_seed(Content { depth: 0 })?),
                // The role is in the per-message figure.
                Key::Other(false) => {
                    let _: RawLen = map.next_value()?;
                }
                _ => {
                    let RawLen(n) = map.next_value()?;
                    tally.add(Tally::text(n));
                }
            }
        }
        Ok(tally)
    }
}

/// `tools`: the definitions count as text, and their presence adds Anthropic's tool prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tools(pub Tally);

impl<'de> Deserialize<'de> for Tools {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tools, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Tally;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of tools")
            }
            other_shapes!();
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Tally, A::Error> {
                let mut tally = raw_seq(seq)?;
                if tally.text_bytes > 0 {
                    tally.add(Tally::tokens(TOOLS_PROMPT_TOKENS));
                }
                Ok(tally)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Tally, A::Error> {
                raw_map(map)
            }
        }
        d.deserialize_any(List).map(Tools)
    }
}

/// The keys the estimate looks at. `Other(true)` is any other key whose value counts as text;
/// `Other(false)` a key whose value costs nothing beyond the fixed figures (`role`).
enum Key {
    Type,
    Content,
    Source,
    Data,
    Other(bool),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "type" => Key::Type,
                    "content" => Key::Content,
                    "source" => Key::Source,
                    "data" => Key::Data,
                    "role" => Key::Other(false),
                    _ => Key::Other(true),
                })
            }
        }
        d.deserialize_str(Name)
    }
}

/// A block's `type`, as far as the estimate cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image,
    Document,
    Base64,
    Text,
    Content,
    Other,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a type")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Kind, E> {
                Ok(match s {
                    "image" => Kind::Image,
                    "document" => Kind::Document,
                    "base64" => Kind::Base64,
                    "text" => Kind::Text,
                    "content" => Kind::Content,
                    _ => Kind::Other,
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Kind, A::Error> {
                raw_seq(seq).map(|_| Kind::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Kind, A::Error> {
                raw_map(map).map(|_| Kind::Other)
            }
        }
        d.deserialize_any(Name)
    }
}

/// A `content` (or `system`): a string, or a list of blocks at some depth.
#[derive(Clone, Copy)]
struct Content {
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for Content {
    type Value = Tally;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tally, D::Error> {
        if self.depth >= MAX_BLOCK_DEPTH {
            let RawLen(n) = RawLen::deserialize(d)?;
            return Ok(Tally::text(n));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Content {
    type Value = Tally;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("content")
    }
    other_shapes!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tally, A::Error> {
        let mut tally = Tally::default();
        while let Some(block) = seq.next_element_seed(Block { depth: self.depth })? {
            tally.add(block);
        }
        Ok(tally)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Tally, A::Error> {
        // One block where a list was expected: the upstream refuses it; count it as one.
        Block { depth: self.depth }.visit_map(map)
    }
}

/// One content block: `text`, `image`, `document`, `tool_result` (whose `content` holds
/// blocks again), `tool_use` and the rest.
#[derive(Clone, Copy)]
struct Block {
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for Block {
    type Value = Tally;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tally, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Block {
    type Value = Tally;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a content block")
    }
    other_shapes!();
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Tally, A::Error> {
        raw_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tally, A::Error> {
        // The type may come after the source: gather first, decide at the end.
        let mut kind = Kind::Other;
        let mut fields = Tally::default();
        let mut source = Source::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => kind = map.next_value()?,
                Key::Content => fields.add(map.next_value_seed(Content {
                    depth: self.depth.saturating_add(1),
                })?),
                Key::Source => source.add(map.next_value_seed(SourceSeed { depth: self.depth })?),
                Key::Data | Key::Other(_) => {
                    let RawLen(n) = map.next_value()?;
                    fields.add(Tally::text(n));
                }
            }
        }
        let mut tally = fields;
        tally.add(match kind {
            // Whatever the source: data, URL or file.
            Kind::Image => Tally::tokens(IMAGE_TOKENS),
            Kind::Document => source.document(),
            _ => source.as_text(),
        });
        Ok(tally)
    }
}

/// What a block's `source` held.
#[derive(Debug, Clone, Copy, Default)]
struct Source {
    kind: Option<KindSeen>,
    /// Length of `data` in the body (base64 characters, or a text document's text).
    data_len: u64,
    /// A `content` source's blocks, and any other field.
    rest: Tally,
}

#[derive(Debug, Clone, Copy)]
enum KindSeen {
    Base64,
    Text,
    Content,
    Other,
}

impl Source {
    fn add(&mut self, other: Source) {
        self.kind = other.kind.or(self.kind);
        self.data_len = self.data_len.saturating_add(other.data_len);
        self.rest.add(other.rest);
    }

    /// A document: a PDF by its pages, a text or content source by what it holds, a
    /// document the proxy cannot see by a flat figure.
    fn document(&self) -> Tally {
        let mut tally = self.rest;
        match self.kind {
            Some(KindSeen::Base64) => tally.add(Tally::tokens(pdf_tokens(self.data_len))),
            Some(KindSeen::Text) | Some(KindSeen::Content) => tally.add(Tally {
                text_bytes: self.data_len,
                block_tokens: 0,
            }),
            Some(KindSeen::Other) | None if self.data_len > 0 => {
                tally.add(Tally::tokens(pdf_tokens(self.data_len)));
            }
            Some(KindSeen::Other) | None => tally.add(Tally::tokens(UNSEEN_DOCUMENT_TOKENS)),
        }
        tally
    }

    /// The source of a block that is neither an image nor a document: all of it as text.
    fn as_text(&self) -> Tally {
        let mut tally = self.rest;
        tally.add(Tally {
            text_bytes: self.data_len,
            block_tokens: 0,
        });
        tally
    }
}

struct SourceSeed {
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for SourceSeed {
    type Value = Source;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Source, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SourceSeed {
    type Value = Source;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a source")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Source, E> {
        Ok(Source::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Source, E> {
        Ok(Source::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Source, E> {
        Ok(Source::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Source, E> {
        Ok(Source::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Source, E> {
        Ok(Source::default())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Source, E> {
        // A search result's source is its URL.
        Ok(Source {
            rest: Tally::text(s.len()),
            ..Source::default()
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Source, A::Error> {
        Ok(Source {
            rest: raw_seq(seq)?,
            ..Source::default()
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Source, A::Error> {
        let mut source = Source::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => {
                    source.kind = Some(match map.next_value::<Kind>()? {
                        Kind::Base64 => KindSeen::Base64,
                        Kind::Text => KindSeen::Text,
                        Kind::Content => KindSeen::Content,
                        _ => KindSeen::Other,
                    });
                }
                Key::Data => {
                    let RawLen(n) = map.next_value()?;
                    // Without the quotes.
                    source.data_len = source.data_len.saturating_add(n.saturating_sub(2) as u64);
                }
                Key::Content => source.rest.add(map.next_value_seed(Content {
                    depth: self.depth.saturating_add(1),
                })?),
                Key::Source | Key::Other(_) => {
                    // media_type, url, file_id: small; counted as text.
                    let RawLen(n) = map.next_value()?;
                    source.rest.add(Tally::text(n));
                }
            }
        }
        Ok(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_pages_from_length() {
        assert_eq!(pdf_tokens(0), PDF_PAGE_TOKENS);
        // 16 KiB decoded is one page; one byte more is two.
        assert_eq!(pdf_tokens(16 * 1024 / 3 * 4), PDF_PAGE_TOKENS);
        assert_eq!(pdf_tokens(16 * 1024 / 3 * 4 + 8), 2 * PDF_PAGE_TOKENS);
        assert_eq!(pdf_tokens(u64::MAX), PDF_MAX_PAGES * PDF_PAGE_TOKENS);
    }
}
