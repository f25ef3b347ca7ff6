//! The resolver: a table of last answers in front of hickory, a coalescing lookup launcher and
//! the refresher loop.
//!
//! Data flow: `resolve` reads the table (an `ArcSwap` snapshot, no lock, no I/O). A usable
//! entry is returned as is; a cold name starts (or joins) a lookup task. Lookup tasks are the
//! only code that talks to hickory; they publish their result in the table, then hand it to
//! the callers that waited. The refresher only decides *when* to start lookup tasks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup_ip::LookupIp;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RecordType};
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::entry::{self, Entry, MAX_PORTS, State, Use};
use crate::error::Internal;
use crate::metrics::METRICS;
use crate::{IpStrategy, ResolveError, ResolverSettings};

/// The refresher wakes at least this often (idle eviction, and to notice pinned names).
const MAX_SLEEP: Duration = Duration::from_secs(10);
const RESOLV_CONF: &str = "/etc/resolv.conf";

type Table = HashMap<Arc<str>, Arc<Entry>>;
type Outcome = Result<Arc<Entry>, ResolveError>;

/// Resolves upstream host names with a warm in-memory table, background refresh, negative
/// caching and serve-stale. Cheap to clone (one `Arc`); `Send + Sync`.
///
/// Run the refresher ([`spawn_refresher`](Self::spawn_refresher) or
/// [`run_refresher`](Self::run_refresher)) so names are re-queried before they expire, with or
/// without traffic. Without it, a request that finds an answer past its TTL still gets that
/// answer at once (as stale) and starts the refresh in the background.
///
/// Lookups run as tokio tasks on the caller's runtime, so `resolve` must be called within one
/// (outside, cold names fail with [`ResolveError::Failed`]); building the resolver does not
/// need a runtime.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("names", &self.inner.table.load().len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    dns: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
    negative_ttl: Duration,
    serve_stale: Duration,
    refresh_ahead: f32,
    /// `timeout * attempts`: hard cap on one lookup, whatever hickory does inside.
    budget: Duration,
    /// Wait before re-trying a name whose lookup failed.
    retry_after: Duration,
    /// Unpinned names not requested for this long are dropped.
    idle_after: Duration,
    epoch: Instant,
    /// Readers load a snapshot; writers clone, edit and swap it under `writer`. The table holds
    /// the proxy's upstream names (tens to hundreds), so copy-on-write is cheap.
    table: ArcSwap<Table>,
    writer: Mutex<()>,
    /// Lookups in flight, by name; callers for the same name wait on the same channel.
    inflight: Mutex<HashMap<Arc<str>, watch::Receiver<Option<Outcome>>>>,
    /// Wakes the refresher when the table changed (new names, new refresh times).
    wake: Notify,
    /// This resolver's share of the `edgepop_dns_stale_names` gauge.
    stale_names: AtomicI64,
}

