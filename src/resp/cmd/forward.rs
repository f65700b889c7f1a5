//! Commands the door does not serve itself, in tiered mode: looked up in Redis' own command
//! table (`cache::table`) for which arguments are keys and which of them it writes, checked
//! against the user's scopes, then forwarded as they came (`cache::forward`), their replies
//! copied back unchanged. What a forwarded command writes leaves L1 here and on every other
//! instance; a write whose keys cannot be known empties L1 (see `writes`).
//!
//! A user with key-prefix scopes may run a forwarded command only when every key it names is
//! known and in scope: a command whose keys Redis' table cannot list, a keyless command of
//! the keyspace, admin or dangerous kind (KEYS, SCAN, RANDOMKEY, FLUSHALL, CONFIG SET ...),
//! and every script (EVAL, FCALL, SCRIPT, FUNCTION: a script reaches keys it does not
//! declare) are refused with `-NOPERM`.

use super::Frame;
use crate::{
    auth::{Need, Principal},
    cache::{
        forward::{Run, Writes},
        table::{AclCategories, Flags, KeyFlags, Keys, Spec, Table},
        Reply,
    },
    resp::frame::Protocol,
};
use bytes::Bytes;

/// A command to forward, and what it may change in L1.
pub struct Forward {
    pub args: Vec<Bytes>,
    pub writes: Writes,
}

/// Keyless commands of these kinds read or change keys a scoped user may not see.
fn unscoped_only() -> AclCategories {
    AclCategories::KEYSPACE | AclCategories::ADMIN | AclCategories::DANGEROUS
}

impl Forward {
    /// Checks `args` against Redis' `table` and `user`'s scopes; the error is the reply.
    pub fn parse(
        args: Vec<Bytes>,
        table: &Table,
        user: Option<&Principal>,
    ) -> Result<Forward, Frame> {
        // A name Redis does not know is forwarded too: Redis answers it, in its own words.
        let Some(spec) = table.lookup(&args) else {
            return Ok(Forward {
                args,
                writes: Writes::Nothing,
            });
        };
        let keys = spec.keys(&args);
        if let Some(user) = user.filter(|u| !u.unscoped()) {
            permit(user, spec, &keys, &args)?;
        }
        let writes = writes(spec, &keys, &args);
        Ok(Forward { args, writes })
    }
}

/// What a command may change in L1: the keys it writes; every key for a write whose keys
/// are not all known (MIGRATE ... KEYS, SORT ... STORE as Redis 7.0 declares it), a keyless
/// write (FLUSHALL, FLUSHDB, SWAPDB, FUNCTION LOAD), or a script that declares no keys
/// (EVAL "..." 0: what it writes cannot be known).
fn writes(spec: &Spec, keys: &Keys, args: &[Bytes]) -> Writes {
    // The one rule not read from Redis' table: 7.0 declares SORT's keys unknown, which would
    // make every SORT empty L1. It writes only with STORE (and then the key after it, which
    // an exact parse would have to find past BY, LIMIT and GET patterns).
    if spec.name == "sort" && !args.iter().skip(2).any(|a| super::is(a, "store")) {
        return Writes::Nothing;
    }
    let write_flag = spec.flags.contains(Flags::WRITE);
    let writes_a_key = keys.found.iter().any(|k| k.access.write);
    if !keys.complete && (write_flag || writes_a_key) {
        return Writes::Everything;
    }
    if keys.found.is_empty() {
        let script = spec.acl.contains(AclCategories::SCRIPTING)
            && spec.flags.contains(Flags::MOVABLEKEYS)
            && !spec.flags.contains(Flags::READONLY);
        return if write_flag || script {
            Writes::Everything
        } else {
            Writes::Nothing
        };
    }
    if !writes_a_key {
        return Writes::Nothing;
    }
    let written = keys.found.iter().filter(|k| k.access.write);
    let at = written.map(|k| k.index as u32).collect();
    if typed(spec) {
        Writes::Typed(at)
    } else {
        Writes::Keys(at)
    }
}

