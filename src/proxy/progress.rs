//! What a transport learns of a request's progress from the engine serving
//! it, without either importing the other: the transport scopes a flag
//! around the engine's future, and the engine raises it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

tokio::task_local! {
    /// Raised when the engine accepted the head it was handed and started
    /// a request (the HTTP/1 loop tells a refused head from a served one).
    pub(crate) static STARTED: Arc<AtomicBool>;
    /// Raised when the response head is about to be written (the HTTP/2
    /// loop's request deadline ends there).
    pub(crate) static RESPONDING: Arc<AtomicBool>;
}

/// Called by an engine when a request starts (its context is created).
pub(crate) fn request_started() {
    let _ = STARTED.try_with(|started| started.store(true, Ordering::Relaxed));
}

/// Called by an engine when it writes a response head.
pub(crate) fn response_started() {
    let _ = RESPONDING.try_with(|flag| flag.store(true, Ordering::Relaxed));
}
