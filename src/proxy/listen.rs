//! Listen addresses, prepared before Pingora binds them.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

/// A listen address ready for Pingora. Port 0 is resolved here to a real port
/// that stays reserved (an unlistened `SO_REUSEPORT` socket) until Pingora binds
/// it too, so the port printed at start is the one served, with no race.
pub struct ListenAddr {
    pub addr: SocketAddr,
    pub reuse_port: bool,
    _reservation: Option<Socket>,
}

pub fn prepare_listen(addr: &str) -> anyhow::Result<ListenAddr> {
    let requested = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve listen address {addr}"))?
        .next()
        .with_context(|| format!("listen address {addr} resolves to nothing"))?;
    if requested.port() != 0 {
        return Ok(ListenAddr {
            addr: requested,
            reuse_port: false,
            _reservation: None,
        });
    }
    let socket = Socket::new(
        Domain::for_address(requested),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&requested.into())?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .context("reserved listen address is not an IP address")?;
    Ok(ListenAddr {
        addr,
        reuse_port: true,
        _reservation: Some(socket),
    })
}
