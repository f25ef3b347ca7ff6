//! Storage-level tests: drive `TieredStorage` through the pingora `Storage` API the way
//! pingora-cache does (get_miss_handler, write_body, finish, lookup, read_body), on real files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{MissFinishType, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::{Span, SpanHandle};
use pingora::cache::{CacheEntryId, CacheEntryKey, CacheKey, CacheMeta, PurgeType, Storage};
use pingora::http::ResponseHeader;

use crate::hit::{Hit, Tier};
use crate::metrics::METRICS;
use crate::{CacheError, CacheSettings, DiskSettings, TieredStorage};

const DEADLINE: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn span() -> SpanHandle {
    Span::inactive().handle()
}

/// Fixed timestamps, so serialized metas (and so file sizes) are identical across entries.
fn meta(tag: &str) -> CacheMeta {
    let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut header = ResponseHeader::build(200, None).unwrap();
    header.append_header("x-test", tag).unwrap();
    header.append_header("content-type", "text/plain").unwrap();
    CacheMeta::new(created + 100 * 365 * DAY, created, 10, 20, header)
}

fn tag(meta: &CacheMeta) -> String {
    meta.headers()
        .get("x-test")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn settings(dir: &Path, memory: u64) -> CacheSettings {
    CacheSettings {
        memory_max_bytes: memory,
        max_object_bytes: 64 * 1024,
        disk: Some(DiskSettings::new(dir)),
    }
}

fn open(settings: CacheSettings) -> &'static TieredStorage {
    TieredStorage::open(settings).unwrap().leak()
}

fn key(primary: &str, variance: Option<u8>) -> CacheKey {
    let mut k = CacheKey::new(primary, "");
    if let Some(v) = variance {
        k.set_variance_key([v; 16]);
    }
    k
}

fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What pingora does on a miss: miss handler, body in `chunks` writes, finish.
async fn put(s: &'static TieredStorage, k: &CacheKey, tag: &str, data: &[u8], chunks: usize) {
    let mut miss = s.get_miss_handler(k, &meta(tag), &span()).await.unwrap();
    let step = data.len().div_ceil(chunks.max(1)).max(1);
    let mut parts: Vec<&[u8]> = data.chunks(step).collect();
    if parts.is_empty() {
        parts.push(&[]);
    }
    let last = parts.len() - 1;
    for (i, part) in parts.into_iter().enumerate() {
        miss.write_body(Bytes::copy_from_slice(part), i == last)
            .await
            .unwrap();
    }
    miss.finish().await.unwrap();
}

/// What pingora does on a hit: lookup, read the body to the end, finish.
async fn get(s: &'static TieredStorage, k: &CacheKey) -> Option<(CacheMeta, Vec<u8>, Tier)> {
    let (meta, mut hit) = s.lookup(k, &span()).await.unwrap()?;
    let tier = hit.as_any().downcast_ref::<Hit>().unwrap().tier;
    let mut out = Vec::new();
    while let Some(chunk) = hit.read_body().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    hit.finish(s, k, &span()).await.unwrap();
    Some((meta, out, tier))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the background disk writes to finish.
async fn flush(s: &'static TieredStorage) {
    eventually("disk writes", || {
        s.write_backlog() == 0 && s.disk().is_none_or(|d| d.pending_writes() == 0)
    })
    .await;
}

async fn loaded(s: &'static TieredStorage) {
    eventually("disk index load", || s.stats().disk_index_loaded).await;
}

fn path_of(s: &TieredStorage, k: &CacheKey) -> PathBuf {
    s.disk().unwrap().path_for(&k.combined_bin())
}

fn expected_file_len(primary: &str, tag: &str, body_len: usize) -> u64 {
    let (m0, m1) = meta(tag).serialize().unwrap();
    (48 + primary.len() + 4 + m0.len() + m1.len() + body_len + 4) as u64
}

#[tokio::test]
async fn memory_round_trip() {
    let s = open(CacheSettings::default());
    let k = key("https://example.com/a?q=1", None);
    assert!(get(s, &k).await.is_none());
    let data = body(10_000, 1);
    put(s, &k, "one", &data, 3).await;

    let (m, got, tier) = get(s, &k).await.unwrap();
    assert_eq!(tier, Tier::Memory);
    assert_eq!(got, data);
    assert_eq!(tag(&m), "one");
    assert_eq!(m.fresh_until(), meta("one").fresh_until());
    assert_eq!(m.stale_if_error_sec(), 20);
    assert!(get(s, &key("https://example.com/b", None)).await.is_none());
    let stats = s.stats();
    assert_eq!(stats.memory_objects, 1);
    assert!(stats.memory_bytes >= data.len() as u64);
    assert!(stats.disk_index_loaded);
}

#[tokio::test]
async fn empty_body_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 0));
    let k = key("https://example.com/empty", None);
    put(s, &k, "empty", b"", 1).await;
    flush(s).await;
    let (m, got, tier) = get(s, &k).await.unwrap();
    assert_eq!(
        (tier, got.len(), tag(&m).as_str()),
        (Tier::Disk, 0, "empty")
    );
}

