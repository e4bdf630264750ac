//! The audit trail: an append-only, hash-chained record of every change to keys and
//! accounts, written by the store **in the transaction of the change** (a change whose
//! transaction fails leaves no event).
//!
//! Each [`AuditEvent`] says when, in which account and environment, who (the
//! [`Actor`]: a key, a signed-in user, the CLI, an operator tool), what ([`Action`]), to
//! which key, the fields it changed (before and after; never a secret or a hash), and
//! the client's address when the change came over HTTP. Each event stores
//! `hash = SHA-256(prev_hash ‖ its content)`, where `prev_hash` is the hash of the
//! account's previous event (64 zeros for the first): editing, removing or reordering
//! an event breaks the chain from there on, and [`verify_chain`] (`apikeys audit
//! verify`) names the first broken event.
//!
//! ```
//! use tower_api_keys::audit::{Action, Actor, AuditEvent, Draft, verify_chain};
//! use serde_json::json;
//!
//! let first = Draft::new("acct_1", Actor::Cli, Action::Revoked).key("ak_1").seal(None);
//! let second = Draft::new("acct_1", Actor::Cli, Action::Revoked).key("ak_2").seal(Some(&first));
//! assert_eq!(verify_chain(&[first.clone(), second.clone()]), Ok(()));
//! let mut tampered = second;
//! tampered.changes = json!({"revoked_at": {"before": null, "after": "2026-01-01T00:00:00Z"}});
//! assert_eq!(verify_chain(&[first, tampered.clone()]), Err(tampered.id));
//! ```

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::key::KeyId;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API key (its id), through the management routes.
    Key(KeyId),
    /// A signed-in user of your dashboard (a `KeyOwner`'s user; `None` if it named none).
    User(Option<String>),
    /// The `apikeys` command-line tool.
    Cli,
    /// Your own code calling the manager directly (bootstrap, admin tools).
    Operator,
}

impl Actor {
    /// As stored: `key:ak_…`, `user:…` (`user` alone for an anonymous owner), `cli`,
    /// `operator`.
    #[must_use]
    pub fn as_string(&self) -> String {
        match self {
            Actor::Key(id) => format!("key:{id}"),
            Actor::User(Some(user)) => format!("user:{user}"),
            Actor::User(None) => "user".to_owned(),
            Actor::Cli => "cli".to_owned(),
            Actor::Operator => "operator".to_owned(),
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// A key was created (`key.created`).
    Created,
    /// A key replaced another (rotation, `key.rotated`; the event is the new key's).
    Rotated,
    /// A credential was issued afresh, replacing the previous one (`key.reissued`).
    Reissued,
    /// A key's name, restrictions, scopes, expiry, end user, metadata, rate limits or
    /// credits changed (`key.updated`).
    Updated,
    /// A key was revoked (`key.revoked`).
    Revoked,
    /// An account's billing standing changed (`account.standing_changed`).
    StandingChanged,
    /// An account's rate limits or balance changed (`account.limits_changed`).
    LimitsChanged,
    /// A key made elsewhere was imported by its hash (`key.imported`; see
    /// [`KeyManager::import`](crate::manage::KeyManager::import)).
    Imported,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::Created,
        Action::Rotated,
        Action::Reissued,
        Action::Updated,
        Action::Revoked,
        Action::StandingChanged,
        Action::LimitsChanged,
        Action::Imported,
    ];

    /// The stable name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "key.created",
            Action::Rotated => "key.rotated",
            Action::Reissued => "key.reissued",
            Action::Updated => "key.updated",
            Action::Revoked => "key.revoked",
            Action::StandingChanged => "account.standing_changed",
            Action::LimitsChanged => "account.limits_changed",
            Action::Imported => "key.imported",
        }
    }

    /// The action of a stable name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == name)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is changing something, and from where: what a store needs to write the event
/// besides the change itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Audit {
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: Action,
    /// The client's address, when the change came over HTTP.
    pub client_ip: Option<IpAddr>,
}

impl Audit {
    /// `action` by `actor`, from nowhere in particular.
    #[must_use]
    pub fn new(actor: Actor, action: Action) -> Self {
        Audit {
            actor,
            action,
            client_ip: None,
        }
    }

    /// `action` by your own code ([`Actor::Operator`]).
    #[must_use]
    pub fn operator(action: Action) -> Self {
        Self::new(Actor::Operator, action)
    }

    /// Notes the client's address.
    #[must_use]
    pub fn from_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.client_ip = ip;
        self
    }
}

