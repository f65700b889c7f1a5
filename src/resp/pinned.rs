//! A client's dedicated L2 connection (`cache::dedicated`) and the state it holds there:
//! transactions (MULTI/EXEC/DISCARD, WATCH/UNWATCH), a database other than 0 (SELECT n),
//! blocking commands and subscriptions. From the command that opens such state to the one
//! that ends it, every command of the client goes over that connection, in order, and the
//! connection is given back (RESET) once no state is left.
//!
//! - A transaction's writes leave L1, here and on every instance, once EXEC has applied them;
//!   a command refused here inside MULTI (NOPERM, BUSY) makes EXEC discard the transaction,
//!   as Redis does for a command its ACL refuses.
//! - Only database 0 is cached: what a client does in another database goes to Redis alone
//!   (its writes are still announced: MOVE and COPY ... DB reach database 0).
//! - A blocking command waits outside admission, watching its client: one that leaves frees
//!   the connection at once.
//! - Subscribed, or tracking keys for client-side caching (CLIENT TRACKING, RESP3), the client
//!   is relayed to Redis both ways (`relay`) until its last subscription ends and tracking is
//!   off: pushes arrive whenever Redis sends them. While tracking, every command of the client
//!   goes to Redis, its reads included, so that Redis tracks them.
//! - Over a Redis Cluster the connection comes from the master that serves the command: its
//!   keys' (or shard channel's) slot, any master for SUBSCRIBE; keys across slots get
//!   `-CROSSSLOT`. MULTI is answered here, and the transaction's first command picks the
//!   master (`deferred`, `open`). Redis answers what follows on that connection, a key of
//!   another slot with `-MOVED`, passed to the client. SELECT n and CLIENT TRACKING are not
//!   lent for there (`wants`).

use super::{
    cmd::{
        is, l2_error,
        unservable::{blocking, SUBSCRIBING, TRANSACTIONAL},
        Forward,
    },
    frame::{self, Frame, Protocol},
    reply, Limits, Shared,
};
use crate::{
    buf::pool::Lease,
    cache::{
        dedicated::{LendError, Lent},
        forward::{Run, Writes},
        Reply,
    },
    net,
    resp::session::Deferred,
    shutdown::Shutdown,
};
use bytes::Bytes;
use std::{collections::VecDeque, io};
use tokio::net::TcpStream;

