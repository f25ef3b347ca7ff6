//! Parity with the nginx edge: PROXY protocol and the real client address, compression, header limits,
//! redirects, HSTS and header rules, the access log.

use std::time::Duration;

use bytes::Bytes;
use edgepop_tests::{Client, Edgepop, Origin, TestCa, assert_eventually, raw_exchange, trace_init};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(origin: &Origin, trusted: &str) -> String {
    format!(
        r#"
[[listener]]
address = "{{http}}"
proxy-protocol = "required"
trusted-proxies = ["{trusted}"]

[[listener]]
address = "{{https}}"
tls = true
proxy-protocol = "optional"
trusted-proxies = ["{trusted}"]

[[listener]]
address = "{{http2}}"

[tls]
certs-dir = "{{certs}}"

[cache]
memory = "8MiB"

[upstream.app]
servers = ["{origin}"]

[[site]]
names = ["a.test"]
upstream = "app"
hsts = "max-age=63072000"
add-headers = {{ "X-Frame-Options" = "DENY" }}
remove-headers = ["X-Powered-By"]

[[site]]
names = ["secure.test"]
upstream = "app"
redirect-https = true
"#,
        origin = origin.addr
    )
}

async fn start(origin: &Origin, trusted: &str) -> (Edgepop, TestCa) {
    trace_init();
    let ca = TestCa::new();
    let builder = Edgepop::builder(&config(origin, trusted));
    builder.cert(&ca, "a.test", &["a.test"]);
    (builder.wait_ready().start().await, ca)
}

fn v2_header(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // v2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h
}

