//! Host/SNI mismatches across sites (issue 10, `http.sni-host-mismatch`): a TLS client that named one site in its
//! SNI and another in Host or `:authority` gets 421 and nothing is forwarded, unless the option is "allow"; names
//! of the same site (aliases, wildcards) match each other, a client without SNI is routed by Host, and plain HTTP
//! is not affected.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgepop_tests::{Client, Edgepop, Origin, TLS_AND_PLAIN, TestCa, trace_init};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

const REFUSED: &str = r#"edgepop_http_requests_refused_total{reason="sni_host_mismatch"}"#;

/// Site A (`a.test`, `*.a.test`) on `origin_a`, site B (`b.test`) on `origin_b`; `default-cert` answers clients
/// without SNI. `mode` is the `sni-host-mismatch` value, or the default when `None`.
fn config(origin_a: &Origin, origin_b: &Origin, mode: Option<&str>) -> String {
    let http = mode.map_or_else(String::new, |m| {
        format!("[http]\nsni-host-mismatch = \"{m}\"\n")
    });
    format!(
        r#"
{TLS_AND_PLAIN}default-cert = "a.test"

{http}
[upstream.a]
servers = ["{a}"]

[upstream.b]
servers = ["{b}"]

[[site]]
names = ["a.test", "*.a.test"]
upstream = "a"

[[site]]
names = ["b.test"]
upstream = "b"
"#,
        a = origin_a.addr,
        b = origin_b.addr,
    )
}

struct Setup {
    ep: Edgepop,
    ca: TestCa,
    a: Origin,
    b: Origin,
}

async fn start(mode: Option<&str>) -> Setup {
    trace_init();
    let (a, b) = (Origin::start().await, Origin::start().await);
    let ca = TestCa::new();
    let builder = Edgepop::builder(&config(&a, &b, mode));
    builder.cert(&ca, "a.test", &["a.test", "*.a.test"]);
    builder.cert(&ca, "b.test", &["b.test"]);
    let ep = builder.wait_ready().start().await;
    Setup { ep, ca, a, b }
}

