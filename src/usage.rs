//! Last-used tracking without a write per request.
//!
//! The layer notes each accepted key in memory, at most once per key and second (an
//! atomic compare on the cached record; a short lock only when the second changes). A
//! background task writes the noted times to the store in batches, one statement per
//! batch.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_keys::{ApiKeyLayer, CachedVerifier, key::KeyFormat, store::MemoryStore, usage::UsageRecorder};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let usage = UsageRecorder::new();
//! let _flusher = usage.spawn_flusher(store.clone(), Duration::from_secs(5));
//! let layer = ApiKeyLayer::new(KeyFormat::new("sk"), CachedVerifier::new(store))
//!     .record_usage(usage);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use crate::key::KeyId;
use crate::metrics::{Incident, UsageMetrics};
use crate::record::KeyRecord;
use crate::store::{StoreError, TouchLastUsed, UsageBucket};

/// Collects key uses in memory and flushes them to a store ([`TouchLastUsed`]: every [`KeyStore`](crate::store::KeyStore)) in batches. Cheap to
/// clone; clones share the buffer.
#[derive(Clone, Default)]
pub struct UsageRecorder {
    inner: Arc<UsageInner>,
}

#[derive(Default)]
struct UsageInner {
    pending: Mutex<Vec<(KeyId, OffsetDateTime)>>,
    /// Records with requests counted since the last flush.
    counted: Mutex<Vec<Arc<KeyRecord>>>,
    /// Buckets taken from records whose write failed, for the next flush.
    unwritten: Mutex<Vec<UsageBucket>>,
    writes: AtomicU64,
    /// Registered when the recorder is built (see [`metrics`](crate::metrics)).
    metrics: UsageMetrics,
    /// Failed flushes, logged once per incident.
    failing: Incident,
}

impl fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("writes", &self.writes())
            .finish_non_exhaustive()
    }
}

impl UsageRecorder {
    /// An empty recorder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes that the key of `record` was used at `now`.
    pub fn record(&self, record: &KeyRecord, now: OffsetDateTime) {
        let second = now.unix_timestamp();
        let stamp = &record.runtime().last_seen;
        if stamp.load(Ordering::Relaxed) >= second
            || stamp.fetch_max(second, Ordering::Relaxed) >= second
        {
            return;
        }
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((record.id.clone(), now));
    }

    /// Counts one request of `outcome` (`accepted`, or the code a request that reached
    /// the key was refused with) from `ip` for the hourly usage of `record`'s key, and
    /// notes an accepted use as its last use.
    pub fn count(
        &self,
        record: &Arc<KeyRecord>,
        now: OffsetDateTime,
        outcome: &'static str,
        ip: Option<IpAddr>,
    ) {
        if outcome == "accepted" {
            self.record(record, now);
        }
        let hour = now.unix_timestamp().div_euclid(3_600) * 3_600;
        record.runtime().usage.add(hour, outcome, ip);
        if !record.runtime().usage.registered.load(Ordering::Relaxed)
            && !record
                .runtime()
                .usage
                .registered
                .swap(true, Ordering::AcqRel)
        {
            self.inner
                .counted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::clone(record));
        }
    }

    /// The hourly buckets counted since the last flush (and any a failed flush left).
    fn take_buckets(&self) -> Vec<UsageBucket> {
        let records = std::mem::take(
            &mut *self
                .inner
                .counted
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut buckets = std::mem::take(
            &mut *self
                .inner
                .unwritten
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        // One bucket per key and hour (a failed flush's, and a reloaded record's, are
        // merged), so a store outage grows this by keys × hours, not by flushes.
        let mut merged: HashMap<(KeyId, i128), UsageBucket> = HashMap::new();
        let mut add = |bucket: UsageBucket| {
            let at = (bucket.key_id.clone(), bucket.hour.unix_timestamp_nanos());
            match merged.get_mut(&at) {
                Some(seen) => seen.merge(&bucket),
                None => {
                    merged.insert(at, bucket);
                }
            }
        };
        for bucket in buckets.drain(..) {
            add(bucket);
        }
        for record in records {
            // Unregistered first: a request counted after this registers it again.
            record
                .runtime()
                .usage
                .registered
                .store(false, Ordering::Release);
            for tally in record.runtime().usage.take() {
                let hour = OffsetDateTime::from_unix_timestamp(tally.hour)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                let mut bucket = UsageBucket::new(record.id.clone(), hour);
                for (outcome, count) in tally.outcomes {
                    bucket.outcomes.insert(outcome.to_owned(), count);
                }
                let mut ips: HashMap<String, u64> = tally
                    .ips
                    .into_iter()
                    .map(|(ip, count)| (ip.to_string(), count))
                    .collect();
                if tally.other > 0 {
                    ips.insert("other".to_owned(), tally.other);
                }
                bucket.ips = ips.into_iter().collect();
                add(bucket);
            }
        }
        merged.into_values().collect()
    }

    /// Writes the pending uses to `store` in one batch; returns how many keys it
    /// updated. On failure, or if the future is dropped before the store answers, the
    /// uses are kept for the next flush.
    pub async fn flush<S: TouchLastUsed + ?Sized>(&self, store: &S) -> Result<usize, StoreError> {
        let buckets = self.take_buckets();
        let wrote_usage = !buckets.is_empty();
        if wrote_usage {
            // Back for the next flush unless the store took them (an error, or this
            // future dropped while the store works).
            let mut unwritten = UnwrittenBuckets {
                recorder: self,
                buckets,
            };
            if let Err(error) = store.add_usage(&unwritten.buckets).await {
                self.inner.metrics.failed.increment(1);
                return Err(error);
            }
            unwritten.buckets.clear();
        }
        let pending = std::mem::take(
            &mut *self
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if pending.is_empty() {
            if wrote_usage {
                self.inner.writes.fetch_add(1, Ordering::Relaxed);
                self.inner.metrics.flushed.increment(1);
            }
            return Ok(0);
        }
        let mut latest: HashMap<KeyId, OffsetDateTime> = HashMap::with_capacity(pending.len());
        for (id, at) in pending {
            let entry = latest.entry(id).or_insert(at);
            *entry = (*entry).max(at);
        }
        // Until the store confirms, the batch goes back to the pending uses when this
        // future ends in any other way: an error, or being dropped (an aborted flusher
        // at shutdown). Writing a use twice is harmless: stores keep the latest.
        // Sorted: concurrent batches of several instances lock rows in one order.
        let mut sorted: Vec<(KeyId, OffsetDateTime)> = latest.into_iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut batch = Unflushed {
            recorder: self,
            batch: sorted,
        };
        let metrics = &self.inner.metrics;
        if let Err(error) = store.touch_last_used(&batch.batch).await {
            metrics.failed.increment(1);
            return Err(error);
        }
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let rows = std::mem::take(&mut batch.batch).len();
        metrics.flushed.increment(1);
        metrics.rows.increment(rows as u64);
        Ok(rows)
    }

    /// Flushes to `store` every `every`, in a background task (needs a Tokio runtime).
    /// The task ends when the returned handle is aborted or dropped with the runtime.
    pub fn spawn_flusher<S: TouchLastUsed>(
        &self,
        store: S,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let recorder = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match recorder.flush(&store).await {
                    Ok(_) => {
                        if recorder.inner.failing.succeed() {
                            tracing::warn!("API key usage is recorded again");
                        }
                    }
                    // Once per incident: the store is asked again every `every`.
                    Err(error) if recorder.inner.failing.fail() => tracing::error!(
                        %error,
                        "could not record API key usage; will retry (further failures \
                         are logged at debug level)"
                    ),
                    Err(error) => {
                        tracing::debug!(%error, "could not record API key usage; will retry");
                    }
                }
            }
        })
    }

    /// How many batches were written so far.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }
}