/// A client's lent connection and what is open on it.
pub struct Pinned {
    lent: Lent,
    /// The protocol the connection speaks: the client's when it was lent (HELLO may change
    /// the client's since).
    proto: Protocol,
    multi: bool,
    watching: bool,
    db: i64,
    /// A command was refused here inside MULTI: EXEC discards the transaction.
    doomed: bool,
    /// What the queued commands write, applied once EXEC succeeds.
    queued: Run,
    /// `tiergate_l2_dedicated_lent`, taken back when this is dropped.
    gauge: prometheus::IntGauge,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Pinned {
    fn new(lent: Lent, proto: Protocol, gauge: prometheus::IntGauge) -> Box<Self> {
        gauge.inc();
        Box::new(Self {
            gauge,
            lent,
            proto,
            multi: false,
            watching: false,
            db: 0,
            doomed: false,
            queued: Run::default(),
        })
    }

    /// Whether state is left that keeps the connection lent.
    fn holds_state(&self) -> bool {
        self.multi || self.watching || self.db != 0
    }

    /// Marks the open transaction discarded (a command in it was refused here).
    pub fn doom(&mut self) {
        if self.multi {
            self.doomed = true;
        }
    }
}

/// Handled by the door even while a connection is lent: they concern the client's
/// connection to tiergate, not Redis'.
const LOCAL: &[&str] = &["quit", "auth", "hello", "client", "reset"];

/// Whether a command goes over a dedicated connection: it opens state, or state is open.
/// Over a Redis Cluster (`clustered`), CLIENT TRACKING is left to be closed on (it would
/// need a connection to every master) and SELECT to be refused as a cluster refuses it.
pub fn wants(args: &[Bytes], pinned: bool, clustered: bool) -> bool {
    let name = &args[0];
    // Every name below starts with one of these: GET, INCR, DEL and most others are told
    // apart by one byte.
    let first = name.first().map_or(0, u8::to_ascii_lowercase);
    if !pinned && !b"mwbxspc".contains(&first) {
        return false;
    }
    if clustered && (tracking(args) || is(name, "select")) {
        return false;
    }
    if tracking(args) {
        return true;
    }
    if pinned {
        return !LOCAL.iter().any(|n| is(name, n));
    }
    TRANSACTIONAL.iter().any(|n| is(name, n))
        || blocks(args)
        || SUBSCRIBING.iter().any(|n| is(name, n))
        || (is(name, "select") && args.get(1).is_some_and(|db| &db[..] != b"0"))
}

/// CLIENT TRACKING (on or off).
fn tracking(args: &[Bytes]) -> bool {
    is(&args[0], "client") && args.get(1).is_some_and(|sub| is(sub, "tracking"))
}

/// Why CLIENT TRACKING is refused, if it is: in RESP2 invalidations go to another client
/// (REDIRECT), whose id is tiergate's, not Redis'.
fn tracking_refusal(args: &[Bytes], proto: Protocol) -> Option<Frame> {
    let redirect = args.iter().skip(2).any(|a| is(a, "redirect"));
    (proto == Protocol::Resp2 || redirect).then(|| {
        Frame::error(
            "ERR CLIENT TRACKING is served to RESP3 clients (HELLO 3), without REDIRECT: \
             invalidations then arrive on the client's own connection",
        )
    })
}

/// Whether a command blocks its connection until something happens.
fn blocks(args: &[Bytes]) -> bool {
    blocking(args).is_some()
}

/// What became of a command for a dedicated connection.
pub enum Step {
    Reply(Frame),
    /// Reply, then close the client.
    Close(Frame),
    /// To wait for outside admission: a blocking command, or a SUBSCRIBE.
    Hold(Forward),
}

/// The error for a client that needs a dedicated connection when none is free.
fn busy(size: usize) -> Frame {
    Frame::Error(
        format!(
            "BUSY tiergate has lent all l2.dedicated_connections ({size}) for MULTI, WATCH, \
             blocking commands, subscriptions and SELECT; retry later"
        )
        .into(),
    )
}

/// Lends `pinned` a connection if it has none, for the command `args` (over a cluster, from
/// the master of its keys' slot, or any master for a keyless one); the error is the client's
/// reply.
async fn lend(
    pinned: &mut Option<Box<Pinned>>,
    shared: &Shared,
    proto: Protocol,
    args: &[Bytes],
) -> Result<(), Frame> {
    if let Some(p) = pinned.as_mut() {
        if p.proto == proto {
            return Ok(());
        }
        // The client said HELLO since: its replies must come in its new dialect.
        let hello: &[u8] = match proto {
            Protocol::Resp2 => b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n",
            Protocol::Resp3 => b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n",
        };
        return match p.lent.call(hello, 1 << 16, timeout(shared)).await {
            Ok(Reply::Raw(r)) if r.first() != Some(&b'-') => {
                p.proto = proto;
                Ok(())
            }
            _ => {
                *pinned = None;
                Err(Frame::error("TRYAGAIN L2 did not change protocol; retry"))
            }
        };
    }
    let Some(l2) = shared.cache.l2().filter(|l2| l2.lends()) else {
        return Err(Frame::error("ERR no dedicated L2 connections here"));
    };
    let slot = match (l2.clustered(), l2.table()) {
        (true, Some(table)) => table.slot(args).map_err(|_| crossslot())?,
        _ => None,
    };
    match l2.lend(slot, proto == Protocol::Resp3).await {
        Ok(lent) => {
            *pinned = Some(Pinned::new(
                lent,
                proto,
                shared.metrics.l2_dedicated_lent.clone(),
            ));
            Ok(())
        }
        Err(LendError::Busy(size)) => {
            shared.metrics.l2_dedicated_busy.inc();
            Err(busy(size))
        }
        Err(LendError::L2(e)) => Err(l2_error(e)),
    }
}

/// A command as sent on a dedicated connection.
fn encoded(args: &[Bytes]) -> Vec<u8> {
    let mut command = Vec::with_capacity(64);
    crate::cache::encode_args(&mut command, args);
    command
}

/// What a cluster answers a command whose keys hash to several slots.
fn crossslot() -> Frame {
    Frame::error("CROSSSLOT Keys in request don't hash to the same slot")
}

/// A command for a dedicated connection (see `wants`), in the door's batch: checked (scopes,
/// admission: `refused` is why admission refused the batch), then run. A command refused
/// here inside MULTI makes EXEC discard the transaction. A MULTI that cannot have a
/// connection is answered +OK all the same, and the transaction is refused at EXEC: clients
/// send MULTI, its commands and EXEC in one write and read MULTI's reply last, so an error
/// for MULTI would let the commands behind it run one by one, outside any transaction.
pub async fn step(
    args: Vec<Bytes>,
    table: &crate::cache::table::Table,
    refused: Option<&str>,
    pinned: &mut Option<Box<Pinned>>,
    session: &mut super::session::Session,
    shared: &Shared,
    limits: &Limits,
) -> Step {
    if session.refused_tx {
        return refused_transaction(&args, session, shared);
    }
    if pinned.is_none() && shared.cache.l2().is_some_and(|l2| l2.clustered()) {
        if let Some(step) = deferred(&args, session) {
            return step;
        }
        if session.deferred != Deferred::None {
            return open(args, table, refused, pinned, session, shared, limits).await;
        }
    }
    let multi = is(&args[0], "multi") && pinned.is_none();
    let step = match (
        refused,
        Forward::parse(args, table, session.user.as_deref()),
    ) {
        (_, Err(refusal)) => Step::Reply(refusal),
        (Some(why), Ok(_)) => Step::Reply(super::cmd::busy(why)),
        (None, Ok(f)) => run(f, pinned, session.proto, shared, limits).await,
    };
    match step {
        Step::Reply(Frame::Error(_)) if multi => {
            session.refused_tx = true;
            Step::Reply(Frame::OK)
        }
        Step::Reply(e @ Frame::Error(_)) => {
            if let Some(p) = pinned.as_mut() {
                p.doom();
            }
            Step::Reply(e)
        }
        step => step,
    }
}

/// Over a cluster, a transaction's master is not known before its first command: MULTI is
/// answered here, and so are EXEC (an empty transaction: `*0`, as Redis answers it) and
/// DISCARD before any command; None for any other command (see `open`).
fn deferred(args: &[Bytes], session: &mut super::session::Session) -> Option<Step> {
    let name = &args[0];
    let reply = match session.deferred {
        Deferred::None if is(name, "multi") && args.len() == 1 => {
            session.deferred = Deferred::Open;
            Frame::OK
        }
        Deferred::None => return None,
        state if is(name, "exec") => {
            session.deferred = Deferred::None;
            if state == Deferred::Doomed {
                Frame::error("EXECABORT Transaction discarded because of previous errors.")
            } else {
                Frame::Raw(Bytes::from_static(b"*0\r\n"))
            }
        }
        _ if is(name, "discard") => {
            session.deferred = Deferred::None;
            Frame::OK
        }
        _ if is(name, "multi") => Frame::error("ERR MULTI calls can not be nested"),
        _ if is(name, "watch") => Frame::error("ERR WATCH inside MULTI is not allowed"),
        _ => return None,
    };
    Some(Step::Reply(reply))
}

/// The first command of a cluster transaction (see `deferred`): a connection is lent from the
/// master of its keys' slot (any master for a keyless one), and MULTI then the command are
/// sent there; the client sees the command's reply (`+QUEUED`). Refused here (NOPERM, its
/// keys across slots, admission), the transaction is doomed as Redis dooms it; with no
/// connection to be had, it is refused at EXEC, as a MULTI that cannot have one is.
async fn open(
    args: Vec<Bytes>,
    table: &crate::cache::table::Table,
    refused: Option<&str>,
    pinned: &mut Option<Box<Pinned>>,
    session: &mut super::session::Session,
    shared: &Shared,
    limits: &Limits,
) -> Step {
    let f = match (
        refused,
        Forward::parse(args, table, session.user.as_deref()),
    ) {
        (_, Err(refusal)) => {
            session.deferred = Deferred::Doomed;
            return Step::Reply(refusal);
        }
        (Some(why), Ok(_)) => {
            session.deferred = Deferred::Doomed;
            return Step::Reply(super::cmd::busy(why));
        }
        (None, Ok(f)) => f,
    };
    if table.slot(&f.args).is_err() {
        session.deferred = Deferred::Doomed;
        return Step::Reply(crossslot());
    }
    session.deferred = Deferred::None;
    let queued = || Step::Reply(Frame::Simple("QUEUED".into()));
    if lend(pinned, shared, session.proto, &f.args).await.is_err() {
        session.refused_tx = true;
        return queued();
    }
    let p = pinned.as_mut().expect("lent above");
    match p
        .lent
        .call(b"*1\r\n$5\r\nMULTI\r\n", 64, timeout(shared))
        .await
    {
        Ok(Reply::Raw(r)) if &r[..] == b"+OK\r\n" => p.multi = true,
        _ => {
            *pinned = None;
            session.refused_tx = true;
            return queued();
        }
    }
    let step = run(f, pinned, session.proto, shared, limits).await;
    if pinned.is_none() && matches!(step, Step::Reply(Frame::Error(_))) {
        // The connection failed with the transaction on it: what follows is refused at EXEC.
        session.refused_tx = true;
    }
    step
}

/// A command inside a transaction whose MULTI could not have a connection: queued and
/// dropped; EXEC refuses the whole transaction, DISCARD ends it.
fn refused_transaction(
    args: &[Bytes],
    session: &mut super::session::Session,
    shared: &Shared,
) -> Step {
    let name = &args[0];
    if is(name, "exec") {
        session.refused_tx = false;
        let size = shared.cache.l2().map_or(0, |l2| l2.dedicated_size());
        return Step::Reply(Frame::Error(
            format!(
                "BUSY the transaction was not run: its MULTI could have no Redis connection of \
                 its own (all l2.dedicated_connections ({size}) lent, tiergate at its limits, or \
                 L2 unreachable); retry later"
            )
            .into(),
        ));
    }
    if is(name, "discard") {
        session.refused_tx = false;
        return Step::Reply(Frame::OK);
    }
    if is(name, "multi") {
        return Step::Reply(Frame::error("ERR MULTI calls can not be nested"));
    }
    if is(name, "watch") {
        return Step::Reply(Frame::error("ERR WATCH inside MULTI is not allowed"));
    }
    Step::Reply(Frame::Simple("QUEUED".into()))
}

/// Runs a command that needs a dedicated connection (see `wants`).
async fn run(
    f: Forward,
    pinned: &mut Option<Box<Pinned>>,
    proto: Protocol,
    shared: &Shared,
    limits: &Limits,
) -> Step {
    let in_multi = pinned.as_ref().is_some_and(|p| p.multi);
    if tracking(&f.args) {
        if let Some(refusal) = tracking_refusal(&f.args, proto) {
            return Step::Reply(refusal);
        }
        if !in_multi {
            return Step::Hold(f);
        }
    }
    if !in_multi && (blocks(&f.args) || SUBSCRIBING.iter().any(|n| is(&f.args[0], n))) {
        return Step::Hold(f);
    }
    if let Err(refusal) = lend(pinned, shared, proto, &f.args).await {
        return Step::Reply(refusal);
    }
    let p = pinned.as_mut().expect("lent above");
    let name = &f.args[0];
    if in_multi && is(name, "exec") && p.doomed {
        let discard = p
            .lent
            .call(b"*1\r\n$7\r\nDISCARD\r\n", 64, timeout(shared))
            .await;
        return match discard {
            Ok(Reply::Raw(_)) => {
                end_transaction(p);
                release(pinned).await;
                Step::Reply(Frame::error(
                    "EXECABORT Transaction discarded because of previous errors.",
                ))
            }
            _ => {
                *pinned = None;
                Step::Reply(Frame::error("TRYAGAIN L2 dropped the transaction"))
            }
        };
    }
    let command = encoded(&f.args);
    let limit = limits.reply_limit();
    let bytes = match p.lent.call(&command, limit, timeout(shared)).await {
        Ok(Reply::Raw(bytes)) => bytes,
        Ok(Reply::TooLarge(len)) => {
            *pinned = None;
            shared
                .metrics
                .resp_closed(crate::metrics::RespClose::ReplyLimit);
            return Step::Close(reply::too_large(len, limits.max_reply_bytes));
        }
        Ok(_) => return Step::Reply(Frame::error("ERR a dedicated reply was decoded")),
        Err(e) => {
            // Its state is lost with it: the connection is closed, not given back.
            *pinned = None;
            return Step::Reply(l2_error(e));
        }
    };
    let ok = bytes.first() == Some(&b'+');
    if in_multi {
        if is(name, "exec") {
            let applied = bytes.starts_with(b"*") && !bytes.starts_with(b"*-1");
            let mut queued = std::mem::take(&mut p.queued);
            end_transaction(p);
            if applied {
                apply(shared, &mut queued).await;
            }
        } else if is(name, "discard") {
            end_transaction(p);
        } else if &bytes[..] == b"+QUEUED\r\n" {
            p.queued.wrote(&f.args, &f.writes);
        }
    } else {
        if is(name, "multi") && ok {
            p.multi = true;
        } else if is(name, "watch") && ok {
            p.watching = true;
        } else if is(name, "unwatch") {
            p.watching = false;
        } else if is(name, "select") && ok {
            p.db = f
                .args
                .get(1)
                .and_then(|db| super::cmd::parse_int(db))
                .unwrap_or(0);
        }
        if f.writes != Writes::Nothing {
            let mut run = Run::default();
            run.wrote(&f.args, &f.writes);
            apply(shared, &mut run).await;
        }
    }
    if !p.holds_state() {
        release(pinned).await;
    }
    Step::Reply(Frame::Raw(bytes))
}

fn end_transaction(p: &mut Pinned) {
    p.multi = false;
    p.watching = false;
    p.doomed = false;
    p.queued = Run::default();
}

/// How long a command on a dedicated connection may take (not a blocking one).
fn timeout(shared: &Shared) -> std::time::Duration {
    shared
        .cache
        .l2()
        .map_or(std::time::Duration::from_secs(1), |l2| l2.deadline())
}

/// Empties what `run` wrote from L1 and announces it.
async fn apply(shared: &Shared, run: &mut Run) {
    if run.is_void() {
        return;
    }
    // Only announcements and invalidations: nothing the client waits on fails here.
    let _ = shared.cache.forward(run, false, usize::MAX).await;
}

/// RESET: gives back a lent connection (what the client held there ends with it) and
/// returns the session to a new connection's state.
pub async fn reset(
    pinned: &mut Option<Box<Pinned>>,
    session: &mut super::session::Session,
    shared: &Shared,
) {
    release(pinned).await;
    session.reset(shared.auth.rules().resp_anonymous());
}

/// Gives the connection back, clean.
async fn release(pinned: &mut Option<Box<Pinned>>) {
    if let Some(mut p) = pinned.take() {
        p.lent.give_back().await;
    }
}

/// Runs a held command (see `Step::Hold`) outside admission, once the replies before it are
/// written: waits for a blocking command's reply, or relays a subscribed client until its
/// last subscription ends. Ok(true) when the client must be closed.
#[allow(clippy::too_many_arguments)]
pub async fn hold(
    f: Forward,
    pinned: &mut Option<Box<Pinned>>,
    stream: &TcpStream,
    rbuf: &mut Lease<'_>,
    session: &mut super::session::Session,
    shared: &Shared,
    shutdown: &Shutdown,
) -> io::Result<bool> {
    let proto = session.proto;
    if let Err(refusal) = lend(pinned, shared, proto, &f.args).await {
        send(stream, &refusal, proto, shared).await?;
        return Ok(false);
    }
    let limits = shared.limits.load();
    let limit = limits.reply_limit();
    let p = pinned.as_mut().expect("lent above");
    let command = encoded(&f.args);
    if let Err(e) = p.lent.send(&command).await {
        *pinned = None;
        send(stream, &l2_error(e), proto, shared).await?;
        return Ok(false);
    }
    if blocks(&f.args) {
        return block(f, pinned, stream, rbuf, shared, shutdown, limit).await;
    }
    let tracking = tracking(&f.args);
    relay(
        pinned, stream, rbuf, session, shared, shutdown, limit, tracking,
    )
    .await
}

/// Writes one reply to the client.
async fn send(
    stream: &TcpStream,
    reply: &Frame,
    proto: Protocol,
    shared: &Shared,
) -> io::Result<()> {
    let mut out = bytes::BytesMut::new();
    reply.encode(proto, &mut out);
    reply::send(stream, &out, shared.idle_timeout).await
}

/// Waits for a blocking command's reply (already sent) and writes it; a client that leaves
/// meanwhile ends the wait and the connection is closed, not given back.
async fn block(
    f: Forward,
    pinned: &mut Option<Box<Pinned>>,
    stream: &TcpStream,
    rbuf: &mut Lease<'_>,
    shared: &Shared,
    shutdown: &Shutdown,
    limit: usize,
) -> io::Result<bool> {
    let p = pinned.as_mut().expect("lent by hold");
    // What the client sends meanwhile is read, to see it leave, up to `resp.reply_buffer_bytes`
    // (its commands run once this reply is written); past that it waits in the socket.
    let mut watching = true;
    let got = loop {
        tokio::select! {
            r = p.lent.next(limit) => break r,
            ready = stream.readable(), if watching => {
                let buf = rbuf.buf();
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(shared.buffers.buf_size());
                }
                match ready.and_then(|()| net::read::try_read(stream, buf)) {
                    Ok(0) => {
                        *pinned = None;
                        return Ok(true);
                    }
                    Ok(_) => watching = rbuf.buf().len() < shared.reply_buffer,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        *pinned = None;
                        return Ok(true);
                    }
                }
            },
            _ = shutdown.wait() => {
                *pinned = None;
                return Ok(true);
            }
        }
    };
    let reply = match got {
        Ok(Reply::Raw(bytes)) => bytes,
        Ok(Reply::TooLarge(len)) => {
            *pinned = None;
            shared
                .metrics
                .resp_closed(crate::metrics::RespClose::ReplyLimit);
            let limits = shared.limits.load();
            let err = reply::too_large(len, limits.max_reply_bytes);
            send(stream, &err, Protocol::Resp2, shared).await?;
            return Ok(true);
        }
        Ok(_) => Bytes::from_static(b"-ERR a dedicated reply was decoded\r\n"),
        Err(e) => {
            *pinned = None;
            let mut out = bytes::BytesMut::new();
            l2_error(e).encode(Protocol::Resp2, &mut out);
            out.freeze()
        }
    };
    if f.writes != Writes::Nothing {
        let mut run = Run::default();
        run.wrote(&f.args, &f.writes);
        apply(shared, &mut run).await;
    }
    if pinned.as_ref().is_some_and(|p| !p.holds_state()) {
        release(pinned).await;
    }
    reply::send(stream, &reply, shared.idle_timeout).await?;
    Ok(false)
}

