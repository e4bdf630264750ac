//! What a request spends: every rate limit that applies to its key (the layer's, the
//! key's own, its account's; in process or through Redis) and its credits (the key's
//! and its account's, leased from the store), and [`Cost`], the per-route layer that
//! says how much a route costs.
//!
//! The layer spends the default cost, 1 (or the cost
//! [`ApiKeyLayer::route_costs`](crate::ApiKeyLayer::route_costs) gives), before the
//! route is known. A route behind a [`Cost`] layer then spends its own cost instead:
//! what the layer spent is given back and the route's cost spent in one step, so a
//! refused request spends nothing, and a route of cost 0 spends nothing at all. A key
//! without even the layer's unit left is refused before routing, though: a route that
//! must pass then (cost 0) or whose refusals should tell when its whole cost fits
//! (`Retry-After`) is declared on the layer with `route_costs`.
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::post};
//! use tower_api_keys::meter::Cost;
//!
//! let app: Router = Router::new()
//!     .route("/v1/items", post(|| async { "created" }).route_layer(Cost::new(5)));
//! # }
//! ```
//!
//! **Credits are exact.** An instance takes credits from the store in blocks (a lease:
//! what the request needs plus up to 99 more by default,
//! [`ApiKeyLayer::credit_lease`](crate::ApiKeyLayer::credit_lease), but never more than
//! an eighth of what the balance holds) with one atomic statement, and spends them in
//! memory; it never spends more than it was
//! handed, so the sum over every instance never exceeds the balance. The store is
//! written once per block, not once per request. The price is an **under-spend
//! window**: credits leased by one instance are not available to another until they
//! are spent or returned (on shutdown, through
//! [`ApiKeyLayer::return_credits`](crate::ApiKeyLayer::return_credits)), so another
//! instance may refuse a request while credits remain in a lease elsewhere; a lease of
//! 1 removes the window at the price of one write per request. A lease never outlives
//! the next refill, and a balance set by hand (a new epoch) drops the leases of the
//! one before.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{AuthError, ErrorResponder};
use crate::limit::credits::{CreditStore, CreditSubject};
#[cfg(feature = "redis")]
use crate::limit::redis::RedisLimiter;
use crate::limit::{Decision, RATELIMIT, RateLimit, RateLimiter, Refusal, Slot};
use crate::metrics::{Incident, Outcomes};
use crate::principal::Principal;
use crate::record::KeyRecord;

/// What every request costs unless its route says otherwise.
pub(crate) const DEFAULT_COST: u32 = 1;

/// Whose quota a limit of the layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Per {
    Key,
    Account,
}

/// A limit of the layer (every key has it) with whose it is.
#[derive(Debug)]
pub(crate) struct LayerSlot {
    pub(crate) per: Per,
    pub(crate) slot: Slot,
}

/// Subject spaces in the limiters: the layer's limits per key and per account, a key's
/// own and its account's, each apart (equal names never share a quota).
const LAYER_KEY: u8 = 0;
const LAYER_ACCOUNT: u8 = 1;
const OWN_KEY: u8 = 2;
const OWN_ACCOUNT: u8 = 3;

/// Where the limit closest to exhaustion lives, for the response's fields.
enum SlotRef {
    Layer(Arc<[LayerSlot]>, usize),
    Record(Arc<KeyRecord>, usize),
}

impl SlotRef {
    fn slot(&self) -> &Slot {
        match self {
            SlotRef::Layer(slots, index) => &slots[*index].slot,
            SlotRef::Record(record, index) => &record.slots()[*index].1,
        }
    }
}

/// The limit closest to exhaustion after an accepted request, and what its check said:
/// what the response's `RateLimit` fields tell.
pub(crate) struct Quota {
    slot: SlotRef,
    decision: Decision,
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("limit", &self.slot.slot().limit.name)
            .field("decision", &self.decision)
            .finish()
    }
}

