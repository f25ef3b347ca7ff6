//! edgepop's TLS certificates: a rustls [`CertStore`] over the directory vault-agent writes
//! (`<dir>/<domain>/chain.pem` + `key.pem`), validated, indexed by SNI (exact, then one-label
//! wildcard, then an optional default) and swapped atomically when files change ([`watch`]).
//! [`server_config`] builds the downstream `ServerConfig` (TLS 1.2/1.3, Mozilla intermediate).
//! It does **not** obtain certificates (no ACME), listen, or accept: the proxy crate does that.
//!
//! ```
//! use edgepop_certs::{CertSettings, CertStore, TlsPolicy, server_config};
//!
//! let store = CertStore::new(CertSettings {
//!     dir: "/nonexistent/edgepop-certs".into(),
//!     default_domain: Some("example.com".into()),
//!     ..CertSettings::default()
//! });
//! let report = store.reload(); // a missing directory is reported, not fatal
//! assert!(report.dir_error.is_some() && store.is_empty());
//! let config = server_config(store, &TlsPolicy::default());
//! assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
//! ```
//!
//! # Rules
//!
//! - A domain directory's name must be covered by its leaf's DNS names (SAN, or CN without SAN);
//!   a wildcard covers one label, so a `*.example.com` certificate goes in `_.example.com/`.
//!   Every name on the leaf is served, and a directory wins the names that cover its own name.
//! - The key must match the leaf. A pair that fails validation (torn rotation, garbage, missing
//!   file, not yet valid) leaves the domain's previous good pair in place; a directory that
//!   disappears entirely is dropped.
//! - An expired certificate is served only when no valid certificate covers the name, with a
//!   loud warning; a new expired pair never replaces a valid previous one.
//! - A key file readable by group or other is logged (path only; key material never is).

mod error;
mod load;
mod metrics;
mod store;
mod tls;
mod watch;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use error::CertError;
pub use load::CertSummary;
pub use metrics::{HandshakeFailure, record_handshake_failure, record_tls_error};
pub use store::{CertSettings, CertStore, DomainCheck, ReloadReport, scan};
pub use tls::{TlsPolicy, intermediate_provider, server_config};
pub use watch::watch;
