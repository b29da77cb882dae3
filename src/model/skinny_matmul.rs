//! `x Wᵀ (+ b)` for the few rows of a decode step, on the CPU, with f32 or bf16 weights.
//!
//! Decoding reads every weight once per step for one to a few rows, so it is bound by memory
//! bandwidth. libtorch runs such products as MKL gemv on one thread (f32), or as a bf16 gemv
//! that widens element by element (see BENCHMARKS.md). This kernel streams the weight once for
//! all rows, widens bf16 sixteen at a time (shift and mask, exact), accumulates in f32 (like a
//! bf16 gemm with f32 accumulation), and splits the output features across libtorch's own
//! OpenMP team (see `omp_team`). It needs AVX2 and FMA; anything it does not cover returns
//! `None` and the caller uses libtorch.

use std::sync::OnceLock;

use tch::{Kind, Tensor};

/// `dispatch::<R>(job, start, stop, acc)` with the job's row count (1..=MAX_ROWS) as the const
/// generic R, for the kernels of every instruction set.
macro_rules! by_rows {
    ($job:expr, $start:expr, $stop:expr, $acc:expr) => {
        match $job.rows {
            1 => dispatch::<1>($job, $start, $stop, $acc),
            2 => dispatch::<2>($job, $start, $stop, $acc),
            3 => dispatch::<3>($job, $start, $stop, $acc),
            4 => dispatch::<4>($job, $start, $stop, $acc),
            5 => dispatch::<5>($job, $start, $stop, $acc),
            6 => dispatch::<6>($job, $start, $stop, $acc),
            7 => dispatch::<7>($job, $start, $stop, $acc),
            _ => dispatch::<8>($job, $start, $stop, $acc),
        }
    };
}

mod simd512;

/// The most rows one call covers: every row keeps its own accumulators in registers.
pub const MAX_ROWS: usize = 8;

/// Output features per parallel task; a multiple of every group size below.
const TASK_FEATURES: usize = 64;

/// `HINDSIGHT_SKINNY_MATMUL=0` turns the kernel off (libtorch everywhere), for A/B runs.
fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let wanted = std::env::var("HINDSIGHT_SKINNY_MATMUL").map_or(true, |v| v != "0");
        wanted && simd::available()
    })
}

/// Which wider kernels this CPU can run besides the AVX2 ones. `HINDSIGHT_SKINNY_ISA=avx2`
/// keeps the AVX2 kernels, for A/B runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wide {
    None,
    /// AVX-512F: f32 weights sixteen lanes at a time.
    Avx512,
    /// AVX-512F with AVX512-BF16: bf16 weights as pairwise bf16 dot products (`vdpbf16ps`).
    Avx512Bf16,
}

fn wide() -> Wide {
    static WIDE: OnceLock<Wide> = OnceLock::new();
    *WIDE.get_or_init(|| {
        if std::env::var("HINDSIGHT_SKINNY_ISA").is_ok_and(|v| v == "avx2") {
            return Wide::None;
        }
        match (simd512::available(), simd512::available_bf16()) {
            (true, true) => Wide::Avx512Bf16,
            (true, false) => Wide::Avx512,
            _ => Wide::None,
        }
    })
}

/// `x [.., in] · w [out, in]ᵀ + b [out]` in `x`'s dtype, or `None` when the kernel does not
/// apply (autograd, a non-CPU tensor, more than `MAX_ROWS` rows, other dtypes or layouts).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Option<Tensor> {
    if !enabled() || x.requires_grad() || w.requires_grad() {
        return None;
    }
    let (w_size, x_size) = (w.size(), x.size());
    let [features, inner] = w_size[..] else {
        return None;
    };
    let rows: i64 = x_size[..x_size.len().checked_sub(1)?].iter().product();
    let cpu = |t: &Tensor| t.device() == tch::Device::Cpu && t.is_contiguous();
    let float = |k: Kind| matches!(k, Kind::Float | Kind::BFloat16);
    if rows < 1
        || rows as usize > MAX_ROWS
        || x_size.last() != Some(&inner)
        || inner % (2 * simd::LANES) as i64 != 0
        || features % TASK_FEATURES as i64 != 0
        || !cpu(x)
        || !cpu(w)
        || !float(x.kind())
        || !float(w.kind())
        || b.is_some_and(|b| !cpu(b) || b.kind() != w.kind() || b.size() != [features])
    {
        return None;
    }
    let kernel = match (w.kind(), wide()) {
        (Kind::BFloat16, Wide::Avx512Bf16)
            if (inner as usize).is_multiple_of(simd512::BF16_STEP) =>
        {
            Kernel::Bf16Dot
        }
        (Kind::Float, Wide::Avx512 | Wide::Avx512Bf16) => Kernel::Avx512,
        _ => Kernel::Avx2,
    };
    Some(run(x, w, b, kernel))
}

