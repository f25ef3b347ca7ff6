//! The disk cache entry decoder: never panics, never accepts an entry whose checksum does not match.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgepop::fuzz_api::cache_entry(data);
});
