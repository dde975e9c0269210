//! The open-loop backlog of one worker thread: requests that are due but wait for a
//! free connection, in intended-start order.
//!
//! Single-threaded (`Rc`/`RefCell`, no atomics). Bounded: a push onto a full
//! backlog fails and the caller counts the request as dropped. A push wakes exactly
//! one idle connection (no thundering herd); each connection is a numbered slot
//! with at most one registered waker, so a wake is never spent on a connection
//! that is busy elsewhere. Capacity is reserved up front (at most 4,096 entries,
//! more only if the backlog really grows), so steady-state pushes do not allocate.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Instant;

/// One request waiting for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Its intended start.
    pub start: Instant,
    /// Whether it counts (false during the warm-up).
    pub counted: bool,
}

#[derive(Debug)]
struct Inner {
    jobs: VecDeque<Job>,
    max: usize,
    closed: bool,
    /// Slots that registered a waker, oldest first (may hold stale ids).
    idle: VecDeque<usize>,
    wakers: Vec<Option<Waker>>,
}

/// A bounded FIFO of jobs shared by a worker's connection tasks.
#[derive(Debug)]
pub struct JobQueue {
    inner: RefCell<Inner>,
}

impl JobQueue {
    /// A queue holding at most `max` jobs, popped by `slots` connections.
    pub fn new(max: usize, slots: usize) -> JobQueue {
        JobQueue {
            inner: RefCell::new(Inner {
                jobs: VecDeque::with_capacity(max.clamp(1, 4096)),
                max: max.max(1),
                closed: false,
                idle: VecDeque::with_capacity(slots * 2),
                wakers: vec![None; slots],
            }),
        }
    }

    /// Append a job; `false` (and nothing queued) when the backlog is full.
    pub fn push(&self, job: Job) -> bool {
        let mut q = self.inner.borrow_mut();
        if q.jobs.len() >= q.max {
            return false;
        }
        q.jobs.push_back(job);
        while let Some(slot) = q.idle.pop_front() {
            if let Some(w) = q.wakers.get_mut(slot).and_then(Option::take) {
                w.wake();
                break;
            }
        }
        true
    }

    /// No more jobs will come: idle connections are woken and `pop` returns `None`
    /// once the queue is empty.
    pub fn close(&self) {
        let mut q = self.inner.borrow_mut();
        q.closed = true;
        q.idle.clear();
        for w in q.wakers.iter_mut().filter_map(Option::take) {
            w.wake();
        }
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.inner.borrow().jobs.len()
    }

    /// Whether no job is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next job for connection `slot`, waiting for one if needed; `None` once
    /// the queue is closed and empty.
    pub async fn pop(&self, slot: usize) -> Option<Job> {
        poll_fn(|cx| {
            let mut q = self.inner.borrow_mut();
            if let Some(job) = q.jobs.pop_front() {
                // A waker left from an earlier wait must not absorb a later push.
                if let Some(w) = q.wakers.get_mut(slot) {
                    *w = None;
                }
                return Poll::Ready(Some(job));
            }
            if q.closed {
                return Poll::Ready(None);
            }
            let fresh = match q.wakers.get_mut(slot) {
                Some(Some(w)) => {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                    false
                }
                Some(entry) => {
                    *entry = Some(cx.waker().clone());
                    true
                }
                None => return Poll::Ready(None),
            };
            if fresh {
                q.idle.push_back(slot);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn job(t0: Instant, counted: bool) -> Job {
        Job { start: t0, counted }
    }

    #[test]
    fn fifo_bounded_and_closing() {
        let t0 = Instant::now();
        let q = JobQueue::new(2, 1);
        assert!(q.push(job(t0, true)));
        assert!(q.push(job(t0, false)));
        assert!(!q.push(job(t0, true)), "full");
        assert_eq!(q.len(), 2);
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(c.clone());
        let mut cx = Context::from_waker(&w);
        let mut p = pin!(q.pop(0));
        assert_eq!(p.as_mut().poll(&mut cx), Poll::Ready(Some(job(t0, true))));
        let mut p = pin!(q.pop(0));
        assert_eq!(p.as_mut().poll(&mut cx), Poll::Ready(Some(job(t0, false))));
        assert!(q.is_empty());
        let mut p = pin!(q.pop(0));
        assert_eq!(p.as_mut().poll(&mut cx), Poll::Pending);
        q.close();
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        assert_eq!(p.as_mut().poll(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_push_wakes_one_waiting_connection_not_a_busy_one() {
        let t0 = Instant::now();
        let q = JobQueue::new(10, 2);
        let (ca, cb) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(ca.clone()), Waker::from(cb.clone()));
        let (mut cxa, mut cxb) = (Context::from_waker(&wa), Context::from_waker(&wb));
        // Both wait.
        let mut pa = pin!(q.pop(0));
        let mut pb = pin!(q.pop(1));
        assert!(pa.as_mut().poll(&mut cxa).is_pending());
        assert!(pb.as_mut().poll(&mut cxb).is_pending());
        // One push wakes only A.
        assert!(q.push(job(t0, true)));
        assert_eq!(
            (ca.0.load(Ordering::SeqCst), cb.0.load(Ordering::SeqCst)),
            (1, 0)
        );
        // B is polled spuriously first and takes the job; A finds nothing and waits
        // again behind B's stale registration.
        assert!(pb.as_mut().poll(&mut cxb).is_ready());
        assert!(pa.as_mut().poll(&mut cxa).is_pending());
        // B is now busy: the next push must wake A, not B.
        assert!(q.push(job(t0, true)));
        assert_eq!(
            (ca.0.load(Ordering::SeqCst), cb.0.load(Ordering::SeqCst)),
            (2, 0)
        );
        assert!(pa.as_mut().poll(&mut cxa).is_ready());
    }
}
