//! Certificates through the real binary: starting on an empty directory, live reload, torn rotations under load,
//! broken files, new and removed domains, wildcards, SIGHUP, metrics, key permissions, the TLS policy and
//! `edgepop check`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgepop_certs::test_util::{set_mode, write_atomic};
use edgepop_tests::{
    Client, Edgepop, Origin, TLS_AND_PLAIN, TestCa, TestPair, assert_eventually, edgepop_bin,
    free_port, trace_init, write_pair,
};
use nix::sys::signal::Signal;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::crypto::ring::cipher_suite;
use rustls::{CipherSuite, ClientConfig, HandshakeKind, NamedGroup, ProtocolVersion};
use rustls_pki_types::ServerName;

/// How soon a change in the certs directory must be live (debounce 200 ms, plus a reload).
const LIVE_WITHIN: Duration = Duration::from_secs(1);

/// A TLS listener, a plain listener and one site for every name the tests use. `tls_extra` goes into `[tls]`.
fn config(origin: &Origin, tls_extra: &str) -> String {
    format!(
        r#"
{TLS_AND_PLAIN}{tls_extra}

[upstream.app]
servers = ["{origin}"]

[[site]]
names = ["a.test", "b.test", "rsa.test", "*.wild.test"]
upstream = "app"
"#,
        origin = origin.addr
    )
}

/// Starts edgepop with the given pairs in place (`[]`: an empty certs dir, so only `/healthz` is awaited).
async fn start(origin: &Origin, tls_extra: &str, pairs: &[(&str, &TestPair)]) -> Edgepop {
    trace_init();
    let builder = Edgepop::builder(&config(origin, tls_extra));
    let certs = builder.dir().join("certs");
    for (domain, pair) in pairs {
        write_pair(&certs, domain, pair, "chain.pem", "key.pem").unwrap();
    }
    if pairs.is_empty() {
        builder.start().await
    } else {
        builder.wait_ready().start().await
    }
}

fn serial_of(der: &[u8]) -> u64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let bytes = cert.tbs_certificate.raw_serial();
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// What one completed handshake negotiated.
#[derive(Debug)]
struct Handshake {
    serial: u64,
    version: ProtocolVersion,
    suite: CipherSuite,
    kind: HandshakeKind,
    alpn: Option<Vec<u8>>,
}

