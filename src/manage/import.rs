//! Importing keys made elsewhere: [`KeyManager::import`], its [`ImportReport`] and
//! [`ImportError`].

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{KeyManager, check_name};
use crate::audit::Action;
use crate::key::{Environment, KeyHash, KeyId};
use crate::manage::ManageError;
use crate::record::Metadata;
use crate::restriction::Restrictions;
use crate::scope::{Scope, Scopes};
use crate::store::{KeyInfo, KeyStore, StoreError, StoredKey};
use crate::verify::KeyVerifier;

/// The longest hint an imported key may carry.
const MAX_HINT_LEN: usize = 8;
/// The longest prefix an imported key may carry.
const MAX_PREFIX_LEN: usize = 40;
/// The longest project id an imported key may carry.
const MAX_PROJECT_LEN: usize = 200;

/// The fields of a line, but the account field (whose name the caller gives).
const FIELDS: [&str; 9] = [
    "key_hash",
    "name",
    "environment",
    "scopes",
    "prefix",
    "hint",
    "created_at",
    "expires_at",
    "project_id",
];

/// What [`KeyManager::import`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// The keys imported, in the order of their lines (new ids, no secret, no hash).
    pub imported: Vec<KeyInfo>,
    /// How many lines were skipped because a key with their hash was stored already.
    pub skipped: usize,
}

/// Why [`KeyManager::import`] imported nothing. No variant shows a hash, or any value of
/// the input but an environment tag, a scope or a field name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A line is not a key as the import reads it (the first such line).
    #[error("line {line}: {message}")]
    Line {
        /// The line's number, from 1 (blank lines count).
        line: usize,
        /// What is wrong with it, naming the field.
        message: String,
    },
    /// The name given for the account field is empty or one of the other fields'.
    #[error("the account field must be named, and not like another field of a line, got {0:?}")]
    AccountField(String),
    /// The store failed; nothing was imported.
    #[error("the key store failed")]
    Store(#[from] StoreError),
}

/// A line's JSON object, its fields in a map; a field named twice is an error.
struct Fields(Map<String, Value>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if fields.contains_key(&name) {
                        return Err(A::Error::custom(format_args!(
                            "the field {} appears twice",
                            shown(&name)
                        )));
                    }
                    fields.insert(name, value);
                }
                Ok(Fields(fields))
            }
        }

        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// A value of the input, quoted if it reads as a name (a tag, a field), else not shown.
fn shown(text: &str) -> String {
    // Only what reads as a name (a tag, a field): never what could be a key or a hash
    // that landed in the wrong column.
    let name_like = (1..=24).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !text.bytes().all(|b| b.is_ascii_hexdigit());
    if name_like {
        format!("{text:?}")
    } else {
        "(a value not shown)".to_owned()
    }
}

/// A field's value: `None` if absent or `null`; an error if not a string.
fn optional_string(value: Option<Value>, field: &str) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn required_string(value: Option<Value>, field: &str) -> Result<String, String> {
    optional_string(value, field)?.ok_or_else(|| format!("{field} is missing"))
}

/// A text of 1 to `max` characters, none a control character.
fn bounded(text: &str, field: &str, max: usize) -> Result<(), String> {
    if text.is_empty() || text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(format!(
            "{field} must be 1 to {max} characters, none a control character"
        ));
    }
    Ok(())
}

/// An RFC 3339 time, in UTC, truncated to milliseconds (what every store keeps).
fn time_of(text: &str, field: &str) -> Result<OffsetDateTime, String> {
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| format!("{field} must be an RFC 3339 time"))?
        .to_offset(time::UtcOffset::UTC);
    Ok(at.replace_millisecond(at.millisecond()).unwrap_or(at))
}

/// A syntax error of a line, without serde's "at line 1" (the line is the import's).
fn json_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let reason = text
        .rsplit_once(" at line ")
        .map_or(&*text, |(reason, _)| reason);
    format!(
        "not a valid JSON object: {reason} (column {})",
        error.column()
    )
}

