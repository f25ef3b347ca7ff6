//! Response compression, done once per stored variant.
//!
//! nginx re-compresses every cache hit. edgepop compresses the upstream response *before* it is cached (in the
//! upstream response filters), with the encoding negotiated from the client's Accept-Encoding; the cache keys the
//! variant by that encoding, so a hit serves stored compressed bytes. The upstream is asked for exactly the
//! negotiated encoding (or identity), so an already-encoded body is passed through, never compressed twice.

use bytes::Bytes;
use http::{HeaderValue, header};
use pingora::http::ResponseHeader;
use pingora::protocols::http::compression::{Algorithm, Encode};

use crate::config::CompressionConfig;

/// A content coding edgepop produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    /// The token in Accept-Encoding / Content-Encoding (also the cache variant value).
    pub(crate) fn token(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    fn algorithm(self) -> Option<Algorithm> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some(Algorithm::Gzip),
            Encoding::Brotli => Some(Algorithm::Brotli),
            Encoding::Zstd => Some(Algorithm::Zstd),
        }
    }

    fn level(self, cfg: &CompressionConfig) -> u32 {
        match self {
            Encoding::Identity => 0,
            Encoding::Gzip => cfg.gzip_level,
            Encoding::Brotli => cfg.brotli_level,
            Encoding::Zstd => cfg.zstd_level,
        }
    }
}

/// Picks the best coding the client accepts (highest q; ties: br, zstd, gzip). Identity when compression is off,
/// the header is absent, or nothing usable is accepted.
pub(crate) fn negotiate(accept: Option<&HeaderValue>, cfg: &CompressionConfig) -> Encoding {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return Encoding::Identity;
    };
    if !cfg.enabled {
        return Encoding::Identity;
    }
    if accept == "gzip" {
        return Encoding::Gzip;
    }
    let mut best = (Encoding::Identity, 0u16, 0u8);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let mut q = 1000u16;
        for param in parts {
            if let Some(v) = param
                .trim()
                .strip_prefix("q=")
                .or_else(|| param.trim().strip_prefix("Q="))
            {
                q = parse_q(v.trim());
            }
        }
        let (enc, rank) = if coding.eq_ignore_ascii_case("br") && cfg.brotli_level > 0 {
            (Encoding::Brotli, 3)
        } else if coding.eq_ignore_ascii_case("zstd") && cfg.zstd_level > 0 {
            (Encoding::Zstd, 2)
        } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            (Encoding::Gzip, 1)
        } else {
            continue;
        };
        if q > 0 && (q, rank) > (best.1, best.2) {
            best = (enc, q, rank);
        }
    }
    best.0
}

/// `q=0.5` → 500 (thousandths, as RFC 9110 qvalues have at most three decimals). Invalid → 0.
fn parse_q(v: &str) -> u16 {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let int: u16 = match int {
        "1" => 1000,
        "0" => 0,
        _ => return 0,
    };
    let mut frac_val = 0u16;
    for (i, c) in frac.bytes().take(3).enumerate() {
        if !c.is_ascii_digit() {
            return 0;
        }
        frac_val += u16::from(c - b'0') * [100, 10, 1][i];
    }
    (int + frac_val).min(1000)
}

/// Is the response's media type in the configured list (exact, or a `text/*` style prefix)?
pub(crate) fn compressible_type(resp: &ResponseHeader, cfg: &CompressionConfig) -> bool {
    let Some(ct) = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim();
    cfg.types.iter().any(|t| match t.strip_suffix('*') {
        Some(prefix) => {
            mime.len() >= prefix.len() && mime[..prefix.len()].eq_ignore_ascii_case(prefix)
        }
        None => mime.eq_ignore_ascii_case(t),
    })
}

/// Starts compressing `resp` with `enc` when it qualifies: a 200 with a body of a listed type, at least
/// `min-length` bytes (when the length is known), and no Content-Encoding yet. Adjusts the headers and returns the
/// encoder. Adds `Vary: Accept-Encoding` to every compressible response, compressed or not.
pub(crate) fn start(
    resp: &mut ResponseHeader,
    enc: Encoding,
    cfg: &CompressionConfig,
) -> Option<Box<dyn Encode + Send + Sync>> {
    if !cfg.enabled || !compressible_type(resp, cfg) {
        return None;
    }
    add_vary_accept_encoding(resp);
    if resp.status.as_u16() != 200 || resp.headers.contains_key(header::CONTENT_ENCODING) {
        return None;
    }
    let too_small = resp
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len < cfg.min_length);
    if too_small {
        return None;
    }
    let encoder = enc.algorithm()?.compressor(enc.level(cfg))?;
    resp.remove_header(&header::CONTENT_LENGTH);
    resp.remove_header(&header::ACCEPT_RANGES);
    let _ = resp.insert_header(header::CONTENT_ENCODING, enc.token());
    // A compressed representation is not byte-identical to the origin's: its validator becomes weak.
    if let Some(etag) = resp.headers.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !etag.starts_with("W/")
    {
        let weak = format!("W/{etag}");
        let _ = resp.insert_header(header::ETAG, weak);
    }
    Some(encoder)
}

