//! The TOML schema, exactly as operators write it.
//!
//! Every struct here denies unknown fields and documents its keys; `docs/config.md` mirrors these comments.
//! Values that need checking beyond their type (addresses, durations, sizes, references between sections) are
//! wrapped in [`toml::Spanned`] so that [`super::Config`] can report `file:line:col: key: message`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawConfig {
    /// Process-wide settings: threads, drain timeout, privileges.
    #[serde(default)]
    pub(crate) server: RawServer,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`, purge.
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    /// Public listeners (`[[listener]]`, at least one).
    #[serde(default, rename = "listener")]
    pub(crate) listeners: Vec<Spanned<RawListener>>,
    /// Certificates and TLS policy.
    #[serde(default)]
    pub(crate) tls: RawTls,
    /// The embedded DNS resolver for upstream names.
    #[serde(default)]
    pub(crate) dns: RawDns,
    /// Request limits and client-facing HTTP behaviour.
    #[serde(default)]
    pub(crate) http: RawHttp,
    /// The access log.
    #[serde(default)]
    pub(crate) access_log: RawAccessLog,
    /// Response compression (nginx `gzip`).
    #[serde(default)]
    pub(crate) compression: RawCompression,
    /// The response cache (`proxy_cache_path`). Absent: nothing is cached.
    #[serde(default)]
    pub(crate) cache: Option<RawCache>,
    /// Named upstreams (`[upstream.NAME]`).
    #[serde(default, rename = "upstream")]
    pub(crate) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// Sites (`[[site]]`): which host names go to which upstream.
    #[serde(default, rename = "site")]
    pub(crate) sites: Vec<Spanned<RawSite>>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct RawServer {
    /// Worker threads for the proxy runtime. Default 1 (a small machine has one or two vCPUs).
    pub(crate) threads: Spanned<usize>,
    /// How long SIGTERM/SIGINT wait for in-flight requests before exiting. Default "10s".
    pub(crate) drain_timeout: Spanned<String>,
    /// Idle upstream connections kept per process (pingora's keepalive pool). Default 128.
    pub(crate) upstream_keepalive_pool: usize,
    /// When started as root: the user (name or numeric uid) to switch to once the listeners are bound.
    /// Default: none.
    pub(crate) user: Option<Spanned<String>>,
    /// The group (name or numeric gid) to switch to with `user`. Default: the user's primary group.
    pub(crate) group: Option<Spanned<String>>,
    /// Keep running as root when started as root without `user`. Default false: edgepop refuses to start.
    pub(crate) allow_root: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            threads: Spanned::new(0..0, 1),
            drain_timeout: Spanned::new(0..0, "10s".to_owned()),
            upstream_keepalive_pool: 128,
            user: None,
            group: None,
            allow_root: false,
        }
    }
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct RawAdmin {
    /// Address of the admin listener. Default "127.0.0.1:9901"; "off" disables it. Never expose it publicly.
    pub(crate) address: Option<Spanned<String>>,
    /// File holding the bearer token that state-changing admin endpoints (purge) require. Default: none, and
    /// those endpoints answer 403.
    pub(crate) token_file: Option<Spanned<String>>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: Some(Spanned::new(0..0, "127.0.0.1:9901".to_owned())),
            token_file: None,
        }
    }
}

/// `[compression]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct RawCompression {
    /// Compress responses for clients that accept it. Default true.
    pub(crate) enabled: bool,
    /// gzip level 1-9. Default 5 (nginx `gzip_comp_level 5`).
    pub(crate) gzip_level: u32,
    /// Brotli quality 0-11; 0 disables brotli. Default 5.
    pub(crate) brotli_level: u32,
    /// zstd level 1-19; 0 disables zstd. Default 3.
    pub(crate) zstd_level: u32,
    /// Smallest body compressed (by Content-Length). Default 256 (nginx `gzip_min_length 256`).
    pub(crate) min_length: u64,
    /// MIME types compressed (nginx `gzip_types`); `text/*` style prefixes allowed.
    pub(crate) types: Vec<String>,
}

