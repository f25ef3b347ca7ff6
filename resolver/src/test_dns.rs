//! A tiny authoritative DNS server on 127.0.0.1, for tests (feature `test-util`).
//!
//! It serves `A`/`AAAA` records from a table the test edits while the server runs, answers
//! NXDOMAIN (with an SOA, so the answer is negatively cacheable) for unknown names and NODATA
//! for missing families, counts the queries it receives, and can be stopped and restarted on the
//! same port to simulate an outage. UDP and TCP share the port; UDP answers that do not fit are
//! truncated so clients retry over TCP.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use edgepop_resolver::{Resolver, test_dns::TestDns};
//!
//! let dns = TestDns::start().await?;
//! dns.set_a("origin.test.", &["192.0.2.10".parse()?], 60);
//! let resolver = Resolver::new(dns.settings())?;
//! let addrs = resolver.resolve("origin.test.", 443).await?;
//! assert_eq!(&addrs[..], &["192.0.2.10:443".parse()?]);
//! assert_eq!(dns.queries("origin.test"), 1);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::ResolverSettings;

/// A running test DNS server. Stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    /// Lower-case FQDN -> records.
    zone: Mutex<HashMap<String, Records>>,
    /// Lower-case FQDN -> queries received (any type, UDP and TCP).
    queries: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    tcp: AtomicUsize,
    negative_ttl: AtomicU32,
    truncate_udp: AtomicBool,
    unresponsive: AtomicBool,
    delay_ms: AtomicU64,
}

#[derive(Default)]
struct Records {
    a: Vec<Ipv4Addr>,
    a_ttl: u32,
    aaaa: Vec<Ipv6Addr>,
    aaaa_ttl: u32,
}

