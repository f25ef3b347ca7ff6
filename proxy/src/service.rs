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
use crate::metrics;
use crate::routes::strip_port;
use crate::state::{self, SiteState, State};
use crate::upstream::{self, UpstreamFailure};

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
}

impl RequestCtx {
    fn site<'a>(&'a self) -> Option<&'a SiteState> {
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
            if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_owned()) {
                if !req.headers.contains_key(header::HOST) {
                    req.insert_header(header::HOST, authority)?;
                }
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
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());

        let is_h2 = session.is_http2();
        let req = session.req_header();
        // HTTP/1 absolute-form targets ("GET http://other/") are never forwarded: edgepop is not a forward proxy.
        if !is_h2 && (req.uri.authority().is_some() || !req.raw_path().starts_with(b"/")) {
            return respond(
                session,
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
            return respond(session, 400, "missing Host\n").await;
        };
        ctx.site = ctx.state.router.lookup(host);
        ctx.host = Some(host.into());
        if ctx.site.is_none() {
            let status = ctx.state.http.unknown_host_status;
            return respond(session, status, "no site is configured for this host\n").await;
        }

        let max = ctx.state.http.max_body_size;
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return respond(session, 413, "request body too large\n").await;
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
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req)
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
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(site) = ctx.site() else {
            return Error::e_explain(ErrorType::InternalError, "no site selected");
        };
        let upstream = site.upstream.clone();
        let addrs = match &ctx.addrs {
            Some(a) => a.clone(),
            None => match upstream::resolve(&self.resolver, &upstream).await {
                Ok(a) => {
                    ctx.addrs = Some(a.clone());
                    a
                }
                Err(e) => {
                    ctx.upstream_failure = Some(UpstreamFailure::Dns);
                    metrics::UPSTREAM_ERRORS.with_label_values(&["dns"]).inc();
                    tracing::error!(upstream = %upstream.config.name, error = %e, "upstream name resolution failed");
                    return Err(Error::explain(
                        ErrorType::ConnectProxyFailure,
                        format!("upstream {}: {e}", upstream.config.name),
                    )
                    .into_up());
                }
            },
        };
        // On a retry, move on to the next address rather than hammering the one that just failed.
        let Some(addr) = upstream.pick(&addrs) else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "upstream has no addresses");
        };
        ctx.tried += 1;
        ctx.upstream_addr = Some(addr);
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(upstream::peer(addr, &upstream.config)))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let failure = UpstreamFailure::classify(&e);
        metrics::UPSTREAM_ERRORS
            .with_label_values(&[failure.as_str()])
            .inc();
        ctx.upstream_failure = Some(failure);
        let others = ctx.addrs.as_ref().map_or(0, |a| a.len());
        let idempotent = session.req_header().method.is_idempotent();
        if idempotent && usize::from(ctx.tried) < others {
            tracing::warn!(upstream = %peer, error = %e, "upstream connect failed; trying the next address");
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
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
            {
                if !upstream_request.headers.contains_key(header::HOST) {
                    upstream_request.insert_header(header::HOST, host)?;
                }
            }
            let uri = pq.parse::<http::Uri>().or_else(|_| {
                Error::e_explain(ErrorType::InvalidHTTPHeader, "invalid request path")
            })?;
            upstream_request.set_uri(uri);
        }
        let proto = if ctx.tls { &state::HTTPS } else { &state::HTTP };
        upstream_request.insert_header("x-forwarded-proto", proto.clone())?;
        if let Some(host) = &ctx.host {
            upstream_request.insert_header("x-forwarded-host", &**host)?;
            upstream_request.insert_header("x-forwarded-server", &**host)?;
        }
        if let Some(ip) = ctx.client_ip {
            let ip = ip.to_string();
            // Append like nginx's $proxy_add_x_forwarded_for.
            let xff = match session
                .req_header()
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
                _ => ip.clone(),
            };
            upstream_request.insert_header("x-forwarded-for", xff)?;
            upstream_request.insert_header("x-real-ip", ip)?;
        }
        Ok(())
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
        let site = ctx.site().map_or("-", |s| &*s.label);
        let elapsed = ctx.start.elapsed();
        metrics::HTTP_REQUESTS
            .with_label_values(&[
                site,
                metrics::method_class(&req.method),
                metrics::code_class(status),
            ])
            .inc();
        metrics::HTTP_DURATION
            .with_label_values(&[site])
            .observe(elapsed.as_secs_f64());
        if ctx.cache_enabled {
            let label = cache::status_label(&session.cache.phase(), true);
            metrics::CACHE_LOOKUPS.with_label_values(&[label]).inc();
        }
        if let Some(cache) = &self.cache {
            if cache::invalidates(&req.method, status) {
                self.invalidate(cache, session, ctx);
            }
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

/// Answers locally with a short text body; never forwards. Returns `Ok(true)` ("response sent") for filters.
async fn respond(session: &mut Session, status: u16, body: &'static str) -> Result<bool> {
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