impl Resolver {
    /// Builds the resolver. Reads `/etc/resolv.conf` when `settings.nameservers` is empty.
    /// Sends nothing yet, and needs no runtime.
    pub fn new(settings: ResolverSettings) -> Result<Self, ResolveError> {
        settings.validate()?;
        let dns = build_hickory(&settings)?;
        let min_ttl = settings.min_ttl.max(Duration::from_secs(1));
        let attempts = u32::try_from(settings.attempts).unwrap_or(u32::MAX);
        let inner = Inner {
            dns,
            min_ttl,
            max_ttl: settings.max_ttl.max(min_ttl),
            negative_ttl: settings.negative_ttl,
            serve_stale: settings.serve_stale,
            refresh_ahead: settings.refresh_ahead,
            budget: settings.timeout.saturating_mul(attempts),
            retry_after: min_ttl,
            idle_after: settings.serve_stale.max(settings.max_ttl),
            epoch: Instant::now(),
            table: ArcSwap::from_pointee(Table::new()),
            writer: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stale_names: AtomicI64::new(0),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Addresses for `host`, each combined with `port`.
    ///
    /// IP literals (`192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`) return without DNS. A warm
    /// name is answered from the in-memory table without awaiting anything: fresh, or past its
    /// TTL but within the serve-stale window (a refresh is then started in the background).
    /// A cold name does one lookup, shared by every concurrent caller for that name, and takes
    /// at most `timeout * attempts`.
    ///
    /// The returned slice is shared: after the first call for a `(host, port)` pair, warm calls
    /// do not allocate. Names are table keys as given (`a.example` and `A.example.` are two
    /// entries).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Arc<[SocketAddr]>, ResolveError> {
        let entry = self.inner.entry(host).await?;
        match entry.addrs(port) {
            Some(addrs) => Ok(addrs),
            None => Ok(self.inner.add_port(&entry, port)),
        }
    }

    /// Like [`resolve`](Self::resolve), without a port. Never allocates on the warm path.
    pub async fn resolve_ips(&self, host: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        Ok(self.inner.entry(host).await?.ips.clone())
    }

    /// Registers `host` to be resolved now (if a tokio runtime is running; otherwise when the
    /// refresher starts) and kept fresh for the life of the resolver, even when no request uses
    /// it. Invalid names and IP literals are ignored (logged at warn / debug).
    pub fn warm(&self, host: &str) {
        let inner = &self.inner;
        if entry::parse_literal(host).is_some() {
            debug!(host, "not warming an ip literal");
            return;
        }
        if !entry::valid_host(host) {
            warn!(host, "not warming an invalid host name");
            return;
        }
        let now = Instant::now();
        let entry = inner.update(|map| match map.get(host).cloned() {
            Some(e) if e.pinned => e,
            Some(e) => inner.put(map, &e.host, e.with(e.ports.clone(), true)),
            None => {
                let host: Arc<str> = Arc::from(host);
                let pending = State::Pending { retry_at: now };
                inner.put(
                    map,
                    &host,
                    Entry::new(
                        host.clone(),
                        Arc::from([]),
                        pending,
                        true,
                        inner.now_ms(now),
                    ),
                )
            }
        });
        if matches!(entry.classify(now), Use::Cold) && Handle::try_current().is_ok() {
            inner.trigger(&entry);
        }
        inner.wake.notify_one();
    }

    /// Runs the background refresher on the current tokio runtime until `shutdown` becomes
    /// `true` (or its sender is dropped, or every `Resolver` clone is dropped).
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn_refresher(&self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(refresher(Arc::downgrade(&self.inner), shutdown))
    }

    /// The refresher loop itself, for callers that run it in their own task (e.g. a pingora
    /// `BackgroundService`, whose `ShutdownWatch` is this receiver type).
    ///
    /// It re-queries each name when `refresh_ahead` of its TTL is left (failed names every
    /// `min_ttl`), keeps names registered with [`warm`](Self::warm) resolved, drops expired
    /// negative entries, answers past the serve-stale window and names no request used for
    /// `max(serve_stale, max_ttl)`. Lookups run as separate tasks, so a slow nameserver delays
    /// nothing else.
    pub async fn run_refresher(&self, shutdown: watch::Receiver<bool>) {
        refresher(Arc::downgrade(&self.inner), shutdown).await;
    }
}

impl Inner {
    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The table entry to answer `host` from, or the error to return. The warm path is
    /// everything before the `cold` call: one snapshot load, one hash lookup, no `.await`.
    async fn entry(self: &Arc<Self>, host: &str) -> Outcome {
        let now = Instant::now();
        let cached = self.table.load().get(host).cloned();
        let Some(entry) = cached else {
            return self.cold(None, host).await;
        };
        match entry.classify(now) {
            Use::Literal => {
                entry.touch(self.now_ms(now));
                Ok(entry)
            }
            use_ @ (Use::Fresh | Use::Stale) => {
                entry.touch(self.now_ms(now));
                if entry.refresh_due(now) {
                    self.trigger(&entry);
                }
                if use_ == Use::Fresh {
                    METRICS.cached.inc()
                } else {
                    METRICS.stale.inc()
                }
                Ok(entry)
            }
            Use::Negative => {
                METRICS.negative.inc();
                Err(ResolveError::NotFound {
                    host: entry.host.clone(),
                })
            }
            Use::Cold => self.cold(Some(entry), host).await,
        }
    }

