//! Commands: each one a struct that parses itself from the request's arguments
//! (`parse_frames`) and runs against the engine (`apply`), dispatched by `Command`, which
//! also owns the checks every command shares (authentication, arity, unknown names).

mod connection;
pub mod forward;
mod keyspace;
mod refused;
mod server;
mod string;
pub mod unservable;

use super::{frame::Frame, session::Session, Shared};
use crate::{auth::Need, metrics::RespClass};
use bytes::Bytes;
use std::borrow::Cow;

pub use connection::{Auth, Client, Echo, Hello, Ping, Quit, Select};
pub use forward::Forward;
pub use keyspace::{Del, Exists, Expire, Ttl};
pub use server::{CommandInfo, Config, Debug, Info};
pub use string::{Get, Incr, Looked, MGet, MSet, Set};
pub use unservable::Unservable;

/// What a command runs with: the engine and limits (shared) and this client's state.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    /// The bounds in force for this batch of commands (read once per batch).
    pub limits: &'a super::Limits,
    pub session: &'a mut Session,
    /// Set by QUIT (and a last failed AUTH): close once the reply is written.
    pub close: bool,
    /// Set by a failed AUTH: how long its reply, and the rest of the connection's commands,
    /// wait (`auth.failure_delay`). Waited for outside admission.
    pub pause: std::time::Duration,
    /// Set by GET on a hit: the tier that answered, for the access log.
    pub tier: Option<crate::metrics::Tier>,
}

pub enum Command {
    Ping(Ping),
    Echo(Echo),
    Quit(Quit),
    Select(Select),
    Auth(Auth),
    Hello(Hello),
    Client(Client),
    CommandInfo(CommandInfo),
    Get(Get),
    Set(Set),
    MGet(MGet),
    MSet(MSet),
    Del(Del),
    Exists(Exists),
    Incr(Incr),
    Expire(Expire),
    Ttl(Ttl),
    Info(Info),
    Config(Config),
    Debug(Debug),
    /// Refused with a close: see `unservable`.
    Unservable(Unservable),
    /// Not served here: sent on to Redis (tiered mode).
    Forward(Forward),
}

/// What the door does with a command it does not serve.
#[derive(Clone, Copy)]
pub enum Unserved<'a> {
    /// Standalone mode: the memory store serves strings only.
    Standalone,
    /// Tiered, but not forwarding: why (TLS; Redis' table not read yet).
    Unavailable(&'static str),
    /// Forwarded, as Redis' command table says; to a Redis Cluster when `clustered`.
    Forward {
        table: &'a crate::cache::table::Table,
        clustered: bool,
    },
}

/// Commands a client may send before it has authenticated.
const BEFORE_AUTH: &[&str] = &["auth", "hello", "ping", "quit"];

