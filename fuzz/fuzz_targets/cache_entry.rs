//! The disk cache entry decoder: never panics, never accepts an entry whose checksum does not match.
//!
//! Each input also runs a second time with both CRC32s (header and trailing) made right, so that mutations of the
//! lengths, the primary key and the meta parts reach the part decoder and `CacheMeta::deserialize` instead of
//! stopping at the checksum. A crash in that second run: save the fixed bytes (`fixed_checksums`) to the corpus,
//! where the stable test replays them as they are.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `data` with the header crc (after the 48-byte fixed header and the primary key) and the trailing crc recomputed
/// as the entry writer would; `None` when `data` is too short to hold both.
fn fixed_checksums(data: &[u8]) -> Option<Vec<u8>> {
    let primary = u32::from_le_bytes(data.get(12..16)?.try_into().ok()?) as usize;
    let header_end = 48usize.checked_add(primary)?;
    if data.len() < header_end.checked_add(8)? {
        return None;
    }
    let mut fixed = data.to_vec();
    let crc = crc32fast::hash(&fixed[..header_end]);
    fixed[header_end..header_end + 4].copy_from_slice(&crc.to_le_bytes());
    let at = fixed.len() - 4;
    let crc = crc32fast::hash(&fixed[..at]);
    fixed[at..].copy_from_slice(&crc.to_le_bytes());
    Some(fixed)
}

fuzz_target!(|data: &[u8]| {
    let _ = edgepop::fuzz_api::cache_entry(data);
    if let Some(fixed) = fixed_checksums(data) {
        let _ = edgepop::fuzz_api::cache_entry(&fixed);
    }
});
