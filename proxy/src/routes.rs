//! Host name → site routing.
//!
//! Exact names win over wildcards; a wildcard `*.example.com` matches exactly one extra label
//! (`a.example.com`, not `a.b.example.com` nor `example.com`), as TLS certificates do.

use std::collections::HashMap;

/// A site's index in [`crate::state::State::sites`].
pub(crate) type SiteId = usize;

/// Immutable routing table, rebuilt on every config (re)load.
#[derive(Debug, Default)]
pub(crate) struct Router {
    exact: HashMap<Box<str>, SiteId>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<Box<str>, SiteId>,
}

impl Router {
    /// Builds the table from `(names, site)` pairs; names are already lowercase and validated.
    pub(crate) fn new<'a>(sites: impl IntoIterator<Item = (&'a [String], SiteId)>) -> Self {
        let mut r = Router::default();
        for (names, id) in sites {
            for name in names {
                match name.strip_prefix("*.") {
                    Some(suffix) => r.wildcard.insert(suffix.into(), id),
                    None => r.exact.insert(name.as_str().into(), id),
                };
            }
        }
        r
    }

    /// Finds the site for a request host (no port). Case-insensitive; a trailing dot is ignored.
    pub(crate) fn lookup(&self, host: &str) -> Option<SiteId> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            // Rare: clients send lowercase host names; only then pay for a copy.
            return self.lookup_lower(&host.to_ascii_lowercase());
        }
        self.lookup_lower(host)
    }

    fn lookup_lower(&self, host: &str) -> Option<SiteId> {
        if let Some(id) = self.exact.get(host) {
            return Some(*id);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent).copied()
    }
}

/// Splits the port off a Host header value: `example.com:8443` → `example.com`, `[::1]:443` → `::1`.
pub(crate) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let a = ["example.com".to_owned(), "www.example.com".to_owned()];
        let b = ["*.example.com".to_owned()];
        let c = ["api.example.com".to_owned(), "*.api.example.com".to_owned()];
        Router::new([(&a[..], 0), (&b[..], 1), (&c[..], 2)])
    }

    #[test]
    fn lookup_table() {
        let r = router();
        let cases = [
            ("example.com", Some(0)),
            ("EXAMPLE.com", Some(0)),
            ("example.com.", Some(0)),
            ("www.example.com", Some(0)),
            ("foo.example.com", Some(1)),
            ("api.example.com", Some(2)),
            ("v1.api.example.com", Some(2)),
            ("a.b.example.com", None),
            ("other.test", None),
            ("com", None),
            ("", None),
        ];
        for (host, want) in cases {
            assert_eq!(r.lookup(host), want, "host {host:?}");
        }
    }

    #[test]
    fn strip_port_table() {
        for (input, want) in [
            ("example.com", "example.com"),
            ("example.com:8443", "example.com"),
            ("[::1]:443", "::1"),
            ("[::1]", "::1"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("example.com:abc", "example.com:abc"),
        ] {
            assert_eq!(strip_port(input), want);
        }
    }
}
