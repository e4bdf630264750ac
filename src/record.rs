//! What a verifier returns for a known key.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use time::OffsetDateTime;

use crate::key::{Environment, KeyId};
use crate::limit::credits::Credits;
use crate::limit::{RateLimit, Slot};
use crate::restriction::Restrictions;
use crate::scope::Scopes;

/// Everything the layer needs to decide on a request made with one key: who it belongs
/// to, what it may do, and whether it is still good.
///
/// Built by a [`KeyVerifier`](crate::KeyVerifier); shared behind an `Arc` by the cache
/// and by [`Principal`](crate::Principal), so it is read, never copied, per request.
///
/// ```
/// use tower_api_keys::{KeyRecord, key::{Environment, KeyId}, scope::Scope};
///
/// let record = KeyRecord::new(KeyId::new("ak_1"), "CI key", "acct_1", Environment::LIVE)
///     .with_scopes([Scope::Read])
///     .with_project("proj_1");
/// assert!(!record.is_revoked());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The key's public id.
    pub id: KeyId,
    /// The key's human name ("CI pipeline key").
    pub name: String,
    /// The account that owns the key.
    pub account_id: String,
    /// The project the key is locked to, if any.
    pub project_id: Option<String>,
    /// What the key may do.
    pub scopes: Scopes,
    /// `live`, `test`, or a custom environment.
    pub environment: Environment,
    /// When the key was created.
    pub created_at: OffsetDateTime,
    /// When the key stops working, if ever.
    pub expires_at: Option<OffsetDateTime>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
    /// The owning account's billing standing.
    pub standing: AccountStanding,
    /// Where and for what the key may be used.
    pub restrictions: Restrictions,
    /// Who created the key: the creating key's id, or the signed-in user of a
    /// [`KeyOwner`](crate::manage::KeyOwner); `None` for operator tools.
    pub created_by: Option<String>,
    /// The end user the key belongs to, if the API says so.
    pub owner_id: Option<String>,
    /// Free-form data the API keeps with the key (a JSON object, at most 4 KiB).
    pub metadata: Metadata,
    /// What the key and its account may spend: rate limits and credits.
    pub limits: KeyLimits,
    /// What the crate keeps with a record while it serves: see [`Runtime`].
    pub(crate) runtime: Runtime,
}

/// An account's billing standing: since when it is past due, and for how long it keeps
/// full access after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccountStanding {
    /// When the account's charge failed, if it is past due.
    pub past_due_since: Option<OffsetDateTime>,
    /// Days of full access after `past_due_since` (default 7).
    pub grace_days: u16,
}

impl Default for AccountStanding {
    fn default() -> Self {
        AccountStanding {
            past_due_since: None,
            grace_days: 7,
        }
    }
}

impl AccountStanding {
    /// An account in good standing, with the default grace period.
    #[must_use]
    pub fn good() -> Self {
        Self::default()
    }

    /// An account past due since `since`, with the default grace period.
    #[must_use]
    pub fn past_due(since: OffsetDateTime) -> Self {
        AccountStanding {
            past_due_since: Some(since),
            ..Self::default()
        }
    }

    /// Sets the grace period in days.
    #[must_use]
    pub fn with_grace_days(mut self, days: u16) -> Self {
        self.grace_days = days;
        self
    }
}

impl KeyRecord {
    /// A record with no scopes, no project, created now, never expiring, not revoked.
    #[must_use]
    pub fn new(
        id: KeyId,
        name: impl Into<String>,
        account_id: impl Into<String>,
        environment: Environment,
    ) -> Self {
        KeyRecord {
            id,
            name: name.into(),
            account_id: account_id.into(),
            project_id: None,
            scopes: Scopes::none(),
            environment,
            created_at: OffsetDateTime::now_utc(),
            expires_at: None,
            revoked_at: None,
            standing: AccountStanding::default(),
            restrictions: Restrictions::none(),
            created_by: None,
            owner_id: None,
            metadata: Metadata::new(),
            limits: KeyLimits::default(),
            runtime: Runtime::default(),
        }
    }

    /// This record's runtime state, made on first use.
    pub(crate) fn runtime(&self) -> &RuntimeState {
        self.runtime.state()
    }

