//! A total deadline for the first HTTP/1 request header (nginx `client_header_timeout`), against slowloris.
//!
//! pingora 0.9.1 only times out each *read* of a new connection (60 s), so a client that sends one byte a minute
//! holds a connection forever. [`HeaderDeadline`] wraps the stream handed to pingora: until it has seen the blank
//! line that ends the first request header (`\r\n\r\n`, or `\n\n`), every read fails with `TimedOut` once the
//! deadline passes. After that it only forwards. HTTP/2 connections are not wrapped (their first bytes are frames).
//!
//! [`serve_h1`] runs the HTTP/1 keepalive loop in place of pingora's: between requests it waits for the client's
//! next byte itself ([`HeaderDeadline::wait_readable`]), so an idle connection holds only its stream and this
//! small future. pingora's per-request future (tens of KB, allocated when `process_new_http` is called and held
//! while it waits in `read_request`) and its 4 KB header buffer exist only while a request is being read or served.
//! Why, and what it does not carry over: docs/decisions/0002-http1-keepalive-loop.md.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How much [`HeaderDeadline::wait_readable`] reads when the client wakes a connection: a typical request header.
const WAKE_READ: usize = 2048;

/// Serves HTTP/1 requests on `stream` until the client or a timeout ends the connection, as pingora's
/// `ServerApp::process_new` does for HTTP/1, except that the waits for a request happen here (see the module doc).
pub(crate) async fn serve_h1<A: HttpServerApp + Send + Sync + 'static>(
    mut stream: Box<HeaderDeadline>,
    app: &Arc<A>,
    mut shutdown: ShutdownWatch,
) {
    // The first request: the header deadline bounds the wait.
    let mut idle = None;
    let mut settings: Option<HttpPersistentSettings> = None;
    loop {
        if !stream.wait_readable(idle, &mut shutdown).await {
            return;
        }
        let mut session = ServerSession::new_http1(stream);
        match settings.take() {
            Some(s) => s.apply_to_session(&mut session),
            // pingora's defaults for a new connection (it sets 60 s; edgepop's request filter sets its own).
            None => session.set_keepalive((!*shutdown.borrow()).then_some(60)),
        }
        let Some(reused) = app.process_new_http(session, &shutdown).await else {
            return;
        };
        let (next, next_settings) = reused.consume();
        // The keepalive timeout pingora would apply while reading the next request: read it off a session
        // built with the settings, then take the stream back. edgepop uses no pipelining, no per-connection
        // user context and no request limit, the parts of the settings this does not carry over; with
        // pipelining, pingora's own loop continues instead.
        let mut session = ServerSession::new_http1(next);
        if let Some(s) = next_settings {
            s.apply_to_session(&mut session);
        }
        if session.pipelining_enabled() {
            let mut result = app.process_new_http(session, &shutdown).await;
            while let Some((next, s)) = result.map(|r| r.consume()) {
                let mut session = ServerSession::new_http1(next);
                if let Some(s) = s {
                    s.apply_to_session(&mut session);
                }
                result = app.process_new_http(session, &shutdown).await;
            }
            return;
        }
        idle = match session.get_keepalive() {
            None => return,
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
        };
        settings = Some(HttpPersistentSettings::for_session(&session));
        let ServerSession::H1(h1) = session else {
            return;
        };
        match h1.into_inner().into_any().downcast::<HeaderDeadline>() {
            Ok(s) => stream = s,
            Err(_) => return,
        }
    }
}

/// The stream with a header deadline.
pub(crate) struct HeaderDeadline {
    inner: Stream,
    /// `None` once the first header is complete.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last three bytes seen, to find a terminator split across reads.
    tail: [u8; 3],
    /// Bytes read by [`Self::wait_readable`], handed out by the next reads (empty otherwise).
    stash: Bytes,
}

