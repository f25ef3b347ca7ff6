//! `edgepop_cache::TieredStorage` through pingora's `Storage` API, the way pingora-cache drives it
//! (see cache/src/tests.rs): lookup + read_body to the end on a memory hit (1 KiB, 100 KiB), a
//! lookup miss, a miss-handler insert (write_body + finish) into the memory tier, and a disk-tier hit
//! (memory tier off, so every lookup reads the entry file and checks it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a failure is a broken bench

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edgepop_cache::{CacheSettings, DiskSettings, TieredStorage};
use pingora::cache::trace::{Span, SpanHandle};
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;

const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (100 * 1024, "100KiB")];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn span() -> SpanHandle {
    Span::inactive().handle()
}

/// A typical cacheable 200: fresh for an hour, a few origin headers.
fn meta(len: usize) -> CacheMeta {
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, Some(8)).unwrap();
    header
        .append_header("content-type", "text/html; charset=utf-8")
        .unwrap();
    header
        .append_header("content-length", len.to_string())
        .unwrap();
    header
        .append_header("cache-control", "public, max-age=3600")
        .unwrap();
    header.append_header("etag", "\"5f0c-64a1b2c3\"").unwrap();
    header
        .append_header("last-modified", "Wed, 25 Nov 2026 12:00:00 GMT")
        .unwrap();
    CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header)
}

fn key(path: &str) -> CacheKey {
    CacheKey::new(format!("https://example.com{path}"), "")
}

fn body(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// What pingora does on a miss: miss handler, one body write, finish.
async fn insert(s: &'static TieredStorage, k: &CacheKey, meta: &CacheMeta, data: Bytes) {
    let mut miss = s.get_miss_handler(k, meta, &span()).await.unwrap();
    miss.write_body(data, true).await.unwrap();
    miss.finish().await.unwrap();
}

/// What pingora does on a hit: lookup, read the body to the end, finish. Returns the body length.
async fn hit(s: &'static TieredStorage, k: &CacheKey) -> usize {
    let (meta, mut hit) = s.lookup(k, &span()).await.unwrap().expect("a hit");
    black_box(&meta);
    let mut n = 0;
    while let Some(chunk) = hit.read_body().await.unwrap() {
        n += chunk.len();
    }
    hit.finish(s, k, &span()).await.unwrap();
    n
}

fn memory_storage() -> &'static TieredStorage {
    TieredStorage::open(CacheSettings::default())
        .unwrap()
        .leak()
}

fn bench_memory(c: &mut Criterion) {
    let rt = runtime();
    let storage = memory_storage();
    let mut group = c.benchmark_group("cache/memory");
    for (len, label) in SIZES {
        let k = key(&format!("/hit/{label}"));
        rt.block_on(insert(storage, &k, &meta(len), body(len)));
        assert_eq!(rt.block_on(hit(storage, &k)), len);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("lookup_hit_read_body", label),
            &k,
            |b, k| {
                b.to_async(&rt).iter(|| hit(storage, k));
            },
        );
    }
    let absent = key("/never/stored");
    group.bench_function("lookup_miss", |b| {
        b.to_async(&rt).iter(|| async {
            let r = storage.lookup(&absent, &span()).await.unwrap();
            assert!(r.is_none());
        });
    });
    for (len, label) in SIZES {
        let k = key(&format!("/insert/{label}"));
        let m = meta(len);
        let data = body(len);
        // The same key every time: replaces the entry, so the tier does not grow or evict.
        group.bench_function(BenchmarkId::new("insert_write_finish", label), |b| {
            b.to_async(&rt)
                .iter(|| insert(storage, &k, &m, data.clone()));
        });
    }
    group.finish();
}

fn bench_disk(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = TieredStorage::open(CacheSettings {
        memory_max_bytes: 0, // memory tier off: every lookup goes to the disk tier
        disk: Some(DiskSettings::new(dir.path().join("cache"))),
        ..CacheSettings::default()
    })
    .unwrap()
    .leak();
    let keys: Vec<(CacheKey, usize, &str)> = SIZES
        .iter()
        .map(|&(len, label)| (key(&format!("/disk/{label}")), len, label))
        .collect();
    for (k, len, _) in &keys {
        rt.block_on(insert(storage, k, &meta(*len), body(*len)));
    }
    // Disk writes run in the background: wait until both entry files and the index are there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = storage.stats();
        if stats.disk_objects as usize >= keys.len() && stats.disk_index_loaded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "disk tier never caught up: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut group = c.benchmark_group("cache/disk");
    for (k, len, label) in &keys {
        assert_eq!(rt.block_on(hit(storage, k)), *len);
        assert_eq!(
            storage.stats().memory_objects,
            0,
            "memory tier should stay empty"
        );
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("lookup_hit_read_body", label),
            k,
            |b, k| {
                b.to_async(&rt).iter(|| hit(storage, k));
            },
        );
    }
    group.finish();
    drop(dir);
}

criterion_group!(benches, bench_memory, bench_disk);
criterion_main!(benches);
