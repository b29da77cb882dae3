//! CPU tuning: libtorch's bundled MKL, and how bf16 matmuls run.
//!
//! MKL picks its kernels by asking `mkl_serv_intel_cpu_true()` whether it runs on an Intel
//! CPU; on AMD the answer is 0 and it falls back to generic SSE code. libtorch exports that
//! symbol and calls it through the PLT, so this definition, exported from our executables
//! (see build.rs: `--export-dynamic-symbol`), takes precedence and MKL uses its AVX2 kernels.
//! Measured on a 2-core AMD EPYC: an f32 [8, 576] x [576, 1536] matmul 2.5x faster.

/// Interposes MKL's CPU vendor check (see the module docs). `HINDSIGHT_MKL_GENERIC=1` keeps
/// MKL's own answer (generic kernels on AMD), for A/B measurements.
#[no_mangle]
pub extern "C" fn mkl_serv_intel_cpu_true() -> std::os::raw::c_int {
    std::os::raw::c_int::from(std::env::var_os("HINDSIGHT_MKL_GENERIC").is_none_or(|v| v != "1"))
}

/// Keeps the override linked into every binary even though nothing in Rust calls it.
#[used]
static KEEP_MKL_OVERRIDE: extern "C" fn() -> std::os::raw::c_int = mkl_serv_intel_cpu_true;

/// Whether bf16 matmuls should run as bf16 in libtorch (oneDNN's AVX512-BF16 / AMX kernels)
/// rather than widened to f32 first (see `Transformer::linear`). Without native bf16 dot
/// products libtorch's bf16 gemm is several times slower than MKL's sgemm; with them, the
/// widening copy is the slower path. `HINDSIGHT_BF16_GEMM=native|widen` forces one, for A/B
/// measurements.
pub fn native_bf16_matmul() -> bool {
    match std::env::var("HINDSIGHT_BF16_GEMM").as_deref() {
        Ok("native") => return true,
        Ok("widen") => return false,
        _ => {}
    }
    #[cfg(target_arch = "x86_64")]
    {
        // CPUs with AMX have AVX512-BF16 too.
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
