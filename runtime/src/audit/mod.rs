//! The audit log: JSON lines in a hash chain, with signed checkpoints.
//!
//! Every record carries `seq` (1, 2, ...) and `prev`, the blake3 hash of the
//! previous line (64 zeros for the first). Each batch the writer appends
//! ends with a checkpoint: the count of records before it and the head hash,
//! signed with the runtime's identity key. A modified, deleted, inserted or
//! reordered record breaks the chain; a rewritten tail needs the key; a
//! truncated tail leaves fewer records than the head file (`<log>.head`, the
//! last checkpoint, written after each batch) says there were.
//!
//! One writer at a time: each batch is written under an exclusive lock on
//! `<log>.lock`, so a CLI and a server sharing a data directory never
//! interleave. A batch is on disk (fsync) before `append` returns. A torn last line
//! (a crash in the middle of a write) is cut off when the log is opened
//! again, and a `recovery` record says how many bytes were lost.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::identity::Keyring;

pub mod ocsf;

/// How long free space found ample is trusted without looking again.
const SPACE_CHECK_MS: u64 = 100;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hash(line: &[u8]) -> String {
    blake3::hash(line).to_hex().to_string()
}

/// What a checkpoint signs: the chain's length and head, and the time of
/// the checkpoint's own record (nothing after the last line covers it).
fn checkpoint_message(count: u64, head: &str, time_ms: Option<u64>) -> Vec<u8> {
    match time_ms {
        Some(time_ms) => format!("airlock-audit-checkpoint|{count}|{head}|{time_ms}"),
        None => format!("airlock-audit-checkpoint|{count}|{head}"),
    }
    .into_bytes()
}

/// A record line as the writer writes it, around an event serialized already.
fn record_line(seq: u64, time_ms: u64, prev: &str, event: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(event.len() + 128);
    write_record_line(&mut line, seq, time_ms, prev, event);
    line
}

/// [`record_line`], appended to `out`.
fn write_record_line(out: &mut Vec<u8>, seq: u64, time_ms: u64, prev: &str, event: &[u8]) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(number.format(seq).as_bytes());
    out.extend_from_slice(b",\"time_ms\":");
    out.extend_from_slice(number.format(time_ms).as_bytes());
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(b"\",\"event\":");
    out.extend_from_slice(event);
    out.push(b'}');
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub prev: String,
    pub event: serde_json::Value,
}

/// A signed statement of how long the chain was and what its head was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub kind: String,
    /// 2: the signature covers the checkpoint record's time too. Absent in
    /// logs written before (their checkpoints verify as they were signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    /// Records before this one.
    pub count: u64,
    /// Hash of the record before this one.
    pub head: String,
    pub kid: String,
    pub sig: String,
}

struct Tail {
    file: File,
    lock: File,
    /// `<log>.head`, rewritten in place after each batch.
    head_file: File,
    seq: u64,
    head: String,
    /// The log's length after this writer's last batch; another length means
    /// another process wrote since, and the tail is read again.
    len: Option<u64>,
    /// The last batch's bytes, kept for the next batch to write into.
    out: Vec<u8>,
    /// The head file's length as this writer last left it.
    head_len: Option<u64>,
}

/// A writer of one log. Several may share a log, in one process or many:
/// each batch is written under an exclusive lock on `<log>.lock`, so batches
/// never interleave and each continues the chain where the last one ended.
pub struct AuditLog {
    inner: std::sync::Arc<Inner>,
    writer: Option<std::thread::JoinHandle<()>>,
    settings: crate::config::AuditConfig,
}

struct Inner {
    path: PathBuf,
    keys: std::sync::Arc<Keyring>,
    tail: Mutex<Tail>,
    queue: Mutex<Queue>,
    /// Wakes waiters in `flush`.
    flushed: std::sync::Condvar,
    /// Wakes the writer thread.
    wake: std::sync::Condvar,
    /// Until when (ms since the epoch) free space need not be checked
    /// again: the last check found plenty.
    space_ok_until: std::sync::atomic::AtomicU64,
    /// `audit.commit_interval`, in microseconds.
    commit_interval_us: std::sync::atomic::AtomicU64,
}

/// A batch this many events long is written at once, interval or not.
const FULL_BATCH: usize = 1024;

/// One event as compact JSON, its strings bounded: made by [`line`] alone,
/// so it never holds a raw newline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line(Vec<u8>);

impl Line {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Events queued for one batch, copied into one buffer. Callers free their
/// own lines: freed on the writer thread, every caller's allocations would
/// go back to the allocator across threads, which costs the runs more than
/// the copy.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Where each event ends in `bytes`.
    ends: Vec<usize>,
}

