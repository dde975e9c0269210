//! A single-thread, single-waiter notification for shard-local driver tasks
//! (the admission and batching drivers): `notify` sets a flag and wakes the
//! waiter; no allocation, no atomics (it lives in the shard's `Rc`s).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A single-thread notification: `notify` wakes the one `wait`er (or the next one).
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Wake the waiter (or let the next `wait` return at once).
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolve at the next (or a pending) `notify`.
    pub fn wait(&self) -> NotifyWait<'_> {
        NotifyWait(self)
    }
}

/// The future of [`Notify::wait`].
pub struct NotifyWait<'a>(&'a Notify);

impl Future for NotifyWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            Poll::Ready(())
        } else {
            *self.0.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}
