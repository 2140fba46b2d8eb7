//! `proxy.toml`: the file format (`file`), the validated model the rest of the
//! program uses (`model`), and the checks that turn one into the other while
//! reporting every problem at once (`validate`).

pub mod file;
pub mod model;
pub mod validate;

pub use model::*;
pub use validate::{accepted_keys, load, parse, ConfigError, ConfigErrors};
