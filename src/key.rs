//! Key format, the secret key type, its hash and its public id.
//!
//! A generated key reads `{prefix}_{environment}_{body}{checksum}`, for example
//! `sk_live_4eC39HqLyjWDarjtT1zdp7dc…0a1B2c`:
//!
//! - `prefix` and `environment` make a leaked key recognisable (secret scanners match
//!   them) and tell live keys from test keys at a glance;
//! - `body` is 43 base62 characters from the operating system's CSPRNG (256 bits);
//! - `checksum` is 6 base62 characters of a CRC32 over everything before it, the scheme
//!   GitHub uses for its tokens: a typo, a truncated paste or a random string is rejected
//!   by [`KeyFormat::parse`] without touching the cache or the store. (CRC32 is public, so
//!   it is no defence against someone forging checksums; such keys are unknown to the
//!   store and end in the cache's negative entries.)
//!
//! The server stores only the [`KeyHash`] (SHA-256 of the whole key) and a [hint](ApiKey::hint)
//! (the last four characters); the plaintext [`ApiKey`] is shown once.
//!
//! ```
//! use tower_api_keys::key::{Environment, KeyFormat, KeyHash};
//!
//! let format = KeyFormat::new("sk");
//! let key = format.generate(&Environment::LIVE);
//! assert!(key.expose_secret().starts_with("sk_live_"));
//!
//! let parsed = format.parse(key.expose_secret()).unwrap();
//! assert_eq!(parsed.environment(), &Environment::LIVE);
//! assert_eq!(KeyHash::of(key.expose_secret()), key.hash());
//!
//! // One wrong character and the checksum catches it.
//! let mut typo = key.expose_secret().to_owned();
//! typo.replace_range(10..11, if &typo[10..11] == "a" { "b" } else { "a" });
//! assert!(format.parse(&typo).is_err());
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Whether a byte is a base62 character.
const IS_BASE62: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < BASE62.len() {
        table[BASE62[i] as usize] = true;
        i += 1;
    }
    table
};
/// Characters of random body in a generated key: 43 × log2(62) ≥ 256 bits.
const DEFAULT_BODY_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
/// Bounds for keys imported without a checksum (see [`KeyFormat::accept_unchecksummed`]
/// and [`KeyFormat::accept_legacy_prefix`]).
const LEGACY_MIN_BODY: usize = 16;
const LEGACY_MAX_BODY: usize = 256;
/// Characters of random body in a [`KeyId`].
const KEY_ID_LEN: usize = 24;

/// The environment a key belongs to: `live`, `test`, or a custom tag such as `staging`.
///
/// A deployment declares which environment it serves (see
/// [`ApiKeyLayer::environment`](crate::ApiKeyLayer::environment)); a key of another
/// environment is answered with 401 `environment_mismatch`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Environment(Cow<'static, str>);

impl Environment {
    /// Production keys: `sk_live_…`.
    pub const LIVE: Environment = Environment(Cow::Borrowed("live"));
    /// Test/sandbox keys: `sk_test_…`.
    pub const TEST: Environment = Environment(Cow::Borrowed("test"));

    /// A custom environment tag. Tags are 1–16 ASCII letters or digits.
    ///
    /// # Panics
    /// If the tag is empty, longer than 16 characters or not alphanumeric: tags are
    /// configuration, written by the developer, never parsed from a request.
    #[must_use]
    pub fn new(tag: impl Into<Cow<'static, str>>) -> Self {
        let tag = tag.into();
        assert!(
            is_valid_tag(&tag, 16),
            "environment tag must be 1-16 ASCII letters or digits, got {tag:?}"
        );
        Environment(tag)
    }

    /// A tag read from storage or input: `None` unless 1–16 ASCII letters or digits.
    #[must_use]
    pub fn parse(tag: &str) -> Option<Self> {
        match tag {
            "live" => Some(Environment::LIVE),
            "test" => Some(Environment::TEST),
            _ if is_valid_tag(tag, 16) => Some(Environment(Cow::Owned(tag.to_owned()))),
            _ => None,
        }
    }

