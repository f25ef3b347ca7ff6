//! Reading and validating one domain directory's chain and key.
//!
//! Nothing here logs or touches metrics: [`crate::scan`] (used by `edgepop check`) shares this
//! code with the store and must stay free of side effects.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::BuildHasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::SignatureAlgorithm;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::error::CertError;
use crate::store::CertSettings;

/// Chain and key files larger than this are refused unread (a chain is a few KiB).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What `edgepop check` and the logs show about one loaded certificate pair.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertSummary {
    /// The directory name, i.e. the domain the pair is filed under.
    pub domain: String,
    /// DNS names the leaf covers (SAN DNS entries, or the CN when there is no SAN), lowercase.
    pub names: Vec<String>,
    /// Leaf notBefore.
    pub not_before: SystemTime,
    /// Leaf notAfter.
    pub not_after: SystemTime,
    /// Key type and size, e.g. `ecdsa-p256`, `rsa-2048`, `ed25519`.
    pub key_algorithm: &'static str,
    /// Leaf serial number, colon-separated hex.
    pub serial: String,
    /// Number of certificates in the chain file (leaf included).
    pub chain_len: usize,
    /// The leaf had expired when it was checked. Such a pair is only served when no valid pair
    /// covers the name (see the crate docs).
    pub expired: bool,
    /// The key file is readable by group or other (`mode & 0o077 != 0`).
    pub key_too_open: bool,
    /// Path of the chain file.
    pub chain_path: PathBuf,
    /// Path of the key file.
    pub key_path: PathBuf,
}

/// A pair that passed validation (possibly expired: see [`CertSummary::expired`]).
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) summary: CertSummary,
}

/// Identity of one file's content, to tell "changed" from "same as last time".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    hash: u64,
    len: u64,
    mtime: Option<SystemTime>,
    mode: u32,
}

/// Identity of a pair's two files; `None` where a file could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Fingerprint {
    chain: Option<FileStamp>,
    key: Option<FileStamp>,
}

/// Both files of a pair, read (or not).
pub(crate) struct PairFiles {
    pub(crate) fingerprint: Fingerprint,
    chain_path: PathBuf,
    key_path: PathBuf,
    chain: Result<Vec<u8>, CertError>,
    key: Result<(Vec<u8>, u32), CertError>,
}

/// True when a key file with this mode is readable by group or other.
pub(crate) fn key_mode_too_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Lowercase and strip one trailing dot, allocating only when needed.
pub(crate) fn normalize_host(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Does certificate name `pattern` (`a.example.com` or `*.example.com`) cover host `host`?
/// A wildcard covers exactly one non-empty leftmost label.
pub(crate) fn name_covers(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    match (pattern.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && rest == suffix,
        _ => false,
    }
}

fn valid_domain_dir_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*'))
}

/// A domain directory's name and path (or why it cannot be used).
pub(crate) type DomainDir = (String, Result<PathBuf, CertError>);

