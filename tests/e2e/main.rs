//! edgepop's end-to-end tests: one binary (`cargo test -p edgepop-tests`), each module one area.

mod cache; // the response cache: RFC 9111 semantics, stale serving, persistence, purge
mod deploy; // deploy/ files agree with deploy/edgepop.toml
mod proxy; // listeners, TLS, forwarding, errors, WebSocket, draining