/// The product with the given kernel, on inputs `linear` has checked.
fn run(x: &Tensor, w: &Tensor, b: Option<&Tensor>, kernel: Kernel) -> Tensor {
    let (x_size, w_size) = (x.size(), w.size());
    let (features, inner) = (w_size[0] as usize, w_size[1] as usize);
    let rows = x.numel() / inner;
    // The bf16 dot products take x as bf16 (the model's activations are bf16 already).
    let x16 = (kernel == Kernel::Bf16Dot).then(|| x.to_kind(Kind::BFloat16));
    let x32 = (kernel != Kernel::Bf16Dot).then(|| x.to_kind(Kind::Float));
    let bias32 = b.map(|b| b.to_kind(Kind::Float));
    // SAFETY: contiguous CPU tensors of the checked sizes and dtypes, alive for this call.
    let xs = x32.as_ref().map_or(&[][..], |x| unsafe {
        std::slice::from_raw_parts(x.data_ptr() as *const f32, rows * inner)
    });
    let xs_bf16 = x16.as_ref().map_or(&[][..], |x| unsafe {
        std::slice::from_raw_parts(x.data_ptr() as *const u16, rows * inner)
    });
    // The AVX2 kernel reads bf16 weights 16 at a time as 8 even and 8 odd elements (see
    // `simd::block`), so x is laid out the same way.
    let paired: Vec<f32>;
    let xs = if w.kind() == Kind::BFloat16 && kernel == Kernel::Avx2 {
        paired = even_odd_blocks(xs, 2 * simd::LANES);
        &paired[..]
    } else {
        xs
    };
    let bias = bias32
        .as_ref()
        .map(|b| unsafe { std::slice::from_raw_parts(b.data_ptr() as *const f32, features) });
    let weight = match w.kind() {
        Kind::Float => Weight::F32(unsafe {
            std::slice::from_raw_parts(w.data_ptr() as *const f32, features * inner)
        }),
        _ => Weight::Bf16(unsafe {
            std::slice::from_raw_parts(w.data_ptr() as *const u16, features * inner)
        }),
    };
    let mut out_size = x_size.clone();
    if let Some(last) = out_size.last_mut() {
        *last = features as i64;
    }
    let out = Tensor::empty(out_size.as_slice(), (x.kind(), tch::Device::Cpu));
    let target = match x.kind() {
        Kind::Float => Output::F32(out.data_ptr() as *mut f32),
        _ => Output::Bf16(out.data_ptr() as *mut u16),
    };
    Job {
        kernel,
        xs,
        xs_bf16,
        rows,
        inner,
        features,
        weight,
        bias,
        target,
    }
    .execute();
    out
}

/// Whether `into` can multiply by `w`: a CPU weight [features, inner] of f32 or bf16 that the
/// kernels cover, on a CPU they run on.
pub(crate) fn covers(w: &Tensor) -> bool {
    let size = w.size();
    enabled()
        && !w.requires_grad()
        && w.device() == tch::Device::Cpu
        && w.is_contiguous()
        && matches!(w.kind(), Kind::Float | Kind::BFloat16)
        && size.len() == 2
        && size[1] % (2 * simd::LANES) as i64 == 0
        && size[0] % TASK_FEATURES as i64 == 0
}

