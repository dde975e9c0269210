//! Client-connection bookkeeping of one shard: the connection cap, the set of
//! idle keep-alive connections that can be told to close when room is needed,
//! the accept loop's back-off at descriptor exhaustion, and the rate limit of its
//! warnings. Single-threaded (it lives in the shard's `Rc`): no locks, no atomics.
//!
//! - **Cap** (`--max-connections`, a total split evenly over the shards; default
//!   derived from `RLIMIT_NOFILE` by [`default_max_connections`]): at the cap, a
//!   new connection first makes the longest-idle keep-alive connection close and
//!   is served; with none idle it is accepted and closed at once.
//! - **Idle set** ([`IdleSet`]): a connection waiting for its next request (past
//!   the 50 ms hot wait) holds a slot with its idle ticket and waker. Shedding
//!   scans the slots for the oldest tickets (O(slots), only at the cap or at
//!   EMFILE) and wakes them. Slots and the free list grow to the peak number of
//!   idle connections and are reused, so entering and leaving idle allocates
//!   nothing once warm.
//! - **Kept hot** ([`Conns::keep_hot`]): past its hot wait a quiet connection
//!   keeps its receive armed into its 16 KiB read buffer, with its ~7.5 KiB
//!   request state, until its next request or the idle timeout, while the shard
//!   keeps fewer than its share of `--client-hot-conns` (1,024 in total by
//!   default: ≈ 24 MiB). Such a connection's next request costs one receive, not
//!   the switch from idle and back (a cancel, a readiness poll, a second receive,
//!   the state's allocation). A kept connection is in the idle set too.
//! - **Back-off** ([`Backoff`]): after EMFILE/ENFILE the accept loop sheds up to
//!   [`SHED_ON_EMFILE`] (16) idle connections and pauses 10 ms, doubling per
//!   consecutive failure up to 1 s; a successful accept resets it.
//! - **Warnings** ([`LogLimiter`]): at most one line per second per shard, with
//!   the count of the ones left out.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Idle connections shed per accept failure at descriptor exhaustion: 16.
pub const SHED_ON_EMFILE: usize = 16;

/// Descriptors kept back from the client-connection cap for everything else:
/// 64 plus, per shard, its io_uring/eventfd descriptors and one listener per
/// served port, plus one scrape connection per endpoint ([`default_max_connections`]).
pub const RESERVED_FDS: u64 = 64;

/// The default total cap on client connections for a process allowed `nofile`
/// descriptors: what is left after [`RESERVED_FDS`], `shards × (ports + 4)`
/// and one per endpoint, halved so that every client connection can hold one
/// upstream connection too; at least one per shard.
pub fn default_max_connections(nofile: u64, shards: usize, ports: usize, endpoints: usize) -> u64 {
    let reserved = RESERVED_FDS
        .saturating_add((shards as u64).saturating_mul(ports as u64 + 4))
        .saturating_add(endpoints as u64);
    (nofile.saturating_sub(reserved) / 2).max(shards as u64)
}

/// Shard `id`'s part of a `total` cap split over `shards` (the remainder goes to
/// the first shards; at least one each).
pub fn per_shard_cap(total: u64, shards: usize, id: usize) -> usize {
    let shards = shards.max(1) as u64;
    let base = total / shards;
    let extra = u64::from((id as u64) < total % shards);
    usize::try_from((base + extra).max(1)).unwrap_or(usize::MAX)
}

struct Slot {
    /// Idle ticket (smaller = idle longer); 0 = free slot.
    ticket: u64,
    /// Told to close.
    close: bool,
    waker: Option<Waker>,
}

/// The idle keep-alive connections of one shard, oldest first on demand.
#[derive(Default)]
pub struct IdleSet {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    next_ticket: Cell<u64>,
    /// Idle and not yet told to close.
    idle: Cell<usize>,
}

