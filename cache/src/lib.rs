//! edgepop's pingora-cache [`Storage`](pingora::cache::Storage): [`TieredStorage`] keeps hot
//! responses in a moka memory tier bounded in bytes, over a disk tier (one checksummed file per
//! entry, LRU + inactivity eviction) that survives restarts.
//! It does not decide what is cacheable, how fresh it is or what the key is: the proxy and
//! pingora-cache do. Disk problems never fail a request; corrupt entries are never served.
//!
//! ```
//! use edgepop_cache::{CacheSettings, DiskSettings, TieredStorage};
//!
//! let dir = tempfile::tempdir()?;
//! let storage = TieredStorage::open(CacheSettings {
//!     memory_max_bytes: 1 << 20,
//!     disk: Some(DiskSettings::new(dir.path().join("cache"))),
//!     ..CacheSettings::default()
//! })?
//! .leak(); // pingora wants &'static; hand it to `session.cache.enable(storage, ..)`
//! assert_eq!(storage.stats().memory_objects, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod disk;
mod error;
mod hit;
mod memory;
mod metrics;
mod miss;
mod settings;
mod storage;
#[cfg(test)]
mod tests;

pub use error::CacheError;
pub use settings::{CacheSettings, DiskSettings};
pub use storage::{CacheMaintenance, CacheStats, TieredStorage};

/// Runs the disk tier's entry decoder on `bytes` as if they were an entry file: the index loader's header
/// check, the full verification, then `CacheMeta::deserialize` of an accepted entry's meta parts, as a hit
/// would. Returns whether the entry was accepted. For the `cache_entry` fuzz target and its stable corpus
/// test only; it panics only when an invariant breaks (an entry accepted with a bad checksum or out-of-range
/// parts), which is the bug the fuzzer looks for.
#[doc(hidden)]
pub fn decode_entry_for_fuzz(bytes: &[u8]) -> bool {
    use disk::format;
    let header = format::read_header(&mut std::io::Cursor::new(bytes), bytes.len() as u64);
    let Ok(fixed) = format::parse_fixed(bytes) else {
        assert!(
            header.is_err(),
            "index loader accepted an unparseable header"
        );
        return false;
    };
    let Ok(layout) = format::verify(bytes, &fixed.hash) else {
        return false;
    };
    assert!(header.is_ok(), "entry verified but its header was refused");
    let crc_at = bytes.len() - 4;
    assert_eq!(
        crc32fast::hash(&bytes[..crc_at]).to_le_bytes()[..],
        bytes[crc_at..],
        "entry accepted with a bad checksum"
    );
    assert!(
        layout.primary.end <= layout.meta0.start
            && layout.meta0.end <= layout.meta1.start
            && layout.meta1.end <= layout.body.start
            && layout.body.end == crc_at,
        "entry parts out of range: {layout:?}"
    );
    let _ = pingora::cache::CacheMeta::deserialize(
        &bytes[layout.meta0.clone()],
        &bytes[layout.meta1.clone()],
    );
    true
}