impl Quota {
    /// Writes the fields into `headers`, unless a route's [`Cost`] wrote newer ones (or
    /// refused the request for its credits).
    pub(crate) fn insert_into(&self, status: http::StatusCode, headers: &mut http::HeaderMap) {
        if status == http::StatusCode::PAYMENT_REQUIRED || headers.contains_key(RATELIMIT) {
            return;
        }
        self.slot.slot().insert_fields(&self.decision, headers);
    }

    fn overwrite(&self, headers: &mut http::HeaderMap) {
        self.slot.slot().insert_fields(&self.decision, headers);
    }
}

/// The boxed future of a spend that has to wait for Redis or the credit store.
pub(crate) type SpendFuture =
    Pin<Box<dyn Future<Output = Result<Option<Quota>, AuthError>> + Send + 'static>>;

/// A spend, decided now (the hit path) or later.
pub(crate) enum Spent {
    Now(Result<Option<Quota>, AuthError>),
    Later(SpendFuture),
}

/// What an accepted request spent, in its extensions, for a route's [`Cost`].
#[derive(Clone)]
pub(crate) struct Ticket {
    meter: Arc<Meter>,
    spent: u32,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("spent", &self.spent)
            .finish()
    }
}

/// Spends rate limits and credits for the layer. See the [module docs](self).
pub(crate) struct Meter {
    pub(crate) slots: Arc<[LayerSlot]>,
    pub(crate) limiter: RateLimiter,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<RedisLimiter>,
    /// Shared by every copy of the layer, so that returning credits reaches them all.
    pub(crate) ledger: Arc<Ledger>,
    /// What routes' [`Cost`] layers refuse, by code.
    pub(crate) refusals: Arc<Outcomes>,
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter")
            .field("limits", &self.slots.len())
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// One limit a request spends, with where it lives.
#[derive(Clone, Copy)]
struct Check<'r> {
    space: u8,
    subject: &'r str,
    limit: &'r RateLimit,
    at: usize,
    own: bool,
}

impl Meter {
    pub(crate) fn new(credits: Option<Arc<dyn CreditStore>>) -> Self {
        Meter {
            slots: Arc::new([]),
            limiter: RateLimiter::new(),
            #[cfg(feature = "redis")]
            redis: None,
            ledger: Arc::new(Ledger::new(credits)),
            refusals: Arc::new(Outcomes::cost_refusals()),
        }
    }

    /// Whether a request with `record` spends anything.
    pub(crate) fn applies(&self, record: &KeyRecord) -> bool {
        !self.slots.is_empty() || !record.limits.is_empty()
    }

    /// The ticket of a request that spent `spent`.
    pub(crate) fn ticket(self: &Arc<Self>, spent: u32) -> Ticket {
        Ticket {
            meter: Arc::clone(self),
            spent,
        }
    }

    /// The limits `record` spends, in order: the layer's, then the key's own and its
    /// account's (no allocation: the hit path walks them).
    fn checks<'r>(&'r self, record: &'r KeyRecord) -> impl Iterator<Item = Check<'r>> + Clone {
        let layer = self.slots.iter().enumerate().map(|(at, slot)| {
            let (space, subject) = match slot.per {
                Per::Key => (LAYER_KEY, record.id.as_str()),
                Per::Account => (LAYER_ACCOUNT, record.account_id.as_str()),
            };
            Check {
                space,
                subject,
                limit: &slot.slot.limit,
                at,
                own: false,
            }
        });
        let own = record
            .slots()
            .iter()
            .enumerate()
            .map(|(at, (shared, slot))| {
                let (space, subject) = if *shared {
                    (OWN_ACCOUNT, record.account_id.as_str())
                } else {
                    (OWN_KEY, record.id.as_str())
                };
                Check {
                    space,
                    subject,
                    limit: &slot.limit,
                    at,
                    own: true,
                }
            });
        layer.chain(own)
    }

    fn slot_ref(&self, record: &Arc<KeyRecord>, check: &Check<'_>) -> SlotRef {
        if check.own {
            SlotRef::Record(Arc::clone(record), check.at)
        } else {
            SlotRef::Layer(Arc::clone(&self.slots), check.at)
        }
    }

