//! `proxy.toml`: the file format (`file`), the validated model the rest of the
//! program uses (`model`), and the checks that turn one into the other while
//! reporting every problem at once: one module per section (`server` with
//! `[admin]` and `[cache]`, `redis`, `session` with `[identity.headers]`,
//! `jwt`, `route` with `[[upstream]]`, `rate_limit`), driven by `validate`,
//! which holds the shared machinery (key paths, positions, `${VAR}`
//! expansion, type errors, unknown keys) and collects every error.

pub mod file;
mod jwt;
pub mod model;
mod rate_limit;
mod redis;
mod route;
mod server;
mod session;
pub mod validate;

pub use model::*;
pub use route::warnings;
pub use validate::{accepted_keys, load, parse, ConfigError, ConfigErrors};
