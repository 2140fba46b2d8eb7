//! Upstream connections of the lean engine: made (plain or TLS), kept per
//! worker thread and handed back without a task, and the one loop that
//! sends a request head on them, retrying where nothing can have been acted
//! on.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, ReadBuf};

use crate::config::Upstream;
use crate::pipeline::Pipeline;
use crate::tls::upstream::UpstreamTlsFiles;

/// Idle upstream connections kept per worker thread, over all upstreams.
const POOL_SIZE: usize = 1024;

/// How long an idle upstream connection is kept. Shorter than the idle
/// timeout of common app servers (Node's is 5 s), so a kept connection is
/// rarely one the upstream is about to close.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// Sends the head `build` makes (and `body`, whole) to the upstream of
/// `route` and reads the response head: on a kept connection when there is
/// one. A connection that cannot be made is tried on the next address (the
/// round robin moves on), once per other address, for idempotent methods; a
/// kept connection that fails before any response byte is retried once on a
/// new one. The session is made in `slot`, the caller's (a session is large:
/// returned, it would be copied on every request); what it may be kept as is
/// returned with it.
pub(crate) async fn send<'s>(
    pipeline: &Pipeline,
    route: usize,
    idempotent: bool,
    mut build: impl FnMut() -> Result<Box<RequestHeader>>,
    body: &[u8],
    slot: &'s mut Option<UpstreamSession>,
) -> Result<(Kept, &'s mut UpstreamSession)> {
    let settings = &pipeline.config.upstreams[pipeline.route(route).upstream];
    let mut connect_tries = if idempotent { settings.addrs.len() } else { 1 };
    let mut reuse_retry = true;
    let kept = loop {
        let addr = pipeline.upstream_addr(route);
        let kept = Kept::of(addr, settings);
        let (stream, reused) = match checkout(&kept) {
            Some(stream) if reuse_retry => (stream, true),
            _ => match connect(addr, settings).await {
                Ok(stream) => (stream, false),
                Err(e) => {
                    connect_tries -= 1;
                    if connect_tries == 0 {
                        return Err(e);
                    }
                    continue;
                }
            },
        };
        let req = build()?;
        let client = slot.insert(UpstreamSession::new(stream));
        client.read_timeout = Some(settings.read_timeout);
        let sent = async {
            client.write_request_header(req).await?;
            if !body.is_empty() {
                // Read whole before (its length announced): sent again as
                // it is when a kept connection was found dead.
                client.write_body(body).await?;
                client.finish_body().await?;
            }
            client.read_response().await
        };
        match sent.await.map_err(Error::into_up) {
            Ok(_) => break kept,
            // Only a connection found dead is retried: one that could not
            // take the request, or closed or reset without a response
            // byte (Pingora marks those retryable on reused connections).
            // A timeout is not: the upstream may be acting on the request.
            Err(e) if reused && retryable_on_reused(&e) => {
                tracing::debug!(error = %e, "a kept upstream connection failed; retrying on a new one");
                reuse_retry = false;
            }
            Err(e) => return Err(e),
        }
    };
    match slot {
        Some(client) => Ok((kept, client)),
        None => Err(Error::explain(
            ErrorType::InternalError,
            "no upstream session",
        )),
    }
}

/// Whether an error on a kept connection says the connection was dead
/// before the request could be acted on.
fn retryable_on_reused(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::WriteError)
        || matches!(
            e.retry,
            pingora::RetryType::ReusedOnly | pingora::RetryType::Decided(true)
        )
}

/// A new connection to `addr` of `upstream`: over TLS when it says so.
async fn connect(addr: SocketAddr, upstream: &Upstream) -> Result<Stream> {
    let timeout = upstream.connect_timeout;
    if let Some(tls) = &upstream.tls {
        return crate::tls::upstream::connect(tls, addr, timeout)
            .await
            .map_err(Error::into_up);
    }
    let connecting = tokio::net::TcpStream::connect(addr);
    let tcp = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let mut e = Error::because(ErrorType::ConnectError, format!("connecting to {addr}"), e);
            e.as_up();
            return Err(e);
        }
        Err(_) => {
            let mut e = Error::explain(ErrorType::ConnectTimedout, format!("connecting to {addr}"));
            e.as_up();
            return Err(e);
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(L4Stream::from(tcp)))
}

/// What a kept connection may serve: its address, and how it was made
/// (plain, or TLS with these settings), so a connection is never handed to
/// an upstream that would have made it otherwise.
#[derive(PartialEq)]
pub(crate) struct Kept {
    addr: SocketAddr,
    tls: Option<UpstreamTlsFiles>,
}

impl Kept {
    fn of(addr: SocketAddr, upstream: &Upstream) -> Kept {
        Kept {
            addr,
            tls: upstream.tls.as_ref().map(|t| t.files.clone()),
        }
    }
}

/// An idle upstream connection of this worker thread.
struct Idle {
    addr: Kept,
    stream: Stream,
    since: Instant,
}

thread_local! {
    /// Idle upstream connections, most recently used last. Each worker
    /// thread runs its own runtime, so a connection is only ever taken by
    /// the thread that kept it, and no lock or task is involved.
    static POOL: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// Takes a kept connection to `addr` that is still open, if there is one.
fn checkout(addr: &Kept) -> Option<Stream> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let now = Instant::now();
        pool.retain(|idle| now.duration_since(idle.since) < POOL_IDLE);
        while let Some(i) = pool.iter().rposition(|idle| idle.addr == *addr) {
            let mut idle = pool.remove(i);
            if still_open(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
        None
    })
}

/// Keeps a connection for the next request to `addr`.
pub(crate) fn checkin(addr: Kept, stream: Stream) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() >= POOL_SIZE {
            pool.remove(0);
        }
        pool.push(Idle {
            addr,
            stream,
            since: Instant::now(),
        });
    });
}

/// An idle connection is usable if reading it would wait: it has neither
/// been closed nor sent anything unasked.
fn still_open(stream: &mut Stream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(
        Pin::new(&mut *stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}
