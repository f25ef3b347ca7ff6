//! The part of the configuration that requests read: sites, upstreams, limits. Built once per (re)load and
//! swapped atomically, so a request sees one consistent snapshot from start to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;

use crate::config::{Config, HttpConfig, SiteCache, Upstream};
use crate::routes::Router;

/// One snapshot of the request-facing configuration.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) router: Router,
    pub(crate) sites: Vec<SiteState>,
    pub(crate) http: HttpConfig,
}

/// A site, ready for the request path.
#[derive(Debug)]
pub(crate) struct SiteState {
    /// The first configured name: the `site` label of metrics and logs.
    pub(crate) label: Arc<str>,
    pub(crate) upstream: Arc<UpstreamState>,
    pub(crate) cache: SiteCache,
}

/// An upstream, ready for the request path.
#[derive(Debug)]
pub(crate) struct UpstreamState {
    pub(crate) config: Arc<Upstream>,
    /// Set when every server is an IP literal: the addresses, computed once.
    pub(crate) fixed: Option<Arc<[SocketAddr]>>,
    /// Round-robin position.
    next: AtomicUsize,
}

impl UpstreamState {
    /// Picks the next address round-robin among `addrs` (not empty).
    pub(crate) fn pick(&self, addrs: &[SocketAddr]) -> Option<SocketAddr> {
        if addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(addrs[i % addrs.len()])
    }
}

impl State {
    pub(crate) fn new(config: &Config) -> State {
        let upstreams: std::collections::BTreeMap<&str, Arc<UpstreamState>> = config
            .upstreams
            .iter()
            .map(|(name, up)| {
                (
                    name.as_str(),
                    Arc::new(UpstreamState {
                        config: up.clone(),
                        fixed: up
                            .servers
                            .iter()
                            .map(|s| s.ip.map(|ip| SocketAddr::new(ip, s.port)))
                            .collect::<Option<Vec<_>>>()
                            .map(Arc::from),
                        next: AtomicUsize::new(0),
                    }),
                )
            })
            .collect();
        let mut sites = Vec::with_capacity(config.sites.len());
        let mut names = Vec::with_capacity(config.sites.len());
        for site in &config.sites {
            // Validation guarantees the reference; a dangling one is skipped rather than panicking.
            let Some(upstream) = upstreams.get(site.upstream.as_str()) else {
                continue;
            };
            names.push((site.names.as_slice(), sites.len()));
            sites.push(SiteState {
                label: site
                    .names
                    .first()
                    .map_or_else(|| Arc::from("-"), |n| Arc::from(n.as_str())),
                upstream: upstream.clone(),
                cache: site.cache.clone(),
            });
        }
        let router = Router::new(names);
        State {
            router,
            sites,
            http: config.http.clone(),
        }
    }
}

/// Header values computed once.
pub(crate) static HTTPS: HeaderValue = HeaderValue::from_static("https");
pub(crate) static HTTP: HeaderValue = HeaderValue::from_static("http");
