//! The PROXY protocol v1/v2 parser: never panics; a header never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgepop::fuzz_api::proxy_header(data);
});
