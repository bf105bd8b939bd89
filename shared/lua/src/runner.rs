//! The threads that run Lua tasks (on agents, and local tasks on the master).
//!
//! Like tokio's blocking pool, with one difference: a thread that runs out of work
//! watches the queue for a short while (yielding the CPU to anything else that wants
//! it) before it goes to sleep. Waking a sleeping thread costs tens of µs on a
//! virtual machine, more than a small task runs, and tasks tend to come in series.
//! Only one thread watches at a time, so a busy pool does not spend its CPU watching,
//! and only while tasks come in series (each within [`SERIES_GAP`] of the one
//! before): a lone task, like one command fanned out to a thousand agents on one
//! machine, is not followed by a watch that takes CPU from everything else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// At most this many idle threads watch the queue at once; the others sleep.
const MAX_SPINNING: usize = 1;

/// Jobs that arrive at most this far apart are a series, worth watching for.
pub const SERIES_GAP: Duration = Duration::from_millis(1);

/// Tells whether events come in series: [`Cadence::tick`] on each one says whether
/// the one before came at most `gap` earlier.
pub struct Cadence {
    start: Instant,
    /// Nanoseconds since `start` of the last tick (+1), 0 before the first.
    last: AtomicU64,
    gap: Duration,
}

impl Cadence {
    pub fn new(gap: Duration) -> Cadence {
        Cadence {
            start: Instant::now(),
            last: AtomicU64::new(0),
            gap,
        }
    }

    /// Record an event now; true when the previous one was at most `gap` ago.
    pub fn tick(&self) -> bool {
        // +1: an event at `start` itself still counts as one.
        let now = self.start.elapsed().as_nanos() as u64 + 1;
        let prev = self.last.swap(now, Ordering::AcqRel);
        prev != 0 && now.saturating_sub(prev) <= self.gap.as_nanos() as u64
    }
}

/// A growable pool of task threads. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    cv: Condvar,
    /// Length of the queue, readable without the lock by spinning threads.
    queued: AtomicUsize,
    /// Arrivals of jobs, and whether the last one came in a series.
    cadence: Cadence,
    in_series: AtomicBool,
    name: String,
    max_threads: usize,
    spin: Duration,
    idle_exit: Duration,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    threads: usize,
    /// Threads watching the queue (they take new work without being woken).
    spinning: usize,
    sleeping: usize,
    /// Wake-ups sent and not yet taken by a sleeping thread.
    wakeups: usize,
}

impl Runner {
    /// A pool of at most `max_threads` threads named `name`; an idle thread watches
    /// for work for `spin` before sleeping, and exits after `idle_exit` asleep.
    pub fn new(name: &str, max_threads: usize, spin: Duration, idle_exit: Duration) -> Runner {
        Runner {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
                queued: AtomicUsize::new(0),
                cadence: Cadence::new(SERIES_GAP),
                in_series: AtomicBool::new(false),
                name: name.to_string(),
                max_threads: max_threads.max(1),
                spin,
                idle_exit,
            }),
        }
    }

    /// Whether the last job came within [`SERIES_GAP`] of the one before: a caller
    /// expecting a quick answer may then keep its own thread awake for it.
    pub fn in_series(&self) -> bool {
        self.inner.in_series.load(Ordering::Acquire)
    }

    /// Run `job` on a pool thread. It starts at once if a thread is free or the pool
    /// may grow; otherwise it waits in the queue for the next free thread.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        let inner = &self.inner;
        inner
            .in_series
            .store(inner.cadence.tick(), Ordering::Release);
        let mut st = inner.state.lock();
        st.queue.push_back(Box::new(job));
        inner.queued.store(st.queue.len(), Ordering::Release);
        if st.queue.len() <= st.spinning + st.wakeups {
            return;
        }
        if st.sleeping > st.wakeups {
            st.wakeups += 1;
            inner.cv.notify_one();
        } else if st.threads < inner.max_threads {
            st.threads += 1;
            st.spinning += 1;
            let me = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name(inner.name.clone())
                .spawn(move || me.work());
            if let Err(e) = spawned {
                st.threads -= 1;
                st.spinning -= 1;
                tracing::warn!("cannot start a {} thread: {e}", inner.name);
                if st.threads == 0 {
                    // No thread will ever come for it: run it here rather than lose it.
                    if let Some(job) = st.queue.pop_back() {
                        inner.queued.store(st.queue.len(), Ordering::Release);
                        drop(st);
                        job();
                    }
                }
            }
        }
    }
}

