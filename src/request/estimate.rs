//! The input estimate a request is admitted with, read from its content blocks.
//!
//! A caller's `input_tpm` is charged this estimate before the answer and the real count after
//! it, so the estimate must not fall short on what people and programs send, yet must not run
//! far over on English (a caller near its limit would wait for nothing) nor charge a base64
//! image or PDF byte by byte: a 1 MB photo is at most about 1,600 tokens to Anthropic, not 450,000. The
//! estimate is read while [`super::body::inspect`] parses the body, in the same pass: strings
//! are measured where they lie (never copied when they carry no escapes), and every value
//! whose shape is not a known one is skipped by serde_json's iterative skipper, so hostile
//! nesting costs neither a copy nor stack.
//!
//! Text is weighed byte by byte ([`text_units`]), by what a byte-pair tokenizer makes of it:
//! a word of English is about one token however long, so a word weighs mostly where it
//! starts; punctuation runs, digits and base64 come close to a token per byte or two, and a
//! character outside ASCII can be a token per byte (more where compatibility normalization
//! spells it out in several). The weights were fitted against the Claude tokenizer on the
//! corpora of `tests/estimate.rs`, so that no text there is estimated below its count but
//! letters in no language (random-letter words, gibberish) and runs of one- and two-letter
//! words, which may come to about 0.6 of it;
//! `docs/estimate.md` has the figures.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

/// Text weights are in sixteenths of a token.
pub const UNITS_PER_TOKEN: u64 = 16;
/// An ASCII letter: a word of English is about one token, most of it carried by where the
/// word starts ([`LETTER_RUN_UNITS`]) rather than by its length.
const LETTER_UNITS: u64 = 2;
/// An ASCII digit.
const DIGIT_UNITS: u64 = 8;
/// ASCII punctuation and symbols.
const PUNCT_UNITS: u64 = 10;
/// A space, tab or line end.
const SPACE_UNITS: u64 = 2;
/// Any other ASCII control character.
const CONTROL_UNITS: u64 = 16;
/// Each byte of a character outside ASCII: a byte-pair tokenizer spells a rare character
/// byte by byte, and merges a common one into a token or two.
const NON_ASCII_BYTE_UNITS: u64 = 14;
/// Where a run of letters starts (a word): tokenizers split text where one kind of
/// character (letter, digit, punctuation, space, control, non-ASCII) gives way to another,
/// keeping a single space with the word after it.
const LETTER_RUN_UNITS: u64 = 29;
/// Where a run of digits starts (the digits themselves carry it).
const DIGIT_RUN_UNITS: u64 = 0;
/// Where a run of punctuation starts.
const PUNCT_RUN_UNITS: u64 = 14;
/// Where a run of spaces or line ends starts.
const SPACE_RUN_UNITS: u64 = 0;
/// Where any run starts right after a single space, which the tokenizer keeps with what
/// follows (` the` is one token): what keeps a run of short words from being short.
const LONE_SPACE_RUN_UNITS: u64 = 5;
/// Where a run of control characters or of characters outside ASCII starts.
const OTHER_RUN_UNITS: u64 = 13;
/// A letter whose case differs from the letter before it (`aZbQ`, base64, camelCase).
const CASE_FLIP_UNITS: u64 = 8;
/// A consonant after a consonant (`xkcdq`): letters that make no common word.
const CONSONANT_PAIR_UNITS: u64 = 5;
/// The most text bytes one estimated token stands for (a run of spaces or of one letter):
/// every text byte weighs at least this fraction of a token.
pub const MAX_TEXT_BYTES_PER_TOKEN: u64 = UNITS_PER_TOKEN.div_ceil(if LETTER_UNITS < SPACE_UNITS {
    LETTER_UNITS
} else {
    SPACE_UNITS
});
/// The most tokens one byte of text is estimated at (a character that normalization spells
/// out in 18, such as U+FDFA, at the start of a run).
pub const MAX_TOKENS_PER_TEXT_BYTE: u64 = 6;
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
/// Per request: the marker of the assistant's turn that closes the prompt, and one for
/// rounding.
pub const REQUEST_TOKENS: u64 = 5;
/// How deep content blocks are followed through `content` (a tool result's blocks, a
/// document's content source); deeper ones are counted as text.
const MAX_BLOCK_DEPTH: u32 = 3;