/// Usage buckets on their way to the store; back for the next flush unless they got
/// there.
struct UnwrittenBuckets<'r> {
    recorder: &'r UsageRecorder,
    buckets: Vec<UsageBucket>,
}

impl Drop for UnwrittenBuckets<'_> {
    fn drop(&mut self) {
        if !self.buckets.is_empty() {
            self.recorder
                .inner
                .unwritten
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(self.buckets.drain(..));
        }
    }
}

/// A batch on its way to the store; back to the pending uses unless it got there.
struct Unflushed<'r> {
    recorder: &'r UsageRecorder,
    batch: Vec<(KeyId, OffsetDateTime)>,
}

impl Drop for Unflushed<'_> {
    fn drop(&mut self) {
        if !self.batch.is_empty() {
            self.recorder
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(self.batch.drain(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;

    use super::*;
    use crate::key::Environment;
    use crate::scope::Scopes;
    use crate::store::{KeyStore, MemoryStore, create_for_test};
    use crate::verify::KeyVerifier;

    /// A memory store whose `touch` hangs while `stalled` is set.
    #[derive(Clone, Default)]
    struct Stalling {
        store: MemoryStore,
        stalled: Arc<AtomicBool>,
    }

    /// Only what the recorder needs: the narrow trait, not a whole store.
    #[async_trait]
    impl TouchLastUsed for Stalling {
        async fn touch_last_used(
            &self,
            used: &[(KeyId, OffsetDateTime)],
        ) -> Result<(), StoreError> {
            if self.stalled.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.store.touch_last_used(used).await
        }
    }

    #[tokio::test]
    async fn a_flush_cut_short_loses_no_use() {
        let store = Stalling::default();
        let created = create_for_test(&store.store, "acct", "k", Environment::LIVE, Scopes::none())
            .await
            .unwrap();
        let record = store
            .store
            .verify(&created.key.hash())
            .await
            .unwrap()
            .unwrap();
        let recorder = UsageRecorder::new();
        let used_at = OffsetDateTime::now_utc();
        recorder.record(&record, used_at);

        // The store hangs; the flush is dropped (as an aborted flusher's would be).
        store.stalled.store(true, Ordering::SeqCst);
        let cut = tokio::time::timeout(Duration::from_millis(50), recorder.flush(&store)).await;
        assert!(cut.is_err(), "the flush was still waiting for the store");

        store.stalled.store(false, Ordering::SeqCst);
        assert_eq!(recorder.flush(&store).await.unwrap(), 1, "the use was kept");
        let info = store.store.get("acct", &created.info.id).await.unwrap();
        assert!(info.last_used_at.is_some());
        assert_eq!(recorder.flush(&store).await.unwrap(), 0, "and written once");
    }
}
