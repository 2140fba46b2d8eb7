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
//! reply is read and thrown away, never given to the next request. Any error
//! on the connection (I/O, a reply that does not parse, a reply nobody asked
//! for, a timeout) fails every command in flight and drops the connection; the
//! next request makes a new one. Nothing is ever resent: a request whose
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
use tokio::io::{AsyncWrite, AsyncWriteExt};
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
        let mut state = self.0.lock();
        let err = RedisError::from((ErrorKind::Io, "redis timed out; connection dropped"));
        state.reset(&err, None);
    }

    fn call(&self, want: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Call {
        let mut state = self.0.lock();
        if !state.is_connected() {
            return Call::failed(
                self.0.clone(),
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
            pipe: self.0.clone(),
            ticket,
            stage: Stage::Queued,
            early: None,
        }
    }
}

impl ConnectionLike for PipeConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let call = self.call(1, |out| cmd.write_packed_command(out));
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
        let call = self.call(count, |out| {
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

/// One thread's connection and what is in flight on it.
struct Pipe {
    target: Arc<Target>,
    state: Mutex<State>,
    /// Held while connecting, so that one request connects and the others wait.
    connecting: tokio::sync::Mutex<()>,
}

struct State {
    stream: Option<TcpStream>,
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

impl Pipe {
    fn new(target: Arc<Target>) -> Pipe {
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements, so a panic elsewhere
        // while it was held leaves nothing half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

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

impl State {
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

/// One request's command(s) on a pipe.
struct Call {
    pipe: Arc<Pipe>,
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

impl Call {
    fn failed(pipe: Arc<Pipe>, err: RedisError) -> Call {
        Call {
            pipe,
            ticket: u64::MAX,
            stage: Stage::Finished,
            early: Some(err),
        }
    }
}

impl Future for Call {
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

impl Drop for Call {
    fn drop(&mut self) {
        if self.stage == Stage::Finished {
            return;
        }
        let mut state = self.pipe.lock();
        if state.take_done(self.ticket).is_some() {
            return;
        }
        if let Some(slot) = state.waiting.iter_mut().find(|s| s.ticket == self.ticket) {
            slot.abandoned = true;
            slot.waker = None;
        }
        if state.flush_deferred == Some(self.ticket) {
            state.flush_deferred = None;
        }
        // This request may have been the one registered for readiness (or
        // owed the flush): hand that on to the oldest request still waiting.
        if let Some(waker) = state.oldest_waker() {
            waker.wake();
        }
    }
}
