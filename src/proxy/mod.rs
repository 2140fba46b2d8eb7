//! Pingora glue: the `ProxyHttp` implementation (`gateway`), the server built
//! from `proxy.toml` (`service`), the admin listener (`admin`), the access
//! log (`access`), live reload (`reload`) and lean idle connections (`idle`).

pub mod access;
pub mod admin;
pub mod fast;
pub mod forwarded;
pub mod gateway;
pub mod head;
pub mod idle;
pub mod listen;
pub mod reload;
pub mod service;
