//! The simulator's token count, independent of the proxy's estimate: text through a real
//! byte-pair tokenizer, images and PDF pages through Anthropic's published rules.
//!
//! Text: the Claude tokenizer's ranks, as Anthropic ships them in the npm package
//! `@anthropic-ai/tokenizer` (`claude.json`), NFKC-normalized and encoded with every special
//! token allowed, as that package's `countTokens` does, by tiktoken's BPE (vendored by
//! `tiktoken-rs`, the same algorithm the package runs as wasm). The ranks are read once, at
//! start, from [`VOCAB_ENV`], else `node_modules/@anthropic-ai/tokenizer/claude.json` under
//! the working directory or the workspace (`npm ci` puts it there).
//!
//! Images: `width × height / 750` tokens after scaling to fit a long edge of 1,568 px and
//! about 1,600 tokens (1.2 megapixels); the size is read from the PNG, JPEG, GIF or WebP
//! header of base64 data. An image whose size the simulator cannot see (a URL, a file id,
//! data it cannot read) costs [`MAX_IMAGE_TOKENS`], the most a scaled image costs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::Value;
use tiktoken_rs::CoreBPE;
use unicode_normalization::UnicodeNormalization;

/// Names a `claude.json` to read instead of the one under `node_modules`.
pub const VOCAB_ENV: &str = "BREAKWATER_SIM_VOCAB";
/// Where `npm ci` puts the ranks, under the working directory or the workspace.
const VOCAB_IN_NODE_MODULES: &str = "node_modules/@anthropic-ai/tokenizer/claude.json";

/// The longest edge Anthropic keeps before scaling an image down.
pub const MAX_IMAGE_EDGE: u64 = 1_568;
/// Pixels per image token.
pub const PIXELS_PER_TOKEN: u64 = 750;
/// The most an image costs once scaled (1.2 megapixels, e.g. 1092×1092 is about 1,590).
pub const MAX_IMAGE_TOKENS: u64 = 1_600;

/// The Claude tokenizer.
pub struct Tokenizer {
    bpe: CoreBPE,
}

impl Tokenizer {
    /// Reads a `claude.json`: `bpe_ranks` in tiktoken's compact form (`! <first rank>`, then
    /// base64 tokens of consecutive ranks), `special_tokens` and `pat_str`.
    pub fn load(path: &Path) -> Result<Tokenizer, String> {
        let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: Value =
            serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
        let field = |name: &str| {
            file.get(name)
                .ok_or_else(|| format!("{}: no {name}", path.display()))
        };
        let ranks = field("bpe_ranks")?
            .as_str()
            .ok_or("bpe_ranks is not a string")?;
        let pattern = field("pat_str")?
            .as_str()
            .ok_or("pat_str is not a string")?;
        let mut special = HashMap::new();
        for (name, rank) in field("special_tokens")?
            .as_object()
            .ok_or("special_tokens is not an object")?
        {
            let rank = rank
                .as_u64()
                .ok_or("a special token's rank is not a number")?;
            special.insert(name.clone(), rank as u32);
        }
        let encoder = parse_ranks(ranks)?;
        let bpe = CoreBPE::new(
            encoder.into_iter().collect(),
            special.into_iter().collect(),
            pattern,
        )
        .map_err(|e| e.to_string())?;
        Ok(Tokenizer { bpe })
    }

    /// Tokens of one piece of text.
    pub fn count(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let normalized: String = text.nfkc().collect();
        self.bpe.encode_with_special_tokens(&normalized).len() as u64
    }
}

