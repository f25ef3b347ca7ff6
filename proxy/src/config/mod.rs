//! Configuration: the TOML file parsed ([`raw`]) and validated into [`Config`].
//!
//! Every error names the file, line, column and key (`edgepop.toml:14:9: upstream.api.servers: ...`), and
//! validation reports every problem it finds rather than stopping at the first.

mod raw;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use raw::{RawConfig, RawProxyProtocol, RawSize};

/// One problem in a configuration file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given on the command line.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no position (e.g. the file is unreadable).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, e.g. `upstream.api.servers[1]`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: ", self.file.display())?;
        } else {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one file (never empty).
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// PROXY protocol handling on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header is expected; a connection that starts with one is treated as HTTP/TLS (and fails).
    Off,
    /// A header is parsed when present (from a trusted source).
    Optional,
    /// Every connection must start with a header from a trusted source.
    Required,
}

/// A public listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Address to bind.
    pub address: SocketAddr,
    /// Terminate TLS.
    pub tls: bool,
    /// PROXY protocol mode.
    pub proxy_protocol: ProxyProtocol,
    /// Sources allowed to send a PROXY header.
    pub trusted_proxies: Vec<IpNet>,
    /// Connection cap.
    pub max_connections: usize,
}

/// Certificate and TLS policy settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Certs directory (vault-agent layout).
    pub certs_dir: PathBuf,
    /// Chain file name.
    pub chain_file: String,
    /// Key file name.
    pub key_file: String,
    /// Default certificate's domain.
    pub default_cert: Option<String>,
    /// Issue session tickets.
    pub session_tickets: bool,
    /// Session cache entries.
    pub session_cache_size: usize,
    /// Fallback rescan period.
    pub rescan_interval: Duration,
    /// Refuse to start (rather than warn) when the certs directory is writable by others.
    pub refuse_insecure_certs_dir: bool,
}

/// Resolver settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Nameservers; empty means /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Address family policy.
    pub ip_strategy: edgepop_resolver::IpStrategy,
    /// TTL lower clamp.
    pub min_ttl: Duration,
    /// TTL upper clamp.
    pub max_ttl: Duration,
    /// Per-query timeout.
    pub timeout: Duration,
    /// Serve-stale window.
    pub serve_stale: Duration,
}

/// How `X-Forwarded-For` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedFor {
    /// Existing value, then the client address.
    Append,
    /// Only the client address.
    Replace,
}

/// What a TLS request whose Host names another site than the connection's SNI gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniHostMismatch {
    /// 421 Misdirected Request, answered locally (RFC 9110 §15.5.20).
    Refuse,
    /// Routed by Host, as nginx does.
    Allow,
}

/// Response compression.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionConfig {
    /// On or off.
    pub enabled: bool,
    /// gzip level.
    pub gzip_level: u32,
    /// brotli quality (0 = off).
    pub brotli_level: u32,
    /// zstd level (0 = off).
    pub zstd_level: u32,
    /// Minimum Content-Length.
    pub min_length: u64,
    /// Compressible MIME types (lowercase; a trailing `*` matches a prefix).
    pub types: Vec<String>,
}

/// Client-facing HTTP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Header block limit (bytes).
    pub max_header_size: u64,
    /// Header count limit.
    pub max_header_count: usize,
    /// X-Forwarded-For mode.
    pub forwarded_for: ForwardedFor,
    /// First request header deadline.
    pub header_timeout: Duration,
    /// Header carrying the client address from trusted proxies.
    pub real_ip_header: Option<http::HeaderName>,
    /// Peers whose `real_ip_header` is believed.
    pub real_ip_from: Vec<IpNet>,
    /// Request body limit in bytes.
    pub max_body_size: u64,
    /// 421 or 404.
    pub unknown_host_status: u16,
    /// Client keepalive idle timeout.
    pub keepalive_timeout: Duration,
    /// ALPN h2 on TLS listeners.
    pub http2: bool,
    /// Host naming another site than the TLS server name (SNI).
    pub sni_host_mismatch: SniHostMismatch,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// nginx combined, with the real client address first.
    Combined,
    /// One JSON object per line.
    Json,
    /// No access log.
    Off,
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// Format.
    pub format: AccessLogFormat,
    /// `None` = stdout.
    pub path: Option<PathBuf>,
}

/// One `host:port` entry of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// DNS name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Set when `host` is an IP literal: no DNS needed.
    pub ip: Option<IpAddr>,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// A named upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Its name in the file.
    pub name: String,
    /// Servers, in file order.
    pub servers: Vec<ServerAddr>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout.
    pub read_timeout: Duration,
    /// Send timeout.
    pub send_timeout: Duration,
    /// Pooled connection idle timeout.
    pub keepalive_timeout: Duration,
    /// How a request picks among the resolved addresses.
    pub balance: Balance,
    /// Interface outgoing connections are bound to (SO_BINDTODEVICE).
    pub bind_interface: Option<String>,
    /// Source address of outgoing connections.
    pub bind_address: Option<IpAddr>,
    /// HTTPS to the origin.
    pub tls: bool,
    /// Server name sent and verified with `tls` (empty without `tls`).
    pub sni: String,
    /// CA file trusted for the origin with `tls` (`None`: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`, DER, read when the configuration was validated.
    pub ca_certs: Vec<Vec<u8>>,
    /// Failures within `fail_timeout` that take an address out (0: never).
    pub max_fails: u32,
    /// The failure window, and how long a failed address is skipped.
    pub fail_timeout: Duration,
    /// Active health checks.
    pub health_check: Option<HealthCheck>,
}

