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

use arc_swap::ArcSwap;

use crate::listener::Drain;
use crate::state::State;

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
        if let Some(store) = &self.certs
            && store.is_empty()
        {
            return Err("no certificate is live yet");
        }
        Ok(())
    }
}

/// What `POST /purge` needs.
pub(crate) struct Purge {
    pub(crate) storage: Option<&'static edgepop_cache::TieredStorage>,
    pub(crate) token: Option<String>,
    pub(crate) state: Arc<ArcSwap<State>>,
}

/// Reads the admin token (surrounding whitespace ignored); an empty file is an error.
pub(crate) fn read_token(path: &std::path::Path) -> std::io::Result<String> {
    let token = std::fs::read_to_string(path)?.trim().to_owned();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the token file is empty",
        ));
    }
    Ok(token)
}

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The admin HTTP server, run as a pingora background service.
pub(crate) struct Admin {
    socket: std::sync::Mutex<Option<std::net::TcpListener>>,
    readiness: Arc<Readiness>,
    purge: Arc<Purge>,
}

impl Admin {
    pub(crate) fn new(
        socket: std::net::TcpListener,
        readiness: Arc<Readiness>,
        purge: Purge,
    ) -> Admin {
        Admin {
            socket: std::sync::Mutex::new(Some(socket)),
            readiness,
            purge: Arc::new(purge),
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
            let purge = self.purge.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let readiness = readiness.clone();
                    let purge = purge.clone();
                    async move {
                        let resp = if req.uri().path() == "/purge" {
                            handle_purge(&req, &purge).await
                        } else {
                            route(&req, &readiness)
                        };
                        Ok::<_, Infallible>(resp)
                    }
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

/// `POST /purge?url=https://host/path` drops every variant of one URL (keyed with the site's template);
/// `POST /purge?prefix=https://host/blog/` drops every entry whose key starts with the prefix. Requires
/// `Authorization: Bearer <token>`.
async fn handle_purge(req: &Request<Incoming>, purge: &Purge) -> Response<Full<Bytes>> {
    if req.method() != http::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    }
    let Some(token) = &purge.token else {
        return text(
            StatusCode::FORBIDDEN,
            "purge is disabled: set admin.token-file\n",
        );
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.trim().as_bytes(), token.as_bytes()) {
        return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
    }
    let Some(storage) = purge.storage else {
        return text(StatusCode::NOT_FOUND, "no [cache] is configured\n");
    };
    let query = req.uri().query().unwrap_or("");
    let mut url = None;
    let mut prefix = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "url" => url = Some(v.into_owned()),
            "prefix" => prefix = Some(v.into_owned()),
            _ => {}
        }
    }
    let removed = match (url, prefix) {
        (Some(url), None) => {
            let Ok(uri) = url.parse::<http::Uri>() else {
                return text(StatusCode::BAD_REQUEST, "url is not a URL\n");
            };
            let (Some(host), Some(pq)) = (uri.host(), uri.path_and_query()) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "url must be absolute: https://host/path\n",
                );
            };
            let host = host.to_ascii_lowercase();
            let state = purge.state.load();
            let Some(site) = state.router.lookup(&host).and_then(|i| state.sites.get(i)) else {
                return text(StatusCode::NOT_FOUND, "no site serves that host\n");
            };
            let Ok(fake) = pingora::http::RequestHeader::build(
                http::Method::GET,
                pq.as_str().as_bytes(),
                None,
            ) else {
                return text(StatusCode::BAD_REQUEST, "invalid path\n");
            };
            let tls = uri.scheme_str() == Some("https");
            let key = crate::cache::primary_key(&site.cache.key, tls, &host, &fake);
            storage.purge_primary(&key).await
        }
        (None, Some(prefix)) if !prefix.is_empty() => storage.purge_prefix(&prefix).await,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "give exactly one of url= or prefix=\n",
            );
        }
    };
    tracing::info!(removed, "cache purge");
    text(StatusCode::OK, format!("purged {removed}\n"))
}
