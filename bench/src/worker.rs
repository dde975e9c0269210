//! One worker thread: a monoio runtime (from `shardgate_runtime::spawn_shards`)
//! running this thread's share of the connections.
//!
//! Tasks, all on this thread, sharing state through `Rc`/`RefCell` (no locks):
//! - one task per keep-alive connection: takes the next request (open loop: from
//!   the backlog [`JobQueue`]; closed loop: right away, while the run lasts),
//!   writes the pre-rendered request bytes from its own buffer, reads and decodes
//!   the response with [`ResponseReader`], and records the outcome;
//! - open loop: the scheduler, which pushes each request into the backlog at its
//!   intended start ([`Schedule`]) and counts it as dropped when the backlog is full;
//! - the timer driver ([`Timers::drive`]), through which every wait goes;
//! - a ticker that sends this thread's statistics of the last second to the main
//!   thread (for the progress line) and gets an emptied set back to reuse.
//!
//! A request's deadline is its start plus `--timeout`, wherever it is spent (backlog,
//! connect, write, read); on timeout its I/O is cancelled and its connection closed.
//! A request that fails on a connection that already carried a response, before any
//! response byte came back, is retried once on a new connection (a keep-alive
//! connection the server had closed while idle); a closed loop waits 10 ms after a
//! connect error before trying again. Per request, the steady state allocates only
//! the parsed response head's header list.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use shardgate_runtime::io::{read_into, READ_CHUNK};
use shardgate_runtime::{Driver, ShardInfo};

use crate::config::Plan;
use crate::queue::{Job, JobQueue};
use crate::response::{ResponseReader, Step};
use crate::schedule::{latency, Schedule};
use crate::stats::{Outcome, Stats};
use crate::timers::Timers;

/// How often a worker reports to the main thread.
pub const TICK: Duration = Duration::from_secs(1);
/// Closed loop: pause after a connect error before the next attempt.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// What a worker tells the main thread.
pub(crate) enum Msg {
    /// Statistics of the last tick (to merge, then send back emptied).
    Tick { thread: usize, stats: Box<Stats> },
    /// The worker finished: its remaining statistics.
    Done { stats: Box<Stats>, driver: Driver },
    /// The worker thread is gone (sent on drop, also after a failure).
    Exit,
}

/// Sends [`Msg::Exit`] when dropped, however the worker thread ends.
pub(crate) struct ExitGuard(pub Sender<Msg>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self.0.send(Msg::Exit);
    }
}

/// Everything one worker thread gets.
pub(crate) struct Payload {
    pub plan: Arc<Plan>,
    pub start: Instant,
    pub thread: usize,
    pub tx: Sender<Msg>,
    pub recycle: Receiver<Box<Stats>>,
    pub exit: ExitGuard,
}

struct Worker {
    plan: Arc<Plan>,
    start: Instant,
    thread: usize,
    /// Requests starting before this are warm-up.
    measure_from: Instant,
    /// Closed loop: no request starts at or after this.
    end: Option<Instant>,
    /// Closed loop: counted requests left to start.
    budget: Cell<Option<u64>>,
    timers: Timers,
    queue: Option<JobQueue>,
    stats: RefCell<Box<Stats>>,
    tx: Sender<Msg>,
    recycle: Receiver<Box<Stats>>,
}

impl Worker {
    fn next_closed_job(&self) -> Option<Job> {
        let now = Instant::now();
        if self.end.is_some_and(|e| now >= e) {
            return None;
        }
        if now < self.measure_from {
            return Some(Job {
                start: now,
                counted: false,
            });
        }
        match self.budget.get() {
            Some(0) => None,
            Some(n) => {
                self.budget.set(Some(n - 1));
                Some(Job {
                    start: now,
                    counted: true,
                })
            }
            None => Some(Job {
                start: now,
                counted: true,
            }),
        }
    }

    fn record(&self, job: Job, outcome: Outcome, ttft: Option<Duration>) {
        let done = Instant::now();
        self.timers.fire_due(done);
        let mut stats = self.stats.borrow_mut();
        if job.counted {
            stats.record(outcome, latency(job.start, done), ttft, done);
        } else {
            stats.warmup += 1;
        }
    }
}

