//! The entry file format.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "EDGEPOPC"
//!      8     2  version (u16 LE) = 1
//!     10     2  flags (u16 LE) = 0, reserved
//!     12     4  primary key length P (u32 LE), <= 64 KiB
//!     16     4  meta0 length M0 (u32 LE), <= 4 MiB   (CacheMeta::serialize().0, internal meta)
//!     20     4  meta1 length M1 (u32 LE), <= 4 MiB   (CacheMeta::serialize().1, response header)
//!     24     8  body length B (u64 LE)
//!     32    16  combined cache hash (must match the file name)
//!     48     P  primary key bytes
//!   48+P     4  header crc32 (u32 LE) over bytes [0, 48+P)
//!   52+P    M0  meta0
//!           M1  meta1
//!            B  body
//!            4  crc32 (u32 LE) over every byte before it
//! ```
//!
//! The header crc lets the index loader trust the primary key and lengths after reading only the
//! header; the trailing crc covers everything, so a full read is verified before anything is served.
//! All integers are little endian. A file whose length differs from the one the header implies is
//! torn or truncated.

use std::io::{self, Read, Write};

use pingora::cache::key::HashBinary;

pub(crate) const MAGIC: [u8; 8] = *b"EDGEPOPC";
pub(crate) const VERSION: u16 = 1;
pub(crate) const FIXED_LEN: usize = 48;
pub(crate) const MAX_PRIMARY_LEN: usize = 64 * 1024;
pub(crate) const MAX_META_LEN: usize = 4 * 1024 * 1024;
const CRC_LEN: usize = 4;

/// Why an entry file was rejected. Every variant makes the entry a miss that is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FormatError {
    Truncated,
    BadMagic,
    BadVersion(u16),
    BadLength,
    HeaderChecksum,
    Checksum,
    WrongHash,
    TooLarge,
    /// The parts check out but the meta does not decode as a `CacheMeta`.
    BadMeta,
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated"),
            Self::BadMagic => f.write_str("bad magic"),
            Self::BadVersion(v) => write!(f, "unknown version {v}"),
            Self::BadLength => f.write_str("lengths do not match the file size"),
            Self::HeaderChecksum => f.write_str("header checksum mismatch"),
            Self::Checksum => f.write_str("checksum mismatch"),
            Self::WrongHash => f.write_str("entry belongs to another key"),
            Self::TooLarge => f.write_str("body larger than max_object_bytes"),
            Self::BadMeta => f.write_str("meta does not decode"),
        }
    }
}

/// The lengths in a fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fixed {
    pub(crate) primary_len: usize,
    pub(crate) meta0_len: usize,
    pub(crate) meta1_len: usize,
    pub(crate) body_len: u64,
    pub(crate) hash: HashBinary,
}

impl Fixed {
    /// Length of the header including the primary key and its crc.
    pub(crate) fn header_len(&self) -> usize {
        FIXED_LEN + self.primary_len + CRC_LEN
    }

    /// Length of the whole file.
    pub(crate) fn file_len(&self) -> u64 {
        (self.header_len() + self.meta0_len + self.meta1_len + CRC_LEN) as u64 + self.body_len
    }
}

