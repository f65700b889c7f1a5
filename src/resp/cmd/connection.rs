//! Connection commands: PING, ECHO, QUIT, SELECT, AUTH, HELLO, CLIENT.

use super::{is, parse_int, Ctx, Parse};
use crate::resp::frame::{Frame, Protocol};
use crate::{
    auth::{AfterFailure, Denied},
    metrics::Door,
};
use bytes::Bytes;

/// The Redis version tiergate's command semantics follow; clients read it from HELLO.
pub const REDIS_COMPAT_VERSION: &str = "7.0.0";

pub struct Ping {
    msg: Option<Bytes>,
}

impl Ping {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        Ok(Self { msg: p.next_opt() })
    }

    pub fn apply(self, _: &mut Ctx<'_>) -> Frame {
        match self.msg {
            None => Frame::Simple("PONG".into()),
            Some(m) => Frame::Bulk(m),
        }
    }
}

pub struct Echo {
    msg: Bytes,
}

impl Echo {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        Ok(Self {
            msg: p.next_bytes()?,
        })
    }

    pub fn apply(self, _: &mut Ctx<'_>) -> Frame {
        Frame::Bulk(self.msg)
    }
}

pub struct Quit;

impl Quit {
    /// Arguments are ignored, as redis-server ignores them: `QUIT x` still closes.
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        p.rest();
        Ok(Self)
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        ctx.close = true;
        Frame::OK
    }
}

/// SELECT: tiergate has one keyspace, database 0. Over a Redis Cluster, which has only
/// database 0 too, any other is refused as a cluster refuses it.
pub struct Select {
    db: i64,
}

impl Select {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        Ok(Self { db: p.next_int()? })
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        if self.db == 0 {
            Frame::OK
        } else if ctx.shared.cache.l2().is_some_and(|l2| l2.clustered()) {
            Frame::error("ERR SELECT is not allowed in cluster mode")
        } else {
            Frame::error("ERR DB index is out of range")
        }
    }
}

pub struct Auth {
    user: Option<Bytes>,
    password: Bytes,
}

impl Auth {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let first = p.next_bytes()?;
        Ok(match p.next_opt() {
            Some(password) => Self {
                user: Some(first),
                password,
            },
            None => Self {
                user: None,
                password: first,
            },
        })
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        if !ctx.shared.auth.rules().resp_has_passwords() && self.user.is_none() {
            return Frame::error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        }
        match check_password(ctx, self.user.as_deref(), &self.password) {
            Ok(()) => Frame::OK,
            Err(e) => e,
        }
    }
}

/// Checks credentials (`user` None: "default") and logs the session in as that user. A
/// failure is counted against the connection: its reply waits longer each time after the
/// first, and the last one allowed closes the connection (`auth.*`), so one connection cannot
/// try passwords at the speed of a pipeline.
fn check_password(ctx: &mut Ctx<'_>, user: Option<&[u8]>, password: &[u8]) -> Result<(), Frame> {
    let rules = ctx.shared.auth.rules();
    if let Some(p) = rules.login(user, password) {
        ctx.session.user = Some(p);
        return Ok(());
    }
    let metrics = &ctx.shared.metrics;
    metrics.auth_denied(Door::Resp, Denied::Invalid);
    let failures = ctx.session.auth_failed();
    let after = rules.after_failure(failures);
    let closed = after == AfterFailure::Close;
    (ctx.shared.auth.failures).failed(
        "resp",
        ctx.session.id,
        rules.known_user(user),
        failures,
        closed,
    );
    match after {
        AfterFailure::Wait(pause) => {
            ctx.pause = pause;
            Err(Frame::error(
                "WRONGPASS invalid username-password pair or user is disabled.",
            ))
        }
        AfterFailure::Close => {
            metrics.auth_failure_close(Door::Resp);
            ctx.close = true;
            Err(Frame::error(
                "WRONGPASS invalid username-password pair or user is disabled. Too many failed \
                 attempts on this connection (auth.max_failures_per_connection): closing it.",
            ))
        }
    }
}