/// The hash before an account's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// `ev_…`, unique.
    pub id: String,
    /// When (milliseconds, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The account.
    pub account_id: String,
    /// The environment of the key it concerns (`None` for account events).
    pub environment: Option<String>,
    /// Who ([`Actor::as_string`]).
    pub actor: String,
    /// What ([`Action::as_str`]).
    pub action: String,
    /// The key it concerns, if any.
    pub key_id: Option<String>,
    /// `{"field": {"before": …, "after": …}}` for each field that changed.
    pub changes: serde_json::Value,
    /// The client's address, when over HTTP.
    pub client_ip: Option<String>,
    /// The hash of the account's previous event ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and this event's content, hex.
    pub hash: String,
}

/// The content an event's hash covers, in a fixed order.
#[derive(Serialize)]
struct Hashed<'e> {
    id: &'e str,
    at: String,
    account_id: &'e str,
    environment: Option<&'e str>,
    actor: &'e str,
    action: &'e str,
    key_id: Option<&'e str>,
    changes: &'e serde_json::Value,
    client_ip: Option<&'e str>,
    prev_hash: &'e str,
}

impl AuditEvent {
    /// The hash this event should have, from its content and `prev_hash`.
    #[must_use]
    pub fn expected_hash(&self) -> String {
        let at = self
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let content = Hashed {
            id: &self.id,
            at,
            account_id: &self.account_id,
            environment: self.environment.as_deref(),
            actor: &self.actor,
            action: &self.action,
            key_id: self.key_id.as_deref(),
            changes: &self.changes,
            client_ip: self.client_ip.as_deref(),
            prev_hash: &self.prev_hash,
        };
        let bytes = serde_json::to_vec(&content).expect("an event serializes");
        hex(&Sha256::digest(&bytes))
    }
}

/// Now, truncated to milliseconds (what every store keeps, so hashes survive a round
/// trip).
fn now_in_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).unwrap_or(now)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    out
}

/// An event before it is chained: what a store fills in from a change.
#[derive(Debug, Clone)]
pub struct Draft {
    account_id: String,
    environment: Option<String>,
    actor: Actor,
    action: Action,
    key_id: Option<String>,
    changes: serde_json::Value,
    client_ip: Option<IpAddr>,
}

impl Draft {
    /// `action` by `actor` in `account_id`, changing nothing yet.
    #[must_use]
    pub fn new(account_id: &str, actor: Actor, action: Action) -> Self {
        Draft {
            account_id: account_id.to_owned(),
            environment: None,
            actor,
            action,
            key_id: None,
            changes: serde_json::Value::Object(serde_json::Map::new()),
            client_ip: None,
        }
    }

    /// The draft of `audit` in `account_id`.
    #[must_use]
    pub fn of(audit: &Audit, account_id: &str) -> Self {
        let mut draft = Self::new(account_id, audit.actor.clone(), audit.action);
        draft.client_ip = audit.client_ip;
        draft
    }

    /// The account.
    #[must_use]
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The key it concerns.
    #[must_use]
    pub fn key(mut self, key_id: &str) -> Self {
        self.key_id = Some(key_id.to_owned());
        self
    }

    /// The key's environment.
    #[must_use]
    pub fn environment(mut self, environment: &str) -> Self {
        self.environment = Some(environment.to_owned());
        self
    }

    /// The fields that changed: each field of `after` whose value differs from
    /// `before`'s (both JSON objects; `before` `None` for something new), as
    /// `{"before", "after"}`. Fields named in `skip` are left out.
    #[must_use]
    pub fn changes(
        mut self,
        before: Option<&serde_json::Value>,
        after: &serde_json::Value,
        skip: &[&str],
    ) -> Self {
        let mut changes = serde_json::Map::new();
        let null = serde_json::Value::Null;
        if let Some(after) = after.as_object() {
            for (field, new) in after {
                if skip.contains(&field.as_str()) {
                    continue;
                }
                let old = before.and_then(|b| b.get(field)).unwrap_or(&null);
                if old != new {
                    changes.insert(
                        field.clone(),
                        serde_json::json!({"before": old, "after": new}),
                    );
                }
            }
        }
        self.changes = serde_json::Value::Object(changes);
        self
    }

    /// The event, chained after `previous` (the account's last event), now.
    #[must_use]
    pub fn seal(self, previous: Option<&AuditEvent>) -> AuditEvent {
        self.seal_after(previous.map(|p| p.hash.as_str()))
    }