    /// A name without a usable answer: IP literal, invalid name, or a (shared) lookup.
    async fn cold(self: &Arc<Self>, existing: Option<Arc<Entry>>, host: &str) -> Outcome {
        let key = match existing {
            Some(entry) => entry.host.clone(),
            None => {
                if let Some(ip) = entry::parse_literal(host) {
                    return Ok(self.insert_literal(host, ip));
                }
                if !entry::valid_host(host) {
                    METRICS.failed.inc();
                    return Err(ResolveError::InvalidName {
                        host: Arc::from(host),
                    });
                }
                Arc::from(host)
            }
        };
        let outcome = match self.start_lookup(&key) {
            Ok(rx) => wait(rx, &key).await,
            Err(e) => Err(e),
        };
        match &outcome {
            Ok(_) => METRICS.answered.inc(),
            Err(ResolveError::NotFound { .. }) => METRICS.negative.inc(),
            Err(_) => METRICS.failed.inc(),
        }
        outcome
    }

    fn insert_literal(&self, host: &str, ip: IpAddr) -> Arc<Entry> {
        let host: Arc<str> = Arc::from(host);
        let literal = Entry::new(
            host.clone(),
            Arc::from([ip]),
            State::Literal,
            false,
            self.now_ms(Instant::now()),
        );
        self.update(|map| self.put(map, &host, literal))
    }

    /// Addresses for a port the entry has not seen; remembers them for the next call.
    fn add_port(&self, entry: &Arc<Entry>, port: u16) -> Arc<[SocketAddr]> {
        let addrs = entry::socket_addrs(&entry.ips, port);
        if entry.ports.len() < MAX_PORTS {
            self.update(|map| {
                if map
                    .get(&entry.host)
                    .is_some_and(|current| Arc::ptr_eq(current, entry))
                {
                    let mut ports = entry.ports.to_vec();
                    ports.push((port, addrs.clone()));
                    self.put(map, &entry.host, entry.with(ports.into(), entry.pinned));
                }
            });
        }
        addrs
    }

    /// Starts a background lookup for `entry` unless one is running.
    fn trigger(self: &Arc<Self>, entry: &Entry) {
        let claimed =
            entry
                .refreshing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire);
        if claimed.is_ok()
            && let Err(error) = self.start_lookup(&entry.host)
        {
            entry.refreshing.store(false, Ordering::Release);
            debug!(host = %entry.host, %error, "could not start dns refresh");
        }
    }

    /// Joins the lookup in flight for `host`, or spawns one. The lookup runs as its own task so
    /// a caller that gives up (request cancelled) does not cancel it for the others.
    fn start_lookup(
        self: &Arc<Self>,
        host: &Arc<str>,
    ) -> Result<watch::Receiver<Option<Outcome>>, ResolveError> {
        let mut inflight = lock(&self.inflight);
        // A closed channel is a lookup task that was cancelled before cleaning up: replace it.
        if let Some(rx) = inflight.get(host)
            && rx.has_changed().is_ok()
        {
            return Ok(rx.clone());
        }
        let runtime = Handle::try_current().map_err(|_| ResolveError::Failed {
            host: host.clone(),
            source: Arc::new(Internal::NoRuntime),
        })?;
        let (tx, rx) = watch::channel(None);
        inflight.insert(host.clone(), rx.clone());
        drop(inflight);

        let inner = Arc::clone(self);
        let host = host.clone();
        let guard_rx = rx.clone();
        runtime.spawn(async move {
            let guard = InflightGuard {
                inner: &inner,
                host: &host,
                rx: guard_rx,
            };
            let outcome = inner.lookup(&host).await;
            drop(guard);
            tx.send_replace(Some(outcome));
        });
        Ok(rx)
    }

    /// One network lookup for `host`; publishes the result in the table and returns it.
    async fn lookup(&self, host: &Arc<str>) -> Outcome {
        let Ok(name) = Name::from_str_relaxed(&**host) else {
            return Err(ResolveError::InvalidName { host: host.clone() });
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.budget, self.dns.lookup_ip(name)).await;
        METRICS.duration.observe(started.elapsed().as_secs_f64());
        let answer = match result {
            Ok(Ok(lookup)) => self.answer(&lookup),
            Ok(Err(error)) => match negative_ttl(&error) {
                Some(soa_ttl) => Answer::Negative(self.negative_duration(soa_ttl)),
                None if matches!(error, NetError::Timeout) => {
                    Answer::Failed(ResolveError::Timeout { host: host.clone() })
                }
                None => Answer::Failed(ResolveError::Failed {
                    host: host.clone(),
                    source: Arc::new(error),
                }),
            },
            Err(_elapsed) => Answer::Failed(ResolveError::Timeout { host: host.clone() }),
        };
        match &answer {
            Answer::Addrs(..) => METRICS.query_answered.inc(),
            Answer::Negative(_) => METRICS.query_negative.inc(),
            Answer::Failed(_) => METRICS.query_failed.inc(),
        }
        let outcome = self.store(host, answer, Instant::now());
        self.wake.notify_one();
        outcome
    }

