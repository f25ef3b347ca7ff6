//! Listeners, TLS with SNI, HTTP/1.1 and HTTP/2, forwarded headers, local answers, upstream failures, WebSocket,
//! PROXY protocol, draining.

use std::time::{Duration, Instant};

use edgepop_tests::{
    Client, Edgepop, Origin, TLS_AND_PLAIN, TestCa, assert_eventually, raw_exchange, trace_init,
    write_pair,
};

/// Two TLS domains and one plain listener in front of `origin`.
fn config(origin: &Origin) -> String {
    format!(
        r#"
[server]
drain-timeout = "5s"

{TLS_AND_PLAIN}
[upstream.app]
servers = ["{origin}"]
connect-timeout = "2s"
read-timeout = "2s"
send-timeout = "2s"

[upstream.dead]
servers = ["127.0.0.1:1"]
connect-timeout = "1s"

[[site]]
names = ["a.test", "*.wild.test"]
upstream = "app"

[[site]]
names = ["b.test"]
upstream = "app"

[[site]]
names = ["down.test"]
upstream = "dead"
"#,
        origin = origin.addr
    )
}

/// Starts edgepop with certificates for a.test, *.wild.test and b.test (separate pairs).
async fn start(origin: &Origin) -> (Edgepop, TestCa, [u64; 2]) {
    trace_init();
    let ca = TestCa::new();
    let builder = Edgepop::builder(&config(origin));
    let certs = builder.dir().join("certs");
    let a = ca.leaf(&["a.test", "*.wild.test"]);
    let b = ca.leaf(&["b.test"]);
    write_pair(&certs, "a.test", &a, "chain.pem", "key.pem").unwrap();
    write_pair(&certs, "b.test", &b, "chain.pem", "key.pem").unwrap();
    let ep = builder.wait_ready().start().await;
    (ep, ca, [a.serial, b.serial])
}

fn serial_of(der: &[u8]) -> u64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let bytes = cert.tbs_certificate.raw_serial();
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

#[tokio::test]
async fn tls_sni_selects_the_certificate_per_domain_over_h1_and_h2() {
    let origin = Origin::start().await;
    let (ep, ca, [a_serial, b_serial]) = start(&origin).await;

    for h2 in [false, true] {
        let client = Client::tls(ep.https, &ca, h2);
        let resp = client.get("a.test", "/hello?x=1").await;
        assert_eq!(resp.status, 200, "h2={h2}");
        assert_eq!(
            resp.version,
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        assert_eq!(resp.text(), "hello from origin\n");
        assert_eq!(origin.last().uri, "/hello?x=1");

        let resp = client.get("b.test", "/").await;
        assert_eq!(resp.status, 200);
        let resp = client.get("x.wild.test", "/").await;
        assert_eq!(resp.status, 200);
    }
    let client = Client::tls(ep.https, &ca, false);
    assert_eq!(
        serial_of(&client.peer_certificate("a.test").await.unwrap()),
        a_serial
    );
    assert_eq!(
        serial_of(&client.peer_certificate("b.test").await.unwrap()),
        b_serial
    );
    assert_eq!(
        serial_of(&client.peer_certificate("foo.wild.test").await.unwrap()),
        a_serial
    );
    // No certificate for this name and no default: the handshake fails cleanly.
    let err = client.peer_certificate("unknown.test").await.unwrap_err();
    assert!(err.contains("tls"), "{err}");
}

#[tokio::test]
async fn forwarded_headers_reach_the_origin() {
    let origin = Origin::start().await;
    let (ep, ca, _) = start(&origin).await;

    let resp = Client::tls(ep.https, &ca, true)
        .header("x-forwarded-for", "198.51.100.1")
        .header("connection-test", "kept")
        .get("a.test", "/h2")
        .await;
    assert_eq!(resp.status, 200);
    let seen = origin.last();
    assert_eq!(seen.header("host"), "a.test");
    assert_eq!(seen.header("x-forwarded-proto"), "https");
    assert_eq!(seen.header("x-forwarded-host"), "a.test");
    assert_eq!(seen.header("x-forwarded-server"), "a.test");
    assert_eq!(seen.header("x-real-ip"), "127.0.0.1");
    assert_eq!(seen.header("x-forwarded-for"), "198.51.100.1, 127.0.0.1");
    assert_eq!(seen.header("connection-test"), "kept");
    // server_tokens off: neither the origin's nor a pingora Server header reaches the client.
    assert_eq!(resp.header("server"), "");

    let resp = Client::plain(ep.http).get("b.test:8080", "/plain").await;
    assert_eq!(resp.status, 200);
    let seen = origin.last();
    assert_eq!(
        seen.header("host"),
        "b.test:8080",
        "Host is preserved as sent"
    );
    assert_eq!(seen.header("x-forwarded-proto"), "http");
    assert_eq!(seen.header("x-forwarded-host"), "b.test");
    assert_eq!(seen.header("x-forwarded-for"), "127.0.0.1");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let origin = Origin::start().await;
    let (ep, _ca, _) = start(&origin).await;
    let request = b"GET /hop HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\r\n";
    let out = raw_exchange(ep.http, request, Duration::from_millis(500)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let seen = origin.last();
    for h in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} was forwarded: {:?}",
            seen.headers
        );
    }
}

