//! The AVX-512 kernels of `skinny_matmul`: f32 weights sixteen lanes at a time, and bf16
//! weights as pairwise bf16 dot products (`vdpbf16ps`, AVX512-BF16), 32 weights per
//! instruction with f32 accumulation and no widening.

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    use super::super::{Job, Kernel, Weight};

    /// bf16 weights consumed per dot-product step.
    pub const BF16_STEP: usize = 32;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    pub fn available_bf16() -> bool {
        available() && is_x86_feature_detected!("avx512bf16")
    }

    /// Writes `acc[r * width + (o - start)] = Σ_k x[r, k] w[o, k]` for `o` in `start..stop`.
    ///
    /// # Safety
    /// AVX-512F (and AVX512-BF16 for `Kernel::Bf16Dot`) must be available; `acc` holds
    /// `rows * (stop - start)` values; `inner` is a multiple of 16 (32 for bf16).
    pub unsafe fn products(job: &Job, start: usize, stop: usize, acc: &mut [f32]) {
        by_rows!(job, start, stop, acc)
    }

    /// One weight row at a time for every row count: a single sequential stream per thread
    /// measured fastest on an AVX-512 Zen 4 host (30 layers of distinct weights, 2 threads:
    /// f32 33 vs 24 GB/s for one row, 28 vs 22 for two; bf16 24–28 vs 20–22 for one or two
    /// rows, 26 vs 15 for four) against two or four weight rows at a time.
    unsafe fn dispatch<const R: usize>(job: &Job, start: usize, stop: usize, acc: &mut [f32]) {
        match (job.weight, job.kernel) {
            (Weight::F32(w), _) => block_f32::<R, 1>(job, w.as_ptr(), start, stop, acc),
            (Weight::Bf16(w), Kernel::Bf16Dot) => {
                block_bf16::<R, 1>(job, w.as_ptr(), start, stop, acc)
            }
            (Weight::Bf16(_), _) => unreachable!("bf16 weights use the dot-product kernel here"),
        }
    }

    /// G output features at a time against all R rows (see `simd::block`).
    #[target_feature(enable = "avx512f")]
    unsafe fn block_f32<const R: usize, const G: usize>(
        job: &Job,
        w: *const f32,
        start: usize,
        stop: usize,
        acc: &mut [f32],
    ) {
        let (inner, width) = (job.inner, stop - start);
        let x = job.xs.as_ptr();
        let mut o = start;
        while o < stop {
            let mut sums = [[_mm512_setzero_ps(); G]; R];
            let mut k = 0;
            while k < inner {
                let mut ws = [_mm512_setzero_ps(); G];
                for (g, slot) in ws.iter_mut().enumerate() {
                    *slot = _mm512_loadu_ps(w.add((o + g) * inner + k));
                }
                for (r, row) in sums.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(x.add(r * inner + k));
                    for (g, sum) in row.iter_mut().enumerate() {
                        *sum = _mm512_fmadd_ps(ws[g], xv, *sum);
                    }
                }
                k += 16;
            }
            for (r, row) in sums.iter().enumerate() {
                for (g, sum) in row.iter().enumerate() {
                    acc[r * width + (o - start) + g] = _mm512_reduce_add_ps(*sum);
                }
            }
            o += G;
        }
    }

    /// Thirty-two bf16 values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn load(p: *const u16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
    }

    /// Like `block_f32` with bf16 weights and bf16 x: each `vdpbf16ps` adds the products of
    /// 16 adjacent pairs into 16 f32 lanes. Two accumulator chains per (row, feature) keep
    /// the dot-product latency off the critical path.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block_bf16<const R: usize, const G: usize>(
        job: &Job,
        w: *const u16,
        start: usize,
        stop: usize,
        acc: &mut [f32],
    ) {
        let (inner, width) = (job.inner, stop - start);
        let x = job.xs_bf16.as_ptr();
        let mut o = start;
        while o < stop {
            let mut sums = [[_mm512_setzero_ps(); G]; R];
            let mut seconds = [[_mm512_setzero_ps(); G]; R];
            let mut k = 0;
            while k + 2 * BF16_STEP <= inner {
                let zero = std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512());
                let mut ws = [(zero, zero); G];
                for (g, slot) in ws.iter_mut().enumerate() {
                    let at = w.add((o + g) * inner + k);
                    *slot = (load(at), load(at.add(BF16_STEP)));
                }
                for r in 0..R {
                    let first = load(x.add(r * inner + k));
                    let second = load(x.add(r * inner + k + BF16_STEP));
                    for g in 0..G {
                        sums[r][g] = _mm512_dpbf16_ps(sums[r][g], ws[g].0, first);
                        seconds[r][g] = _mm512_dpbf16_ps(seconds[r][g], ws[g].1, second);
                    }
                }
                k += 2 * BF16_STEP;
            }
            if k < inner {
                for (r, row) in sums.iter_mut().enumerate() {
                    let xv = load(x.add(r * inner + k));
                    for (g, sum) in row.iter_mut().enumerate() {
                        let wv = load(w.add((o + g) * inner + k));
                        *sum = _mm512_dpbf16_ps(*sum, wv, xv);
                    }
                }
            }
            for r in 0..R {
                for g in 0..G {
                    let total = _mm512_add_ps(sums[r][g], seconds[r][g]);
                    acc[r * width + (o - start) + g] = _mm512_reduce_add_ps(total);
                }
            }
            o += G;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::super::Job;

    pub const BF16_STEP: usize = 32;

    pub fn available() -> bool {
        false
    }

    pub fn available_bf16() -> bool {
        false
    }

    pub unsafe fn products(_: &Job, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("the AVX-512 kernels are only enabled on x86_64")
    }
}

pub use imp::*;