/// One fresh TCP connection and TLS handshake to `addr` with SNI `sni`.
async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
) -> Result<Handshake, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let tls = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "tls: handshake timed out".to_owned())?
        .map_err(|e| format!("tls: {e}"))?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    Ok(Handshake {
        serial: serial_of(leaf),
        version: conn.protocol_version().ok_or("no version")?,
        suite: conn.negotiated_cipher_suite().ok_or("no suite")?.suite(),
        kind: conn.handshake_kind().ok_or("no handshake kind")?,
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// A client trusting `ca` that never resumes: every connection is a full handshake.
fn full_handshakes(ca: &TestCa) -> Arc<ClientConfig> {
    let mut config = (*ca.client_config()).clone();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// The serial served for `sni`, or the handshake error.
async fn served(ep: &Edgepop, ca: &TestCa, sni: &str) -> Result<u64, String> {
    handshake(ep.https, full_handshakes(ca), sni)
        .await
        .map(|h| h.serial)
}

/// stderr without terminal colour codes.
fn log(ep: &Edgepop) -> String {
    let raw = ep.stderr();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI sequence: ESC [ params final-letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Log lines containing every one of `needles`.
fn log_lines(ep: &Edgepop, needles: &[&str]) -> Vec<String> {
    log(ep)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn is_alive(ep: &Edgepop) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(ep.pid()).unwrap());
    nix::sys::signal::kill(pid, None).is_ok()
}

#[tokio::test]
async fn starts_without_certificates_and_goes_live_when_a_pair_appears() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let ep = start(&origin, "", &[]).await;
    let pid = ep.pid();

    // Plain HTTP serves at once; liveness yes, readiness no.
    assert_eq!(Client::plain(ep.http).get("a.test", "/").await.status, 200);
    assert_eq!(ep.admin_get("/healthz").await.0, 200);
    let (status, body) = ep.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no certificate is live yet"), "{body}");

    // TLS handshakes are refused, and counted as such.
    let refused = r#"edgepop_tls_handshake_failures_total{reason="no_certificate"}"#;
    let before = ep.metric(refused).await;
    let err = served(&ep, &ca, "a.test").await.unwrap_err();
    assert!(err.starts_with("tls:"), "{err}");
    assert_eventually!(
        ep.metric(refused).await > before,
        Duration::from_secs(2),
        "the refused handshake was not counted as no_certificate"
    );
    assert_eq!(ep.metric("edgepop_cert_live_domains").await, 0.0);

    // vault-agent delivers the first pair: live within a second, no restart.
    let pair = ca.leaf(&["a.test"]);
    write_pair(&ep.certs_dir(), "a.test", &pair, "chain.pem", "key.pem").unwrap();
    assert_eventually!(
        served(&ep, &ca, "a.test").await == Ok(pair.serial),
        LIVE_WITHIN,
        "a.test not served within {LIVE_WITHIN:?}; stderr:\n{}",
        log(&ep)
    );
    assert_eventually!(
        ep.admin_get("/readyz").await.0 == 200,
        Duration::from_secs(1),
        "/readyz still not 200 with a live certificate"
    );
    let resp = Client::tls(ep.https, &ca, true).get("a.test", "/x").await;
    assert_eq!(resp.status, 200);
    assert_eq!(origin.last().uri, "/x");
    assert_eq!(ep.pid(), pid);
    assert!(is_alive(&ep), "edgepop exited; stderr:\n{}", log(&ep));
    assert_eq!(ep.metric("edgepop_cert_live_domains").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_rotations_under_load_never_fail_a_handshake() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let first = ca.leaf(&["a.test"]);
    let ep = start(&origin, "", &[("a.test", &first)]).await;
    let dir = ep.certs_dir().join("a.test");

    // A client handshaking in a loop, a fresh connection and a full handshake each time.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let config = full_handshakes(&ca);
        let addr = ep.https;
        tokio::spawn(async move {
            let mut serials = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match handshake(addr, config.clone(), "a.test").await {
                    Ok(h) => serials.push(h.serial),
                    Err(e) => failures.push(e),
                }
            }
            (serials, failures)
        })
    };

    let mut written = vec![first.serial];
    for i in 0..30u64 {
        let next = ca.leaf(&["a.test"]);
        written.push(next.serial);
        // vault-agent's order: key, then chain, each an atomic rename, a few ms apart. Between the two the
        // directory holds a mismatched pair.
        write_atomic(&dir.join("key.pem"), next.key_pem.as_bytes()).unwrap();
        tokio::time::sleep(Duration::from_millis(3 + i % 5)).await;
        write_atomic(&dir.join("chain.pem"), next.chain_pem.as_bytes()).unwrap();
        // Vary the pace: some rotations land inside one debounce window, most in their own.
        tokio::time::sleep(Duration::from_millis(60 + (i % 4) * 80)).await;
    }
    let last = *written.last().unwrap();
    assert_eventually!(
        served(&ep, &ca, "a.test").await == Ok(last),
        LIVE_WITHIN,
        "the last rotation is not live"
    );
    stop.store(true, Ordering::Relaxed);
    let (serials, failures) = load.await.unwrap();

    assert!(
        failures.is_empty(),
        "{} of {} handshakes failed, first: {:?}",
        failures.len(),
        failures.len() + serials.len(),
        failures.first()
    );
    let known: BTreeSet<u64> = written.iter().copied().collect();
    let seen: BTreeSet<u64> = serials.iter().copied().collect();
    assert!(
        seen.is_subset(&known),
        "served serials {seen:?} not all written {known:?}"
    );
    assert!(
        serials.len() >= 30,
        "only {} handshakes in the run",
        serials.len()
    );
    assert!(
        seen.len() >= 5,
        "rotations did not go live under load: {seen:?}"
    );
    assert!(!log(&ep).contains("panicked"), "{}", log(&ep));
}

#[tokio::test]
async fn torn_rotation_keeps_the_old_pair_and_logs_the_mismatch_once() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let old = ca.leaf(&["a.test"]);
    let ep = start(&origin, "", &[("a.test", &old)]).await;
    let dir = ep.certs_dir().join("a.test");
    let key_path = dir.join("key.pem");
    let key_path_str = key_path.display().to_string();

    // Only the key of the next pair lands.
    let new = ca.leaf(&["a.test"]);
    write_atomic(&key_path, new.key_pem.as_bytes()).unwrap();
    // Nothing may change: there is no event to poll for, so give the watcher time to act wrongly.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(served(&ep, &ca, "a.test").await, Ok(old.serial));
    let lines = log_lines(&ep, &[&key_path_str, "does not match"]);
    assert_eq!(
        lines.len(),
        1,
        "want one log line for the torn pair:\n{}",
        log(&ep)
    );
    assert!(
        lines[0].contains("keeping previous certificate"),
        "{lines:?}"
    );
    assert!(lines[0].contains("domain=a.test"), "{lines:?}");

    // The chain follows: the new pair goes live.
    write_atomic(&dir.join("chain.pem"), new.chain_pem.as_bytes()).unwrap();
    assert_eventually!(
        served(&ep, &ca, "a.test").await == Ok(new.serial),
        LIVE_WITHIN,
        "the completed rotation is not live; stderr:\n{}",
        log(&ep)
    );
    assert_eq!(
        log_lines(&ep, &[&key_path_str, "does not match"]).len(),
        1,
        "{}",
        log(&ep)
    );
}

#[tokio::test]
async fn broken_chain_files_keep_the_old_pair_and_are_logged_and_counted() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let good = ca.leaf(&["a.test"]);
    let ep = start(&origin, "", &[("a.test", &good)]).await;
    let chain_path = ep.certs_dir().join("a.test").join("chain.pem");
    let chain_str = chain_path.display().to_string();
    let errors = r#"edgepop_cert_reloads_total{result="error"}"#;

    // Truncated after the leaf: in the next certificate's base64, or in its BEGIN line (where a lenient PEM
    // parser would silently drop the rest of the chain).
    let leaf_end = good.chain_pem.find("-----END CERTIFICATE-----\n").unwrap() + 26;
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "garbage",
            b"not a pem file: s3cr3t-sentinel\n",
            "no certificate in",
        ),
        ("empty", b"", "no certificate in"),
        (
            "truncated in base64",
            &good.chain_pem.as_bytes()[..leaf_end + 100],
            "missing END line (truncated file?)",
        ),
        (
            "truncated in a BEGIN line",
            &good.chain_pem.as_bytes()[..leaf_end + 8],
            "incomplete BEGIN line (truncated file?)",
        ),
    ];
    for (what, bytes, reason) in cases {
        let rejected_before = log_lines(&ep, &["certificate update rejected"]).len();
        let errors_before = ep.metric(errors).await;
        write_atomic(&chain_path, bytes).unwrap();
        assert_eventually!(
            log_lines(&ep, &["certificate update rejected"]).len() > rejected_before,
            Duration::from_secs(2),
            "{what}: no log line; stderr:\n{}",
            log(&ep)
        );
        let lines = log_lines(&ep, &["certificate update rejected"]);
        let line = lines.last().unwrap();
        assert!(
            line.contains(&chain_str) && line.contains(reason),
            "{what}: {line}"
        );
        assert!(
            ep.metric(errors).await > errors_before,
            "{what}: not counted"
        );
        assert_eq!(served(&ep, &ca, "a.test").await, Ok(good.serial), "{what}");
        assert_eq!(ep.admin_get("/readyz").await.0, 200, "{what}");
    }
    // File contents never reach the log.
    assert!(!log(&ep).contains("s3cr3t-sentinel"), "{}", log(&ep));
    assert_eq!(ep.metric("edgepop_cert_live_domains").await, 1.0);
}