pub(crate) fn parse_fixed(buf: &[u8]) -> Result<Fixed, FormatError> {
    let buf = buf.get(..FIXED_LEN).ok_or(FormatError::Truncated)?;
    if buf[0..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u16::from_le_bytes([buf[8], buf[9]]);
    if version != VERSION {
        return Err(FormatError::BadVersion(version));
    }
    let u32_at = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let primary_len = u32_at(12) as usize;
    let meta0_len = u32_at(16) as usize;
    let meta1_len = u32_at(20) as usize;
    let mut body = [0u8; 8];
    body.copy_from_slice(&buf[24..32]);
    let body_len = u64::from_le_bytes(body);
    if primary_len > MAX_PRIMARY_LEN || meta0_len > MAX_META_LEN || meta1_len > MAX_META_LEN {
        return Err(FormatError::BadLength);
    }
    // bodies are bounded by max_object_bytes long before this; the cap keeps file_len from overflowing
    if body_len > u64::from(u32::MAX) * 16 {
        return Err(FormatError::BadLength);
    }
    let mut hash = HashBinary::default();
    hash.copy_from_slice(&buf[32..48]);
    Ok(Fixed {
        primary_len,
        meta0_len,
        meta1_len,
        body_len,
        hash,
    })
}

/// Checks the header crc; `buf` holds at least `fixed.header_len()` bytes. Returns the primary key.
pub(crate) fn check_header<'a>(fixed: &Fixed, buf: &'a [u8]) -> Result<&'a [u8], FormatError> {
    let end = FIXED_LEN + fixed.primary_len;
    let stored = buf.get(end..end + CRC_LEN).ok_or(FormatError::Truncated)?;
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    if crc32fast::hash(&buf[..end]) != stored {
        return Err(FormatError::HeaderChecksum);
    }
    Ok(&buf[FIXED_LEN..end])
}

/// Byte ranges of a fully verified entry inside its file buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) fixed: Fixed,
    pub(crate) primary: std::ops::Range<usize>,
    pub(crate) meta0: std::ops::Range<usize>,
    pub(crate) meta1: std::ops::Range<usize>,
    pub(crate) body: std::ops::Range<usize>,
}

/// Verifies a whole entry file held in `buf`: magic, version, lengths, both checksums and that
/// it belongs to `hash`.
pub(crate) fn verify(buf: &[u8], hash: &HashBinary) -> Result<Layout, FormatError> {
    let fixed = parse_fixed(buf)?;
    if fixed.file_len() != buf.len() as u64 {
        return Err(if (buf.len() as u64) < fixed.file_len() {
            FormatError::Truncated
        } else {
            FormatError::BadLength
        });
    }
    check_header(&fixed, buf)?;
    let crc_at = buf.len() - CRC_LEN;
    let stored = u32::from_le_bytes([
        buf[crc_at],
        buf[crc_at + 1],
        buf[crc_at + 2],
        buf[crc_at + 3],
    ]);
    if crc32fast::hash(&buf[..crc_at]) != stored {
        return Err(FormatError::Checksum);
    }
    if &fixed.hash != hash {
        return Err(FormatError::WrongHash);
    }
    let primary = FIXED_LEN..FIXED_LEN + fixed.primary_len;
    let meta0 = fixed.header_len()..fixed.header_len() + fixed.meta0_len;
    let meta1 = meta0.end..meta0.end + fixed.meta1_len;
    let body = meta1.end..crc_at;
    Ok(Layout {
        fixed,
        primary,
        meta0,
        meta1,
        body,
    })
}