    /// The tag as it appears in keys (`live`, `test`, …).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Environment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn is_valid_tag(tag: &str, max: usize) -> bool {
    !tag.is_empty() && tag.len() <= max && tag.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// How keys look: prefix, environment tags, body length, checksum.
///
/// Cheap to clone. See the [module docs](self) for the layout.
#[derive(Clone)]
pub struct KeyFormat {
    prefix: Arc<str>,
    environments: Arc<[Environment]>,
    body_len: usize,
    accept_unchecksummed: bool,
    /// Other prefixes whose keys are accepted without a checksum.
    legacy_prefixes: Arc<[Arc<str>]>,
}

impl fmt::Debug for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFormat")
            .field("prefix", &self.prefix)
            .field("environments", &self.environments)
            .field("body_len", &self.body_len)
            .field("accept_unchecksummed", &self.accept_unchecksummed)
            .field("legacy_prefixes", &self.legacy_prefixes)
            .finish()
    }
}

/// A key prefix that is not 1–16 ASCII letters or digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key prefix must be 1-16 ASCII letters or digits, got {0:?}")]
pub struct InvalidPrefix(pub String);

/// Why a string is not a key of this format.
///
/// Never shown to clients (they get `invalid_api_key`); useful in logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFormatError {
    /// The key does not start with `{prefix}_`.
    #[error("the key does not start with the expected prefix")]
    Prefix,
    /// The environment tag is missing or not one of the configured ones.
    #[error("the key's environment tag is not known")]
    Environment,
    /// The key is too short or too long.
    #[error("the key has the wrong length")]
    Length,
    /// The body holds characters outside base62.
    #[error("the key holds characters outside base62")]
    Alphabet,
    /// The checksum does not match the rest of the key.
    #[error("the key's checksum does not match")]
    Checksum,
}

/// A string that [`KeyFormat::parse`] accepted.
#[derive(Debug, Clone, Copy)]
pub struct ParsedKey<'a> {
    key: &'a str,
    environment: &'a Environment,
    checksummed: bool,
}

impl<'a> ParsedKey<'a> {
    /// The environment named by the key's tag.
    #[must_use]
    pub fn environment(&self) -> &'a Environment {
        self.environment
    }

    /// Whether the key carried a valid checksum (false only for accepted legacy keys:
    /// see [`KeyFormat::accept_unchecksummed`] and [`KeyFormat::accept_legacy_prefix`]).
    #[must_use]
    pub fn is_checksummed(&self) -> bool {
        self.checksummed
    }

    /// The SHA-256 hash to look the key up by.
    #[must_use]
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.key)
    }
}

