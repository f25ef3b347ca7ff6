//! edgepop's end-to-end tests: one binary (`cargo test -p edgepop-tests`), each module one area.

// Tests fail by panicking; helper functions here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache; // the response cache: RFC 9111 semantics, stale serving, persistence, purge
mod deploy; // deploy/ files agree with deploy/edgepop.toml
mod edge; // nginx parity: PROXY protocol, real IP, compression, limits, redirects, access log
mod hardening; // hostile clients: open-proxy attempts, smuggling, malformed HTTP
mod ops; // operations: reload, metrics, privileges
mod overload; // 10k idle connections, slowloris and load within a 256 MB cgroup
mod proxy; // listeners, TLS, forwarding, errors, WebSocket, draining
mod sni; // Host/SNI mismatches across sites: 421 or routed by Host
mod tls_reload; // certificates: live reload, torn rotations, readiness, policy
mod upstream; // upstreams: DNS, balancing, health, tailnet binding, upstream TLS
