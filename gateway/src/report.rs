//! Shard → control reports: what the control thread needs from every shard to
//! score endpoints and split `maxConcurrentInferences`, on a channel of their
//! own rather than in the metrics (metrics are for observers; DESIGN.md).
//!
//! Each shard owns one [`ShardReport`] and is its only writer: per endpoint the
//! calls it has in flight, and its admission numbers (share, in use, demand,
//! waiting). It stores a value the moment it changes (a `Relaxed` store to a
//! cache line no other shard writes: a plain `mov` on x86, no read-modify-write,
//! no lock); the control thread and the admin views read the latest values
//! whenever they build a snapshot or answer. Like a single-producer ring of
//! capacity one that keeps the newest value, it never blocks either side.
//!
//! Lag (measured by `gateway/tests/e2e.rs::in_flight_shows_within_100ms`): a
//! request that starts streaming shows in `/debug/endpoints` at once and in
//! the scoring snapshot at the next control tick (`--scrape-interval`, 100 ms).
//! Before this channel both came from the metrics published every 500 ms, so
//! the snapshot could lag by 600 ms.
//!
//! Size: 4 bytes per endpoint per shard plus 64 for the admission numbers.

use std::sync::atomic::{AtomicU32, Ordering};

/// Admission numbers not reported (no `maxConcurrentInferences`).
const UNSET: u32 = u32::MAX;

/// One shard's report (written by that shard only).
#[repr(align(64))]
pub struct ShardReport {
    in_flight: Box<[AtomicU32]>,
    /// share, in use, demand, waiting; share = [`UNSET`] when there is no budget.
    admission: [AtomicU32; 4],
}

impl ShardReport {
    fn new(endpoints: usize) -> Self {
        ShardReport {
            in_flight: (0..endpoints).map(|_| AtomicU32::new(0)).collect(),
            admission: [
                AtomicU32::new(UNSET),
                AtomicU32::new(0),
                AtomicU32::new(0),
                AtomicU32::new(0),
            ],
        }
    }

    /// Calls this shard has in flight to `ep`.
    pub fn in_flight(&self, ep: usize) -> u32 {
        self.in_flight
            .get(ep)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// One more call in flight to `ep` (only the owning shard calls this).
    pub fn enter(&self, ep: usize) {
        if let Some(v) = self.in_flight.get(ep) {
            v.store(
                v.load(Ordering::Relaxed).saturating_add(1),
                Ordering::Relaxed,
            );
        }
    }

    /// One call fewer in flight to `ep` (only the owning shard calls this).
    pub fn leave(&self, ep: usize) {
        if let Some(v) = self.in_flight.get(ep) {
            v.store(
                v.load(Ordering::Relaxed).saturating_sub(1),
                Ordering::Relaxed,
            );
        }
    }

    /// Report the shard's admission numbers.
    pub fn set_admission(&self, share: u32, in_use: u32, demand: u32, waiting: u32) {
        let a = &self.admission;
        a[0].store(share.min(UNSET - 1), Ordering::Relaxed);
        a[1].store(in_use, Ordering::Relaxed);
        a[2].store(demand, Ordering::Relaxed);
        a[3].store(waiting, Ordering::Relaxed);
    }

    /// (share, in use, demand, waiting), when reported.
    pub fn admission(&self) -> Option<(u32, u32, u32, u32)> {
        let a = &self.admission;
        let share = a[0].load(Ordering::Relaxed);
        (share != UNSET).then(|| {
            (
                share,
                a[1].load(Ordering::Relaxed),
                a[2].load(Ordering::Relaxed),
                a[3].load(Ordering::Relaxed),
            )
        })
    }
}

/// Per endpoint index (up to a capacity fixed at start): whether a reload
/// retired it (no backend names it any more). The control thread's loops for
/// a retired endpoint idle until it comes back. Written by the reload thread.
pub struct Retired(Box<[std::sync::atomic::AtomicBool]>);

impl Retired {
    /// Flags for `capacity` endpoints, none retired.
    pub fn new(capacity: usize) -> Self {
        Retired(
            (0..capacity)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        )
    }

