//! Rate limits shared by many instances through Redis: [`RedisLimiter`] (feature
//! `redis`).
//!
//! Every check is **one** Lua script run atomically by Redis: it reads the TAT of each
//! limit that applies (the same GCRA as in process, on Redis's own clock, in
//! microseconds), gives back what an earlier check of the same request spent (a route's
//! [`Cost`](crate::meter::Cost) replacing the default), and either spends the cost on
//! every limit or on none. So instances that share a Redis share each quota exactly,
//! whatever their clocks say.
//!
//! If Redis fails or does not answer within the timeout (250 ms by default), the layer
//! falls back to its in-process limiter, says so once in the log (error level), and
//! tries Redis again after a second; when Redis answers again it says so once more and
//! uses it. A limiter fault never refuses a request by itself.
//!
//! ```no_run
//! use tower_api_keys::limit::redis::RedisLimiter;
//!
//! let limiter = RedisLimiter::new("redis://127.0.0.1:6379").unwrap().prefix("myapi");
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{Decision, RateLimit};
use crate::metrics::RedisMetrics;

/// The script: `KEYS` one per limit; `ARGV` cost, refund, then per limit the interval
/// and the window (microseconds). Returns `{allowed, index, remaining, reset, retry}`:
/// the refusing limit, or the one closest to exhaustion (1-based).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local refund = tonumber(ARGV[2])
local n = #KEYS
local tats = {}
for i = 1, n do
  local interval = tonumber(ARGV[1 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if refund > 0 and tat > now then
    tat = math.max(tat - interval * refund, now)
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  tats[i] = tat
end
local best, best_rem, best_reset = 0, -1, 0
local next_tats = {}
for i = 1, n do
  local interval = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  local start = math.max(tats[i], now)
  local nxt = start + interval * cost
  local ahead = nxt - now
  if ahead > window then
    local full = start - now
    return {0, i, math.floor((window - full) / interval), full, ahead - window}
  end
  next_tats[i] = nxt
  local rem = math.floor((window - ahead) / interval)
  if best_rem < 0 or rem < best_rem then
    best, best_rem, best_reset = i, rem, ahead
  end
end
if cost > 0 then
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%d', next_tats[i]), 'PX', math.ceil((next_tats[i] - now) / 1000) + 1)
  end
end
return {1, best, best_rem, best_reset, 0}
";

/// Rate limits kept in Redis, shared by every instance using the same Redis and
/// prefix. Cheap to clone. See the [module docs](self).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    script: redis::Script,
    connection: Mutex<Option<MultiplexedConnection>>,
    epoch: Instant,
    /// Until when (ms since `epoch`) Redis is not asked again after a failure.
    down_until: AtomicU64,
    /// Whether the log has said that Redis is down.
    down: AtomicBool,
    /// Registered when the limiter is built (see [`metrics`](crate::metrics)).
    metrics: RedisMetrics,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("down", &self.inner.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One limit a check spends: the subject space (keys, accounts), the subject, the limit.
pub(crate) type Check<'a> = (u8, &'a str, &'a RateLimit);

/// What Redis decided for a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verdict {
    /// The refusing limit's index, or the index of the one closest to exhaustion.
    pub(crate) index: usize,
    pub(crate) decision: Decision,
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://host:port/db`); nothing is connected
    /// until the first check. Keys start with `tower_api_keys:`.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        Ok(RedisLimiter {
            inner: Arc::new(Inner {
                client,
                prefix: "tower_api_keys".into(),
                timeout: Duration::from_millis(250),
                script: redis::Script::new(GCRA),
                connection: Mutex::new(None),
                epoch: Instant::now(),
                down_until: AtomicU64::new(0),
                down: AtomicBool::new(false),
                metrics: RedisMetrics::register(),
            }),
        })
    }

    fn with_inner(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => change(inner),
            None => {
                let old = &self.inner;
                let mut inner = Inner {
                    client: old.client.clone(),
                    prefix: old.prefix.clone(),
                    timeout: old.timeout,
                    script: redis::Script::new(GCRA),
                    connection: Mutex::new(None),
                    epoch: Instant::now(),
                    down_until: AtomicU64::new(0),
                    down: AtomicBool::new(false),
                    metrics: old.metrics.clone(),
                };
                change(&mut inner);
                self.inner = Arc::new(inner);
            }
        }
        self
    }

    /// The start of every Redis key this limiter writes (default `tower_api_keys`):
    /// instances that share quotas share it; tests give each their own.
    #[must_use]
    pub fn prefix(self, prefix: &str) -> Self {
        let prefix = prefix.to_owned();
        self.with_inner(|inner| inner.prefix = prefix)
    }

    /// How long a check waits for Redis before falling back (default 250 ms).
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with_inner(|inner| inner.timeout = timeout)
    }

    /// Whether the limiter is using the in-process fallback now.
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.inner.down.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Gives back `refund` and spends `cost` on every limit of `checks`, or on none;
    /// `None` when Redis cannot answer now (the caller falls back).
    pub(crate) async fn check(
        &self,
        checks: &[Check<'_>],
        cost: u32,
        refund: u32,
    ) -> Option<Verdict> {
        let inner = &*self.inner;
        if checks.is_empty() {
            return None;
        }
        if inner.down.load(Ordering::Relaxed) {
            // Down: one request a second asks whether Redis is back, the others do not
            // wait for it.
            let (now, until) = (self.now_ms(), inner.down_until.load(Ordering::Relaxed));
            if now < until
                || inner
                    .down_until
                    .compare_exchange(until, now + 1_000, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                return None;
            }
        }
        let started = Instant::now();
        let answer = tokio::time::timeout(inner.timeout, self.run(checks, cost, refund)).await;
        let seconds = started.elapsed().as_secs_f64();
        match answer {
            Ok(Ok(verdict)) => {
                inner.metrics.ok.record(seconds);
                if inner.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!("Redis rate limiter answers again; quotas are shared again");
                }
                Some(verdict)
            }
            Ok(Err(error)) => {
                inner.metrics.error.record(seconds);
                self.fail(&error.to_string());
                None
            }
            Err(_) => {
                inner.metrics.timeout.record(seconds);
                self.fail("timed out");
                None
            }
        }
    }

    fn fail(&self, error: &str) {
        let inner = &*self.inner;
        *inner
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        inner
            .down_until
            .store(self.now_ms() + 1_000, Ordering::Relaxed);
        if !inner.down.swap(true, Ordering::Relaxed) {
            tracing::error!(
                error,
                "Redis rate limiter failed; using in-process limits until it answers"
            );
        } else {
            tracing::debug!(error, "Redis rate limiter failed again");
        }
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cached = self
            .inner
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(connection) = cached {
            return Ok(connection);
        }
        let connection = self.inner.client.get_multiplexed_async_connection().await?;
        *self
            .inner
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        Ok(connection)
    }

    async fn run(
        &self,
        checks: &[Check<'_>],
        cost: u32,
        refund: u32,
    ) -> redis::RedisResult<Verdict> {
        let mut connection = self.connection().await?;
        let mut invocation = self.inner.script.prepare_invoke();
        invocation.arg(cost).arg(refund);
        for (space, subject, limit) in checks {
            let key = format!("{}:{space}:{subject}:{}", self.inner.prefix, limit.name);
            let window = u64::from(limit.window_seconds) * 1_000_000;
            let interval = (window / u64::from(limit.limit.max(1))).max(1);
            invocation.key(key).arg(interval).arg(window);
        }
        let (allowed, index, remaining, reset, retry): (i64, i64, i64, i64, i64) =
            invocation.invoke_async(&mut connection).await?;
        let micros = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
        Ok(Verdict {
            index: usize::try_from(index - 1).unwrap_or(0),
            decision: Decision {
                allowed: allowed == 1,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                reset_after: micros(reset),
                retry_after: micros(retry),
            },
        })
    }
}
