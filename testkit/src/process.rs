//! Child processes and waiting without sleeping on a guess.
//!
//! [`poll`] checks a condition every 5 ms until it holds or a deadline passes;
//! [`ChildGuard`] kills and reaps its child (and removes its temp dir) on drop, so a
//! failing test leaves no process behind; [`wait_ready_file`] waits for the JSON a
//! child writes once it serves (`shardgate serve --ready-file`).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Poll `f` until it returns `Some` or `deadline` passes (then `None`).
pub fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        // The polling interval of a deadline-bounded poll: the condition decides, not the pause.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(5));
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory `<tmp>/<prefix>-<pid>-<n>`.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}

/// A child process that is killed and reaped on drop, with its temp dir removed.
pub struct ChildGuard {
    child: Child,
    dir: Option<PathBuf>,
}

impl ChildGuard {
    /// Guard `child`; `dir` (if any) is removed once the child is gone.
    pub fn new(child: Child, dir: Option<PathBuf>) -> ChildGuard {
        ChildGuard { child, dir }
    }

    /// The process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The temp dir removed on drop.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Its exit status if it has exited (never blocks).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Send `signal` to the process (best effort).
    pub fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, reaped only on drop.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Send SIGTERM (a graceful stop, unlike the SIGKILL of drop).
    pub fn terminate(&self) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) takes no pointers; `pid` is our own child, not yet reaped
        // (the guard owns it and reaps it only on drop or `wait_exit`).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }

    /// Wait for it to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        poll(within, || self.exited())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Wait (at most `deadline`) for `child` to write `path` as JSON. Panics, naming
/// the file, if the child exits first or the deadline passes.
pub fn wait_ready_file(
    child: &mut ChildGuard,
    path: &Path,
    deadline: Duration,
) -> serde_json::Value {
    poll(deadline, || {
        if let Some(status) = child.exited() {
            panic!(
                "the child exited ({status}) before writing {}",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    })
    .unwrap_or_else(|| panic!("{} did not appear within {deadline:?}", path.display()))
}
