//! CPU tuning of libtorch's bundled MKL.
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
