//! Shutdown on SIGTERM, SIGINT (Fly's default kill signal) and SIGQUIT: all three drain.
//!
//! pingora's own watcher treats SIGINT as an immediate exit and sleeps a fixed grace period after SIGTERM. edgepop
//! instead stops accepting, lets in-flight requests finish (keepalive connections close after their current
//! request) for up to `server.drain-timeout`, and only then tells pingora to stop its runtimes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

use crate::listener::Drain;

/// The [`ShutdownSignalWatch`] edgepop runs pingora with.
pub(crate) struct DrainOnSignal {
    pub(crate) drain: Arc<Drain>,
    pub(crate) timeout: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!(
                "cannot install signal handlers; SIGTERM will kill edgepop without draining"
            );
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => "SIGQUIT",
        };
        let open = self.drain.active();
        tracing::info!(signal = name, open_connections = open, timeout = ?self.timeout, "draining");
        self.drain.begin();
        let drained = tokio::select! {
            done = self.drain.wait_idle(self.timeout) => done,
            // A second signal means "now".
            _ = term.recv() => false,
            _ = int.recv() => false,
        };
        if drained {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!(
                open_connections = self.drain.active(),
                "drain timeout; closing remaining connections"
            );
        }
        ShutdownSignal::FastShutdown
    }
}