impl Command {
    /// Whether this command only concerns the connection (handshake, PING, QUIT ...): it is
    /// run even when admission refused its batch, so clients can still connect, authenticate
    /// and leave while the door sheds data commands.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Command::Ping(_)
                | Command::Echo(_)
                | Command::Quit(_)
                | Command::Select(_)
                | Command::Auth(_)
                | Command::Hello(_)
                | Command::Client(_)
                | Command::CommandInfo(_)
                | Command::Unservable(_)
        )
    }

    /// The latency class it is counted in (`tiergate_resp_command_duration_seconds`).
    pub fn class(&self) -> RespClass {
        match self {
            Command::Get(_) | Command::MGet(_) | Command::Exists(_) | Command::Ttl(_) => {
                RespClass::Read
            }
            Command::Set(_)
            | Command::MSet(_)
            | Command::Del(_)
            | Command::Incr(_)
            | Command::Expire(_) => RespClass::Write,
            Command::Forward(_) => RespClass::Forwarded,
            _ => RespClass::Connection,
        }
    }

    /// Parses a request; `unserved` says what becomes of a command the door does not serve.
    /// The error is the reply to send (the command is not run).
    pub fn from_args(
        args: Vec<Bytes>,
        session: &Session,
        unserved: Unserved<'_>,
    ) -> Result<Command, Frame> {
        let Some(name) = lookup(&args[0]) else {
            // Before the auth gate: an HTTP request or a MULTI is closed on, logged in or not.
            if let Some(u) = Unservable::recognise(&args) {
                return Ok(Command::Unservable(u));
            }
            if let Some(refusal) = refused::refusal(&args) {
                return Err(refusal);
            }
            return match unserved {
                Unserved::Standalone => Err(standalone(&args)),
                Unserved::Unavailable(why) => Err(unavailable(&args, why)),
                _ if session.user.is_none() => Err(Frame::error("NOAUTH Authentication required.")),
                Unserved::Forward { table, .. } => {
                    Forward::parse(args, table, session.user.as_deref()).map(Command::Forward)
                }
            };
        };
        if name == "client" {
            // Tiered, it holds a dedicated connection (`resp::pinned`) and never reaches here.
            if args.get(1).is_some_and(|a| is(a, "tracking")) {
                return Ok(Command::Unservable(Unservable::ConnectionState(
                    "CLIENT TRACKING",
                )));
            }
            if let Some(refusal) = refused::refusal(&args) {
                return Err(refusal);
            }
        }
        if session.user.is_none() && !BEFORE_AUTH.contains(&name) {
            return Err(Frame::error("NOAUTH Authentication required."));
        }
        // Counters run in Redis anyway (INCRBY): over L2 they are forwarded, so a client's
        // pipelined INCRs share one round trip as any forwarded run does, where served they
        // took one each (0.44x twemproxy at -P16, docs/PERFORMANCE.md). So is MSET to one
        // Redis, where served it was a SET and a PUBLISH per key through redis-rs (0.44x); a
        // cluster's is served, split by slot, where forwarded it would be CROSSSLOT.
        if let Unserved::Forward { table, clustered } = unserved {
            if matches!(name, "incr" | "decr" | "incrby" | "decrby")
                || (name == "mset" && !clustered)
            {
                return Forward::parse(args, table, session.user.as_deref()).map(Command::Forward);
            }
        }
        let mut p = Parse::new(name, args);
        let cmd = match name {
            "ping" => Command::Ping(Ping::parse_frames(&mut p)?),
            "echo" => Command::Echo(Echo::parse_frames(&mut p)?),
            "quit" => Command::Quit(Quit::parse_frames(&mut p)?),
            "select" => Command::Select(Select::parse_frames(&mut p)?),
            "auth" => Command::Auth(Auth::parse_frames(&mut p)?),
            "hello" => Command::Hello(Hello::parse_frames(&mut p)?),
            "client" => Command::Client(Client::parse_frames(&mut p)?),
            "command" => Command::CommandInfo(CommandInfo::parse_frames(&mut p)?),
            "get" => Command::Get(Get::parse_frames(&mut p)?),
            "set" => Command::Set(Set::parse_frames(&mut p)?),
            "mget" => Command::MGet(MGet::parse_frames(&mut p)?),
            "mset" => Command::MSet(MSet::parse_frames(&mut p)?),
            "del" | "unlink" => Command::Del(Del::parse_frames(&mut p)?),
            "exists" => Command::Exists(Exists::parse_frames(&mut p)?),
            "incr" => Command::Incr(Incr::parse_frames(&mut p, 1)?),
            "decr" => Command::Incr(Incr::parse_frames(&mut p, -1)?),
            "incrby" => Command::Incr(Incr::parse_frames_by(&mut p, 1)?),
            "decrby" => Command::Incr(Incr::parse_frames_by(&mut p, -1)?),
            "expire" => Command::Expire(Expire::parse_frames(&mut p, 1000)?),
            "pexpire" => Command::Expire(Expire::parse_frames(&mut p, 1)?),
            "ttl" => Command::Ttl(Ttl::parse_frames(&mut p, false)?),
            "pttl" => Command::Ttl(Ttl::parse_frames(&mut p, true)?),
            "info" => Command::Info(Info::parse_frames(&mut p)?),
            "config" => Command::Config(Config::parse_frames(&mut p)?),
            "debug" => Command::Debug(Debug::parse_frames(&mut p)?),
            _ => unreachable!("every name in server::TABLE is dispatched"),
        };
        p.finish()?;
        Ok(cmd)
    }

    /// Whether the session's user may touch every key this command names. Commands without
    /// keys are open to any logged-in user.
    pub fn permitted(&self, session: &Session) -> bool {
        let Some(user) = &session.user else {
            return true;
        };
        let all = |need: Need, keys: &[Bytes]| keys.iter().all(|k| user.may(need, k));
        match self {
            Command::Get(c) => user.may(Need::Read, &c.key),
            // SET ... GET returns the old value.
            Command::Set(c) if c.opts.get => user.may(Need::ReadWrite, &c.key),
            Command::Set(c) => user.may(Need::Write, &c.key),
            Command::MGet(c) => all(Need::Read, &c.keys),
            Command::MSet(c) => c.pairs.iter().all(|(k, _)| user.may(Need::Write, k)),
            Command::Del(c) => all(Need::Write, &c.keys),
            Command::Exists(c) => all(Need::Read, &c.keys),
            Command::Incr(c) => user.may(Need::ReadWrite, &c.key),
            Command::Expire(c) => user.may(Need::Write, &c.key),
            Command::Ttl(c) => user.may(Need::Read, &c.key),
            Command::Ping(_)
            | Command::Echo(_)
            | Command::Quit(_)
            | Command::Select(_)
            | Command::Auth(_)
            | Command::Hello(_)
            | Command::Client(_)
            | Command::CommandInfo(_)
            | Command::Info(_)
            | Command::Config(_)
            | Command::Debug(_)
            | Command::Unservable(_)
            // Checked as it was parsed, against Redis' table.
            | Command::Forward(_) => true,
        }
    }

    /// The length of the first key the command names (0: none), for the access log.
    pub fn first_key_len(&self) -> u32 {
        let first = |keys: &[Bytes]| keys.first().map_or(0, Bytes::len);
        (match self {
            Command::Get(c) => c.key.len(),
            Command::Set(c) => c.key.len(),
            Command::MGet(c) => first(&c.keys),
            Command::MSet(c) => c.pairs.first().map_or(0, |(k, _)| k.len()),
            Command::Del(c) => first(&c.keys),
            Command::Exists(c) => first(&c.keys),
            Command::Incr(c) => c.key.len(),
            Command::Expire(c) => c.key.len(),
            Command::Ttl(c) => c.key.len(),
            _ => 0,
        }) as u32
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        match self {
            Command::Ping(c) => c.apply(ctx),
            Command::Echo(c) => c.apply(ctx),
            Command::Quit(c) => c.apply(ctx),
            Command::Select(c) => c.apply(ctx),
            Command::Auth(c) => c.apply(ctx),
            Command::Hello(c) => c.apply(ctx),
            Command::Client(c) => c.apply(ctx),
            Command::CommandInfo(c) => c.apply(ctx),
            Command::Get(c) => c.apply(ctx).await,
            Command::Set(c) => c.apply(ctx).await,
            Command::MGet(c) => c.apply(ctx).await,
            Command::MSet(c) => c.apply(ctx).await,
            Command::Del(c) => c.apply(ctx).await,
            Command::Exists(c) => c.apply(ctx).await,
            Command::Incr(c) => c.apply(ctx).await,
            Command::Expire(c) => c.apply(ctx).await,
            Command::Ttl(c) => c.apply(ctx).await,
            Command::Info(c) => c.apply(ctx).await,
            Command::Config(c) => c.apply(ctx),
            Command::Debug(c) => c.apply(ctx),
            Command::Unservable(c) => {
                ctx.close = true;
                c.reply().unwrap_or(Frame::Null)
            }
            Command::Forward(c) => c.apply(ctx).await,
        }
    }
}

