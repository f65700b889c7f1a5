//! The access log: one JSON line per request, written by a background thread.
//!
//! The request path builds a fixed-size `Record` (no heap, never the key itself) and pushes
//! it into a bounded lock-free ring. That is all it does: no syscall, no lock, no wake-up. A
//! dedicated OS thread drains the ring, formats the lines into one reused buffer and writes
//! them out, then sleeps `flush_interval` when the ring is empty. When the output cannot keep
//! up and the ring fills, records are dropped and counted (`access_log_dropped_total`)
//! rather than slowing requests down. A write error costs the records it hit (counted as
//! dropped), never the writer.
//!
//! This module owns the record type, the ring, the writer thread, the line format, and the
//! output's lifecycle (open, reopen for logrotate, drain on stop). Whether the log is on at
//! all (`access_log.enabled`) and when `reopen`/`stop` are called is the server's business.

use crate::config::AccessLogConfig;
use crate::metrics::{Door, Tier};
use crossbeam_queue::ArrayQueue;
use prometheus::IntCounter;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One request's record: fixed size, no heap, built on the request path.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// When the request arrived.
    pub at: SystemTime,
    /// `Http` or `Resp` (`Admin` is accepted and written as "admin").
    pub door: Door,
    /// HTTP: "GET", "PUT", "DELETE", "HEAD", "batchGet", "batchSet", "other"; RESP: the
    /// lowercase command name.
    pub op: &'static str,
    /// Bytes of the key (never the key itself); for batches, the number of keys.
    pub key_len: u32,
    pub status: Status,
    /// Where a read was answered from; `None` for misses, writes and errors.
    pub tier: Option<Tier>,
    pub duration: Duration,
}

/// How a request ended, in its door's own terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The HTTP status code.
    Http(u16),
    /// "ok", or a Redis error code word such as "ERR", "NOPERM", "BUSY".
    Resp(&'static str),
}

/// The `path` that means standard output rather than a file.
const STDOUT: &str = "stdout";
/// Lines are written out in chunks of about this many bytes: few syscalls, and a chunk is
/// whole lines, so lines from a shared stdout never interleave mid-line.
const BUF_BYTES: usize = 64 * 1024;

/// What the request path and the writer share. The writer thread holds its own `Arc` to
/// this (not to `AccessLog`), so dropping the last `AccessLog` can still tell it to finish.
struct Shared {
    ring: ArrayQueue<Record>,
    dropped: IntCounter,
    stop: AtomicBool,
    reopen: AtomicBool,
}

/// The ring and its writer thread. See the module docs.
pub struct AccessLog {
    shared: Arc<Shared>,
    /// To wake the writer for `reopen` and `stop` without taking the `writer` lock (which
    /// `stop` holds while it joins).
    thread: Option<Thread>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AccessLog {
    /// Opens the output (stdout, or the file at `cfg.path` in append+create mode) and starts
    /// the writer thread ("tiergate-access-log"). Errors if the file cannot be opened or the
    /// thread cannot be spawned. Does not look at `cfg.enabled`: the caller decides that.
    pub fn start(
        cfg: &AccessLogConfig,
        written: IntCounter,
        dropped: IntCounter,
    ) -> io::Result<Arc<AccessLog>> {
        let out = if cfg.path == STDOUT {
            Output::Stdout(io::stdout())
        } else {
            Output::File(open(&cfg.path)?)
        };
        let shared = Arc::new(Shared::new(cfg.ring_records, dropped));
        let writer = Writer {
            shared: shared.clone(),
            out,
            path: cfg.path.clone(),
            interval: cfg.flush_interval.0,
            written,
            buf: Vec::with_capacity(BUF_BYTES + 1024),
            pending: 0,
            failing: false,
            broken: false,
            torn: false,
        };
        let handle = std::thread::Builder::new()
            .name("tiergate-access-log".into())
            .spawn(move || writer.run())?;
        Ok(Arc::new(AccessLog {
            shared,
            thread: Some(handle.thread().clone()),
            writer: Mutex::new(Some(handle)),
        }))
    }

    /// A ring with no writer: lets tests fill it deterministically.
    #[cfg(test)]
    fn unstarted(ring_records: usize, dropped: IntCounter) -> AccessLog {
        AccessLog {
            shared: Arc::new(Shared::new(ring_records, dropped)),
            thread: None,
            writer: Mutex::new(None),
        }
    }

    /// Queues one record for the writer. Never blocks, never allocates: one push into the
    /// bounded ring; when it is full (or the log was stopped), the record is dropped and
    /// counted.
    #[inline]
    pub fn push(&self, r: Record) {
        // The stop check keeps records pushed during shutdown from sitting uncounted in a
        // ring nobody drains any more. It is a read of a line that is written once.
        if self.shared.stop.load(Ordering::Relaxed) || self.shared.ring.push(r).is_err() {
            self.shared.dropped.inc();
        }
    }

    /// Asks the writer to reopen the file at the configured path (for logrotate; the server
    /// calls it on SIGHUP). Records pushed after this returns go to the new file. A no-op
    /// for stdout. Does not wait for the reopen.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.wake();
    }

