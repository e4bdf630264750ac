//! [`CachedVerifier`]: a moka cache in front of any [`KeyVerifier`].
//!
//! - **Hits are synchronous.** [`CachedVerifier::is_cached`] probes the cache without
//!   creating a future; only a miss goes async.
//! - **Known keys** are cached for the positive TTL (default 60 s), never past the key's
//!   own `expires_at`. **Unknown keys** are cached too, for the negative TTL (default
//!   5 s), so a client retrying a wrong key does not reach the store each time.
//! - **Backend errors are never cached.**
//! - **Single-flight:** concurrent misses on one key share one `verify` call.
//! - **Hot keys** are served from a small table in front of moka (a read lock and a hash
//!   compare instead of moka's read bookkeeping).
//! - **Stale-while-revalidate:** past its fresh TTL a known key is served at once while
//!   one background task re-verifies it, and keeps being served for the stale window
//!   (default 5 min) if the backend is down; verifier calls time out (default 2 s).
//! - **Invalidation** by hash, by key id, by account, or all, takes effect for the next
//!   request (matching entries are removed before the call returns). Entries are
//!   indexed by key id and account, so invalidating one key touches that key only
//!   (O(1) whatever the cache holds) and never stalls hits of other keys. A lookup that
//!   was in flight when an invalidation named its key does not write its (possibly
//!   outdated) answer into the cache.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_keys::{CachedVerifier, store::MemoryStore};
//!
//! let cache = CachedVerifier::builder(MemoryStore::new())
//!     .positive_ttl(Duration::from_secs(30))
//!     .negative_ttl(Duration::from_secs(2))
//!     .max_capacity(1_000_000)
//!     .build();
//! assert_eq!(cache.stats().verifier_calls, 0);
//! ```

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use moka::Expiry;
use time::OffsetDateTime;
use tokio::sync::OnceCell;

mod striped;
mod tokens;

use self::striped::Striped;
pub(crate) use self::tokens::Miss;
use self::tokens::TokenIndex;
use crate::key::{Environment, KeyHash, KeyId};
use crate::metrics::{CacheMetrics, Incident};
use crate::record::KeyRecord;
use crate::verify::{Invalidate, KeyVerifier, VerifyError};

/// The answer for one key hash, as cached.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// The verifier knows the key (it may still be revoked or expired).
    Found(Arc<KeyRecord>),
    /// The verifier does not know the key.
    Unknown,
}

impl Lookup {
    /// Whether the record found is of the environment that the presented key's tag
    /// names (an unknown key agrees with any). Keys this crate makes always agree; an
    /// imported hash may have been given another environment than its key's tag.
    pub(crate) fn agrees_with(&self, tag: &Environment) -> bool {
        match self {
            Lookup::Found(record) => record.environment == *tag,
            Lookup::Unknown => true,
        }
    }
}

/// Counters of a [`CachedVerifier`], for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups answered from the cache (known and unknown keys).
    pub hits: u64,
    /// Lookups the cache could not answer.
    pub misses: u64,
    /// Calls made to the wrapped verifier.
    pub verifier_calls: u64,
    /// Hits on entries past their fresh TTL, served while a refresh runs or while the
    /// backend is down.
    pub stale_hits: u64,
    /// Entries in the cache (approximate, as moka counts them).
    pub entries: u64,
}

/// One verifier call that concurrent lookups of a key share, tagged with the number of
/// invalidations made before it started: its answer is cached only if no invalidation
/// since then names it, and lookups after any invalidation start a new one.
struct FlightCell {
    seq: u64,
    answer: OnceCell<Result<Lookup, VerifyError>>,
}

type Flight = Arc<FlightCell>;

fn new_flight(seq: u64) -> Flight {
    Arc::new(FlightCell {
        seq,
        answer: OnceCell::new(),
    })
}

/// Adds without overflowing: lifetimes configured as `Duration::MAX` mean "very long".
fn later(now: Instant, after: Duration) -> Instant {
    const CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(after.min(CAP)).unwrap_or(now)
}

/// Slots of the hot-entry table in front of moka (a power of two).
const HOT_SLOTS: usize = 1024;

/// Invalidations remembered for flights in progress; a flight that started before the
/// oldest one remembered does not cache its answer.
const LOG_LEN: usize = 4096;

/// What moka holds: the answer, when it stops being fresh, and until when it may still
/// be served stale (while a refresh runs, or while the backend is down).
#[derive(Clone)]
struct Entry {
    lookup: Lookup,
    deadline: Instant,
    stale_until: Instant,
    /// No background refresh before this (set after a failed one).
    refresh_after: Instant,
}

/// How long to wait after a failed background refresh before trying again.
const REFRESH_RETRY: Duration = Duration::from_secs(1);

/// A recently read entry, in a small direct-mapped table probed before moka: a hit
/// costs a read lock, a hash comparison and a clock read instead of moka's read
/// bookkeeping.
struct HotEntry {
    hash: KeyHash,
    entry: Entry,
}

/// One slot of the hot table. Invalidating a hash empties its slot and bumps the
/// slot's version; a reader fills a slot only if its version did not move since the
/// reader probed it (before reading moka), so an entry read before an invalidation
/// never lands in the table after it.
#[derive(Default)]
struct HotSlot {
    entry: Option<HotEntry>,
    version: u64,
}

/// What one invalidation named.
enum Target {
    Hash(KeyHash),
    Id(KeyId),
    Account(String),
    All,
}

impl Target {
    fn names(&self, hash: &KeyHash, lookup: &Lookup) -> bool {
        match (self, lookup) {
            (Target::All, _) => true,
            (Target::Hash(named), _) => named == hash,
            (Target::Id(id), Lookup::Found(record)) => record.id == *id,
            (Target::Account(account), Lookup::Found(record)) => record.account_id == *account,
            (_, Lookup::Unknown) => false,
        }
    }
}

/// The bookkeeping of misses and invalidations, under one lock that hits never take:
/// flights in progress, the recent invalidations, and which cached hashes belong to
/// which key id and account (so invalidating a key touches that key only).
#[derive(Default)]
struct Ledger {
    flights: HashMap<KeyHash, Flight>,
    /// Invalidations made so far.
    seq: u64,
    /// The most recent invalidations, oldest first, with their `seq`.
    log: VecDeque<(u64, Target)>,
    /// By a 64-bit digest of the key id (a collision only costs an extra miss).
    by_id: HashMap<u64, Hashes>,
    /// By a 64-bit digest of the account id.
    by_account: HashMap<u64, HashSet<KeyHash>>,
}