/// One piece of a cache key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// Literal text.
    Text(String),
    /// `$scheme`: http or https.
    Scheme,
    /// `$host`: lowercase host without port, the same for HTTP/1.1 and HTTP/2.
    Host,
    /// `$request_uri`: path and query as received.
    RequestUri,
    /// `$uri`: path only.
    Uri,
    /// `$args`: query only.
    Args,
}

/// A site's cache behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteCache {
    /// Cache this site's responses.
    pub enabled: bool,
    /// Key template.
    pub key: Vec<KeyPart>,
    /// Freshness for responses without any.
    pub default_ttl: Option<Duration>,
    /// Stale-on-error window.
    pub grace: Duration,
}

/// Per-site response behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteBehaviour {
    /// 308 plain HTTP to HTTPS.
    pub redirect_https: bool,
    /// Paths exempt from the redirect.
    pub redirect_exceptions: Vec<String>,
    /// HSTS value for HTTPS responses.
    pub hsts: Option<http::HeaderValue>,
    /// Headers set on responses.
    pub add_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Headers removed from responses.
    pub remove_headers: Vec<http::HeaderName>,
}

/// A site: host names and where their requests go.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Redirects and headers.
    pub behaviour: SiteBehaviour,
    /// Host names (lowercase; wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// The upstream's name (validated to exist).
    pub upstream: String,
    /// Caching.
    pub cache: SiteCache,
}

/// The response cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Memory tier bytes.
    pub memory_bytes: u64,
    /// Largest stored object.
    pub max_object_bytes: u64,
    /// Cache lock timeout.
    pub lock_timeout: Duration,
    /// Emit X-Cache-Status.
    pub status_header: bool,
    /// Disk tier.
    pub disk: Option<CacheDiskConfig>,
}

/// The disk tier.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheDiskConfig {
    /// Directory.
    pub path: PathBuf,
    /// Byte bound.
    pub max_bytes: u64,
    /// Inactivity eviction.
    pub inactive: Duration,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Proxy runtime threads.
    pub threads: usize,
    /// SIGTERM/SIGINT drain timeout.
    pub drain_timeout: Duration,
    /// Upstream keepalive pool size.
    pub upstream_keepalive_pool: usize,
    /// User to switch to after binding when started as root (name or uid).
    pub user: Option<String>,
    /// Group to switch to with `user` (name or gid); `None` = the user's primary group.
    pub group: Option<String>,
    /// Keep running as root when started as root without `user`.
    pub allow_root: bool,
    /// Admin listener address (`None` = disabled).
    pub admin_address: Option<SocketAddr>,
    /// Bearer token file for purge.
    pub admin_token_file: Option<PathBuf>,
    /// The cache (`None` = no caching).
    pub cache: Option<CacheConfig>,
    /// Compression.
    pub compression: CompressionConfig,
    /// Public listeners.
    pub listeners: Vec<Listener>,
    /// TLS.
    pub tls: TlsConfig,
    /// DNS.
    pub dns: DnsConfig,
    /// HTTP.
    pub http: HttpConfig,
    /// Access log.
    pub access_log: AccessLogConfig,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Sites in file order.
    pub sites: Vec<Site>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read configuration file: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (used in error messages and to resolve relative paths).
    pub fn parse(path: impl AsRef<Path>, text: &str) -> Result<Config, ConfigErrors> {
        let path = path.as_ref();
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
                let message = e.message().trim_end().to_owned();
                return Err(ConfigErrors(vec![ConfigError {
                    file: path.to_owned(),
                    line,
                    column,
                    key: String::new(),
                    message,
                }]));
            }
        };
        let mut v = Validator {
            path,
            text,
            errors: Vec::new(),
        };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }

    /// The directory relative paths in the file are resolved against.
    fn base_dir(path: &Path) -> PathBuf {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned)
    }
}

