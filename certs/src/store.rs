//! The certificate store: an atomically swapped snapshot of every loaded pair, indexed for SNI.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::error::CertError;
use crate::load::{self, CertSummary, Fingerprint, name_covers, normalize_host};
use crate::metrics;

/// Where the certificates live and how the store treats them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSettings {
    /// Directory with one sub-directory per domain (`<dir>/<domain>/<chain_file>`).
    pub dir: PathBuf,
    /// Chain file name inside each domain directory: leaf first, then intermediates.
    pub chain_file: String,
    /// Private key file name inside each domain directory (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key_file: String,
    /// Domain whose certificate answers clients that send no SNI or an SNI matching nothing.
    /// `None` refuses those handshakes.
    pub default_domain: Option<String>,
    /// Quiet period after a file event before reloading.
    pub debounce: Duration,
    /// Fallback full rescan period; `Duration::ZERO` disables it.
    pub rescan_interval: Duration,
}

impl Default for CertSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/edgepop/certs"),
            chain_file: "chain.pem".to_owned(),
            key_file: "key.pem".to_owned(),
            default_domain: None,
            debounce: Duration::from_millis(200),
            rescan_interval: Duration::from_secs(60),
        }
    }
}

/// What one [`CertStore::reload`] did, per domain directory.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Domains whose pair is new or changed and now live.
    pub loaded: Vec<String>,
    /// Domains whose files did not change.
    pub unchanged: Vec<String>,
    /// Domains whose new files failed validation; the previous good pair stays live.
    pub kept_previous: Vec<(String, CertError)>,
    /// Domains whose directory disappeared; no longer served.
    pub removed: Vec<String>,
    /// Domains that failed validation and had no previous pair; not served.
    pub failed: Vec<(String, CertError)>,
    /// Domains served with an expired certificate because nothing valid covers them.
    pub expired_served: Vec<String>,
    /// The directory itself could not be listed; the previous snapshot was kept whole.
    pub dir_error: Option<CertError>,
}

impl ReloadReport {
    /// No domain failed and the directory was readable.
    pub fn is_ok(&self) -> bool {
        self.kept_previous.is_empty() && self.failed.is_empty() && self.dir_error.is_none()
    }
}

/// One live domain directory.
#[derive(Debug)]
struct Live {
    key: Arc<CertifiedKey>,
    summary: CertSummary,
    fingerprint: Fingerprint,
}

/// Immutable view used by the handshake path.
#[derive(Debug, Default)]
struct Snapshot {
    /// Live domain directories, by directory name.
    domains: BTreeMap<String, Arc<Live>>,
    /// Exact certificate names.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` names, keyed by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Snapshot {
    fn lookup(&self, host: &str) -> Option<&Arc<CertifiedKey>> {
        if let Some(key) = self.exact.get(host) {
            return Some(key);
        }
        let (label, parent) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }

    fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|name| self.lookup(&normalize_host(name)));
        found.or(self.default.as_ref()).cloned()
    }
}

/// Reload bookkeeping, so that an unchanged problem is logged once, not every rescan.
#[derive(Debug, Default)]
struct ReloadState {
    /// Last failure logged per domain: the files' fingerprint and the error kind.
    failures: HashMap<String, (Fingerprint, &'static str)>,
    /// Expired pairs already warned about (by fingerprint).
    expired_warned: HashMap<String, Fingerprint>,
    /// Last directory-level error logged.
    dir_error: Option<String>,
    /// The default domain was missing at the last reload.
    default_missing: bool,
}

/// A rustls certificate resolver over the vault-agent directory.
///
/// Reads are lock-free (an [`ArcSwap`] snapshot); [`CertStore::reload`] builds a new snapshot
/// and swaps it in.
pub struct CertStore {
    settings: CertSettings,
    default_domain: Option<String>,
    snapshot: ArcSwap<Snapshot>,
    state: Mutex<ReloadState>,
    hasher: RandomState,
    pub(crate) wake: Arc<Notify>,
    /// Completed reloads (for tests of the watcher).
    pub(crate) reloads: AtomicU64,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.settings.dir)
            .field("live_domains", &self.live_domains())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// An empty store; nothing is read until [`CertStore::reload`] or [`crate::watch`].
    pub fn new(settings: CertSettings) -> Arc<Self> {
        let default_domain = settings
            .default_domain
            .as_deref()
            .map(|d| normalize_host(d.trim()).into_owned())
            .filter(|d| !d.is_empty());
        Arc::new(Self {
            settings,
            default_domain,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            state: Mutex::new(ReloadState::default()),
            hasher: RandomState::new(),
            wake: Arc::new(Notify::new()),
            reloads: AtomicU64::new(0),
        })
    }

