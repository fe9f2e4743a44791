//! A small pool of threads that spin briefly between jobs, for the matrix-vector products of
//! decoding.
//!
//! Why not rayon: one decoded token is ~210 products of 0.1-0.9 M multiply-adds (tens of
//! microseconds each) separated by a few microseconds of other work. rayon's idle workers go
//! to sleep within microseconds and take tens of microseconds to wake, as much as the product
//! itself, so notes/issue-4-chat.md measured no gain from splitting them (1, 2, 4 or 8 tasks,
//! all ~60 tokens/s). Here each helper spins on an epoch counter for [`SPIN`] after its last
//! job, so a hand-off during decoding costs well under a microsecond, then parks (no CPU
//! burnt between requests). Tasks are claimed from a counter, and a helper that has not
//! joined when the caller runs out of tasks is shut out: on a machine busier than its cores
//! (a descheduled helper), the caller does the work itself instead of waiting for it.
//! One caller at a time: a second concurrent caller (tests in parallel, two models) runs its
//! tasks itself rather than waiting.
//!
//! In the threaded wasm build (`target_feature = "atomics"`), `std::thread::spawn` does not
//! work: the helpers are Web Workers that instantiate the same module on the same memory and
//! call [`Pool::serve`] (`runThreadHelper` in src/wasm), set up by [`Pool::init_global`]. A
//! helper that never arrives costs nothing but its share of the split: the caller claims every
//! task left.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
#[cfg(not(target_arch = "wasm32"))]
use std::time::{Duration, Instant};

/// How long an idle helper spins before parking: longer than the gaps between the products of
/// one token (norms, RoPE, attention: tens of microseconds), short enough that an idle model
/// costs nothing.
#[cfg(not(target_arch = "wasm32"))]
const SPIN: Duration = Duration::from_micros(300);

/// wasm32 has no clock in std (`Instant::now` panics there): spin rounds instead, about as
/// long as the native 300 µs at a few nanoseconds per round.
#[cfg(target_arch = "wasm32")]
const SPIN_ROUNDS: u32 = 1 << 16;

/// A job: `f(task)` for tasks `0..tasks`, claimed one at a time by whichever thread is free.
#[derive(Clone, Copy)]
struct Job {
    /// Points at the caller's closure, alive until every helper has left the job (see `run`).
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

/// Set in `Shared::inside` once the caller stops admitting helpers to the current job.
const CLOSED: usize = 1 << (usize::BITS - 1);

struct Shared {
    /// Bumped for every job: wakes the helpers (spinning or parked).
    epoch: AtomicU64,
    /// Written by the caller while the job is closed to helpers (see `inside`).
    job: UnsafeCell<Option<Job>>,
    /// The next task to claim.
    next: AtomicUsize,
    /// Helpers inside the current job, plus [`CLOSED`] when the caller admits no more: a
    /// helper that arrives late (descheduled on a busy machine) finds it closed and leaves
    /// without touching the job, so the caller never waits for a thread that has not started
    /// (it claims the tasks itself) and the job can end while that thread sleeps.
    inside: AtomicUsize,
    panicked: AtomicBool,
    /// Jobs a helper was admitted to, all helpers together (one increment per job joined, not
    /// per task): shows that helpers take part (the threaded wasm build's benchmark).
    joined: AtomicU64,
    /// Helpers parked on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller holding the pool's `busy` lock while the job is
// closed (no helper inside, none admitted); helpers read it only while counted in `inside`
// with the job open, and the caller waits for `inside` to drain before changing it again. The
// closure it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced while the caller keeps it alive.
unsafe impl Send for Shared {}

/// The pool: `helpers` threads plus the caller.
pub struct Pool {
    shared: Arc<Shared>,
    helpers: usize,
    busy: Mutex<()>,
}

impl Pool {
    /// A pool using `threads` threads in all (the caller and `threads - 1` helpers).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(threads: usize) -> Pool {
        let pool = Pool::unstarted(threads);
        for i in 0..pool.helpers {
            let shared = pool.shared.clone();
            std::thread::Builder::new()
                .name(format!("webguard-spin-{}", i + 1))
                .spawn(move || helper(&shared))
                .expect("spawning a thread");
        }
        pool
    }

