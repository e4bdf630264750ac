//! Rate limits, in process: [`RateLimit`] (a name, a number of requests, a window) and
//! [`RateLimiter`], which decides per subject (a key, an account) whether a request of a
//! given cost fits.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, a sliding window without
//! buckets): each subject and limit keep one number, the *theoretical arrival time*
//! (TAT) at which the quota would be full again. A request of cost `c` at time `t` moves
//! it to `max(TAT, t) + c × window / limit` and passes if that is at most `t + window`.
//! So a full quota allows `limit` requests at once, and after that one request per
//! `window / limit`: never the 2× burst a fixed window allows at its edge. One atomic
//! word per subject and limit, updated by compare-and-swap: no lock shared by all keys,
//! no future on the hit path.
//!
//! A subject idle for a whole window has its full quota again, so its state may be
//! forgotten then: the limiter keeps it in a moka cache that evicts it after that idle
//! time (and, beyond `max_subjects`, the least used first, which can only give those
//! subjects their quota back early).
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
//! assert_eq!(refused.policy_header(), r#""requests";q=2;w=60"#);
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

    fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.window_seconds))
    }

    /// The time one unit of cost takes to come back: `window / limit`, in nanoseconds.
    fn interval_nanos(&self) -> u64 {
        let window = u64::try_from(self.window().as_nanos()).unwrap_or(u64::MAX);
        (window / u64::from(self.limit)).max(1)
    }
}

/// What a check decided, and what the `RateLimit` headers say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    limit: RateLimit,
}

impl Decision {
    /// The limit decided on.
    #[must_use]
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1 when refused).
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            return 0;
        }
        ceil_secs(self.retry_after).max(1)
    }

    /// The `RateLimit-Policy` field: `"requests";q=100;w=60`.
    #[must_use]
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.limit.name, self.limit.limit, self.limit.window_seconds
        )
    }

    /// The `RateLimit` field: `"requests";r=0;t=12` (`t`: whole seconds until the quota
    /// is full again, rounded up).
    #[must_use]
    pub fn header(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.limit.name,
            self.remaining,
            ceil_secs(self.reset_after)
        )
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Decides rate limits in process. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct RateLimiter {
    epoch: Instant,
    /// By a 64-bit digest of (subject, limit name): the TAT in nanoseconds since
    /// `epoch`.
    states: moka::sync::Cache<u64, Arc<Tat>>,
}

/// A theoretical arrival time, and the window after which, idle, it may be forgotten.
struct Tat {
    nanos: AtomicU64,
    window: Duration,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("subjects", &self.states.entry_count())
            .finish_non_exhaustive()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

struct IdleForAWindow;

impl moka::Expiry<u64, Arc<Tat>> for IdleForAWindow {
    fn expire_after_create(&self, _: &u64, tat: &Arc<Tat>, _: Instant) -> Option<Duration> {
        Some(tat.window)
    }

    fn expire_after_read(
        &self,
        _: &u64,
        tat: &Arc<Tat>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(tat.window)
    }
}

impl RateLimiter {
    /// A limiter for up to a million subject-and-limit pairs at once.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_subjects(1_000_000)
    }

    /// A limiter keeping at most `max` subject-and-limit pairs (beyond, the least used
    /// get their quota back early).
    #[must_use]
    pub fn with_max_subjects(max: u64) -> Self {
        RateLimiter {
            epoch: Instant::now(),
            states: moka::sync::Cache::builder()
                .max_capacity(max)
                .expire_after(IdleForAWindow)
                .build(),
        }
    }

    /// Spends `cost` of `limit` for `subject` if it fits, now.
    pub fn check(&self, subject: &str, limit: &RateLimit, cost: u32) -> Decision {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let state = self.states.get_with(digest(subject, &limit.name), || {
            Arc::new(Tat {
                nanos: AtomicU64::new(0),
                window: limit.window(),
            })
        });
        decide(&state.nanos, now, limit, cost)
    }
}

fn digest(subject: &str, name: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (subject, name).hash(&mut hasher);
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
                limit: limit.clone(),
            };
        }
        if cost == 0 || current == next {
            return allowed(window, ahead, interval, limit);
        }
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return allowed(window, ahead, interval, limit),
            Err(seen) => current = seen,
        }
    }
}

fn allowed(window: u64, ahead: u64, interval: u64, limit: &RateLimit) -> Decision {
    Decision {
        allowed: true,
        remaining: remaining(window, ahead, interval),
        reset_after: Duration::from_nanos(ahead),
        retry_after: Duration::ZERO,
        limit: limit.clone(),
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
        assert_eq!(refused.header(), r#""requests";r=0;t=60"#);
        assert_eq!(refused.policy_header(), r#""requests";q=100;w=60"#);
        // At the edge of the window: one more, not another hundred.
        let edge = t0 + 60 * SECOND;
        let passed = (0..200)
            .filter(|_| decide(&tat, edge, &limit, 1).allowed)
            .count();
        assert_eq!(passed, 100, "a sliding window: the quota refilled, no more");
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
}
