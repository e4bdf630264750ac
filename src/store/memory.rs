use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{
    DEFAULT_ACTIVE_KEY_LIMIT, ImportOutcome, KeyChanges, KeyInfo, KeyStore, StoreError, StoredKey,
    UsageBucket, check_importable, key_event, limits_event, standing_event,
};
use crate::audit::{Audit, AuditEvent, AuditPage, AuditQuery, Draft};
use crate::key::{KeyHash, KeyId};
use crate::limit::credits::{
    CreditError, CreditGrant, CreditStore, CreditSubject, Credits, may_return, take_from,
};
use crate::record::{AccountLimits, AccountStanding, KeyLimits, KeyRecord};
use crate::verify::{KeyVerifier, VerifyError};

/// A [`KeyStore`] in memory: for tests, examples and single-process tools. Keys are
/// lost when the process ends. Cheap to clone; clones share the keys.
#[derive(Clone)]
pub struct MemoryStore {
    keys: Arc<Mutex<Keys>>,
    limit: usize,
}

#[derive(Default)]
struct Keys {
    by_id: HashMap<KeyId, KeyInfo>,
    by_hash: HashMap<[u8; 32], KeyId>,
    standings: HashMap<String, AccountStanding>,
    limits: HashMap<String, AccountLimits>,
    /// The audit trail, in order, with positions.
    events: Vec<(i64, AuditEvent)>,
    /// Hourly usage by key and hour.
    usage: HashMap<(KeyId, OffsetDateTime), UsageBucket>,
}

impl Keys {
    /// Appends an event, chained after its account's last.
    fn append(&mut self, draft: Draft) {
        let account = draft.account_id().to_owned();
        let previous = self
            .events
            .iter()
            .rev()
            .find(|(_, event)| event.account_id == account)
            .map(|(_, event)| event.hash.clone());
        let seq = self.events.last().map_or(1, |(seq, _)| seq + 1);
        self.events
            .push((seq, draft.seal_after(previous.as_deref())));
    }

    /// The balance of `subject`, if it has one.
    fn credits(&mut self, subject: CreditSubject<'_>) -> Option<&mut Credits> {
        match subject {
            CreditSubject::Key(id) => self
                .by_id
                .get_mut(&KeyId::new(id))
                .and_then(|key| key.credits.as_mut()),
            CreditSubject::Account(id) => self
                .limits
                .get_mut(id)
                .and_then(|limits| limits.credits.as_mut()),
        }
    }
}

/// Epochs of balances, never reused (a balance removed and set again gets a new one,
/// so leases of the old one never come back to life).
static EPOCHS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