/// `out [rows, features] = x [rows, inner] · wᵀ (+ bias)` on plain f32 buffers, for a weight
/// that `covers` accepts (the fused decode step; x is rounded to bf16 for the bf16 dot
/// products, as the tensor path's bf16 activations are).
pub(crate) fn into(x: &[f32], w: &Tensor, bias: Option<&[f32]>, out: &mut [f32]) {
    let size = w.size();
    let (features, inner) = (size[0] as usize, size[1] as usize);
    let rows = x.len() / inner;
    assert!(
        (1..=MAX_ROWS).contains(&rows) && x.len() == rows * inner && out.len() == rows * features,
        "skinny_matmul::into: x {} and out {} do not fit a [{features}, {inner}] weight",
        x.len(),
        out.len()
    );
    assert!(bias.is_none_or(|b| b.len() == features));
    let kernel = match (w.kind(), wide()) {
        (Kind::BFloat16, Wide::Avx512Bf16) if inner % simd512::BF16_STEP == 0 => Kernel::Bf16Dot,
        (Kind::Float, Wide::Avx512 | Wide::Avx512Bf16) => Kernel::Avx512,
        _ => Kernel::Avx2,
    };
    let (rounded, paired): (Vec<u16>, Vec<f32>) = match (kernel, w.kind()) {
        (Kernel::Bf16Dot, _) => (
            x.iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect(),
            Vec::new(),
        ),
        // Rounded to bf16 like the tensor path's activations, then widened back.
        (_, Kind::BFloat16) => {
            let round = |v: f32| half::bf16::from_f32(v).to_f32();
            let rounded: Vec<f32> = x.iter().map(|&v| round(v)).collect();
            (Vec::new(), even_odd_blocks(&rounded, 2 * simd::LANES))
        }
        _ => (Vec::new(), Vec::new()),
    };
    // SAFETY: `covers` checked a contiguous CPU weight of this dtype and size.
    let weight = match w.kind() {
        Kind::Float => Weight::F32(unsafe {
            std::slice::from_raw_parts(w.data_ptr() as *const f32, features * inner)
        }),
        _ => Weight::Bf16(unsafe {
            std::slice::from_raw_parts(w.data_ptr() as *const u16, features * inner)
        }),
    };
    Job {
        kernel,
        xs: if paired.is_empty() { x } else { &paired },
        xs_bf16: &rounded,
        rows,
        inner,
        features,
        weight,
        bias,
        target: Output::F32(out.as_mut_ptr()),
    }
    .execute();
}

/// Each block of `block` values as its even-indexed values, then its odd-indexed ones.
fn even_odd_blocks(xs: &[f32], block: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(xs.len());
    for chunk in xs.chunks_exact(block) {
        out.extend(chunk.iter().step_by(2));
        out.extend(chunk.iter().skip(1).step_by(2));
    }
    out
}

#[derive(Clone, Copy)]
enum Weight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

#[derive(Clone, Copy)]
enum Output {
    F32(*mut f32),
    Bf16(*mut u16),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Avx2,
    Avx512,
    Bf16Dot,
}

struct Job<'a> {
    kernel: Kernel,
    /// x as f32 (empty for `Kernel::Bf16Dot`).
    xs: &'a [f32],
    /// x as bf16 bits (only for `Kernel::Bf16Dot`).
    xs_bf16: &'a [u16],
    rows: usize,
    inner: usize,
    features: usize,
    weight: Weight<'a>,
    bias: Option<&'a [f32]>,
    target: Output,
}

// SAFETY: every task writes only the output features it was given, disjoint from the others'.
unsafe impl Sync for Job<'_> {}

