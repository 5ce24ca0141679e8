//! Intel AMX (Advanced Matrix Extensions) for the dense INT8 convolution: `tdpbsud` multiplies a
//! 16 × 64-byte tile of signed weights by a 16-row tile of unsigned activation quads and adds into
//! a 16 × 16 tile of `i32`, 16 384 multiply-adds per instruction (about 16× what `vpdpbusd` on
//! AVX-512 does per cycle on the same core).
//!
//! ## Operands
//! * **C** (accumulators, `tmm0..tmm3`): 2 × 2 tiles of 16 output channels × 16 grid positions.
//! * **A** (`tmm4`, `tmm5`): weights of 16 output channels × one *k-group* ([`Weights`]): `kq`
//!   input-channel quads of one tap, 4 bytes each (`kq` = the largest divisor of the quad count
//!   that is at most 16, so that the quads split into equal groups and one tile shape serves the
//!   whole layer).
//! * **B** (`tmm6`, `tmm7`): the same k-group of the activations: `kq` rows, one per channel quad,
//!   each 16 grid positions × 4 channel bytes, i.e. 64 consecutive bytes of a quad plane (the
//!   `QTensor` layout, or the phase layout a strided or padded convolution builds). Consecutive
//!   quads sit one plane apart, so a tile is a single strided load straight from the activations;
//!   only a tile reaching past the end of the grid is copied (zero-filled) first.
//!
//! The integers are the same as every other kernel's (exact `i32` sums); the f32 epilogue is
//! shared.
//!
//! ## Operating system
//! Linux gives a process the (8 KiB per thread) AMX register state only after
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; [`available`] asks once. Each work item
//! loads its tile configuration and releases the tiles when done, so that threads that are not
//! running AMX code carry no tile state through context switches.

/// Largest number of channel quads (B rows) in one k-group.
const MAX_KQ: usize = 16;

