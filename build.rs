// Embeds an rpath to the libtorch that torch-sys linked against, so binaries and tests run
// without LD_LIBRARY_PATH.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // Lets libtorch's MKL find our `mkl_serv_intel_cpu_true` (src/model/cpu.rs).
    println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true");
    println!("cargo:rerun-if-changed=build.rs");
    // sqlx::migrate!() embeds migrations/: a new .sql file alone must rebuild.
    println!("cargo:rerun-if-changed=migrations");
}
