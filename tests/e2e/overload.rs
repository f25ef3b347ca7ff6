//! Overload within 256 MB (issue 10, item 4): edgepop in a memory-limited cgroup holds 10,000 idle keepalive
//! connections while slowloris clients and a cache-hit load run, reclaims slow and idle clients on time, closes
//! connections past a listener's cap, and is neither OOM-killed nor stops answering.
//!
//! Needs root and a writable memory cgroup (v2, or the v1 memory hierarchy); otherwise it prints `skipped: ...`.
//! Memory figures are printed on stderr (`cargo test -p edgepop-tests --test e2e overload -- --nocapture`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edgepop_tests::{
    Client, Edgepop, MemCgroup, Origin, assert_eventually, proc_status_kib, raise_nofile_limit,
    trace_init,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The machine's memory.
const MEMORY_LIMIT: u64 = 256 * 1000 * 1000;
const IDLE_CONNECTIONS: usize = 10_000;
const SLOWLORIS_CLIENTS: usize = 300;
/// Cache-hit requests, spread over `LOAD_WORKERS` keepalive connections.
const LOAD_REQUESTS: usize = 3_000;
const LOAD_WORKERS: usize = 20;
/// `max-connections` of the second listener, and how many connections try to get past it.
const SMALL_CAP: usize = 50;
const OVER_CAP: usize = 20;
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(40);
/// Slack for a debug build on a busy 2-core machine.
const MARGIN: Duration = Duration::from_secs(3);

const HIT: &[u8] = b"GET /hit?cc=max-age%3D600 HTTP/1.1\r\nHost: a.test\r\n\r\n";

fn config(origin: &Origin) -> String {
    format!(
        r#"
[[listener]]
address = "{{http}}"
max-connections = 11000

[[listener]]
address = "{{http2}}"
max-connections = {SMALL_CAP}

[http]
header-timeout = "{header}s"
keepalive-timeout = "{keepalive}s"

[cache]
memory = "8MiB"

[upstream.app]
servers = ["{origin}"]

[[site]]
names = ["a.test"]
upstream = "app"
"#,
        origin = origin.addr,
        header = HEADER_TIMEOUT.as_secs(),
        keepalive = KEEPALIVE_TIMEOUT.as_secs(),
    )
}

/// Memory of the cgroup and of the process at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    cgroup_current: u64,
    cgroup_peak: u64,
    vm_rss_kib: u64,
    vm_hwm_kib: u64,
}

fn sample(cg: &MemCgroup, pid: u32) -> Sample {
    Sample {
        cgroup_current: cg.current(),
        cgroup_peak: cg.peak(),
        vm_rss_kib: proc_status_kib(pid, "VmRSS"),
        vm_hwm_kib: proc_status_kib(pid, "VmHWM"),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn report(label: &str, s: Sample) {
    eprintln!(
        "overload: {label:<44} cgroup current {:7.1} MiB  peak {:7.1} MiB | VmRSS {:7.1} MiB  VmHWM {:7.1} MiB",
        mib(s.cgroup_current),
        mib(s.cgroup_peak),
        s.vm_rss_kib as f64 / 1024.0,
        s.vm_hwm_kib as f64 / 1024.0,
    );
}

/// Sends `req` and reads one response (Content-Length framed). Returns (status, X-Cache-Status).
async fn roundtrip(s: &mut TcpStream, req: &[u8]) -> std::io::Result<(u16, String)> {
    s.write_all(req).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0u16);
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let len: usize = field("content-length").parse().map_err(|_| {
            std::io::Error::other(format!("response without content-length: {head}"))
        })?;
        while buf.len() < end + 4 + len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Ok((status, field("x-cache-status").to_ascii_uppercase()));
    }
}

/// Connects and completes one cache-hit request; the connection is then an idle keepalive connection.
async fn idle_connection(addr: SocketAddr) -> Result<(TcpStream, Instant), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match roundtrip(&mut s, HIT).await {
        Ok((200, _)) => Ok((s, Instant::now())),
        Ok((status, _)) => Err(format!("status {status}")),
        Err(e) => Err(format!("request: {e}")),
    }
}