impl IdleSet {
    /// Register a connection as idle until the returned guard drops.
    pub fn enter(&self) -> IdleGuard<'_> {
        let ticket = self.next_ticket.get() + 1;
        self.next_ticket.set(ticket);
        let slot = Slot {
            ticket,
            close: false,
            waker: None,
        };
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i] = slot;
                i
            }
            None => {
                slots.push(slot);
                slots.len() - 1
            }
        };
        self.idle.set(self.idle.get() + 1);
        IdleGuard { set: self, index }
    }

    /// Idle connections not yet told to close.
    pub fn idle(&self) -> usize {
        self.idle.get()
    }

    /// Tell up to `n` of the longest-idle connections to close; returns how many.
    pub fn shed_oldest(&self, n: usize) -> usize {
        let mut slots = self.slots.borrow_mut();
        let mut shed = 0;
        while shed < n {
            let oldest = slots
                .iter_mut()
                .filter(|s| s.ticket != 0 && !s.close)
                .min_by_key(|s| s.ticket);
            let Some(s) = oldest else { break };
            s.close = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            shed += 1;
        }
        self.idle.set(self.idle.get() - shed);
        shed
    }
}

/// A connection's place in the [`IdleSet`]; leaving idle = dropping it.
pub struct IdleGuard<'a> {
    set: &'a IdleSet,
    index: usize,
}

impl IdleGuard<'_> {
    /// Resolve when the shard tells this connection to close.
    pub fn closed(&self) -> Closed<'_> {
        Closed(self)
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        let mut slots = self.set.slots.borrow_mut();
        let slot = &mut slots[self.index];
        if !slot.close {
            self.set.idle.set(self.set.idle.get() - 1);
        }
        *slot = Slot {
            ticket: 0,
            close: false,
            waker: None,
        };
        self.set.free.borrow_mut().push(self.index);
    }
}

/// The future of [`IdleGuard::closed`].
pub struct Closed<'a>(&'a IdleGuard<'a>);

impl Future for Closed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = self.0.set.slots.borrow_mut();
        let slot = &mut slots[self.0.index];
        if slot.close {
            return Poll::Ready(());
        }
        match &mut slot.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The accept loop's pause after descriptor exhaustion: 10 ms, doubling per
/// consecutive failure, at most 1 s.
#[derive(Debug, Default)]
pub struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// First pause.
    pub const FIRST: Duration = Duration::from_millis(10);
    /// Longest pause.
    pub const MAX: Duration = Duration::from_secs(1);

    /// The pause after one more failure.
    pub fn fail(&mut self) -> Duration {
        let d = self.next.unwrap_or(Self::FIRST);
        self.next = Some((d * 2).min(Self::MAX));
        d
    }

    /// An accept succeeded: start over.
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// At most one log line per [`LogLimiter::EVERY`]; counts what it holds back.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// One line per second.
    pub const EVERY: Duration = Duration::from_secs(1);

    /// Whether to log now; `Some(n)`: yes, and `n` lines were held back since
    /// the last one.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < Self::EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// One shard's client connections: the cap, the idle set and the budget of
/// quiet connections kept hot.
pub struct Conns {
    /// Most client connections this shard keeps open.
    pub cap: usize,
    /// Client connections open now.
    pub open: Cell<usize>,
    /// Idle keep-alive connections.
    pub idle: IdleSet,
    /// Most quiet connections kept hot past their hot wait (this shard's share
    /// of `--client-hot-conns`).
    pub hot_cap: usize,
    /// Quiet connections kept hot now.
    hot: Cell<usize>,
}

impl Conns {
    /// No connections yet, at most `cap` open and `hot_cap` kept hot.
    pub fn new(cap: usize, hot_cap: usize) -> Self {
        Conns {
            cap: cap.max(1),
            open: Cell::new(0),
            idle: IdleSet::default(),
            hot_cap,
            hot: Cell::new(0),
        }
    }

    /// Keep a quiet connection hot past its hot wait (its receive stays armed
    /// into its read buffer) while fewer than [`Conns::hot_cap`] are; `None` at
    /// the budget: the connection gives its buffers back and goes idle. A kept
    /// connection is also idle, so it is closed first when room is needed.
    pub fn keep_hot(&self) -> Option<KeptHot<'_>> {
        let n = self.hot.get();
        if n >= self.hot_cap {
            return None;
        }
        self.hot.set(n + 1);
        Some(KeptHot {
            idle: self.idle.enter(),
            hot: &self.hot,
        })
    }

    /// Quiet connections kept hot now.
    pub fn kept_hot(&self) -> usize {
        self.hot.get()
    }
}

/// A quiet connection's place in the hot budget (and in the idle set); given
/// back when it drops.
pub struct KeptHot<'a> {
    idle: IdleGuard<'a>,
    hot: &'a Cell<usize>,
}

