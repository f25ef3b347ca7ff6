//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Why a certificate directory or pair could not be used.
///
/// Every variant names the file or directory it is about. No variant carries file contents: key
/// material never reaches a log line through this type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The certificates directory itself could not be listed.
    #[error("listing certificate directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A domain directory name is not usable as a host name.
    #[error("certificate directory {path} is not named after a domain")]
    BadDomainDir { path: PathBuf },
    /// The chain or key file does not exist (yet, or any more).
    #[error("missing {path}")]
    Missing { path: PathBuf },
    /// The chain or key file could not be read.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The chain or key file is implausibly large.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    /// The PEM text is malformed (truncated, bad base64, ...).
    #[error("malformed pem in {path}: {reason}")]
    Pem { path: PathBuf, reason: &'static str },
    /// The chain file holds no `CERTIFICATE` block.
    #[error("no certificate in {path}")]
    NoCertificate { path: PathBuf },
    /// The key file holds no private key block.
    #[error("no private key in {path}")]
    NoKey { path: PathBuf },
    /// The key parses as PEM but rustls (ring) cannot sign with it.
    #[error("unsupported private key in {path}")]
    UnsupportedKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The leaf certificate cannot be parsed as X.509.
    #[error("invalid leaf certificate in {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    /// The private key is not the leaf certificate's key (often a half-written rotation).
    #[error("private key {key} does not match certificate {chain}")]
    KeyMismatch { chain: PathBuf, key: PathBuf },
    /// The leaf's names do not cover the directory's domain.
    #[error("certificate {path} does not cover {domain} (it names {names:?})")]
    NameMismatch {
        path: PathBuf,
        domain: String,
        names: Vec<String>,
    },
    /// The leaf's notBefore is in the future.
    #[error("certificate {path} is not valid before {not_before}")]
    NotYetValid { path: PathBuf, not_before: String },
    /// The leaf's notAfter is in the past.
    #[error("certificate {path} expired at {not_after}")]
    Expired { path: PathBuf, not_after: String },
}

impl CertError {
    /// Short stable reason, for log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ReadDir { .. } => "read_dir",
            Self::BadDomainDir { .. } => "bad_domain_dir",
            Self::Missing { .. } => "missing",
            Self::Read { .. } => "read",
            Self::TooLarge { .. } => "too_large",
            Self::Pem { .. } => "pem",
            Self::NoCertificate { .. } => "no_certificate",
            Self::NoKey { .. } => "no_key",
            Self::UnsupportedKey { .. } => "unsupported_key",
            Self::BadCertificate { .. } => "bad_certificate",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::NameMismatch { .. } => "name_mismatch",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::Expired { .. } => "expired",
        }
    }
}
