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

/// Completes on the first Ctrl-C (SIGINT) or SIGTERM. The handlers are installed by
/// this call, not when the future is first polled: a signal that comes right after (a
/// launcher that stops an agent as soon as it is ready) is not lost to the default
/// action. A signal that cannot be watched is left out. Call inside a tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            _ = received(term.as_mut()) => {}
            _ = received(int.as_mut()) => {}
        }
    }
}

/// Completes when `s` delivers a signal; never, without `s`.
async fn received(s: Option<&mut tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
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
    fn a_signal_right_after_the_call_is_caught() {
        let rt = runtime(1).expect("runtime");
        rt.block_on(async {
            let stop = shutdown_signal();
            // Before the future is first polled: with the handler installed only then,
            // SIGTERM's default action would end this test process.
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status()
                .expect("running kill");
            assert!(sent.success());
            tokio::time::timeout(std::time::Duration::from_secs(5), stop)
                .await
                .expect("the signal was seen");
        });
    }

    #[test]
    fn error_names_what_failed() {
        let e = RuntimeError(std::io::Error::other("no threads"));
        assert_eq!(e.to_string(), "cannot start the async runtime: no threads");
    }
}
