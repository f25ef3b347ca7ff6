//! Plain settings for [`crate::Resolver`] (no serde: the proxy's config layer maps its TOML onto this).

use std::net::SocketAddr;
use std::time::Duration;

/// Which address families to ask for, and in what order to return them.
///
/// The resolver returns every address it got; ordering only matters to a load balancer that
/// prefers the first entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpStrategy {
    /// Only `A` records.
    Ipv4Only,
    /// Only `AAAA` records.
    Ipv6Only,
    /// `A` and `AAAA` in parallel, IPv4 addresses first.
    Ipv4AndIpv6,
    /// `A` first; `AAAA` only if there is no IPv4 address.
    #[default]
    Ipv4ThenIpv6,
    /// `AAAA` first; `A` only if there is no IPv6 address.
    Ipv6ThenIpv4,
}

/// How the [`crate::Resolver`] talks to DNS and how long it keeps answers.
///
/// Build it with struct-update syntax so new fields keep compiling:
/// `ResolverSettings { nameservers, ..Default::default() }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverSettings {
    /// Recursive nameservers to query, UDP with TCP fallback on truncation.
    /// Empty: use the nameservers (and `search`/`ndots`) from `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Which address families to query. Default [`IpStrategy::Ipv4ThenIpv6`].
    pub ip_strategy: IpStrategy,
    /// Answers with a shorter TTL are kept this long (default 5 s). Values under 1 s act as 1 s.
    /// Also the retry interval after a failed refresh.
    pub min_ttl: Duration,
    /// Answers with a longer TTL are re-queried after this long (default 1 h).
    pub max_ttl: Duration,
    /// Cap for caching NXDOMAIN/NODATA answers (default 30 s). The SOA-derived negative TTL
    /// (RFC 2308) is used when smaller; without an SOA, `min(min_ttl, negative_ttl)` is used.
    pub negative_ttl: Duration,
    /// Time allowed for one query to the nameserver pool (default 2 s).
    pub timeout: Duration,
    /// Tries per lookup, first one included (default 2). A lookup never takes longer than
    /// `timeout * attempts`, whatever the `ip_strategy`.
    pub attempts: usize,
    /// How long past its TTL the last good answer is still served when every nameserver fails
    /// (RFC 8767 serve-stale; default 1 day). Zero disables serve-stale.
    pub serve_stale: Duration,
    /// Fraction of the TTL that is left when a name is re-queried in the background
    /// (default 0.2: a 60 s answer is refreshed after 48 s). Must be in `0.0..=0.9`; 0 refreshes
    /// only at expiry, which lets requests briefly see the old answer served as stale.
    /// At most 0.9, so a short TTL does not turn into continuous re-querying.
    pub refresh_ahead: f32,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            ip_strategy: IpStrategy::default(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            attempts: 2,
            serve_stale: Duration::from_secs(86_400),
            refresh_ahead: 0.2,
        }
    }
}

impl ResolverSettings {
    /// Checks the values that would make the resolver misbehave.
    pub(crate) fn validate(&self) -> Result<(), crate::ResolveError> {
        let invalid = |field, reason| Err(crate::ResolveError::InvalidSettings { field, reason });
        if self.timeout.is_zero() {
            return invalid("timeout", "must be greater than zero");
        }
        if self.attempts == 0 {
            return invalid("attempts", "must be at least 1");
        }
        if self.min_ttl > self.max_ttl {
            return invalid("min_ttl", "must not be greater than max_ttl");
        }
        if !(0.0..=0.9).contains(&self.refresh_ahead) {
            return invalid("refresh_ahead", "must be between 0.0 and 0.9");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = ResolverSettings::default();
        assert!(s.validate().is_ok());
        assert_eq!(s.min_ttl, Duration::from_secs(5));
        assert_eq!(s.max_ttl, Duration::from_secs(3600));
        assert_eq!(s.negative_ttl, Duration::from_secs(30));
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.attempts, 2);
        assert_eq!(s.serve_stale, Duration::from_secs(86_400));
        assert_eq!(s.ip_strategy, IpStrategy::Ipv4ThenIpv6);
    }

    #[test]
    fn rejects_bad_values() {
        let cases: &[(&str, ResolverSettings)] = &[
            (
                "timeout",
                ResolverSettings {
                    timeout: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "attempts",
                ResolverSettings {
                    attempts: 0,
                    ..Default::default()
                },
            ),
            (
                "min_ttl",
                ResolverSettings {
                    min_ttl: Duration::from_secs(10),
                    max_ttl: Duration::from_secs(5),
                    ..Default::default()
                },
            ),
            (
                "refresh_ahead",
                ResolverSettings {
                    refresh_ahead: 1.0,
                    ..Default::default()
                },
            ),
            (
                "refresh_ahead",
                ResolverSettings {
                    refresh_ahead: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "refresh_ahead",
                ResolverSettings {
                    refresh_ahead: -0.1,
                    ..Default::default()
                },
            ),
        ];
        for (field, settings) in cases {
            match settings.validate() {
                Err(crate::ResolveError::InvalidSettings { field: f, .. }) => assert_eq!(f, *field),
                other => panic!("{field}: expected InvalidSettings, got {other:?}"),
            }
        }
    }
}
