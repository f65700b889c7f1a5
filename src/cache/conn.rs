//! One L2 connection: to a single Redis (`ConnectionManager`: multiplexed, reconnecting) or to
//! a Redis Cluster (redis-rs' cluster connection: a multiplexed connection per node, MOVED and
//! ASK followed, the slot map refreshed on its own).
//!
//! A cluster connection is aimed at one key's slot before a call, and every command and
//! pipeline sent through it then goes to that slot's primary as a whole. redis-rs would route
//! a pipeline by its first key and refuse one whose commands name different slots, and it
//! takes PUBLISH's channel for a key: a write's `[SET k, PUBLISH channel k]` would be refused.
//! Redis itself accepts PUBLISH on any node, so aiming the whole pipeline at `k` keeps the
//! announcement in the write's round trip on a cluster too. Multi-key work is split into one
//! pipeline per slot (`groups`).

use redis::{
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr},
    Cmd, Pipeline, RedisFuture, Value,
};
use std::collections::HashMap;

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
