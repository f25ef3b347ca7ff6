//! Keeping the store current: inotify (via notify) on the directory, a periodic rescan, and
//! [`CertStore::request_rescan`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, watch as tokio_watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::store::CertStore;

/// The filesystem watch: the certs directory recursively, or, while it does not exist, its
/// nearest existing ancestor (non-recursively) so its creation is noticed.
struct FsWatch {
    wake: Arc<Notify>,
    watcher: Option<RecommendedWatcher>,
    target: Option<Target>,
    last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    path: PathBuf,
    recursive: bool,
    /// (device, inode), so a directory replaced by a new one is watched again.
    id: Option<(u64, u64)>,
}

#[cfg(unix)]
fn dir_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn dir_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

impl FsWatch {
    fn new(wake: Arc<Notify>) -> Self {
        Self {
            wake,
            watcher: None,
            target: None,
            last_error: None,
        }
    }

    fn note_error(&mut self, what: &str, e: &notify::Error) {
        let msg = format!("{what}: {e}");
        if self.last_error.as_deref() != Some(msg.as_str()) {
            warn!(error = %msg, "certificate directory not watched; relying on periodic rescan");
            self.last_error = Some(msg);
        }
    }

    /// (Re)establish the watch on `dir` (blocking: inotify walks the tree).
    fn ensure(&mut self, dir: &Path) {
        if self.watcher.is_none() {
            let wake = self.wake.clone();
            let handler = move |res: notify::Result<notify::Event>| match res {
                // Our own reads show up as Access events: reacting to them would reload forever.
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    debug!(error = %e, "watch error; rescanning");
                    wake.notify_one();
                }
            };
            match notify::recommended_watcher(handler) {
                Ok(w) => self.watcher = Some(w),
                Err(e) => return self.note_error("creating watcher", &e),
            }
        }
        let desired = if dir.is_dir() {
            Some(Target {
                path: dir.to_path_buf(),
                recursive: true,
                id: dir_id(dir),
            })
        } else {
            dir.ancestors()
                .skip(1)
                .find(|p| !p.as_os_str().is_empty() && p.is_dir())
                .map(|p| Target {
                    path: p.to_path_buf(),
                    recursive: false,
                    id: dir_id(p),
                })
        };
        if desired == self.target {
            return;
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        if let Some(old) = self.target.take() {
            // Fails when the old directory is gone (the kernel dropped the watch): fine.
            let _ = watcher.unwatch(&old.path);
        }
        let Some(target) = desired else { return };
        let mode = if target.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        match watcher.watch(&target.path, mode) {
            Ok(()) => {
                self.last_error = None;
                if target.recursive {
                    info!(dir = %target.path.display(), "watching certificate directory");
                } else {
                    info!(
                        dir = %dir.display(),
                        parent = %target.path.display(),
                        "certificate directory missing; watching its parent"
                    );
                }
                self.target = Some(target);
            }
            Err(e) => {
                let what = format!("watching {}", target.path.display());
                self.note_error(&what, &e);
            }
        }
    }
}

/// Wait until `wake` has been quiet for `quiet`, but no longer than four times that overall, so
/// a stream of events cannot postpone a reload indefinitely.
async fn debounce(wake: &Notify, quiet: Duration) {
    let deadline = Instant::now() + quiet * 4;
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
        if wait.is_zero() || tokio::time::timeout(wait, wake.notified()).await.is_err() {
            return;
        }
    }
}

/// Refresh the watch and reload, off the async runtime's worker threads.
async fn refresh(store: &Arc<CertStore>, fs: FsWatch) -> FsWatch {
    let store = store.clone();
    let wake = fs.wake.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut fs = fs;
        fs.ensure(&store.settings().dir);
        let report = store.reload();
        debug!(?report, "certificate rescan");
        fs
    });
    match task.await {
        Ok(fs) => fs,
        Err(e) => {
            error!(error = %e, "certificate reload task failed");
            FsWatch::new(wake)
        }
    }
}

