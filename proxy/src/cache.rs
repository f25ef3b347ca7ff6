//! The glue between pingora-cache and edgepop's storage: keys, what may be stored and for how long (RFC 9111 as
//! a shared cache), variants, status labels and invalidation. The storage itself is `edgepop-cache`.

use std::time::{Duration, SystemTime};

use http::{Method, header};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::key::HashBinary;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{CacheMeta, CachePhase, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{KeyPart, SiteCache};

/// Heuristic freshness cap (RFC 9111 §4.2.2 suggests 10% of the time since Last-Modified; we cap it at a day).
const HEURISTIC_CAP: Duration = Duration::from_secs(86_400);

/// The process-wide cache handles (leaked to `'static`, as pingora requires).
pub(crate) struct EdgeCache {
    pub(crate) storage: &'static edgepop_cache::TieredStorage,
    pub(crate) lock: &'static CacheKeyLockImpl,
    pub(crate) status_header: bool,
}

/// Builds the primary key from the site's template. `host` is the normalised request host (lowercase, no port),
/// so HTTP/1.1 and HTTP/2 requests for one URL share a key.
pub(crate) fn primary_key(parts: &[KeyPart], tls: bool, host: &str, req: &RequestHeader) -> String {
    let (path, query) = match req.uri.path_and_query() {
        Some(pq) => (pq.path(), pq.query()),
        None => ("/", None),
    };
    let mut key = String::with_capacity(host.len() + path.len() + 16);
    for part in parts {
        match part {
            KeyPart::Text(t) => key.push_str(t),
            KeyPart::Scheme => key.push_str(if tls { "https" } else { "http" }),
            KeyPart::Host => key.push_str(host),
            KeyPart::RequestUri => {
                key.push_str(path);
                if let Some(q) = query {
                    key.push('?');
                    key.push_str(q);
                }
            }
            KeyPart::Uri => key.push_str(path),
            KeyPart::Args => key.push_str(query.unwrap_or("")),
        }
    }
    key
}

/// Which requests may use the cache: GET and HEAD, never an Upgrade.
pub(crate) fn request_cacheable(req: &RequestHeader, is_upgrade: bool) -> bool {
    !is_upgrade && matches!(req.method, Method::GET | Method::HEAD)
}

/// Status codes a cache may store without explicit freshness (RFC 9110 §15.1 "heuristically cacheable").
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn header_time(resp: &ResponseHeader, name: header::HeaderName) -> Option<SystemTime> {
    let mut values = resp.headers.get_all(name).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

/// Decides whether and for how long a response may be stored (RFC 9111 §3 and §4.2, as a shared cache).
///
/// `revalidated`: the header is a stored one merged with a 304 (pingora keeps the old `Date`), so the response is
/// as fresh as now.
pub(crate) fn response_cacheable(
    resp: &ResponseHeader,
    authorization: bool,
    revalidated: bool,
    site: &SiteCache,
    now: SystemTime,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    if status == 206 || !(200..600).contains(&status) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    if resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == b"*")
    }) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    // nginx does not cache responses that set cookies; neither do we.
    if resp.headers.contains_key(header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    let cc = CacheControl::from_resp_headers(resp);
    if let Some(cc) = &cc
        && (cc.no_store() || cc.private())
    {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    if authorization
        && !cc
            .as_ref()
            .is_some_and(|cc| cc.allow_caching_authorized_req())
    {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }

    let date = if revalidated {
        None
    } else {
        header_time(resp, header::DATE)
    };
    let explicit = cc.as_ref().and_then(|cc| cc.fresh_duration()).or_else(|| {
        // Expires is relative to the origin's Date (clock skew cancels out); an invalid Expires means "already
        // expired".
        resp.headers.get(header::EXPIRES).map(|_| {
            match (header_time(resp, header::EXPIRES), date) {
                (Some(exp), Some(date)) => exp.duration_since(date).unwrap_or(Duration::ZERO),
                (Some(exp), None) => exp.duration_since(now).unwrap_or(Duration::ZERO),
                (None, _) => Duration::ZERO,
            }
        })
    });
    let lifetime = match explicit {
        Some(l) => l,
        None if heuristically_cacheable(status) || cc.as_ref().is_some_and(|cc| cc.public()) => {
            let heuristic = header_time(resp, header::LAST_MODIFIED).and_then(|lm| {
                let base = date.unwrap_or(now);
                base.duration_since(lm)
                    .ok()
                    .map(|d| (d / 10).min(HEURISTIC_CAP))
            });
            match heuristic.or(site.default_ttl) {
                Some(l) => l,
                None => return Uncacheable(NoCacheReason::OriginNotCache),
            }
        }
        None => return Uncacheable(NoCacheReason::OriginNotCache),
    };

    // Age on input (RFC 9111 §4.2.3): the response may already be old.
    let age_value = if revalidated {
        None
    } else {
        resp.headers.get(header::AGE)
    };
    let age_value = age_value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent_age = date
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    let initial_age = age_value.max(apparent_age);
    let created = now.checked_sub(initial_age).unwrap_or(now);
    let fresh_until = if lifetime.is_zero() {
        // no-cache or max-age=0: store, but revalidate before every use.
        now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
    } else {
        created + lifetime
    };

    let strict = cc
        .as_ref()
        .is_some_and(|cc| cc.must_revalidate() || cc.proxy_revalidate() || cc.no_cache());
    let (swr, sie) = if strict {
        (0, 0)
    } else {
        let swr = cc
            .as_ref()
            .and_then(|cc| cc.stale_while_revalidate().ok().flatten())
            .unwrap_or(0);
        let sie = cc
            .as_ref()
            .and_then(|cc| cc.stale_if_error().ok().flatten())
            .unwrap_or(0);
        let grace = u32::try_from(site.grace.as_secs()).unwrap_or(u32::MAX);
        (swr, sie.max(grace))
    };

    let mut stored = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut stored);
    }
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, created, swr, sie, stored))
}