/// Whether this CPU and operating system run AMX-INT8 (CPUID, the OS's XSAVE support for tile
/// state, and Linux's per-process permission, requested on the first call).
pub(crate) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // (`__cpuid_count` is a safe function on newer Rust, an unsafe one on the MSRV.)
    #[allow(unused_unsafe)]
    let (leaf1, leaf7) = unsafe { (__cpuid_count(1, 0), __cpuid_count(7, 0)) };
    let osxsave = leaf1.ecx >> 27 & 1 == 1;
    let (amx_tile, amx_int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
    if !(osxsave && amx_tile && amx_int8) {
        return false;
    }
    let xcr0: u64;
    // SAFETY: xgetbv(0) is valid when CPUID reports OSXSAVE (checked above); it only reads XCR0.
    unsafe {
        let (lo, hi): (u32, u32);
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
        xcr0 = (hi as u64) << 32 | lo as u64;
    }
    // XTILECFG (bit 17) and XTILEDATA (bit 18) state enabled by the OS.
    if xcr0 >> 17 & 3 != 3 {
        return false;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with these arguments only changes this process's
    // permission to use the AMX register state; `syscall` clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// The weights of a dense convolution as AMX A tiles: for each M tile (16 output channels; the
/// count rounded up to a pair) and k-group `g = tap · blocks + block`, 16 rows of `kq · 4` bytes
/// (row r = output channel `16·m + r`, byte `4q + j` = input channel `4(block·kq + q) + j` at that
/// tap; zero past the real channels).
#[derive(Clone, Debug)]
pub(crate) struct Weights {
    /// Channel quads per k-group.
    pub kq: usize,
    /// k-groups (taps × quad blocks).
    pub groups: usize,
    /// M tiles (even).
    pub m_tiles: usize,
    data: Vec<i8>,
}

impl Weights {
    /// Packs `weight` (`[out, in, k, k]`).
    pub fn pack(weight: &[i8], in_channels: usize, out_channels: usize, kernel: usize) -> Weights {
        let taps = kernel * kernel;
        let quads = in_channels.div_ceil(4);
        let kq = (1..=MAX_KQ.min(quads)).rev().find(|d| quads.is_multiple_of(*d)).unwrap_or(1);
        let blocks = quads / kq;
        let groups = taps * blocks;
        let m_tiles = out_channels.div_ceil(32) * 2;
        let row = kq * 4;
        let mut data = vec![0i8; m_tiles * groups * 16 * row];
        for oc in 0..out_channels {
            let (m, r) = (oc / 16, oc % 16);
            for t in 0..taps {
                for b in 0..blocks {
                    let g = t * blocks + b;
                    let dst = &mut data[((m * groups + g) * 16 + r) * row..][..row];
                    for (i, d) in dst.iter_mut().enumerate() {
                        let ci = 4 * b * kq + i;
                        if ci < in_channels {
                            *d = weight[(oc * in_channels + ci) * taps + t];
                        }
                    }
                }
            }
        }
        Weights { kq, groups, m_tiles, data }
    }

    /// Quad blocks per tap.
    pub fn blocks(&self, taps: usize) -> usize {
        self.groups / taps
    }

    /// The A tile of M tile `m`, k-group `g`.
    fn tile(&self, m: usize, g: usize) -> *const i8 {
        self.data[(m * self.groups + g) * 16 * self.kq * 4..].as_ptr()
    }
}

/// The tile shapes of one layer (`ldtilecfg`'s 64-byte palette-1 format).
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// C tiles 16 × 64 bytes, A tiles 16 × `4·kq`, B tiles `kq` × 64.
    pub fn new(kq: usize) -> TileConfig {
        assert!((1..=MAX_KQ).contains(&kq), "TileConfig: {kq} quads per k-group");
        let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..4 {
            (c.colsb[t], c.rows[t]) = (64, 16);
        }
        for t in 4..6 {
            (c.colsb[t], c.rows[t]) = (4 * kq as u16, 16);
        }
        for t in 6..8 {
            (c.colsb[t], c.rows[t]) = (64, kq as u8);
        }
        c
    }
}

/// One block of accumulators: M tile `m` (and `m + 1` when `pair`) of `w` times the B tiles at
/// `b[g]` and `b[g] + 16` quads (rows `b_stride` bytes apart) for every k-group `g`, stored into
/// `acc` (16 or 32 rows of `acc_stride` `i32`s: rows = output channels, columns = 32 grid
/// positions). A layer with at most 16 output channels runs single tiles, not a pair of which
/// one would be padding.
///
/// # Safety
/// AMX must be [`available`], and the caller must have loaded `TileConfig::new(w.kq)` on this
/// thread ([`with_tiles`]); `m + pair < w.m_tiles`; `b` has `w.groups` pointers, each readable for
/// `kq` rows of 32 quads at `b_stride` bytes apart; `acc` is writable for 16 (32 with `pair`) rows
/// of `acc_stride ≥ 32`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn block(w: &Weights, m: usize, pair: bool, b: &[*const u32], b_stride: usize, acc: *mut i32, acc_stride: usize) {
    use std::arch::asm;
    debug_assert!(m + (pair as usize) < w.m_tiles && b.len() == w.groups && acc_stride >= 32);
    let a_stride = w.kq * 4;
    let sc = acc_stride * 4;
    if pair {
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack));
        for (g, &bp) in b.iter().enumerate() {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                "tdpbsud tmm1, tmm4, tmm7",
                "tdpbsud tmm2, tmm5, tmm6",
                "tdpbsud tmm3, tmm5, tmm7",
                a0 = in(reg) w.tile(m, g),
                a1 = in(reg) w.tile(m + 1, g),
                b0 = in(reg) bp,
                b1 = in(reg) bp.add(16),
                sa = in(reg) a_stride,
                sb = in(reg) b_stride,
                options(nostack, readonly)
            );
        }
        asm!(
            "tilestored [{c00} + {sc}*1], tmm0",
            "tilestored [{c01} + {sc}*1], tmm1",
            "tilestored [{c10} + {sc}*1], tmm2",
            "tilestored [{c11} + {sc}*1], tmm3",
            c00 = in(reg) acc,
            c01 = in(reg) acc.add(16),
            c10 = in(reg) acc.add(16 * acc_stride),
            c11 = in(reg) acc.add(16 * acc_stride + 16),
            sc = in(reg) sc,
            options(nostack)
        );
    } else {
        asm!("tilezero tmm0", "tilezero tmm1", options(nostack));
        for (g, &bp) in b.iter().enumerate() {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbsud tmm0, tmm4, tmm6",
                "tdpbsud tmm1, tmm4, tmm7",
                a0 = in(reg) w.tile(m, g),
                b0 = in(reg) bp,
                b1 = in(reg) bp.add(16),
                sa = in(reg) a_stride,
                sb = in(reg) b_stride,
                options(nostack, readonly)
            );
        }
        asm!(
            "tilestored [{c00} + {sc}*1], tmm0",
            "tilestored [{c01} + {sc}*1], tmm1",
            c00 = in(reg) acc,
            c01 = in(reg) acc.add(16),
            sc = in(reg) sc,
            options(nostack)
        );
    }
}

/// Runs `f` with the tile configuration for `kq`-quad k-groups loaded on this thread, then
/// releases the tiles (also when `f` panics).
///
/// # Safety
/// AMX must be [`available`].
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn with_tiles<R>(kq: usize, f: impl FnOnce() -> R) -> R {
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: only constructed after ldtilecfg succeeded on this thread.
            unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
        }
    }
    let cfg = TileConfig::new(kq);
    std::arch::asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
    let _release = Release;
    f()
}
