//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Why [`TieredStorage::open`](crate::TieredStorage::open) failed.
///
/// Only opening can fail: once open, disk problems never fail a request (they are logged, counted in
/// `edgepop_cache_disk_errors_total` and the entry is simply not stored or not served).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The disk tier directory could not be created.
    #[error("creating cache directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The disk tier path exists but is not a directory.
    #[error("cache directory {path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A setting is out of range.
    #[error("invalid cache setting {field}: {reason}")]
    InvalidSetting {
        /// The field, e.g. `disk.dir`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The thread that loads the disk index could not be started.
    #[error("starting the disk index loader for {path}")]
    SpawnLoader {
        /// The disk tier directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}
