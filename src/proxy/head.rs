//! The edits that make an upstream request head say what was decided, on
//! either engine's form of it: Pingora's [`RequestHeader`] (the full proxy's,
//! which keeps a header-case map in step with its headers) or plain
//! [`http::request::Parts`] (the lean path's, before it becomes one). The same
//! code decides the edits for both, so both engines forward the same head.

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use pingora::http::RequestHeader;
use pingora::{ErrorType, OrErr, Result};

pub trait HeadEdit {
    fn headers(&self) -> &HeaderMap;
    /// Sets `name` to `value`, replacing every earlier value.
    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &HeaderName);
    fn set_uri(&mut self, uri: Uri);
}

impl HeadEdit for RequestHeader {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }

    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }

    fn set_uri(&mut self, uri: Uri) {
        RequestHeader::set_uri(self, uri);
    }
}

/// Straight on the header map: no case map to keep in step, so a name is
/// not spelled out and parsed again per insert, as `insert_header` does.
impl HeadEdit for http::request::Parts {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.headers
            .try_insert(name, value)
            .or_err(ErrorType::InvalidHTTPHeader, "too many headers")?;
        Ok(())
    }

    fn remove(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }

    fn set_uri(&mut self, uri: Uri) {
        self.uri = uri;
    }
}

/// A header value made from text the gateway composed.
pub fn value(text: String) -> Result<HeaderValue> {
    HeaderValue::try_from(text).or_err(ErrorType::InvalidHTTPHeader, "invalid header value")
}