    /// Gives back `refund` (what an earlier check of this request spent) and spends
    /// `cost` on every rate limit and balance of `record`, or on none.
    pub(crate) fn spend(
        self: &Arc<Self>,
        record: &Arc<KeyRecord>,
        cost: u32,
        refund: u32,
    ) -> Spent {
        if !self.applies(record) {
            return Spent::Now(Ok(None));
        }
        #[cfg(feature = "redis")]
        if self.redis.is_some() && self.checks(record).next().is_some() {
            let (meter, record) = (Arc::clone(self), Arc::clone(record));
            return Spent::Later(Box::pin(async move {
                let quota = match meter.spend_shared(&record, cost, refund).await {
                    Ok(quota) => quota,
                    Err(error) => {
                        // Refused: the request spends nothing, credits included.
                        meter.ledger.give_back(&record, refund);
                        return Err(error);
                    }
                };
                meter.spend_credits(&record, cost, refund, quota).await
            }));
        }
        let quota = match self.spend_local(record, cost, refund) {
            Ok(quota) => quota,
            Err(error) => {
                // Refused: the request spends nothing, credits included.
                self.ledger.give_back(record, refund);
                return Spent::Now(Err(error));
            }
        };
        match self.ledger.spend_now(record, cost, refund) {
            Some(Ok(())) => Spent::Now(Ok(quota)),
            Some(Err(error)) => {
                self.unspend_local(record, cost);
                Spent::Now(Err(error))
            }
            None => {
                let (meter, record) = (Arc::clone(self), Arc::clone(record));
                Spent::Later(Box::pin(async move {
                    meter.spend_credits(&record, cost, 0, quota).await
                }))
            }
        }
    }

    /// Credits through the store (the lease is short), after the rate limits; a
    /// refusal gives the rate limits back (a refused request spends nothing; an empty
    /// balance is not asked again for a second, so refusals cost no store writes).
    async fn spend_credits(
        &self,
        record: &Arc<KeyRecord>,
        cost: u32,
        refund: u32,
        quota: Option<Quota>,
    ) -> Result<Option<Quota>, AuthError> {
        match self.ledger.spend(record, cost, refund).await {
            Ok(()) => Ok(quota),
            Err(error) => {
                self.unspend(record, cost).await;
                Err(error)
            }
        }
    }

    async fn unspend(&self, record: &Arc<KeyRecord>, cost: u32) {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            let shared: Vec<_> = self
                .checks(record)
                .map(|check| (check.space, check.subject, check.limit))
                .collect();
            if redis.check(&shared, 0, cost).await.is_some() {
                return;
            }
        }
        self.unspend_local(record, cost);
    }

    /// The rate limits through Redis, or in process when Redis cannot answer.
    #[cfg(feature = "redis")]
    async fn spend_shared(
        &self,
        record: &Arc<KeyRecord>,
        cost: u32,
        refund: u32,
    ) -> Result<Option<Quota>, AuthError> {
        let Some(redis) = &self.redis else {
            return self.spend_local(record, cost, refund);
        };
        let checks: Vec<Check<'_>> = self.checks(record).collect();
        let shared: Vec<_> = checks
            .iter()
            .map(|check| (check.space, check.subject, check.limit))
            .collect();
        let Some(verdict) = redis.check(&shared, cost, refund).await else {
            return self.spend_local(record, cost, refund);
        };
        let Some(check) = checks.get(verdict.index) else {
            return Ok(None);
        };
        if !verdict.decision.allowed {
            let refusal = Refusal::new(check.limit.clone(), verdict.decision);
            return Err(AuthError::RateLimited(Box::new(refusal)));
        }
        Ok(Some(Quota {
            slot: self.slot_ref(record, check),
            decision: verdict.decision,
        }))
    }

    /// The rate limits in process: every limit spends `cost` (after `refund` is given
    /// back), or, when one refuses, none does.
    fn spend_local(
        &self,
        record: &Arc<KeyRecord>,
        cost: u32,
        refund: u32,
    ) -> Result<Option<Quota>, AuthError> {
        let checks = self.checks(record);
        if refund > 0 {
            for check in checks.clone() {
                self.limiter
                    .refund_in(check.space, check.subject, check.limit, refund);
            }
        }
        let mut closest: Option<(Check<'_>, Decision)> = None;
        for (index, check) in checks.clone().enumerate() {
            let decision = self
                .limiter
                .check_in(check.space, check.subject, check.limit, cost);
            if !decision.allowed {
                for spent in checks.take(index) {
                    self.limiter
                        .refund_in(spent.space, spent.subject, spent.limit, cost);
                }
                let refusal = Refusal::new(check.limit.clone(), decision);
                return Err(AuthError::RateLimited(Box::new(refusal)));
            }
            if closest
                .as_ref()
                .is_none_or(|(_, seen)| decision.remaining < seen.remaining)
            {
                closest = Some((check, decision));
            }
        }
        Ok(closest.map(|(check, decision)| Quota {
            slot: self.slot_ref(record, &check),
            decision,
        }))
    }

    fn unspend_local(&self, record: &KeyRecord, cost: u32) {
        for check in self.checks(record) {
            self.limiter
                .refund_in(check.space, check.subject, check.limit, cost);
        }
    }
}

