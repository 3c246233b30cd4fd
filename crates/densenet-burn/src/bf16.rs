//! bf16 matrix products on the CPU's AMX tile unit, with fp32 accumulation, for the
//! convolutions' gemms.
//!
//! Inputs are rounded to bf16 (nearest, ties to even) while being packed into the tile
//! layouts; products accumulate in fp32 tiles and land in an fp32 destination, so weights,
//! activations and gradients stay fp32 everywhere else (fp32 master weights). Selected at run
//! time: [`set_precision`] asks for it, and [`active`] is true only where the CPU has AMX-BF16
//! and the kernel grants the tile state (Linux `arch_prctl`); everywhere else the callers keep
//! the fp32 `gemm` crate.
//!
//! Tiles: `tmm0..tmm3` hold a 32x32 block of the result (2x2 tiles of 16x16 fp32), `tmm4`/`tmm5`
//! two 16x32 bf16 tiles of the left matrix, `tmm6`/`tmm7` two 32x16 tiles of the right one in
//! the pair-interleaved ("VNNI") layout that `tdpbf16ps` reads.

use std::sync::atomic::{AtomicU8, Ordering};

/// Arithmetic of the convolutions' matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 inputs and accumulation (the `gemm` crate): the reference.
    #[default]
    Fp32,
    /// bf16 inputs, fp32 accumulation on AMX where the CPU has it; fp32 elsewhere.
    Bf16,
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of every later convolution gemm in this process (training and the
/// compiled inference path).
pub fn set_precision(precision: Precision) {
    PRECISION.store(precision as u8, Ordering::Relaxed);
}

/// [`set_precision`] until the guard drops, then the precision before it (on early returns too).
#[must_use = "the precision reverts when the guard drops"]
pub fn scoped(precision: Precision) -> PrecisionGuard {
    let before = self::precision();
    set_precision(precision);
    PrecisionGuard(before)
}

/// Restores the precision it holds when dropped; see [`scoped`].
#[derive(Debug)]
pub struct PrecisionGuard(Precision);

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        set_precision(self.0);
    }
}

/// The precision asked for with [`set_precision`].
pub fn precision() -> Precision {
    if PRECISION.load(Ordering::Relaxed) == Precision::Bf16 as u8 {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}

/// Whether this CPU and OS can run the bf16 tile kernels.
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(imp::detect)
}

/// Whether gemms run in bf16 now: asked for and available.
pub fn active() -> bool {
    precision() == Precision::Bf16 && available()
}

