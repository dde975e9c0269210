//! A synthetic day-night demand with bursts, replayed on a virtual clock, to
//! measure the forecast: its error (MAPE) at each horizon, and how far ahead
//! of the actual demand its desired replicas rise (read as an HPA reads a
//! metric: with its default 5-minute scale-down stabilization, so one noisy
//! sample does not count as a change of mind).
//!
//! The demand (requests/s, one sample per `interval`): a daily cycle between
//! `night` and `peak` (a raised cosine, lowest at midnight), ±`noise`
//! (deterministic, seeded), and `bursts_per_day` bursts of +`burst` lasting
//! 5 minutes at seeded random times. Each request is assumed to stay
//! `latency` seconds in the system and a replica to run `capacity` at once.

use crate::{desired_replicas, littles_law, HoltWinters, Params};

/// An HPA's default scale-down stabilization window, seconds: the replay
/// reads the forecast series as an HPA would, as its maximum over this window.
pub const STABILIZATION_SECS: f64 = 300.0;

/// The synthetic workload and the replay settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    /// Seconds per sample (the autoscaling interval).
    pub interval: f64,
    /// Days replayed; the first one trains the forecast and is not scored.
    pub days: u32,
    /// Requests/s at night.
    pub night: f64,
    /// Requests/s at the daily peak.
    pub peak: f64,
    /// Relative noise per sample (0.05 = ±5 %).
    pub noise: f64,
    /// Bursts per day.
    pub bursts_per_day: u32,
    /// Relative size of a burst (0.5 = +50 %).
    pub burst: f64,
    /// Seconds each request spends in the system.
    pub latency: f64,
    /// Requests one replica runs at once.
    pub capacity: f64,
    /// Seed of the noise and the burst times.
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            interval: 10.0,
            days: 4,
            night: 5.0,
            peak: 60.0,
            noise: 0.05,
            bursts_per_day: 6,
            burst: 0.5,
            latency: 2.0,
            capacity: 10.0,
            seed: 7,
        }
    }
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Scenario {
    /// Samples per day.
    pub fn per_day(&self) -> usize {
        (86_400.0 / self.interval).round().max(1.0) as usize
    }

    /// The demand, one value per sample: `(with bursts and noise, the smooth
    /// daily cycle alone)`.
    pub fn demand(&self) -> Vec<(f64, f64)> {
        let per_day = self.per_day();
        let n = per_day * self.days as usize;
        let mut rng = Rng(self.seed);
        let burst_len = (300.0 / self.interval).round().max(1.0) as usize;
        let mut burst_at = Vec::new();
        for d in 0..self.days as usize {
            for _ in 0..self.bursts_per_day {
                burst_at.push(d * per_day + (rng.unit() * per_day as f64) as usize);
            }
        }
        (0..n)
            .map(|i| {
                let phase = (i % per_day) as f64 / per_day as f64 * std::f64::consts::TAU;
                let smooth = self.night + (self.peak - self.night) * (1.0 - phase.cos()) / 2.0;
                let bursting = burst_at.iter().any(|&b| i >= b && i < b + burst_len);
                let mut x = smooth * (1.0 + self.noise * (2.0 * rng.unit() - 1.0));
                if bursting {
                    x *= 1.0 + self.burst;
                }
                (x, smooth)
            })
            .collect()
    }

    /// Replicas for a demand of `rate`.
    pub fn replicas(&self, rate: f64) -> u32 {
        desired_replicas(littles_law(rate, self.latency), self.capacity)
    }
}

/// What one replay measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Per horizon (samples ahead): (horizon, MAPE of the rate forecast).
    pub mape: Vec<(u64, f64)>,
    /// Per horizon: (horizon, median lead in seconds of the forecast's
    /// desired replicas over the actual demand's at each of their rises).
    pub lead: Vec<(u64, f64)>,
    /// Rises of the actual desired replicas scored.
    pub rises: usize,
}