    fn answer(&self, lookup: &LookupIp) -> Answer {
        let mut ips = Vec::new();
        for ip in lookup.iter() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return Answer::Negative(self.negative_duration(None));
        }
        // hickory already clamped record TTLs to [min_ttl, max_ttl]; clamp again in case the
        // answer came from elsewhere (hosts file).
        let ttl = lookup
            .as_lookup()
            .answers()
            .iter()
            .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0);
        Answer::Addrs(
            ips.into(),
            entry::clamp_ttl(ttl, self.min_ttl, self.max_ttl),
        )
    }

    /// RFC 2308 negative TTL from the SOA, capped by `negative_ttl`, floored at
    /// `min(min_ttl, negative_ttl)` (also used when there is no SOA).
    fn negative_duration(&self, soa_ttl: Option<u32>) -> Duration {
        let floor = self.min_ttl.min(self.negative_ttl);
        match soa_ttl {
            Some(secs) => Duration::from_secs(secs.into())
                .min(self.negative_ttl)
                .max(floor),
            None => floor,
        }
    }

    /// Publishes a lookup result. Failures keep the last good answer while it is within the
    /// serve-stale window (RFC 8767); NXDOMAIN/NODATA replace it (the name is gone).
    fn store(&self, host: &Arc<str>, answer: Answer, now: Instant) -> Outcome {
        self.update(|map| {
            let old = map.get(host).cloned();
            let pinned = old.as_ref().is_some_and(|e| e.pinned);
            let fresh = |ips: Arc<[IpAddr]>, state: State| match &old {
                Some(old) => old.successor(ips, state),
                None => Entry::new(host.clone(), ips, state, false, self.now_ms(now)),
            };
            match answer {
                Answer::Addrs(ips, ttl) => {
                    if let Some(old) = old.as_ref().filter(|e| e.is_failing()) {
                        info!(host = %old.host, "dns lookups succeed again; stopped serving the stale answer");
                    }
                    let expires_at = now + ttl;
                    let state = State::Positive {
                        expires_at,
                        stale_until: expires_at + self.serve_stale,
                        refresh_at: now + ttl.mul_f32(1.0 - self.refresh_ahead),
                        last_error: None,
                    };
                    debug!(%host, ?ips, ?ttl, "dns answer");
                    let entry = fresh(ips, state);
                    Ok(self.put(map, host, entry))
                }
                Answer::Negative(ttl) => {
                    debug!(%host, ?ttl, "dns negative answer");
                    let entry = fresh(Arc::from([]), State::Negative { expires_at: now + ttl });
                    self.put(map, host, entry);
                    Err(ResolveError::NotFound { host: host.clone() })
                }
                Answer::Failed(error) => match &old {
                    Some(old) if matches!(&old.state, State::Positive { stale_until, .. } if now < *stale_until) => {
                        let State::Positive { expires_at, stale_until, last_error, .. } = &old.state else {
                            return Err(error);
                        };
                        if last_error.is_none() {
                            warn!(
                                host = %old.host,
                                error = &error as &(dyn std::error::Error + 'static),
                                stale_for = ?stale_until.saturating_duration_since(now),
                                "dns refresh failed; serving the last good answer",
                            );
                        }
                        let state = State::Positive {
                            expires_at: *expires_at,
                            stale_until: *stale_until,
                            refresh_at: now + self.retry_after,
                            last_error: Some(error),
                        };
                        let entry = old.successor(old.ips.clone(), state);
                        Ok(self.put(map, host, entry))
                    }
                    _ if pinned => {
                        debug!(%host, %error, "dns lookup for a warmed name failed; will retry");
                        self.put(map, host, fresh(Arc::from([]), State::Pending { retry_at: now + self.retry_after }));
                        Err(error)
                    }
                    Some(_) => {
                        self.remove(map, host);
                        Err(error)
                    }
                    None => Err(error),
                },
            }
        })
    }

    /// Clone-edit-swap of the table, serialised by `writer`.
    fn update<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let _writer = lock(&self.writer);
        let mut map = Table::clone(&self.table.load());
        let result = f(&mut map);
        self.table.store(Arc::new(map));
        result
    }

    /// Inserts or replaces an entry, keeping the stale-names gauge right.
    fn put(&self, map: &mut Table, host: &Arc<str>, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        let old = map.insert(host.clone(), entry.clone());
        self.count_stale(old.as_deref(), Some(&entry));
        entry
    }

    fn remove(&self, map: &mut Table, host: &Arc<str>) {
        let old = map.remove(host);
        self.count_stale(old.as_deref(), None);
    }

    fn count_stale(&self, old: Option<&Entry>, new: Option<&Entry>) {
        let failing = |e: Option<&Entry>| i64::from(e.is_some_and(Entry::is_failing));
        let delta = failing(new) - failing(old);
        if delta != 0 {
            self.stale_names.fetch_add(delta, Ordering::Relaxed);
            METRICS.stale_names.add(delta);
        }
    }

    /// One refresher pass: starts due lookups, evicts what is no longer useful, and returns
    /// when the next pass is needed.
    fn tick(self: &Arc<Self>, now: Instant) -> Instant {
        let table = self.table.load_full();
        let now_ms = self.now_ms(now);
        let idle_ms = u64::try_from(self.idle_after.as_millis()).unwrap_or(u64::MAX);
        let mut next = now + MAX_SLEEP;
        let mut evict = Vec::new();
        for entry in table.values() {
            let idle = !entry.pinned && now_ms.saturating_sub(entry.last_used()) > idle_ms;
            match &entry.state {
                State::Literal if idle => evict.push(entry.clone()),
                State::Literal => {}
                State::Pending { retry_at } if now >= *retry_at => self.trigger(entry),
                State::Pending { retry_at } => next = next.min(*retry_at),
                State::Positive { stale_until, .. }
                    if idle || (now >= *stale_until && !entry.pinned) =>
                {
                    evict.push(entry.clone());
                }
                State::Positive { refresh_at, .. } if now >= *refresh_at => self.trigger(entry),
                State::Positive { refresh_at, .. } => next = next.min(*refresh_at),
                State::Negative { expires_at } if now < *expires_at => next = next.min(*expires_at),
                State::Negative { .. } if entry.pinned => self.trigger(entry),
                State::Negative { .. } => evict.push(entry.clone()),
            }
        }
        if !evict.is_empty() {
            self.update(|map| {
                for entry in &evict {
                    if map
                        .get(&entry.host)
                        .is_some_and(|current| Arc::ptr_eq(current, entry))
                    {
                        debug!(host = %entry.host, "dropping dns entry");
                        self.remove(map, &entry.host);
                    }
                }
            });
        }
        next
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        METRICS
            .stale_names
            .sub(self.stale_names.load(Ordering::Relaxed));
    }
}