#[tokio::test]
async fn domains_come_and_go_and_wildcards_serve_one_label() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"]);
    let ep = start(&origin, "", &[("a.test", &a)]).await;
    let certs = ep.certs_dir();
    assert!(served(&ep, &ca, "b.test").await.is_err());

    // A new domain appears.
    let b = ca.leaf(&["b.test"]);
    write_pair(&certs, "b.test", &b, "chain.pem", "key.pem").unwrap();
    assert_eventually!(
        served(&ep, &ca, "b.test").await == Ok(b.serial),
        LIVE_WITHIN,
        "b.test not live; stderr:\n{}",
        log(&ep)
    );
    assert_eq!(
        Client::tls(ep.https, &ca, false)
            .get("b.test", "/b")
            .await
            .status,
        200
    );
    assert_eq!(ep.metric("edgepop_cert_live_domains").await, 2.0);

    // A wildcard directory: `_.wild.test/` holding `*.wild.test` covers one label.
    let wild = ca.leaf(&["*.wild.test"]);
    write_pair(&certs, "_.wild.test", &wild, "chain.pem", "key.pem").unwrap();
    assert_eventually!(
        served(&ep, &ca, "x.wild.test").await == Ok(wild.serial),
        LIVE_WITHIN,
        "x.wild.test not live; stderr:\n{}",
        log(&ep)
    );
    assert_eq!(served(&ep, &ca, "other.wild.test").await, Ok(wild.serial));
    assert!(served(&ep, &ca, "wild.test").await.is_err());
    assert!(served(&ep, &ca, "y.x.wild.test").await.is_err());
    let resp = Client::tls(ep.https, &ca, true)
        .get("x.wild.test", "/w")
        .await;
    assert_eq!(resp.status, 200);

    // Deleting a domain directory stops serving it, and only it.
    std::fs::remove_dir_all(certs.join("b.test")).unwrap();
    assert_eventually!(
        served(&ep, &ca, "b.test").await.is_err(),
        LIVE_WITHIN,
        "b.test still served after its directory was removed"
    );
    assert_eq!(served(&ep, &ca, "a.test").await, Ok(a.serial));
    assert_eq!(served(&ep, &ca, "x.wild.test").await, Ok(wild.serial));
    assert_eq!(ep.metric("edgepop_cert_live_domains").await, 2.0);
    let (_, metrics) = ep.admin_get("/metrics").await;
    assert!(
        !metrics.contains(r#"edgepop_cert_not_after_timestamp_seconds{name="b.test"}"#),
        "the removed domain keeps its expiry series"
    );
    assert!(
        log_lines(&ep, &["no longer served", "b.test"]).len() == 1,
        "{}",
        log(&ep)
    );

    // An unknown name is refused and counted.
    let refused = r#"edgepop_tls_handshake_failures_total{reason="no_certificate"}"#;
    let before = ep.metric(refused).await;
    assert!(served(&ep, &ca, "unknown.test").await.is_err());
    assert_eventually!(
        ep.metric(refused).await >= before + 1.0,
        Duration::from_secs(2),
        "unknown SNI not counted as no_certificate"
    );
}