impl Pending {
    fn push(&mut self, event: &[u8]) {
        self.bytes.extend_from_slice(event);
        self.ends.push(self.bytes.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn events(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| self.bytes.get(start..end).unwrap_or_default())
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// A batch buffer bigger than this is not kept for the next batch.
const SPARE_MAX: usize = 4 << 20;

/// Events waiting to be written. The writer thread (or a blocking
/// `flush`) takes everything queued so far as one batch (one fsync); the
/// runs whose events are in it wait for it alone: group commit.
#[derive(Default)]
struct Queue {
    /// Events already serialized (by the callers, in parallel).
    pending: Pending,
    /// The last batch's buffer, emptied, for the next one.
    spare: Pending,
    /// The batch that pending events will go out in.
    batch: std::sync::Arc<Batch>,
    writing: bool,
    /// Threads blocked in `flush` until a batch written by another.
    flush_waiters: usize,
    /// The writer thread is waiting for events (and needs waking).
    idle: bool,
    /// The writer thread holds a batch back for the commit interval, and
    /// needs waking only when waiting is no longer worth it.
    holding: bool,
    /// Runs whose start is queued or written and whose end is not, less
    /// those set aside: while any are open, their ends may share the next
    /// batch. Signed, so that a set-aside dropped after its run's end
    /// still nets out.
    open: isize,
    shutdown: bool,
}

/// One batch's outcome, set once when it is on disk (or failed).
#[derive(Default)]
struct Batch {
    outcome: std::sync::OnceLock<Result<(), String>>,
    /// Wakes the async waiters of this batch only.
    written: tokio::sync::Notify,
}

impl Batch {
    fn finish(&self, outcome: Result<(), String>) {
        let _ = self.outcome.set(outcome);
        self.written.notify_waiters();
    }

    fn outcome(&self) -> Option<Result<(), Error>> {
        self.outcome.get().map(|outcome| {
            outcome
                .clone()
                .map_err(|why| Error::Engine(format!("the audit log was not written: {why}")))
        })
    }
}

/// A place in the queue, to wait on with [`AuditLog::flush`] or
/// [`AuditLog::durable`].
#[must_use]
pub struct Ticket(std::sync::Arc<Batch>);

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("written", &self.0.outcome.get().is_some())
            .finish()
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The head file's size: a checkpoint padded with spaces to one sector.
const HEAD_SIZE: usize = 512;

fn head_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The last whole line of the first `len` bytes of `file`, and the bytes
/// after it that do not end in a newline (a torn write).
fn last_line(file: &File, len: u64) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let mut window: u64 = 64 << 10;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0; usize::try_from(len - start).unwrap_or(0)];
        file.read_exact_at(&mut buf, start)?;
        let whole = buf.iter().rposition(|b| *b == b'\n').map(|n| n + 1);
        let line_start = whole.and_then(|w| {
            buf.get(..w - 1)
                .map(|b| b.iter().rposition(|c| *c == b'\n').map_or(0, |n| n + 1))
        });
        match (whole, line_start) {
            (Some(whole), Some(line_start)) if line_start > 0 || start == 0 => {
                let torn = buf.split_off(whole);
                buf.truncate(whole - 1);
                return Ok((buf.split_off(line_start), torn));
            }
            (None, _) if start == 0 => return Ok((Vec::new(), buf)),
            _ => window = window.saturating_mul(2),
        }
    }
}

