//! The token index: the cache's answers by presented token, so that a hit computes no
//! SHA-256 and no checksum.
//!
//! SHA-256 is what the store needs to find a key; the cache does not. A token is
//! indexed here by a keyed 128-bit MAC (SipHash-1-3-128 under a key drawn from the
//! operating system's CSPRNG when the cache is built, never persisted, never logged),
//! so that equal MACs mean equal tokens to anyone who does not know the key. Only
//! tokens that passed the format check, its checksum and a fresh cache hit get a slot;
//! every other token goes the long way (and a malformed one never reaches a verifier).
//!
//! Every invalidation moves a generation that every slot is stamped with, after the
//! cache's own entries are gone: an answer read before an invalidation is never served
//! after it, and a key revoked by id stops at once even if the cache had already
//! evicted it (the index may still answer for a key the cache forgot). Invalidations
//! are rare (a revocation, a change), so emptying the whole index costs the hot keys
//! one long lookup each.
//!
//! The MAC covers the tag of the layer's key format too: layers of different formats
//! that share a cache never get answers for tokens only another format accepts.
//!
//! A hit reads one atomic word that only invalidations write, and one slot through
//! `arc-swap` (whose reads write nothing shared), and clones this thread's copy of the
//! answer: each thread (each of the striped counters' stripes) gets its own copy of a
//! hot record, sharing the record's runtime state (usage, rate-limit slots, leases),
//! so that the reference count a request takes and drops is one no other thread
//! writes. A thread copies at most one record per 64 hits that found no copy, so that
//! an invalidation storm cannot turn every hit into a copy.

use std::hash::Hasher as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::Lookup;
use super::striped::{STRIPES, stripe};
use crate::key::KeyHash;
use crate::record::KeyRecord;

/// Slots of the index (a power of two): tokens whose MACs share the low bits take
/// turns.
const SLOTS: usize = 4096;

pub(crate) struct TokenIndex {
    key: [u64; 2],
    generation: AtomicU64,
    slots: Box<[ArcSwapOption<Known>]>,
}

/// A token's answer, as indexed.
struct Known {
    mac: u128,
    generation: u64,
    fresh_until: Instant,
    lookup: Lookup,
    /// The key's hash, and when (half way to `fresh_until`) the first hit after it
    /// reads the cache once, so that the cache's eviction policy sees the key in use
    /// (hits answered here never read it otherwise).
    hash: KeyHash,
    touch_after: Instant,
    touched: AtomicBool,
    /// Each stripe's copy of a found record, made by one of its hits (see
    /// [`HITS_PER_COPY`]).
    copies: [OnceLock<Arc<KeyRecord>>; STRIPES],
}

impl Known {
    /// The answer, as this thread's copy when it has one or may make one now, else as
    /// the record every thread shares.
    fn answer(&self) -> Lookup {
        match &self.lookup {
            Lookup::Found(record) => {
                let copy = &self.copies[stripe()];
                let record = match copy.get() {
                    Some(copy) => copy,
                    None if may_copy() => {
                        copy.get_or_init(|| Arc::new(record.copy_sharing_runtime()))
                    }
                    None => record,
                };
                Lookup::Found(Arc::clone(record))
            }
            Lookup::Unknown => Lookup::Unknown,
        }
    }
}

/// A thread makes at most one copy of a record per this many hits that found none, so
/// that copying stays a small share of the hits whatever empties the index (every
/// invalidation does: a tenant renaming a key in a loop must not make every thread copy
/// every hot record each time).
const HITS_PER_COPY: u32 = 64;

thread_local! {
    static HITS_WITHOUT_COPY: std::cell::Cell<u32> = const { std::cell::Cell::new(HITS_PER_COPY) };
}

/// Whether this thread may copy a record now (and if so, starts counting again).
fn may_copy() -> bool {
    HITS_WITHOUT_COPY.with(|hits| {
        let n = hits.get();
        if n >= HITS_PER_COPY {
            hits.set(0);
            true
        } else {
            hits.set(n + 1);
            false
        }
    })
}

