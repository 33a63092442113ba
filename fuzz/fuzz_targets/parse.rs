//! Arbitrary bytes as `manifest.json` (JSON parse + checks) and as a shard header (decode +
//! checks against the file length): an error, never a panic, an abort or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vantix_read::testing::parse_untrusted(data);
});