/// The worker thread's main future.
pub(crate) async fn main(info: ShardInfo, p: Payload) {
    let Payload {
        plan,
        start,
        thread,
        tx,
        recycle,
        exit,
    } = p;
    let conns = plan.connections_of(thread);
    // Slots: one per connection, then the scheduler, then the ticker.
    let timers = Timers::new(conns + 2);
    monoio::spawn(timers.clone().drive());
    let schedule = plan.schedule(start, thread);
    let queue = schedule.map(|_| JobQueue::new(plan.backlog_of(thread), conns));
    let measure_from = start + plan.warmup;
    let end = match plan.mode {
        crate::config::Mode::Closed => plan.stop.duration.map(|d| measure_from + d),
        crate::config::Mode::Open { .. } => None,
    };
    let w = Rc::new(Worker {
        budget: Cell::new(plan.budget_of(thread)),
        plan,
        start,
        thread,
        measure_from,
        end,
        timers,
        queue,
        stats: RefCell::new(Box::default()),
        tx,
        recycle,
    });
    monoio::spawn(ticker(w.clone(), conns + 1));
    let scheduler = schedule.map(|s| monoio::spawn(scheduler(w.clone(), s, conns)));
    let tasks: Vec<_> = (0..conns)
        .map(|slot| monoio::spawn(connection(w.clone(), slot)))
        .collect();
    if let Some(s) = scheduler {
        s.await;
    }
    for t in tasks {
        t.await;
    }
    let stats = w.stats.replace(Box::default());
    let _ = w.tx.send(Msg::Done {
        stats,
        driver: info.driver,
    });
    drop(exit);
}

async fn scheduler(w: Rc<Worker>, schedule: Schedule, slot: usize) {
    let Some(queue) = &w.queue else {
        return;
    };
    let mut k = 0;
    while let Some((at, counted)) = schedule.get(k) {
        k += 1;
        // Behind schedule (the thread was busy or descheduled), every request that
        // is due goes into the backlog at once, with its own intended start.
        w.timers.sleep_until(slot, at).await;
        let job = Job { start: at, counted };
        if !queue.push(job) {
            w.record(job, Outcome::Dropped, None);
        }
    }
    queue.close();
}

async fn ticker(w: Rc<Worker>, slot: usize) {
    let mut next = w.start + TICK;
    loop {
        w.timers.sleep_until(slot, next).await;
        next += TICK;
        let fresh = w.recycle.try_recv().unwrap_or_default();
        let stats = w.stats.replace(fresh);
        let _ = w.tx.send(Msg::Tick {
            thread: w.thread,
            stats,
        });
    }
}

async fn connection(w: Rc<Worker>, slot: usize) {
    let plan = &w.plan;
    let mut conn = Conn {
        stream: None,
        served: 0,
        req: plan.request.clone(),
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        reader: ResponseReader::new(plan.head_request, plan.limits),
        connects: 0,
    };
    // Connect ahead of the start so that the first requests do not pay for it.
    let connect_by = Instant::now() + plan.timeout;
    if let Ok(Ok(s)) = w
        .timers
        .timeout(slot, connect_by, TcpStream::connect(plan.target.addr))
        .await
    {
        let _ = s.set_nodelay(true);
        conn.stream = Some(s);
        conn.connects += 1;
    }
    w.timers.sleep_until(slot, w.start).await;
    loop {
        let job = match &w.queue {
            Some(q) => match q.pop(slot).await {
                Some(job) => job,
                None => break,
            },
            None => match w.next_closed_job() {
                Some(job) => job,
                None => break,
            },
        };
        let deadline = job.start + plan.timeout;
        let ex = if Instant::now() >= deadline {
            Exchange::failed(Outcome::Timeout)
        } else {
            match w
                .timers
                .timeout(slot, deadline, conn.exchange(plan, job.start))
                .await
            {
                Ok(ex) => ex,
                Err(_) => {
                    conn.stream = None;
                    Exchange::failed(Outcome::Timeout)
                }
            }
        };
        w.record(job, ex.outcome, ex.ttft);
        if w.queue.is_none() && ex.outcome == Outcome::Connect {
            w.timers
                .sleep_until(slot, Instant::now() + CONNECT_BACKOFF)
                .await;
        }
    }
    w.stats.borrow_mut().counts.connects += conn.connects;
}

