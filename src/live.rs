//! Live exchanges end with the session that admitted them.
//!
//! An upgraded connection (a WebSocket, any `101`) or an event stream
//! (`text/event-stream`) admitted by a session is tied to the session's
//! Redis key. The invalidation channel that empties the session cache
//! (`session::tracking`) reports every change of a key here too (through
//! `changes`, which keeps the cache from knowing its listeners); each
//! exchange tied to the key then asks the pipeline again, exactly as for a
//! new request with the same head on the same connection
//! (`Pipeline::readmits`), and ends when the answer is no longer "forward": the key was
//! deleted, expired or overwritten so that it no longer admits the route.
//! A change that leaves the session admitted (a TTL change, an unrelated
//! field) keeps it. A flush, and the channel coming back after an outage,
//! re-check every exchange.
//!
//! The transport (HTTP/1 connection loop, HTTP/2 stream task) gives each
//! exchange a [`Slot`] in a task-local and runs its work under [`watch`];
//! the engines call [`relaying`] with each response head they relay. Ending an exchange drops its work: an HTTP/1 connection
//! is closed toward the client and the upstream, an HTTP/2 stream is reset
//! (`CANCEL`). Nothing here is on the path of a plain request but a flag.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::http::RequestHeader;
use tokio::sync::Notify;

use crate::changes::{self, Change};
use crate::config::{LivePolicy, Route};
use crate::metrics;
use crate::pipeline::{Arrival, Pipeline};
use crate::session::cache::Principal;

/// What kind of exchange lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An upgraded connection (`101 Switching Protocols`: WebSocket and the like).
    Upgrade,
    /// A response that streams events (`text/event-stream`).
    Stream,
    /// A response of no announced length (chunked or close-delimited) that
    /// is still streaming after the route's `live_after`: a long poll.
    Poll,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Upgrade => "upgrade",
            Kind::Stream => "stream",
            Kind::Poll => "poll",
        }
    }

    /// The kind of exchange a response starts, if it is one that lives on.
    pub fn of(status: u16, headers: &http::HeaderMap) -> Option<Kind> {
        if status == 101 {
            return Some(Kind::Upgrade);
        }
        let media = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| {
                v.as_bytes()
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii()
            })
            .unwrap_or_default();
        if media.eq_ignore_ascii_case(b"text/event-stream") {
            return Some(Kind::Stream);
        }
        let bodiless = status < 200 || status == 204 || status == 304;
        (!bodiless && !headers.contains_key(http::header::CONTENT_LENGTH)).then_some(Kind::Poll)
    }
}

tokio::task_local! {
    /// The slot of the exchange the current task carries.
    static SLOT: Arc<Slot>;
}

/// The pipeline the re-checks ask (the current one, after reloads too).
static PIPELINE: OnceLock<Arc<ArcSwap<Pipeline>>> = OnceLock::new();

/// Live exchanges by the session key that admitted them.
type Registry = HashMap<Box<str>, Vec<Weak<Slot>>>;
static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

/// Since when each invalidation channel that is down (by `SessionCache::channel`) has been.
static DOWN_SINCE: LazyLock<Mutex<HashMap<usize, Instant>>> = LazyLock::new(Default::default);

/// How long a re-check that could not reach Redis waits before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// Tells the re-checks which pipeline to ask and starts listening to the
/// invalidation channel; called once at start.
pub fn serve_with(pipeline: Arc<ArcSwap<Pipeline>>) {
    let _ = PIPELINE.set(pipeline);
    changes::listen(on_change);
}

fn on_change(change: Change<'_>) {
    match change {
        Change::Key(key) => changed(key),
        Change::All => changed_all(),
        Change::Lost(channel) => channel_lost(channel),
        Change::Back(channel) => channel_back(channel),
    }
}

/// One connection's (HTTP/1) or stream's (HTTP/2) place for the live
/// exchange it may carry.
#[derive(Default)]
pub struct Slot {
    watched: AtomicBool,
    /// Set when the exchange is to end whatever its session says
    /// (`max_unverified` passed with the channel down).
    unverified: AtomicBool,
    /// Boxed: every HTTP/1 connection has a slot, few a watch.
    watch: Mutex<Option<Box<Watch>>>,
    changed: Notify,
}