#[tokio::test]
async fn unknown_host_is_answered_locally_and_never_forwarded() {
    let origin = Origin::start().await;
    let (ep, ca, _) = start(&origin).await;
    let resp = Client::plain(ep.http).get("nobody.test", "/").await;
    assert_eq!(resp.status, 421);
    // Over TLS with a valid SNI but another Host.
    let resp = Client::tls(ep.https, &ca, false).get("a.test", "/").await;
    assert_eq!(resp.status, 200);
    let before = origin.hits();
    let out = raw_exchange(
        ep.http,
        b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(
        out.starts_with(b"HTTP/1.1 421"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Absolute-form targets are refused: edgepop is not a forward proxy.
    let out = raw_exchange(
        ep.http,
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(origin.hits(), before, "nothing may reach the origin");
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504_quickly() {
    let origin = Origin::start().await;
    let (ep, _ca, _) = start(&origin).await;
    let client = Client::plain(ep.http);

    let t = Instant::now();
    let resp = client.get("down.test", "/").await;
    assert_eq!(resp.status, 502);
    assert!(resp.text().contains("bad gateway"), "{}", resp.text());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "502 took {:?}",
        t.elapsed()
    );

    let t = Instant::now();
    let resp = client.get("a.test", "/slow?ms=6000").await;
    assert_eq!(resp.status, 504);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "504 after {took:?}; read-timeout is 2s"
    );

    assert_eventually!(
        ep.stderr().contains("upstream request failed") && ep.stderr().contains("127.0.0.1:1"),
        Duration::from_secs(5),
        "no error log naming the failed upstream:\n{}",
        ep.stderr()
    );
}

#[tokio::test]
async fn request_body_over_the_limit_is_413() {
    let origin = Origin::start().await;
    trace_init();
    let ep = Edgepop::start(&format!(
        "[http]\nmax-body-size = \"1KiB\"\n[[listener]]\naddress = \"{{http}}\"\n[upstream.app]\nservers = [\"{}\"]\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n",
        origin.addr
    ))
    .await;
    let client = Client::plain(ep.http);
    let ok = client
        .request("POST", "a.test", "/small", vec![b'x'; 1000].into())
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(origin.last().body.len(), 1000);
    let hits = origin.hits();
    let big = client
        .request("POST", "a.test", "/big", vec![b'x'; 4096].into())
        .await
        .unwrap();
    assert_eq!(big.status, 413);
    assert_eq!(
        origin.hits(),
        hits,
        "an oversized body with Content-Length never reaches the origin"
    );
}

#[tokio::test]
async fn websocket_upgrade_echoes_end_to_end() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let origin = Origin::start().await;
    let (ep, _ca, _) = start(&origin).await;
    let url = format!("ws://{}/ws", ep.http);
    let request = http::Request::builder()
        .uri(&url)
        .header("host", "a.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(ep.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("ping{i}"))).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo:ping{i}"));
    }
    assert_eq!(origin.last().header("upgrade"), "websocket");
}

#[tokio::test]
async fn curl_speaks_h2_and_h1_through_edgepop() {
    if !edgepop_tests::have_curl() {
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let origin = Origin::start().await;
    let (ep, ca, _) = start(&origin).await;
    let ca_path = ep.dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let port = ep.https.port().to_string();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}/curl");
    for (flag, want) in [("--http2", "HTTP/2 200"), ("--http1.1", "HTTP/1.1 200")] {
        let (code, out, err) = edgepop_tests::curl(&[
            "-sS",
            "-i",
            flag,
            "--cacert",
            ca_path.to_str().unwrap(),
            "--resolve",
            &resolve,
            &url,
        ])
        .await;
        assert_eq!(code, 0, "curl {flag}: {err}");
        assert!(out.starts_with(want), "curl {flag}: {out}");
        assert!(out.contains("hello from origin"));
    }
    // TLS 1.1 is refused.
    let (code, _, _) = edgepop_tests::curl(&[
        "-sS",
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "--cacert",
        ca_path.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_ne!(code, 0, "a TLS 1.1 handshake must fail");
}

#[tokio::test]
async fn sigterm_and_sigint_drain_in_flight_requests_then_exit_0() {
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let origin = Origin::start().await;
        let (mut ep, _ca, _) = start(&origin).await;
        let client = Client::plain(ep.http);
        let slow = tokio::spawn(async move { client.get("a.test", "/slow?ms=700").await });
        assert_eventually!(
            origin.hits() == 1,
            Duration::from_secs(5),
            "slow request never reached the origin"
        );
        let t = Instant::now();
        ep.signal(sig);
        let resp = slow.await.unwrap();
        assert_eq!(
            resp.status, 200,
            "{sig}: the in-flight request must complete"
        );
        let code = ep.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(code, Some(0), "{sig}: exit code; stderr:\n{}", ep.stderr());
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "{sig}: took {:?} (drain-timeout is 5s)",
            t.elapsed()
        );
        // New connections are refused once draining started.
        assert!(tokio::net::TcpStream::connect(ep.http).await.is_err());
    }
}

#[tokio::test]
async fn metrics_count_requests_and_handshakes() {
    let origin = Origin::start().await;
    let (ep, ca, _) = start(&origin).await;
    let client = Client::tls(ep.https, &ca, true);
    for _ in 0..3 {
        assert_eq!(client.get("a.test", "/m").await.status, 200);
    }
    let _ = Client::plain(ep.http).get("nobody.test", "/").await;
    assert_eventually!(
        ep.metric(r#"edgepop_http_requests_total{code_class="2xx",method="GET",site="a.test"}"#)
            .await
            >= 3.0,
        Duration::from_secs(5),
        "2xx requests not counted"
    );
    assert!(
        ep.metric(r#"edgepop_http_requests_total{code_class="4xx",method="GET",site="-"}"#)
            .await
            >= 1.0
    );
    assert!(ep.metric("edgepop_tls_handshakes_total").await >= 3.0);
    let (status, body) = ep.admin_get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}
