use std::error::Error as StdError;
use std::sync::Arc;

/// Why a name could not be turned into addresses, or the resolver could not be built.
///
/// Cheap to clone: one lookup's outcome is handed to every caller that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The host is neither an IP literal nor a valid DNS name. No query was sent.
    #[error("dns lookup for {host:?} failed: invalid host name")]
    InvalidName { host: Arc<str> },
    /// NXDOMAIN, or the name has no address of the requested families (NODATA).
    /// Negative answers are cached (see [`crate::ResolverSettings::negative_ttl`]).
    #[error("dns lookup for {host} failed: no such host")]
    NotFound { host: Arc<str> },
    /// No nameserver answered within `timeout * attempts`, and there was no last good answer
    /// within the serve-stale window.
    #[error("dns lookup for {host} failed: timed out")]
    Timeout { host: Arc<str> },
    /// Any other failure (SERVFAIL, REFUSED, network errors, ...), with no last good answer
    /// within the serve-stale window.
    #[error("dns lookup for {host} failed")]
    Failed {
        host: Arc<str>,
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// `nameservers` was empty and the system configuration could not be used.
    #[error("reading dns configuration from {path}")]
    SystemConfig {
        path: &'static str,
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// hickory refused the configuration.
    #[error("initialising the dns client")]
    Init {
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// A [`crate::ResolverSettings`] value is out of range.
    #[error("invalid resolver setting {field}: {reason}")]
    InvalidSettings {
        field: &'static str,
        reason: &'static str,
    },
}

impl ResolveError {
    /// The host name the failed lookup was for, if the error is about a lookup.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::InvalidName { host }
            | Self::NotFound { host }
            | Self::Timeout { host }
            | Self::Failed { host, .. } => Some(host),
            Self::SystemConfig { .. } | Self::Init { .. } | Self::InvalidSettings { .. } => None,
        }
    }
}

/// Source for lookups that could not run or finish (no tokio runtime, task cancelled).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Internal {
    #[error("no tokio runtime to run the lookup on")]
    NoRuntime,
    #[error("lookup task ended without an answer")]
    Cancelled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_host_and_do_not_repeat_the_source() {
        let host: Arc<str> = Arc::from("origin.example");
        let cases = [
            (
                ResolveError::NotFound { host: host.clone() },
                "dns lookup for origin.example failed: no such host",
            ),
            (
                ResolveError::Timeout { host: host.clone() },
                "dns lookup for origin.example failed: timed out",
            ),
            (
                ResolveError::Failed {
                    host: host.clone(),
                    source: Arc::new(Internal::Cancelled),
                },
                "dns lookup for origin.example failed",
            ),
            (
                ResolveError::InvalidName {
                    host: Arc::from("a b"),
                },
                "dns lookup for \"a b\" failed: invalid host name",
            ),
        ];
        for (err, msg) in cases {
            assert_eq!(err.to_string(), msg);
        }
        let failed = ResolveError::Failed {
            host,
            source: Arc::new(Internal::Cancelled),
        };
        assert_eq!(
            failed.source().map(|s| s.to_string()).as_deref(),
            Some("lookup task ended without an answer")
        );
        assert_eq!(failed.host(), Some("origin.example"));
    }
}