    /// The settings the store was built with.
    pub fn settings(&self) -> &CertSettings {
        &self.settings
    }

    /// Domains (directory names) currently served, sorted.
    pub fn live_domains(&self) -> Vec<String> {
        self.snapshot.load().domains.keys().cloned().collect()
    }

    /// The summary of the pair currently served for domain directory `domain`.
    pub fn live_summary(&self, domain: &str) -> Option<CertSummary> {
        let domain = normalize_host(domain);
        self.snapshot
            .load()
            .domains
            .get(domain.as_ref())
            .map(|l| l.summary.clone())
    }

    /// True when no domain is served.
    pub fn is_empty(&self) -> bool {
        self.snapshot.load().domains.is_empty()
    }

    /// Ask the running [`crate::watch`] task for a full rescan (e.g. on SIGHUP). Never blocks;
    /// several requests before the rescan starts coalesce into one.
    pub fn request_rescan(&self) {
        self.wake.notify_one();
    }

    /// The certificate a handshake with this SNI would get (exact, one-label wildcard, then the
    /// default domain).
    pub fn resolve_name(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.snapshot.load().resolve(sni)
    }

    /// Rescan the whole directory and swap in a new snapshot. Blocking (file reads): call it
    /// from a blocking context. Concurrent calls are serialised.
    pub fn reload(&self) -> ReloadReport {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let report = self.reload_locked(&mut state);
        metrics::record_reload(report.is_ok());
        self.reloads.fetch_add(1, Ordering::Relaxed);
        report
    }

    fn reload_locked(&self, state: &mut ReloadState) -> ReloadReport {
        let now = SystemTime::now();
        let prev = self.snapshot.load_full();
        let mut report = ReloadReport::default();

        let listing = match load::list_domains(&self.settings.dir) {
            Ok(listing) => {
                if state.dir_error.take().is_some() {
                    info!(dir = %self.settings.dir.display(), "certificate directory readable again");
                }
                listing
            }
            Err(e) => {
                let msg = ErrorChain(&e).to_string();
                if state.dir_error.as_deref() != Some(msg.as_str()) {
                    if prev.domains.is_empty() {
                        warn!(error = %msg, "no certificates loaded");
                    } else {
                        error!(error = %msg, "keeping all current certificates");
                    }
                    state.dir_error = Some(msg);
                }
                report.dir_error = Some(e);
                return report;
            }
        };

        let mut domains: BTreeMap<String, Arc<Live>> = BTreeMap::new();
        for (domain, dir) in listing {
            if domains.contains_key(&domain) {
                continue;
            }
            let prev_live = prev.domains.get(&domain);
            let dir = match dir {
                Ok(dir) => dir,
                Err(e) => {
                    self.fail(
                        state,
                        &domain,
                        Fingerprint::default(),
                        e,
                        prev_live,
                        &mut report,
                    );
                    if let Some(p) = prev_live {
                        domains.insert(domain, p.clone());
                    }
                    continue;
                }
            };
            let files = load::read_pair(&dir, &self.settings, &self.hasher);
            let fingerprint = files.fingerprint;
            if let Some(p) = prev_live.filter(|p| p.fingerprint == fingerprint) {
                state.failures.remove(&domain);
                domains.insert(domain.clone(), refresh_expiry(p, now));
                report.unchanged.push(domain);
                continue;
            }
            match load::parse_pair(&domain, files, now) {
                Ok(new) => {
                    if new.summary.expired
                        && let Some(p) = prev_live.filter(|p| now <= p.summary.not_after)
                    {
                        let err = load::expired_error(&new.summary);
                        self.fail(state, &domain, fingerprint, err, Some(p), &mut report);
                        domains.insert(domain, p.clone());
                        continue;
                    }
                    state.failures.remove(&domain);
                    info!(
                        domain = %domain,
                        names = ?new.summary.names,
                        serial = %new.summary.serial,
                        key = new.summary.key_algorithm,
                        expired = new.summary.expired,
                        "certificate loaded"
                    );
                    if new.summary.key_too_open {
                        warn!(
                            path = %new.summary.key_path.display(),
                            "private key file is readable by group or other; chmod 0400"
                        );
                    }
                    let live = Live {
                        key: new.key,
                        summary: new.summary,
                        fingerprint,
                    };
                    domains.insert(domain.clone(), Arc::new(live));
                    report.loaded.push(domain);
                }
                Err(e) => {
                    self.fail(state, &domain, fingerprint, e, prev_live, &mut report);
                    if let Some(p) = prev_live {
                        domains.insert(domain, refresh_expiry(p, now));
                    }
                }
            }
        }

        for domain in prev.domains.keys() {
            if !domains.contains_key(domain) {
                info!(domain = %domain, "certificate directory removed; no longer served");
                report.removed.push(domain.clone());
                metrics::remove_not_after(domain);
            }
        }
        state
            .failures
            .retain(|d, _| domains.contains_key(d) || report.failed.iter().any(|(f, _)| f == d));

        let snapshot = self.build_snapshot(domains, state, &mut report);
        metrics::record_snapshot(
            snapshot
                .domains
                .iter()
                .map(|(d, l)| (d.as_str(), l.summary.not_after)),
            snapshot.domains.len(),
        );
        debug!(
            live = snapshot.domains.len(),
            "certificate snapshot swapped"
        );
        self.snapshot.store(Arc::new(snapshot));
        report
    }