    /// Stops the writer once it has written everything already pushed, and joins it. Later
    /// pushes are dropped and counted. Idempotent; a concurrent second call returns once the
    /// first has finished. Blocking: async callers use `spawn_blocking`.
    pub fn stop(&self) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.stop.store(true, Ordering::Release);
        if let Some(handle) = writer.take() {
            self.wake();
            if handle.join().is_err() {
                tracing::error!("access log: the writer thread panicked; records may be lost");
            }
        }
    }

    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }
}

impl Drop for AccessLog {
    /// Without `stop`, the writer still drains and exits on its own: dropping must not block
    /// (it may happen on an async worker), so this does not join.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
    }
}

impl Shared {
    fn new(ring_records: usize, dropped: IntCounter) -> Self {
        Self {
            // Config validation keeps this at 1 or more; `ArrayQueue` panics on 0.
            ring: ArrayQueue::new(ring_records.max(1)),
            dropped,
            stop: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
        }
    }
}

fn open(path: &str) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

enum Output {
    /// Not locked for good: tracing may log to stdout too, and each chunk is whole lines.
    Stdout(io::Stdout),
    File(File),
}

impl Output {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(s) => s.write(b),
            Output::File(f) => f.write(b),
        }
    }
}

/// The writer thread's state. Everything here is owned by that thread.
struct Writer {
    shared: Arc<Shared>,
    out: Output,
    path: String,
    interval: Duration,
    written: IntCounter,
    /// Formatted lines not yet written out.
    buf: Vec<u8>,
    /// Records in `buf`: counted as written or dropped once the write's fate is known.
    pending: u64,
    /// Set by a write error, cleared by a successful write: one warning per failing stretch.
    failing: bool,
    /// The last write failed: try reopening the file before the next one.
    broken: bool,
    /// A failed write left a partial line in the output: end it before the next line, so one
    /// bad line does not swallow the next.
    torn: bool,
}

impl Writer {
    fn run(mut self) {
        let batch = self.shared.ring.capacity();
        loop {
            // Read before draining: everything pushed before `stop` set the flag is then
            // drained by this round.
            let stopping = self.shared.stop.load(Ordering::Acquire);
            self.maybe_reopen();
            let limit = if stopping { usize::MAX } else { batch };
            let n = self.drain(limit);
            self.write_out();
            if stopping {
                return;
            }
            // A full batch means the ring is busy: go straight on. Bounding the batch keeps
            // the flags looked at and the output flushed even under a constant stream.
            if n < batch {
                std::thread::park_timeout(self.interval);
            }
        }
    }

    fn drain(&mut self, limit: usize) -> usize {
        let mut n = 0;
        while n < limit {
            let Some(r) = self.shared.ring.pop() else {
                break;
            };
            // Checked per record so that a record pushed after `reopen()` returned is never
            // written to the old file: its push happened after the flag was set, so the flag
            // is visible once the record is. An uncontended read; formatting costs far more.
            if self.shared.reopen.load(Ordering::Relaxed) {
                self.write_out();
                self.maybe_reopen();
            }
            format_line(&mut self.buf, &r);
            self.pending += 1;
            n += 1;
            if self.buf.len() >= BUF_BYTES {
                self.write_out();
            }
        }
        n
    }