/// The variant of a request for a stored response that has `Vary` (names compared case-insensitively, values
/// as sent). `None` when the response does not vary.
///
/// `Accept-Encoding` is not taken as sent but as the coding edgepop negotiated (`encoding`), so the endless
/// spellings of Accept-Encoding collapse into at most four variants.
pub(crate) fn variance(
    meta: &CacheMeta,
    req: &RequestHeader,
    encoding: &'static str,
) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for value in meta.headers().get_all(header::VARY) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let lower = name.to_ascii_lowercase();
            let v = if lower == "accept-encoding" {
                encoding.as_bytes().to_vec()
            } else {
                req.headers
                    .get(lower.as_str())
                    .map_or(&[][..], |v| v.as_bytes())
                    .to_vec()
            };
            builder.add_owned_name_value(lower, v);
        }
    }
    builder.finalize()
}

/// The `X-Cache-Status` value and metrics label for a finished request.
pub(crate) fn status_label(phase: &CachePhase, enabled: bool) -> &'static str {
    match phase {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Stale => "STALE",
        CachePhase::StaleUpdating => "UPDATING",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        // Enabled, then the response turned out uncacheable: fetched from the origin, like nginx's MISS.
        CachePhase::Disabled(_) | CachePhase::Uninit | CachePhase::CacheKey if enabled => "MISS",
        _ => "BYPASS",
    }
}