/// Opens `n` idle keepalive connections to `addr`, 500 at a time.
async fn open_idle(addr: SocketAddr, n: usize) -> Result<Vec<(TcpStream, Instant)>, String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(500);
        let mut set = JoinSet::new();
        for _ in 0..batch {
            set.spawn(idle_connection(addr));
        }
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(c) => out.push(c),
                Err(e) => return Err(format!("idle connection {} failed: {e}", out.len())),
            }
        }
    }
    Ok(out)
}

/// Fails the test with what is known about edgepop's state.
fn fail(ep: &mut Edgepop, cg: &MemCgroup, what: &str) -> ! {
    report("at failure", sample(cg, ep.pid()));
    let stderr = ep.stderr();
    let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
    panic!(
        "{what}\noom kills: {}, exited: {:?}\nedgepop stderr (last lines, newest first):\n{}",
        cg.oom_kills(),
        ep.exited(),
        tail.join("\n")
    );
}

/// A slowloris client: starts a request header and sends one more byte every second, never finishing. Returns
/// how long the server kept the connection open, or `Err` if it was still open after `give_up`.
async fn slowloris(addr: SocketAddr, give_up: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a.test\r\nX-Slow: ")
        .await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok(start.elapsed()),
                Ok(_) => {} // an error answer; the close follows
            },
            _ = tick.tick() => {
                if s.write_all(b"x").await.is_err() {
                    return Ok(start.elapsed());
                }
            }
        }
        if start.elapsed() > give_up {
            return Err(format!("still open after {:?}", start.elapsed()));
        }
    }
}

/// A connection past the cap: returns what the server sent before closing (should be nothing), or `Err` if it
/// stayed open.
async fn past_the_cap(addr: SocketAddr) -> Result<Vec<u8>, String> {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(_) => return Ok(Vec::new()), // refused: fine too
    };
    let _ = s.write_all(HIT).await;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await {
        Ok(_) => Ok(out), // EOF or reset
        Err(_) => Err(format!(
            "connection past the cap still open after 5 s; got {:?}",
            String::from_utf8_lossy(&out)
        )),
    }
}

