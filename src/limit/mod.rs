//! Rate limits, in process: [`RateLimit`] (a name, a number of requests, a window) and
//! [`RateLimiter`], which decides per subject (a key, an account) whether a request of a
//! given cost fits.
//!
//! The algorithm is GCRA (the generic cell rate algorithm: a leaky bucket kept as one
//! number): each subject and limit keep one number, the *theoretical arrival time*
//! (TAT) at which the quota would be full again. A request of cost `c` at time `t` moves
//! it to `max(TAT, t) + c × window / limit` and passes if that is at most `t + window`.
//! So a full quota allows `limit` requests at once, and after that one request per
//! `window / limit`. Over any span of one window a key gets at most its burst plus the
//! steady rate (up to `2 × limit − 1` if it starts with a full quota), but never two
//! quotas in one instant, as a fixed window allows at its edge. One atomic
//! word per subject and limit, updated by compare-and-swap: no lock shared by all keys,
//! no future on the hit path.
//!
//! The words live in 64 shards of hash maps (by a 64-bit digest of subject and limit
//! name), each behind a read-write lock that a check takes for reading: only a subject's
//! first check takes it for writing. A subject whose quota is full again (its TAT is
//! past) has nothing to remember, so a shard that grows past its share of
//! `max_subjects` forgets those; subjects still spending are never forgotten.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_keys::limit::{RateLimit, RateLimiter};
//!
//! let limit = RateLimit::new("requests", 2, Duration::from_secs(60)).unwrap();
//! let limiter = RateLimiter::new();
//! assert!(limiter.check("ak_1", &limit, 1).allowed);
//! assert!(limiter.check("ak_1", &limit, 1).allowed);
//! let refused = limiter.check("ak_1", &limit, 1);
//! assert!(!refused.allowed);
//! assert_eq!(refused.retry_after_secs(), 30);
//! assert_eq!(refused.header(&limit), r#""requests";r=0;t=60"#);
//! assert_eq!(limit.policy_header(), r#""requests";q=2;w=60"#);
//! ```

pub mod credits;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The `RateLimit` field (IETF draft-ietf-httpapi-ratelimit-headers).
pub(crate) const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
/// The `RateLimit-Policy` field.
const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");

/// Puts the `RateLimit` field `state` and the `RateLimit-Policy` field `policy` into
/// `headers` (accepted responses and 429s alike). Limit names are letters, digits, `_`
/// and `-`, so `state` is always a valid value.
pub(crate) fn insert_fields(
    headers: &mut http::HeaderMap,
    state: String,
    policy: http::HeaderValue,
) {
    if let Ok(state) = http::HeaderValue::try_from(state) {
        headers.reserve(2);
        headers.insert(RATELIMIT, state);
        headers.insert(RATELIMIT_POLICY, policy);
    }
}

/// The most limits a key or an account carries.
pub const MAX_LIMITS: usize = 5;

/// One named limit: at most `limit` units of cost per `window`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimit {
    /// The name clients see in the `RateLimit` headers (`requests`).
    pub name: String,
    /// Units of cost per window.
    pub limit: u32,
    /// The window, in whole seconds.
    pub window_seconds: u32,
}

/// Why a [`RateLimit`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRateLimit(pub &'static str);

impl RateLimit {
    /// A limit of `limit` per `window` (whole seconds, at least one; `limit` at least
    /// one; a name of 1–32 letters, digits, `_` or `-`, which the headers quote).
    pub fn new(name: &str, limit: u32, window: Duration) -> Result<Self, InvalidRateLimit> {
        let window_seconds = u32::try_from(window.as_secs())
            .map_err(|_| InvalidRateLimit("the window must be at most u32::MAX seconds"))?;
        let limit = RateLimit {
            name: name.to_owned(),
            limit,
            window_seconds,
        };
        limit.check()?;
        Ok(limit)
    }