    /// The event, chained after the hash `previous` (`None`: the account's first).
    #[must_use]
    pub fn seal_after(self, previous: Option<&str>) -> AuditEvent {
        let mut event = AuditEvent {
            id: KeyId::generate_with_prefix("ev").to_string(),
            at: now_in_millis(),
            account_id: self.account_id,
            environment: self.environment,
            actor: self.actor.as_string(),
            action: self.action.as_str().to_owned(),
            key_id: self.key_id,
            changes: self.changes,
            client_ip: self.client_ip.map(|ip| ip.to_string()),
            prev_hash: previous.unwrap_or(GENESIS).to_owned(),
            hash: String::new(),
        };
        event.hash = event.expected_hash();
        event
    }
}

/// Checks one account's events, oldest first: each hash matches its content and each
/// `prev_hash` the hash before it. `Err` names the first event that does not.
pub fn verify_chain(events: &[AuditEvent]) -> Result<(), String> {
    let mut previous = GENESIS;
    for event in events {
        if event.prev_hash != previous || event.hash != event.expected_hash() {
            return Err(event.id.clone());
        }
        previous = &event.hash;
    }
    Ok(())
}

/// Which events to list: an account's, newest first, filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditQuery {
    /// The account (required).
    pub account_id: String,
    /// Only events of keys of this environment, and account events.
    pub environment: Option<String>,
    /// Only this key's.
    pub key_id: Option<String>,
    /// Only this action.
    pub action: Option<Action>,
    /// At or after.
    pub from: Option<OffsetDateTime>,
    /// Before.
    pub to: Option<OffsetDateTime>,
    /// Older than this position (a page's `next` cursor).
    pub before: Option<i64>,
    /// At most this many (at most 200).
    pub limit: usize,
}

impl AuditQuery {
    /// The newest 50 events of `account_id`.
    #[must_use]
    pub fn account(account_id: &str) -> Self {
        AuditQuery {
            account_id: account_id.to_owned(),
            limit: 50,
            ..Self::default()
        }
    }

    /// Whether `event` (at position `seq`) is one this query lists.
    pub(crate) fn matches(&self, seq: i64, event: &AuditEvent) -> bool {
        event.account_id == self.account_id
            && self.environment.as_ref().is_none_or(|environment| {
                event.environment.is_none() || event.environment.as_ref() == Some(environment)
            })
            && self
                .key_id
                .as_ref()
                .is_none_or(|key| event.key_id.as_ref() == Some(key))
            && self
                .action
                .is_none_or(|action| event.action == action.as_str())
            && self.from.is_none_or(|from| event.at >= from)
            && self.to.is_none_or(|to| event.at < to)
            && self.before.is_none_or(|before| seq < before)
    }
}

/// A page of events, newest first, with the cursor of the next (older) page.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditPage {
    /// The events.
    pub events: Vec<AuditEvent>,
    /// Where the next page starts (`AuditQuery::before`), if there is one.
    pub next: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chain_breaks_at_the_first_edited_removed_or_reordered_event() {
        let draft = |n: usize| {
            Draft::new("acct", Actor::Key(KeyId::new("ak_1")), Action::Updated)
                .key(&format!("ak_{n}"))
                .environment("live")
                .changes(
                    Some(&json!({"name": "a"})),
                    &json!({"name": format!("b{n}")}),
                    &[],
                )
        };
        let mut events: Vec<AuditEvent> = Vec::new();
        for n in 0..4 {
            let event = draft(n).seal(events.last());
            events.push(event);
        }
        assert_eq!(verify_chain(&events), Ok(()));
        assert_eq!(
            events[1].changes,
            json!({"name": {"before": "a", "after": "b1"}})
        );
        let mut edited = events.clone();
        edited[2].actor = "cli".into();
        assert_eq!(verify_chain(&edited), Err(events[2].id.clone()));
        let mut removed = events.clone();
        removed.remove(1);
        assert_eq!(verify_chain(&removed), Err(events[2].id.clone()));
        let mut swapped = events.clone();
        swapped.swap(1, 2);
        assert_eq!(verify_chain(&swapped), Err(events[2].id.clone()));
        // A forged hash does not help: the next event's prev_hash no longer matches.
        let mut forged = events.clone();
        forged[1].actor = "cli".into();
        forged[1].hash = forged[1].expected_hash();
        assert_eq!(verify_chain(&forged), Err(events[2].id.clone()));
        assert_eq!(Action::parse("key.revoked"), Some(Action::Revoked));
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("key.imported"), Some(Action::Imported));
        assert_eq!(Actor::User(None).as_string(), "user");
    }
}
