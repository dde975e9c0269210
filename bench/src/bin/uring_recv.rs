//! `shardgate-uring-recv`: what a server's receive costs on this kernel, by mechanism,
//! outside any runtime. It answers one question of `bench/results/latency.md`: how
//! much would multishot receives with provided buffer rings save over the one-shot
//! receives monoio 0.2.4 issues (which have no other form there)?
//!
//! A client thread holds `--conns` loopback TCP connections and runs a closed loop:
//! a `--req`-byte request on every connection, then every `--resp`-byte answer
//! (blocking sockets). A server thread answers each whole request, one of three ways:
//! - `single`: io_uring, a one-shot `RECV` per wait, re-submitted after each
//!   completion, as monoio does (a receive that finds no data arms a poll, and the
//!   poll's wake-up runs it again);
//! - `multi`: io_uring, one multishot `RECV` per connection armed once, into a ring of
//!   provided buffers that the server hands back after each completion;
//! - `epoll`: edge-triggered `epoll_wait`, then `recv` until `EAGAIN` and `send`, as
//!   nginx does.
//!
//! Both io_uring modes answer with an io_uring `SEND` on a ring set up as the
//! gateway's default (`COOP_TASKRUN`, `TASKRUN_FLAG`). The figure is the server
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) per request, user and kernel
//! together, beside its waits (`io_uring_enter` / `epoll_wait`) per request. Modes
//! run in rotating order over `--rounds`, and the medians are printed as a markdown
//! table, with each mode's median ratio to the first mode's run of the same round (a
//! VM's speed drifts between rounds by more than the differences measured here). The server is on `--server-core`, the client on `--client-core`, pinned.
//!
//! Hand-written on `io-uring` rather than on monoio, because what it measures is what
//! monoio cannot do. `unsafe` is confined to the ring's buffers and the raw socket
//! calls, each with its invariant stated.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// How the server receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One-shot io_uring receives, re-submitted per wait (monoio's way).
    Single,
    /// Multishot io_uring receives into a provided-buffer ring.
    Multi,
    /// Edge-triggered epoll, then recv / send system calls (nginx's way).
    Epoll,
}

#[derive(Parser, Debug, Clone)]
#[command(
    about = "CPU per request of a loopback server by receive mechanism: io_uring one-shot, io_uring multishot, epoll"
)]
struct Args {
    /// Modes to run, in rotating order each round.
    #[arg(long, value_delimiter = ',', default_value = "single,multi,epoll")]
    modes: Vec<Mode>,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Requests per connection per round.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Request size in bytes.
    #[arg(long, default_value_t = 400)]
    req: usize,
    /// Answer size in bytes.
    #[arg(long, default_value_t = 600)]
    resp: usize,
    /// Rounds over all modes (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU for the server thread (none: not pinned).
    #[arg(long, default_value = "0")]
    server_core: Option<usize>,
    /// CPU for the client thread (none: not pinned).
    #[arg(long, default_value = "1")]
    client_core: Option<usize>,
}

/// One server run's result.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    requests: u64,
    cpu: Duration,
    wall: Duration,
    waits: u64,
}

/// Buffers in the provided ring (a power of two, more than the connections' in-flight
/// receives need) and their size.
const RING_ENTRIES: u16 = 1024;
const RING_BUF: usize = 4096;
const BGID: u16 = 7;
/// user_data: the connection index in the low 32 bits, the operation above.
const OP_RECV: u64 = 1 << 32;
const OP_SEND: u64 = 2 << 32;

