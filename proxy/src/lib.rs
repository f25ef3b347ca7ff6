//! edgepop: an edge reverse proxy on pingora that replaces nginx + unbound on a small machine.
//!
//! This crate holds the binary's library: configuration ([`Config`]), the public listeners (PROXY protocol, TLS
//! with live certificates, HTTP/1.1 and HTTP/2), the proxy logic, the admin listener, metrics and the access log.
//! Caching, certificates and DNS live in their own crates (`edgepop-cache`, `edgepop-certs`,
//! `edgepop-resolver`). It does not obtain certificates (vault-agent does) and does not run as a DNS server.
//!
//! ```
//! let config = edgepop::Config::parse("edgepop.toml", r#"
//!     [[listener]]
//!     address = "127.0.0.1:8080"
//!     [upstream.app]
//!     servers = ["127.0.0.1:3000"]
//!     [[site]]
//!     names = ["example.com"]
//!     upstream = "app"
//! "#).expect("valid");
//! assert_eq!(config.sites[0].upstream, "app");
//! ```

mod access_log;
mod admin;
mod cache;
mod cli;
mod compress;
mod config;
pub mod demo;
mod header_deadline;
mod health;
mod listener;
mod metrics;
mod privdrop;
mod proxy_protocol;
mod reload;
mod routes;
mod service;
mod signals;
mod sni;
mod state;
mod telemetry;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;

pub use cli::main;
pub use config::{
    AccessLogConfig, AccessLogFormat, Config, ConfigError, ConfigErrors, Listener, ProxyProtocol,
    Site, Upstream,
};
pub use telemetry::{DEFAULT_LOG, init_tracing};

/// Internals exposed for the criterion benches and fuzz targets only; not a stable API.
#[doc(hidden)]
pub mod fuzz_api; // what fuzz/ targets and the stable corpus test run (issue 10)
#[doc(hidden)]
pub mod bench_api {
    pub use crate::proxy_protocol::{Parsed, parse as parse_proxy_header};

    /// The cache key for `template` (nginx syntax, e.g. `$scheme$host$request_uri`), as the proxy builds it.
    pub fn cache_key(
        template: &str,
        tls: bool,
        host: &str,
        path_and_query: &str,
    ) -> Option<String> {
        let parts = crate::config::parse_key_template(template).ok()?;
        let req =
            pingora::http::RequestHeader::build("GET", path_and_query.as_bytes(), None).ok()?;
        Some(crate::cache::primary_key(&parts, tls, host, &req))
    }

    /// Content-coding negotiation over prebuilt compression settings (built once, as the proxy's
    /// per-reload state is), so a bench measures `negotiate` alone.
    #[derive(Debug, Clone)]
    pub struct Negotiator(crate::config::CompressionConfig);

    impl Negotiator {
        /// The default `[compression]` settings (gzip, brotli and zstd as shipped), or `None` if the
        /// minimal configuration they come from no longer parses.
        pub fn default_config() -> Option<Negotiator> {
            crate::Config::parse("bench.toml", "[[listener]]\naddress = \"127.0.0.1:1\"\n")
                .ok()
                .map(|c| Negotiator(c.compression))
        }

        /// The coding the proxy picks for this Accept-Encoding value (`"identity"`, `"gzip"`, `"br"`, `"zstd"`).
        pub fn negotiate(&self, accept_encoding: &http::HeaderValue) -> &'static str {
            crate::compress::negotiate(Some(accept_encoding), &self.0).token()
        }
    }

    /// A `GET` for `path_and_query` with the headers a desktop browser sends (host, user-agent,
    /// accept*, cookie, sec-fetch-*, and an `x-forwarded-for` from a previous hop).
    pub fn browser_request(
        host: &str,
        path_and_query: &str,
    ) -> pingora::Result<pingora::http::RequestHeader> {
        let mut req =
            pingora::http::RequestHeader::build("GET", path_and_query.as_bytes(), Some(16))?;
        req.insert_header(http::header::HOST, host)?;
        req.insert_header(
            http::header::USER_AGENT,
            "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
        )?;
        req.insert_header(
            http::header::ACCEPT,
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        )?;
        req.insert_header(http::header::ACCEPT_LANGUAGE, "en-GB,en;q=0.7,de;q=0.3")?;
        req.insert_header(http::header::ACCEPT_ENCODING, "gzip, deflate, br, zstd")?;
        req.insert_header(http::header::CONNECTION, "keep-alive")?;
        req.insert_header(
            http::header::COOKIE,
            "session=4f1c2e9a7b3d8c6e5f0a1b2c3d4e5f60; theme=dark",
        )?;
        req.insert_header(http::header::UPGRADE_INSECURE_REQUESTS, "1")?;
        req.insert_header("sec-fetch-dest", "document")?;
        req.insert_header("sec-fetch-mode", "navigate")?;
        req.insert_header("sec-fetch-site", "none")?;
        req.insert_header("sec-fetch-user", "?1")?;
        req.insert_header("priority", "u=0, i")?;
        req.insert_header("x-forwarded-for", "198.51.100.7")?;
        Ok(req)
    }

    /// The forwarded-header insertions of `upstream_request_filter`: the same function the proxy calls.
    pub fn forward_headers(
        req: &mut pingora::http::RequestHeader,
        tls: bool,
        host: &str,
        client_ip: std::net::IpAddr,
    ) -> pingora::Result<()> {
        crate::service::forwarded_headers(
            req,
            tls,
            Some(host),
            Some(client_ip),
            crate::config::ForwardedFor::Append,
        )
    }
}