/// The kinds of character whose boundaries a tokenizer splits at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RunKind {
    None,
    Letter,
    Digit,
    Punct,
    Space,
    Control,
    NonAscii,
    /// A UTF-8 continuation byte: part of the character its lead byte began.
    Continuation,
}

impl RunKind {
    /// What the start of a run of this kind weighs.
    const fn start_units(self) -> u64 {
        match self {
            RunKind::None | RunKind::Continuation => 0,
            RunKind::Letter => LETTER_RUN_UNITS,
            RunKind::Digit => DIGIT_RUN_UNITS,
            RunKind::Punct => PUNCT_RUN_UNITS,
            RunKind::Space => SPACE_RUN_UNITS,
            RunKind::Control | RunKind::NonAscii => OTHER_RUN_UNITS,
        }
    }
}

/// What the weighing knows of a byte value.
#[derive(Clone, Copy)]
struct ByteClass {
    run: RunKind,
    units: u64,
    /// What the start of a run of this kind weighs.
    start: u64,
    /// A consonant letter.
    consonant: bool,
}

const fn byte_class(b: u8) -> ByteClass {
    let (run, units) = match b {
        b'a'..=b'z' | b'A'..=b'Z' => (RunKind::Letter, LETTER_UNITS),
        b'0'..=b'9' => (RunKind::Digit, DIGIT_UNITS),
        b' ' | b'\n' | b'\t' | b'\r' => (RunKind::Space, SPACE_UNITS),
        0..=0x1f | 0x7f => (RunKind::Control, CONTROL_UNITS),
        0x21..=0x7e => (RunKind::Punct, PUNCT_UNITS),
        0x80..=0xbf => (RunKind::Continuation, NON_ASCII_BYTE_UNITS),
        _ => (RunKind::NonAscii, NON_ASCII_BYTE_UNITS),
    };
    ByteClass {
        run,
        units,
        start: run.start_units(),
        consonant: b.is_ascii_alphabetic()
            && !matches!(b | 0x20, b'a' | b'e' | b'i' | b'o' | b'u' | b'y'),
    }
}

/// Every byte value's class, so that weighing a byte is one load.
// Built at compile time, where an index out of bounds fails the build, never a request.
#[allow(clippy::indexing_slicing)]
static BYTE_CLASSES: [ByteClass; 256] = {
    let mut table = [byte_class(0); 256];
    let mut b = 0;
    while b < 256 {
        table[b] = byte_class(b as u8);
        b += 1;
    }
    table
};

/// Tokens beyond one per byte that a character outside ASCII may cost once compatibility
/// normalization (NFKC) has spelled it out: the most any character of the 64 that share its
/// first two UTF-8 bytes costs to the Claude tokenizer (`ﷺ`, U+FDFA, is 15 tokens in 3
/// bytes). Every other character costs at most one token per byte.
fn expansion_tokens(lead: u8, second: u8) -> u64 {
    match (lead, second) {
        (0xef, 0xb7) => 12,
        (0xe0, 0xbd) => 6,
        (0xe2, 0xa8) | (0xf0, 0x9d) => 5,
        (0xe3, 0x8d) => 4,
        (0xe0, 0xa8 | 0xa9 | 0xad | 0xba | 0xbb | 0xbe)
        | (0xe2, 0x80 | 0x88)
        | (0xe3, 0x88 | 0x8c)
        | (0xef, 0xb3) => 3,
        (0xcd, 0x84)
        | (0xce, 0x85)
        | (0xd6, 0x87)
        | (0xd9, 0xb7)
        | (0xe2, 0xab)
        | (0xe3, 0x8e)
        | (0xef, 0xac | 0xb1)
        | (0xf0, 0x9f) => 2,
        (0xc2, 0xbc..=0xbe)
        | (0xc5, 0x89)
        | (0xc7, 0x84)
        | (0xcd, 0xba)
        | (0xd9, 0xb5 | 0xb6 | 0xb8)
        | (0xe0, 0xa5 | 0xa7)
        | (0xe1, 0xbf)
        | (0xe3, 0x89 | 0x8f)
        | (0xef, 0xad | 0xaf | 0xb5 | 0xb6 | 0xb9) => 1,
        _ => 0,
    }
}

