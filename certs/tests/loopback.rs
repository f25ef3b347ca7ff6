//! Real handshakes over loopback (tokio-rustls) while a domain is rotated 100 times, the way
//! vault-agent does it: key file, then chain file, each written separately.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgepop_certs::test_util::{TestCa, write_atomic, write_pair};
use edgepop_certs::{
    CertSettings, CertStore, TlsPolicy, record_handshake_failure, server_config, watch,
};
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROTATIONS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_never_fails_a_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(&["rot.test"]);
    let dir = write_pair(tmp.path(), "rot.test", &first, "chain.pem", "key.pem").unwrap();

    let store = CertStore::new(CertSettings {
        dir: tmp.path().to_path_buf(),
        ..CertSettings::default()
    });
    assert!(store.reload().is_ok());
    // The watcher runs too, so its reloads race the explicit ones (as in production).
    let (stop_watch, shutdown) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch(store.clone(), shutdown));

    // Server: accept, handshake, answer one byte.
    let acceptor =
        tokio_rustls::TlsAcceptor::from(server_config(store.clone(), &TlsPolicy::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_failures = Arc::new(AtomicUsize::new(0));
    let server = {
        let failures = server_failures.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            let _ = tls.write_all(b"k").await;
                            let _ = tls.shutdown().await;
                        }
                        Err(e) => {
                            record_handshake_failure(&e);
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        })
    };

    // Leaf DER -> generation; generation g is live once `live_gen` says so.
    let gens: Arc<Mutex<HashMap<Vec<u8>, usize>>> =
        Arc::new(Mutex::new(HashMap::from([(first.cert_der.to_vec(), 0)])));
    let live_gen = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    // Client: full handshakes (no resumption, so every one presents a certificate).
    let client = {
        let (gens, live_gen, handshakes, stop) = (
            gens.clone(),
            live_gen.clone(),
            handshakes.clone(),
            stop.clone(),
        );
        let mut config = (*ca.client_config()).clone();
        config.resumption = Resumption::disabled();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let before = live_gen.load(Ordering::SeqCst);
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("rot.test").unwrap();
                match connector.connect(name, tcp).await {
                    Ok(mut tls) => {
                        let after = live_gen.load(Ordering::SeqCst);
                        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                        let gen_served = gens.lock().unwrap().get(&leaf).copied();
                        match gen_served {
                            Some(g) if g >= before && g <= after + 1 => {}
                            other => errors.push(format!(
                                "leaf gen {other:?} outside {before}..={}",
                                after + 1
                            )),
                        }
                        let mut byte = [0u8; 1];
                        tls.read_exact(&mut byte).await.unwrap();
                    }
                    Err(e) => errors.push(format!("handshake failed: {e}")),
                }
                handshakes.fetch_add(1, Ordering::SeqCst);
            }
            errors
        })
    };

    let started = Instant::now();
    let mut last = first.cert_der.clone();
    for generation in 1..=ROTATIONS {
        let pair = ca.leaf(&["rot.test"]);
        gens.lock()
            .unwrap()
            .insert(pair.cert_der.to_vec(), generation);
        let seen = handshakes.load(Ordering::SeqCst);
        tokio::task::block_in_place(|| {
            write_atomic(&dir.join("key.pem"), pair.key_pem.as_bytes()).unwrap();
            let torn = store.reload();
            assert_eq!(
                torn.kept_previous.len(),
                1,
                "generation {generation}: {torn:?}"
            );
            write_atomic(&dir.join("chain.pem"), pair.chain_pem.as_bytes()).unwrap();
            let report = store.reload();
            assert!(report.is_ok(), "generation {generation}: {report:?}");
        });
        live_gen.store(generation, Ordering::SeqCst);
        last = pair.cert_der.clone();
        // Let the client complete at least one handshake per generation.
        let deadline = Instant::now() + Duration::from_secs(5);
        while handshakes.load(Ordering::SeqCst) < seen + 2 && Instant::now() < deadline {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let errors = client.await.unwrap();
    let total = handshakes.load(Ordering::SeqCst);

    assert!(
        errors.is_empty(),
        "{} of {total} handshakes went wrong: {errors:?}",
        errors.len()
    );
    assert_eq!(server_failures.load(Ordering::Relaxed), 0);
    assert!(total >= ROTATIONS, "only {total} handshakes");
    let served = store.resolve_name(Some("rot.test")).unwrap();
    assert_eq!(
        served.cert[0].as_ref(),
        last.as_ref(),
        "last generation not live"
    );
    eprintln!(
        "{total} handshakes over {ROTATIONS} rotations in {:?}",
        started.elapsed()
    );

    stop_watch.send(true).unwrap();
    watcher.await.unwrap();
    server.abort();
}