impl Ledger {
    /// Whether an invalidation after `seq` names this answer (or may have: the log no
    /// longer reaches back that far).
    fn invalidated_since(&self, seq: u64, hash: &KeyHash, lookup: &Lookup) -> bool {
        if self.seq == seq {
            return false;
        }
        if self.log.front().is_none_or(|(oldest, _)| *oldest > seq + 1) {
            return true;
        }
        self.log
            .iter()
            .rev()
            .take_while(|(at, _)| *at > seq)
            .any(|(_, target)| target.names(hash, lookup))
    }

    fn record(&mut self, target: Target) {
        self.seq += 1;
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back((self.seq, target));
    }

    fn index(&mut self, hash: KeyHash, record: &KeyRecord) {
        match self.by_id.entry(digest(&record.id)) {
            MapEntry::Vacant(slot) => {
                slot.insert(Hashes::One(hash));
            }
            MapEntry::Occupied(mut slot) => slot.get_mut().insert(hash),
        }
        self.by_account
            .entry(digest(&record.account_id))
            .or_default()
            .insert(hash);
    }

    fn unindex(&mut self, hash: &KeyHash, id: &KeyId, account_id: &str) {
        if let MapEntry::Occupied(mut slot) = self.by_id.entry(digest(id)) {
            if slot.get_mut().remove(hash) {
                slot.remove();
            }
        }
        if let MapEntry::Occupied(mut slot) = self.by_account.entry(digest(account_id)) {
            slot.get_mut().remove(hash);
            if slot.get().is_empty() {
                slot.remove();
            }
        }
    }

    /// The cached hashes of key `id`.
    fn hashes_of(&self, id: &KeyId) -> Vec<KeyHash> {
        match self.by_id.get(&digest(id)) {
            None => Vec::new(),
            Some(Hashes::One(hash)) => vec![*hash],
            Some(Hashes::Many(hashes)) => hashes.clone(),
        }
    }

    /// The cached hashes of the keys of `account_id`.
    fn hashes_of_account(&self, account_id: &str) -> Vec<KeyHash> {
        self.by_account
            .get(&digest(account_id))
            .map(|hashes| hashes.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The cached hashes under one key-id digest: almost always one.
enum Hashes {
    One(KeyHash),
    Many(Vec<KeyHash>),
}

impl Hashes {
    fn insert(&mut self, hash: KeyHash) {
        match self {
            Hashes::One(one) if *one == hash => {}
            Hashes::One(one) => *self = Hashes::Many(vec![*one, hash]),
            Hashes::Many(many) if many.contains(&hash) => {}
            Hashes::Many(many) => many.push(hash),
        }
    }

    /// Removes `hash`; whether none are left.
    fn remove(&mut self, hash: &KeyHash) -> bool {
        match self {
            Hashes::One(one) => one == hash,
            Hashes::Many(many) => {
                many.retain(|h| h != hash);
                many.is_empty()
            }
        }
    }
}

/// A 64-bit digest of an id, for the index (SipHash with fixed keys).
fn digest(id: &(impl Hash + ?Sized)) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

/// Entries moka evicted by itself (expired, or over capacity), to take out of the
/// [`Ledger`]'s index the next time it is locked. (moka's listener may run while the
/// ledger is locked, so it must not lock the ledger itself.)
type Evicted = Arc<Mutex<Vec<(KeyHash, KeyId, String)>>>;

struct CacheCore<V> {
    verifier: V,
    entries: moka::sync::Cache<KeyHash, Entry>,
    /// Shared with moka's eviction listener.
    hot: Arc<[RwLock<HotSlot>]>,
    ledger: Mutex<Ledger>,
    evicted: Evicted,
    /// Answers by presented token (no SHA-256 on a hit).
    tokens: Arc<TokenIndex>,
    hits: Striped,
    misses: Striped,
    verifier_calls: AtomicU64,
    positive_ttl: Duration,
    negative_ttl: Duration,
    stale_window: Duration,
    verify_timeout: Option<Duration>,
    stale_hits: Striped,
    /// Registered when the cache is built (see [`metrics`](crate::metrics)).
    metrics: CacheMetrics,
    /// Verifier failures, logged once per incident.
    verifier_down: Incident,
}

impl<V> CacheCore<V> {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let evicted =
            std::mem::take(&mut *self.evicted.lock().unwrap_or_else(PoisonError::into_inner));
        for (hash, id, account_id) in evicted {
            // Inserts happen under the ledger lock: an entry moka holds again now was
            // re-inserted (and re-indexed) after its eviction.
            if !self.entries.contains_key(&hash) {
                ledger.unindex(&hash, &id, &account_id);
            }
        }
        ledger
    }

    /// Takes `hash` out of moka and the hot table (and its key out of the index).
    /// One invalidation: counted by `counter`, noted in the ledger as `target`, the
    /// entries of the hashes `named` finds (under the ledger's lock) removed, and then,
    /// once they are gone, every token-indexed answer stopped (see `tokens`).
    fn forget(
        &self,
        counter: &metrics::Counter,
        target: Target,
        named: impl FnOnce(&Ledger) -> Vec<KeyHash>,
    ) {
        counter.increment(1);
        let mut ledger = self.ledger();
        ledger.record(target);
        for hash in named(&ledger) {
            self.remove(&mut ledger, &hash);
        }
        self.tokens.forget_all();
    }

    fn remove(&self, ledger: &mut Ledger, hash: &KeyHash) {
        if let Some(Entry {
            lookup: Lookup::Found(record),
            ..
        }) = self.entries.remove(hash)
        {
            ledger.unindex(hash, &record.id, &record.account_id);
        }
        clear_hot_slot(&self.hot, hash);
    }
}

/// Empties `hash`'s hot slot if it holds `hash`, and moves the slot's version so that a
/// reader that probed it before does not fill it with what it read.
fn clear_hot_slot(hot: &[RwLock<HotSlot>], hash: &KeyHash) {
    let mut slot = hot[hot_index(hash)]
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    if slot.entry.as_ref().is_some_and(|hot| hot.hash == *hash) {
        slot.entry = None;
    }
    slot.version = slot.version.wrapping_add(1);
}

/// A caching, single-flight [`KeyVerifier`] wrapper. Cheap to clone (one `Arc`); clones
/// share the cache, so the layer and your key-management code can hold the same one.
///
/// See the [module docs](self).
pub struct CachedVerifier<V> {
    core: Arc<CacheCore<V>>,
}

impl<V> Clone for CachedVerifier<V> {
    fn clone(&self) -> Self {
        CachedVerifier {
            core: Arc::clone(&self.core),
        }
    }
}

impl<V> fmt::Debug for CachedVerifier<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedVerifier")
            .field("positive_ttl", &self.core.positive_ttl)
            .field("negative_ttl", &self.core.negative_ttl)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Configures a [`CachedVerifier`].
#[derive(Debug)]
#[must_use]
pub struct CachedVerifierBuilder<V> {
    verifier: V,
    positive_ttl: Duration,
    negative_ttl: Duration,
    max_capacity: u64,
    stale_window: Duration,
    verify_timeout: Option<Duration>,
}

impl<V: KeyVerifier> CachedVerifierBuilder<V> {
    /// How long a known key is served from the cache (default 60 s).
    pub fn positive_ttl(mut self, ttl: Duration) -> Self {
        self.positive_ttl = ttl;
        self
    }

    /// How long an unknown key is remembered as unknown (default 5 s).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How long past its fresh TTL a known key may still be served (default 5 min):
    /// at once, while one background task re-verifies it, or, if the backend is down,
    /// until the window ends. Zero turns stale serving off.
    pub fn stale_window(mut self, window: Duration) -> Self {
        self.stale_window = window;
        self
    }

    /// How long a verifier call may take before it counts as a backend failure
    /// (default 2 s; needs a Tokio runtime with timers, as `#[tokio::main]` builds).
    /// `None`: no limit.
    pub fn verify_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.verify_timeout = timeout;
        self
    }

    /// The most entries kept (default 100,000); beyond it the least useful are evicted.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = entries;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> CachedVerifier<V> {
        let evicted = Evicted::default();
        let listener_queue = Arc::clone(&evicted);
        let hot: Arc<[RwLock<HotSlot>]> = (0..HOT_SLOTS).map(|_| RwLock::default()).collect();
        let listener_hot = Arc::clone(&hot);
        let tokens = Arc::new(TokenIndex::new());
        let entries = moka::sync::Cache::builder()
            .max_capacity(self.max_capacity)
            .expire_after(EntryExpiry)
            .eviction_listener(move |hash: Arc<KeyHash>, entry: Entry, cause| {
                if cause.was_evicted() {
                    // An entry moka drops by itself leaves the hot table too (else a hot
                    // key evicted for size, no longer indexed, could be served from the
                    // table after its revocation), and a reader that read it before
                    // does not put it back (the version moves). moka is never called
                    // with a slot locked, so this cannot deadlock.
                    clear_hot_slot(&listener_hot, &hash);
                    if let Lookup::Found(record) = entry.lookup {
                        listener_queue
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((*hash, record.id.clone(), record.account_id.clone()));
                    }
                }
            })
            .build();
        CachedVerifier {
            core: Arc::new(CacheCore {
                verifier: self.verifier,
                entries,
                hot,
                ledger: Mutex::default(),
                evicted,
                tokens,
                hits: Striped::default(),
                misses: Striped::default(),
                verifier_calls: AtomicU64::new(0),
                positive_ttl: self.positive_ttl,
                negative_ttl: self.negative_ttl,
                stale_window: self.stale_window,
                verify_timeout: self.verify_timeout,
                stale_hits: Striped::default(),
                metrics: CacheMetrics::register(),
                verifier_down: Incident::default(),
            }),
        }
    }
}

