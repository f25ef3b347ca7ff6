//! The resolver against a real DNS server on 127.0.0.1 (`test_dns`), over real UDP/TCP.
//!
//! Metrics live in the process-wide default registry and tests run in parallel, so metric
//! assertions compare deltas (`>`), never absolute values.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use edgepop_resolver::test_dns::TestDns;
use edgepop_resolver::{IpStrategy, ResolveError, Resolver, ResolverSettings};
use tokio::sync::watch;

const ORIGIN_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);

fn addrs(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect()
}

/// Polls `resolve` once: it must be ready without waiting (no network I/O, no lock).
fn resolve_now(
    resolver: &Resolver,
    host: &str,
    port: u16,
) -> Result<Arc<[SocketAddr]>, ResolveError> {
    let mut fut = pin!(resolver.resolve(host, port));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("resolve({host}) had to wait"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `within`.
async fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of a metric's samples in the default registry whose text line contains `selector`.
fn metric(name: &str, selector: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .expect("metrics encode as text");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name) && l.contains(selector))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn lookups(result: &str) -> f64 {
    metric("edgepop_dns_lookups_total", &format!("result=\"{result}\""))
}

#[tokio::test]
async fn ip_literals_never_reach_dns() {
    let dns = TestDns::start().await.unwrap();
    let resolver = Resolver::new(dns.settings()).unwrap();
    let cases: &[(&str, IpAddr)] = &[
        ("192.0.2.1", IpAddr::from([192, 0, 2, 1])),
        ("2001:db8::1", "2001:db8::1".parse().unwrap()),
        ("[2001:db8::1]", "2001:db8::1".parse().unwrap()),
    ];
    for &(host, ip) in cases {
        let got = resolver.resolve(host, 8443).await.unwrap();
        assert_eq!(&got[..], &[SocketAddr::new(ip, 8443)], "{host}");
        assert_eq!(
            &resolve_now(&resolver, host, 8443).unwrap()[..],
            &got[..],
            "{host} again"
        );
        assert_eq!(
            &resolver.resolve_ips(host).await.unwrap()[..],
            &[ip],
            "{host} without port"
        );
    }
    assert_eq!(dns.total_queries(), 0);
}

#[tokio::test]
async fn invalid_names_are_rejected_without_a_query() {
    let dns = TestDns::start().await.unwrap();
    let resolver = Resolver::new(dns.settings()).unwrap();
    for host in ["", "a b.test", "a..test", "http://a.test", "[::1"] {
        match resolver.resolve(host, 80).await {
            Err(ResolveError::InvalidName { host: h }) => assert_eq!(&*h, host),
            other => panic!("{host:?}: expected InvalidName, got {other:?}"),
        }
    }
    assert_eq!(dns.total_queries(), 0);
}

#[tokio::test]
async fn warm_names_are_answered_from_the_table() {
    let dns = TestDns::start().await.unwrap();
    dns.set_a("origin.test.", &[ORIGIN_V4], 60);
    let resolver = Resolver::new(dns.settings()).unwrap();
    let cached_before = lookups("cached");

    let first = resolver.resolve("origin.test.", 443).await.unwrap();
    assert_eq!(&first[..], &addrs(&[ORIGIN_V4.into()], 443)[..]);
    assert_eq!(dns.queries("origin.test."), 1);

    for _ in 0..3 {
        let again = resolve_now(&resolver, "origin.test.", 443).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "warm answers share one allocation"
        );
    }
    let other_port = resolve_now(&resolver, "origin.test.", 80).unwrap();
    assert_eq!(&other_port[..], &addrs(&[ORIGIN_V4.into()], 80)[..]);
    assert_eq!(
        &resolver.resolve_ips("origin.test.").await.unwrap()[..],
        &[IpAddr::from(ORIGIN_V4)]
    );
    assert_eq!(dns.queries("origin.test."), 1, "no query for warm lookups");
    assert!(lookups("cached") >= cached_before + 5.0);
}

