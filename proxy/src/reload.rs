//! Background tasks that keep a running edgepop current: the certificate watcher, the DNS refresher, and the
//! SIGHUP handler that re-reads the configuration and rescans certificates.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::{Config, Site};
use crate::metrics;
use crate::state::State;

/// Runs `edgepop_certs::watch` for the life of the process.
pub(crate) struct CertWatcher(pub(crate) Arc<edgepop_certs::CertStore>);

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, shutdown: ShutdownWatch) {
        edgepop_certs::watch(self.0.clone(), shutdown).await;
    }
}

/// Keeps resolved upstream names fresh in the background.
pub(crate) struct DnsRefresher(pub(crate) Arc<edgepop_resolver::Resolver>);

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run_refresher(shutdown).await;
    }
}

/// SIGHUP: rescan certificates, re-read the configuration and, when valid, swap the request-facing state.
pub(crate) struct Reloader {
    /// The configuration the process started with: what sockets, threads and long-lived parts were built from.
    booted: Config,
    /// The configuration requests currently see.
    running: std::sync::Mutex<Config>,
    state: Arc<ArcSwap<State>>,
    certs: Option<Arc<edgepop_certs::CertStore>>,
    resolver: Option<Arc<edgepop_resolver::Resolver>>,
    /// SIGHUP, subscribed to before the server starts.
    hup: std::sync::Mutex<Option<Signal>>,
}

/// Subscribes to SIGHUP at once, through a throw-away runtime. From here on a SIGHUP is queued for the reload task
/// (tokio's handler stays installed for the life of the process, and the subscription is plain channel state that
/// pingora's runtimes then drive) instead of killing the process, the default action, while pingora is starting.
fn subscribe_early() -> Option<Signal> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ok()?;
    let _enter = rt.enter();
    signal(SignalKind::hangup()).ok()
}

impl Reloader {
    pub(crate) fn new(
        config: Config,
        state: Arc<ArcSwap<State>>,
        certs: Option<Arc<edgepop_certs::CertStore>>,
        resolver: Option<Arc<edgepop_resolver::Resolver>>,
    ) -> Self {
        Reloader {
            booted: config.clone(),
            running: std::sync::Mutex::new(config),
            state,
            certs,
            resolver,
            hup: std::sync::Mutex::new(subscribe_early()),
        }
    }

    fn reload(&self) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        let path = running.path.clone();
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(errors) => {
                // Log first, then count: whoever waits on the metric then finds the lines written.
                for e in &errors.0 {
                    tracing::error!("reload rejected, keeping the running configuration: {e}");
                }
                metrics::config_reloaded(false);
                return;
            }
        };
        let mut diff = Diff::between(&running, &new);
        // Against the start-up configuration: a listener change stays pending until a restart, however many
        // reloads happen in between.
        diff.restart = restart_needed(&self.booted, &new);
        for what in &diff.restart {
            tracing::warn!(
                "{what} changed; this needs a restart and takes effect only after a restart"
            );
        }
        self.state.store(Arc::new(State::new(&new)));
        if let Some(resolver) = &self.resolver {
            crate::warm_upstream_names(resolver, &new);
        }
        metrics::config_reloaded(true);
        tracing::info!(
            path = %path.display(),
            sites = new.sites.len(),
            changes = %diff,
            "configuration reloaded"
        );
        *running = new;
    }
}

/// What differs between two valid configurations: `edgepop check --diff` prints it, SIGHUP logs it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    /// Changes a reload applies to new requests: `site b.test: added`, `upstream app: changed (servers)`.
    pub(crate) live: Vec<String>,
    /// Parts that take effect only after a restart.
    pub(crate) restart: Vec<&'static str>,
}

impl Diff {
    pub(crate) fn between(old: &Config, new: &Config) -> Diff {
        let mut live = Vec::new();
        // Sites are named by their first host name, as in metrics and logs.
        let site_name = |s: &Site| s.names.first().cloned().unwrap_or_default();
        let old_sites: BTreeMap<String, &Site> =
            old.sites.iter().map(|s| (site_name(s), s)).collect();
        let new_sites: BTreeMap<String, &Site> =
            new.sites.iter().map(|s| (site_name(s), s)).collect();
        for (name, site) in &new_sites {
            match old_sites.get(name) {
                None => live.push(format!("site {name}: added")),
                Some(o) if o != site => {
                    let mut what = Vec::new();
                    if o.names != site.names {
                        what.push("names");
                    }
                    if o.upstream != site.upstream {
                        what.push("upstream");
                    }
                    if o.cache != site.cache {
                        what.push("cache");
                    }
                    if what.is_empty() {
                        what.push("other settings");
                    }
                    live.push(format!("site {name}: changed ({})", what.join(", ")));
                }
                Some(_) => {}
            }
        }
        for name in old_sites.keys().filter(|n| !new_sites.contains_key(*n)) {
            live.push(format!("site {name}: removed"));
        }
        for (name, up) in &new.upstreams {
            match old.upstreams.get(name) {
                None => live.push(format!("upstream {name}: added")),
                Some(o) if o != up => {
                    let mut what = Vec::new();
                    if o.servers != up.servers {
                        what.push("servers");
                    }
                    if (
                        o.connect_timeout,
                        o.read_timeout,
                        o.send_timeout,
                        o.keepalive_timeout,
                    ) != (
                        up.connect_timeout,
                        up.read_timeout,
                        up.send_timeout,
                        up.keepalive_timeout,
                    ) {
                        what.push("timeouts");
                    }
                    if what.is_empty() {
                        what.push("other settings");
                    }
                    live.push(format!("upstream {name}: changed ({})", what.join(", ")));
                }
                Some(_) => {}
            }
        }
        for name in old
            .upstreams
            .keys()
            .filter(|n| !new.upstreams.contains_key(*n))
        {
            live.push(format!("upstream {name}: removed"));
        }
        // `http.http2` is ALPN on the TLS acceptor, built once: it is in `restart_needed`.
        let mut http = new.http.clone();
        http.http2 = old.http.http2;
        if old.http != http {
            live.push("http: changed".to_owned());
        }
        if old.compression != new.compression {
            live.push("compression: changed".to_owned());
        }
        Diff {
            live,
            restart: restart_needed(old, new),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }

    /// One line per change.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = self.live.clone();
        out.extend(
            self.restart
                .iter()
                .map(|what| format!("{what}: changed, needs restart")),
        );
        out
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.lines().join("; "))
    }
}