/// The compact rank list: `! 5 IQ== Ig== ...` gives `!` rank 5, `"` rank 6, and so on; more
/// than one `!` group may follow.
fn parse_ranks(ranks: &str) -> Result<HashMap<Vec<u8>, u32>, String> {
    let mut encoder = HashMap::new();
    let mut next: Option<u32> = None;
    let mut words = ranks.split_ascii_whitespace();
    while let Some(word) = words.next() {
        if word == "!" {
            let first = words.next().ok_or("bpe_ranks: `!` without a rank")?;
            next = Some(first.parse().map_err(|_| "bpe_ranks: bad rank")?);
            continue;
        }
        let rank = next.ok_or("bpe_ranks: a token before the first rank")?;
        let token = base64::engine::general_purpose::STANDARD
            .decode(word)
            .map_err(|_| "bpe_ranks: a token is not base64")?;
        if encoder.insert(token, rank).is_some() {
            return Err("bpe_ranks: a token appears twice".into());
        }
        next = Some(rank.saturating_add(1));
    }
    if encoder.is_empty() {
        return Err("bpe_ranks: no tokens".into());
    }
    Ok(encoder)
}

/// Where the ranks are read from: [`VOCAB_ENV`], else the first `node_modules` copy found
/// under the working directory or the workspace.
pub fn vocab_path() -> PathBuf {
    if let Some(p) = std::env::var_os(VOCAB_ENV) {
        return PathBuf::from(p);
    }
    let here = PathBuf::from(VOCAB_IN_NODE_MODULES);
    if here.is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(VOCAB_IN_NODE_MODULES)
}

static TOKENIZER: OnceLock<Result<Tokenizer, String>> = OnceLock::new();

/// The tokenizer, read on first use; the binary and [`crate::serve`] read it before they
/// answer anything, so a missing vocabulary stops the simulator at start.
pub fn tokenizer() -> Result<&'static Tokenizer, String> {
    TOKENIZER
        .get_or_init(|| {
            let path = vocab_path();
            Tokenizer::load(&path).map_err(|e| {
                format!("the Claude tokenizer's ranks: {e} (run `npm ci`, or set {VOCAB_ENV})")
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Tokens of a piece of text. Unreachable without a tokenizer (start fails first); should it
/// ever be, every byte counts as a token, which no BPE count exceeds.
pub fn text_tokens(text: &str) -> u64 {
    match tokenizer() {
        Ok(t) => t.count(text),
        Err(_) => text.len() as u64,
    }
}

/// Tokens of an image of this size: scaled (keeping its aspect) to fit a long edge of
/// [`MAX_IMAGE_EDGE`] and [`MAX_IMAGE_TOKENS`], then `width × height / 750`, at least 1.
pub fn image_tokens(width: u64, height: u64) -> u64 {
    let (w, h) = (width.max(1) as f64, height.max(1) as f64);
    let max_pixels = (MAX_IMAGE_TOKENS * PIXELS_PER_TOKEN) as f64;
    let scale = (MAX_IMAGE_EDGE as f64 / w.max(h))
        .min((max_pixels / (w * h)).sqrt())
        .min(1.0);
    let (w, h) = ((w * scale).floor().max(1.0), (h * scale).floor().max(1.0));
    ((w * h / PIXELS_PER_TOKEN as f64).ceil() as u64).clamp(1, MAX_IMAGE_TOKENS)
}

/// Width and height from the header of a PNG, GIF, WebP or JPEG file.
pub fn image_size(b: &[u8]) -> Option<(u64, u64)> {
    let be16 = |i: usize| -> Option<u64> {
        Some(u64::from(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])))
    };
    let le16 = |i: usize| -> Option<u64> {
        Some(u64::from(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?])))
    };
    let be32 = |i: usize| -> Option<u64> {
        Some(u64::from(u32::from_be_bytes(
            b.get(i..i + 4)?.try_into().ok()?,
        )))
    };
    let le24 = |i: usize| -> Option<u64> {
        Some(
            u64::from(*b.get(i)?)
                | u64::from(*b.get(i + 1)?) << 8
                | u64::from(*b.get(i + 2)?) << 16,
        )
    };
    if b.starts_with(b"\x89PNG\r\n\x1a\n") && b.get(12..16) == Some(b"IHDR") {
        return Some((be32(16)?, be32(20)?));
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        return Some((le16(6)?, le16(8)?));
    }
    if b.starts_with(b"RIFF") && b.get(8..12) == Some(b"WEBP") {
        return match b.get(12..16)? {
            b"VP8 " => Some((le16(26)? & 0x3fff, le16(28)? & 0x3fff)),
            b"VP8L" => {
                let bits = le24(21)? | u64::from(*b.get(24)?) << 24;
                Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
            }
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            _ => None,
        };
    }
    if b.starts_with(&[0xff, 0xd8]) {
        // Walk the segments to the first start-of-frame marker.
        let mut i = 2;
        while i + 4 <= b.len() {
            if *b.get(i)? != 0xff {
                return None;
            }
            let marker = *b.get(i + 1)?;
            if marker == 0xff {
                i += 1;
                continue;
            }
            let len = be16(i + 2)? as usize;
            let sof = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
            if sof {
                return Some((be16(i + 7)?, be16(i + 5)?));
            }
            i = i.checked_add(2 + len)?;
        }
    }
    None
}