/// Whether a command takes only keys of a type L1 never holds (see `Writes::Typed`): it is of
/// the hash, list, set, sorted set, stream or geo kind and of no kind that takes strings
/// (strings, bitmaps, HyperLogLogs, any key, scripts), and overwrites no key. The stores
/// (SINTERSTORE, ZUNIONSTORE, GEOSEARCHSTORE ...) replace a destination of any type, a
/// string included, yet Redis 7.0 flags it RW like HSET's key: they are told by their name,
/// the second rule not read from the table.
fn typed(spec: &Spec) -> bool {
    if spec.name.ends_with("store") {
        return false;
    }
    let other = AclCategories::HASH
        | AclCategories::LIST
        | AclCategories::SET
        | AclCategories::SORTEDSET
        | AclCategories::STREAM
        | AclCategories::GEO;
    let strings = AclCategories::STRING
        | AclCategories::BITMAP
        | AclCategories::HYPERLOGLOG
        | AclCategories::KEYSPACE
        | AclCategories::SCRIPTING;
    spec.acl.intersects(other)
        && !spec.acl.intersects(strings)
        && !spec
            .key_specs
            .iter()
            .any(|ks| ks.flags.contains(KeyFlags::OW))
}

/// Whether a scoped user may run it (see the module doc).
fn permit(user: &Principal, spec: &Spec, keys: &Keys, args: &[Bytes]) -> Result<(), Frame> {
    let refuse = || {
        Frame::Error(
            format!(
                "NOPERM User {} has no permissions to run the '{}' command",
                user.name(),
                spec.name
            )
            .into(),
        )
    };
    if spec.acl.contains(AclCategories::SCRIPTING) || !keys.complete {
        return Err(refuse());
    }
    if keys.found.is_empty() && spec.acl.intersects(unscoped_only()) {
        return Err(refuse());
    }
    for k in &keys.found {
        let need = match (k.access.read, k.access.write) {
            (true, true) => Need::ReadWrite,
            (false, true) => Need::Write,
            _ => Need::Read,
        };
        if !user.may(need, &args[k.index]) {
            return Err(Frame::error(
                "NOPERM this user has no permissions to access one of the keys used as arguments",
            ));
        }
    }
    Ok(())
}

impl Forward {
    /// Forwards this one command alone (a run of one; the connection gathers runs itself).
    pub async fn apply(self, ctx: &mut super::Ctx<'_>) -> Frame {
        let mut run = Run::default();
        run.push(self.args, &self.writes);
        let proto = ctx.session.proto;
        match send(ctx.shared, &mut run, proto, ctx.limits).await {
            Err(every) => every,
            Ok(replies) => match replies.last() {
                Some(Answer::Reply(frame)) => frame,
                Some(Answer::TooLarge(len)) => {
                    ctx.close = true;
                    crate::resp::reply::too_large(len, ctx.limits.max_reply_bytes)
                }
                None => Frame::error("ERR Redis sent no reply"),
            },
        }
    }
}

/// A forwarded command's answer.
#[derive(Clone)]
pub enum Answer {
    /// As Redis sent it.
    Reply(Frame),
    /// Redis' replies passed `limits.max_reply_bytes` here (this many bytes): the client is
    /// closed after the error naming the limit.
    TooLarge(usize),
}

/// A run's answers, in order: Redis' replies, each made an `Answer` as it is taken (a vector
/// of answers collected from them cost a reallocation per run).
pub type Answers = std::iter::Map<std::vec::IntoIter<Reply>, fn(Reply) -> Answer>;

