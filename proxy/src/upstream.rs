//! Upstreams on the request path: addresses from the embedded resolver (never `HttpPeer::new`'s blocking lookup),
//! the balancing policy, passive health, and peers whose fixed parts (source binding, interface hook, CA) are
//! built once per configuration. Failures are classified so logs and metrics say *why* an origin was
//! unreachable: DNS, the bound interface, refused, unreachable, timeout, TLS, reset.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;
use pingora::connectors::l4::BindTo;
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::WrappedX509;
use pingora::{Error, ErrorType};
use tokio::net::TcpSocket;

use crate::config::{Balance, Config, Upstream};
use crate::health::{Health, HealthChecker, IfState, Interface};

/// The `ErrorType::Custom` tag of errors about the bound interface.
const INTERFACE: &str = "interface";
/// Linux `ENODEV`: SO_BINDTODEVICE on an interface that does not exist.
const ENODEV: i32 = 19;

/// Why an upstream attempt failed (the `reason` label of `edgepop_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamFailure {
    /// The upstream's name did not resolve.
    Dns,
    /// The bound interface is missing or down.
    Interface,
    /// The source address could not be bound.
    Bind,
    /// The origin refused the connection.
    Refused,
    /// No route to the origin.
    Unreachable,
    Timeout,
    Tls,
    Reset,
    Other,
}

impl UpstreamFailure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Dns => "dns",
            UpstreamFailure::Interface => "interface",
            UpstreamFailure::Bind => "bind",
            UpstreamFailure::Refused => "refused",
            UpstreamFailure::Unreachable => "unreachable",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Other => "other",
        }
    }

    /// Classifies by the most specific error in the chain (pingora wraps socket set-up errors as
    /// `InternalError` with the real one as cause).
    pub(crate) fn classify(e: &Error) -> UpstreamFailure {
        let mut current: Option<&Error> = Some(e);
        while let Some(err) = current {
            if let Some(f) = Self::of_type(err.etype()) {
                return f;
            }
            let Some(cause) = err.cause.as_deref() else {
                break;
            };
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return Self::of_io(io);
            }
            current = cause
                .downcast_ref::<Box<Error>>()
                .map(|b| &**b)
                .or_else(|| cause.downcast_ref::<Error>());
        }
        UpstreamFailure::Other
    }

    fn of_type(t: &ErrorType) -> Option<UpstreamFailure> {
        Some(match t {
            ErrorType::Custom(INTERFACE) => UpstreamFailure::Interface,
            ErrorType::BindError => UpstreamFailure::Bind,
            ErrorType::ConnectRefused => UpstreamFailure::Refused,
            ErrorType::ConnectNoRoute => UpstreamFailure::Unreachable,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                UpstreamFailure::Timeout
            }
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
                UpstreamFailure::Tls
            }
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
                UpstreamFailure::Reset
            }
            _ => return None,
        })
    }

    fn of_io(e: &std::io::Error) -> UpstreamFailure {
        use std::io::ErrorKind;
        if e.raw_os_error() == Some(ENODEV) {
            return UpstreamFailure::Interface;
        }
        match e.kind() {
            ErrorKind::ConnectionRefused => UpstreamFailure::Refused,
            ErrorKind::AddrNotAvailable => UpstreamFailure::Bind,
            ErrorKind::TimedOut => UpstreamFailure::Timeout,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                UpstreamFailure::Reset
            }
            _ => UpstreamFailure::Other,
        }
    }
}

/// The socket hook that binds a connection to an interface.
type SockHook = Arc<dyn Fn(&TcpSocket) -> pingora::Result<()> + Send + Sync + 'static>;

/// The addresses of an upstream with several servers, and the per-server answers they were built from: while
/// the resolver hands back the same answers, the combination is reused without allocating.
struct Combined {
    /// Per server: the resolver's answer (`None` for IP literals and failed names).
    parts: Box<[Option<Arc<[SocketAddr]>>]>,
    addrs: Arc<[SocketAddr]>,
}

