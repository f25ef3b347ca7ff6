//! Upstreams: names through a real DNS server on loopback (TTL changes, outages, several records, unknown names),
//! balancing, retries and passive health, active health checks, source-address binding, HTTPS to the origin,
//! and binding to a network interface (`tailscale0` in a network namespace; needs root).

use std::convert::Infallible;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgepop_resolver::test_dns::TestDns;
use edgepop_tests::{Client, Edgepop, Origin, TestCa, TestPair, assert_eventually, trace_init};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of `name{labels...}` in `/metrics` (labels in any order), or 0.
async fn metric(ep: &Edgepop, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = ep.admin_get("/metrics").await;
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A plain listener, `[dns]` pointing at `dns`, and site a.test in front of `[upstream.app]` = `upstream`.
fn config(dns: Option<&TestDns>, upstream: &str) -> String {
    let dns = dns.map_or_else(String::new, |d| {
        format!(
            "[dns]\nnameservers = [\"{}\"]\nmin-ttl = \"1s\"\ntimeout = \"3s\"\nip-strategy = \"ipv4-only\"\n",
            d.addr()
        )
    });
    format!(
        r#"
[[listener]]
address = "{{http}}"

{dns}
[upstream.app]
connect-timeout = "1s"
{upstream}

[[site]]
names = ["a.test"]
upstream = "app"
"#
    )
}

/// Two recording origins on 127.0.0.2 and 127.0.0.3, same port (one DNS name, one port, two addresses).
async fn two_loopback_origins() -> (Origin, Origin) {
    let a = Origin::start_on(SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let b = Origin::start_on(SocketAddr::from(([127, 0, 0, 3], a.addr.port()))).await;
    (a, b)
}

async fn get(ep: &Edgepop, path: &str) -> edgepop_tests::Resp {
    Client::plain(ep.http).get("a.test", path).await
}

#[tokio::test]
async fn a_changed_record_is_followed_after_its_ttl_without_a_request_path_lookup() {
    trace_init();
    let dns = TestDns::start().await.unwrap();
    let (a, b) = two_loopback_origins().await;
    dns.set_a("origin.test", &[Ipv4Addr::new(127, 0, 0, 2)], 1);
    let upstream = format!("servers = [\"origin.test:{}\"]", a.addr.port());
    let ep = Edgepop::start(&config(Some(&dns), &upstream)).await;

    assert_eq!(get(&ep, "/one").await.status, 200);
    assert_eq!(a.hits(), 1);
    assert_eq!(b.hits(), 0);

    // The record moves; the nameserver now takes 1.5 s to answer. Requests must not wait for it: the
    // background refresher re-resolves after the 1 s TTL and requests switch without ever being slow.
    dns.set_a("origin.test", &[Ipv4Addr::new(127, 0, 0, 3)], 1);
    dns.set_delay(Duration::from_millis(1500));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut slowest = Duration::ZERO;
    while b.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "requests never moved to the new address"
        );
        let started = Instant::now();
        assert_eq!(get(&ep, "/poll").await.status, 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited for DNS: {slowest:?}"
    );
    assert!(dns.queries("origin.test") >= 2, "the change was looked up");
    let a_before = a.hits();
    for _ in 0..5 {
        assert_eq!(get(&ep, "/after").await.status, 200);
    }
    assert_eq!(a.hits(), a_before, "the old address is no longer used");
}

#[tokio::test]
async fn a_dns_outage_keeps_requests_working_on_the_last_answer() {
    trace_init();
    let dns = TestDns::start().await.unwrap();
    let origin = Origin::start_on(SocketAddr::from(([127, 0, 0, 2], 0))).await;
    dns.set_a("origin.test", &[Ipv4Addr::new(127, 0, 0, 2)], 1);
    let upstream = format!("servers = [\"origin.test:{}\"]", origin.addr.port());
    let ep = Edgepop::start(&config(Some(&dns), &upstream)).await;
    assert_eq!(get(&ep, "/before").await.status, 200);

    dns.stop().await;
    // Well past the 1 s TTL, for three seconds: every request is still answered from the stale record.
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        let resp = get(&ep, "/during").await;
        assert_eq!(resp.status, 200, "request {n} during the outage");
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(origin.hits() > n / 2, "the origin served the outage");
}

#[tokio::test]
async fn several_a_records_spread_requests_across_the_addresses() {
    trace_init();
    let dns = TestDns::start().await.unwrap();
    let (a, b) = two_loopback_origins().await;
    dns.set_a(
        "origin.test",
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
        60,
    );
    let upstream = format!("servers = [\"origin.test:{}\"]", a.addr.port());
    let ep = Edgepop::start(&config(Some(&dns), &upstream)).await;
    for i in 0..20 {
        assert_eq!(get(&ep, &format!("/r{i}")).await.status, 200);
    }
    assert!(
        a.hits() >= 5 && b.hits() >= 5,
        "round robin: a={} b={}",
        a.hits(),
        b.hits()
    );
    assert_eq!(a.hits() + b.hits(), 20);
}

#[tokio::test]
async fn consistent_hash_keeps_a_url_on_one_address() {
    trace_init();
    let (a, b) = two_loopback_origins().await;
    let upstream = format!(
        "servers = [\"{}\", \"{}\"]\nbalance = \"consistent-hash\"",
        a.addr, b.addr
    );
    let ep = Edgepop::start(&config(None, &upstream)).await;
    for _ in 0..6 {
        assert_eq!(get(&ep, "/same?x=1").await.status, 200);
    }
    assert!(
        (a.hits(), b.hits()) == (6, 0) || (a.hits(), b.hits()) == (0, 6),
        "one URL, one address: a={} b={}",
        a.hits(),
        b.hits()
    );
    for i in 0..30 {
        assert_eq!(get(&ep, &format!("/p{i}")).await.status, 200);
    }
    assert!(
        a.hits() > 6 && b.hits() > 6,
        "many URLs use both: a={} b={}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test]
async fn an_unknown_name_gives_502_quickly_with_a_log_line_naming_it() {
    trace_init();
    let dns = TestDns::start().await.unwrap();
    let ep = Edgepop::start(&config(Some(&dns), "servers = [\"nope.test:80\"]")).await;
    let started = Instant::now();
    let resp = get(&ep, "/").await;
    assert_eq!(resp.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eventually!(
        ep.stderr().contains("nope.test") && ep.stderr().contains("resolution failed"),
        Duration::from_secs(5),
        "no log line names the host; stderr:\n{}",
        ep.stderr()
    );
    assert!(metric(&ep, "edgepop_upstream_errors_total", &[("reason", "dns")]).await >= 1.0);
}

#[tokio::test]
async fn a_dead_address_is_retried_past_then_skipped_after_max_fails() {
    trace_init();
    let origin = Origin::start().await;
    let upstream = format!(
        "servers = [\"127.0.0.1:1\", \"{}\"]\nmax-fails = 2\nfail-timeout = \"1h\"",
        origin.addr
    );
    let ep = Edgepop::start(&config(None, &upstream)).await;
    for i in 0..10 {
        let resp = get(&ep, &format!("/n{i}")).await;
        assert_eq!(
            resp.status, 200,
            "request {i} retried onto the live address"
        );
    }
    assert_eq!(origin.hits(), 10);
    // Two refusals take the dead address out; after that it is not tried at all.
    assert_eq!(
        metric(
            &ep,
            "edgepop_upstream_errors_total",
            &[("reason", "refused")]
        )
        .await,
        2.0
    );
    let down = [("upstream", "app"), ("state", "down")];
    assert_eventually!(
        metric(&ep, "edgepop_upstream_addresses", &down).await == 1.0,
        Duration::from_secs(5),
        "the dead address is not reported down"
    );
    assert_eq!(
        metric(
            &ep,
            "edgepop_upstream_addresses",
            &[("upstream", "app"), ("state", "up")]
        )
        .await,
        1.0
    );
    assert!(
        ep.stderr().contains("origin refused the connection")
            && ep.stderr().contains("marked down"),
        "stderr:\n{}",
        ep.stderr()
    );
}

#[tokio::test]
async fn an_active_health_check_takes_a_503_address_out_and_back() {
    trace_init();
    let a = Origin::start().await;
    let b = Origin::start().await;
    let upstream = format!(
        "servers = [\"{}\", \"{}\"]\n[upstream.app.health-check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"1s\"",
        a.addr, b.addr
    );
    let ep = Edgepop::start(&config(None, &upstream)).await;
    let down = [("upstream", "app"), ("state", "down")];
    let page_hits = |o: &Origin| o.seen().iter().filter(|s| s.uri == "/page").count();

    assert_eventually!(
        a.seen().iter().any(|s| s.uri == "/health"),
        Duration::from_secs(5),
        "no health check reached the origin"
    );
    a.force_status(503);
    assert_eventually!(
        metric(&ep, "edgepop_upstream_addresses", &down).await == 1.0,
        Duration::from_secs(5),
        "the 503 address is not marked down"
    );
    let before = page_hits(&a);
    for _ in 0..10 {
        assert_eq!(get(&ep, "/page").await.status, 200);
    }
    assert_eq!(page_hits(&a), before, "a down address got requests");
    assert!(
        metric(
            &ep,
            "edgepop_upstream_health_checks_total",
            &[("upstream", "app"), ("result", "fail")]
        )
        .await
            >= 1.0
    );

    a.force_status(0);
    assert_eventually!(
        metric(&ep, "edgepop_upstream_addresses", &down).await == 0.0,
        Duration::from_secs(5),
        "the recovered address is not marked up"
    );
    for _ in 0..10 {
        assert_eq!(get(&ep, "/page").await.status, 200);
    }
    assert!(
        page_hits(&a) > before,
        "the recovered address gets requests"
    );
    assert!(ep.stderr().contains("health check failed; address is down"));
}

/// A TCP origin that records the peer address of each connection and answers 200.
async fn peer_recording_origin() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_recording(listener)
}

/// Serves `listener` like [`peer_recording_origin`].
fn serve_recording(listener: tokio::net::TcpListener) -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
            });
        }
    });
    (addr, peers)
}