impl KeyFormat {
    /// A format with the given prefix (1–16 ASCII letters or digits, e.g. `sk`, `pk`,
    /// `rk`) and the `live` and `test` environments.
    ///
    /// # Panics
    /// If the prefix is not 1–16 ASCII letters or digits.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        match Self::try_new(prefix) {
            Ok(format) => format,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`new`](Self::new), for a prefix read from input (a command line, a
    /// configuration file): an error instead of a panic.
    pub fn try_new(prefix: &str) -> Result<Self, InvalidPrefix> {
        if !is_valid_tag(prefix, 16) {
            return Err(InvalidPrefix(prefix.to_owned()));
        }
        Ok(KeyFormat {
            prefix: prefix.into(),
            environments: Arc::new([Environment::LIVE, Environment::TEST]),
            body_len: DEFAULT_BODY_LEN,
            accept_unchecksummed: false,
            legacy_prefixes: Arc::new([]),
        })
    }

    /// Adds an environment tag (`staging`, `dev`, …) next to `live` and `test`.
    #[must_use]
    pub fn with_environment(mut self, environment: Environment) -> Self {
        if !self.environments.contains(&environment) {
            let mut all = self.environments.to_vec();
            all.push(environment);
            self.environments = all.into();
        }
        self
    }

    /// Also accepts keys without a checksum, such as keys imported from an older system
    /// (`{prefix}_{env}_{16–256 base62 characters}`).
    ///
    /// Such keys cannot be told from typos before the lookup, so a flood of made-up keys
    /// reaches the cache (and, once per key and negative TTL, the store). Keys of the
    /// generated length (here 49 characters after `{env}_`) are still checksum-checked,
    /// so an imported key of exactly that length is refused.
    #[must_use]
    pub fn accept_unchecksummed(mut self) -> Self {
        self.accept_unchecksummed = true;
        self
    }

    /// Also accepts keys of another prefix, without a checksum: keys that an older
    /// system issued and that were [imported](crate::manage::KeyManager::import), such
    /// as `legacy_live_…` next to this format's `sk_live_…`. Such a key reads
    /// `{prefix}_{env}_{body}`: `prefix` the one given here, `env` one of this format's
    /// environment tags (the key's environment, as for keys of this format), `body` 16
    /// to 256 base62 characters (hexadecimal keys are base62 too), of any length in that
    /// range. Keys that differ in any other way (another separator, characters outside
    /// base62, no environment tag) do not parse and are refused before any lookup.
    ///
    /// Call it once per prefix to accept several. The prefix of this format itself
    /// means [`accept_unchecksummed`](Self::accept_unchecksummed) (keys of the
    /// generated length are then still checksum-checked). Keys of an accepted prefix
    /// count as keys for [`looks_like_key`](Self::looks_like_key), so a layer passing
    /// foreign tokens on still answers them itself. As with `accept_unchecksummed`, a
    /// made-up key of that shape reaches the cache (and, once per key and negative TTL,
    /// the store).
    ///
    /// # Panics
    /// If the prefix is not 1–16 ASCII letters or digits (configuration, written by the
    /// developer).
    ///
    /// ```
    /// use tower_api_keys::key::{Environment, KeyFormat};
    ///
    /// let format = KeyFormat::new("sk").accept_legacy_prefix("legacy");
    /// let parsed = format.parse("legacy_live_0123456789abcdef0123456789abcdef").unwrap();
    /// assert_eq!(parsed.environment(), &Environment::LIVE);
    /// assert!(!parsed.is_checksummed());
    /// assert!(format.parse("legacy_prod_0123456789abcdef0123456789abcdef").is_err());
    /// ```
    #[must_use]
    pub fn accept_legacy_prefix(mut self, prefix: &str) -> Self {
        assert!(
            is_valid_tag(prefix, 16),
            "legacy key prefix must be 1-16 ASCII letters or digits, got {prefix:?}"
        );
        if prefix == &*self.prefix {
            return self.accept_unchecksummed();
        }
        if !self.legacy_prefixes.iter().any(|p| &**p == prefix) {
            let mut all = self.legacy_prefixes.to_vec();
            all.push(prefix.into());
            self.legacy_prefixes = all.into();
        }
        self
    }

    /// The other prefixes accepted without a checksum
    /// ([`accept_legacy_prefix`](Self::accept_legacy_prefix)).
    pub fn legacy_prefixes(&self) -> impl Iterator<Item = &str> {
        self.legacy_prefixes.iter().map(|prefix| &**prefix)
    }

    /// The prefix, without the trailing underscore.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The environments keys of this format may carry.
    #[must_use]
    pub fn environments(&self) -> &[Environment] {
        &self.environments
    }

    /// The public part of a key of this format in `environment`: `sk_live`.
    #[must_use]
    pub fn display_prefix(&self, environment: &Environment) -> String {
        format!("{}_{}", self.prefix, environment.as_str())
    }

    /// Generates a new key from the operating system's CSPRNG.
    ///
    /// # Panics
    /// If `environment` is not one of this format's environments (a programming error),
    /// or if the operating system cannot supply random bytes.
    #[must_use]
    pub fn generate(&self, environment: &Environment) -> ApiKey {
        assert!(
            self.environments.contains(environment),
            "environment {environment} is not configured on this KeyFormat"
        );
        let head_len = self.prefix.len() + environment.as_str().len() + 2;
        let mut key = Zeroizing::new(String::with_capacity(
            head_len + self.body_len + CHECKSUM_LEN,
        ));
        key.push_str(&self.prefix);
        key.push('_');
        key.push_str(environment.as_str());
        key.push('_');
        push_random_base62(&mut key, self.body_len);
        let checksum = checksum(key.as_bytes());
        key.extend(checksum.iter().map(|&b| b as char));
        ApiKey { secret: key }
    }

    /// Whether `token` claims to be a key of this format (it starts with `{prefix}_`,
    /// or with an [accepted legacy prefix](Self::accept_legacy_prefix) and `_`), valid
    /// or not. A token that does not is another kind of credential.
    #[must_use]
    pub fn looks_like_key(&self, token: &str) -> bool {
        after_prefix(token, &self.prefix).is_some()
            || self
                .legacy_prefixes
                .iter()
                .any(|prefix| after_prefix(token, prefix).is_some())
    }

    /// The longest key any accepted prefix may have.
    fn max_len(&self) -> usize {
        let ours = self.prefix.len() + 2 + 16 + self.body_len.max(LEGACY_MAX_BODY) + 6;
        let legacy = self
            .legacy_prefixes
            .iter()
            .map(|prefix| prefix.len() + 2 + 16 + LEGACY_MAX_BODY)
            .max()
            .unwrap_or(0);
        ours.max(legacy)
    }

    /// The environment named by `rest` (`{env}_{body}`) and the body, in base62.
    fn environment_and_body<'k>(
        &'k self,
        rest: &'k str,
    ) -> Result<(&'k Environment, &'k str), KeyFormatError> {
        let (tag, body) = rest.split_once('_').ok_or(KeyFormatError::Environment)?;
        let environment = self
            .environments
            .iter()
            .find(|e| e.as_str() == tag)
            .ok_or(KeyFormatError::Environment)?;
        if !body.bytes().all(|b| IS_BASE62[b as usize]) {
            return Err(KeyFormatError::Alphabet);
        }
        Ok((environment, body))
    }

    /// Checks a presented key: prefix, environment tag, length, alphabet, checksum (or,
    /// for an [accepted legacy prefix](Self::accept_legacy_prefix), prefix, environment
    /// tag, alphabet and a body of 16 to 256 characters).
    ///
    /// Pure and allocation-free; a key that fails here never reaches a cache or a store.
    pub fn parse<'k>(&'k self, key: &'k str) -> Result<ParsedKey<'k>, KeyFormatError> {
        let bytes = key.as_bytes();
        if bytes.len() > self.max_len() {
            return Err(KeyFormatError::Length);
        }
        let Some(rest) = after_prefix(key, &self.prefix) else {
            // `{prefix}_` of two different prefixes without `_` never both start a key.
            let rest = self
                .legacy_prefixes
                .iter()
                .find_map(|prefix| after_prefix(key, prefix))
                .ok_or(KeyFormatError::Prefix)?;
            let (environment, body) = self.environment_and_body(rest)?;
            if !(LEGACY_MIN_BODY..=LEGACY_MAX_BODY).contains(&body.len()) {
                return Err(KeyFormatError::Length);
            }
            return Ok(ParsedKey {
                key,
                environment,
                checksummed: false,
            });
        };
        let (environment, body) = self.environment_and_body(rest)?;
        let checksummed = body.len() == self.body_len + CHECKSUM_LEN && {
            let split = key.len() - CHECKSUM_LEN;
            // CRC32 is public: comparing it in constant time would protect nothing.
            checksum(&bytes[..split]) == bytes[split..]
        };
        if checksummed {
            return Ok(ParsedKey {
                key,
                environment,
                checksummed: true,
            });
        }
        // A key of the generated length must carry a valid checksum, legacy or not.
        if self.accept_unchecksummed
            && body.len() != self.body_len + CHECKSUM_LEN
            && (LEGACY_MIN_BODY..=LEGACY_MAX_BODY).contains(&body.len())
        {
            return Ok(ParsedKey {
                key,
                environment,
                checksummed: false,
            });
        }
        if body.len() == self.body_len + CHECKSUM_LEN {
            Err(KeyFormatError::Checksum)
        } else {
            Err(KeyFormatError::Length)
        }
    }
}