impl Inner {
    /// One pool thread; it starts counted as spinning.
    fn work(&self) {
        loop {
            let job = {
                let mut st = self.state.lock();
                let job = st.queue.pop_front();
                self.queued.store(st.queue.len(), Ordering::Release);
                if job.is_some() {
                    st.spinning -= 1;
                }
                job
            };
            if let Some(job) = job {
                job();
                let mut st = self.state.lock();
                if st.queue.is_empty() && st.spinning >= MAX_SPINNING {
                    // Enough threads already watch the queue: more of them would only
                    // take CPU from the tasks still running.
                    st.sleeping += 1;
                    if !self.sleep(&mut st) {
                        return;
                    }
                }
                st.spinning += 1;
                continue;
            }
            // Out of a series, nothing is likely to come within the watch.
            let spin = if self.in_series.load(Ordering::Acquire) {
                self.spin
            } else {
                Duration::ZERO
            };
            let until = Instant::now() + spin;
            while self.queued.load(Ordering::Acquire) == 0 && Instant::now() < until {
                std::thread::yield_now();
            }
            if self.queued.load(Ordering::Acquire) > 0 {
                continue;
            }
            let mut st = self.state.lock();
            if !st.queue.is_empty() {
                continue;
            }
            st.spinning -= 1;
            st.sleeping += 1;
            if !self.sleep(&mut st) {
                return;
            }
            st.spinning += 1;
        }
    }

    /// Sleep (counted in `sleeping`) until woken; false when the thread should exit
    /// instead, after `idle_exit` without work (it is then no longer counted).
    fn sleep(&self, st: &mut parking_lot::MutexGuard<'_, State>) -> bool {
        let deadline = Instant::now() + self.idle_exit;
        while st.wakeups == 0 {
            if self.cv.wait_until(st, deadline).timed_out() && st.wakeups == 0 {
                st.sleeping -= 1;
                st.threads -= 1;
                return false;
            }
        }
        st.wakeups -= 1;
        st.sleeping -= 1;
        true
    }
}