/// Sends a run of forwarded commands in one round trip; their answers in order, or the error
/// every one of them gets when the round trip failed.
pub async fn send(
    shared: &crate::resp::Shared,
    run: &mut Run,
    proto: Protocol,
    limits: &crate::resp::Limits,
) -> Result<Answers, Frame> {
    let resp3 = proto == Protocol::Resp3;
    let limit = limits.reply_limit();
    let replies = shared
        .cache
        .forward(run, resp3, limit)
        .await
        .map_err(super::l2_error)?;
    Ok(replies.into_iter().map(answer as fn(Reply) -> Answer))
}

fn answer(reply: Reply) -> Answer {
    match reply {
        Reply::Raw(bytes) => Answer::Reply(Frame::Raw(bytes)),
        Reply::TooLarge(len) => Answer::TooLarge(len),
        // Forwarded replies are never decoded.
        Reply::Value(_) | Reply::Error { .. } => {
            Answer::Reply(Frame::error("ERR a forwarded reply was decoded"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::*;
    use crate::cache::table::redis_7_0;

    fn writes_of(line: &str) -> Writes {
        let a = args(&line.split(' ').collect::<Vec<_>>());
        Forward::parse(a, redis_7_0(), None)
            .unwrap_or_else(|_| panic!("{line} refused"))
            .writes
    }

    fn keys(at: &[u32]) -> Writes {
        Writes::Keys(at.into())
    }

    fn typed(at: &[u32]) -> Writes {
        Writes::Typed(at.into())
    }

    #[test]
    fn what_a_forwarded_command_writes_comes_from_redis_table() {
        // Only a hash can take HSET, and L1 holds only strings (and absences).
        assert_eq!(writes_of("HSET h f v"), typed(&[1]));
        assert_eq!(writes_of("LPOP l"), typed(&[1]));
        assert_eq!(writes_of("XADD s * f v"), typed(&[1]));
        // Their destination may have held a string; a HyperLogLog is one.
        assert_eq!(writes_of("SINTERSTORE d a b"), keys(&[1]));
        assert_eq!(writes_of("ZRANGESTORE d z 0 -1"), keys(&[1]));
        assert_eq!(
            writes_of("GEOSEARCHSTORE d g FROMLONLAT 0 0 BYRADIUS 1 km"),
            keys(&[1])
        );
        assert_eq!(writes_of("PFADD h a"), keys(&[1]));
        assert_eq!(writes_of("SETBIT b 1 1"), keys(&[1]));
        assert_eq!(writes_of("HGET h f"), Writes::Nothing);
        assert_eq!(writes_of("LRANGE l 0 -1"), Writes::Nothing);
        assert_eq!(writes_of("RENAME a b"), keys(&[1, 2]));
        assert_eq!(writes_of("LMOVE a b LEFT RIGHT"), typed(&[1, 2]));
        assert_eq!(writes_of("ZUNIONSTORE d 2 a b"), keys(&[1]));
        assert_eq!(writes_of("GEOADD g 1 2 m"), typed(&[1]));
        assert_eq!(writes_of("EVAL s 2 a b x"), keys(&[3, 4]));
        assert_eq!(writes_of("EVAL_RO s 1 a"), Writes::Nothing);
        assert_eq!(writes_of("PUBLISH ch m"), Writes::Nothing);
        assert_eq!(writes_of("NOSUCHCOMMAND a b"), Writes::Nothing);
        // Keyless writes, and scripts that declare no keys: every key.
        assert_eq!(writes_of("FLUSHALL"), Writes::Everything);
        assert_eq!(writes_of("SWAPDB 0 1"), Writes::Everything);
        assert_eq!(writes_of("EVAL s 0"), Writes::Everything);
        assert_eq!(writes_of("FCALL f 0"), Writes::Everything);
        // SORT writes only with STORE; MIGRATE ... KEYS cannot be listed for sure.
        assert_eq!(writes_of("SORT l"), Writes::Nothing);
        assert_eq!(writes_of("SORT l LIMIT 0 1 store d"), Writes::Everything);
        assert_eq!(
            writes_of("MIGRATE h 1 \"\" 0 5 KEYS a b"),
            Writes::Everything
        );
    }
}