#[tokio::test]
async fn disk_round_trip_then_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    // memory tier disabled: every hit comes from disk
    let s = open(settings(&root, 0));
    let k = key("https://example.com/disk", None);
    let data = body(20_000, 2);
    put(s, &k, "disk", &data, 4).await;
    flush(s).await;

    let path = path_of(s, &k);
    let hex = k.combined();
    assert_eq!(path, root.join(&hex[..2]).join(&hex));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&root), 0o700);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        expected_file_len("https://example.com/disk", "disk", data.len())
    );

    let (m, got, tier) = get(s, &k).await.unwrap();
    assert_eq!((tier, tag(&m).as_str()), (Tier::Disk, "disk"));
    assert_eq!(got, data);
    assert_eq!(s.stats().memory_objects, 0);

    // a storage with a memory tier promotes the disk hit
    let s2 = open(settings(&root, 1 << 20));
    let (_, got, tier) = get(s2, &k).await.unwrap();
    assert_eq!((tier, got.len()), (Tier::Disk, data.len()));
    let (_, got, tier) = get(s2, &k).await.unwrap();
    assert_eq!(tier, Tier::Memory);
    assert_eq!(got, data);
}

#[tokio::test]
async fn disk_hit_too_big_for_memory_is_not_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 4096));
    let k = key("https://example.com/big", None);
    put(s, &k, "big", &body(8192, 3), 1).await;
    flush(s).await;
    assert_eq!(get(s, &k).await.unwrap().2, Tier::Disk);
    assert_eq!(get(s, &k).await.unwrap().2, Tier::Disk);
    assert_eq!(s.stats().memory_objects, 0);
}

#[tokio::test]
async fn entries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 1 << 20));
    let keys = [
        key("https://example.com/1", None),
        key("https://example.com/2", None),
        key("https://example.com/2", Some(7)),
        key("https://example.com/3", None),
    ];
    for (i, k) in keys.iter().enumerate() {
        put(s, k, &format!("v{i}"), &body(1000 + i, i as u8), 2).await;
    }
    flush(s).await;
    let before = s.stats();
    assert_eq!(before.disk_objects, 4);

    let s2 = open(settings(dir.path(), 1 << 20));
    loaded(s2).await;
    let after = s2.stats();
    assert_eq!(
        (after.disk_objects, after.disk_bytes),
        (4, before.disk_bytes)
    );
    for (i, k) in keys.iter().enumerate() {
        let (m, got, tier) = get(s2, k).await.unwrap();
        assert_eq!(tier, Tier::Disk);
        assert_eq!(tag(&m), format!("v{i}"));
        assert_eq!(got, body(1000 + i, i as u8));
    }
    assert!(get(s2, &key("https://example.com/4", None)).await.is_none());
}

#[tokio::test]
async fn lookups_hit_before_the_index_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 0));
    let a = key("https://example.com/a", None);
    let b = key("https://example.com/b", None);
    put(s, &a, "a", &body(500, 1), 1).await;
    put(s, &b, "b", &body(700, 2), 1).await;
    flush(s).await;

    // the loader is not started, so the index stays "loading" for as long as we like
    let s2 = TieredStorage::open_inner(settings(dir.path(), 0), false)
        .unwrap()
        .leak();
    assert!(!s2.stats().disk_index_loaded);
    let (m, got, tier) = get(s2, &a).await.unwrap();
    assert_eq!((tier, tag(&m).as_str(), got.len()), (Tier::Disk, "a", 500));
    assert!(
        get(s2, &key("https://example.com/nope", None))
            .await
            .is_none()
    );
    assert_eq!(
        s2.stats().disk_objects,
        1,
        "the hit was adopted into the index"
    );

    let disk = s2.disk().unwrap().clone();
    tokio::task::spawn_blocking(move || disk.load())
        .await
        .unwrap();
    let stats = s2.stats();
    assert!(stats.disk_index_loaded);
    assert_eq!(
        stats.disk_objects, 2,
        "no double counting of the adopted entry"
    );
    assert_eq!(stats.disk_bytes, s.stats().disk_bytes);
    assert_eq!(get(s2, &b).await.unwrap().1, body(700, 2));
}