/// Keep the calling tokio runtime from putting its thread to sleep for up to `spin`,
/// or until `finished` is set: a watcher task yields in a loop (tokio polls the
/// network and runs other tasks between its turns). Use it when a reply is expected
/// within microseconds (a small task's result), because waking a sleeping thread on
/// a virtual machine costs more than that. One watcher runs at a time per process.
/// Must be called inside a tokio runtime.
pub fn keep_awake(finished: Arc<AtomicBool>, spin: Duration) {
    static WATCHING: AtomicBool = AtomicBool::new(false);
    if spin.is_zero() || WATCHING.swap(true, Ordering::AcqRel) {
        return;
    }
    /// Clears the flag however the watcher ends (also when its runtime drops it).
    struct Watching;
    impl Drop for Watching {
        fn drop(&mut self) {
            WATCHING.store(false, Ordering::Release);
        }
    }
    let watching = Watching;
    tokio::spawn(async move {
        let _watching = watching;
        let until = Instant::now() + spin;
        while !finished.load(Ordering::Acquire) && Instant::now() < until {
            tokio::task::yield_now().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_every_job_and_grows_to_its_limit() {
        let r = Runner::new("t", 4, Duration::from_micros(200), Duration::from_secs(5));
        let (tx, rx) = mpsc::channel();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        for i in 0..40 {
            let (tx, running, peak) = (tx.clone(), running.clone(), peak.clone());
            r.execute(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
                tx.send(i).unwrap();
            });
        }
        let mut got: Vec<i32> = (0..40)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (0..40).collect::<Vec<_>>());
        let p = peak.load(Ordering::SeqCst);
        assert!(p > 1 && p <= 4, "peak concurrency {p}");
    }

    #[test]
    fn one_idle_thread_watches_the_queue_the_others_sleep() {
        // Idle threads exit only long after this test is over.
        let r = Runner::new("t", 8, Duration::from_secs(2), Duration::from_secs(60));
        let (tx, rx) = mpsc::channel();
        for i in 0..8 {
            let tx = tx.clone();
            r.execute(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(i).unwrap();
            });
        }
        for _ in 0..8 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // The jobs came in series unless this thread was held up between two of them
        // for over SERIES_GAP (a loaded machine running other tests): then no thread
        // watches at all. Either way, never more than one.
        let expected = usize::from(r.in_series());
        // Threads settle into watching or sleeping as they finish; a loaded machine
        // may take a while to schedule them.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let settled = loop {
            let (spinning, sleeping) = {
                let st = r.inner.state.lock();
                assert_eq!(st.threads, 8);
                (st.spinning, st.sleeping)
            };
            assert!(spinning <= MAX_SPINNING, "{spinning} threads watching");
            if spinning == expected && sleeping == 8 - expected {
                break true;
            }
            if std::time::Instant::now() > until {
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        assert!(
            settled,
            "expected {expected} watching and the others asleep"
        );
        // Work still reaches every thread: 8 jobs that wait for each other.
        let barrier = Arc::new(std::sync::Barrier::new(8));
        for i in 0..8 {
            let (tx, barrier) = (tx.clone(), barrier.clone());
            r.execute(move || {
                barrier.wait();
                tx.send(i).unwrap();
            });
        }
        for _ in 0..8 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
    }

    #[test]
    fn cadence_tells_a_series_from_lone_events() {
        let c = Cadence::new(Duration::from_millis(50));
        assert!(!c.tick(), "the first event has none before it");
        assert!(c.tick(), "right after the first");
        std::thread::sleep(Duration::from_millis(80));
        assert!(!c.tick(), "past the gap");
        assert!(c.tick());
    }

    #[test]
    fn a_lone_job_is_not_followed_by_a_watch() {
        let r = Runner::new("t", 2, Duration::from_secs(5), Duration::from_secs(30));
        let (tx, rx) = mpsc::channel();
        r.execute(move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!r.in_series());
        std::thread::sleep(Duration::from_millis(100));
        let st = r.inner.state.lock();
        assert_eq!(
            (st.spinning, st.sleeping),
            (0, 1),
            "the thread sleeps at once"
        );
        drop(st);
        // Two jobs back to back are a series: the thread watches for the next.
        let (tx, rx) = mpsc::channel();
        for _ in 0..2 {
            let tx = tx.clone();
            r.execute(move || tx.send(()).unwrap());
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert!(r.in_series());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(r.inner.state.lock().spinning, 1, "one thread watches");
    }

    #[test]
    fn keep_awake_watches_one_at_a_time_and_stops_by_itself() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let metrics = tokio::runtime::Handle::current().metrics();
            // Set when the job ends: the watcher leaves at its next turn.
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            keep_awake(done.clone(), Duration::from_secs(30));
            // A second call while one watches starts nothing.
            keep_awake(done.clone(), Duration::from_secs(30));
            assert_eq!(metrics.num_alive_tasks(), 1);
            done.store(true, Ordering::Release);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(metrics.num_alive_tasks(), 0);
            // Not set: it gives up after its time.
            keep_awake(Arc::default(), Duration::from_millis(300));
            assert_eq!(metrics.num_alive_tasks(), 1);
            tokio::time::sleep(Duration::from_millis(1000)).await;
            assert_eq!(metrics.num_alive_tasks(), 0);
        });
    }

    #[test]
    fn sleeping_threads_are_woken_and_idle_ones_exit() {
        let r = Runner::new("t", 2, Duration::ZERO, Duration::from_millis(100));
        let (tx, rx) = mpsc::channel();
        for round in 0..3 {
            let tx = tx.clone();
            r.execute(move || tx.send(round).unwrap());
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), round);
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(r.inner.state.lock().threads, 0);
        let tx2 = tx.clone();
        r.execute(move || tx2.send(9).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 9);
    }
}
