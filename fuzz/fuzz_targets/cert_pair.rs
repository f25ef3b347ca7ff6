//! The certificate loader on a chain and key (split at `--8<--`): never panics, never shows key bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgepop::fuzz_api::cert_pair(data);
});