impl AuditLog {
    /// Open (or create) the log at `path`. A torn last line is cut off here,
    /// with a `recovery` record.
    pub fn open(path: &Path, keys: std::sync::Arc<Keyring>) -> Result<Self, Error> {
        let io = |what: &str, e| Error::io(format!("{what} `{}`", path.display()), e);
        if let Some(dir) = path.parent() {
            crate::fsutil::create_private_dir(dir)?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(path))
            .map_err(|e| io("opening the lock of", e))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| io("opening", e))?;
        let head_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(head_path(path))
            .map_err(|e| io("opening the head of", e))?;
        let inner = std::sync::Arc::new(Inner {
            path: path.to_path_buf(),
            keys,
            tail: Mutex::new(Tail {
                file,
                lock,
                head_file,
                seq: 0,
                head: GENESIS.to_string(),
                len: None,
                out: Vec::new(),
                head_len: None,
            }),
            queue: Mutex::default(),
            flushed: std::sync::Condvar::new(),
            wake: std::sync::Condvar::new(),
            space_ok_until: std::sync::atomic::AtomicU64::new(0),
            commit_interval_us: std::sync::atomic::AtomicU64::new(micros(
                crate::config::AuditConfig::default().commit_interval,
            )),
        });
        inner.write(&Pending::default())?;
        let writer = inner.clone();
        let writer = std::thread::Builder::new()
            .name("airlock-audit".into())
            .spawn(move || writer.run_writer())
            .map_err(|e| Error::io("starting the audit writer", e))?;
        Ok(AuditLog {
            inner,
            writer: Some(writer),
            settings: crate::config::AuditConfig::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Use the operator's settings (free-space floor, flood bound, commit
    /// interval).
    pub fn with_settings(mut self, settings: crate::config::AuditConfig) -> Self {
        self.inner.commit_interval_us.store(
            micros(settings.commit_interval),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.settings = settings;
        self
    }

    pub fn settings(&self) -> &crate::config::AuditConfig {
        &self.settings
    }

    /// Refuse when the log's file system has less free space than the
    /// floor: a run that cannot be recorded must not start.
    pub fn check_space(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering::Relaxed;
        // A statfs per run costs more than the rest of the record; space
        // found ample is trusted for a moment.
        let now = now_ms();
        if now < self.inner.space_ok_until.load(Relaxed) {
            return Ok(());
        }
        let path = &self.inner.path;
        let dir = path.parent().unwrap_or(Path::new("."));
        let stat = rustix::fs::statvfs(dir).map_err(|e| {
            Error::io(
                format!("checking free space for `{}`", path.display()),
                e.into(),
            )
        })?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < self.settings.min_free_space {
            return Err(Error::Engine(format!(
                "the audit log's file system has {free} bytes free, under the floor of {} (audit.min_free_space): new runs are refused until there is room",
                self.settings.min_free_space
            )));
        }
        // Ample: more than twice the floor (and 64 MiB) left.
        let margin = self.settings.min_free_space.max(64 << 20);
        if free / 2 > margin {
            self.inner
                .space_ok_until
                .store(now + SPACE_CHECK_MS, Relaxed);
        }
        Ok(())
    }

    /// Append `events` and make them durable, with whatever else is queued.
    pub fn append<E: Serialize>(&self, events: &[E]) -> Result<(), Error> {
        let ticket = self.enqueue(events);
        self.inner.flush(ticket)
    }

    /// Queue `events` without waiting: the writer thread writes them, in
    /// order, in its next batch. Never blocks on the disk.
    pub fn enqueue<E: Serialize>(&self, events: &[E]) -> Ticket {
        let lines: Vec<Line> = events.iter().map(line).collect();
        self.enqueue_lines(&lines)
    }

    /// [`enqueue`](Self::enqueue) for events already made [`line`]s.
    pub fn enqueue_lines(&self, events: &[Line]) -> Ticket {
        self.inner.push(events, 0)
    }

    /// Queue a run's start record; the run is open until
    /// [`enqueue_run_end`](Self::enqueue_run_end).
    pub fn enqueue_run_start<E: Serialize>(&self, event: &E) -> Ticket {
        self.inner.push(std::slice::from_ref(&line(event)), 1)
    }

    /// Queue a run's last records. The last open run's end is written at
    /// once; others may wait for the commit interval to share one fsync.
    pub fn enqueue_run_end(&self, events: &[Line]) -> Ticket {
        self.inner.push(events, -1)
    }

    /// While a run waits for a run it started (a tool), it does not count
    /// as open: the tool's records are written as soon as it ends, as a
    /// lone run's would be, rather than waiting for its caller.
    pub fn set_aside(&self) -> SetAside {
        let _ = self.inner.push(&[], -1);
        SetAside(self.inner.clone())
    }

    /// Block until `ticket`'s batch is on disk.
    pub fn flush(&self, ticket: Ticket) -> Result<(), Error> {
        self.inner.flush(ticket)
    }

    /// Wait, without holding a thread, until `ticket`'s batch is on disk.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), Error> {
        let batch = ticket.0;
        loop {
            let written = batch.written.notified();
            tokio::pin!(written);
            // Registered before looking, so a batch finished in between
            // still wakes this waiter.
            written.as_mut().enable();
            if let Some(outcome) = batch.outcome() {
                return outcome;
            }
            written.await;
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shutdown = true;
        self.inner.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A run set aside from the open count until this is dropped.
#[must_use]
pub struct SetAside(std::sync::Arc<Inner>);

impl std::fmt::Debug for SetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetAside").finish_non_exhaustive()
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        let _ = self.0.push(&[], 1);
    }
}

impl Inner {
    fn push(&self, events: &[Line], opened: isize) -> Ticket {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            queue.pending.push(event.as_bytes());
        }
        queue.open = queue.open.saturating_add(opened);
        let hold_over = queue.open <= 0 || queue.pending.len() >= FULL_BATCH;
        let wake = (queue.idle && !queue.pending.is_empty()) || (queue.holding && hold_over);
        let ticket = Ticket(queue.batch.clone());
        // Woken after the lock is free: a notify is a syscall, and a
        // lock held through one stalls the other runs queueing.
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
        ticket
    }

    /// The writer thread: write whatever is queued, as soon as it is or
    /// once the commit interval allows, until the log is dropped (and the
    /// queue is empty).
    fn run_writer(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut last_batch: Option<std::time::Instant> = None;
        loop {
            if !queue.pending.is_empty() && !queue.writing {
                // Group commit: while other runs are going, a batch waits
                // until the commit interval since the last one has passed,
                // so their ends share its fsync. Written as fast as the disk
                // allows, batches of a few records cost more CPU (signing,
                // syncing, the file system's journal) than the runs.
                let interval = std::time::Duration::from_micros(
                    self.commit_interval_us
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
                let due = last_batch.map(|t| t + interval);
                let now = std::time::Instant::now();
                if let Some(due) = due
                    && now < due
                    && queue.open > 0
                    && queue.pending.len() < FULL_BATCH
                    && !queue.shutdown
                {
                    queue.holding = true;
                    queue = self
                        .wake
                        .wait_timeout(queue, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    queue.holding = false;
                    continue;
                }
                last_batch = Some(now);
                queue = self.write_batch(queue);
                continue;
            }
            if queue.shutdown && queue.pending.is_empty() {
                return;
            }
            queue.idle = true;
            queue = self
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            queue.idle = false;
        }
    }

    /// Under the lock: where the chain ends now. A torn tail is cut off and
    /// the recovery record to write first is returned.
    fn catch_up(&self, tail: &mut Tail) -> Result<Option<serde_json::Value>, Error> {
        let io = |e| {
            Error::io(
                format!("reading the audit log `{}`", self.path.display()),
                e,
            )
        };
        let len = tail.file.metadata().map_err(io)?.len();
        if tail.len == Some(len) {
            return Ok(None);
        }
        // Another writer was here, and may have left the head file longer.
        tail.head_len = None;
        let (line, torn) = last_line(&tail.file, len).map_err(io)?;
        (tail.seq, tail.head) = if line.is_empty() {
            (0, GENESIS.to_string())
        } else {
            let record: Record = serde_json::from_slice(&line).map_err(|e| {
                Error::Config(format!(
                    "the last record of the audit log `{}` does not parse ({e}); run `airlock audit verify`",
                    self.path.display()
                ))
            })?;
            (record.seq, hash(&line))
        };
        tail.len = Some(len - torn.len() as u64);
        if torn.is_empty() {
            return Ok(None);
        }
        tail.file.set_len(len - torn.len() as u64).map_err(|e| {
            Error::io(
                format!("cutting the torn tail of `{}`", self.path.display()),
                e,
            )
        })?;
        tracing::warn!(
            bytes = torn.len(),
            "the audit log ended in a torn line; it was cut off"
        );
        Ok(Some(serde_json::json!({
            "kind": "recovery",
            "torn_bytes": torn.len(),
            "torn_hash": hash(&torn),
        })))
    }

    /// Wait until the batch holding `ticket`'s events is on disk, writing it
    /// (and everything queued with it) if no one else is.
    fn flush(&self, ticket: Ticket) -> Result<(), Error> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = ticket.0.outcome() {
                return outcome;
            }
            if !queue.writing {
                queue = self.write_batch(queue);
                // Events queued meanwhile are the writer thread's to write;
                // it waits for them only when idle. Rare: only blocking
                // `append` callers write batches besides the writer.
                if queue.idle && !queue.pending.is_empty() {
                    self.wake.notify_all();
                }
                continue;
            }
            queue.flush_waiters += 1;
            queue = self
                .flushed
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            queue.flush_waiters -= 1;
        }
    }

    /// Write everything queued as one batch: the queue's lock is let go
    /// while writing, and held again when this returns.
    fn write_batch<'a>(
        &'a self,
        mut queue: std::sync::MutexGuard<'a, Queue>,
    ) -> std::sync::MutexGuard<'a, Queue> {
        queue.writing = true;
        let batch = std::mem::take(&mut queue.batch);
        let spare = std::mem::take(&mut queue.spare);
        let mut events = std::mem::replace(&mut queue.pending, spare);
        drop(queue);
        let written = self.write(&events);
        batch.finish(written.map(|_| ()).map_err(|e| e.to_string()));
        events.clear();
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if events.bytes.capacity() <= SPARE_MAX {
            queue.spare = events;
        }
        queue.writing = false;
        if queue.flush_waiters > 0 {
            self.flushed.notify_all();
        }
        queue
    }