    /// Reopens the file when asked to, or to retry after a write error.
    fn maybe_reopen(&mut self) {
        let asked = self.shared.reopen.swap(false, Ordering::AcqRel);
        if !(asked || self.broken) || matches!(self.out, Output::Stdout(_)) {
            return;
        }
        match open(&self.path) {
            Ok(f) => {
                self.out = Output::File(f);
                self.broken = false;
                self.torn = false;
            }
            // Keep writing to the old file: after a rotation that is the renamed one, which
            // beats losing the lines. A retry after a write error stays quiet: that error
            // was already reported.
            Err(e) => {
                if asked || !self.failing {
                    tracing::warn!(path = %self.path, error = %e, "access log: cannot reopen; still writing to the old file");
                }
            }
        }
    }

    /// Writes `buf` out and settles its records as written or dropped.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut off = 0;
        let mut result = if self.torn {
            self.write_all_from(b"\n", &mut 0)
        } else {
            Ok(())
        };
        if result.is_ok() {
            self.torn = false;
            result = self.write_all_from_buf(&mut off);
        }
        // Records whose whole line reached the output count as written, even when the
        // write failed part-way; the rest are dropped.
        let landed = match result {
            Ok(()) => self.pending,
            Err(_) => memchr::memchr_iter(b'\n', &self.buf[..off]).count() as u64,
        };
        self.written.inc_by(landed);
        self.shared.dropped.inc_by(self.pending - landed);
        match result {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.path, error = %e, "access log: write failed; dropping records until it works again");
                }
                self.failing = true;
                self.broken = true;
                self.torn |= off > 0 && self.buf[off - 1] != b'\n';
            }
        }
        self.pending = 0;
        self.buf.clear();
    }

    fn write_all_from_buf(&mut self, off: &mut usize) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_all_from(&buf, off);
        self.buf = buf;
        result
    }

    /// `write_all`, but reporting how far it got (`off`), so a failure can be accounted for
    /// by the line.
    fn write_all_from(&mut self, b: &[u8], off: &mut usize) -> io::Result<()> {
        while *off < b.len() {
            match self.out.write(&b[*off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => *off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Appends `r` as one JSON line:
/// `{"time":"...Z","door":"http","op":"GET","key_len":5,"status":200,"tier":"L1","duration_us":12}`.
fn format_line(buf: &mut Vec<u8>, r: &Record) {
    let mut ints = itoa::Buffer::new();
    buf.extend_from_slice(b"{\"time\":\"");
    // humantime panics before the epoch and fails past year 9999; a clock that far off
    // should still give a line, so clamp.
    const LAST: Duration = Duration::new(253_402_300_799, 999_999_999);
    let since = r.at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let at = UNIX_EPOCH + since.min(LAST);
    // Writing to a Vec cannot fail, and the clamp keeps the Display impl from failing.
    let _ = write!(buf, "{}", humantime::format_rfc3339_micros(at));
    buf.extend_from_slice(b"\",\"door\":\"");
    buf.extend_from_slice(match r.door {
        Door::Http => b"http",
        Door::Admin => b"admin",
        Door::Resp => b"resp",
    });
    buf.extend_from_slice(b"\",\"op\":");
    push_json_str(buf, r.op);
    buf.extend_from_slice(b",\"key_len\":");
    buf.extend_from_slice(ints.format(r.key_len).as_bytes());
    buf.extend_from_slice(b",\"status\":");
    match r.status {
        Status::Http(code) => buf.extend_from_slice(ints.format(code).as_bytes()),
        Status::Resp(word) => push_json_str(buf, word),
    }
    buf.extend_from_slice(b",\"tier\":");
    buf.extend_from_slice(match r.tier {
        Some(Tier::L1) => b"\"L1\"",
        Some(Tier::L2) => b"\"L2\"",
        Some(Tier::Origin) => b"\"ORIGIN\"",
        None => b"null",
    });
    buf.extend_from_slice(b",\"duration_us\":");
    buf.extend_from_slice(ints.format(r.duration.as_micros()).as_bytes());
    buf.extend_from_slice(b"}\n");
}

/// Appends `s` as a JSON string. The strings are static ASCII today; this keeps the line
/// valid JSON if one ever is not.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]),
            // Multi-byte UTF-8 passes through: JSON text is UTF-8.
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use serde_json::Value;
    use std::path::Path;

    fn config(path: &Path, ring_records: usize, flush_interval: Duration) -> AccessLogConfig {
        AccessLogConfig {
            enabled: true,
            path: path.to_str().unwrap().into(),
            ring_records,
            flush_interval: HumanDuration(flush_interval),
        }
    }

    fn counters() -> (IntCounter, IntCounter) {
        (
            IntCounter::new("written", "w").unwrap(),
            IntCounter::new("dropped", "d").unwrap(),
        )
    }

    fn http_get(key_len: u32) -> Record {
        Record {
            at: SystemTime::now(),
            door: Door::Http,
            op: "GET",
            key_len,
            status: Status::Http(200),
            tier: Some(Tier::L1),
            duration: Duration::from_micros(12),
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn parsed(path: &Path) -> Vec<Value> {
        lines(path)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A long sleep: the writer then only runs when `stop` or `reopen` wakes it.
    const ASLEEP: Duration = Duration::from_secs(3600);

    #[test]
    fn records_are_written_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (written, dropped) = counters();
        let log = AccessLog::start(
            &config(&path, 64, Duration::from_millis(5)),
            written.clone(),
            dropped.clone(),
        )
        .unwrap();
        let at = humantime::parse_rfc3339("2026-11-23T15:14:44.123456Z").unwrap();
        log.push(Record { at, ..http_get(5) });
        log.push(Record {
            at,
            door: Door::Resp,
            op: "get",
            key_len: 3,
            status: Status::Resp("ok"),
            tier: None,
            duration: Duration::from_nanos(1_999),
        });
        log.push(Record {
            at,
            door: Door::Resp,
            op: "set",
            key_len: 7,
            status: Status::Resp("NOPERM"),
            tier: None,
            duration: Duration::from_millis(2),
        });
        log.push(Record {
            at,
            door: Door::Http,
            op: "batchGet",
            key_len: 40,
            status: Status::Http(207),
            tier: Some(Tier::L2),
            duration: Duration::from_secs(1),
        });
        log.stop();

        let lines = lines(&path);
        // Key order and the lack of spaces are part of the format.
        assert_eq!(
            lines[0],
            r#"{"time":"2026-11-23T15:14:44.123456Z","door":"http","op":"GET","key_len":5,"status":200,"tier":"L1","duration_us":12}"#
        );
        let v = parsed(&path);
        assert_eq!(v.len(), 4);
        assert_eq!(v[1]["door"], "resp");
        assert_eq!(v[1]["op"], "get");
        assert_eq!(v[1]["key_len"], 3);
        assert_eq!(v[1]["status"], "ok");
        assert!(v[1]["tier"].is_null());
        assert_eq!(v[1]["duration_us"], 1);
        assert_eq!(v[2]["status"], "NOPERM");
        assert_eq!(v[2]["duration_us"], 2000);
        assert_eq!(v[3]["op"], "batchGet");
        assert_eq!(v[3]["status"], 207);
        assert_eq!(v[3]["tier"], "L2");
        assert_eq!(v[3]["duration_us"], 1_000_000);
        for line in &v {
            assert_eq!(line["time"], "2026-11-23T15:14:44.123456Z");
        }
        assert_eq!(written.get(), 4);
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn odd_strings_and_times_still_make_valid_json() {
        let mut buf = Vec::new();
        for (op, at) in [
            ("q\"uo\\te\n\t\u{1}\u{7f}é", SystemTime::now()),
            ("", UNIX_EPOCH - Duration::from_secs(1)),
            ("far", UNIX_EPOCH + Duration::from_secs(400_000_000_000)),
        ] {
            buf.clear();
            format_line(
                &mut buf,
                &Record {
                    at,
                    door: Door::Admin,
                    op,
                    status: Status::Resp(op),
                    ..http_get(0)
                },
            );
            assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
            let v: Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(v["op"], op);
            assert_eq!(v["status"], op);
            assert_eq!(v["door"], "admin");
            assert!(v["time"].as_str().unwrap().ends_with('Z'));
        }
    }

    #[test]
    fn a_full_ring_drops_and_counts() {
        let (_, dropped) = counters();
        let log = AccessLog::unstarted(4, dropped.clone());
        // Nothing drains this ring: if a push waited for room, this would never finish.
        for i in 0..10 {
            log.push(http_get(i));
        }
        assert_eq!(dropped.get(), 6);
        assert_eq!(log.shared.ring.len(), 4);
        // The first four are the ones kept.
        let kept: Vec<u32> = std::iter::from_fn(|| log.shared.ring.pop())
            .map(|r| r.key_len)
            .collect();
        assert_eq!(kept, [0, 1, 2, 3]);
    }

    #[test]
    fn stop_writes_everything_pushed_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (written, dropped) = counters();
        let log = AccessLog::start(
            &config(&path, 4096, ASLEEP),
            written.clone(),
            dropped.clone(),
        )
        .unwrap();
        // The writer is asleep for an hour: only `stop` gets these out.
        for i in 0..1000 {
            log.push(http_get(i));
        }
        log.stop();
        let v = parsed(&path);
        assert_eq!(v.len(), 1000);
        assert!(v.iter().enumerate().all(|(i, l)| l["key_len"] == i as u64));
        assert_eq!(written.get(), 1000);
        assert_eq!(dropped.get(), 0);

        log.stop();
        // After stop, records are dropped and counted, not stranded in the ring.
        log.push(http_get(1));
        log.stop();
        drop(log);
        assert_eq!(lines(&path).len(), 1000);
        assert_eq!(written.get(), 1000);
        assert_eq!(dropped.get(), 1);
    }

    #[test]
    fn every_record_is_written_or_counted_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (written, dropped) = counters();
        // A ring small enough to overflow while four threads push.
        let log = AccessLog::start(
            &config(&path, 16, Duration::from_millis(1)),
            written.clone(),
            dropped.clone(),
        )
        .unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..5000 {
                        log.push(http_get(i));
                    }
                });
            }
        });
        log.stop();
        assert_eq!(written.get() + dropped.get(), 20_000);
        assert_eq!(parsed(&path).len() as u64, written.get());
    }

    #[test]
    fn reopen_moves_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        let (written, dropped) = counters();
        let log = AccessLog::start(
            &config(&path, 64, Duration::from_millis(1)),
            written.clone(),
            dropped.clone(),
        )
        .unwrap();
        log.push(http_get(1));
        // Waits (no deadline) for the writer to have written the first record out.
        while written.get() < 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.push(http_get(2));
        log.push(http_get(3));
        log.stop();

        let old = parsed(&rotated);
        assert_eq!(old.len(), 1);
        assert_eq!(old[0]["key_len"], 1);
        let new = parsed(&path);
        assert_eq!(new.len(), 2);
        assert_eq!(new[0]["key_len"], 2);
        assert_eq!(new[1]["key_len"], 3);
        assert_eq!(written.get(), 3);
        assert_eq!(dropped.get(), 0);
    }

    /// /dev/full fails every write with ENOSPC: the records are dropped and counted, and
    /// the writer keeps going rather than dying.
    #[cfg(target_os = "linux")]
    #[test]
    fn write_errors_drop_and_count() {
        let path = Path::new("/dev/full");
        if !path.exists() {
            return;
        }
        let (written, dropped) = counters();
        let log = AccessLog::start(
            &config(path, 64, Duration::from_millis(1)),
            written.clone(),
            dropped.clone(),
        )
        .unwrap();
        for i in 0..5 {
            log.push(http_get(i));
        }
        // Waits (no deadline) for a failed write before pushing more.
        while dropped.get() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..5 {
            log.push(http_get(i));
        }
        log.stop();
        assert_eq!(written.get(), 0);
        assert_eq!(dropped.get(), 10);
    }

    #[test]
    fn start_fails_when_the_file_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("access.log");
        let (written, dropped) = counters();
        assert!(AccessLog::start(&config(&path, 4, ASLEEP), written, dropped).is_err());
    }
}