fn add_vary_accept_encoding(resp: &mut ResponseHeader) {
    let present = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            t.trim_ascii().eq_ignore_ascii_case(b"accept-encoding") || t.trim_ascii() == b"*"
        })
    });
    if !present {
        let _ = resp.append_header(header::VARY, "Accept-Encoding");
    }
}

/// Feeds one body chunk through the encoder (`None` with `end` flushes).
pub(crate) fn encode(
    encoder: &mut Box<dyn Encode + Send + Sync>,
    body: &mut Option<Bytes>,
    end: bool,
) -> pingora::Result<()> {
    let input = body.as_deref().unwrap_or(&[]);
    let out = encoder.encode(input, end)?;
    *body = Some(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CompressionConfig {
        CompressionConfig {
            enabled: true,
            gzip_level: 5,
            brotli_level: 5,
            zstd_level: 3,
            min_length: 256,
            types: vec![
                "text/html".into(),
                "application/json".into(),
                "text/*".into(),
            ],
        }
    }

    #[test]
    fn negotiation_table() {
        let cases = [
            ("gzip", Encoding::Gzip),
            ("gzip, deflate, br", Encoding::Brotli),
            ("gzip, deflate, br, zstd", Encoding::Brotli),
            ("zstd, gzip", Encoding::Zstd),
            ("br;q=0.5, gzip", Encoding::Gzip),
            ("br;q=0, gzip;q=0.1", Encoding::Gzip),
            ("gzip;q=0", Encoding::Identity),
            ("deflate", Encoding::Identity),
            ("*", Encoding::Identity),
            ("", Encoding::Identity),
            ("GZIP", Encoding::Gzip),
            ("br;q=1.0", Encoding::Brotli),
            ("br;q=abc, gzip", Encoding::Gzip),
        ];
        for (header, want) in cases {
            let v = HeaderValue::from_static(header);
            assert_eq!(negotiate(Some(&v), &cfg()), want, "{header:?}");
        }
        assert_eq!(negotiate(None, &cfg()), Encoding::Identity);
        let mut off = cfg();
        off.brotli_level = 0;
        assert_eq!(
            negotiate(Some(&HeaderValue::from_static("br, gzip")), &off),
            Encoding::Gzip
        );
    }

    fn resp(ct: &str, len: Option<usize>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        if let Some(len) = len {
            r.insert_header("content-length", len).unwrap();
        }
        r.insert_header("etag", "\"abc\"").unwrap();
        r
    }

    #[test]
    fn only_listed_types_above_the_minimum_are_compressed() {
        let c = cfg();
        let mut r = resp("text/html; charset=utf-8", Some(1000));
        assert!(start(&mut r, Encoding::Gzip, &c).is_some());
        assert_eq!(r.headers["content-encoding"], "gzip");
        assert_eq!(r.headers["vary"], "Accept-Encoding");
        assert_eq!(r.headers["etag"], "W/\"abc\"");
        assert!(!r.headers.contains_key("content-length"));

        let mut small = resp("text/html", Some(100));
        assert!(start(&mut small, Encoding::Gzip, &c).is_none());
        assert_eq!(
            small.headers["vary"], "Accept-Encoding",
            "Vary is set even when not compressed"
        );

        let mut image = resp("image/png", Some(10_000));
        assert!(start(&mut image, Encoding::Gzip, &c).is_none());
        assert!(!image.headers.contains_key("vary"));

        let mut css = resp("text/css", None);
        assert!(
            start(&mut css, Encoding::Brotli, &c).is_some(),
            "prefix text/* matches"
        );

        let mut encoded = resp("text/html", Some(1000));
        encoded.insert_header("content-encoding", "gzip").unwrap();
        assert!(
            start(&mut encoded, Encoding::Gzip, &c).is_none(),
            "never double-compress"
        );

        let mut identity = resp("text/html", Some(1000));
        assert!(start(&mut identity, Encoding::Identity, &c).is_none());
    }

    #[test]
    fn gzip_round_trip() {
        let mut r = resp("text/plain", Some(2000));
        let mut enc = start(&mut r, Encoding::Gzip, &cfg()).unwrap();
        let text = "hello edgepop ".repeat(200);
        let mut a = Some(Bytes::from(text[..1000].to_owned()));
        encode(&mut enc, &mut a, false).unwrap();
        let mut b = Some(Bytes::from(text[1000..].to_owned()));
        encode(&mut enc, &mut b, true).unwrap();
        let mut all = a.unwrap().to_vec();
        all.extend_from_slice(&b.unwrap());
        assert!(
            all.len() < text.len() / 4,
            "compressed {} of {}",
            all.len(),
            text.len()
        );
        assert_eq!(&all[..2], &[0x1f, 0x8b], "gzip magic");
    }
}