/// Credits leased from the store, per key and per account, spent in memory.
pub(crate) struct Ledger {
    store: Option<Arc<dyn CreditStore>>,
    block: AtomicU64,
    /// Whether the log said that there is no credit store.
    warned: std::sync::atomic::AtomicBool,
    /// Leases of keys' balances, then of accounts' (by id: a probe allocates nothing).
    leases: [RwLock<HashMap<String, Arc<Lease>>>; 2],
    /// Credit store failures, logged once per incident.
    failing: Incident,
}

/// Credits an instance holds of one balance.
struct Lease {
    units: AtomicU64,
    epoch: AtomicI64,
    /// Unix seconds of the next refill (`i64::MAX`: none): the lease ends then.
    until: AtomicI64,
    /// What the balance held after the last take (`u64::MAX`: not known yet).
    seen: AtomicU64,
    /// When the store was last asked (unix milliseconds): an empty balance is asked
    /// again at most once a second (credits returned by another instance show then).
    asked: AtomicI64,
    /// One take from the store at a time per balance.
    gate: tokio::sync::Mutex<()>,
}

impl Lease {
    fn empty() -> Self {
        Lease {
            units: AtomicU64::new(0),
            epoch: AtomicI64::new(i64::MIN),
            until: AtomicI64::new(i64::MAX),
            seen: AtomicU64::new(u64::MAX),
            asked: AtomicI64::new(i64::MIN),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Spends `cost` from the lease if it is of `epoch` (any, for `None`), not past
    /// its end, and holds enough.
    fn take(&self, cost: u64, epoch: Option<i64>, now: i64) -> bool {
        if epoch.is_some_and(|epoch| epoch != self.epoch.load(Ordering::Acquire))
            || now >= self.until.load(Ordering::Acquire)
        {
            return false;
        }
        self.units
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |units| {
                units.checked_sub(cost)
            })
            .is_ok()
    }

    /// [`take`](Self::take) of the hit path: the clock is read only for a lease that
    /// ends (one of a refilled balance).
    fn take_now(&self, cost: u64, epoch: i64) -> bool {
        if epoch != self.epoch.load(Ordering::Acquire) {
            return false;
        }
        let until = self.until.load(Ordering::Acquire);
        if until != i64::MAX && OffsetDateTime::now_utc().unix_timestamp() >= until {
            return false;
        }
        self.units
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |units| {
                units.checked_sub(cost)
            })
            .is_ok()
    }

    fn give(&self, units: u64) {
        if units > 0 {
            self.units.fetch_add(units, Ordering::AcqRel);
        }
    }
}

/// A balance a request spends.
#[derive(Clone, Copy)]
struct Balance<'r> {
    account: bool,
    id: &'r str,
    epoch: i64,
    /// What it held when the record was loaded.
    loaded: u64,
}

