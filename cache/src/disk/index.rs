//! The in-memory index of the disk tier: sizes, access times, LRU order, primary keys.
//!
//! Everything here is plain data behind one mutex held for microseconds; file IO never happens
//! while it is held, except the `rename` that commits a write (so a purge cannot race a commit).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use pingora::cache::key::HashBinary;

/// LRU order: access time (ms since the epoch), then a unique tick so order is total and
/// accesses within the same millisecond keep their order.
type LruKey = (u64, u64);

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// Unique per insertion: lets a reader remove "the entry it read" and not a newer one.
    pub(crate) id: u64,
    pub(crate) size: u64,
    pub(crate) lru: LruKey,
    /// Access time last written to the file's mtime (so `inactive` survives restarts).
    pub(crate) persisted_ms: u64,
    pub(crate) primary: Arc<str>,
}

/// A write that has started but not committed; a purge cancels it by removing it.
#[derive(Debug)]
struct Pending {
    id: u64,
    primary: Arc<str>,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<HashBinary, Slot>,
    lru: BTreeMap<LruKey, HashBinary>,
    by_primary: BTreeMap<Arc<str>, Vec<HashBinary>>,
    pending: HashMap<HashBinary, Pending>,
    /// Hashes removed while the loader runs, so it does not resurrect them from stale headers.
    removed_while_loading: Option<HashSet<HashBinary>>,
    total_bytes: u64,
    tick: u64,
}

impl Index {
    pub(crate) fn new_loading() -> Self {
        Self {
            removed_while_loading: Some(HashSet::new()),
            ..Self::default()
        }
    }