impl Default for RawCompression {
    fn default() -> Self {
        Self {
            enabled: true,
            gzip_level: 5,
            brotli_level: 5,
            zstd_level: 3,
            min_length: 256,
            types: [
                "text/html",
                "text/plain",
                "text/css",
                "text/xml",
                "text/javascript",
                "application/javascript",
                "application/json",
                "application/xml",
                "application/rss+xml",
                "application/atom+xml",
                "application/manifest+json",
                "application/wasm",
                "image/svg+xml",
                "font/ttf",
                "font/otf",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// `[cache]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct RawCache {
    /// Memory tier size, counting bodies and metadata. Default "32MiB".
    pub(crate) memory: Spanned<RawSize>,
    /// Largest response stored; larger ones are passed through uncached. Default "8MiB".
    pub(crate) max_object_size: Spanned<RawSize>,
    /// How long concurrent misses for one URL wait for the first one's response. Default "5s".
    pub(crate) lock_timeout: Spanned<String>,
    /// Add `X-Cache-Status` (HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, BYPASS) to responses. Default true.
    pub(crate) status_header: bool,
    /// The persistent disk tier. Absent: memory only.
    pub(crate) disk: Option<RawCacheDisk>,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            memory: Spanned::new(0..0, RawSize::Text("32MiB".to_owned())),
            max_object_size: Spanned::new(0..0, RawSize::Text("8MiB".to_owned())),
            lock_timeout: Spanned::new(0..0, "5s".to_owned()),
            status_header: true,
            disk: None,
        }
    }
}

/// `[cache.disk]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawCacheDisk {
    /// Directory of the disk tier (created, mode 0700).
    pub(crate) path: Spanned<String>,
    /// Bound on the bytes stored (nginx `max_size`). Default "1GiB".
    #[serde(default)]
    pub(crate) max_size: Option<Spanned<RawSize>>,
    /// Entries not read for this long are removed (nginx `inactive`). Default "182d".
    #[serde(default)]
    pub(crate) inactive: Option<Spanned<String>>,
}

/// PROXY protocol mode of a listener: `"off"`, `"optional"` or `"required"`; `true` means required.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawProxyProtocol {
    /// `true` = required, `false` = off.
    Bool(bool),
    /// `"off" | "optional" | "required"`.
    Mode(String),
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawListener {
    /// `ip:port` to bind, e.g. "0.0.0.0:443" or "[::]:443".
    pub(crate) address: Spanned<String>,
    /// Terminate TLS on this listener. Default false.
    #[serde(default)]
    pub(crate) tls: bool,
    /// Expect a PROXY protocol (v1 or v2) header first. Default off.
    #[serde(default)]
    pub(crate) proxy_protocol: Option<Spanned<RawProxyProtocol>>,
    /// CIDRs allowed to send a PROXY header (nginx `set_real_ip_from`). Required when proxy-protocol is on.
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<Spanned<String>>,
    /// Maximum open client connections on this listener; further connections are closed at once. Default 1024 (sized for a 256 MB machine: see docs/operations.md).
    #[serde(default)]
    pub(crate) max_connections: Option<Spanned<usize>>,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct RawTls {
    /// Directory with one sub-directory per domain holding the chain and key files. Default "/var/lib/edgepop/certs".
    pub(crate) certs_dir: Spanned<String>,
    /// Certificate chain file name inside each domain directory. Default "chain.pem".
    pub(crate) chain_file: String,
    /// Private key file name inside each domain directory. Default "key.pem".
    pub(crate) key_file: String,
    /// Domain whose certificate answers clients with no or unknown SNI. Default: none (handshake refused).
    pub(crate) default_cert: Option<Spanned<String>>,
    /// Issue TLS session tickets. Default false (session-ID resumption only, as the nginx setup had).
    pub(crate) session_tickets: bool,
    /// Entries in the server-side session cache. Default 4096 (about 1 MB).
    pub(crate) session_cache_size: usize,
    /// Fallback rescan period of the certs directory. Default "60s".
    pub(crate) rescan_interval: Spanned<String>,
    /// A certs directory (or domain directory in it) writable by others: "warn" (default) or "refuse" to start.
    pub(crate) certs_dir_insecure: Spanned<String>,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            certs_dir: Spanned::new(0..0, "/var/lib/edgepop/certs".to_owned()),
            chain_file: "chain.pem".to_owned(),
            key_file: "key.pem".to_owned(),
            default_cert: None,
            session_tickets: false,
            session_cache_size: 4096,
            rescan_interval: Spanned::new(0..0, "60s".to_owned()),
            certs_dir_insecure: Spanned::new(0..0, "warn".to_owned()),
        }
    }
}