/// An upstream, ready for the request path. Rebuilt with the configuration (so health starts afresh on reload).
pub(crate) struct UpstreamState {
    pub(crate) config: Arc<Upstream>,
    /// Set when every server is an IP literal: the addresses, computed once.
    fixed: Option<Arc<[SocketAddr]>>,
    /// Several servers with names: the last combination.
    combined: ArcSwapOption<Combined>,
    /// Round-robin position.
    next: AtomicUsize,
    /// Passive and active health of the addresses.
    pub(crate) health: Health,
    /// The bound interface and its last seen state.
    pub(crate) interface: Option<Arc<Interface>>,
    /// Active health checks.
    pub(crate) checker: Option<HealthChecker>,
    hook: Option<SockHook>,
    bind_to: Option<BindTo>,
    ca: Option<Arc<CaType>>,
    /// Separates this upstream's pooled connections from another's to the same address (pingora's pool key
    /// covers neither the CA, nor the source binding, nor the interface).
    group_key: u64,
}

impl std::fmt::Debug for UpstreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamState")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamState {
    pub(crate) fn new(config: Arc<Upstream>) -> UpstreamState {
        let fixed = config
            .servers
            .iter()
            .map(|s| s.ip.map(|ip| SocketAddr::new(ip, s.port)))
            .collect::<Option<Vec<_>>>()
            .map(Arc::from);
        let interface = config
            .bind_interface
            .as_deref()
            .map(|name| Arc::new(Interface::new(name)));
        let hook = interface.clone().map(|iface| -> SockHook {
            Arc::new(move |sock: &TcpSocket| bind_device(sock, &iface))
        });
        let bind_to = config.bind_address.map(|ip| {
            let mut b = BindTo::default();
            b.addr = Some(SocketAddr::new(ip, 0));
            b
        });
        let ca = if config.ca_certs.is_empty() {
            None
        } else {
            match parse_ca(&config.ca_certs) {
                Ok(ca) => Some(ca),
                Err(e) => {
                    // Validation parsed the same bytes; this cannot happen short of a bug.
                    tracing::error!(upstream = %config.name, error = %e, "ca-file not usable; using the system roots");
                    None
                }
            }
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        config.name.hash(&mut h);
        config.bind_interface.hash(&mut h);
        config.bind_address.hash(&mut h);
        config.ca_certs.hash(&mut h);
        let group_key = h.finish();
        let mut state = UpstreamState {
            health: Health::new(config.max_fails, config.fail_timeout),
            config,
            fixed,
            combined: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            interface,
            checker: None,
            hook,
            bind_to,
            ca,
            group_key,
        };
        state.checker = state
            .config
            .health_check
            .as_ref()
            .map(|hc| HealthChecker::new(hc, &state));
        state
    }

    /// All addresses of the upstream, in server order without duplicates. IP-literal servers need no lookup;
    /// names are answered from the resolver's warm table, and an unchanged answer allocates nothing.
    pub(crate) async fn resolve(
        &self,
        resolver: &edgepop_resolver::Resolver,
    ) -> Result<Arc<[SocketAddr]>, edgepop_resolver::ResolveError> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let servers = &self.config.servers;
        if let [one] = servers.as_slice() {
            return resolver.resolve(&one.host, one.port).await;
        }
        let cached = self.combined.load_full();
        if let Some(cached) = &cached {
            let mut same = true;
            for (server, part) in servers.iter().zip(cached.parts.iter()) {
                if server.ip.is_some() {
                    continue;
                }
                let now = resolver.resolve(&server.host, server.port).await.ok();
                if !same_answer(part.as_ref(), now.as_ref()) {
                    same = false;
                    break;
                }
            }
            if same {
                return Ok(cached.addrs.clone());
            }
        }
        let mut parts = Vec::with_capacity(servers.len());
        let mut all: Vec<SocketAddr> = Vec::new();
        let mut last_err = None;
        for server in servers {
            match server.ip {
                Some(ip) => {
                    parts.push(None);
                    push_unique(&mut all, SocketAddr::new(ip, server.port));
                }
                None => match resolver.resolve(&server.host, server.port).await {
                    Ok(addrs) => {
                        for a in addrs.iter() {
                            push_unique(&mut all, *a);
                        }
                        parts.push(Some(addrs));
                    }
                    Err(e) => {
                        parts.push(None);
                        last_err = Some(e);
                    }
                },
            }
        }
        if let (true, Some(e)) = (all.is_empty(), last_err) {
            return Err(e);
        }
        let addrs: Arc<[SocketAddr]> = all.into();
        self.combined.store(Some(Arc::new(Combined {
            parts: parts.into(),
            addrs: addrs.clone(),
        })));
        Ok(addrs)
    }

    /// Picks an address among `addrs` (not empty): by the policy, skipping addresses already `tried` by this
    /// request (bit i = `addrs[i]`) and addresses marked down. When every untried address is down, one is used
    /// anyway (as nginx does): a request is never refused only because of health bookkeeping.
    pub(crate) fn pick(
        &self,
        addrs: &[SocketAddr],
        key: u64,
        tried: u64,
    ) -> Option<(usize, SocketAddr)> {
        let n = addrs.len();
        if n == 0 {
            return None;
        }
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let usable = |i: usize| untried(i) && !self.health.is_down(&addrs[i]);
        let i = match self.config.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                let ring = (0..n).map(|k| (start + k) % n);
                ring.clone()
                    .find(|&i| usable(i))
                    .or_else(|| ring.clone().find(|&i| untried(i)))
                    .unwrap_or(start)
            }
            Balance::ConsistentHash => {
                let best = |ok: &dyn Fn(usize) -> bool| {
                    (0..n)
                        .filter(|&i| ok(i))
                        .max_by_key(|&i| rendezvous(key, &addrs[i]))
                };
                best(&usable)
                    .or_else(|| best(&untried))
                    .or_else(|| best(&|_| true))
                    .unwrap_or(0)
            }
        };
        Some((i, addrs[i]))
    }

    /// The peer for one address: HTTP/1.1 (over TLS with `tls`), keepalive pooling, the upstream's timeouts,
    /// source binding and interface hook.
    pub(crate) fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let up = &*self.config;
        let mut peer = HttpPeer::new(addr, up.tls, up.sni.clone());
        peer.group_key = self.group_key;
        let o = &mut peer.options;
        o.connection_timeout = Some(up.connect_timeout);
        o.read_timeout = Some(up.read_timeout);
        o.write_timeout = Some(up.send_timeout);
        o.idle_timeout = Some(up.keepalive_timeout);
        o.bind_to.clone_from(&self.bind_to);
        o.upstream_tcp_sock_tweak_hook.clone_from(&self.hook);
        o.ca.clone_from(&self.ca);
        peer
    }

    /// The interface's state when it is not usable: checked before each request, so a request fails at once with
    /// a clear reason rather than on a pooled connection that can no longer reach the origin. The usual case reads
    /// one atomic; once the interface is known bad, each request re-reads it, so recovery is seen at once.
    pub(crate) fn interface_unusable(&self) -> Option<(&Interface, IfState)> {
        let iface = self.interface.as_deref()?;
        if iface.state() == IfState::Up {
            return None;
        }
        match iface.refresh().1 {
            IfState::Up => None,
            s => Some((iface, s)),
        }
    }
}

