//! `proxy.toml`: the file format (`file`), the validated model the rest of the
//! program uses (`model`), and the checks that turn one into the other while
//! reporting every problem at once. `validate` drives them: it expands
//! `${VAR}` (`env`), walks the file with the `checker` (key paths in
//! `keypath`, known keys in `schema`, "did you mean" in `suggest`) and
//! renders what it found (`error`). Each section's checks sit next to it:
//! `server` (with `[admin]` and `[cache]`), `redis`, `session` (with
//! `[identity.headers]`), `jwt`, `route` (with `[[upstream]]`), `rate_limit`.

mod checker;
mod env;
mod error;
pub(crate) mod file;
mod jwt;
mod keypath;
pub mod model;
mod profile;
mod rate_limit;
mod redis;
mod route;
mod schema;
mod server;
mod session;
mod suggest;
mod tls;
mod validate;
mod values;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use route::warnings;
pub use schema::accepted_keys;
pub use validate::{load, parse};