impl<S: KeyStore, V: KeyVerifier> KeyManager<S, V> {
    /// Imports keys made elsewhere (another system, an older scheme), known by the
    /// SHA-256 of each key: their holders keep using them, through the layer, as keys
    /// of this manager's accounts. `input` is NDJSON, one key per line:
    ///
    /// ```text
    /// {"key_hash": "9f86d0…", "name": "CI", "account_id": "acct_1", "environment": "live", "scopes": ["read"]}
    /// ```
    ///
    /// | field | | |
    /// |---|---|---|
    /// | `key_hash` | required | 64 hexadecimal characters (either case): SHA-256 of the whole key string, as [`KeyHash::of`] computes it |
    /// | `name` | required | 1 to [`MAX_NAME_LEN`](crate::manage::MAX_NAME_LEN) characters once trimmed, none a control character |
    /// | the account field | required | the owning account: a non-empty string without control characters. Named `account_field` (`account_id` in the CLI unless `--account-field` says otherwise), so an export whose column is `org_id` imports as it is |
    /// | `environment` | required | one of the manager's [`KeyFormat`](crate::KeyFormat)'s environment tags |
    /// | `scopes` | required | an array (maybe empty) of scope names, each one this manager issues (`read`, `write`, `admin` and those of [`allow_scope`](Self::allow_scope)) |
    /// | `prefix` | optional | the key's public start as listings show it, 1 to 40 printable ASCII characters, no space (default: the format's, `sk_live`) |
    /// | `hint` | optional | the key's last characters as listings show them, at most 8 characters, no control character (default: none) |
    /// | `created_at` | optional | RFC 3339, not in the future (default: now) |
    /// | `expires_at` | optional | RFC 3339; a time past is kept, and the key is refused as expired (401 `api_key_expired`) |
    /// | `project_id` | optional | the project the key is locked to, 1 to 200 characters, none a control character |
    ///
    /// Any other field is refused, `account_id` included when the account field is
    /// named otherwise; so is a field named twice, and `null` counts as absent for an
    /// optional field. Blank lines are skipped (and still counted). Every key gets a new
    /// id (`ak_…`, or the manager's [`id_prefix`](Self::id_prefix)), no `created_by`,
    /// no end user, empty metadata, no restrictions, no rate limits and no credits
    /// (change them afterwards with [`update`](Self::update)).
    ///
    /// **All or nothing.** Every line is read and checked first: the first line that
    /// is not a key as above, or whose `key_hash` an earlier line has already, is an
    /// [`ImportError::Line`] naming its number and field (never its hash), and nothing
    /// is written. Then all keys go to the store in one call and one transaction
    /// ([`KeyStore::import_audited`]).
    ///
    /// **Idempotent by hash.** A line whose hash is stored already (imported before, or
    /// a key of this crate) is skipped and counted in [`ImportReport::skipped`], so the
    /// same file imported twice imports nothing the second time. The stored key is left
    /// as it is, even if the line describes it otherwise.
    ///
    /// **No active-key limit.** An import is the operator's: an account may end up with
    /// more active keys in an environment than it could create (it creates none until
    /// it is back under the limit).
    ///
    /// Each imported key gets a `key.imported` audit event ([`Action::Imported`]) by
    /// this handle's actor ([`acting`](Self::acting)). This instance's cache forgets any
    /// answer for the imported hashes at once; other instances' caches may answer
    /// "unknown key" for a key they were shown before the import until their negative
    /// TTL ends (5 s by default).
    ///
    /// The layer must also recognise the keys: keys with this format's prefix but no
    /// checksum need [`KeyFormat::accept_unchecksummed`](crate::KeyFormat::accept_unchecksummed),
    /// keys with another prefix [`KeyFormat::accept_legacy_prefix`](crate::KeyFormat::accept_legacy_prefix),
    /// and both need the layout `{prefix}_{environment}_{base62 body}`.
    ///
    /// ```
    /// use tower_api_keys::{CachedVerifier, KeyFormat, KeyManager, MemoryStore};
    /// use tower_api_keys::key::KeyHash;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = MemoryStore::new();
    /// let format = KeyFormat::new("sk").accept_legacy_prefix("legacy");
    /// let manager = KeyManager::new(store.clone(), CachedVerifier::new(store), format);
    /// let hash = KeyHash::of("legacy_live_0123456789abcdef0123456789abcdef").to_hex();
    /// let line = format!(
    ///     r#"{{"key_hash": "{hash}", "name": "old", "org_id": "acct_1", "environment": "live", "scopes": ["read"]}}"#
    /// );
    /// let report = manager.import(&line, "org_id").await.unwrap();
    /// assert_eq!((report.imported.len(), report.skipped), (1, 0));
    /// let again = manager.import(&line, "org_id").await.unwrap();
    /// assert_eq!((again.imported.len(), again.skipped), (0, 1));
    ///
    /// let error = manager.import(&line, "account_id").await.unwrap_err();
    /// assert_eq!(error.to_string(), r#"line 1: unknown field "org_id""#);
    /// # }
    /// ```
    pub async fn import(
        &self,
        input: &str,
        account_field: &str,
    ) -> Result<ImportReport, ImportError> {
        if account_field.is_empty() || FIELDS.contains(&account_field) {
            return Err(ImportError::AccountField(account_field.to_owned()));
        }
        let now = OffsetDateTime::now_utc();
        let mut keys: Vec<StoredKey> = Vec::new();
        let mut lines_of: HashMap<KeyHash, usize> = HashMap::new();
        for (index, text) in input.lines().enumerate() {
            let line = index + 1;
            let text = if index == 0 {
                text.strip_prefix('\u{feff}').unwrap_or(text)
            } else {
                text
            };
            if text.trim().is_empty() {
                continue;
            }
            let key = self
                .import_line(text, account_field, now)
                .map_err(|message| ImportError::Line { line, message })?;
            if let Some(first) = lines_of.insert(key.hash, line) {
                return Err(ImportError::Line {
                    line,
                    message: format!("key_hash is the same as on line {first}"),
                });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(ImportReport::default());
        }
        let hashes: HashMap<KeyId, KeyHash> =
            keys.iter().map(|key| (key.id.clone(), key.hash)).collect();
        let outcome = self
            .parts
            .store
            .import_audited(keys, &self.audit(Action::Imported))
            .await?;
        // Negative answers cached before the import would hide the keys.
        for info in &outcome.imported {
            if let Some(hash) = hashes.get(&info.id) {
                self.parts.cache.invalidate(hash);
            }
        }
        Ok(ImportReport {
            imported: outcome.imported,
            skipped: outcome.skipped,
        })
    }

    /// One line of an import, checked: the key to store, or what is wrong.
    fn import_line(
        &self,
        text: &str,
        account_field: &str,
        now: OffsetDateTime,
    ) -> Result<StoredKey, String> {
        // Only an object is parsed: serde would quote any other value in its error, and
        // a line may be a key itself.
        if !text.trim_start().starts_with('{') {
            return Err("not a JSON object".to_owned());
        }
        let Fields(mut fields) = serde_json::from_str(text).map_err(|error| json_error(&error))?;
        let account = fields.remove(account_field);
        let [
            hash,
            name,
            environment,
            scopes,
            prefix,
            hint,
            created_at,
            expires_at,
            project,
        ] = FIELDS.map(|field| fields.remove(field));
        if let Some(unknown) = fields.keys().next() {
            return Err(format!("unknown field {}", shown(unknown)));
        }

        let hash = required_string(hash, "key_hash")?;
        let hash = KeyHash::from_hex(&hash).ok_or_else(|| {
            "key_hash must be 64 hexadecimal characters (the SHA-256 of the key)".to_owned()
        })?;

        let name = required_string(name, "name")?;
        let name = check_name(&name).map_err(|error| error.to_string())?;
        if name.chars().any(char::is_control) {
            return Err("name must not hold control characters".to_owned());
        }

        let account_id = required_string(account, account_field)?;
        if account_id.is_empty() || account_id.chars().any(char::is_control) {
            return Err(format!(
                "{account_field} must be a non-empty string without control characters"
            ));
        }

        let environment = required_string(environment, "environment")?;
        let format = &self.parts.format;
        let environment: Environment = format
            .environments()
            .iter()
            .find(|known| known.as_str() == environment)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<&str> = format
                    .environments()
                    .iter()
                    .map(Environment::as_str)
                    .collect();
                format!(
                    "environment {} is not one of {}",
                    shown(&environment),
                    known.join(", ")
                )
            })?;