/// What a live exchange was admitted as.
struct Watch {
    key: Box<str>,
    kind: Kind,
    route: String,
    user: Option<String>,
    since: Instant,
    /// When it ends whatever Redis says, and why: the route's
    /// `max_lifetime`, or a bearer JWT's `exp` (`expired`).
    until: Option<(tokio::time::Instant, &'static str)>,
    /// Not indexed (nor counted) before this: a response of no announced
    /// length is only a live exchange once it has streamed this long.
    from: Option<tokio::time::Instant>,
    /// Whether it is in the index and the gauge.
    indexed: bool,
    /// Set when the engine relaying it can end it cleanly ([`closer`]).
    ending: Option<Arc<Ending>>,
    /// The invalidation channel that reports its key's changes.
    channel: usize,
    head: RequestHeader,
    arrival: Arrival,
}

/// How an engine that can end its exchange cleanly (a WebSocket relay that
/// sends close frames) learns that it is to end.
pub(crate) struct Ending {
    reason: OnceLock<&'static str>,
    notify: Notify,
}

impl Ending {
    /// Resolves with the reason once the exchange is to end.
    pub async fn ended(&self) -> &'static str {
        loop {
            let notified = self.notify.notified();
            if let Some(reason) = self.reason.get() {
                return reason;
            }
            notified.await;
        }
    }
}

/// How long an exchange that ends cleanly may take to do so before its
/// connections are dropped.
const GRACE: Duration = Duration::from_secs(1);

impl Slot {
    fn start(self: &Arc<Self>, watch: Watch) {
        self.unverified.store(false, Ordering::Release);
        let deferred = watch.from.is_some();
        *lock(&self.watch) = Some(Box::new(watch));
        self.watched.store(true, Ordering::Release);
        if !deferred {
            self.index();
        }
    }

    /// Puts the exchange in the index (and the gauge): from now on changes
    /// of its key reach it.
    fn index(self: &Arc<Self>) {
        let key = {
            let mut watch = lock(&self.watch);
            let Some(watch) = watch.as_mut().filter(|w| !w.indexed) else {
                return;
            };
            watch.indexed = true;
            metrics::live_exchange(watch.kind.as_str(), 1);
            watch.key.clone()
        };
        lock(&REGISTRY)
            .entry(key)
            .or_default()
            .push(Arc::downgrade(self));
    }

    /// Ends the watch; with a reason when the exchange is being ended for it.
    fn stop(self: &Arc<Self>, reason: Option<&'static str>) {
        if !self.watched.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(watch) = lock(&self.watch).take() else {
            return;
        };
        if !watch.indexed {
            // A response that ended before it became a live exchange.
            return;
        }
        metrics::live_exchange(watch.kind.as_str(), -1);
        {
            let mut registry = lock(&REGISTRY);
            if let Some(slots) = registry.get_mut(&watch.key) {
                slots.retain(|w| {
                    w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(self))
                });
                if slots.is_empty() {
                    registry.remove(&watch.key);
                }
            }
        }
        if let Some(reason) = reason {
            metrics::live_closed(reason);
            tracing::info!(
                target: "sessiongate::live",
                reason,
                kind = watch.kind.as_str(),
                route = %watch.route,
                user = watch.user.as_deref().unwrap_or(""),
                age_ms = watch.since.elapsed().as_millis() as u64,
                "live exchange ended"
            );
        }
    }

    /// Asks the pipeline whether the exchange's head is still admitted:
    /// `None` to keep it, else why it ends.
    async fn recheck(self: &Arc<Self>) -> Option<&'static str> {
        if self.unverified.load(Ordering::Acquire) {
            return Some("channel_lost");
        }
        let (head, arrival) = {
            let watch = lock(&self.watch);
            let watch = watch.as_ref()?;
            (watch.head.clone(), watch.arrival.clone())
        };
        let pipeline = PIPELINE.get()?.load_full();
        let reason = pipeline
            .readmits(&head, head.raw_path(), &arrival)
            .await
            .err()?;
        match reason {
            "store_unavailable" => {
                // Redis is unreachable: the cache is bypassed meanwhile, and
                // the exchange is asked about again until Redis answers.
                let slot = Arc::downgrade(self);
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    if let Some(slot) = slot.upgrade() {
                        slot.changed.notify_one();
                    }
                });
                None
            }
            "role_missing" | "claim_mismatch" | "identity_invalid" => Some("role_changed"),
            "expired" => Some("expired"),
            _ => Some("revoked"),
        }
    }
}