/// Domain directories under `dir`, sorted by name. Hidden entries (`.tmp`, `..data`) and plain
/// files are skipped; symlinks are followed.
pub(crate) fn list_domains(dir: &Path) -> Result<Vec<DomainDir>, CertError> {
    let read_dir = fs::read_dir(dir).map_err(|source| CertError::ReadDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<DomainDir> = Vec::new();
    for entry in read_dir {
        let entry = entry.map_err(|source| CertError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let raw = entry.file_name();
        let lossy = raw.to_string_lossy();
        if lossy.starts_with('.') || !path.is_dir() {
            continue;
        }
        let domain = normalize_host(&lossy).into_owned();
        if raw.to_str().is_none() || !valid_domain_dir_name(&domain) {
            out.push((domain, Err(CertError::BadDomainDir { path })));
            continue;
        }
        out.push((domain, Ok(path)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    // Two directories differing only in case would fight over one domain: refuse the later.
    for i in 1..out.len() {
        if out[i].0 == out[i - 1].0 && out[i].1.is_ok() {
            let path = match &out[i].1 {
                Ok(p) => p.clone(),
                Err(_) => continue,
            };
            out[i].1 = Err(CertError::BadDomainDir { path });
        }
    }
    Ok(out)
}

fn read_limited(path: &Path, hasher: &RandomState) -> Result<(Vec<u8>, FileStamp), CertError> {
    let read_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CertError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            CertError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(CertError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(CertError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
        });
    }
    let stamp = FileStamp {
        hash: hasher.hash_one(&bytes),
        len: bytes.len() as u64,
        mtime: meta.modified().ok(),
        mode: file_mode(&meta),
    };
    Ok((bytes, stamp))
}

#[cfg(unix)]
fn file_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode()
}

#[cfg(not(unix))]
fn file_mode(_meta: &fs::Metadata) -> u32 {
    0o400
}

/// Read both files of the pair in `domain_dir`.
pub(crate) fn read_pair(
    domain_dir: &Path,
    settings: &CertSettings,
    hasher: &RandomState,
) -> PairFiles {
    let chain_path = domain_dir.join(&settings.chain_file);
    let key_path = domain_dir.join(&settings.key_file);
    let chain = read_limited(&chain_path, hasher);
    let key = read_limited(&key_path, hasher);
    PairFiles {
        fingerprint: Fingerprint {
            chain: chain.as_ref().ok().map(|(_, s)| *s),
            key: key.as_ref().ok().map(|(_, s)| *s),
        },
        chain_path,
        key_path,
        chain: chain.map(|(b, _)| b),
        key: key.map(|(b, s)| (b, s.mode)),
    }
}

fn pem_reason(e: &pem::Error) -> &'static str {
    // Deliberately not `e.to_string()`: some variants quote bytes from the file.
    match e {
        pem::Error::MissingSectionEnd { .. } => "missing END line (truncated file?)",
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line",
        pem::Error::Base64Decode(_) => "invalid base64",
        pem::Error::NoItemsFound => "no pem section",
        pem::Error::SectionTooLarge => "section too large",
        _ => "unreadable pem",
    }
}

fn system_time(unix: i64) -> SystemTime {
    let secs = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        UNIX_EPOCH.checked_add(secs).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(secs).unwrap_or(UNIX_EPOCH)
    }
}

fn key_algorithm(alg: SignatureAlgorithm, bits: usize) -> &'static str {
    match (alg, bits) {
        (SignatureAlgorithm::ECDSA, 256) => "ecdsa-p256",
        (SignatureAlgorithm::ECDSA, 384) => "ecdsa-p384",
        (SignatureAlgorithm::ECDSA, 521) => "ecdsa-p521",
        (SignatureAlgorithm::ECDSA, _) => "ecdsa",
        (SignatureAlgorithm::RSA, 2048) => "rsa-2048",
        (SignatureAlgorithm::RSA, 3072) => "rsa-3072",
        (SignatureAlgorithm::RSA, 4096) => "rsa-4096",
        (SignatureAlgorithm::RSA, _) => "rsa",
        (SignatureAlgorithm::ED25519, _) => "ed25519",
        (SignatureAlgorithm::ED448, _) => "ed448",
        _ => "other",
    }
}

/// Whether the file's last line is the start of a PEM marker, e.g. `-----BEG`: a file cut just
/// after a complete block. The PEM parser skips such text, so without this check a chain truncated
/// there would load with its intermediates silently missing.
fn ends_in_partial_marker(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii_end();
    let last = trimmed
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap_or(trimmed)
        .trim_ascii();
    last.starts_with(b"-") && !last.starts_with(b"-----END ")
}

