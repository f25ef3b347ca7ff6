//! A total deadline for the first HTTP/1 request header (nginx `client_header_timeout`), against slowloris.
//!
//! pingora 0.9.1 only times out each *read* of a new connection (60 s), so a client that sends one byte a minute
//! holds a connection forever. [`HeaderDeadline`] wraps the stream handed to pingora: until it has seen the blank
//! line that ends the first request header (`\r\n\r\n`, or `\n\n`), every read fails with `TimedOut` once the
//! deadline passes. After that it only forwards. HTTP/2 connections are not wrapped (their first bytes are frames).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The stream with a header deadline.
pub(crate) struct HeaderDeadline {
    inner: Stream,
    /// `None` once the first header is complete.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last three bytes seen, to find a terminator split across reads.
    tail: [u8; 3],
}

impl HeaderDeadline {
    pub(crate) fn new(inner: Stream, timeout: Duration) -> Self {
        HeaderDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            tail: [0; 3],
        }
    }

    /// Scans newly read bytes for the end of the header block.
    fn observe(&mut self, new: &[u8]) {
        let mut window = Vec::with_capacity(3 + new.len().min(64));
        window.extend_from_slice(&self.tail);
        window.extend_from_slice(new);
        let ended =
            window.windows(4).any(|w| w == b"\r\n\r\n") || window.windows(2).any(|w| w == b"\n\n");
        if ended {
            self.deadline = None;
            return;
        }
        let n = window.len();
        self.tail.copy_from_slice(&window[n - 3..]);
    }
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
            let filled = buf.filled()[before..].to_vec();
            this.observe(&filled);
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
    }
}
