//! Session values in every format the gateway reads, from arbitrary bytes:
//! msgpack, pickle, PHP's `php` and `php_serialize`. None may panic, run
//! anything, or build more than the caps allow; what is read is a map.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiongate::session::formats;

fuzz_target!(|data: &[u8]| {
    for read in [
        formats::msgpack,
        formats::pickle,
        formats::php,
        formats::php_serialize,
    ] {
        if let Ok(doc) = read(data) {
            assert!(doc.is_object());
        }
    }
});
