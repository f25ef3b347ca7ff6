//! Operations: live reload on SIGHUP (valid, broken, needing a restart), `edgepop check --diff`, the metrics an
//! operator scrapes, and the privilege drop when started as root.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;

use edgepop_tests::{Client, Edgepop, Origin, TestCa, assert_eventually, trace_init};

/// One plain listener, site a.test in front of `origin`, plus `extra` appended.
fn config(origin: &Origin, extra: &str) -> String {
    format!(
        r#"
[server]
drain-timeout = "5s"

[[listener]]
address = "{{http}}"

[upstream.app]
servers = ["{origin}"]

[[site]]
names = ["a.test"]
upstream = "app"
{extra}"#,
        origin = origin.addr
    )
}

const SITE_B: &str = "\n[[site]]\nnames = [\"b.test\"]\nupstream = \"app\"\n";

/// Sends GET a.test on one keepalive connection until `stop`; returns (successes, failures).
async fn keepalive_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (mut ok, mut failed) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = sender.ready().await {
            failed.push(format!("keepalive connection closed: {e}"));
            break;
        }
        let req = hyper::Request::get("/ka")
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        match sender.send_request(req).await {
            Ok(resp) if resp.status() == 200 => match resp.into_body().collect().await {
                Ok(_) => ok += 1,
                Err(e) => failed.push(format!("keepalive body: {e}")),
            },
            Ok(resp) => failed.push(format!("keepalive status {}", resp.status())),
            Err(e) => failed.push(format!("keepalive request: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (ok, failed)
}

/// Sends GET a.test on a new connection each time until `stop`; returns (successes, failures).
async fn new_connection_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let client = Client::plain(addr);
    let (mut ok, mut failed) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        match client.try_get("a.test", "/fresh").await {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => failed.push(format!("new connection: status {}", r.status)),
            Err(e) => failed.push(format!("new connection: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (ok, failed)
}

/// `(1-based line, 1-based column)` of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).unwrap();
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[tokio::test]
async fn sighup_adds_a_site_without_failing_a_request() {
    trace_init();
    let origin = Origin::start().await;
    let ep = Edgepop::start(&config(&origin, "")).await;
    let client = Client::plain(ep.http);
    assert_eq!(client.get("b.test", "/").await.status, 421);

    let stop = Arc::new(AtomicBool::new(false));
    let keepalive = tokio::spawn(keepalive_loop(ep.http, stop.clone()));
    let fresh = tokio::spawn(new_connection_loop(ep.http, stop.clone()));
    let slow_client = client.clone();
    let slow = tokio::spawn(async move { slow_client.get("a.test", "/slow?ms=800").await });
    assert_eventually!(
        origin.seen().iter().any(|s| s.uri.starts_with("/slow")),
        Duration::from_secs(5),
        "the slow request never reached the origin"
    );

    let text = std::fs::read_to_string(&ep.config_path).unwrap();
    std::fs::write(&ep.config_path, format!("{text}{SITE_B}")).unwrap();
    ep.signal(Signal::SIGHUP);
    assert_eventually!(
        client.get("b.test", "/").await.status == 200,
        Duration::from_secs(5),
        "b.test was not served after SIGHUP; stderr:\n{}",
        ep.stderr()
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200, "the request in flight during the reload");
    // Keep the loops going a little past the switch.
    let until = origin.hits() + 20;
    assert_eventually!(
        origin.hits() >= until,
        Duration::from_secs(5),
        "the loops stopped"
    );
    stop.store(true, Ordering::SeqCst);
    let (ka_ok, ka_failed) = keepalive.await.unwrap();
    let (new_ok, new_failed) = fresh.await.unwrap();
    assert!(
        ka_failed.is_empty() && new_failed.is_empty(),
        "failures during the reload: {ka_failed:?} {new_failed:?}"
    );
    assert!(
        ka_ok >= 10 && new_ok >= 10,
        "too few requests to mean anything: {ka_ok} keepalive, {new_ok} new connections"
    );
    eprintln!(
        "during the reload: {ka_ok} keepalive and {new_ok} new-connection requests, 0 failed"
    );

    assert_eq!(
        ep.metric(r#"edgepop_config_reloads_total{result="ok"}"#)
            .await,
        1.0
    );
    assert_eq!(
        ep.metric(r#"edgepop_config_reloads_total{result="error"}"#)
            .await,
        0.0
    );
    assert_eq!(
        ep.metric("edgepop_config_last_reload_successful").await,
        1.0
    );
    let stderr = ep.stderr();
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    assert!(stderr.contains("site b.test: added"), "{stderr}");
    assert!(!stderr.contains("needs a restart"), "{stderr}");
}

#[tokio::test]
async fn sighup_with_a_broken_file_keeps_the_running_configuration() {
    trace_init();
    let origin = Origin::start().await;
    let ep = Edgepop::start(&config(&origin, "")).await;
    let client = Client::plain(ep.http);
    let good = std::fs::read_to_string(&ep.config_path).unwrap();
    let file = ep.config_path.display().to_string();
    let before = ep
        .metric("edgepop_config_last_reload_success_timestamp_seconds")
        .await;
    assert!(before > 1.6e9, "start-up load recorded: {before}");

    // 1. A syntax error.
    let broken = format!("{good}\n[[site]\nnames = [\"b.test\"]\n");
    std::fs::write(&ep.config_path, &broken).unwrap();
    ep.signal(Signal::SIGHUP);
    assert_eventually!(
        ep.metric(r#"edgepop_config_reloads_total{result="error"}"#)
            .await
            == 1.0,
        Duration::from_secs(5),
        "failed reload not counted"
    );
    let (line, _) = position(&broken, "[[site]\n");
    let stderr = ep.stderr();
    assert!(
        stderr.contains("reload rejected, keeping the running configuration")
            && stderr.contains(&format!("{file}:{line}:")),
        "no error at {file}:{line}: in\n{stderr}"
    );
    assert_eq!(client.get("a.test", "/").await.status, 200);
    assert_eq!(client.get("b.test", "/").await.status, 421);

    // 2. Valid TOML, invalid configuration.
    let broken = format!("{good}{}", SITE_B.replace("\"app\"", "\"nope\""));
    std::fs::write(&ep.config_path, &broken).unwrap();
    ep.signal(Signal::SIGHUP);
    assert_eventually!(
        ep.metric(r#"edgepop_config_reloads_total{result="error"}"#)
            .await
            == 2.0,
        Duration::from_secs(5),
        "second failed reload not counted"
    );
    let (line, col) = position(&broken, "\"nope\"");
    let want = format!("{file}:{line}:{col}: site[1].upstream: no [upstream.nope] is defined");
    assert!(
        ep.stderr().contains(&want),
        "{want} not in\n{}",
        ep.stderr()
    );
    assert_eq!(client.get("a.test", "/").await.status, 200);
    assert_eq!(client.get("b.test", "/").await.status, 421);

    assert_eq!(
        ep.metric(r#"edgepop_config_reloads_total{result="ok"}"#)
            .await,
        0.0
    );
    assert_eq!(
        ep.metric("edgepop_config_last_reload_successful").await,
        0.0
    );
    assert_eq!(
        ep.metric("edgepop_config_last_reload_success_timestamp_seconds")
            .await,
        before
    );
    assert!(!ep.stderr().contains("configuration reloaded"));
}

#[tokio::test]
async fn sighup_reports_a_listener_change_as_needing_a_restart_and_applies_the_rest() {
    trace_init();
    let origin = Origin::start().await;
    let ep = Edgepop::start(&config(&origin, "")).await;
    let client = Client::plain(ep.http);
    assert_eq!(client.get("nobody.test", "/").await.status, 421);

    let moved = SocketAddr::from(([127, 0, 0, 1], edgepop_tests::free_port()));
    let text = std::fs::read_to_string(&ep.config_path)
        .unwrap()
        .replace(&ep.http.to_string(), &moved.to_string());
    std::fs::write(
        &ep.config_path,
        format!("{text}\n[http]\nunknown-host-status = 404\n"),
    )
    .unwrap();
    ep.signal(Signal::SIGHUP);
    assert_eventually!(
        ep.stderr().contains("configuration reloaded"),
        Duration::from_secs(5),
        "no reload logged:\n{}",
        ep.stderr()
    );
    let stderr = ep.stderr();
    assert!(
        stderr.contains(
            "listener changed; this needs a restart and takes effect only after a restart"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("listener: changed, needs restart"),
        "{stderr}"
    );
    assert!(stderr.contains("http: changed"), "{stderr}");
    // The listener stays where it was; the [http] change is live.
    assert_eq!(client.get("nobody.test", "/").await.status, 404);
    assert_eq!(client.get("a.test", "/").await.status, 200);
    assert!(tokio::net::TcpStream::connect(moved).await.is_err());
}

/// Runs `edgepop` with `args` to completion (at most 20 s): (exit code, stdout, stderr).
fn edgepop(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(edgepop_tests::edgepop_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "edgepop {args:?} still running after 20 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_diff_shows_what_a_reload_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let running = write(
        "running.toml",
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.app]\nservers = [\"127.0.0.1:3000\"]\n[upstream.old]\nservers = [\"127.0.0.1:3001\"]\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n[[site]]\nnames = [\"gone.test\"]\nupstream = \"old\"\n",
    );
    let new = write(
        "new.toml",
        "[[listener]]\naddress = \"127.0.0.1:8081\"\n[upstream.app]\nservers = [\"127.0.0.1:3002\"]\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n[[site]]\nnames = [\"b.test\"]\nupstream = \"app\"\n",
    );
    let (code, out, err) = edgepop(&["check", "--config", &new, "--diff", &running]);
    assert_eq!(code, Some(0), "{out}{err}");
    let want = format!(
        "changes against {running}:\n  site b.test: added\n  site gone.test: removed\n  upstream app: changed (servers)\n  upstream old: removed\n  listener: changed, needs restart\n"
    );
    assert!(out.contains(&want), "want:\n{want}\ngot:\n{out}");
    assert!(out.contains(&format!("{new}: ok (")), "{out}");

    let (code, out, _) = edgepop(&["check", "--config", &new, "--diff", &new]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("no changes against {new}")), "{out}");

    let bad = write("bad.toml", "[[listener]]\naddress = \"x\"\n");
    let (code, _, err) = edgepop(&["check", "--config", &new, "--diff", &bad]);
    assert_eq!(code, Some(64));
    assert!(
        err.contains(&format!("{bad}:2:11: listener[0].address")),
        "{err}"
    );
}

/// The sum of every sample of `name` (any labels) in a scrape.
fn sum(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_move_for_requests_cache_certs_dns_and_the_process() {
    trace_init();
    let origin = Origin::start().await;
    let dns = edgepop_resolver::test_dns::TestDns::start().await.unwrap();
    dns.set_a("origin.test", &[Ipv4Addr::LOCALHOST], 5);
    let ca = TestCa::new();
    let builder = Edgepop::builder(&format!(
        r#"
[dns]
nameservers = ["{dns}"]
ip-strategy = "ipv4-only"

[cache]

[[listener]]
address = "{{http}}"

[[listener]]
address = "{{https}}"
tls = true

[tls]
certs-dir = "{{certs}}"

[upstream.app]
servers = ["origin.test:{port}"]

[[site]]
names = ["a.test"]
upstream = "app"
"#,
        dns = dns.addr(),
        port = origin.addr.port()
    ));
    builder.cert(&ca, "a.test", &["a.test"]);
    let ep = builder.wait_ready().start().await;

    let (_, scrape) = ep.admin_get("/metrics").await;
    assert!(
        scrape.contains(&format!(
            "edgepop_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{scrape}"
    );
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "edgepop_config_last_reload_success_timestamp_seconds",
    ] {
        assert!(sum(&scrape, series) > 0.0, "{series} missing or 0");
    }
    assert_eq!(ep.metric("edgepop_cert_live_domains").await, 1.0);
    assert!(
        ep.metric(r#"edgepop_cert_not_after_timestamp_seconds{name="a.test"}"#)
            .await
            > 1.6e9
    );

    let dns_before = sum(&scrape, "edgepop_dns_lookups_total");
    let plain = Client::plain(ep.http);
    for _ in 0..2 {
        let r = plain.get("a.test", "/c?cc=max-age%3D60").await;
        assert_eq!(r.status, 200);
    }
    let r = Client::tls(ep.https, &ca, true).get("a.test", "/t").await;
    assert_eq!(r.status, 200);
    // A connection held open shows in the gauge.
    let held = tokio::net::TcpStream::connect(ep.http).await.unwrap();
    assert_eventually!(
        sum(
            &ep.admin_get("/metrics").await.1,
            "edgepop_connections_open"
        ) >= 1.0,
        Duration::from_secs(5),
        "edgepop_connections_open did not count an open connection"
    );
    drop(held);

    assert_eventually!(
        ep.metric(r#"edgepop_http_requests_total{code_class="2xx",method="GET",site="a.test"}"#)
            .await
            >= 3.0,
        Duration::from_secs(5),
        "requests not counted"
    );
    let (_, scrape) = ep.admin_get("/metrics").await;
    assert!(
        sum(
            &scrape,
            r#"edgepop_http_request_duration_seconds_count{code_class="2xx",method="GET",site="a.test"}"#
        ) >= 3.0,
        "{scrape}"
    );
    assert!(
        ep.metric(r#"edgepop_cache_lookups_total{result="HIT"}"#)
            .await
            >= 1.0
    );
    assert!(
        ep.metric(r#"edgepop_cache_lookups_total{result="MISS"}"#)
            .await
            >= 1.0
    );
    assert!(ep.metric("edgepop_tls_handshakes_total").await >= 1.0);
    assert!(
        sum(&scrape, "edgepop_dns_lookups_total") > dns_before,
        "DNS lookups not counted: {dns_before} before"
    );
    assert!(dns.queries("origin.test") >= 1);
    assert!(
        ep.metric(r#"edgepop_dns_queries_total{result="answered"}"#)
            .await
            >= 1.0
    );
}

// ------------------------------------------------------------------------------------------ privilege drop

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIPPED: needs root");
        false
    }
}

/// The four ids (real, effective, saved, filesystem) of `field` ("Uid" or "Gid") in /proc/PID[/task/TID]/status.
fn proc_ids(status: &Path, field: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(status).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {}", status.display()));
    line.split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn as_root_switches_every_thread_to_the_configured_user() {
    if !root_or_skip() {
        return;
    }
    trace_init();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let origin = Origin::start().await;
    let ep =
        Edgepop::start(&config(&origin, "").replace("[server]\n", "[server]\nuser = \"nobody\"\n"))
            .await;
    assert_eq!(Client::plain(ep.http).get("a.test", "/").await.status, 200);

    let proc = std::path::PathBuf::from(format!("/proc/{}", ep.pid()));
    let mut threads = 0;
    for task in std::fs::read_dir(proc.join("task")).unwrap() {
        let status = task.unwrap().path().join("status");
        assert_eq!(proc_ids(&status, "Uid"), [uid; 4], "{}", status.display());
        assert_eq!(proc_ids(&status, "Gid"), [gid; 4], "{}", status.display());
        threads += 1;
    }
    assert!(threads > 1, "pingora's threads are there too");
    let groups = std::fs::read_to_string(proc.join("status")).unwrap();
    let groups = groups.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(
        !groups.split_whitespace().any(|g| g == "0"),
        "root's group kept: {groups}"
    );
    assert!(
        ep.stderr().contains("dropped root privileges"),
        "{}",
        ep.stderr()
    );
    // The process can still read its own /proc entries (the dumpable flag is restored).
    assert!(ep.metric("process_open_fds").await > 0.0);
}

#[tokio::test]
async fn as_root_without_a_user_refuses_unless_allowed() {
    if !root_or_skip() {
        return;
    }
    trace_init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgepop.toml");
    let body = "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n[[site]]\nnames = [\"a.test\"]\nupstream = \"app\"\n";
    std::fs::write(&path, format!("[admin]\naddress = \"off\"\n{body}")).unwrap();
    let (code, _, err) = edgepop(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("refusing to run as root: set server.user (or server.allow-root = true)"),
        "{err}"
    );

    // A cache directory the user cannot create is named at start-up (the temp dir is root's, mode 0700).
    let cache = dir.path().join("cache");
    std::fs::write(
        &path,
        format!(
            "[server]\nuser = \"nobody\"\n[admin]\naddress = \"off\"\n[cache]\n[cache.disk]\npath = \"{}\"\n{body}",
            cache.display()
        ),
    )
    .unwrap();
    let (code, _, err) = edgepop(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cache directory {} is not writable by user nobody",
            cache.display()
        )),
        "{err}"
    );

    let origin = Origin::start().await;
    let ep =
        Edgepop::start(&config(&origin, "").replace("[server]\n", "[server]\nallow-root = true\n"))
            .await;
    assert_eq!(Client::plain(ep.http).get("a.test", "/").await.status, 200);
    let status = std::path::PathBuf::from(format!("/proc/{}/status", ep.pid()));
    assert_eq!(proc_ids(&status, "Uid"), [0; 4]);
    assert!(
        ep.stderr()
            .contains("running as root (server.allow-root = true)"),
        "{}",
        ep.stderr()
    );
}