/// Why edgepop could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[source] ConfigErrors),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The access log could not be opened.
    #[error("cannot open the access log")]
    AccessLog(#[source] std::io::Error),
    /// The resolver could not be set up.
    #[error("cannot set up the DNS resolver")]
    Resolver(#[source] edgepop_resolver::ResolveError),
    /// The cache could not be opened.
    #[error("cannot open the cache")]
    Cache(#[source] edgepop_cache::CacheError),
    /// Started as root with neither `server.user` nor `server.allow-root`.
    #[error("refusing to run as root: set server.user (or server.allow-root = true)")]
    RefuseRoot,
    /// Switching to `server.user` / `server.group` failed.
    #[error("cannot switch to {what}")]
    Privileges {
        /// The user or group, as configured.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Some other start-up I/O failure.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Listeners bound before anything else runs (and before privileges are dropped).
pub struct BoundSockets {
    listeners: Vec<listener::Bound>,
    admin: Option<std::net::TcpListener>,
}

impl BoundSockets {
    /// Binds every public listener and the admin listener of `config`.
    pub fn bind(config: &Config) -> Result<BoundSockets, Error> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let bound = listener::Bound::bind(l.clone()).map_err(|source| Error::Bind {
                addr: l.address,
                source,
            })?;
            listeners.push(bound);
        }
        let admin = match config.admin_address {
            None => None,
            Some(addr) => Some(
                std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?,
            ),
        };
        Ok(BoundSockets { listeners, admin })
    }

    /// Actual addresses of the public listeners, in configuration order (port 0 resolved).
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Actual address of the admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }
}

/// Settings of the certs crate derived from the config.
pub(crate) fn cert_settings(config: &Config) -> edgepop_certs::CertSettings {
    edgepop_certs::CertSettings {
        dir: config.tls.certs_dir.clone(),
        chain_file: config.tls.chain_file.clone(),
        key_file: config.tls.key_file.clone(),
        default_domain: config.tls.default_cert.clone(),
        rescan_interval: config.tls.rescan_interval,
        ..edgepop_certs::CertSettings::default()
    }
}

fn resolver_settings(config: &Config) -> edgepop_resolver::ResolverSettings {
    edgepop_resolver::ResolverSettings {
        nameservers: config.dns.nameservers.clone(),
        ip_strategy: config.dns.ip_strategy,
        min_ttl: config.dns.min_ttl,
        max_ttl: config.dns.max_ttl,
        timeout: config.dns.timeout,
        serve_stale: config.dns.serve_stale,
        ..edgepop_resolver::ResolverSettings::default()
    }
}

/// Registers every upstream host name with the resolver so it is resolved at start and kept fresh, and the first
/// request never waits on DNS.
pub(crate) fn warm_upstream_names(resolver: &edgepop_resolver::Resolver, config: &Config) {
    for up in config.upstreams.values() {
        for server in up.servers.iter().filter(|s| s.ip.is_none()) {
            resolver.warm(&server.host);
        }
    }
}

/// What `edgepop check` found beyond the file itself: per-domain certificate state.
pub fn check_certificates(config: &Config) -> Vec<String> {
    if !config.listeners.iter().any(|l| l.tls) {
        return Vec::new();
    }
    let settings = cert_settings(config);
    let mut lines = Vec::new();
    let scanned = match edgepop_certs::scan(&settings) {
        Ok(s) => s,
        Err(e) => {
            lines.push(format!("warning: {}", error_chain(&e)));
            return lines;
        }
    };
    if scanned.is_empty() {
        lines.push(format!(
            "warning: {}: no certificate directories yet; TLS listeners will refuse handshakes until vault-agent writes one",
            settings.dir.display()
        ));
    }
    for (domain, result) in scanned {
        match result {
            Ok(summary) => lines.push(format!(
                "ok: {domain}: valid certificate for {} until {}",
                summary.names.join(", "),
                httpdate_fmt(summary.not_after)
            )),
            Err(e) => lines.push(format!(
                "warning: {domain}: no valid pair: {}",
                error_chain(&e)
            )),
        }
    }
    lines
}

fn httpdate_fmt(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("unix time {secs}")
}

/// `e: cause: cause` on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Builds the pingora server for `config` on already-bound sockets. [`run`] then runs it.
pub fn build(config: Config, sockets: BoundSockets) -> Result<(Server, RunArgs), Error> {
    metrics::init();
    let access_log = access_log::AccessLog::start(&config.access_log).map_err(Error::AccessLog)?;

    let any_tls = config.listeners.iter().any(|l| l.tls);
    let drain_timeout = config.drain_timeout;
    let certs = edgepop_certs::CertStore::new(cert_settings(&config));
    if any_tls {
        // The store logs each rejected pair itself (once); logging `report.failed` here doubled every line.
        certs.reload();
        tracing::info!(live = ?certs.live_domains(), "certificates loaded");
    }

    let resolver = Arc::new(
        edgepop_resolver::Resolver::new(resolver_settings(&config)).map_err(Error::Resolver)?,
    );
    warm_upstream_names(&resolver, &config);
    let state = Arc::new(ArcSwap::from_pointee(state::State::new(&config)));

    let mut conf = ServerConf {
        threads: config.threads,
        // Our signal watcher drains connections itself and then asks for a fast exit, so pingora's fixed grace
        // period (300 s by default) never runs.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: config.upstream_keepalive_pool,
        ..ServerConf::default()
    };
    conf.pid_file = String::new();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let conf = server.configuration.clone();

    let edge_cache = match &config.cache {
        None => None,
        Some(c) => {
            let storage = edgepop_cache::TieredStorage::open(edgepop_cache::CacheSettings {
                memory_max_bytes: c.memory_bytes,
                max_object_bytes: c.max_object_bytes,
                disk: c.disk.as_ref().map(|d| edgepop_cache::DiskSettings {
                    dir: d.path.clone(),
                    max_bytes: d.max_bytes,
                    inactive: d.inactive,
                }),
            })
            .map_err(Error::Cache)?
            .leak();
            let lock: &'static pingora::cache::lock::CacheKeyLockImpl =
                Box::leak(pingora::cache::lock::CacheLock::new_boxed(c.lock_timeout));
            Some(cache::EdgeCache {
                storage,
                lock,
                status_header: c.status_header,
            })
        }
    };
    let admin_token = match &config.admin_token_file {
        None => None,
        Some(path) => Some(admin::read_token(path).map_err(|source| Error::Io {
            what: format!("reading admin token file {}", path.display()),
            source,
        })?),
    };
    let storage = edge_cache.as_ref().map(|c| c.storage);
    let edge = service::Edge {
        state: state.clone(),
        resolver: resolver.clone(),
        access_log,
        cache: edge_cache,
    };
    let proxy = pingora::proxy::http_proxy(&conf, edge);

    let tls = any_tls.then(|| {
        let policy = edgepop_certs::TlsPolicy {
            session_cache_size: config.tls.session_cache_size,
            session_tickets: config.tls.session_tickets,
            alpn_h2: config.http.http2,
        };
        Arc::new(pingora::listeners::tls::Acceptor::from_server_config(
            edgepop_certs::server_config(certs.clone(), &policy),
        ))
    });

    let drain = listener::Drain::new();
    let listening = Arc::new(AtomicBool::new(false));
    server.add_service(listener::PublicListeners::new(
        sockets.listeners,
        proxy,
        tls,
        drain.clone(),
        config.threads,
        listening.clone(),
        state.clone(),
    ));

    let readiness = Arc::new(admin::Readiness {
        listening,
        certs: any_tls.then(|| certs.clone()),
        drain: drain.clone(),
    });
    if let Some(admin_socket) = sockets.admin {
        let purge = admin::Purge {
            storage,
            token: admin_token,
            state: state.clone(),
        };
        server.add_service(background_service(
            "admin",
            admin::Admin::new(admin_socket, readiness, purge),
        ));
    }
    if let Some(storage) = storage {
        server.add_service(background_service(
            "cache maintenance",
            storage.maintenance(),
        ));
    }
    if any_tls {
        server.add_service(background_service(
            "certificate watcher",
            reload::CertWatcher(certs.clone()),
        ));
    }
    server.add_service(background_service(
        "dns refresher",
        reload::DnsRefresher(resolver.clone()),
    ));
    // Upstream health: bound interfaces, passive/active health gauges, active HTTP checks (issue 5).
    for line in upstream::check_interfaces(&config) {
        tracing::warn!("{line}");
    }
    server.add_service(background_service(
        "upstream health",
        health::HealthService::new(state.clone(), resolver.clone()),
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        reload::Reloader::new(config, state, any_tls.then_some(certs), Some(resolver)),
    ));

    let args = RunArgs {
        shutdown_signal: Box::new(signals::DrainOnSignal {
            drain,
            timeout: drain_timeout,
        }),
    };
    Ok((server, args))
}

/// Loads nothing, binds the sockets, builds and runs edgepop until a shutdown signal has drained it.
pub fn run(config: Config) -> Result<(), Error> {
    let sockets = BoundSockets::bind(&config)?;
    for (l, addr) in config.listeners.iter().zip(sockets.listener_addrs()) {
        tracing::debug!(configured = %l.address, bound = %addr, "bound listener");
    }
    // Root is needed only to bind. Drop it now, while this is the only thread: `build` starts the access-log
    // writer and `Server::run` pingora's runtimes, and all of them must start as the configured user.
    let user = privdrop::drop_privileges(&config)?;
    privdrop::check_access(&config, &user)?;
    let (server, args) = build(config, sockets)?;
    server.run(args);
    Ok(())
}