/// Sent after each unsubscription, its reply swallowed: once it is back, every confirmation
/// of the unsubscription has arrived, so the relay knows whether any subscription is left
/// before it runs the client's next command (whose reply, after the last one, is no push).
const MARKER: &[u8] = b"*2\r\n$4\r\nPING\r\n$25\r\ntiergate-relay-checkpoint\r\n";

/// The marker's reply while subscribed (RESP2) and otherwise.
fn is_marker_reply(frame: &[u8]) -> bool {
    const ARG: &[u8] = b"$25\r\ntiergate-relay-checkpoint\r\n";
    frame == ARG || frame.strip_prefix(b"*2\r\n$4\r\npong\r\n") == Some(ARG)
}

/// Relays a subscribed or tracking client: its commands to Redis, Redis' replies and pushes
/// to it, until no subscription is left and tracking is off (the connection is then given
/// back, and the commands the client sent after that run as usual) or either side leaves.
/// `tracking`: started by CLIENT TRACKING, not by a SUBSCRIBE.
#[allow(clippy::too_many_arguments)]
async fn relay(
    pinned: &mut Option<Box<Pinned>>,
    stream: &TcpStream,
    rbuf: &mut Lease<'_>,
    session: &mut super::session::Session,
    shared: &Shared,
    shutdown: &Shutdown,
    limit: usize,
    mut tracking: bool,
) -> io::Result<bool> {
    let mut subs = Subscriptions::default();
    // Started by CLIENT TRACKING: its own reply comes first, and an error ends the relay.
    let mut first_reply = tracking;
    // RESP3 clients may run any command while subscribed: what each writes, applied when
    // its reply (not a push) arrives.
    let mut writes: VecDeque<(Vec<Bytes>, Writes)> = VecDeque::new();
    let mut checkpoint = false;
    loop {
        if !checkpoint {
            let relayed =
                relay_commands(pinned, stream, rbuf, session, shared, &mut writes).await?;
            match relayed {
                Relayed::Close => return Ok(true),
                Relayed::Reset => {
                    reset(pinned, session, shared).await;
                    let reply = Frame::Simple("RESET".into());
                    send(stream, &reply, session.proto, shared).await?;
                    return Ok(false);
                }
                Relayed::Checkpoint { tracking_off } => {
                    checkpoint = true;
                    tracking &= !tracking_off;
                }
                Relayed::Drained => {}
            }
        }
        let p = pinned.as_mut().expect("held while relaying");
        tokio::select! {
            from_redis = p.lent.next(limit) => {
                let bytes = match from_redis {
                    Ok(Reply::Raw(bytes)) => bytes,
                    Ok(_) | Err(_) => {
                        *pinned = None;
                        let err = Frame::error("TRYAGAIN L2 dropped the subscription");
                        send(stream, &err, session.proto, shared).await?;
                        return Ok(true);
                    }
                };
                if checkpoint && is_marker_reply(&bytes) {
                    checkpoint = false;
                    if subs.empty() && !tracking {
                        if !p.holds_state() {
                            release(pinned).await;
                        }
                        return Ok(false);
                    }
                    continue;
                }
                let push = bytes.first() == Some(&b'>');
                if std::mem::take(&mut first_reply) && !push && bytes.first() == Some(&b'-') {
                    // CLIENT TRACKING was refused by Redis: nothing to relay.
                    reply::send(stream, &bytes, shared.idle_timeout).await?;
                    release(pinned).await;
                    return Ok(false);
                }
                if session.proto == Protocol::Resp3 && !push {
                    if let Some((args, w)) = writes.pop_front() {
                        let mut run = Run::default();
                        run.wrote(&args, &w);
                        apply(shared, &mut run).await;
                    }
                }
                reply::send(stream, &bytes, shared.idle_timeout).await?;
                subs.heard(&bytes);
                // The SUBSCRIBE itself failed (arity): there is nothing to relay.
                if !tracking && !subs.any_heard() && bytes.first() == Some(&b'-') {
                    release(pinned).await;
                    return Ok(false);
                }
            }
            ready = stream.readable(), if !checkpoint => {
                ready?;
                let buf = rbuf.buf();
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(shared.buffers.buf_size());
                }
                match net::read::try_read(stream, buf) {
                    Ok(0) => return Ok(true),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Ok(true),
                }
            }
            _ = shutdown.wait() => return Ok(true),
        }
    }
}

