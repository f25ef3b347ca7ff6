//! The admin listener: `/healthz`, `/readyz` and `/metrics`, on its own socket (127.0.0.1 by default, the tailnet
//! address in production), never on the public listeners.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::Encoder;

use crate::listener::Drain;

/// What `/readyz` looks at.
#[derive(Debug)]
pub(crate) struct Readiness {
    /// Set once the public listeners accept.
    pub(crate) listening: Arc<AtomicBool>,
    /// The cert store, when some listener terminates TLS: ready needs at least one live certificate.
    pub(crate) certs: Option<Arc<edgepop_certs::CertStore>>,
    pub(crate) drain: Arc<Drain>,
}

impl Readiness {
    fn check(&self) -> Result<(), &'static str> {
        if self.drain.is_draining() {
            return Err("shutting down");
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err("listeners not started");
        }
        if let Some(store) = &self.certs {
            if store.is_empty() {
                return Err("no certificate is live yet");
            }
        }
        Ok(())
    }
}

/// The admin HTTP server, run as a pingora background service.
pub(crate) struct Admin {
    socket: std::sync::Mutex<Option<std::net::TcpListener>>,
    readiness: Arc<Readiness>,
}

impl Admin {
    pub(crate) fn new(socket: std::net::TcpListener, readiness: Arc<Readiness>) -> Admin {
        Admin {
            socket: std::sync::Mutex::new(Some(socket)),
            readiness,
        }
    }
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let socket = self.socket.lock().ok().and_then(|mut s| s.take());
        let Some(socket) = socket else { return };
        let listener = match socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(socket))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the admin listener");
                return;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin listener (/healthz, /readyz, /metrics)");
        }
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let readiness = self.readiness.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let readiness = readiness.clone();
                    async move { Ok::<_, Infallible>(route(&req, &readiness)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn route(req: &Request<Incoming>, readiness: &Readiness) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness.check() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let encoder = prometheus::TextEncoder::new();
            let mut buf = Vec::with_capacity(16 * 1024);
            match encoder.encode(&prometheus::gather(), &mut buf) {
                Ok(()) => {
                    let mut r = text(StatusCode::OK, buf);
                    if let Ok(v) = http::HeaderValue::from_str(encoder.format_type()) {
                        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
                    }
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
