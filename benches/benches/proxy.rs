//! The proxy's per-request and per-reload helpers (`edgepop::bench_api`): config parsing of the
//! shipped deploy/edgepop.toml, cache-key building, PROXY protocol v1/v2 parsing, Accept-Encoding
//! negotiation, and the forwarded-header rewrite of `upstream_request_filter`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a failure is a broken bench

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use edgepop::bench_api::{
    Negotiator, Parsed, browser_request, cache_key, forward_headers, parse_proxy_header,
};

const DEPLOY_TOML: &str = include_str!("../../deploy/edgepop.toml");

fn bench_config(c: &mut Criterion) {
    edgepop::Config::parse("deploy/edgepop.toml", DEPLOY_TOML).expect("deploy/edgepop.toml parses");
    let mut group = c.benchmark_group("proxy/config");
    group.throughput(Throughput::Bytes(DEPLOY_TOML.len() as u64));
    group.bench_function("parse_deploy_edgepop_toml", |b| {
        b.iter(|| edgepop::Config::parse("deploy/edgepop.toml", black_box(DEPLOY_TOML)));
    });
    group.finish();
}

fn bench_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("proxy/request");
    group.throughput(Throughput::Elements(1));

    let template = "$scheme://$host$request_uri";
    assert_eq!(
        cache_key(template, true, "example.com", "/a/b?c=d").as_deref(),
        Some("https://example.com/a/b?c=d")
    );
    // Note: also parses the template and builds a RequestHeader each call (the proxy does neither
    // per request: the template is parsed at config load, the header exists already).
    group.bench_function("cache_key", |b| {
        b.iter(|| {
            cache_key(
                template,
                true,
                black_box("example.com"),
                black_box("/a/b?c=d"),
            )
        });
    });

    let v1: &[u8] = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0x00, 12]); // v2 PROXY, TCP over IPv4, 12 address bytes
    v2.extend_from_slice(&[192, 0, 2, 10, 198, 51, 100, 1]);
    v2.extend_from_slice(&56324u16.to_be_bytes());
    v2.extend_from_slice(&443u16.to_be_bytes());
    v2.extend_from_slice(b"\x16\x03\x01"); // the TLS ClientHello that follows
    for (id, buf) in [
        ("parse_proxy_header/v1", v1),
        ("parse_proxy_header/v2", &v2[..]),
    ] {
        assert!(
            matches!(
                parse_proxy_header(buf),
                Parsed::Header {
                    client: Some(_),
                    ..
                }
            ),
            "{id}"
        );
        group.bench_function(id, |b| b.iter(|| parse_proxy_header(black_box(buf))));
    }

    let negotiator = Negotiator::default_config().expect("default compression settings");
    let ae = http::HeaderValue::from_static("gzip, deflate, br");
    assert_eq!(negotiator.negotiate(&ae), "br");
    group.bench_function("negotiate_encoding", |b| {
        b.iter(|| negotiator.negotiate(black_box(&ae)));
    });

    let req = browser_request("example.com", "/a/b?c=d").expect("request");
    let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let mut check = req.clone();
    forward_headers(&mut check, true, "example.com", client).expect("rewrite");
    assert_eq!(
        check.headers.get("x-forwarded-for").map(|v| v.as_bytes()),
        Some(&b"198.51.100.7, 203.0.113.9"[..])
    );
    // The clone (pingora clones the downstream header for the upstream) is setup, not measured.
    group.bench_function("forward_headers", |b| {
        b.iter_batched_ref(
            || req.clone(),
            |r| forward_headers(r, true, "example.com", client),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_config, bench_request);
criterion_main!(benches);
