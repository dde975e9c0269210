//! Panic containment for the tasks a shard spawns per client connection, per
//! HTTP/2 stream, per batch and per upstream HTTP/2 connection.
//!
//! monoio 0.2 polls spawned tasks inside `block_on` without catching a panic,
//! so one task that panics would unwind through the runtime and end its shard
//! thread with every connection the shard held (and, with one shard, the
//! whole gateway, with exit status 0). [`contained`] polls such a task under
//! `catch_unwind` instead: a panic ends that task only. Its future is then
//! dropped as a finished one is, so its socket closes and its guards give
//! back what they hold (in-flight counts, admission permits, the connection
//! gauge). The panic is counted in `gateway_task_panics_total{shard,task}`
//! and logged (one line a second per shard at most, with the count held
//! back; the standard panic message with its source line goes to stderr
//! first), and the shard goes on serving its other connections.
//!
//! What stays fatal: a panic in one of a shard's own loops (accept, metrics
//! publication, batch driver). [`FatalOnUnwind`], held by the shard's main
//! future, sees it unwind: the other shards drain as on `SIGTERM` and the
//! process exits with status 70 (`EX_SOFTWARE`), so a supervisor restarts a
//! gateway that would otherwise run short of a core.
//!
//! Cost: `catch_unwind` costs nothing until a panic (table-driven unwinding);
//! the wrapper adds one alignment unit to each task's future (a unit test
//! holds it there; the same wrapper as an `async fn` doubled the future).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use shardgate_runtime::Shutdown;

use crate::conns::LogLimiter;

/// The kinds of contained task, as `gateway_task_panics_total{task}` names them.
pub const TASKS: [&str; 4] = ["connection", "stream", "batch", "upstream_connection"];

/// A kind of contained task (an index into [`TASKS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// A client connection (HTTP/1.1, HTTP/2 or TLS), from accept to close.
    Connection = 0,
    /// One HTTP/2 stream: a gRPC call or an HTTP request.
    Stream = 1,
    /// One micro-batch's upstream call and its members' answers.
    Batch = 2,
    /// The driver of a pooled upstream HTTP/2 connection.
    UpstreamConnection = 3,
}

thread_local! {
    /// Panics caught on this thread (a shard), per [`Task`].
    static PANICS: [Cell<u64>; 4] = const { [const { Cell::new(0) }; 4] };
    static LOG: RefCell<LogLimiter> = RefCell::new(LogLimiter::default());
}

/// Set once a shard's own loop panicked: the process's exit status is 70.
static SHARD_PANICKED: AtomicBool = AtomicBool::new(false);

/// Runs `task` to its end; a panic inside it ends it there (counted, logged)
/// instead of unwinding into the shard's runtime.
///
/// A combinator rather than an `async fn`: an `async fn` would keep `task`
/// both as its argument and inside the future it awaits, doubling what
/// `monoio::spawn` copies per task; this one is `task` plus a few bytes.
pub fn contained<F: Future<Output = ()>>(kind: Task, task: F) -> impl Future<Output = ()> {
    AssertUnwindSafe(task).catch_unwind().map(move |ended| {
        if let Err(payload) = ended {
            report(kind, payload.as_ref());
        }
    })
}

/// Counts and logs a contained panic.
fn report(kind: Task, payload: &(dyn std::any::Any + Send)) {
    PANICS.with(|p| p[kind as usize].set(p[kind as usize].get() + 1));
    let held_back = LOG.with(|l| l.borrow_mut().allow(std::time::Instant::now()));
    if let Some(held_back) = held_back {
        tracing::error!(
            task = TASKS[kind as usize],
            panic = message(payload),
            held_back,
            "a task panicked: it was ended and the shard goes on (a bug: please report it)"
        );
    }
}

/// This thread's contained panics so far, per [`Task`] (for the metrics).
pub fn panics() -> [u64; 4] {
    PANICS.with(|p| std::array::from_fn(|i| p[i].get()))
}

/// A panic payload's message (`panic!` with a literal or a format).
fn message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Held by a shard's main future: dropped while its thread unwinds (a panic
/// outside [`contained`] tasks), it drains the other shards and marks the
/// process to exit with status 70 ([`shard_panicked`]).
pub struct FatalOnUnwind {
    /// The shard's id, for the log.
    pub shard: usize,
    /// The gateway's drain trigger.
    pub shutdown: Shutdown,
}

impl Drop for FatalOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            SHARD_PANICKED.store(true, Ordering::Release);
            tracing::error!(
                shard = self.shard,
                "a shard panicked outside a connection: draining the other shards, then exiting with status 70"
            );
            self.shutdown.trigger();
        }
    }
}