/// What follows `{prefix}_` in `token`, if it starts so.
fn after_prefix<'t>(token: &'t str, prefix: &str) -> Option<&'t str> {
    token.strip_prefix(prefix)?.strip_prefix('_')
}

/// Appends `n` uniformly random base62 characters from the OS CSPRNG.
fn push_random_base62(out: &mut String, n: usize) {
    let mut pushed = 0;
    let mut buf = Zeroizing::new([0u8; 64]);
    while pushed < n {
        getrandom::fill(&mut buf[..]).expect("the operating system's CSPRNG failed");
        // Rejection sampling: 248 = 4 × 62, so `b % 62` is uniform for b < 248.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if pushed == n {
                break;
            }
            out.push(BASE62[(b % 62) as usize] as char);
            pushed += 1;
        }
    }
}

/// CRC32 of `data` as 6 base62 characters, most significant first, zero-padded.
fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(data);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    // 62^6 > 2^32, so the number always fits.
    out
}

/// A plaintext API key: the secret.
///
/// `Debug` prints `ApiKey(REDACTED)` and `Display` `REDACTED`; the memory is zeroed on
/// drop.
/// Read it with [`expose_secret`](Self::expose_secret) exactly where it must be shown
/// (the one create response) or sent.
pub struct ApiKey {
    secret: Zeroizing<String>,
}