enum Answer {
    Addrs(Arc<[IpAddr]>, Duration),
    Negative(Duration),
    Failed(ResolveError),
}

/// `Some(soa ttl)` for NXDOMAIN/NODATA (inner `None` without an SOA), `None` for failures.
fn negative_ttl(error: &NetError) -> Option<Option<u32>> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no_records)) => Some(no_records.negative_ttl),
        _ => None,
    }
}

async fn wait(mut rx: watch::Receiver<Option<Outcome>>, host: &Arc<str>) -> Outcome {
    let cancelled = || ResolveError::Failed {
        host: host.clone(),
        source: Arc::new(Internal::Cancelled),
    };
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(cancelled())),
        Err(_) => Err(cancelled()),
    }
}

/// Removes the in-flight marker and clears the entry's `refreshing` flag when a lookup task
/// ends, including when it is cancelled (runtime shutdown), so the name can be looked up again.
struct InflightGuard<'a> {
    inner: &'a Inner,
    host: &'a Arc<str>,
    rx: watch::Receiver<Option<Outcome>>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = lock(&self.inner.inflight);
        if inflight
            .get(self.host)
            .is_some_and(|rx| rx.same_channel(&self.rx))
        {
            inflight.remove(self.host);
        }
        drop(inflight);
        if let Some(entry) = self.inner.table.load().get(self.host) {
            entry.refreshing.store(false, Ordering::Release);
        }
    }
}