    /// Record a failure for `domain`, logging it only if it differs from the last one logged.
    fn fail(
        &self,
        state: &mut ReloadState,
        domain: &str,
        fingerprint: Fingerprint,
        err: CertError,
        prev: Option<&Arc<Live>>,
        report: &mut ReloadReport,
    ) {
        let kind = err.kind();
        let changed = state.failures.get(domain) != Some(&(fingerprint, kind));
        if changed {
            state
                .failures
                .insert(domain.to_owned(), (fingerprint, kind));
            let reason = ErrorChain(&err);
            match prev {
                Some(p) => warn!(
                    domain = %domain,
                    error = %reason,
                    serial = %p.summary.serial,
                    "certificate update rejected; keeping previous certificate"
                ),
                None => error!(domain = %domain, error = %reason, "certificate not loaded"),
            }
        }
        match prev {
            Some(_) => report.kept_previous.push((domain.to_owned(), err)),
            None => report.failed.push((domain.to_owned(), err)),
        }
    }

    fn build_snapshot(
        &self,
        domains: BTreeMap<String, Arc<Live>>,
        state: &mut ReloadState,
        report: &mut ReloadReport,
    ) -> Snapshot {
        let mut exact: HashMap<String, Arc<CertifiedKey>> = HashMap::new();
        let mut wildcard: HashMap<String, Arc<CertifiedKey>> = HashMap::new();
        // Valid pairs first, expired ones only where nothing valid covers the name. Within each
        // group, a pair claims the names covering its own directory before any other name, so
        // `b.test/` wins `b.test` over a SAN in `a.test/`; ties go to the first directory.
        for want_expired in [false, true] {
            let valid_wildcards: HashSet<String> = if want_expired {
                wildcard.keys().cloned().collect()
            } else {
                HashSet::new()
            };
            for own_names in [true, false] {
                for (dir, live) in domains
                    .iter()
                    .filter(|(_, l)| l.summary.expired == want_expired)
                {
                    for name in &live.summary.names {
                        if name_covers(name, dir) != own_names {
                            continue;
                        }
                        if let Some(parent) = name.strip_prefix("*.") {
                            wildcard
                                .entry(parent.to_owned())
                                .or_insert_with(|| live.key.clone());
                        } else {
                            let shadowed = want_expired
                                && name
                                    .split_once('.')
                                    .is_some_and(|(_, parent)| valid_wildcards.contains(parent));
                            if !shadowed {
                                exact
                                    .entry(name.clone())
                                    .or_insert_with(|| live.key.clone());
                            }
                        }
                    }
                }
            }
        }
        let mut snapshot = Snapshot {
            domains,
            exact,
            wildcard,
            default: None,
        };

        // Loud, once per pair: an expired certificate that is actually served.
        state
            .expired_warned
            .retain(|d, _| snapshot.domains.get(d).is_some_and(|l| l.summary.expired));
        for (dir, live) in snapshot.domains.iter().filter(|(_, l)| l.summary.expired) {
            let served = snapshot
                .lookup(dir)
                .is_some_and(|k| Arc::ptr_eq(k, &live.key));
            if served {
                report.expired_served.push(dir.clone());
            }
            if state.expired_warned.get(dir) != Some(&live.fingerprint) {
                state.expired_warned.insert(dir.clone(), live.fingerprint);
                if served {
                    warn!(
                        domain = %dir,
                        path = %live.summary.chain_path.display(),
                        serial = %live.summary.serial,
                        "SERVING EXPIRED CERTIFICATE: no valid certificate covers this domain"
                    );
                } else {
                    warn!(
                        domain = %dir,
                        path = %live.summary.chain_path.display(),
                        "certificate expired; a valid certificate covers the domain instead"
                    );
                }
            }
        }

        if let Some(default) = &self.default_domain {
            snapshot.default = snapshot.lookup(default).cloned();
            let missing = snapshot.default.is_none();
            if missing && !state.default_missing {
                warn!(domain = %default, "default certificate domain not loaded; clients without a matching SNI are refused");
            }
            state.default_missing = missing;
        }
        snapshot
    }
}