/// The weight of a piece of text, in [`UNITS_PER_TOKEN`]ths of a token: one pass over its
/// bytes, each weighed by its kind, plus the boundaries between kinds, case flips and
/// consonant pairs that mark letters in no language.
#[must_use]
pub fn text_units(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut units = 0u64;
    let mut run = RunKind::None;
    // The byte before, and whether it was a consonant (read while in a run of letters).
    let mut before = 0u8;
    let mut consonant = false;
    // Whether the run before this one is a single space, which goes with the next word.
    let mut lone_space = false;
    for (at, &b) in bytes.iter().enumerate() {
        let Some(class) = BYTE_CLASSES.get(usize::from(b)) else {
            continue;
        };
        units += class.units;
        match class.run {
            RunKind::Letter if run == RunKind::Letter => {
                // A case flip shows in the bit that tells upper from lower case.
                units += CASE_FLIP_UNITS * u64::from(((b ^ before) >> 5) & 1);
                units += CONSONANT_PAIR_UNITS * u64::from(class.consonant && consonant);
            }
            RunKind::Space => lone_space = run != RunKind::Space && b == b' ',
            RunKind::Continuation => continue,
            RunKind::NonAscii => {
                let second = bytes.get(at + 1).copied().unwrap_or(0);
                units += expansion_tokens(b, second) * UNITS_PER_TOKEN;
            }
            _ => {}
        }
        before = b;
        consonant = class.consonant;
        if class.run != run {
            units += if run == RunKind::Space && lone_space {
                LONE_SPACE_RUN_UNITS
            } else {
                class.start
            };
            run = class.run;
        }
    }
    units
}

/// What a part of the body costs: text (in [`UNITS_PER_TOKEN`]ths of a token) and tokens
/// charged per block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub text_units: u64,
    pub block_tokens: u64,
}

impl Tally {
    fn text(text: &str) -> Tally {
        Tally {
            text_units: text_units(text),
            block_tokens: 0,
        }
    }

    fn tokens(tokens: u64) -> Tally {
        Tally {
            text_units: 0,
            block_tokens: tokens,
        }
    }

    /// Adds another part.
    pub fn add(&mut self, other: Tally) {
        self.text_units = self.text_units.saturating_add(other.text_units);
        self.block_tokens = self.block_tokens.saturating_add(other.block_tokens);
    }

    /// The estimate for this much: text by its weight, blocks at their figure, and the
    /// request's own [`REQUEST_TOKENS`].
    #[must_use]
    pub fn estimate(&self) -> u64 {
        self.text_units
            .div_ceil(UNITS_PER_TOKEN)
            .saturating_add(self.block_tokens)
            .saturating_add(REQUEST_TOKENS)
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

/// Any JSON value as it stands in the body, skipped without recursion.
struct Raw<'a>(&'a str);

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw<'de>, D::Error> {
        let raw: &'de RawValue = Deserialize::deserialize(d)?;
        Ok(Raw(raw.get()))
    }
}

/// Values of a shape the estimate does not know: strings, arrays and objects count as text
/// as they stand in the body; numbers, booleans and null cost nothing.
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
            Ok(Tally::text(s))
        }
    };
}

