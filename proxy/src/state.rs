//! The part of the configuration that requests read: sites, upstreams, limits. Built once per (re)load and
//! swapped atomically, so a request sees one consistent snapshot from start to end.

use std::sync::Arc;

use http::HeaderValue;

use crate::config::{CompressionConfig, Config, HttpConfig, SiteBehaviour, SiteCache};
use crate::routes::Router;
pub(crate) use crate::upstream::UpstreamState;

/// One snapshot of the request-facing configuration.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) router: Router,
    pub(crate) sites: Vec<SiteState>,
    pub(crate) http: HttpConfig,
    pub(crate) compression: CompressionConfig,
    /// Every upstream (the health service walks them; sites share them).
    pub(crate) upstreams: Vec<Arc<UpstreamState>>,
}

/// A site, ready for the request path.
#[derive(Debug)]
pub(crate) struct SiteState {
    pub(crate) upstream: Arc<UpstreamState>,
    pub(crate) cache: SiteCache,
    pub(crate) behaviour: SiteBehaviour,
    pub(crate) metrics: crate::metrics::SiteMetrics,
}

impl State {
    pub(crate) fn new(config: &Config) -> State {
        let upstreams: std::collections::BTreeMap<&str, Arc<UpstreamState>> = config
            .upstreams
            .iter()
            .map(|(name, up)| (name.as_str(), Arc::new(UpstreamState::new(up.clone()))))
            .collect();
        let mut sites = Vec::with_capacity(config.sites.len());
        let mut names = Vec::with_capacity(config.sites.len());
        for site in &config.sites {
            // Validation guarantees the reference; a dangling one is skipped rather than panicking.
            let Some(upstream) = upstreams.get(site.upstream.as_str()) else {
                continue;
            };
            names.push((site.names.as_slice(), sites.len()));
            let label: Arc<str> = site
                .names
                .first()
                .map_or_else(|| Arc::from("-"), |n| Arc::from(n.as_str()));
            sites.push(SiteState {
                metrics: crate::metrics::SiteMetrics::new(label),
                upstream: upstream.clone(),
                cache: site.cache.clone(),
                behaviour: site.behaviour.clone(),
            });
        }
        let router = Router::new(names);
        State {
            router,
            sites,
            http: config.http.clone(),
            compression: config.compression.clone(),
            upstreams: upstreams.into_values().collect(),
        }
    }
}

/// Header values computed once.
pub(crate) static HTTPS: HeaderValue = HeaderValue::from_static("https");
pub(crate) static HTTP: HeaderValue = HeaderValue::from_static("http");
