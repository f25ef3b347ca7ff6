//! The disk tier: one checksummed file per entry under `<dir>/<2 hex>/<32 hex>`, an in-memory
//! index rebuilt from the file headers at start, LRU eviction over `max_bytes` and an inactivity
//! sweep.
//!
//! Every function here does blocking file IO: callers run them on tokio's blocking pool (or the
//! loader thread). Disk problems are logged and counted, never returned to pingora.
//!
//! Writes go to `<shard>/.tmp.<instance>.<n>` and are renamed into place while the index lock is
//! held, so a purge either sees the committed file or cancels the write. Files are not fsynced:
//! this is a cache, and a file torn by a crash or power loss fails its checksum and is removed.

pub(crate) mod format;
mod index;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use pingora::cache::key::HashBinary;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::CacheError;
use crate::memory::Entry;
use crate::metrics::{METRICS, gauge_value};
use crate::settings::DiskSettings;
use format::{FormatError, ReadError};
use index::Index;

/// Files removed per index lock hold by the sweep and the loader's eviction.
const BATCH: usize = 256;
/// Access times are written back to the file mtime once they are this much newer.
const PERSIST_SLACK: Duration = Duration::from_secs(3600);
/// Most mtimes written back per sweep.
const PERSIST_MAX: usize = 1024;

pub(crate) struct DiskTier {
    dir: PathBuf,
    max_bytes: u64,
    inactive: Duration,
    max_object_bytes: u64,
    index: Mutex<Index>,
    loaded: watch::Sender<bool>,
    /// Names this process's temp files, so the loader removes only other instances' leftovers.
    instance: String,
    temp_seq: AtomicU64,
}

impl DiskTier {
    /// Creates the directory (mode 0700) if needed. Does not read it: see [`DiskTier::load`].
    pub(crate) fn open(settings: &DiskSettings, max_object_bytes: u64) -> Result<Self, CacheError> {
        let dir = settings.dir.clone();
        if dir.as_os_str().is_empty() {
            return Err(CacheError::InvalidSetting {
                field: "disk.dir",
                reason: "empty path",
            });
        }
        if settings.max_bytes == 0 {
            return Err(CacheError::InvalidSetting {
                field: "disk.max_bytes",
                reason: "must be above 0",
            });
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| CacheError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(CacheError::NotADirectory { path: dir }),
            Err(source) => return Err(CacheError::CreateDir { path: dir, source }),
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(Self {
            dir,
            max_bytes: settings.max_bytes,
            inactive: settings.inactive,
            max_object_bytes,
            index: Mutex::new(Index::new_loading()),
            loaded: watch::channel(false).0,
            instance: format!("{}-{nanos:08x}", std::process::id()),
            temp_seq: AtomicU64::new(0),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    pub(crate) async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        // the sender lives in self, so this cannot fail while we are borrowed
        let _ = rx.wait_for(|loaded| *loaded).await;
    }

    /// True when the index is loaded and has no trace of `hash`: a miss without touching the disk.
    pub(crate) fn known_absent(&self, hash: &HashBinary) -> bool {
        self.is_loaded() && self.index.lock().get(hash).is_none()
    }

    /// (bytes, objects) of the index.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let idx = self.index.lock();
        (idx.total_bytes(), idx.len() as u64)
    }

    pub(crate) fn path_for(&self, hash: &HashBinary) -> PathBuf {
        let hex = hex(hash);
        self.dir.join(&hex[..2]).join(hex)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock()
    }

    fn publish(&self, idx: &Index) {
        METRICS.disk_bytes.set(gauge_value(idx.total_bytes()));
        METRICS.disk_objects.set(gauge_value(idx.len() as u64));
    }

    /// Marks an access (in memory only; the sweep writes it back to the file mtime lazily).
    pub(crate) fn touch(&self, hash: &HashBinary) {
        self.lock().touch(hash, now_ms());
    }

    /// Reads and verifies the entry. Corrupt, torn or foreign files are removed and counted;
    /// IO errors are counted. Both are misses.
    pub(crate) fn read(&self, hash: &HashBinary) -> Option<Entry> {
        let (loaded, known) = {
            let idx = self.lock();
            (self.is_loaded(), idx.get(hash).is_some())
        };
        if loaded && !known {
            return None;
        }
        let path = self.path_for(hash);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if known {
                    self.forget_if_same(hash, &path, None);
                }
                return None;
            }
            Err(e) => {
                self.read_error(&path, &e);
                return None;
            }
        };
        let meta = match file.metadata() {
            Ok(meta) => meta,
            Err(e) => {
                self.read_error(&path, &e);
                return None;
            }
        };
        let identity = Some((meta.dev(), meta.ino()));
        let buf = match self.read_verified(&mut file, meta.len()) {
            Ok(buf) => buf,
            Err(ReadError::Io(e)) => {
                self.read_error(&path, &e);
                return None;
            }
            Err(ReadError::Format(why)) => {
                self.discard(hash, &path, identity, why);
                return None;
            }
        };
        let layout = match format::verify(&buf, hash) {
            Ok(layout) => layout,
            Err(why) => {
                self.discard(hash, &path, identity, why);
                return None;
            }
        };
        let primary: Arc<str> = String::from_utf8_lossy(&buf[layout.primary.clone()]).into();
        let meta0 = buf[layout.meta0.clone()].to_vec();
        let meta1 = buf[layout.meta1.clone()].to_vec();
        let body = Bytes::from(buf).slice(layout.body);
        if !known {
            // found by path while the index loads: adopt it
            let mut idx = self.lock();
            if idx.insert_found(*hash, meta.len(), mtime_ms(&meta), primary.clone()) {
                self.publish(&idx);
            }
        }
        match Entry::decode((meta0, meta1), body, primary) {
            Ok(entry) => Some(entry),
            Err(e) => {
                debug!(path = %path.display(), error = %e, "cache entry meta does not decode");
                self.discard(hash, &path, identity, FormatError::BadMeta);
                None
            }
        }
    }