    /// Whether the fields make a limit (see [`new`](Self::new)).
    pub fn check(&self) -> Result<(), InvalidRateLimit> {
        let name_ok = (1..=32).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(InvalidRateLimit(
                "a limit's name is 1 to 32 letters, digits, '_' or '-'",
            ));
        }
        if self.limit == 0 {
            return Err(InvalidRateLimit("a limit allows at least 1 per window"));
        }
        if self.window_seconds == 0 {
            return Err(InvalidRateLimit("a window is at least 1 second"));
        }
        Ok(())
    }

    /// Checks a set of limits: at most [`MAX_LIMITS`], each valid, names unique.
    pub fn check_all(limits: &[RateLimit]) -> Result<(), InvalidRateLimit> {
        if limits.len() > MAX_LIMITS {
            return Err(InvalidRateLimit("at most 5 rate limits"));
        }
        for (i, limit) in limits.iter().enumerate() {
            limit.check()?;
            if limits[..i].iter().any(|other| other.name == limit.name) {
                return Err(InvalidRateLimit("rate limit names must be unique"));
            }
        }
        Ok(())
    }

    /// Whether `self` allows no more than `other`: the same name, no larger quota, and
    /// no higher rate (`limit / window`).
    #[must_use]
    pub fn within(&self, other: &RateLimit) -> bool {
        self.name == other.name
            && self.limit <= other.limit
            && u64::from(self.limit) * u64::from(other.window_seconds)
                <= u64::from(other.limit) * u64::from(self.window_seconds)
    }

    /// Whether `limits` are within `caller`'s: each of `caller`'s limits has one of the
    /// same name in `limits` that is [within](Self::within) it (a key cannot lift a
    /// limit it has, nor raise it).
    #[must_use]
    pub fn all_within(limits: &[RateLimit], caller: &[RateLimit]) -> bool {
        caller.iter().all(|own| {
            limits
                .iter()
                .any(|limit| limit.name == own.name && limit.within(own))
        })
    }

    fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.window_seconds))
    }

    /// The `RateLimit-Policy` field: `"requests";q=100;w=60`.
    #[must_use]
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.name, self.limit, self.window_seconds
        )
    }

    /// The time one unit of cost takes to come back: `window / limit`, in nanoseconds.
    fn interval_nanos(&self) -> u64 {
        let window = u64::try_from(self.window().as_nanos()).unwrap_or(u64::MAX);
        // `max(1)`: a limit deserialized without `check` may be 0.
        (window / u64::from(self.limit.max(1))).max(1)
    }
}

/// A limit with its `RateLimit-Policy` field and the start of its `RateLimit` field,
/// made once.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) limit: RateLimit,
    pub(crate) policy: http::HeaderValue,
    /// `"name";r=`
    state_prefix: Box<str>,
}

impl Slot {
    /// The slot of a limit. A name that [`RateLimit::check`] would refuse (from a
    /// verifier of your own) is still enforced: its headers show it with `_` for each
    /// character a header cannot quote.
    pub(crate) fn new(limit: RateLimit) -> Self {
        let shown: String = limit
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let policy = format!("\"{shown}\";q={};w={}", limit.limit, limit.window_seconds);
        Slot {
            state_prefix: format!("\"{shown}\";r=").into(),
            policy: http::HeaderValue::try_from(policy)
                .unwrap_or_else(|_| http::HeaderValue::from_static("\"limit\"")),
            limit,
        }
    }

    /// Puts this limit's `RateLimit` and `RateLimit-Policy` fields for `decision`
    /// into `headers`.
    pub(crate) fn insert_fields(&self, decision: &Decision, headers: &mut http::HeaderMap) {
        let mut state = String::with_capacity(self.state_prefix.len() + 24);
        state.push_str(&self.state_prefix);
        decision.write_numbers(&mut state);
        insert_fields(headers, state, self.policy.clone());
    }
}

/// What a check decided, and what the `RateLimit` field says about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request fits (its cost was spent).
    pub allowed: bool,
    /// Units left now (after this request, if allowed).
    pub remaining: u32,
    /// Until the quota is full again.
    pub reset_after: Duration,
    /// Until a request of this cost would fit (zero when allowed).
    pub retry_after: Duration,
}