/// The balances `record` spends: its own, then its account's.
fn balances(record: &KeyRecord) -> impl Iterator<Item = Balance<'_>> + Clone {
    let balance = |account, id, credits: &crate::limit::credits::Credits| Balance {
        account,
        id,
        epoch: credits.epoch,
        loaded: credits.remaining,
    };
    let own = record
        .limits
        .credits
        .as_ref()
        .map(|credits| balance(false, record.id.as_str(), credits));
    let account = record
        .limits
        .account
        .credits
        .as_ref()
        .map(|credits| balance(true, record.account_id.as_str(), credits));
    own.into_iter().chain(account)
}

fn subject(account: bool, id: &str) -> CreditSubject<'_> {
    if account {
        CreditSubject::Account(id)
    } else {
        CreditSubject::Key(id)
    }
}

impl Ledger {
    fn new(store: Option<Arc<dyn CreditStore>>) -> Self {
        Ledger {
            store,
            block: AtomicU64::new(100),
            warned: std::sync::atomic::AtomicBool::new(false),
            leases: Default::default(),
            failing: Incident::default(),
        }
    }

    /// Sets the block size.
    pub(crate) fn set_block(&self, block: u64) {
        self.block.store(block.max(1), Ordering::Relaxed);
    }

    fn lease(&self, balance: &Balance<'_>) -> Arc<Lease> {
        let map = &self.leases[usize::from(balance.account)];
        if let Some(lease) = map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(balance.id)
        {
            return Arc::clone(lease);
        }
        let mut leases = map.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            leases
                .entry(balance.id.to_owned())
                .or_insert_with(|| Arc::new(Lease::empty())),
        )
    }

    /// Gives `units` back to every balance of `record` (a request refused after
    /// spending them).
    pub(crate) fn give_back(&self, record: &KeyRecord, units: u32) {
        if units > 0 {
            for lease in self.leases_of(record).iter().flatten() {
                lease.give(u64::from(units));
            }
        }
    }

    /// The leases of `record`'s balances (its own, its account's), kept with the record
    /// after the first lookup so that a hit looks nothing up.
    fn leases_of(&self, record: &KeyRecord) -> [Option<Arc<Lease>>; 2] {
        let owner = std::ptr::from_ref(self) as usize;
        let lookup = || {
            let mut leases: [Option<Arc<Lease>>; 2] = [None, None];
            for (at, balance) in balances(record).enumerate() {
                leases[at] = Some(self.lease(&balance));
            }
            leases
        };
        match record.runtime().memo.get_or_init(owner, lookup) {
            Some(leases) => leases.clone(),
            None => lookup(),
        }
    }

    /// Spends from the leases alone: `None` when one of them must go to the store
    /// (the refund is given back either way).
    fn spend_now(
        &self,
        record: &KeyRecord,
        cost: u32,
        refund: u32,
    ) -> Option<Result<(), AuthError>> {
        if record.limits.credits.is_none() && record.limits.account.credits.is_none() {
            return Some(Ok(()));
        }
        self.give_back(record, refund);
        if cost == 0 {
            return Some(Ok(()));
        }
        let leases = self.leases_of(record);
        let mut taken: [Option<&Lease>; 2] = [None, None];
        for (at, (balance, lease)) in balances(record).zip(leases.iter().flatten()).enumerate() {
            if !lease.take_now(u64::from(cost), balance.epoch) {
                for lease in taken.iter().flatten() {
                    lease.give(u64::from(cost));
                }
                return None;
            }
            taken[at] = Some(lease);
        }
        Some(Ok(()))
    }

    /// Spends `cost` from every balance of `record` (taking blocks from the store as
    /// needed), or from none: 402 `credits_exhausted` when one has too little.
    async fn spend(&self, record: &KeyRecord, cost: u32, refund: u32) -> Result<(), AuthError> {
        self.give_back(record, refund);
        if cost == 0 {
            return Ok(());
        }
        let cost = u64::from(cost);
        let mut taken: Vec<Arc<Lease>> = Vec::with_capacity(2);
        let result = async {
            for balance in balances(record) {
                let lease = self.lease(&balance);
                if !self.take(&lease, balance, cost).await? {
                    return Err(AuthError::CreditsExhausted);
                }
                taken.push(lease);
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            for lease in &taken {
                lease.give(cost);
            }
        }
        result
    }

    /// Takes `cost` from `lease`, leasing a block from the store first if it holds too
    /// little: `false` when the balance has not enough.
    async fn take(
        &self,
        lease: &Lease,
        balance: Balance<'_>,
        cost: u64,
    ) -> Result<bool, AuthError> {
        let (subject, epoch) = (subject(balance.account, balance.id), balance.epoch);
        let _gate = lease.gate.lock().await;
        let now = OffsetDateTime::now_utc();
        if lease.take(cost, Some(epoch), now.unix_timestamp()) {
            return Ok(true);
        }
        let Some(store) = &self.store else {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::error!("a key carries credits but its verifier has no credit store");
            }
            return Err(AuthError::Unavailable);
        };
        // What the lease still holds counts if it is of the balance as it is now.
        let current = lease.epoch.load(Ordering::Acquire);
        let millis = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let fresh = current == epoch && now.unix_timestamp() < lease.until.load(Ordering::Acquire);
        if fresh
            && lease.seen.load(Ordering::Acquire) == 0
            && millis.saturating_sub(lease.asked.load(Ordering::Acquire)) < 1_000
        {
            // Empty a moment ago: refused without asking the store again.
            return Ok(false);
        }
        lease.asked.store(millis, Ordering::Release);
        if current < epoch || now.unix_timestamp() >= lease.until.load(Ordering::Acquire) {
            lease.units.store(0, Ordering::Release);
        }
        let held = lease.units.load(Ordering::Acquire);
        // Beyond what this request needs, a block, but never more than an eighth of
        // what the balance holds: small balances stay where every instance (and every
        // view) sees them.
        let seen = match lease.seen.load(Ordering::Acquire) {
            u64::MAX => balance.loaded,
            seen => seen,
        };
        let block = self.block.load(Ordering::Relaxed);
        let extra = block.saturating_sub(1).min(seen / 8);
        let want = cost.saturating_sub(held).saturating_add(extra);
        let grant = match store.take_credits(subject, want, now).await {
            Ok(grant) => {
                self.store_answered();
                grant
            }
            Err(error) => {
                self.store_failed(&error);
                return Err(AuthError::Unavailable);
            }
        };
        if !grant.limited {
            // The balance is gone from the store: nothing to spend.
            return Ok(true);
        }
        if grant.epoch != current {
            lease.units.store(0, Ordering::Release);
            lease.epoch.store(grant.epoch, Ordering::Release);
        }
        let until = grant.until.map_or(i64::MAX, OffsetDateTime::unix_timestamp);
        lease.until.store(until, Ordering::Release);
        lease.seen.store(grant.remaining, Ordering::Release);
        lease.give(grant.granted);
        Ok(lease.take(cost, None, now.unix_timestamp()))
    }

    /// Logs a credit store failure: at error level if it is the first of an incident.
    fn store_failed(&self, error: &dyn fmt::Display) {
        if self.failing.fail() {
            tracing::error!(
                %error,
                "credit store failed; requests that need credits from it get 503 until it \
                 answers again (further failures are logged at debug level)"
            );
        } else {
            tracing::debug!(%error, "credit store failed");
        }
    }

    /// The credit store answered: the end of an incident, if one was open.
    fn store_answered(&self) {
        if self.failing.succeed() {
            tracing::warn!("the credit store answers again");
        }
    }

    /// Gives every lease back to the store (on shutdown).
    pub(crate) async fn return_all(&self) {
        let Some(store) = &self.store else { return };
        let mut leases: Vec<(bool, String, Arc<Lease>)> = Vec::new();
        for (account, map) in [false, true].into_iter().zip(&self.leases) {
            let map = map.read().unwrap_or_else(PoisonError::into_inner);
            leases.extend(
                map.iter()
                    .map(|(id, lease)| (account, id.clone(), Arc::clone(lease))),
            );
        }
        for (account, id, lease) in leases {
            let _gate = lease.gate.lock().await;
            let units = lease.units.swap(0, Ordering::AcqRel);
            if units == 0 {
                continue;
            }
            // The balance holds them again: ask the store next time.
            lease.seen.store(u64::MAX, Ordering::Release);
            let until = lease.until.load(Ordering::Acquire);
            let until = (until != i64::MAX)
                .then(|| OffsetDateTime::from_unix_timestamp(until).ok())
                .flatten();
            let epoch = lease.epoch.load(Ordering::Acquire);
            match store
                .return_credits(subject(account, &id), units, epoch, until)
                .await
            {
                Ok(()) => self.store_answered(),
                Err(error) => self.store_failed(&error),
            }
        }
    }
}

