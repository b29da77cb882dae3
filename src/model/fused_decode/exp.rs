//! `exp` eight lanes at a time for the fused decode step's softmax and SiLU: libm's scalar
//! `expf` was a large share of a batched step (hundreds of thousands of calls per token).
//! Cephes' single-precision range reduction and polynomial: relative error about 2e-7 over
//! the range used, inputs clamped to ±87.3 (results below ~1e-38 flush toward zero).

/// Replaces every value of `xs` by its exponential.
///
/// # Safety
/// AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_in_place(xs: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = xs.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let x = _mm256_loadu_ps(chunk.as_ptr());
        _mm256_storeu_ps(chunk.as_mut_ptr(), exp8(x));
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut lane = [0f32; 8];
        lane[..rest.len()].copy_from_slice(rest);
        let y = exp8(_mm256_loadu_ps(lane.as_ptr()));
        _mm256_storeu_ps(lane.as_mut_ptr(), y);
        let n = rest.len();
        rest.copy_from_slice(&lane[..n]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(87.3),
    );
    // x = n ln2 + r, |r| ≤ ln2 / 2, with ln2 split in two for an exact n ln2.
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    // 2^n through the exponent bits.
    let bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
}

/// Scalar stand-in where the fused step never runs (it needs the x86 kernels).
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn exp_in_place(xs: &mut [f32]) {
    xs.iter_mut().for_each(|v| *v = v.exp());
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn matches_libm_exp() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        // Softmax inputs (≤ 0, down to very negative) and SiLU's range, plus a ragged tail.
        let xs: Vec<f32> = (0..2003).map(|i| -100.0 + i as f32 * 0.093).collect();
        let mut ours = xs.clone();
        unsafe { super::exp_in_place(&mut ours) };
        for (x, y) in xs.iter().zip(&ours) {
            let want = x.exp();
            if *x < -87.0 {
                assert!(*y < 1e-37, "exp({x}) = {y}");
                continue;
            }
            let rel = ((y - want) / want).abs();
            assert!(
                rel < 1e-6,
                "exp({x}) = {y}, libm {want}, relative error {rel}"
            );
        }
    }
}
