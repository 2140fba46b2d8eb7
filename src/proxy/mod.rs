//! Pingora glue: the `ProxyHttp` implementation (`gateway`), the server built
//! from `proxy.toml` (`service`), the admin listener (`admin`), the access
//! log (`access`) and live reload (`reload`).

pub mod access;
pub mod admin;
pub mod gateway;
pub mod reload;
pub mod service;
