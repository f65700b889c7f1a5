//! The invalidation bus: how every instance's L1 stays coherent with writes made through the
//! others. Two ways to hear of writes, one connection each:
//! - `pubsub`: a write's pipeline ends with `PUBLISH <channel> <key>` (see `L2::announce`),
//!   or on our own connections one `PUBLISH <channel>:keys <keys>` for all the writes sent
//!   together (`pipe::keys_channel`); every instance subscribes to both channels and evicts
//!   each key it hears; an empty key empties L1 (FLUSHALL and other writes of unknown keys,
//!   forwarded by the RESP door). Its own batches' echoes it skips once their writers have
//!   evicted their keys here (`echo`). Alone on the bus (no other subscriber: a hello on
//!   the channel as it subscribes, `PUBSUB NUMSUB` at each PING) it does not subscribe to
//!   the keys channel, whose every message would be its own: they are kept in-process and
//!   settled the same way (`Echoes::keep`); a newcomer's hello ends that, with a flush.
//! - `tracking`: Redis' client-side caching in broadcast mode (`CLIENT TRACKING ON BCAST
//!   PREFIX ...`): Redis itself pushes the name of every key written under the prefixes, by
//!   any client, including programs that bypass tiergate and keys Redis expires or evicts.
//! - `pubsub` on a cluster is sharded: a write SPUBLISHes on its slot's channel
//!   (`conn::shard_channel`) on the node that applied it, and every instance holds one cluster
//!   connection SSUBSCRIBEd to the channels of all 16,384 slots. A dropped node connection or
//!   a moved slot (Redis then pushes `sunsubscribe`) counts as a loss.
//!
//! Pub/sub is at-most-once: a message published while an instance is not subscribed is lost
//! to it. So L1 is trusted only while the subscription is live. When it drops, reads go to L2
//! first, and when it is back L1 is flushed before it is trusted again. What the connection
//! hears lands in a bounded queue; if the queue overflows (the instance fell that far
//! behind), that counts as a drop too, rather than the queue growing.
//!
//! The connection: `pubsub` on one Redis over TCP is a subscription of our own
//! (`pipe::Subscription`, RESP2): every write is announced there, this instance's own
//! included, and redis-rs' parser made hearing one cost 7k instructions. Tracking mode,
//! clusters and TLS subscribe through redis-rs (RESP3 pushes).

use super::{
    conn::{shard_channel, SLOTS},
    echo::{self, Echoes, Hello, State, Tag},
    pipe::{keys_channel, next_key, Pushed, Subscription, Target},
    TieredCache,
};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use redis::{
    aio::MultiplexedConnection, cluster::ClusterClient, cluster_async::ClusterConnection,
    AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisResult, Value,
};
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{sync::mpsc, time::Instant};

/// This instance's view of the bus.
pub struct Bus {
    listen: Listen,
    queue: usize,
    subscribed: AtomicBool,
}

/// What the bus connection listens to.
#[derive(Clone, Debug)]
pub enum Listen {
    /// SUBSCRIBE to the channel writes are announced on.
    Channel(String),
    /// CLIENT TRACKING ON BCAST with these prefixes (none: every key).
    Tracking(Vec<String>),
    /// SSUBSCRIBE to this channel's shard of every slot of a cluster.
    Sharded(String),
}

/// SSUBSCRIBEs in flight at once while joining a sharded bus.
const SUBSCRIBE_CONCURRENCY: usize = 256;

/// The bus connection.
enum Listener {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
    /// `pubsub` on one Redis over TCP: a subscription of our own (`cache/pipe.rs`), since
    /// every write's announcement, this instance's own included, is parsed here.
    Own(Subscription),
}

impl Listener {
    /// Whether Redis answers a PING on this connection.
    async fn ping(&mut self) -> bool {
        let ping = redis::cmd("PING");
        match self {
            Listener::Node(c) => ping.query_async::<Value>(c).await.is_ok(),
            // Routed by redis-rs to every node.
            Listener::Cluster(c) => ping.query_async::<Value>(c).await.is_ok(),
            Listener::Own(s) => s.ping().await.is_ok(),
        }
    }
}

