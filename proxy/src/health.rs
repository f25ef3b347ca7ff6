//! Upstream health: which addresses are skipped (passive: too many failed attempts, like nginx `max_fails` /
//! `fail_timeout`; active: an HTTP check failing), the state of bound interfaces, and the background service
//! that runs the checks and keeps `edgepop_upstream_addresses{upstream,state}` current.
//!
//! The request path only reads: one atomic load and, when some address has failed, one hash lookup.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use once_cell::sync::Lazy;
use pingora::http::RequestHeader;
use pingora::lb::Backend;
use pingora::lb::health_check::{HealthCheck as _, HttpHealthCheck};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::config::HealthCheck;
use crate::state::State;
use crate::upstream::UpstreamState;

/// How often the service refreshes interface states and gauges, and looks for due checks.
const TICK: Duration = Duration::from_millis(250);

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        tracing::warn!(error = %e, "metric registration failed; it will not be exported");
    }
    c
}

/// `edgepop_upstream_addresses{upstream,state}`: resolved addresses of each upstream, up or down (skipped).
/// Labels are the operator's upstream names, not addresses, so the series count stays bounded.
pub(crate) static ADDRESSES: Lazy<IntGaugeVec> = Lazy::new(|| {
    let g = IntGaugeVec::new(
        Opts::new(
            "edgepop_upstream_addresses",
            "Resolved upstream addresses by upstream and state (up, down = skipped by passive or active health).",
        ),
        &["upstream", "state"],
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(g)
});

/// `edgepop_upstream_interface_up{interface}`: 1 when a bound interface exists and is up.
pub(crate) static INTERFACE_UP: Lazy<IntGaugeVec> = Lazy::new(|| {
    let g = IntGaugeVec::new(
        Opts::new(
            "edgepop_upstream_interface_up",
            "1 when an interface upstream connections are bound to (bind-interface) exists and is up, else 0.",
        ),
        &["interface"],
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(g)
});

/// `edgepop_upstream_health_checks_total{upstream,result}`
pub(crate) static HEALTH_CHECKS: Lazy<IntCounterVec> = Lazy::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "edgepop_upstream_health_checks_total",
            "Active upstream health checks by upstream and result (pass, fail).",
        ),
        &["upstream", "result"],
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(c)
});

/// The health of one address.
#[derive(Default)]
struct AddrHealth {
    /// Failures in the current window.
    fails: AtomicU32,
    /// Start of the window (ms since `EPOCH`).
    window_start: AtomicU64,
    /// Skipped until then (ms since `EPOCH`); 0 = never marked down.
    down_until: AtomicU64,
    /// Back from a passive down period without a success yet: one failure takes it down again (nginx).
    probation: AtomicBool,
    /// The last active check failed.
    active_down: AtomicBool,
}

impl AddrHealth {
    fn down(&self, now: u64) -> bool {
        self.active_down.load(Ordering::Relaxed) || now < self.down_until.load(Ordering::Relaxed)
    }

    fn idle(&self, now: u64, fail_timeout: u64) -> bool {
        !self.down(now)
            && !self.probation.load(Ordering::Relaxed)
            && (self.fails.load(Ordering::Relaxed) == 0
                || now.saturating_sub(self.window_start.load(Ordering::Relaxed)) > fail_timeout)
    }
}

/// Health of an upstream's addresses. Only addresses that failed are in the table, so the usual case (all
/// healthy) costs one atomic load per candidate.
pub(crate) struct Health {
    max_fails: u32,
    fail_timeout: u64,
    table: ArcSwap<HashMap<SocketAddr, Arc<AddrHealth>>>,
}

