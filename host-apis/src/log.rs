//! `airlock:skill/log`, and the skill's stdout and stderr: all of it becomes
//! log lines in one bounded buffer per run. Past the bound, lines are counted
//! and dropped; writing never fails and never traps.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::Serialize;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::bindings::airlock::skill::log::{Host, Level as WitLevel};
use crate::{CallError, SkillCtx};

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `airlock:skill/log.emit`.
    Log,
    Stdout,
    Stderr,
}

/// One line a skill logged or printed. `message` is as the skill wrote it;
/// escape it before showing it in a terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub instance: String,
    pub level: Level,
    pub source: Source,
    pub message: String,
}

#[derive(Debug, Default)]
struct LogState {
    lines: Vec<LogLine>,
    bytes: usize,
    max_bytes: usize,
    dropped: u64,
    /// Unterminated output, per stream.
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LogState {
    fn push(&mut self, line: LogLine) {
        let size = line.message.len();
        if self.bytes + size > self.max_bytes {
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        self.lines.push(line);
    }
}

/// The log lines of one instance, bounded in bytes.
#[derive(Clone, Debug)]
pub struct LogBuffer {
    instance: Arc<str>,
    state: Arc<Mutex<LogState>>,
}

impl LogBuffer {
    pub fn new(instance: &str, max_bytes: usize) -> Self {
        LogBuffer {
            instance: instance.into(),
            state: Arc::new(Mutex::new(LogState {
                max_bytes,
                ..LogState::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn emit(&self, level: Level, source: Source, message: String) {
        self.lock().push(LogLine {
            instance: self.instance.to_string(),
            level,
            source,
            message,
        });
    }

    fn write(&self, source: Source, mut bytes: &[u8]) {
        let mut state = self.lock();
        let level = if source == Source::Stderr {
            Level::Warn
        } else {
            Level::Info
        };
        while !bytes.is_empty() {
            let pending = match source {
                Source::Stderr => &mut state.stderr,
                _ => &mut state.stdout,
            };
            // `pending` stays under MAX_LINE: longer output is split into lines.
            let (chunk, rest) = bytes.split_at(bytes.len().min(MAX_LINE - pending.len()));
            bytes = rest;
            pending.extend_from_slice(chunk);
            let mut complete = Vec::new();
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                complete.push(pending.drain(..=end).collect::<Vec<u8>>());
            }
            if pending.len() >= MAX_LINE {
                complete.push(std::mem::take(pending));
            }
            for line in complete {
                let text = String::from_utf8_lossy(&line);
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text).to_string();
                let instance = self.instance.to_string();
                state.push(LogLine {
                    instance,
                    level,
                    source,
                    message: text,
                });
            }
        }
    }

    /// Everything logged so far, with unterminated output as a last line, and
    /// the number of lines dropped past the bound.
    pub fn drain(&self) -> (Vec<LogLine>, u64) {
        let mut state = self.lock();
        for source in [Source::Stdout, Source::Stderr] {
            let rest = match source {
                Source::Stderr => std::mem::take(&mut state.stderr),
                _ => std::mem::take(&mut state.stdout),
            };
            if !rest.is_empty() {
                let level = if source == Source::Stderr {
                    Level::Warn
                } else {
                    Level::Info
                };
                let instance = self.instance.to_string();
                state.push(LogLine {
                    instance,
                    level,
                    source,
                    message: String::from_utf8_lossy(&rest).into_owned(),
                });
            }
        }
        (
            std::mem::take(&mut state.lines),
            std::mem::take(&mut state.dropped),
        )
    }

    /// A stream for the skill's stdout or stderr that writes into this buffer.
    pub fn pipe(&self, source: Source) -> LogPipe {
        LogPipe {
            buffer: self.clone(),
            source,
        }
    }
}

/// Longest line kept whole; longer output is split.
const MAX_LINE: usize = 16 * 1024;

/// The skill's stdout or stderr.
#[derive(Clone, Debug)]
pub struct LogPipe {
    buffer: LogBuffer,
    source: Source,
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

#[async_trait::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.buffer.write(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.buffer.write(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Per-instance state of `airlock:skill/log`.
#[derive(Debug)]
pub struct LogCtx {
    buffer: LogBuffer,
}

impl LogCtx {
    pub fn new(buffer: LogBuffer) -> Self {
        LogCtx { buffer }
    }

    pub fn buffer(&self) -> &LogBuffer {
        &self.buffer
    }
}

impl Host for SkillCtx {
    fn emit(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        if let Err(e) = self.broker.count_call() {
            return Err(match e {
                CallError::Trap(e) => e,
                other => wasmtime::Error::msg(other.to_string()),
            });
        }
        let level = match level {
            WitLevel::Debug => Level::Debug,
            WitLevel::Info => Level::Info,
            WitLevel::Warn => Level::Warn,
            WitLevel::Error => Level::Error,
        };
        self.log.buffer.emit(level, Source::Log, message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_becomes_lines_and_partial_output_is_kept() {
        let buffer = LogBuffer::new("i", 1024);
        buffer.write(Source::Stdout, b"one\ntw");
        buffer.write(Source::Stdout, b"o\r\nthree");
        buffer.write(Source::Stderr, b"oops\n");
        let (lines, dropped) = buffer.drain();
        let text: Vec<(&str, Source)> = lines
            .iter()
            .map(|l| (l.message.as_str(), l.source))
            .collect();
        assert_eq!(
            text,
            [
                ("one", Source::Stdout),
                ("two", Source::Stdout),
                ("oops", Source::Stderr),
                ("three", Source::Stdout)
            ]
        );
        assert_eq!(dropped, 0);
    }

    #[test]
    fn lines_past_the_bound_are_dropped_and_counted() {
        let buffer = LogBuffer::new("i", 10);
        for _ in 0..5 {
            buffer.emit(Level::Info, Source::Log, "12345".into());
        }
        let (lines, dropped) = buffer.drain();
        assert_eq!(lines.len(), 2);
        assert_eq!(dropped, 3);
    }

    #[test]
    fn a_line_without_end_is_split_not_hoarded() {
        let buffer = LogBuffer::new("i", 1 << 20);
        for _ in 0..100 {
            buffer.write(Source::Stdout, &[b'x'; 4096]);
        }
        let (lines, _) = buffer.drain();
        assert!(lines.iter().all(|l| l.message.len() <= MAX_LINE));
        assert_eq!(
            lines.iter().map(|l| l.message.len()).sum::<usize>(),
            100 * 4096
        );
        assert!(!lines.is_empty());
    }
}