impl Listen {
    /// Connects and starts listening, what is heard going to `pass`: on the one L2 node
    /// (single-node modes) or on the cluster that `clients` seed (sharded).
    async fn connect(
        &self,
        clients: &[redis::Client],
        pass: impl Fn(Heard) + Clone + Send + Sync + 'static,
        deadline: std::time::Duration,
    ) -> Result<Listener, String> {
        let own = match (self, clients) {
            (Listen::Channel(channel), [one]) => {
                Target::of(one, deadline, deadline).map(|t| (channel, t))
            }
            _ => None,
        };
        if let Some((channel, target)) = own {
            let heard = move |p| {
                pass(match p {
                    Pushed::Key(key) => heard_key(key),
                    Pushed::Keys(body) => Heard::Keys(body),
                    Pushed::Lost => Heard::Lost,
                })
            };
            return Subscription::start(&target, channel, heard)
                .await
                .map(Listener::Own)
                .map_err(|e| e.to_string());
        }
        let many = match self {
            Listen::Channel(channel) => Some(keys_channel(channel)),
            _ => None,
        };
        self.connect_redis_rs(clients, on_push(pass, many), deadline)
            .await
            .map_err(|e| e.to_string())
    }

    /// `connect` through redis-rs: tracking mode, clusters, TLS.
    async fn connect_redis_rs(
        &self,
        clients: &[redis::Client],
        on_push: impl redis::aio::AsyncPushSender,
        deadline: std::time::Duration,
    ) -> RedisResult<Listener> {
        let node = |on_push| {
            let config = AsyncConnectionConfig::new()
                .set_push_sender(on_push)
                .set_connection_timeout(Some(deadline))
                .set_response_timeout(Some(deadline));
            async move {
                clients[0]
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
        };
        match self {
            Listen::Sharded(channel) => join_shards(clients, channel, on_push, deadline)
                .await
                .map(Listener::Cluster),
            // Through redis-rs' own call: in RESP3 the confirmation arrives as a push.
            Listen::Channel(channel) => {
                let mut conn = node(on_push).await?;
                conn.subscribe(&[channel.clone(), keys_channel(channel)])
                    .await?;
                Ok(Listener::Node(conn))
            }
            Listen::Tracking(prefixes) => {
                let mut conn = node(on_push).await?;
                let mut cmd = redis::cmd("CLIENT");
                cmd.arg("TRACKING").arg("ON").arg("BCAST");
                for p in prefixes {
                    cmd.arg("PREFIX").arg(p);
                }
                cmd.exec_async(&mut conn).await?;
                Ok(Listener::Node(conn))
            }
        }
    }

    /// How long connecting may take: joining a sharded bus is 16,384 SSUBSCRIBEs, so it gets
    /// room beyond one call's deadline.
    fn connect_budget(&self, deadline: std::time::Duration) -> std::time::Duration {
        match self {
            Listen::Sharded(_) => deadline * 10,
            _ => deadline * 2,
        }
    }
}

/// What the subscription's push handler passes on.
enum Heard {
    Evict(Bytes),
    /// A message on the keys channel: perhaps a tag, then keys (`echo::split`).
    Keys(Bytes),
    /// Redis dropped every tracked key at once (FLUSHALL, FLUSHDB).
    EvictAll,
    /// The connection closed, or the queue overflowed: messages may have been missed.
    Lost,
}

/// Why a subscription ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    Lost(String),
}

impl Bus {
    pub fn new(listen: Listen, queue: usize) -> Self {
        Self {
            listen,
            queue,
            subscribed: AtomicBool::new(false),
        }
    }

    /// Whether every write announced since L1 was last flushed has been heard: only then may
    /// an L1 entry be served without asking L2.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }
}