/// Re-evaluate the expiry of an unchanged pair, so a certificate that expires while live is
/// demoted behind valid ones.
fn refresh_expiry(live: &Arc<Live>, now: SystemTime) -> Arc<Live> {
    let expired = now > live.summary.not_after;
    if expired == live.summary.expired {
        return live.clone();
    }
    let mut summary = live.summary.clone();
    summary.expired = expired;
    Arc::new(Live {
        key: live.key.clone(),
        summary,
        fingerprint: live.fingerprint,
    })
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.snapshot.load().resolve(client_hello.server_name());
        if key.is_none() {
            debug!(sni = ?client_hello.server_name(), "no certificate for server name");
        }
        key
    }
}

/// One entry of [`scan`]: a domain directory's name and its validation result.
pub type DomainCheck = (String, Result<CertSummary, CertError>);

/// Every domain directory under `settings.dir` with its validation result, without loading
/// anything into a store, logging or touching metrics (for `edgepop check`).
///
/// An expired pair is `Ok` with [`CertSummary::expired`] set: the store would still serve it if
/// nothing valid covers the name. Fails only when the directory itself cannot be listed.
pub fn scan(settings: &CertSettings) -> Result<Vec<DomainCheck>, CertError> {
    let hasher = RandomState::new();
    let now = SystemTime::now();
    let listing = load::list_domains(&settings.dir)?;
    Ok(listing
        .into_iter()
        .map(|(domain, dir)| {
            let result = dir.and_then(|dir: PathBuf| {
                let files = load::read_pair(&dir, settings, &hasher);
                load::parse_pair(&domain, files, now).map(|l| l.summary)
            });
            (domain, result)
        })
        .collect())
}

