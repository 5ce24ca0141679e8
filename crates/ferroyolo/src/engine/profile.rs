//! Opt-in timing of every engine call, to see where a whole forward pass spends its time.
//!
//! Off by default (each kernel then pays one relaxed atomic load). [`set_profiling`] turns it on;
//! [`profile_report`] returns a table of calls grouped by kernel and shape, and clears it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Entry {
    calls: u64,
    nanos: u128,
    flops: u64,
}

static TABLE: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);

/// Turns per-call timing of engine kernels on or off (process-wide).
pub fn set_profiling(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// A started measurement; recording happens in [`Span::finish`].
pub(crate) struct Span(Option<Instant>);

/// Starts timing a kernel call when profiling is on.
#[inline]
pub(crate) fn start() -> Span {
    Span(ENABLED.load(Ordering::Relaxed).then(Instant::now))
}

impl Span {
    /// Records the call under the label `what()` (only built when profiling is on).
    #[inline]
    pub(crate) fn finish(self, flops: u64, what: impl FnOnce() -> String) {
        if let Some(t) = self.0 {
            let nanos = t.elapsed().as_nanos();
            let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let e = table.get_or_insert_with(HashMap::new).entry(what()).or_default();
            e.calls += 1;
            e.nanos += nanos;
            e.flops += flops;
        }
    }
}

/// The calls recorded since the last report, slowest first (total time, calls, mean time, GFLOP/s,
/// share), then clears them.
pub fn profile_report() -> String {
    let table = TABLE.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    let mut rows: Vec<_> = table.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.nanos));
    let total: u128 = rows.iter().map(|r| r.1.nanos).sum::<u128>().max(1);
    let mut out = format!("{:<44} {:>6} {:>10} {:>9} {:>8} {:>6}\n", "call", "calls", "total ms", "mean ms", "GFLOP/s", "%");
    for (what, e) in &rows {
        let ms = e.nanos as f64 / 1e6;
        let gflops = if e.flops > 0 { format!("{:.1}", e.flops as f64 / e.nanos as f64) } else { "-".into() };
        out += &format!(
            "{what:<44} {:>6} {ms:>10.3} {:>9.3} {gflops:>8} {:>6.1}\n",
            e.calls,
            ms / e.calls as f64,
            100.0 * e.nanos as f64 / total as f64
        );
    }
    out += &format!("{:<44} {:>6} {:>10.3}\n", "total", rows.iter().map(|r| r.1.calls).sum::<u64>(), total as f64 / 1e6);
    out
}

/// CPU time of the whole process in ms (all threads, spinning included; 0 where the clock is not
/// available): on a machine shared with other jobs a steadier measure of the work than wall time,
/// best read at one thread.
pub fn process_cpu_ms() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid out-pointer and a clock id Linux defines (libc is linked into every binary).
    if cfg!(target_os = "linux") && unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
        ts.sec as f64 * 1e3 + ts.nsec as f64 / 1e6
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_enabled() {
        // Other tests run kernels concurrently, so only this test's own label is checked.
        start().finish(10, || "profile-test-off".into());
        set_profiling(true);
        let s = start();
        s.finish(2_000, || "profile-test-on".into());
        set_profiling(false);
        let report = profile_report();
        assert!(report.contains("profile-test-on"));
        assert!(!report.contains("profile-test-off"));
    }
}
