//! Cookie headers and Authorization values from arbitrary bytes: finding the
//! session cookie, verifying express signatures and reading bearer tokens
//! must never panic, and an accepted id always round-trips through signing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiongate::credential::bearer::bearer_token;
use sessiongate::credential::cookie::{express_sign, find_cookie, plain_id, ExpressVerifier};

fuzz_target!(|data: &[u8]| {
    let secrets = vec!["fuzz-secret".to_owned(), "older-secret".to_owned()];
    let verifier = ExpressVerifier::new(&secrets);
    let halves = data.split(|b| *b == b'\n');
    if let Some(raw) = find_cookie(halves, "connect.sid") {
        if let Some(id) = verifier.verify(raw) {
            // An id that verified signs and verifies again.
            let signed = express_sign(id.as_str(), "fuzz-secret");
            assert_eq!(verifier.verify(&signed).as_ref().map(|i| i.as_str()), Some(id.as_str()));
        }
        let _ = plain_id(raw);
    }
    if let Some(token) = bearer_token(data) {
        assert!(!token.is_empty() && !token.contains(' '));
        let _ = plain_id(token);
    }
});
