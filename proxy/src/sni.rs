//! The TLS server name (SNI) a client asked for, recorded once per connection, and the Host/SNI check.
//!
//! pingora 0.9.1's rustls `SslDigest` has no server name, but it carries an `extension` that a TLS accept
//! callback fills once the handshake completes. The listener runs [`RecordSni`] as that callback, so every request
//! of the connection finds the name in its session digest ([`client_sni`]) without a copy or a lookup.
//! [`misdirected`] then decides whether the request's Host names another site than the SNI.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::proxy::Session;

use crate::routes::{Router, SiteId};

/// The server name of a TLS connection, lowercase (stored in `SslDigest::extension`).
#[derive(Debug)]
struct ClientSni(Box<str>);

/// The TLS accept callback that records the client's SNI in the connection's `SslDigest`.
#[derive(Debug, Default)]
pub(crate) struct RecordSni;

#[async_trait]
impl TlsAccept for RecordSni {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        // rustls has lowercased the name already (rustls 0.23 server/hs.rs); a client with no SNI (an IP-literal
        // URL) records nothing. One small allocation per connection, none per request.
        let name = tls.server_name()?;
        Some(Arc::new(ClientSni(name.into())))
    }
}

/// The SNI of the session's TLS connection; `None` for plain HTTP or when the client sent none.
pub(crate) fn client_sni(session: &Session) -> Option<&str> {
    let ssl = session.digest()?.ssl_digest.as_ref()?;
    ssl.extension.get::<ClientSni>().map(|s| &*s.0)
}

/// Whether a request for `host` (port stripped), routed to `site`, came on a connection whose SNI is `sni` and
/// names something else: not the same name (ignoring case and a trailing dot) and not a name of the same site
/// (an alias or a name its wildcard covers). An SNI that no site serves never matches a configured Host.
pub(crate) fn misdirected(router: &Router, sni: &str, host: &str, site: SiteId) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.eq_ignore_ascii_case(sni) && router.lookup(sni) != Some(site)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misdirected_table() {
        let a = ["a.test".to_owned(), "www.a.test".to_owned()];
        let b = ["b.test".to_owned()];
        let w = ["*.w.test".to_owned()];
        let router = Router::new([(&a[..], 0), (&b[..], 1), (&w[..], 2)]);
        let cases = [
            // (sni, host, site of host, misdirected)
            ("a.test", "a.test", 0, false),
            ("a.test", "A.Test", 0, false),
            ("a.test", "a.test.", 0, false),
            ("a.test", "www.a.test", 0, false), // an alias of the same site
            ("www.a.test", "a.test", 0, false),
            ("x.w.test", "y.w.test", 2, false), // both under the site's wildcard
            ("a.test", "b.test", 1, true),
            ("b.test", "www.a.test", 0, true),
            ("x.w.test", "b.test", 1, true),
            ("unknown.test", "a.test", 0, true), // an SNI no site serves
        ];
        for (sni, host, site, want) in cases {
            assert_eq!(
                misdirected(&router, sni, host, site),
                want,
                "sni {sni:?} host {host:?}"
            );
        }
    }
}