    /// The pool's state with no helper running yet: natively `new` spawns them, in wasm the
    /// page's Web Workers join through [`Pool::serve`].
    fn unstarted(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            next: AtomicUsize::new(0),
            inside: AtomicUsize::new(CLOSED),
            panicked: AtomicBool::new(false),
            joined: AtomicU64::new(0),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let helpers = threads.max(1) - 1;
        Pool {
            shared,
            helpers,
            busy: Mutex::new(()),
        }
    }

    /// The process's pool, one thread per core (`RAYON_NUM_THREADS` caps it, as it does the
    /// rest of the CPU work).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn global() -> &'static Pool {
        GLOBAL.get_or_init(|| Pool::new(rayon::current_num_threads()))
    }

    /// The module's pool: the one [`Pool::init_global`] made, or one thread (no helpers).
    #[cfg(target_arch = "wasm32")]
    pub fn global() -> &'static Pool {
        GLOBAL.get_or_init(|| Pool::unstarted(1))
    }

    /// Sets the module's pool to `threads` threads (the caller and `threads - 1` helpers, which
    /// join by calling [`Pool::serve`]); the count it has (the first call's, or 1 once a product
    /// ran) when it was already set.
    #[cfg(target_arch = "wasm32")]
    pub fn init_global(threads: usize) -> usize {
        GLOBAL.get_or_init(|| Pool::unstarted(threads)).threads()
    }

    /// Runs a helper's loop on the calling thread for ever (a Web Worker of the threaded wasm
    /// build); returns at once when the pool has no helper to be.
    #[cfg(target_arch = "wasm32")]
    pub fn serve(&self) {
        if self.helpers > 0 {
            helper(&self.shared);
        }
    }

    /// How many times a helper joined a job so far (all helpers together).
    pub fn jobs_joined(&self) -> u64 {
        self.shared.joined.load(SeqCst)
    }

    /// Threads that may share a job (helpers and the caller).
    pub fn threads(&self) -> usize {
        self.helpers + 1
    }

    /// Runs `f(t)` for every task `t` in `0..tasks`, each exactly once, on the caller and any
    /// helpers that join in time; returns when all have finished. A panic in any task is
    /// raised here. When the pool is busy with another caller, the tasks run here in turn.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(g) if self.helpers > 0 && tasks > 1 => g,
            _ => {
                (0..tasks).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the helpers' use, which ends before this
        // function returns: the job is closed and `inside` drained below, also when a task
        // panics on this thread.
        let f_static: *const (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), _>(f) };
        // SAFETY: we hold `busy` and the job is closed with nobody inside (the previous caller
        // drained it), so nobody reads `job` now.
        unsafe { *s.job.get() = Some(Job { f: f_static, tasks }) };
        s.next.store(0, SeqCst);
        // Open, keeping the count: a helper that arrived after the previous job was closed
        // (and after its caller had seen `inside` drain) may still be between its increment and
        // its decrement. Storing 0 here erased its increment, its decrement then wrapped the
        // count, and this caller waited for it forever (the refusal-tuning test hung).
        s.inside.fetch_and(!CLOSED, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleeping.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| claim(s, f, tasks)));
        // Every task is claimed (or this thread's panicked): admit no more helpers, then wait
        // for those inside to finish theirs.
        s.inside.fetch_or(CLOSED, SeqCst);
        let mut spins = 0u32;
        while s.inside.load(SeqCst) & !CLOSED > 0 {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: closed and drained: no helper reads the job any more.
        unsafe { *s.job.get() = None };
        let helper_panicked = s.panicked.swap(false, SeqCst);
        drop(guard);
        if let Err(e) = own {
            std::panic::resume_unwind(e);
        }
        assert!(!helper_panicked, "a task panicked on a helper thread");
    }
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Claims and runs tasks until none are left.
fn claim(s: &Shared, f: &(dyn Fn(usize) + Sync), tasks: usize) {
    loop {
        let t = s.next.fetch_add(1, SeqCst);
        if t >= tasks {
            return;
        }
        f(t);
    }
}