    /// The rate limits as slots: the key's (`false`) then the account's (`true`).
    pub(crate) fn slots(&self) -> &[(bool, Slot)] {
        self.runtime().slots.get_or_init(|| {
            let limits = &self.limits;
            let own = limits.ratelimits.iter().map(|limit| (false, limit));
            let account = limits.account.ratelimits.iter().map(|limit| (true, limit));
            own.chain(account)
                .map(|(shared, limit)| (shared, Slot::new(limit.clone())))
                .collect()
        })
    }

    /// A copy of this record that shares its runtime state (its usage, slots and
    /// leases): the cache gives each thread one of a hot record, so that the reference
    /// count a request takes is one only that thread writes.
    pub(crate) fn copy_sharing_runtime(&self) -> KeyRecord {
        KeyRecord {
            runtime: self.runtime.share(),
            ..self.clone()
        }
    }

    /// Sets what the key and its account may spend.
    #[must_use]
    pub fn with_limits(mut self, limits: KeyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the scopes.
    #[must_use]
    pub fn with_scopes(mut self, scopes: impl Into<Scopes>) -> Self {
        self.scopes = scopes.into();
        self
    }

    /// Locks the key to a project.
    #[must_use]
    pub fn with_project(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = Some(project_id.into());
        self
    }

    /// Sets the creation time.
    #[must_use]
    pub fn with_created_at(mut self, at: OffsetDateTime) -> Self {
        self.created_at = at;
        self
    }

    /// Sets the expiry.
    #[must_use]
    pub fn with_expires_at(mut self, at: Option<OffsetDateTime>) -> Self {
        self.expires_at = at;
        self
    }

    /// Marks the key revoked at `at`.
    #[must_use]
    pub fn with_revoked_at(mut self, at: Option<OffsetDateTime>) -> Self {
        self.revoked_at = at;
        self
    }

    /// Sets the account's billing standing.
    #[must_use]
    pub fn with_standing(mut self, standing: AccountStanding) -> Self {
        self.standing = standing;
        self
    }

    /// Sets the restrictions.
    #[must_use]
    pub fn with_restrictions(mut self, restrictions: Restrictions) -> Self {
        self.restrictions = restrictions;
        self
    }

    /// Sets or clears the project.
    #[must_use]
    pub fn with_project_id(mut self, project_id: Option<String>) -> Self {
        self.project_id = project_id;
        self
    }

    /// Sets who created the key, the end user it belongs to, and its metadata.
    #[must_use]
    pub fn with_provenance(
        mut self,
        created_by: Option<String>,
        owner_id: Option<String>,
        metadata: Metadata,
    ) -> Self {
        self.created_by = created_by;
        self.owner_id = owner_id;
        self.metadata = metadata;
        self
    }

    /// Whether the key was revoked.
    #[must_use]
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether the key has expired at `now`.
    #[must_use]
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Rate limits and credits of an account, shared by all its keys (set by the operator,
/// never by the account's own keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct AccountLimits {
    /// Limits every key of the account spends together (at most five).
    #[serde(default)]
    pub ratelimits: Vec<RateLimit>,
    /// A balance every key of the account spends.
    #[serde(default)]
    pub credits: Option<Credits>,
}

impl AccountLimits {
    /// No limits, no balance.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a rate limit.
    #[must_use]
    pub fn ratelimit(mut self, limit: RateLimit) -> Self {
        self.ratelimits.push(limit);
        self
    }

    /// Sets the balance.
    #[must_use]
    pub fn credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }
}

/// What one key may spend: its own rate limits and credits, and its account's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyLimits {
    /// The key's own rate limits (each key spends its own quota).
    pub ratelimits: Vec<RateLimit>,
    /// The key's own balance, as loaded.
    pub credits: Option<Credits>,
    /// Its account's limits and balance, shared by the account's keys.
    pub account: AccountLimits,
}

impl KeyLimits {
    /// A key's own limits and balance, with its account's.
    #[must_use]
    pub fn new(
        ratelimits: Vec<RateLimit>,
        credits: Option<Credits>,
        account: AccountLimits,
    ) -> Self {
        KeyLimits {
            ratelimits,
            credits,
            account,
        }
    }

    /// Whether there is nothing to spend.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ratelimits.is_empty()
            && self.credits.is_none()
            && self.account.ratelimits.is_empty()
            && self.account.credits.is_none()
    }
}

