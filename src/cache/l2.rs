//! L2: Redis or a Redis Cluster, reached over a few multiplexed connections (`conn::Conn`).
//! Each connection pipelines every command sent to it concurrently, so requests from all
//! clients share a handful of sockets and round trips overlap instead of queuing for a pooled
//! connection. On a cluster, multi-key work is split into one pipeline per hash slot.
//! Single-key reads go through the `batch` lanes, which fold concurrent reads into MGETs.
//! Every call passes the circuit breaker first and counts as in flight until it is answered.

use super::{
    batch::{mget_pipeline, slots, Batcher, Slot},
    breaker::{Breaker, Change},
    cluster::Cluster,
    conn::{groups, shard_channel, slot_of, Conn},
    dedicated::{Dedicated, LendError, Lent},
    echo::{Batch, Echoes},
    forward::Run,
    pipe::{self, Pipe, Reply, Target},
    table::Table,
    ExpireCond, SetCond, SetOptions, SetOutcome, SetTtl, Ttl,
};
use crate::{
    config::{Invalidation, L2Config},
    metrics::{L2Op, Metrics},
    shutdown::Shutdown,
};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::{
    aio::ConnectionManager, aio::ConnectionManagerConfig, cluster::ClusterClient,
    cluster::ClusterConfig, RedisError,
};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, UNIX_EPOCH},
};

/// `release_lock`: compare the token, then delete the lock or leave the outcome in it.
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end \
         if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end \
         redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1",
    )
});

/// Why L2 could not answer. Cloneable so that coalesced readers can all receive it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum L2Error {
    #[error("L2 is unreachable: {0}")]
    Unavailable(String),
    #[error("L2 did not answer in time")]
    Timeout,
    /// The circuit breaker refused the call without trying: L2 failed repeatedly just now.
    #[error("L2 circuit is open after repeated failures")]
    CircuitOpen,
    /// Redis answered with an error: its code ("ERR", "WRONGTYPE", ...) and text, kept apart
    /// so the RESP door can pass the same kind of error on.
    #[error("L2 refused the command: {code} {detail}")]
    Refused { code: String, detail: String },
    /// A loader's origin (`[[origins.loaders]]`) gave no usable answer: it failed, or
    /// answered with a status other than 200 or 404. `code` is stable (`origin_timeout`,
    /// `origin_status` ...).
    #[error("{detail}")]
    Origin { code: &'static str, detail: String },
}

