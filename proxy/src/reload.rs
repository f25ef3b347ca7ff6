//! Background tasks that keep a running edgepop current: the certificate watcher, the DNS refresher, and the
//! SIGHUP handler that re-reads the configuration and rescans certificates.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
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
    running: std::sync::Mutex<Config>,
    state: Arc<ArcSwap<State>>,
    certs: Option<Arc<edgepop_certs::CertStore>>,
    resolver: Option<Arc<edgepop_resolver::Resolver>>,
}

impl Reloader {
    pub(crate) fn new(
        config: Config,
        state: Arc<ArcSwap<State>>,
        certs: Option<Arc<edgepop_certs::CertStore>>,
        resolver: Option<Arc<edgepop_resolver::Resolver>>,
    ) -> Self {
        Reloader {
            running: std::sync::Mutex::new(config),
            state,
            certs,
            resolver,
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
                metrics::CONFIG_RELOADS.with_label_values(&["error"]).inc();
                for e in &errors.0 {
                    tracing::error!("reload rejected, keeping the running configuration: {e}");
                }
                return;
            }
        };
        for what in restart_needed(&running, &new) {
            tracing::warn!("{what} changed; this takes effect only after a restart");
        }
        self.state.store(Arc::new(State::new(&new)));
        if let Some(resolver) = &self.resolver {
            crate::warm_upstream_names(resolver, &new);
        }
        metrics::CONFIG_RELOADS.with_label_values(&["ok"]).inc();
        tracing::info!(path = %path.display(), sites = new.sites.len(), "configuration reloaded");
        *running = new;
    }
}

/// Parts of the configuration that live in sockets, threads or long-lived components.
pub(crate) fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listeners != new.listeners {
        out.push("listener");
    }
    if old.admin_address != new.admin_address {
        out.push("admin.address");
    }
    if old.threads != new.threads {
        out.push("server.threads");
    }
    if old.tls != new.tls {
        out.push("tls");
    }
    if old.dns != new.dns {
        out.push("dns");
    }
    if old.access_log != new.access_log {
        out.push("access-log");
    }
    out
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
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