/// The server's clocks from the start of its loop.
struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    fn start() -> Self {
        Meter {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }

    fn run(&self, requests: u64, waits: u64) -> Run {
        Run {
            requests,
            cpu: thread_cpu() - self.cpu,
            wall: self.wall.elapsed(),
            waits,
        }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pin(core: Option<usize>) {
    let Some(core) = core else { return };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "cannot pin to CPU {core}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Counts whole requests in what a connection received.
struct Framer {
    req: usize,
    pending: Vec<usize>,
}

impl Framer {
    fn new(conns: usize, req: usize) -> Self {
        Framer {
            req,
            pending: vec![0; conns],
        }
    }

    /// Adds `n` bytes received on `conn`; returns how many requests are now whole.
    fn feed(&mut self, conn: usize, n: usize) -> usize {
        let p = &mut self.pending[conn];
        *p += n;
        let whole = *p / self.req;
        *p %= self.req;
        whole
    }
}

fn client(addr: std::net::SocketAddr, a: &Args) -> std::io::Result<()> {
    pin(a.client_core);
    let mut conns = (0..a.conns)
        .map(|_| {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let req = vec![b'q'; a.req];
    let mut resp = vec![0u8; a.resp];
    for _ in 0..a.requests {
        for c in conns.iter_mut() {
            c.write_all(&req)?;
        }
        for c in conns.iter_mut() {
            c.read_exact(&mut resp)?;
        }
    }
    Ok(())
}

/// The provided-buffer ring: `RING_ENTRIES` entries (page-aligned, as the kernel
/// requires) and the buffers they point at.
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> std::io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(
            usize::from(RING_ENTRIES) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(std::io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(std::io::Error::other("out of memory"));
        }
        let mut r = BufRing {
            entries,
            layout,
            bufs: vec![0u8; usize::from(RING_ENTRIES) * RING_BUF],
            tail: 0,
        };
        for bid in 0..RING_ENTRIES {
            r.put(bid);
        }
        // SAFETY: the entries stay allocated (and the buffers alive) until `Drop`,
        // which comes after the ring that uses them is dropped (`Uring`'s field order).
        unsafe {
            ring.submitter()
                .register_buf_ring(r.entries as u64, RING_ENTRIES, BGID)?
        };
        Ok(r)
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn put(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (RING_ENTRIES - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * RING_BUF as u64;
        // SAFETY: `slot` < RING_ENTRIES, within the allocation; the tail field overlays
        // entry 0's reserved field and is published with release ordering after the
        // entry is written, as the kernel's consumer expects.
        unsafe {
            let e = &mut *self.entries.add(slot);
            e.set_addr(addr);
            e.set_len(RING_BUF as u32);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = &*(types::BufRingEntry::tail(self.entries).cast::<AtomicU16>());
            tail.store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) };
    }
}

/// A ring and the provided buffers registered with it; the ring is dropped first.
struct Uring {
    ring: IoUring,
    provided: Option<BufRing>,
}

fn push(ring: &mut IoUring, e: squeue::Entry) -> std::io::Result<()> {
    // SAFETY: every buffer an entry points at (the connection buffers, the answer,
    // the provided ring) outlives the ring in `serve_uring`.
    while unsafe { ring.submission().push(&e) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}

fn serve_uring(socks: &[TcpStream], a: &Args, multi: bool) -> std::io::Result<Run> {
    // Declared before the ring, so dropped after it on every path: the kernel may write
    // into them until the ring (and its operations) is gone.
    let mut bufs = vec![vec![0u8; 16 * 1024]; socks.len()];
    let answer = vec![b'a'; a.resp];
    let ring: IoUring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(4096)?;
    let provided = if multi {
        Some(BufRing::new(&ring)?)
    } else {
        None
    };
    // Fields drop in declaration order: the ring before the provided buffers.
    let mut uring = Uring { ring, provided };
    let Uring { ring, provided } = &mut uring;
    let mut framer = Framer::new(socks.len(), a.req);
    let recv = |i: usize, bufs: &mut [Vec<u8>]| -> squeue::Entry {
        let fd = types::Fd(socks[i].as_raw_fd());
        if multi {
            opcode::RecvMulti::new(fd, BGID).build()
        } else {
            opcode::Recv::new(fd, bufs[i].as_mut_ptr(), bufs[i].len() as u32).build()
        }
        .user_data(OP_RECV | i as u64)
    };
    for i in 0..socks.len() {
        push(ring, recv(i, &mut bufs))?;
    }
    let meter = Meter::start();
    let (mut open, mut served, mut waits) = (socks.len(), 0u64, 0u64);
    while open > 0 {
        ring.submit_and_wait(1)?;
        waits += 1;
        let done: Vec<(u64, i32, u32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in done {
            let i = (ud & 0xffff_ffff) as usize;
            if ud & OP_SEND != 0 {
                if res < 0 || res as usize != a.resp {
                    return Err(std::io::Error::other(format!(
                        "short or failed send: {res}"
                    )));
                }
                continue;
            }
            if let (Some(p), Some(bid)) = (provided.as_mut(), cqueue::buffer_select(flags)) {
                p.put(bid);
            }
            if res == -libc::ENOBUFS {
                push(ring, recv(i, &mut bufs))?;
                continue;
            }
            if res <= 0 {
                open -= 1;
                continue;
            }
            for _ in 0..framer.feed(i, res as usize) {
                let fd = types::Fd(socks[i].as_raw_fd());
                push(
                    ring,
                    opcode::Send::new(fd, answer.as_ptr(), answer.len() as u32)
                        .build()
                        .user_data(OP_SEND | i as u64),
                )?;
                served += 1;
            }
            if !multi || !cqueue::more(flags) {
                push(ring, recv(i, &mut bufs))?;
            }
        }
    }
    Ok(meter.run(served, waits))
}

fn serve_epoll(socks: &[TcpStream], a: &Args) -> std::io::Result<Run> {
    // SAFETY: plain system calls on descriptors this function owns or borrows; every
    // buffer passed is valid for the length given.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Closed on every path.
        let _ep = std::os::fd::OwnedFd::from_raw_fd(ep);
        for (i, s) in socks.iter().enumerate() {
            s.set_nonblocking(true)?;
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: i as u64,
            };
            if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
        let mut buf = vec![0u8; 16 * 1024];
        let answer = vec![b'a'; a.resp];
        let mut framer = Framer::new(socks.len(), a.req);
        let mut closed = vec![false; socks.len()];
        let meter = Meter::start();
        let (mut open, mut served, mut waits) = (socks.len(), 0u64, 0u64);
        while open > 0 {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1);
            waits += 1;
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let i = ev.u64 as usize;
                let fd = socks[i].as_raw_fd();
                loop {
                    let r = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                    if r > 0 {
                        for _ in 0..framer.feed(i, r as usize) {
                            let w = libc::send(
                                fd,
                                answer.as_ptr().cast(),
                                answer.len(),
                                libc::MSG_NOSIGNAL,
                            );
                            if w < 0 || w as usize != answer.len() {
                                return Err(std::io::Error::other(format!(
                                    "short or failed send: {w}"
                                )));
                            }
                            served += 1;
                        }
                        continue;
                    }
                    if r < 0
                        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
                    {
                        break;
                    }
                    if !closed[i] {
                        closed[i] = true;
                        open -= 1;
                    }
                    break;
                }
            }
        }
        Ok(meter.run(served, waits))
    }
}

fn one(mode: Mode, a: &Args) -> std::io::Result<Run> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let client = {
        let args = a.clone();
        std::thread::spawn(move || client(addr, &args))
    };
    pin(a.server_core);
    let mut socks = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    let run = match mode {
        Mode::Single => serve_uring(&socks, a, false),
        Mode::Multi => serve_uring(&socks, a, true),
        Mode::Epoll => serve_epoll(&socks, a),
    };
    // Closing the server's ends ends the client too (EOF) when the server failed early.
    drop(socks);
    let client = client.join();
    // The server's own failure first: the client's would only be its consequence.
    let run = run?;
    match client {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::other("the client thread panicked")),
    }
    let expected = (a.conns * a.requests) as u64;
    if run.requests != expected {
        return Err(std::io::Error::other(format!(
            "{mode:?}: served {} requests, expected {expected}",
            run.requests
        )));
    }
    Ok(run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    if a.conns == 0
        || a.requests == 0
        || a.req == 0
        || a.resp == 0
        || a.rounds == 0
        || a.modes.is_empty()
    {
        eprintln!("--conns, --requests, --req, --resp, --rounds and --modes must be non-zero");
        return std::process::ExitCode::from(2);
    }
    let mut per: Vec<Vec<Run>> = vec![Vec::new(); a.modes.len()];
    for round in 0..a.rounds {
        for k in 0..a.modes.len() {
            let m = (round + k) % a.modes.len();
            match one(a.modes[m], &a) {
                Ok(r) => {
                    eprintln!(
                        "round {}: {:?}: {:.2} µs CPU per request, {:.2} waits per request, {:.0} requests/s",
                        round + 1,
                        a.modes[m],
                        r.cpu.as_secs_f64() * 1e6 / r.requests as f64,
                        r.waits as f64 / r.requests as f64,
                        r.requests as f64 / r.wall.as_secs_f64()
                    );
                    per[m].push(r);
                }
                Err(e) => {
                    eprintln!("{:?}: {e}", a.modes[m]);
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "{} connections, {} B requests, {} B answers, {} requests per connection, {} rounds (medians); server on CPU {}, client on CPU {}\n",
        a.conns,
        a.req,
        a.resp,
        a.requests,
        a.rounds,
        a.server_core.map_or("any".into(), |c| c.to_string()),
        a.client_core.map_or("any".into(), |c| c.to_string())
    );
    println!(
        "| mode | server CPU per request | ÷ {:?}'s, same round | waits per request | requests/s |",
        a.modes[0]
    );
    println!("|---|---:|---:|---:|---:|");
    let cpu_of = |r: &Run| r.cpu.as_secs_f64() * 1e6 / r.requests as f64;
    for (m, runs) in a.modes.iter().zip(&per) {
        let cpu = median(runs.iter().map(cpu_of).collect());
        // Each round's ratio to the first mode's run in the same round: the VM's drift
        // between rounds falls on both.
        let ratio = median(
            runs.iter()
                .zip(&per[0])
                .map(|(r, b)| cpu_of(r) / cpu_of(b))
                .collect(),
        );
        let waits = median(
            runs.iter()
                .map(|r| r.waits as f64 / r.requests as f64)
                .collect(),
        );
        let rps = median(
            runs.iter()
                .map(|r| r.requests as f64 / r.wall.as_secs_f64())
                .collect(),
        );
        println!("| {m:?} | {cpu:.2} µs | {ratio:.3} | {waits:.2} | {rps:.0} |");
    }
    std::process::ExitCode::SUCCESS
}