impl L2Error {
    /// Whether L2 could not be asked at all (down, too slow, circuit open), as opposed to
    /// having answered with an error. Only an outage lets stale L1 entries be answered.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            L2Error::Unavailable(_)
                | L2Error::Timeout
                | L2Error::CircuitOpen
                | L2Error::Origin { .. }
        )
    }

    fn refused(detail: impl Into<String>) -> Self {
        Self::store("ERR", &detail.into())
    }

    /// The store refused the operation the way Redis would (standalone mode's INCR on a
    /// non-integer, say), with Redis' code and text.
    pub fn store(code: &str, detail: &str) -> Self {
        L2Error::Refused {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

impl From<RedisError> for L2Error {
    fn from(e: RedisError) -> Self {
        if e.is_timeout() {
            L2Error::Timeout
        } else if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            // No connection to the node that owns the slot.
            || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        {
            L2Error::Unavailable(e.to_string())
        } else {
            let general = (
                e.code().unwrap_or("ERR").to_string(),
                e.detail().map_or_else(|| e.to_string(), str::to_string),
            );
            // A command that failed inside a pipeline: pass on Redis' own error for it
            // (WRONGTYPE ...), not redis-rs' "Pipeline failure" wrapper.
            let (code, detail) = match e.into_server_errors().as_deref() {
                Some([(_, first), ..]) => (
                    first.code().to_string(),
                    first.details().unwrap_or_default().to_string(),
                ),
                _ => general,
            };
            server_error(code, detail)
        }
    }
}

/// An error reply from Redis, by its code, whichever client read it (redis-rs or
/// `cache/pipe.rs`). One that means Redis cannot serve now (loading its dataset, the cluster
/// down or failing over) is an outage: it counts for the breaker and lets stale entries
/// answer, like a refused connection. Anything else is a refusal, passed on as Redis said it.
fn server_error(code: String, detail: String) -> L2Error {
    match code.as_str() {
        "LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" => {
            L2Error::Unavailable(format!("{code} {detail}"))
        }
        _ => L2Error::Refused { code, detail },
    }
}

/// Attempts per cluster call: enough to follow a MOVED or ASK after a resharding and a
/// slot-map refresh; an unreachable node fails the call rather than retrying past the deadline.
const CLUSTER_RETRIES: u32 = 3;

/// A value read from L2 and its remaining TTL there (None: the key does not expire).
pub type Fetched = (Bytes, Option<Duration>);

pub struct L2 {
    /// A client per node (one, or each listed cluster node), for the bus connection.
    nodes: Vec<redis::Client>,
    conns: Box<[Conn]>,
    /// Connections of our own for single-key writes (`cache/pipe.rs`): one Redis over TCP
    /// only; empty on a cluster, where every write goes through `conns`.
    pipes: Box<[Pipe]>,
    /// The same, speaking RESP3: for forwarding RESP3 clients' commands.
    pipes3: Box<[Pipe]>,
    /// Connections lent to one client at a time (`dedicated`): one Redis over TCP only.
    dedicated: Option<Dedicated>,
    /// On a cluster reached over TCP: the slot map and our own connections to each master,
    /// for forwarded commands (`cluster`).
    cluster: Option<Arc<Cluster>>,
    /// Redis' command table, read once L2 first answers (`table`); None until then.
    table: ArcSwapOption<Table>,
    /// Whether `conns` reach a cluster: multi-key work is then split by hash slot.
    clustered: bool,
    /// The invalidation channel every write announces its keys on (None: invalidation off).
    announce: Option<String>,
    /// The tags of the batches `pipes` announce, when they announce (`echo`).
    echoes: Option<Arc<Echoes>>,
    next: AtomicUsize,
    /// Most commands in one round trip: reads folded into an MGET, SETs in one pipeline.
    max_batch: usize,
    batcher: Batcher,
    breaker: Breaker,
    up: AtomicBool,
    health_interval: Duration,
    /// Response timeout plus connect timeout: the longest any one call may take.
    deadline: Duration,
    metrics: Arc<Metrics>,
}

impl L2 {
    /// Prepares the connections without connecting: a Redis that is down at start-up must not
    /// stop the gateway from starting. The health loop connects and reconnects.
    pub fn new(cfg: &L2Config, metrics: Arc<Metrics>) -> Result<Self, L2Error> {
        let clustered = !cfg.cluster_nodes.is_empty();
        let urls = if clustered {
            cfg.cluster_nodes.clone()
        } else {
            vec![cfg.url.clone()]
        };
        let nodes = urls
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| L2Error::refused(e.to_string()))?;
        let conns: Vec<Conn> = if clustered {
            let cluster = ClusterClient::builder(cfg.cluster_nodes.iter().map(String::as_str))
                .retries(CLUSTER_RETRIES)
                .build()
                .map_err(|e| L2Error::refused(e.to_string()))?;
            let cluster_cfg = ClusterConfig::new()
                .set_connection_timeout(cfg.connect_timeout.0)
                .set_response_timeout(cfg.timeout.0);
            (0..cfg.connections)
                .map(|_| Conn::Cluster {
                    // Pending: connects in the background, so a cluster that is down at
                    // start-up does not stop the gateway from starting.
                    conn: cluster.get_pending_async_connection_with_config(cluster_cfg.clone()),
                    route: None,
                })
                .collect()
        } else {
            let manager_cfg = ConnectionManagerConfig::new()
                .set_response_timeout(Some(cfg.timeout.0))
                .set_connection_timeout(Some(cfg.connect_timeout.0))
                // One attempt per reconnect: callers fail fast while Redis is down, and the
                // health loop's next probe starts the next attempt.
                .set_number_of_retries(0)
                .set_pipeline_buffer_size(cfg.pipeline_buffer);
            (0..cfg.connections)
                .map(|_| {
                    ConnectionManager::new_lazy_with_config(nodes[0].clone(), manager_cfg.clone())
                        .map(Conn::Node)
                })
                .collect::<Result<_, _>>()?
        };
        let deadline = cfg.timeout.0 + cfg.connect_timeout.0;
        let target =
            Target::of(&nodes[0], cfg.connect_timeout.0, cfg.timeout.0).filter(|_| !clustered);
        let cluster = if clustered {
            let seeds = nodes
                .iter()
                .map(|n| Target::of(n, cfg.connect_timeout.0, cfg.timeout.0))
                .collect::<Option<Vec<_>>>();
            seeds.map(|seeds| {
                Arc::new(Cluster::new(
                    seeds,
                    cfg.connections,
                    cfg.pipeline_buffer,
                    cfg.dedicated_connections,
                ))
            })
        } else {
            None
        };
        let announce =
            (cfg.invalidation == Invalidation::Pubsub).then(|| cfg.invalidation_channel.clone());
        let echoes = announce
            .as_ref()
            .filter(|_| target.is_some())
            .map(|_| Arc::new(Echoes::new()));
        let start = |target: Option<Target>| match target {
            Some(target) => (0..cfg.connections)
                .map(|_| {
                    Pipe::start(
                        target.clone(),
                        cfg.pipeline_buffer,
                        announce.as_deref(),
                        echoes.clone(),
                    )
                })
                .collect(),
            None => Box::default(),
        };
        Ok(Self {
            pipes: start(target.clone()),
            pipes3: start(target.clone().map(Target::resp3)),
            dedicated: target.map(|t| Dedicated::new(t, cfg.dedicated_connections)),
            cluster,
            table: ArcSwapOption::empty(),
            batcher: Batcher::start(
                &conns,
                clustered,
                cfg.max_batch,
                cfg.pipeline_buffer,
                deadline,
                metrics.clone(),
            ),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown.0),
            nodes,
            conns: conns.into(),
            clustered,
            announce,
            echoes,
            next: AtomicUsize::new(0),
            max_batch: cfg.max_batch,
            up: AtomicBool::new(false),
            health_interval: cfg.health_interval.0,
            deadline,
            metrics,
        })
    }

    /// Whether L2 answers: the last health probe of every connection succeeded and the
    /// circuit breaker is closed.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.breaker.is_open()
    }

    /// A client per node (one, or each listed cluster node), for connections of other kinds
    /// than the data connections (the bus).
    pub fn nodes(&self) -> &[redis::Client] {
        &self.nodes
    }

    /// The longest any one call may take (response plus connect timeout).
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Ends a write's pipeline with a PUBLISH of each key on the invalidation channel, so the
    /// announcement travels in the write's own round trip and reaches subscribers only after
    /// Redis has applied the write (one connection's commands run in order). On a cluster it
    /// is an SPUBLISH on the key's slot's channel (sharded pub/sub): it stays on the node that
    /// applied the write instead of being broadcast to every node.
    fn announce<'k>(&self, pipe: &mut redis::Pipeline, keys: impl IntoIterator<Item = &'k [u8]>) {
        for k in keys {
            if let Some(publish) = self.announcement(k) {
                pipe.add_command(publish).ignore();
            }
        }
    }

    /// The PUBLISH (SPUBLISH on a cluster) announcing a write of `key`, when announcing.
    fn announcement(&self, key: &[u8]) -> Option<redis::Cmd> {
        let channel = self.announce.as_ref()?;
        // Sized up front: grown from empty, redis-rs reallocates its buffers per argument.
        let mut cmd = redis::Cmd::with_capacity(3, channel.len() + key.len() + 16);
        if self.clustered {
            let shard = shard_channel(channel, slot_of(key));
            cmd.arg("SPUBLISH").arg(shard).arg(key);
        } else {
            cmd.arg("PUBLISH").arg(channel.as_str()).arg(key);
        }
        Some(cmd)
    }

    /// Announces `key` alone (a PUBLISH, or SPUBLISH on its shard), with no write before it:
    /// a purge of the proxy routes. Nothing when not announcing.
    pub async fn announce_key(&self, key: &[u8]) -> Result<(), L2Error> {
        let Some(cmd) = self.announcement(key) else {
            return Ok(());
        };
        let query = |mut c: Conn| async move { cmd.query_async::<redis::Value>(&mut c).await };
        self.run(L2Op::Set, key, query).await.map(drop)
    }

    /// Runs a one-key write: its command, then the announcement of `key`, in one round trip.
    /// With its reply, its `Batch` (see `evicted`).
    async fn write<T: redis::FromRedisValue + Send + 'static>(
        &self,
        op: L2Op,
        cmd: redis::Cmd,
        key: &[u8],
    ) -> Result<(T, Batch), L2Error> {
        if !self.pipes.is_empty() {
            let mut packed = Vec::with_capacity(256);
            cmd.write_packed_command(&mut packed);
            return self.write_piped(op, packed, key).await;
        }
        let mut pipe = redis::Pipeline::with_capacity(2);
        pipe.add_command(cmd);
        // The announcement's reply (how many subscribers heard it) is read and dropped rather
        // than marked ignored: redis-rs tracks ignored replies in a hash set per pipeline.
        Ok(match self.announcement(key) {
            Some(publish) => {
                pipe.add_command(publish);
                let query = |mut c: Conn| async move { pipe.query_async(&mut c).await };
                let (reply, _heard): (T, i64) = self.run(op, key, query).await?;
                (reply, Batch::NONE)
            }
            None => {
                let query = |mut c: Conn| async move { pipe.query_async(&mut c).await };
                let (reply,): (T,) = self.run(op, key, query).await?;
                (reply, Batch::NONE)
            }
        })
    }

    /// `write` over the next of our own connections (`cache/pipe.rs`): `packed` is the
    /// command, RESP-encoded; its announcement is added here.
    async fn write_piped<T: redis::FromRedisValue>(
        &self,
        op: L2Op,
        mut packed: Vec<u8>,
        key: &[u8],
    ) -> Result<(T, Batch), L2Error> {
        let pipe = self.next_pipe(false);
        let keys = self.pack_announcement(&mut packed, key);
        self.guard_untimed(op, async {
            let (mut replies, batch) = pipe.call_announcing(packed, keys, 1).await?;
            let v = reply_value(replies.swap_remove(0))?;
            let v = redis::from_redis_value(v).map_err(|e| L2Error::refused(e.to_string()))?;
            Ok((v, batch))
        })
        .await
    }

    /// The tags of this instance's batched announcements, when it tags them (`echo`).
    pub fn echoes(&self) -> Option<&Arc<Echoes>> {
        self.echoes.as_ref()
    }

    /// A write's keys have left L1, after Redis answered it: with every writer of its batch
    /// done, this instance need not act on its own echo (`echo`). Dropping a `Batch`
    /// instead leaves the echo to evict them.
    pub fn evicted(&self, batch: Batch) {
        if let Some(echoes) = &self.echoes {
            echoes.evicted(batch);
        }
    }

    /// The next of our own connections, speaking RESP3 when `resp3` (callers check there are
    /// some).
    fn next_pipe(&self, resp3: bool) -> &Pipe {
        let pipes = if resp3 { &self.pipes3 } else { &self.pipes };
        pipe::pick(pipes)
    }

    /// Whether commands can be forwarded: over our own connections, to one Redis or the
    /// masters of a cluster over TCP. Not yet over TLS.
    pub fn forwards(&self) -> bool {
        !self.pipes.is_empty() || self.cluster.is_some()
    }

    /// Whether L2 is a Redis Cluster.
    pub fn clustered(&self) -> bool {
        self.clustered
    }

    /// The pool of connections lent to one client at a time; None where forwarding is not
    /// available (see `forwards`).
    pub fn dedicated(&self) -> Option<&Dedicated> {
        self.dedicated.as_ref()
    }

    /// Whether connections can be lent to one client at a time (`resp::pinned`): one Redis
    /// or the masters of a cluster, over TCP.
    pub fn lends(&self) -> bool {
        self.dedicated.is_some() || self.cluster.is_some()
    }

    /// Lends a connection to one client: the one Redis', or on a cluster the master of
    /// `slot` (any master for None); speaking RESP3 when `resp3`.
    pub async fn lend(&self, slot: Option<u16>, resp3: bool) -> Result<Lent, LendError> {
        if let Some(cluster) = &self.cluster {
            return cluster.lend(slot, resp3).await;
        }
        match &self.dedicated {
            Some(pool) => pool.lend(resp3).await,
            None => Err(LendError::L2(L2Error::Unavailable(
                "no dedicated L2 connections here".into(),
            ))),
        }
    }

    /// Most connections lent at once (`l2.dedicated_connections`; over a cluster, all
    /// masters together); 0 where none are lent.
    pub fn dedicated_size(&self) -> usize {
        match (&self.cluster, &self.dedicated) {
            (Some(cluster), _) => cluster.dedicated_size(),
            (None, Some(pool)) => pool.size(),
            (None, None) => 0,
        }
    }

    /// Redis' command table, once L2 has answered; None before.
    pub fn table(&self) -> Option<Arc<Table>> {
        self.table.load_full()
    }

    /// Forwards `run` on our own connections speaking RESP3 when `resp3`, its writes
    /// announced after it; each command's reply as bytes (`Reply::Raw`), or
    /// `Reply::TooLarge` once they pass `limit` together. One Redis gets the run in one
    /// round trip; a cluster gets it routed by slot (`cluster`). Callers check `forwards`
    /// first.
    pub async fn forward(
        &self,
        run: &mut Run,
        resp3: bool,
        limit: usize,
    ) -> Result<(Vec<Reply>, Batch), L2Error> {
        let channel = self.announce.as_deref();
        if let Some(cluster) = &self.cluster {
            let table = self.table().ok_or_else(|| {
                L2Error::store("TRYAGAIN", "Redis' command table is not read yet")
            })?;
            let call = cluster.forward(&table, run, channel, resp3, limit);
            let replies = self.guard_untimed(L2Op::Forward, call).await?;
            return Ok((replies, Batch::NONE));
        }
        let clients = run.len();
        let (commands, keys, replies) = run.finish(channel);
        if replies == 0 {
            // Writes made elsewhere, and nothing to announce them on (tracking mode).
            return Ok((Vec::new(), Batch::NONE));
        }
        let pipe = self.next_pipe(resp3);
        let call = pipe.call_raw(commands, keys, replies, limit);
        let (mut replies, batch) = self.guard_untimed(L2Op::Forward, call).await?;
        // An announcement made alone answers how many instances heard: not the client's.
        replies.truncate(clients);
        Ok((replies, batch))
    }

    /// The channel writes are announced on, when announcing (`pubsub` invalidation).
    pub fn announce_channel(&self) -> Option<&str> {
        self.announce.as_deref()
    }

    /// Reads Redis' command table if it has not been read yet: at the first probe that
    /// finds Redis up, so a Redis down at start-up is read once it is back.
    async fn read_table(&self) {
        if self.table.load().is_some() {
            return;
        }
        let mut conn = self.conns[0].clone();
        match tokio::time::timeout(self.deadline, Table::load(&mut conn)).await {
            Ok(Ok(table)) => {
                tracing::info!(commands = table.len(), "read Redis' command table");
                self.table.store(Some(Arc::new(table)));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read Redis' command table; commands the RESP door does not serve are refused until it is read")
            }
            Err(_) => {
                tracing::warn!("reading Redis' command table timed out; retrying at the next probe")
            }
        }
    }

    /// Reads a cluster's slot map for forwarding, if it has not been read yet (MOVED replies
    /// keep it current after that).
    async fn read_slots(&self) {
        let Some(cluster) = self.cluster.as_ref().filter(|c| !c.has_map()) else {
            return;
        };
        if let Err(e) = cluster.load().await {
            tracing::warn!(error = %e, "cannot read the cluster's slot map; retrying at the next probe");
        }
    }

    /// Appends `key` to the keys a write on our own connections announces (`pipe::pack_key`;
    /// one Redis, so never SPUBLISH); how many bytes that took (none when not announcing).
    fn pack_announcement(&self, out: &mut Vec<u8>, key: &[u8]) -> usize {
        if self.announce.is_none() {
            return 0;
        }
        let before = out.len();
        pipe::pack_key(out, key);
        out.len() - before
    }

    /// The next connection, aimed at `key`'s slot on a cluster.
    fn conn(&self, key: &[u8]) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone().aimed_at(key)
    }

    /// Runs one command or pipeline about `key` (or keys of its slot) on the next connection
    /// (see `guard`).
    async fn run<T, F, Fut>(&self, op: L2Op, key: &[u8], f: F) -> Result<T, L2Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn(key);
        self.guard(op, async move { f(conn).await.map_err(L2Error::from) })
            .await
    }

    /// Runs `f` once per group of `keys` that can share a pipeline (one group on a single
    /// Redis, one per slot on a cluster), the groups concurrently; each result comes back with
    /// the indices of its group's keys.
    async fn per_slot<K, T, F, Fut>(
        &self,
        op: L2Op,
        keys: &[K],
        f: F,
    ) -> Result<Vec<(Vec<usize>, T)>, L2Error>
    where
        K: AsRef<[u8]>,
        F: Fn(Conn, &[usize]) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        try_join_all(groups(self.clustered, keys).into_iter().map(|group| {
            let first = group.first().map_or(&[][..], |&i| keys[i].as_ref());
            let conn = self.conn(first);
            let f = &f;
            async move {
                let out = self
                    .guard(op, async { f(conn, &group).await.map_err(L2Error::from) })
                    .await?;
                Ok((group, out))
            }
        }))
        .await
    }

    /// Every L2 call goes through here: the breaker's leave (or an immediate refusal), the
    /// deadline, the in-flight gauge, and its latency and outcome recorded under `op`.
    async fn guard<T>(
        &self,
        op: L2Op,
        call: impl std::future::Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        // The connection's own response timeout covers a connected Redis; this one also
        // bounds a call that first waits on a (re)connect attempt or a batch lane.
        let timed = async {
            match tokio::time::timeout(self.deadline, call).await {
                Ok(r) => r,
                Err(_) => Err(L2Error::Timeout),
            }
        };
        self.guard_untimed(op, timed).await
    }

    /// `guard` without the deadline, for calls on our own write connections: those bound
    /// their own time (`Pipe::call`) without a timer per call.
    async fn guard_untimed<T>(
        &self,
        op: L2Op,
        call: impl std::future::Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        let Some(ticket) = self.breaker.admit() else {
            self.metrics.l2_circuit_rejected.inc();
            return Err(L2Error::CircuitOpen);
        };
        let _in_flight = self.metrics.l2_in_flight();
        let start = Instant::now();
        let res = call.await;
        if let Some(change) = ticket.record(&res) {
            self.breaker_changed(change);
        }
        self.metrics.record_l2(op, start.elapsed(), res.is_ok());
        res
    }

    fn breaker_changed(&self, change: Change) {
        match change {
            Change::Opened => {
                tracing::warn!(
                    "L2 circuit opened: Redis failed {} calls in a row; refusing L2 calls for {:?} between trials",
                    self.breaker.threshold(),
                    self.breaker.cooldown()
                );
                self.metrics.l2_circuit_open.set(1);
            }
            Change::Closed => {
                tracing::info!("L2 circuit closed: Redis answers again");
                self.metrics.l2_circuit_open.set(0);
            }
        }
    }

    /// GET and PTTL, folded with concurrent reads into one MGET by the batch lanes.
    pub async fn get(&self, key: Bytes) -> Result<Option<Fetched>, L2Error> {
        match self.guard(L2Op::Get, self.batcher.get(key.clone())).await? {
            Slot::Found(f) => Ok(Some(f)),
            Slot::Absent => Ok(None),
            Slot::Recheck => self.get_alone(&key).await,
        }
    }

    /// GET and PTTL in one round trip, outside the batch lanes: GET's own answer (WRONGTYPE
    /// on a key of another type) where MGET's nil would hide it.
    async fn get_alone(&self, key: &[u8]) -> Result<Option<Fetched>, L2Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let (value, pttl): (Option<Bytes>, i64) = self
            .run(L2Op::Get, key, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        Ok(value.map(|v| (v, ttl_from_pttl(pttl))))
    }

    /// MGET and a PTTL per key, in one round trip (one per slot on a cluster). A key of
    /// another type reads as absent, as MGET has it. A key named more than once is fetched
    /// once: an MGET of one 4 MiB key 128 times would otherwise make Redis send 512 MiB, all
    /// of it held here until parsed.
    pub async fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Fetched>>, L2Error> {
        if keys.len() > 1 {
            let mut first: ahash::HashMap<&[u8], usize> = ahash::HashMap::default();
            let mut unique = Vec::new();
            let at: Vec<usize> = keys
                .iter()
                .map(|&k| {
                    *first.entry(k).or_insert_with(|| {
                        unique.push(k);
                        unique.len() - 1
                    })
                })
                .collect();
            if unique.len() < keys.len() {
                let fetched = self.get_distinct(&unique).await?;
                return Ok(at.into_iter().map(|i| fetched[i].clone()).collect());
            }
        }
        self.get_distinct(keys).await
    }

    /// `get_many` of keys each named once.
    async fn get_distinct(&self, keys: &[&[u8]]) -> Result<Vec<Option<Fetched>>, L2Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let parts = self
            .per_slot(L2Op::MGet, keys, |mut c, group| {
                let pipe = mget_pipeline(group.iter().map(|&i| keys[i]));
                async move { pipe.query_async::<Vec<redis::Value>>(&mut c).await }
            })
            .await?;
        let mut out = vec![None; keys.len()];
        for (group, raw) in parts {
            for (i, slot) in group.iter().zip(slots(raw, group.len())?) {
                if let Slot::Found(f) = slot {
                    out[*i] = Some(f);
                }
            }
        }
        Ok(out)
    }

    /// Every SET in one pipeline (one round trip; one per slot on a cluster). Not atomic: on
    /// an error some items may be written, and a retry of the whole batch is safe because SET
    /// is idempotent.
    pub async fn set_many(
        &self,
        items: &[(Bytes, Bytes, Option<Duration>)],
    ) -> Result<(), L2Error> {
        let keys: Vec<&[u8]> = items.iter().map(|(k, _, _)| k.as_ref()).collect();
        self.per_slot(L2Op::MSet, &keys, |mut c, group| {
            let mut pipe = redis::pipe();
            for &i in group {
                let (k, v, ttl) = &items[i];
                pipe.add_command(set_cmd(k, v, &SetOptions::expiring(*ttl)))
                    .ignore();
            }
            self.announce(&mut pipe, group.iter().map(|&i| keys[i]));
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
        .map(drop)
    }

    /// Keeps a value loaded from an origin for `ttl`: `SET key value PX ttl NX`, so a write
    /// made meanwhile (newer than the origin's answer) is not overwritten. Not announced: no
    /// instance holds a value for a key L2 did not have (only, at most, a short-lived absence).
    pub async fn store_loaded(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), L2Error> {
        self.set_px(key, value, ttl, true).await
    }

    /// Keeps a proxied answer (a proxy route's, in its own key space) for `ttl`, replacing
    /// the one there: a revalidated or refreshed answer is the newer. Not announced: no
    /// instance holds these keys in L1.
    pub async fn store_answer(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), L2Error> {
        self.set_px(key, value, ttl, false).await
    }

    /// `SET key value PX ttl [NX]`, unannounced.
    async fn set_px(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
        nx: bool,
    ) -> Result<(), L2Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        if nx {
            cmd.arg("NX");
        }
        let query = |mut c: Conn| async move { cmd.query_async::<redis::Value>(&mut c).await };
        self.run(L2Op::Set, key, query).await.map(drop)
    }

    /// Tries to take a loader's lock: `SET lock token NX PX ttl GET` (Redis 7), one round
    /// trip that both tries and tells what holds it. None: taken by us. Some(v): the value
    /// there, another instance's token or the outcome a holder left (`LOCK_ABSENT`).
    pub async fn try_lock(
        &self,
        lock: &[u8],
        token: &[u8],
        ttl: Duration,
    ) -> Result<Option<Bytes>, L2Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(lock)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .arg("GET");
        let query = |mut c: Conn| async move { cmd.query_async::<Option<Vec<u8>>>(&mut c).await };
        Ok(self.run(L2Op::Set, lock, query).await?.map(Bytes::from))
    }

    /// Releases a lock taken with `token` (if it is still ours: it may have expired and been
    /// taken since), leaving `outcome` in it for `keep` when given (so waiters learn a key is
    /// absent without asking the origin), else deleting it. One script, so the check and the
    /// change cannot be split by another instance's SET.
    pub async fn release_lock(
        &self,
        lock: &[u8],
        token: &[u8],
        outcome: Option<(&[u8], Duration)>,
    ) -> Result<(), L2Error> {
        let (value, ms) = outcome.map_or((&b""[..], 0), |(v, keep)| {
            (v, keep.as_millis().max(1) as u64)
        });
        let mut invocation = RELEASE.key(lock);
        invocation.arg(token).arg(value).arg(ms);
        let query =
            |mut c: Conn| async move { invocation.invoke_async::<redis::Value>(&mut c).await };
        self.run(L2Op::Set, lock, query).await.map(drop)
    }

    /// SET with its options, answered as Redis answered; and its `Batch` (see `evicted`).
    pub async fn set_with(
        &self,
        key: &[u8],
        value: &[u8],
        opts: SetOptions,
    ) -> Result<(SetOutcome, Batch), L2Error> {
        let (reply, batch): (redis::Value, _) = if self.pipes.is_empty() {
            self.write(L2Op::Set, set_cmd(key, value, &opts), key)
                .await?
        } else {
            let mut packed = Vec::with_capacity(packed_size(key, value));
            pack_set(&mut packed, key, value, &opts);
            self.write_piped(L2Op::Set, packed, key).await?
        };
        Ok((set_outcome(opts.get, reply)?, batch))
    }

    /// SETs a client pipelined, each answered as Redis answered it: in one round trip, in
    /// order, on one of our write connections, each followed by its announcement as in
    /// `write`. Where there are none (a cluster, TLS) they are written one after another.
    /// Err when the round trip itself failed: then none is known to be written. With the
    /// outcomes, the `Batch` of each round trip (see `evicted`).
    pub async fn set_each(
        &self,
        items: &[(Bytes, Bytes, SetOptions)],
    ) -> Result<(Vec<Result<SetOutcome, L2Error>>, Vec<Batch>), L2Error> {
        if self.pipes.is_empty() {
            let mut out = Vec::with_capacity(items.len());
            for (k, v, opts) in items {
                // Not on our own connections: untagged, so there is no batch to report.
                out.push(self.set_with(k, v, *opts).await.map(|(o, _none)| o));
            }
            return Ok((out, Vec::new()));
        }
        // One connection for the whole run: Redis applies them in the client's order.
        let pipe = self.next_pipe(false);
        let mut out = Vec::with_capacity(items.len());
        let mut batches = Vec::new();
        for run in items.chunks(self.max_batch) {
            // Each SET, and its key again among those announced.
            let size: usize = run
                .iter()
                .map(|(k, v, _)| packed_size(k, v) + k.len() + 16)
                .sum();
            let mut packed = Vec::with_capacity(size);
            for (k, v, opts) in run {
                pack_set(&mut packed, k, v, opts);
            }
            let mut keys = 0;
            for (k, _, _) in run {
                keys += self.pack_announcement(&mut packed, k);
            }
            let call = pipe.call_announcing(packed, keys, run.len());
            let (replies, batch) = self.guard_untimed(L2Op::MSet, call).await?;
            batches.push(batch);
            out.extend(
                replies
                    .into_iter()
                    .zip(run)
                    .map(|(reply, (_, _, opts))| set_outcome(opts.get, reply_value(reply)?)),
            );
        }
        Ok((out, batches))
    }

    /// DEL, with its announcement; how many of the keys existed.
    pub async fn del(&self, keys: &[Bytes]) -> Result<u64, L2Error> {
        let parts = self
            .per_slot(L2Op::Del, keys, |mut c, group| {
                let mut pipe = redis::pipe();
                pipe.add_command(keys_cmd("DEL", group.iter().map(|&i| &keys[i])));
                self.announce(&mut pipe, group.iter().map(|&i| keys[i].as_ref()));
                async move { pipe.query_async::<(u64,)>(&mut c).await }
            })
            .await?;
        Ok(parts.into_iter().map(|(_, (n,))| n).sum())
    }

    /// INCRBY, run in Redis so concurrent increments from every instance add up; and its
    /// `Batch` (see `evicted`).
    pub async fn incr_by(&self, key: &[u8], delta: i64) -> Result<(i64, Batch), L2Error> {
        let mut cmd = redis::cmd("INCRBY");
        cmd.arg(key).arg(delta);
        self.write(L2Op::Incr, cmd, key).await
    }

    /// PEXPIRE with its condition; whether it was applied, and its `Batch` (see `evicted`).
    pub async fn expire(
        &self,
        key: &[u8],
        ttl_ms: i64,
        cond: ExpireCond,
    ) -> Result<(bool, Batch), L2Error> {
        let mut cmd = redis::cmd("PEXPIRE");
        cmd.arg(key).arg(ttl_ms);
        match cond {
            ExpireCond::Always => {}
            ExpireCond::NoTtl => {
                cmd.arg("NX");
            }
            ExpireCond::HasTtl => {
                cmd.arg("XX");
            }
            ExpireCond::Longer => {
                cmd.arg("GT");
            }
            ExpireCond::Shorter => {
                cmd.arg("LT");
            }
            ExpireCond::HasTtlShorter => {
                cmd.arg("XX").arg("LT");
            }
        }
        let (n, batch): (i64, _) = self.write(L2Op::Expire, cmd, key).await?;
        Ok((n == 1, batch))
    }

    /// PTTL.
    pub async fn ttl(&self, key: &[u8]) -> Result<Ttl, L2Error> {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(key);
        let ms: i64 = self
            .run(L2Op::Ttl, key, |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
        Ok(match ms {
            -1 => Ttl::Persistent,
            ms if ms < 0 => Ttl::Missing,
            ms => Ttl::Left(Duration::from_millis(ms as u64)),
        })
    }

    /// DBSIZE: the keys Redis holds (on a cluster, redis-rs asks every primary and sums).
    pub async fn dbsize(&self) -> Result<u64, L2Error> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut conn = self.conns[i].clone();
        self.guard(L2Op::Ping, async move {
            redis::cmd("DBSIZE")
                .query_async(&mut conn)
                .await
                .map_err(L2Error::from)
        })
        .await
    }

    /// EXISTS; how many of the keys exist, counting repeats.
    pub async fn exists(&self, keys: &[Bytes]) -> Result<u64, L2Error> {
        let parts = self
            .per_slot(L2Op::Exists, keys, |mut c, group| {
                let cmd = keys_cmd("EXISTS", group.iter().map(|&i| &keys[i]));
                async move { cmd.query_async::<u64>(&mut c).await }
            })
            .await?;
        Ok(parts.into_iter().map(|(_, n)| n).sum())
    }

    /// Probes every connection; L2 is up only when all of them answer, since requests are
    /// spread over all of them.
    async fn probe(&self) -> bool {
        let mut ok = true;
        for c in self.conns.iter() {
            let start = Instant::now();
            // Not aimed: on a cluster redis-rs sends PING to every node.
            let mut c = c.clone();
            let mut good = self.ping(&mut c).await;
            if let Err(L2Error::Unavailable(_)) = good {
                // A connection that failed before answers with that old failure and only then
                // starts reconnecting; a second PING waits on that attempt, so a Redis that
                // is back is seen now rather than a probe later.
                good = self.ping(&mut c).await;
            }
            self.metrics
                .record_l2(L2Op::Ping, start.elapsed(), good.is_ok());
            ok &= good.is_ok();
        }
        if ok {
            if let Some(change) = self.breaker.probe_succeeded() {
                self.breaker_changed(change);
            }
        }
        ok
    }

    async fn ping(&self, c: &mut Conn) -> Result<(), L2Error> {
        match tokio::time::timeout(self.deadline, redis::cmd("PING").query_async::<String>(c)).await
        {
            Ok(r) => r.map(drop).map_err(L2Error::from),
            Err(_) => Err(L2Error::Timeout),
        }
    }

    /// Probes L2 until shutdown, keeping `is_up` and `l2_up` current: every `health_interval`
    /// while it answers, and every `l2.breaker_cooldown` (when shorter) while it does not, so
    /// a Redis that comes back is in use again within about that. A probe on a broken
    /// connection is also what makes the manager reconnect.
    pub async fn watch_health(self: Arc<Self>, shutdown: Shutdown) {
        let mut next = tokio::time::Instant::now();
        loop {
            let up = self.probe().await;
            if up {
                self.read_table().await;
                self.read_slots().await;
            }
            if up != self.up.swap(up, Ordering::Relaxed) {
                if up {
                    tracing::info!("L2 is reachable");
                } else {
                    tracing::warn!("L2 is unreachable; serving L1 hits only until it returns");
                }
            }
            self.metrics.l2_up.set(up as i64);
            let step = if up {
                self.health_interval
            } else {
                self.health_interval.min(self.breaker.cooldown())
            };
            // A probe slower than its period (a hung Redis) is not followed by a catch-up burst.
            next = (next + step).max(tokio::time::Instant::now());
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}

/// A reply on our own connections as a value, or Redis' error classed (`server_error`).
fn reply_value(reply: Reply) -> Result<redis::Value, L2Error> {
    match reply {
        Reply::Value(v) => Ok(v),
        Reply::Error { code, detail } => Err(server_error(code, detail)),
        // Our own calls never ask for raw replies.
        Reply::Raw(_) | Reply::TooLarge(_) => {
            Err(L2Error::refused("a raw reply to a decoded call"))
        }
    }
}

/// What a SET's reply says, given whether it asked for the old value (GET).
fn set_outcome(get: bool, reply: redis::Value) -> Result<SetOutcome, L2Error> {
    Ok(match (get, reply) {
        (true, redis::Value::Nil) => SetOutcome::Old(None),
        (true, v) => SetOutcome::Old(Some(
            redis::from_redis_value(v).map_err(|e| L2Error::refused(e.to_string()))?,
        )),
        (false, redis::Value::Nil) => SetOutcome::NotWritten,
        (false, _) => SetOutcome::Written,
    })
}

/// SET with its options, as Redis spells them: the arguments, how many of them are used,
/// and the buffer a millisecond TTL is written in.
struct SetArgs<'a> {
    args: [&'a [u8]; 7],
    len: usize,
}

impl<'a> SetArgs<'a> {
    fn new(key: &'a [u8], value: &'a [u8], opts: &SetOptions, ms: &'a mut itoa::Buffer) -> Self {
        let mut args: [&[u8]; 7] = [b"SET", key, value, b"", b"", b"", b""];
        let mut len = 3;
        let mut push = |a: &'a [u8]| {
            args[len] = a;
            len += 1;
        };
        match opts.cond {
            SetCond::Always => {}
            SetCond::IfAbsent => push(b"NX"),
            SetCond::IfPresent => push(b"XX"),
        }
        if opts.get {
            push(b"GET");
        }
        // PX/PXAT take whole milliseconds; at least 1 so a sub-millisecond TTL is not "no TTL".
        match opts.ttl {
            SetTtl::Clear => {}
            SetTtl::Keep => push(b"KEEPTTL"),
            SetTtl::In(d) => {
                push(b"PX");
                push(ms.format(d.as_millis().max(1) as u64).as_bytes());
            }
            SetTtl::At(t) => {
                let at = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                push(b"PXAT");
                push(ms.format(at.as_millis().max(1) as u64).as_bytes());
            }
        }
        Self { args, len }
    }

    fn args(&self) -> &[&'a [u8]] {
        &self.args[..self.len]
    }
}