#[tokio::test]
async fn sighup_rescans_and_cert_metrics_are_exported() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf_rsa(&["b.test"]);
    // Periodic rescans out of the way: every reload after start comes from the watcher or SIGHUP.
    let ep = start(
        &origin,
        r#"rescan-interval = "1h""#,
        &[("a.test", &a), ("b.test", &b)],
    )
    .await;
    let ok = r#"edgepop_cert_reloads_total{result="ok"}"#;
    assert_eventually!(
        ep.metric(ok).await >= 1.0,
        Duration::from_secs(2),
        "no successful reload counted"
    );
    let before = ep.metric(ok).await;

    ep.signal(Signal::SIGHUP);
    assert_eventually!(
        ep.metric(ok).await > before,
        Duration::from_secs(2),
        "SIGHUP did not rescan the certificates; stderr:\n{}",
        log(&ep)
    );
    assert_eventually!(
        log(&ep).contains("configuration reloaded"),
        Duration::from_secs(2),
        "no reload log line; stderr:\n{}",
        log(&ep)
    );
    assert_eq!(
        log_lines(&ep, &["SIGHUP", "rescanning certificates"]).len(),
        1,
        "{}",
        log(&ep)
    );
    assert!(is_alive(&ep));
    assert_eq!(served(&ep, &ca, "a.test").await, Ok(a.serial));
    assert_eq!(served(&ep, &ca, "b.test").await, Ok(b.serial));
    assert_eq!(ep.admin_get("/readyz").await.0, 200);

    // The metrics.
    let now = unix_now();
    for name in ["a.test", "b.test"] {
        let not_after = ep
            .metric(&format!(
                r#"edgepop_cert_not_after_timestamp_seconds{{name="{name}"}}"#
            ))
            .await;
        // TestCa leaves are valid for 30 days.
        assert!(
            not_after > now + 29.0 * 86400.0 && not_after < now + 31.0 * 86400.0,
            "{name}: not_after {not_after}, now {now}"
        );
    }
    assert_eq!(ep.metric("edgepop_cert_live_domains").await, 2.0);
    let last_ok = ep
        .metric("edgepop_cert_last_reload_success_timestamp_seconds")
        .await;
    assert!(
        last_ok > now - 60.0 && last_ok <= now + 1.0,
        "last success {last_ok}, now {now}"
    );
    let (_, metrics) = ep.admin_get("/metrics").await;
    for reason in [
        "no_certificate",
        "protocol_version",
        "no_shared_cipher",
        "eof",
    ] {
        assert!(
            metrics.contains(&format!(
                r#"edgepop_tls_handshake_failures_total{{reason="{reason}"}}"#
            )),
            "{reason} missing from /metrics"
        );
    }
}