/// Parts of the configuration that live in sockets, threads or long-lived components: a reload does not apply
/// them. Every field of [`Config`] is named here, so a new field does not compile until it is classified: list it
/// below if `build` uses it once, or with `http: _` (and in `Diff::between`) if `State::new` carries it to requests.
pub(crate) fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let Config {
        path: _,
        threads,
        drain_timeout,
        upstream_keepalive_pool,
        user,
        group,
        allow_root,
        admin_address,
        admin_token_file,
        cache,
        listeners,
        tls,
        dns,
        access_log,
        // Applied by a reload (see `Diff::between` and `State::new`), except `http.http2` (ALPN).
        http,
        compression: _,
        upstreams: _,
        sites: _,
    } = new;
    let mut out = Vec::new();
    let mut check = |changed: bool, what: &'static str| {
        if changed {
            out.push(what);
        }
    };
    check(old.listeners != *listeners, "listener");
    check(old.admin_address != *admin_address, "admin.address");
    check(
        old.admin_token_file != *admin_token_file,
        "admin.token-file",
    );
    check(old.threads != *threads, "server.threads");
    check(old.drain_timeout != *drain_timeout, "server.drain-timeout");
    check(
        old.upstream_keepalive_pool != *upstream_keepalive_pool,
        "server.upstream-keepalive-pool",
    );
    check(
        (&old.user, &old.group, old.allow_root) != (user, group, *allow_root),
        "server.user/group/allow-root",
    );
    check(old.tls != *tls, "tls");
    check(old.dns != *dns, "dns");
    check(old.access_log != *access_log, "access-log");
    check(old.cache != *cache, "cache");
    check(old.http.http2 != http.http2, "http.http2");
    out
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let early = self.hup.lock().ok().and_then(|mut h| h.take());
        let Some(mut hup) = early.or_else(|| signal(SignalKind::hangup()).ok()) else {
            tracing::error!("cannot install the SIGHUP handler; reload by restarting");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = shutdown.changed() => return,
            }
            tracing::info!("SIGHUP: reloading configuration and rescanning certificates");
            if let Some(certs) = &self.certs {
                certs.request_rescan();
            }
            self.reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.app]\nservers = [\"127.0.0.1:3000\"]\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n";

    fn parse(text: &str) -> Config {
        Config::parse("edgepop.toml", text).unwrap()
    }

    #[test]
    fn diff_names_sites_upstreams_and_what_needs_a_restart() {
        let base = parse(BASE);
        for (new, want) in [
            (BASE.to_owned(), vec![]),
            (
                format!("{BASE}[[site]]\nnames = [\"b.test\"]\nupstream = \"app\"\n"),
                vec!["site b.test: added"],
            ),
            (
                BASE.replace("a.test\"]", "a.test\", \"www.a.test\"]"),
                vec!["site a.test: changed (names)"],
            ),
            (
                BASE.replace("\"a.test\"", "\"c.test\""),
                vec!["site c.test: added", "site a.test: removed"],
            ),
            (
                BASE.replace(":3000", ":3001"),
                vec!["upstream app: changed (servers)"],
            ),
            (
                BASE.replace(
                    "servers = [\"127.0.0.1:3000\"]",
                    "servers = [\"127.0.0.1:3000\"]\nread-timeout = \"9s\"",
                ),
                vec!["upstream app: changed (timeouts)"],
            ),
            (
                format!(
                    "{BASE}[upstream.api]\nservers = [\"127.0.0.1:4000\"]\n[http]\nunknown-host-status = 404\n"
                ),
                vec!["upstream api: added", "http: changed"],
            ),
            (
                format!("{BASE}[http]\nhttp2 = false\n"),
                vec!["http.http2: changed, needs restart"],
            ),
            (
                format!("{BASE}[compression]\nenabled = false\n"),
                vec!["compression: changed"],
            ),
            (
                BASE.replace(":8080", ":8081"),
                vec!["listener: changed, needs restart"],
            ),
            (
                format!(
                    "[server]\nthreads = 2\nuser = \"edgepop\"\n[dns]\nmin-ttl = \"1s\"\n{BASE}"
                ),
                vec![
                    "server.threads: changed, needs restart",
                    "server.user/group/allow-root: changed, needs restart",
                    "dns: changed, needs restart",
                ],
            ),
        ] {
            let diff = Diff::between(&base, &parse(&new));
            assert_eq!(diff.lines(), want, "{new}");
            assert_eq!(diff.is_empty(), want.is_empty());
        }
    }

    #[test]
    fn diff_display_is_one_line() {
        let base = parse(BASE);
        assert_eq!(Diff::between(&base, &base).to_string(), "none");
        let new = parse(&format!(
            "{}[[site]]\nnames = [\"b.test\"]\nupstream = \"app\"\n",
            BASE.replace(":8080", ":8081")
        ));
        assert_eq!(
            Diff::between(&base, &new).to_string(),
            "site b.test: added; listener: changed, needs restart"
        );
    }
}