/// `[dns]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct RawDns {
    /// Nameservers as `ip` or `ip:port`, tried in order. Default: the system's /etc/resolv.conf.
    pub(crate) nameservers: Vec<Spanned<String>>,
    /// "ipv4-only", "ipv6-only", "ipv4-and-ipv6", "ipv4-then-ipv6" (default), "ipv6-then-ipv4".
    pub(crate) ip_strategy: Spanned<String>,
    /// Lower clamp on answer TTLs. Default "5s".
    pub(crate) min_ttl: Spanned<String>,
    /// Upper clamp on answer TTLs. Default "1h".
    pub(crate) max_ttl: Spanned<String>,
    /// Per-query timeout. Default "2s".
    pub(crate) timeout: Spanned<String>,
    /// How long the last good answer keeps being used while every nameserver fails (RFC 8767). Default "1d".
    pub(crate) serve_stale: Spanned<String>,
}

impl Default for RawDns {
    fn default() -> Self {
        let s = |v: &str| Spanned::new(0..0, v.to_owned());
        Self {
            nameservers: Vec::new(),
            ip_strategy: s("ipv4-then-ipv6"),
            min_ttl: s("5s"),
            max_ttl: s("1h"),
            timeout: s("2s"),
            serve_stale: s("1d"),
        }
    }
}

/// `[http]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct RawHttp {
    /// Largest accepted request body (nginx `client_max_body_size`); larger gets 413. Default "10MiB".
    pub(crate) max_body_size: Spanned<RawSize>,
    /// Status for a request whose host no site serves: 421 or 404. Default 421.
    pub(crate) unknown_host_status: Spanned<u16>,
    /// Idle time allowed between requests on a client keepalive connection. Default "75s" (nginx).
    pub(crate) keepalive_timeout: Spanned<String>,
    /// Allow HTTP/2 on TLS listeners (ALPN h2). Default true.
    pub(crate) http2: bool,
    /// Largest request header block (all names and values); larger gets 431. Default "32KiB" (nginx's
    /// `large_client_header_buffers 4 8k`).
    pub(crate) max_header_size: Spanned<RawSize>,
    /// Most request header fields; more gets 431. Default 100.
    pub(crate) max_header_count: usize,
    /// `X-Forwarded-For`: "append" the client address to what a trusted client sent (nginx
    /// `$proxy_add_x_forwarded_for`, default) or "replace" it.
    pub(crate) forwarded_for: Spanned<String>,
    /// Time allowed for a new HTTP/1 connection's first request header to arrive in full (nginx
    /// `client_header_timeout`; against slowloris). Default "10s".
    pub(crate) header_timeout: Spanned<String>,
    /// Take the client address from this request header (e.g. "Fly-Client-IP" or "X-Forwarded-For", nginx
    /// `real_ip_header`) when the connection comes from `real-ip-from`. Default: none (the TCP or PROXY address).
    pub(crate) real_ip_header: Option<Spanned<String>>,
    /// CIDRs whose `real-ip-header` is believed (nginx `set_real_ip_from`). Default: none.
    pub(crate) real_ip_from: Vec<Spanned<String>>,
    /// On a TLS connection whose client sent a server name (SNI), a request whose Host (or `:authority`) names
    /// another site: "refuse" it with 421 Misdirected Request (default) or "allow" it (route by Host, as nginx).
    pub(crate) sni_host_mismatch: Spanned<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            max_header_size: Spanned::new(0..0, RawSize::Text("32KiB".to_owned())),
            max_header_count: 100,
            forwarded_for: Spanned::new(0..0, "append".to_owned()),
            real_ip_header: None,
            real_ip_from: Vec::new(),
            sni_host_mismatch: Spanned::new(0..0, "refuse".to_owned()),
            header_timeout: Spanned::new(0..0, "10s".to_owned()),
            max_body_size: Spanned::new(0..0, RawSize::Text("10MiB".to_owned())),
            unknown_host_status: Spanned::new(0..0, 421),
            keepalive_timeout: Spanned::new(0..0, "75s".to_owned()),
            http2: true,
        }
    }
}