/// Writes one entry to `out`, returning the number of bytes written.
///
/// Fails with `InvalidInput` if the primary key or a meta part is over its limit.
pub(crate) fn write_entry<W: Write>(
    out: &mut W,
    hash: &HashBinary,
    primary: &[u8],
    meta0: &[u8],
    meta1: &[u8],
    body: &[u8],
) -> io::Result<u64> {
    if primary.len() > MAX_PRIMARY_LEN || meta0.len() > MAX_META_LEN || meta1.len() > MAX_META_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "primary key or cache meta over the entry format limit",
        ));
    }
    let mut header = Vec::with_capacity(FIXED_LEN + primary.len() + CRC_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    // the casts are lossless: lengths were checked against limits far below u32::MAX
    header.extend_from_slice(&(primary.len() as u32).to_le_bytes());
    header.extend_from_slice(&(meta0.len() as u32).to_le_bytes());
    header.extend_from_slice(&(meta1.len() as u32).to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(hash);
    header.extend_from_slice(primary);
    let header_crc = crc32fast::hash(&header);
    header.extend_from_slice(&header_crc.to_le_bytes());

    let mut crc = crc32fast::Hasher::new();
    for part in [&header[..], meta0, meta1, body] {
        crc.update(part);
        out.write_all(part)?;
    }
    out.write_all(&crc.finalize().to_le_bytes())?;
    Ok((header.len() + meta0.len() + meta1.len() + body.len() + CRC_LEN) as u64)
}

/// Reads and checks just the header of an entry file (for the index loader).
/// Returns the fixed header and the primary key.
pub(crate) fn read_header<R: Read>(
    file: &mut R,
    file_len: u64,
) -> Result<(Fixed, Vec<u8>), ReadError> {
    let mut buf = vec![0u8; FIXED_LEN];
    read_exact(file, &mut buf)?;
    let fixed = parse_fixed(&buf)?;
    if fixed.file_len() != file_len {
        return Err(if file_len < fixed.file_len() {
            FormatError::Truncated
        } else {
            FormatError::BadLength
        }
        .into());
    }
    buf.resize(fixed.header_len(), 0);
    read_exact(file, &mut buf[FIXED_LEN..])?;
    let primary = check_header(&fixed, &buf)?.to_vec();
    Ok((fixed, primary))
}

fn read_exact<R: Read>(file: &mut R, buf: &mut [u8]) -> Result<(), ReadError> {
    file.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Format(FormatError::Truncated)
        } else {
            ReadError::Io(e)
        }
    })
}

/// A failed read: the file is bad, or the disk is.
#[derive(Debug)]
pub(crate) enum ReadError {
    Format(FormatError),
    Io(io::Error),
}

impl From<FormatError> for ReadError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: HashBinary = [7; 16];

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let n = write_entry(
            &mut out,
            &HASH,
            b"https://example.com/a",
            b"internal",
            b"HTTP/1.1 200 OK",
            b"hello body",
        )
        .unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        let layout = verify(&buf, &HASH).unwrap();
        assert_eq!(&buf[layout.primary.clone()], b"https://example.com/a");
        assert_eq!(&buf[layout.meta0.clone()], b"internal");
        assert_eq!(&buf[layout.meta1.clone()], b"HTTP/1.1 200 OK");
        assert_eq!(&buf[layout.body.clone()], b"hello body");
        assert_eq!(layout.fixed.file_len(), buf.len() as u64);

        let (fixed, primary) = read_header(&mut &buf[..], buf.len() as u64).unwrap();
        assert_eq!(fixed, layout.fixed);
        assert_eq!(primary, b"https://example.com/a");
    }

    #[test]
    fn every_truncation_is_rejected() {
        let buf = sample();
        for len in 0..buf.len() {
            assert!(verify(&buf[..len], &HASH).is_err(), "length {len} accepted");
        }
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let buf = sample();
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    verify(&bad, &HASH).is_err(),
                    "flip of byte {i} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn appended_garbage_and_wrong_key_are_rejected() {
        let mut buf = sample();
        assert_eq!(verify(&buf, &[8; 16]), Err(FormatError::WrongHash));
        buf.push(0);
        assert_eq!(verify(&buf, &HASH), Err(FormatError::BadLength));
        assert!(matches!(
            read_header(&mut &buf[..], buf.len() as u64),
            Err(ReadError::Format(FormatError::BadLength))
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            verify(b"not a cache entry at all", &HASH),
            Err(FormatError::Truncated)
        );
        let garbage = vec![0xa5; 4096];
        assert_eq!(verify(&garbage, &HASH), Err(FormatError::BadMagic));
        assert!(matches!(
            read_header(&mut &garbage[..], 4096),
            Err(ReadError::Format(FormatError::BadMagic))
        ));
    }

    #[test]
    fn oversized_parts_are_refused() {
        let big = vec![0; MAX_PRIMARY_LEN + 1];
        let err = write_entry(&mut Vec::new(), &HASH, &big, b"", b"", b"").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