    /// Write one batch and its checkpoint under the lock, and fsync.
    fn write(&self, events: &Pending) -> Result<u64, Error> {
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.lock.lock().map_err(|e| {
            Error::io(
                format!("locking the audit log `{}`", self.path.display()),
                e,
            )
        })?;
        let written = self.append_locked(&mut tail, events);
        let _ = tail.lock.unlock();
        written
    }

    fn append_locked(&self, tail: &mut Tail, events: &Pending) -> Result<u64, Error> {
        let io = |e| {
            Error::io(
                format!("writing the audit log `{}`", self.path.display()),
                e,
            )
        };
        let recovery = self.catch_up(tail)?;
        if events.is_empty() && recovery.is_none() {
            return Ok(tail.seq);
        }
        let mut seq = tail.seq;
        let mut head = tail.head.clone();
        // The last batch's buffer, so a steady stream of batches allocates
        // nothing here.
        let mut out = std::mem::take(&mut tail.out);
        out.clear();
        let time_ms = now_ms();
        // A `Record` as JSON, around an event serialized already.
        let mut push = |event: &[u8], seq: &mut u64, head: &mut String| {
            *seq += 1;
            let start = out.len();
            write_record_line(&mut out, *seq, time_ms, head, event);
            let hash = blake3::hash(out.get(start..).unwrap_or_default()).to_hex();
            head.clear();
            head.push_str(hash.as_str());
            out.push(b'\n');
        };
        let recovery = recovery.map(|r| serde_json::to_vec(&r).unwrap_or_default());
        for event in recovery.iter().map(Vec::as_slice).chain(events.events()) {
            push(event, &mut seq, &mut head);
        }
        let key = self.keys.current()?;
        let count = seq;
        let signature = key.sign(&checkpoint_message(count, &head, Some(time_ms)));
        let checkpoint = Checkpoint {
            kind: "checkpoint".into(),
            v: Some(2),
            count,
            head: head.clone(),
            kid: key.kid.clone(),
            sig: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature),
        };
        let checkpoint = serde_json::to_value(&checkpoint).unwrap_or_default();
        push(
            &serde_json::to_vec(&checkpoint).unwrap_or_default(),
            &mut seq,
            &mut head,
        );
        // Unknown until it is on disk: a failed write is read back next time.
        let before = tail.len.take();
        tail.file.write_all(&out).map_err(io)?;
        tail.file.sync_data().map_err(io)?;
        tail.len = before.map(|len| len + out.len() as u64);
        tail.seq = seq;
        tail.head = head;
        if out.capacity() <= SPARE_MAX {
            tail.out = out;
        }
        // The checkpoint is durable in the log; the head file only has to
        // outlive truncation of the log. One sector, overwritten in place
        // and not fsynced on its own: no metadata changes, no second flush.
        let mut text = serde_json::to_vec(&checkpoint).unwrap_or_default();
        text.resize(text.len().max(HEAD_SIZE - 1), b' ');
        text.push(b'\n');
        {
            use std::os::unix::fs::FileExt;
            let len = text.len() as u64;
            tail.head_file
                .write_all_at(&text, 0)
                .and_then(|()| match tail.head_len {
                    // Most checkpoints fit the sector: no need to truncate.
                    Some(known) if known == len => Ok(()),
                    _ => tail.head_file.set_len(len),
                })
                .map_err(|e| {
                    Error::io(
                        format!(
                            "writing the head of the audit log `{}`",
                            self.path.display()
                        ),
                        e,
                    )
                })?;
            tail.head_len = Some(len);
        }
        Ok(seq)
    }
}

