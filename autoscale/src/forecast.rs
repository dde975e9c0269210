//! Demand forecast: additive Holt-Winters with a damped trend, one sample per
//! autoscaling interval.
//!
//! Level `ℓ`, trend `b` and a seasonal profile `s` of `season` samples (one
//! day of intervals by default) are updated per sample `x`:
//!
//! ```text
//! ℓₜ = α (xₜ − sₜ₋ₘ) + (1 − α)(ℓₜ₋₁ + φ bₜ₋₁)
//! bₜ = β (ℓₜ − ℓₜ₋₁) + (1 − β) φ bₜ₋₁
//! sₜ = γ (xₜ − ℓₜ) + (1 − γ) sₜ₋ₘ
//! x̂ₜ₊ₕ = ℓₜ + (φ + φ² + … + φʰ) bₜ + sₜ₊ₕ₋ₘ
//! ```
//!
//! Until a whole season has been seen the seasonal terms are 0 (Holt's
//! linear method with damping: the trend alone leads a ramp); at the end of
//! the first season they are initialised from it (each sample minus the
//! season's mean; the level restarts at that mean, the trend at 0) and the
//! recursion above takes over. Forecasts are clamped
//! at 0 (a rate is never negative). Cost: O(1) per sample and per forecast,
//! `season` × 8 bytes of memory (69 KB for a day of 10 s samples).
//!
//! Defaults (α 0.3, β 0.05, γ 0.3, φ 0.98) were chosen on the synthetic diurnal
//! replay of `bench/src/bin/forecast_eval.rs` (`bench/results/forecast.md`).

/// Smoothing parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Level smoothing (0, 1].
    pub alpha: f64,
    /// Trend smoothing [0, 1].
    pub beta: f64,
    /// Seasonal smoothing [0, 1].
    pub gamma: f64,
    /// Trend damping (0, 1]: 1 = undamped.
    pub phi: f64,
    /// Samples per season (1 = no seasonality).
    pub season: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            alpha: 0.3,
            beta: 0.05,
            gamma: 0.3,
            phi: 0.98,
            season: 1,
        }
    }
}

/// The forecaster's state.
#[derive(Debug, Clone)]
pub struct HoltWinters {
    p: Params,
    level: f64,
    trend: f64,
    /// Seasonal terms, indexed by sample number mod `season`.
    seasonal: Vec<f64>,
    /// The first season's raw samples (until it is complete).
    first: Vec<f64>,
    /// Samples seen.
    n: u64,
}

impl HoltWinters {
    /// A forecaster with `p` (out-of-range parameters are clamped).
    pub fn new(p: Params) -> Self {
        let c = |v: f64, lo: f64| if v.is_finite() { v.clamp(lo, 1.0) } else { lo };
        let p = Params {
            alpha: c(p.alpha, 0.001),
            beta: c(p.beta, 0.0),
            gamma: c(p.gamma, 0.0),
            phi: c(p.phi, 0.001),
            season: p.season.max(1),
        };
        HoltWinters {
            seasonal: vec![0.0; p.season],
            first: Vec::new(),
            p,
            level: 0.0,
            trend: 0.0,
            n: 0,
        }
    }

    /// Samples seen so far.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// Whether the seasonal profile is in use (a whole season was seen).
    pub fn seasonal_ready(&self) -> bool {
        self.p.season > 1 && self.n >= self.p.season as u64
    }

    fn slot(&self, i: u64) -> usize {
        (i % self.p.season as u64) as usize
    }

    /// Add the next sample (a non-finite one is ignored).
    pub fn observe(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        let Params {
            alpha,
            beta,
            gamma,
            phi,
            season,
        } = self.p;
        if self.n == 0 {
            self.level = x;
            self.trend = 0.0;
        } else {
            let slot = self.slot(self.n);
            let s = if self.seasonal_ready() {
                self.seasonal[slot]
            } else {
                0.0
            };
            let prev = self.level;
            self.level = alpha * (x - s) + (1.0 - alpha) * (prev + phi * self.trend);
            self.trend = beta * (self.level - prev) + (1.0 - beta) * phi * self.trend;
            if self.seasonal_ready() {
                self.seasonal[slot] = gamma * (x - self.level) + (1.0 - gamma) * s;
            }
        }
        if season > 1 && self.n < season as u64 {
            self.first.push(x);
            if self.first.len() == season {
                let mean = self.first.iter().sum::<f64>() / season as f64;
                for (s, v) in self.seasonal.iter_mut().zip(&self.first) {
                    *s = v - mean;
                }
                // From here on the level is deseasonalised: restart it at
                // the season's mean, with no trend (one season says little
                // about a trend across seasons).
                self.level = mean;
                self.trend = 0.0;
                self.first = Vec::new();
            }
        }
        self.n += 1;
    }

    /// The forecast `h` samples ahead (h = 0: the smoothed current value).
    pub fn forecast(&self, h: u64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let phi = self.p.phi;
        let damp: f64 = if (phi - 1.0).abs() < 1e-12 {
            h as f64
        } else {
            phi * (1.0 - phi.powi(h.min(i32::MAX as u64) as i32)) / (1.0 - phi)
        };
        let s = if self.seasonal_ready() {
            // The last sample was number n-1; h ahead is n-1+h.
            self.seasonal[self.slot(self.n - 1 + h)]
        } else {
            0.0
        };
        (self.level + damp * self.trend + s).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_is_forecast_as_itself() {
        let mut f = HoltWinters::new(Params::default());
        for _ in 0..100 {
            f.observe(5.0);
        }
        assert!((f.forecast(10) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_ramp_is_led_by_the_trend() {
        let mut f = HoltWinters::new(Params {
            phi: 1.0,
            ..Params::default()
        });
        for i in 0..200 {
            f.observe(i as f64);
        }
        // 10 ahead of the last sample (199) is about 209.
        let ahead = f.forecast(10);
        assert!((ahead - 209.0).abs() < 2.0, "{ahead}");
        assert!(ahead > f.forecast(0));
    }

    #[test]
    fn a_season_is_learnt_and_forecast() {
        let season = 24;
        let mut f = HoltWinters::new(Params {
            season,
            ..Params::default()
        });
        let x = |i: usize| {
            10.0 + 5.0 * ((i % season) as f64 / season as f64 * std::f64::consts::TAU).sin()
        };
        for i in 0..season * 10 {
            f.observe(x(i));
        }
        assert!(f.seasonal_ready());
        let n = season * 10;
        for h in 1..=12 {
            let want = x(n - 1 + h as usize);
            let got = f.forecast(h);
            assert!((got - want).abs() < 0.5, "h={h}: {got} vs {want}");
        }
    }

    #[test]
    fn forecasts_are_never_negative_and_bad_samples_are_ignored() {
        let mut f = HoltWinters::new(Params {
            phi: 1.0,
            ..Params::default()
        });
        for i in 0..50 {
            f.observe(100.0 - 2.0 * i as f64);
        }
        f.observe(f64::NAN);
        assert_eq!(f.samples(), 50);
        assert_eq!(f.forecast(1000), 0.0);
    }
}
