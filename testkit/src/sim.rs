//! Simulated vLLM backends (`shardgate-sim`, in process) for the end-to-end tests.

use std::net::SocketAddr;
use std::time::Duration;

use shardgate_sim::{SimConfig, SimHandle};

use crate::poll;

/// A simulated backend on 127.0.0.1, ephemeral port, serving `models`; `tweak`
/// adjusts the rest of its config.
pub fn sim(models: &[&str], tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut c = SimConfig {
        host: "127.0.0.1".into(),
        port: 0,
        model: models.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    tweak(&mut c);
    shardgate_sim::spawn(c).unwrap_or_else(|e| panic!("start sim: {e}"))
}

/// Restart a backend on a fixed address (after it was shut down), retrying for up
/// to 5 s while the port is still taken.
pub fn sim_at(addr: SocketAddr, models: &[&str]) -> SimHandle {
    let c = SimConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        model: models.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    let mut last = None;
    let h = poll(Duration::from_secs(5), || {
        match shardgate_sim::spawn(c.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                last = Some(e);
                None
            }
        }
    });
    h.unwrap_or_else(|| panic!("restart sim on {addr}: {last:?}"))
}
