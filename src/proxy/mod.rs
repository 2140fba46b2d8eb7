//! Pingora glue: the `ProxyHttp` implementation (`gateway`) and the server
//! built from `proxy.toml` (`service`).

pub mod gateway;
pub mod service;