impl Health {
    pub(crate) fn new(max_fails: u32, fail_timeout: Duration) -> Health {
        Health {
            max_fails,
            fail_timeout: u64::try_from(fail_timeout.as_millis()).unwrap_or(u64::MAX),
            table: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Skipped by the balancer: failed passively within `fail-timeout`, or the last active check failed.
    pub(crate) fn is_down(&self, addr: &SocketAddr) -> bool {
        let table = self.table.load();
        if table.is_empty() {
            return false;
        }
        table.get(addr).is_some_and(|h| h.down(now_ms()))
    }

    fn entry(&self, addr: &SocketAddr) -> Arc<AddrHealth> {
        if let Some(h) = self.table.load().get(addr) {
            return h.clone();
        }
        let mut out = None;
        self.table.rcu(|t| {
            if let Some(h) = t.get(addr) {
                out = Some(h.clone());
                return t.clone();
            }
            let mut t = HashMap::clone(t);
            let h = Arc::new(AddrHealth::default());
            t.insert(*addr, h.clone());
            out = Some(h);
            Arc::new(t)
        });
        out.unwrap_or_default()
    }

    /// Counts a failed attempt; returns true when this failure took the address out.
    pub(crate) fn record_failure(&self, addr: &SocketAddr) -> bool {
        if self.max_fails == 0 {
            return false;
        }
        let h = self.entry(addr);
        let now = now_ms();
        if now < h.down_until.load(Ordering::Relaxed) {
            return false; // already out; a late failure does not extend it
        }
        let fails = if h.probation.swap(false, Ordering::Relaxed) {
            self.max_fails
        } else if now.saturating_sub(h.window_start.load(Ordering::Relaxed)) > self.fail_timeout
            || h.fails.load(Ordering::Relaxed) == 0
        {
            h.window_start.store(now, Ordering::Relaxed);
            h.fails.store(1, Ordering::Relaxed);
            1
        } else {
            h.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= self.max_fails {
            h.down_until
                .store(now.saturating_add(self.fail_timeout), Ordering::Relaxed);
            h.fails.store(0, Ordering::Relaxed);
            h.probation.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A connection to `addr` succeeded: ends its probation. Returns true when it was on probation.
    pub(crate) fn record_success(&self, addr: &SocketAddr) -> bool {
        let table = self.table.load();
        if table.is_empty() {
            return false;
        }
        let Some(h) = table.get(addr) else {
            return false;
        };
        if now_ms() < h.down_until.load(Ordering::Relaxed) {
            return false; // tried anyway while out (everything was down): not a recovery signal yet
        }
        if h.probation.swap(false, Ordering::Relaxed) {
            h.fails.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records an active check result; returns true when it changed the address's active state.
    pub(crate) fn set_active(&self, addr: &SocketAddr, healthy: bool) -> bool {
        if healthy {
            self.table
                .load()
                .get(addr)
                .is_some_and(|h| h.active_down.swap(false, Ordering::Relaxed))
        } else {
            !self.entry(addr).active_down.swap(true, Ordering::Relaxed)
        }
    }

    /// Addresses of `addrs` that are up and down.
    pub(crate) fn counts(&self, addrs: &[SocketAddr]) -> (usize, usize) {
        let down = addrs.iter().filter(|a| self.is_down(a)).count();
        (addrs.len() - down, down)
    }

    /// Drops entries for addresses no longer resolved and entries with nothing left to remember.
    pub(crate) fn prune(&self, live: &[SocketAddr]) {
        let now = now_ms();
        let stale = |addr: &SocketAddr, h: &AddrHealth| {
            !live.contains(addr) || h.idle(now, self.fail_timeout)
        };
        if !self.table.load().iter().any(|(a, h)| stale(a, h)) {
            return;
        }
        self.table.rcu(|t| {
            let mut t = HashMap::clone(t);
            t.retain(|a, h| !stale(a, h));
            Arc::new(t)
        });
    }
}

/// State of a network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfState {
    Up,
    Down,
    Missing,
}

impl IfState {
    fn from_u8(x: u8) -> IfState {
        match x {
            x if x == IfState::Down as u8 => IfState::Down,
            x if x == IfState::Missing as u8 => IfState::Missing,
            _ => IfState::Up,
        }
    }
}

/// An interface upstream connections are bound to, with its last seen state.
pub(crate) struct Interface {
    name: Box<str>,
    state: AtomicU8,
}

impl Interface {
    pub(crate) fn new(name: &str) -> Interface {
        Interface {
            name: name.into(),
            state: AtomicU8::new(read_interface(name) as u8),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The state seen at the last refresh (at most `TICK` old, or as of the last failed connection).
    pub(crate) fn state(&self) -> IfState {
        IfState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Reads the state from the system and logs a change; returns (before, now).
    pub(crate) fn refresh(&self) -> (IfState, IfState) {
        let now = read_interface(&self.name);
        let before = IfState::from_u8(self.state.swap(now as u8, Ordering::Relaxed));
        INTERFACE_UP
            .with_label_values(&[&*self.name])
            .set(i64::from(now == IfState::Up));
        if before != now {
            match now {
                IfState::Up => tracing::info!("{}", self.describe(now)),
                _ => tracing::warn!("{}", self.describe(now)),
            }
        }
        (before, now)
    }

    /// "interface tailscale0 not found" / "... is down" / "... is up".
    pub(crate) fn describe(&self, state: IfState) -> String {
        match state {
            IfState::Missing => format!("interface {} not found", self.name),
            IfState::Down => format!("interface {} is down", self.name),
            IfState::Up => format!("interface {} is up", self.name),
        }
    }
}

/// Reads `/sys/class/net/NAME`: missing, administratively down, or without carrier is not usable. TUN devices
/// such as tailscale0 report operstate "unknown" when up, which counts as up. Without `/sys` nothing can be told
/// and the interface counts as up (connecting then reports the kernel's error).
fn read_interface(name: &str) -> IfState {
    const IFF_UP: u32 = 0x1;
    let net = std::path::Path::new("/sys/class/net");
    if !net.is_dir() {
        return IfState::Up;
    }
    let dir = net.join(name);
    let Ok(flags) = std::fs::read_to_string(dir.join("flags")) else {
        return if dir.exists() {
            IfState::Up
        } else {
            IfState::Missing
        };
    };
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(IFF_UP);
    if flags & IFF_UP == 0 {
        return IfState::Down;
    }
    match std::fs::read_to_string(dir.join("operstate")) {
        Ok(op) if matches!(op.trim(), "down" | "lowerlayerdown" | "notpresent") => IfState::Down,
        _ => IfState::Up,
    }
}

/// Active HTTP health checks of one upstream: pingora's `HttpHealthCheck` on the upstream's own peer (same TLS,
/// CA, SNI, source address and interface), one GET per resolved address every `interval`.
pub(crate) struct HealthChecker {
    check: Arc<HttpHealthCheck>,
    interval: u64,
    timeout: Duration,
    next_due: AtomicU64,
    running: Arc<AtomicBool>,
}

impl HealthChecker {
    pub(crate) fn new(hc: &HealthCheck, up: &UpstreamState) -> HealthChecker {
        let mut check = HttpHealthCheck::new(&hc.host, up.config.tls);
        let mut peer = up.peer(SocketAddr::from(([0, 0, 0, 0], 1)));
        peer.options.connection_timeout = Some(hc.timeout);
        peer.options.read_timeout = Some(hc.timeout);
        peer.options.write_timeout = Some(hc.timeout);
        check.peer_template = peer;
        if let Ok(mut req) = RequestHeader::build("GET", hc.path.as_bytes(), None) {
            let _ = req.insert_header("host", hc.host.as_str());
            let _ = req.insert_header("user-agent", "edgepop-health-check");
            let _ = req.insert_header("connection", "close");
            check.req = req;
        }
        let expect = hc.expect_status.clone();
        check.validator = Some(Box::new(move |resp| {
            let status = resp.status.as_u16();
            if expect.iter().any(|r| r.contains(&status)) {
                Ok(())
            } else {
                Error::e_explain(
                    ErrorType::CustomCode("unexpected status", status),
                    format!("health check answered {status}"),
                )
            }
        }));
        HealthChecker {
            check: Arc::new(check),
            interval: u64::try_from(hc.interval.as_millis()).unwrap_or(u64::MAX),
            timeout: hc.timeout,
            next_due: AtomicU64::new(0),
            running: Arc::default(),
        }
    }

    fn due(&self) -> bool {
        let now = now_ms();
        if now < self.next_due.load(Ordering::Relaxed) || self.running.load(Ordering::Relaxed) {
            return false;
        }
        self.next_due
            .store(now.saturating_add(self.interval), Ordering::Relaxed);
        true
    }
}

/// Checks every address of `up` concurrently and records the results.
async fn run_checks(up: Arc<UpstreamState>, addrs: Arc<[SocketAddr]>) {
    let Some(checker) = &up.checker else { return };
    struct Running(Arc<AtomicBool>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    if checker.running.swap(true, Ordering::Relaxed) {
        return;
    }
    let _running = Running(checker.running.clone());
    let mut set = tokio::task::JoinSet::new();
    for &addr in addrs.iter() {
        let check = checker.check.clone();
        let timeout = checker.timeout;
        set.spawn(async move {
            let result = match Backend::new(&addr.to_string()) {
                Ok(backend) => match tokio::time::timeout(timeout, check.check(&backend)).await {
                    Ok(r) => r.map_err(|e| crate::error_chain(&*e)),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                },
                Err(e) => Err(e.to_string()),
            };
            (addr, result)
        });
    }
    let name = up.config.name.as_str();
    while let Some(joined) = set.join_next().await {
        let Ok((addr, result)) = joined else { continue };
        let ok = result.is_ok();
        HEALTH_CHECKS
            .with_label_values(&[name, if ok { "pass" } else { "fail" }])
            .inc();
        if up.health.set_active(&addr, ok) {
            match result {
                Ok(()) => {
                    tracing::info!(upstream = name, %addr, "health check passed; address is up")
                }
                Err(e) => {
                    tracing::warn!(upstream = name, %addr, error = %e, "health check failed; address is down")
                }
            }
        }
    }
}

/// The background service: interface states, address gauges, active checks.
pub(crate) struct HealthService {
    state: Arc<ArcSwap<State>>,
    resolver: Arc<edgepop_resolver::Resolver>,
}

impl HealthService {
    pub(crate) fn new(
        state: Arc<ArcSwap<State>>,
        resolver: Arc<edgepop_resolver::Resolver>,
    ) -> HealthService {
        HealthService { state, resolver }
    }

    async fn tick(&self, labelled: &mut HashSet<(String, bool)>) {
        let state = self.state.load_full();
        let mut seen = HashSet::new();
        for up in &state.upstreams {
            let name = up.config.name.as_str();
            if let Some(iface) = &up.interface {
                iface.refresh();
                seen.insert((iface.name().to_owned(), true));
            }
            let addrs = match up.resolve(&self.resolver).await {
                Ok(a) => a,
                Err(_) => Arc::from([]),
            };
            up.health.prune(&addrs);
            if let Some(checker) = &up.checker
                && !addrs.is_empty()
                && checker.due()
            {
                tokio::spawn(run_checks(up.clone(), addrs.clone()));
            }
            let (n_up, n_down) = up.health.counts(&addrs);
            let gauge = |s: &str, n: usize| {
                ADDRESSES
                    .with_label_values(&[name, s])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            };
            gauge("up", n_up);
            gauge("down", n_down);
            seen.insert((name.to_owned(), false));
        }
        for (label, is_iface) in labelled.difference(&seen) {
            if *is_iface {
                let _ = INTERFACE_UP.remove_label_values(&[label]);
            } else {
                let _ = ADDRESSES.remove_label_values(&[label, "up"]);
                let _ = ADDRESSES.remove_label_values(&[label, "down"]);
            }
        }
        *labelled = seen;
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut labelled = HashSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.tick(&mut labelled).await;
        }
    }
}
