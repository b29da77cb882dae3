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
            (Weight::F32(w), _) => block_f32::<R>(job, w.as_ptr(), start, stop, acc),
            (Weight::Bf16(w), Kernel::Bf16Dot) => {
                block_bf16::<R>(job, w.as_ptr(), start, stop, acc)
            }
            (Weight::Bf16(_), _) => unreachable!("bf16 weights use the dot-product kernel here"),
        }
    }

    /// One output feature at a time against all R rows: R accumulators stay in registers and
    /// every weight vector is loaded once.
    #[target_feature(enable = "avx512f")]
    unsafe fn block_f32<const R: usize>(
        job: &Job,
        w: *const f32,
        start: usize,
        stop: usize,
        acc: &mut [f32],
    ) {
        let (inner, width) = (job.inner, stop - start);
        let x = job.xs.as_ptr();
        for o in start..stop {
            let mut sums = [_mm512_setzero_ps(); R];
            let mut k = 0;
            while k < inner {
                let wv = _mm512_loadu_ps(w.add(o * inner + k));
                for (r, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.add(r * inner + k)), *sum);
                }
                k += 16;
            }
            for (r, sum) in sums.iter().enumerate() {
                acc[r * width + (o - start)] = _mm512_reduce_add_ps(*sum);
            }
        }
    }

    /// Thirty-two bf16 values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn load(p: *const u16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
    }

    /// Like `block_f32` with bf16 weights and bf16 x: each `vdpbf16ps` adds the products of
    /// 16 adjacent pairs into 16 f32 lanes. Two accumulator chains per row keep the
    /// dot-product latency off the critical path.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block_bf16<const R: usize>(
        job: &Job,
        w: *const u16,
        start: usize,
        stop: usize,
        acc: &mut [f32],
    ) {
        let (inner, width) = (job.inner, stop - start);
        let x = job.xs_bf16.as_ptr();
        for o in start..stop {
            let row = w.add(o * inner);
            let mut sums = [_mm512_setzero_ps(); R];
            let mut seconds = [_mm512_setzero_ps(); R];
            let mut k = 0;
            while k + 2 * BF16_STEP <= inner {
                let (first, second) = (load(row.add(k)), load(row.add(k + BF16_STEP)));
                for r in 0..R {
                    let at = x.add(r * inner + k);
                    sums[r] = _mm512_dpbf16_ps(sums[r], first, load(at));
                    seconds[r] = _mm512_dpbf16_ps(seconds[r], second, load(at.add(BF16_STEP)));
                }
                k += 2 * BF16_STEP;
            }
            if k < inner {
                let wv = load(row.add(k));
                for (r, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_dpbf16_ps(*sum, wv, load(x.add(r * inner + k)));
                }
            }
            for (r, (sum, second)) in sums.iter().zip(&seconds).enumerate() {
                acc[r * width + (o - start)] = _mm512_reduce_add_ps(_mm512_add_ps(*sum, *second));
            }
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