impl<V: KeyVerifier> CachedVerifier<V> {
    /// A cache with the default settings (60 s / 5 s TTLs, 100,000 entries).
    pub fn new(verifier: V) -> Self {
        Self::builder(verifier).build()
    }

    /// Starts configuring a cache around `verifier`.
    pub fn builder(verifier: V) -> CachedVerifierBuilder<V> {
        CachedVerifierBuilder {
            verifier,
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_capacity: 100_000,
            stale_window: Duration::from_secs(300),
            verify_timeout: Some(Duration::from_secs(2)),
        }
    }

    /// The wrapped verifier.
    pub fn verifier(&self) -> &V {
        &self.core.verifier
    }

    /// The cached answer for `hash`, if there is one. Synchronous; counts a hit or a
    /// miss.
    pub(crate) fn get_cached(&self, hash: &KeyHash) -> Option<Lookup> {
        self.get_cached_then(hash, None)
    }

    /// The fresh answer for a token presented to a layer whose key format is `format`
    /// (a layer's tag: layers of other formats sharing this cache never see answers
    /// for tokens they would refuse), from the token index (no SHA-256, no
    /// checksum), or where [`get_cached_for`](Self::get_cached_for) puts it. Counts a
    /// hit, not a miss (the token may still be in the cache by its hash).
    #[inline]
    pub(crate) fn get_by_token(&self, format: u64, token: &[u8]) -> Result<Lookup, Miss> {
        let core = &*self.core;
        let (found, touch) = core.tokens.get(format, token)?;
        if let Some(hash) = touch {
            // A read, so that moka's eviction policy sees the key in use.
            let _ = core.entries.get(&hash);
        }
        core.hits.add(1);
        core.count_hit(&found);
        Ok(found)
    }

    /// [`get_cached`](Self::get_cached) for the token that `miss` stands for, whose hash
    /// is `hash` and whose tag names `tag`: a fresh answer goes into the token index
    /// too, unless it [disagrees](Lookup::agrees_with) with the tag (then every request
    /// with the token goes the long way, and is refused there).
    pub(crate) fn get_cached_for(
        &self,
        hash: &KeyHash,
        miss: Miss,
        tag: &Environment,
    ) -> Option<Lookup> {
        self.get_cached_then(hash, Some((miss, tag)))
    }

    fn get_cached_then(
        &self,
        hash: &KeyHash,
        token: Option<(Miss, &Environment)>,
    ) -> Option<Lookup> {
        let core = &*self.core;
        let slot = &core.hot[hot_index(hash)];
        // Read before moka: an invalidation racing with this read bumps it after.
        let mut version = None;
        if let Ok(hot) = slot.read() {
            if let Some(entry) = hot.entry.as_ref() {
                if entry.hash == *hash && Instant::now() < entry.entry.deadline {
                    core.hits.add(1);
                    core.count_hit(&entry.entry.lookup);
                    let lookup = entry.entry.lookup.clone();
                    if let Some((miss, tag)) = token {
                        if lookup.agrees_with(tag) {
                            core.tokens
                                .remember(miss, *hash, lookup.clone(), entry.entry.deadline);
                        }
                    }
                    return Some(lookup);
                }
            }
            version = Some(hot.version);
        }
        let Some(entry) = core.entries.get(hash) else {
            core.misses.add(1);
            core.metrics.miss.increment(1);
            return None;
        };
        core.hits.add(1);
        let lookup = entry.lookup.clone();
        let now = Instant::now();
        if now >= entry.deadline {
            // Stale: served at once, re-verified in the background.
            core.stale_hits.add(1);
            core.metrics.stale.increment(1);
            if now >= entry.refresh_after {
                self.refresh_in_background(*hash);
            }
            return Some(lookup);
        }
        core.count_hit(&lookup);
        if let Some((miss, tag)) = token {
            if lookup.agrees_with(tag) {
                core.tokens
                    .remember(miss, *hash, lookup.clone(), entry.deadline);
            }
        }
        if let (Some(version), Ok(mut hot)) = (version, slot.try_write()) {
            if hot.version == version {
                hot.entry = Some(HotEntry { hash: *hash, entry });
            }
        }
        Some(lookup)
    }