pub struct Hello {
    proto: Option<i64>,
    auth: Option<(Bytes, Bytes)>,
    setname: Option<Bytes>,
}

impl Hello {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let mut hello = Self {
            proto: None,
            auth: None,
            setname: None,
        };
        let Some(v) = p.next_opt() else {
            return Ok(hello);
        };
        hello.proto = Some(parse_int(&v).ok_or_else(|| {
            Frame::error("ERR Protocol version is not an integer or out of range")
        })?);
        while let Some(opt) = p.next_opt() {
            if is(&opt, "auth") && p.remaining() >= 2 {
                hello.auth = Some((p.next_bytes()?, p.next_bytes()?));
            } else if is(&opt, "setname") && p.remaining() >= 1 {
                hello.setname = Some(p.next_bytes()?);
            } else {
                return Err(Frame::Error(
                    format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&opt)
                    )
                    .into(),
                ));
            }
        }
        Ok(hello)
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        let proto = match self.proto {
            None => ctx.session.proto,
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return Frame::error("NOPROTO unsupported protocol version"),
        };
        if let Some((user, pass)) = &self.auth {
            if let Err(e) = check_password(ctx, Some(user), pass) {
                return e;
            }
        }
        if ctx.session.user.is_none() {
            return Frame::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                 HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
                 select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = self.setname {
            if let Err(e) = check_client_name(&name) {
                return e;
            }
            ctx.session.set_name(&name);
        }
        ctx.session.proto = proto;
        let field = |k: &'static str| Frame::bulk_static(k);
        Frame::Map(vec![
            (field("server"), field("redis")),
            (field("version"), field(REDIS_COMPAT_VERSION)),
            (
                field("proto"),
                Frame::Integer(if proto == Protocol::Resp3 { 3 } else { 2 }),
            ),
            (field("id"), Frame::Integer(ctx.session.id as i64)),
            (field("mode"), field("standalone")),
            (field("role"), field("master")),
            (field("modules"), Frame::Array(Vec::new())),
            (field("tiergate_version"), field(env!("CARGO_PKG_VERSION"))),
        ])
    }
}

fn check_client_name(name: &[u8]) -> Result<(), Frame> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(Frame::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

pub enum Client {
    SetName(Bytes),
    GetName,
    Id,
    /// CLIENT SETINFO LIB-NAME / LIB-VER, which client libraries send on connect.
    SetInfo,
    Help,
}

/// CLIENT HELP: the subcommands served, in redis-server's layout.
const CLIENT_HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.",
    "    * LIB-VER: the client lib version.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "HELP",
    "    Print this help.",
];

impl Client {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let sub = p.next_bytes()?;
        if is(&sub, "setname") {
            Ok(Client::SetName(p.next_bytes()?))
        } else if is(&sub, "getname") {
            Ok(Client::GetName)
        } else if is(&sub, "id") {
            Ok(Client::Id)
        } else if is(&sub, "help") {
            Ok(Client::Help)
        } else if is(&sub, "setinfo") {
            let attr = p.next_bytes()?;
            p.next_bytes()?;
            if is(&attr, "lib-name") || is(&attr, "lib-ver") {
                Ok(Client::SetInfo)
            } else {
                Err(Frame::Error(
                    format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(&attr)
                    )
                    .into(),
                ))
            }
        } else {
            Err(Frame::Error(
                format!(
                    "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                    String::from_utf8_lossy(&sub)
                )
                .into(),
            ))
        }
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        match self {
            Client::SetName(name) => match check_client_name(&name) {
                Err(e) => e,
                Ok(()) => {
                    ctx.session.set_name(&name);
                    Frame::OK
                }
            },
            Client::GetName => ctx
                .session
                .name()
                .map_or(Frame::Null, |n| Frame::Bulk(Bytes::copy_from_slice(n))),
            Client::Id => Frame::Integer(ctx.session.id as i64),
            Client::SetInfo => Frame::OK,
            Client::Help => Frame::Array(
                CLIENT_HELP
                    .iter()
                    .map(|l| Frame::Simple((*l).into()))
                    .collect(),
            ),
        }
    }
}
