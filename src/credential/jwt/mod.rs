//! Bearer JWTs (`[session] bearer = "jwt"`): keys are parsed and checked once,
//! at load time; per token the algorithm allowlist is enforced before any key is
//! chosen, and a verified token yields its claims and the id of its Redis key.
//!
//! `keys` loads and matches keys; `verify` checks tokens with them.

mod keys;
mod verify;

pub use keys::*;
pub use verify::*;

#[cfg(test)]
mod tests;