/// Guest-supplied strings are kept to this many characters in a record.
pub const MAX_STRING: usize = 1024;

/// Compact JSON with every string cut to [`MAX_STRING`] characters (then
/// `…`). JSON itself escapes newlines and control characters, so no string
/// can end a line; cutting while writing spares a copy of every event.
#[derive(Default)]
struct Bounded {
    left: usize,
    cut: bool,
}

impl serde_json::ser::Formatter for Bounded {
    fn begin_string<W: ?Sized + Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.left = MAX_STRING;
        self.cut = false;
        writer.write_all(b"\"")
    }

    fn end_string<W: ?Sized + Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        if self.cut {
            writer.write_all("…".as_bytes())?;
        }
        writer.write_all(b"\"")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        // Fewer bytes than characters left: all of it fits. Most fragments
        // are ASCII, where bytes are characters and need no counting.
        if fragment.len() <= self.left {
            self.left -= if fragment.is_ascii() {
                fragment.len()
            } else {
                fragment.chars().count()
            };
            return writer.write_all(fragment.as_bytes());
        }
        let end = fragment
            .char_indices()
            .nth(self.left)
            .map_or(fragment.len(), |(at, _)| at);
        let kept = fragment.get(..end).unwrap_or_default();
        self.left -= kept.chars().count();
        self.cut |= end < fragment.len();
        writer.write_all(kept.as_bytes())
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        char_escape: serde_json::ser::CharEscape,
    ) -> std::io::Result<()> {
        if self.left == 0 {
            self.cut = true;
            return Ok(());
        }
        self.left -= 1;
        serde_json::ser::CompactFormatter.write_char_escape(writer, char_escape)
    }
}

/// `event` as one line of JSON, its strings bounded (see [`MAX_STRING`]).
pub fn line<E: Serialize + ?Sized>(event: &E) -> Line {
    // Most run records fit without growing.
    let mut out = Vec::with_capacity(512);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Bounded::default());
    if event.serialize(&mut serializer).is_err() {
        // Only a map with non-string keys fails; say so rather than drop it.
        return Line(br#"{"kind":"unserializable"}"#.to_vec());
    }
    Line(out)
}

/// The record of a run starting.
#[derive(Debug, Serialize)]
pub struct RunStart<'a> {
    kind: &'static str,
    instance: &'a str,
    skill: &'a str,
    digest: &'a str,
    agent: &'a str,
    trust: airlock_host_apis::Trust,
    task_id: &'a str,
    intent: &'a str,
    sensitivity: airlock_host_apis::Sensitivity,
    #[serde(skip_serializing_if = "str::is_empty")]
    requester: &'a str,
    delegation: &'a [String],
    /// A file run in developer mode, not an admitted, approved skill.
    dev: bool,
}

/// The record of a run starting.
pub fn start_event(subject: &airlock_host_apis::Subject) -> RunStart<'_> {
    RunStart {
        kind: "run.start",
        instance: &subject.instance,
        skill: &subject.skill.name,
        digest: &subject.skill.digest,
        agent: &subject.agent.id,
        trust: subject.agent.trust,
        task_id: &subject.task.id,
        intent: &subject.task.intent,
        sensitivity: subject.task.sensitivity,
        requester: &subject.task.requester,
        delegation: &subject.delegation.chain,
        dev: !subject.skill.approved,
    }
}

/// The record of a run ending.
#[derive(Serialize)]
struct RunEnd<'a> {
    kind: &'static str,
    instance: &'a str,
    skill: &'a str,
    status: crate::run::RunStatus,
    error: &'a Option<crate::run::RunError>,
    usage: &'a crate::run::Usage,
    /// What the run touched: labels read, hosts, bytes sent.
    session: SessionEnd<'a>,
}