/// Converts a byte offset into 1-based line and column (columns count characters).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.path.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, value: &Spanned<String>, key: &str) -> Duration {
        match humantime::parse_duration(value.get_ref().trim()) {
            Ok(d) => d,
            Err(e) => {
                self.error(
                    value.span(),
                    key,
                    format!(
                        "invalid duration {:?} ({e}); use e.g. \"3s\", \"500ms\", \"1d\"",
                        value.get_ref()
                    ),
                );
                Duration::ZERO
            }
        }
    }

    fn size(&mut self, value: &Spanned<RawSize>, key: &str) -> u64 {
        match value.get_ref() {
            RawSize::Bytes(b) => *b,
            RawSize::Text(t) => match t.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64(),
                Err(e) => {
                    self.error(
                        value.span(),
                        key,
                        format!(
                            "invalid size {t:?} ({e}); use e.g. \"10MiB\", \"512KiB\", 1048576"
                        ),
                    );
                    0
                }
            },
        }
    }

    fn path(&self, value: &str) -> PathBuf {
        let p = PathBuf::from(value);
        if p.is_absolute() {
            p
        } else {
            Config::base_dir(self.path).join(p)
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let threads = *raw.server.threads.get_ref();
        if threads == 0 || threads > 256 {
            self.error(
                raw.server.threads.span(),
                "server.threads",
                "must be between 1 and 256",
            );
        }
        let drain_timeout = self.duration(&raw.server.drain_timeout, "server.drain-timeout");
        let (user, group) = self.run_as(&raw.server);

        let admin_address = raw.admin.address.as_ref().and_then(|a| {
            if a.get_ref().is_empty() || a.get_ref() == "off" {
                return None;
            }
            self.socket_addr(a, "admin.address")
        });

        let listeners = self.listeners(&raw.listeners);
        let tls = self.tls(&raw.tls);
        let dns = self.dns(&raw.dns);
        let http = self.http(&raw.http);
        let access_log = self.access_log(&raw.access_log);
        let upstreams = self.upstreams(&raw.upstreams);
        let cache = raw.cache.as_ref().map(|c| self.cache(c));
        let compression = self.compression(&raw.compression);
        let sites = self.sites(&raw.sites, &upstreams, cache.is_some());
        let admin_token_file = raw
            .admin
            .token_file
            .as_ref()
            .map(|t| self.path(t.get_ref()));

        if let Some(admin) = admin_address
            && listeners.iter().any(|l| l.address == admin)
        {
            self.error(
                raw.admin.address.as_ref().map_or(0..0, Spanned::span),
                "admin.address",
                format!("{admin} is also a public listener; the admin listener must be separate"),
            );
        }

        Config {
            path: self.path.to_owned(),
            threads,
            drain_timeout,
            upstream_keepalive_pool: raw.server.upstream_keepalive_pool,
            user,
            group,
            allow_root: raw.server.allow_root,
            admin_address,
            admin_token_file,
            cache,
            compression,
            listeners,
            tls,
            dns,
            http,
            access_log,
            upstreams,
            sites,
        }
    }

    /// `server.user` and `server.group`: a name or a numeric id each; whether they exist is checked at start-up,
    /// where it matters (a build machine need not have the production user).
    fn run_as(&mut self, raw: &raw::RawServer) -> (Option<String>, Option<String>) {
        let mut account = |value: &Option<Spanned<String>>, key: &str| {
            let v = value.as_ref()?;
            let name = v.get_ref().trim();
            let ok = !name.is_empty()
                && name.len() <= 32
                && !name.starts_with('-')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                self.error(
                    v.span(),
                    key,
                    format!("{name:?} is not a user or group name, nor a numeric id"),
                );
            }
            Some(name.to_owned())
        };
        let user = account(&raw.user, "server.user");
        let group = account(&raw.group, "server.group");
        if let (None, Some(g)) = (&user, &raw.group) {
            self.error(g.span(), "server.group", "is set without server.user");
        }
        (user, group)
    }

    fn socket_addr(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match value.get_ref().trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    value.span(),
                    key,
                    format!(
                        "invalid address {:?}; expected ip:port such as \"0.0.0.0:443\" or \"[::]:443\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn listeners(&mut self, raw: &[Spanned<raw::RawListener>]) -> Vec<Listener> {
        if raw.is_empty() {
            self.error(0..0, "listener", "at least one [[listener]] is required");
        }
        let mut out: Vec<Listener> = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let key = format!("listener[{i}]");
            let Some(address) = self.socket_addr(&l.get_ref().address, &format!("{key}.address"))
            else {
                continue;
            };
            let l_ref = l.get_ref();
            if out.iter().any(|o| o.address == address) {
                self.error(
                    l_ref.address.span(),
                    format!("{key}.address"),
                    format!("{address} is bound by another listener"),
                );
            }
            let proxy_protocol = match &l_ref.proxy_protocol {
                None => ProxyProtocol::Off,
                Some(pp) => match pp.get_ref() {
                    RawProxyProtocol::Bool(true) => ProxyProtocol::Required,
                    RawProxyProtocol::Bool(false) => ProxyProtocol::Off,
                    RawProxyProtocol::Mode(m) => match m.as_str() {
                        "off" => ProxyProtocol::Off,
                        "optional" => ProxyProtocol::Optional,
                        "required" => ProxyProtocol::Required,
                        other => {
                            self.error(
                                pp.span(),
                                format!("{key}.proxy-protocol"),
                                format!("unknown mode {other:?}; expected \"off\", \"optional\" or \"required\" (or true/false)"),
                            );
                            ProxyProtocol::Off
                        }
                    },
                },
            };
            let mut trusted_proxies = Vec::new();
            for (j, cidr) in l_ref.trusted_proxies.iter().enumerate() {
                let text = cidr.get_ref().trim();
                let parsed = text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(net) => trusted_proxies.push(net.trunc()),
                    Err(_) => self.error(
                        cidr.span(),
                        format!("{key}.trusted-proxies[{j}]"),
                        format!("invalid CIDR {text:?}; expected e.g. \"172.16.0.0/16\" or \"fdaa::/16\""),
                    ),
                }
            }
            if proxy_protocol != ProxyProtocol::Off && l_ref.trusted_proxies.is_empty() {
                self.error(
                    l.span(),
                    format!("{key}.trusted-proxies"),
                    "proxy-protocol is on but no trusted-proxies are listed; list the CIDRs of the load balancer (e.g. Fly's \"172.16.0.0/16\"), or \"0.0.0.0/0\" to trust everyone",
                );
            }
            let max_connections = match &l_ref.max_connections {
                None => 1024,
                Some(m) if *m.get_ref() == 0 => {
                    self.error(
                        m.span(),
                        format!("{key}.max-connections"),
                        "must be at least 1",
                    );
                    1
                }
                Some(m) => *m.get_ref(),
            };
            out.push(Listener {
                address,
                tls: l_ref.tls,
                proxy_protocol,
                trusted_proxies,
                max_connections,
            });
        }
        out
    }

    fn tls(&mut self, raw: &raw::RawTls) -> TlsConfig {
        for (name, key) in [
            (&raw.chain_file, "tls.chain-file"),
            (&raw.key_file, "tls.key-file"),
        ] {
            if name.is_empty() || name.contains('/') {
                self.error(0..0, key, format!("{name:?} must be a plain file name"));
            }
        }
        let default_cert = raw
            .default_cert
            .as_ref()
            .map(|d| d.get_ref().trim().to_ascii_lowercase());
        TlsConfig {
            certs_dir: self.path(raw.certs_dir.get_ref()),
            chain_file: raw.chain_file.clone(),
            key_file: raw.key_file.clone(),
            default_cert,
            session_tickets: raw.session_tickets,
            session_cache_size: raw.session_cache_size,
            rescan_interval: self.duration(&raw.rescan_interval, "tls.rescan-interval"),
            refuse_insecure_certs_dir: match raw.certs_dir_insecure.get_ref().as_str() {
                "refuse" => true,
                "warn" => false,
                other => {
                    let span = raw.certs_dir_insecure.span();
                    self.error(
                        span,
                        "tls.certs-dir-insecure",
                        format!("{other:?}: expected \"warn\" or \"refuse\""),
                    );
                    false
                }
            },
        }
    }

    fn dns(&mut self, raw: &raw::RawDns) -> DnsConfig {
        use edgepop_resolver::IpStrategy;
        let mut nameservers = Vec::new();
        for (i, ns) in raw.nameservers.iter().enumerate() {
            let text = ns.get_ref().trim();
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(a) => nameservers.push(a),
                None => self.error(
                    ns.span(),
                    format!("dns.nameservers[{i}]"),
                    format!("invalid nameserver {text:?}; expected an IP, optionally with :port"),
                ),
            }
        }
        let ip_strategy = match raw.ip_strategy.get_ref().as_str() {
            "ipv4-only" => IpStrategy::Ipv4Only,
            "ipv6-only" => IpStrategy::Ipv6Only,
            "ipv4-and-ipv6" => IpStrategy::Ipv4AndIpv6,
            "ipv4-then-ipv6" => IpStrategy::Ipv4ThenIpv6,
            "ipv6-then-ipv4" => IpStrategy::Ipv6ThenIpv4,
            other => {
                self.error(
                    raw.ip_strategy.span(),
                    "dns.ip-strategy",
                    format!("unknown strategy {other:?}; expected ipv4-only, ipv6-only, ipv4-and-ipv6, ipv4-then-ipv6 or ipv6-then-ipv4"),
                );
                IpStrategy::Ipv4ThenIpv6
            }
        };
        let min_ttl = self.duration(&raw.min_ttl, "dns.min-ttl");
        let max_ttl = self.duration(&raw.max_ttl, "dns.max-ttl");
        if min_ttl > max_ttl {
            self.error(
                raw.min_ttl.span(),
                "dns.min-ttl",
                "is larger than dns.max-ttl",
            );
        }
        let timeout = self.duration(&raw.timeout, "dns.timeout");
        if timeout.is_zero() {
            self.error(raw.timeout.span(), "dns.timeout", "must be more than zero");
        }
        DnsConfig {
            nameservers,
            ip_strategy,
            min_ttl,
            max_ttl,
            timeout,
            serve_stale: self.duration(&raw.serve_stale, "dns.serve-stale"),
        }
    }

    fn http(&mut self, raw: &raw::RawHttp) -> HttpConfig {
        let status = *raw.unknown_host_status.get_ref();
        if status != 421 && status != 404 {
            self.error(
                raw.unknown_host_status.span(),
                "http.unknown-host-status",
                "must be 421 or 404",
            );
        }
        let forwarded_for = match raw.forwarded_for.get_ref().as_str() {
            "append" => ForwardedFor::Append,
            "replace" => ForwardedFor::Replace,
            other => {
                self.error(
                    raw.forwarded_for.span(),
                    "http.forwarded-for",
                    format!("unknown mode {other:?}; expected \"append\" or \"replace\""),
                );
                ForwardedFor::Append
            }
        };
        let sni_host_mismatch = match raw.sni_host_mismatch.get_ref().as_str() {
            "refuse" => SniHostMismatch::Refuse,
            "allow" => SniHostMismatch::Allow,
            other => {
                self.error(
                    raw.sni_host_mismatch.span(),
                    "http.sni-host-mismatch",
                    format!("unknown mode {other:?}; expected \"refuse\" or \"allow\""),
                );
                SniHostMismatch::Refuse
            }
        };
        let real_ip_header = raw.real_ip_header.as_ref().and_then(|h| {
            match http::HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.error(
                        h.span(),
                        "http.real-ip-header",
                        format!("{:?} is not a header name", h.get_ref()),
                    );
                    None
                }
            }
        });
        let mut real_ip_from = Vec::new();
        for (i, cidr) in raw.real_ip_from.iter().enumerate() {
            let text = cidr.get_ref().trim();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => real_ip_from.push(net.trunc()),
                Err(_) => self.error(
                    cidr.span(),
                    format!("http.real-ip-from[{i}]"),
                    format!("invalid CIDR {text:?}; expected e.g. \"172.16.0.0/16\""),
                ),
            }
        }
        if real_ip_header.is_some() && real_ip_from.is_empty() {
            self.error(
                raw.real_ip_header.as_ref().map_or(0..0, Spanned::span),
                "http.real-ip-from",
                "real-ip-header is set but real-ip-from is empty: list the proxies whose header is believed",
            );
        }
        let header_timeout = self.duration(&raw.header_timeout, "http.header-timeout");
        if header_timeout.is_zero() {
            self.error(
                raw.header_timeout.span(),
                "http.header-timeout",
                "must be more than zero",
            );
        }
        HttpConfig {
            header_timeout,
            real_ip_header,
            real_ip_from,
            max_header_size: self.size(&raw.max_header_size, "http.max-header-size"),
            max_header_count: raw.max_header_count,
            forwarded_for,
            max_body_size: self.size(&raw.max_body_size, "http.max-body-size"),
            unknown_host_status: status,
            keepalive_timeout: self.duration(&raw.keepalive_timeout, "http.keepalive-timeout"),
            http2: raw.http2,
            sni_host_mismatch,
        }
    }

    fn access_log(&mut self, raw: &raw::RawAccessLog) -> AccessLogConfig {
        let format = match raw.format.get_ref().as_str() {
            "combined" => AccessLogFormat::Combined,
            "json" => AccessLogFormat::Json,
            "off" => AccessLogFormat::Off,
            other => {
                self.error(
                    raw.format.span(),
                    "access-log.format",
                    format!("unknown format {other:?}; expected \"combined\", \"json\" or \"off\""),
                );
                AccessLogFormat::Combined
            }
        };
        let path = match raw.path.as_str() {
            "-" | "" => None,
            p => Some(self.path(p)),
        };
        AccessLogConfig { format, path }
    }

    fn upstreams(
        &mut self,
        raw: &BTreeMap<String, Spanned<raw::RawUpstream>>,
    ) -> BTreeMap<String, Arc<Upstream>> {
        let three = Duration::from_secs(3);
        let mut out = BTreeMap::new();
        for (name, up) in raw {
            let key = format!("upstream.{name}");
            let up_ref = up.get_ref();
            let mut servers = Vec::new();
            if up_ref.servers.get_ref().is_empty() {
                self.error(
                    up_ref.servers.span(),
                    format!("{key}.servers"),
                    "needs at least one host:port",
                );
            }
            for (i, s) in up_ref.servers.get_ref().iter().enumerate() {
                match parse_server(s.get_ref()) {
                    Ok(addr) => servers.push(addr),
                    Err(msg) => self.error(s.span(), format!("{key}.servers[{i}]"), msg),
                }
            }
            let mut timeout =
                |v: &Option<Spanned<String>>, k: &str, default: Duration| -> Duration {
                    let Some(v) = v else { return default };
                    let before = self.errors.len();
                    let d = self.duration(v, &format!("{key}.{k}"));
                    if d.is_zero() && self.errors.len() == before {
                        self.error(v.span(), format!("{key}.{k}"), "must be more than zero");
                    }
                    d
                };
            let connect_timeout = timeout(&up_ref.connect_timeout, "connect-timeout", three);
            let read_timeout = timeout(&up_ref.read_timeout, "read-timeout", three);
            let send_timeout = timeout(&up_ref.send_timeout, "send-timeout", three);
            let keepalive_timeout = timeout(
                &up_ref.keepalive_timeout,
                "keepalive-timeout",
                Duration::from_secs(60),
            );
            let extra = self.upstream_extra(&key, up_ref, &servers);
            let upstream = Upstream {
                name: name.clone(),
                servers,
                connect_timeout,
                read_timeout,
                send_timeout,
                keepalive_timeout,
                balance: extra.balance,
                bind_interface: extra.bind_interface,
                bind_address: extra.bind_address,
                tls: up_ref.tls,
                sni: extra.sni,
                ca_file: extra.ca_file,
                ca_certs: extra.ca_certs,
                max_fails: extra.max_fails,
                fail_timeout: extra.fail_timeout,
                health_check: extra.health_check,
            };
            out.insert(name.clone(), Arc::new(upstream));
        }
        out
    }

    fn compression(&mut self, raw: &raw::RawCompression) -> CompressionConfig {
        for (value, max, key) in [
            (raw.gzip_level, 9, "compression.gzip-level"),
            (raw.brotli_level, 11, "compression.brotli-level"),
            (raw.zstd_level, 19, "compression.zstd-level"),
        ] {
            if value > max {
                self.error(0..0, key, format!("{value} is above the maximum {max}"));
            }
        }
        if raw.gzip_level == 0 {
            self.error(
                0..0,
                "compression.gzip-level",
                "must be 1-9 (disable compression with enabled = false)",
            );
        }
        CompressionConfig {
            enabled: raw.enabled,
            gzip_level: raw.gzip_level,
            brotli_level: raw.brotli_level,
            zstd_level: raw.zstd_level,
            min_length: raw.min_length,
            types: raw
                .types
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    fn behaviour(&mut self, s: &raw::RawSite, key: &str) -> SiteBehaviour {
        let hsts = s
            .hsts
            .as_ref()
            .and_then(|h| match http::HeaderValue::from_str(h.get_ref()) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.error(
                        h.span(),
                        format!("{key}.hsts"),
                        "is not a valid header value",
                    );
                    None
                }
            });
        let mut add_headers = Vec::new();
        for (name, value) in &s.add_headers {
            match (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => add_headers.push((n, v)),
                _ => self.error(
                    0..0,
                    format!("{key}.add-headers.{name}"),
                    "is not a valid header",
                ),
            }
        }
        let mut remove_headers = Vec::new();
        for name in &s.remove_headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => remove_headers.push(n),
                Err(_) => self.error(
                    0..0,
                    format!("{key}.remove-headers"),
                    format!("{name:?} is not a header name"),
                ),
            }
        }
        SiteBehaviour {
            redirect_https: s.redirect_https,
            redirect_exceptions: s
                .redirect_exceptions
                .clone()
                .unwrap_or_else(|| vec!["/.well-known/acme-challenge/".to_owned()]),
            hsts,
            add_headers,
            remove_headers,
        }
    }

    fn cache(&mut self, raw: &raw::RawCache) -> CacheConfig {
        let disk = raw.disk.as_ref().map(|d| CacheDiskConfig {
            path: self.path(d.path.get_ref()),
            max_bytes: d
                .max_size
                .as_ref()
                .map_or(1 << 30, |m| self.size(m, "cache.disk.max-size")),
            inactive: d
                .inactive
                .as_ref()
                .map_or(Duration::from_secs(182 * 86_400), |i| {
                    self.duration(i, "cache.disk.inactive")
                }),
        });
        CacheConfig {
            memory_bytes: self.size(&raw.memory, "cache.memory"),
            max_object_bytes: self.size(&raw.max_object_size, "cache.max-object-size"),
            lock_timeout: self.duration(&raw.lock_timeout, "cache.lock-timeout"),
            status_header: raw.status_header,
            disk,
        }
    }

    fn cache_key(&mut self, raw: &Option<Spanned<String>>, key: &str) -> Vec<KeyPart> {
        let Some(raw) = raw else {
            return vec![
                KeyPart::Scheme,
                KeyPart::Text("://".into()),
                KeyPart::Host,
                KeyPart::RequestUri,
            ];
        };
        match parse_key_template(raw.get_ref()) {
            Ok(parts) => parts,
            Err(msg) => {
                self.error(raw.span(), key, msg);
                Vec::new()
            }
        }
    }

    fn sites(
        &mut self,
        raw: &[Spanned<raw::RawSite>],
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        have_cache: bool,
    ) -> Vec<Site> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, site) in raw.iter().enumerate() {
            let key = format!("site[{i}]");
            let s = site.get_ref();
            if !upstreams.contains_key(s.upstream.get_ref()) {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                self.error(
                    s.upstream.span(),
                    format!("{key}.upstream"),
                    format!(
                        "no [upstream.{}] is defined (defined: {})",
                        s.upstream.get_ref(),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            if s.names.get_ref().is_empty() {
                self.error(
                    s.names.span(),
                    format!("{key}.names"),
                    "needs at least one host name",
                );
            }
            let mut names = Vec::new();
            for (j, n) in s.names.get_ref().iter().enumerate() {
                let name = n
                    .get_ref()
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if let Err(msg) = check_host_pattern(&name) {
                    self.error(n.span(), format!("{key}.names[{j}]"), msg);
                    continue;
                }
                if let Some(prev) = seen.insert(name.clone(), i) {
                    self.error(
                        n.span(),
                        format!("{key}.names[{j}]"),
                        format!("{name:?} is already served by site[{prev}]"),
                    );
                }
                names.push(name);
            }
            let cache = SiteCache {
                enabled: have_cache && s.cache.unwrap_or(true),
                key: self.cache_key(&s.cache_key, &format!("{key}.cache-key")),
                default_ttl: s
                    .cache_default_ttl
                    .as_ref()
                    .map(|t| self.duration(t, &format!("{key}.cache-default-ttl"))),
                grace: s
                    .cache_grace
                    .as_ref()
                    .map_or(Duration::from_secs(86_400), |g| {
                        self.duration(g, &format!("{key}.cache-grace"))
                    }),
            };
            if s.cache == Some(true) && !have_cache {
                self.error(
                    site.span(),
                    format!("{key}.cache"),
                    "is true but there is no [cache] section",
                );
            }
            out.push(Site {
                behaviour: self.behaviour(s, &key),
                names,
                upstream: s.upstream.get_ref().clone(),
                cache,
            });
        }
        out
    }
}

/// Parses an nginx-style key template such as `$scheme$host$request_uri`.
pub(crate) fn parse_key_template(text: &str) -> Result<Vec<KeyPart>, String> {
    const VARS: [(&str, KeyPart); 5] = [
        ("request_uri", KeyPart::RequestUri),
        ("scheme", KeyPart::Scheme),
        ("host", KeyPart::Host),
        ("args", KeyPart::Args),
        ("uri", KeyPart::Uri),
    ];
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find('$') {
            Some(0) => {
                let name = &rest[1..];
                let Some((var, part)) = VARS.iter().find(|(v, _)| name.starts_with(v)) else {
                    return Err(format!(
                        "unknown variable in {text:?}; use $scheme, $host, $request_uri, $uri, $args"
                    ));
                };
                parts.push(part.clone());
                rest = &name[var.len()..];
            }
            Some(i) => {
                parts.push(KeyPart::Text(rest[..i].to_owned()));
                rest = &rest[i..];
            }
            None => {
                parts.push(KeyPart::Text(rest.to_owned()));
                rest = "";
            }
        }
    }
    if !parts
        .iter()
        .any(|p| matches!(p, KeyPart::RequestUri | KeyPart::Uri))
    {
        return Err(format!(
            "{text:?} does not contain $request_uri or $uri: every URL would share one entry"
        ));
    }
    Ok(parts)
}