/// A byte size: an integer, or a string such as "10MiB", "512k", "1 GiB".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    /// Plain bytes.
    Bytes(u64),
    /// With a unit.
    Text(String),
}

/// `[access-log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(crate) struct RawAccessLog {
    /// "combined" (nginx combined with the real client address), "json" or "off". Default "combined".
    pub(crate) format: Spanned<String>,
    /// "-" for stdout (default), or a file path (appended to).
    pub(crate) path: String,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        Self {
            format: Spanned::new(0..0, "combined".to_owned()),
            path: "-".to_owned(),
        }
    }
}

/// `[upstream.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawUpstream {
    /// One or more `host:port`; host is a DNS name (resolved by the embedded resolver) or an IP.
    pub(crate) servers: Spanned<Vec<Spanned<String>>>,
    /// TCP connect timeout. Default "3s" (nginx `proxy_connect_timeout`).
    #[serde(default)]
    pub(crate) connect_timeout: Option<Spanned<String>>,
    /// Timeout between two reads from the upstream. Default "3s" (nginx `proxy_read_timeout`).
    #[serde(default)]
    pub(crate) read_timeout: Option<Spanned<String>>,
    /// Timeout between two writes to the upstream. Default "3s" (nginx `proxy_send_timeout`).
    #[serde(default)]
    pub(crate) send_timeout: Option<Spanned<String>>,
    /// How long an idle pooled upstream connection is kept. Default "60s".
    #[serde(default)]
    pub(crate) keepalive_timeout: Option<Spanned<String>>,
    /// How a request picks among the resolved addresses: "round-robin" (default) or "consistent-hash" (by host
    /// plus path and query, so one URL keeps going to the same address while the set is unchanged).
    #[serde(default)]
    pub(crate) balance: Option<Spanned<String>>,
    /// Network interface outgoing connections are bound to (SO_BINDTODEVICE), e.g. "tailscale0". Default: none.
    #[serde(default)]
    pub(crate) bind_interface: Option<Spanned<String>>,
    /// Source IP address of outgoing connections (port chosen by the kernel). Default: none.
    #[serde(default)]
    pub(crate) bind_address: Option<Spanned<String>>,
    /// Speak HTTPS to the origin, verifying its certificate. Default false.
    #[serde(default)]
    pub(crate) tls: bool,
    /// Server name sent (SNI) and verified with `tls`. Default: the host of the first entry of `servers`.
    #[serde(default)]
    pub(crate) sni: Option<Spanned<String>>,
    /// PEM file of the CAs trusted for the origin's certificate with `tls`. Default: the system's roots.
    #[serde(default)]
    pub(crate) ca_file: Option<Spanned<String>>,
    /// Failed attempts within `fail-timeout` after which an address is skipped for `fail-timeout` (nginx
    /// `max_fails`). Default 3; 0 disables passive health.
    #[serde(default)]
    pub(crate) max_fails: Option<Spanned<u32>>,
    /// The window for `max-fails`, and how long a failed address is then skipped (nginx `fail_timeout`).
    /// Default "10s".
    #[serde(default)]
    pub(crate) fail_timeout: Option<Spanned<String>>,
    /// Active HTTP health checks (`[upstream.NAME.health-check]`). Default: none.
    #[serde(default)]
    pub(crate) health_check: Option<Spanned<RawHealthCheck>>,
}

