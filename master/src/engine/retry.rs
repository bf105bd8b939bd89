//! The one retry policy of tasks and pools: which failures deserve another attempt,
//! how many attempts there are, and how long to wait before the next one.

use std::time::Duration;

use sloth_proto::protocol::{ErrorKind, TaskError};

/// `retries` and `retry_errors` of a task or a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Further attempts after the first (0: none).
    pub retries: u32,
    /// Also retry errors the task's own code raised (not only lost hosts).
    pub retry_errors: bool,
}

impl RetryPolicy {
    /// The task's host was lost or never answered: it did not finish there, through
    /// no fault of its own.
    pub fn is_host_failure(e: &TaskError) -> bool {
        matches!(e.kind, ErrorKind::AgentLost | ErrorKind::Unreachable)
    }

    /// Is this failure worth another attempt? Host failures always are; an error
    /// the task raised only with `retry_errors`; timeouts, cancellations, refused
    /// captures and protocol errors never are.
    pub fn retryable(&self, e: &TaskError) -> bool {
        Self::is_host_failure(e) || (e.kind == ErrorKind::Lua && self.retry_errors)
    }

    /// May the task be tried again after `result`, having been retried `done` times?
    pub fn again<T>(&self, result: &Result<T, TaskError>, done: u32) -> bool {
        match result {
            Err(e) => done < self.retries && self.retryable(e),
            Ok(_) => false,
        }
    }

    /// The pause before retry number `n` (1-based): 200 ms, 400 ms, 600 ms...
    pub fn backoff(n: u32) -> Duration {
        Duration::from_millis(200 * u64::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind) -> Result<(), TaskError> {
        Err(TaskError::new(kind, "x"))
    }

    #[test]
    fn host_failures_are_retried_while_retries_last() {
        let p = RetryPolicy {
            retries: 2,
            retry_errors: false,
        };
        for kind in [ErrorKind::AgentLost, ErrorKind::Unreachable] {
            assert!(p.again(&err(kind), 0));
            assert!(p.again(&err(kind), 1));
            assert!(!p.again(&err(kind), 2), "{kind:?}: retries used up");
        }
        assert!(!p.again(&Ok(()), 0));
    }

    #[test]
    fn task_errors_only_with_retry_errors() {
        let plain = RetryPolicy {
            retries: 3,
            retry_errors: false,
        };
        let eager = RetryPolicy {
            retries: 3,
            retry_errors: true,
        };
        assert!(!plain.again(&err(ErrorKind::Lua), 0));
        assert!(eager.again(&err(ErrorKind::Lua), 0));
        // Never: the task was stopped, or cannot be sent at all.
        for kind in [ErrorKind::Timeout, ErrorKind::Cancelled, ErrorKind::Capture] {
            assert!(!eager.again(&err(kind), 0), "{kind:?}");
        }
    }

    #[test]
    fn no_retries_means_one_attempt() {
        let p = RetryPolicy::default();
        assert!(!p.again(&err(ErrorKind::AgentLost), 0));
    }

    #[test]
    fn backoff_grows_linearly() {
        assert_eq!(RetryPolicy::backoff(1), Duration::from_millis(200));
        assert_eq!(RetryPolicy::backoff(3), Duration::from_millis(600));
    }
}
