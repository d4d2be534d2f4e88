//! The log output: a bounded queue in front of one writer thread, so that logging never blocks.
//!
//! A stuck stdout (journald that stopped reading, a `| tee` whose reader is gone, a blocking
//! container log driver) used to block every `tracing` call, and with it the decision loop, signal
//! handling and the forwarding of the engine's output (so the engine blocked on its own pipe
//! too). Now a log call only formats its line and queues it; the writer thread is the only one
//! that ever waits on the output. When the queue is full the line is dropped and counted
//! ([`dropped_lines`], the `engine_shim_log_lines_dropped_total` metric); once lines get through
//! again, one warning says how many were lost. At exit [`LogGuard`] gives the writer a bounded
//! time to flush, so a stuck output cannot hold the process either.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

use super::scrub::clean_line;
use super::LogFormat;

/// How many bytes of formatted lines may wait for the output: about four thousand typical lines,
/// a bounded amount of memory however long the output stays stuck.
pub const QUEUE_BYTES: usize = 1 << 20;

/// How often, at most, a report of dropped lines is written while lines are still queued.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How long the process waits at exit for queued lines to be written.
pub const EXIT_FLUSH: Duration = Duration::from_secs(1);

/// Lines dropped since start: a queue that was full, or an output that refused the write.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since the process started (for the metrics).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Where log lines go: cloned into the subscriber, shared with the writer thread.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
    format: LogFormat,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a line is queued.
    queued: Condvar,
    /// Signalled when the writer has written everything queued.
    drained: Condvar,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer holds a line it has not finished writing.
    writing: bool,
}

/// Whether a line of `len` bytes fits behind `queued` bytes. A lone line always fits, however
/// long, so that one long engine line is not lost to an otherwise idle output.
pub fn admits(queued: usize, len: usize, capacity: usize) -> bool {
    queued == 0 || queued + len <= capacity
}

/// How many lost lines to report now, if any: only right after a write that went through (a
/// report to a dead output would itself be lost, and counted, and reported, forever), and then
/// once the queue is empty or at most every [`REPORT_EVERY`] while it is still busy.
pub fn report_due(
    dropped: u64,
    reported: u64,
    wrote: bool,
    queue_empty: bool,
    since_report: Duration,
) -> Option<u64> {
    let lost = dropped.saturating_sub(reported);
    (wrote && lost > 0 && (queue_empty || since_report >= REPORT_EVERY)).then_some(lost)
}

impl Sink {
    /// Starts the writer thread on a duplicate of stdout (or stderr), so nothing else in the
    /// process shares, or waits for, the lock of std's own handle.
    pub fn start(format: LogFormat, to_stderr: bool) -> Sink {
        let fd = if to_stderr {
            std::io::stderr().as_fd().try_clone_to_owned()
        } else {
            std::io::stdout().as_fd().try_clone_to_owned()
        };
        let output: Box<dyn Write + Send> = match fd {
            Ok(fd) => Box::new(File::from(fd)),
            Err(_) if to_stderr => Box::new(std::io::stderr()),
            Err(_) => Box::new(std::io::stdout()),
        };
        Sink::start_on(format, output)
    }

    /// Starts the writer thread on `output`.
    fn start_on(format: LogFormat, output: Box<dyn Write + Send>) -> Sink {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            drained: Condvar::new(),
        });
        let writer = shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.write_forever(output))
        {
            eprintln!("error: cannot start the log writer thread: {e}; log lines will be dropped");
        }
        Sink { shared, format }
    }

    /// Queues one formatted line (cleaned first, see [`clean_line`]); never waits for the output.
    fn push(&self, raw: &[u8]) {
        let line = clean_line(self.format, &String::from_utf8_lossy(raw)).into_bytes();
        let mut queue = self.shared.lock();
        if !admits(queue.bytes, line.len(), QUEUE_BYTES) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.bytes += line.len();
        queue.lines.push_back(line);
        self.shared.queued.notify_one();
    }

    /// Waits up to `within` for every queued line to be written; true if they were.
    pub fn flush(&self, within: Duration) -> bool {
        let queue = self.shared.lock();
        let (queue, _) = self
            .shared
            .drained
            .wait_timeout_while(queue, within, |q| !q.lines.is_empty() || q.writing)
            .unwrap_or_else(|e| e.into_inner());
        queue.lines.is_empty() && !queue.writing
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: takes lines one by one and writes them, for the life of the process.
    fn write_forever(&self, mut output: Box<dyn Write + Send>) {
        let mut reported = 0;
        let mut last_report = Instant::now();
        loop {
            let line = {
                let mut queue = self.lock();
                queue.writing = false;
                while queue.lines.is_empty() {
                    self.drained.notify_all();
                    queue = self.queued.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
                let line = queue.lines.pop_front().unwrap_or_default();
                queue.bytes -= line.len();
                queue.writing = true;
                line
            };
            // The only call in the process that may wait on the output.
            let wrote = output
                .write_all(&line)
                .and_then(|()| output.flush())
                .is_ok();
            if !wrote {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            let queue_empty = self.lock().lines.is_empty();
            let dropped = dropped_lines();
            if let Some(lost) =
                report_due(dropped, reported, wrote, queue_empty, last_report.elapsed())
            {
                reported = dropped;
                last_report = Instant::now();
                // Formatted like every other line, and queued behind what is already waiting.
                tracing::warn!(
                    dropped_lines = lost,
                    "{lost} log lines were dropped while the log output was blocked"
                );
            }
        }
    }
}

/// The writer `tracing-subscriber` asks for once per event: it collects the event's formatted
/// bytes and queues them as one line when the event is done.
pub struct LineWriter<'a> {
    sink: &'a Sink,
    line: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.sink.push(&self.line);
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            sink: self,
            line: Vec::new(),
        }
    }
}