#[tokio::test]
async fn corrupt_entries_are_misses_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 0));
    let keys: Vec<_> = (0..4)
        .map(|i| key(&format!("https://example.com/c{i}"), None))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        put(s, k, "c", &body(4096, i as u8), 1).await;
    }
    flush(s).await;
    let corrupt_before = METRICS.disk_corrupt.get();

    // 3: a valid entry of another key under this key's name
    let p0 = path_of(s, &keys[0]);
    let p3 = path_of(s, &keys[3]);
    fs::copy(&p0, &p3).unwrap();
    // 0: one flipped byte in the body
    let mut bytes = fs::read(&p0).unwrap();
    let len = bytes.len();
    bytes[len - 100] ^= 0x01;
    fs::write(&p0, &bytes).unwrap();
    // 1: truncated (a torn write)
    let p1 = path_of(s, &keys[1]);
    let bytes = fs::read(&p1).unwrap();
    fs::write(&p1, &bytes[..bytes.len() / 2]).unwrap();
    // 2: garbage
    let p2 = path_of(s, &keys[2]);
    fs::write(&p2, vec![0x5a; 5000]).unwrap();

    for (k, p) in keys.iter().zip([&p0, &p1, &p2, &p3]) {
        assert!(get(s, k).await.is_none(), "{} served", p.display());
        assert!(!p.exists(), "{} not removed", p.display());
    }
    assert!(METRICS.disk_corrupt.get() >= corrupt_before + 4);
    let stats = s.stats();
    assert_eq!((stats.disk_objects, stats.disk_bytes), (0, 0));
}

#[tokio::test]
async fn loader_removes_corrupt_files_and_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 0));
    let good = key("https://example.com/good", None);
    let bad = key("https://example.com/bad", None);
    put(s, &good, "g", &body(300, 1), 1).await;
    put(s, &bad, "b", &body(300, 2), 1).await;
    flush(s).await;
    let bad_path = path_of(s, &bad);
    let bytes = fs::read(&bad_path).unwrap();
    fs::write(&bad_path, &bytes[..bytes.len() - 1]).unwrap();
    let shard = bad_path.parent().unwrap();
    let temp = shard.join(".tmp.1-deadbeef.0");
    fs::write(&temp, b"half a write").unwrap();
    let unrelated = dir.path().join("README");
    fs::write(&unrelated, b"not ours").unwrap();

    let s2 = open(settings(dir.path(), 0));
    loaded(s2).await;
    assert!(!bad_path.exists());
    assert!(!temp.exists());
    assert!(
        unrelated.exists(),
        "files outside the layout are left alone"
    );
    assert_eq!(s2.stats().disk_objects, 1);
    assert!(get(s2, &good).await.is_some());
    assert!(get(s2, &bad).await.is_none());
}

#[tokio::test]
async fn memory_tier_stays_within_its_bound() {
    const BOUND: u64 = 256 * 1024;
    let s = open(CacheSettings {
        memory_max_bytes: BOUND,
        ..CacheSettings::default()
    });
    for i in 0..200 {
        let k = key(&format!("https://example.com/m{i}"), None);
        put(s, &k, "m", &body(8 * 1024, i as u8), 2).await;
    }
    let cache = s.memory().cache().unwrap();
    cache.run_pending_tasks();
    assert!(cache.weighted_size() <= BOUND, "{}", cache.weighted_size());
    let stats = s.stats();
    assert!(stats.memory_bytes <= BOUND);
    assert!(stats.memory_objects > 0 && stats.memory_objects < 200);
}

