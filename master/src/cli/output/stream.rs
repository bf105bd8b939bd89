//! `--events FILE|-`: the run as it happens, one JSON object a line, flushed at once
//! (`{"event": "task_started", "time": "2026-12-07T05:45:00.123Z", ...}`), for
//! dashboards and CI to follow. The events and their fields: docs/cli.md.

use std::io::Write;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::{Map, Value as J};

use super::run_info::rfc3339;

pub struct EventStream {
    out: Mutex<Box<dyn Write + Send>>,
    /// A write failed (disk full, reader gone): said once, then quiet.
    broken: Mutex<bool>,
    stdout: bool,
}

impl EventStream {
    /// `-` is standard output; anything else a file, created or truncated.
    pub fn open(spec: &str) -> Result<EventStream, String> {
        let out: Box<dyn Write + Send> = if spec == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::File::create(spec).map_err(|e| format!("--events {spec}: {e}"))?)
        };
        Ok(EventStream {
            out: Mutex::new(out),
            broken: Mutex::new(false),
            stdout: spec == "-",
        })
    }

    /// The stream is standard output (human output then goes to stderr).
    pub fn is_stdout(&self) -> bool {
        self.stdout
    }

    /// Write one event: `{"event": NAME, "time": NOW, ...fields}`.
    pub fn emit(&self, event: &str, fields: J) {
        let mut m = Map::new();
        m.insert("event".into(), J::from(event));
        m.insert("time".into(), J::from(rfc3339(SystemTime::now())));
        if let J::Object(f) = fields {
            m.extend(f);
        }
        let line = match serde_json::to_string(&J::Object(m)) {
            Ok(l) => l,
            Err(_) => return,
        };
        let mut out = self.out.lock();
        let written = writeln!(out, "{line}").and_then(|_| out.flush());
        if let Err(e) = written {
            let mut broken = self.broken.lock();
            if !*broken {
                *broken = true;
                errln!("warning: --events: {e}; no more events are written");
            }
        }
    }
}