    /// The record of the key with `hash`: from the cache, or from the verifier (one call
    /// however many lookups of the same hash wait for it); `None` for a key the verifier
    /// does not know. The lookup the layer makes, for code that checks keys itself; the
    /// layer then also refuses a record whose environment is not the one the presented
    /// key's tag names (see [`ParsedKey::environment`](crate::key::ParsedKey::environment)),
    /// which only the key, not its hash, tells.
    pub async fn lookup(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, VerifyError> {
        Ok(match self.find(hash).await? {
            Lookup::Found(record) => Some(record),
            Lookup::Unknown => None,
        })
    }

    /// The answer for `hash`: from the cache, or from the verifier.
    pub(crate) async fn find(&self, hash: &KeyHash) -> Result<Lookup, VerifyError> {
        match self.get_cached(hash) {
            Some(found) => Ok(found),
            None => self.load(*hash).await,
        }
    }

    /// Whether the cache holds an answer for `hash` (known or unknown key, fresh or
    /// stale), without asking the verifier: a synchronous probe by hash (the layer probes
    /// its token index first, and this on a miss there).
    /// Counts as a hit or a miss in [`stats`](Self::stats).
    pub fn is_cached(&self, hash: &KeyHash) -> bool {
        self.get_cached(hash).is_some()
    }

    /// Asks the verifier, single-flight, and caches the answer. For callers that
    /// already missed with [`get_cached`](Self::get_cached).
    pub(crate) async fn load(&self, hash: KeyHash) -> Result<Lookup, VerifyError> {
        let core = &*self.core;
        let flight = {
            let mut ledger = core.ledger();
            // Checked under the lock: a flight that just landed wrote the cache before
            // leaving the map.
            if let Some(entry) = core.entries.get(&hash) {
                return Ok(entry.lookup);
            }
            let seq = ledger.seq;
            match ledger.flights.get(&hash) {
                Some(flight) if flight.seq == seq => Arc::clone(flight),
                _ => {
                    let flight = new_flight(seq);
                    ledger.flights.insert(hash, Arc::clone(&flight));
                    flight
                }
            }
        };
        // Removes the flight if every request waiting on it goes away before it lands
        // (client disconnects), so abandoned flights cannot pile up.
        let _abandoned = AbandonedFlight {
            core,
            hash,
            flight: &flight,
        };
        self.fly(hash, &flight).await
    }

    /// Starts one background re-verification of a stale entry, unless one runs.
    fn refresh_in_background(&self, hash: KeyHash) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let flight = {
            let mut ledger = self.core.ledger();
            if ledger.flights.contains_key(&hash) {
                return;
            }
            let flight = new_flight(ledger.seq);
            ledger.flights.insert(hash, Arc::clone(&flight));
            flight
        };
        let cache = self.clone();
        runtime.spawn(async move {
            // Leaves the map even if this task dies before landing.
            let _abandoned = AbandonedFlight {
                core: &cache.core,
                hash,
                flight: &flight,
            };
            // A failure is logged (once per incident) by `fly`.
            if let Err(error) = cache.fly(hash, &flight).await {
                tracing::debug!(%error, "background re-verification of a cached API key failed");
            }
        });
    }

    /// Runs (or joins) the verifier call of `flight` and records its answer.
    async fn fly(&self, hash: KeyHash, flight: &Flight) -> Result<Lookup, VerifyError> {
        let core = &*self.core;
        let answer = flight
            .answer
            .get_or_init(|| async {
                core.verifier_calls.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let verification = core.verifier.verify(&hash);
                let answer = match core.verify_timeout {
                    Some(limit) => tokio::time::timeout(limit, verification)
                        .await
                        .unwrap_or_else(|_| Err(VerifyError::timeout())),
                    None => verification.await,
                };
                core.verified(started, answer.as_ref().err());
                let answer = answer.map(|record| match record {
                    Some(record) => Lookup::Found(Arc::new(record)),
                    None => Lookup::Unknown,
                });
                let mut ledger = core.ledger();
                let stale = match &answer {
                    Ok(found) => ledger.invalidated_since(flight.seq, &hash, found),
                    Err(_) => ledger.seq != flight.seq,
                };
                if !stale {
                    let now = Instant::now();
                    match &answer {
                        Ok(found) => {
                            let (fresh, served) = core.lifetimes(found);
                            let (deadline, stale_until) = (later(now, fresh), later(now, served));
                            let entry = Entry {
                                lookup: found.clone(),
                                deadline,
                                stale_until,
                                refresh_after: deadline,
                            };
                            if let Lookup::Found(record) = found {
                                ledger.index(hash, record);
                            }
                            core.entries.insert(hash, entry);
                        }
                        // The backend is down: keep serving a stale entry, and let the
                        // next refresh wait a little.
                        Err(_) => {
                            if let Some(mut entry) = core.entries.get(&hash) {
                                entry.refresh_after = later(now, REFRESH_RETRY);
                                core.entries.insert(hash, entry);
                            }
                        }
                    }
                }
                if ledger
                    .flights
                    .get(&hash)
                    .is_some_and(|f| Arc::ptr_eq(f, flight))
                {
                    ledger.flights.remove(&hash);
                }
                answer
            })
            .await;
        answer.clone()
    }
}

impl<V> CachedVerifier<V> {
    /// Forgets the answer for one key hash.
    pub fn invalidate(&self, hash: &KeyHash) {
        let core = &*self.core;
        core.forget(&core.metrics.invalidated_key, Target::Hash(*hash), |_| {
            vec![*hash]
        });
    }

    /// Forgets the answer for the key with this id (for revocation, where the caller
    /// knows the id but not the key). Touches that key's entries only: O(1), whatever
    /// the cache holds.
    pub fn invalidate_key_id(&self, id: &KeyId) {
        let core = &*self.core;
        core.forget(
            &core.metrics.invalidated_key,
            Target::Id(id.clone()),
            |ledger| ledger.hashes_of(id),
        );
    }

    /// Forgets the answers for every key of an account (after its billing standing or
    /// another account-wide property changed). Touches that account's entries only.
    pub fn invalidate_account(&self, account_id: &str) {
        let core = &*self.core;
        let target = Target::Account(account_id.to_owned());
        core.forget(&core.metrics.invalidated_account, target, |ledger| {
            ledger.hashes_of_account(account_id)
        });
    }

