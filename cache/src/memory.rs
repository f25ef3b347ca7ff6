//! The memory tier: a moka cache bounded in bytes.

use std::sync::Arc;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use pingora::cache::key::HashBinary;

use crate::metrics::METRICS;

/// Rough fixed cost of one cached entry beyond its bytes (the `Arc`, the struct, moka's node).
const ENTRY_OVERHEAD: u64 = 64;

/// One stored response. Immutable: a meta update replaces the `Arc`, sharing the body.
#[derive(Debug)]
pub(crate) struct Entry {
    /// `CacheMeta::serialize()`: internal meta and response header.
    pub(crate) meta: (Vec<u8>, Vec<u8>),
    pub(crate) body: Bytes,
    /// The primary key string, for purge by prefix and the disk index.
    pub(crate) primary: Arc<str>,
}

impl Entry {
    /// Bytes this entry costs the memory tier: body + meta + key + a fixed overhead.
    pub(crate) fn weight(&self) -> u64 {
        (self.body.len() + self.meta.0.len() + self.meta.1.len() + self.primary.len()) as u64
            + std::mem::size_of::<HashBinary>() as u64
            + ENTRY_OVERHEAD
    }

    /// The same body and key with another meta.
    pub(crate) fn with_meta(&self, meta: (Vec<u8>, Vec<u8>)) -> Self {
        Self {
            meta,
            body: self.body.clone(),
            primary: self.primary.clone(),
        }
    }
}

pub(crate) struct MemoryTier {
    /// `None` when `memory_max_bytes` is 0.
    cache: Option<Cache<HashBinary, Arc<Entry>>>,
    max_bytes: u64,
}

impl MemoryTier {
    pub(crate) fn new(max_bytes: u64) -> Self {
        let cache = (max_bytes > 0).then(|| {
            Cache::builder()
                .name("edgepop-cache")
                .max_capacity(max_bytes)
                // moka weighs in u32; entries are bounded by max_object_bytes long before that
                .weigher(|_: &HashBinary, e: &Arc<Entry>| {
                    u32::try_from(e.weight()).unwrap_or(u32::MAX)
                })
                .eviction_listener(|_, _, cause| {
                    if cause == RemovalCause::Size {
                        METRICS.memory_evictions.inc();
                    }
                })
                .build()
        });
        Self { cache, max_bytes }
    }

    pub(crate) fn get(&self, hash: &HashBinary) -> Option<Arc<Entry>> {
        self.cache.as_ref()?.get(hash)
    }

    /// Stores the entry if it can fit at all. Returns whether it was offered to moka (whose
    /// admission policy may still prefer the entries it has).
    pub(crate) fn insert(&self, hash: HashBinary, entry: Arc<Entry>) -> bool {
        match &self.cache {
            Some(cache) if entry.weight() <= self.max_bytes => {
                cache.insert(hash, entry);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn remove(&self, hash: &HashBinary) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| c.remove(hash).is_some())
    }

    /// Keys of entries whose primary key satisfies `pred` (a scan: purges only).
    pub(crate) fn matching(&self, pred: impl Fn(&str) -> bool) -> Vec<HashBinary> {
        let Some(cache) = &self.cache else {
            return Vec::new();
        };
        cache
            .iter()
            .filter(|(_, e)| pred(&e.primary))
            .map(|(k, _)| *k)
            .collect()
    }

    /// (bytes, objects), after applying moka's pending evictions so the numbers are exact.
    pub(crate) fn usage(&self) -> (u64, u64) {
        match &self.cache {
            Some(cache) => {
                cache.run_pending_tasks();
                (cache.weighted_size(), cache.entry_count())
            }
            None => (0, 0),
        }
    }

    pub(crate) fn publish_gauges(&self) {
        let (bytes, objects) = self.usage();
        METRICS.memory_bytes.set(crate::metrics::gauge_value(bytes));
        METRICS
            .memory_objects
            .set(crate::metrics::gauge_value(objects));
    }

    #[cfg(test)]
    pub(crate) fn cache(&self) -> Option<&Cache<HashBinary, Arc<Entry>>> {
        self.cache.as_ref()
    }
}