/// Replay `s` with forecaster parameters `p` (its `season` is set to a day),
/// scoring forecasts `horizons` samples ahead after the first day.
pub fn replay(s: &Scenario, p: Params, horizons: &[u64]) -> Report {
    let per_day = s.per_day();
    let demand = s.demand();
    let window = (STABILIZATION_SECS / s.interval).round() as usize;
    let mut f = HoltWinters::new(Params {
        season: per_day,
        ..p
    });
    // forecasts[k][t] = the forecast made at t for t + horizons[k].
    let mut forecasts: Vec<Vec<f64>> = vec![vec![f64::NAN; demand.len()]; horizons.len()];
    for (t, (x, _)) in demand.iter().enumerate() {
        f.observe(*x);
        for (k, h) in horizons.iter().enumerate() {
            forecasts[k][t] = f.forecast(*h);
        }
    }
    let scored = per_day..demand.len();
    let mut mape = Vec::new();
    let mut lead = Vec::new();
    // The actual demand's replicas, read the same way (the realised demand,
    // with the same stabilization), and its rises.
    let now: Vec<u32> = demand.iter().map(|(x, _)| s.replicas(*x)).collect();
    let actual: Vec<u32> = (0..demand.len())
        .map(|t| {
            now[t.saturating_sub(window)..=t]
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rises: Vec<usize> = scored
        .clone()
        .filter(|&t| t > 0 && actual[t] > actual[t - 1])
        .collect();
    for (k, &h) in horizons.iter().enumerate() {
        let h_us = h as usize;
        let (mut err, mut count) = (0.0, 0usize);
        for t in scored.clone() {
            if t + h_us < demand.len() {
                let want = demand[t + h_us].0;
                if want > 0.0 {
                    err += (forecasts[k][t] - want).abs() / want;
                    count += 1;
                }
            }
        }
        mape.push((
            h,
            if count > 0 {
                err / count as f64
            } else {
                f64::NAN
            },
        ));
        // Lead at a rise to r at T: the forecasts made (for h ahead) have
        // said ≥ r continuously from T − lead up to T.
        let mut leads: Vec<f64> = rises
            .iter()
            .map(|&rise| {
                let r = actual[rise];
                let mut first = rise;
                while first > per_day {
                    let made = first - 1;
                    // What an HPA does with the series: scale down only after
                    // its stabilization window (default 5 min), i.e. the max
                    // over that window.
                    let from = made.saturating_sub(window);
                    let said = forecasts[k][from..=made]
                        .iter()
                        .map(|x| s.replicas(*x))
                        .max()
                        .unwrap_or(0);
                    if said >= r {
                        first -= 1;
                    } else {
                        break;
                    }
                }
                (rise - first) as f64 * s.interval
            })
            .collect();
        leads.sort_by(f64::total_cmp);
        let median = leads.get(leads.len() / 2).copied().unwrap_or(f64::NAN);
        lead.push((h, median));
    }
    Report {
        mape,
        lead,
        rises: rises.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forecast 5 minutes ahead says "one more replica" at least one
    /// scaling period (60 s) before the demand gets there, and its error
    /// stays small on a noisy day with bursts.
    #[test]
    fn the_forecast_leads_the_daily_rise_by_more_than_a_scaling_period() {
        let s = Scenario::default();
        let r = replay(&s, Params::default(), &[0, 6, 30]);
        assert!(r.rises > 20, "{r:?}");
        let (_, lead_now) = r.lead[0];
        let (_, lead_5m) = r.lead[2];
        assert!(lead_5m >= 60.0 && lead_5m >= lead_now + 60.0, "{r:?}");
        let (_, mape_1m) = r.mape[1];
        let (_, mape_5m) = r.mape[2];
        assert!(mape_1m < 0.15 && mape_5m < 0.2, "{r:?}");
    }

    #[test]
    fn the_demand_is_deterministic_and_follows_the_day() {
        let s = Scenario::default();
        let a = s.demand();
        assert_eq!(a, s.demand());
        let per_day = s.per_day();
        assert!(a[0].1 < a[per_day / 2].1, "night below noon");
        assert!((a[per_day / 2].1 - s.peak).abs() < 0.1);
    }
}
