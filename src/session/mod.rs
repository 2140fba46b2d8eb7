//! Sessions: what a resolved session looks like (`codec`) and where it is
//! read from (`store`).

pub mod cache;
pub(crate) mod codec;
pub mod formats;
pub(crate) mod pipe;
pub mod store;
pub(crate) mod topology;
pub(crate) mod tracking;

/// How long after a failed connection attempt the next one is made; calls
/// in between fail at once instead of queueing behind a dead server. Here,
/// not in `topology` or `pipe`, so that both use it and neither imports the
/// other for it.
pub(crate) const RETRY_AFTER_MS: u64 = 100;

pub use codec::Session;
pub use store::{RawSession, RedisStore, SessionStore, StoreError};