/// SO_BINDTODEVICE, with an error that names the interface.
fn bind_device(sock: &TcpSocket, iface: &Interface) -> pingora::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        sock.bind_device(Some(iface.name().as_bytes()))
            .map_err(|e| {
                let what = if e.raw_os_error() == Some(ENODEV) {
                    format!("interface {} not found", iface.name())
                } else {
                    format!("cannot bind to interface {}", iface.name())
                };
                Error::because(ErrorType::Custom(INTERFACE), what, e)
            })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = sock;
        Error::e_explain(
            ErrorType::Custom(INTERFACE),
            format!("bind-interface {} needs Linux", iface.name()),
        )
    }
}

/// The error for a request refused before connecting because the interface is missing or down.
pub(crate) fn interface_error(iface: &Interface, state: IfState) -> Box<Error> {
    Error::explain(ErrorType::Custom(INTERFACE), iface.describe(state)).into_up()
}

fn same_answer(a: Option<&Arc<[SocketAddr]>>, b: Option<&Arc<[SocketAddr]>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn push_unique(all: &mut Vec<SocketAddr>, a: SocketAddr) {
    if !all.contains(&a) {
        all.push(a);
    }
}

/// FNV-1a, 64 bit: stable across processes and versions (consistent hashing must agree after a restart).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate the parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The rendezvous (highest random weight) score of `addr` for a request key.
fn rendezvous(key: u64, addr: &SocketAddr) -> u64 {
    let a = match addr {
        SocketAddr::V4(v4) => fnv1a(&[&v4.ip().octets(), &v4.port().to_be_bytes()]),
        SocketAddr::V6(v6) => fnv1a(&[&v6.ip().octets(), &v6.port().to_be_bytes()]),
    };
    splitmix64(key ^ a)
}

/// A strong 64-bit mix (SplitMix64's finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Parses DER CA certificates into pingora's per-peer CA list.
pub(crate) fn parse_ca(ders: &[Vec<u8>]) -> Result<Arc<CaType>, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut out = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("certificate {} is not usable as a CA: {e}", i + 1))?;
        let wrapped = WrappedX509::try_new(der.clone(), |raw| {
            X509Certificate::from_der(raw).map(|(_, cert)| cert)
        })
        .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))?;
        out.push(wrapped);
    }
    Ok(Arc::from(out))
}