#[tokio::test]
async fn disk_evicts_least_recently_used_over_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let name = |c: &str| format!("https://example.com/lru/{c}");
    let one = expected_file_len(&name("a"), "l", 2000);
    let max = 3 * one + one / 2;
    let s = open(CacheSettings {
        disk: Some(DiskSettings {
            max_bytes: max,
            ..DiskSettings::new(dir.path())
        }),
        ..settings(dir.path(), 0)
    });
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|c| key(&name(c), None));
    for k in [&a, &b, &c] {
        put(s, k, "l", &body(2000, 1), 1).await;
        flush(s).await;
    }
    assert_eq!(s.stats().disk_bytes, 3 * one);
    // a becomes the most recently used; b is now the oldest
    assert!(get(s, &a).await.is_some());
    let evictions = METRICS.disk_evictions.get();
    put(s, &d, "l", &body(2000, 1), 1).await;
    flush(s).await;

    let stats = s.stats();
    assert!(stats.disk_bytes <= max);
    assert_eq!(stats.disk_objects, 3);
    assert!(!path_of(s, &b).exists());
    assert!(get(s, &b).await.is_none());
    for k in [&a, &c, &d] {
        assert!(get(s, k).await.is_some());
    }
    assert!(METRICS.disk_evictions.get() > evictions);
}

#[tokio::test]
async fn inactive_entries_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 0));
    let old = key("https://example.com/old", None);
    let recent = key("https://example.com/recent", None);
    let warm = key("https://example.com/warm", None);
    for k in [&old, &recent, &warm] {
        put(s, k, "i", &body(100, 1), 1).await;
    }
    flush(s).await;
    let now = SystemTime::now();
    let set_mtime = |k: &CacheKey, t: SystemTime| {
        fs::File::open(path_of(s, k))
            .unwrap()
            .set_modified(t)
            .unwrap()
    };
    set_mtime(&old, now - 200 * DAY);
    set_mtime(&warm, now - 100 * DAY);

    // the restarted index takes last access from the file mtime
    let s2 = open(settings(dir.path(), 0));
    loaded(s2).await;
    assert_eq!(s2.stats().disk_objects, 3);
    // warm is read now: its access time is written back to the file by the sweep
    assert!(get(s2, &warm).await.is_some());
    assert_eq!(s2.sweep_disk(SystemTime::now()).await, 1);
    assert!(!path_of(s2, &old).exists());
    assert!(get(s2, &old).await.is_none());
    let warm_mtime = fs::metadata(path_of(s2, &warm))
        .unwrap()
        .modified()
        .unwrap();
    assert!(warm_mtime > now - DAY, "access time not persisted");

    assert!(get(s2, &recent).await.is_some());
    // half a year later, nothing was read: everything goes
    assert_eq!(s2.sweep_disk(SystemTime::now() + 183 * DAY).await, 2);
    assert_eq!(s2.stats().disk_objects, 0);
}

#[tokio::test]
async fn maintenance_sweeps_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 0));
    let old = key("https://example.com/maint", None);
    put(s, &old, "i", &body(100, 1), 1).await;
    flush(s).await;
    fs::File::open(path_of(s, &old))
        .unwrap()
        .set_modified(SystemTime::now() - 365 * DAY)
        .unwrap();
    let s2 = open(settings(dir.path(), 0));
    loaded(s2).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = s2.spawn_maintenance(rx);
    // the first tick runs at once and sweeps
    eventually("maintenance sweep", || s2.stats().disk_objects == 0).await;
    tx.send(true).unwrap();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn bodies_over_max_object_bytes_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(CacheSettings {
        max_object_bytes: 1024,
        ..settings(dir.path(), 1 << 20)
    });
    let big = key("https://example.com/big", None);
    let mut miss = s
        .get_miss_handler(&big, &meta("big"), &span())
        .await
        .unwrap();
    for i in 0..4 {
        // pingora keeps writing; the handler never errors
        miss.write_body(Bytes::from(body(512, i)), i == 3)
            .await
            .unwrap();
    }
    assert!(matches!(
        miss.finish().await.unwrap(),
        MissFinishType::Created(0)
    ));
    flush(s).await;
    assert!(get(s, &big).await.is_none());
    assert!(!path_of(s, &big).exists());

    let fits = key("https://example.com/fits", None);
    put(s, &fits, "fits", &body(1024, 9), 2).await;
    flush(s).await;
    assert_eq!(get(s, &fits).await.unwrap().1.len(), 1024);
    assert_eq!(s.stats().disk_objects, 1);
}

