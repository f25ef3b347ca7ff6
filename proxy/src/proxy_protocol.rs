//! PROXY protocol v1/v2 on accepted connections, before TLS or HTTP.
//!
//! The header is parsed with the `ppp` crate. It is trusted only when the TCP peer is inside one of the listener's
//! trusted CIDRs; a header from anyone else is a protocol error, as is a malformed header or one that does not
//! arrive within the timeout. Bytes read past the header are put back with `Stream::rewind`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use pingora::protocols::l4::stream::Stream as L4Stream;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;

use crate::config::ProxyProtocol;

/// Longest v1 header (RFC: 107 bytes).
const V1_MAX: usize = 107;
/// Longest v2 header we accept (16-byte preamble + TLVs). Fly's headers are far smaller.
const V2_MAX: usize = 16 + 2048;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection was refused during PROXY header processing (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Required header absent.
    Missing,
    /// A header from a peer outside the trusted CIDRs.
    Untrusted,
    /// Unparseable or oversized.
    Malformed,
    /// Not complete within the timeout.
    Timeout,
    /// The peer closed or the socket failed.
    Io,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Untrusted => "untrusted",
            Refusal::Malformed => "malformed",
            Refusal::Timeout => "timeout",
            Refusal::Io => "io",
        }
    }
}

/// Is `peer` allowed to send a PROXY header?
pub(crate) fn trusted(peer: IpAddr, cidrs: &[IpNet]) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    cidrs.iter().any(|net| net.contains(&peer))
}

/// Reads an optional or required PROXY header from `stream`.
///
/// Returns the client address the header announces (`None` when there was no header, or a `LOCAL`/`UNKNOWN`
/// header, in which case the TCP peer is the client).
pub(crate) async fn read_header(
    stream: &mut L4Stream,
    peer: SocketAddr,
    mode: ProxyProtocol,
    cidrs: &[IpNet],
    timeout: Duration,
) -> Result<Option<SocketAddr>, Refusal> {
    if mode == ProxyProtocol::Off {
        return Ok(None);
    }
    let is_trusted = trusted(peer.ip(), cidrs);
    if mode == ProxyProtocol::Required && !is_trusted {
        return Err(Refusal::Untrusted);
    }
    match tokio::time::timeout(timeout, read(stream, mode)).await {
        Err(_) => Err(Refusal::Timeout),
        Ok(Err(r)) => Err(r),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(_))) if !is_trusted => Err(Refusal::Untrusted),
        Ok(Ok(Some(addr))) => Ok(addr),
    }
}

/// `Ok(None)`: no header (optional mode). `Ok(Some(None))`: a header without a usable address.
async fn read(
    stream: &mut L4Stream,
    mode: ProxyProtocol,
) -> Result<Option<Option<SocketAddr>>, Refusal> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| Refusal::Io)?;
        if n == 0 {
            return Err(Refusal::Io);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Parsed::NeedMore => continue,
            Parsed::NotProxy => {
                return if mode == ProxyProtocol::Required {
                    Err(Refusal::Missing)
                } else {
                    stream.rewind(&buf);
                    Ok(None)
                };
            }
            Parsed::Malformed => return Err(Refusal::Malformed),
            Parsed::Header { len, client } => {
                if len < buf.len() {
                    stream.rewind(&buf[len..]);
                }
                return Ok(Some(client));
            }
        }
    }
}

/// What the bytes received so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes to decide.
    NeedMore,
    /// The connection does not start with a PROXY header.
    NotProxy,
    /// A broken or oversized header.
    Malformed,
    /// A complete header of `len` bytes announcing `client` (`None`: LOCAL/UNKNOWN).
    Header {
        /// Header length; the bytes after it belong to TLS/HTTP.
        len: usize,
        /// Announced source address.
        client: Option<SocketAddr>,
    },
}

/// Parses a PROXY v1/v2 header at the start of `buf` (pure: no I/O, no allocation).
pub fn parse(buf: &[u8]) -> Parsed {
    let kind = match classify(buf) {
        Kind::NeedMore => return Parsed::NeedMore,
        Kind::NotProxy => return Parsed::NotProxy,
        k => k,
    };
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        // A v1 header ends at the first CRLF: if it is there and the parser still wants more, it is malformed.
        let v1_ended =
            matches!(kind, Kind::V1) && buf.windows(2).take(V1_MAX).any(|w| w == b"\r\n");
        let too_long = buf.len() >= V2_MAX || (matches!(kind, Kind::V1) && buf.len() >= V1_MAX);
        return if v1_ended || too_long {
            Parsed::Malformed
        } else {
            Parsed::NeedMore
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) if h.header.ends_with("\r\n") => Parsed::Header {
            len: h.header.len(),
            client: v1_addr(&h.addresses),
        },
        // ppp also splits at a bare LF, so it accepts `PROXY UNKNOWN x \n` or `... 1 2 \n` with no CR in the
        // buffer, and then refuses the same bytes once data with a CRLF follows (found by fuzzing). The header
        // ends at the first CRLF: until it arrives, wait.
        HeaderResult::V1(Ok(_)) if buf.len() < V1_MAX => Parsed::NeedMore,
        HeaderResult::V2(Ok(h)) if h.len() <= V2_MAX => Parsed::Header {
            len: h.len(),
            client: match h.command {
                v2::Command::Local => None,
                v2::Command::Proxy => v2_addr(&h.addresses),
            },
        },
        _ => Parsed::Malformed,
    }
}

enum Kind {
    NeedMore,
    NotProxy,
    V1,
    V2,
}

