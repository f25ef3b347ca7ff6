//! `Edge`, edgepop's one [`ProxyHttp`] implementation. Each phase is short and delegates to routing, upstream
//! selection and logging; the order of phases is pingora's (docs/user_guide/phase.md in pingora).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType, Result};

use std::time::SystemTime;

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable};

use crate::access_log::{AccessLog, AccessRecord};
use crate::cache::{self, EdgeCache};
use crate::compress::{self, Encoding};
use crate::config::{ForwardedFor, SniHostMismatch};
use crate::metrics::{self, Refusal};
use crate::routes::strip_port;
use crate::sni;
use crate::state::{self, SiteState, State};
use crate::upstream::{self, UpstreamFailure};
use pingora::protocols::http::compression::Encode;

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
/// The forwarded headers as pingora's case-preserving names, as sent upstream: `insert_header` takes them as
/// they are (a `HeaderName` would be title-cased into a new buffer on every insert).
const X_FORWARDED_PROTO_CASED: &[u8] = b"X-Forwarded-Proto";
const X_FORWARDED_HOST_CASED: &[u8] = b"X-Forwarded-Host";
const X_FORWARDED_SERVER_CASED: &[u8] = b"X-Forwarded-Server";
const X_FORWARDED_FOR_CASED: &[u8] = b"X-Forwarded-For";
const X_REAL_IP_CASED: &[u8] = b"X-Real-IP";

/// Per-request context.
pub(crate) struct RequestCtx {
    state: Arc<State>,
    site: Option<usize>,
    host: Option<Box<str>>,
    client_ip: Option<IpAddr>,
    tls: bool,
    /// Addresses the upstream resolved to, kept for retries.
    addrs: Option<Arc<[SocketAddr]>>,
    tried: u8,
    upstream_addr: Option<SocketAddr>,
    upstream_failure: Option<UpstreamFailure>,
    upstream_start: Option<Instant>,
    upstream_time: Option<Duration>,
    body_bytes: u64,
    start: Instant,
    /// The version the client spoke (the request header is rewritten to HTTP/1.1 for HTTP/2, see below).
    version: http::Version,
    cache_enabled: bool,
    encoding: Encoding,
    encoder: Option<Box<dyn Encode + Send + Sync>>,
    /// Addresses of `addrs` this request tried (bit i = `addrs[i]`), so a retry moves on.
    tried_mask: u64,
    /// Consistent-hash key of the request (host, path and query), computed on first use.
    balance_key: Option<u64>,
}

impl RequestCtx {
    fn site(&self) -> Option<&SiteState> {
        self.site.and_then(|i| self.state.sites.get(i))
    }
}

