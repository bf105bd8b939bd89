//! How a sloth process runs its async side, for the master and the agent alike: the
//! tokio runtime both build (one worker thread; each sets its own cap on blocking
//! threads) and the shutdown signals both stop on (Ctrl-C, SIGTERM). What a process
//! does on a signal stays with it: the agent closes its endpoint, the master stops its
//! local agents and exits.

use tokio::signal::unix::{signal, SignalKind};

/// Why the async runtime could not be built. The message includes the I/O error (so it
/// is not also given as the source).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the async runtime: {0}")]
pub struct RuntimeError(pub std::io::Error);

/// A multi-thread runtime with one worker thread, I/O and timers enabled, and at most
/// `max_blocking_threads` blocking threads.
pub fn runtime(max_blocking_threads: usize) -> Result<tokio::runtime::Runtime, RuntimeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(max_blocking_threads)
        .enable_all()
        .build()
        .map_err(RuntimeError)
}

/// Completes on the first Ctrl-C or SIGTERM. The handlers are installed when it is first
/// polled; if SIGTERM cannot be watched, Ctrl-C alone counts.
pub async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_has_one_worker_and_runs_blocking_work() {
        let rt = runtime(2).expect("runtime");
        assert_eq!(rt.metrics().num_workers(), 1);
        let got = rt.block_on(async { tokio::task::spawn_blocking(|| 7).await });
        assert_eq!(got.expect("blocking task"), 7);
    }

    #[test]
    fn error_names_what_failed() {
        let e = RuntimeError(std::io::Error::other("no threads"));
        assert_eq!(e.to_string(), "cannot start the async runtime: no threads");
    }
}
