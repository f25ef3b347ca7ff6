//! Upstream addresses and peers: names go through the embedded resolver, never through `HttpPeer::new`'s
//! blocking lookup; failures are classified so logs and metrics say *why* an origin was unreachable.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorType};

use crate::config::Upstream;
use crate::state::UpstreamState;

/// Why an upstream attempt failed (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamFailure {
    Dns,
    Refused,
    Timeout,
    Tls,
    Reset,
    Other,
}

impl UpstreamFailure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Dns => "dns",
            UpstreamFailure::Refused => "refused",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Other => "other",
        }
    }

    pub(crate) fn classify(e: &Error) -> UpstreamFailure {
        match e.etype() {
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute => UpstreamFailure::Refused,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                UpstreamFailure::Timeout
            }
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
                UpstreamFailure::Tls
            }
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
                UpstreamFailure::Reset
            }
            _ => UpstreamFailure::Other,
        }
    }
}

/// All addresses of an upstream, in server order. IP-literal servers need no lookup; names are answered from the
/// resolver's warm table.
pub(crate) async fn resolve(
    resolver: &edgepop_resolver::Resolver,
    upstream: &UpstreamState,
) -> Result<Arc<[SocketAddr]>, edgepop_resolver::ResolveError> {
    if let Some(fixed) = &upstream.fixed {
        return Ok(fixed.clone());
    }
    let upstream = &upstream.config;
    if let [one] = upstream.servers.as_slice() {
        return resolver.resolve(&one.host, one.port).await;
    }
    let mut all = Vec::new();
    let mut last_err = None;
    for server in &upstream.servers {
        match server.ip {
            Some(ip) => all.push(SocketAddr::new(ip, server.port)),
            None => match resolver.resolve(&server.host, server.port).await {
                Ok(addrs) => all.extend_from_slice(&addrs),
                Err(e) => last_err = Some(e),
            },
        }
    }
    match (all.is_empty(), last_err) {
        (true, Some(e)) => Err(e),
        _ => Ok(all.into()),
    }
}

/// Builds the peer for one address: HTTP/1.1 with keepalive pooling and the upstream's timeouts.
pub(crate) fn peer(addr: SocketAddr, upstream: &Upstream) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    let o = &mut peer.options;
    o.connection_timeout = Some(upstream.connect_timeout);
    o.read_timeout = Some(upstream.read_timeout);
    o.write_timeout = Some(upstream.send_timeout);
    o.idle_timeout = Some(upstream.keepalive_timeout);
    peer
}