    /// Whether `ep` is retired (false beyond the capacity).
    pub fn get(&self, ep: usize) -> bool {
        self.0.get(ep).is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Mark `ep` retired or live again.
    pub fn set(&self, ep: usize, retired: bool) {
        if let Some(f) = self.0.get(ep) {
            f.store(retired, Ordering::Relaxed);
        }
    }
}

/// Per endpoint: the generation of its control-thread loops (scrape, model
/// poll, health check). Starting an endpoint's loops again (a reload changed
/// its health check or its TLS) makes the older ones end at their next turn.
/// Control thread only.
#[derive(Clone, Default)]
pub struct Epochs(std::rc::Rc<std::cell::RefCell<Vec<u32>>>);

impl Epochs {
    /// A new generation for `ep`'s loops; earlier ones stop being current.
    pub fn next(&self, ep: usize) -> LoopEpoch {
        let mut v = self.0.borrow_mut();
        if v.len() <= ep {
            v.resize(ep + 1, 0);
        }
        let mine = v.get(ep).map_or(0, |e| e.wrapping_add(1));
        if let Some(e) = v.get_mut(ep) {
            *e = mine;
        }
        LoopEpoch {
            epochs: self.clone(),
            ep,
            mine,
        }
    }
}

/// One loop's generation ([`Epochs`]).
#[derive(Clone)]
pub struct LoopEpoch {
    epochs: Epochs,
    ep: usize,
    mine: u32,
}

impl LoopEpoch {
    /// Whether this loop is still its endpoint's current one.
    pub fn current(&self) -> bool {
        self.epochs.0.borrow().get(self.ep) == Some(&self.mine)
    }
}

/// Every shard's report.
pub struct Reports {
    shards: Box<[ShardReport]>,
    endpoints: usize,
}

impl Reports {
    /// Reports for `shards` shards over `endpoints` endpoints, all zero.
    pub fn new(shards: usize, endpoints: usize) -> Self {
        Reports {
            shards: (0..shards).map(|_| ShardReport::new(endpoints)).collect(),
            endpoints,
        }
    }

    /// Shard `id`'s report.
    pub fn shard(&self, id: usize) -> Option<&ShardReport> {
        self.shards.get(id)
    }

    /// How many shards report.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// In-flight calls per endpoint, summed over the shards.
    pub fn endpoint_in_flight(&self) -> Vec<u32> {
        let mut out = vec![0u32; self.endpoints];
        for s in self.shards.iter() {
            for (o, v) in out.iter_mut().zip(s.in_flight.iter()) {
                *o = o.saturating_add(v.load(Ordering::Relaxed));
            }
        }
        out
    }

    /// Per shard: (share, in use, demand) when the shard reported admission.
    pub fn admission(&self) -> Vec<Option<(u32, u32, u32)>> {
        self.shards
            .iter()
            .map(|s| s.admission().map(|(a, b, c, _)| (a, b, c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_sums_over_shards_and_never_underflows() {
        let r = Reports::new(2, 3);
        let (a, b) = (r.shard(0).expect("shard 0"), r.shard(1).expect("shard 1"));
        a.enter(1);
        a.enter(1);
        b.enter(1);
        b.enter(2);
        b.leave(0);
        a.enter(7); // unknown endpoint: ignored
        assert_eq!(r.endpoint_in_flight(), vec![0, 3, 1]);
        a.leave(1);
        assert_eq!(a.in_flight(1), 1);
        assert!(r.shard(2).is_none());
    }

    #[test]
    fn admission_is_absent_until_reported() {
        let r = Reports::new(2, 1);
        assert_eq!(r.admission(), vec![None, None]);
        r.shard(1).expect("shard 1").set_admission(4, 2, 5, 3);
        assert_eq!(r.admission(), vec![None, Some((4, 2, 5))]);
        assert_eq!(r.shard(1).expect("shard 1").admission(), Some((4, 2, 5, 3)));
    }
}