/// `f` rounded to the nearest bf16 (ties to even), as its 16 bits.
#[inline(always)]
pub(crate) fn to_bf16(f: f32) -> u16 {
    let b = f.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// A matrix by its pointer, column stride and row stride (in elements), as `gemm::gemm` takes it.
pub(crate) type View<T> = (T, isize, isize);

/// `dst = lhs [m, k] x rhs [k, n]` (`accumulate`: `dst += ...`) with bf16 inputs and fp32
/// accumulation, one thread. Callers check [`available`] first.
///
/// # Safety
/// [`available`] must be true, and every pointer must cover its matrix with its strides.
pub(crate) unsafe fn gemm(
    dims: [usize; 3],
    dst: View<*mut f32>,
    lhs: View<*const f32>,
    rhs: View<*const f32>,
    accumulate: bool,
) {
    debug_assert!(available());
    unsafe { imp::gemm(dims, dst, lhs, rhs, accumulate) }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use super::View;

    pub(super) fn detect() -> bool {
        false
    }

    pub(super) unsafe fn gemm(_: [usize; 3], _: View<*mut f32>, _: View<*const f32>, _: View<*const f32>, _: bool) {
        unreachable!("bf16 tiles are never available on this target")
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::{to_bf16, View};
    use std::arch::asm;
    use std::cell::RefCell;

    /// u32 words (bf16 pairs) of one tile: 16 rows x 64 bytes.
    const TILE: usize = 256;
    /// Bytes the right matrix's tiles of one column block may take (stays in L2).
    const B_BLOCK_BYTES: usize = 512 * 1024;

    pub(super) fn detect() -> bool {
        // SAFETY: cpuid leaves 0 and 7 exist on every x86-64 CPU (leaf 7 checked against leaf 0).
        #[allow(unused_unsafe)]
        let (max, edx) = unsafe {
            let max = std::arch::x86_64::__cpuid_count(0, 0).eax;
            (max, if max >= 7 { std::arch::x86_64::__cpuid_count(7, 0).edx } else { 0 })
        };
        let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
        // The packing converts with AVX-512 BF16 (every CPU with AMX-BF16 has it).
        let packing = is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16");
        if max < 7 || !amx_bf16 || !amx_tile || !packing {
            return false;
        }
        // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: the kernel's permission to use the
        // 8 KiB tile state, for every thread of this process.
        // SAFETY: a plain syscall with integer arguments.
        unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) == 0 }
    }

    /// The palette-1 tile configuration: eight tiles of 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        TileConfig(c)
    };

    thread_local! {
        /// Each thread's packed left matrix and right column block (grown, never shrunk).
        static PACKED: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// Two consecutive values along the inner dimension as one bf16 pair (`lo` first in memory).
    #[inline(always)]
    fn pair(lo: f32, hi: f32) -> u32 {
        to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
    }

    pub(super) unsafe fn gemm(
        [m, n, k]: [usize; 3],
        dst: View<*mut f32>,
        lhs: View<*const f32>,
        rhs: View<*const f32>,
        accumulate: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        // C = A B or C^T = B^T A^T: whichever leaves fewer values to the strided packing paths.
        let strided = |(_, cs, _): View<*const f32>, len: usize| if cs == 1 { 0 } else { len };
        let (tl, tr) = ((rhs.0, rhs.2, rhs.1), (lhs.0, lhs.2, lhs.1));
        if strided(tl, n * k) + strided(tr, k * m) < strided(lhs, m * k) + strided(rhs, k * n) {
            // SAFETY: the same matrices, read transposed.
            return unsafe { oriented([n, m, k], (dst.0, dst.2, dst.1), tl, tr, accumulate) };
        }
        unsafe { oriented([m, n, k], dst, lhs, rhs, accumulate) }
    }

    /// [`gemm`] in the orientation given.
    unsafe fn oriented(
        [m, n, k]: [usize; 3],
        dst: View<*mut f32>,
        lhs: View<*const f32>,
        rhs: View<*const f32>,
        accumulate: bool,
    ) {
        let (mt, nt, kc) = (m.div_ceil(16), n.div_ceil(16), k.div_ceil(32).max(1));
        // Column tiles per block: as many as fit the budget, an even number where possible.
        let block = (B_BLOCK_BYTES / (kc * TILE * 4)).max(2) & !1;
        PACKED.with(|cell| {
            let (a, b) = &mut *cell.borrow_mut();
            // One column block: each pair of row tiles is packed just before use and stays in
            // L1 / L2 (the left matrix is read once); several: all of it first, reused by each block.
            let streamed = nt <= block;
            grow(a, if streamed { 2 } else { mt } * kc * TILE);
            grow(b, block.min(nt) * kc * TILE);
            if !streamed {
                // SAFETY: the caller's matrix covers [m, k]; `a` holds mt * kc tiles.
                unsafe { pack_lhs(a, lhs, [m, k], 0..mt, kc) };
            }
            // SAFETY: CONFIG is a valid palette-1 configuration; the tiles are released below.
            unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
            let mut out = Out([0.0; 1024]);
            let (dp, dcs, drs) = dst;
            let mut block_product = |a: &[u32], b: &[u32], i: usize, j: usize, j0: usize| {
                let (mi, nj) = (2.min(mt - i), 2.min(nt - j0 - j));
                let (r0, rows) = (i * 16, (m - i * 16).min(mi * 16));
                let (c0, cols) = ((j0 + j) * 16, (n - (j0 + j) * 16).min(nj * 16));
                let (ap, bp) = (a.as_ptr(), b[j * kc * TILE..].as_ptr());
                // Whole tiles on a row-major destination load and store it directly.
                let direct = dcs == 1 && rows == mi * 16 && cols == nj * 16;
                let (cp, stride, load) = if direct {
                    // SAFETY: the block lies inside `dst`.
                    (unsafe { dp.offset(r0 as isize * drs + c0 as isize) }, drs as usize * 4, accumulate)
                } else {
                    (out.0.as_mut_ptr(), 128, false)
                };
                // SAFETY: `ap` covers `mi` tile streams of `kc` tiles, `bp` `nj` of them, `cp` a
                // block of `mi` x `nj` tiles with row stride `stride` bytes.
                unsafe {
                    match (mi, nj) {
                        (2, 2) => kernel::<2, 2>(ap, bp, kc, cp, stride, load),
                        (2, _) => kernel::<2, 1>(ap, bp, kc, cp, stride, load),
                        (_, 2) => kernel::<1, 2>(ap, bp, kc, cp, stride, load),
                        _ => kernel::<1, 1>(ap, bp, kc, cp, stride, load),
                    }
                    if !direct {
                        write(&out, dst, [r0, c0], [rows, cols], accumulate);
                    }
                }
            };
            for j0 in (0..nt).step_by(block) {
                let jn = block.min(nt - j0);
                // SAFETY: the caller's matrix covers [k, n]; `b` holds `jn * kc` tiles.
                unsafe { pack_rhs(b, rhs, k, n, j0, jn, kc) };
                if streamed {
                    for i in (0..mt).step_by(2) {
                        // SAFETY: as above; `a` holds 2 * kc tiles.
                        unsafe { pack_lhs(a, lhs, [m, k], i..(i + 2).min(mt), kc) };
                        for j in (0..jn).step_by(2) {
                            block_product(a, b, i, j, j0);
                        }
                    }
                } else {
                    for j in (0..jn).step_by(2) {
                        for i in (0..mt).step_by(2) {
                            block_product(&a[i * kc * TILE..], b, i, j, j0);
                        }
                    }
                }
            }
            // SAFETY: ends this thread's use of the tiles.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        });
    }

    fn grow(v: &mut Vec<u32>, n: usize) {
        if v.len() < n {
            v.resize(n, 0);
        }
    }

    /// A 32x32 fp32 block of the result, as the tiles store it (row stride 128 bytes).
    #[repr(C, align(64))]
    struct Out([f32; 1024]);

    /// `c[..MI*16, ..NJ*16] (+)= sum over kc of A tiles x B tiles` (`load`: starting from `c`'s
    /// values): `a` holds MI streams of `kc` left tiles (16 rows x 16 pairs), `b` NJ streams of
    /// right tiles (16 pairs x 16 columns); `c` is fp32 with row stride `stride` bytes.
    ///
    /// # Safety
    /// The tile configuration must be loaded; `a`, `b` and `c` must cover their blocks.
    #[inline(always)]
    unsafe fn kernel<const MI: usize, const NJ: usize>(
        a: *const u32,
        b: *const u32,
        kc: usize,
        c: *mut f32,
        stride: usize,
        load: bool,
    ) {
        const S: usize = 64;
        unsafe {
            // Wrapping: with MI or NJ = 1 these point past the block and are never used.
            let (c1, c2) = (c.wrapping_add(16), c.wrapping_byte_add(16 * stride));
            let c3 = c2.wrapping_add(16);
            if load {
                asm!("tileloadd tmm0, [{p} + {s}]", p = in(reg) c, s = in(reg) stride, options(nostack, readonly));
                if NJ == 2 {
                    asm!("tileloadd tmm1, [{p} + {s}]", p = in(reg) c1, s = in(reg) stride, options(nostack, readonly));
                }
                if MI == 2 {
                    asm!("tileloadd tmm2, [{p} + {s}]", p = in(reg) c2, s = in(reg) stride, options(nostack, readonly));
                    if NJ == 2 {
                        asm!("tileloadd tmm3, [{p} + {s}]", p = in(reg) c3, s = in(reg) stride, options(nostack, readonly));
                    }
                }
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            }
            for q in 0..kc {
                let (a0, b0) = (a.add(q * TILE), b.add(q * TILE));
                asm!("tileloadd tmm4, [{p} + {s}]", p = in(reg) a0, s = in(reg) S, options(nostack, readonly));
                asm!("tileloadd tmm6, [{p} + {s}]", p = in(reg) b0, s = in(reg) S, options(nostack, readonly));
                asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
                if NJ == 2 {
                    let b1 = b0.add(kc * TILE);
                    asm!("tileloadd tmm7, [{p} + {s}]", p = in(reg) b1, s = in(reg) S, options(nostack, readonly));
                    asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem));
                }
                if MI == 2 {
                    let a1 = a0.add(kc * TILE);
                    asm!("tileloadd tmm5, [{p} + {s}]", p = in(reg) a1, s = in(reg) S, options(nostack, readonly));
                    asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem));
                    if NJ == 2 {
                        asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                    }
                }
            }
            asm!("tilestored [{p} + {s}], tmm0", p = in(reg) c, s = in(reg) stride, options(nostack));
            if NJ == 2 {
                asm!("tilestored [{p} + {s}], tmm1", p = in(reg) c1, s = in(reg) stride, options(nostack));
            }
            if MI == 2 {
                asm!("tilestored [{p} + {s}], tmm2", p = in(reg) c2, s = in(reg) stride, options(nostack));
                if NJ == 2 {
                    asm!("tilestored [{p} + {s}], tmm3", p = in(reg) c3, s = in(reg) stride, options(nostack));
                }
            }
        }
    }

    /// `dst[r0.., c0..] (+)= out[..rows, ..cols]`.
    ///
    /// # Safety
    /// `dst` must cover the block.
    unsafe fn write(
        out: &Out,
        (p, cs, rs): View<*mut f32>,
        [r0, c0]: [usize; 2],
        [rows, cols]: [usize; 2],
        accumulate: bool,
    ) {
        if rs == 1 {
            // A transposed destination (the other orientation of a row-major product): columns are contiguous.
            for c in 0..cols {
                // SAFETY: column c0 + c's rows r0.. r0 + rows lie inside `dst`.
                let col =
                    unsafe { std::slice::from_raw_parts_mut(p.offset((c0 + c) as isize * cs + r0 as isize), rows) };
                for (r, d) in col.iter_mut().enumerate() {
                    let s = out.0[r * 32 + c];
                    *d = if accumulate { *d + s } else { s };
                }
            }
            return;
        }
        for r in 0..rows {
            for (c, &s) in out.0[r * 32..r * 32 + cols].iter().enumerate() {
                // SAFETY: the element lies inside `dst`.
                unsafe {
                    let d = p.offset((r0 + r) as isize * rs + (c0 + c) as isize * cs);
                    *d = if accumulate { *d + s } else { s };
                }
            }
        }
    }

    /// A left tile from `rows` <= 16 rows of `kn` <= 32 consecutive values (row stride `rs`),
    /// zero elsewhere.
    ///
    /// # Safety
    /// The CPU must have AVX-512 BW and BF16; `p` must cover the rows' values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile_from_rows(p: *const f32, rs: isize, rows: usize, kn: usize, tile: &mut [u32]) {
        use std::arch::x86_64::*;
        assert!(tile.len() >= TILE && rows <= 16 && kn <= 32);
        let (lo, hi) = (mask(kn.min(16)), mask(kn.saturating_sub(16)));
        for r in 0..16 {
            // SAFETY: masked-off lanes are not read; the tile row is inside `tile`.
            unsafe {
                let h = if r < rows {
                    let row = p.offset(r as isize * rs);
                    // Low half from the first 16 values: the 32 bf16 in order, i.e. 16 pairs.
                    _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, row.add(16)), _mm512_maskz_loadu_ps(lo, row))
                } else {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512())
                };
                _mm512_storeu_si512(tile.as_mut_ptr().add(r * 16).cast(), std::mem::transmute::<__m512bh, __m512i>(h));
            }
        }
    }

    /// The lane mask of the first `n` <= 16 lanes.
    #[inline(always)]
    fn mask(n: usize) -> u16 {
        ((1u32 << n) - 1) as u16
    }

    /// A right tile from `krows` <= 32 rows of `cols` <= 16 consecutive values (row stride
    /// `rs`), zero elsewhere: row pairs interleaved column by column.
    ///
    /// # Safety
    /// The CPU must have AVX-512 BW and BF16; `p` must cover the rows' values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile_from_row_pairs(p: *const f32, rs: isize, krows: usize, cols: usize, tile: &mut [u32]) {
        use std::arch::x86_64::*;
        assert!(tile.len() >= TILE && krows <= 32 && cols <= 16);
        // Lane 2c takes value c of the even row (low half), lane 2c + 1 value c of the odd row.
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
            1, 16, 0,
        );
        let m = mask(cols);
        for r in 0..16 {
            // SAFETY: rows past `krows` and masked-off lanes are not read; the tile row is inside `tile`.
            unsafe {
                let even = p.offset(2 * r as isize * rs);
                let load = |row: usize, ptr: *const f32| {
                    if row < krows {
                        _mm512_maskz_loadu_ps(m, ptr)
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                let h = _mm512_cvtne2ps_pbh(load(2 * r + 1, even.offset(rs)), load(2 * r, even));
                let w = _mm512_permutexvar_epi16(idx, std::mem::transmute::<__m512bh, __m512i>(h));
                _mm512_storeu_si512(tile.as_mut_ptr().add(r * 16).cast(), w);
            }
        }
    }

    /// Row tiles `tiles` of the left matrix `[m, k]` into streams of `kc` tiles, zero-padded:
    /// `tile[r][q] = pair(lhs[16 i + r][32 c + 2 q], lhs[16 i + r][32 c + 2 q + 1])`.
    ///
    /// # Safety
    /// `lhs` must cover `[m, k]`; `a` must hold `tiles.len() * kc` tiles.
    unsafe fn pack_lhs(
        a: &mut [u32],
        (p, cs, rs): View<*const f32>,
        [m, k]: [usize; 2],
        tiles: std::ops::Range<usize>,
        kc: usize,
    ) {
        let at = |r: usize, kk: usize| -> f32 {
            // SAFETY: only called with r < m, kk < k.
            unsafe { *p.offset(r as isize * rs + kk as isize * cs) }
        };
        let first = tiles.start;
        for i in tiles {
            for c in 0..kc {
                let tile = &mut a[((i - first) * kc + c) * TILE..][..TILE];
                let (row0, k0) = (i * 16, c * 32);
                if cs == 1 {
                    let (rows, kn) = ((m - row0.min(m)).min(16), k.saturating_sub(k0).min(32));
                    // SAFETY: `kn` values of each of the `rows` rows from (row0, k0) lie inside `lhs`.
                    unsafe {
                        tile_from_rows(p.offset(row0.min(m) as isize * rs + k0.min(k) as isize), rs, rows, kn, tile)
                    };
                } else if row0 + 16 <= m && k0 + 32 <= k && rs == 1 {
                    for q in 0..16 {
                        // SAFETY: rows row0.. row0 + 16 of columns k0 + 2q and k0 + 2q + 1 lie inside `lhs`.
                        let (e, o) = unsafe {
                            let e = p.offset((k0 + 2 * q) as isize * cs + row0 as isize);
                            (std::slice::from_raw_parts(e, 16), std::slice::from_raw_parts(e.offset(cs), 16))
                        };
                        for r in 0..16 {
                            tile[r * 16 + q] = pair(e[r], o[r]);
                        }
                    }
                } else {
                    for r in 0..16 {
                        for q in 0..16 {
                            let (row, kk) = (row0 + r, k0 + 2 * q);
                            let lo = if row < m && kk < k { at(row, kk) } else { 0.0 };
                            let hi = if row < m && kk + 1 < k { at(row, kk + 1) } else { 0.0 };
                            tile[r * 16 + q] = pair(lo, hi);
                        }
                    }
                }
            }
        }
    }

    /// Column tiles `j0..j0 + jn` of the right matrix `[k, n]` into streams of `kc` tiles,
    /// zero-padded: `tile[r][cc] = pair(rhs[32 c + 2 r][16 j + cc], rhs[32 c + 2 r + 1][16 j + cc])`.
    ///
    /// # Safety
    /// `rhs` must cover `[k, n]`; `b` must hold `jn * kc` tiles.
    unsafe fn pack_rhs(
        b: &mut [u32],
        (p, cs, rs): View<*const f32>,
        k: usize,
        n: usize,
        j0: usize,
        jn: usize,
        kc: usize,
    ) {
        let at = |kk: usize, col: usize| -> f32 {
            // SAFETY: only called with kk < k, col < n.
            unsafe { *p.offset(kk as isize * rs + col as isize * cs) }
        };
        for j in 0..jn {
            let col0 = (j0 + j) * 16;
            for c in 0..kc {
                let tile = &mut b[(j * kc + c) * TILE..][..TILE];
                let k0 = c * 32;
                if cs == 1 {
                    let (krows, cols) = (k.saturating_sub(k0).min(32), (n - col0.min(n)).min(16));
                    // SAFETY: `cols` columns from col0 of each of the `krows` rows from k0 lie inside `rhs`.
                    unsafe {
                        tile_from_row_pairs(
                            p.offset(k0.min(k) as isize * rs + col0.min(n) as isize),
                            rs,
                            krows,
                            cols,
                            tile,
                        )
                    };
                } else if col0 + 16 <= n && k0 + 32 <= k && rs == 1 {
                    for cc in 0..16 {
                        // SAFETY: 32 rows from k0 of column col0 + cc lie inside `rhs`.
                        let src = unsafe {
                            std::slice::from_raw_parts(p.offset((col0 + cc) as isize * cs + k0 as isize), 32)
                        };
                        for (r, v) in src.chunks_exact(2).enumerate() {
                            tile[r * 16 + cc] = pair(v[0], v[1]);
                        }
                    }
                } else {
                    for r in 0..16 {
                        for cc in 0..16 {
                            let (kk, col) = (k0 + 2 * r, col0 + cc);
                            let lo = if col < n && kk < k { at(kk, col) } else { 0.0 };
                            let hi = if col < n && kk + 1 < k { at(kk + 1, col) } else { 0.0 };
                            tile[r * 16 + cc] = pair(lo, hi);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_bf16(h: u16) -> f32 {
        f32::from_bits((h as u32) << 16)
    }

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even one above.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 512.0)), 1.0);
    }

    /// The tile kernels equal an f64 product of the bf16-rounded inputs, for sizes that are
    /// and are not multiples of the tiles, every mix of transposed views (both orientations
    /// of the product) and accumulation.
    #[test]
    fn tile_gemm_matches_rounded_reference() {
        if !available() {
            eprintln!("skipped: this CPU / OS has no AMX-BF16");
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for (m, n, k) in [
            (1, 1, 1),
            (16, 16, 32),
            (32, 32, 64),
            (17, 33, 31),
            (5, 70, 100),
            (128, 49, 1152),
            (40, 3, 3),
            (20, 300, 2100),
        ] {
            // Each operand row-major, or stored transposed and read with swapped strides.
            for (ta, tb) in [(false, false), (true, true), (false, true), (true, false)] {
                for accumulate in [false, true] {
                    let a: Vec<f32> = (0..m * k).map(|_| rand()).collect();
                    let b: Vec<f32> = (0..k * n).map(|_| rand()).collect();
                    let start: Vec<f32> = (0..m * n).map(|_| rand()).collect();
                    let at = |r: usize, c: usize| if ta { a[c * m + r] } else { a[r * k + c] };
                    let bt = |r: usize, c: usize| if tb { b[c * k + r] } else { b[r * n + c] };
                    let lhs = if ta { (a.as_ptr(), m as isize, 1) } else { (a.as_ptr(), 1, k as isize) };
                    let rhs = if tb { (b.as_ptr(), k as isize, 1) } else { (b.as_ptr(), 1, n as isize) };
                    let mut got = start.clone();
                    // SAFETY: the views cover the vectors.
                    unsafe { gemm([m, n, k], (got.as_mut_ptr(), 1, n as isize), lhs, rhs, accumulate) };
                    for r in 0..m {
                        for c in 0..n {
                            let mut want: f64 = if accumulate { start[r * n + c] as f64 } else { 0.0 };
                            for i in 0..k {
                                want += from_bf16(to_bf16(at(r, i))) as f64 * from_bf16(to_bf16(bt(i, c))) as f64;
                            }
                            let diff = (got[r * n + c] as f64 - want).abs();
                            assert!(
                                diff <= 1e-5 * (k as f64).sqrt() + 1e-6,
                                "{m}x{n}x{k} t=({ta},{tb}) acc={accumulate} [{r},{c}]: {} vs {want}",
                                got[r * n + c]
                            );
                        }
                    }
                }
            }
        }
    }
}
