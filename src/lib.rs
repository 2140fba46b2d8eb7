//! sessiongate: an edge reverse proxy that lets a request reach an app only
//! when it carries a session the app itself keeps in Redis. For each request
//! the pipeline routes on a normalised path, extracts the credential (a plain
//! or express-signed cookie, or a bearer token), resolves it in Redis, checks
//! the route's roles, strips every client-sent copy of the identity headers
//! and sets them from the session before Pingora forwards the request.

pub mod acme;
mod background;
mod changes;
mod client_ip;
pub mod config;
pub mod credential;
pub mod explain;
mod identity;
mod labels;
pub mod live;
mod logout;
pub mod manage;
mod metrics;
pub mod pipeline;
pub mod proxy;
mod ratelimit;
mod reject;
pub mod route;
mod runtime_paths;
pub mod session;
pub mod tls;
mod upstream;
