//! Credentials taken from a request: a session id from a cookie (plain or
//! express-session signed) or from an `Authorization: Bearer` header.
//! Session ids are secrets: nothing here ever prints one.

pub mod bearer;
pub mod cookie;
pub mod jwt;

use std::fmt;

/// Longest session id accepted, in bytes: a cookie's id after
/// percent-decoding, or a JWT's id claim.
pub const MAX_ID_LEN: usize = 256;

/// Where a credential came from (decides e.g. `WWW-Authenticate: Bearer` on 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Cookie,
    Bearer,
}

/// A session id taken from a request.
///
/// Its `Debug` impl does not print the id (it prints `SessionId(..)`): ids are
/// secrets and must never reach logs.
/// Shared, not copied: a clone (a remembered cookie's id, say) is a count.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(std::sync::Arc<str>);

impl SessionId {
    pub fn new(s: String) -> Self {
        SessionId(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// A session id and where it was found.
#[derive(Debug, Clone)]
pub struct Credential {
    pub id: SessionId,
    pub source: CredentialSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_id() {
        let id = SessionId::new("super-secret-id".to_string());
        assert_eq!(format!("{id:?}"), "SessionId(..)");
        let cred = Credential {
            id: id.clone(),
            source: CredentialSource::Cookie,
        };
        let shown = format!("{cred:?} {cred:#?}");
        assert!(!shown.contains("super-secret-id"), "{shown}");
        assert_eq!(id.as_str(), "super-secret-id");
    }
}