/// Hosts a `run.end` names; each was a call record of its own already.
const MAX_HOSTS: usize = 64;

/// The session as a `run.end` records it: the hosts capped, so that one line
/// stays small (every line is one message when a cluster ships the log).
#[derive(Serialize)]
struct SessionEnd<'a> {
    labels: &'a std::collections::BTreeSet<String>,
    secrets_used: &'a std::collections::BTreeSet<String>,
    hosts_contacted: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hosts_contacted_total: Option<usize>,
    calls: u64,
    bytes_out: u64,
}

impl<'a> SessionEnd<'a> {
    fn of(session: &'a airlock_host_apis::SessionState) -> Self {
        let total = session.hosts_contacted.len();
        SessionEnd {
            labels: &session.labels,
            secrets_used: &session.secrets_used,
            hosts_contacted: session
                .hosts_contacted
                .iter()
                .take(MAX_HOSTS)
                .map(String::as_str)
                .collect(),
            hosts_contacted_total: (total > MAX_HOSTS).then_some(total),
            calls: session.calls,
            bytes_out: session.bytes_out,
        }
    }
}

/// The records of a finished run, as lines: each call, then `run.end`.
/// After `max_identical` identical denials, the rest are counted in one
/// `call.repeated` record per kind.
pub fn end_events(
    subject: &airlock_host_apis::Subject,
    report: &crate::run::RunReport,
    max_identical: u32,
) -> Vec<Line> {
    let mut events = Vec::with_capacity(report.decisions.len() + 1);
    let mut seen: std::collections::HashMap<(String, String, String, String), u64> =
        std::collections::HashMap::new();
    let mut repeated: Vec<((String, String, String, String), serde_json::Value)> = Vec::new();
    // A tool's calls are in its caller's report too, but each is written
    // once: at the end of the instance that made it, with its subject.
    for call in report
        .decisions
        .iter()
        .filter(|c| c.instance == report.instance)
    {
        let mut event = serde_json::to_value(call).unwrap_or_default();
        if call.decision.verdict == airlock_host_apis::Verdict::Deny {
            let key = (
                call.action.to_string(),
                serde_json::to_string(&call.resource).unwrap_or_default(),
                call.decision.policies.join(","),
                call.decision.reason.clone().unwrap_or_default(),
            );
            let count = seen.entry(key.clone()).or_insert(0);
            *count += 1;
            if *count > u64::from(max_identical) {
                if *count == u64::from(max_identical) + 1 {
                    repeated.push((
                        key,
                        serde_json::json!({
                            "kind": "call.repeated",
                            "instance": report.instance,
                            "skill": subject.skill.name,
                            "action": call.action,
                            "resource": call.resource,
                            "decision": call.decision,
                        }),
                    ));
                }
                continue;
            }
        }
        if let Some(map) = event.as_object_mut() {
            map.insert("kind".into(), "call".into());
            map.insert("task_id".into(), subject.task.id.clone().into());
            map.insert("agent".into(), subject.agent.id.clone().into());
            map.insert(
                "delegation".into(),
                serde_json::json!(subject.delegation.chain),
            );
        }
        events.push(line(&event));
    }
    for (key, mut event) in repeated {
        let total = seen.get(&key).copied().unwrap_or_default();
        if let Some(map) = event.as_object_mut() {
            map.insert(
                "suppressed".into(),
                (total - u64::from(max_identical)).into(),
            );
            map.insert("total".into(), total.into());
        }
        events.push(line(&event));
    }
    events.push(line(&RunEnd {
        kind: "run.end",
        instance: &report.instance,
        skill: &subject.skill.name,
        status: report.status,
        error: &report.error,
        usage: &report.usage,
        session: SessionEnd::of(&report.session),
    }));
    events
}

/// A string field of an event by path (`["decision", "verdict"]`), or "".
pub fn field<'a>(event: &'a serde_json::Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(event, |v, key| v.get(key))
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

/// Which records to show: every field given must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The skill's name.
    pub skill: Option<String>,
    pub instance: Option<String>,
    /// The task id.
    pub task: Option<String>,
    /// `allow` or `deny`: call records with that verdict.
    pub decision: Option<String>,
}