#[tokio::test]
async fn all_records_are_returned() {
    let dns = TestDns::start().await.unwrap();
    let v4 = [ORIGIN_V4, OTHER_V4, Ipv4Addr::new(192, 0, 2, 30)];
    let v6: Ipv6Addr = "2001:db8::10".parse().unwrap();
    dns.set_a("multi.test.", &v4, 60);
    dns.set_aaaa("multi.test.", &[v6], 60);
    dns.set_aaaa("v6only.test.", &[v6], 60);

    let default = Resolver::new(dns.settings()).unwrap();
    let got = default.resolve("multi.test.", 443).await.unwrap();
    let v4_ips: Vec<IpAddr> = v4.iter().map(|&ip| ip.into()).collect();
    assert_eq!(
        &got[..],
        &addrs(&v4_ips, 443)[..],
        "Ipv4ThenIpv6: A only when there is an A"
    );
    let got = default.resolve("v6only.test.", 443).await.unwrap();
    assert_eq!(
        &got[..],
        &[SocketAddr::new(v6.into(), 443)],
        "Ipv4ThenIpv6 falls back to AAAA"
    );

    let both = Resolver::new(ResolverSettings {
        ip_strategy: IpStrategy::Ipv4AndIpv6,
        ..dns.settings()
    })
    .unwrap();
    let got = both.resolve_ips("multi.test.").await.unwrap();
    let mut want = v4_ips.clone();
    want.push(v6.into());
    assert_eq!(&got[..], &want[..]);

    let v6_only = Resolver::new(ResolverSettings {
        ip_strategy: IpStrategy::Ipv6Only,
        ..dns.settings()
    })
    .unwrap();
    assert_eq!(
        &v6_only.resolve_ips("multi.test.").await.unwrap()[..],
        &[IpAddr::from(v6)]
    );
}

#[tokio::test]
async fn refresher_follows_a_changed_record_without_request_lookups() {
    let dns = TestDns::start().await.unwrap();
    dns.set_a("moving.test.", &[ORIGIN_V4], 2);
    let settings = ResolverSettings {
        refresh_ahead: 0.5,
        ..dns.settings()
    };
    let resolver = Resolver::new(settings).unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let refresher = resolver.spawn_refresher(stop_rx);

    let first = resolver.resolve("moving.test.", 443).await.unwrap();
    let answered_at = Instant::now();
    assert_eq!(&first[..], &addrs(&[ORIGIN_V4.into()], 443)[..]);
    assert_eq!(dns.queries("moving.test."), 1);
    dns.set_a("moving.test.", &[OTHER_V4], 2);

    // No resolve() runs while we wait: only the refresher can query. With half of the 2 s TTL
    // left it re-queries the server (not a cache in between), ahead of expiry.
    eventually(Duration::from_secs(3), "a background refresh", || {
        (dns.queries("moving.test.") >= 2).then_some(())
    })
    .await;
    let refreshed_after = answered_at.elapsed();
    assert!(
        refreshed_after < Duration::from_secs(2),
        "refreshed after {refreshed_after:?}, not ahead of the TTL"
    );
    // The refresh lands in the table; every resolve meanwhile is answered without waiting.
    let new = eventually(Duration::from_secs(2), "the new address", || {
        let got = resolve_now(&resolver, "moving.test.", 443).unwrap();
        (got[0].ip() == IpAddr::from(OTHER_V4)).then_some(got)
    })
    .await;
    assert_eq!(&new[..], &addrs(&[OTHER_V4.into()], 443)[..]);
    assert_eq!(dns.queries("moving.test."), 2, "resolve() did not query");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), refresher)
        .await
        .expect("refresher stops")
        .unwrap();
}

#[tokio::test]
async fn warmed_names_resolve_in_the_background() {
    let dns = TestDns::start().await.unwrap();
    dns.set_a("pinned.test.", &[ORIGIN_V4], 60);
    let resolver = Resolver::new(dns.settings()).unwrap();
    resolver.warm("pinned.test.");
    resolver.warm("not a name");
    let (_stop_tx, stop_rx) = watch::channel(false);
    let _refresher = resolver.spawn_refresher(stop_rx);
    let got = eventually(Duration::from_secs(2), "the warmed name", || {
        // Polling once: Pending (cold) until the background lookup has landed.
        let mut fut = pin!(resolver.resolve("pinned.test.", 443));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => Some(r.unwrap()),
            Poll::Pending => None,
        }
    })
    .await;
    assert_eq!(&got[..], &addrs(&[ORIGIN_V4.into()], 443)[..]);
    assert_eq!(dns.queries("pinned.test."), 1);
}