/// Parses an upstream server `host:port`, `ip:port` or `[v6]:port`.
fn parse_server(text: &str) -> Result<ServerAddr, String> {
    let text = text.trim();
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(ServerAddr {
            host: sa.ip().to_string(),
            port: sa.port(),
            ip: Some(sa.ip()),
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} has no port; expected host:port such as \"origin.example.ts.net:8080\""
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid port {port:?} in {text:?}"))?;
    if port == 0 {
        return Err(format!("port 0 in {text:?}"));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return Err(format!(
            "invalid address {text:?}; write IPv6 as [addr]:port"
        ));
    }
    check_host_pattern(&host)?;
    if host.starts_with('*') {
        return Err(format!("{host:?}: an upstream host cannot be a wildcard"));
    }
    Ok(ServerAddr {
        host,
        port,
        ip: None,
    })
}

/// Checks a DNS name or a one-label wildcard (`*.example.com`).
fn check_host_pattern(name: &str) -> Result<(), String> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Err(format!("{name:?} is not a valid host name"));
    }
    for label in bare.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a valid host name (wildcards are allowed only as a whole first label, \"*.example.com\")"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// How a request picks among an upstream's resolved addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each request takes the next address.
    RoundRobin,
    /// Rendezvous hashing of the request's host, path and query: one URL keeps going to the same address while
    /// the set of healthy addresses is unchanged, and only the URLs of an address that leaves move.
    ConsistentHash,
}