fn helper(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin for a new epoch, then park until one comes.
        #[cfg(not(target_arch = "wasm32"))]
        let start = Instant::now();
        #[cfg(not(target_arch = "wasm32"))]
        let spun_enough = |spins: u32| spins.is_multiple_of(64) && start.elapsed() > SPIN;
        #[cfg(target_arch = "wasm32")]
        let spun_enough = |spins: u32| spins > SPIN_ROUNDS;
        let mut spins = 0u32;
        seen = loop {
            let e = s.epoch.load(SeqCst);
            if e != seen {
                break e;
            }
            spins = spins.wrapping_add(1);
            if spun_enough(spins) {
                let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, SeqCst);
                while s.epoch.load(SeqCst) == seen {
                    l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, SeqCst);
                break s.epoch.load(SeqCst);
            }
            std::hint::spin_loop();
        };
        if s.inside.fetch_add(1, SeqCst) & CLOSED == 0 {
            s.joined.fetch_add(1, SeqCst);
            // SAFETY: admitted to an open job: the caller wrote it before opening and keeps
            // it (and the closure) alive until we leave `inside` below.
            let job = unsafe { (*s.job.get()).expect("an open job") };
            // SAFETY: as above.
            let f = unsafe { &*job.f };
            if catch_unwind(AssertUnwindSafe(|| claim(s, f, job.tasks))).is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.inside.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_task_runs_once_per_job() {
        let pool = Pool::new(3);
        assert_eq!(pool.threads(), 3);
        let counts: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..2000 {
            pool.run(7, &|t| {
                counts[t].fetch_add(1, SeqCst);
            });
            if round == 1000 {
                // Long enough for the helpers to park: they must wake for the next job.
                std::thread::sleep(SPIN * 4);
            }
        }
        for c in &counts {
            assert_eq!(c.load(SeqCst), 2000);
        }
        assert!(
            pool.jobs_joined() <= 2 * 2000,
            "at most one join per helper and job"
        );
    }

    #[test]
    fn a_helper_leaving_a_closed_job_late_does_not_hang_the_next_job() {
        // What a descheduled helper does: it counts itself in after the caller closed the
        // job and saw it drain, and counts itself out only while the next job runs.
        let pool = Arc::new(Pool::new(2));
        pool.run(4, &|_| {});
        pool.shared.inside.fetch_add(1, SeqCst); // the late helper arrives: closed, it stays out
        let release = Arc::new(AtomicBool::new(false));
        let (done, finished) = std::sync::mpsc::channel();
        let (runner, held) = (pool.clone(), release.clone());
        std::thread::spawn(move || {
            // The next job's tasks hold until the late helper has left.
            runner.run(2, &|_| {
                while !held.load(SeqCst) {
                    std::hint::spin_loop();
                }
            });
            done.send(()).unwrap();
        });
        std::thread::sleep(Duration::from_millis(20));
        pool.shared.inside.fetch_sub(1, SeqCst); // ... and leaves
        release.store(true, SeqCst);
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the next job finished (it waited forever when opening reset the count)");
    }

    #[test]
    fn a_busy_pool_runs_the_second_caller_s_tasks_on_its_own_thread() {
        let pool = Pool::new(2);
        let inner_threads = Mutex::new(Vec::new());
        pool.run(2, &|t| {
            if t == 0 {
                let me = std::thread::current().id();
                pool.run(2, &|_| {
                    inner_threads
                        .lock()
                        .unwrap()
                        .push(std::thread::current().id())
                });
                assert!(inner_threads.lock().unwrap().iter().all(|&id| id == me));
            }
        });
        assert_eq!(inner_threads.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_panicking_helper_task_panics_the_caller_and_the_pool_still_works() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(2, &|t| assert!(t != 1, "task 1 fails"));
        }));
        assert!(r.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(5, &|_| {
            ran.fetch_add(1, SeqCst);
        });
        assert_eq!(ran.load(SeqCst), 5);
    }
}