/// What the crate keeps with a record while it serves: runtime state, not data
/// (ignored by `==`, reset by `clone`), made on first use, and shared by the copies of
/// a record that the cache makes for each thread
/// ([`KeyRecord::copy_sharing_runtime`]).
#[derive(Default)]
pub(crate) struct Runtime(std::sync::OnceLock<Arc<RuntimeState>>);

/// See [`Runtime`].
#[derive(Default)]
pub(crate) struct RuntimeState {
    /// When the usage recorder last noted this key (unix seconds).
    pub(crate) last_seen: AtomicI64,
    /// Requests not yet flushed, by hour, outcome and client address.
    pub(crate) usage: UsageCell,
    /// The key's then the account's limits as slots.
    slots: std::sync::OnceLock<Box<[(bool, Slot)]>>,
    /// What the layer keeps per record (its leases of the balances), so that a hit
    /// looks nothing up.
    pub(crate) memo: Memo,
}

impl Runtime {
    fn state(&self) -> &RuntimeState {
        self.shared()
    }

    fn shared(&self) -> &Arc<RuntimeState> {
        self.0.get_or_init(Arc::default)
    }

    /// The same state, for a copy of the record.
    fn share(&self) -> Runtime {
        Runtime(std::sync::OnceLock::from(Arc::clone(self.shared())))
    }
}

impl Clone for Runtime {
    fn clone(&self) -> Self {
        Runtime::default()
    }
}

impl PartialEq for Runtime {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Runtime {}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Runtime")
    }
}

/// A value made on first use by its owner (identified by an address), kept with a
/// record's runtime state.
#[derive(Default)]
pub(crate) struct Memo(std::sync::OnceLock<(usize, Arc<dyn std::any::Any + Send + Sync>)>);

impl Memo {
    /// The value `owner` keeps here, made by `make` on first use; `None` if another
    /// owner made it first (then `owner` keeps its own elsewhere).
    pub(crate) fn get_or_init<T: Send + Sync + 'static>(
        &self,
        owner: usize,
        make: impl FnOnce() -> T,
    ) -> Option<&T> {
        let (made_by, value) = self.0.get_or_init(|| (owner, Arc::new(make())));
        (*made_by == owner).then(|| value.downcast_ref()).flatten()
    }
}

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Memo")
    }
}

/// A key's metadata: a JSON object.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// The most bytes a key's metadata takes as JSON.
pub const MAX_METADATA_BYTES: usize = 4096;

/// Requests of one record not yet flushed: per hour (unix seconds of its start), the
/// outcomes and client addresses. One short lock per request, of this key's cell only.
#[derive(Default)]
pub(crate) struct UsageCell {
    /// Whether the usage recorder holds this record for its next flush.
    pub(crate) registered: std::sync::atomic::AtomicBool,
    /// The hot pair: a digest of the (hour, client address) of the last accepted
    /// request counted under the lock (0: none), and accepted requests of that pair
    /// since, counted without the lock. The common case, one client per key and hour,
    /// costs one atomic add.
    hot: std::sync::atomic::AtomicU64,
    hot_count: std::sync::atomic::AtomicU64,
    pub(crate) hours: std::sync::Mutex<Hours>,
}

/// The tallies of a cell, and the pair the hot count belongs to.
#[derive(Debug, Default)]
pub(crate) struct Hours {
    tallies: Vec<HourTally>,
    hot: Option<(i64, Option<std::net::IpAddr>)>,
    /// The hot pair before the last take.
    last: Option<(i64, Option<std::net::IpAddr>)>,
}

fn pair_digest(hour: i64, ip: Option<std::net::IpAddr>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (hour, ip).hash(&mut hasher);
    hasher.finish() | 1
}

