//! One pipelined Redis connection per worker thread, with no task of its own.
//!
//! redis-rs's multiplexed connection sends every command through a channel to
//! a driver task, which writes it, reads the reply and sends that back through
//! a oneshot channel. On the request path that is two channel hops and a task
//! wake-up per command. Here each worker thread owns one connection and the
//! requests waiting on it drive it themselves: a command is encoded (by
//! redis-rs) straight into the thread's write buffer; the first request of a
//! scheduler tick flushes everything queued in that tick with one write; and
//! whichever request is polled reads, decodes the replies (with redis-rs's own
//! decoder) and hands each to the request that sent its command.
//!
//! Replies come back in the order commands were written, so the queue of
//! waiting commands is strictly first in, first out. A request that gives up
//! (timeout, client gone) leaves its place in the queue, marked abandoned: its
//! reply is read and thrown away, never given to the next request; what it
//! owed the others (the flush of its tick, the wake-up when the socket is
//! ready) passes to the oldest request still waiting. Any error on the
//! connection (I/O, a reply that does not parse, a reply nobody asked for, a
//! timeout) fails every command in flight and drops the connection; the next
//! request makes a new one. Nothing is ever resent: a request whose
//! command may have reached Redis gets an error, and the gateway fails closed.
//!
//! Used for `mode = "standalone"` over plain TCP with RESP2 (the default).
//! TLS, unix sockets, RESP3, Sentinel and Cluster use redis-rs's connections.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis::aio::ConnectionLike;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, ProtocolVersion, RedisError,
    RedisFuture, RedisResult, Value, ValueCodec,
};
use thread_local::ThreadLocal;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// After a failed connection attempt, how long requests fail at once before
/// the next attempt: as for the shared connections.
const RETRY_AFTER: Duration = Duration::from_millis(super::RETRY_AFTER_MS);

/// Where to connect and what to say first.
struct Target {
    host: String,
    port: u16,
    /// AUTH and SELECT, encoded, when the URL asks for them.
    hello: Vec<u8>,
    hello_replies: usize,
    db: i64,
}

/// The per-thread connections of one store.
pub struct Pipes {
    target: Arc<Target>,
    local: ThreadLocal<Arc<Pipe>>,
}

impl Pipes {
    /// Pipes for `info`, or `None` when it is a connection they do not speak
    /// (TLS, unix socket, RESP3).
    pub fn for_info(info: &ConnectionInfo) -> Option<Pipes> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let redis = info.redis_settings();
        if redis.protocol() != ProtocolVersion::RESP2 {
            return None;
        }
        let mut hello = Vec::new();
        let mut hello_replies = 0;
        if let Some(password) = redis.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = redis.username() {
                auth.arg(user);
            }
            auth.arg(password).write_packed_command(&mut hello);
            hello_replies += 1;
        }
        if redis.db() != 0 {
            redis::cmd("SELECT")
                .arg(redis.db())
                .write_packed_command(&mut hello);
            hello_replies += 1;
        }
        Some(Pipes {
            target: Arc::new(Target {
                host: host.clone(),
                port: *port,
                hello,
                hello_replies,
                db: redis.db(),
            }),
            local: ThreadLocal::new(),
        })
    }

    /// This thread's connection, connected (made now if it has none).
    pub async fn get(&self, connect_timeout: Duration) -> Result<PipeConn, String> {
        let pipe = self
            .local
            .get_or(|| Arc::new(Pipe::new(self.target.clone())))
            .clone();
        if !pipe.lock().is_connected() {
            pipe.connect(connect_timeout).await?;
        }
        Ok(PipeConn(pipe))
    }
}

/// A handle on one thread's connection; what redis-rs's commands run on.
#[derive(Clone)]
pub struct PipeConn(Arc<Pipe>);

impl PipeConn {
    /// A command on this connection timed out: Redis may be stuck, or the
    /// network gone without a word. Drop the connection and fail what waits.
    pub fn timed_out(&self) {
        self.0.timed_out();
    }
}

impl ConnectionLike for PipeConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let call = Pipe::call(&self.0, 1, |out| cmd.write_packed_command(out));
        Box::pin(async move {
            let mut values = call.await?;
            values.pop().ok_or_else(|| {
                RedisError::from((ErrorKind::Io, "redis sent no reply to a command"))
            })
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if pipeline.is_transaction() || offset != 0 || count != pipeline.len() {
            // The store sends only plain pipelines; MULTI/EXEC would need
            // replies skipped, which this connection does not do.
            return Box::pin(async {
                Err(RedisError::from((
                    ErrorKind::Client,
                    "transactions are not supported on this connection",
                )))
            });
        }
        let call = Pipe::call(&self.0, count, |out| {
            for cmd in pipeline.cmd_iter() {
                cmd.write_packed_command(out);
            }
        });
        Box::pin(call)
    }

    fn get_db(&self) -> i64 {
        self.0.target.db
    }
}

