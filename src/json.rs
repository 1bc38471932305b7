//! A JSON value as far as the proxy looks at one: the fields of a request body, a token's
//! claims and an object's status that are checked, not decoded into a type of their own.
//!
//! Read as `serde_json::Value` reads it (same parse, same depth limit, same errors), but
//! without `Value`'s sorted map and number kinds, which the module would carry only for this.
//! `null` and an absent field read alike ([`Json::Null`], the default), as `Option<Value>`
//! read them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// One JSON value.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Json {
    /// `null`, or a field that is absent.
    #[default]
    Null,
    Bool(bool),
    /// A non-negative integer that fits in 64 bits.
    Unsigned(u64),
    /// A negative integer.
    Negative,
    /// Any other number (a fraction, an exponent, or an integer beyond 64 bits).
    Float(f64),
    Text(String),
    List(Vec<Json>),
    /// An object's fields in the order written (a repeated key is found at its last place).
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The string, if this is one.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The value of an object's field `key` (the last, if repeated).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The items, if this is a list.
    #[must_use]
    pub fn as_list(&self) -> Option<&[Json]> {
        match self {
            Json::List(items) => Some(items),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json, E> {
        Ok(u64::try_from(value).map_or(Json::Negative, Json::Unsigned))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json, E> {
        Ok(Json::Unsigned(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json, E> {
        // As `Value` reads a number that is not finite (JSON text has none).
        Ok(if value.is_finite() {
            Json::Float(value)
        } else {
            Json::Null
        })
    }

    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json::Text(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Json, E> {
        Ok(Json::Text(value))
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value()?;
            fields.push((key, value));
        }
        Ok(Json::Object(fields))
    }
}

/// `bytes` as text for `serde_json::from_str`, read as `serde_json::from_slice` reads the
/// bytes, so one JSON reader serves both (each reader is a copy of the whole parser).
///
/// Bytes that are UTF-8 are the text as they are. Otherwise each invalid sequence is mended
/// to fail where `from_slice` fails and pass where it passes: in a string, as an escape that
/// fails only when the string is decoded (`from_slice` checks a string's UTF-8 only then, not
/// in a value it skips); right after a backslash, as an invalid escape; elsewhere, as a
/// character that is not JSON there.
#[must_use]
pub fn as_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(mended(bytes)),
    }
}

fn mended(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().saturating_add(16));
    let (mut in_string, mut escaped) = (false, false);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            text.push(c);
            if !in_string {
                in_string = c == '"';
            } else if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        }
        if chunk.invalid().is_empty() {
            continue;
        }
        if !in_string {
            text.push(char::REPLACEMENT_CHARACTER);
        } else if escaped {
            text.push('x');
            escaped = false;
        } else {
            // A lone low surrogate: skipped as any escape, refused when decoded.
            text.push_str("\\udc00");
        }
    }
    text
}

/// The place in `names` of the variant name a unit-only enum was written as: one decoder
/// for every such enum (see [`deserialize_by_name`]), where serde's derive builds one each.
///
/// # Errors
/// A value that is not a string, or a name not in `names` (in serde's words).
pub fn variant_index<'de, D: Deserializer<'de>>(
    deserializer: D,
    names: &'static [&'static str],
) -> Result<usize, D::Error> {
    deserializer.deserialize_str(VariantName(names))
}

struct VariantName(&'static [&'static str]);

impl Visitor<'_> for VariantName {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a variant name")
    }

    fn visit_str<E: Error>(self, name: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|known| *known == name)
            .ok_or_else(|| E::unknown_variant(name, self.0))
    }
}

/// Reads an externally tagged enum's variant name (`"name"` or `{"name": ...}`) as its place
/// in `names`, through the same decoder as [`variant_index`]: for enums whose decoder is
/// written out (see `upstream::PaceReason`), where serde's derive builds a name decoder each.
pub struct VariantSeed(pub &'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for VariantSeed {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        variant_index(deserializer, self.0)
    }
}

