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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::store::{KeyStore, StoreError};

/// The second (unix time) a cached record was last noted; part of [`KeyRecord`] so the
/// hot path needs no map lookup.
#[derive(Default)]
pub(crate) struct UsageStamp(AtomicI64);

impl Clone for UsageStamp {
    fn clone(&self) -> Self {
        UsageStamp::default()
    }
}

impl PartialEq for UsageStamp {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for UsageStamp {}

impl fmt::Debug for UsageStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UsageStamp")
    }
}

/// Collects key uses in memory and flushes them to a [`KeyStore`] in batches. Cheap to
/// clone; clones share the buffer.
#[derive(Clone, Default)]
pub struct UsageRecorder {
    inner: Arc<UsageInner>,
}

#[derive(Default)]
struct UsageInner {
    pending: Mutex<Vec<(KeyId, OffsetDateTime)>>,
    writes: AtomicU64,
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
        let stamp = &record.last_seen.0;
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

    /// Writes the pending uses to `store` in one batch; returns how many keys it
    /// updated. On failure the uses are kept for the next flush.
    pub async fn flush<S: KeyStore + ?Sized>(&self, store: &S) -> Result<usize, StoreError> {
        let pending = std::mem::take(
            &mut *self
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if pending.is_empty() {
            return Ok(0);
        }
        let mut latest: HashMap<KeyId, OffsetDateTime> = HashMap::with_capacity(pending.len());
        for (id, at) in pending {
            let entry = latest.entry(id).or_insert(at);
            *entry = (*entry).max(at);
        }
        let batch: Vec<(KeyId, OffsetDateTime)> = latest.into_iter().collect();
        match store.touch(&batch).await {
            Ok(()) => {
                self.inner.writes.fetch_add(1, Ordering::Relaxed);
                Ok(batch.len())
            }
            Err(error) => {
                self.inner
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(batch);
                Err(error)
            }
        }
    }

    /// Flushes to `store` every `every`, in a background task (needs a Tokio runtime).
    /// The task ends when the returned handle is aborted or dropped with the runtime.
    pub fn spawn_flusher<S: KeyStore>(
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
                if let Err(error) = recorder.flush(&store).await {
                    tracing::warn!(%error, "could not record API key usage; will retry");
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
