//! The public listeners: our own accept loop in front of pingora's HTTP engine.
//!
//! pingora's listeners only run a pre-TLS hook on TLS endpoints and take `TlsSettings`, not a `ServerConfig`. So
//! edgepop accepts connections itself (sockets bound before privileges are dropped), applies the connection cap,
//! reads the PROXY header, terminates TLS with our `rustls::ServerConfig` through pingora's `Acceptor`, and hands
//! the stream to `HttpProxy::process_new`, the same entry point pingora's own `Service` uses
//! (see docs/decisions/0001-tls-listener.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::GetSocketDigest;
use pingora::protocols::SocketDigest;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::server as tls_server;
use pingora::server::ShutdownWatch;
use pingora::server::{ListenFds, RuntimeOpts};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

use crate::config::Listener as ListenerConfig;
use crate::header_deadline::HeaderDeadline;
use crate::metrics;
use crate::proxy_protocol;
use crate::sni::RecordSni;
use crate::state::State;

/// Time allowed for the PROXY header, then for the TLS handshake.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening socket bound at start-up (before dropping privileges) and its settings.
pub(crate) struct Bound {
    pub(crate) socket: std::net::TcpListener,
    pub(crate) config: ListenerConfig,
}

impl Bound {
    /// Binds `config.address` with SO_REUSEADDR and a backlog of 4096, non-blocking for tokio.
    pub(crate) fn bind(config: ListenerConfig) -> std::io::Result<Bound> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(
            Domain::for_address(config.address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if config.address.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&config.address.into())?;
        socket.listen(4096)?;
        Ok(Bound {
            socket: socket.into(),
            config,
        })
    }

    /// The bound address (useful with port 0).
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Tracks open client connections so shutdown can wait for them to finish.
#[derive(Debug)]
pub(crate) struct Drain {
    shutdown: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

impl Drain {
    pub(crate) fn new() -> Arc<Drain> {
        Arc::new(Drain {
            shutdown: watch::channel(false).0,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Receiver that flips to `true` when draining starts.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops accepting and tells connections to close after their current request.
    pub(crate) fn begin(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Open client connections.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is open, or `timeout` passes. Returns whether everything finished.
    pub(crate) async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active() == 0;
            }
        }
    }

    fn enter(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }
}

struct ConnGuard(Arc<Drain>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The pingora service that owns every public listener.
pub(crate) struct PublicListeners<A> {
    bound: Vec<Bound>,
    app: Arc<A>,
    tls: Option<Arc<Acceptor>>,
    drain: Arc<Drain>,
    threads: usize,
    /// Set once every accept loop runs (read by `/readyz`).
    listening: Arc<std::sync::atomic::AtomicBool>,
    /// The live configuration: `http.header-timeout` is read per connection, so a reload applies it.
    state: Arc<ArcSwap<State>>,
}

impl<A> PublicListeners<A> {
    pub(crate) fn new(
        bound: Vec<Bound>,
        app: A,
        tls: Option<Arc<Acceptor>>,
        drain: Arc<Drain>,
        threads: usize,
        listening: Arc<std::sync::atomic::AtomicBool>,
        state: Arc<ArcSwap<State>>,
    ) -> Self {
        PublicListeners {
            state,
            bound,
            app: Arc::new(app),
            tls,
            drain,
            threads,
            listening,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> pingora::services::Service for PublicListeners<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        _shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut tasks = Vec::new();
        for bound in self.bound.drain(..) {
            let label = bound.config.address.to_string();
            let listener = match bound
                .socket
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(bound.socket))
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(listener = %label, error = %e, "cannot start listener");
                    continue;
                }
            };
            let tls = if bound.config.tls {
                self.tls.clone()
            } else {
                None
            };
            let endpoint = Arc::new(Endpoint {
                config: bound.config,
                label,
                tls,
                state: self.state.clone(),
                slots: Arc::new(Semaphore::new(0)),
            });
            endpoint.slots.add_permits(endpoint.config.max_connections);
            tasks.push(tokio::spawn(accept_loop(
                listener,
                endpoint,
                self.app.clone(),
                self.drain.clone(),
            )));
        }
        self.listening.store(true, Ordering::Release);
        for t in tasks {
            let _ = t.await;
        }
        // Wake keepalive connections idling in read_request() so they close now.
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        "edgepop public listeners"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }

    fn runtime_opts_override(&self, _global: &RuntimeOpts) -> Option<RuntimeOpts> {
        None
    }
}

struct Endpoint {
    state: Arc<ArcSwap<State>>,
    config: ListenerConfig,
    label: String,
    tls: Option<Arc<Acceptor>>,
    slots: Arc<Semaphore>,
}

async fn accept_loop<A: HttpServerApp + Send + Sync + 'static>(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    app: Arc<A>,
    drain: Arc<Drain>,
) {
    let mut draining = drain.watch();
    let accepted = metrics::CONNECTIONS.with_label_values(&[&endpoint.label, "accepted"]);
    let over_limit = metrics::CONNECTIONS.with_label_values(&[&endpoint.label, "over_limit"]);
    let open = metrics::CONNECTIONS_OPEN.with_label_values(&[&endpoint.label]);
    tracing::info!(listener = %endpoint.label, tls = endpoint.config.tls, "listening");
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = async { let _ = draining.wait_for(|d| *d).await; } => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(listener = %endpoint.label, error = %e, "accept failed");
                    // EMFILE/ENFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = endpoint.slots.clone().try_acquire_owned() else {
            over_limit.inc();
            tracing::debug!(listener = %endpoint.label, %peer, "connection limit reached; closing");
            drop(tcp);
            continue;
        };
        accepted.inc();
        let guard = drain.enter();
        let open = open.clone();
        let endpoint = endpoint.clone();
        let app = app.clone();
        let shutdown = drain.watch();
        tokio::spawn(async move {
            open.inc();
            serve_connection(tcp, peer, &endpoint, app, shutdown).await;
            open.dec();
            drop(permit);
            drop(guard);
        });
    }
    tracing::info!(listener = %endpoint.label, "stopped accepting");
}

async fn serve_connection<A: HttpServerApp + Send + Sync + 'static>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    endpoint: &Endpoint,
    app: Arc<A>,
    shutdown: ShutdownWatch,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream: L4Stream = tcp.into();
    let client = match proxy_protocol::read_header(
        &mut stream,
        peer,
        endpoint.config.proxy_protocol,
        &endpoint.config.trusted_proxies,
        PROXY_HEADER_TIMEOUT,
    )
    .await
    {
        Ok(client) => client.unwrap_or(peer),
        Err(refusal) => {
            metrics::PROXY_PROTOCOL_ERRORS
                .with_label_values(&[refusal.as_str()])
                .inc();
            tracing::info!(listener = %endpoint.label, %peer, reason = refusal.as_str(), "PROXY protocol header refused; closing");
            return;
        }
    };
    let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(client)));
    stream.set_socket_digest(digest);

    let stream: pingora::protocols::Stream = match &endpoint.tls {
        None => Box::new(stream),
        Some(acceptor) => {
            // `Acceptor::tls_handshake` without offload, plus the callback that records the SNI for requests.
            let handshake = tls_server::handshake_with_callback(acceptor, stream, &RecordSni);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => {
                    metrics::TLS_HANDSHAKES.inc();
                    Box::new(tls)
                }
                Ok(Err(e)) => {
                    record_handshake_error(&e);
                    tracing::debug!(listener = %endpoint.label, %client, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    edgepop_certs::record_handshake_failure(&std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    ));
                    tracing::debug!(listener = %endpoint.label, %client, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    // HTTP/1 only: an HTTP/2 connection starts with frames, and pingora's h2 server has its own limits.
    if stream.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2) {
        let mut next = app.process_new(stream, &shutdown).await;
        while let Some(stream) = next {
            next = app.process_new(stream, &shutdown).await;
        }
    } else {
        let header_timeout = endpoint.state.load().http.header_timeout;
        let stream = Box::new(HeaderDeadline::new(stream, header_timeout));
        crate::header_deadline::serve_h1(stream, &app, shutdown).await;
    }
}

/// Counts a failed handshake under the reason its root cause gives.
fn record_handshake_error(e: &pingora::Error) {
    let root = e.root_cause();
    if let Some(tls) = root.downcast_ref::<rustls::Error>() {
        edgepop_certs::record_tls_error(tls);
    } else if let Some(io) = root.downcast_ref::<std::io::Error>() {
        match io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => {
                edgepop_certs::record_tls_error(tls);
            }
            None => {
                edgepop_certs::record_handshake_failure(io);
            }
        }
    } else {
        // The usual case: pingora 0.9.1's acceptor keeps only the rustls/io error's text (`explain_err`), which
        // `edgepop_certs` classifies for an `ErrorKind::Other` error.
        edgepop_certs::record_handshake_failure(&std::io::Error::other(e.to_string()));
    }
}