/// `[upstream.NAME.health-check]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Path and query requested with GET.
    pub path: String,
    /// Host header.
    pub host: String,
    /// Time between two checks of each address.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Passing statuses, as inclusive ranges.
    pub expect_status: Vec<std::ops::RangeInclusive<u16>>,
}

/// The upstream keys of issue 5 (balancing, binding, TLS, health), validated.
struct UpstreamExtra {
    balance: Balance,
    bind_interface: Option<String>,
    bind_address: Option<IpAddr>,
    sni: String,
    ca_file: Option<PathBuf>,
    ca_certs: Vec<Vec<u8>>,
    max_fails: u32,
    fail_timeout: Duration,
    health_check: Option<HealthCheck>,
}

impl Validator<'_> {
    fn upstream_extra(
        &mut self,
        key: &str,
        raw: &raw::RawUpstream,
        servers: &[ServerAddr],
    ) -> UpstreamExtra {
        let balance = match raw.balance.as_ref().map(|b| (b.get_ref().trim(), b.span())) {
            None | Some(("round-robin", _)) => Balance::RoundRobin,
            Some(("consistent-hash", _)) => Balance::ConsistentHash,
            Some((other, span)) => {
                self.error(
                    span,
                    format!("{key}.balance"),
                    format!(
                        "unknown policy {other:?}; expected \"round-robin\" or \"consistent-hash\""
                    ),
                );
                Balance::RoundRobin
            }
        };

        let bind_interface = raw.bind_interface.as_ref().and_then(|i| {
            let name = i.get_ref().trim();
            match check_interface_name(name) {
                Ok(()) => Some(name.to_owned()),
                Err(msg) => {
                    self.error(i.span(), format!("{key}.bind-interface"), msg);
                    None
                }
            }
        });

        let bind_address = raw.bind_address.as_ref().and_then(|a| {
            let text = a.get_ref().trim();
            let Ok(ip) = text.parse::<IpAddr>() else {
                self.error(
                    a.span(),
                    format!("{key}.bind-address"),
                    format!(
                        "invalid address {text:?}; expected an IP such as \"100.64.0.5\" (no port)"
                    ),
                );
                return None;
            };
            if let Some((i, s)) = servers
                .iter()
                .enumerate()
                .find(|(_, s)| s.ip.is_some_and(|sip| sip.is_ipv4() != ip.is_ipv4()))
            {
                self.error(
                    a.span(),
                    format!("{key}.bind-address"),
                    format!("{ip} cannot reach servers[{i}] {s}: the address families differ"),
                );
            }
            Some(ip)
        });

        let first_host = servers.first().map(|s| s.host.clone()).unwrap_or_default();
        let sni = match &raw.sni {
            Some(sni) => {
                let name = sni
                    .get_ref()
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                    self.error(
                        sni.span(),
                        format!("{key}.sni"),
                        format!("{name:?} is not a valid server name"),
                    );
                }
                name
            }
            None => first_host.clone(),
        };
        for (set, what) in [
            (raw.sni.as_ref().map(Spanned::span), "sni"),
            (raw.ca_file.as_ref().map(Spanned::span), "ca-file"),
        ] {
            if let (Some(span), false) = (set, raw.tls) {
                self.error(span, format!("{key}.{what}"), "is set but tls is not true");
            }
        }
        let (ca_file, ca_certs) = match &raw.ca_file {
            None => (None, Vec::new()),
            Some(f) => {
                let path = self.path(f.get_ref().trim());
                match read_ca_file(&path) {
                    Ok(certs) => (Some(path), certs),
                    Err(msg) => {
                        self.error(f.span(), format!("{key}.ca-file"), msg);
                        (Some(path), Vec::new())
                    }
                }
            }
        };

        let max_fails = raw.max_fails.as_ref().map_or(3, |m| *m.get_ref());
        let fail_timeout = match &raw.fail_timeout {
            None => Duration::from_secs(10),
            Some(t) => {
                let before = self.errors.len();
                let d = self.duration(t, &format!("{key}.fail-timeout"));
                if d.is_zero() && self.errors.len() == before && max_fails > 0 {
                    self.error(
                        t.span(),
                        format!("{key}.fail-timeout"),
                        "must be more than zero (disable passive health with max-fails = 0)",
                    );
                }
                d
            }
        };

        let health_check = raw.health_check.as_ref().map(|hc| {
            let default_host = if raw.tls { sni.clone() } else { first_host };
            self.health_check(&format!("{key}.health-check"), hc.get_ref(), default_host)
        });

        UpstreamExtra {
            balance,
            bind_interface,
            bind_address,
            sni: if raw.tls { sni } else { String::new() },
            ca_file,
            ca_certs,
            max_fails,
            fail_timeout,
            health_check,
        }
    }

    fn health_check(
        &mut self,
        key: &str,
        raw: &raw::RawHealthCheck,
        default_host: String,
    ) -> HealthCheck {
        let path = match &raw.path {
            None => "/".to_owned(),
            Some(p) => {
                let text = p.get_ref().trim();
                if !text.starts_with('/') || text.parse::<http::uri::PathAndQuery>().is_err() {
                    self.error(
                        p.span(),
                        format!("{key}.path"),
                        format!("{text:?} is not a request path; expected e.g. \"/healthz\""),
                    );
                }
                text.to_owned()
            }
        };
        let host = match &raw.host {
            None => default_host,
            Some(h) => {
                let text = h.get_ref().trim();
                if text.is_empty() || http::HeaderValue::from_str(text).is_err() {
                    self.error(
                        h.span(),
                        format!("{key}.host"),
                        format!("{text:?} is not a valid Host header"),
                    );
                }
                text.to_owned()
            }
        };
        let mut positive = |v: &Option<Spanned<String>>, k: &str, default: Duration| {
            let Some(v) = v else { return default };
            let before = self.errors.len();
            let d = self.duration(v, &format!("{key}.{k}"));
            if d.is_zero() && self.errors.len() == before {
                self.error(v.span(), format!("{key}.{k}"), "must be more than zero");
            }
            d
        };
        let interval = positive(&raw.interval, "interval", Duration::from_secs(5));
        let timeout = positive(&raw.timeout, "timeout", Duration::from_secs(2));
        let expect_status = match &raw.expect_status {
            None => vec![200..=399],
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(
                        list.span(),
                        format!("{key}.expect-status"),
                        "needs at least one status or class",
                    );
                }
                let mut out = Vec::new();
                for (i, s) in list.get_ref().iter().enumerate() {
                    match parse_status(s.get_ref()) {
                        Ok(r) => out.push(r),
                        Err(msg) => {
                            self.error(s.span(), format!("{key}.expect-status[{i}]"), msg);
                        }
                    }
                }
                out
            }
        };
        HealthCheck {
            path,
            host,
            interval,
            timeout,
            expect_status,
        }
    }
}