    /// Reads the whole file after a cheap header check (so a bogus length never allocates).
    fn read_verified(&self, file: &mut File, len: u64) -> Result<Vec<u8>, ReadError> {
        let mut head = [0u8; format::FIXED_LEN];
        file.read_exact(&mut head).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ReadError::Format(FormatError::Truncated)
            } else {
                ReadError::Io(e)
            }
        })?;
        let fixed = format::parse_fixed(&head)?;
        if fixed.body_len > self.max_object_bytes {
            return Err(FormatError::TooLarge.into());
        }
        if fixed.file_len() != len {
            return Err(if len < fixed.file_len() {
                FormatError::Truncated
            } else {
                FormatError::BadLength
            }
            .into());
        }
        let len = usize::try_from(len).map_err(|_| FormatError::BadLength)?;
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&head);
        file.take((len - head.len()) as u64)
            .read_to_end(&mut buf)
            .map_err(ReadError::Io)?;
        Ok(buf)
    }

    fn read_error(&self, path: &Path, e: &io::Error) {
        METRICS.disk_read_errors.inc();
        warn!(path = %path.display(), error = %e, "cache entry read failed");
    }

    /// Removes a bad entry file and its index entry, unless a newer file replaced it meanwhile.
    fn discard(
        &self,
        hash: &HashBinary,
        path: &Path,
        identity: Option<(u64, u64)>,
        why: FormatError,
    ) {
        if why == FormatError::TooLarge {
            debug!(path = %path.display(), "removing cache entry above max_object_bytes");
            METRICS.disk_evictions.inc();
        } else {
            METRICS.disk_corrupt.inc();
            warn!(path = %path.display(), reason = %why, "removing corrupt cache entry");
        }
        self.forget_if_same(hash, path, identity);
    }

    /// Under the index lock (commits rename under it too): if the file at `path` is still the
    /// one identified by `identity` (or still absent, for `None`), delete it and its index entry.
    fn forget_if_same(&self, hash: &HashBinary, path: &Path, identity: Option<(u64, u64)>) {
        let mut idx = self.lock();
        let current = match fs::symlink_metadata(path) {
            Ok(m) => Some((m.dev(), m.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                self.read_error(path, &e);
                return;
            }
        };
        if current != identity {
            return; // replaced by a newer write
        }
        if current.is_some()
            && let Err(e) = fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            METRICS.disk_write_errors.inc();
            warn!(path = %path.display(), error = %e, "removing cache entry failed");
        }
        idx.remove(hash, None);
        self.publish(&idx);
    }

    /// Announces a write; a later write or a purge of the same hash makes it a no-op.
    pub(crate) fn begin_write(&self, hash: HashBinary, primary: Arc<str>) -> u64 {
        self.lock().begin_write(hash, primary)
    }

    /// Writes the entry (temp file + rename), then evicts least recently used entries over
    /// `max_bytes`. Returns whether the entry was committed. Failures are logged and counted.
    pub(crate) fn write(&self, hash: &HashBinary, id: u64, entry: &Entry) -> bool {
        let path = self.path_for(hash);
        let Some(shard) = path.parent() else {
            return false;
        };
        let temp = shard.join(format!(
            ".tmp.{}.{}",
            self.instance,
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let size = match self.write_temp(shard, &temp, hash, entry) {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                self.lock().end_write(hash, id);
                METRICS.disk_write_errors.inc();
                warn!(path = %path.display(), error = %e, "cache entry not stored on disk");
                return false;
            }
        };
        let mut idx = self.lock();
        if !idx.may_commit(hash, id) {
            drop(idx);
            let _ = fs::remove_file(&temp);
            debug!(path = %path.display(), "cache write superseded or purged");
            return false;
        }
        idx.end_write(hash, id);
        if let Err(e) = fs::rename(&temp, &path) {
            drop(idx);
            let _ = fs::remove_file(&temp);
            METRICS.disk_write_errors.inc();
            warn!(path = %path.display(), error = %e, "cache entry not stored on disk");
            return false;
        }
        let now = now_ms();
        idx.insert(*hash, size, now, now, entry.primary.clone());
        let victims = idx.evict_over(self.max_bytes, usize::MAX);
        self.unlink_evicted(&victims);
        self.publish(&idx);
        true
    }

    fn write_temp(
        &self,
        shard: &Path,
        temp: &Path,
        hash: &HashBinary,
        entry: &Entry,
    ) -> io::Result<u64> {
        // recursive: also recreates the root if someone removed it
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(shard)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(temp)?;
        format::write_entry(
            &mut file,
            hash,
            entry.primary.as_bytes(),
            &entry.meta.0,
            &entry.meta.1,
            &entry.body,
        )
    }

    /// Deletes files of entries already taken out of the index (call with the lock held, so a
    /// new commit of the same hash cannot slip in between).
    fn unlink_evicted(&self, victims: &[HashBinary]) {
        for hash in victims {
            let path = self.path_for(hash);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    METRICS.disk_write_errors.inc();
                    warn!(path = %path.display(), error = %e, "removing evicted cache entry failed");
                }
            }
        }
        METRICS.disk_evictions.inc_by(victims.len() as u64);
    }

    /// Removes the entry and cancels a write of it in flight. Returns whether anything was there.
    pub(crate) fn remove(&self, hash: &HashBinary) -> bool {
        let path = self.path_for(hash);
        let mut idx = self.lock();
        let cancelled = idx.cancel_write(hash);
        let indexed = idx.remove(hash, None).is_some();
        let unlinked = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                METRICS.disk_write_errors.inc();
                warn!(path = %path.display(), error = %e, "removing cache entry failed");
                false
            }
        };
        self.publish(&idx);
        cancelled || indexed || unlinked
    }

    /// Index entries (and writes in flight) for one primary key.
    pub(crate) fn variants_of(&self, primary: &str) -> Vec<HashBinary> {
        self.lock().variants_of(primary)
    }

    /// Index entries (and writes in flight) whose primary key starts with `prefix`.
    pub(crate) fn variants_with_prefix(&self, prefix: &str) -> Vec<HashBinary> {
        self.lock().variants_with_prefix(prefix)
    }

    /// Removes entries not accessed for `inactive` and writes recent access times back to the
    /// files' mtime. Returns how many entries were removed.
    pub(crate) fn sweep(&self, now: SystemTime) -> usize {
        let cutoff = to_ms(now).saturating_sub(self.inactive.as_millis() as u64);
        let mut removed = 0;
        loop {
            let mut idx = self.lock();
            let victims = idx.expire_before(cutoff, BATCH);
            self.unlink_evicted(&victims);
            self.publish(&idx);
            removed += victims.len();
            if victims.len() < BATCH {
                break;
            }
        }
        if removed > 0 {
            info!(removed, dir = %self.dir.display(), "removed inactive cache entries");
        }
        let stale = self
            .lock()
            .unpersisted(PERSIST_SLACK.as_millis() as u64, PERSIST_MAX);
        for (hash, access_ms) in stale {
            let path = self.path_for(&hash);
            let when = UNIX_EPOCH + Duration::from_millis(access_ms);
            match File::open(&path).and_then(|f| f.set_modified(when)) {
                Ok(()) => self.lock().set_persisted(&hash, access_ms),
                Err(e) => debug!(path = %path.display(), error = %e, "cache mtime not updated"),
            }
        }
        removed
    }

    /// Rebuilds the index from the file headers (runs on its own thread at start), removes
    /// corrupt files and other instances' temp files, then enforces `max_bytes`.
    pub(crate) fn load(&self) {
        let started = Instant::now();
        let mut found = Vec::new();
        let mut bad = 0usize;
        match fs::read_dir(&self.dir) {
            Ok(shards) => {
                for shard in shards.flatten() {
                    let name = shard.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.len() != 2 || !is_hex(name) || !shard.path().is_dir() {
                        continue;
                    }
                    self.load_shard(&shard.path(), name, &mut found, &mut bad);
                }
            }
            Err(e) => {
                METRICS.disk_read_errors.inc();
                warn!(dir = %self.dir.display(), error = %e, "cache directory not readable");
            }
        }
        // oldest first, so a batch boundary never makes an old entry look newer than a recent one
        found.sort_by_key(|f: &Found| f.mtime_ms);
        let total = found.len();
        for chunk in found.chunks(BATCH * 4) {
            let mut idx = self.lock();
            for f in chunk {
                idx.insert_found(f.hash, f.size, f.mtime_ms, f.primary.clone());
            }
        }
        let mut evicted = 0;
        loop {
            let mut idx = self.lock();
            let victims = idx.evict_over(self.max_bytes, BATCH);
            self.unlink_evicted(&victims);
            evicted += victims.len();
            if victims.len() < BATCH {
                idx.finish_loading();
                self.publish(&idx);
                break;
            }
        }
        self.loaded.send_replace(true);
        let (bytes, objects) = self.usage();
        info!(
            dir = %self.dir.display(),
            objects, bytes, scanned = total, corrupt = bad, evicted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache disk index loaded"
        );
    }

    fn load_shard(&self, shard: &Path, shard_name: &str, found: &mut Vec<Found>, bad: &mut usize) {
        let entries = match fs::read_dir(shard) {
            Ok(entries) => entries,
            Err(e) => {
                self.read_error(shard, &e);
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(rest) = name.strip_prefix(".tmp.") {
                if !rest.starts_with(&format!("{}.", self.instance)) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Some(hash) = unhex(name) else { continue };
            if &name[..2] != shard_name {
                continue;
            }
            match self.read_header(&path, &hash) {
                Ok(f) => found.push(f),
                Err(ReadError::Io(e)) => self.read_error(&path, &e),
                Err(ReadError::Format(why)) => {
                    *bad += 1;
                    if why == FormatError::TooLarge {
                        METRICS.disk_evictions.inc();
                    } else {
                        METRICS.disk_corrupt.inc();
                        warn!(path = %path.display(), reason = %why, "removing corrupt cache entry");
                    }
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }

    fn read_header(&self, path: &Path, hash: &HashBinary) -> Result<Found, ReadError> {
        let mut file = File::open(path).map_err(ReadError::Io)?;
        let meta = file.metadata().map_err(ReadError::Io)?;
        let (fixed, primary) = format::read_header(&mut file, meta.len())?;
        if &fixed.hash != hash {
            return Err(FormatError::WrongHash.into());
        }
        if fixed.body_len > self.max_object_bytes {
            return Err(FormatError::TooLarge.into());
        }
        Ok(Found {
            hash: *hash,
            size: meta.len(),
            mtime_ms: mtime_ms(&meta),
            primary: String::from_utf8_lossy(&primary).into(),
        })
    }

    #[cfg(test)]
    pub(crate) fn pending_writes(&self) -> usize {
        self.lock().pending_writes()
    }
}

struct Found {
    hash: HashBinary,
    size: u64,
    mtime_ms: u64,
    primary: Arc<str>,
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

fn mtime_ms(meta: &fs::Metadata) -> u64 {
    meta.modified().map_or_else(|_| now_ms(), to_ms)
}

pub(crate) fn hex(hash: &HashBinary) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in hash {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unhex(s: &str) -> Option<HashBinary> {
    if s.len() != 32 || !is_hex(s) {
        return None;
    }
    let mut out = HashBinary::default();
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let hash: HashBinary = [0, 1, 0xab, 0xff, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let s = hex(&hash);
        assert_eq!(s, "0001abff0405060708090a0b0c0d0e0f");
        assert_eq!(unhex(&s), Some(hash));
        assert_eq!(unhex("0001ABFF0405060708090a0b0c0d0e0f"), None);
        assert_eq!(unhex("xyz"), None);
    }
}
