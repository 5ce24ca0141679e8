//! A small process-wide pool of large `f32` buffers, recycled from dropped tensors into new ones.
//!
//! A forward pass allocates and frees about a hundred activation tensors of a few MiB each. Left to
//! the system allocator, much of that memory goes back to the kernel on free (glibc trims heap tops
//! and its per-thread arenas) and comes back as fresh pages, so every layer pays page faults and
//! page clearing (measured: ~18% of a 3×3 stride-2 convolution's time). Recycling the buffers keeps
//! them mapped. Buffers under [`MIN_POOLED`] floats stay with the allocator, which handles them well.

use std::sync::Mutex;

/// Smallest buffer worth pooling (64 KiB).
const MIN_POOLED: usize = 1 << 14;
/// Cap on the floats held idle in the pool (256 MiB); buffers freed beyond it go to the allocator.
const MAX_IDLE: usize = 64 << 20;

struct Pool {
    bufs: Vec<Vec<f32>>,
    idle: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { bufs: Vec::new(), idle: 0 });

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock cannot leave the pool inconsistent (every update is a push or a
    // remove with its counter), so a poisoned lock is still usable.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty vector with capacity for at least `len` floats, recycled when one fits.
pub(crate) fn take(len: usize) -> Vec<f32> {
    if len >= MIN_POOLED {
        let mut pool = lock();
        // Best fit, and at most twice the size, so a small tensor does not pin a large buffer.
        let best = (0..pool.bufs.len())
            .filter(|&i| (len..=2 * len).contains(&pool.bufs[i].capacity()))
            .min_by_key(|&i| pool.bufs[i].capacity());
        if let Some(i) = best {
            // (In order, so that the front stays the longest idle; the pool holds a few hundred at most.)
            let mut v = pool.bufs.remove(i);
            pool.idle -= v.capacity();
            v.clear();
            return v;
        }
    }
    Vec::with_capacity(len)
}

/// A vector of `len` zeros, on a recycled buffer when one fits.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    let mut v = take(len);
    v.resize(len, 0.0);
    v
}

/// Returns a buffer to the pool (or to the allocator when small or when the pool is full).
pub(crate) fn give(v: Vec<f32>) {
    let cap = v.capacity();
    if cap < MIN_POOLED {
        return;
    }
    if cap > MAX_IDLE {
        return;
    }
    let mut pool = lock();
    // Full: the longest-idle buffers go, not the new one. Otherwise a pool filled by an earlier
    // workload (another model, calibration) would keep sizes nobody asks for any more while every
    // buffer of the current one went back to the allocator (page faults on every pass again).
    while pool.idle + cap > MAX_IDLE {
        let old = pool.bufs.remove(0);
        pool.idle -= old.capacity();
    }
    pool.idle += cap;
    pool.bufs.push(v);
}

/// Frees every idle buffer the engine keeps for reuse (at most 256 MiB). Call it after inference
/// when the memory is wanted elsewhere; later tensors simply allocate afresh.
pub fn release_buffers() {
    let bufs = std::mem::take(&mut lock().bufs);
    lock().idle = 0;
    drop(bufs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_fitting_buffers_only() {
        let v: Vec<f32> = Vec::with_capacity(100_000);
        let ptr = v.as_ptr();
        give(v);
        // Too big a buffer for a small request, too small for a large one.
        let small = take(20_000);
        assert_ne!(small.as_ptr(), ptr);
        assert!(take(300_000).capacity() >= 300_000);
        let w = take(90_000);
        assert!(w.is_empty() && w.capacity() >= 90_000);
        let z = zeros(70_000);
        assert_eq!(z.len(), 70_000);
        assert!(z.iter().all(|&x| x == 0.0));
        release_buffers();
    }

    #[test]
    fn a_full_pool_makes_room_for_new_buffers() {
        // Capacities no other test asks for (never touched: no memory is committed).
        let (old_len, new_len) = (MAX_IDLE / 4 - 1_001, MAX_IDLE / 4 + 1_003);
        for _ in 0..4 {
            give(Vec::with_capacity(old_len));
        }
        let v: Vec<f32> = Vec::with_capacity(new_len);
        let ptr = v.as_ptr();
        give(v);
        let pool = lock();
        assert!(pool.idle <= MAX_IDLE);
        assert!(pool.bufs.iter().any(|b| b.as_ptr() == ptr), "the newest buffer was dropped instead of an idle one");
    }
}