impl KeptHot<'_> {
    /// Resolve when the shard tells this connection to close.
    pub fn closed(&self) -> Closed<'_> {
        self.idle.closed()
    }
}

impl Drop for KeptHot<'_> {
    fn drop(&mut self) {
        self.hot.set(self.hot.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_closed(g: &IdleGuard<'_>, waker: &Waker) -> bool {
        let mut f = std::pin::pin!(g.closed());
        f.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
    }

    #[test]
    fn shedding_closes_the_longest_idle_first_and_wakes_them() {
        let set = IdleSet::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let a = set.enter();
        let b = set.enter();
        let c = set.enter();
        for g in [&a, &b, &c] {
            assert!(!poll_closed(g, &waker));
        }
        assert_eq!(set.idle(), 3);
        // `a` leaves idle (a request came); `b` is now the oldest.
        drop(a);
        assert_eq!(set.idle(), 2);
        let d = set.enter();
        assert_eq!(set.shed_oldest(1), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll_closed(&b, &waker));
        assert!(!poll_closed(&c, &waker));
        assert_eq!(set.idle(), 2);
        assert_eq!(set.shed_oldest(5), 2);
        assert!(poll_closed(&c, &waker) && poll_closed(&d, &waker));
        assert_eq!(set.idle(), 0);
        assert_eq!(set.shed_oldest(1), 0);
        drop((b, c, d));
        assert_eq!(set.idle(), 0);
        // Slots are reused (`d` took `a`'s).
        let _e = set.enter();
        assert_eq!(set.slots.borrow().len(), 3);
        assert_eq!(set.idle(), 1);
    }

    #[test]
    fn connections_are_kept_hot_up_to_the_budget_and_shed_as_idle_ones() {
        let conns = Conns::new(8, 2);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let a = conns.keep_hot().expect("room for a");
        let b = conns.keep_hot().expect("room for b");
        // At the budget: the next quiet connection goes idle instead.
        assert!(conns.keep_hot().is_none());
        assert_eq!(conns.kept_hot(), 2);
        let plain = conns.idle.enter();
        // Kept connections are idle ones too (the first to close at the cap).
        assert_eq!(conns.idle.idle(), 3);
        let closed = |k: &KeptHot<'_>| {
            let mut f = std::pin::pin!(k.closed());
            f.as_mut().poll(&mut Context::from_waker(&waker)).is_ready()
        };
        assert!(!closed(&a) && !closed(&b));
        assert_eq!(conns.idle.shed_oldest(1), 1);
        assert!(closed(&a) && !closed(&b));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // A kept connection leaving (its next request, or closed) frees its place.
        drop(a);
        assert_eq!(conns.kept_hot(), 1);
        let c = conns.keep_hot().expect("a place was given back");
        assert!(conns.keep_hot().is_none());
        drop((b, c, plain));
        assert_eq!((conns.kept_hot(), conns.idle.idle()), (0, 0));
        // A budget of 0 keeps none.
        assert!(Conns::new(8, 0).keep_hot().is_none());
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..9).map(|_| b.fail().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.fail(), Backoff::FIRST);
    }

    #[test]
    fn log_limiter_lets_one_line_a_second_through_and_counts_the_rest() {
        let mut l = LogLimiter::default();
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        for i in 1..=1000 {
            assert_eq!(l.allow(t + Duration::from_micros(i)), None);
        }
        assert_eq!(l.allow(t + Duration::from_millis(1001)), Some(1000));
        assert_eq!(l.allow(t + Duration::from_millis(1002)), None);
    }

    #[test]
    fn caps_fit_the_descriptor_limit_and_split_over_shards() {
        // ulimit -n 1024, 2 shards, 1 port, 3 endpoints: (1024 - 64 - 10 - 3) / 2.
        assert_eq!(default_max_connections(1024, 2, 1, 3), 473);
        // Tiny limits still allow one connection per shard.
        assert_eq!(default_max_connections(10, 4, 1, 1), 4);
        let split: Vec<usize> = (0..3).map(|i| per_shard_cap(10, 3, i)).collect();
        assert_eq!(split, [4, 3, 3]);
        assert_eq!(per_shard_cap(1, 4, 3), 1);
    }
}