    /// Forgets every answer: a pass over the whole cache (for a listener that may have
    /// missed notifications).
    pub fn invalidate_all(&self) {
        let core = &*self.core;
        // One by one: moka's `invalidate_all` applies lazily and, under concurrent
        // reads, lets an entry be read for a moment after it returns.
        core.forget(&core.metrics.invalidated_all, Target::All, |_| {
            core.entries.iter().map(|(hash, _)| *hash).collect()
        });
        for slot in core.hot.iter() {
            let mut slot = slot.write().unwrap_or_else(PoisonError::into_inner);
            slot.entry = None;
            slot.version = slot.version.wrapping_add(1);
        }
        // The hot table emptied after the token index: empty the index again, so that
        // nothing read from the hot table in between is served.
        core.tokens.forget_all();
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.core.hits.get(),
            misses: self.core.misses.get(),
            verifier_calls: self.core.verifier_calls.load(Ordering::Relaxed),
            stale_hits: self.core.stale_hits.get(),
            entries: self.core.entries.entry_count(),
        }
    }

    /// Runs moka's pending maintenance (so [`CacheStats::entries`] is exact).
    pub fn run_pending_tasks(&self) {
        self.core.entries.run_pending_tasks();
    }
}

/// Drops a flight from the map when its last participant leaves without an answer.
struct AbandonedFlight<'a, V> {
    core: &'a CacheCore<V>,
    hash: KeyHash,
    flight: &'a Flight,
}

impl<V: Send + Sync + 'static> Invalidate for CachedVerifier<V> {
    fn invalidate_key_id(&self, id: &KeyId) {
        CachedVerifier::invalidate_key_id(self, id);
    }

    fn invalidate_account(&self, account_id: &str) {
        CachedVerifier::invalidate_account(self, account_id);
    }

    fn invalidate_all(&self) {
        CachedVerifier::invalidate_all(self);
    }
}

impl<V> Drop for AbandonedFlight<'_, V> {
    fn drop(&mut self) {
        if self.flight.answer.initialized() {
            return;
        }
        let mut ledger = self.core.ledger();
        // Joiners clone the flight under this lock: two references (the map's and ours)
        // mean nobody else waits on it.
        if ledger
            .flights
            .get(&self.hash)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight))
            && Arc::strong_count(self.flight) == 2
        {
            ledger.flights.remove(&self.hash);
        }
    }
}

/// The hot slot of a hash: its last two bytes (the moka hasher reads the first eight).
fn hot_index(hash: &KeyHash) -> usize {
    let bytes = hash.as_bytes();
    usize::from(u16::from_le_bytes([bytes[30], bytes[31]])) & (HOT_SLOTS - 1)
}

impl<V> CacheCore<V> {
    /// Counts a fresh hit: of a known key, or of an unknown one.
    fn count_hit(&self, lookup: &Lookup) {
        match lookup {
            Lookup::Found(_) => self.metrics.hit.increment(1),
            Lookup::Unknown => self.metrics.negative_hit.increment(1),
        }
    }

    /// Records a verifier call that began at `started`: its latency, and a failure
    /// (at error level for the first of an incident, at debug level for the others).
    fn verified(&self, started: Instant, error: Option<&VerifyError>) {
        let seconds = started.elapsed().as_secs_f64();
        match error {
            None => {
                self.metrics.verifier_ok.record(seconds);
                if self.verifier_down.succeed() {
                    tracing::warn!("the API key verifier answers again");
                }
            }
            Some(error) => {
                self.metrics.verifier_error.record(seconds);
                if self.verifier_down.fail() {
                    tracing::error!(
                        %error,
                        "API key verifier failed; requests it must answer get 503 until it \
                         answers again (further failures are logged at debug level)"
                    );
                } else {
                    tracing::debug!(%error, "API key verifier failed");
                }
            }
        }
    }

    /// How long an answer stays fresh, and how long it may be served at all (fresh,
    /// then stale): the positive TTL and stale window, both capped by the key's expiry;
    /// the negative TTL, without a stale window, for unknown keys and keys already
    /// expired (expiry is final).
    fn lifetimes(&self, found: &Lookup) -> (Duration, Duration) {
        let known = (
            self.positive_ttl,
            self.positive_ttl.saturating_add(self.stale_window),
        );
        match found {
            Lookup::Unknown => (self.negative_ttl, self.negative_ttl),
            Lookup::Found(record) => match record.expires_at {
                None => known,
                Some(expires_at) => {
                    match Duration::try_from(expires_at - OffsetDateTime::now_utc()) {
                        Ok(left) if !left.is_zero() => (known.0.min(left), known.1.min(left)),
                        _ => (self.negative_ttl, self.negative_ttl),
                    }
                }
            },
        }
    }
}

/// Each entry lives in moka until the end of its stale window.
struct EntryExpiry;