/// Displays an error with its `source()` chain, `a: b: c`.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use rustls::{AlertDescription, CertificateError};

    use super::*;
    use crate::metrics::HandshakeFailure;
    use crate::test_util::{
        TestCa, TestPair, handshake_in_memory, set_mode, write_atomic, write_pair,
    };
    use crate::{TlsPolicy, server_config};

    fn settings(dir: &Path) -> CertSettings {
        CertSettings {
            dir: dir.to_path_buf(),
            ..CertSettings::default()
        }
    }

    fn put(dir: &Path, domain: &str, pair: &TestPair) {
        write_pair(dir, domain, pair, "chain.pem", "key.pem").unwrap();
    }

    /// Handshake with SNI `name`; the leaf served, or the client's error.
    fn serve(store: &Arc<CertStore>, ca: &TestCa, name: &str) -> Result<Vec<u8>, rustls::Error> {
        let hs = handshake_in_memory(
            server_config(store.clone(), &TlsPolicy::default()),
            ca.client_config(),
            name,
        );
        match (&hs.client_error, hs.leaf()) {
            (None, Some(leaf)) if hs.is_ok() => Ok(leaf.to_vec()),
            (Some(e), _) => Err(e.clone()),
            _ => Err(rustls::Error::General(format!(
                "handshake incomplete: {hs:?}"
            ))),
        }
    }

    fn refused(result: Result<Vec<u8>, rustls::Error>) -> bool {
        matches!(
            result,
            Err(rustls::Error::AlertReceived(AlertDescription::AccessDenied))
        )
    }

    #[test]
    fn sni_selects_each_domain_and_unknown_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let a = ca.leaf(&["a.test"]);
        let b = ca.leaf_rsa(&["b.test", "www.b.test"]);
        put(tmp.path(), "a.test", &a);
        put(tmp.path(), "b.test", &b);
        let store = CertStore::new(settings(tmp.path()));
        assert!(store.is_empty());
        let report = store.reload();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.loaded, ["a.test", "b.test"]);
        assert_eq!(store.live_domains(), ["a.test", "b.test"]);

        assert_eq!(serve(&store, &ca, "a.test").unwrap(), a.cert_der.to_vec());
        assert_eq!(serve(&store, &ca, "b.test").unwrap(), b.cert_der.to_vec());
        assert_eq!(
            serve(&store, &ca, "www.b.test").unwrap(),
            b.cert_der.to_vec()
        );
        assert_eq!(serve(&store, &ca, "A.TEST").unwrap(), a.cert_der.to_vec());

        // Unknown SNI: the server refuses, and the proxy's metric sees "no_certificate".
        let hs = handshake_in_memory(
            server_config(store.clone(), &TlsPolicy::default()),
            ca.client_config(),
            "c.test",
        );
        assert!(matches!(
            hs.client_error,
            Some(rustls::Error::AlertReceived(AlertDescription::AccessDenied))
        ));
        let server_err = hs.server_error.expect("server error");
        assert_eq!(
            HandshakeFailure::from_rustls(&server_err),
            HandshakeFailure::NoCertificate
        );

        let summary = store.live_summary("b.test").unwrap();
        assert_eq!(summary.key_algorithm, "rsa-2048");
        assert_eq!(summary.names, ["b.test", "www.b.test"]);
        assert_eq!(summary.chain_len, 2);
        assert!(!summary.key_too_open);
        assert_eq!(
            store.live_summary("a.test").unwrap().key_algorithm,
            "ecdsa-p256"
        );

        // An unchanged rescan reuses the live pairs.
        let again = store.reload();
        assert!(
            again.loaded.is_empty() && again.unchanged.len() == 2,
            "{again:?}"
        );
    }

    #[test]
    fn wildcard_and_exact_precedence() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let wild = ca.leaf(&["*.b.test"]);
        let exact = ca.leaf(&["x.b.test"]);
        put(tmp.path(), "_.b.test", &wild);
        put(tmp.path(), "x.b.test", &exact);
        let store = CertStore::new(settings(tmp.path()));
        assert!(store.reload().is_ok());

        assert_eq!(
            serve(&store, &ca, "y.b.test").unwrap(),
            wild.cert_der.to_vec()
        );
        assert_eq!(
            serve(&store, &ca, "x.b.test").unwrap(),
            exact.cert_der.to_vec()
        );
        assert!(refused(serve(&store, &ca, "b.test")));
        assert!(refused(serve(&store, &ca, "z.y.b.test")));
    }

    #[test]
    fn own_directory_wins_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        // a.test's certificate also names b.test; b.test/ has its own.
        let a = ca.leaf(&["a.test", "b.test"]);
        let b = ca.leaf(&["b.test"]);
        put(tmp.path(), "a.test", &a);
        put(tmp.path(), "b.test", &b);
        let store = CertStore::new(settings(tmp.path()));
        assert!(store.reload().is_ok());
        assert_eq!(serve(&store, &ca, "b.test").unwrap(), b.cert_der.to_vec());
        assert_eq!(serve(&store, &ca, "a.test").unwrap(), a.cert_der.to_vec());
    }

    #[test]
    fn default_domain_answers_missing_and_unknown_sni() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let a = ca.leaf(&["a.test"]);
        put(tmp.path(), "a.test", &a);
        let store = CertStore::new(CertSettings {
            default_domain: Some("A.test".into()),
            ..settings(tmp.path())
        });
        store.reload();

        // No SNI at all: the default certificate (which the client accepts for a.test).
        let mut no_sni = (*ca.client_config()).clone();
        no_sni.enable_sni = false;
        let hs = handshake_in_memory(
            server_config(store.clone(), &TlsPolicy::default()),
            Arc::new(no_sni),
            "a.test",
        );
        assert!(hs.is_ok(), "{hs:?}");
        assert_eq!(hs.leaf().unwrap().as_ref(), a.cert_der.as_ref());

        // Unknown SNI: a certificate is served (the default), which this client rejects by name.
        assert!(matches!(
            serve(&store, &ca, "other.test"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForNameContext { .. }
            ))
        ));
        let served = store.resolve_name(Some("other.test")).unwrap();
        assert_eq!(served.cert[0].as_ref(), a.cert_der.as_ref());
        assert!(store.resolve_name(None).is_some());
    }

    #[test]
    fn torn_rotation_keeps_old_pair_until_both_files_land() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let old = ca.leaf(&["a.test"]);
        let new = ca.leaf(&["a.test"]);
        let dir = put_dir(tmp.path(), "a.test", &old);
        let store = CertStore::new(settings(tmp.path()));
        store.reload();

        // Key first (vault-agent's order), then chain.
        write_atomic(&dir.join("key.pem"), new.key_pem.as_bytes()).unwrap();
        let report = store.reload();
        assert!(
            matches!(
                report.kept_previous[..],
                [(_, CertError::KeyMismatch { .. })]
            ),
            "{report:?}"
        );
        assert_eq!(serve(&store, &ca, "a.test").unwrap(), old.cert_der.to_vec());
        write_atomic(&dir.join("chain.pem"), new.chain_pem.as_bytes()).unwrap();
        assert_eq!(store.reload().loaded, ["a.test"]);
        assert_eq!(serve(&store, &ca, "a.test").unwrap(), new.cert_der.to_vec());

        // Chain first, then key.
        let newer = ca.leaf(&["a.test"]);
        write_atomic(&dir.join("chain.pem"), newer.chain_pem.as_bytes()).unwrap();
        assert_eq!(store.reload().kept_previous.len(), 1);
        assert_eq!(serve(&store, &ca, "a.test").unwrap(), new.cert_der.to_vec());
        write_atomic(&dir.join("key.pem"), newer.key_pem.as_bytes()).unwrap();
        assert!(store.reload().is_ok());
        assert_eq!(
            serve(&store, &ca, "a.test").unwrap(),
            newer.cert_der.to_vec()
        );
    }

    fn put_dir(dir: &Path, domain: &str, pair: &TestPair) -> std::path::PathBuf {
        write_pair(dir, domain, pair, "chain.pem", "key.pem").unwrap()
    }

    #[test]
    fn broken_files_keep_previous_pair_and_removed_dir_drops_it() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let good = ca.leaf(&["a.test"]);
        let dir = put_dir(tmp.path(), "a.test", &good);
        let store = CertStore::new(settings(tmp.path()));
        assert!(store.reload().is_ok());
        let truncated = &good.chain_pem[..good.chain_pem.len() / 3];
        // Cut after the leaf: inside the CA's base64, and inside the CA's BEGIN line.
        let leaf_end = good.chain_pem.find("-----END CERTIFICATE-----\n").unwrap() + 26;
        let in_ca = &good.chain_pem[..leaf_end + 100];
        let in_begin = &good.chain_pem[..leaf_end + 8];
        let other = ca.leaf(&["other.test"]);
        let cases: [(&str, &[u8], &str); 8] = [
            ("chain.pem", b"garbage\n", "no_certificate"),
            ("chain.pem", b"", "no_certificate"),
            ("chain.pem", truncated.as_bytes(), "pem"),
            ("chain.pem", in_ca.as_bytes(), "pem"),
            ("chain.pem", in_begin.as_bytes(), "pem"),
            ("key.pem", b"", "no_key"),
            (
                "key.pem",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "unsupported_key",
            ),
            ("chain.pem", other.chain_pem.as_bytes(), "name_mismatch"),
        ];
        for (file, bytes, kind) in cases {
            write_atomic(&dir.join(file), bytes).unwrap();
            let report = store.reload();
            assert_eq!(report.kept_previous.len(), 1, "{file} {kind}: {report:?}");
            assert_eq!(report.kept_previous[0].1.kind(), kind, "{report:?}");
            let message = report.kept_previous[0].1.to_string();
            assert!(
                message.contains(&*dir.join(file).to_string_lossy()),
                "{message}"
            );
            assert_eq!(
                serve(&store, &ca, "a.test").unwrap(),
                good.cert_der.to_vec(),
                "{kind}"
            );
            // Same broken file on the next rescan: still kept, logged only once.
            let logged = store.state.lock().unwrap().failures.len();
            assert_eq!(store.reload().kept_previous.len(), 1);
            assert_eq!(store.state.lock().unwrap().failures.len(), logged);
            // Restore.
            write_pair(tmp.path(), "a.test", &good, "chain.pem", "key.pem").unwrap();
            assert!(store.reload().is_ok());
        }

        // One file removed mid-rotation: keep.
        fs::remove_file(dir.join("key.pem")).unwrap();
        let report = store.reload();
        assert!(
            matches!(report.kept_previous[..], [(_, CertError::Missing { .. })]),
            "{report:?}"
        );
        assert_eq!(
            serve(&store, &ca, "a.test").unwrap(),
            good.cert_der.to_vec()
        );

        // Whole directory gone: removed.
        fs::remove_dir_all(&dir).unwrap();
        let report = store.reload();
        assert_eq!(report.removed, ["a.test"]);
        assert!(store.is_empty());
        assert!(refused(serve(&store, &ca, "a.test")));
    }

    #[test]
    fn log_dedup_tracks_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let dir = put_dir(tmp.path(), "a.test", &ca.leaf(&["a.test"]));
        write_atomic(&dir.join("chain.pem"), b"junk").unwrap();
        let store = CertStore::new(settings(tmp.path()));
        assert_eq!(store.reload().failed.len(), 1);
        let first = store
            .state
            .lock()
            .unwrap()
            .failures
            .get("a.test")
            .copied()
            .unwrap();
        store.reload();
        assert_eq!(
            store.state.lock().unwrap().failures.get("a.test"),
            Some(&first)
        );
        write_atomic(&dir.join("chain.pem"), b"other junk").unwrap();
        store.reload();
        assert_ne!(
            store.state.lock().unwrap().failures.get("a.test"),
            Some(&first)
        );
    }

    #[test]
    fn expired_served_only_without_a_valid_alternative() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let expired = ca.leaf_expired(&["x.b.test"]);
        put(tmp.path(), "x.b.test", &expired);
        let store = CertStore::new(settings(tmp.path()));

        // Alone: served (the client rejects it as expired, proving it was sent).
        let report = store.reload();
        assert_eq!(report.expired_served, ["x.b.test"]);
        assert!(store.live_summary("x.b.test").unwrap().expired);
        assert!(matches!(
            serve(&store, &ca, "x.b.test"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ExpiredContext { .. }
            ))
        ));

        // A valid wildcard covers the name: it wins over the expired exact certificate.
        let wild = ca.leaf(&["*.b.test"]);
        put(tmp.path(), "_.b.test", &wild);
        let report = store.reload();
        assert!(report.expired_served.is_empty(), "{report:?}");
        assert_eq!(
            serve(&store, &ca, "x.b.test").unwrap(),
            wild.cert_der.to_vec()
        );

        // A valid previous pair is not replaced by an expired one.
        let valid = ca.leaf(&["a.test"]);
        put(tmp.path(), "a.test", &valid);
        store.reload();
        put(tmp.path(), "a.test", &ca.leaf_expired(&["a.test"]));
        let report = store.reload();
        assert!(
            matches!(report.kept_previous[..], [(_, CertError::Expired { .. })]),
            "{report:?}"
        );
        assert_eq!(
            serve(&store, &ca, "a.test").unwrap(),
            valid.cert_der.to_vec()
        );
    }

    #[test]
    fn not_yet_valid_and_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        put(
            tmp.path(),
            "future.test",
            &ca.leaf_not_yet_valid(&["future.test"]),
        );
        let dir = put_dir(tmp.path(), "open.test", &ca.leaf(&["open.test"]));
        set_mode(&dir.join("key.pem"), 0o644).unwrap();
        let store = CertStore::new(settings(tmp.path()));
        let report = store.reload();
        assert!(
            matches!(report.failed[..], [(ref d, CertError::NotYetValid { .. })] if d == "future.test")
        );
        assert!(store.live_summary("open.test").unwrap().key_too_open);
    }

    #[test]
    fn scan_reports_every_directory_without_side_effects() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        put(tmp.path(), "a.test", &ca.leaf(&["a.test"]));
        put(tmp.path(), "old.test", &ca.leaf_expired(&["old.test"]));
        let bad = put_dir(tmp.path(), "bad.test", &ca.leaf(&["bad.test"]));
        write_atomic(
            &bad.join("key.pem"),
            ca.leaf(&["bad.test"]).key_pem.as_bytes(),
        )
        .unwrap();
        fs::write(tmp.path().join("stray-file"), b"x").unwrap();
        fs::create_dir(tmp.path().join(".hidden")).unwrap();

        let results = scan(&settings(tmp.path())).unwrap();
        let names: Vec<&str> = results.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(names, ["a.test", "bad.test", "old.test"]);
        assert!(
            results[0]
                .1
                .as_ref()
                .is_ok_and(|s| !s.expired && s.names == ["a.test"])
        );
        assert!(matches!(results[1].1, Err(CertError::KeyMismatch { .. })));
        assert!(results[2].1.as_ref().is_ok_and(|s| s.expired));

        assert!(matches!(
            scan(&settings(&tmp.path().join("missing"))),
            Err(CertError::ReadDir { .. })
        ));
    }

    #[test]
    fn missing_directory_keeps_snapshot_and_metrics_follow_domains() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let certs = tmp.path().join("certs");
        put(
            &certs,
            "metrics.store.test",
            &ca.leaf(&["metrics.store.test"]),
        );
        let store = CertStore::new(settings(&certs));
        store.reload();
        let gauge = || {
            prometheus::gather()
                .into_iter()
                .find(|f| f.name() == "edgepop_cert_not_after_timestamp_seconds")
                .map(|f| {
                    f.get_metric().iter().any(|m| {
                        m.get_label()
                            .iter()
                            .any(|l| l.value() == "metrics.store.test")
                    })
                })
                .unwrap_or(false)
        };
        assert!(gauge());

        // The whole directory vanishing (unmounted?) keeps what is served.
        let moved = tmp.path().join("moved");
        fs::rename(&certs, &moved).unwrap();
        let report = store.reload();
        assert!(matches!(report.dir_error, Some(CertError::ReadDir { .. })));
        assert_eq!(store.live_domains(), ["metrics.store.test"]);

        fs::rename(&moved, &certs).unwrap();
        fs::remove_dir_all(certs.join("metrics.store.test")).unwrap();
        assert_eq!(store.reload().removed, ["metrics.store.test"]);
        assert!(!gauge());
    }
}