/// Room for a SET of `key` and `value` with every option, and its PUBLISH, RESP-encoded:
/// sized once, so packing never grows the buffer.
fn packed_size(key: &[u8], value: &[u8]) -> usize {
    2 * key.len() + value.len() + 384
}

/// SET with its options as a redis-rs command.
fn set_cmd(key: &[u8], value: &[u8], opts: &SetOptions) -> redis::Cmd {
    let mut ms = itoa::Buffer::new();
    let set = SetArgs::new(key, value, opts, &mut ms);
    let mut cmd = redis::Cmd::with_capacity(set.len, key.len() + value.len() + 48);
    for a in set.args() {
        cmd.arg(*a);
    }
    cmd
}

/// SET with its options, RESP-encoded onto `out`: what our own connections send, without
/// building a `Cmd` per write.
fn pack_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], opts: &SetOptions) {
    let mut ms = itoa::Buffer::new();
    pipe::encode(out, SetArgs::new(key, value, opts, &mut ms).args());
}

/// A command followed by every key in `keys` (DEL, EXISTS).
fn keys_cmd<'k>(name: &str, keys: impl IntoIterator<Item = &'k Bytes>) -> redis::Cmd {
    let mut cmd = redis::cmd(name);
    for k in keys {
        cmd.arg(k.as_ref());
    }
    cmd
}