#[tokio::test]
async fn entries_over_a_lowered_max_object_bytes_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 0));
    let k = key("https://example.com/shrink", None);
    put(s, &k, "s", &body(4096, 1), 1).await;
    flush(s).await;
    let s2 = open(CacheSettings {
        max_object_bytes: 1024,
        ..settings(dir.path(), 0)
    });
    loaded(s2).await;
    assert_eq!(s2.stats().disk_objects, 0);
    assert!(!path_of(s2, &k).exists());
}

#[tokio::test]
async fn purge_primary_removes_every_variant_from_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 1 << 20));
    let p = "https://a.test/x";
    let variants = [key(p, None), key(p, Some(1)), key(p, Some(2))];
    let other = key("https://a.test/xy", None);
    for (i, k) in variants.iter().chain([&other]).enumerate() {
        put(s, k, "v", &body(100, i as u8), 1).await;
    }
    flush(s).await;
    assert_eq!(s.stats().disk_objects, 4);

    assert_eq!(s.purge_primary(p).await, 3);
    for k in &variants {
        assert!(get(s, k).await.is_none());
        assert!(!path_of(s, k).exists());
    }
    assert_eq!(get(s, &other).await.unwrap().2, Tier::Memory);
    let stats = s.stats();
    assert_eq!((stats.memory_objects, stats.disk_objects), (1, 1));
    assert_eq!(s.purge_primary(p).await, 0);
}

#[tokio::test]
async fn purge_prefix_removes_only_that_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 1 << 20));
    let under = [
        key("https://a.test/x", None),
        key("https://a.test/x", Some(3)),
        key("https://a.test/y/z", None),
    ];
    let outside = [
        key("https://a.testing/x", None),
        key("https://b.test/x", None),
    ];
    for k in under.iter().chain(&outside) {
        put(s, k, "p", &body(100, 1), 1).await;
    }
    flush(s).await;
    // one entry only on disk, as after a restart or a memory eviction
    s.memory()
        .cache()
        .unwrap()
        .invalidate(&under[2].combined_bin());

    assert_eq!(s.purge_prefix("https://a.test/").await, 3);
    for k in &under {
        assert!(get(s, k).await.is_none());
    }
    for k in &outside {
        assert!(get(s, k).await.is_some());
    }
    // and it stays purged across a restart
    let s2 = open(settings(dir.path(), 1 << 20));
    loaded(s2).await;
    assert_eq!(s2.stats().disk_objects, 2);
    assert_eq!(s2.purge_prefix("").await, 2);
    assert_eq!(s2.stats().disk_objects, 0);
}

#[tokio::test]
async fn pingora_purge_removes_from_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 1 << 20));
    let k = key("https://example.com/purge", None);
    put(s, &k, "p", &body(100, 1), 1).await;
    flush(s).await;
    let compact = k.to_compact();

    let identified = CacheEntryKey::identified(compact.clone(), CacheEntryId::new(1));
    let outcome = s
        .purge(
            PurgeTarget::Exact(&identified),
            PurgeType::Eviction,
            &span(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, PurgeOutcome::NotFound);
    assert!(get(s, &k).await.is_some());

    let outcome = s
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, PurgeOutcome::Purged(None));
    assert!(get(s, &k).await.is_none());
    assert!(!path_of(s, &k).exists());
    let outcome = s
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, PurgeOutcome::NotFound);
}

#[tokio::test]
async fn purge_cancels_a_write_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 1 << 20));
    let k = key("https://example.com/inflight", None);
    let disk = s.disk().unwrap();
    // what finish() does, with the purge landing between queueing and committing the write
    let id = disk.begin_write(k.combined_bin(), "https://example.com/inflight".into());
    assert_eq!(s.purge_primary("https://example.com/inflight").await, 1);
    let entry = crate::memory::Entry::new(
        &meta("late"),
        Bytes::from_static(b"stale"),
        "https://example.com/inflight".into(),
    )
    .unwrap();
    assert!(!disk.write(&k.combined_bin(), id, &entry));
    assert!(!path_of(s, &k).exists());
    assert!(get(s, &k).await.is_none());
}