/// How one request went.
struct Exchange {
    outcome: Outcome,
    ttft: Option<Duration>,
}

impl Exchange {
    fn failed(outcome: Outcome) -> Exchange {
        Exchange {
            outcome,
            ttft: None,
        }
    }
}

/// One attempt on the current connection.
enum RoundTrip {
    /// A complete response; whether the connection may be reused.
    Response(Exchange, bool),
    /// Failed; `retry` when nothing of a response came back (the request may be
    /// sent again if the connection was a reused one).
    Failed { outcome: Outcome, retry: bool },
}

/// One keep-alive connection and its buffers (reused from request to request).
struct Conn {
    stream: Option<TcpStream>,
    /// Responses completed on the current stream.
    served: u64,
    /// The request bytes (moved into each write and back).
    req: Vec<u8>,
    rbuf: BytesMut,
    reader: ResponseReader,
    connects: u64,
}

impl Conn {
    async fn exchange(&mut self, plan: &Plan, start: Instant) -> Exchange {
        let mut first_attempt = true;
        loop {
            if self.stream.is_none() {
                match TcpStream::connect(plan.target.addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        self.stream = Some(s);
                        self.served = 0;
                        self.connects += 1;
                    }
                    Err(_) => return Exchange::failed(Outcome::Connect),
                }
            }
            let reused = self.served > 0;
            match self.round_trip(plan, start).await {
                RoundTrip::Response(ex, keep_alive) => {
                    if keep_alive {
                        self.served += 1;
                    } else {
                        self.stream = None;
                    }
                    return ex;
                }
                RoundTrip::Failed { outcome, retry } => {
                    self.stream = None;
                    if retry && reused && first_attempt {
                        first_attempt = false;
                        continue;
                    }
                    return Exchange::failed(outcome);
                }
            }
        }
    }

    async fn round_trip(&mut self, plan: &Plan, start: Instant) -> RoundTrip {
        let Some(stream) = self.stream.as_mut() else {
            return RoundTrip::Failed {
                outcome: Outcome::Connect,
                retry: false,
            };
        };
        if self.req.is_empty() {
            // The last write was cancelled by a timeout and took the buffer along.
            self.req.extend_from_slice(&plan.request);
        }
        let (res, req) = stream.write_all(std::mem::take(&mut self.req)).await;
        self.req = req;
        if res.is_err() {
            return RoundTrip::Failed {
                outcome: Outcome::Write,
                retry: true,
            };
        }
        self.reader.reset();
        self.rbuf.clear();
        let mut received = false;
        let mut ttft = None;
        loop {
            let (res, buf) = read_into(stream, std::mem::take(&mut self.rbuf)).await;
            self.rbuf = buf;
            let step = match res {
                Err(_) => {
                    return RoundTrip::Failed {
                        outcome: Outcome::Read,
                        retry: !received,
                    }
                }
                Ok(0) => match self.reader.on_eof() {
                    Ok(step) => step,
                    Err(_) => {
                        return RoundTrip::Failed {
                            outcome: Outcome::Closed,
                            retry: !received,
                        }
                    }
                },
                Ok(_) => {
                    received = true;
                    match self.reader.feed(&mut self.rbuf) {
                        Ok(step) => step,
                        Err(_) => {
                            return RoundTrip::Failed {
                                outcome: Outcome::Protocol,
                                retry: false,
                            }
                        }
                    }
                }
            };
            if plan.stream && ttft.is_none() && self.reader.first_event_seen() {
                ttft = Some(latency(start, Instant::now()));
            }
            if let Step::Done(done) = step {
                let outcome = if done.status < 400 {
                    Outcome::Ok(done.status)
                } else {
                    Outcome::Status(done.status)
                };
                return RoundTrip::Response(Exchange { outcome, ttft }, done.keep_alive);
            }
        }
    }
}
