//! The ways in and what they share.
//!
//! Transports and engines: the HTTP/1 connection loop (`h1`), which reads
//! each request head and hands it to the lean engine (`lean`) or to Pingora's
//! full proxy (`full`), and the HTTP/2 loop (`h2`), which hands each stream
//! to the lean engine's HTTP/2 side (`lean_h2`) or to the full proxy. The
//! lean engine keeps its upstream connections in `pool`. What every engine shares lives in rooms none of them
//! owns: the verdict (`verdict`), the upstream request builder (`request`,
//! over `head`, `owned` and `forwarded`), the response rules (`response`) and
//! the gateway's own answers (`answer`). No engine imports another.
//!
//! Around them: the server built from `proxy.toml` (`service`, `listen`), the
//! admin listener (`admin`), the access log (`access`) and live reload
//! (`reload`).

mod access;
mod admin;
mod answer;
mod forwarded;
mod full;
mod h1;
mod h2;
mod head;
mod lean;
mod lean_h2;
mod listen;
mod owned;
mod pool;
mod progress;
pub mod reload;
mod request;
mod response;
pub mod service;
mod tunnel;
mod verdict;