/// The cost of a route: a layer put on the route where it is declared
/// (`.route_layer(Cost::new(5))`). Requests of it spend `units` of every rate limit
/// and balance of their key instead of the default 1 (a refused one spends nothing; a
/// cost of 0 spends nothing). The layer in front has spent its unit before routing, so
/// a key with nothing left is refused there: declare a route that must pass anyway
/// with [`ApiKeyLayer::route_costs`](crate::ApiKeyLayer::route_costs). Without an
/// [`ApiKeyLayer`](crate::ApiKeyLayer) in front (or with nothing to spend) it does
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost(u32);

impl Cost {
    /// A route that costs `units`.
    #[must_use]
    pub const fn new(units: u32) -> Self {
        Cost(units)
    }

    /// The units.
    #[must_use]
    pub const fn units(self) -> u32 {
        self.0
    }
}

/// Whether any [`Cost`] layer was put on a route in this process: until then the
/// layer hands requests no ticket (read-only after start: no shared writes per request).
static COSTS_IN_USE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether requests need a ticket for a route's [`Cost`].
pub(crate) fn costs_in_use() -> bool {
    COSTS_IN_USE.load(Ordering::Relaxed)
}

impl<S> Layer<S> for Cost {
    type Service = CostService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        if !COSTS_IN_USE.load(Ordering::Relaxed) {
            COSTS_IN_USE.store(true, Ordering::Relaxed);
        }
        CostService {
            inner,
            cost: self.0,
        }
    }
}