#[tokio::test]
async fn group_readable_key_is_warned_about_and_never_logged() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"]);
    let ep = start(&origin, "", &[("a.test", &a)]).await;
    assert!(
        log_lines(&ep, &["readable by group or other"]).is_empty(),
        "a 0400 key was warned about:\n{}",
        log(&ep)
    );

    // A new domain whose key is 0644: served, with a warning naming the key file.
    let b = ca.leaf(&["b.test"]);
    let dir = ep.certs_dir().join("b.test");
    std::fs::create_dir(&dir).unwrap();
    let key_path = dir.join("key.pem");
    write_atomic(&key_path, b.key_pem.as_bytes()).unwrap();
    set_mode(&key_path, 0o644).unwrap();
    write_atomic(&dir.join("chain.pem"), b.chain_pem.as_bytes()).unwrap();
    assert_eventually!(
        served(&ep, &ca, "b.test").await == Ok(b.serial),
        LIVE_WITHIN,
        "b.test not live; stderr:\n{}",
        log(&ep)
    );
    let key_str = key_path.display().to_string();
    assert_eventually!(
        !log_lines(&ep, &["readable by group or other", &key_str]).is_empty(),
        Duration::from_secs(1),
        "no permission warning for {key_str}; stderr:\n{}",
        log(&ep)
    );
    assert_eq!(
        log_lines(&ep, &["readable by group or other"]).len(),
        1,
        "{}",
        log(&ep)
    );

    // Also a torn rotation of b.test's key: an error about the key file, still no key material.
    let next = ca.leaf(&["b.test"]);
    write_atomic(&key_path, next.key_pem.as_bytes()).unwrap();
    assert_eventually!(
        !log_lines(&ep, &["does not match", &key_str]).is_empty(),
        Duration::from_secs(2),
        "torn b.test rotation not logged"
    );
    let stderr = ep.stderr();
    for pem in [&a.key_pem, &b.key_pem, &next.key_pem] {
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!stderr.contains(line), "key material in stderr: {line}");
        }
    }
}

