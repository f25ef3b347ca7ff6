//! `edgepop_certs::CertStore`: SNI resolution (exact, one-label wildcard, unknown) with 1 and 1,000
//! domain directories, and a full in-memory TLS 1.3 handshake (no resumption) against
//! `edgepop_certs::server_config` with an ECDSA P-256 and an RSA 2048 leaf.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a failure is a broken bench

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edgepop_certs::test_util::{TestCa, TestPair, handshake_in_memory, write_pair};
use edgepop_certs::{CertSettings, CertStore, TlsPolicy, server_config};
use rustls::HandshakeKind;
use rustls::client::{ClientConfig, Resumption};

/// A store over `dir` after one full reload, asserting every domain loaded.
fn store(dir: &Path, domains: usize) -> Arc<CertStore> {
    let store = CertStore::new(CertSettings {
        dir: dir.to_path_buf(),
        ..CertSettings::default()
    });
    let report = store.reload();
    assert!(report.is_ok(), "reload: {report:?}");
    assert_eq!(report.loaded.len(), domains);
    store
}

fn write(dir: &Path, domain: &str, pair: &TestPair) {
    write_pair(dir, domain, pair, "chain.pem", "key.pem").expect("write pair");
}

fn bench_resolve(c: &mut Criterion) {
    let ca = TestCa::new();
    // One domain: `example.com` with `*.example.com` on the same leaf (the usual apex + wildcard cert).
    let one_dir = tempfile::tempdir().unwrap();
    write(
        one_dir.path(),
        "example.com",
        &ca.leaf(&["example.com", "*.example.com"]),
    );
    let one = store(one_dir.path(), 1);
    // 1,000 domains, each its own directory and leaf (`siteN.test` + `*.siteN.test`).
    let many_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    for i in 0..1000 {
        let apex = format!("site{i}.test");
        let wildcard = format!("*.site{i}.test");
        write(many_dir.path(), &apex, &ca.leaf(&[&apex, &wildcard]));
    }
    let generated = started.elapsed();
    let started = Instant::now();
    let many = store(many_dir.path(), 1000);
    println!(
        "certs setup: 1,000 ECDSA leaves generated and written in {generated:.2?}, loaded by reload() in {:.2?}",
        started.elapsed()
    );

    let cases: [(&str, &Arc<CertStore>, &str, bool); 6] = [
        ("1/exact", &one, "example.com", true),
        ("1/wildcard", &one, "www.example.com", true),
        ("1/unknown", &one, "example.org", false),
        ("1000/exact", &many, "site500.test", true),
        ("1000/wildcard", &many, "www.site500.test", true),
        ("1000/unknown", &many, "www.example.org", false),
    ];
    let mut group = c.benchmark_group("certs/resolve_name");
    group.throughput(Throughput::Elements(1));
    for (id, store, sni, found) in cases {
        assert_eq!(
            store.resolve_name(Some(sni)).is_some(),
            found,
            "{id}: {sni}"
        );
        group.bench_with_input(BenchmarkId::from_parameter(id), sni, |b, sni| {
            b.iter(|| store.resolve_name(Some(black_box(sni))));
        });
    }
    group.finish();
}

/// TLS 1.3 only, no client-side resumption: every handshake is a full one.
fn client_config(ca: &TestCa) -> Arc<ClientConfig> {
    let mut config = (*ca.client_config_with(&[&rustls::version::TLS13])).clone();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

fn bench_handshake(c: &mut Criterion) {
    let ca = TestCa::new();
    let client = client_config(&ca);
    let mut group = c.benchmark_group("certs/tls13_full_handshake");
    group.throughput(Throughput::Elements(1));
    for (id, pair) in [
        ("ecdsa_p256", ca.leaf(&["example.com"])),
        ("rsa_2048", ca.leaf_rsa(&["example.com"])),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "example.com", &pair);
        let server = server_config(store(dir.path(), 1), &TlsPolicy::default());
        let hs = handshake_in_memory(server.clone(), client.clone(), "example.com");
        assert!(hs.is_ok(), "{id}: {hs:?}");
        assert_eq!(hs.client.handshake_kind(), Some(HandshakeKind::Full));
        assert_eq!(hs.leaf(), Some(&pair.cert_der));
        group.bench_function(id, |b| {
            b.iter(|| {
                let hs = handshake_in_memory(server.clone(), client.clone(), "example.com");
                assert!(hs.is_ok());
                hs
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_resolve, bench_handshake);
criterion_main!(benches);
