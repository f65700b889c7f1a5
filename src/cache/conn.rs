//! One L2 connection: to a single Redis (`ConnectionManager`: multiplexed, reconnecting) or to
//! a Redis Cluster (redis-rs' cluster connection: a multiplexed connection per node, MOVED and
//! ASK followed, the slot map refreshed on its own).
//!
//! A cluster connection is aimed at one key's slot before a call, and every command and
//! pipeline sent through it then goes to that slot's primary as a whole. Left to itself,
//! redis-rs works out each pipeline's route from its commands (and refuses one whose commands
//! name different slots); aiming states it instead. A write and its announcement (an SPUBLISH
//! on the channel of `k`'s slot, see `shard_channel`) go in one round trip to the node that
//! owns `k`. Multi-key work is split into one pipeline per slot (`groups`).

use redis::{
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr},
    Cmd, Pipeline, RedisFuture, Value,
};
use std::{collections::HashMap, sync::OnceLock};

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The hash slot of `key`, as Redis computes it: CRC16 (XMODEM) of the key, or of its hash
/// tag (the bytes between the first `{` and the next `}`, when not empty), mod 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// For every slot, a number whose decimal digits hash to that slot: `{n}` as a hash tag puts
/// a name in the slot. Found once, by counting up (about 170,000 CRCs, a few milliseconds).
fn slot_tags() -> &'static [u32] {
    static TAGS: OnceLock<Vec<u32>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(SLOTS)];
        let mut left = usize::from(SLOTS);
        let mut n: u32 = 0;
        while left > 0 {
            let slot = usize::from(slot_of(itoa::Buffer::new().format(n).as_bytes()));
            if tags[slot] == u32::MAX {
                tags[slot] = n;
                left -= 1;
            }
            n += 1;
        }
        tags
    })
}

/// The sharded invalidation channel of `slot`: `<channel>{<tag>}`, which lives in `slot`, so a
/// write's SPUBLISH goes to the node that applied the write, in the same pipeline.
pub fn shard_channel(channel: &str, slot: u16) -> String {
    format!("{channel}{{{}}}", slot_tags()[usize::from(slot)])
}

#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    /// `route`: the slot calls go to (None: redis-rs routes each command itself, as for the
    /// health probe's PING).
    Cluster {
        conn: ClusterConnection,
        route: Option<Route>,
    },
}

impl Conn {
    /// This connection with its calls sent to the primary of `key`'s slot (a no-op on a
    /// single Redis).
    pub fn aimed_at(mut self, key: &[u8]) -> Self {
        if let Conn::Cluster { route, .. } = &mut self {
            *route = Some(Route::with_key(key, SlotAddr::Master));
        }
        self
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster { conn, route: None } => conn.req_packed_command(cmd),
            Conn::Cluster {
                conn,
                route: Some(route),
            } => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(*route));
                Box::pin(conn.route_command(cmd.clone(), routing))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster { conn, route: None } => {
                conn.req_packed_commands(pipeline, offset, count)
            }
            Conn::Cluster {
                conn,
                route: Some(route),
            } => Box::pin(conn.route_pipeline(
                pipeline.clone(),
                offset,
                count,
                SingleNodeRoutingInfo::SpecificNode(*route),
            )),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster { .. } => 0,
        }
    }
}

/// The indices of `keys` in groups that may each go in one pipeline, in the order each group's
/// first key appears: one group on a single Redis, one per hash slot on a cluster.
pub fn groups<K: AsRef<[u8]>>(clustered: bool, keys: &[K]) -> Vec<Vec<usize>> {
    if !clustered {
        return vec![(0..keys.len()).collect()];
    }
    let mut at: HashMap<Slot, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let g = *at.entry(Slot::for_key(k.as_ref())).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[g].push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_computed_as_redis_does() {
        // Values from Redis' own documentation and CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"somekey"), 11058);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // The cases the cluster spec spells out: an empty first tag means no tag, and a tag
        // ends at the first `}` after the first `{`.
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot_of(b"foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
        assert_eq!(slot_of(b"foo{bar}{zap}"), crc16(b"bar") % SLOTS);
        for key in [&b"a"[..], b"user:1", b"{t}x", b"\xff\x00"] {
            assert!(
                Slot::for_key(key) == Slot::for_key(shard_channel("c", slot_of(key))),
                "redis-rs agrees the channel lives in the key's slot"
            );
        }
    }

    #[test]
    fn every_slot_has_a_channel_in_it() {
        for slot in (0..SLOTS).step_by(97).chain([0, SLOTS - 1]) {
            assert_eq!(
                slot_of(shard_channel("tiergate:invalidate", slot).as_bytes()),
                slot
            );
        }
    }

    #[test]
    fn keys_group_by_slot_only_on_a_cluster() {
        let keys = ["{u1}:a", "b", "{u1}:c", "d"];
        assert_eq!(groups(false, &keys), vec![vec![0, 1, 2, 3]]);
        let g = groups(true, &keys);
        assert_eq!(g[0], vec![0, 2], "one hash tag, one slot");
        assert_eq!(g.iter().map(Vec::len).sum::<usize>(), 4);
        assert!(g.iter().all(|grp| grp
            .iter()
            .all(|&i| Slot::for_key(keys[i]) == Slot::for_key(keys[grp[0]]))));
        assert!(groups(true, &[] as &[&str]).is_empty());
    }
}
