//! `shardgate-forecast-eval`: replays the synthetic day-night demand with
//! bursts of `shardgate_autoscale::replay` on a virtual clock (4 days of 10 s
//! samples, the first day for training) and prints, per forecast horizon, the
//! error of the demand forecast (MAPE) and the median lead of the desired
//! replicas it gives over the actual demand's, as a Markdown table
//! (`bench/results/forecast.md`). No timing: it runs in a fraction of a second.

use shardgate_autoscale::replay::{replay, Scenario, STABILIZATION_SECS};
use shardgate_autoscale::Params;

fn main() {
    let s = Scenario::default();
    let horizons = [0u64, 6, 12, 18, 24, 30];
    let r = replay(&s, Params::default(), &horizons);
    let p = Params::default();
    println!("# Demand forecast: error and lead on a synthetic day-night workload\n");
    println!(
        "`cargo run --release -p shardgate-bench --bin shardgate-forecast-eval`: {} days of {:.0} s samples on a virtual clock (the first day trains the forecast and is not scored); demand {:.0}→{:.0} req/s over the day (raised cosine), ±{:.0} % noise, {} bursts of +{:.0} % for 5 min a day at random times; {:.0} s per request in the system, {:.0} requests per replica, 80 % target utilisation. Holt-Winters: α {}, β {}, γ {}, φ {}, season one day.\n",
        s.days,
        s.interval,
        s.night,
        s.peak,
        s.noise * 100.0,
        s.bursts_per_day,
        s.burst * 100.0,
        s.latency,
        s.capacity,
        p.alpha,
        p.beta,
        p.gamma,
        p.phi
    );
    println!(
        "Lead: at each of the {} rises of the replicas the actual demand needs, how long before it the forecast's desired replicas already said so (the median; both series read as an HPA reads a metric, with its {:.0} s scale-down stabilization; a negative lead is a lag). Horizon 0 is the smoothed desired-replicas-now signal, for comparison.\n",
        r.rises, STABILIZATION_SECS
    );
    println!("| horizon | MAPE of the demand forecast | median lead of desired replicas |");
    println!("|---|---|---|");
    for ((h, mape), (_, lead)) in r.mape.iter().zip(&r.lead) {
        println!(
            "| {:.0} s | {:.1} % | {:.0} s |",
            *h as f64 * s.interval,
            mape * 100.0,
            lead
        );
    }
}
