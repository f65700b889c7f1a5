//! Redis commands that make no sense through a gateway, answered with the reason instead of
//! "unknown command", so an operator who tries one learns what to do: they act on the Redis
//! behind every client (SHUTDOWN, REPLICAOF), stream its replication (SYNC, PSYNC), show every
//! client's commands and keys to one of them (MONITOR), or address Redis' clients, which the
//! gateway's clients are not (CLIENT KILL). The connection stays open.

use super::is;
use crate::resp::frame::Frame;
use bytes::Bytes;

/// Each refused command and why, by its canonical name.
const REFUSED: &[(&str, &str)] = &[
    (
        "SHUTDOWN",
        "it would stop the Redis behind every client of this gateway; stop that Redis directly",
    ),
    (
        "REPLICAOF",
        "it would change the replication of the Redis behind every client of this gateway; run it on that Redis directly",
    ),
    (
        "SLAVEOF",
        "it would change the replication of the Redis behind every client of this gateway; run it on that Redis directly",
    ),
    (
        "SYNC",
        "replication streams are not forwarded; replicate from Redis directly",
    ),
    (
        "PSYNC",
        "replication streams are not forwarded; replicate from Redis directly",
    ),
    (
        "MONITOR",
        "it would show this client every other client's commands and keys; use the access log (access_log.enabled)",
    ),
];

/// The error for a command refused here (`args[0]` is a name no other lookup knows, or
/// CLIENT with a subcommand), or None.
pub fn refusal(args: &[Bytes]) -> Option<Frame> {
    let name = &args[0];
    if is(name, "client") {
        return args
            .get(1)
            .filter(|sub| is(sub, "kill"))
            .map(|_| because("CLIENT KILL", "this gateway's clients are not the Redis clients it names; CLIENT KILL them on Redis directly, or close them here with their own QUIT"));
    }
    REFUSED
        .iter()
        .find(|(n, _)| is(name, n))
        .map(|&(n, why)| because(n, why))
}

fn because(name: &str, why: &str) -> Frame {
    Frame::Error(format!("ERR {name} is refused by tiergate: {why}").into())
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::*;

    #[test]
    fn gateway_nonsense_is_refused_with_its_reason() {
        let Some(Frame::Error(e)) = refusal(&args(&["shutdown", "nosave"])) else {
            panic!("SHUTDOWN not refused");
        };
        assert!(
            e.starts_with("ERR SHUTDOWN is refused by tiergate: it would stop"),
            "{e}"
        );
        assert!(refusal(&args(&["CLIENT", "KILL", "ID", "7"])).is_some());
        assert!(refusal(&args(&["CLIENT", "ID"])).is_none());
        assert!(refusal(&args(&["HSET", "h", "f", "v"])).is_none());
    }
}