#[tokio::test]
async fn update_meta_changes_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 1 << 20));
    let k = key("https://example.com/meta", None);
    let data = body(3000, 5);
    put(s, &k, "one", &data, 2).await;
    flush(s).await;

    assert!(s.update_meta(&k, &meta("two"), &span()).await.unwrap());
    let (m, got, tier) = get(s, &k).await.unwrap();
    assert_eq!((tier, tag(&m).as_str()), (Tier::Memory, "two"));
    assert_eq!(got, data);

    // the disk copy changed too
    let s2 = open(settings(dir.path(), 0));
    let (m, got, tier) = get(s2, &k).await.unwrap();
    assert_eq!((tier, tag(&m).as_str()), (Tier::Disk, "two"));
    assert_eq!(got, data);

    // disk only: read, rewrite, keep the body
    assert!(s2.update_meta(&k, &meta("three"), &span()).await.unwrap());
    let (m, got, _) = get(s2, &k).await.unwrap();
    assert_eq!((tag(&m).as_str(), got), ("three", data));

    let unknown = key("https://example.com/unknown", None);
    assert!(!s2.update_meta(&unknown, &meta("x"), &span()).await.unwrap());
}

#[tokio::test]
async fn expire_keeps_the_entry_but_makes_it_stale() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 1 << 20));
    let k = key("https://example.com/expire", None);
    put(s, &k, "e", &body(100, 1), 1).await;
    flush(s).await;
    let outcome = s
        .expire(PurgeTarget::Active(&k.to_compact()), &span())
        .await
        .unwrap();
    assert_eq!(outcome, PurgeOutcome::Expired);
    let later = SystemTime::now() + Duration::from_secs(1);
    let (m, got, _) = get(s, &k).await.unwrap();
    assert!(!m.is_fresh(later));
    assert_eq!(got, body(100, 1));
    let s2 = open(settings(dir.path(), 0));
    let (m, _, tier) = get(s2, &k).await.unwrap();
    assert_eq!(tier, Tier::Disk);
    assert!(!m.is_fresh(later));

    let missing = key("https://example.com/none", None).to_compact();
    let outcome = s
        .expire(PurgeTarget::Active(&missing), &span())
        .await
        .unwrap();
    assert_eq!(outcome, PurgeOutcome::NotFound);
}

#[tokio::test]
async fn seek_serves_ranges() {
    let s = open(CacheSettings::default());
    let k = key("https://example.com/range", None);
    put(s, &k, "r", b"0123456789", 2).await;
    let (_, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
    assert!(hit.can_seek());
    assert!(hit.seek(100, None).is_err());
    hit.seek(5, None).unwrap();
    assert_eq!(hit.read_body().await.unwrap().unwrap(), "56789");
    assert!(hit.read_body().await.unwrap().is_none());
    hit.seek(2, Some(4)).unwrap();
    assert_eq!(hit.read_body().await.unwrap().unwrap(), "23");
    hit.seek(8, Some(1000)).unwrap();
    assert_eq!(hit.read_body().await.unwrap().unwrap(), "89");
    hit.finish(s, &k, &span()).await.unwrap();
}

#[tokio::test]
async fn disk_failures_never_fail_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let s = open(settings(&root, 1 << 20));
    loaded(s).await;
    // the directory disappears and a regular file takes its place (works even as root)
    fs::remove_dir_all(&root).unwrap();
    fs::write(&root, b"not a directory").unwrap();

    let errors = METRICS.disk_write_errors.get();
    let k = key("https://example.com/unwritable", None);
    put(s, &k, "w", &body(1000, 1), 2).await; // finish() returned Ok
    flush(s).await;
    assert!(METRICS.disk_write_errors.get() > errors);
    assert_eq!(s.stats().disk_objects, 0);
    // still served from memory
    assert_eq!(get(s, &k).await.unwrap().2, Tier::Memory);
    assert!(
        get(s, &key("https://example.com/other", None))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn open_reports_unusable_directories() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = TieredStorage::open(settings(&file.join("cache"), 0)).unwrap_err();
    assert!(matches!(err, CacheError::CreateDir { .. }));
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    let err = TieredStorage::open(settings(&file, 0)).unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::CreateDir { .. } | CacheError::NotADirectory { .. }
        ),
        "{err}"
    );
    let err = TieredStorage::open(settings(Path::new(""), 0)).unwrap_err();
    assert!(matches!(
        err,
        CacheError::InvalidSetting {
            field: "disk.dir",
            ..
        }
    ));
}

