//! Looking up a header by name: one rule (the first value, any case) for every list of
//! headers the proxy reads. It depends on nothing, so any module may use it.

/// The first value of the header `name` (any case) among `headers`: the one lookup by name
/// for every list of headers the proxy reads.
#[must_use]
pub fn header_in<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    name: &str,
) -> Option<&'h str> {
    headers
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}