#[tokio::test]
async fn outage_serves_stale_then_errors() {
    let dns = TestDns::start().await.unwrap();
    dns.set_a("stale.test.", &[ORIGIN_V4], 1);
    let settings = ResolverSettings {
        serve_stale: Duration::from_secs(2),
        timeout: Duration::from_millis(300),
        ..dns.settings()
    };
    let resolver = Resolver::new(settings).unwrap();
    let (_stop_tx, stop_rx) = watch::channel(false);
    let _refresher = resolver.spawn_refresher(stop_rx);
    let want = addrs(&[ORIGIN_V4.into()], 443);
    assert_eq!(
        &resolver.resolve("stale.test.", 443).await.unwrap()[..],
        &want[..]
    );
    let stale_before = lookups("stale");

    dns.stop().await;
    // Past the 1 s TTL, refreshes fail; the last good answer keeps coming, without waiting.
    eventually(Duration::from_secs(3), "a stale answer", || {
        assert_eq!(
            &resolve_now(&resolver, "stale.test.", 443).unwrap()[..],
            &want[..]
        );
        (lookups("stale") > stale_before).then_some(())
    })
    .await;
    eventually(Duration::from_secs(2), "the stale-names gauge", || {
        assert_eq!(
            &resolve_now(&resolver, "stale.test.", 443).unwrap()[..],
            &want[..]
        );
        (metric("edgepop_dns_stale_names", "") >= 1.0).then_some(())
    })
    .await;

    // After TTL + serve_stale (3 s) the name is cold again and the lookup fails within budget.
    let deadline = Instant::now() + Duration::from_secs(4);
    let error = loop {
        let started = Instant::now();
        let result = resolver.resolve("stale.test.", 443).await;
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "one lookup took {:?}",
            started.elapsed()
        );
        match result {
            Ok(got) => assert_eq!(&got[..], &want[..]),
            Err(e) => break e,
        }
        assert!(
            Instant::now() < deadline,
            "stale answer served past the serve-stale window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        matches!(
            error,
            ResolveError::Timeout { .. } | ResolveError::Failed { .. }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("dns lookup for stale.test. failed"),
        "{error}"
    );

    // The server comes back: the name resolves again.
    dns.restart().await.unwrap();
    assert_eq!(
        &resolver.resolve("stale.test.", 443).await.unwrap()[..],
        &want[..]
    );
}

#[tokio::test]
async fn unknown_names_are_not_found_and_cached() {
    let dns = TestDns::start().await.unwrap();
    dns.set_negative_ttl(1);
    let resolver = Resolver::new(dns.settings()).unwrap();
    let negative_before = lookups("negative");

    let started = Instant::now();
    let error = resolver.resolve("missing.test.", 443).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "NXDOMAIN took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&error, ResolveError::NotFound { host } if &**host == "missing.test."),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "dns lookup for missing.test. failed: no such host"
    );
    let queries = dns.queries("missing.test.");
    assert!(queries >= 1);

    assert!(matches!(
        resolve_now(&resolver, "missing.test.", 443),
        Err(ResolveError::NotFound { .. })
    ));
    assert_eq!(
        dns.queries("missing.test."),
        queries,
        "negative answer is cached"
    );
    assert!(lookups("negative") >= negative_before + 2.0);

    // The SOA says 1 s (less than negative_ttl = 30 s): the name is asked again after that, and
    // the new record is found.
    dns.set_a("missing.test.", &[ORIGIN_V4], 60);
    eventually(
        Duration::from_secs(3),
        "the negative entry to expire",
        || {
            let mut fut = pin!(resolver.resolve("missing.test.", 443));
            match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Err(ResolveError::NotFound { .. })) => None,
                Poll::Ready(other) => panic!("unexpected {other:?}"),
                Poll::Pending => Some(()),
            }
        },
    )
    .await;
    assert_eq!(
        &resolver.resolve("missing.test.", 443).await.unwrap()[..],
        &addrs(&[ORIGIN_V4.into()], 443)[..]
    );
}

