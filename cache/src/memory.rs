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
/// Keeps the meta twice: serialized (what the disk tier writes) and parsed ([`ParsedMeta`]), so a
/// hit rebuilds its [`CacheMeta`] without decompressing and re-parsing the header.
#[derive(Debug)]
pub(crate) struct Entry {
    /// `CacheMeta::serialize()`: internal meta and response header.
    pub(crate) meta: (Vec<u8>, Vec<u8>),
    /// The same meta, parsed.
    parsed: ParsedMeta,
    pub(crate) body: Bytes,
    /// The primary key string, for purge by prefix and the disk index.
    pub(crate) primary: Arc<str>,
}

/// A `CacheMeta` kept parsed (it is not `Clone`): its response header, and its internal fields
/// when `CacheMeta::new` and the public setters can rebuild them exactly, which holds until a
/// revalidation sets `updated` apart from `created`.
#[derive(Debug)]
pub(crate) struct ParsedMeta {
    header: ResponseHeader,
    internal: Option<Internal>,
}

#[derive(Debug, Clone, Copy)]
struct Internal {
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<SystemTime>,
}

impl ParsedMeta {
    pub(crate) fn of(meta: &CacheMeta) -> Self {
        let created = meta.created();
        let internal =
            (meta.updated() == created && meta.provenance() == created).then(|| Internal {
                fresh_until: meta.fresh_until(),
                created,
                stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
                stale_if_error_sec: meta.stale_if_error_sec(),
                variance: meta.variance(),
                epoch_override: meta.epoch_override(),
            });
        Self {
            header: meta.response_header_copy(),
            internal,
        }
    }
}

/// `meta.1` of a minimal response (`200`, no headers): what [`Entry::cache_meta`] hands
/// `CacheMeta::deserialize` for a revalidated entry instead of the stored header, which it then
/// replaces with the parsed copy. `None` if serializing failed (then such hits decode the stored
/// header, the slow way).
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
            ParsedMeta::of(meta),
            body,
            primary,
        ))
    }

    /// An entry from a serialized meta and the same meta parsed (the caller keeps the two in
    /// agreement).
    pub(crate) fn from_parts(
        meta: (Vec<u8>, Vec<u8>),
        parsed: ParsedMeta,
        body: Bytes,
        primary: Arc<str>,
    ) -> Self {
        Self {
            meta,
            parsed,
            body,
            primary,
        }
    }

    /// An entry from serialized meta (a disk entry): fails if the meta does not decode.
    pub(crate) fn decode(meta: (Vec<u8>, Vec<u8>), body: Bytes, primary: Arc<str>) -> Result<Self> {
        let parsed = ParsedMeta::of(&CacheMeta::deserialize(&meta.0, &meta.1)?);
        Ok(Self::from_parts(meta, parsed, body, primary))
    }

    /// The entry's `CacheMeta`, for a hit: built from the parsed fields and a clone of the
    /// parsed header (no decoding at all), or, after a revalidation, by decoding the small
    /// internal part only. Either way far cheaper than decompressing and parsing the header.
    pub(crate) fn cache_meta(&self) -> Result<CacheMeta> {
        let header = self.parsed.header.clone();
        if let Some(i) = self.parsed.internal {
            let mut meta = CacheMeta::new(
                i.fresh_until,
                i.created,
                i.stale_while_revalidate_sec,
                i.stale_if_error_sec,
                header,
            );
            if let Some(variance) = i.variance {
                meta.set_variance(variance);
            }
            if let Some(epoch) = i.epoch_override {
                meta.set_epoch_override(epoch);
            }
            return Ok(meta);
        }
        let Some(empty) = EMPTY_HEADER.as_deref() else {
            return CacheMeta::deserialize(&self.meta.0, &self.meta.1);
        };
        let mut meta = CacheMeta::deserialize(&self.meta.0, empty)?;
        *meta.response_header_mut() = header;
        Ok(meta)
    }

    /// Bytes this entry costs the memory tier: body + meta (serialized and parsed) + key + a
    /// fixed overhead.
    pub(crate) fn weight(&self) -> u64 {
        let parsed: usize = self
            .parsed
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
