//! Sessions: what a resolved session looks like (`codec`) and where it is
//! read from (`store`).

pub mod cache;
pub mod codec;
pub mod pipe;
pub mod store;
pub mod topology;
pub mod tracking;

pub use codec::Session;
pub use store::{RawSession, RedisStore, SessionStore, StoreError};
