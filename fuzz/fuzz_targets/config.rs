//! proxy.toml text from arbitrary bytes: the loader reports errors (with
//! positions inside the text) and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiongate::config::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Upstream addresses are resolved with DNS and `*_file` keys are read from
    // disk at load time: keep the fuzzer off the network and the filesystem.
    if text.contains("addrs") || text.contains("_file") {
        return;
    }
    let env = |name: &str| (name == "SET").then(|| "value".to_owned());
    if let Err(errors) = parse("fuzz.toml", text, &env) {
        let lines = text.lines().count().max(1) + 1;
        for e in &errors.errors {
            assert!(e.line <= lines, "{e:?} is past the end of the text");
        }
        let _ = errors.to_string();
    }
});
