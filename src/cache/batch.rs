//! Auto-pipelining of single-key L2 reads. Every read from every client connection is queued
//! on one of a few lanes, one per L2 connection. A lane's driver takes whatever is queued, up
//! to `l2.max_batch` reads, and sends it as one `MGET` plus a `PTTL` per key, in one pipeline.
//! The next batch goes out when the previous answer is in (the connection is free), so an
//! idle system sends each read at once, with no timer, and batches grow only under load,
//! exactly as far as the round trip makes requests wait anyway.
//!
//! Folding into MGET is what a pipeline alone cannot do: N reads cost Redis N+1 commands
//! instead of 2N, and the gateway one future, one write and one reply parse instead of N.
//! Writes are not folded; redis-rs' multiplexed connection already sends every write queued
//! on it in one syscall.

use super::{
    conn::{groups, Conn},
    l2::{ttl_from_pttl, Fetched, L2Error},
};
use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::future::join_all;
use redis::{Pipeline, Value};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// One key's answer in a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    Found(Fetched),
    Absent,
    /// MGET said nil but the key exists: it holds another type (GET would say WRONGTYPE) or
    /// was written between the two commands. The caller asks again with GET alone.
    Recheck,
}

struct Read {
    key: Bytes,
    reply: oneshot::Sender<Result<Slot, L2Error>>,
}

pub struct Batcher {
    lanes: Box<[mpsc::Sender<Read>]>,
    next: AtomicUsize,
}

impl Batcher {
    /// Starts one driver per connection. Each lane queues at most `queue` reads; past that
    /// callers wait (and their deadline bounds the wait). Drivers stop when the batcher is
    /// dropped.
    pub fn start(
        conns: &[Conn],
        clustered: bool,
        max_batch: usize,
        queue: usize,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lanes = conns
            .iter()
            .map(|conn| {
                let (tx, rx) = mpsc::channel(queue);
                tokio::spawn(drive(
                    conn.clone(),
                    clustered,
                    rx,
                    max_batch,
                    deadline,
                    metrics.clone(),
                ));
                tx
            })
            .collect();
        Self {
            lanes,
            next: AtomicUsize::new(0),
        }
    }

    /// Reads one key in the next batch of its lane.
    pub async fn get(&self, key: Bytes) -> Result<Slot, L2Error> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let (reply, answer) = oneshot::channel();
        self.lanes[i]
            .send(Read { key, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> L2Error {
    L2Error::Unavailable("the L2 read pipeline stopped".into())
}

/// One lane: take what is queued, send it as one batch, hand out the answers, repeat.
async fn drive(
    conn: Conn,
    clustered: bool,
    mut queue: mpsc::Receiver<Read>,
    max_batch: usize,
    deadline: Duration,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        // A caller that gave up (timed out, disconnected) is not worth a key in the batch.
        batch.retain(|r: &Read| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        // On a cluster an MGET may only name keys of one slot: one pipeline per slot, sent
        // together. On a single Redis the whole batch is one group.
        let keys: Vec<&[u8]> = batch.iter().map(|r| r.key.as_ref()).collect();
        let parts = groups(clustered, &keys);
        for part in &parts {
            metrics.l2_batch_size.observe(part.len() as f64);
        }
        let answers = join_all(parts.iter().map(|part| {
            let conn = conn.clone().aimed_at(keys[part[0]]);
            fetch(conn, part.iter().map(|&i| keys[i]), part.len(), deadline)
        }))
        .await;
        let mut batch: Vec<Option<Read>> = batch.drain(..).map(Some).collect();
        for (part, answer) in parts.iter().zip(answers) {
            let mut reply = |i: usize, r: Result<Slot, L2Error>| {
                if let Some(read) = batch[i].take() {
                    let _ = read.reply.send(r);
                }
            };
            match answer {
                Ok(slots) => part.iter().zip(slots).for_each(|(&i, s)| reply(i, Ok(s))),
                Err(e) => part.iter().for_each(|&i| reply(i, Err(e.clone()))),
            }
        }
    }
}

/// One batch part: MGET of its keys, then PTTL of each, in one round trip.
async fn fetch<'k>(
    mut conn: Conn,
    keys: impl Iterator<Item = &'k [u8]> + Clone,
    n: usize,
    deadline: Duration,
) -> Result<Vec<Slot>, L2Error> {
    let pipe = mget_pipeline(keys);
    let raw: Vec<Value> = tokio::time::timeout(deadline, pipe.query_async(&mut conn))
        .await
        .map_err(|_| L2Error::Timeout)??;
    slots(raw, n)
}

/// `MGET k1..kn`, then `PTTL k` for each, as one pipeline.
pub(super) fn mget_pipeline<'k>(keys: impl Iterator<Item = &'k [u8]> + Clone) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("MGET");
    for k in keys.clone() {
        pipe.arg(k);
    }
    for k in keys {
        pipe.cmd("PTTL").arg(k);
    }
    pipe
}

/// Pairs MGET's values with the PTTLs that follow them.
pub(super) fn slots(raw: Vec<Value>, n: usize) -> Result<Vec<Slot>, L2Error> {
    let mut it = raw.into_iter();
    let values: Vec<Option<Bytes>> = redis::from_redis_value(it.next().unwrap_or(Value::Nil))
        .map_err(|e| L2Error::store("ERR", &e.to_string()))?;
    if values.len() != n {
        return Err(L2Error::store(
            "ERR",
            "MGET answered the wrong number of keys",
        ));
    }
    Ok(values
        .into_iter()
        .zip(it)
        .map(|(value, pttl)| {
            let pttl: i64 = redis::from_redis_value(pttl).unwrap_or(-2);
            match (value, pttl) {
                (Some(v), pttl) => Slot::Found((v, ttl_from_pttl(pttl))),
                (None, -2) => Slot::Absent,
                (None, _) => Slot::Recheck,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_pair_values_with_ttls() {
        let raw = vec![
            Value::Array(vec![
                Value::BulkString(b"a".to_vec()),
                Value::Nil,
                Value::Nil,
                Value::BulkString(b"d".to_vec()),
            ]),
            Value::Int(-1),
            Value::Int(-2),
            Value::Int(-1),
            Value::Int(1500),
        ];
        assert_eq!(
            slots(raw, 4).unwrap(),
            vec![
                Slot::Found((Bytes::from_static(b"a"), None)),
                Slot::Absent,
                Slot::Recheck,
                Slot::Found((Bytes::from_static(b"d"), Some(Duration::from_millis(1500)))),
            ]
        );
    }

    #[test]
    fn a_short_answer_is_an_error_not_a_shifted_one() {
        let raw = vec![Value::Array(vec![Value::Nil]), Value::Int(-2)];
        assert!(slots(raw, 2).is_err());
    }
}
