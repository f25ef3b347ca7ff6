//! Plain settings structs (no serde: the proxy's config layer builds these).

use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Settings for [`TieredStorage::open`](crate::TieredStorage::open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Memory tier bound in bytes (body + serialized meta + key + a small per-entry overhead).
    /// 0 disables the memory tier. Default 32 MiB (sized for a 256 MB machine).
    pub memory_max_bytes: u64,
    /// Bodies larger than this are not stored in either tier; the request itself still succeeds.
    /// Default 8 MiB.
    pub max_object_bytes: u64,
    /// The persistent disk tier, if any. Default `None` (memory only).
    pub disk: Option<DiskSettings>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            memory_max_bytes: 32 * MIB,
            max_object_bytes: 8 * MIB,
            disk: None,
        }
    }
}

/// Settings of the disk tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSettings {
    /// Directory holding one file per entry (`<dir>/<2 hex>/<32 hex>`). Created with mode 0700.
    /// One process per directory: at start it removes other instances' temp files.
    /// Default `/var/cache/edgepop`.
    pub dir: PathBuf,
    /// Total size of the entry files; least recently used entries are evicted beyond it.
    /// Default 1 GiB.
    pub max_bytes: u64,
    /// Entries not read or written for this long are removed by the maintenance sweep.
    /// Default 182 days.
    pub inactive: Duration,
}

impl DiskSettings {
    /// Default settings for the disk tier in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ..Self::default()
        }
    }
}

impl Default for DiskSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/cache/edgepop"),
            max_bytes: GIB,
            inactive: Duration::from_secs(182 * 24 * 3600),
        }
    }
}