impl ApiKey {
    /// Wraps a key string (for example one read from configuration or an import).
    #[must_use]
    pub fn from_secret(secret: impl Into<String>) -> Self {
        ApiKey {
            secret: Zeroizing::new(secret.into()),
        }
    }

    /// The plaintext key. Show it once; never log it.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// The SHA-256 hash that the store keeps in place of the key.
    #[must_use]
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.secret)
    }

    /// The last four characters, shown in listings so users can tell keys apart.
    #[must_use]
    pub fn hint(&self) -> String {
        hint(&self.secret)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(REDACTED)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

/// The last four characters of a key (fewer if the key is shorter).
#[must_use]
pub(crate) fn hint(key: &str) -> String {
    let start = key
        .char_indices()
        .rev()
        .nth(3)
        .map_or(0, |(index, _)| index);
    key[start..].to_owned()
}

/// SHA-256 of the whole key string: what stores keep and caches are keyed by.
///
/// Shown as lowercase hex ([`to_hex`](Self::to_hex)) for storage; `Debug` shows only
/// the first 4 bytes. Equality is constant-time.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a key string.
    #[must_use]
    pub fn of(key: &str) -> Self {
        #[cfg(test)]
        tests::SHA_CALLS.with(|calls| calls.set(calls.get() + 1));
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Wraps 32 raw bytes (for example read from a store).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        KeyHash(bytes)
    }

    /// The raw 32 bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    #[must_use]
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
        out
    }

    /// Parses 64 hex characters.
    #[must_use]
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(KeyHash(out))
    }
}

impl PartialEq for KeyHash {
    /// Constant-time (`subtle`), a 64-bit word at a time.
    fn eq(&self, other: &Self) -> bool {
        let word = |bytes: &[u8; 32], i: usize| {
            u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
        };
        let equal = (0..4).fold(subtle::Choice::from(1), |acc, i| {
            acc & word(&self.0, i).ct_eq(&word(&other.0, i))
        });
        equal.into()
    }
}

impl Eq for KeyHash {}

impl std::hash::Hash for KeyHash {
    /// Feeds the first 8 bytes only: the value is already a uniform SHA-256 digest, so
    /// they spread as well as all 32 (the hasher stays keyed, and equality compares all
    /// 32), at a quarter of the hashing cost.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_ne_bytes(self.0[..8].try_into().expect("8 bytes")));
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The public identifier of a key: `ak_` and 24 random base62 characters.
///
/// Safe to show, log and put in URLs (`DELETE /api-keys/ak_…`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// The default prefix of generated ids.
    pub const DEFAULT_PREFIX: &'static str = "ak";

    /// A new random id, `ak_…`.
    #[must_use]
    pub fn generate() -> Self {
        Self::generate_with_prefix(Self::DEFAULT_PREFIX)
    }

    /// A new random id with another prefix, e.g. `key_…`; with `""`, bare random
    /// characters.
    #[must_use]
    pub fn generate_with_prefix(prefix: &str) -> Self {
        let mut id = String::with_capacity(prefix.len() + 1 + KEY_ID_LEN);
        if !prefix.is_empty() {
            id.push_str(prefix);
            id.push('_');
        }
        push_random_base62(&mut id, KEY_ID_LEN);
        KeyId(id.into())
    }

