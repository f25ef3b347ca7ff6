//! One row of the resolver table: the last answer for a host name and when to use it.
//!
//! Entries are immutable once published (a refresh builds a new one), except for two atomics:
//! the last time a request used the entry (idle eviction) and whether a refresh is running.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ResolveError;

/// At most this many ports get a prebuilt `Arc<[SocketAddr]>` per name; more ports still work,
/// they just allocate per call.
pub(crate) const MAX_PORTS: usize = 8;

pub(crate) struct Entry {
    /// The table key; shared with errors so failing calls don't allocate the name.
    pub(crate) host: Arc<str>,
    /// Empty unless the state is `Literal` or `Positive`.
    pub(crate) ips: Arc<[IpAddr]>,
    /// `ips` combined with each port callers asked for, built once.
    pub(crate) ports: Box<[(u16, Arc<[SocketAddr]>)]>,
    pub(crate) state: State,
    /// Registered with `Resolver::warm`: never evicted, retried while it does not resolve.
    pub(crate) pinned: bool,
    /// Milliseconds since the resolver's epoch when a request last used this entry.
    last_used: AtomicU64,
    /// A lookup for this name is running (set by whoever starts it, cleared when it ends).
    pub(crate) refreshing: AtomicBool,
}

pub(crate) enum State {
    /// Known name without a usable answer yet (pinned names only); retried at `retry_at`.
    Pending { retry_at: Instant },
    /// An IP literal: never expires, never queried.
    Literal,
    /// Addresses from DNS.
    Positive {
        /// Clamped TTL elapsed: past this the answer is served only as stale.
        expires_at: Instant,
        /// `expires_at + serve_stale`: past this the answer is not served at all.
        stale_until: Instant,
        /// When the refresher (or the next request) re-queries the name.
        refresh_at: Instant,
        /// Set while refreshes fail and the answer is kept for serve-stale.
        last_error: Option<ResolveError>,
    },
    /// NXDOMAIN/NODATA, cached until `expires_at`.
    Negative { expires_at: Instant },
}

/// What a request may do with an entry right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Literal,
    Fresh,
    Stale,
    Negative,
    /// No usable answer: look the name up (or join the lookup in flight).
    Cold,
}

impl Entry {
    pub(crate) fn new(
        host: Arc<str>,
        ips: Arc<[IpAddr]>,
        state: State,
        pinned: bool,
        last_used: u64,
    ) -> Self {
        Self {
            host,
            ips,
            ports: Box::default(),
            state,
            pinned,
            last_used: AtomicU64::new(last_used),
            refreshing: AtomicBool::new(false),
        }
    }

    /// A copy with a new answer: keeps the name, pin, last use and the set of ports.
    pub(crate) fn successor(&self, ips: Arc<[IpAddr]>, state: State) -> Self {
        let ports = self
            .ports
            .iter()
            .map(|&(port, _)| (port, socket_addrs(&ips, port)))
            .collect();
        Self {
            ports,
            ..Self::new(self.host.clone(), ips, state, self.pinned, self.last_used())
        }
    }

    /// A copy with the same answer and different ports or pin.
    pub(crate) fn with(&self, ports: Box<[(u16, Arc<[SocketAddr]>)]>, pinned: bool) -> Self {
        let state = match &self.state {
            State::Pending { retry_at } => State::Pending {
                retry_at: *retry_at,
            },
            State::Literal => State::Literal,
            State::Positive {
                expires_at,
                stale_until,
                refresh_at,
                last_error,
            } => State::Positive {
                expires_at: *expires_at,
                stale_until: *stale_until,
                refresh_at: *refresh_at,
                last_error: last_error.clone(),
            },
            State::Negative { expires_at } => State::Negative {
                expires_at: *expires_at,
            },
        };
        Self {
            ports,
            ..Self::new(
                self.host.clone(),
                self.ips.clone(),
                state,
                pinned,
                self.last_used(),
            )
        }
    }

    pub(crate) fn classify(&self, now: Instant) -> Use {
        match &self.state {
            State::Literal => Use::Literal,
            State::Positive {
                expires_at,
                stale_until,
                ..
            } => {
                if now < *expires_at {
                    Use::Fresh
                } else if now < *stale_until {
                    Use::Stale
                } else {
                    Use::Cold
                }
            }
            State::Negative { expires_at } if now < *expires_at => Use::Negative,
            State::Negative { .. } | State::Pending { .. } => Use::Cold,
        }
    }

    /// The prebuilt addresses for `port`, if a caller asked for that port before.
    #[inline]
    pub(crate) fn addrs(&self, port: u16) -> Option<Arc<[SocketAddr]>> {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, addrs)| addrs.clone())
    }

    /// The positive answer is due for a refresh and none is running.
    #[inline]
    pub(crate) fn refresh_due(&self, now: Instant) -> bool {
        matches!(&self.state, State::Positive { refresh_at, .. } if now >= *refresh_at)
            && !self.refreshing.load(Ordering::Acquire)
    }

    /// Served from a stale answer because refreshes fail (counted in the stale-names gauge).
    pub(crate) fn is_failing(&self) -> bool {
        matches!(
            &self.state,
            State::Positive {
                last_error: Some(_),
                ..
            }
        )
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Records a use; writes at most once a second so hot names don't bounce a cache line.
    #[inline]
    pub(crate) fn touch(&self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_used()) >= 1000 {
            self.last_used.store(now_ms, Ordering::Relaxed);
        }
    }
}

