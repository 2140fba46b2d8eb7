//! Keeps idle keep-alive connections cheap.
//!
//! Pingora starts a request's whole state machine (several tens of KiB of
//! future, the session and its header buffer) as soon as a connection is
//! accepted or a response is finished, and holds it while it waits for the
//! next request. With thousands of idle keep-alive clients that is most of
//! the process's memory. [`LeanHttp`] runs Pingora's HTTP/1 loop itself and
//! waits for a connection's next bytes first, holding nothing but the socket;
//! what it read is handed to Pingora as the start of the request (the hook
//! Pingora has for pipelined bytes), so no byte is read twice.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, ReadBuf};

/// How long a connection may stay idle before its next request (Pingora's
/// keep-alive default); also the limit for a new connection's first bytes.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// The first read of a request: what Pingora's header buffer starts at.
const FIRST_READ: usize = 4096;

/// An HTTP/1 server app (cleartext, no h2c, no pipelining) whose idle
/// connections hold only their socket.
pub struct LeanHttp<A> {
    inner: Arc<A>,
}

impl<A> LeanHttp<A> {
    pub fn new(inner: A) -> LeanHttp<A> {
        LeanHttp {
            inner: Arc::new(inner),
        }
    }
}

/// Waits for a connection's next bytes and reads them (up to
/// [`FIRST_READ`]). The read buffer lives on the stack of a single poll, so
/// a waiting connection owns no buffer. `None`: the client closed, the
/// connection failed, it stayed idle past [`KEEPALIVE`], or the server is
/// shutting down.
async fn next_bytes(stream: &mut Stream, shutdown: &mut ShutdownWatch) -> Option<BytesMut> {
    let read = poll_fn(|cx| {
        let mut buf = [0u8; FIRST_READ];
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let mut bytes = BytesMut::with_capacity(FIRST_READ);
                bytes.extend_from_slice(read.filled());
                Poll::Ready(Some(bytes))
            }
        }
    });
    tokio::select! {
        biased;
        bytes = tokio::time::timeout(KEEPALIVE, read) => bytes.ok().flatten(),
        // Idle connections close at once when a graceful shutdown or upgrade
        // begins; requests in flight are not affected.
        () = shutting_down(shutdown) => None,
    }
}

/// Resolves once the server is shutting down (or gone); a notification
/// that leaves the flag false is not a shutdown.
async fn shutting_down(shutdown: &mut ShutdownWatch) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl<A> ServerApp for LeanHttp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut watch = shutdown.clone();
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let first = next_bytes(&mut stream, &mut watch).await?;
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(previous) => previous.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(Some(KEEPALIVE.as_secs()));
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            // Pipelining is never enabled, so the previous session handed
            // over no bytes of its own: these are the request's first.
            session.set_pipelined_prefix(first);
            // Pingora's request future is allocated here and freed when the
            // response is done, before the connection waits again.
            let reused = self.inner.process_new_http(session, shutdown).await?;
            (stream, settings) = reused.consume();
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_true_flag_is_a_shutdown() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut watch = rx.clone();
        let wait = Duration::from_millis(50);
        tx.send(false).unwrap();
        assert!(
            tokio::time::timeout(wait, shutting_down(&mut watch))
                .await
                .is_err(),
            "a notification that leaves the flag false ended the wait"
        );
        tx.send(true).unwrap();
        assert!(tokio::time::timeout(wait, shutting_down(&mut watch))
            .await
            .is_ok());
        // A server that is gone counts as shutting down.
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut watch = rx;
        drop(tx);
        assert!(tokio::time::timeout(wait, shutting_down(&mut watch))
            .await
            .is_ok());
    }
}