fn next_epoch() -> i64 {
    EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A balance as stored anew: refilled from now, in a new epoch.
fn set_balance(credits: Option<Credits>) -> Option<Credits> {
    credits.map(|mut credits| {
        credits.refilled_at = Some(OffsetDateTime::now_utc());
        credits.epoch = next_epoch();
        credits
    })
}

impl MemoryStore {
    /// An empty store with the default active-key limit (50 per account and
    /// environment).
    #[must_use]
    pub fn new() -> Self {
        MemoryStore {
            keys: Arc::default(),
            limit: DEFAULT_ACTIVE_KEY_LIMIT,
        }
    }

    /// Sets the most active keys per account and environment.
    #[must_use]
    pub fn with_active_key_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn owned<'a>(
        keys: &'a mut Keys,
        account_id: &str,
        id: &KeyId,
    ) -> Result<&'a mut KeyInfo, StoreError> {
        keys.by_id
            .get_mut(id)
            .filter(|info| info.account_id == account_id)
            .ok_or(StoreError::NotFound)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.keys().by_id.len())
            .field("limit", &self.limit)
            .finish()
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_audited(&self, key: StoredKey, audit: &Audit) -> Result<KeyInfo, StoreError> {
        let mut keys = self.keys();
        let replaced = key.replaces.as_ref().map(|r| r.id.clone());
        let replaced = replaced.as_ref();
        let replaceable = |keys: &Keys, id: &KeyId| {
            keys.by_id
                .get(id)
                .is_some_and(|old| old.account_id == key.account_id && old.revoked_at.is_none())
        };
        if replaced.is_some_and(|id| !replaceable(&keys, id)) {
            return Err(StoreError::NotFound);
        }
        let now = OffsetDateTime::now_utc();
        let active = keys
            .by_id
            .values()
            .filter(|info| {
                info.account_id == key.account_id
                    && info.environment == key.environment
                    && info.revoked_at.is_none()
                    && info.expires_at.is_none_or(|at| at > now)
                    && Some(&info.id) != replaced
            })
            .count();
        if active >= self.limit {
            return Err(StoreError::LimitReached { limit: self.limit });
        }
        if keys.by_hash.contains_key(key.hash.as_bytes()) || keys.by_id.contains_key(&key.id) {
            return Err(StoreError::Backend("duplicate key hash or id".into()));
        }
        let mut info = key.info();
        info.credits = set_balance(info.credits);
        if let Some(replacement) = &key.replaces {
            let old = keys.by_id.get_mut(&replacement.id).expect("checked above");
            if replacement.moves_credits {
                if let (Some(new), Some(old)) = (info.credits.as_mut(), old.credits.as_mut()) {
                    new.remaining = old.remaining;
                    new.refilled_at = old.refilled_at;
                    old.remaining = 0;
                    old.refill = None;
                    old.epoch = next_epoch();
                }
            }
            if replacement.ends_at <= OffsetDateTime::now_utc() {
                old.revoked_at = Some(replacement.ends_at);
            } else {
                old.expires_at = Some(
                    old.expires_at
                        .map_or(replacement.ends_at, |at| at.min(replacement.ends_at)),
                );
            }
        }
        keys.by_hash.insert(*key.hash.as_bytes(), key.id.clone());
        keys.by_id.insert(key.id, info.clone());
        keys.append(key_event(audit, None, &info, replaced));
        Ok(info)
    }

    async fn import_audited(
        &self,
        keys: Vec<StoredKey>,
        audit: &Audit,
    ) -> Result<ImportOutcome, StoreError> {
        check_importable(&keys)?;
        let mut state = self.keys();
        // Checked before anything changes: all or nothing.
        let fresh_ids = {
            let mut ids = HashSet::new();
            keys.iter()
                .all(|key| !state.by_id.contains_key(&key.id) && ids.insert(&key.id))
        };
        if !fresh_ids {
            return Err(StoreError::Backend("duplicate key id".into()));
        }
        let mut outcome = ImportOutcome::default();
        for key in keys {
            if state.by_hash.contains_key(key.hash.as_bytes()) {
                outcome.skipped += 1;
                continue;
            }
            let mut info = key.info();
            info.credits = set_balance(info.credits);
            state.by_hash.insert(*key.hash.as_bytes(), key.id.clone());
            state.by_id.insert(key.id, info.clone());
            state.append(key_event(audit, None, &info, None));
            outcome.imported.push(info);
        }
        Ok(outcome)
    }

    async fn list(&self, account_id: &str) -> Result<Vec<KeyInfo>, StoreError> {
        let keys = self.keys();
        let mut listed: Vec<KeyInfo> = keys
            .by_id
            .values()
            .filter(|info| info.account_id == account_id && info.revoked_at.is_none())
            .cloned()
            .collect();
        listed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(listed)
    }

    async fn get(&self, account_id: &str, id: &KeyId) -> Result<KeyInfo, StoreError> {
        Self::owned(&mut self.keys(), account_id, id).map(|info| info.clone())
    }

    async fn update_audited(
        &self,
        account_id: &str,
        id: &KeyId,
        changes: &KeyChanges,
        audit: &Audit,
    ) -> Result<KeyInfo, StoreError> {
        let mut keys = self.keys();
        let info = Self::owned(&mut keys, account_id, id)?;
        if info.revoked_at.is_some() {
            return Err(StoreError::NotFound);
        }
        let before = info.clone();
        changes.apply(info);
        if let Some(credits) = changes.credits {
            info.credits = set_balance(credits);
        }
        let after = info.clone();
        keys.append(key_event(audit, Some(&before), &after, None));
        Ok(after)
    }

    async fn revoke_audited(
        &self,
        account_id: &str,
        id: &KeyId,
        audit: &Audit,
    ) -> Result<KeyInfo, StoreError> {
        let mut keys = self.keys();
        let info = Self::owned(&mut keys, account_id, id)?;
        if info.revoked_at.is_some() {
            return Ok(info.clone());
        }
        let before = info.clone();
        info.revoked_at = Some(super::now_in_millis());
        let after = info.clone();
        keys.append(key_event(audit, Some(&before), &after, None));
        Ok(after)
    }

    async fn touch(&self, used: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        let mut keys = self.keys();
        for (id, at) in used {
            if let Some(info) = keys.by_id.get_mut(id) {
                if info.last_used_at.is_none_or(|last| last < *at) {
                    info.last_used_at = Some(*at);
                }
            }
        }
        Ok(())
    }

    async fn find_by_id(&self, id: &KeyId) -> Result<Option<KeyInfo>, StoreError> {
        Ok(self.keys().by_id.get(id).cloned())
    }

    async fn standing(&self, account_id: &str) -> Result<AccountStanding, StoreError> {
        Ok(self
            .keys()
            .standings
            .get(account_id)
            .copied()
            .unwrap_or_default())
    }

    async fn set_standing_audited(
        &self,
        account_id: &str,
        standing: AccountStanding,
        audit: &Audit,
    ) -> Result<(), StoreError> {
        let mut keys = self.keys();
        let before = keys
            .standings
            .insert(account_id.to_owned(), standing)
            .unwrap_or_default();
        keys.append(standing_event(audit, account_id, before, standing));
        Ok(())
    }

    async fn account_limits(&self, account_id: &str) -> Result<AccountLimits, StoreError> {
        Ok(self
            .keys()
            .limits
            .get(account_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn set_account_limits_audited(
        &self,
        account_id: &str,
        limits: &AccountLimits,
        audit: &Audit,
    ) -> Result<(), StoreError> {
        let mut keys = self.keys();
        let mut limits = limits.clone();
        limits.credits = set_balance(limits.credits);
        let before = keys
            .limits
            .insert(account_id.to_owned(), limits.clone())
            .unwrap_or_default();
        keys.append(limits_event(audit, account_id, &before, &limits));
        Ok(())
    }

    async fn audit_events(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let keys = self.keys();
        let limit = query.limit.clamp(1, 200);
        let mut events: Vec<(i64, AuditEvent)> = keys
            .events
            .iter()
            .rev()
            .filter(|(seq, event)| query.matches(*seq, event))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = (events.len() > limit).then(|| events[limit - 1].0);
        events.truncate(limit);
        Ok(AuditPage {
            events: events.into_iter().map(|(_, event)| event).collect(),
            next,
        })
    }

    async fn audit_trail(&self, account_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        Ok(self
            .keys()
            .events
            .iter()
            .filter(|(_, event)| event.account_id == account_id)
            .map(|(_, event)| event.clone())
            .collect())
    }

    async fn record_usage(&self, buckets: &[UsageBucket]) -> Result<(), StoreError> {
        let mut keys = self.keys();
        for bucket in buckets {
            keys.usage
                .entry((bucket.key_id.clone(), bucket.hour))
                .or_insert_with(|| UsageBucket::new(bucket.key_id.clone(), bucket.hour))
                .merge(bucket);
        }
        Ok(())
    }

    async fn usage(
        &self,
        id: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        let keys = self.keys();
        let mut buckets: Vec<UsageBucket> = keys
            .usage
            .values()
            .filter(|bucket| bucket.key_id == *id && bucket.hour >= from && bucket.hour < to)
            .cloned()
            .collect();
        buckets.sort_by_key(|bucket| bucket.hour);
        Ok(buckets)
    }

    async fn usage_totals(
        &self,
        account_id: &str,
        since: OffsetDateTime,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        let keys = self.keys();
        let mut totals: HashMap<KeyId, u64> = HashMap::new();
        for bucket in keys.usage.values() {
            let mine = keys
                .by_id
                .get(&bucket.key_id)
                .is_some_and(|key| key.account_id == account_id);
            if mine && bucket.hour >= since {
                let accepted = bucket.outcomes.get("accepted").copied().unwrap_or(0);
                *totals.entry(bucket.key_id.clone()).or_insert(0) += accepted;
            }
        }
        Ok(totals.into_iter().collect())
    }

    async fn audited_accounts(&self) -> Result<Vec<String>, StoreError> {
        let mut accounts: Vec<String> = self
            .keys()
            .events
            .iter()
            .map(|(_, event)| event.account_id.clone())
            .collect();
        accounts.sort();
        accounts.dedup();
        Ok(accounts)
    }
}

#[async_trait]
impl CreditStore for MemoryStore {
    async fn take_credits(
        &self,
        subject: CreditSubject<'_>,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<CreditGrant, CreditError> {
        Ok(match self.keys().credits(subject) {
            Some(credits) => take_from(credits, want, now),
            None => CreditGrant::unlimited(),
        })
    }

    async fn return_credits(
        &self,
        subject: CreditSubject<'_>,
        units: u64,
        epoch: i64,
        until: Option<OffsetDateTime>,
    ) -> Result<(), CreditError> {
        let now = OffsetDateTime::now_utc();
        if let Some(credits) = self.keys().credits(subject) {
            if may_return(credits, epoch, until, now) {
                credits.remaining = credits.remaining.saturating_add(units);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KeyVerifier for MemoryStore {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        let keys = self.keys();
        Ok(keys
            .by_hash
            .get(hash.as_bytes())
            .and_then(|id| keys.by_id.get(id))
            .map(|info| {
                let standing = keys
                    .standings
                    .get(&info.account_id)
                    .copied()
                    .unwrap_or_default();
                let account = keys.limits.get(&info.account_id).cloned();
                let limits = KeyLimits::new(
                    info.ratelimits.clone(),
                    info.credits,
                    account.unwrap_or_default(),
                );
                info.to_record().with_standing(standing).with_limits(limits)
            }))
    }

    fn credit_store(&self) -> Option<Arc<dyn CreditStore>> {
        Some(Arc::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Environment;
    use crate::scope::{Scope, Scopes};
    use crate::store::{CreatedKey, KeyChanges, create_for_test};

    async fn create(
        store: &MemoryStore,
        account: &str,
        name: &str,
        environment: Environment,
        scopes: impl Into<Scopes>,
    ) -> Result<CreatedKey, StoreError> {
        create_for_test(store, account, name, environment, scopes.into()).await
    }

    #[tokio::test]
    async fn create_stores_the_hash_and_returns_the_key_once() {
        let store = MemoryStore::new();
        let created = create(&store, "a", "ci", Environment::LIVE, [Scope::Read])
            .await
            .unwrap();
        assert!(created.key.expose_secret().starts_with("sk_live_"));
        assert_eq!(created.info.prefix, "sk_live");
        assert_eq!(created.info.hint, created.key.hint());
        let record = store.verify(&created.key.hash()).await.unwrap().unwrap();
        assert_eq!(record.id, created.info.id);
        assert_eq!(record.scopes, Scope::Read.into());
        let listed = serde_json::to_string(&store.list("a").await.unwrap()).unwrap();
        assert!(!listed.contains(created.key.expose_secret()));
        assert!(!listed.contains(&created.key.hash().to_hex()));
    }

    #[tokio::test]
    async fn the_active_key_limit_counts_only_active_keys() {
        let store = MemoryStore::new().with_active_key_limit(2);
        let new = |account| create(&store, account, "k", Environment::TEST, Scopes::none());
        let first = new("a").await.unwrap();
        new("a").await.unwrap();
        assert!(matches!(
            new("a").await,
            Err(StoreError::LimitReached { limit: 2 })
        ));
        // Another account has its own limit.
        new("b").await.unwrap();
        store.revoke("a", &first.info.id).await.unwrap();
        new("a").await.unwrap();
    }

    #[tokio::test]
    async fn other_accounts_keys_are_not_found() {
        let store = MemoryStore::new();
        let key = create(&store, "a", "k", Environment::LIVE, Scopes::none())
            .await
            .unwrap();
        let id = &key.info.id;
        assert!(matches!(
            store.get("b", id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.update("b", id, &KeyChanges::name("x")).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.revoke("b", id).await,
            Err(StoreError::NotFound)
        ));
        assert!(store.list("b").await.unwrap().is_empty());
        assert_eq!(store.get("a", id).await.unwrap().revoked_at, None);
    }

    #[tokio::test]
    async fn rename_revoke_and_touch() {
        let store = MemoryStore::new();
        let key = create(&store, "a", "old", Environment::LIVE, Scopes::none())
            .await
            .unwrap();
        let id = &key.info.id;
        assert_eq!(
            store
                .update("a", id, &KeyChanges::name("new"))
                .await
                .unwrap()
                .name,
            "new"
        );

        let at = OffsetDateTime::now_utc();
        store.touch(&[(id.clone(), at)]).await.unwrap();
        assert_eq!(store.list("a").await.unwrap()[0].last_used_at, Some(at));

        let first = store.revoke("a", id).await.unwrap().revoked_at.unwrap();
        let again = store.revoke("a", id).await.unwrap().revoked_at.unwrap();
        assert_eq!(first, again, "revoking twice keeps the first time");
        assert!(store.list("a").await.unwrap().is_empty());
        assert!(
            store
                .verify(&key.key.hash())
                .await
                .unwrap()
                .unwrap()
                .is_revoked()
        );
    }
}