        let scopes = match scopes {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(name) => match name.parse::<Scope>() {
                        Ok(scope) if self.scopes().contains(&scope) => Ok(scope),
                        // By position: a value in the wrong column may be a secret.
                        Ok(_) => Err(format!(
                            "scopes[{i}] is not a scope this manager issues (apikeys import --allow-scope)"
                        )),
                        Err(_) => Err(format!("scopes[{i}] is not a scope name")),
                    },
                    _ => Err("scopes must be an array of strings".to_owned()),
                })
                .collect::<Result<Scopes, String>>()?,
            None => return Err("scopes is missing".to_owned()),
            Some(_) => return Err("scopes must be an array of strings".to_owned()),
        };
        self.check_known(&scopes)
            .map_err(|error: ManageError| error.to_string())?;

        let prefix = match optional_string(prefix, "prefix")? {
            Some(prefix) => {
                if prefix.is_empty()
                    || prefix.len() > MAX_PREFIX_LEN
                    || !prefix.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(format!(
                        "prefix must be 1 to {MAX_PREFIX_LEN} printable ASCII characters, without spaces"
                    ));
                }
                prefix
            }
            None => format.display_prefix(&environment),
        };

        let hint = optional_string(hint, "hint")?.unwrap_or_default();
        if hint.chars().count() > MAX_HINT_LEN || hint.chars().any(char::is_control) {
            return Err(format!(
                "hint must be at most {MAX_HINT_LEN} characters, none a control character"
            ));
        }

        let created_at = match optional_string(created_at, "created_at")? {
            Some(text) => {
                let at = time_of(&text, "created_at")?;
                if at > now {
                    return Err("created_at is in the future".to_owned());
                }
                at
            }
            None => crate::store::now_in_millis(),
        };
        let expires_at = optional_string(expires_at, "expires_at")?
            .map(|text| time_of(&text, "expires_at"))
            .transpose()?;

        let project_id = optional_string(project, "project_id")?;
        if let Some(project) = &project_id {
            bounded(project, "project_id", MAX_PROJECT_LEN)?;
        }

        Ok(StoredKey {
            id: KeyId::generate_with_prefix(&self.id_prefix),
            hash,
            hint,
            prefix,
            created_at,
            account_id,
            environment,
            name,
            scopes,
            project_id,
            expires_at,
            restrictions: Restrictions::none(),
            created_by: None,
            owner_id: None,
            metadata: Metadata::new(),
            ratelimits: Vec::new(),
            credits: None,
            replaces: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CachedVerifier;
    use crate::key::KeyFormat;
    use crate::store::MemoryStore;

    fn manager() -> KeyManager<MemoryStore, MemoryStore> {
        let store = MemoryStore::new();
        KeyManager::new(
            store.clone(),
            CachedVerifier::new(store),
            KeyFormat::new("sk"),
        )
    }

    fn line(extra: &str) -> String {
        format!(
            r#"{{"key_hash": "{}", "name": "k", "account_id": "acct", "environment": "live", "scopes": ["read"]{extra}}}"#,
            KeyHash::of("legacy_live_abcdefabcdefabcdef").to_hex()
        )
    }

    async fn refused(input: &str) -> String {
        let manager = manager();
        let error = manager.import(input, "account_id").await.unwrap_err();
        assert!(manager.store().list("acct").await.unwrap().is_empty());
        error.to_string()
    }

    #[tokio::test]
    async fn each_rule_names_its_line_and_field() {
        let hash = KeyHash::of("legacy_live_abcdefabcdefabcdef").to_hex();
        let cases = [
            (
                line(r#", "environment": "prod""#),
                "the field \"environment\" appears twice",
            ),
            (line(r#", "colour": "red""#), "unknown field \"colour\""),
            (
                line("").replace(&hash, "abc"),
                "key_hash must be 64 hexadecimal",
            ),
            (
                line("").replace(&hash, &"g".repeat(64)),
                "key_hash must be 64 hexadecimal",
            ),
            (
                line("").replace(r#""name": "k""#, r#""name": " ""#),
                "name must not be empty",
            ),
            (
                line("").replace(r#""name": "k""#, r#""name": 7"#),
                "name must be a string",
            ),
            (
                line("").replace(
                    r#""name": "k""#,
                    &format!(r#""name": "{}""#, "n".repeat(101)),
                ),
                "name must be at most 100 characters",
            ),
            (
                line("").replace(r#""account_id": "acct", "#, ""),
                "account_id is missing",
            ),
            (
                line("").replace(r#""acct""#, r#""""#),
                "account_id must be a non-empty",
            ),
            (
                line("").replace(r#""live""#, r#""prod""#),
                "environment \"prod\" is not one of live, test",
            ),
            (
                line("").replace(r#"["read"]"#, r#"["billing"]"#),
                "scopes[0] is not a scope this manager issues",
            ),
            (
                line("").replace(r#"["read"]"#, r#"["a b"]"#),
                "scopes[0] is not a scope name",
            ),
            (
                // A hash in the wrong column is named by position, never shown.
                line("").replace(
                    r#"["read"]"#,
                    &format!(r#"["read", "{}"]"#, "9f".repeat(32)),
                ),
                "scopes[1] is not a scope this manager issues",
            ),
            (
                line("").replace(r#""live""#, r#""sk_live_abcdefghijklmnopqrstuvwx""#),
                "environment (a value not shown) is not one of live, test",
            ),
            (
                line("").replace(r#"["read"]"#, r#""read""#),
                "scopes must be an array of strings",
            ),
            (
                line("").replace(r#"["read"]"#, "[1]"),
                "scopes must be an array of strings",
            ),
            (
                line(r#", "hint": "123456789""#),
                "hint must be at most 8 characters",
            ),
            (
                line(r#", "prefix": "a b""#),
                "prefix must be 1 to 40 printable ASCII",
            ),
            (line(r#", "prefix": """#), "prefix must be 1 to 40"),
            (
                line(r#", "created_at": "yesterday""#),
                "created_at must be an RFC 3339 time",
            ),
            (
                line(r#", "created_at": "2999-01-01T00:00:00Z""#),
                "created_at is in the future",
            ),
            (line(r#", "expires_at": 5"#), "expires_at must be a string"),
            (
                line(r#", "project_id": """#),
                "project_id must be 1 to 200 characters",
            ),
            ("[1, 2]".to_owned(), "not a JSON object"),
            (format!("\"{hash}\""), "not a JSON object"),
            (
                "{\"name\": ".to_owned(),
                "not a valid JSON object: EOF while parsing",
            ),
        ];
        for (text, expected) in cases {
            let input = format!("{}\n\n{text}\n", line(""));
            let message = refused(&input).await;
            assert!(message.starts_with("line 3: "), "{message}");
            assert!(message.contains(expected), "{message} lacks {expected}");
            assert!(!message.contains(&hash), "{message} shows the hash");
        }
    }

    #[tokio::test]
    async fn a_hash_twice_is_a_bad_line_whatever_its_case() {
        let hash = KeyHash::of("legacy_live_abcdefabcdefabcdef").to_hex();
        let upper = line("").replace(&hash, &hash.to_uppercase());
        let message = refused(&format!("{}\n{upper}", line(""))).await;
        assert_eq!(message, "line 2: key_hash is the same as on line 1");
    }

    #[tokio::test]
    async fn the_account_field_is_named_apart_from_the_others() {
        let manager = manager();
        for bad in ["", "name", "key_hash", "project_id"] {
            let error = manager.import(&line(""), bad).await.unwrap_err();
            assert!(matches!(error, ImportError::AccountField(_)), "{bad:?}");
        }
        let renamed = line("").replace("account_id", "org_id");
        let report = manager.import(&renamed, "org_id").await.unwrap();
        assert_eq!(report.imported[0].account_id, "acct");
        assert_eq!(report.imported[0].prefix, "sk_live");
        assert_eq!(report.imported[0].hint, "");
        assert!(report.imported[0].id.as_str().starts_with("ak_"));
    }

    #[tokio::test]
    async fn blank_lines_a_bom_and_crlf_are_read() {
        let manager = manager();
        let input = format!(
            "\u{feff}{}\r\n\r\n   \n",
            line(r#", "hint": "cdef", "prefix": "legacy_live""#)
        );
        let report = manager.import(&input, "account_id").await.unwrap();
        assert_eq!(report.imported.len(), 1);
        assert_eq!(report.imported[0].prefix, "legacy_live");
        assert_eq!(report.imported[0].hint, "cdef");
        let empty = manager.import("\n \n", "account_id").await.unwrap();
        assert_eq!(empty, ImportReport::default());
    }

    #[tokio::test]
    async fn any_line_is_read_or_refused_without_a_panic() {
        let manager = manager();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "null",
            "1e999",
            "-0",
            "\"key_hash\"",
            "\"scopes\"",
            "\"\\ud800\"",
            "\\",
            "é",
            "\u{0}",
            " ",
            "true",
            "\"account_id\"",
            "\"expires_at\"",
            "\"9999-12-31T23:59:59Z\"",
            "\"+10000-01-01T00:00:00Z\"",
        ];
        for _ in 0..2_000 {
            let mut text = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let _ = manager.import(&text, "account_id").await;
        }
        let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        let message = manager
            .import(&deep, "account_id")
            .await
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("line 1: "), "{message}");
    }
}