const GET: &[u8] = b"GET /pp HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn proxy_protocol_v1_and_v2_on_the_plain_listener_set_the_client_address() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin, "127.0.0.0/8").await;

    let mut req = b"PROXY TCP4 198.51.100.9 10.0.0.1 4242 80\r\n".to_vec();
    req.extend_from_slice(GET);
    let out = raw_exchange(ep.http, &req, Duration::from_secs(2)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(origin.last().header("x-real-ip"), "198.51.100.9");
    assert_eq!(origin.last().header("x-forwarded-for"), "198.51.100.9");

    let mut req = v2_header([203, 0, 113, 7], 5555, [10, 0, 0, 1], 80);
    req.extend_from_slice(GET);
    let out = raw_exchange(ep.http, &req, Duration::from_secs(2)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(origin.last().header("x-real-ip"), "203.0.113.7");

    // The access log (stdout, combined format) shows the PROXY address.
    edgepop_tests::assert_eventually!(
        ep.stdout()
            .lines()
            .any(|l| l.starts_with("203.0.113.7 - - [") && l.contains("\"GET /pp HTTP/1.1\" 200")),
        Duration::from_secs(5),
        "no access log line with the real client address:\n{}",
        ep.stdout()
    );

    // Required: a connection without a header is closed without an answer.
    let hits = origin.hits();
    let out = raw_exchange(ep.http, GET, Duration::from_secs(2)).await;
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    // Malformed header: closed, counted.
    let out = raw_exchange(
        ep.http,
        b"PROXY TCP4 not-an-ip\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.is_empty());
    assert_eq!(origin.hits(), hits);
    assert!(
        ep.metric(r#"edgepop_proxy_protocol_errors_total{reason="malformed"}"#)
            .await
            >= 1.0
    );
    assert!(
        ep.metric(r#"edgepop_proxy_protocol_errors_total{reason="missing"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn curl_haproxy_protocol_works_when_installed() {
    if !edgepop_tests::have_curl() {
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let origin = Origin::start().await;
    let (ep, _) = start(&origin, "127.0.0.0/8").await;
    let url = format!("http://{}/curl", ep.http);
    let (code, out, err) =
        edgepop_tests::curl(&["-sS", "--haproxy-protocol", "-H", "Host: a.test", &url]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello from origin\n");
    assert_eq!(origin.last().header("x-real-ip"), "127.0.0.1");
}

#[tokio::test]
async fn proxy_protocol_before_tls_and_untrusted_sources() {
    let origin = Origin::start().await;
    let (ep, ca) = start(&origin, "127.0.0.0/8").await;

    let mut tcp = tokio::net::TcpStream::connect(ep.https).await.unwrap();
    tcp.write_all(&v2_header([192, 0, 2, 44], 6000, [10, 0, 0, 1], 443))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(GET).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(origin.last().header("x-real-ip"), "192.0.2.44");
    assert_eq!(origin.last().header("x-forwarded-proto"), "https");

    // Optional mode: no header is fine too.
    assert_eq!(
        Client::tls(ep.https, &ca, true)
            .get("a.test", "/")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_header_from_an_untrusted_peer_is_refused() {
    let origin = Origin::start().await;
    let (ep, ca) = start(&origin, "10.0.0.0/8").await;
    let mut req = b"PROXY TCP4 198.51.100.9 10.0.0.1 4242 80\r\n".to_vec();
    req.extend_from_slice(GET);
    let out = raw_exchange(ep.http, &req, Duration::from_secs(2)).await;
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    // On the optional TLS listener, an untrusted peer may still connect without a header.
    assert_eq!(
        Client::tls(ep.https, &ca, false)
            .get("a.test", "/")
            .await
            .status,
        200
    );
    assert_eq!(origin.last().header("x-real-ip"), "127.0.0.1");
    assert!(
        ep.metric(r#"edgepop_proxy_protocol_errors_total{reason="untrusted"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn compression_negotiates_and_cache_hits_serve_stored_bytes() {
    let origin = Origin::start().await;
    origin.set_body("edgepop compresses text once per variant. ".repeat(100));
    let (ep, _) = start(&origin, "127.0.0.0/8").await;
    let path = "/big?cc=max-age%3D600&ct=text%2Fhtml";
    let client = |ae: &str| Client::plain(ep.http2).header("accept-encoding", ae);

    let gz = client("gzip, deflate").get("a.test", path).await;
    assert_eq!(gz.header("content-encoding"), "gzip");
    assert_eq!(&gz.body[..2], &[0x1f, 0x8b]);
    assert!(
        gz.header("vary")
            .to_ascii_lowercase()
            .contains("accept-encoding")
    );
    assert!(gz.body.len() < 1000, "{} bytes", gz.body.len());
    let gz_hit = client("deflate, gzip").get("a.test", path).await;
    assert_eq!(gz_hit.header("x-cache-status"), "HIT");
    assert_eq!(
        gz_hit.body, gz.body,
        "a hit serves the stored compressed bytes"
    );

    let br = client("br, gzip").get("a.test", path).await;
    assert_eq!(
        (br.header("content-encoding"), br.header("x-cache-status")),
        ("br", "MISS")
    );
    let zs = client("zstd").get("a.test", path).await;
    assert_eq!(zs.header("content-encoding"), "zstd");
    assert_eq!(&zs.body[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    let plain = Client::plain(ep.http2).get("a.test", path).await;
    assert_eq!(plain.header("content-encoding"), "");
    assert_eq!(plain.body.len(), 4200);
    assert_eq!(
        origin.hits(),
        4,
        "one origin fetch per variant (gzip, br, zstd, identity)"
    );
    for v in [&gz, &br, &zs] {
        assert!(v.body.len() < plain.body.len() / 4);
    }

    // Below min-length and non-text types are left alone.
    origin.set_body("short");
    let small = client("gzip").get("a.test", "/small?ct=text%2Fhtml").await;
    assert_eq!(small.header("content-encoding"), "");
    origin.set_body(vec![0u8; 5000]);
    let png = client("gzip").get("a.test", "/img?ct=image%2Fpng").await;
    assert_eq!(png.header("content-encoding"), "");
    assert_eq!(png.body.len(), 5000);
}

#[tokio::test]
async fn header_limits_answer_431() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin, "127.0.0.0/8").await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a.test\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = raw_exchange(ep.http2, many.as_bytes(), Duration::from_secs(2)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let out = raw_exchange(ep.http2, big.as_bytes(), Duration::from_secs(2)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn redirects_hsts_and_header_rules() {
    let origin = Origin::start().await;
    origin.add_header("x-powered-by", "php/5");
    let (ep, ca) = start(&origin, "127.0.0.0/8").await;
    let r = Client::plain(ep.http2).get("secure.test", "/a/b?c=d").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), "https://secure.test/a/b?c=d");
    assert_eq!(origin.hits(), 0);
    // The ACME challenge path is proxied, not redirected.
    let r = Client::plain(ep.http2)
        .get("secure.test", "/.well-known/acme-challenge/tok")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.last().uri, "/.well-known/acme-challenge/tok");

    let r = Client::tls(ep.https, &ca, true).get("a.test", "/h").await;
    assert_eq!(r.header("strict-transport-security"), "max-age=63072000");
    assert_eq!(r.header("x-frame-options"), "DENY");
    assert_eq!(r.header("x-powered-by"), "");
    // No HSTS over plain HTTP.
    let r = Client::plain(ep.http2).get("a.test", "/h").await;
    assert_eq!(r.header("strict-transport-security"), "");
    let _ = Bytes::new();
}

#[tokio::test]
async fn real_ip_header_is_believed_only_from_trusted_peers() {
    trace_init();
    let origin = Origin::start().await;
    let config = |trusted: &str| {
        format!(
            "[http]\nreal-ip-header = \"Fly-Client-IP\"\nreal-ip-from = [\"{trusted}\"]\n[[listener]]\naddress = \"{{http}}\"\n[upstream.app]\nservers = [\"{}\"]\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n",
            origin.addr
        )
    };
    let ep = Edgepop::start(&config("127.0.0.0/8")).await;
    let r = Client::plain(ep.http)
        .header("fly-client-ip", "198.51.100.23")
        .get("a.test", "/")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.last().header("x-real-ip"), "198.51.100.23");
    assert_eq!(origin.last().header("x-forwarded-for"), "198.51.100.23");
    drop(ep);

    let ep = Edgepop::start(&config("10.0.0.0/8")).await;
    Client::plain(ep.http)
        .header("fly-client-ip", "198.51.100.23")
        .get("a.test", "/")
        .await;
    assert_eq!(
        origin.last().header("x-real-ip"),
        "127.0.0.1",
        "an untrusted peer cannot name the client"
    );
}

#[tokio::test]
async fn a_slow_header_client_is_cut_off_at_the_header_timeout() {
    trace_init();
    let origin = Origin::start().await;
    let config = |timeout: &str| {
        format!(
            "[http]\nheader-timeout = \"{timeout}\"\n[[listener]]\naddress = \"{{http}}\"\n[upstream.app]\nservers = [\"{}\"]\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n",
            origin.addr
        )
    };
    // Started with a long timeout; a reload brings it down to 1 s (the listener reads it per connection).
    let ep = Edgepop::start(&config("60s")).await;
    let text = std::fs::read_to_string(&ep.config_path).unwrap();
    std::fs::write(&ep.config_path, text.replace("\"60s\"", "\"1s\"")).unwrap();
    ep.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eventually!(
        ep.metric(r#"edgepop_config_reloads_total{result="ok"}"#)
            .await
            >= 1.0,
        Duration::from_secs(5),
        "the reload was not applied; stderr:\n{}",
        ep.stderr()
    );
    let mut tcp = tokio::net::TcpStream::connect(ep.http).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    // One header byte every 200 ms: each read is quick, the header never ends.
    let mut closed_after = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tcp.write_all(b"X").await.is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await
        {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow client was never cut off");
    assert!(
        closed_after < Duration::from_secs(3),
        "cut off after {closed_after:?}; header-timeout is 1s"
    );
    assert_eq!(origin.hits(), 0);

    // A normal client on the same listener is not affected, also on a kept-alive connection after a pause.
    let r = Client::plain(ep.http).get("a.test", "/").await;
    assert_eq!(r.status, 200);
}