/// One hour of one key's requests.
#[derive(Debug, Default)]
pub(crate) struct HourTally {
    pub(crate) hour: i64,
    pub(crate) outcomes: Vec<(&'static str, u64)>,
    pub(crate) ips: Vec<(std::net::IpAddr, u64)>,
    /// Requests from addresses beyond the most a bucket names, or unknown.
    pub(crate) other: u64,
}

impl UsageCell {
    /// Counts one request of `outcome` from `ip` in the hour starting at `hour`.
    pub(crate) fn add(&self, hour: i64, outcome: &'static str, ip: Option<std::net::IpAddr>) {
        use std::sync::atomic::Ordering;
        let accepted = outcome == "accepted";
        let digest = if accepted { pair_digest(hour, ip) } else { 0 };
        if accepted && self.hot.load(Ordering::Acquire) == digest {
            self.hot_count.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut hours = self
            .hours
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if accepted {
            // This pair becomes the hot one: the old pair's count goes to its tally.
            Self::settle(
                &mut hours,
                self.hot_count.swap(0, Ordering::AcqRel),
                (hour, ip),
            );
            hours.hot = Some((hour, ip));
            self.hot.store(digest, Ordering::Release);
        }
        Self::tally(&mut hours.tallies, hour, outcome, ip, 1);
    }

    /// Adds the hot pair's `count` to its tally (to `fallback`'s when there is no hot
    /// pair: requests counted just as a flush took the cell, never lost).
    fn settle(hours: &mut Hours, count: u64, fallback: (i64, Option<std::net::IpAddr>)) {
        if count > 0 {
            let (hour, ip) = hours.hot.unwrap_or(fallback);
            Self::tally(&mut hours.tallies, hour, "accepted", ip, count);
        }
    }

    fn tally(
        hours: &mut Vec<HourTally>,
        hour: i64,
        outcome: &'static str,
        ip: Option<std::net::IpAddr>,
        n: u64,
    ) {
        let at = match hours.iter().position(|tally| tally.hour == hour) {
            Some(at) => at,
            None => {
                hours.push(HourTally {
                    hour,
                    ..HourTally::default()
                });
                hours.len() - 1
            }
        };
        let tally = &mut hours[at];
        match tally.outcomes.iter_mut().find(|(seen, _)| *seen == outcome) {
            Some((_, count)) => *count += n,
            None => tally.outcomes.push((outcome, n)),
        }
        match ip {
            Some(ip) => {
                if let Some((_, count)) = tally.ips.iter_mut().find(|(seen, _)| *seen == ip) {
                    *count += n;
                } else if tally.ips.len() < 80 {
                    // Beyond 4 × the named limit the rest is `other` already here (the
                    // store keeps the most frequent 20 of what it is sent).
                    tally.ips.push((ip, n));
                } else {
                    tally.other += n;
                }
            }
            None => tally.other += n,
        }
    }

    /// Takes what was counted (the hot pair's count included; the next accepted
    /// request starts a hot pair anew).
    pub(crate) fn take(&self) -> Vec<HourTally> {
        use std::sync::atomic::Ordering;
        let mut hours = self
            .hours
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.hot.store(0, Ordering::Release);
        // Always swapped: an add that read the hot pair before it was cleared lands
        // here, and is booked to the last pair rather than lost.
        let count = self.hot_count.swap(0, Ordering::AcqRel);
        if let Some(pair) = hours.hot.or(hours.last) {
            Self::settle(&mut hours, count, pair);
        }
        hours.last = hours.hot.take().or(hours.last);
        std::mem::take(&mut hours.tallies)
    }
}

impl fmt::Debug for UsageCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UsageCell")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hot and cold counts, taken while they grow: every request counted once.
    #[test]
    fn a_usage_cell_loses_no_request_while_it_is_taken() {
        let cell = UsageCell::default();
        let ips: [std::net::IpAddr; 2] = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let taken = std::sync::Mutex::new(0u64);
        let count = |tallies: Vec<HourTally>| -> u64 {
            tallies
                .iter()
                .map(|t| t.outcomes.iter().map(|(_, n)| n).sum::<u64>())
                .sum()
        };
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let cell = &cell;
                scope.spawn(move || {
                    for i in 0..10_000u64 {
                        // Mostly one client per thread, sometimes the other; a refusal now
                        // and then.
                        let ip = ips[usize::from(i % 97 == 0) ^ (thread % 2)];
                        let outcome = if i % 501 == 0 {
                            "rate_limited"
                        } else {
                            "accepted"
                        };
                        cell.add(3_600, outcome, Some(ip));
                    }
                });
            }
            scope.spawn(|| {
                for _ in 0..200 {
                    *taken.lock().unwrap() += count(cell.take());
                    std::thread::yield_now();
                }
            });
        });
        // What the last take missed is settled by the next request, or the next take.
        cell.add(3_600, "rate_limited", None);
        let total = *taken.lock().unwrap() + count(cell.take());
        assert_eq!(total, 40_001);
    }
}