    /// Wraps an existing id (read from a store or a URL).
    #[must_use]
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        KeyId(id.into())
    }

    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// SHA-256 computations of keys on this thread (for the tests that count them).
        pub(crate) static SHA_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// Found by `cargo mutants`: accessors, Debug, the length bound and the generator.
    #[test]
    fn secrets_never_print_and_ids_print_as_themselves() {
        let key = ApiKey::from_secret("sk_live_secretsecret");
        assert_eq!(format!("{key:?}"), "ApiKey(REDACTED)");
        assert_eq!(key.to_string(), "REDACTED");
        let hash = KeyHash::from_bytes([0xab; 32]);
        assert_eq!(format!("{hash:?}"), "KeyHash(abababab…)");
        assert_eq!(hash, KeyHash::from_bytes([0xab; 32]));
        assert_eq!(KeyHash::of("same"), KeyHash::of("same"));
        assert_ne!(KeyHash::of("same"), KeyHash::of("other"));
        let id = KeyId::new("ak_1");
        assert_eq!(format!("{id:?}"), "\"ak_1\"");
        assert_eq!(id.to_string(), "ak_1");
    }

    #[test]
    fn a_format_shows_its_settings() {
        let format = KeyFormat::new("sk");
        assert_eq!(format.prefix(), "sk");
        assert_eq!(
            format.environments(),
            [Environment::LIVE, Environment::TEST]
        );
        let debug = format!("{format:?}");
        assert!(
            debug.contains("\"sk\"") && debug.contains("body_len"),
            "{debug}"
        );
    }

    #[test]
    fn the_length_bound_admits_the_longest_possible_key_and_no_more() {
        for prefix in ["sk", "live", "k"] {
            let format = KeyFormat::new(prefix);
            let longest = format!(
                "{prefix}_{}_{}",
                "e".repeat(16),
                "a".repeat(format.body_len.max(LEGACY_MAX_BODY) + CHECKSUM_LEN)
            );
            assert_ne!(format.parse(&longest).err(), Some(KeyFormatError::Length));
            let longer = format!("{longest}a");
            assert_eq!(format.parse(&longer).err(), Some(KeyFormatError::Length));
        }
    }

    #[test]
    fn a_generated_key_is_allocated_once() {
        // A string that grew would leave an unzeroized copy of the secret behind.
        let key = KeyFormat::new("sk").generate(&Environment::LIVE);
        assert_eq!(key.secret.capacity(), key.secret.len());
    }

    #[test]
    fn key_bodies_are_uniform_over_the_alphabet() {
        let format = KeyFormat::new("sk");
        let mut counts = [0usize; 128];
        let mut total = 0;
        while total < 124_000 {
            let key = format.generate(&Environment::LIVE);
            let body = &key.expose_secret()["sk_live_".len()..][..format.body_len];
            for b in body.bytes() {
                counts[usize::from(b)] += 1;
                total += 1;
            }
        }
        let used = BASE62
            .iter()
            .filter(|&&b| counts[usize::from(b)] > 0)
            .count();
        assert_eq!(used, 62, "every character of the alphabet appears");
        // Uniform: 2,000 of each expected (standard deviation about 44). Keeping a
        // random byte of 248 would make '0' come 2,490 times.
        for &b in BASE62 {
            let n = counts[usize::from(b)];
            assert!((1_750..=2_250).contains(&n), "{} came {n} times", b as char);
        }
    }

    #[test]
    fn generated_keys_have_the_documented_shape_and_parse_back() {
        let format = KeyFormat::new("sk");
        for env in [Environment::LIVE, Environment::TEST] {
            let key = format.generate(&env);
            let s = key.expose_secret();
            let head = format!("sk_{env}_");
            assert!(s.starts_with(&head), "{s}");
            assert_eq!(s.len(), head.len() + 43 + 6);
            assert!(s[head.len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
            let parsed = format.parse(s).unwrap();
            assert_eq!(parsed.environment(), &env);
            assert!(parsed.is_checksummed());
            assert_eq!(parsed.hash(), key.hash());
        }
    }

    #[test]
    fn generated_keys_differ() {
        let format = KeyFormat::new("sk");
        let a = format.generate(&Environment::LIVE);
        let b = format.generate(&Environment::LIVE);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let format = KeyFormat::new("sk");
        let key = format.generate(&Environment::LIVE);
        let s = key.expose_secret();
        for i in 0..s.len() {
            for replacement in ['0', 'a', 'Z', '_'] {
                let mut bytes = s.as_bytes().to_vec();
                if bytes[i] == replacement as u8 {
                    continue;
                }
                bytes[i] = replacement as u8;
                let changed = String::from_utf8(bytes).unwrap();
                assert!(format.parse(&changed).is_err(), "{i} {replacement}");
            }
        }
    }

    #[test]
    fn rejections_name_their_reason() {
        let format = KeyFormat::new("sk");
        let key = format.generate(&Environment::LIVE);
        let s = key.expose_secret();
        assert_eq!(
            format.parse(&s.replacen("sk_", "pk_", 1)).unwrap_err(),
            KeyFormatError::Prefix
        );
        assert_eq!(
            format
                .parse(&s.replacen("_live_", "_prod_", 1))
                .unwrap_err(),
            KeyFormatError::Environment
        );
        assert_eq!(
            format.parse(&s[..s.len() - 1]).unwrap_err(),
            KeyFormatError::Length
        );
        assert_eq!(
            format
                .parse(&format!("{}-", &s[..s.len() - 1]))
                .unwrap_err(),
            KeyFormatError::Alphabet
        );
        assert_eq!(format.parse("").unwrap_err(), KeyFormatError::Prefix);
        assert!(format.looks_like_key("sk_"));
        assert!(format.looks_like_key("sk_live_nonsense"));
        assert!(!format.looks_like_key("sk"));
        assert!(!format.looks_like_key("skx_live"));
        assert!(!format.looks_like_key("eyJhbGciOiJIUzI1NiJ9.e30.sig"));
        assert_eq!(
            format.parse("sk_live").unwrap_err(),
            KeyFormatError::Environment
        );
        assert_eq!(
            format.parse(&"a".repeat(8192)).unwrap_err(),
            KeyFormatError::Length
        );
    }

    #[test]
    fn custom_environment_tags() {
        let staging = Environment::new("staging");
        let format = KeyFormat::new("rk").with_environment(staging.clone());
        let key = format.generate(&staging);
        assert!(key.expose_secret().starts_with("rk_staging_"));
        assert_eq!(
            format.parse(key.expose_secret()).unwrap().environment(),
            &staging
        );
        assert!(KeyFormat::new("rk").parse(key.expose_secret()).is_err());
    }

    #[test]
    fn legacy_keys_without_checksum_are_opt_in() {
        let legacy = "sk_live_abcdefghijklmnop1234";
        assert!(KeyFormat::new("sk").parse(legacy).is_err());
        let format = KeyFormat::new("sk").accept_unchecksummed();
        let parsed = format.parse(legacy).unwrap();
        assert!(!parsed.is_checksummed());
        // A key of the generated length with a wrong checksum is still refused.
        let key = format.generate(&Environment::LIVE);
        let mut typo = key.expose_secret().to_owned();
        typo.replace_range(9..10, if &typo[9..10] == "a" { "b" } else { "a" });
        assert_eq!(format.parse(&typo).unwrap_err(), KeyFormatError::Checksum);
        // Generated keys are still checked, and still marked as checksummed.
        let key = format.generate(&Environment::TEST);
        assert!(format.parse(key.expose_secret()).unwrap().is_checksummed());
    }

    #[test]
    fn legacy_prefixes_parse_without_checksum() {
        let body = "0123456789abcdef0123456789abcdef";
        let live = format!("legacy_live_{body}");
        assert_eq!(
            KeyFormat::new("sk").parse(&live).unwrap_err(),
            KeyFormatError::Prefix
        );
        assert!(!KeyFormat::new("sk").looks_like_key(&live));
        let format = KeyFormat::new("sk").accept_legacy_prefix("legacy");
        let parsed = format.parse(&live).unwrap();
        assert_eq!(parsed.environment(), &Environment::LIVE);
        assert!(!parsed.is_checksummed());
        assert_eq!(parsed.hash(), KeyHash::of(&live));
        let test = format!("legacy_test_{body}");
        assert_eq!(
            format.parse(&test).unwrap().environment(),
            &Environment::TEST
        );
        // Any body length from 16 to 256, and no other.
        for len in [16, 43 + 6, 256] {
            let key = format!("legacy_live_{}", "a".repeat(len));
            assert!(format.parse(&key).is_ok(), "{len}");
        }
        for len in [0, 15, 257] {
            let key = format!("legacy_live_{}", "a".repeat(len));
            assert_eq!(format.parse(&key).unwrap_err(), KeyFormatError::Length);
        }
        let reason = |key: &str| format.parse(key).unwrap_err();
        assert_eq!(
            reason(&format!("legacy_prod_{body}")),
            KeyFormatError::Environment
        );
        assert_eq!(reason("legacy_live"), KeyFormatError::Environment);
        assert_eq!(
            reason(&format!("legacy_live_{body}-")),
            KeyFormatError::Alphabet
        );
        assert_eq!(
            reason(&format!("legacyx_live_{body}")),
            KeyFormatError::Prefix
        );
        assert_eq!(reason(&format!("legacy{body}")), KeyFormatError::Prefix);
        assert!(format.looks_like_key("legacy_"));
        assert!(format.looks_like_key("legacy_nonsense"));
        assert!(!format.looks_like_key("legacy"));
        assert!(!format.looks_like_key("legacyx_live"));
        // Keys of the format itself are checked as before: a generated key parses with
        // its checksum, a typo in it is refused, an unchecksummed one too.
        let key = format.generate(&Environment::LIVE);
        assert!(format.parse(key.expose_secret()).unwrap().is_checksummed());
        let mut typo = key.expose_secret().to_owned();
        typo.replace_range(9..10, if &typo[9..10] == "a" { "b" } else { "a" });
        assert_eq!(format.parse(&typo).unwrap_err(), KeyFormatError::Checksum);
        assert_eq!(
            format.parse(&format!("sk_live_{body}")).unwrap_err(),
            KeyFormatError::Length
        );
        assert!(format.looks_like_key("sk_live_nonsense"));
    }

    #[test]
    fn legacy_prefixes_are_listed_once_and_the_own_prefix_means_unchecksummed() {
        let format = KeyFormat::new("sk")
            .accept_legacy_prefix("old")
            .accept_legacy_prefix("py")
            .accept_legacy_prefix("old");
        assert_eq!(format.legacy_prefixes().collect::<Vec<_>>(), ["old", "py"]);
        assert!(format.parse("py_test_abcdefghijklmnop").is_ok());
        assert!(format!("{format:?}").contains("legacy_prefixes"));
        let own = KeyFormat::new("sk").accept_legacy_prefix("sk");
        assert_eq!(own.legacy_prefixes().count(), 0);
        assert!(own.parse("sk_live_abcdefghijklmnop1234").is_ok());
        // Still checksum-checked at the generated length.
        let generated_length = format!("sk_live_{}", "a".repeat(43 + 6));
        assert_eq!(
            own.parse(&generated_length).unwrap_err(),
            KeyFormatError::Checksum
        );
    }

    #[test]
    fn the_length_bound_admits_the_longest_legacy_key_and_no_more() {
        let tag = "e".repeat(16);
        let legacy = "p".repeat(16);
        let format = KeyFormat::new("k")
            .with_environment(Environment::new(tag.clone()))
            .accept_legacy_prefix(&legacy);
        let longest = format!("{legacy}_{tag}_{}", "a".repeat(LEGACY_MAX_BODY));
        assert!(format.parse(&longest).is_ok());
        let longer = format!("{longest}a");
        assert_eq!(format.parse(&longer).unwrap_err(), KeyFormatError::Length);
    }

    #[test]
    #[should_panic(expected = "legacy key prefix")]
    fn a_legacy_prefix_is_letters_and_digits() {
        let _ = KeyFormat::new("sk").accept_legacy_prefix("le_gacy");
    }

    #[test]
    fn secrets_never_print_themselves() {
        let key = KeyFormat::new("sk").generate(&Environment::LIVE);
        let body = &key.expose_secret()[8..];
        assert!(!format!("{key:?}").contains(body));
        assert!(!format!("{key}").contains(body));
        let hex = key.hash().to_hex();
        assert!(!format!("{:?}", key.hash()).contains(&hex));
    }

    #[test]
    fn hash_is_sha256_hex() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let h = KeyHash::of("x");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
    }

    #[test]
    fn hint_is_the_last_four_characters() {
        assert_eq!(hint("sk_live_abcdef"), "cdef");
        assert_eq!(hint("ab"), "ab");
        let key = ApiKey::from_secret("sk_test_0123456789");
        assert_eq!(key.hint(), "6789");
    }

    #[test]
    fn key_ids_are_prefixed_and_random() {
        let a = KeyId::generate();
        assert!(a.as_str().starts_with("ak_"));
        assert_eq!(a.as_str().len(), 3 + 24);
        assert_ne!(a, KeyId::generate());
        assert!(
            KeyId::generate_with_prefix("")
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        );
        assert!(
            KeyId::generate_with_prefix("key")
                .as_str()
                .starts_with("key_")
        );
    }

    #[test]
    fn environment_tags_are_read_back_or_refused() {
        assert_eq!(Environment::parse("live"), Some(Environment::LIVE));
        assert_eq!(Environment::parse("test"), Some(Environment::TEST));
        assert_eq!(
            Environment::parse("staging2").map(|e| e.as_str().to_owned()),
            Some("staging2".to_owned())
        );
        assert_eq!(
            Environment::parse(&"a".repeat(16)).map(|e| e.as_str().len()),
            Some(16)
        );
        for bad in ["", "a b", "live_", "é", &"a".repeat(17)] {
            assert_eq!(Environment::parse(bad), None, "{bad:?}");
        }
        assert_eq!(format!("{:?}", Environment::LIVE), "\"live\"");
        assert_eq!(Environment::TEST.to_string(), "test");
    }
}