/// A Linux interface name: 1 to 15 bytes, no '/', no whitespace, not "." or "..".
fn check_interface_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        ))
    }
}

/// `200`, `"200"` or a class `"2xx"`.
fn parse_status(raw: &raw::RawStatus) -> Result<std::ops::RangeInclusive<u16>, String> {
    let code = match raw {
        raw::RawStatus::Code(c) => *c,
        raw::RawStatus::Text(t) => {
            let t = t.trim().to_ascii_lowercase();
            if let Some(class) = t.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok())
                && (1..=5).contains(&class)
            {
                return Ok(class * 100..=class * 100 + 99);
            }
            t.parse::<u16>()
                .map_err(|_| format!("{t:?} is not a status; expected e.g. 200 or \"2xx\""))?
        }
    };
    if (100..=599).contains(&code) {
        Ok(code..=code)
    } else {
        Err(format!("{code} is not an HTTP status (100-599)"))
    }
}

/// Reads a PEM file of CA certificates, checking each parses.
fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let iter =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut certs = Vec::new();
    for cert in iter {
        let cert = cert.map_err(|e| format!("{shown}: invalid PEM: {e}"))?;
        certs.push(cert.as_ref().to_vec());
    }
    if certs.is_empty() {
        return Err(format!("{shown} holds no CERTIFICATE block"));
    }
    crate::upstream::parse_ca(&certs).map_err(|e| format!("{shown}: {e}"))?;
    Ok(certs)
}