impl Decision {
    /// `Retry-After` in whole seconds, rounded up (at least 1 when refused).
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            return 0;
        }
        ceil_secs(self.retry_after).max(1)
    }

    /// The `RateLimit` field for `limit`: `"requests";r=0;t=12` (`t`: whole seconds
    /// until the quota is full again, rounded up).
    #[must_use]
    pub fn header(&self, limit: &RateLimit) -> String {
        let mut field = String::with_capacity(limit.name.len() + 32);
        field.push('"');
        field.push_str(&limit.name);
        field.push_str("\";r=");
        self.write_numbers(&mut field);
        field
    }

    /// `{remaining};t={reset}`, the end of [`header`](Self::header), without `format!`.
    pub(crate) fn write_numbers(&self, out: &mut String) {
        push_number(out, u64::from(self.remaining));
        out.push_str(";t=");
        push_number(out, ceil_secs(self.reset_after));
    }
}

/// A request a limit refused: the limit, and the decision (for the headers).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The limit that is spent.
    pub limit: RateLimit,
    /// What the check decided.
    pub decision: Decision,
}

impl Refusal {
    /// A refusal by `limit`.
    #[must_use]
    pub fn new(limit: RateLimit, decision: Decision) -> Self {
        Refusal { limit, decision }
    }
}

fn push_number(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Decides rate limits in process. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct RateLimiter {
    inner: std::sync::Arc<Shards>,
}

const SHARDS: usize = 64;

struct Shards {
    epoch: Instant,
    /// By a 64-bit digest of (subject, limit name): the TAT in nanoseconds since
    /// `epoch`.
    shards: Box<[RwLock<Shard>]>,
    /// Entries a shard holds before it forgets those at full quota.
    sweep_at: usize,
}

/// One shard: TATs by digest.
type Shard = HashMap<u64, AtomicU64, BuildHasherDefault<Digested>>;

/// The keys are digests already: their bits are the hash.
#[derive(Default)]
struct Digested(u64);

impl Hasher for Digested {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subjects: usize = self
            .inner
            .shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum();
        f.debug_struct("RateLimiter")
            .field("subjects", &subjects)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    /// A limiter that starts forgetting subjects at full quota beyond a million
    /// subject-and-limit pairs.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_subjects(1_000_000)
    }

    /// A limiter that starts forgetting subjects at full quota beyond `max`
    /// subject-and-limit pairs (subjects still spending are always kept).
    #[must_use]
    pub fn with_max_subjects(max: usize) -> Self {
        RateLimiter {
            inner: std::sync::Arc::new(Shards {
                epoch: Instant::now(),
                shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
                sweep_at: (max / SHARDS).max(1),
            }),
        }
    }

    /// Gives back `cost` of `limit` that `subject` spent (a request a later limit
    /// refused).
    pub fn refund(&self, subject: &str, limit: &RateLimit, cost: u32) {
        self.refund_in(0, subject, limit, cost);
    }

    /// [`refund`](Self::refund) in one of several subject spaces (`space`: keys,
    /// accounts, …), so that equal ids of different kinds keep apart.
    pub(crate) fn refund_in(&self, space: u8, subject: &str, limit: &RateLimit, cost: u32) {
        let inner = &*self.inner;
        let key = digest(space, subject, &limit.name);
        let shard = &inner.shards[(key >> 32) as usize % SHARDS];
        let map = shard.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(tat) = map.get(&key) {
            let increment = limit.interval_nanos().saturating_mul(u64::from(cost));
            // Never below zero; a TAT in the past is a full quota anyway.
            let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                Some(current.saturating_sub(increment))
            });
        }
    }

    /// Spends `cost` of `limit` for `subject` if it fits, now.
    pub fn check(&self, subject: &str, limit: &RateLimit, cost: u32) -> Decision {
        self.check_in(0, subject, limit, cost)
    }

    /// [`check`](Self::check) in one of several subject spaces (see
    /// [`refund_in`](Self::refund_in)).
    pub(crate) fn check_in(
        &self,
        space: u8,
        subject: &str,
        limit: &RateLimit,
        cost: u32,
    ) -> Decision {
        let inner = &*self.inner;
        let now = u64::try_from(inner.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let key = digest(space, subject, &limit.name);
        // Bits apart from those the map reads (its low bits and its top seven).
        let shard = &inner.shards[(key >> 32) as usize % SHARDS];
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(tat) = map.get(&key) {
                return decide(tat, now, limit, cost);
            }
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= inner.sweep_at && !map.contains_key(&key) {
            // A TAT in the past is a full quota: nothing to remember.
            map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
        }
        let tat = map.entry(key).or_insert_with(|| AtomicU64::new(0));
        decide(tat, now, limit, cost)
    }
}