async fn refresher(inner: Weak<Inner>, mut shutdown: watch::Receiver<bool>) {
    debug!("dns refresher started");
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let Some(inner) = inner.upgrade() else { break };
        let next = inner.tick(Instant::now());
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = inner.wake.notified() => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    debug!("dns refresher stopped");
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections only touch maps; a panic there leaves them consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// hickory with our timeouts and TTL clamps, UDP with TCP fallback on truncation, and its own
/// response cache disabled (`cache_size = 0`): our table is the cache. With hickory's cache on,
/// a refresh ahead of expiry would be answered from that cache instead of the network, and
/// serve-stale / negative caching would be decided in two places.
fn build_hickory(settings: &ResolverSettings) -> Result<TokioResolver, ResolveError> {
    let (config, mut opts) = if settings.nameservers.is_empty() {
        let (config, system) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
            ResolveError::SystemConfig {
                path: RESOLV_CONF,
                source: Arc::new(e),
            }
        })?;
        if config.name_servers().is_empty() {
            return Err(ResolveError::InvalidSettings {
                field: "nameservers",
                reason: "empty, and /etc/resolv.conf lists no nameserver",
            });
        }
        let mut opts = ResolverOpts::default();
        opts.ndots = system.ndots;
        (config, opts)
    } else {
        let servers = settings
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    opts.timeout = settings.timeout;
    // hickory counts retries after the first try; ours counts tries.
    opts.attempts = settings.attempts.saturating_sub(1);
    opts.cache_size = 0;
    opts.ip_strategy = match settings.ip_strategy {
        IpStrategy::Ipv4Only => LookupIpStrategy::Ipv4Only,
        IpStrategy::Ipv6Only => LookupIpStrategy::Ipv6Only,
        IpStrategy::Ipv4AndIpv6 => LookupIpStrategy::Ipv4AndIpv6,
        IpStrategy::Ipv4ThenIpv6 => LookupIpStrategy::Ipv4thenIpv6,
        IpStrategy::Ipv6ThenIpv4 => LookupIpStrategy::Ipv6thenIpv4,
    };
    opts.positive_min_ttl = Some(settings.min_ttl);
    opts.positive_max_ttl = Some(settings.max_ttl.max(settings.min_ttl));
    opts.negative_max_ttl = Some(settings.negative_ttl);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| ResolveError::Init {
            source: Arc::new(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pingora's `ProxyHttp` methods are `async_trait` (`Send` futures): `resolve` must fit.
    #[test]
    fn resolver_and_its_futures_are_send() {
        fn send_sync<T: Send + Sync + 'static>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let settings = ResolverSettings {
            nameservers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            ..Default::default()
        };
        let resolver = Resolver::new(settings).unwrap();
        send_sync(&resolver);
        send(&resolver.resolve("origin.example", 443));
        send(&resolver.resolve_ips("origin.example"));
        send(&resolver.run_refresher(watch::channel(false).1));
    }

    #[test]
    fn negative_ttl_follows_the_soa_within_bounds() {
        let settings = ResolverSettings {
            nameservers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            min_ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(30),
            ..Default::default()
        };
        let inner = Resolver::new(settings).unwrap().inner;
        let s = Duration::from_secs;
        assert_eq!(
            inner.negative_duration(Some(10)),
            s(10),
            "SOA below the cap"
        );
        assert_eq!(
            inner.negative_duration(Some(3600)),
            s(30),
            "capped by negative_ttl"
        );
        assert_eq!(inner.negative_duration(Some(0)), s(5), "floored at min_ttl");
        assert_eq!(inner.negative_duration(None), s(5), "no SOA: min_ttl");
    }

    #[test]
    fn resolve_outside_a_runtime_errors_instead_of_panicking() {
        let settings = ResolverSettings {
            nameservers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            ..Default::default()
        };
        let resolver = Resolver::new(settings).unwrap();
        let mut fut = std::pin::pin!(resolver.resolve("origin.example", 443));
        let waker = std::task::Waker::noop();
        match fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(Err(ResolveError::Failed { source, .. })) => {
                assert_eq!(source.to_string(), "no tokio runtime to run the lookup on");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }
}
