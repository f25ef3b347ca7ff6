//! The functions the cargo-fuzz targets in `fuzz/` run, shared with the stable corpus test
//! (`tests/e2e/hardening.rs`) so CI replays every seed without nightly. Each takes raw bytes, must never panic,
//! and asserts the invariants the fuzzer looks for.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proxy_protocol::{self, Parsed};

/// `Config::parse` on arbitrary text (invalid UTF-8 is skipped): errors, never panics. Returns whether the
/// text was a valid configuration.
pub fn config(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| crate::Config::parse("fuzz.toml", text).is_ok())
}

/// The PROXY protocol parser on arbitrary bytes. A header never claims more bytes than it was given, and a
/// parse of a longer buffer with the same prefix agrees on the header (what follows belongs to TLS/HTTP).
/// Returns whether `data` starts with a complete, valid header.
pub fn proxy_header(data: &[u8]) -> bool {
    let parsed = proxy_protocol::parse(data);
    if let Parsed::Header { len, client } = &parsed {
        assert!(
            *len > 0 && *len <= data.len(),
            "header len {len} of {}",
            data.len()
        );
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            proxy_protocol::parse(&longer),
            Parsed::Header {
                len: *len,
                client: *client
            },
            "trailing bytes changed the header"
        );
    }
    matches!(parsed, Parsed::Header { .. })
}

/// The disk tier's entry decoder (see `edgepop_cache::decode_entry_for_fuzz`). Returns whether the entry was
/// accepted.
pub fn cache_entry(data: &[u8]) -> bool {
    edgepop_cache::decode_entry_for_fuzz(data)
}

/// Separates the chain from the key in a `cert_pair` input; without it the input is split in half.
pub const CERT_PAIR_SEPARATOR: &[u8] = b"\n--8<--\n";

/// The certificate loader (`edgepop_certs::scan`, what `edgepop check` and every reload run) on a chain and key
/// written to a fresh directory. Never panics, and no error message carries a line of the key file. Returns
/// whether the pair was accepted.
pub fn cert_pair(data: &[u8]) -> bool {
    static N: AtomicU64 = AtomicU64::new(0);
    let (chain, key) = match data
        .windows(CERT_PAIR_SEPARATOR.len())
        .position(|w| w == CERT_PAIR_SEPARATOR)
    {
        Some(at) => (&data[..at], &data[at + CERT_PAIR_SEPARATOR.len()..]),
        None => data.split_at(data.len() / 2),
    };
    let root: PathBuf = std::env::temp_dir().join(format!(
        "edgepop-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let domain = root.join("a.test");
    let written = std::fs::create_dir_all(&domain)
        .and_then(|()| std::fs::write(domain.join("chain.pem"), chain))
        .and_then(|()| std::fs::write(domain.join("key.pem"), key));
    let mut accepted = false;
    if written.is_ok() {
        let settings = edgepop_certs::CertSettings {
            dir: root.clone(),
            ..edgepop_certs::CertSettings::default()
        };
        if let Ok(checks) = edgepop_certs::scan(&settings) {
            for (_, result) in checks {
                accepted = result.is_ok();
                if let Err(e) = result {
                    let shown = format!("{e} {e:?} {}", Chain(&e));
                    for line in key.split(|b| *b == b'\n') {
                        let line = String::from_utf8_lossy(line);
                        let line = line.trim();
                        if line.len() >= 16 && !line.starts_with("-----") {
                            assert!(!shown.contains(line), "key material in an error: {shown}");
                        }
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    accepted
}

/// An error with its whole source chain, as `{:#}` of an anyhow error prints it.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut e = Some(self.0);
        while let Some(err) = e {
            write!(f, "{err}: ")?;
            e = err.source();
        }
        Ok(())
    }
}