impl TestDns {
    /// Binds UDP and TCP on the same free port of 127.0.0.1 and starts serving (an empty zone).
    pub async fn start() -> io::Result<Self> {
        let shared = Arc::new(Shared {
            negative_ttl: AtomicU32::new(30),
            ..Shared::default()
        });
        let mut last_error = None;
        // The UDP port may be taken for TCP by someone else: try a few ports.
        for _ in 0..20 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let tasks = spawn_servers(udp, tcp, &shared);
                    return Ok(Self {
                        addr,
                        shared,
                        tasks: Mutex::new(tasks),
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
    }

    /// The address to give a resolver (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolver settings pointing at this server, with test-friendly timings: 500 ms timeout,
    /// one attempt, `min_ttl` 1 s. Adjust with struct update syntax.
    pub fn settings(&self) -> ResolverSettings {
        ResolverSettings {
            nameservers: vec![self.addr],
            timeout: Duration::from_millis(500),
            attempts: 1,
            min_ttl: Duration::from_secs(1),
            ..ResolverSettings::default()
        }
    }

    /// Sets the `A` records of `name` (trailing dot optional, case-insensitive). An empty slice
    /// removes them; the name then answers NODATA for `A` if it has `AAAA` records, else
    /// NXDOMAIN.
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        self.edit(name, |r| {
            r.a = ips.to_vec();
            r.a_ttl = ttl;
        });
    }

    /// Sets the `AAAA` records of `name`, like [`set_a`](Self::set_a).
    pub fn set_aaaa(&self, name: &str, ips: &[Ipv6Addr], ttl: u32) {
        self.edit(name, |r| {
            r.aaaa = ips.to_vec();
            r.aaaa_ttl = ttl;
        });
    }

    /// Removes `name`: queries for it get NXDOMAIN.
    pub fn remove(&self, name: &str) {
        lock(&self.shared.zone).remove(&key(name));
    }

    /// TTL and `minimum` of the SOA sent with NXDOMAIN/NODATA answers (default 30 s).
    pub fn set_negative_ttl(&self, secs: u32) {
        self.shared.negative_ttl.store(secs, Ordering::Relaxed);
    }

    /// Answer every UDP query with an empty truncated (TC) response, forcing TCP.
    pub fn set_truncate_udp(&self, on: bool) {
        self.shared.truncate_udp.store(on, Ordering::Relaxed);
    }

    /// Receive (and count) queries but never answer, so clients time out. Unlike
    /// [`stop`](Self::stop), which closes the port and gets clients an immediate error.
    pub fn set_unresponsive(&self, on: bool) {
        self.shared.unresponsive.store(on, Ordering::Relaxed);
    }

    /// Answer every query this much later (a slow nameserver). Default zero.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Queries received for `name` (any type, UDP and TCP; trailing dot optional).
    pub fn queries(&self, name: &str) -> usize {
        lock(&self.shared.queries)
            .get(&key(name))
            .copied()
            .unwrap_or(0)
    }

    /// Queries received for all names.
    pub fn total_queries(&self) -> usize {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.shared.tcp.load(Ordering::Relaxed)
    }

    /// Closes the sockets (and open TCP connections). Returns once the port is released.
    pub async fn stop(&self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Serves again on the same port after [`stop`](Self::stop). The zone and counters are
    /// kept. Fails if another process took the port meanwhile.
    pub async fn restart(&self) -> io::Result<()> {
        self.stop().await;
        // Cancelled connection tasks may hold the port for a moment: retry briefly.
        let mut attempt = 0;
        let (udp, tcp) = loop {
            let bound = async {
                Ok::<_, io::Error>((
                    UdpSocket::bind(self.addr).await?,
                    TcpListener::bind(self.addr).await?,
                ))
            };
            match bound.await {
                Ok(sockets) => break sockets,
                Err(e) if attempt >= 20 => return Err(e),
                Err(_) => attempt += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        *lock(&self.tasks) = spawn_servers(udp, tcp, &self.shared);
        Ok(())
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut Records)) {
        let mut zone = lock(&self.shared.zone);
        let key = key(name);
        let records = zone.entry(key.clone()).or_default();
        f(records);
        if records.a.is_empty() && records.aaaa.is_empty() {
            zone.remove(&key);
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDns")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn spawn_servers(udp: UdpSocket, tcp: TcpListener, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(serve_udp(udp, shared.clone())),
        tokio::spawn(serve_tcp(tcp, shared.clone())),
    ]
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    // Delayed answers live in this set, so aborting the server task cancels them too.
    let mut delayed = JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        while delayed.try_join_next().is_some() {}
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(response) = shared.respond(&buf[..len], true) else {
            continue;
        };
        let delay = shared.delay();
        if delay.is_zero() {
            let _ = socket.send_to(&response, peer).await;
        } else {
            let socket = socket.clone();
            delayed.spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&response, peer).await;
            });
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in this set, so aborting the listener task closes them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    loop {
        let len = usize::from(stream.read_u16().await?);
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        shared.tcp.fetch_add(1, Ordering::Relaxed);
        if let Some(response) = shared.respond(&buf, false) {
            tokio::time::sleep(shared.delay()).await;
            let len = u16::try_from(response.len()).map_err(io::Error::other)?;
            stream.write_u16(len).await?;
            stream.write_all(&response).await?;
        }
    }
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    /// The wire response to one wire query, or `None` to stay silent.
    fn respond(&self, request: &[u8], udp: bool) -> Option<Vec<u8>> {
        let request = Message::from_vec(request).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        let Some(query) = request.queries.first().cloned() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response.to_vec().ok();
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        *lock(&self.queries)
            .entry(key(&query.name().to_ascii()))
            .or_default() += 1;
        if self.unresponsive.load(Ordering::Relaxed) {
            return None;
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            response.add_query(query);
            return response.to_vec().ok();
        }

        let name = query.name().clone();
        let answers: Option<Vec<Record>> =
            lock(&self.zone)
                .get(&key(&name.to_ascii()))
                .map(|records| match query.query_type() {
                    RecordType::A => records
                        .a
                        .iter()
                        .map(|ip| Record::from_rdata(name.clone(), records.a_ttl, RData::A(A(*ip))))
                        .collect(),
                    RecordType::AAAA => records
                        .aaaa
                        .iter()
                        .map(|ip| {
                            Record::from_rdata(
                                name.clone(),
                                records.aaaa_ttl,
                                RData::AAAA(AAAA(*ip)),
                            )
                        })
                        .collect(),
                    _ => Vec::new(),
                });
        response.add_query(query);
        match answers {
            Some(answers) if !answers.is_empty() => {
                response.add_answers(answers);
            }
            found => {
                if found.is_none() {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                let ttl = self.negative_ttl.load(Ordering::Relaxed);
                let zone = if name.num_labels() > 1 {
                    name.base_name()
                } else {
                    Name::root()
                };
                let soa = SOA::new(
                    zone.prepend_label("ns").unwrap_or_else(|_| zone.clone()),
                    zone.prepend_label("hostmaster")
                        .unwrap_or_else(|_| zone.clone()),
                    1,
                    3600,
                    600,
                    86_400,
                    ttl,
                );
                response.add_authority(Record::from_rdata(zone, ttl, RData::SOA(soa)));
            }
        }

        let bytes = response.to_vec().ok()?;
        let limit = usize::from(
            request
                .edns
                .as_ref()
                .map_or(512, |e| e.max_payload())
                .max(512),
        );
        if udp && (self.truncate_udp.load(Ordering::Relaxed) || bytes.len() > limit) {
            return response.truncate().to_vec().ok();
        }
        Some(bytes)
    }
}

/// Lower-case FQDN, the table and counter key.
fn key(name: &str) -> String {
    let mut key = name.to_ascii_lowercase();
    if !key.ends_with('.') {
        key.push('.');
    }
    key
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