/// Whether a shard's own loop panicked ([`FatalOnUnwind`]).
pub fn shard_panicked() -> bool {
    SHARD_PANICKED.load(Ordering::Acquire)
}

/// Debug builds only: panics when a request's path is the value of
/// `SHARDGATE_DEBUG_PANIC_PATH` (read once), so that tests reach the
/// containment through real connections (`gateway/tests/e2e_limits.rs`).
/// Release builds compile it to nothing.
#[cfg(debug_assertions)]
pub fn debug_panic_point(path: &str) {
    static PATH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = PATH.get_or_init(|| std::env::var("SHARDGATE_DEBUG_PANIC_PATH").ok());
    if at.as_deref() == Some(path) {
        panic!("injected panic at {path} (SHARDGATE_DEBUG_PANIC_PATH, debug builds only)");
    }
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn debug_panic_point(_path: &str) {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::rc::Rc;

    use super::*;

    fn run<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Gives a count back when dropped (as a connection's guards do).
    struct Gauge(Rc<Cell<i32>>);
    impl Drop for Gauge {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }

    #[test]
    fn a_panicking_task_ends_alone_its_guards_give_back_and_it_is_counted() {
        let before = panics();
        let open = Rc::new(Cell::new(0));
        let served = Rc::new(Cell::new(0));
        run({
            let open = open.clone();
            let served = served.clone();
            async move {
                let mut tasks = Vec::new();
                for i in 0..3 {
                    let open = open.clone();
                    let served = served.clone();
                    open.set(open.get() + 1);
                    let gauge = Gauge(open.clone());
                    tasks.push(monoio::spawn(contained(Task::Connection, async move {
                        let _gauge = gauge;
                        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                        if i == 1 {
                            panic!("injected in task {i}");
                        }
                        served.set(served.get() + 1);
                    })));
                }
                for t in tasks {
                    t.await;
                }
            }
        });
        assert_eq!(served.get(), 2, "the other tasks ran to their end");
        assert_eq!(open.get(), 0, "the panicked task's guard gave back");
        let after = panics();
        assert_eq!(after[Task::Connection as usize], before[0] + 1);
        assert_eq!(after[1..], before[1..]);
    }

    #[test]
    fn a_panic_outside_contained_tasks_drains_the_gateway_and_marks_status_70() {
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        // A shard thread whose own (uncontained) task panics: the panic
        // unwinds out of the runtime and drops the main future's guard.
        let shard = std::thread::spawn(move || {
            run(async move {
                let _fatal = FatalOnUnwind {
                    shard: 0,
                    shutdown: trigger,
                };
                monoio::spawn(async { panic!("injected in a shard loop") });
                monoio::time::sleep(std::time::Duration::from_secs(30)).await;
            })
        });
        assert!(shard.join().is_err(), "the panic ended the thread");
        assert!(
            shutdown.is_draining(),
            "the other shards were told to drain"
        );
        assert!(shard_panicked());
    }

    #[test]
    fn the_wrapper_adds_one_alignment_unit_to_the_task() {
        let task = async {
            let buf = [0u8; 1000];
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            std::hint::black_box(&buf);
        };
        let alone = std::mem::size_of_val(&task);
        let align = std::mem::align_of_val(&task);
        async fn as_async_fn<F: Future<Output = ()>>(task: F) {
            let _ = AssertUnwindSafe(task).catch_unwind().await;
        }
        let naive = std::mem::size_of_val(&as_async_fn(async {
            let buf = [0u8; 1000];
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            std::hint::black_box(&buf);
        }));
        let wrapped = std::mem::size_of_val(&contained(Task::Stream, task));
        eprintln!("{alone} bytes alone (align {align}), {wrapped} wrapped, {naive} as an async fn");
        assert!(
            wrapped <= alone + align && naive >= 2 * alone,
            "{alone} bytes alone, {wrapped} wrapped"
        );
    }

    #[test]
    fn messages_of_both_payload_kinds_are_read() {
        let s: Box<dyn std::any::Any + Send> = Box::new("literal");
        assert_eq!(message(s.as_ref()), "literal");
        let s: Box<dyn std::any::Any + Send> = Box::new(format!("n = {}", 3));
        assert_eq!(message(s.as_ref()), "n = 3");
        let s: Box<dyn std::any::Any + Send> = Box::new(7u8);
        assert_eq!(message(s.as_ref()), "(not a string)");
    }
}