/// What `edgepop check` and start-up report about bound interfaces (missing or down is a warning, not an error:
/// the interface may come up later, e.g. when tailscaled starts).
pub(crate) fn check_interfaces(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    for up in config.upstreams.values() {
        let Some(name) = &up.bind_interface else {
            continue;
        };
        let iface = Interface::new(name);
        let state = iface.state();
        if state != IfState::Up {
            lines.push(format!(
                "warning: upstream.{}.bind-interface: {}",
                up.name,
                iface.describe(state)
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 8080)))
            .collect()
    }

    fn upstream(toml_extra: &str) -> UpstreamState {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n{toml_extra}\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n"
        );
        let config = Config::parse("t.toml", &text).expect("valid");
        UpstreamState::new(config.upstreams["app"].clone())
    }

    #[test]
    fn round_robin_spreads_and_skips_tried() {
        let up = upstream("");
        let a = addrs(3);
        let picks: Vec<_> = (0..6).map(|_| up.pick(&a, 0, 0).map(|p| p.0)).collect();
        assert_eq!(
            picks,
            [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
        // Tried 0 and 1: only 2 is left, whatever the cursor.
        for _ in 0..3 {
            assert_eq!(up.pick(&a, 0, 0b011).map(|p| p.0), Some(2));
        }
        assert_eq!(up.pick(&[], 0, 0), None);
    }

    #[test]
    fn passive_health_skips_a_failing_address_until_fail_timeout() {
        let up = upstream("max-fails = 2\nfail-timeout = \"1h\"");
        let a = addrs(2);
        assert!(!up.health.record_failure(&a[0]));
        assert!(up.health.record_failure(&a[0]), "second failure marks down");
        for _ in 0..4 {
            assert_eq!(up.pick(&a, 0, 0).map(|p| p.0), Some(1));
        }
        // Everything down or tried: still an answer (nginx tries anyway).
        assert_eq!(up.pick(&a, 0, 0b10).map(|p| p.0), Some(0));
    }

    #[test]
    fn max_fails_zero_disables_passive_health() {
        let up = upstream("max-fails = 0");
        let a = addrs(2);
        for _ in 0..10 {
            assert!(!up.health.record_failure(&a[0]));
        }
        assert!(!up.health.is_down(&a[0]));
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_only_the_removed_address_keys() {
        let up = upstream("balance = \"consistent-hash\"");
        let a = addrs(4);
        let keys: Vec<u64> = (0..400u32)
            .map(|i| fnv1a(&[b"a.test", format!("/page/{i}").as_bytes()]))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| up.pick(&a, k, 0).map_or(99, |p| p.0))
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|&k| up.pick(&a, k, 0).map_or(99, |p| p.0))
            .collect();
        assert_eq!(before, again, "same key, same address");
        for i in 0..4 {
            let share = before.iter().filter(|&&p| p == i).count();
            assert!(share > 50, "address {i} got {share} of 400 keys");
        }
        // Address 3 marked down: its keys move, no other key does.
        let up2 = upstream("balance = \"consistent-hash\"\nmax-fails = 1");
        up2.health.record_failure(&a[3]);
        for (&k, &was) in keys.iter().zip(&before) {
            let now = up2.pick(&a, k, 0).map_or(99, |p| p.0);
            if was == 3 {
                assert_ne!(now, 3);
            } else {
                assert_eq!(now, was);
            }
        }
    }

    #[test]
    fn classify_finds_the_cause_under_pingora_wrapping() {
        let io = std::io::Error::from_raw_os_error(ENODEV);
        let hook = Error::because(ErrorType::Custom(INTERFACE), "interface x not found", io);
        let wrapped = Error::because(ErrorType::InternalError, "Fail to connect", hook);
        assert_eq!(
            UpstreamFailure::classify(&wrapped),
            UpstreamFailure::Interface
        );
        let refused = Error::new(ErrorType::ConnectRefused);
        assert_eq!(
            UpstreamFailure::classify(&refused),
            UpstreamFailure::Refused
        );
        let bind = Error::because(
            ErrorType::InternalError,
            "Fail to connect",
            Error::new(ErrorType::BindError),
        );
        assert_eq!(UpstreamFailure::classify(&bind), UpstreamFailure::Bind);
        let unreachable = Error::new(ErrorType::ConnectNoRoute);
        assert_eq!(
            UpstreamFailure::classify(&unreachable),
            UpstreamFailure::Unreachable
        );
    }

    fn parse(upstream_extra: &str) -> Result<Config, String> {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.app]\nservers = [\"origin.test:8443\"]\n{upstream_extra}\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n"
        );
        Config::parse("/etc/edgepop/t.toml", &text).map_err(|e| e.to_string())
    }

    #[test]
    fn new_upstream_keys_have_documented_defaults() {
        let config = parse("").expect("valid");
        let up = &config.upstreams["app"];
        assert_eq!(up.balance, Balance::RoundRobin);
        assert_eq!(up.bind_interface, None);
        assert_eq!(up.bind_address, None);
        assert!(!up.tls);
        assert_eq!(up.sni, "");
        assert_eq!(up.ca_file, None);
        assert_eq!(up.max_fails, 3);
        assert_eq!(up.fail_timeout, std::time::Duration::from_secs(10));
        assert_eq!(up.health_check, None);

        let config = parse("tls = true\n[upstream.app.health-check]").expect("valid");
        let up = &config.upstreams["app"];
        assert_eq!(
            up.sni, "origin.test",
            "sni defaults to the first server's host"
        );
        let hc = up.health_check.as_ref().expect("health check");
        assert_eq!(hc.path, "/");
        assert_eq!(hc.host, "origin.test");
        assert_eq!(hc.interval, std::time::Duration::from_secs(5));
        assert_eq!(hc.timeout, std::time::Duration::from_secs(2));
        assert_eq!(hc.expect_status, vec![200..=399]);
    }

    #[test]
    fn new_upstream_keys_are_validated_with_positions() {
        let table = [
            (
                "balance = \"random\"",
                "t.toml:5:11: upstream.app.balance: unknown policy",
            ),
            (
                "bind-interface = \"a/b\"",
                "upstream.app.bind-interface: \"a/b\" is not an interface name",
            ),
            (
                "bind-interface = \"much-too-long-name0\"",
                "is not an interface name",
            ),
            (
                "bind-address = \"10.0.0.1:80\"",
                "upstream.app.bind-address: invalid address",
            ),
            (
                "sni = \"x.test\"",
                "upstream.app.sni: is set but tls is not true",
            ),
            (
                "tls = true\nca-file = \"/nonexistent/ca.pem\"",
                "upstream.app.ca-file: cannot read /nonexistent/ca.pem",
            ),
            (
                "fail-timeout = \"0s\"",
                "upstream.app.fail-timeout: must be more than zero",
            ),
            (
                "[upstream.app.health-check]\npath = \"health\"",
                "upstream.app.health-check.path",
            ),
            (
                "[upstream.app.health-check]\ninterval = \"0s\"",
                "upstream.app.health-check.interval: must be more than zero",
            ),
            (
                "[upstream.app.health-check]\nexpect-status = [200, \"6xx\"]",
                "upstream.app.health-check.expect-status[1]",
            ),
            (
                "[upstream.app.health-check]\nexpect-status = [99]",
                "99 is not an HTTP status",
            ),
        ];
        for (extra, want) in table {
            let err = parse(extra).expect_err(extra);
            assert!(err.contains(want), "{extra}: {err}");
        }
        let ok = parse("max-fails = 0\nfail-timeout = \"0s\"\n[upstream.app.health-check]\nexpect-status = [204, \"3xx\"]")
            .expect("valid");
        let hc = ok.upstreams["app"].health_check.clone().expect("hc");
        assert_eq!(hc.expect_status, vec![204..=204, 300..=399]);
    }

    #[test]
    fn ca_file_is_read_at_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["ca.test".to_owned()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("self-signed").pem();
        std::fs::write(dir.path().join("ca.pem"), &pem).expect("write");
        std::fs::write(dir.path().join("empty.pem"), "not a pem\n").expect("write");
        let text = |file: &str| {
            format!(
                "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.app]\nservers = [\"127.0.0.1:8443\"]\ntls = true\nsni = \"origin.test\"\nca-file = \"{file}\"\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n"
            )
        };
        let path = dir.path().join("edgepop.toml");
        // Relative to the configuration file.
        let config = Config::parse(&path, &text("ca.pem")).expect("valid");
        let up = &config.upstreams["app"];
        assert_eq!(up.ca_certs.len(), 1);
        let state = UpstreamState::new(up.clone());
        let peer = state.peer("127.0.0.1:8443".parse().expect("addr"));
        assert!(peer.options.ca.is_some());
        assert_eq!(peer.sni, "origin.test");
        assert!(peer.is_tls());
        let err = Config::parse(&path, &text("empty.pem")).expect_err("no certificate");
        assert!(
            err.to_string().contains("holds no CERTIFICATE block"),
            "{err}"
        );
    }

    #[test]
    fn check_warns_about_missing_interfaces_only() {
        let config = parse("bind-interface = \"ep-missing9\"").expect("valid");
        let lines = check_interfaces(&config);
        if std::path::Path::new("/sys/class/net").is_dir() {
            assert_eq!(
                lines,
                ["warning: upstream.app.bind-interface: interface ep-missing9 not found"]
            );
        }
        let config = parse("bind-interface = \"lo\"").expect("valid");
        assert!(check_interfaces(&config).is_empty());
    }

    #[test]
    fn peer_carries_the_fixed_parts() {
        let up = upstream("bind-address = \"127.0.0.2\"\nbind-interface = \"lo\"");
        let peer = up.peer("127.0.0.1:1".parse().expect("addr"));
        assert!(peer.options.upstream_tcp_sock_tweak_hook.is_some());
        assert_eq!(
            peer.options.bind_to.as_ref().and_then(|b| b.addr),
            Some("127.0.0.2:0".parse().expect("addr"))
        );
        assert_ne!(peer.group_key, 0);
    }
}