/// PTTL's answer as a TTL: -1 means no expiry; -2 (gone since the GET) means do not cache.
pub(super) fn ttl_from_pttl(pttl: i64) -> Option<Duration> {
    match pttl {
        -1 => None,
        ms if ms < 0 => Some(Duration::ZERO),
        ms => Some(Duration::from_millis(ms as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_packed_by_hand_match_redis_rs_encoding() {
        let at = UNIX_EPOCH + Duration::from_millis(1_900_000_000_123);
        let cases = [
            SetOptions::default(),
            SetOptions::expiring(Some(Duration::from_micros(10))),
            SetOptions {
                ttl: SetTtl::At(at),
                cond: SetCond::IfAbsent,
                get: true,
            },
            SetOptions {
                ttl: SetTtl::Keep,
                cond: SetCond::IfPresent,
                get: false,
            },
        ];
        for opts in cases {
            let mut ours = Vec::new();
            pack_set(&mut ours, b"k\r\n", b"", &opts);
            let theirs = set_cmd(b"k\r\n", b"", &opts).get_packed_command();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "{opts:?}"
            );
        }
        let mut ours = Vec::new();
        pack_set(
            &mut ours,
            b"k",
            b"v",
            &SetOptions::expiring(Some(Duration::from_micros(10))),
        );
        assert!(
            ours.ends_with(b"$2\r\nPX\r\n$1\r\n1\r\n"),
            "a sub-millisecond TTL is 1 ms"
        );
    }

    #[test]
    fn cluster_and_loading_errors_are_outages() {
        use redis::{ErrorKind as K, ServerErrorKind as S};
        for kind in [
            K::ClusterConnectionNotFound,
            K::Server(S::ClusterDown),
            K::Server(S::BusyLoading),
            K::Server(S::TryAgain),
            K::Server(S::MasterDown),
        ] {
            let e = L2Error::from(RedisError::from((kind, "test")));
            assert!(e.is_outage(), "{kind:?}: {e:?}");
        }
        let refused = L2Error::from(RedisError::from((K::Server(S::ResponseError), "test")));
        assert!(!refused.is_outage());

        // The same codes read by our own connections (`cache/pipe.rs`).
        for code in ["LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"] {
            let e = server_error(code.into(), "test".into());
            assert!(e.is_outage(), "{code}: {e:?}");
        }
        match server_error("WRONGTYPE".into(), "Operation against a key".into()) {
            L2Error::Refused { code, detail } => {
                assert_eq!(
                    (code.as_str(), detail.as_str()),
                    ("WRONGTYPE", "Operation against a key")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pttl_maps_to_ttl() {
        assert_eq!(ttl_from_pttl(-1), None);
        assert_eq!(ttl_from_pttl(-2), Some(Duration::ZERO));
        assert_eq!(ttl_from_pttl(1500), Some(Duration::from_millis(1500)));
    }
}
