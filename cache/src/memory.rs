//! The memory tier: a moka cache bounded in bytes.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use once_cell::sync::Lazy;
use pingora::Result;
use pingora::cache::CacheMeta;
use pingora::cache::key::HashBinary;
use pingora::http::ResponseHeader;

use crate::metrics::METRICS;

/// Rough fixed cost of one cached entry beyond its bytes (the `Arc`, the struct with its parsed
/// header map, moka's node).
const ENTRY_OVERHEAD: u64 = 256;
/// Rough cost of one parsed header beyond its name and value (map slot, case-preserving copy).
const HEADER_OVERHEAD: usize = 48;

/// One stored response. Immutable: a meta update replaces the `Arc`, sharing the body.
///
/// Keeps the meta twice: serialized (what the disk tier writes) and its response header parsed,
/// so a hit rebuilds its [`CacheMeta`] without decompressing and re-parsing the header.
#[derive(Debug)]
pub(crate) struct Entry {
    /// `CacheMeta::serialize()`: internal meta and response header.
    pub(crate) meta: (Vec<u8>, Vec<u8>),
    /// The response header of `meta.1`, parsed.
    header: ResponseHeader,
    pub(crate) body: Bytes,
    /// The primary key string, for purge by prefix and the disk index.
    pub(crate) primary: Arc<str>,
}

/// `meta.1` of a minimal response (`200`, no headers): what [`Entry::cache_meta`] hands
/// `CacheMeta::deserialize` instead of the stored header, which it then replaces with the parsed
/// copy. `None` if serializing failed (then hits decode the stored header, the slow way).
static EMPTY_HEADER: Lazy<Option<Vec<u8>>> = Lazy::new(|| {
    let header = ResponseHeader::build(200, Some(0)).ok()?;
    let now = SystemTime::now();
    CacheMeta::new(now, now, 0, 0, header)
        .serialize()
        .ok()
        .map(|(_, h)| h)
});

impl Entry {
    /// An entry for `meta`: serializes it once for the disk tier.
    pub(crate) fn new(meta: &CacheMeta, body: Bytes, primary: Arc<str>) -> Result<Self> {
        Ok(Self::from_parts(
            meta.serialize()?,
            meta.response_header_copy(),
            body,
            primary,
        ))
    }

    /// An entry from a serialized meta and its response header, parsed (the caller keeps the
    /// two in agreement).
    pub(crate) fn from_parts(
        meta: (Vec<u8>, Vec<u8>),
        header: ResponseHeader,
        body: Bytes,
        primary: Arc<str>,
    ) -> Self {
        Self {
            meta,
            header,
            body,
            primary,
        }
    }

    /// An entry from serialized meta (a disk entry): fails if the meta does not decode.
    pub(crate) fn decode(meta: (Vec<u8>, Vec<u8>), body: Bytes, primary: Arc<str>) -> Result<Self> {
        let header = CacheMeta::deserialize(&meta.0, &meta.1)?.response_header_copy();
        Ok(Self {
            meta,
            header,
            body,
            primary,
        })
    }

    /// The entry's `CacheMeta`, for a hit: decodes the small internal part and clones the parsed
    /// header (a few hundred nanoseconds, against microseconds to decompress and parse it).
    pub(crate) fn cache_meta(&self) -> Result<CacheMeta> {
        let Some(empty) = EMPTY_HEADER.as_deref() else {
            return CacheMeta::deserialize(&self.meta.0, &self.meta.1);
        };
        let mut meta = CacheMeta::deserialize(&self.meta.0, empty)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
    }

    /// Bytes this entry costs the memory tier: body + meta (serialized and parsed) + key + a
    /// fixed overhead.
    pub(crate) fn weight(&self) -> u64 {
        let parsed: usize = self
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() * 2 + value.len() + HEADER_OVERHEAD)
            .sum();
        (self.body.len() + self.meta.0.len() + self.meta.1.len() + self.primary.len() + parsed)
            as u64
            + std::mem::size_of::<HashBinary>() as u64
            + ENTRY_OVERHEAD
    }

    /// The same body and key with another meta.
    pub(crate) fn with_meta(&self, meta: &CacheMeta) -> Result<Self> {
        Self::new(meta, self.body.clone(), self.primary.clone())
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