/// Follows the bus until shutdown: subscribe, flush L1, evict what is heard; on any loss,
/// stop trusting L1 and start over after `l2.health_interval`.
pub async fn follow(cache: Arc<TieredCache>, retry: std::time::Duration, shutdown: Shutdown) {
    let (Some(l2), Some(bus)) = (cache.l2.clone(), cache.bus.clone()) else {
        return;
    };
    let clients = match l2
        .nodes()
        .iter()
        .map(resp3_client)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalidation bus: cannot build a RESP3 client; L1 stays untrusted");
            return;
        }
    };
    loop {
        let ended = subscription(&cache, &bus, &clients, l2.deadline(), &shutdown).await;
        let was_subscribed = bus.subscribed.swap(false, Ordering::AcqRel);
        if was_subscribed {
            cache.metrics.bus_subscribed.set(0);
        }
        match ended {
            Ended::Shutdown => return,
            // Warn once per loss, not once per retry while Redis stays down.
            Ended::Lost(why) if was_subscribed => tracing::warn!(
                why,
                "invalidation bus: not subscribed; reads go to L2 until it is back"
            ),
            Ended::Lost(why) => tracing::debug!(why, "invalidation bus: still not subscribed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Most messages handled per wake-up of the bus task: bounds how long it holds its thread.
const DRAIN_PER_WAKE: usize = 128;

/// How long an own echo heard before its writers reported (`echo`) waits for them. The
/// writers run on the main runtime, this task on the background one: the reply and the echo
/// arrive together, and either may be read first. One that has not reported by then may
/// never (it was cancelled), and the echo evicts, this much later than it would have.
/// Natively its writers report within microseconds; 2 ms still let 40% of them miss it
/// under callgrind, where threads take turns, and so might they on an overloaded machine.
const ECHO_GRACE: Duration = Duration::from_millis(20);

/// Most own echoes waiting for their writers at once; past it they evict at once.
const ECHOES_WAITING: usize = 4096;

/// An own echo waiting for its batch's writers.
struct Waiting {
    until: Instant,
    seq: u64,
    /// Its keys (`pipe::pack_key`).
    keys: Bytes,
}

/// One subscription, from connect to loss.
async fn subscription(
    cache: &TieredCache,
    bus: &Bus,
    clients: &[redis::Client],
    deadline: std::time::Duration,
    shutdown: &Shutdown,
) -> Ended {
    let (tx, mut rx) = mpsc::channel(bus.queue);
    let lost = Arc::new(AtomicBool::new(false));
    // Runs on the connection's reader: it must not wait. A full queue means messages are
    // being dropped, which only a flush can make up for.
    let pass = {
        let lost = lost.clone();
        move |heard| {
            if tx.try_send(heard).is_err() {
                lost.store(true, Ordering::Release);
            }
        }
    };
    let connect = bus.listen.connect(clients, pass, deadline);
    let mut conn = tokio::select! {
        c = tokio::time::timeout(bus.listen.connect_budget(deadline), connect) => match c {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Ended::Lost(e),
            Err(_) => return Ended::Lost("subscribe timed out".into()),
        },
        _ = shutdown.wait() => return Ended::Shutdown,
    };
    let echoes = cache.l2.as_ref().and_then(|l2| l2.echoes()).cloned();
    // Alone on the bus, this instance does not hear its own announcements back: they are
    // kept (`Echoes::keep`) from before it asks until it hears another instance.
    let mut alone = false;
    let keeping = match (&mut conn, &echoes) {
        (Listener::Own(sub), Some(own)) => {
            let keeping = Keeping::start(own, &cache.metrics);
            match tokio::time::timeout(deadline, sub.join(&own.hello())).await {
                Ok(Ok(alone_now)) => alone = alone_now,
                Ok(Err(e)) => return Ended::Lost(e.to_string()),
                Err(_) => return Ended::Lost("joining the bus timed out".into()),
            }
            keeping.alone(alone);
            Some(keeping)
        }
        _ => None,
    };
    // Subscribed: from here on every announced write is heard (or, alone, kept: `echo`).
    // Whatever L1 holds from before may have missed some, so it goes.
    cache.flush_l1();
    bus.subscribed.store(true, Ordering::Release);
    cache.metrics.bus_subscribed.set(1);
    tracing::info!(
        listen = ?bus.listen,
        alone,
        "invalidation bus: subscribed; L1 flushed and trusted"
    );

    // A peer that vanishes without closing the socket is found by pinging it. The timer and
    // the shutdown wait live across the loop: a message per write made anywhere must not
    // cost a timer registration and a waiter each.
    let mut ping_at = tokio::time::Instant::now() + deadline;
    let ping = tokio::time::sleep_until(ping_at);
    tokio::pin!(ping);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    // This instance's own echoes heard before their writers reported (`echo`), oldest first,
    // and one timer for the oldest, set when the first is put here.
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let grace = tokio::time::sleep_until(ping_at);
    tokio::pin!(grace);
    // Alone: own messages kept (`Echoes::keep`) are taken at every turn of this timer.
    let turn = tokio::time::sleep(ECHO_GRACE);
    tokio::pin!(turn);
    let mut kept = VecDeque::new();
    loop {
        tokio::select! {
            heard = rx.recv() => {
                let mut heard = heard;
                // What is already queued too, up to a bound, before waiting again: one
                // wake-up per burst of writes, not per write.
                let mut budget = DRAIN_PER_WAKE;
                loop {
                    match heard {
                        Some(Heard::Evict(key)) => {
                            match echoes.as_deref().and_then(|own| own.hello_of(&key)) {
                                Some(Hello::Other) if alone => {
                                    // Alone only on a subscription of our own, with `keeping`.
                                    if let (Listener::Own(sub), Some(keeping)) = (&mut conn, &keeping) {
                                        if let Err(why) = no_longer_alone(cache, bus, sub, keeping, deadline).await {
                                            return Ended::Lost(why);
                                        }
                                    }
                                    alone = false;
                                }
                                Some(_) => {}
                                None => {
                                    cache.heard(&key).await;
                                    cache.metrics.bus_invalidations.inc();
                                }
                            }
                        }
                        Some(Heard::Keys(body)) => {
                            match heard_keys(cache, echoes.as_deref(), &mut waiting, body).await {
                                Ok(Some(until)) => grace.as_mut().reset(until),
                                Ok(None) => {}
                                Err(()) => return Ended::Lost("a malformed announcement".into()),
                            }
                        }
                        Some(Heard::EvictAll) => cache.flush_l1(),
                        Some(Heard::Lost) | None => return Ended::Lost("connection closed".into()),
                    }
                    budget -= 1;
                    if budget == 0 {
                        break;
                    }
                    heard = match rx.try_recv() {
                        Ok(next) => Some(next),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                }
                if let (Some(own), false) = (echoes.as_deref(), waiting.is_empty()) {
                    settle(cache, own, &mut waiting, false).await;
                }
            }
            () = &mut grace, if !waiting.is_empty() => {
                if let Some(own) = echoes.as_deref() {
                    settle(cache, own, &mut waiting, true).await;
                }
                if let Some(first) = waiting.front() {
                    grace.as_mut().reset(first.until);
                }
            }
            () = &mut turn, if echoes.is_some() => {
                if let Some(own) = echoes.as_deref() {
                    if own.take_kept(&mut kept) {
                        cache.flush_l1();
                    }
                    let mut first = None;
                    for message in kept.drain(..) {
                        match heard_keys(cache, Some(own), &mut waiting, message).await {
                            Ok(Some(until)) => first = first.or(Some(until)),
                            Ok(None) => {}
                            // Our own messages, packed here: well-formed.
                            Err(()) => {}
                        }
                    }
                    if let Some(until) = first {
                        grace.as_mut().reset(until);
                    }
                    if !waiting.is_empty() {
                        settle(cache, own, &mut waiting, false).await;
                    }
                }
                turn.as_mut().reset(Instant::now() + ECHO_GRACE);
            }
            () = &mut ping => {
                let pong = tokio::time::timeout(deadline, conn.ping()).await;
                if pong != Ok(true) {
                    return Ended::Lost("PING unanswered".into());
                }
                // Who else listens now: a subscriber that said no hello, or the last other
                // instance gone.
                if let (Listener::Own(sub), Some(keeping)) = (&mut conn, &keeping) {
                    let others = match tokio::time::timeout(deadline, sub.others()).await {
                        Ok(Ok(others)) => others,
                        Ok(Err(e)) => return Ended::Lost(e.to_string()),
                        Err(_) => return Ended::Lost("PUBSUB NUMSUB unanswered".into()),
                    };
                    if alone == others {
                        let changed = if others {
                            no_longer_alone(cache, bus, sub, keeping, deadline).await
                        } else {
                            alone_again(sub, keeping, deadline).await
                        };
                        if let Err(why) = changed {
                            return Ended::Lost(why);
                        }
                        alone = !others;
                    }
                }
                ping_at += deadline;
                ping.as_mut().reset(ping_at);
            }
            () = &mut stop => return Ended::Shutdown,
        }
        if lost.load(Ordering::Acquire) {
            return Ended::Lost("fell behind: invalidation queue full".into());
        }
    }
}

/// Own messages are kept (`Echoes::keep`) from its start until the subscription hears
/// others (`Echoes::set_alone(false)`) or ends, however it ends: what was applied before
/// the next subscription is covered by the flush that starts it.
struct Keeping<'a> {
    own: Arc<Echoes>,
    metrics: &'a crate::metrics::Metrics,
}

impl<'a> Keeping<'a> {
    fn start(own: &Arc<Echoes>, metrics: &'a crate::metrics::Metrics) -> Self {
        own.set_alone(true);
        Self {
            own: own.clone(),
            metrics,
        }
    }

    /// Alone (the gauge says so), or no longer: own messages are heard back from Redis.
    fn alone(&self, alone: bool) {
        self.own.set_alone(alone);
        self.metrics.bus_alone.set(i64::from(alone));
    }
}

impl Drop for Keeping<'_> {
    fn drop(&mut self) {
        self.alone(false);
    }
}

/// Another instance listens on the bus: listen to the keys channel too, then flush L1,
/// which may hold what that instance wrote before it was heard. L1 is not trusted meanwhile.
/// Err(why) if the subscription failed.
async fn no_longer_alone(
    cache: &TieredCache,
    bus: &Bus,
    sub: &mut Subscription,
    keeping: &Keeping<'_>,
    deadline: Duration,
) -> Result<(), String> {
    bus.subscribed.store(false, Ordering::Release);
    cache.metrics.bus_subscribed.set(0);
    match tokio::time::timeout(deadline, sub.listen_keys()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("SUBSCRIBE unanswered".into()),
    }
    keeping.alone(false);
    cache.flush_l1();
    bus.subscribed.store(true, Ordering::Release);
    cache.metrics.bus_subscribed.set(1);
    tracing::info!("invalidation bus: another instance listens; L1 flushed, announcements heard");
    Ok(())
}

/// The other instances have left the bus: stop hearing own announcements. Kept from before
/// Redis stops sending them, so that each is either heard or kept.
async fn alone_again(
    sub: &mut Subscription,
    keeping: &Keeping<'_>,
    deadline: Duration,
) -> Result<(), String> {
    keeping.alone(true);
    match tokio::time::timeout(deadline, sub.ignore_keys()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("UNSUBSCRIBE unanswered".into()),
    }
    tracing::info!("invalidation bus: alone on it; own announcements kept, not heard back");
    Ok(())
}

/// Acts on a message on the keys channel: evicts its keys, unless it is this instance's own
/// echo (`echo`), which is skipped once every writer of its batch has evicted here, and
/// otherwise waits for them (`settle`). Some(when) to set the timer for, when the first
/// echo starts waiting; Err if the message is malformed.
async fn heard_keys(
    cache: &TieredCache,
    own: Option<&Echoes>,
    waiting: &mut VecDeque<Waiting>,
    body: Bytes,
) -> Result<Option<Instant>, ()> {
    let (tag, keys) = echo::split(own, &body)?;
    let state = match (tag, own) {
        (Tag::Own(seq), Some(own)) => Some((seq, own.state(seq))),
        _ => None,
    };
    match state {
        Some((_, State::Evicted)) => cache.metrics.bus_own_echoes_skipped.inc(),
        Some((seq, State::Pending)) if waiting.len() < ECHOES_WAITING => {
            let until = Instant::now() + ECHO_GRACE;
            let first = waiting.is_empty().then_some(until);
            let keys = body.slice_ref(keys);
            waiting.push_back(Waiting { until, seq, keys });
            return Ok(first);
        }
        _ => evict_keys(cache, keys).await?,
    }
    Ok(None)
}

/// Settles the own echoes waiting for their writers, oldest first, up to the first that
/// must wait on: skipped if every writer has reported, evicted once its grace is over (or
/// at once when `expire`'s timer has fired, for those whose grace is over).
async fn settle(cache: &TieredCache, own: &Echoes, waiting: &mut VecDeque<Waiting>, expire: bool) {
    let now = expire.then(Instant::now);
    while let Some(first) = waiting.front() {
        match own.state(first.seq) {
            State::Evicted => cache.metrics.bus_own_echoes_skipped.inc(),
            State::Pending if now.is_none_or(|now| first.until > now) => return,
            // Our own message, packed here: well-formed.
            _ => {
                let _ = evict_keys(cache, &first.keys).await;
            }
        }
        waiting.pop_front();
    }
}

/// Evicts each key of a message on the keys channel (`pipe::pack_key`); Err if it is not a
/// run of bulk strings (the keys before that are evicted).
async fn evict_keys(cache: &TieredCache, mut keys: &[u8]) -> Result<(), ()> {
    while let Some(key) = next_key(&mut keys).map_err(drop)? {
        if key.is_empty() {
            cache.flush_l1();
        } else {
            cache.heard(key).await;
            cache.metrics.bus_invalidations.inc();
        }
    }
    Ok(())
}

/// What a key heard on the channel means: an empty one stands for every key (FLUSHALL, or a
/// write whose keys cannot be known, forwarded by some instance). A real empty key written
/// costs a flush too, which is never wrong, only wasteful.
fn heard_key(key: Bytes) -> Heard {
    if key.is_empty() {
        Heard::EvictAll
    } else {
        Heard::Evict(key)
    }
}

/// redis-rs' push handler: what a push means for L1, passed on. A message on `many` (the
/// `keys_channel`, when announcing on one Redis) holds many keys.
fn on_push(
    pass: impl Fn(Heard) + Send + Sync + 'static,
    many: Option<String>,
) -> impl redis::aio::AsyncPushSender {
    move |push: PushInfo| -> Result<(), ()> {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let [Value::BulkString(channel), Value::BulkString(body)] = &push.data[..] else {
                    return Ok(());
                };
                if many
                    .as_ref()
                    .is_some_and(|m| m.as_bytes() == channel.as_slice())
                {
                    pass(Heard::Keys(Bytes::copy_from_slice(body)));
                } else {
                    pass(heard_key(Bytes::copy_from_slice(body)));
                }
            }
            // We never unsubscribe: Redis moved a slot away, and its messages with it.
            PushKind::SUnsubscribe => pass(Heard::Lost),
            // ["invalidate", [key, ...]], or a nil for "everything".
            PushKind::Invalidate => match push.data.into_iter().next() {
                Some(Value::Array(keys)) => {
                    for k in keys {
                        if let Value::BulkString(key) = k {
                            pass(Heard::Evict(key.into()));
                        }
                    }
                }
                _ => pass(Heard::EvictAll),
            },
            PushKind::Disconnection => pass(Heard::Lost),
            _ => {}
        }
        Ok(())
    }
}

/// A cluster connection SSUBSCRIBEd to `channel`'s shard of every slot, its pushes (messages,
/// and `sunsubscribe` when a slot moves, and disconnections) going to `on_push`.
async fn join_shards(
    clients: &[redis::Client],
    channel: &str,
    on_push: impl redis::aio::AsyncPushSender,
    deadline: std::time::Duration,
) -> RedisResult<ClusterConnection> {
    let cluster = ClusterClient::builder(clients.iter().map(|c| c.get_connection_info().clone()))
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(on_push)
        .connection_timeout(deadline)
        .response_timeout(deadline)
        .build()?;
    let conn = cluster.get_async_connection().await?;
    futures_util::stream::iter(0..SLOTS)
        .map(|slot| {
            let mut c = conn.clone();
            async move { c.ssubscribe(shard_channel(channel, slot)).await }
        })
        .buffer_unordered(SUBSCRIBE_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(conn)
}

/// The L2 client's address and credentials, speaking RESP3 (pushes need it).
fn resp3_client(l2: &redis::Client) -> redis::RedisResult<redis::Client> {
    let info = l2.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}