/// The canonical (lowercase) name of a known command, without allocating.
pub fn name_of(name: &[u8]) -> Option<&'static str> {
    lookup(name)
}

fn lookup(name: &[u8]) -> Option<&'static str> {
    server::TABLE
        .iter()
        .map(|&(n, ..)| n)
        .find(|n| n.as_bytes().eq_ignore_ascii_case(name))
}

/// The reply to a command admission refused (`why`: its reason), for every path a command
/// may take: served, forwarded, or on a dedicated connection.
pub fn busy(why: &str) -> Frame {
    Frame::Error(format!("BUSY tiergate is at its limits ({why}); retry later").into())
}

/// The refusal of a command that makes no sense through a gateway (`refused`), if it is one.
pub fn refusal(args: &[Bytes]) -> Option<Frame> {
    refused::refusal(args)
}

/// A command name as an error quotes it: lossy UTF-8, at most 128 bytes.
fn quoted(name: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(&name[..name.len().min(128)])
}

/// The reply, in standalone mode, to a command the memory store does not serve.
fn standalone(args: &[Bytes]) -> Frame {
    Frame::Error(
        format!(
            "ERR unknown command '{}': standalone mode serves strings; set l2.url to forward every Redis command",
            quoted(&args[0])
        )
        .into(),
    )
}

/// The reply to a command that would be forwarded, while forwarding is unavailable.
fn unavailable(args: &[Bytes], why: &str) -> Frame {
    Frame::Error(format!("{why} ('{}' not forwarded)", quoted(&args[0])).into())
}

/// The arguments of one request, consumed front to back by a command's `parse_frames`.
pub struct Parse {
    name: &'static str,
    args: std::iter::Skip<std::vec::IntoIter<Bytes>>,
}

impl Parse {
    fn new(name: &'static str, args: Vec<Bytes>) -> Self {
        Self {
            name,
            args: args.into_iter().skip(1),
        }
    }

    pub fn wrong_arity(&self) -> Frame {
        Frame::Error(format!("ERR wrong number of arguments for '{}' command", self.name).into())
    }

    /// The next argument; a missing one is an arity error.
    pub fn next_bytes(&mut self) -> Result<Bytes, Frame> {
        self.args.next().ok_or_else(|| self.wrong_arity())
    }

    /// The next argument if there is one.
    pub fn next_opt(&mut self) -> Option<Bytes> {
        self.args.next()
    }

    /// The rest of the arguments.
    pub fn rest(&mut self) -> Vec<Bytes> {
        self.args.by_ref().collect()
    }