#[tokio::test]
async fn bind_address_sets_the_source_and_an_unusable_one_fails_as_bind() {
    trace_init();
    let (addr, peers) = peer_recording_origin().await;
    let text = format!(
        r#"{}
[upstream.unbindable]
servers = ["{addr}"]
bind-address = "192.0.2.77"

[[site]]
names = ["b.test"]
upstream = "unbindable"
"#,
        config(
            None,
            &format!("servers = [\"{addr}\"]\nbind-address = \"127.0.0.2\"")
        )
    );
    let ep = Edgepop::start(&text).await;
    assert_eq!(get(&ep, "/").await.status, 200);
    let seen = peers.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].ip(),
        std::net::IpAddr::from([127, 0, 0, 2]),
        "source address"
    );

    let resp = Client::plain(ep.http).get("b.test", "/").await;
    assert_eq!(resp.status, 502);
    assert!(metric(&ep, "edgepop_upstream_errors_total", &[("reason", "bind")]).await >= 1.0);
    assert_eq!(peers.lock().unwrap().len(), 1, "nothing connected");
}

/// An HTTPS origin on 127.0.0.1:0 presenting `pair`; counts requests.
async fn tls_origin(pair: &TestPair) -> (SocketAddr, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(pair.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"hello over tls\n",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn upstream_tls_verifies_the_origin_against_the_configured_ca() {
    trace_init();
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let (addr, hits) = tls_origin(&ca.leaf(&["origin.test"])).await;
    let text = format!(
        r#"{}
[upstream.wrong-ca]
servers = ["{addr}"]
tls = true
sni = "origin.test"
ca-file = "{{dir}}/other-ca.pem"

[upstream.wrong-name]
servers = ["{addr}"]
tls = true
sni = "someone-else.test"
ca-file = "{{dir}}/ca.pem"

[[site]]
names = ["b.test"]
upstream = "wrong-ca"

[[site]]
names = ["c.test"]
upstream = "wrong-name"
"#,
        config(
            None,
            &format!(
                "servers = [\"{addr}\"]\ntls = true\nsni = \"origin.test\"\nca-file = \"{{dir}}/ca.pem\""
            )
        )
    );
    let builder = Edgepop::builder(&text);
    std::fs::write(builder.dir().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(builder.dir().join("other-ca.pem"), other_ca.pem()).unwrap();
    let ep = builder.start().await;

    let resp = get(&ep, "/secure").await;
    assert_eq!(resp.status, 200, "{}", ep.stderr());
    assert_eq!(resp.text(), "hello over tls\n");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    for host in ["b.test", "c.test"] {
        let resp = Client::plain(ep.http).get(host, "/").await;
        assert_eq!(resp.status, 502, "{host}: verification must fail");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "no request passed a failed verification"
    );
    assert!(metric(&ep, "edgepop_upstream_errors_total", &[("reason", "tls")]).await >= 2.0);
    assert!(ep.stderr().contains("TLS handshake with the origin failed"));
}

/// The network namespace, veth pair and route of the interface test; removed on drop, even
/// when the test panics.
struct Netns {
    ns: String,
    route: Option<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = quiet(&["ip", "link", "del", "tailscale0"]);
        if let Some(route) = self.route.take() {
            let _ = quiet(&["ip", "route", "del", "unreachable", &route]);
        }
        let _ = quiet(&["ip", "netns", "del", &self.ns]);
    }
}

fn quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prints past the test harness's capture, so a skip shows in `cargo test` output.
fn skipped(why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {why}: upstream::bind_interface_leaves_through_tailscale0_and_fails_clearly_when_it_is_down_or_gone"
    );
}

fn tx_packets() -> u64 {
    std::fs::read_to_string("/sys/class/net/tailscale0/statistics/tx_packets")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn bind_interface_leaves_through_tailscale0_and_fails_clearly_when_it_is_down_or_gone() {
    trace_init();
    if !nix::unistd::geteuid().is_root() {
        skipped("needs root (netns)");
        return;
    }
    if !quiet(&["ip", "-V"]) {
        skipped("needs iproute2 (ip)");
        return;
    }
    if std::path::Path::new("/sys/class/net/tailscale0").exists() {
        skipped("an interface named tailscale0 already exists here");
        return;
    }
    let pid = std::process::id();
    let x = pid % 250 + 2;
    let (local, remote) = (format!("10.200.{x}.1"), format!("10.200.{x}.2"));
    let peer = format!("ep-peer-{}", pid % 10_000_000);
    let mut guard = Netns {
        ns: format!("ep-{pid}"),
        route: None,
    };
    let ns = guard.ns.clone();
    run(&["ip", "netns", "add", &ns]);
    run(&[
        "ip",
        "link",
        "add",
        "tailscale0",
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ]);
    run(&["ip", "link", "set", &peer, "netns", &ns]);
    let ns_ip = |args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", ns.as_str(), "ip"];
        full.extend_from_slice(args);
        run(&full);
    };
    ns_ip(&["addr", "add", &format!("{remote}/30"), "dev", &peer]);
    ns_ip(&["link", "set", &peer, "up"]);
    ns_ip(&["link", "set", "lo", "up"]);

    // Where the kernel allows it (rp_filter off), the main table says the origin is unreachable: only a socket
    // bound to tailscale0 can reach it, which proves the binding (and nothing leaves the machine otherwise).
    // With rp_filter on, replies would be dropped that way, so tailscale0 gets the ordinary /30 route and the
    // proof is the interface's packet counter and the source address the origin saw.
    let unreachable_elsewhere = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
        .is_ok_and(|v| v.trim() == "0");
    if unreachable_elsewhere {
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{local}/32"),
            "dev",
            "tailscale0",
        ]);
        let _ = std::fs::write("/proc/sys/net/ipv4/conf/tailscale0/rp_filter", "0");
        run(&["ip", "route", "add", "unreachable", &format!("{remote}/32")]);
        guard.route = Some(format!("{remote}/32"));
    } else {
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{local}/30"),
            "dev",
            "tailscale0",
        ]);
    }
    run(&["ip", "link", "set", "tailscale0", "up"]);

    // The origin listens inside the namespace: a thread enters it to create the socket (a socket stays in the
    // namespace it was created in), and this runtime serves it, recording each connection's source address.
    let ns_file = format!("/var/run/netns/{ns}");
    let bind_to = format!("{remote}:8080");
    let listener = std::thread::spawn(move || {
        let netns = std::fs::File::open(&ns_file).unwrap();
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpListener::bind(&bind_to).unwrap()
    })
    .join()
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    let (_, peers) = serve_recording(tokio::net::TcpListener::from_std(listener).unwrap());

    let text = format!(
        r#"{}
[upstream.unbound]
servers = ["{remote}:8080"]
connect-timeout = "1s"

[[site]]
names = ["b.test"]
upstream = "unbound"
"#,
        config(
            None,
            &format!("servers = [\"{remote}:8080\"]\nbind-interface = \"tailscale0\"")
        )
    );
    let ep = Edgepop::start(&text).await;

    let before = tx_packets();
    let resp = get(&ep, "/through-the-tunnel").await;
    assert_eq!(resp.status, 200, "stderr:\n{}", ep.stderr());
    assert!(tx_packets() > before, "nothing left through tailscale0");
    let seen = peers.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one connection reached the origin");
    assert_eq!(
        seen[0].ip().to_string(),
        local,
        "source address on tailscale0"
    );
    if unreachable_elsewhere {
        let resp = Client::plain(ep.http).get("b.test", "/").await;
        assert_eq!(
            resp.status, 502,
            "without the binding the origin is unreachable"
        );
    }
    assert_eventually!(
        metric(
            &ep,
            "edgepop_upstream_interface_up",
            &[("interface", "tailscale0")]
        )
        .await
            == 1.0,
        Duration::from_secs(5),
        "the interface gauge does not say up"
    );

    // Down: a clear error, not "refused", not "dns".
    run(&["ip", "link", "set", "tailscale0", "down"]);
    assert_eventually!(
        get(&ep, "/down").await.status == 502
            && ep.stderr().contains("interface tailscale0 is down"),
        Duration::from_secs(10),
        "no 502 / clear log with tailscale0 down; stderr:\n{}",
        ep.stderr()
    );
    // Gone: says so.
    run(&["ip", "link", "del", "tailscale0"]);
    assert_eventually!(
        get(&ep, "/gone").await.status == 502
            && ep.stderr().contains("interface tailscale0 not found"),
        Duration::from_secs(10),
        "no 502 / clear log with tailscale0 deleted; stderr:\n{}",
        ep.stderr()
    );
    assert!(
        metric(
            &ep,
            "edgepop_upstream_errors_total",
            &[("reason", "interface")]
        )
        .await
            >= 2.0
    );
    assert_eventually!(
        metric(
            &ep,
            "edgepop_upstream_interface_up",
            &[("interface", "tailscale0")]
        )
        .await
            == 0.0,
        Duration::from_secs(5),
        "the interface gauge still says up"
    );
    let log_text = ep.stderr();
    let interface_lines = log_text
        .lines()
        .filter(|l| l.contains("interface tailscale0"))
        .collect::<Vec<_>>();
    assert!(
        interface_lines
            .iter()
            .all(|l| !l.contains("refused") && !l.contains("resolution")),
        "interface errors are told apart: {interface_lines:?}"
    );
}