impl Filter {
    pub fn matches(&self, event: &serde_json::Value) -> bool {
        let is = |want: &Option<String>, path: &[&str]| {
            want.as_deref().is_none_or(|w| field(event, path) == w)
        };
        is(&self.skill, &["skill"])
            && is(&self.instance, &["instance"])
            && is(&self.task, &["task_id"])
            && self.decision.as_deref().is_none_or(|d| {
                field(event, &["kind"]) == "call" && field(event, &["decision", "verdict"]) == d
            })
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Records that verified, in order.
    pub records: u64,
    /// The first problem: its line (1-based) and what is wrong.
    pub problem: Option<(u64, String)>,
}

/// Whose signatures a checkpoint may carry: this node's keyring, or the
/// public keys another node published.
pub trait Signatures {
    /// Whether `signature` over `message` verifies with key `kid`.
    fn check(&self, kid: &str, message: &[u8], signature: &[u8]) -> bool;
}

impl Signatures for Keyring {
    fn check(&self, kid: &str, message: &[u8], signature: &[u8]) -> bool {
        self.verify(kid, message, signature).unwrap_or(false)
    }
}

/// The longest line the readers take: far above any record the writer
/// writes (its strings are bounded), so a file without line ends cannot
/// make a reader hold all of it.
pub const MAX_LINE: usize = 16 << 20;

/// One line of a log, as [`LineReader`] read it.
#[derive(Debug, PartialEq, Eq)]
pub enum RawLine<'a> {
    /// A line, without its end.
    Whole(&'a [u8]),
    /// The file's last bytes, with no line end: a torn write, or one still
    /// being written.
    Torn(&'a [u8]),
    /// A line longer than [`MAX_LINE`], skipped.
    TooLong,
}

impl RawLine<'_> {
    /// The record this line holds, if it is a whole line that parses.
    pub fn record(&self) -> Option<Record> {
        match self {
            RawLine::Whole(line) => serde_json::from_slice(line).ok(),
            RawLine::Torn(_) | RawLine::TooLong => None,
        }
    }
}

/// Reads a log one line at a time into one reused buffer: memory stays
/// bounded however long the log is.
#[derive(Debug)]
pub struct LineReader<R> {
    reader: R,
    line: Vec<u8>,
    number: u64,
}

impl<R: std::io::BufRead> LineReader<R> {
    pub fn new(reader: R) -> Self {
        LineReader {
            reader,
            line: Vec::new(),
            number: 0,
        }
    }

    /// The next line, or `None` at the end.
    pub fn next_line(&mut self) -> std::io::Result<Option<RawLine<'_>>> {
        use std::io::{BufRead, Read};
        self.line.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.line)?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if let Some(line) = self.line.strip_suffix(b"\n") {
            return Ok(Some(RawLine::Whole(line)));
        }
        if self.line.len() > MAX_LINE {
            self.reader.skip_until(b'\n')?;
            return Ok(Some(RawLine::TooLong));
        }
        Ok(Some(RawLine::Torn(&self.line)))
    }

    /// The number (1-based) of the line read last.
    pub fn number(&self) -> u64 {
        self.number
    }
}

/// A log file's lines, read in bounded memory.
pub fn read_lines(path: &Path) -> Result<LineReader<std::io::BufReader<File>>, Error> {
    let file =
        File::open(path).map_err(|e| Error::io(format!("reading `{}`", path.display()), e))?;
    Ok(LineReader::new(std::io::BufReader::with_capacity(
        64 << 10,
        file,
    )))
}