/// A token the index could not answer: where its answer goes once the cache has it.
pub(crate) struct Miss {
    mac: u128,
    generation: u64,
}

impl TokenIndex {
    pub(crate) fn new() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the operating system's CSPRNG failed");
        let (k0, k1) = bytes.split_at(8);
        TokenIndex {
            key: [
                u64::from_le_bytes(k0.try_into().expect("8 bytes")),
                u64::from_le_bytes(k1.try_into().expect("8 bytes")),
            ],
            generation: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| ArcSwapOption::empty()).collect(),
        }
    }

    fn mac(&self, format: u64, token: &[u8]) -> u128 {
        let mut hasher = SipHasher13::new_with_keys(self.key[0], self.key[1]);
        hasher.write_u64(format);
        hasher.write(token);
        hasher.finish128().as_u128()
    }

    fn slot(&self, mac: u128) -> &ArcSwapOption<Known> {
        // The MAC's bits are uniform: its low ones pick the slot.
        #[allow(clippy::cast_possible_truncation)]
        let index = mac as usize & (SLOTS - 1);
        &self.slots[index]
    }

    /// The fresh answer for `token` (its bytes as presented: only tokens that passed
    /// every check are indexed, so equal bytes passed them too), or where to put it.
    /// With the answer, the hash of a key whose use the cache should now see (once per
    /// indexed answer).
    pub(crate) fn get(&self, format: u64, token: &[u8]) -> Result<(Lookup, Option<KeyHash>), Miss> {
        let mac = self.mac(format, token);
        let generation = self.generation.load(Ordering::Acquire);
        let slot = self.slot(mac).load();
        if let Some(known) = slot.as_deref() {
            let now = Instant::now();
            if known.mac == mac && known.generation == generation && now < known.fresh_until {
                let touch = now >= known.touch_after
                    && !known.touched.load(Ordering::Relaxed)
                    && !known.touched.swap(true, Ordering::Relaxed);
                return Ok((known.answer(), touch.then_some(known.hash)));
            }
        }
        Err(Miss { mac, generation })
    }

    /// Indexes the answer the cache gave after `miss`, fresh until `fresh_until`. An
    /// answer read before an invalidation that came since is stamped with the older
    /// generation, so it is never served.
    pub(crate) fn remember(&self, miss: Miss, hash: KeyHash, lookup: Lookup, fresh_until: Instant) {
        if self.generation.load(Ordering::Acquire) != miss.generation {
            return;
        }
        let now = Instant::now();
        let touch_after = now + fresh_until.saturating_duration_since(now) / 2;
        self.slot(miss.mac).store(Some(Arc::new(Known {
            mac: miss.mac,
            generation: miss.generation,
            fresh_until,
            lookup,
            hash,
            touch_after,
            touched: AtomicBool::new(false),
            copies: std::array::from_fn(|_| OnceLock::new()),
        })));
    }

    /// Stops every indexed answer from being served. Call after the cache's entries
    /// that an invalidation names are gone.
    pub(crate) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fresh() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_token_is_answered_only_with_its_own_answer() {
        let index = TokenIndex::new();
        let miss = index.get(0, b"sk_live_a").unwrap_err();
        index.remember(miss, KeyHash::of("t"), Lookup::Unknown, fresh());
        assert!(matches!(
            index.get(0, b"sk_live_a"),
            Ok((Lookup::Unknown, None))
        ));
        assert!(index.get(0, b"sk_live_b").is_err());
    }

    #[test]
    fn a_token_of_another_format_is_another_token() {
        let index = TokenIndex::new();
        let miss = index.get(1, b"pk_live_a").unwrap_err();
        index.remember(miss, KeyHash::of("t"), Lookup::Unknown, fresh());
        assert!(index.get(1, b"pk_live_a").is_ok());
        assert!(
            index.get(2, b"pk_live_a").is_err(),
            "another layer's format"
        );
    }

    #[test]
    fn macs_are_keyed_per_index() {
        let (one, two) = (TokenIndex::new(), TokenIndex::new());
        assert_eq!(one.mac(0, b"sk_live_a"), one.mac(0, b"sk_live_a"));
        assert_ne!(one.mac(0, b"sk_live_a"), two.mac(0, b"sk_live_a"));
        assert_ne!(one.mac(0, b"sk_live_a"), one.mac(0, b"sk_live_b"));
    }

    #[test]
    fn an_invalidation_forgets_every_answer_and_any_read_before_it() {
        let index = TokenIndex::new();
        let miss = index.get(0, b"sk_live_a").unwrap_err();
        index.remember(miss, KeyHash::of("t"), Lookup::Unknown, fresh());
        let before = index.get(0, b"sk_live_b").unwrap_err();
        index.forget_all();
        assert!(
            index.get(0, b"sk_live_a").is_err(),
            "served after an invalidation"
        );
        // An answer read before the invalidation lands too late: never served.
        index.remember(before, KeyHash::of("t"), Lookup::Unknown, fresh());
        assert!(index.get(0, b"sk_live_b").is_err());
    }

    #[test]
    fn one_hit_past_half_the_freshness_asks_the_cache_to_see_the_key() {
        let index = TokenIndex::new();
        let miss = index.get(0, b"sk_live_a").unwrap_err();
        let hash = KeyHash::of("t");
        let fresh_until = Instant::now() + Duration::from_secs(2);
        index.remember(miss, hash, Lookup::Unknown, fresh_until);
        assert!(matches!(index.get(0, b"sk_live_a"), Ok((_, None))));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(index.get(0, b"sk_live_a"), Ok((_, Some(h))) if h == hash));
        assert!(
            matches!(index.get(0, b"sk_live_a"), Ok((_, None))),
            "once only"
        );
    }

    /// However often the index is emptied, a thread copies at most one record per
    /// `HITS_PER_COPY` hits that found no copy; a hit that found one copies nothing.
    #[test]
    fn a_thread_copies_records_at_a_bounded_rate() {
        std::thread::spawn(|| {
            let index = TokenIndex::new();
            let record = Arc::new(crate::record::KeyRecord::new(
                crate::key::KeyId::new("ak_1"),
                "k",
                "acct",
                crate::key::Environment::LIVE,
            ));
            let answer = |index: &TokenIndex| match index.get(0, b"sk_live_a") {
                Ok((Lookup::Found(found), _)) => found,
                _ => panic!("not indexed"),
            };
            let mut copies = 0;
            for _ in 0..1000 {
                index.forget_all();
                let miss = index.get(0, b"sk_live_a").unwrap_err();
                let found = Lookup::Found(Arc::clone(&record));
                index.remember(miss, KeyHash::of("t"), found, fresh());
                if !Arc::ptr_eq(&answer(&index), &record) {
                    copies += 1;
                }
            }
            let most = 1000 / HITS_PER_COPY as usize + 1;
            assert!((1..=most).contains(&copies), "{copies} copies");
            // Once copied, every hit takes the copy.
            let copy = loop {
                let found = answer(&index);
                if !Arc::ptr_eq(&found, &record) {
                    break found;
                }
            };
            for _ in 0..100 {
                assert!(Arc::ptr_eq(&answer(&index), &copy));
            }
            assert_eq!(*copy, *record, "a copy equals its record");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn answers_are_served_until_they_stop_being_fresh() {
        let index = TokenIndex::new();
        let miss = index.get(0, b"sk_live_a").unwrap_err();
        index.remember(miss, KeyHash::of("t"), Lookup::Unknown, Instant::now());
        assert!(index.get(0, b"sk_live_a").is_err());
    }
}