/// Reads the fields of a struct variant written as an object (the form `serde_json` writes):
/// each field of `names` at most once, refused in the derive's words when repeated; any other
/// skipped, as the derive skips it. `read` takes the value of the field at a place in `names`.
///
/// # Errors
/// What the map's reader refuses, a repeated field, or what `read` refuses.
pub fn read_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    names: &'static [&'static str],
    mut read: impl FnMut(usize, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    let mut seen = 0u64;
    while let Some(field) = map.next_key_seed(FieldSeed(names))? {
        match field {
            Some(at) => {
                if seen & (1 << at) != 0 {
                    let name = names.get(at).copied().unwrap_or_default();
                    return Err(A::Error::duplicate_field(name));
                }
                seen |= 1 << at;
                read(at, &mut map)?;
            }
            None => {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
    }
    Ok(())
}

/// A field's name as its place in the names looked at, `None` for another.
struct FieldSeed(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for FieldSeed {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Option<usize>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("field identifier")
    }

    fn visit_str<E: Error>(self, name: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|known| *known == name))
    }
}

/// A required field's value, or serde's words for its absence.
///
/// # Errors
/// The field was not given.
pub fn required<T, E: Error>(value: Option<T>, name: &'static str) -> Result<T, E> {
    value.ok_or_else(|| E::missing_field(name))
}

/// Reads a struct variant of one required number field (`{"until_ms": 5}`).
pub struct OneNumber(pub &'static [&'static str]);

impl<'de> Visitor<'de> for OneNumber {
    type Value = u64;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("struct variant")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u64, A::Error> {
        let mut value = None;
        read_fields(map, self.0, |_, map| {
            value = Some(map.next_value()?);
            Ok(())
        })?;
        required(value, self.0.first().copied().unwrap_or_default())
    }
}

/// An enum of struct variants read as its derive reads what `serde_json` writes: the variant
/// by name ([`VariantSeed`]), then its fields from the object form (the derive also read an
/// array form nothing writes). The enum says its names, each variant's fields and how a
/// variant is made of what was read.
pub trait StructVariants: Sized {
    /// The enum's name, for the errors.
    const ENUM: &'static str;
    /// The variants' names, as `Serialize` writes them.
    const NAMES: &'static [&'static str];
    /// Each variant's field names, in the order of [`StructVariants::NAMES`].
    const FIELDS: &'static [&'static [&'static str]];
    /// What each variant is called in an error (`struct variant E::V`).
    const EXPECTING: &'static [&'static str];

    /// The variant at `variant`, from its fields.
    ///
    /// # Errors
    /// A field is missing, repeated, unknown or of the wrong type.
    fn read_variant<'de, A: MapAccess<'de>>(variant: usize, map: A) -> Result<Self, A::Error>;
}

/// Reads `T` through [`StructVariants`].
///
/// # Errors
/// The variant's name is unknown, or its fields do not read.
pub fn deserialize_struct_variants<'de, T: StructVariants, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_enum(T::ENUM, T::NAMES, EnumOf(std::marker::PhantomData::<T>))
}

/// The variant by name, then its fields.
struct EnumOf<T>(std::marker::PhantomData<T>);

impl<'de, T: StructVariants> Visitor<'de> for EnumOf<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "enum {}", T::ENUM)
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<T, A::Error> {
        use serde::de::VariantAccess;
        let (at, variant) = data.variant_seed(VariantSeed(T::NAMES))?;
        let fields = T::FIELDS.get(at).copied().unwrap_or_default();
        variant.struct_variant(fields, FieldsOf(at, std::marker::PhantomData::<T>))
    }
}

/// The fields of the variant at this index.
struct FieldsOf<T>(usize, std::marker::PhantomData<T>);

impl<'de, T: StructVariants> Visitor<'de> for FieldsOf<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(T::EXPECTING.get(self.0).copied().unwrap_or_default())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::read_variant(self.0, map)
    }
}