/// Decides from the first bytes whether a PROXY header starts here. HTTP methods such as `POST` and `PRI` also
/// start with `P`, so v1 needs six bytes to tell.
fn classify(buf: &[u8]) -> Kind {
    const V1_PREFIX: &[u8] = b"PROXY ";
    let Some(&first) = buf.first() else {
        return Kind::NeedMore;
    };
    let (prefix, kind): (&[u8], Kind) = match first {
        b'P' => (V1_PREFIX, Kind::V1),
        b'\r' => (V2_SIGNATURE, Kind::V2),
        _ => return Kind::NotProxy,
    };
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        Kind::NotProxy
    } else if n < prefix.len() {
        Kind::NeedMore
    } else {
        kind
    }
}

fn v1_addr(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_addr(a: &v2::Addresses) -> Option<SocketAddr> {
    match a {
        v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "more"),
            (b"P", "more"),
            (b"PROX", "more"),
            (b"PROXY TCP4", "v1"),
            (b"POST / HTTP/1.1", "no"),
            (b"PRI * HTTP/2.0", "no"),
            (b"GET / HTTP/1.1", "no"),
            (b"\x16\x03\x01", "no"),
            (b"\r\n\r\n\0\r\nQUIT\n\x21", "v2"),
        ];
        for (input, want) in cases {
            let got = match classify(input) {
                Kind::NeedMore => "more",
                Kind::NotProxy => "no",
                Kind::V1 => "v1",
                Kind::V2 => "v2",
            };
            assert_eq!(got, want, "input {input:?}");
        }
    }

    /// Runs `read_header` on a real loopback connection that first sends `input`.
    async fn parse(
        input: &'static [u8],
        mode: ProxyProtocol,
    ) -> (Result<Option<SocketAddr>, Refusal>, Vec<u8>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(input).await.unwrap();
            c.shutdown().await.unwrap();
            // keep the socket open until the server is done reading
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let (tcp, peer) = listener.accept().await.unwrap();
        let mut stream: L4Stream = tcp.into();
        let nets = vec!["127.0.0.0/8".parse().unwrap()];
        let result = read_header(&mut stream, peer, mode, &nets, Duration::from_secs(1)).await;
        let mut rest = Vec::new();
        if result.is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(300), stream.read_to_end(&mut rest))
                .await;
        }
        client.await.unwrap();
        (result, rest)
    }

    #[tokio::test]
    #[allow(clippy::type_complexity)] // a table of (input, mode, expected, rest) rows
    async fn header_table() {
        use ProxyProtocol::{Optional, Required};
        let v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xcb\x00\x71\x07\x0a\x00\x00\x01\x15\xb3\x00\x50GET";
        let cases: Vec<(
            &'static [u8],
            ProxyProtocol,
            Result<Option<&str>, Refusal>,
            &[u8],
        )> = vec![
            (
                b"PROXY TCP4 198.51.100.9 10.0.0.1 4242 80\r\nGET /",
                Required,
                Ok(Some("198.51.100.9:4242")),
                b"GET /",
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 443\r\n",
                Required,
                Ok(Some("[2001:db8::1]:4242")),
                b"",
            ),
            (b"PROXY UNKNOWN\r\nGET /", Required, Ok(None), b"GET /"),
            (v2, Required, Ok(Some("203.0.113.7:5555")), b"GET"),
            (
                b"PROXY TCP4 not-an-ip\r\n\r\n",
                Required,
                Err(Refusal::Malformed),
                b"",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
                Required,
                Err(Refusal::Malformed),
                b"",
            ),
            (
                b"GET / HTTP/1.1\r\n\r\n",
                Required,
                Err(Refusal::Missing),
                b"",
            ),
            (
                b"GET / HTTP/1.1\r\n\r\n",
                Optional,
                Ok(None),
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            (
                b"POST / HTTP/1.1\r\n\r\n",
                Optional,
                Ok(None),
                b"POST / HTTP/1.1\r\n\r\n",
            ),
            (b"PROXY TCP4 1.2.3.4", Required, Err(Refusal::Io), b""),
        ];
        for (input, mode, want, rest_want) in cases {
            let (got, rest) = parse(input, mode).await;
            let got = got.map(|a| a.map(|a| a.to_string()));
            let want = want.map(|a| a.map(str::to_owned));
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(input));
            assert_eq!(
                rest,
                rest_want,
                "bytes after the header for {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_v1_header_ends_at_crlf_not_at_lf() {
        // ppp accepts these as whole headers although no CRLF ends them (found by the proxy_header fuzz target;
        // fuzz/corpus/proxy_header/crash-v1-lf-*): whatever follows decides, so they are incomplete until then.
        for head in [
            &b"PROXY UNKNOWN ffT\0\0':  \n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \n",
        ] {
            assert_eq!(super::parse(head), Parsed::NeedMore, "{head:?}");
            let mut more = head.to_vec();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(super::parse(&more), Parsed::Malformed, "{more:?}");
        }
    }

    #[test]
    fn trust_table() {
        let nets: Vec<IpNet> = vec![
            "172.16.0.0/16".parse().unwrap(),
            "fdaa::/16".parse().unwrap(),
        ];
        for (ip, want) in [
            ("172.16.3.4", true),
            ("172.17.0.1", false),
            ("::ffff:172.16.0.9", true),
            ("fdaa::1", true),
            ("2001:db8::1", false),
        ] {
            assert_eq!(trusted(ip.parse().unwrap(), &nets), want, "{ip}");
        }
    }
}