#[tokio::test]
async fn nodata_is_not_found() {
    let dns = TestDns::start().await.unwrap();
    dns.set_a("v4only.test.", &[ORIGIN_V4], 60);
    let resolver = Resolver::new(ResolverSettings {
        ip_strategy: IpStrategy::Ipv6Only,
        ..dns.settings()
    })
    .unwrap();
    assert!(matches!(
        resolver.resolve("v4only.test.", 443).await,
        Err(ResolveError::NotFound { .. })
    ));
    let queries = dns.queries("v4only.test.");
    assert!(matches!(
        resolve_now(&resolver, "v4only.test.", 443),
        Err(ResolveError::NotFound { .. })
    ));
    assert_eq!(dns.queries("v4only.test."), queries);
}

#[tokio::test]
async fn never_resolved_name_with_dead_server_fails_within_budget() {
    let timeout = Duration::from_millis(200);
    let budget = timeout * 2;
    let margin = Duration::from_millis(300);

    // A server that receives but never answers: timeouts.
    let silent = TestDns::start().await.unwrap();
    silent.set_a("origin.test.", &[ORIGIN_V4], 60);
    silent.set_unresponsive(true);
    let resolver = Resolver::new(ResolverSettings {
        timeout,
        attempts: 2,
        ..silent.settings()
    })
    .unwrap();
    let started = Instant::now();
    let error = resolver.resolve("origin.test.", 443).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, ResolveError::Timeout { .. }), "{error:?}");
    assert!(took >= timeout && took < budget + margin, "took {took:?}");
    assert!(silent.queries("origin.test.") >= 1);

    // A closed port: refused, or a timeout, but never past the budget.
    let closed = TestDns::start().await.unwrap();
    closed.stop().await;
    let resolver = Resolver::new(ResolverSettings {
        timeout,
        attempts: 2,
        ..closed.settings()
    })
    .unwrap();
    let failed_before = lookups("failed");
    let started = Instant::now();
    let error = resolver.resolve("origin.test.", 443).await.unwrap_err();
    assert!(
        started.elapsed() < budget + margin,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            error,
            ResolveError::Timeout { .. } | ResolveError::Failed { .. }
        ),
        "{error:?}"
    );
    assert!(lookups("failed") > failed_before);
}

#[tokio::test]
async fn concurrent_cold_lookups_share_one_query() {
    let dns = TestDns::start().await.unwrap();
    dns.set_a("busy.test.", &[ORIGIN_V4], 60);
    dns.set_delay(Duration::from_millis(200));
    let resolver = Resolver::new(dns.settings()).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let resolver = resolver.clone();
            tokio::spawn(async move { resolver.resolve_ips("busy.test.").await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().unwrap());
    }
    assert_eq!(&answers[0][..], &[IpAddr::from(ORIGIN_V4)]);
    // One lookup task answered everyone (hickory also merges identical in-flight queries on the
    // wire, so the query count alone would not show it).
    assert!(
        answers.iter().all(|a| Arc::ptr_eq(a, &answers[0])),
        "one shared answer"
    );
    assert_eq!(dns.queries("busy.test."), 1);
}

#[tokio::test]
async fn truncated_udp_answers_fall_back_to_tcp() {
    let dns = TestDns::start().await.unwrap();
    dns.set_a("big.test.", &[ORIGIN_V4, OTHER_V4], 60);
    dns.set_truncate_udp(true);
    let resolver = Resolver::new(dns.settings()).unwrap();
    let got = resolver.resolve_ips("big.test.").await.unwrap();
    assert_eq!(&got[..], &[IpAddr::from(ORIGIN_V4), IpAddr::from(OTHER_V4)]);
    assert!(dns.tcp_queries() >= 1);
}

#[tokio::test]
async fn refresher_stops_when_the_sender_is_dropped() {
    let dns = TestDns::start().await.unwrap();
    let resolver = Resolver::new(dns.settings()).unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let refresher = resolver.spawn_refresher(stop_rx);
    drop(stop_tx);
    tokio::time::timeout(Duration::from_secs(2), refresher)
        .await
        .expect("refresher stops")
        .unwrap();
}
