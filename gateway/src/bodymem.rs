//! The per-shard budget of buffered request-body memory.
//!
//! Request bodies are buffered whole (the route depends on the body's `model`),
//! so without a cap a few hundred clients each sending most of a 32 MiB body
//! exhaust memory. `--max-buffered-body-bytes` (default 256 MiB) is split evenly
//! over the shards; each shard holds its share here. A request takes a
//! [`BodyGrant`] for its body *before* any memory is reserved for it — the whole
//! `Content-Length` up front, a chunked body in steps as it grows — and the grant
//! gives the bytes back when it is dropped, which `proxy` does when the
//! request ends (every exit path, the future's drop included). A request that
//! cannot get budget is refused at once (no waiting): 503 with `Retry-After: 1`
//! (`body_budget_exhausted`) while other bodies hold the share, 413 when its body
//! is larger than the whole share. Plain `Cell`s: a shard's budget is touched only
//! by its own thread, with no lock and no allocation.

use std::cell::Cell;

/// Default `--max-buffered-body-bytes`: 256 MiB over all shards.
pub const DEFAULT_TOTAL: u64 = 256 * 1024 * 1024;

/// One shard's share of the buffered-body budget.
#[derive(Debug)]
pub struct BodyBudget {
    share: u64,
    used: Cell<u64>,
}

/// Why a body could not get budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Other bodies hold the share now; retry later (503).
    Exhausted,
    /// The body is larger than the whole share: it can never be buffered (413).
    OverShare {
        /// The shard's share, in bytes.
        share: u64,
    },
}

impl BodyBudget {
    /// A shard's budget of `share` bytes.
    pub fn new(share: u64) -> Self {
        BodyBudget {
            share,
            used: Cell::new(0),
        }
    }

    /// Each shard's share of `total` over `shards` shards (at least 1 byte).
    pub fn share_of(total: u64, shards: usize) -> u64 {
        (total / (shards.max(1) as u64)).max(1)
    }

    /// This shard's share, in bytes.
    pub fn share(&self) -> u64 {
        self.share
    }

    /// Bytes held by grants now.
    pub fn used(&self) -> u64 {
        self.used.get()
    }

    /// An empty grant, to grow with [`BodyGrant::grow_to`].
    pub fn empty(&self) -> BodyGrant<'_> {
        BodyGrant {
            budget: self,
            bytes: 0,
        }
    }

    /// A grant of `n` bytes, or why not.
    pub fn take(&self, n: u64) -> Result<BodyGrant<'_>, Refusal> {
        let mut g = self.empty();
        g.grow_to(n)?;
        Ok(g)
    }

    fn reserve(&self, n: u64) -> Result<(), Refusal> {
        let used = self.used.get();
        match used.checked_add(n) {
            Some(t) if t <= self.share => {
                self.used.set(t);
                Ok(())
            }
            _ if n > self.share => Err(Refusal::OverShare { share: self.share }),
            _ => Err(Refusal::Exhausted),
        }
    }
}

/// Bytes of a shard's [`BodyBudget`] held by one request; given back on drop.
#[derive(Debug)]
pub struct BodyGrant<'b> {
    budget: &'b BodyBudget,
    bytes: u64,
}

impl BodyGrant<'_> {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Hold `n` bytes in all (no-op when already holding that many). On refusal
    /// the grant keeps what it held.
    pub fn grow_to(&mut self, n: u64) -> Result<(), Refusal> {
        if n <= self.bytes {
            return Ok(());
        }
        let more = n - self.bytes;
        match self.budget.reserve(more) {
            Ok(()) => {
                self.bytes = n;
                Ok(())
            }
            // Larger than the share in all, though the step alone fits.
            Err(Refusal::Exhausted) if n > self.budget.share => Err(Refusal::OverShare {
                share: self.budget.share,
            }),
            Err(r) => Err(r),
        }
    }
}

impl Drop for BodyGrant<'_> {
    fn drop(&mut self) {
        let b = self.budget;
        b.used.set(b.used.get().saturating_sub(self.bytes));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn grants_hold_the_share_and_give_it_back_on_drop() {
        let b = BodyBudget::new(100);
        let a = b.take(60).unwrap();
        assert_eq!(b.used(), 60);
        assert_eq!(b.take(41).unwrap_err(), Refusal::Exhausted);
        assert_eq!(b.take(101).unwrap_err(), Refusal::OverShare { share: 100 });
        let c = b.take(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
        // Zero-byte grants are free.
        let z = b.take(0).unwrap();
        assert_eq!((z.bytes(), b.used()), (0, 0));
    }

    #[test]
    fn a_growing_grant_keeps_what_it_held_when_refused() {
        let b = BodyBudget::new(100);
        let other = b.take(50).unwrap();
        let mut g = b.empty();
        g.grow_to(30).unwrap();
        g.grow_to(20).unwrap();
        assert_eq!(g.bytes(), 30);
        assert_eq!(g.grow_to(60).unwrap_err(), Refusal::Exhausted);
        assert_eq!((g.bytes(), b.used()), (30, 80));
        assert_eq!(
            g.grow_to(120).unwrap_err(),
            Refusal::OverShare { share: 100 }
        );
        drop(other);
        g.grow_to(100).unwrap();
        drop(g);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn shares_split_the_total() {
        assert_eq!(BodyBudget::share_of(DEFAULT_TOTAL, 2), 128 * 1024 * 1024);
        assert_eq!(BodyBudget::share_of(10, 0), 10);
        assert_eq!(BodyBudget::share_of(1, 4), 1);
    }
}