pub(crate) fn socket_addrs(ips: &[IpAddr], port: u16) -> Arc<[SocketAddr]> {
    ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect()
}

/// `192.0.2.1`, `2001:db8::1` or `[2001:db8::1]`.
pub(crate) fn parse_literal(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse().ok(),
    }
}

/// A host name we are willing to send to DNS: letters, digits, `-`, `_` (service-style names)
/// and non-ASCII (IDNA) in non-empty labels, at most 253 characters, one optional final dot.
pub(crate) fn valid_host(host: &str) -> bool {
    let relative = host.strip_suffix('.').unwrap_or(host);
    !relative.is_empty()
        && relative.len() <= 253
        && relative.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
        })
        && hickory_resolver::proto::rr::Name::from_str_relaxed(host).is_ok()
}

/// Clamps a record TTL to `[min, max]`, never under one second.
pub(crate) fn clamp_ttl(ttl_secs: u32, min: Duration, max: Duration) -> Duration {
    let min = min.max(Duration::from_secs(1));
    Duration::from_secs(ttl_secs.into()).clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        let cases: &[(&str, Option<&str>)] = &[
            ("192.0.2.1", Some("192.0.2.1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[192.0.2.1]", None),
            ("[::1", None),
            ("origin.example", None),
            ("192.0.2.1.example", None),
            ("", None),
        ];
        for (host, want) in cases {
            let want = want.map(|w| w.parse::<IpAddr>().unwrap());
            assert_eq!(parse_literal(host), want, "{host}");
        }
    }

    #[test]
    fn host_names() {
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghi"; 26].join(".");
        let cases: &[(&str, bool)] = &[
            ("origin.example", true),
            ("origin.example.", true),
            ("localhost", true),
            ("my_service.internal", true),
            ("xn--bcher-kva.example", true),
            ("bücher.example", true),
            ("a-b.c-d.example", true),
            ("", false),
            (".", false),
            ("a..b", false),
            (".a", false),
            ("a b", false),
            ("a/b", false),
            ("a:b", false),
            ("http://a", false),
            ("a\nb", false),
            (&long_label, false),
            (&long_name, false),
        ];
        for (host, ok) in cases {
            assert_eq!(valid_host(host), *ok, "{host:?}");
        }
    }

    #[test]
    fn ttl_clamps() {
        let s = Duration::from_secs;
        let cases = [
            (0, s(5), s(3600), s(5)),
            (60, s(5), s(3600), s(60)),
            (86_400, s(5), s(3600), s(3600)),
            (0, Duration::ZERO, s(3600), s(1)),
            (u32::MAX, s(1), s(2), s(2)),
        ];
        for (ttl, min, max, want) in cases {
            assert_eq!(
                clamp_ttl(ttl, min, max),
                want,
                "ttl {ttl} in [{min:?}, {max:?}]"
            );
        }
    }

    #[test]
    fn classify_follows_the_clock() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let state = State::Positive {
            expires_at: t0 + s(10),
            stale_until: t0 + s(20),
            refresh_at: t0 + s(8),
            last_error: None,
        };
        let e = Entry::new(
            Arc::from("a.example"),
            Arc::from([IpAddr::from([192, 0, 2, 1])]),
            state,
            false,
            0,
        );
        assert_eq!(e.classify(t0), Use::Fresh);
        assert!(!e.refresh_due(t0));
        assert!(e.refresh_due(t0 + s(8)));
        assert_eq!(e.classify(t0 + s(10)), Use::Stale);
        assert_eq!(e.classify(t0 + s(20)), Use::Cold);
        e.refreshing.store(true, Ordering::Release);
        assert!(
            !e.refresh_due(t0 + s(9)),
            "a running refresh is not started twice"
        );

        let neg = Entry::new(
            Arc::from("b.example"),
            Arc::from([]),
            State::Negative {
                expires_at: t0 + s(1),
            },
            false,
            0,
        );
        assert_eq!(neg.classify(t0), Use::Negative);
        assert_eq!(neg.classify(t0 + s(1)), Use::Cold);
    }

    #[test]
    fn successor_keeps_ports_with_new_addresses() {
        let old_ip = IpAddr::from([192, 0, 2, 1]);
        let new_ip = IpAddr::from([192, 0, 2, 2]);
        let e = Entry::new(
            Arc::from("a.example"),
            Arc::from([old_ip]),
            State::Literal,
            true,
            7,
        );
        let e = e.with(Box::new([(443, socket_addrs(&[old_ip], 443))]), true);
        let next = e.successor(Arc::from([new_ip]), State::Literal);
        assert_eq!(
            next.addrs(443).as_deref(),
            Some(&[SocketAddr::new(new_ip, 443)][..])
        );
        assert_eq!(next.addrs(80), None);
        assert!(next.pinned);
        assert_eq!(next.last_used(), 7);
    }
}
