//! The downstream rustls `ServerConfig`: Mozilla "intermediate" over the [`CertStore`].

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{self, cipher_suite};
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache};
use tracing::warn;

use crate::store::CertStore;

/// Session resumption and ALPN choices for [`server_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Server-side session cache entries (TLS 1.2 session IDs and TLS 1.3 stateful tickets).
    /// Each entry is a few hundred bytes; 0 disables the cache.
    pub session_cache_size: usize,
    /// Issue stateless (encrypted) session tickets. Off by default, as in the nginx setup.
    pub session_tickets: bool,
    /// Offer ALPN `h2` before `http/1.1`; otherwise only `http/1.1`.
    pub alpn_h2: bool,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        Self {
            session_cache_size: 4096,
            session_tickets: false,
            alpn_h2: true,
        }
    }
}

/// ring with Mozilla's "intermediate" suites: the three TLS 1.3 suites plus TLS 1.2 ECDHE with
/// ECDSA or RSA and AES-GCM or ChaCha20-Poly1305. Key exchange: X25519, P-256, P-384.
pub fn intermediate_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    }
}

/// Build the listener's `ServerConfig` (TLS 1.2 and 1.3 only, no client auth) resolving
/// certificates through `store`. For pingora's `Acceptor::from_server_config`.
///
/// Does not install a process-default crypto provider.
pub fn server_config(store: Arc<CertStore>, policy: &TlsPolicy) -> Arc<ServerConfig> {
    #[allow(clippy::expect_used)] // constant suites that cover both versions: cannot fail
    let builder = ServerConfig::builder_with_provider(Arc::new(intermediate_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .expect("intermediate provider supports TLS 1.2 and 1.3");
    let mut config = builder.with_no_client_auth().with_cert_resolver(store);

    config.session_storage = if policy.session_cache_size == 0 {
        Arc::new(NoServerSessionStorage {})
    } else {
        ServerSessionMemoryCache::new(policy.session_cache_size)
    };
    if policy.session_tickets {
        match ring::Ticketer::new() {
            Ok(ticketer) => config.ticketer = ticketer,
            Err(e) => warn!(error = %e, "session tickets disabled: no ticket key"),
        }
    }
    config.alpn_protocols = if policy.alpn_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use rustls::{CipherSuite, ProtocolVersion};

    use super::*;
    use crate::store::CertSettings;
    use crate::test_util::{TestCa, handshake_in_memory, write_pair};

    const INTERMEDIATE_TLS12: [CipherSuite; 6] = [
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];

    fn store_with(ca: &TestCa) -> (tempfile::TempDir, Arc<CertStore>) {
        let tmp = tempfile::tempdir().unwrap();
        write_pair(
            tmp.path(),
            "ec.test",
            &ca.leaf(&["ec.test"]),
            "chain.pem",
            "key.pem",
        )
        .unwrap();
        write_pair(
            tmp.path(),
            "rsa.test",
            &ca.leaf_rsa(&["rsa.test"]),
            "chain.pem",
            "key.pem",
        )
        .unwrap();
        let store = CertStore::new(CertSettings {
            dir: tmp.path().to_path_buf(),
            ..CertSettings::default()
        });
        assert!(store.reload().is_ok());
        (tmp, store)
    }

    #[test]
    fn only_intermediate_suites_and_no_tickets_by_default() {
        let ca = TestCa::new();
        let (_tmp, store) = store_with(&ca);
        let config = server_config(store, &TlsPolicy::default());
        let suites: Vec<CipherSuite> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites.len(), 9);
        for s in &suites {
            let tls13 = matches!(
                s,
                CipherSuite::TLS13_AES_128_GCM_SHA256
                    | CipherSuite::TLS13_AES_256_GCM_SHA384
                    | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            );
            assert!(tls13 || INTERMEDIATE_TLS12.contains(s), "{s:?}");
        }
        assert!(!config.ticketer.enabled());
    }

    #[test]
    fn tls12_handshakes_negotiate_intermediate_suites() {
        let ca = TestCa::new();
        let (_tmp, store) = store_with(&ca);
        let config = server_config(store, &TlsPolicy::default());
        let tls12 = ca.client_config_with(&[&rustls::version::TLS12]);
        for (name, want_prefix) in [
            ("ec.test", "TLS_ECDHE_ECDSA_"),
            ("rsa.test", "TLS_ECDHE_RSA_"),
        ] {
            let hs = handshake_in_memory(config.clone(), tls12.clone(), name);
            assert!(hs.is_ok(), "{name}: {hs:?}");
            assert_eq!(hs.client.protocol_version(), Some(ProtocolVersion::TLSv1_2));
            let suite = hs.client.negotiated_cipher_suite().unwrap().suite();
            assert!(INTERMEDIATE_TLS12.contains(&suite), "{suite:?}");
            assert!(format!("{suite:?}").starts_with(want_prefix), "{suite:?}");
        }
        // Default client: TLS 1.3 and ALPN h2.
        let mut h2 = (*ca.client_config()).clone();
        h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let hs = handshake_in_memory(config, Arc::new(h2), "ec.test");
        assert!(hs.is_ok(), "{hs:?}");
        assert_eq!(hs.client.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        assert_eq!(hs.client.alpn_protocol(), Some(&b"h2"[..]));
    }

    #[test]
    fn policy_knobs() {
        let ca = TestCa::new();
        let (_tmp, store) = store_with(&ca);
        let policy = TlsPolicy {
            session_cache_size: 0,
            session_tickets: true,
            alpn_h2: false,
        };
        let config = server_config(store, &policy);
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(config.ticketer.enabled());
        let mut h2 = (*ca.client_config()).clone();
        h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let hs = handshake_in_memory(config, Arc::new(h2), "rsa.test");
        assert!(hs.is_ok(), "{hs:?}");
        assert_eq!(hs.client.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
}