/// One thread's connection and what is in flight on it. Generic over the
/// stream only so that the bookkeeping can be driven, in tests, over an
/// in-memory connection whose every byte and failure the test decides.
struct Pipe<S = TcpStream> {
    target: Arc<Target>,
    state: Mutex<State<S>>,
    /// Held while connecting, so that one request connects and the others wait.
    connecting: tokio::sync::Mutex<()>,
}

struct State<S> {
    stream: Option<S>,
    /// Written to the connection but not yet sent.
    out: Vec<u8>,
    /// Read from it but not yet decoded.
    input: BytesMut,
    codec: ValueCodec,
    /// Commands sent (or queued to be sent), in order, awaiting replies.
    waiting: VecDeque<Slot>,
    /// Answered commands whose requests have not taken the answer yet.
    done: Vec<(u64, RedisResult<Vec<Value>>)>,
    next_ticket: u64,
    /// A request has deferred the flush of this tick's commands to its next poll.
    flush_deferred: Option<u64>,
    failed_at: Option<Instant>,
}

struct Slot {
    ticket: u64,
    want: usize,
    got: Vec<Value>,
    waker: Option<Waker>,
    /// Its request is gone; its reply is read and dropped.
    abandoned: bool,
}

impl<S> Pipe<S> {
    fn new(target: Arc<Target>) -> Pipe<S> {
        Pipe {
            target,
            state: Mutex::new(State {
                stream: None,
                out: Vec::with_capacity(4096),
                input: BytesMut::with_capacity(8192),
                codec: ValueCodec::default(),
                waiting: VecDeque::new(),
                done: Vec::new(),
                next_ticket: 0,
                flush_deferred: None,
                failed_at: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<S>> {
        // The state is consistent between statements, so a panic elsewhere
        // while it was held leaves nothing half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A command on this connection timed out: drop the connection and
    /// fail what waits (see `PipeConn::timed_out`).
    fn timed_out(&self) {
        let mut state = self.lock();
        let err = RedisError::from((ErrorKind::Io, "redis timed out; connection dropped"));
        state.reset(&err, None);
    }

    /// Queues a command (`encode` writes it) whose answer is `want`
    /// replies, and returns the request's handle on them.
    fn call(pipe: &Arc<Pipe<S>>, want: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Call<S> {
        let mut state = pipe.lock();
        if !state.is_connected() {
            return Call::failed(
                pipe.clone(),
                RedisError::from((ErrorKind::Io, "redis connection lost")),
            );
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        encode(&mut state.out);
        state.waiting.push_back(Slot {
            ticket,
            want,
            got: Vec::with_capacity(want),
            waker: None,
            abandoned: false,
        });
        Call {
            pipe: pipe.clone(),
            ticket,
            stage: Stage::Queued,
            early: None,
        }
    }
}

impl Pipe<TcpStream> {
    async fn connect(&self, limit: Duration) -> Result<(), String> {
        let _one = self.connecting.lock().await;
        {
            let state = self.lock();
            if state.is_connected() {
                return Ok(());
            }
            if state.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
                return Err("redis is reconnecting".to_owned());
            }
        }
        let made = match tokio::time::timeout(limit, self.open()).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("connecting to redis took over {limit:?}")),
        };
        let mut state = self.lock();
        match made {
            Ok(stream) => {
                state.stream = Some(stream);
                state.failed_at = None;
                Ok(())
            }
            Err(e) => {
                state.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// A new connection, past AUTH and SELECT.
    async fn open(&self) -> RedisResult<TcpStream> {
        let target = &self.target;
        let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.set_nodelay(true)?;
        if target.hello_replies > 0 {
            stream.write_all(&target.hello).await?;
            let mut codec = ValueCodec::default();
            let mut input = BytesMut::with_capacity(256);
            let mut seen = 0;
            while seen < target.hello_replies {
                match codec.decode(&mut input)? {
                    Some(Value::ServerError(e)) => return Err(e.into()),
                    Some(_) => seen += 1,
                    None => {
                        let n = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut input).await?;
                        if n == 0 {
                            return Err(closed());
                        }
                    }
                }
            }
        }
        Ok(stream)
    }
}

fn closed() -> RedisError {
    RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset))
}

impl<S> State<S> {
    fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// The connection is unusable: drop it and fail everything in flight
    /// with `err`. Wakes the requests concerned except `current`, which is
    /// the one being polled.
    fn reset(&mut self, err: &RedisError, current: Option<u64>) {
        self.stream = None;
        self.out.clear();
        self.input.clear();
        self.codec = ValueCodec::default();
        self.flush_deferred = None;
        for slot in self.waiting.drain(..) {
            if slot.abandoned {
                continue;
            }
            self.done.push((slot.ticket, Err(err.clone())));
            if Some(slot.ticket) != current {
                if let Some(waker) = slot.waker {
                    waker.wake();
                }
            }
        }
    }

    /// Records the waker of the request waiting on `ticket`; false when
    /// nothing waits on it.
    fn set_waker(&mut self, ticket: u64, waker: &Waker) -> bool {
        let Some(slot) = self.waiting.iter_mut().find(|s| s.ticket == ticket) else {
            return false;
        };
        match &slot.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        true
    }

    fn take_done(&mut self, ticket: u64) -> Option<RedisResult<Vec<Value>>> {
        let at = self.done.iter().position(|(t, _)| *t == ticket)?;
        Some(self.done.swap_remove(at).1)
    }

    /// The waker of the oldest request still waiting that has been polled:
    /// its reply comes first, so it is the one to wake for readiness.
    fn oldest_waker(&self) -> Option<Waker> {
        self.waiting
            .iter()
            .find(|s| !s.abandoned && s.waker.is_some())
            .and_then(|s| s.waker.clone())
    }

    /// Gives `value` to the oldest command waiting for replies.
    fn deliver(&mut self, value: Value, current: u64) -> RedisResult<()> {
        let Some(front) = self.waiting.front_mut() else {
            return Err(RedisError::from((
                ErrorKind::Io,
                "redis sent a reply to no command",
            )));
        };
        front.got.push(value);
        if front.got.len() < front.want {
            return Ok(());
        }
        let Some(slot) = self.waiting.pop_front() else {
            return Ok(());
        };
        if slot.abandoned {
            return Ok(());
        }
        self.done.push((slot.ticket, Ok(slot.got)));
        if slot.ticket != current {
            if let Some(waker) = slot.waker {
                waker.wake();
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> State<S> {
    /// Sends what is queued and reads what has come, until neither moves.
    /// Readiness is registered on behalf of the oldest live request, so the
    /// one whose reply arrives next is the one woken for it.
    fn drive(&mut self, cx: &mut Context<'_>, current: u64) -> RedisResult<()> {
        loop {
            if self.waiting.iter().all(|s| s.abandoned) && self.out.is_empty() {
                return Ok(());
            }
            let waker = self.oldest_waker().unwrap_or_else(|| cx.waker().clone());
            let mut io_cx = Context::from_waker(&waker);
            let Some(stream) = self.stream.as_mut() else {
                return Err(closed());
            };
            let mut moved = false;
            if !self.out.is_empty() {
                match Pin::new(&mut *stream).poll_write(&mut io_cx, &self.out) {
                    Poll::Ready(Ok(0)) => return Err(closed()),
                    Poll::Ready(Ok(n)) => {
                        self.out.drain(..n);
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e.into()),
                    Poll::Pending => {}
                }
            }
            self.input.reserve(4096);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), &mut io_cx, &mut self.input)
            {
                Poll::Ready(Ok(0)) => return Err(closed()),
                Poll::Ready(Ok(_)) => {
                    moved = true;
                    while let Some(value) = self.codec.decode(&mut self.input)? {
                        self.deliver(value, current)?;
                    }
                }
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Pending => {}
            }
            if !moved {
                return Ok(());
            }
        }
    }
}

/// One request's command(s) on a pipe.
struct Call<S = TcpStream> {
    pipe: Arc<Pipe<S>>,
    ticket: u64,
    stage: Stage,
    /// An answer known before anything was queued (no connection).
    early: Option<RedisError>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Queued; not polled yet.
    Queued,
    /// Polled at least once.
    Waiting,
    /// Answered (or failed early): nothing of it is left in the pipe.
    Finished,
}

impl<S> Call<S> {
    fn failed(pipe: Arc<Pipe<S>>, err: RedisError) -> Call<S> {
        Call {
            pipe,
            ticket: u64::MAX,
            stage: Stage::Finished,
            early: Some(err),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Call<S> {
    type Output = RedisResult<Vec<Value>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(err) = this.early.take() {
            return Poll::Ready(Err(err));
        }
        if this.stage == Stage::Finished {
            return Poll::Ready(Err(RedisError::from((
                ErrorKind::Client,
                "polled after completion",
            ))));
        }
        let ticket = this.ticket;
        let mut state = this.pipe.lock();
        if this.stage == Stage::Queued {
            if let Some(answer) = state.take_done(ticket) {
                // Another request's poll sent it and read the reply already.
                this.stage = Stage::Finished;
                return Poll::Ready(answer);
            }
            this.stage = Stage::Waiting;
            state.set_waker(ticket, cx.waker());
            // Let the other requests of this tick queue their commands too,
            // then send them all with one write: the first to get here
            // comes back at the end of the tick and flushes.
            if state.flush_deferred.is_none() {
                state.flush_deferred = Some(ticket);
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        // The flush this request owes is done even when its own reply has
        // come already: the commands queued behind it may not be sent yet.
        let owes_flush = state.flush_deferred == Some(ticket);
        if owes_flush {
            state.flush_deferred = None;
        }
        let mut answer = state.take_done(ticket);
        if answer.is_none() || owes_flush {
            if let Err(err) = state.drive(cx, ticket) {
                state.reset(&err, Some(ticket));
            }
            answer = answer.or_else(|| state.take_done(ticket));
        }
        match answer {
            Some(answer) => {
                this.stage = Stage::Finished;
                Poll::Ready(answer)
            }
            None if state.set_waker(ticket, cx.waker()) => Poll::Pending,
            // Neither waiting nor answered: cannot happen, but never wait forever.
            None => {
                this.stage = Stage::Finished;
                Poll::Ready(Err(closed()))
            }
        }
    }
}

impl<S> Drop for Call<S> {
    fn drop(&mut self) {
        if self.stage == Stage::Finished {
            return;
        }
        let mut state = self.pipe.lock();
        // The flush this request owes is owed even when its answer is in
        // already (another request's poll read it): the commands queued
        // after it may not be sent yet, and the requests that queued them
        // wait for this one to send them.
        let owed_flush = state.flush_deferred == Some(self.ticket);
        if owed_flush {
            state.flush_deferred = None;
        }
        let answered = state.take_done(self.ticket).is_some();
        if !answered {
            if let Some(slot) = state.waiting.iter_mut().find(|s| s.ticket == self.ticket) {
                slot.abandoned = true;
                slot.waker = None;
            }
        }
        // This request may have been the one registered for readiness, or
        // owed the flush: hand that on to the oldest request still waiting.
        if owed_flush || !answered {
            if let Some(waker) = state.oldest_waker() {
                waker.wake();
            }
        }
    }
}

/// The pipe's bookkeeping (the queue of waiting commands, abandoned places,
/// answers not yet taken, wake-ups) driven by random sequences of requests,
/// polls, cancellations, replies arriving in pieces, connection failures,
/// timeouts and reconnects, over an in-memory connection the test controls
/// byte by byte. Whatever the order, a request answered `Ok` holds exactly
/// the replies to its own commands, nothing is left behind for a request
/// that is gone, and no request waits forever for a wake-up.
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;
    use tokio::io::ReadBuf;

    /// Both ends of one in-memory connection.
    struct Wire {
        /// Written by the pipe, not yet read by the server.
        sent: BytesMut,
        /// Written by the server, not yet read by the pipe.
        inbound: BytesMut,
        /// How many more bytes the pipe may write before it must wait
        /// (`None`: no limit), as a full socket buffer would make it.
        room: Option<usize>,
        /// At most this many bytes per read: replies arrive in pieces.
        read_chunk: usize,
        /// Reset by the peer: reads and writes fail.
        failed: bool,
        /// Closed by the peer: reads see the end once `inbound` is read.
        closed: bool,
        read_waker: Option<Waker>,
        write_waker: Option<Waker>,
    }

    #[derive(Clone)]
    struct Fake(Arc<Mutex<Wire>>);

    impl Fake {
        fn new(read_chunk: usize) -> Fake {
            Fake(Arc::new(Mutex::new(Wire {
                sent: BytesMut::new(),
                inbound: BytesMut::new(),
                room: None,
                read_chunk,
                failed: false,
                closed: false,
                read_waker: None,
                write_waker: None,
            })))
        }

        fn wire(&self) -> MutexGuard<'_, Wire> {
            self.0.lock().unwrap()
        }
    }

    impl Wire {
        /// What the reactor does when the socket becomes ready.
        fn wake(&mut self) {
            if let Some(w) = self.read_waker.take() {
                w.wake();
            }
            if let Some(w) = self.write_waker.take() {
                w.wake();
            }
        }
    }

    impl AsyncRead for Fake {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let mut w = self.wire();
            if w.failed {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            if !w.inbound.is_empty() {
                let n = w.inbound.len().min(buf.remaining()).min(w.read_chunk);
                buf.put_slice(&w.inbound.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if w.closed {
                return Poll::Ready(Ok(()));
            }
            w.read_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl AsyncWrite for Fake {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut w = self.wire();
            if w.failed || w.closed {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let n = w.room.map_or(data.len(), |room| room.min(data.len()));
            if n == 0 {
                w.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(room) = &mut w.room {
                *room -= n;
            }
            w.sent.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The Redis end of one wire: reads commands and answers them in order.
    /// `GET k<n>` is answered `v:k<n>` (or WRONGTYPE when 5 divides n) and
    /// `PTTL k<n>` with n, so every reply names the request it is for.
    struct Server {
        wire: Fake,
        codec: ValueCodec,
        read: BytesMut,
        /// Commands read and not answered yet: (name, id).
        pending: VecDeque<(Vec<u8>, u64)>,
        /// Replies made and not yet on the wire.
        outbox: Vec<u8>,
        /// Failed, closed or sent garbage: the pipe must not use it again.
        dead: bool,
    }

    impl Server {
        fn new(wire: Fake) -> Server {
            Server {
                wire,
                codec: ValueCodec::default(),
                read: BytesMut::new(),
                pending: VecDeque::new(),
                outbox: Vec::new(),
                dead: false,
            }
        }

        fn read_commands(&mut self) {
            let sent = self.wire.wire().sent.split();
            self.read.extend_from_slice(&sent);
            while let Some(command) = self.codec.decode(&mut self.read).unwrap() {
                let Value::Array(parts) = command else {
                    panic!("a command that is not an array: {command:?}");
                };
                let [Value::BulkString(name), Value::BulkString(key)] = &parts[..] else {
                    panic!("an unexpected command: {parts:?}");
                };
                let id = std::str::from_utf8(&key[1..]).unwrap().parse().unwrap();
                self.pending.push_back((name.clone(), id));
            }
        }

        fn answer(&mut self, n: usize) {
            self.read_commands();
            for _ in 0..n {
                let Some((name, id)) = self.pending.pop_front() else {
                    break;
                };
                let reply = match &name[..] {
                    b"GET" if id.is_multiple_of(5) => "-WRONGTYPE not a string\r\n".to_owned(),
                    b"GET" => {
                        let value = format!("v:k{id}");
                        format!("${}\r\n{value}\r\n", value.len())
                    }
                    b"PTTL" => format!(":{id}\r\n"),
                    other => panic!("an unexpected command {other:?}"),
                };
                self.outbox.extend_from_slice(reply.as_bytes());
            }
        }

        fn deliver(&mut self, n: usize) {
            let mut w = self.wire.wire();
            if w.failed || w.closed {
                return;
            }
            let n = n.min(self.outbox.len());
            w.inbound.extend_from_slice(&self.outbox[..n]);
            self.outbox.drain(..n);
            if n > 0 {
                w.wake();
            }
        }
    }

    /// Records that its request was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A request in flight: its command(s) for key `k<id>`.
    struct Live {
        id: u64,
        want: usize,
        call: Call<Fake>,
        flag: Arc<Flag>,
        polled: bool,
    }

    fn expected_ok(id: u64, want: usize, got: &[Value]) -> bool {
        let get_ok = match got.first() {
            Some(Value::ServerError(e)) => id.is_multiple_of(5) && e.code() == "WRONGTYPE",
            Some(Value::BulkString(v)) => {
                !id.is_multiple_of(5) && *v == format!("v:k{id}").into_bytes()
            }
            _ => false,
        };
        let ttl_ok = match (want, got.get(1)) {
            (1, None) => true,
            (2, Some(Value::Int(n))) => u64::try_from(*n) == Ok(id),
            _ => false,
        };
        get_ok && ttl_ok && got.len() == want
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A request sends `want` commands (a lookup, with or without PTTL).
        Send(usize),
        /// The executor polls one request (woken or not: spurious polls are legal).
        Poll(usize),
        /// The executor runs one of the requests that were woken (the i-th),
        /// the others still waiting their turn.
        Step(usize),
        /// The executor polls every request that was woken.
        PollWoken,
        /// A request is given up on (timeout, client gone) wherever it is.
        Drop(usize),
        /// A request that was woken is given up on before it is polled (its
        /// task was woken by the other branch of a `select!`, which won).
        DropWoken(usize),
        /// Redis answers the next n commands it has read.
        Answer(usize),
        /// n bytes of those answers reach the socket.
        Deliver(usize),
        /// The socket takes at most n more bytes (None: any).
        Room(Option<usize>),
        /// Reads return at most n bytes.
        Chunk(usize),
        /// The connection is reset.
        Fail,
        /// Redis closes the connection.
        Close,
        /// Redis sends bytes that are not RESP.
        Garbage,
        /// The command timeout fires (`PipeConn::timed_out`).
        TimedOut,
        /// A request connects again (only if the pipe has no connection).
        Reconnect,
        /// Nothing happens (an operation this run leaves out).
        Idle,
    }

    /// One operation. Kinds that `on` leaves out become `Idle`: each run
    /// leaves out a random few (swarm testing), so that a run without
    /// resets, or without the executor's sweeps, goes deeper into states
    /// that a run with every kind reaches only by chance.
    fn op(on: Vec<bool>) -> impl Strategy<Value = Op> {
        let kinds = prop_oneof![
            3 => (1usize..=2).prop_map(Op::Send),
            4 => any::<usize>().prop_map(Op::Poll),
            6 => any::<usize>().prop_map(Op::Step),
            2 => Just(Op::PollWoken),
            3 => any::<usize>().prop_map(Op::Drop),
            2 => any::<usize>().prop_map(Op::DropWoken),
            4 => (1usize..4).prop_map(Op::Answer),
            4 => (1usize..40).prop_map(Op::Deliver),
            1 => proptest::option::of(0usize..64).prop_map(Op::Room),
            1 => (1usize..32).prop_map(Op::Chunk),
            1 => Just(Op::Fail),
            1 => Just(Op::Close),
            1 => Just(Op::Garbage),
            1 => Just(Op::TimedOut),
            2 => Just(Op::Reconnect),
        ];
        kinds.prop_map(move |op| {
            let kind = match op {
                Op::Send(_) | Op::Answer(_) | Op::Deliver(_) | Op::Idle => return op,
                Op::Poll(_) => 0,
                Op::Step(_) => 1,
                Op::PollWoken => 2,
                Op::Drop(_) | Op::DropWoken(_) => 3,
                Op::Room(_) => 4,
                Op::Chunk(_) => 5,
                Op::Fail => 6,
                Op::Close => 7,
                Op::Garbage => 8,
                Op::TimedOut => 9,
                Op::Reconnect => 10,
            };
            if on[kind] {
                op
            } else {
                Op::Idle
            }
        })
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(any::<bool>(), 11)
            .prop_flat_map(|on| proptest::collection::vec(op(on), 1..80))
    }

    struct Harness {
        pipe: Arc<Pipe<Fake>>,
        server: Server,
        live: Vec<Live>,
        next_id: u64,
        read_chunk: usize,
        answered: usize,
    }

    impl Harness {
        fn new() -> Harness {
            let target = Arc::new(Target {
                host: "in-memory".to_owned(),
                port: 0,
                hello: Vec::new(),
                hello_replies: 0,
                db: 0,
            });
            let wire = Fake::new(usize::MAX);
            let pipe = Arc::new(Pipe::new(target));
            pipe.lock().stream = Some(wire.clone());
            Harness {
                pipe,
                server: Server::new(wire),
                live: Vec::new(),
                next_id: 1,
                read_chunk: usize::MAX,
                answered: 0,
            }
        }

        fn reconnect(&mut self) {
            let mut state = self.pipe.lock();
            if state.is_connected() {
                return;
            }
            let wire = Fake::new(self.read_chunk);
            state.stream = Some(wire.clone());
            state.failed_at = None;
            self.server = Server::new(wire);
        }

        fn send(&mut self, want: usize) {
            let id = self.next_id;
            self.next_id += 1;
            let key = format!("k{id}");
            let call = Pipe::call(&self.pipe, want, |out| {
                redis::cmd("GET").arg(&key).write_packed_command(out);
                if want == 2 {
                    redis::cmd("PTTL").arg(&key).write_packed_command(out);
                }
            });
            self.live.push(Live {
                id,
                want,
                call,
                flag: Arc::new(Flag(AtomicBool::new(false))),
                polled: false,
            });
        }

        /// Polls request `i`; an answer must be its own.
        fn poll(&mut self, i: usize) {
            let live = &mut self.live[i];
            live.flag.0.store(false, Ordering::SeqCst);
            live.polled = true;
            let waker = Waker::from(live.flag.clone());
            let mut cx = Context::from_waker(&waker);
            match Pin::new(&mut live.call).poll(&mut cx) {
                Poll::Pending => {}
                Poll::Ready(answer) => {
                    let live = self.live.swap_remove(i);
                    if let Ok(got) = answer {
                        assert!(
                            expected_ok(live.id, live.want, &got),
                            "request k{} (want {}) was answered {got:?}",
                            live.id,
                            live.want
                        );
                        self.answered += 1;
                    }
                }
            }
        }

        /// The i-th (modulo) of the requests a real executor would poll now.
        fn woken(&self, i: usize) -> Option<usize> {
            let due: Vec<usize> = (0..self.live.len())
                .filter(|&k| !self.live[k].polled || self.live[k].flag.0.load(Ordering::SeqCst))
                .collect();
            (!due.is_empty()).then(|| due[i % due.len()])
        }

        /// Polls what a real executor would: requests never polled, and
        /// requests woken since their last poll. True if any was polled.
        fn poll_woken(&mut self) -> bool {
            let mut any = false;
            let mut i = 0;
            while i < self.live.len() {
                let due = !self.live[i].polled || self.live[i].flag.0.load(Ordering::SeqCst);
                if due {
                    any = true;
                    let before = self.live.len();
                    self.poll(i);
                    if self.live.len() < before {
                        continue;
                    }
                }
                i += 1;
            }
            any
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Send(want) => self.send(want),
                Op::Poll(i) if !self.live.is_empty() => self.poll(i % self.live.len()),
                Op::Poll(_) => {}
                Op::Step(i) => {
                    if let Some(k) = self.woken(i) {
                        self.poll(k);
                    }
                }
                Op::DropWoken(i) => {
                    if let Some(k) = self.woken(i) {
                        drop(self.live.swap_remove(k));
                    }
                }
                Op::PollWoken => {
                    self.poll_woken();
                }
                Op::Drop(i) if !self.live.is_empty() => {
                    let i = i % self.live.len();
                    drop(self.live.swap_remove(i));
                }
                Op::Drop(_) => {}
                Op::Answer(n) => self.server.answer(n),
                Op::Deliver(n) => self.server.deliver(n),
                Op::Room(room) => {
                    let mut w = self.server.wire.wire();
                    w.room = room;
                    w.wake();
                }
                Op::Chunk(n) => {
                    self.read_chunk = n;
                    self.server.wire.wire().read_chunk = n;
                }
                Op::Fail => {
                    self.server.dead = true;
                    let mut w = self.server.wire.wire();
                    w.failed = true;
                    w.wake();
                }
                Op::Close => {
                    self.server.deliver(usize::MAX);
                    self.server.dead = true;
                    let mut w = self.server.wire.wire();
                    w.closed = true;
                    w.wake();
                }
                Op::Garbage => {
                    self.server.outbox.extend_from_slice(b"?garbage\r\n");
                    self.server.deliver(usize::MAX);
                    self.server.dead = true;
                }
                Op::TimedOut => self.pipe.timed_out(),
                Op::Reconnect => self.reconnect(),
                Op::Idle => {}
            }
            self.check_bookkeeping();
        }

        /// Nothing in the pipe belongs to a request that is gone, and every
        /// request still waiting has its place.
        fn check_bookkeeping(&self) {
            let live: HashSet<u64> = self
                .live
                .iter()
                .filter(|l| l.call.stage != Stage::Finished)
                .map(|l| l.call.ticket)
                .collect();
            let state = self.pipe.lock();
            for slot in &state.waiting {
                assert_eq!(
                    live.contains(&slot.ticket),
                    !slot.abandoned,
                    "slot {} abandoned = {} but its request is {}",
                    slot.ticket,
                    slot.abandoned,
                    if live.contains(&slot.ticket) {
                        "live"
                    } else {
                        "gone"
                    }
                );
                assert!(slot.got.len() < slot.want, "a full slot stayed queued");
            }
            for (ticket, _) in &state.done {
                assert!(
                    live.contains(ticket),
                    "an answer for a request that is gone"
                );
            }
            if let Some(owner) = state.flush_deferred {
                assert!(
                    live.contains(&owner),
                    "the flush is owed by request {owner}, which is gone"
                );
            }
            let placed: HashSet<u64> = state
                .waiting
                .iter()
                .map(|s| s.ticket)
                .chain(state.done.iter().map(|(t, _)| *t))
                .collect();
            for ticket in &live {
                assert!(placed.contains(ticket), "request {ticket} lost its place");
            }
        }

        /// Redis answers everything and the executor polls only what is
        /// woken: every request must finish.
        fn settle(&mut self) {
            {
                let mut w = self.server.wire.wire();
                w.room = None;
                w.wake();
            }
            for _ in 0..10_000 {
                self.server.answer(usize::MAX);
                self.server.deliver(usize::MAX);
                let pending = !self.server.outbox.is_empty();
                if !self.poll_woken() && !pending {
                    break;
                }
            }
            let stuck: Vec<u64> = self.live.iter().map(|l| l.id).collect();
            assert!(stuck.is_empty(), "requests never woken: {stuck:?}");
            self.check_bookkeeping();
        }

        /// After whatever happened, the pipe still answers new requests,
        /// each with its own replies.
        fn still_in_step(&mut self) {
            if self.server.dead {
                self.pipe.timed_out();
            }
            self.reconnect();
            let before = self.answered;
            for want in [1, 2, 1, 2] {
                self.send(want);
            }
            self.settle();
            assert_eq!(
                self.answered - before,
                4,
                "a request on a sound connection failed"
            );
            let state = self.pipe.lock();
            assert!(state.done.is_empty() && state.waiting.is_empty());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn every_answer_is_the_requests_own(ops in ops()) {
            let mut h = Harness::new();
            for op in &ops {
                h.apply(op);
            }
            h.settle();
            h.still_in_step();
        }
    }

    /// A request polled once (so it owes the flush of its tick) whose reply
    /// another request's poll read before it was polled again, then given up
    /// on (a client gone, a `select!` that polled its other branch first):
    /// the flush it owed must pass on. Kept by it, every later request on
    /// the thread waited for a flush that never came, until the command
    /// timeout failed them all.
    #[test]
    fn a_request_dropped_with_its_answer_in_hand_hands_on_the_flush() {
        let mut h = Harness::new();
        h.send(1); // k1
        h.apply(&Op::Poll(0)); // k1 queued, owes the flush
        h.apply(&Op::Poll(0)); // k1 flushes, waits
        h.send(1); // k2
        let k2 = h.live.iter().position(|l| l.id == 2).unwrap();
        h.apply(&Op::Poll(k2)); // k2 queued, owes the flush
        let k1 = h.live.iter().position(|l| l.id == 1).unwrap();
        h.apply(&Op::Poll(k1)); // k1 waits on: sends k2's command too
        h.server.answer(2);
        h.server.deliver(usize::MAX);
        let k1 = h.live.iter().position(|l| l.id == 1).unwrap();
        h.apply(&Op::Poll(k1)); // k1 reads both replies and is answered
        assert_eq!(h.answered, 1);
        assert_eq!(h.pipe.lock().done.len(), 1, "k2's answer waits for it");
        // k2 goes before it is polled again.
        drop(h.live.pop());
        assert!(h.live.is_empty());
        h.still_in_step();
    }

    /// The shape the random runs hit only now and then: a request given up
    /// on with its first reply read and its second still on the way, while
    /// the request behind it waits; the rest of its answer is thrown away,
    /// not given to the next request.
    #[test]
    fn a_reply_half_read_when_its_request_goes_is_thrown_away() {
        let mut h = Harness::new();
        h.apply(&Op::Chunk(3));
        h.send(2); // k1: GET and PTTL
        h.send(1); // k2: GET
        h.apply(&Op::PollWoken); // both queued; k1 owes the flush
        h.apply(&Op::PollWoken); // k1 flushes
        assert_eq!(h.live.len(), 2);
        // All of k1's GET reply ($4 v:k1: 10 bytes) and half of its PTTL's.
        h.server.answer(3);
        h.server.deliver(12);
        h.apply(&Op::PollWoken);
        {
            let state = h.pipe.lock();
            assert_eq!(state.waiting[0].got.len(), 1, "k1's first reply is read");
            drop(state);
            assert!(
                h.server.wire.wire().inbound.is_empty(),
                "all 12 bytes are read"
            );
        }
        let k1 = h.live.iter().position(|l| l.id == 1).unwrap();
        drop(h.live.swap_remove(k1));
        h.settle();
        assert_eq!(h.answered, 1, "k2 got its own answer");
        h.still_in_step();
    }
}
