//! `--events FILE|-`: the run as it happens, one JSON object a line, flushed at once
//! (`{"event": "task_started", "time": "2026-12-07T05:45:00.123Z", ...}`), for
//! dashboards and CI to follow. The events and their fields: docs/cli.md.
//!
//! The lines are written by a thread of their own, in the order they were emitted:
//! a reader that pauses (a FIFO, a pipe into a slow consumer) never blocks the thread
//! that emits them, which may be the async runtime's. Task log lines wait for room
//! past [`WAIT_ABOVE`] bytes queued (the tasks that print then wait, as they do for a
//! paused stdout); every other event is queued whatever the queue holds.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde_json::{Map, Value as J};

use super::run_info::rfc3339;

/// Log lines are reported straight from the runtime's thread only while the queue
/// holds less than this (see [`EventStream::has_room`]).
const ROOM_BELOW: usize = 8 * 1024 * 1024;
/// A log line emitted while the queue holds more waits for the writer.
const WAIT_ABOVE: usize = 2 * ROOM_BELOW;

#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    bytes: usize,
    /// The writer holds a line it took off the queue.
    writing: bool,
    /// A write failed (disk full, reader gone): said once, then nothing is queued.
    broken: bool,
    /// No more lines will come: the writer ends once the queue is empty.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits for lines, emitters and [`EventStream::flush`] for the writer.
    changed: Condvar,
}

pub struct EventStream {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    stdout: bool,
}

impl EventStream {
    /// `-` is standard output; anything else a file, created or truncated.
    pub fn open(spec: &str) -> Result<EventStream, String> {
        let out: Box<dyn Write + Send> = if spec == "-" {
            super::machine::writer()
        } else {
            Box::new(std::fs::File::create(spec).map_err(|e| format!("--events {spec}: {e}"))?)
        };
        Self::with_writer(out, spec == "-").map_err(|e| format!("--events {spec}: {e}"))
    }

    fn with_writer(out: Box<dyn Write + Send>, stdout: bool) -> std::io::Result<EventStream> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sloth-events".into())
                .spawn(move || write_lines(&shared, out))?
        };
        Ok(EventStream {
            shared,
            writer: Mutex::new(Some(writer)),
            stdout,
        })
    }

    /// The stream is standard output (human output then goes to stderr).
    pub fn is_stdout(&self) -> bool {
        self.stdout
    }

    /// Whether a log line of `bytes` can be emitted now without waiting.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.shared.queue.lock().bytes.saturating_add(bytes) < ROOM_BELOW
    }

    /// Queue one event: `{"event": NAME, "time": NOW, ...fields}`.
    pub fn emit(&self, event: &str, fields: J) {
        self.push(event, fields, false);
    }

    /// Queue a task's log line, after waiting for room when the reader is far behind.
    pub fn emit_log(&self, fields: J) {
        self.push("log", fields, true);
    }

    fn push(&self, event: &str, fields: J, wait_for_room: bool) {
        let mut m = Map::new();
        m.insert("event".into(), J::from(event));
        m.insert("time".into(), J::from(rfc3339(SystemTime::now())));
        if let J::Object(f) = fields {
            m.extend(f);
        }
        let Ok(mut line) = serde_json::to_string(&J::Object(m)) else {
            return;
        };
        line.push('\n');
        let mut q = self.shared.queue.lock();
        while wait_for_room && q.bytes > WAIT_ABOVE && !q.broken && !q.closed {
            self.shared.changed.wait(&mut q);
        }
        if q.broken || q.closed {
            return;
        }
        q.bytes += line.len();
        q.lines.push_back(line);
        self.shared.changed.notify_all();
    }

    /// Wait until every line queued so far is written (or the stream broke), at
    /// most `limit`; whether it was.
    pub fn flush(&self, limit: Option<Duration>) -> bool {
        let until = limit.map(|l| Instant::now() + l);
        let mut q = self.shared.queue.lock();
        while !q.broken && (q.writing || !q.lines.is_empty()) {
            match until {
                Some(u) => {
                    if self.shared.changed.wait_until(&mut q, u).timed_out() {
                        return false;
                    }
                }
                None => self.shared.changed.wait(&mut q),
            }
        }
        true
    }
}

impl Drop for EventStream {
    /// What was queued is written before the stream goes (a reader that never reads
    /// again holds this, as a blocking write would).
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }
}

/// The writer thread: lines in queue order, each flushed, until the stream is closed
/// and empty or a write fails.
fn write_lines(shared: &Shared, mut out: Box<dyn Write + Send>) {
    loop {
        let line = {
            let mut q = shared.queue.lock();
            q.writing = false;
            shared.changed.notify_all();
            loop {
                if let Some(line) = q.lines.pop_front() {
                    q.bytes -= line.len();
                    q.writing = true;
                    break line;
                }
                if q.closed {
                    return;
                }
                shared.changed.wait(&mut q);
            }
        };
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
            let mut q = shared.queue.lock();
            q.broken = true;
            q.writing = false;
            q.lines.clear();
            q.bytes = 0;
            shared.changed.notify_all();
            drop(q);
            errln!("warning: --events: {e}; no more events are written");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A reader that takes nothing until it is let go.
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.open;
            let mut o = open.lock();
            while !*o {
                cv.wait(&mut o);
            }
            self.got.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_paused_reader_holds_back_no_emitter_and_loses_nothing() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate {
            open: open.clone(),
            got: got.clone(),
        };
        let events = EventStream::with_writer(Box::new(gate), false).unwrap();
        let start = Instant::now();
        for i in 0..1000 {
            events.emit("task_started", json!({"task_id": i}));
        }
        assert!(start.elapsed() < Duration::from_secs(1), "emit waited");
        assert!(!events.flush(Some(Duration::from_millis(50))));
        assert!(events.has_room(100));
        // Let the reader go: everything arrives, in order.
        *open.0.lock() = true;
        open.1.notify_all();
        assert!(events.flush(Some(Duration::from_secs(10))));
        let text = String::from_utf8(got.lock().clone()).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<J>(l).unwrap()["task_id"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn log_lines_wait_for_room_once_the_reader_is_far_behind() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate {
            open: open.clone(),
            got: got.clone(),
        };
        let events = Arc::new(EventStream::with_writer(Box::new(gate), false).unwrap());
        let line = "x".repeat(64 * 1024);
        let mut sent = 0;
        while events.has_room(line.len()) {
            events.emit_log(json!({"line": line}));
            sent += 1;
        }
        // Past the room mark, log lines still queue up to the wait mark...
        let logger = {
            let events = events.clone();
            let line = line.clone();
            std::thread::spawn(move || {
                for _ in 0..(WAIT_ABOVE / line.len() + 8) {
                    events.emit_log(json!({"line": line}));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!logger.is_finished(), "log lines queued without bound");
        // ...while other events never wait.
        events.emit("task_done", json!({"task_id": 1}));
        *open.0.lock() = true;
        open.1.notify_all();
        logger.join().unwrap();
        assert!(events.flush(Some(Duration::from_secs(10))));
        let lines = got
            .lock()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(lines, sent + WAIT_ABOVE / line.len() + 8 + 1);
    }

    #[test]
    fn a_failed_write_is_said_once_and_drops_the_rest() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let events = EventStream::with_writer(Box::new(Broken), false).unwrap();
        events.emit("run_started", json!({}));
        assert!(events.flush(Some(Duration::from_secs(5))));
        for _ in 0..10 {
            events.emit_log(json!({"line": "x"}));
        }
        assert!(events.flush(Some(Duration::from_secs(5))));
    }
}