/// Tokens of an image block: by its size when its base64 data shows it, else
/// [`MAX_IMAGE_TOKENS`].
pub fn image_block_tokens(source: Option<&Value>) -> u64 {
    let data = source
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("base64"))
        .and_then(|s| s.get("data"))
        .and_then(Value::as_str);
    data.and_then(|d| {
        base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .ok()
    })
    .and_then(|bytes| image_size(&bytes))
    .map_or(MAX_IMAGE_TOKENS, |(w, h)| image_tokens(w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_in_compact_form() {
        let e = parse_ranks("! 5 IQ== Ig== ! 9 YWI=").unwrap();
        assert_eq!(e.get(&b"!"[..]), Some(&5));
        assert_eq!(e.get(&b"\""[..]), Some(&6));
        assert_eq!(e.get(&b"ab"[..]), Some(&9));
        assert!(parse_ranks("IQ==").is_err());
        assert!(parse_ranks("! 5 IQ== IQ==").is_err());
        assert!(parse_ranks("").is_err());
    }

    #[test]
    fn counts_text_like_the_npm_package() {
        // Figures from `countTokens` of npm @anthropic-ai/tokenizer 0.0.4.
        let t = tokenizer().unwrap();
        assert_eq!(t.count("hello world"), 2);
        assert_eq!(t.count("日本語のテキストです。"), 10);
        assert_eq!(t.count("12345678901234567890"), 3);
        assert_eq!(t.count("{\"a\": [1,2,3]}"), 10);
        // NFKC: full-width letters are plain ones.
        assert_eq!(t.count("ｈｅｌｌｏ"), 1);
        assert_eq!(t.count("<EOT>"), 1);
        assert_eq!(t.count(""), 0);
    }

    #[test]
    fn image_sizes_and_tokens() {
        assert_eq!(image_tokens(200, 200), 54);
        assert_eq!(image_tokens(1000, 1000), 1334);
        assert_eq!(image_tokens(1092, 1092), 1590);
        // Scaled to fit: a 4000×3000 photo and a 1568-wide strip.
        assert_eq!(image_tokens(4000, 3000), 1598);
        assert_eq!(image_tokens(3136, 100), 1568 * 50 / 750 + 1);
        assert_eq!(image_tokens(0, 0), 1);
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        assert_eq!(image_size(&png), Some((640, 480)));
        assert_eq!(image_size(b"GIF89a\x20\x03\x58\x02"), Some((800, 600)));
        let jpeg = [
            0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0, 0xff, 0xc0, 0, 11, 8, 0x01, 0x2c, 0x01, 0x90,
        ];
        assert_eq!(image_size(&jpeg), Some((400, 300)));
        assert_eq!(image_size(b"\xff\xd8\xff"), None);
        assert_eq!(image_size(b"not an image"), None);
    }
}