impl Drop for Slot {
    /// A connection or stream dropped while its exchange was watched (the
    /// server shutting down, an HTTP/2 deadline): the gauge and the index
    /// forget it.
    fn drop(&mut self) {
        if !*self.watched.get_mut() {
            return;
        }
        let watch = self
            .watch
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(watch) = watch.filter(|w| w.indexed) {
            metrics::live_exchange(watch.kind.as_str(), -1);
            let mut registry = lock(&REGISTRY);
            if let Some(slots) = registry.get_mut(&watch.key) {
                slots.retain(|w| w.strong_count() > 0);
                if slots.is_empty() {
                    registry.remove(&watch.key);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called by an engine about to relay a response head (`status`,
/// `headers`) for a request `principal` (`None`: a public route) was
/// admitted with on `route`: when the response starts a live exchange, ties
/// it to the principal's key. Nothing happens outside a transport that
/// watches.
pub(crate) fn relaying(
    status: u16,
    headers: &http::HeaderMap,
    principal: Option<&Principal>,
    route: &Route,
    head: &RequestHeader,
    arrival: &Arrival,
) {
    let Some(principal) = principal else {
        return;
    };
    if route.live == LivePolicy::Keep {
        return;
    }
    let Some(kind) = Kind::of(status, headers) else {
        return;
    };
    if kind == Kind::Poll && head.method == http::Method::HEAD {
        return;
    }
    let _ = SLOT.try_with(|slot| {
        let now = tokio::time::Instant::now();
        let lifetime = route.max_lifetime.map(|l| (now + l, "max_lifetime"));
        // A bearer JWT's `exp` ends what it admitted; the earlier end wins.
        let exp = principal
            .ends_at
            .map(|at| (tokio::time::Instant::from_std(at), "expired"));
        let until = match (lifetime, exp) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        slot.start(Watch {
            key: principal.key.clone(),
            kind,
            route: route.name.clone(),
            user: principal.user.clone(),
            since: Instant::now(),
            until,
            from: (kind == Kind::Poll).then(|| now + route.live_after),
            indexed: false,
            ending: None,
            channel: principal.channel,
            head: head.clone(),
            arrival: arrival.clone(),
        });
    });
}

/// For an engine that can end the exchange it relays cleanly (a WebSocket
/// relay sends close frames): once called, an exchange that is to end is
/// told through the returned [`Ending`] and given [`GRACE`] to finish
/// before its connections are dropped. `None` outside a watched exchange.
pub(crate) fn closer() -> Option<Arc<Ending>> {
    SLOT.try_with(|slot| {
        let mut watch = lock(&slot.watch);
        let watch = watch.as_mut()?;
        Some(
            watch
                .ending
                .get_or_insert_with(|| {
                    Arc::new(Ending {
                        reason: OnceLock::new(),
                        notify: Notify::new(),
                    })
                })
                .clone(),
        )
    })
    .ok()
    .flatten()
}

/// The key changed in Redis (any command): its exchanges re-check.
fn changed(key: &str) {
    let registry = lock(&REGISTRY);
    if let Some(slots) = registry.get(key) {
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.changed.notify_one();
        }
    }
}

/// Every key may have changed (a flush, or the channel is back after an
/// outage in which changes went unheard): every exchange re-checks.
fn changed_all() {
    let registry = lock(&REGISTRY);
    for slot in registry.values().flatten().filter_map(Weak::upgrade) {
        slot.changed.notify_one();
    }
}

/// The invalidation channel is down: changes of keys go unheard until it is
/// back (then every exchange re-checks). With `[cache] max_unverified`,
/// exchanges still running when the channel has been down that long end.
fn channel_lost(channel: usize) {
    let since = {
        let mut down = lock(&DOWN_SINCE);
        if down.contains_key(&channel) {
            return;
        }
        let now = Instant::now();
        down.insert(channel, now);
        now
    };
    let Some(limit) = PIPELINE
        .get()
        .and_then(|p| p.load().config.cache.max_unverified)
    else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        tokio::time::sleep(limit).await;
        if lock(&DOWN_SINCE).get(&channel) != Some(&since) {
            return;
        }
        // Only the exchanges whose keys that channel reports: a profile on
        // another Redis is still heard.
        let registry = lock(&REGISTRY);
        for slot in registry.values().flatten().filter_map(Weak::upgrade) {
            let heard_on = lock(&slot.watch).as_ref().map(|w| w.channel);
            if heard_on == Some(channel) {
                slot.unverified.store(true, Ordering::Release);
                slot.changed.notify_one();
            }
        }
    });
}

/// An invalidation channel is back: every exchange re-checks.
fn channel_back(channel: usize) {
    lock(&DOWN_SINCE).remove(&channel);
    changed_all();
}

/// Runs `work` (one request's forwarding) as the exchange in `slot`: `None`
/// when it was ended because its session no longer admits it, else its
/// output. Until an engine ties an exchange to the slot ([`relaying`]),
/// only `work` is polled.
pub(crate) async fn watch<F: Future>(slot: &Arc<Slot>, work: F) -> Option<F::Output> {
    let work = SLOT.scope(slot.clone(), work);
    tokio::pin!(work);
    let first = std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if slot.watched.load(Ordering::Acquire) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await;
    if let Some(out) = first {
        slot.stop(None);
        return Some(out);
    }
    let (until, from) = lock(&slot.watch)
        .as_ref()
        .map_or((None, None), |w| (w.until, w.from));
    let lifetime = async move {
        match until {
            Some((until, _)) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lifetime);
    let deferred = from.map(tokio::time::sleep_until);
    let mut deferred = std::pin::pin!(futures_util::future::OptionFuture::from(deferred));
    let mut indexed = from.is_none();
    let reason = loop {
        tokio::select! {
            biased;
            out = &mut work => {
                slot.stop(None);
                return Some(out);
            }
            () = slot.changed.notified() => {
                // Boxed: the re-check holds a whole pipeline decision, and
                // every connection's future would otherwise keep room for it.
                if let Some(reason) = Box::pin(slot.recheck()).await {
                    break reason;
                }
            }
            () = &mut lifetime => {
                break until.map_or("max_lifetime", |(_, why)| why);
            }
            _ = &mut deferred, if !indexed => {
                indexed = true;
                slot.index();
                // A change that landed before it was indexed went unheard.
                slot.changed.notify_one();
            }
        }
    };
    // An engine that can end the exchange cleanly is told, and given a
    // moment; otherwise (or after it) the work is dropped.
    let ending = lock(&slot.watch).as_ref().and_then(|w| w.ending.clone());
    if let Some(ending) = ending {
        let _ = ending.reason.set(reason);
        ending.notify.notify_one();
        let _ = tokio::time::timeout(GRACE, &mut work).await;
    }
    slot.stop(Some(reason));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_and_event_streams_live_on() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(Kind::of(101, &headers), Some(Kind::Upgrade));
        // No announced length: a long poll, once it has streamed a while.
        assert_eq!(Kind::of(200, &headers), Some(Kind::Poll));
        assert_eq!(Kind::of(204, &headers), None);
        assert_eq!(Kind::of(304, &headers), None);
        headers.insert(http::header::CONTENT_LENGTH, "12".parse().unwrap());
        assert_eq!(Kind::of(200, &headers), None);
        headers.insert(
            http::header::CONTENT_TYPE,
            "Text/Event-Stream; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(Kind::of(200, &headers), Some(Kind::Stream));
        headers.insert(http::header::CONTENT_TYPE, "text/html".parse().unwrap());
        assert_eq!(Kind::of(200, &headers), None);
        headers.remove(http::header::CONTENT_LENGTH);
        assert_eq!(Kind::of(200, &headers), Some(Kind::Poll));
    }
}

#[cfg(test)]
mod registry {
    use super::*;

    fn watch(key: &str) -> Watch {
        Watch {
            key: key.into(),
            kind: Kind::Upgrade,
            route: "r".into(),
            user: None,
            since: Instant::now(),
            until: None,
            from: None,
            indexed: false,
            ending: None,
            channel: 0,
            head: RequestHeader::build("GET", b"/ws", None).unwrap(),
            arrival: Arrival::default(),
        }
    }

    fn indexed(key: &str) -> usize {
        lock(&REGISTRY).get(key).map_or(0, Vec::len)
    }

    #[test]
    fn a_watch_is_indexed_until_stopped_or_dropped() {
        let a = Arc::new(Slot::default());
        let b = Arc::new(Slot::default());
        a.start(watch("live-test:1"));
        b.start(watch("live-test:1"));
        assert_eq!(indexed("live-test:1"), 2);
        a.stop(None);
        assert_eq!(indexed("live-test:1"), 1);
        // Stopping twice is a no-op.
        a.stop(None);
        assert_eq!(indexed("live-test:1"), 1);
        // Dropped while watched (a connection the server dropped).
        drop(b);
        assert_eq!(indexed("live-test:1"), 0);
        assert!(!lock(&REGISTRY).contains_key("live-test:1"));
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn a_slot_is_small() {
        // Every HTTP/1 connection holds one.
        assert!(
            std::mem::size_of::<super::Slot>() <= 96,
            "{}",
            std::mem::size_of::<super::Slot>()
        );
    }
}