/// Held by `main` for the life of the process: when dropped, the queued lines get up to
/// [`EXIT_FLUSH`] to be written, so that exit neither loses lines needlessly nor hangs on a stuck
/// output.
#[must_use = "dropping the guard at once would not wait for the last log lines"]
pub struct LogGuard {
    sink: Sink,
}

impl LogGuard {
    pub(super) fn new(sink: Sink) -> Self {
        LogGuard { sink }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.sink.flush(EXIT_FLUSH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_lines_but_a_lone_line_always_fits() {
        assert!(admits(0, 10, 100));
        assert!(admits(90, 10, 100));
        assert!(!admits(91, 10, 100));
        assert!(admits(0, 1_000, 100));
    }

    #[test]
    fn lost_lines_are_reported_only_after_a_write_went_through() {
        let second = Duration::from_secs(1);
        // Nothing lost, nothing to say.
        assert_eq!(report_due(5, 5, true, true, second), None);
        // The output is still refusing writes: a report would be lost too.
        assert_eq!(report_due(7, 5, false, true, second), None);
        // Drained: report the lines lost since the last report.
        assert_eq!(report_due(7, 5, true, true, Duration::ZERO), Some(2));
        // Still busy: at most once a second.
        assert_eq!(
            report_due(7, 5, true, false, Duration::from_millis(10)),
            None
        );
        assert_eq!(report_due(7, 5, true, false, second), Some(2));
    }

    #[test]
    fn a_blocked_output_neither_blocks_logging_nor_holds_up_the_flush_for_long() {
        let (reader, writer) = std::io::pipe().unwrap();
        let sink = Sink::start_on(LogFormat::Text, Box::new(writer));
        // Far more than the pipe and the queue hold together; nobody reads the pipe yet.
        let line = format!("{}\n", "y".repeat(200));
        let lines = 4 * QUEUE_BYTES / line.len();
        let before = dropped_lines();
        // Were a log call to wait for the output, this loop would never end.
        for _ in 0..lines {
            sink.make_writer().write_all(line.as_bytes()).unwrap();
        }
        assert!(dropped_lines() > before, "a full queue drops lines");
        assert!(
            !sink.flush(Duration::from_millis(50)),
            "nothing drains while blocked"
        );
        // Once the output is read again, every queued line gets through.
        let reading =
            std::thread::spawn(move || std::io::copy(&mut { reader }, &mut std::io::sink()));
        assert!(sink.flush(Duration::from_secs(30)), "the queue drains");
        // The reader and the writer thread live on, detached, like the process's own writer.
        drop(reading);
    }

    #[test]
    fn lines_are_cleaned_and_queued_without_waiting() {
        let sink = Sink {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                queued: Condvar::new(),
                drained: Condvar::new(),
            }),
            format: LogFormat::Text,
        };
        // No writer thread: every line stays queued, and the queue never grows past its bound.
        let line = format!("postgres://shim:s3cret@db \u{1b}[2J {}\n", "x".repeat(1000));
        let before = dropped_lines();
        for _ in 0..(2 * QUEUE_BYTES / line.len()) {
            let mut writer = sink.make_writer();
            writer.write_all(line.as_bytes()).unwrap();
        }
        let queue = sink.shared.lock();
        assert!(queue.bytes <= QUEUE_BYTES, "{}", queue.bytes);
        assert!(dropped_lines() - before >= (QUEUE_BYTES / line.len()) as u64 - 1);
        let first = String::from_utf8(queue.lines[0].clone()).unwrap();
        assert!(
            first.starts_with("postgres://shim:<redacted>@db \\x1b[2J x"),
            "{first}"
        );
        drop(queue);
        assert!(!sink.flush(Duration::from_millis(1)));
    }
}