/// A TLS 1.2-only client with one cipher suite.
fn tls12_client(ca: &TestCa, suite: rustls::SupportedCipherSuite) -> Arc<ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(ca.root_store())
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// A client session store that remembers the ticket length of every TLS 1.2 session it is given.
#[derive(Debug)]
struct TicketSpy {
    inner: ClientSessionMemoryCache,
    tls12_tickets: Mutex<Vec<usize>>,
}

impl TicketSpy {
    fn new() -> Arc<TicketSpy> {
        Arc::new(TicketSpy {
            inner: ClientSessionMemoryCache::new(16),
            tls12_tickets: Mutex::default(),
        })
    }
}

/// Length in bytes of the ticket in a stored TLS 1.2 session. rustls keeps it private; its `Debug` prints it as
/// `ticket: <hex>` (empty when the server sent no NewSessionTicket).
fn ticket_len(value: &Tls12ClientSessionValue) -> usize {
    let debug = format!("{value:?}");
    let start = debug.find("ticket: ").expect("ticket in Debug") + "ticket: ".len();
    let hex = &debug[start..];
    hex.chars().take_while(char::is_ascii_hexdigit).count() / 2
}

impl ClientSessionStore for TicketSpy {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.tls12_tickets.lock().unwrap().push(ticket_len(&value));
        self.inner.set_tls12_session(server_name, value);
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value);
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

/// Two TLS 1.2 connections sharing a session store: (second handshake's kind, ticket lengths stored).
async fn tls12_resumption(ep: &Edgepop, ca: &TestCa) -> (HandshakeKind, Vec<usize>) {
    let spy = TicketSpy::new();
    let mut config = (*ca.client_config_with(&[&rustls::version::TLS12])).clone();
    config.resumption = Resumption::store(spy.clone());
    let config = Arc::new(config);
    let first = handshake(ep.https, config.clone(), "a.test").await.unwrap();
    assert_eq!(first.kind, HandshakeKind::Full);
    let second = handshake(ep.https, config, "a.test").await.unwrap();
    let tickets = spy.tls12_tickets.lock().unwrap().clone();
    (second.kind, tickets)
}