fn raw_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Tally, A::Error> {
    let mut tally = Tally::default();
    while let Some(Raw(text)) = seq.next_element()? {
        tally.add(Tally::text(text));
    }
    Ok(tally)
}

fn raw_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Tally, A::Error> {
    let mut tally = Tally::default();
    while let Some((Raw(k), Raw(v))) = map.next_entry()? {
        tally.add(Tally::text(k));
        tally.add(Tally::text(v));
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
                    let _: Raw = map.next_value()?;
                }
                _ => {
                    let Raw(text) = map.next_value()?;
                    tally.add(Tally::text(text));
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
                if tally.text_units > 0 {
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
            let Raw(text) = Raw::deserialize(d)?;
            return Ok(Tally::text(text));
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
        let mut source = BlockSource::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => kind = map.next_value()?,
                Key::Content => fields.add(map.next_value_seed(Content {
                    depth: self.depth.saturating_add(1),
                })?),
                Key::Source => source.add(map.next_value_seed(SourceSeed { depth: self.depth })?),
                Key::Data | Key::Other(_) => {
                    let Raw(text) = map.next_value()?;
                    fields.add(Tally::text(text));
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
struct BlockSource<'a> {
    kind: Option<KindSeen>,
    /// Length of `data` in the body (base64 characters, or a text document's text).
    data_len: u64,
    /// `data` as it stands in the body, without its quotes: weighed as text only when the
    /// source turns out to be text, never when it is an image's or a PDF's base64.
    data: &'a str,
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

impl<'a> BlockSource<'a> {
    fn add(&mut self, other: BlockSource<'a>) {
        self.kind = other.kind.or(self.kind);
        self.data_len = self.data_len.saturating_add(other.data_len);
        self.rest.add(other.rest);
        // The text of each `data` the block held.
        self.rest.add(Tally::text(self.data));
        self.data = other.data;
    }

    /// `data` weighed as text.
    fn data_as_text(&self) -> Tally {
        Tally::text(self.data)
    }

    /// A document: a PDF by its pages, a text or content source by what it holds, a
    /// document the proxy cannot see by a flat figure.
    fn document(&self) -> Tally {
        let mut tally = self.rest;
        match self.kind {
            Some(KindSeen::Base64) => tally.add(Tally::tokens(pdf_tokens(self.data_len))),
            Some(KindSeen::Text) | Some(KindSeen::Content) => tally.add(self.data_as_text()),
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
        tally.add(self.data_as_text());
        tally
    }
}

struct SourceSeed {
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for SourceSeed {
    type Value = BlockSource<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BlockSource<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SourceSeed {
    type Value = BlockSource<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a source")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<BlockSource<'de>, E> {
        Ok(BlockSource::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<BlockSource<'de>, E> {
        Ok(BlockSource::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<BlockSource<'de>, E> {
        Ok(BlockSource::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<BlockSource<'de>, E> {
        Ok(BlockSource::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<BlockSource<'de>, E> {
        Ok(BlockSource::default())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<BlockSource<'de>, E> {
        // A search result's source is its URL.
        Ok(BlockSource {
            rest: Tally::text(s),
            ..BlockSource::default()
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<BlockSource<'de>, A::Error> {
        Ok(BlockSource {
            rest: raw_seq(seq)?,
            ..BlockSource::default()
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BlockSource<'de>, A::Error> {
        let mut source = BlockSource::default();
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
                    let Raw(data) = map.next_value()?;
                    // A string without its quotes; any other value as it stands.
                    let inner = data
                        .strip_prefix('"')
                        .and_then(|d| d.strip_suffix('"'))
                        .unwrap_or(data);
                    source.rest.add(Tally::text(source.data));
                    source.data = inner;
                    source.data_len = source.data_len.saturating_add(inner.len() as u64);
                }
                Key::Content => source.rest.add(map.next_value_seed(Content {
                    depth: self.depth.saturating_add(1),
                })?),
                Key::Source | Key::Other(_) => {
                    // media_type, url, file_id: small; counted as text.
                    let Raw(text) = map.next_value()?;
                    source.rest.add(Tally::text(text));
                }
            }
        }
        Ok(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> u64 {
        text_units(text).div_ceil(UNITS_PER_TOKEN)
    }

    #[test]
    fn text_is_weighed_by_its_kind() {
        assert_eq!(text_units(""), 0);
        // A word, and a single space that goes with the next word (a lighter boundary).
        assert_eq!(
            text_units("the"),
            3 * LETTER_UNITS + CONSONANT_PAIR_UNITS + LETTER_RUN_UNITS
        );
        assert_eq!(
            text_units("the cat") + LETTER_RUN_UNITS - text_units("the") - text_units("cat"),
            SPACE_UNITS + LONE_SPACE_RUN_UNITS
        );
        // Two line ends do not go with the word after them.
        assert_eq!(
            text_units("the\n\ncat") - text_units("the") - text_units("cat"),
            2 * SPACE_UNITS + SPACE_RUN_UNITS
        );
        // Letters in no language weigh more than a word of the same length.
        assert!(text_units("xQzKvB") > text_units("people"));
        // camelCase and base64 flip case.
        assert_eq!(text_units("aZ") - text_units("az"), CASE_FLIP_UNITS);
        // Every kind of boundary: letter, digit, punctuation, control.
        assert_eq!(
            text_units("a1!\u{1}"),
            LETTER_UNITS
                + DIGIT_UNITS
                + PUNCT_UNITS
                + CONTROL_UNITS
                + LETTER_RUN_UNITS
                + DIGIT_RUN_UNITS
                + PUNCT_RUN_UNITS
                + OTHER_RUN_UNITS
        );
        // A character outside ASCII: nearly a token a byte, more where normalization spells
        // it out.
        assert_eq!(text_units("é"), 2 * NON_ASCII_BYTE_UNITS + OTHER_RUN_UNITS);
        assert_eq!(tokens("東京"), 7);
        assert_eq!(
            text_units("ﷺ"),
            3 * NON_ASCII_BYTE_UNITS + 12 * UNITS_PER_TOKEN + OTHER_RUN_UNITS
        );
        // No byte weighs more than the bound the fuzz targets check.
        for text in ["ﷺﷺﷺ", "\u{1}!\u{1}!", "aZaZaZ", "𝐀𝐁", "\u{f44}", "aaaaaaaa"] {
            assert!(
                tokens(text) <= MAX_TOKENS_PER_TEXT_BYTE * text.len() as u64,
                "{text}"
            );
            assert!(
                tokens(text) >= text.len() as u64 / MAX_TEXT_BYTES_PER_TOKEN,
                "{text}"
            );
        }
        assert!(tokens(&" ".repeat(600)) >= 600 / MAX_TEXT_BYTES_PER_TOKEN);
    }

    #[test]
    fn runs_of_short_words() {
        // The tokenizer counts each of these 1,000 words as one token: the shortest words are
        // estimated short (`docs/estimate.md`), from four letters on they are not.
        assert_eq!(tokens(&" a".repeat(1000)), 563);
        assert_eq!(tokens(&" of".repeat(1000)), 688);
        assert_eq!(tokens(&" the".repeat(1000)), 1125);
        assert_eq!(tokens(&"word ".repeat(1000)), 1252);
    }

    #[test]
    fn pdf_pages_from_length() {
        assert_eq!(pdf_tokens(0), PDF_PAGE_TOKENS);
        // 16 KiB decoded is one page; one byte more is two.
        assert_eq!(pdf_tokens(16 * 1024 / 3 * 4), PDF_PAGE_TOKENS);
        assert_eq!(pdf_tokens(16 * 1024 / 3 * 4 + 8), 2 * PDF_PAGE_TOKENS);
        assert_eq!(pdf_tokens(u64::MAX), PDF_MAX_PAGES * PDF_PAGE_TOKENS);
    }
}