async fn next_tick(tick: Option<&mut tokio::time::Interval>) {
    match tick {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Keep `store` in sync with its directory until `shutdown` becomes `true` (or its sender is
/// dropped).
///
/// Reloads after file events (debounced by `settings.debounce`), every
/// `settings.rescan_interval`, and on [`CertStore::request_rescan`]. Starts with a reload. File
/// reads run on tokio's blocking pool. Run it as a pingora background service.
pub async fn watch(store: Arc<CertStore>, mut shutdown: tokio_watch::Receiver<bool>) {
    let wake = store.wake.clone();
    let settings = store.settings().clone();
    let mut fs = refresh(&store, FsWatch::new(wake.clone())).await;

    let mut tick = (!settings.rescan_interval.is_zero()).then(|| {
        let period = settings.rescan_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick
    });

    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
            () = wake.notified() => debounce(&wake, settings.debounce).await,
            () = next_tick(tick.as_mut()) => {}
        }
        fs = refresh(&store, fs).await;
    }
    debug!("certificate watcher stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::CertSettings;
    use crate::test_util::{TestCa, TestPair, write_atomic, write_pair};

    /// Poll `cond` every 10 ms until it holds or `within` passes.
    async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn serial_is(store: &CertStore, domain: &str, pair: &TestPair) -> bool {
        store
            .resolve_name(Some(domain))
            .is_some_and(|k| k.cert[0].as_ref() == pair.cert_der.as_ref())
    }

    fn start(
        dir: &Path,
    ) -> (
        Arc<CertStore>,
        tokio_watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let store = CertStore::new(CertSettings {
            dir: dir.to_path_buf(),
            ..CertSettings::default()
        });
        let (tx, rx) = tokio_watch::channel(false);
        let task = tokio::spawn(watch(store.clone(), rx));
        (store, tx, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_domain_and_rotation_go_live_within_a_second() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (store, tx, task) = start(tmp.path());
        assert!(
            eventually(Duration::from_secs(2), || store
                .reloads
                .load(Ordering::Relaxed)
                > 0)
            .await
        );

        let old = ca.leaf(&["a.test"]);
        let dir = write_pair(tmp.path(), "a.test", &old, "chain.pem", "key.pem").unwrap();
        assert!(eventually(Duration::from_secs(1), || serial_is(&store, "a.test", &old)).await);
        // Our own reads (inotify Access events) must not trigger further reloads: measure a
        // quiet period of a few debounce intervals.
        let settled = store.reloads.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(900)).await;
        let extra = store.reloads.load(Ordering::Relaxed) - settled;
        assert!(extra <= 1, "{extra} reloads without any file change");

        // Half a rotation: the old pair stays, whoever reloads.
        let new = ca.leaf(&["a.test"]);
        write_atomic(&dir.join("key.pem"), new.key_pem.as_bytes()).unwrap();
        let report = tokio::task::block_in_place(|| store.reload());
        assert_eq!(report.kept_previous.len(), 1, "{report:?}");
        assert!(serial_is(&store, "a.test", &old));
        // The second file lands: live within a second, from file events alone.
        write_atomic(&dir.join("chain.pem"), new.chain_pem.as_bytes()).unwrap();
        assert!(eventually(Duration::from_secs(1), || serial_is(&store, "a.test", &new)).await);

        // The domain directory disappears.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(eventually(Duration::from_secs(1), || store.is_empty()).await);

        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_on_a_missing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let certs = tmp.path().join("vault").join("certs");
        let (store, tx, task) = start(&certs);
        assert!(
            eventually(Duration::from_secs(2), || store
                .reloads
                .load(Ordering::Relaxed)
                > 0)
            .await
        );
        assert!(store.is_empty());

        std::fs::create_dir(tmp.path().join("vault")).unwrap();
        std::fs::create_dir(&certs).unwrap();
        let pair = ca.leaf(&["late.test"]);
        write_pair(&certs, "late.test", &pair, "chain.pem", "key.pem").unwrap();
        assert!(
            eventually(Duration::from_secs(3), || serial_is(
                &store,
                "late.test",
                &pair
            ))
            .await
        );

        drop(tx); // a dropped sender also stops the watcher
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_rescan_reloads() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, tx, task) = start(tmp.path());
        assert!(
            eventually(Duration::from_secs(2), || store
                .reloads
                .load(Ordering::Relaxed)
                > 0)
            .await
        );
        let before = store.reloads.load(Ordering::Relaxed);
        store.request_rescan();
        assert!(
            eventually(Duration::from_secs(1), || store
                .reloads
                .load(Ordering::Relaxed)
                > before)
            .await
        );
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }
}