/// The value of `edgepop_connections_total{listener=addr,result}`.
async fn connections_total(ep: &Edgepop, addr: SocketAddr, result: &str) -> f64 {
    let (_, body) = ep.admin_get("/metrics").await;
    let listener = format!("listener=\"{addr}\"");
    let result = format!("result=\"{result}\"");
    body.lines()
        .filter(|l| l.starts_with("edgepop_connections_total{"))
        .find(|l| l.contains(&listener) && l.contains(&result))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_10k_idle_connections_slowloris_and_load_within_256_mb() {
    trace_init();
    let nofile = raise_nofile_limit(65_536);
    let needed = (IDLE_CONNECTIONS + SLOWLORIS_CLIENTS + 2 * SMALL_CAP + 1_000) as u64;
    if nofile < needed {
        eprintln!("skipped: open files limit {nofile} is below the {needed} this test needs");
        return;
    }
    let cg = match MemCgroup::create(MEMORY_LIMIT) {
        Ok(cg) => cg,
        Err(why) => {
            eprintln!("skipped: overload test needs a memory cgroup: {why}");
            return;
        }
    };
    eprintln!(
        "overload: cgroup {} ({:?}), limit {MEMORY_LIMIT} bytes, open files limit {nofile}",
        cg.path().display(),
        cg.version()
    );

    let origin = Origin::start().await;
    origin.set_body(vec![b'x'; 1024]);
    let mut ep = Edgepop::builder(&config(&origin))
        .in_cgroup(&cg)
        .start()
        .await;
    let pid = ep.pid();
    assert_eq!(cg.pids(), vec![pid], "edgepop is not (alone) in the cgroup");
    assert!(
        ep.stderr().contains("open files limit"),
        "edgepop does not log its open files limit:\n{}",
        ep.stderr()
    );

    // Prime the cache.
    let mut s = TcpStream::connect(ep.http).await.unwrap();
    assert_eq!(roundtrip(&mut s, HIT).await.unwrap(), (200, "MISS".into()));
    assert_eq!(roundtrip(&mut s, HIT).await.unwrap(), (200, "HIT".into()));
    drop(s);
    let base = sample(&cg, pid);
    report("started, cache primed", base);

    // 1. 10,000 idle keepalive connections.
    let opened = Instant::now();
    let idle = tokio::time::timeout(
        Duration::from_secs(120),
        open_idle(ep.http, IDLE_CONNECTIONS),
    )
    .await
    .unwrap_or_else(|_| Err("opening the idle connections took over 120 s".into()))
    .unwrap_or_else(|e| fail(&mut ep, &cg, &e));
    let open_time = opened.elapsed();
    eprintln!(
        "overload: opened {} idle keepalive connections in {open_time:.1?}",
        idle.len()
    );
    let with_idle = sample(&cg, pid);
    report("10,000 idle keepalive connections", with_idle);

    // 2. Slowloris clients and a cache-hit load at the same time.
    let give_up = HEADER_TIMEOUT + MARGIN + Duration::from_secs(5);
    let mut slow = JoinSet::new();
    for _ in 0..SLOWLORIS_CLIENTS {
        slow.spawn(slowloris(ep.http, give_up));
    }
    let load_start = Instant::now();
    let mut load = JoinSet::new();
    for _ in 0..LOAD_WORKERS {
        let addr = ep.http;
        load.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut hits = 0usize;
            for _ in 0..LOAD_REQUESTS / LOAD_WORKERS {
                let (status, cache) = roundtrip(&mut s, HIT).await.unwrap();
                assert_eq!(status, 200);
                hits += usize::from(cache == "HIT");
            }
            hits
        });
    }
    let hits: usize = tokio::time::timeout(Duration::from_secs(60), async {
        let mut total = 0;
        while let Some(r) = load.join_next().await {
            total += r.unwrap();
        }
        total
    })
    .await
    .expect("cache-hit load took over 60 s");
    let load_time = load_start.elapsed();
    eprintln!(
        "overload: {LOAD_REQUESTS} cache-hit requests in {load_time:.1?} ({:.0} req/s) beside {} idle connections",
        LOAD_REQUESTS as f64 / load_time.as_secs_f64(),
        idle.len()
    );
    assert_eq!(hits, LOAD_REQUESTS, "every load request is a cache hit");
    let mut slow_times = Vec::new();
    while let Some(r) = slow.join_next().await {
        slow_times.push(
            r.unwrap()
                .expect("a slowloris connection was not reclaimed"),
        );
    }
    let slowest = slow_times.iter().max().copied().unwrap_or_default();
    let fastest = slow_times.iter().min().copied().unwrap_or_default();
    eprintln!(
        "overload: {} slowloris connections closed by the server after {fastest:.1?}..{slowest:.1?} (header-timeout {HEADER_TIMEOUT:?})",
        slow_times.len()
    );
    assert!(
        slowest <= HEADER_TIMEOUT + MARGIN,
        "a slowloris connection lived {slowest:?}, past header-timeout {HEADER_TIMEOUT:?} + {MARGIN:?}"
    );
    assert!(
        fastest + Duration::from_millis(500) >= HEADER_TIMEOUT,
        "a slowloris connection was closed after {fastest:?}, before header-timeout {HEADER_TIMEOUT:?}"
    );
    report("after slowloris + cache-hit load", sample(&cg, pid));

    // 3. The small listener: SMALL_CAP connections are served, the ones past the cap are closed unanswered.
    let held = open_idle(ep.http2, SMALL_CAP)
        .await
        .unwrap_or_else(|e| fail(&mut ep, &cg, &e));
    let mut over = JoinSet::new();
    for _ in 0..OVER_CAP {
        over.spawn(past_the_cap(ep.http2));
    }
    while let Some(r) = over.join_next().await {
        let got = r.unwrap().unwrap();
        assert!(
            got.is_empty(),
            "a connection past the cap got an answer: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let over_limit = connections_total(&ep, ep.http2, "over_limit").await;
    assert!(
        over_limit >= OVER_CAP as f64,
        "edgepop_connections_total{{result=\"over_limit\"}} is {over_limit}, expected at least {OVER_CAP}"
    );
    // Freeing slots lets new connections in again.
    drop(held);
    assert_eventually!(
        idle_connection(ep.http2).await.is_ok(),
        Duration::from_secs(10),
        "the capped listener does not serve again after connections closed"
    );

    // 4. Still everything up: every idle connection open, a fresh request is a hit, the admin listener answers.
    let now = Instant::now();
    let mut still_open = 0;
    let mut buf = [0u8; 64];
    for (s, last) in &idle {
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still_open += 1,
            other => panic!(
                "an idle connection was closed {:?} after its request, before keepalive-timeout: {other:?}",
                now - *last
            ),
        }
    }
    assert_eq!(still_open, IDLE_CONNECTIONS);
    let resp = Client::plain(ep.http)
        .get("a.test", "/hit?cc=max-age%3D600")
        .await;
    assert_eq!((resp.status, resp.header("x-cache-status")), (200, "HIT"));
    assert_eq!(ep.admin_get("/healthz").await.0, 200);
    let loaded = sample(&cg, pid);
    report("10,000 idle, after all load", loaded);

    // 5. keepalive-timeout reclaims the idle connections.
    let mut closers = JoinSet::new();
    for (mut s, last) in idle {
        closers.spawn(async move {
            let mut buf = [0u8; 64];
            let deadline = last + KEEPALIVE_TIMEOUT + MARGIN + Duration::from_secs(5);
            let r = tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await;
            match r {
                Ok(Ok(0) | Err(_)) => Ok(last.elapsed()),
                Ok(Ok(n)) => Err(format!("unexpected {n} bytes on an idle connection")),
                Err(_) => Err(format!(
                    "idle connection still open after {:?}",
                    last.elapsed()
                )),
            }
        });
    }
    let mut idle_times = Vec::new();
    while let Some(r) = closers.join_next().await {
        idle_times.push(r.unwrap().unwrap());
    }
    let slowest = idle_times.iter().max().copied().unwrap_or_default();
    let fastest = idle_times.iter().min().copied().unwrap_or_default();
    eprintln!(
        "overload: {} idle connections closed by the server {fastest:.1?}..{slowest:.1?} after their request (keepalive-timeout {KEEPALIVE_TIMEOUT:?})",
        idle_times.len()
    );
    assert!(
        slowest <= KEEPALIVE_TIMEOUT + MARGIN,
        "an idle connection lived {slowest:?}, past keepalive-timeout {KEEPALIVE_TIMEOUT:?} + {MARGIN:?}"
    );
    assert!(
        fastest + Duration::from_secs(1) >= KEEPALIVE_TIMEOUT,
        "an idle connection was closed after {fastest:?}, before keepalive-timeout"
    );
    assert_eventually!(
        ep.metric(&format!(
            "edgepop_connections_open{{listener=\"{}\"}}",
            ep.http
        ))
        .await
            == 0.0,
        Duration::from_secs(10),
        "edgepop_connections_open does not return to 0"
    );
    let after = sample(&cg, pid);
    report("idle connections reclaimed", after);

    // 6. Not killed, still serving.
    assert_eq!(cg.oom_kills(), 0, "the OOM killer ran in the cgroup");
    assert!(ep.exited().is_none(), "edgepop exited: {:?}", ep.exited());
    assert_eq!(ep.admin_get("/healthz").await.0, 200);
    let resp = Client::plain(ep.http)
        .get("a.test", "/hit?cc=max-age%3D600")
        .await;
    assert_eq!((resp.status, resp.header("x-cache-status")), (200, "HIT"));
    let per_conn = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / IDLE_CONNECTIONS as f64 / 1024.0;
    eprintln!(
        "overload: per idle keepalive connection: {:.1} KiB RSS, {:.1} KiB cgroup; peak {:.1} MiB cgroup, VmHWM {:.1} MiB",
        per_conn(with_idle.vm_rss_kib * 1024, base.vm_rss_kib * 1024),
        per_conn(with_idle.cgroup_current, base.cgroup_current),
        mib(after.cgroup_peak),
        after.vm_hwm_kib as f64 / 1024.0
    );
    assert!(after.cgroup_peak < MEMORY_LIMIT);

    drop(ep);
    assert!(
        cg.pids().is_empty(),
        "processes left in the cgroup: {:?}",
        cg.pids()
    );
    cg.remove().unwrap();
}