    pub(crate) fn finish_loading(&mut self) {
        self.removed_while_loading = None;
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub(crate) fn get(&self, hash: &HashBinary) -> Option<&Slot> {
        self.entries.get(hash)
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Inserts or replaces the entry; returns the new slot id.
    pub(crate) fn insert(
        &mut self,
        hash: HashBinary,
        size: u64,
        access_ms: u64,
        persisted_ms: u64,
        primary: Arc<str>,
    ) -> u64 {
        self.remove(&hash, None);
        let id = self.next_tick();
        let lru = (access_ms, id);
        self.lru.insert(lru, hash);
        let variants = self.by_primary.entry(primary.clone()).or_default();
        if !variants.contains(&hash) {
            variants.push(hash);
        }
        self.total_bytes += size;
        self.entries.insert(
            hash,
            Slot {
                id,
                size,
                lru,
                persisted_ms,
                primary,
            },
        );
        id
    }

    /// Inserts an entry found on disk (by the loader or a lookup during loading) unless the index
    /// already knows a newer state of it. Returns whether it was inserted.
    pub(crate) fn insert_found(
        &mut self,
        hash: HashBinary,
        size: u64,
        mtime_ms: u64,
        primary: Arc<str>,
    ) -> bool {
        if self.entries.contains_key(&hash)
            || self.pending.contains_key(&hash)
            || self
                .removed_while_loading
                .as_ref()
                .is_some_and(|r| r.contains(&hash))
        {
            return false;
        }
        self.insert(hash, size, mtime_ms, mtime_ms, primary);
        true
    }

    /// Marks an access. Cheap: one B-tree remove and insert.
    pub(crate) fn touch(&mut self, hash: &HashBinary, now_ms: u64) {
        let tick = self.next_tick();
        if let Some(slot) = self.entries.get_mut(hash) {
            self.lru.remove(&slot.lru);
            slot.lru = (now_ms.max(slot.lru.0), tick);
            self.lru.insert(slot.lru, *hash);
        }
    }

    /// Removes the entry (only if its id is `id`, when given).
    pub(crate) fn remove(&mut self, hash: &HashBinary, id: Option<u64>) -> Option<Slot> {
        if let Some(removed) = self.removed_while_loading.as_mut() {
            removed.insert(*hash);
        }
        let slot = self.entries.get(hash)?;
        if id.is_some_and(|id| id != slot.id) {
            return None;
        }
        let slot = self.entries.remove(hash)?;
        self.lru.remove(&slot.lru);
        if let Some(variants) = self.by_primary.get_mut(&slot.primary) {
            variants.retain(|h| h != hash);
            if variants.is_empty() {
                self.by_primary.remove(&slot.primary);
            }
        }
        self.total_bytes -= slot.size;
        Some(slot)
    }

    /// Pops least recently used entries (at most `limit`) until the total is at most `max_bytes`.
    pub(crate) fn evict_over(&mut self, max_bytes: u64, limit: usize) -> Vec<HashBinary> {
        let mut victims = Vec::new();
        while self.total_bytes > max_bytes && victims.len() < limit {
            let Some((_, hash)) = self.lru.first_key_value().map(|(k, h)| (*k, *h)) else {
                break;
            };
            self.remove(&hash, None);
            victims.push(hash);
        }
        victims
    }

    /// Pops entries (at most `limit`) last accessed before `cutoff_ms`.
    pub(crate) fn expire_before(&mut self, cutoff_ms: u64, limit: usize) -> Vec<HashBinary> {
        let mut victims = Vec::new();
        while let Some((&(access_ms, _), &hash)) = self.lru.first_key_value() {
            if access_ms >= cutoff_ms || victims.len() >= limit {
                break;
            }
            self.remove(&hash, None);
            victims.push(hash);
        }
        victims
    }

    /// Entries whose access time moved more than `slack_ms` past the persisted one (at most `max`).
    pub(crate) fn unpersisted(&self, slack_ms: u64, max: usize) -> Vec<(HashBinary, u64)> {
        self.entries
            .iter()
            .filter(|(_, s)| s.lru.0 > s.persisted_ms.saturating_add(slack_ms))
            .take(max)
            .map(|(h, s)| (*h, s.lru.0))
            .collect()
    }

    pub(crate) fn set_persisted(&mut self, hash: &HashBinary, ms: u64) {
        if let Some(slot) = self.entries.get_mut(hash) {
            slot.persisted_ms = ms;
        }
    }

    /// Every stored variant of `primary`.
    pub(crate) fn variants_of(&self, primary: &str) -> Vec<HashBinary> {
        let mut out: Vec<_> = self.by_primary.get(primary).cloned().unwrap_or_default();
        out.extend(
            self.pending
                .iter()
                .filter(|(_, p)| &*p.primary == primary)
                .map(|(h, _)| *h),
        );
        out
    }

    /// Every stored variant of every primary key starting with `prefix`.
    pub(crate) fn variants_with_prefix(&self, prefix: &str) -> Vec<HashBinary> {
        let mut out: Vec<_> = self
            .by_primary
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(p, _)| p.starts_with(prefix))
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        out.extend(
            self.pending
                .iter()
                .filter(|(_, p)| p.primary.starts_with(prefix))
                .map(|(h, _)| *h),
        );
        out
    }

    /// Registers a write about to start; returns its id. A newer write or a purge supersedes it.
    pub(crate) fn begin_write(&mut self, hash: HashBinary, primary: Arc<str>) -> u64 {
        let id = self.next_tick();
        self.pending.insert(hash, Pending { id, primary });
        id
    }

    /// Whether write `id` may still commit (it was neither purged nor superseded).
    pub(crate) fn may_commit(&self, hash: &HashBinary, id: u64) -> bool {
        self.pending.get(hash).is_some_and(|p| p.id == id)
    }

    /// Forgets write `id` (committed or failed); a no-op if a newer write replaced it.
    pub(crate) fn end_write(&mut self, hash: &HashBinary, id: u64) {
        if self.may_commit(hash, id) {
            self.pending.remove(hash);
        }
    }

    /// Cancels any write in flight for `hash`. Returns whether there was one.
    pub(crate) fn cancel_write(&mut self, hash: &HashBinary) -> bool {
        self.pending.remove(hash).is_some()
    }

    #[cfg(test)]
    pub(crate) fn pending_writes(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> HashBinary {
        [n; 16]
    }

    #[test]
    fn lru_order_follows_access_then_insertion() {
        let mut idx = Index::default();
        let p: Arc<str> = Arc::from("p");
        idx.insert(h(1), 10, 1000, 1000, p.clone());
        idx.insert(h(2), 10, 1000, 1000, p.clone());
        idx.insert(h(3), 10, 1000, 1000, p.clone());
        assert_eq!(idx.total_bytes(), 30);
        idx.touch(&h(1), 1000); // same millisecond: the tick still makes it most recent
        assert_eq!(idx.evict_over(20, usize::MAX), vec![h(2)]);
        assert_eq!(idx.evict_over(0, 1), vec![h(3)]);
        assert_eq!(idx.evict_over(0, usize::MAX), vec![h(1)]);
        assert_eq!(idx.total_bytes(), 0);
        assert_eq!(idx.len(), 0);
        assert!(idx.variants_of("p").is_empty());
    }

    #[test]
    fn expire_before_takes_only_old_entries() {
        let mut idx = Index::default();
        idx.insert(h(1), 1, 100, 100, Arc::from("a"));
        idx.insert(h(2), 1, 500, 500, Arc::from("b"));
        idx.insert(h(3), 1, 200, 200, Arc::from("c"));
        let mut gone = idx.expire_before(300, usize::MAX);
        gone.sort();
        assert_eq!(gone, vec![h(1), h(3)]);
        assert!(idx.get(&h(2)).is_some());
    }

    #[test]
    fn prefix_and_primary_lookup() {
        let mut idx = Index::default();
        idx.insert(h(1), 1, 1, 1, Arc::from("https://a.test/x"));
        idx.insert(h(2), 1, 1, 1, Arc::from("https://a.test/x"));
        idx.insert(h(3), 1, 1, 1, Arc::from("https://a.test/y"));
        idx.insert(h(4), 1, 1, 1, Arc::from("https://a.testing/"));
        idx.insert(h(5), 1, 1, 1, Arc::from("https://b.test/x"));
        let mut v = idx.variants_of("https://a.test/x");
        v.sort();
        assert_eq!(v, vec![h(1), h(2)]);
        let mut v = idx.variants_with_prefix("https://a.test/");
        v.sort();
        assert_eq!(v, vec![h(1), h(2), h(3)]);
        assert_eq!(idx.variants_with_prefix("").len(), 5);
        assert!(idx.variants_with_prefix("https://c").is_empty());
    }

    #[test]
    fn remove_by_id_spares_newer_entries() {
        let mut idx = Index::default();
        let old = idx.insert(h(1), 5, 1, 1, Arc::from("a"));
        let new = idx.insert(h(1), 7, 2, 2, Arc::from("a"));
        assert_eq!(idx.total_bytes(), 7);
        assert!(idx.remove(&h(1), Some(old)).is_none());
        assert_eq!(idx.remove(&h(1), Some(new)).map(|s| s.size), Some(7));
        assert_eq!(idx.total_bytes(), 0);
    }

    #[test]
    fn loader_does_not_resurrect_or_overwrite() {
        let mut idx = Index::new_loading();
        idx.insert(h(1), 9, 50, 50, Arc::from("live"));
        assert!(!idx.insert_found(h(1), 3, 10, Arc::from("live")));
        assert_eq!(idx.get(&h(1)).map(|s| s.size), Some(9));
        idx.remove(&h(2), None); // purged before the loader reached it
        assert!(!idx.insert_found(h(2), 3, 10, Arc::from("gone")));
        let id = idx.begin_write(h(3), Arc::from("w"));
        assert!(!idx.insert_found(h(3), 3, 10, Arc::from("w")));
        idx.end_write(&h(3), id);
        assert!(idx.insert_found(h(4), 3, 10, Arc::from("old")));
        idx.finish_loading();
        idx.remove(&h(5), None);
        assert!(idx.insert_found(h(5), 3, 10, Arc::from("later")));
    }

    #[test]
    fn pending_writes_are_superseded_and_cancelled() {
        let mut idx = Index::default();
        let first = idx.begin_write(h(1), Arc::from("p"));
        let second = idx.begin_write(h(1), Arc::from("p"));
        assert!(!idx.may_commit(&h(1), first));
        assert!(idx.may_commit(&h(1), second));
        assert_eq!(idx.variants_of("p"), vec![h(1)]);
        assert!(idx.cancel_write(&h(1)));
        assert!(!idx.may_commit(&h(1), second));
        assert_eq!(idx.pending_writes(), 0);
    }
}