/// Where in a log the records after `after` begin, or a line start not far
/// before: found by bisecting on byte offsets, as records are in `seq`
/// order, so a page deep into a long log does not read what comes before.
/// Lines the writer did not frame stop the search early (the caller scans
/// on from the offset returned, which is never past the record wanted).
pub fn offset_after<R: std::io::Read + std::io::Seek>(
    file: &mut R,
    len: u64,
    after: u64,
) -> std::io::Result<u64> {
    use std::io::{BufRead, Read, SeekFrom};
    // Below this, reading on is cheaper than seeking again.
    const NEAR: u64 = 64 << 10;
    let (mut lo, mut hi) = (0u64, len);
    let mut line = Vec::new();
    while hi.saturating_sub(lo) > NEAR {
        let mid = lo + (hi - lo) / 2;
        file.seek(SeekFrom::Start(mid))?;
        let mut reader = std::io::BufReader::new(&mut *file);
        // The rest of the line `mid` falls in, then the next whole line.
        line.clear();
        let skipped = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        let start = mid + skipped as u64;
        line.clear();
        (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        match line.strip_suffix(b"\n").map(seq_of) {
            Some(Some(seq)) if seq <= after => lo = start,
            Some(Some(_)) | None => hi = mid,
            Some(None) => break,
        }
    }
    Ok(lo)
}

/// A record line's `seq`, read without parsing the rest: enough to skip
/// records when paging. `None` for a line the writer did not frame.
pub fn seq_of(line: &[u8]) -> Option<u64> {
    let digits = line.strip_prefix(b"{\"seq\":")?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

/// Check a log: the chain, every checkpoint's signature, and the head file.
pub fn verify(path: &Path, keys: &Keyring) -> Result<Verification, Error> {
    let lines = read_lines(path)?;
    let verification = verify_reader(lines, keys)
        .map_err(|e| Error::io(format!("reading `{}`", path.display()), e))?;
    if verification.problem.is_some() {
        return Ok(verification);
    }
    let records = verification.records;
    // Empty after a crash (it is not fsynced): as good as absent.
    if let Ok(text) = std::fs::read(head_path(path))
        && !text.is_empty()
    {
        let head: Checkpoint = serde_json::from_slice(&text)
            .map_err(|e| Error::Config(format!("the head file does not parse: {e}")))?;
        // The head file names the checkpoint itself: its record is count + 1.
        if head.count + 1 > records {
            return Ok(Verification {
                records,
                problem: Some((
                    records,
                    format!(
                        "the log was truncated: the head file records {} records, the log has {records}",
                        head.count + 1
                    ),
                )),
            });
        }
    }
    Ok(verification)
}

/// Check the lines of a log (a file's bytes, or a node's records read
/// back from the cluster's stream): the chain and every checkpoint's
/// signature, and that the last records are signed.
pub fn verify_lines(bytes: &[u8], keys: &dyn Signatures) -> Verification {
    // Reading a slice does not fail.
    verify_reader(LineReader::new(bytes), keys).unwrap_or_else(|e| Verification {
        records: 0,
        problem: Some((0, e.to_string())),
    })
}

/// [`verify_lines`] over a reader; fails only if reading does.
pub fn verify_reader<R: std::io::BufRead>(
    mut lines: LineReader<R>,
    keys: &dyn Signatures,
) -> std::io::Result<Verification> {
    let mut verifier = Verifier::new(keys);
    while let Some(raw) = lines.next_line()? {
        if !verifier.push(raw) {
            break;
        }
    }
    Ok(verifier.finish())
}

/// Verifies a log a line at a time, as its lines arrive (a node's records
/// read back from the cluster's stream), holding none of them.
pub struct Verifier<'k> {
    chain: Chain<'k>,
    lines: u64,
    problem: Option<(u64, String)>,
}

impl std::fmt::Debug for Verifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("records", &self.chain.records)
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

impl<'k> Verifier<'k> {
    pub fn new(keys: &'k dyn Signatures) -> Self {
        Verifier {
            chain: Chain {
                keys,
                expected_prev: GENESIS.to_string(),
                records: 0,
                last_checkpoint: 0,
            },
            lines: 0,
            problem: None,
        }
    }

    /// Take the next line; false once a problem is found (later lines are
    /// not looked at).
    pub fn push(&mut self, line: RawLine<'_>) -> bool {
        if self.problem.is_some() {
            return false;
        }
        self.lines += 1;
        if let Err(why) = self.chain.next(line) {
            self.problem = Some((self.lines, why));
            return false;
        }
        true
    }

    /// Records that verified so far.
    pub fn records(&self) -> u64 {
        self.chain.records
    }

    /// What was found, the last records being unsigned included.
    pub fn finish(self) -> Verification {
        let records = self.chain.records;
        let problem = self.problem.or_else(|| {
            (records > self.chain.last_checkpoint).then(|| {
                (
                    self.lines,
                    format!(
                        "{} records after the last checkpoint are not signed",
                        records - self.chain.last_checkpoint
                    ),
                )
            })
        });
        Verification { records, problem }
    }
}

/// The state of a verification between lines.
struct Chain<'k> {
    keys: &'k dyn Signatures,
    expected_prev: String,
    records: u64,
    last_checkpoint: u64,
}

impl Chain<'_> {
    /// Take the next line, or say what is wrong with it.
    fn next(&mut self, raw: RawLine<'_>) -> Result<(), String> {
        let line = match raw {
            RawLine::Whole(line) => line,
            RawLine::Torn(bytes) => {
                return Err(format!(
                    "a torn last line ({} bytes without an end)",
                    bytes.len()
                ));
            }
            RawLine::TooLong => {
                return Err(format!(
                    "a line longer than {} MiB: not a record",
                    MAX_LINE >> 20
                ));
            }
        };
        let Ok(record) = serde_json::from_slice::<Record>(line) else {
            return Err("not a record".into());
        };
        if record.seq != self.records + 1 {
            return Err(format!(
                "sequence {} where {} was due: a record was deleted, inserted or moved",
                record.seq,
                self.records + 1
            ));
        }
        if record.prev != self.expected_prev {
            return Err(
                "its `prev` is not the hash of the record before: that record was modified".into(),
            );
        }
        if record.event.get("kind").and_then(|k| k.as_str()) == Some("checkpoint") {
            let Ok(checkpoint) = serde_json::from_value::<Checkpoint>(record.event.clone()) else {
                return Err("a malformed checkpoint".into());
            };
            // Version 2 signs the record's time; a version 1 signature does
            // not verify against a version 2 message, so none can be downgraded.
            let time_ms = match checkpoint.v {
                None => None,
                Some(2) => Some(record.time_ms),
                Some(other) => return Err(format!("a checkpoint of unknown version {other}")),
            };
            let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&checkpoint.sig)
                .unwrap_or_default();
            let signed = self.keys.check(
                &checkpoint.kid,
                &checkpoint_message(checkpoint.count, &checkpoint.head, time_ms),
                &signature,
            );
            // No later line chains to the last checkpoint: its bytes must be
            // exactly what the writer writes, so nothing unsigned can change.
            let canonical = serde_json::to_value(&checkpoint)
                .and_then(|v| serde_json::to_vec(&v))
                .map(|event| record_line(record.seq, record.time_ms, &record.prev, &event))
                .unwrap_or_default();
            if !signed
                || canonical != line
                || checkpoint.count != self.records
                || checkpoint.head != self.expected_prev
            {
                return Err(
                    "a checkpoint whose signature or count does not hold: the log was rewritten"
                        .into(),
                );
            }
            self.last_checkpoint = record.seq;
        }
        self.records += 1;
        self.expected_prev = hash(line);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
