//! [`TieredStorage`]: the `pingora::cache::Storage` over the memory and disk tiers.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::Result;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{HandleMiss, PurgeOutcome, PurgeTarget};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheEntryKey, CacheKey, CacheMeta, HitHandler, MissHandler, PurgeType, Storage,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{debug, warn};

use crate::disk::DiskTier;
use crate::hit::{Hit, Tier};
use crate::memory::{Entry, MemoryTier, ParsedMeta};
use crate::metrics::METRICS;
use crate::miss::Miss;
use crate::{CacheError, CacheSettings};

/// How often maintenance refreshes the memory gauges.
const GAUGE_INTERVAL: Duration = Duration::from_secs(10);
/// Maintenance sweeps the disk tier for inactive entries every this many gauge ticks (1 min).
const SWEEP_EVERY: u64 = 6;
/// Floor of the budget for disk writes queued behind the blocking pool.
const MIN_WRITE_BACKLOG: u64 = 32 * 1024 * 1024;

/// Sizes of both tiers, from [`TieredStorage::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Bytes in the memory tier, as weighed for `memory_max_bytes`.
    pub memory_bytes: u64,
    /// Entries in the memory tier.
    pub memory_objects: u64,
    /// Bytes of entry files in the disk tier (as far as the index knows while it loads).
    pub disk_bytes: u64,
    /// Entries in the disk tier (as far as the index knows while it loads).
    pub disk_objects: u64,
    /// The disk index finished loading (always true without a disk tier).
    pub disk_index_loaded: bool,
}

/// A pingora-cache [`Storage`] with a moka memory tier over a persistent disk tier.
///
/// Lookups try memory, then disk (promoting disk hits to memory). A finished miss is stored in
/// memory at once and written to disk on tokio's blocking pool. Bodies over
/// [`CacheSettings::max_object_bytes`] are not stored. Disk failures never fail a request.
/// Entry files are not fsynced: one torn by a crash fails its checksum and is dropped.
///
/// Partial-write streaming is not supported (`support_streaming_partial_write` is false): with it,
/// pingora feeds even the filling request's client from storage, so a body that outgrows
/// `max_object_bytes` would have to be buffered whole (pingora awaits `write_body` in the loop that
/// drives the client, so the storage cannot apply backpressure). Without it, pingora's cache lock
/// makes concurrent readers of a key being filled wait for the complete object.
pub struct TieredStorage {
    memory: MemoryTier,
    disk: Option<Arc<DiskTier>>,
    pub(crate) max_object_bytes: u64,
    /// Bumped by every purge; a disk hit read across a purge is served but not promoted.
    purge_epoch: AtomicU64,
    /// Bytes of disk writes queued or running.
    write_backlog: AtomicU64,
    write_backlog_limit: u64,
}

impl std::fmt::Debug for TieredStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStorage")
            .field("max_object_bytes", &self.max_object_bytes)
            .field("disk", &self.disk.as_ref().map(|d| d.dir().to_path_buf()))
            .finish_non_exhaustive()
    }
}

impl TieredStorage {
    /// Opens the storage: creates the disk directory (mode 0700) and starts loading the disk
    /// index on its own thread. Does not wait for it: until the index is loaded, lookups read
    /// entry files directly by path.
    pub fn open(settings: CacheSettings) -> Result<Self, CacheError> {
        Self::open_inner(settings, true)
    }

    pub(crate) fn open_inner(settings: CacheSettings, load: bool) -> Result<Self, CacheError> {
        if settings.max_object_bytes == 0 {
            return Err(CacheError::InvalidSetting {
                field: "max_object_bytes",
                reason: "must be above 0",
            });
        }
        let disk = match &settings.disk {
            Some(d) => Some(Arc::new(DiskTier::open(d, settings.max_object_bytes)?)),
            None => None,
        };
        if let (Some(disk), true) = (&disk, load) {
            let loader = disk.clone();
            std::thread::Builder::new()
                .name("edgepop-cache-index".into())
                .spawn(move || loader.load())
                .map_err(|source| CacheError::SpawnLoader {
                    path: disk.dir().to_path_buf(),
                    source,
                })?;
        }
        Ok(Self {
            memory: MemoryTier::new(settings.memory_max_bytes),
            disk,
            max_object_bytes: settings.max_object_bytes,
            purge_epoch: AtomicU64::new(0),
            write_backlog: AtomicU64::new(0),
            write_backlog_limit: settings
                .max_object_bytes
                .saturating_mul(4)
                .max(MIN_WRITE_BACKLOG),
        })
    }

