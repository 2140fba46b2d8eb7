//! Where the session cache's invalidation channel reports what changed in
//! Redis, for whoever else must know (live exchanges, `live`), without the
//! cache knowing who listens: a leaf both sides use.

use std::sync::OnceLock;

/// What the invalidation channel learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// This key changed or ended, by whatever command.
    Key(&'a str),
    /// Every key may have changed (FLUSHDB, FLUSHALL, a swapped database).
    All,
    /// The channel (of the cache identified by the number: a gateway with
    /// profiles on several Redis servers has one per server) is down:
    /// changes go unheard until it is back.
    Lost(usize),
    /// That channel is back; what changed meanwhile is unknown.
    Back(usize),
}

static LISTENER: OnceLock<fn(Change<'_>)> = OnceLock::new();

/// Sets the one listener (at start).
pub fn listen(listener: fn(Change<'_>)) {
    let _ = LISTENER.set(listener);
}

/// Tells the listener, if there is one.
pub fn report(change: Change<'_>) {
    if let Some(listener) = LISTENER.get() {
        listener(change);
    }
}