/// The service of [`Cost`].
#[derive(Debug, Clone)]
pub struct CostService<S> {
    inner: S,
    cost: u32,
}

/// The response future of [`CostService`].
pub type CostFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send + 'static>>;

impl<S, B, ResBody> Service<Request<B>> for CostService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CostFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let cost = self.cost;
        let spend = match (
            request.extensions().get::<Ticket>(),
            request.extensions().get::<Principal>(),
        ) {
            (Some(ticket), Some(principal)) if ticket.spent != cost => Some((
                Arc::clone(&ticket.meter),
                principal.shared_record(),
                ticket.spent,
            )),
            _ => None,
        };
        let Some((meter, record, spent)) = spend else {
            let future = self.inner.call(request);
            return Box::pin(future);
        };
        if let Some(ticket) = request.extensions_mut().get_mut::<Ticket>() {
            ticket.spent = cost;
        }
        let responder = ErrorResponder::in_extensions(request.extensions());
        let refusals = Arc::clone(&meter.refusals);
        let refuse = move |error: AuthError| -> Response<ResBody> {
            refusals.count(error.code());
            ErrorResponder::respond_with(responder.as_deref(), &error)
        };
        match meter.spend(&record, cost, spent) {
            Spent::Now(Ok(quota)) => {
                let future = self.inner.call(request);
                Box::pin(async move {
                    let mut response = future.await?;
                    if let Some(quota) = quota {
                        quota.overwrite(response.headers_mut());
                    }
                    Ok(response)
                })
            }
            Spent::Now(Err(error)) => {
                let response = refuse(error);
                Box::pin(async move { Ok(response) })
            }
            Spent::Later(spending) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    match spending.await {
                        Ok(quota) => {
                            let mut response = inner.call(request).await?;
                            if let Some(quota) = quota {
                                quota.overwrite(response.headers_mut());
                            }
                            Ok(response)
                        }
                        Err(error) => Ok(refuse(error)),
                    }
                })
            }
        }
    }
}