fn digest(space: u8, subject: &str, name: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (space, subject, name).hash(&mut hasher);
    hasher.finish()
}

/// GCRA on one TAT word at `now` (nanoseconds since the limiter's epoch).
fn decide(tat: &AtomicU64, now: u64, limit: &RateLimit, cost: u32) -> Decision {
    let interval = limit.interval_nanos();
    let window = u64::try_from(limit.window().as_nanos()).unwrap_or(u64::MAX);
    let increment = interval.saturating_mul(u64::from(cost));
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let start = current.max(now);
        let next = start.saturating_add(increment);
        let ahead = next - now;
        if ahead > window {
            // Refused: nothing spent.
            let full_after = start - now;
            return Decision {
                allowed: false,
                remaining: remaining(window, full_after, interval),
                reset_after: Duration::from_nanos(full_after),
                retry_after: Duration::from_nanos(ahead - window),
            };
        }
        if cost == 0 || current == next {
            return allowed(window, ahead, interval);
        }
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return allowed(window, ahead, interval),
            Err(seen) => current = seen,
        }
    }
}

fn allowed(window: u64, ahead: u64, interval: u64) -> Decision {
    Decision {
        allowed: true,
        remaining: remaining(window, ahead, interval),
        reset_after: Duration::from_nanos(ahead),
        retry_after: Duration::ZERO,
    }
}