#[tokio::test]
async fn tls_policy_suites_key_types_alpn_and_session_resumption() {
    let origin = Origin::start().await;
    let ca = TestCa::new();
    let ec = ca.leaf(&["a.test"]);
    let rsa = ca.leaf_rsa(&["rsa.test"]);
    let ep = start(&origin, "", &[("a.test", &ec), ("rsa.test", &rsa)]).await;

    // TLS 1.2 with nothing but ECDHE-ECDSA-AES128-GCM-SHA256.
    let ecdsa_only = tls12_client(&ca, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    let h = handshake(ep.https, ecdsa_only.clone(), "a.test")
        .await
        .unwrap();
    assert_eq!(h.version, ProtocolVersion::TLSv1_2);
    assert_eq!(
        h.suite,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    assert_eq!(h.serial, ec.serial);
    // The same client cannot use the RSA certificate: refused and counted.
    let no_shared = r#"edgepop_tls_handshake_failures_total{reason="no_shared_cipher"}"#;
    let before = ep.metric(no_shared).await;
    assert!(handshake(ep.https, ecdsa_only, "rsa.test").await.is_err());
    assert_eventually!(
        ep.metric(no_shared).await > before,
        Duration::from_secs(2),
        "no_shared_cipher not counted"
    );

    // The RSA certificate serves over TLS 1.2 (ECDHE-RSA) and TLS 1.3.
    let rsa12 = tls12_client(&ca, cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384);
    let h = handshake(ep.https, rsa12, "rsa.test").await.unwrap();
    assert_eq!(h.suite, CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384);
    assert_eq!(h.serial, rsa.serial);
    let h = handshake(ep.https, full_handshakes(&ca), "rsa.test")
        .await
        .unwrap();
    assert_eq!(h.version, ProtocolVersion::TLSv1_3);
    assert_eq!(h.serial, rsa.serial);
    let resp = Client::tls(ep.https, &ca, true).get("rsa.test", "/r").await;
    assert_eq!((resp.status, resp.version), (200, http::Version::HTTP_2));

    // ALPN: h2 preferred, http/1.1 offered.
    let mut both = (*full_handshakes(&ca)).clone();
    both.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    let h = handshake(ep.https, Arc::new(both), "a.test").await.unwrap();
    assert_eq!(h.alpn.as_deref(), Some(&b"h2"[..]));
    let mut h1 = (*full_handshakes(&ca)).clone();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let h = handshake(ep.https, Arc::new(h1), "a.test").await.unwrap();
    assert_eq!(h.alpn.as_deref(), Some(&b"http/1.1"[..]));

    // Session resumption by session ID from the server's cache; no ticket issued by default.
    let (kind, tickets) = tls12_resumption(&ep, &ca).await;
    assert_eq!(kind, HandshakeKind::Resumed);
    assert!(!tickets.is_empty(), "no TLS 1.2 session stored");
    assert!(
        tickets.iter().all(|&len| len == 0),
        "session tickets issued by default: {tickets:?}"
    );
    drop(ep);

    // `[tls] session-tickets = true` turns them on (so the check above can fail).
    let ep = start(&origin, "session-tickets = true", &[("a.test", &ec)]).await;
    let (kind, tickets) = tls12_resumption(&ep, &ca).await;
    assert_eq!(kind, HandshakeKind::Resumed);
    assert!(
        tickets.iter().any(|&len| len > 0),
        "no session ticket with session-tickets = true: {tickets:?}"
    );
}

#[tokio::test]
async fn check_lists_valid_and_broken_domains() {
    trace_init();
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    write_pair(
        &certs,
        "a.test",
        &ca.leaf(&["a.test"]),
        "chain.pem",
        "key.pem",
    )
    .unwrap();
    // b.test: a torn rotation (the key of another pair).
    let b = write_pair(
        &certs,
        "b.test",
        &ca.leaf(&["b.test"]),
        "chain.pem",
        "key.pem",
    )
    .unwrap();
    write_atomic(&b.join("key.pem"), ca.leaf(&["b.test"]).key_pem.as_bytes()).unwrap();
    let config_path = dir.path().join("edgepop.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[[listener]]
address = "127.0.0.1:{port}"
tls = true

[tls]
certs-dir = "{certs}"

[upstream.app]
servers = ["127.0.0.1:1"]

[[site]]
names = ["a.test", "b.test"]
upstream = "app"
"#,
            port = free_port(),
            certs = certs.display()
        ),
    )
    .unwrap();

    let out = std::process::Command::new(edgepop_bin())
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("ok: a.test")),
        "{stdout}"
    );
    let b_line = lines
        .iter()
        .find(|l| l.starts_with("warning: b.test: "))
        .unwrap_or_else(|| panic!("no warning for b.test:\n{stdout}"));
    assert!(b_line.contains("does not match"), "{b_line}");
    assert!(
        b_line.contains(&*b.join("key.pem").to_string_lossy()),
        "{b_line}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.ends_with("ok (1 listener(s), 1 site(s), 1 upstream(s))")),
        "{stdout}"
    );
    // `check` reads the key files but never prints them.
    assert!(!stdout.contains("PRIVATE KEY") && !stderr.contains("PRIVATE KEY"));
}
