//! Percent-decoding, as axum decodes `Path` parameters (for project ids, and for
//! scrubbing percent-encoded passwords out of error messages).

use std::borrow::Cow;

/// `text` percent-decoded (borrowed when it has no `%`), or `None` if it does not
/// decode to UTF-8. A `%` not followed by two hex digits stays as it is, as axum reads
/// it.
pub(crate) fn decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains('%') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}
