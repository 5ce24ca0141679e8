//! The engine's fork-join team: thread configuration and a low-latency parallel `for`.
//!
//! A forward pass runs ~200 short parallel regions (most kernels take 50–500 µs) separated by short
//! serial stretches. rayon's idle workers go to sleep within ~20 µs and take 35–90 µs to wake (measured
//! on the 2-vCPU VM this project benchmarks on), which a kernel that lasts 100 µs pays in full. The
//! team's helpers instead spin for a couple of milliseconds after each job before parking, so
//! back-to-back kernels start within a microsecond. The team's size follows the current rayon pool
//! ([`rayon::current_num_threads`]), so [`set_num_threads`] and `ThreadPool::install` both apply.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before parking. Long enough to bridge the serial gaps of a forward
/// pass; short enough not to hold a core once inference stops.
const SPIN: Duration = Duration::from_millis(1);

/// One step of a busy wait: a pause instruction for the first few thousand steps (a few µs), then a
/// `yield` each step, so that on an oversubscribed machine a waiting thread hands its core to
/// whoever it is waiting for (e.g. a helper preempted halfway through an item) instead of burning
/// the rest of its time slice.
#[inline]
fn backoff(step: &mut u32) {
    *step = step.saturating_add(1);
    if *step < 2048 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Sizes the global rayon pool, which also sizes the engine's own team (`0` = one thread per core).
///
/// Call it once, before any compute. The pool can only be built once per process, so later calls (or a
/// call after rayon already started its default pool) are ignored.
pub fn set_num_threads(n: usize) {
    // An Err only means the global pool already exists; keeping it is the documented behaviour.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
}

/// Number of threads the kernels use (the size of the current rayon pool).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// One parallel loop, shared with the helpers through a raw pointer while it runs.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    items: usize,
    /// Next item to claim.
    next: AtomicUsize,
    /// Items finished.
    done: AtomicUsize,
    /// Helpers that may still join (the thread count asked for, minus the caller).
    seats: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    /// Claims and runs items until none are left. A panicking item is recorded (the first one is
    /// re-raised on the caller) and still counts as done, so the caller never waits forever.
    fn run(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.items {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Team {
    /// Bumped once per published job.
    generation: AtomicU64,
    /// The running job (null when none). Points into the caller's stack frame, which outlives it:
    /// the caller clears it and then waits for `active` to drop to zero before returning.
    job: AtomicPtr<Job<'static>>,
    /// Helpers between "saw a new generation" and "done looking at the job".
    active: AtomicUsize,
    /// One job at a time; a second thread calling in meanwhile runs its loop serially.
    busy: AtomicBool,
    spawned: Mutex<usize>,
    parked: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

static TEAM: OnceLock<Team> = OnceLock::new();

thread_local! {
    /// Set while this thread runs team items: a nested `parallel_for` then runs serially.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

fn team() -> &'static Team {
    TEAM.get_or_init(|| Team {
        generation: AtomicU64::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        active: AtomicUsize::new(0),
        busy: AtomicBool::new(false),
        spawned: Mutex::new(0),
        parked: AtomicUsize::new(0),
        park: Mutex::new(()),
        wake: Condvar::new(),
    })
}

impl Team {
    /// Starts helpers until there are at least `n`. Returns how many there are (fewer if the OS
    /// refused a thread).
    fn ensure_helpers(&'static self, n: usize) -> usize {
        let mut spawned = self.spawned.lock().unwrap_or_else(|e| e.into_inner());
        while *spawned < n {
            let started =
                std::thread::Builder::new().name(format!("ferroyolo-engine-{}", *spawned)).spawn(move || self.helper());
            if started.is_err() {
                break;
            }
            *spawned += 1;
        }
        *spawned
    }

    fn helper(&self) {
        let mut seen = self.generation.load(SeqCst);
        loop {
            // Wait for a new job: spin for a while, then park.
            let start = Instant::now();
            let mut step = 0u32;
            loop {
                let g = self.generation.load(SeqCst);
                if g != seen {
                    seen = g;
                    break;
                }
                backoff(&mut step);
                if step.is_multiple_of(256) && start.elapsed() > SPIN {
                    let mut guard = self.park.lock().unwrap_or_else(|e| e.into_inner());
                    self.parked.fetch_add(1, SeqCst);
                    // Checked after announcing `parked` and under the lock the publisher notifies
                    // under, so a job published meanwhile is either seen here or wakes the wait.
                    while self.generation.load(SeqCst) == seen {
                        guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                    self.parked.fetch_sub(1, SeqCst);
                    continue;
                }
            }
            self.active.fetch_add(1, SeqCst);
            let p = self.job.load(SeqCst);
            if !p.is_null() {
                // SAFETY: `active` was raised before the pointer was read, so the publishing caller
                // (which clears the pointer, then waits for `active` to reach zero) keeps the job alive
                // until this helper lowers `active` below.
                let job = unsafe { &*p };
                if job.seats.fetch_update(SeqCst, SeqCst, |s| s.checked_sub(1)).is_ok() {
                    IN_JOB.set(true);
                    job.run();
                    IN_JOB.set(false);
                }
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }
}

/// Runs `f(i)` for every `i < items`, spread over up to [`num_threads`] threads (the caller is one
/// of them), and returns when all are done. Items are claimed dynamically, so they need not be even.
/// Runs serially when there is one thread or one item, inside another `parallel_for`, or while another
/// thread is using the team. A panic in `f` is re-raised here after every item has finished.
pub(crate) fn parallel_for(items: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = rayon::current_num_threads().min(items);
    if threads <= 1 || IN_JOB.get() {
        (0..items).for_each(f);
        return;
    }
    let team = team();
    if team.busy.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
        (0..items).for_each(f);
        return;
    }
    let helpers = team.ensure_helpers(threads - 1).min(threads - 1);
    let job = Job {
        f,
        items,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        seats: AtomicUsize::new(helpers),
        panic: Mutex::new(None),
    };
    // The 'static is a lie the helpers never act on: they only dereference the pointer while it is
    // published and `active` holds this frame open (see `helper`).
    team.job.store((&job as *const Job).cast_mut().cast(), SeqCst);
    team.generation.fetch_add(1, SeqCst);
    if team.parked.load(SeqCst) > 0 {
        let _guard = team.park.lock().unwrap_or_else(|e| e.into_inner());
        team.wake.notify_all();
    }
    IN_JOB.set(true);
    job.run();
    IN_JOB.set(false);
    let mut step = 0;
    while job.done.load(SeqCst) < items {
        backoff(&mut step);
    }
    team.job.store(std::ptr::null_mut(), SeqCst);
    while team.active.load(SeqCst) > 0 {
        backoff(&mut step);
    }
    team.busy.store(false, SeqCst);
    if let Some(p) = job.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
}

/// A raw pointer that parallel items may share, each writing its own disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: every user hands each item a disjoint region to write (see the call sites).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// By method, so closures capture the wrapper and not (by edition-2021 disjoint capture) the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Calls `f(i, chunk)` for each `chunk_len`-sized chunk of `data` (the last may be shorter), in
/// parallel when `parallel`.
pub(crate) fn for_chunks_mut(data: &mut [f32], chunk_len: usize, parallel: bool, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let chunk_len = chunk_len.max(1);
    let chunks = data.len().div_ceil(chunk_len);
    if !parallel || chunks <= 1 {
        data.chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
        return;
    }
    let len = data.len();
    let base = SyncPtr(data.as_mut_ptr());
    parallel_for(chunks, &|i| {
        let start = i * chunk_len;
        let n = chunk_len.min(len - start);
        // SAFETY: chunk i is `start..start + n` of `data`, disjoint from every other chunk, and `data`
        // is borrowed mutably for the whole call.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i, chunk);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn runs_every_item_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            for items in [0usize, 1, 2, 7, 1000] {
                let hits: Vec<AtomicU32> = (0..items).map(|_| AtomicU32::new(0)).collect();
                parallel_for(items, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{items} items");
            }
            // Back to back, and with gaps long enough for the helpers to park.
            for round in 0..50 {
                let sum = AtomicUsize::new(0);
                parallel_for(64, &|i| {
                    sum.fetch_add(i, SeqCst);
                });
                assert_eq!(sum.load(SeqCst), 64 * 63 / 2);
                if round % 10 == 0 {
                    std::thread::sleep(SPIN * 2);
                }
            }
        });
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let total = AtomicUsize::new(0);
        pool.install(|| {
            rayon::join(
                || {
                    parallel_for(20, &|_| {
                        parallel_for(5, &|_| {
                            total.fetch_add(1, SeqCst);
                        });
                    })
                },
                || {
                    parallel_for(30, &|_| {
                        total.fetch_add(1, SeqCst);
                    })
                },
            )
        });
        assert_eq!(total.load(SeqCst), 20 * 5 + 30);
    }

    #[test]
    fn panics_reach_the_caller_and_the_team_recovers() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let r = catch_unwind(|| parallel_for(100, &|i| assert!(i != 37, "item 37")));
            assert!(r.is_err());
            let count = AtomicUsize::new(0);
            parallel_for(100, &|_| {
                count.fetch_add(1, SeqCst);
            });
            assert_eq!(count.load(SeqCst), 100);
        });
    }

    #[test]
    fn chunks_cover_the_slice() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let mut v = vec![0.0f32; 1001];
            for_chunks_mut(&mut v, 100, true, &|i, c| c.iter_mut().for_each(|x| *x += i as f32 + 1.0));
            for (j, x) in v.iter().enumerate() {
                assert_eq!(*x, (j / 100) as f32 + 1.0);
            }
        });
    }
}