/// The proxy logic shared by every listener.
pub(crate) struct Edge {
    pub(crate) state: Arc<ArcSwap<State>>,
    pub(crate) resolver: Arc<edgepop_resolver::Resolver>,
    pub(crate) access_log: AccessLog,
    pub(crate) cache: Option<EdgeCache>,
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            state: self.state.load_full(),
            site: None,
            host: None,
            client_ip: None,
            tls: false,
            addrs: None,
            tried: 0,
            upstream_addr: None,
            upstream_failure: None,
            upstream_start: None,
            upstream_time: None,
            body_bytes: 0,
            start: Instant::now(),
            version: http::Version::HTTP_11,
            cache_enabled: false,
            encoding: Encoding::Identity,
            encoder: None,
            tried_mask: 0,
            balance_key: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.start = Instant::now();
        let keepalive = ctx.state.http.keepalive_timeout.as_secs();
        session.set_keepalive(Some(keepalive));
        let req = session.req_header_mut();
        ctx.version = req.version;
        // pingora 0.9.1 trap: a stale-while-revalidate background subrequest re-serialises the request as
        // "GET /x HTTP/2" without Host and fails (and a debug build panics on a dangling cache lock). Presenting
        // HTTP/2 requests as HTTP/1.1 with a Host header avoids it; the client connection stays HTTP/2.
        if ctx.version == http::Version::HTTP_2 {
            if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_owned())
                && !req.headers.contains_key(header::HOST)
            {
                req.insert_header(header::HOST, authority)?;
            }
            req.set_version(http::Version::HTTP_11);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(SocketAddr::ip);
        // nginx `real_ip_header` + `set_real_ip_from`: only a trusted peer may name the client.
        if let (Some(name), Some(peer)) = (&ctx.state.http.real_ip_header, ctx.client_ip)
            && crate::proxy_protocol::trusted(peer, &ctx.state.http.real_ip_from)
        {
            let announced = session
                .req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok());
            if let Some(ip) = announced {
                ctx.client_ip = Some(ip);
            }
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());

        let is_h2 = session.is_http2();
        let req = session.req_header();
        // HTTP/1 absolute-form targets ("GET http://other/") are never forwarded: edgepop is not a forward proxy.
        if !is_h2 && (req.uri.authority().is_some() || !req.raw_path().starts_with(b"/")) {
            return refuse(
                session,
                Refusal::AbsoluteForm,
                400,
                "absolute-form request targets are not accepted\n",
            )
            .await;
        }
        let host = if is_h2 {
            req.uri.authority().map(|a| a.host())
        } else {
            req.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(strip_port)
        };
        let Some(host) = host.filter(|h| !h.is_empty()) else {
            return refuse(session, Refusal::MissingHost, 400, "missing Host\n").await;
        };
        ctx.site = ctx.state.router.lookup(host);
        ctx.host = Some(host.into());
        let Some(site) = ctx.site else {
            let status = ctx.state.http.unknown_host_status;
            let body = "no site is configured for this host\n";
            return refuse(session, Refusal::UnknownHost, status, body).await;
        };
        // A TLS client that named one site in its SNI and another in Host or :authority (domain fronting, or an
        // HTTP/2 connection reused across sites): 421 tells it to retry on a connection of its own
        // (RFC 9110 §15.5.20). Without SNI (an IP-literal URL) Host alone decides.
        if ctx.state.http.sni_host_mismatch == SniHostMismatch::Refuse
            && let Some(sni) = sni::client_sni(session)
            && let Some(host) = ctx.host.as_deref()
            && sni::misdirected(&ctx.state.router, sni, host, site)
        {
            tracing::info!(
                sni,
                host,
                "request for another site than the TLS server name; 421"
            );
            let body =
                "misdirected request: the Host is not the TLS server name of this connection\n";
            return refuse(session, Refusal::SniHostMismatch, 421, body).await;
        }

        // Header limits (nginx answers 400/414 here; RFC 6585's 431 is the precise status).
        let req = session.req_header();
        let http = &ctx.state.http;
        if req.headers.len() > http.max_header_count {
            return refuse(
                session,
                Refusal::HeaderCount,
                431,
                "too many request header fields\n",
            )
            .await;
        }
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes as u64 > http.max_header_size {
            return refuse(
                session,
                Refusal::HeaderSize,
                431,
                "request header fields too large\n",
            )
            .await;
        }

        if let Some(site) = ctx.site() {
            let b = &site.behaviour;
            if b.redirect_https && !ctx.tls {
                let path = req.uri.path();
                if !b
                    .redirect_exceptions
                    .iter()
                    .any(|p| path.starts_with(p.as_str()))
                {
                    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
                    let host = ctx.host.as_deref().unwrap_or("");
                    let location = format!("https://{host}{target}");
                    return redirect(session, &location).await;
                }
            }
        }
        ctx.encoding = compress::negotiate(
            session.req_header().headers.get(header::ACCEPT_ENCODING),
            &ctx.state.compression,
        );

        let max = ctx.state.http.max_body_size;
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return refuse(session, Refusal::BodySize, 413, "request body too large\n").await;
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.state.http.max_body_size {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body exceeds http.max-body-size",
                );
            }
        }
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let (Some(cache), Some(site)) = (&self.cache, ctx.site()) else {
            return Ok(());
        };
        if site.cache.enabled
            && cache::request_cacheable(session.req_header(), session.is_upgrade_req())
        {
            session
                .cache
                .enable(cache.storage, None, None, Some(cache.lock), None);
            ctx.cache_enabled = true;
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let (Some(site), Some(host)) = (ctx.site(), ctx.host.as_deref()) else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a site");
        };
        let primary = cache::primary_key(&site.cache.key, ctx.tls, host, session.req_header());
        Ok(CacheKey::new(primary, ""))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(site) = ctx.site() else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom("no site")));
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(header::AUTHORIZATION);
        let revalidated = matches!(
            session.cache.phase(),
            CachePhase::Stale | CachePhase::StaleUpdating
        );
        Ok(cache::response_cacheable(
            resp,
            authorization,
            revalidated,
            &site.cache,
            SystemTime::now(),
        ))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req, ctx.encoding.token())
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        // `None`: stale-while-revalidate, already bounded by the stored stale-while-revalidate window.
        // Otherwise: the origin is unreachable, timed out or answered 5xx; bounded by stale-if-error/grace.
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(site) = ctx.site() else {
            return Error::e_explain(ErrorType::InternalError, "no site selected");
        };
        let upstream = site.upstream.clone();
        let name = upstream.config.name.as_str();
        ctx.upstream_failure = None;
        // The bound interface is known to be missing or down: fail now, with that reason, rather than on a
        // pooled connection that can no longer reach the origin.
        if let Some((iface, state)) = upstream.interface_unusable() {
            ctx.upstream_failure = Some(UpstreamFailure::Interface);
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[UpstreamFailure::Interface.as_str()])
                .inc();
            tracing::error!(upstream = name, "{}; not connecting", iface.describe(state));
            return Err(upstream::interface_error(iface, state));
        }
        let addrs = match &ctx.addrs {
            Some(a) => a.clone(),
            None => match upstream.resolve(&self.resolver).await {
                Ok(a) => {
                    ctx.addrs = Some(a.clone());
                    a
                }
                Err(e) => {
                    ctx.upstream_failure = Some(UpstreamFailure::Dns);
                    metrics::UPSTREAM_ERRORS
                        .with_label_values(&[UpstreamFailure::Dns.as_str()])
                        .inc();
                    tracing::error!(upstream = name, error = %e, "upstream name resolution failed");
                    return Err(Error::explain(
                        ErrorType::ConnectProxyFailure,
                        format!("upstream {name}: {e}"),
                    )
                    .into_up());
                }
            },
        };
        if ctx.balance_key.is_none()
            && upstream.config.balance == crate::config::Balance::ConsistentHash
        {
            let host = ctx.host.as_deref().unwrap_or("");
            let req = session.req_header();
            let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            ctx.balance_key = Some(upstream::fnv1a(&[host.as_bytes(), pq.as_bytes()]));
        }
        // A retry moves on to an address this request has not tried; addresses marked down are skipped.
        let Some((index, addr)) =
            upstream.pick(&addrs, ctx.balance_key.unwrap_or(0), ctx.tried_mask)
        else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "upstream has no addresses");
        };
        if index < 64 {
            ctx.tried_mask |= 1 << index;
        }
        ctx.tried = ctx.tried.saturating_add(1);
        ctx.upstream_addr = Some(addr);
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(upstream.peer(addr)))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !reused
            && let (Some(site), Some(addr)) = (ctx.site(), ctx.upstream_addr)
            && site.upstream.health.record_success(&addr)
        {
            tracing::info!(upstream = %site.upstream.config.name, %addr, "upstream address is back");
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let mut failure = UpstreamFailure::classify(&e);
        let Some(upstream) = ctx.site().map(|s| s.upstream.clone()) else {
            return e;
        };
        let name = upstream.config.name.as_str();
        let addr = ctx.upstream_addr;
        let shown = addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        // A bound interface that vanished or went down surfaces as ENODEV or "network unreachable".
        let mut iface_state = None;
        if let Some(iface) = &upstream.interface
            && matches!(
                failure,
                UpstreamFailure::Interface | UpstreamFailure::Unreachable
            )
        {
            let (_, now) = iface.refresh();
            if now != crate::health::IfState::Up || failure == UpstreamFailure::Interface {
                failure = UpstreamFailure::Interface;
                iface_state = Some(iface.describe(now));
            }
        }
        metrics::UPSTREAM_ERRORS
            .with_label_values(&[failure.as_str()])
            .inc();
        ctx.upstream_failure = Some(failure);
        // Local causes (interface, source address) are not the address's fault.
        if let Some(a) = addr
            && !matches!(failure, UpstreamFailure::Interface | UpstreamFailure::Bind)
            && upstream.health.record_failure(&a)
        {
            tracing::warn!(
                upstream = name,
                addr = %a,
                max_fails = upstream.config.max_fails,
                "upstream address marked down for {:?}",
                upstream.config.fail_timeout
            );
        }
        let what = match failure {
            UpstreamFailure::Interface => iface_state
                .as_deref()
                .unwrap_or("the bound interface is not usable"),
            UpstreamFailure::Bind => "cannot bind the configured source address",
            UpstreamFailure::Refused => "origin refused the connection",
            UpstreamFailure::Unreachable => "no route to the origin",
            UpstreamFailure::Timeout => "connecting to the origin timed out",
            UpstreamFailure::Tls => "TLS handshake with the origin failed",
            UpstreamFailure::Reset => "the origin closed the connection",
            UpstreamFailure::Dns | UpstreamFailure::Other => "connecting to the origin failed",
        };
        let others = ctx.addrs.as_ref().map_or(0, |a| a.len());
        let idempotent = session.req_header().method.is_idempotent();
        // Every address goes through the same interface and source address: retrying cannot help.
        let local = matches!(failure, UpstreamFailure::Interface | UpstreamFailure::Bind);
        if idempotent && !local && usize::from(ctx.tried) < others {
            tracing::warn!(upstream = name, addr = %shown, reason = failure.as_str(), error = %e, "{what}; trying the next address");
            e.set_retry(true);
        } else {
            tracing::error!(upstream = name, addr = %shown, reason = failure.as_str(), error = %e, "{what}");
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // pingora's default retry policy, plus passive health.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        // A fresh connection that broke or timed out counts against the address; a reused one that is retried
        // was most likely closed by the origin's keepalive timeout.
        if e.esource() == &ErrorSource::Upstream
            && !(client_reused && e.retry())
            && let (Some(site), Some(addr)) = (ctx.site(), ctx.upstream_addr)
            && site.upstream.health.record_failure(&addr)
        {
            tracing::warn!(
                upstream = %site.upstream.config.name,
                %addr,
                max_fails = site.upstream.config.max_fails,
                "upstream address marked down for {:?}",
                site.upstream.config.fail_timeout
            );
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // HTTP/2 requests carry the host in the URI; HTTP/1.1 upstreams need origin-form plus Host.
        if upstream_request.uri.authority().is_some() {
            let pq = upstream_request
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned();
            if let Some(host) = upstream_request
                .uri
                .authority()
                .map(|a| a.as_str().to_owned())
                && !upstream_request.headers.contains_key(header::HOST)
            {
                upstream_request.insert_header(header::HOST, host)?;
            }
            let uri = pq.parse::<http::Uri>().or_else(|_| {
                Error::e_explain(ErrorType::InvalidHTTPHeader, "invalid request path")
            })?;
            upstream_request.set_uri(uri);
        }
        forwarded_headers(
            upstream_request,
            ctx.tls,
            ctx.host.as_deref(),
            ctx.client_ip,
            ctx.state.http.forwarded_for,
        )?;
        if ctx.state.compression.enabled {
            // Ask the origin for exactly what the client gets, so an encoded body passes through untouched.
            match ctx.encoding {
                Encoding::Identity => {
                    upstream_request.remove_header(&header::ACCEPT_ENCODING);
                }
                enc => {
                    upstream_request.insert_header(header::ACCEPT_ENCODING, enc.token())?;
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Before the cache stores it: compress once, so hits serve stored bytes.
        ctx.encoder = compress::start(upstream_response, ctx.encoding, &ctx.state.compression);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(encoder) = ctx.encoder.as_mut() {
            compress::encode(encoder, body, end_of_stream)?;
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.cache_enabled && self.cache.as_ref().is_some_and(|c| c.status_header) {
            let label = cache::status_label(&session.cache.phase(), true);
            upstream_response.insert_header("x-cache-status", label)?;
        }
        if let Some(start) = ctx.upstream_start.take() {
            let elapsed = start.elapsed();
            ctx.upstream_time = Some(elapsed);
            metrics::UPSTREAM_DURATION.observe(elapsed.as_secs_f64());
        }
        // `server_tokens off`, and more: the origin's Server header is not passed on (nginx's default too).
        upstream_response.remove_header(&header::SERVER);
        if let Some(site) = ctx.site() {
            let b = &site.behaviour;
            for name in &b.remove_headers {
                upstream_response.remove_header(name);
            }
            for (name, value) in &b.add_headers {
                upstream_response.insert_header(name.clone(), value.clone())?;
            }
            if ctx.tls
                && let Some(hsts) = &b.hsts
            {
                upstream_response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if e.esource() == &ErrorSource::Upstream {
            if ctx.upstream_failure.is_none() {
                let failure = UpstreamFailure::classify(e);
                metrics::UPSTREAM_ERRORS
                    .with_label_values(&[failure.as_str()])
                    .inc();
                ctx.upstream_failure = Some(failure);
            }
            let upstream = ctx.site().map_or("-", |s| s.upstream.config.name.as_str());
            let addr = ctx.upstream_addr.map(|a| a.to_string());
            tracing::error!(
                upstream,
                addr = addr.as_deref().unwrap_or("-"),
                status = code,
                error = %e,
                "upstream request failed"
            );
        }
        if code > 0 {
            let body = match code {
                502 => "bad gateway: the origin could not be reached\n",
                504 => "gateway timeout: the origin did not answer in time\n",
                413 => "request body too large\n",
                400 => "bad request\n",
                _ => "error\n",
            };
            let _ = write_local(session, code, body).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let elapsed = ctx.start.elapsed();
        let site_metrics = ctx.site().map_or(&*metrics::NO_SITE, |s| &s.metrics);
        site_metrics.observe(&req.method, status, elapsed);
        if ctx.cache_enabled {
            let label = cache::status_label(&session.cache.phase(), true);
            metrics::cache_lookup(label).inc();
            // set only when this request waited on another one filling the same key (request coalescing)
            if let Some(waited) = session.cache.lock_duration() {
                metrics::CACHE_LOCK_WAIT.observe(waited.as_secs_f64());
            }
        }
        if let Some(cache) = &self.cache
            && cache::invalidates(&req.method, status)
        {
            self.invalidate(cache, session, ctx);
        }
        if !self.access_log.enabled() {
            return;
        }
        self.access_log.record(AccessRecord::from_session(
            session,
            status,
            ctx.client_ip,
            ctx.host.as_deref(),
            ctx.upstream_addr,
            ctx.upstream_time,
            elapsed,
            ctx.version,
        ));
    }
}

impl Edge {
    /// After a successful unsafe request, drops the stored responses for its URL and for the URLs named by
    /// Location and Content-Location on the same host (RFC 9111 §4.4).
    fn invalidate(&self, cache: &EdgeCache, session: &Session, ctx: &RequestCtx) {
        let (Some(site), Some(host)) = (ctx.site(), ctx.host.as_deref()) else {
            return;
        };
        if !site.cache.enabled {
            return;
        }
        let req = session.req_header();
        let mut keys = vec![cache::primary_key(&site.cache.key, ctx.tls, host, req)];
        if let Some(resp) = session.response_written() {
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                let Some(target) = resp.headers.get(name).and_then(|v| v.to_str().ok()) else {
                    continue;
                };
                let Ok(uri) = target.parse::<http::Uri>() else {
                    continue;
                };
                if uri.host().is_some_and(|h| !h.eq_ignore_ascii_case(host)) {
                    continue; // another host: not ours to invalidate
                }
                let Some(pq) = uri
                    .path_and_query()
                    .filter(|pq| pq.as_str().starts_with('/'))
                else {
                    continue;
                };
                if let Ok(other) =
                    RequestHeader::build(http::Method::GET, pq.as_str().as_bytes(), None)
                {
                    keys.push(cache::primary_key(&site.cache.key, ctx.tls, host, &other));
                }
            }
        }
        let storage = cache.storage;
        tokio::spawn(async move {
            for key in keys {
                storage.purge_primary(&key).await;
            }
        });
    }
}

/// Sets Host-derived and client-derived forwarding headers on the upstream request (as the nginx setup did):
/// X-Forwarded-Proto, X-Forwarded-Host/-Server, X-Forwarded-For (appended to the client's value, like
/// `$proxy_add_x_forwarded_for`, or replaced) and X-Real-IP. `req` still carries the client's headers.
pub(crate) fn forwarded_headers(
    req: &mut RequestHeader,
    tls: bool,
    host: Option<&str>,
    client_ip: Option<IpAddr>,
    mode: ForwardedFor,
) -> Result<()> {
    let proto = if tls { &state::HTTPS } else { &state::HTTP };
    req.insert_header(Bytes::from_static(X_FORWARDED_PROTO_CASED), proto.clone())?;
    if let Some(host) = host {
        // One validated value, shared by both headers (HeaderValue clones are reference counts).
        let value = http::HeaderValue::from_str(host)
            .or_else(|_| Error::e_explain(ErrorType::InvalidHTTPHeader, "host"))?;
        req.insert_header(Bytes::from_static(X_FORWARDED_HOST_CASED), value.clone())?;
        req.insert_header(Bytes::from_static(X_FORWARDED_SERVER_CASED), value)?;
    }
    if let Some(ip) = client_ip {
        let ip = ip.to_string();
        let prev = match mode {
            ForwardedFor::Append => req
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty()),
            ForwardedFor::Replace => None,
        };
        let xff = match prev {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.clone(),
        };
        req.insert_header(Bytes::from_static(X_FORWARDED_FOR_CASED), xff)?;
        req.insert_header(Bytes::from_static(X_REAL_IP_CASED), ip)?;
    }
    Ok(())
}

/// A permanent redirect that keeps the method (308).
async fn redirect(session: &mut Session, location: &str) -> Result<bool> {
    let body: &'static str = "moved to HTTPS\n";
    let mut resp = ResponseHeader::build(308, Some(4))?;
    resp.insert_header(header::LOCATION, location)?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    session
        .write_error_response(resp, Bytes::from_static(body.as_bytes()))
        .await?;
    Ok(true)
}

/// Answers locally with a short text body and counts the refusal; never forwards. Returns `Ok(true)` ("response
/// sent") for filters.
async fn refuse(
    session: &mut Session,
    reason: Refusal,
    status: u16,
    body: &'static str,
) -> Result<bool> {
    reason.count();
    write_local(session, status, body).await?;
    Ok(true)
}

async fn write_local(session: &mut Session, status: u16, body: &'static str) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.set_keepalive(None);
    session
        .write_error_response(resp, Bytes::from_static(body.as_bytes()))
        .await
}