/// How relaying the client's buffered commands ended.
enum Relayed {
    /// All sent.
    Drained,
    /// An unsubscription (or CLIENT TRACKING OFF) and the marker were sent: the rest waits
    /// for the marker's reply.
    Checkpoint {
        tracking_off: bool,
    },
    /// RESET: the connection goes back, the session starts over.
    Reset,
    Close,
}

/// Sends the whole commands the client has sent to Redis, checked as any forwarded command.
async fn relay_commands(
    pinned: &mut Option<Box<Pinned>>,
    stream: &TcpStream,
    rbuf: &mut Lease<'_>,
    session: &mut super::session::Session,
    shared: &Shared,
    writes: &mut VecDeque<(Vec<Bytes>, Writes)>,
) -> io::Result<Relayed> {
    let limits = shared.limits.load();
    loop {
        let args = match frame::parse(rbuf.buf(), &limits.frame, &mut session.progress) {
            Ok(Some(args)) if args.is_empty() => continue,
            Ok(Some(args)) => args,
            Ok(None) => return Ok(Relayed::Drained),
            Err(e) => {
                let err = Frame::Error(format!("ERR {e}").into());
                send(stream, &err, session.proto, shared).await?;
                return Ok(Relayed::Close);
            }
        };
        if is(&args[0], "quit") {
            send(stream, &Frame::OK, session.proto, shared).await?;
            return Ok(Relayed::Close);
        }
        if is(&args[0], "reset") && args.len() == 1 {
            return Ok(Relayed::Reset);
        }
        if let Some(refusal) = super::cmd::refusal(&args).or_else(|| {
            tracking(&args)
                .then(|| tracking_refusal(&args, session.proto))
                .flatten()
        }) {
            send(stream, &refusal, session.proto, shared).await?;
            continue;
        }
        let tracking_off = tracking(&args) && args.get(2).is_some_and(|a| is(a, "off"));
        let Some(table) = shared.cache.l2().and_then(|l2| l2.table()) else {
            return Ok(Relayed::Close);
        };
        let f = match Forward::parse(args, &table, session.user.as_deref()) {
            Ok(f) => f,
            Err(refusal) => {
                send(stream, &refusal, session.proto, shared).await?;
                continue;
            }
        };
        let unsubscribing = UNSUBSCRIBING.iter().any(|n| is(&f.args[0], n)) || tracking_off;
        if session.proto == Protocol::Resp3
            && !unsubscribing
            && !SUBSCRIBING.iter().any(|n| is(&f.args[0], n))
        {
            writes.push_back((f.args.clone(), f.writes.clone()));
        }
        let mut command = encoded(&f.args);
        if unsubscribing {
            command.extend_from_slice(MARKER);
        }
        let p = pinned.as_mut().expect("held while relaying");
        if p.lent.send(&command).await.is_err() {
            *pinned = None;
            return Ok(Relayed::Close);
        }
        if unsubscribing {
            return Ok(Relayed::Checkpoint { tracking_off });
        }
    }
}