impl Expiry<KeyHash, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &KeyHash, entry: &Entry, now: Instant) -> Option<Duration> {
        Some(entry.stale_until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &KeyHash,
        entry: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.stale_until.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Environment;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicBool;

    /// Knows one key; counts calls; can be made slow, held (each call takes a permit of
    /// `gate`) or failing.
    struct Fixture {
        known: KeyHash,
        expires_at: Option<OffsetDateTime>,
        delay: Duration,
        failing: AtomicBool,
        gate: Option<tokio::sync::Semaphore>,
    }

    #[async_trait]
    impl KeyVerifier for Fixture {
        async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            tokio::time::sleep(self.delay).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(VerifyError::backend("down"));
            }
            Ok((*hash == self.known).then(|| {
                KeyRecord::new(KeyId::new("ak_1"), "k", "acct", Environment::LIVE)
                    .with_expires_at(self.expires_at)
            }))
        }
    }

    fn fixture(delay_ms: u64) -> Fixture {
        Fixture {
            known: KeyHash::of("known"),
            expires_at: None,
            delay: Duration::from_millis(delay_ms),
            failing: AtomicBool::new(false),
            gate: None,
        }
    }

    /// A fixture whose calls wait until the test adds permits.
    fn gated() -> Fixture {
        Fixture {
            gate: Some(tokio::sync::Semaphore::new(0)),
            ..fixture(0)
        }
    }

    fn release(cache: &CachedVerifier<Fixture>, permits: usize) {
        cache.verifier().gate.as_ref().unwrap().add_permits(permits);
    }

    #[tokio::test]
    async fn the_public_lookup_and_probe_and_invalidation_through_the_trait() {
        let cache = CachedVerifier::new(fixture(0));
        let (known, unknown) = (KeyHash::of("known"), KeyHash::of("unknown"));
        assert!(!cache.is_cached(&known));
        let record = cache.lookup(&known).await.unwrap().expect("known");
        assert_eq!(record.account_id, "acct");
        assert!(cache.lookup(&unknown).await.unwrap().is_none());
        assert!(cache.is_cached(&known) && cache.is_cached(&unknown));
        // What the PostgreSQL listener and the manager call.
        let invalidate: &dyn Invalidate = &cache;
        invalidate.invalidate_key_id(&KeyId::new("ak_1"));
        assert!(!cache.is_cached(&known) && cache.is_cached(&unknown));
        cache.find(&known).await.unwrap();
        invalidate.invalidate_account("acct");
        assert!(!cache.is_cached(&known));
        invalidate.invalidate_all();
        assert!(!cache.is_cached(&unknown));
    }

    #[test]
    fn hashes_under_one_digest_are_a_set() {
        let [a, b, c] = [KeyHash::of("a"), KeyHash::of("b"), KeyHash::of("c")];
        let mut one = Hashes::One(a);
        one.insert(a);
        assert!(matches!(one, Hashes::One(h) if h == a));
        assert!(!Hashes::One(a).remove(&b), "a is still there");
        assert!(Hashes::One(a).remove(&a));
        let mut many = Hashes::One(a);
        for hash in [b, b, c, a] {
            many.insert(hash);
        }
        assert!(matches!(&many, Hashes::Many(all) if *all == [a, b, c]));
        assert!(!many.remove(&a));
        assert!(matches!(&many, Hashes::Many(left) if *left == [b, c]));
        assert!(!many.remove(&b));
        assert!(many.remove(&c));
    }

    #[tokio::test]
    async fn a_hot_slot_answers_only_for_its_own_hash() {
        let cache = CachedVerifier::new(Everything);
        let a = hash_of(1);
        // Another hash in the same hot slot (the same last two bytes).
        let mut bytes = *a.as_bytes();
        bytes[0] = 2;
        let b = KeyHash::from_bytes(bytes);
        assert_eq!(hot_index(&a), hot_index(&b));
        cache.find(&a).await.unwrap();
        assert!(cache.get_cached(&a).is_some(), "now in the hot slot");
        assert!(cache.get_cached(&b).is_none());
    }

    #[tokio::test]
    async fn fresh_hits_are_not_stale_and_shows_its_settings() {
        let cache = CachedVerifier::new(fixture(0));
        let hash = KeyHash::of("known");
        cache.find(&hash).await.unwrap();
        assert!(cache.get_cached(&hash).is_some());
        assert!(cache.get_cached(&hash).is_some());
        assert_eq!(cache.stats().stale_hits, 0);
        let debug = format!("{cache:?}");
        assert!(debug.contains("positive_ttl: 60s"), "{debug}");
    }

    /// Waits (up to 10 s) until `condition` holds.
    async fn until(mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "the condition never held");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn stale_entries_are_refreshed_in_the_background_and_cached_again() {
        let cache = CachedVerifier::builder(fixture(0))
            .positive_ttl(Duration::from_secs(1))
            .stale_window(Duration::from_secs(60))
            .build();
        let hash = KeyHash::of("known");
        cache.find(&hash).await.unwrap();
        // Waits out the TTL (a slow machine only makes it longer).
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        assert!(cache.get_cached(&hash).is_some(), "served stale");
        assert_eq!(cache.stats().stale_hits, 1);
        until(|| cache.stats().verifier_calls == 2 && cache.core.ledger().flights.is_empty()).await;
        // The refreshed entry is fresh, and still in the cache.
        assert!(cache.get_cached(&hash).is_some());
        assert_eq!(cache.stats().stale_hits, 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_waits_before_the_next_one() {
        let cache = CachedVerifier::builder(fixture(0))
            .positive_ttl(Duration::from_millis(50))
            .stale_window(Duration::from_secs(60))
            .build();
        let hash = KeyHash::of("known");
        cache.find(&hash).await.unwrap();
        cache.verifier().failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.get_cached(&hash).is_some(), "served stale");
        until(|| cache.stats().verifier_calls == 2 && cache.core.ledger().flights.is_empty()).await;
        for _ in 0..5 {
            assert!(cache.get_cached(&hash).is_some(), "still served stale");
        }
        // No further refresh for REFRESH_RETRY (1 s).
        assert!(cache.core.ledger().flights.is_empty());
        assert_eq!(cache.stats().verifier_calls, 2);
    }

    #[tokio::test]
    async fn a_flight_others_wait_on_outlives_one_waiter_leaving() {
        let cache = CachedVerifier::new(gated());
        let hash = KeyHash::of("known");
        let lookup = || {
            let cache = cache.clone();
            tokio::spawn(async move { cache.find(&hash).await })
        };
        let first = lookup();
        until_in_flight(&cache, &hash).await;
        let second = lookup();
        // The map's reference and both waiters'.
        until(|| {
            cache
                .core
                .ledger()
                .flights
                .get(&hash)
                .is_some_and(|flight| Arc::strong_count(flight) == 3)
        })
        .await;
        first.abort();
        assert!(first.await.is_err());
        assert_eq!(
            cache.core.ledger().flights.len(),
            1,
            "the second still waits"
        );
        release(&cache, 1);
        assert!(matches!(second.await.unwrap(), Ok(Lookup::Found(_))));
    }

    #[test]
    fn lifetimes_are_capped_at_a_century_not_less() {
        let now = Instant::now();
        let century = Duration::from_secs(100 * 365 * 24 * 3600);
        assert_eq!(later(now, Duration::MAX), now + century);
        assert_eq!(
            later(now, Duration::from_secs(60)),
            now + Duration::from_secs(60)
        );
    }

    /// An answer that started at `seq` is stale exactly when an invalidation recorded
    /// after `seq` names it, or when the log no longer reaches back to `seq`.
    #[test]
    fn the_ledger_counts_only_invalidations_after_the_flight_began() {
        let (hash, other) = (KeyHash::of("mine"), KeyHash::of("other"));
        let found = Lookup::Found(Arc::new(KeyRecord::new(
            KeyId::new("ak_1"),
            "k",
            "acct",
            Environment::LIVE,
        )));
        let mut ledger = Ledger::default();
        assert!(!ledger.invalidated_since(0, &hash, &found));
        // Made before the flight began (seq 1): does not count.
        ledger.record(Target::Hash(hash));
        let began = ledger.seq;
        ledger.record(Target::Hash(other));
        assert!(!ledger.invalidated_since(began, &hash, &found));
        // Older entries still in the log do not make it stale either.
        ledger.record(Target::Id(KeyId::new("ak_2")));
        assert!(!ledger.invalidated_since(began, &hash, &found));
        ledger.record(Target::Account("acct".into()));
        assert!(ledger.invalidated_since(began, &hash, &found));
        assert!(!ledger.invalidated_since(ledger.seq, &hash, &found));
        // Once the log has forgotten the flight's start, any answer may be stale.
        let mut ledger = Ledger::default();
        for _ in 0..=LOG_LEN {
            ledger.record(Target::Hash(other));
        }
        assert!(ledger.invalidated_since(0, &hash, &found));
        assert!(!ledger.invalidated_since(1, &hash, &found));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_verify_call() {
        let cache = CachedVerifier::new(gated());
        let hash = KeyHash::of("known");
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.find(&hash).await })
            })
            .collect();
        // All 100 missed while the one call is held: none was served from the cache.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.stats().misses < 100 {
            assert!(Instant::now() < deadline, "the lookups never all missed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release(&cache, 100);
        for task in tasks {
            assert!(matches!(task.await.unwrap(), Ok(Lookup::Found(_))));
        }
        assert_eq!(cache.stats().verifier_calls, 1);
    }

    #[tokio::test]
    async fn unknown_keys_are_cached_for_the_negative_ttl() {
        let cache = CachedVerifier::builder(fixture(0))
            .negative_ttl(Duration::from_secs(2))
            .build();
        let hash = KeyHash::of("nope");
        assert!(matches!(cache.find(&hash).await, Ok(Lookup::Unknown)));
        assert!(matches!(cache.find(&hash).await, Ok(Lookup::Unknown)));
        assert_eq!(cache.stats().verifier_calls, 1);
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert!(matches!(cache.find(&hash).await, Ok(Lookup::Unknown)));
        assert_eq!(cache.stats().verifier_calls, 2);
    }

    #[tokio::test]
    async fn backend_errors_are_not_cached() {
        let cache = CachedVerifier::new(fixture(0));
        let hash = KeyHash::of("known");
        cache.verifier().failing.store(true, Ordering::SeqCst);
        assert!(cache.find(&hash).await.is_err());
        assert!(cache.find(&hash).await.is_err());
        cache.verifier().failing.store(false, Ordering::SeqCst);
        assert!(matches!(cache.find(&hash).await, Ok(Lookup::Found(_))));
        assert_eq!(cache.stats().verifier_calls, 3);
    }

    #[tokio::test]
    async fn invalidation_by_hash_id_and_all() {
        let cache = CachedVerifier::new(fixture(0));
        let hash = KeyHash::of("known");
        cache.find(&hash).await.unwrap();
        cache.find(&hash).await.unwrap();
        assert_eq!(cache.stats().verifier_calls, 1);
        assert_eq!(cache.stats().hits, 1);

        assert!(
            cache.get_cached(&hash).is_some(),
            "now in the hot table too"
        );
        cache.invalidate(&hash);
        assert!(cache.get_cached(&hash).is_none(), "gone from both tables");
        cache.find(&hash).await.unwrap();
        assert_eq!(cache.stats().verifier_calls, 2);

        cache.invalidate_key_id(&KeyId::new("ak_other"));
        cache.find(&hash).await.unwrap();
        assert_eq!(
            cache.stats().verifier_calls,
            2,
            "another id leaves the entry"
        );

        cache.invalidate_key_id(&KeyId::new("ak_1"));
        assert!(cache.get_cached(&hash).is_none());
        cache.find(&hash).await.unwrap();
        assert_eq!(cache.stats().verifier_calls, 3);

        cache.invalidate_all();
        assert!(cache.get_cached(&hash).is_none());
    }

    #[tokio::test]
    async fn a_lookup_in_flight_during_invalidation_is_not_cached() {
        let cache = CachedVerifier::new(gated());
        let hash = KeyHash::of("known");
        let pending = tokio::spawn({
            let cache = cache.clone();
            async move { cache.find(&hash).await }
        });
        until_in_flight(&cache, &hash).await;
        cache.invalidate(&hash);
        release(&cache, 1);
        assert!(pending.await.unwrap().is_ok());
        assert!(cache.get_cached(&hash).is_none());
    }

    #[tokio::test]
    async fn lookups_after_an_invalidation_do_not_join_an_older_flight() {
        let cache = CachedVerifier::new(gated());
        let hash = KeyHash::of("known");
        let lookup = || {
            let cache = cache.clone();
            tokio::spawn(async move { cache.find(&hash).await })
        };
        let first = lookup();
        until_in_flight(&cache, &hash).await;
        cache.invalidate_key_id(&KeyId::new("ak_1"));
        // A new flight, not the one that started before the revocation.
        let second = lookup();
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.stats().misses < 2 {
            assert!(Instant::now() < deadline, "the second lookup never missed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release(&cache, 2);
        second.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(cache.stats().verifier_calls, 2);
        assert!(
            cache.get_cached(&hash).is_some(),
            "the newer answer is cached"
        );
    }

    #[tokio::test]
    async fn invalidate_all_right_after_a_lookup_forgets_it() {
        let cache = CachedVerifier::new(fixture(0));
        for _ in 0..200 {
            let hash = KeyHash::of("known");
            cache.find(&hash).await.unwrap();
            cache.invalidate_all();
            assert!(cache.get_cached(&hash).is_none());
        }
    }

    #[tokio::test]
    async fn unbounded_lifetimes_do_not_overflow() {
        let cache = CachedVerifier::builder(fixture(0))
            .positive_ttl(Duration::MAX)
            .stale_window(Duration::MAX)
            .build();
        let hash = KeyHash::of("known");
        assert!(matches!(cache.find(&hash).await, Ok(Lookup::Found(_))));
        assert!(cache.get_cached(&hash).is_some());
    }

    #[tokio::test]
    async fn abandoned_flights_leave_the_map() {
        let cache = CachedVerifier::new(fixture(1_000));
        let hash = KeyHash::of("known");
        let pending = tokio::spawn({
            let cache = cache.clone();
            async move { cache.find(&hash).await }
        });
        until_in_flight(&cache, &hash).await;
        assert_eq!(cache.core.ledger().flights.len(), 1);
        pending.abort();
        let _ = pending.await;
        assert!(cache.core.ledger().flights.is_empty());
    }

    #[tokio::test]
    async fn expired_keys_are_cached_like_unknown_ones() {
        let mut verifier = fixture(0);
        verifier.expires_at = Some(OffsetDateTime::now_utc() - Duration::from_secs(1));
        let cache = CachedVerifier::new(verifier);
        let hash = KeyHash::of("known");
        cache.find(&hash).await.unwrap();
        cache.find(&hash).await.unwrap();
        assert_eq!(cache.stats().verifier_calls, 1);
    }

    #[tokio::test]
    async fn entries_never_outlive_the_keys_expiry() {
        let mut verifier = fixture(0);
        verifier.expires_at = Some(OffsetDateTime::now_utc() + Duration::from_secs(2));
        let cache = CachedVerifier::new(verifier);
        let hash = KeyHash::of("known");
        cache.find(&hash).await.unwrap();
        assert!(cache.get_cached(&hash).is_some());
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert!(cache.get_cached(&hash).is_none());
    }

    /// A verifier that knows every hash, as key `ak_{first byte}` of account
    /// `acct_{first byte % 2}`.
    struct Everything;

    #[async_trait]
    impl KeyVerifier for Everything {
        async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
            let n = hash.as_bytes()[0];
            Ok(Some(KeyRecord::new(
                KeyId::new(format!("ak_{n}")),
                "k",
                format!("acct_{}", n % 2),
                Environment::LIVE,
            )))
        }
    }

    /// A hash whose first byte is `n` (so its id is `ak_{n}`).
    fn hash_of(n: u8) -> KeyHash {
        (0u32..)
            .map(|i| KeyHash::of(&format!("k{n}-{i}")))
            .find(|hash| hash.as_bytes()[0] == n)
            .unwrap()
    }

    #[tokio::test]
    async fn invalidating_one_key_touches_that_key_only() {
        let cache = CachedVerifier::new(Everything);
        let hashes: Vec<KeyHash> = (0..10).map(hash_of).collect();
        for hash in &hashes {
            cache.find(hash).await.unwrap();
            assert!(cache.get_cached(hash).is_some(), "read into the hot table");
        }
        cache.invalidate_key_id(&KeyId::new("ak_3"));
        assert!(cache.get_cached(&hashes[3]).is_none());
        let hits = cache.stats().hits;
        for (n, hash) in hashes.iter().enumerate() {
            assert_eq!(cache.get_cached(hash).is_some(), n != 3);
        }
        assert_eq!(cache.stats().hits, hits + 9);
        // The other keys' hot slots were not emptied (nor their versions moved).
        for (n, hash) in hashes.iter().enumerate().filter(|(n, _)| *n != 3) {
            let slot = cache.core.hot[hot_index(hash)].read().unwrap();
            assert!(
                slot.entry.as_ref().is_some_and(|hot| hot.hash == *hash),
                "key {n} still hot"
            );
        }
        assert!(
            cache
                .core
                .ledger()
                .hashes_of(&KeyId::new("ak_3"))
                .is_empty()
        );

        cache.invalidate_account("acct_0");
        for (n, hash) in hashes.iter().enumerate() {
            assert_eq!(
                cache.get_cached(hash).is_some(),
                n % 2 == 1 && n != 3,
                "key {n}"
            );
        }
        assert!(cache.core.ledger().hashes_of_account("acct_0").is_empty());
    }

    #[tokio::test]
    async fn a_flight_lands_despite_invalidations_of_other_keys_only() {
        /// Answers like `Everything` once the test lets a call through.
        struct Gated(tokio::sync::Semaphore);
        #[async_trait]
        impl KeyVerifier for Gated {
            async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
                self.0.acquire().await.unwrap().forget();
                Everything.verify(hash).await
            }
        }
        let cache = CachedVerifier::new(Gated(tokio::sync::Semaphore::new(0)));
        let (mine, other) = (hash_of(1), hash_of(2));
        let flight = |hash: KeyHash| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.find(&hash).await })
        };
        let pending = flight(mine);
        until_in_flight(&cache, &mine).await;
        cache.invalidate_key_id(&KeyId::new("ak_2"));
        cache.invalidate(&other);
        cache.invalidate_account("acct_0");
        cache.verifier().0.add_permits(1);
        pending.await.unwrap().unwrap();
        assert!(
            cache.get_cached(&mine).is_some(),
            "other keys did not spoil it"
        );

        cache.invalidate(&mine);
        let pending = flight(mine);
        until_in_flight(&cache, &mine).await;
        cache.invalidate_account("acct_1");
        cache.verifier().0.add_permits(1);
        pending.await.unwrap().unwrap();
        assert!(
            cache.get_cached(&mine).is_none(),
            "its account was invalidated"
        );
    }

    /// Waits until a lookup of `hash` is in flight (its flight is in the map).
    async fn until_in_flight<V>(cache: &CachedVerifier<V>, hash: &KeyHash) {
        until(|| cache.core.ledger().flights.contains_key(hash)).await;
    }

    #[tokio::test]
    async fn the_index_forgets_what_moka_evicts() {
        let cache = CachedVerifier::builder(Everything)
            .positive_ttl(Duration::from_millis(50))
            .stale_window(Duration::ZERO)
            .build();
        for n in 0..20 {
            cache.find(&hash_of(n)).await.unwrap();
        }
        assert_eq!(cache.core.ledger().by_id.len(), 20);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cache.core.ledger().by_id.is_empty() {
            assert!(Instant::now() < deadline, "index never emptied");
            tokio::time::sleep(Duration::from_millis(20)).await;
            cache.run_pending_tasks();
        }
        assert!(cache.core.ledger().by_account.is_empty());
        // And a key read again is indexed (and invalidated) again.
        cache.find(&hash_of(4)).await.unwrap();
        cache.invalidate_key_id(&KeyId::new("ak_4"));
        assert!(cache.get_cached(&hash_of(4)).is_none());
    }

    #[tokio::test]
    async fn a_hot_key_evicted_for_size_is_not_served_after_its_revocation() {
        let cache = CachedVerifier::builder(Everything).max_capacity(8).build();
        let hot = hash_of(1);
        cache.find(&hot).await.unwrap();
        assert!(cache.get_cached(&hot).is_some(), "read into the hot table");
        // Fill far past the capacity: moka evicts, the hot key among others (its hot
        // hits never told moka it is used).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 2u8;
        while cache.core.entries.contains_key(&hot) {
            assert!(Instant::now() < deadline, "never evicted");
            cache.find(&hash_of(n)).await.unwrap();
            cache.run_pending_tasks();
            n = n.wrapping_add(1).max(2);
        }
        cache.invalidate_key_id(&KeyId::new("ak_1"));
        assert!(
            cache.get_cached(&hot).is_none(),
            "evicted from moka, so gone from the hot table too"
        );
    }

    #[test]
    fn the_documented_defaults() {
        let cache = CachedVerifier::new(Everything);
        let core = &cache.core;
        assert_eq!(core.positive_ttl, Duration::from_secs(60), "60 s TTL");
        assert_eq!(
            core.negative_ttl,
            Duration::from_secs(5),
            "5 s negative TTL"
        );
        assert_eq!(
            core.stale_window,
            Duration::from_secs(300),
            "5 min stale window"
        );
        assert_eq!(
            core.verify_timeout,
            Some(Duration::from_secs(2)),
            "2 s verify timeout"
        );
        assert_eq!(core.entries.policy().max_capacity(), Some(100_000));
    }
}