impl HeaderDeadline {
    pub(crate) fn new(inner: Stream, timeout: Duration) -> Self {
        HeaderDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            tail: [0; 3],
            stash: Bytes::new(),
        }
    }

    /// Waits until the client sends data (kept for the next reads): `true`, or `false` when the connection
    /// should close: EOF or error, the header deadline passed, `idle` passed (`None`: no limit), or draining began.
    ///
    /// It reads what has arrived (up to [`WAKE_READ`] bytes) rather than one byte, so a request costs no extra
    /// `recv`: pingora's header read is then served from the stash, without a syscall.
    pub(crate) async fn wait_readable(
        &mut self,
        idle: Option<Duration>,
        shutdown: &mut ShutdownWatch,
    ) -> bool {
        if !self.stash.is_empty() {
            return true;
        }
        let read = std::future::poll_fn(|cx| {
            // on the stack of this poll only: an idle connection's future does not carry the buffer
            let mut space = [0u8; WAKE_READ];
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    Poll::Ready(Some(Bytes::copy_from_slice(buf.filled())))
                }
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        });
        let idle = async {
            match idle {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let got = tokio::select! {
            bytes = read => bytes,
            () = idle => None,
            _ = shutdown.wait_for(|draining| *draining) => None,
        };
        match got {
            Some(bytes) => {
                self.stash = bytes;
                true
            }
            None => false,
        }
    }

    /// Scans newly read bytes for the end of the header block, without allocating: a terminator inside `new`, or
    /// one that straddles the previous read (at most 3 bytes on each side of the boundary).
    fn observe(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        let head = &new[..new.len().min(3)];
        let mut edge = [0u8; 6];
        edge[..3].copy_from_slice(&self.tail);
        edge[3..3 + head.len()].copy_from_slice(head);
        if ends_header(&edge[..3 + head.len()]) || ends_header(new) {
            self.deadline = None;
            return;
        }
        // the last three bytes of everything seen so far
        let keep = new.len().min(3);
        self.tail.rotate_left(keep);
        self.tail[3 - keep..].copy_from_slice(&new[new.len() - keep..]);
    }
}

/// Whether `bytes` hold the blank line that ends a header block (`\r\n\r\n`, or `\n\n`).
fn ends_header(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

impl fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("inner", &self.inner)
            .field("pending", &self.deadline.is_some())
            .finish()
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.stash.is_empty() && buf.remaining() > 0 {
            // already observed (and so counted against the header deadline) when it was read
            let n = this.stash.len().min(buf.remaining());
            buf.put_slice(&this.stash.split_to(n));
            return Poll::Ready(Ok(()));
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request header not complete within http.header-timeout",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() && matches!(result, Poll::Ready(Ok(()))) {
            this.observe(&buf.filled()[before..]);
        }
        result
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn terminator_split_across_reads_is_found() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(client));
        let mut d = HeaderDeadline::new(stream, Duration::from_secs(1));
        d.observe(b"GET / HTTP/1.1\r\nHost: a\r\n\r");
        assert!(d.deadline.is_some());
        d.observe(b"\n");
        assert!(d.deadline.is_none(), "CRLFCRLF split across reads");
        let mut bare = HeaderDeadline::new(
            Box::new(pingora::protocols::l4::stream::Stream::from(
                tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                    .await
                    .unwrap(),
            )),
            Duration::from_secs(1),
        );
        bare.observe(b"GET / HTTP/1.1\nHost: a\n");
        assert!(bare.deadline.is_some());
        bare.observe(b"\n");
        assert!(bare.deadline.is_none(), "bare LF terminator");

        // one byte at a time, and a terminator split 1 + 3 after short reads
        for (reads, ends) in [
            (
                &[&b"GET / HTTP/1.1\r"[..], b"\n", b"\r", b"\n"][..],
                &[false, false, false, true][..],
            ),
            (
                &[&b"X"[..], b"\r", b"\n\r\n"][..],
                &[false, false, true][..],
            ),
            (
                &[&b"ab\r\n"[..], b"\r", b"x"][..],
                &[false, false, false][..],
            ),
        ] {
            let mut d = HeaderDeadline::new(
                Box::new(pingora::protocols::l4::stream::Stream::from(
                    tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                        .await
                        .unwrap(),
                )),
                Duration::from_secs(1),
            );
            for (read, end) in reads.iter().zip(ends.iter()) {
                d.observe(read);
                assert_eq!(d.deadline.is_none(), *end, "{reads:?} at {read:?}");
            }
        }
    }
}