const UNSUBSCRIBING: &[&str] = &["unsubscribe", "punsubscribe", "sunsubscribe"];

/// How many subscriptions the client holds, as Redis' confirmations count them: channels and
/// patterns together, shard channels apart.
#[derive(Default)]
struct Subscriptions {
    plain: i64,
    shard: i64,
    /// A confirmation was heard: before the first, "none" means "not yet".
    heard: bool,
}

impl Subscriptions {
    /// Reads a confirmation (`[kind, channel, count]`, as an array or a push), if `frame`
    /// is one.
    fn heard(&mut self, frame: &[u8]) {
        let Some((kind, count)) = confirmation(frame) else {
            return;
        };
        self.heard = true;
        if kind.eq_ignore_ascii_case(b"ssubscribe") || kind.eq_ignore_ascii_case(b"sunsubscribe") {
            self.shard = count;
        } else {
            self.plain = count;
        }
    }

    fn any_heard(&self) -> bool {
        self.heard
    }

    /// No subscription is held, whether or not any was.
    fn empty(&self) -> bool {
        self.plain == 0 && self.shard == 0
    }
}

/// A subscription confirmation's kind and count: `*3` or `>3`, a bulk kind naming
/// (un)subscribe, a channel (or null), and an integer.
fn confirmation(frame: &[u8]) -> Option<(&[u8], i64)> {
    let rest = frame
        .strip_prefix(b"*3\r\n$")
        .or_else(|| frame.strip_prefix(b">3\r\n$"))?;
    let nl = rest.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
    let kind = rest.get(nl + 2..nl + 2 + len)?;
    if !SUBSCRIBING
        .iter()
        .chain(UNSUBSCRIBING)
        .any(|n| n.as_bytes().eq_ignore_ascii_case(kind))
    {
        return None;
    }
    // The count is the last line: ":<n>\r\n".
    let body = frame.strip_suffix(b"\r\n")?;
    let colon = body.iter().rposition(|&b| b == b':')?;
    let count = std::str::from_utf8(&body[colon + 1..]).ok()?.parse().ok()?;
    Some((kind, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn commands_that_open_state_are_known() {
        for line in [
            &["MULTI"][..],
            &["watch", "k"],
            &["BLPOP", "l", "0"],
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
            &["SUBSCRIBE", "c"],
            &["SELECT", "1"],
            &["WAIT", "1", "0"],
        ] {
            assert!(wants(&args(line), false, false), "{line:?}");
        }
        for line in [
            &["SELECT", "0"][..],
            &["XREAD", "STREAMS", "block", "0"],
            &["HSET", "h", "f", "v"],
            &["EXEC"],
        ] {
            assert!(!wants(&args(line), false, false), "{line:?}");
        }
        assert!(wants(&args(&["GET", "k"]), true, false));
        assert!(!wants(&args(&["QUIT"]), true, false));
        // Over a cluster: CLIENT TRACKING is closed on, SELECT refused as a cluster does.
        assert!(wants(&args(&["MULTI"]), false, true));
        assert!(!wants(&args(&["SELECT", "1"]), false, true));
        assert!(!wants(&args(&["CLIENT", "TRACKING", "on"]), true, true));
    }

    #[test]
    fn subscription_confirmations_are_counted() {
        let mut s = Subscriptions::default();
        assert!(!s.any_heard() && s.empty(), "nothing heard yet");
        s.heard(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        assert!(!s.empty());
        s.heard(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n:0\r\n");
        assert!(!s.empty(), "a message is no confirmation");
        s.heard(b">3\r\n$10\r\nssubscribe\r\n$1\r\nb\r\n:1\r\n");
        s.heard(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n");
        assert!(!s.empty(), "a shard channel is left");
        s.heard(b">3\r\n$12\r\nsunsubscribe\r\n$1\r\nb\r\n:0\r\n");
        assert!(s.empty());
        // A plain channel's subscription is not a shard channel's, though both start with s.
        let mut plain = Subscriptions::default();
        plain.heard(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        plain.heard(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n");
        assert!(plain.empty());
        assert!(is_marker_reply(b"$25\r\ntiergate-relay-checkpoint\r\n"));
        assert!(is_marker_reply(
            b"*2\r\n$4\r\npong\r\n$25\r\ntiergate-relay-checkpoint\r\n"
        ));
    }
}