/// One TLS connection with SNI `sni` (`None`: no SNI, verifying the default certificate for a.test), HTTP/2 or
/// HTTP/1.1, sending a GET for each `(host, path)` in turn; returns the statuses.
async fn on_one_connection(
    s: &Setup,
    sni: Option<&str>,
    h2: bool,
    requests: &[(&str, &str)],
) -> Vec<u16> {
    let mut config = (*s.ca.client_config()).clone();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    config.enable_sni = sni.is_some();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(sni.unwrap_or("a.test").to_owned()).unwrap();
    let tcp = tokio::net::TcpStream::connect(s.ep.https).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let io = TokioIo::new(tls);
    let mut statuses = Vec::new();
    if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        for (host, path) in requests {
            // hyper sends the URI's authority as `:authority` (and no Host field).
            let req = hyper::Request::get(format!("https://{host}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            statuses.push(resp.status().as_u16());
            let _ = resp.into_body().collect().await;
        }
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        for (host, path) in requests {
            let req = hyper::Request::get(*path)
                .header("host", *host)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let Ok(resp) = sender.send_request(req).await else {
                break; // a refusal closes an HTTP/1 connection
            };
            statuses.push(resp.status().as_u16());
            let _ = resp.into_body().collect().await;
            if sender.ready().await.is_err() {
                break;
            }
        }
    }
    statuses
}

/// One request on its own connection: SNI `sni`, Host (or `:authority`) `host`.
async fn get(s: &Setup, sni: Option<&str>, host: &str, path: &str, h2: bool) -> u16 {
    on_one_connection(s, sni, h2, &[(host, path)]).await[0]
}

fn origin_saw(origin: &Origin, path: &str) -> bool {
    origin.seen().iter().any(|r| r.uri == path)
}

#[tokio::test]
async fn host_of_another_site_than_the_sni_is_misdirected_and_never_forwarded() {
    let s = start(None).await;
    for h2 in [false, true] {
        let v = if h2 { "h2" } else { "h1" };
        // SNI a.test, Host b.test: 421, neither origin sees it.
        let path = format!("/fronted-{v}");
        assert_eq!(
            get(&s, Some("a.test"), "b.test", &path, h2).await,
            421,
            "{v}"
        );
        // Port and case do not make a mismatch, and an SNI for b.test does not reach site A either.
        let path_b = format!("/fronted-b-{v}");
        assert_eq!(
            get(&s, Some("b.test"), "A.TEST:443", &path_b, h2).await,
            421,
            "{v}"
        );
        assert!(!origin_saw(&s.a, &path) && !origin_saw(&s.b, &path), "{v}");
        assert!(
            !origin_saw(&s.a, &path_b) && !origin_saw(&s.b, &path_b),
            "{v}"
        );

        // Matching names are served by their own site.
        let ok = format!("/same-{v}");
        assert_eq!(get(&s, Some("a.test"), "a.test", &ok, h2).await, 200, "{v}");
        assert!(origin_saw(&s.a, &ok), "{v}");
        let ok = format!("/same-b-{v}");
        assert_eq!(
            get(&s, Some("b.test"), "B.test:443", &ok, h2).await,
            200,
            "{v}"
        );
        assert!(origin_saw(&s.b, &ok), "{v}");
    }
    assert_eq!(s.b.hits() + s.a.hits(), 4);
    assert_eq!(s.ep.metric(REFUSED).await, 4.0);
    assert!(
        s.ep.stderr()
            .contains("request for another site than the TLS server name"),
        "{}",
        s.ep.stderr()
    );
}

#[tokio::test]
async fn names_of_one_site_match_each_other() {
    let s = start(None).await;
    for h2 in [false, true] {
        // SNI under the site's wildcard, Host its apex name (and the other way round): one site, served.
        let path = format!("/alias-{}", u8::from(h2));
        assert_eq!(get(&s, Some("x.a.test"), "a.test", &path, h2).await, 200);
        assert_eq!(get(&s, Some("a.test"), "y.a.test", &path, h2).await, 200);
        assert_eq!(get(&s, Some("x.a.test"), "y.a.test", &path, h2).await, 200);
    }
    assert_eq!(s.a.hits(), 6);
    assert_eq!(s.ep.metric(REFUSED).await, 0.0);
}

#[tokio::test]
async fn an_http2_connection_is_refused_only_for_the_other_site() {
    // Browsers reuse an HTTP/2 connection for another name its certificate covers; 421 sends just that request to
    // a new connection, and the connection keeps serving its own site.
    let s = start(None).await;
    let statuses = on_one_connection(
        &s,
        Some("a.test"),
        true,
        &[("a.test", "/1"), ("b.test", "/2"), ("www.a.test", "/3")],
    )
    .await;
    assert_eq!(statuses, [200, 421, 200]);
    assert!(origin_saw(&s.a, "/1") && origin_saw(&s.a, "/3"));
    assert_eq!(s.b.hits(), 0);
}

#[tokio::test]
async fn allow_routes_by_host_and_no_sni_is_routed_by_host() {
    let s = start(Some("allow")).await;
    for h2 in [false, true] {
        let path = format!("/allowed-{}", u8::from(h2));
        assert_eq!(get(&s, Some("a.test"), "b.test", &path, h2).await, 200);
        assert!(origin_saw(&s.b, &path) && !origin_saw(&s.a, &path));
    }
    assert_eq!(s.ep.metric(REFUSED).await, 0.0);

    // Default mode: a client without SNI (an IP-literal URL) gets the default certificate and Host decides.
    let s = start(None).await;
    for h2 in [false, true] {
        let path = format!("/no-sni-{}", u8::from(h2));
        assert_eq!(get(&s, None, "b.test", &path, h2).await, 200);
        assert!(origin_saw(&s.b, &path) && !origin_saw(&s.a, &path));
    }
    // Plain HTTP has no SNI: Host decides.
    let resp = Client::plain(s.ep.http).get("b.test", "/plain").await;
    assert_eq!(resp.status, 200);
    assert!(origin_saw(&s.b, "/plain"));
    assert_eq!(s.ep.metric(REFUSED).await, 0.0);
}

#[tokio::test]
async fn the_mode_changes_on_reload() {
    let s = start(None).await;
    assert_eq!(
        get(&s, Some("a.test"), "b.test", "/before", false).await,
        421
    );
    let text = std::fs::read_to_string(&s.ep.config_path).unwrap();
    std::fs::write(
        &s.ep.config_path,
        format!("{text}\n[http]\nsni-host-mismatch = \"allow\"\n"),
    )
    .unwrap();
    s.ep.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if get(&s, Some("a.test"), "b.test", "/after", false).await == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(origin_saw(&s.b, "/after") && !origin_saw(&s.b, "/before"));
}
