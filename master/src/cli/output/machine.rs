//! Standard output when it carries what a machine reads: the `--json` document, or
//! the `--events -` stream. Nothing else may land there, whoever writes: the script's
//! own `io.write`, a command it starts with `os.execute`, a library. So the real
//! standard output is kept on a descriptor of its own for the document, and
//! descriptor 1 is pointed at standard error for everything else.
//!
//! A document that cannot be written (a full disk, a closed stdout) is said on
//! standard error and turns a successful exit into a failure: CI must not take a
//! missing result for a good one.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

/// The real standard output, once [`reserve_stdout`] moved everything else away.
static MACHINE_OUT: OnceLock<Mutex<File>> = OnceLock::new();
/// A document could not be written whole.
static WRITE_FAILED: AtomicBool = AtomicBool::new(false);

/// Keep standard output for the machine's document alone (see the module's notes).
/// Best effort: when a descriptor cannot be duplicated, output stays as it was.
pub fn reserve_stdout() {
    if MACHINE_OUT.get().is_some() {
        return;
    }
    let Ok(saved) = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3) else {
        return;
    };
    // Whatever is still buffered for the old stdout goes out first.
    let _ = std::io::stdout().flush();
    if rustix::stdio::dup2_stdout(rustix::stdio::stderr()).is_ok() {
        let _ = MACHINE_OUT.set(Mutex::new(File::from(saved)));
    }
}

/// A writer for the machine's output: the reserved standard output, or the usual
/// one when nothing was reserved.
pub fn writer() -> Box<dyn Write + Send> {
    match MACHINE_OUT.get().and_then(|f| f.lock().try_clone().ok()) {
        Some(f) => Box::new(f),
        None => Box::new(std::io::stdout()),
    }
}

/// Write a whole document (`text` and a newline) to the machine's output and flush
/// it; a failure is said on standard error and remembered for the exit code.
pub fn write_doc(text: &str) {
    let written = match MACHINE_OUT.get() {
        Some(f) => {
            let mut f = f.lock();
            writeln!(f, "{text}").and_then(|_| f.flush())
        }
        None => {
            let mut o = std::io::stdout().lock();
            writeln!(o, "{text}").and_then(|_| o.flush())
        }
    };
    if let Err(e) = written {
        WRITE_FAILED.store(true, Ordering::SeqCst);
        errln!("error: cannot write the JSON document to standard output: {e}");
    }
}

/// Whether a document could not be written (the command then exits 1, not 0).
pub fn write_failed() -> bool {
    WRITE_FAILED.load(Ordering::SeqCst)
}
