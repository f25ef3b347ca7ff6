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