    /// Leaks the storage: pingora's `Storage` methods take `&'static self`.
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self))
    }

    /// Removes every entry (all variants, both tiers) whose primary key starts with `prefix`.
    /// Waits for the disk index to finish loading. Returns how many entries were removed.
    pub async fn purge_prefix(&'static self, prefix: &str) -> usize {
        let mut hashes: HashSet<HashBinary> = self
            .memory
            .matching(|p| p.starts_with(prefix))
            .into_iter()
            .collect();
        if let Some(disk) = &self.disk {
            disk.wait_loaded().await;
            hashes.extend(disk.variants_with_prefix(prefix));
        }
        self.remove_all(hashes.into_iter().collect()).await
    }

    /// Removes every variant of one primary key from both tiers. Waits for the disk index to
    /// finish loading. Returns how many entries were removed.
    pub async fn purge_primary(&'static self, primary: &str) -> usize {
        let mut hashes: HashSet<HashBinary> =
            self.memory.matching(|p| p == primary).into_iter().collect();
        if let Some(disk) = &self.disk {
            disk.wait_loaded().await;
            hashes.extend(disk.variants_of(primary));
        }
        self.remove_all(hashes.into_iter().collect()).await
    }

    /// Sizes of both tiers. Runs moka's pending maintenance first, so memory numbers are exact.
    pub fn stats(&self) -> CacheStats {
        let (memory_bytes, memory_objects) = self.memory.usage();
        let (disk_bytes, disk_objects) = self.disk.as_ref().map_or((0, 0), |d| d.usage());
        CacheStats {
            memory_bytes,
            memory_objects,
            disk_bytes,
            disk_objects,
            disk_index_loaded: self.disk.as_ref().is_none_or(|d| d.is_loaded()),
        }
    }

    /// The maintenance loop as a pingora background service:
    /// `server.add_service(background_service("cache maintenance", storage.maintenance()))`.
    pub fn maintenance(&'static self) -> CacheMaintenance {
        CacheMaintenance { storage: self }
    }

    /// Spawns the maintenance loop on the current tokio runtime (panics outside one): every
    /// 10 s it refreshes the memory gauges; every minute it removes disk entries inactive for
    /// `DiskSettings::inactive` and writes access times back to file mtimes. It stops when
    /// `shutdown` turns true or its sender is dropped. Without it, `max_bytes` is still enforced
    /// on every write, but inactive entries stay until evicted.
    pub fn spawn_maintenance(
        &'static self,
        shutdown: ShutdownWatch,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run_maintenance(shutdown))
    }

    async fn run_maintenance(&'static self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(GAUGE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
            }
            self.memory.publish_gauges();
            if ticks.is_multiple_of(SWEEP_EVERY) {
                self.sweep_disk(SystemTime::now()).await;
            }
            ticks += 1;
        }
    }

    /// One inactivity sweep of the disk tier (skipped while the index loads).
    pub(crate) async fn sweep_disk(&'static self, now: SystemTime) -> usize {
        match &self.disk {
            Some(disk) if disk.is_loaded() => self
                .blocking(move |s| s.disk.as_ref().map_or(0, |d| d.sweep(now)))
                .await
                .unwrap_or(0),
            _ => 0,
        }
    }

    pub(crate) fn touch(&self, hash: &HashBinary) {
        if let Some(disk) = &self.disk {
            disk.touch(hash);
        }
    }

    /// Runs blocking file IO on tokio's blocking pool (inline outside a runtime).
    async fn blocking<T: Send + 'static>(
        &'static self,
        f: impl FnOnce(&'static Self) -> T + Send + 'static,
    ) -> Option<T> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Some(f(self));
        }
        match tokio::task::spawn_blocking(move || f(self)).await {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(error = %e, "cache disk task failed");
                None
            }
        }
    }

    /// Stores a finished entry: memory now, disk in the background.
    pub(crate) fn store(&'static self, hash: HashBinary, entry: Arc<Entry>) {
        self.memory.insert(hash, entry.clone());
        let Some(disk) = &self.disk else {
            return;
        };
        let weight = entry.weight();
        let queued = self.write_backlog.fetch_add(weight, Ordering::AcqRel);
        if queued > 0 && queued + weight > self.write_backlog_limit {
            self.write_backlog.fetch_sub(weight, Ordering::AcqRel);
            METRICS.disk_write_errors.inc();
            debug!(primary = %entry.primary, "disk write backlog full, entry kept in memory only");
            return;
        }
        let id = disk.begin_write(hash, entry.primary.clone());
        let write = move || {
            if let Some(disk) = &self.disk {
                disk.write(&hash, id, &entry);
            }
            self.write_backlog.fetch_sub(weight, Ordering::AcqRel);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // detached: the response does not wait for the disk
                rt.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }

    /// Removes entries from both tiers (disk first, so a concurrent disk hit cannot re-promote
    /// them to memory after the memory removal). Returns how many were found in either tier.
    async fn remove_all(&'static self, hashes: Vec<HashBinary>) -> usize {
        if hashes.is_empty() {
            return 0;
        }
        self.purge_epoch.fetch_add(1, Ordering::AcqRel);
        let mut found = vec![false; hashes.len()];
        if self.disk.is_some() {
            let list = hashes.clone();
            if let Some(on_disk) = self
                .blocking(move |s| {
                    let disk = s.disk.as_ref();
                    list.iter()
                        .map(|h| disk.is_some_and(|d| d.remove(h)))
                        .collect::<Vec<_>>()
                })
                .await
            {
                found = on_disk;
            }
        }
        for (hash, found) in hashes.iter().zip(found.iter_mut()) {
            *found |= self.memory.remove(hash);
        }
        found.iter().filter(|f| **f).count()
    }

    /// Rewrites an entry's meta in both tiers with `f(old meta)`. Returns whether any tier had it.
    async fn rewrite_meta<F>(&'static self, hash: HashBinary, f: F) -> Result<bool>
    where
        F: Fn(&Entry) -> Result<CacheMeta> + Send + 'static,
    {
        let updated_memory = match self.memory.get(&hash) {
            Some(old) => {
                let new = Arc::new(old.with_meta(&f(&old)?)?);
                self.memory.insert(hash, new.clone());
                Some(new)
            }
            None => None,
        };
        let in_memory = updated_memory.is_some();
        if self.disk.is_none() {
            return Ok(in_memory);
        }
        let on_disk = self
            .blocking(move |s| {
                let Some(disk) = &s.disk else { return false };
                let entry = match updated_memory {
                    // the memory copy already has the new meta and the same body
                    Some(entry) => entry,
                    None => {
                        let Some(old) = disk.read(&hash) else {
                            return false;
                        };
                        match f(&old).and_then(|meta| old.with_meta(&meta)) {
                            Ok(entry) => Arc::new(entry),
                            Err(e) => {
                                warn!(error = %e, "cache meta of a disk entry not rewritten");
                                return false;
                            }
                        }
                    }
                };
                let id = disk.begin_write(hash, entry.primary.clone());
                disk.write(&hash, id, &entry)
            })
            .await
            .unwrap_or(false);
        Ok(in_memory || on_disk)
    }

    #[cfg(test)]
    pub(crate) fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    #[cfg(test)]
    pub(crate) fn write_backlog(&self) -> u64 {
        self.write_backlog.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        if let Some(entry) = self.memory.get(&hash) {
            match entry.cache_meta() {
                Ok(meta) => {
                    METRICS.memory_hits.inc();
                    let hit = Hit::new(self, hash, entry.body.clone(), Tier::Memory);
                    return Ok(Some((meta, Box::new(hit))));
                }
                Err(e) => {
                    warn!(error = %e, "dropping memory cache entry with unreadable meta");
                    self.memory.remove(&hash);
                }
            }
        }
        METRICS.memory_misses.inc();
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        if disk.known_absent(&hash) {
            METRICS.disk_misses.inc();
            return Ok(None);
        }
        let epoch = self.purge_epoch.load(Ordering::Acquire);
        // the read verifies the checksum and decodes the meta: a corrupt entry is removed there
        let Some(entry) = self
            .blocking(move |s| s.disk.as_ref().and_then(|d| d.read(&hash)))
            .await
            .flatten()
        else {
            METRICS.disk_misses.inc();
            return Ok(None);
        };
        let meta = match entry.cache_meta() {
            Ok(meta) => meta,
            Err(e) => {
                METRICS.disk_corrupt.inc();
                METRICS.disk_misses.inc();
                warn!(error = %e, primary = %entry.primary, "removing disk cache entry with unreadable meta");
                self.blocking(move |s| s.disk.as_ref().map(|d| d.remove(&hash)))
                    .await;
                return Ok(None);
            }
        };
        METRICS.disk_hits.inc();
        let body = entry.body.clone();
        if self.purge_epoch.load(Ordering::Acquire) == epoch {
            self.memory.insert(hash, Arc::new(entry));
        }
        Ok(Some((
            meta,
            Box::new(Hit::new(self, hash, body, Tier::Disk)),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let miss = Miss {
            storage: self,
            hash: key.combined_bin(),
            primary: String::from_utf8_lossy(key.primary_key()).into(),
            meta: meta.serialize()?,
            parsed: ParsedMeta::of(meta),
            chunks: Vec::new(),
            size: 0,
            too_large: false,
        };
        Ok(Box::new(miss) as Box<dyn HandleMiss + Sync + Send>)
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // entries carry no storage-defined ids, so an identified target is never ours
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let hash = target.key().combined_bin();
        Ok(if self.remove_all(vec![hash]).await > 0 {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let hash = target.key().combined_bin();
        let now = SystemTime::now();
        let expired = self
            .rewrite_meta(hash, move |old| {
                let mut meta = old.cache_meta()?;
                meta.expire_at(now);
                Ok(meta)
            })
            .await?;
        Ok(if expired {
            PurgeOutcome::Expired
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        // CacheMeta is not Clone: carry it serialized into the closure
        let (internal, header) = meta.serialize()?;
        self.rewrite_meta(key.combined_bin(), move |_| {
            CacheMeta::deserialize(&internal, &header)
        })
        .await
    }

    /// False, deliberately: see the type's documentation.
    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// [`TieredStorage`]'s maintenance loop as a pingora [`BackgroundService`]; see
/// [`TieredStorage::spawn_maintenance`] for what it does.
#[derive(Debug)]
pub struct CacheMaintenance {
    storage: &'static TieredStorage,
}

#[async_trait]
impl BackgroundService for CacheMaintenance {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.storage.run_maintenance(shutdown).await;
    }
}
