//! Request paths from arbitrary text: normalisation never panics, is
//! idempotent, and never leaves a dot segment or a double slash behind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiongate::route::path::normalise_path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = normalise_path(raw) {
        let again = normalise_path(&normal).expect("a normal path stays valid");
        assert_eq!(again, normal);
        assert!(!normal.contains("//") && !normal.contains("/./") && !normal.contains("/../"));
        assert!(!normal.ends_with("/.") && !normal.ends_with("/.."));
    }
});