impl Job<'_> {
    /// Splits the output features across the OpenMP team.
    fn execute(&self) {
        let tasks = self.features / TASK_FEATURES;
        if tasks > 1 && super::omp_team::threads() > 1 {
            super::omp_team::run(|index, count| {
                let per = tasks.div_ceil(count);
                self.run_tasks(index * per, ((index + 1) * per).min(tasks));
            });
        } else {
            self.run_tasks(0, tasks);
        }
    }

    fn run_tasks(&self, first: usize, end: usize) {
        if first >= end {
            return;
        }
        let (start, stop) = (first * TASK_FEATURES, end * TASK_FEATURES);
        let mut acc = vec![0f32; self.rows * (stop - start)];
        // SAFETY: `enabled()` checked AVX2 and FMA, `wide()` the AVX-512 features of the
        // kernel chosen; slices are sized by `linear`.
        unsafe {
            match self.kernel {
                Kernel::Avx2 => simd::products(self, start, stop, &mut acc),
                Kernel::Avx512 | Kernel::Bf16Dot => simd512::products(self, start, stop, &mut acc),
            }
        };
        let width = stop - start;
        for r in 0..self.rows {
            for (j, value) in acc[r * width..(r + 1) * width].iter().enumerate() {
                let o = start + j;
                let v = value + self.bias.map_or(0.0, |b| b[o]);
                let at = r * self.features + o;
                // SAFETY: `at` is inside the output and only this task writes feature `o`.
                unsafe {
                    match self.target {
                        Output::F32(p) => *p.add(at) = v,
                        Output::Bf16(p) => *p.add(at) = half::bf16::from_f32(v).to_bits(),
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{Job, Weight};

    pub const LANES: usize = 8;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// Writes `acc[r * width + (o - start)] = Σ_k x[r, k] w[o, k]` for `o` in `start..stop`.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `acc` holds `rows * (stop - start)` values.
    pub unsafe fn products(job: &Job, start: usize, stop: usize, acc: &mut [f32]) {
        by_rows!(job, start, stop, acc)
    }

    /// One weight row at a time for every row count: the loop then reads one sequential
    /// stream per thread. Measured fastest against two or four rows at a time: bf16 with one
    /// input row on a Zen 3 AVX2 host (11-12 vs 9-11 GB/s, one thread), and every row count
    /// of both dtypes running this AVX2 code on a Zen 4 host (`kernel_bench`, 2 threads; f32
    /// 38 vs 27 GB/s for one row, 30 vs 21 for two; bf16 23 vs 16 for two rows, 15 vs 12 for
    /// four; equal at eight).
    unsafe fn dispatch<const R: usize>(job: &Job, start: usize, stop: usize, acc: &mut [f32]) {
        match job.weight {
            Weight::F32(w) => block::<R, 4>(job, w.as_ptr() as *const u8, start, stop, acc),
            Weight::Bf16(w) => block::<R, 2>(job, w.as_ptr() as *const u8, start, stop, acc),
        }
    }

    /// Eight f32 weights.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_f32(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }

    /// Sixteen bf16 weights widened to f32, as (even-indexed, odd-indexed) elements: bf16 is
    /// the high half of an f32, so each 32-bit lane's low element shifted up and its high
    /// element masked are exact f32 values, three instructions for sixteen weights.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_bf16(p: *const u8) -> (__m256, __m256) {
        let pairs = _mm256_loadu_si256(p as *const __m256i);
        let even = _mm256_slli_epi32(pairs, 16);
        let odd = _mm256_and_si256(pairs, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
        (_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd))
    }

    /// One output feature at a time against all R rows: R accumulators stay in registers and
    /// every weight vector is loaded once. BYTES is the weight element size.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const R: usize, const BYTES: usize>(
        job: &Job,
        w: *const u8,
        start: usize,
        stop: usize,
        acc: &mut [f32],
    ) {
        let (inner, width) = (job.inner, stop - start);
        let x = job.xs.as_ptr();
        for o in start..stop {
            let row = w.add(o * inner * BYTES);
            let mut sums = [_mm256_setzero_ps(); R];
            let mut k = 0;
            if BYTES == 2 {
                // 16 weights per step; x is in even/odd blocks (see `linear`). Up to four rows,
                // the odd products get their own accumulators so that two FMA chains run side
                // by side; past that they spilled out of the 16 registers and ran 2-3x slower.
                let split = R <= 4;
                let mut odds = [_mm256_setzero_ps(); R];
                while k < inner {
                    let (even_w, odd_w) = load_bf16(row.add(k * 2));
                    for r in 0..R {
                        let even = _mm256_loadu_ps(x.add(r * inner + k));
                        let odd = _mm256_loadu_ps(x.add(r * inner + k + LANES));
                        sums[r] = _mm256_fmadd_ps(even_w, even, sums[r]);
                        if split {
                            odds[r] = _mm256_fmadd_ps(odd_w, odd, odds[r]);
                        } else {
                            sums[r] = _mm256_fmadd_ps(odd_w, odd, sums[r]);
                        }
                    }
                    k += 2 * LANES;
                }
                for (sum, odd) in sums.iter_mut().zip(&odds) {
                    *sum = _mm256_add_ps(*sum, *odd);
                }
            } else {
                while k < inner {
                    let wv = load_f32(row.add(k * 4));
                    for (r, sum) in sums.iter_mut().enumerate() {
                        *sum = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.add(r * inner + k)), *sum);
                    }
                    k += LANES;
                }
            }
            for (r, sum) in sums.iter().enumerate() {
                acc[r * width + (o - start)] = horizontal_sum(*sum);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        let one = _mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1));
        _mm_cvtss_f32(one)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    use super::Job;

    pub const LANES: usize = 8;

    pub fn available() -> bool {
        false
    }

    pub unsafe fn products(_: &Job, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("the skinny kernel is only enabled on x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels this CPU runs for weights of `kind`.
    fn kernels_for(kind: Kind) -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Avx2];
        match kind {
            Kind::Float if simd512::available() => kernels.push(Kernel::Avx512),
            Kind::BFloat16 if simd512::available_bf16() => kernels.push(Kernel::Bf16Dot),
            _ => {}
        }
        eprintln!("{kind:?}: testing {kernels:?}");
        kernels
    }

    /// Every row count, weight dtype and kernel this CPU runs against libtorch's own linear,
    /// with and without bias.
    #[test]
    fn matches_libtorch_for_every_row_count() {
        if !simd::available() {
            eprintln!("skipped: no AVX2/FMA on this CPU");
            return;
        }
        tch::manual_seed(7);
        let (features, inner) = (192, 160);
        for kind in [Kind::Float, Kind::BFloat16] {
            let kernels = kernels_for(kind);
            let w = Tensor::randn([features, inner], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
            let b = Tensor::randn([features], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
            for rows in 1..=MAX_ROWS as i64 {
                let x =
                    Tensor::randn([rows, 1, inner], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
                for (kernel, bias) in kernels
                    .iter()
                    .copied()
                    .flat_map(|k| [(k, None), (k, Some(&b))])
                {
                    assert!(linear(&x, &w, bias).is_some(), "the kernel applies");
                    let ours = run(&x, &w, bias, kernel);
                    assert_eq!(ours.kind(), kind);
                    assert_eq!(ours.size(), [rows, 1, features]);
                    // The reference in f32 from the same (already rounded) inputs.
                    let want = x.to_kind(Kind::Float).linear(
                        &w.to_kind(Kind::Float),
                        bias.map(|b| b.to_kind(Kind::Float)).as_ref(),
                    );
                    let diff = (ours.to_kind(Kind::Float) - &want)
                        .abs()
                        .max()
                        .double_value(&[]);
                    let scale = want.abs().max().double_value(&[]);
                    // f32: summation order only; bf16: the output's rounding (2^-8 relative).
                    let tol = if kind == Kind::Float { 1e-5 } else { 8e-3 } * scale;
                    assert!(
                        diff <= tol,
                        "{kernel:?} {kind:?} rows {rows}: max diff {diff} > {tol}"
                    );
                }
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        let w = Tensor::ones([64, 16], (Kind::Float, tch::Device::Cpu));
        let nine_rows = Tensor::ones([9, 16], (Kind::Float, tch::Device::Cpu));
        assert!(linear(&nine_rows, &w, None).is_none());
        let odd_inner = Tensor::ones([64, 12], (Kind::Float, tch::Device::Cpu));
        assert!(linear(
            &Tensor::ones([1, 12], (Kind::Float, tch::Device::Cpu)),
            &odd_inner,
            None
        )
        .is_none());
        let grad = Tensor::ones([1, 16], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        assert!(linear(&grad, &w, None).is_none());
        let half = Tensor::ones([1, 16], (Kind::Half, tch::Device::Cpu));
        assert!(linear(&half, &w.to_kind(Kind::Half), None).is_none());
    }
}