/// Validate a read pair for `domain` at time `now`.
///
/// Hard failures are errors; an expired leaf is returned as `Ok` with `summary.expired` set, and
/// the caller decides whether to serve it.
pub(crate) fn parse_pair(
    domain: &str,
    files: PairFiles,
    now: SystemTime,
) -> Result<Loaded, CertError> {
    let PairFiles {
        chain_path,
        key_path,
        chain,
        key,
        ..
    } = files;
    let chain_bytes = chain?;
    let (key_bytes, key_mode) = key?;

    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(&chain_bytes) {
        chain.push(item.map_err(|e| CertError::Pem {
            path: chain_path.clone(),
            reason: pem_reason(&e),
        })?);
    }
    if ends_in_partial_marker(&chain_bytes) {
        return Err(CertError::Pem {
            path: chain_path,
            reason: "incomplete BEGIN line (truncated file?)",
        });
    }
    let Some(leaf_der) = chain.first() else {
        return Err(CertError::NoCertificate { path: chain_path });
    };

    let bad_cert = |reason: String| CertError::BadCertificate {
        path: chain_path.clone(),
        reason,
    };
    let leaf = match X509Certificate::from_der(leaf_der.as_ref()) {
        Ok((_, leaf)) => leaf,
        Err(e) => return Err(bad_cert(e.to_string())),
    };
    let mut names: Vec<String> = Vec::new();
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| bad_cert(e.to_string()))?;
    if let Some(san) = san {
        for general in &san.value.general_names {
            if let GeneralName::DNSName(dns) = general {
                let name = normalize_host(dns).into_owned();
                if !name.is_empty() && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    if names.is_empty() {
        // CN fallback only for certificates without DNS SANs.
        if let Some(cn) = leaf
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            let name = normalize_host(cn).into_owned();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    let validity = leaf.validity();
    let not_before = system_time(validity.not_before.timestamp());
    let not_after = system_time(validity.not_after.timestamp());
    let serial = leaf.raw_serial_as_string();
    let key_bits = leaf
        .public_key()
        .parsed()
        .map(|k| k.key_size())
        .unwrap_or(0);

    if !names.iter().any(|n| name_covers(n, domain)) {
        return Err(CertError::NameMismatch {
            path: chain_path,
            domain: domain.to_owned(),
            names,
        });
    }
    if now < not_before {
        return Err(CertError::NotYetValid {
            path: chain_path,
            not_before: validity.not_before.to_string(),
        });
    }
    let expired = now > not_after;

    let key_der = match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => return Err(CertError::NoKey { path: key_path }),
        Err(e) => {
            return Err(CertError::Pem {
                path: key_path,
                reason: pem_reason(&e),
            });
        }
    };
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| {
            CertError::UnsupportedKey {
                path: key_path.clone(),
                source,
            }
        })?;
    let key_algorithm = key_algorithm(signing_key.algorithm(), key_bits);
    let chain_len = chain.len();
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key that cannot report its public half cannot be checked; rustls accepts it too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(CertError::KeyMismatch {
                chain: chain_path,
                key: key_path,
            });
        }
        Err(e) => return Err(bad_cert(e.to_string())),
    }

    Ok(Loaded {
        key: Arc::new(certified),
        summary: CertSummary {
            domain: domain.to_owned(),
            names,
            not_before,
            not_after,
            key_algorithm,
            serial,
            chain_len,
            expired,
            key_too_open: key_mode_too_open(key_mode),
            chain_path,
            key_path,
        },
    })
}

/// The `CertError::Expired` describing an expired summary.
pub(crate) fn expired_error(summary: &CertSummary) -> CertError {
    let not_after = match summary.not_after.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("unix time {}", d.as_secs()),
        Err(_) => "before 1970".to_owned(),
    };
    CertError::Expired {
        path: summary.chain_path.clone(),
        not_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_covers_one_label_only() {
        let cases = [
            ("a.test", "a.test", true),
            ("a.test", "b.test", false),
            ("*.b.test", "x.b.test", true),
            ("*.b.test", "_.b.test", true),
            ("*.b.test", "*.b.test", true),
            ("*.b.test", "b.test", false),
            ("*.b.test", "y.x.b.test", false),
            ("*.b.test", ".b.test", false),
            ("*.test", "test", false),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(name_covers(pattern, host), want, "{pattern} vs {host}");
        }
    }

    #[test]
    fn host_normalisation() {
        assert!(matches!(normalize_host("a.test"), Cow::Borrowed("a.test")));
        assert_eq!(normalize_host("A.Test."), "a.test");
        assert_eq!(normalize_host("a.test."), "a.test");
    }

    #[test]
    fn key_mode_predicate() {
        for (mode, too_open) in [
            (0o100400, false),
            (0o400, false),
            (0o600, false),
            (0o440, true),
            (0o404, true),
            (0o644, true),
            (0o100640, true),
        ] {
            assert_eq!(key_mode_too_open(mode), too_open, "{mode:o}");
        }
    }

    #[test]
    fn domain_dir_names() {
        assert!(valid_domain_dir_name("a.test"));
        assert!(valid_domain_dir_name("_.b.test"));
        assert!(valid_domain_dir_name("*.b.test"));
        assert!(!valid_domain_dir_name(".hidden"));
        assert!(!valid_domain_dir_name("a b"));
        assert!(!valid_domain_dir_name(""));
    }
}
