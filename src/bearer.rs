//! Reading the bearer token out of the `Authorization` header (RFC 6750 §2.1).
//!
//! ```
//! use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
//! use tower_api_keys::bearer::bearer_token;
//!
//! let mut headers = HeaderMap::new();
//! assert_eq!(bearer_token(&headers), Ok(None));
//! headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer  sk_test_abc "));
//! assert_eq!(bearer_token(&headers), Ok(Some("sk_test_abc")));
//! ```

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::error::{AuthError, InvalidRequest};

/// The bearer token of a request.
///
/// - no `Authorization` header, or another scheme (`Basic …`): `Ok(None)`;
/// - the scheme is matched case-insensitively, and spaces around the token are ignored;
/// - two `Authorization` headers, `Bearer` with no token, or a token with characters
///   outside RFC 6750's `b64token` (`A-Z a-z 0-9 - . _ ~ + /` then `=`s): 400
///   `invalid_request`.
///
/// Never panics, whatever the header bytes.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    match bearer_bytes(headers)? {
        Some(token) => checked_token(token).map(Some),
        None => Ok(None),
    }
}

/// The Bearer token's bytes, their characters not yet checked (see [`checked_token`]):
/// what the cache's token index needs to answer a token it has seen, checked then.
pub(crate) fn bearer_bytes(headers: &HeaderMap) -> Result<Option<&[u8]>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::InvalidRequest(InvalidRequest::DuplicateHeader));
    }
    let value = value.as_bytes();
    // What nearly every client sends, `Bearer <token>`, read without a search.
    let rest = match value.split_at_checked(7) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
        _ => match after_scheme(value) {
            Some(rest) => rest,
            None => return Ok(None),
        },
    };
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(AuthError::InvalidRequest(InvalidRequest::EmptyToken));
    }
    Ok(Some(token))
}

/// What follows the `Bearer` scheme (any case, spaces and tabs around it) in a header
/// value; `None` for another scheme.
fn after_scheme(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = match value.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(at) => value.split_at(at),
        None => (value, &[][..]),
    };
    scheme.eq_ignore_ascii_case(b"bearer").then_some(rest)
}

/// `token` as a string, if it is an RFC 6750 `b64token`.
pub(crate) fn checked_token(token: &[u8]) -> Result<&str, AuthError> {
    if !is_b64token(token) {
        return Err(AuthError::InvalidRequest(InvalidRequest::IllegalCharacters));
    }
    std::str::from_utf8(token)
        .map_err(|_| AuthError::InvalidRequest(InvalidRequest::IllegalCharacters))
}

/// RFC 6750 `b64token` body characters: `A-Z a-z 0-9 - . _ ~ + /`.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &[u8]) -> bool {
    let body_end = token
        .iter()
        .rposition(|b| *b != b'=')
        .map_or(0, |at| at + 1);
    body_end > 0 && token[..body_end].iter().all(|&b| B64TOKEN[b as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn token_of(raw: &[u8]) -> Result<Option<String>, AuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_bytes(raw).unwrap());
        bearer_token(&headers).map(|t| t.map(str::to_owned))
    }

    #[test]
    fn reads_the_token_whatever_the_scheme_case_and_spacing() {
        for raw in [
            &b"Bearer sk_1"[..],
            b"bearer sk_1",
            b"BEARER sk_1",
            b"Bearer    sk_1",
            b"  Bearer\tsk_1  ",
        ] {
            assert_eq!(token_of(raw), Ok(Some("sk_1".into())), "{raw:?}");
        }
        assert_eq!(token_of(b"Bearer abc=="), Ok(Some("abc==".into())));
    }

    /// What `bearer_bytes` reads without its fast path for `Bearer <token>`.
    fn general(value: &[u8]) -> Result<Option<&[u8]>, AuthError> {
        match after_scheme(value).map(<[u8]>::trim_ascii) {
            None => Ok(None),
            Some([]) => Err(AuthError::InvalidRequest(InvalidRequest::EmptyToken)),
            Some(token) => Ok(Some(token)),
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_reads_what_the_general_one_does(
            scheme in "(Bearer|bearer|BEARER|BeArEr|Basic|Bearerx|)",
            before in "[ \t]{0,2}",
            between in "[ \t]{0,3}",
            token in "[a-zA-Z0-9_=\t ]{0,12}",
        ) {
            let value = format!("{before}{scheme}{between}{token}");
            let Ok(header) = HeaderValue::from_str(&value) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, header);
            proptest::prop_assert_eq!(bearer_bytes(&headers), general(value.as_bytes()));
        }
    }

    #[test]
    fn other_schemes_are_no_key() {
        assert_eq!(token_of(b"Basic dXNlcjpwYXNz"), Ok(None));
        assert_eq!(token_of(b"Bearersk_1"), Ok(None));
        assert_eq!(token_of(b""), Ok(None));
    }

    #[test]
    fn malformed_headers_are_invalid_requests() {
        let bad = |r| AuthError::InvalidRequest(r);
        assert_eq!(token_of(b"Bearer"), Err(bad(InvalidRequest::EmptyToken)));
        assert_eq!(token_of(b"Bearer   "), Err(bad(InvalidRequest::EmptyToken)));
        assert_eq!(
            token_of(b"Bearer a b"),
            Err(bad(InvalidRequest::IllegalCharacters))
        );
        assert_eq!(
            token_of(b"Bearer ==="),
            Err(bad(InvalidRequest::IllegalCharacters))
        );
        assert_eq!(
            token_of(b"Bearer a=b"),
            Err(bad(InvalidRequest::IllegalCharacters))
        );
        assert_eq!(
            token_of(b"Bearer sk_\xc3\xa9\xff"),
            Err(bad(InvalidRequest::IllegalCharacters))
        );
        // Only the last character illegal (before any `=` padding): still refused.
        for raw in [&b"Bearer sk_live_abc!"[..], b"Bearer abc\"==", b"Bearer a@"] {
            assert_eq!(
                token_of(raw),
                Err(bad(InvalidRequest::IllegalCharacters)),
                "{raw:?}"
            );
        }

        let mut headers = HeaderMap::new();
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(
            bearer_token(&headers),
            Err(bad(InvalidRequest::DuplicateHeader))
        );
    }
}