/// Methods after which the URL (and its Location / Content-Location) must be invalidated (RFC 9111 §4.4).
pub(crate) fn invalidates(method: &Method, status: u16) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    ) && (200..400).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> SiteCache {
        SiteCache {
            enabled: true,
            key: Vec::new(),
            default_ttl: None,
            grace: Duration::ZERO,
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    /// (status, headers, authorization) → stored freshness in seconds (None = not stored).
    #[test]
    #[allow(clippy::type_complexity)] // a table of (status, headers, authorization, expected) rows
    fn freshness_table() {
        // Whole seconds, as HTTP dates are: no sub-second apparent age.
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let date = httpdate::fmt_http_date(now);
        let date_minus_100 = httpdate::fmt_http_date(now - Duration::from_secs(100));
        let exp_plus_60 = httpdate::fmt_http_date(now + Duration::from_secs(60));
        let lm_1000 = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        let cases: Vec<(u16, Vec<(&str, &str)>, bool, Option<i64>)> = vec![
            (200, vec![("cache-control", "max-age=60")], false, Some(60)),
            (
                200,
                vec![("cache-control", "max-age=60, s-maxage=120")],
                false,
                Some(120),
            ),
            (
                200,
                vec![("cache-control", "no-store, max-age=60")],
                false,
                None,
            ),
            (
                200,
                vec![("cache-control", "private, max-age=60")],
                false,
                None,
            ),
            (200, vec![("cache-control", "no-cache")], false, Some(-1)),
            (
                200,
                vec![("cache-control", "max-age=60"), ("age", "50")],
                false,
                Some(10),
            ),
            (
                200,
                vec![("date", &date), ("expires", &exp_plus_60)],
                false,
                Some(60),
            ),
            (200, vec![("expires", "garbage")], false, Some(-1)),
            (
                200,
                vec![("date", &date_minus_100), ("cache-control", "max-age=300")],
                false,
                Some(200),
            ),
            (
                200,
                vec![("date", &date), ("last-modified", &lm_1000)],
                false,
                Some(100),
            ),
            (200, vec![], false, None),
            (
                302,
                vec![("date", &date), ("last-modified", &lm_1000)],
                false,
                None,
            ),
            (200, vec![("cache-control", "max-age=60")], true, None),
            (
                200,
                vec![("cache-control", "max-age=60, public")],
                true,
                Some(60),
            ),
            (200, vec![("cache-control", "s-maxage=60")], true, Some(60)),
            (
                200,
                vec![("cache-control", "max-age=60"), ("vary", "*")],
                false,
                None,
            ),
            (
                200,
                vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                false,
                None,
            ),
            (206, vec![("cache-control", "max-age=60")], false, None),
        ];
        for (status, headers, auth, want) in cases {
            let got = match response_cacheable(&resp(status, &headers), auth, false, &site(), now) {
                RespCacheable::Cacheable(meta) => {
                    let until = meta.fresh_until();
                    Some(match until.duration_since(now) {
                        Ok(d) => d.as_secs_f64().round() as i64,
                        Err(e) => -(e.duration().as_secs_f64().round() as i64),
                    })
                }
                RespCacheable::Uncacheable(_) => None,
            };
            assert_eq!(got, want, "status {status} headers {headers:?} auth {auth}");
        }
    }

    #[test]
    fn default_ttl_applies_only_without_freshness() {
        let now = SystemTime::now();
        let mut s = site();
        s.default_ttl = Some(Duration::from_secs(600));
        let RespCacheable::Cacheable(meta) =
            response_cacheable(&resp(200, &[]), false, false, &s, now)
        else {
            panic!("cacheable with a default ttl");
        };
        assert_eq!(
            meta.fresh_until().duration_since(now).unwrap().as_secs(),
            600
        );
        let RespCacheable::Uncacheable(_) = response_cacheable(
            &resp(200, &[("cache-control", "no-store")]),
            false,
            false,
            &s,
            now,
        ) else {
            panic!("no-store wins over the default ttl");
        };
    }

    #[test]
    fn grace_extends_stale_if_error_unless_must_revalidate() {
        let now = SystemTime::now();
        let mut s = site();
        s.grace = Duration::from_secs(3600);
        let RespCacheable::Cacheable(meta) = response_cacheable(
            &resp(
                200,
                &[("cache-control", "max-age=1, stale-while-revalidate=30")],
            ),
            false,
            false,
            &s,
            now,
        ) else {
            panic!()
        };
        assert!(meta.serve_stale_if_error(now + Duration::from_secs(1800)));
        assert!(meta.serve_stale_while_revalidate(now + Duration::from_secs(20)));
        let RespCacheable::Cacheable(meta) = response_cacheable(
            &resp(200, &[("cache-control", "max-age=1, must-revalidate")]),
            false,
            false,
            &s,
            now,
        ) else {
            panic!()
        };
        assert!(!meta.serve_stale_if_error(now + Duration::from_secs(5)));
    }

    #[test]
    fn keys_are_the_same_for_h1_and_h2() {
        let parts = vec![
            KeyPart::Scheme,
            KeyPart::Text("://".into()),
            KeyPart::Host,
            KeyPart::RequestUri,
        ];
        let h1 = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        let mut h2 = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        h2.set_uri("https://example.com/a?b=1".parse().unwrap());
        assert_eq!(
            primary_key(&parts, true, "example.com", &h1),
            "https://example.com/a?b=1"
        );
        assert_eq!(
            primary_key(&parts, true, "example.com", &h2),
            "https://example.com/a?b=1"
        );
    }
}