/// Units that still fit when the quota is full again in `ahead`.
fn remaining(window: u64, ahead: u64, interval: u64) -> u32 {
    u32::try_from(window.saturating_sub(ahead) / interval).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn per_minute(limit: u32) -> RateLimit {
        RateLimit::new("requests", limit, Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn a_full_quota_then_one_per_interval_never_twice_the_limit() {
        let (tat, limit) = (AtomicU64::new(0), per_minute(100));
        let t0 = 1_000 * SECOND;
        for i in 0..100 {
            let decision = decide(&tat, t0, &limit, 1);
            assert!(decision.allowed, "request {i}");
            assert_eq!(decision.remaining, 99 - i);
        }
        let refused = decide(&tat, t0, &limit, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // One unit comes back every 0.6 s.
        assert_eq!(refused.retry_after, Duration::from_millis(600));
        assert_eq!(refused.retry_after_secs(), 1);
        assert_eq!(refused.header(&limit), r#""requests";r=0;t=60"#);
        assert_eq!(limit.policy_header(), r#""requests";q=100;w=60"#);
        // At the edge of the window: one more, not another hundred.
        let edge = t0 + 60 * SECOND;
        let passed = (0..200)
            .filter(|_| decide(&tat, edge, &limit, 1).allowed)
            .count();
        assert_eq!(passed, 100, "the quota refilled once, not twice");
        let half = edge + 30 * SECOND;
        let passed = (0..200)
            .filter(|_| decide(&tat, half, &limit, 1).allowed)
            .count();
        assert_eq!(passed, 50, "half a window gives half the quota back");
    }

    #[test]
    fn costs_spend_several_units_and_zero_always_passes() {
        let (tat, limit) = (AtomicU64::new(0), per_minute(10));
        let now = 5 * SECOND;
        assert_eq!(decide(&tat, now, &limit, 5).remaining, 5);
        assert_eq!(decide(&tat, now, &limit, 5).remaining, 0);
        let refused = decide(&tat, now, &limit, 5);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(30));
        assert!(
            decide(&tat, now, &limit, 0).allowed,
            "cost 0 passes when spent"
        );
        assert!(!decide(&tat, now, &limit, 1).allowed);
    }

    #[test]
    fn limits_are_checked_one_by_one_and_as_a_set() {
        assert!(RateLimit::new("", 1, Duration::from_secs(1)).is_err());
        assert!(RateLimit::new("a b", 1, Duration::from_secs(1)).is_err());
        assert!(RateLimit::new("requests", 0, Duration::from_secs(1)).is_err());
        assert!(RateLimit::new("requests", 1, Duration::from_millis(500)).is_err());
        let one = |name: &str| RateLimit::new(name, 1, Duration::from_secs(1)).unwrap();
        assert!(RateLimit::check_all(&[one("a"), one("b")]).is_ok());
        assert!(RateLimit::check_all(&[one("a"), one("a")]).is_err());
        let six: Vec<_> = ["a", "b", "c", "d", "e", "f"].map(one).to_vec();
        assert!(RateLimit::check_all(&six).is_err());
        assert!(RateLimit::check_all(&six[..5]).is_ok());
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_quota() {
        let limiter = RateLimiter::new();
        let limit = RateLimit::new("requests", 1_000, Duration::from_secs(3_600)).unwrap();
        let admitted = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        if limiter.check("ak_1", &limit, 1).allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // An hour's window: at most one unit (3.6 s) comes back while the test runs.
        let admitted = admitted.into_inner();
        assert!((1_000..=1_001).contains(&admitted), "{admitted}");
        // Subjects and limits are apart.
        assert!(limiter.check("ak_2", &limit, 1).allowed);
        let other = RateLimit::new("writes", 1, Duration::from_secs(60)).unwrap();
        assert!(limiter.check("ak_1", &other, 1).allowed);
    }

    #[test]
    fn a_refund_gives_the_units_back() {
        let limiter = RateLimiter::new();
        let limit = RateLimit::new("requests", 2, Duration::from_secs(3_600)).unwrap();
        assert!(limiter.check("ak_1", &limit, 1).allowed);
        assert!(limiter.check("ak_1", &limit, 1).allowed);
        assert!(!limiter.check("ak_1", &limit, 1).allowed);
        limiter.refund("ak_1", &limit, 1);
        assert!(limiter.check("ak_1", &limit, 1).allowed);
        assert!(!limiter.check("ak_1", &limit, 1).allowed);
        // An unchecked limit of 0 does not divide by zero.
        let zero = RateLimit {
            name: "zero".into(),
            limit: 0,
            window_seconds: 1,
        };
        let _ = limiter.check("ak_1", &zero, 1);
    }

    #[test]
    fn subjects_at_full_quota_are_forgotten_and_spending_ones_kept() {
        let limiter = RateLimiter::with_max_subjects(SHARDS);
        let spending = RateLimit::new("hourly", 1, Duration::from_secs(3_600)).unwrap();
        assert!(limiter.check("ak_1", &spending, 1).allowed);
        let free = RateLimit::new("free", 1, Duration::from_secs(1)).unwrap();
        for i in 0..10_000 {
            // Cost 0: full quota, nothing spent, forgettable.
            limiter.check(&format!("ak_{i}x"), &free, 0);
        }
        assert!(format!("{limiter:?}").len() < 100);
        let subjects: usize = limiter
            .inner
            .shards
            .iter()
            .map(|shard| shard.read().unwrap().len())
            .sum();
        assert!(subjects < 1_000, "{subjects} kept");
        assert!(!limiter.check("ak_1", &spending, 1).allowed, "still spent");
    }
}
