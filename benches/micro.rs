//! The pieces of the hot path, alone: `cargo bench --bench micro`.

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tower_api_keys::key::{Environment, KeyFormat, KeyHash};

fn micro(c: &mut Criterion) {
    let format = KeyFormat::new("sk");
    let key = format.generate(&Environment::LIVE);
    let secret = key.expose_secret();
    c.bench_function("key parse + checksum", |b| {
        b.iter(|| format.parse(black_box(secret)).is_ok())
    });
    c.bench_function("sha256 of key", |b| {
        b.iter(|| KeyHash::of(black_box(secret)))
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (label, n) in [
        ("cache get, 1k entries, random", 1_000),
        ("cache get, 1M entries, random", 1_000_000),
    ] {
        let hashes = support::hashes(n);
        let cache = support::filled_cache(&runtime, &hashes);
        let mut i = 0usize;
        c.bench_function(label, |b| {
            b.iter(|| {
                // A stride co-prime with n visits every entry in a scattered order.
                i = (i + 7_919) % n;
                black_box(cache.is_cached(&hashes[i]))
            })
        });
    }
}

criterion_group!(benches, micro);
criterion_main!(benches);