/// `Deserialize` for an enum of unit variants from the names its derived `Serialize` writes,
/// through [`variant_index`]. Only the string form is read: the `{"name": null}` form the
/// derive also reads is one nothing writes.
macro_rules! deserialize_by_name {
    ($enum:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $enum {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($name),+];
                const ALL: &[$enum] = &[$($enum::$variant),+];
                let at = $crate::json::variant_index(deserializer, NAMES)?;
                ALL.get(at)
                    .copied()
                    .ok_or_else(|| serde::de::Error::unknown_variant("", NAMES))
            }
        }
    };
}
pub(crate) use deserialize_by_name;

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Json, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    fn value(text: &str) -> Result<serde_json::Value, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_each_kind_as_value_reads_it() {
        assert_eq!(read("null"), Ok(Json::Null));
        assert_eq!(read("true"), Ok(Json::Bool(true)));
        assert_eq!(read("7"), Ok(Json::Unsigned(7)));
        assert_eq!(read("-7"), Ok(Json::Negative));
        assert_eq!(read("1.5"), Ok(Json::Float(1.5)));
        assert_eq!(read("1e3"), Ok(Json::Float(1000.0)));
        assert_eq!(read("-0"), Ok(Json::Float(-0.0)));
        assert_eq!(
            read("18446744073709551616"),
            Ok(Json::Float(18_446_744_073_709_551_616.0))
        );
        assert_eq!(read(r#""a\u00e9""#), Ok(Json::Text("aé".to_string())));
        assert_eq!(
            read(r#"[1, "x", []]"#),
            Ok(Json::List(vec![
                Json::Unsigned(1),
                Json::Text("x".to_string()),
                Json::List(Vec::new())
            ]))
        );
        let object = read(r#"{"a": 1, "b": {"c": null}, "a": 2}"#).unwrap();
        assert_eq!(object.get("a"), Some(&Json::Unsigned(2)));
        assert_eq!(object.get("b").and_then(|b| b.get("c")), Some(&Json::Null));
        assert_eq!(object.get("z"), None);
        assert_eq!(Json::Unsigned(1).get("a"), None);
    }

    #[test]
    fn numbers_agree_with_value() {
        for text in [
            "0",
            "1",
            "-1",
            "-0",
            "0.0",
            "1.0",
            "2.5e2",
            "-2.5",
            "1e-400",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
        ] {
            let json = read(text).unwrap();
            let value = value(text).unwrap();
            let number = value.as_number().unwrap();
            match json {
                Json::Unsigned(n) => assert_eq!(number.as_u64(), Some(n), "{text}"),
                Json::Negative => assert!(number.as_i64().is_some_and(|n| n < 0), "{text}"),
                Json::Float(f) => {
                    assert!(
                        number.as_u64().is_none() && number.as_i64().is_none(),
                        "{text}"
                    );
                    assert_eq!(
                        number.as_f64().map(f64::to_bits),
                        Some(f.to_bits()),
                        "{text}"
                    );
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_what_value_refuses_with_the_same_words() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep_object = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        for text in [
            "",
            "[1,",
            r#"{"a" 1}"#,
            "1.",
            "1e400",
            r#""\ud800""#,
            r#"{"\ud800": 1}"#,
            r#""\x""#,
            "nul",
            "[1] 2",
            &deep,
            &deep_object,
        ] {
            let refused = read(text).unwrap_err();
            assert_eq!(Err(refused), value(text).map(|_| ()), "{text}");
        }
    }

    #[test]
    fn a_variant_name_reads_as_its_place() {
        const NAMES: &[&str] = &["day", "month"];
        let read = |text: &str| {
            variant_index(&mut serde_json::Deserializer::from_str(text), NAMES)
                .map_err(|e| e.to_string())
        };
        assert_eq!(read(r#""month""#), Ok(1));
        assert_eq!(
            read(r#""week""#),
            Err("unknown variant `week`, expected `day` or `month` at line 1 column 6".to_string())
        );
        assert!(read("1").is_err());
        assert!(read(r#"{"day": null}"#).is_err());
    }

    fn reads_what_it_writes<T>(all: &[T])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        for variant in all {
            let text = serde_json::to_string(variant).unwrap();
            assert_eq!(
                &serde_json::from_str::<T>(&text).unwrap(),
                variant,
                "{text}"
            );
        }
    }

    #[test]
    fn enums_read_by_name_read_every_name_they_write() {
        use crate::limits::Dimension;
        use crate::upstream::{LimitDimension, Priority, WaitReason};
        reads_what_it_writes(&Dimension::ALL);
        reads_what_it_writes(&LimitDimension::ALL);
        reads_what_it_writes(&[Priority::Interactive, Priority::Background]);
        use crate::upstream::{PaceReason, RefuseReason};
        let paced = [
            PaceReason::Capacity,
            PaceReason::KeyLimit(LimitDimension::Requests),
            PaceReason::KeyLimit(LimitDimension::OutputTokens),
        ];
        reads_what_it_writes(&paced);
        reads_what_it_writes(&[
            RefuseReason::Cooldown,
            RefuseReason::Overloaded,
            RefuseReason::RetryBudget,
            RefuseReason::Paced(paced[0]),
            RefuseReason::Paced(paced[2]),
        ]);
        // The other forms the derive read, and its words for what it refused.
        let read =
            |text: &str| serde_json::from_str::<RefuseReason>(text).map_err(|e| e.to_string());
        assert_eq!(read(r#"{"cooldown": null}"#), Ok(RefuseReason::Cooldown));
        assert_eq!(
            read(r#"{"paced": {"key_limit": "input_tokens"}}"#),
            Ok(RefuseReason::Paced(PaceReason::KeyLimit(
                LimitDimension::InputTokens
            )))
        );
        assert_eq!(
            read(r#""later""#),
            Err("unknown variant `later`, expected one of `cooldown`, `overloaded`, `retry_budget`, `paced` at line 1 column 7".to_string())
        );
        assert!(read(r#""paced""#).is_err());
        assert!(read(r#"{"cooldown": 1}"#).is_err());
        use crate::upstream::{Change, Gate, ProbeTicket, Reply};
        reads_what_it_writes(&[
            Gate::Go { probe: None },
            Gate::Go {
                probe: Some(ProbeTicket(7)),
            },
            Gate::Wait {
                until_ms: 5,
                reason: WaitReason::Queued,
            },
            Gate::Scheduled {
                at_ms: 6,
                reason: paced[1],
            },
            Gate::Refuse {
                retry_after_ms: 9,
                reason: RefuseReason::Paced(paced[0]),
            },
        ]);
        reads_what_it_writes(&[
            Reply::Success,
            Reply::Overloaded,
            Reply::RateLimited {
                retry_after_ms: None,
            },
            Reply::RateLimited {
                retry_after_ms: Some(3),
            },
            Reply::OtherFailure,
        ]);
        reads_what_it_writes(&[
            Change::Nothing,
            Change::Cooldown { until_ms: 1 },
            Change::MarkedOverloaded { next_probe_ms: 2 },
            Change::ProbeFailed { next_probe_ms: 3 },
            Change::Recovering { window_ms: 4 },
        ]);
        // Fields as the derive read them: others skipped, a repeat or a missing one refused.
        let gate = |text: &str| serde_json::from_str::<Gate>(text).map_err(|e| e.to_string());
        assert_eq!(
            gate(r#"{"wait": {"later": [1], "reason": "queued", "until_ms": 4}}"#),
            Ok(Gate::Wait {
                until_ms: 4,
                reason: WaitReason::Queued
            })
        );
        assert_eq!(gate(r#"{"go": {}}"#), Ok(Gate::Go { probe: None }));
        // The same words, at the same place, as the derive's.
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[allow(dead_code)]
        enum Derived {
            Go {
                probe: Option<ProbeTicket>,
            },
            Wait {
                until_ms: u64,
                reason: WaitReason,
            },
            Scheduled {
                at_ms: u64,
                reason: PaceReason,
            },
            Refuse {
                retry_after_ms: u64,
                reason: RefuseReason,
            },
        }
        for text in [
            r#"{"wait": {"until_ms": 4}}"#,
            r#"{"wait": {"until_ms": 4, "until_ms": 5, "reason": "queued"}}"#,
            r#"{"refuse": {"reason": "cooldown"}}"#,
            r#"{"later": {}}"#,
            r#"{"go": {"probe": 1, "probe": 2}}"#,
            r#"{"scheduled": {"at_ms": 1, "reason": "capacity"} "#,
        ] {
            let derived = serde_json::from_str::<Derived>(text).map_err(|e| e.to_string());
            assert_eq!(gate(text).unwrap_err(), derived.unwrap_err(), "{text}");
        }
        assert!(gate(r#""go""#).is_err());
        assert_eq!(
            serde_json::from_str::<Reply>(r#"{"rate_limited": {}}"#).ok(),
            Some(Reply::RateLimited {
                retry_after_ms: None
            })
        );
        assert!(serde_json::from_str::<Change>(r#"{"cooldown": {}}"#).is_err());
        reads_what_it_writes(&[
            WaitReason::Cooldown,
            WaitReason::Overloaded,
            WaitReason::Recovering,
            WaitReason::Queued,
        ]);
    }

    /// A shape like the upstream answers read from bytes: typed strings and numbers, nested.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Answer {
        key: Option<String>,
        n: Option<u64>,
        inner: Option<Box<Answer>>,
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(b"a".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"\\\"".to_vec()),
            Just(b"\\u".to_vec()),
            Just(b"dc00".to_vec()),
            Just(b"\\ud83d\\ude00".to_vec()),
            Just(vec![0xff]),
            Just(vec![0xc3]),
            Just(vec![0xc3, 0xa9]),
            Just(vec![0xed, 0xa0, 0x80]),
            Just(b"{".to_vec()),
            Just(b"}".to_vec()),
            Just(b":".to_vec()),
            Just(b",".to_vec()),
            Just(b"1".to_vec()),
            Just(b"\"key\"".to_vec()),
            Just(b"\"inner\"".to_vec()),
        ]
    }

    fn text(pieces: &[Vec<u8>]) -> Vec<u8> {
        pieces.concat()
    }

    proptest::proptest! {
        #[test]
        fn bytes_read_as_text_read_as_from_slice_reads_them(
            key in proptest::collection::vec(piece(), 0..4),
            skipped in proptest::collection::vec(piece(), 0..4),
            field in proptest::collection::vec(piece(), 0..3),
            inner in proptest::collection::vec(piece(), 0..4),
            loose in proptest::collection::vec(piece(), 0..12),
        ) {
            let shaped = [
                b"{\"key\": \"".to_vec(), text(&key),
                b"\", \"skipped\": [\"".to_vec(), text(&skipped),
                b"\"], \"".to_vec(), text(&field),
                b"\": 1, \"inner\": {\"key\": \"".to_vec(), text(&inner),
                b"\"}}".to_vec(),
            ]
            .concat();
            for bytes in [shaped, text(&loose)] {
                let by_slice = serde_json::from_slice::<Answer>(&bytes).ok();
                let by_text = serde_json::from_str::<Answer>(&as_text(&bytes)).ok();
                proptest::prop_assert_eq!(by_text, by_slice, "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_pass_only_where_they_are_skipped() {
        let read = |bytes: &[u8]| serde_json::from_str::<Answer>(&as_text(bytes)).ok();
        let skipped = b"{\"key\": \"k\", \"other\": \"\xff\"}";
        assert_eq!(
            read(skipped),
            serde_json::from_slice::<Answer>(skipped).ok()
        );
        assert_eq!(read(skipped).and_then(|a| a.key).as_deref(), Some("k"));
        for refused in [
            &b"{\"key\": \"\xff\"}"[..],
            b"{\"k\xffey\": 1}",
            b"{\"key\": \"\\\xff\"}",
            b"{\"n\": 1\xff}",
        ] {
            assert!(serde_json::from_slice::<Answer>(refused).is_err());
            assert_eq!(read(refused), None);
        }
    }
}