    pub fn remaining(&self) -> usize {
        self.args.len()
    }

    /// The next argument as an integer, with redis-server's error when it is not one.
    pub fn next_int(&mut self) -> Result<i64, Frame> {
        let b = self.next_bytes()?;
        parse_int(&b).ok_or_else(not_an_integer)
    }

    /// Extra arguments are an arity error: a command never silently ignores input.
    fn finish(&mut self) -> Result<(), Frame> {
        match self.args.next() {
            None => Ok(()),
            Some(_) => Err(self.wrong_arity()),
        }
    }
}

pub fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

pub fn not_an_integer() -> Frame {
    Frame::error("ERR value is not an integer or out of range")
}

pub fn syntax_error() -> Frame {
    Frame::error("ERR syntax error")
}

/// Whether argument `b` is the keyword `kw` (ASCII case-insensitive, as Redis compares).
pub fn is(b: &[u8], kw: &str) -> bool {
    b.eq_ignore_ascii_case(kw.as_bytes())
}

/// The reply for an engine error: a Redis error passed on as it came (same kind), or
/// TRYAGAIN when L2 cannot be reached, so clients know a retry may succeed.
pub fn l2_error(e: crate::cache::L2Error) -> Frame {
    use crate::cache::L2Error;
    Frame::Error(match e {
        L2Error::Refused { code, detail } => Cow::Owned(format!("{code} {detail}")),
        L2Error::Unavailable(_) => Cow::Borrowed("TRYAGAIN L2 is unreachable; retry later"),
        L2Error::Timeout => Cow::Borrowed("TRYAGAIN L2 did not answer in time; retry later"),
        L2Error::CircuitOpen => Cow::Borrowed("TRYAGAIN L2 is failing (circuit open); retry later"),
        // One line whatever the origin's error said.
        L2Error::Origin { detail, .. } => Cow::Owned(format!(
            "TRYAGAIN {}; retry later",
            detail.replace(['\r', '\n'], " ")
        )),
    })
}

/// Checks a value against `limits.max_value_bytes` (the codec bounds each argument by the
/// larger of the key and value bounds, so a value can still exceed its own).
pub fn check_value(value: &[u8], limits: &super::Limits) -> Result<(), Frame> {
    if value.len() as u64 > limits.max_value_bytes {
        return Err(Frame::error(
            "ERR value is larger than limits.max_value_bytes",
        ));
    }
    Ok(())
}

/// Checks a key against `limits.max_key_bytes`.
pub fn check_key(key: &[u8], limits: &super::Limits) -> Result<(), Frame> {
    let max = limits.max_key_bytes;
    if key.len() > max {
        return Err(Frame::Error(
            format!("ERR key is {} bytes; the limit is {}", key.len(), max).into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default user of a server without passwords.
    fn anyone() -> Option<std::sync::Arc<crate::auth::Principal>> {
        crate::auth::Rules::from_config(&crate::config::Config::default()).resp_anonymous()
    }

    /// A request's arguments from strings; the command tests of every module use it.
    pub(super) fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn err(v: &[&str]) -> String {
        match Command::from_args(args(v), &Session::new(1, anyone()), Unserved::Standalone) {
            Err(Frame::Error(e)) => e.into_owned(),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("{v:?} parsed"),
        }
    }

    #[test]
    fn names_are_case_insensitive_and_extra_args_rejected() {
        let s = Session::new(1, anyone());
        assert!(Command::from_args(args(&["gEt", "k"]), &s, Unserved::Standalone).is_ok());
        assert_eq!(
            err(&["GET", "k", "extra"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err(&["GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err(&["PING", "a", "b"]),
            "ERR wrong number of arguments for 'ping' command"
        );
    }

    #[test]
    fn every_listed_command_is_dispatched() {
        for &(name, ..) in server::TABLE {
            // Parse errors are fine (no arguments given); reaching `unreachable!` is not.
            let _ = Command::from_args(
                args(&[name]),
                &Session::new(1, anyone()),
                Unserved::Standalone,
            );
        }
    }

    #[test]
    fn standalone_mode_names_what_it_does_not_serve_and_how_to_get_it() {
        assert_eq!(
            err(&["HSET", "h", "f", "v"]),
            "ERR unknown command 'HSET': standalone mode serves strings; set l2.url to forward every Redis command"
        );
    }

    #[test]
    fn unauthenticated_clients_get_noauth() {
        let s = Session::new(1, None);
        assert!(
            matches!(Command::from_args(args(&["GET", "k"]), &s, Unserved::Standalone), Err(Frame::Error(e)) if e.starts_with("NOAUTH"))
        );
        assert!(Command::from_args(args(&["PING"]), &s, Unserved::Standalone).is_ok());
        assert!(Command::from_args(args(&["AUTH", "pw"]), &s, Unserved::Standalone).is_ok());
    }
}