/// Concurrent fills, hits, purges and evictions on shared keys; afterwards the index must
/// describe exactly the files on disk, with no temp files left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_use_keeps_index_and_files_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let one = expected_file_len("https://s.test/00", "s", 1500);
    let s = open(CacheSettings {
        disk: Some(DiskSettings {
            max_bytes: 12 * one,
            ..DiskSettings::new(dir.path())
        }),
        ..settings(dir.path(), 16 * 1024)
    });
    let mut tasks = Vec::new();
    for t in 0..4u8 {
        tasks.push(tokio::spawn(async move {
            for i in 0..60u32 {
                let n = (i * 7 + u32::from(t) * 13) % 20;
                let k = key(&format!("https://s.test/{n:02}"), (n % 3 == 0).then_some(t));
                match i % 6 {
                    0..=2 => put(s, &k, "s", &body(1500, t), 1).await,
                    3 | 4 => {
                        if let Some((_, got, _)) = get(s, &k).await {
                            assert_eq!(got.len(), 1500);
                        }
                    }
                    _ => {
                        s.purge_primary(&format!("https://s.test/{n:02}")).await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    flush(s).await;

    let mut files = 0u64;
    let mut bytes = 0u64;
    for shard in fs::read_dir(dir.path()).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().into_string().unwrap();
            assert!(!name.starts_with(".tmp."), "temp file {name} left behind");
            files += 1;
            bytes += f.metadata().unwrap().len();
        }
    }
    let stats = s.stats();
    assert_eq!((stats.disk_objects, stats.disk_bytes), (files, bytes));
    assert!(bytes <= 12 * one);
}

/// A hit rebuilds its meta from the parsed header and the internal part: it must equal the meta
/// that was stored, in every field pingora serializes (timestamps, variance, header order and case).
#[tokio::test]
async fn hits_from_either_tier_return_the_stored_meta() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(settings(dir.path(), 1 << 20));
    let k = key("https://example.com/meta-roundtrip", Some(7));
    let stored = || {
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut header = ResponseHeader::build(203, None).unwrap();
        header.append_header("X-Mixed-Case", "one").unwrap();
        header.append_header("set-cookie", "a=1").unwrap();
        header.append_header("set-cookie", "b=2").unwrap();
        header.append_header("Cache-Control", "max-age=60").unwrap();
        let mut meta = CacheMeta::new(created + DAY, created, 30, 40, header);
        meta.set_variance_key([7; 16]);
        meta
    };
    let mut miss = s.get_miss_handler(&k, &stored(), &span()).await.unwrap();
    miss.write_body(Bytes::from_static(b"body"), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
    flush(s).await;
    let want = stored().serialize().unwrap();

    let (from_memory, _, tier) = get(s, &k).await.unwrap();
    assert_eq!(tier, Tier::Memory);
    assert_eq!(from_memory.serialize().unwrap(), want);
    assert_eq!(from_memory.response_header().status.as_u16(), 203);

    s.memory().remove(&k.combined_bin());
    let (from_disk, _, tier) = get(s, &k).await.unwrap();
    assert_eq!(tier, Tier::Disk);
    assert_eq!(from_disk.serialize().unwrap(), want);

    // a revalidation stamps `updated` apart from `created` (the other way of rebuilding the meta)
    let mut revalidated = stored();
    revalidated.update_freshness(SystemTime::now() + DAY, 5, 6);
    revalidated.set_epoch_override(SystemTime::UNIX_EPOCH + DAY);
    assert_ne!(revalidated.updated(), revalidated.created());
    assert!(s.update_meta(&k, &revalidated, &span()).await.unwrap());
    let want = revalidated.serialize().unwrap();
    let (after, _, tier) = get(s, &k).await.unwrap();
    assert_eq!(tier, Tier::Memory);
    assert_eq!(after.serialize().unwrap(), want);
    assert_eq!(after.updated(), revalidated.updated());
    flush(s).await;
    s.memory().remove(&k.combined_bin());
    let (after, _, tier) = get(s, &k).await.unwrap();
    assert_eq!(tier, Tier::Disk);
    assert_eq!(after.serialize().unwrap(), want);
}