/// `[upstream.NAME.health-check]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawHealthCheck {
    /// Path (and query) requested with GET. Default "/".
    #[serde(default)]
    pub(crate) path: Option<Spanned<String>>,
    /// Host header of the check. Default: `sni` when set, else the host of the first entry of `servers`.
    #[serde(default)]
    pub(crate) host: Option<Spanned<String>>,
    /// Time between two checks of each address. Default "5s".
    #[serde(default)]
    pub(crate) interval: Option<Spanned<String>>,
    /// Time a check may take (connect, TLS, response header and body). Default "2s".
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<String>>,
    /// Statuses that pass: codes (200) or classes ("2xx"). Default ["2xx", "3xx"].
    #[serde(default)]
    pub(crate) expect_status: Option<Spanned<Vec<Spanned<RawStatus>>>>,
}

/// An expected status: `200` or `"2xx"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawStatus {
    /// One code.
    Code(u16),
    /// A class such as "2xx", or a code as a string.
    Text(String),
}

/// `[[site]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSite {
    /// Host names this site answers: exact ("example.com") or one-label wildcards ("*.example.com").
    pub(crate) names: Spanned<Vec<Spanned<String>>>,
    /// Name of the `[upstream.NAME]` requests are forwarded to.
    pub(crate) upstream: Spanned<String>,
    /// Use the response cache for this site (needs a `[cache]` section). Default true.
    #[serde(default)]
    pub(crate) cache: Option<bool>,
    /// Cache key template (nginx `proxy_cache_key`): `$scheme`, `$host`, `$request_uri`, `$uri`, `$args`.
    /// Default "$scheme$host$request_uri".
    #[serde(default)]
    pub(crate) cache_key: Option<Spanned<String>>,
    /// Freshness for cacheable responses (200, 301, 404...) that carry none (nginx `proxy_cache_valid`).
    /// Default: none (only explicit or RFC-heuristic freshness).
    #[serde(default)]
    pub(crate) cache_default_ttl: Option<Spanned<String>>,
    /// How long a stale response may still be served when the origin is unreachable or answers 5xx
    /// (nginx `proxy_cache_use_stale error timeout http_5xx`). Default "1d"; "0s" disables.
    #[serde(default)]
    pub(crate) cache_grace: Option<Spanned<String>>,
    /// Answer plain-HTTP requests with a 308 to the same URL over HTTPS. Default false.
    #[serde(default)]
    pub(crate) redirect_https: bool,
    /// Path prefixes exempt from `redirect-https` (proxied as usual). Default ["/.well-known/acme-challenge/"].
    #[serde(default)]
    pub(crate) redirect_exceptions: Option<Vec<String>>,
    /// `Strict-Transport-Security` value added to HTTPS responses, e.g. "max-age=63072000". Default none.
    #[serde(default)]
    pub(crate) hsts: Option<Spanned<String>>,
    /// Response headers to set (replacing the origin's), e.g. { "X-Frame-Options" = "DENY" }.
    #[serde(default)]
    pub(crate) add_headers: BTreeMap<String, String>,
    /// Response headers to remove, e.g. ["X-Powered-By"].
    #[serde(default)]
    pub(crate) remove_headers: Vec<String>,
}
