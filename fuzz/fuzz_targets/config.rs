//! The TOML config loader: `edgepop::Config::parse` errors on any text, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgepop::fuzz_api::config(data);
});
