//! Runs work on libtorch's own OpenMP threads.
//!
//! The decode kernels in `skinny_matmul` run between libtorch ops that use the OpenMP team, so
//! a second pool (rayon was tried) fights it for the two cores: its threads sleep while the
//! OpenMP threads spin, and the split made decode slower than one thread. Entering the same
//! team libtorch uses (`GOMP_parallel`, what `#pragma omp parallel` compiles to) reuses threads
//! that are already awake. The symbols are looked up at run time in the libgomp that libtorch
//! loaded; without them (another threading backend) the work runs on the calling thread.

use std::ffi::{c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type Query = unsafe extern "C" fn() -> c_int;

struct Runtime {
    parallel: Parallel,
    thread_num: Query,
    num_threads: Query,
    max_threads: Query,
}

fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            // Make sure libtorch (and with it libgomp) is loaded before looking.
            let _ = tch::get_num_threads();
            let find = |name: &CStr| {
                // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
                let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                (!p.is_null()).then_some(p)
            };
            // SAFETY: these are libgomp's exported functions with these C signatures.
            unsafe {
                Some(Runtime {
                    parallel: std::mem::transmute::<*mut c_void, Parallel>(find(c"GOMP_parallel")?),
                    thread_num: std::mem::transmute::<*mut c_void, Query>(find(
                        c"omp_get_thread_num",
                    )?),
                    num_threads: std::mem::transmute::<*mut c_void, Query>(find(
                        c"omp_get_num_threads",
                    )?),
                    max_threads: std::mem::transmute::<*mut c_void, Query>(find(
                        c"omp_get_max_threads",
                    )?),
                })
            }
        })
        .as_ref()
}

/// Threads a `run` from this thread would use (libtorch's `set_num_threads` on this thread).
pub fn threads() -> usize {
    // SAFETY: a libgomp query without arguments.
    runtime().map_or(1, |rt| unsafe { (rt.max_threads)() }.max(1) as usize)
}

/// Calls `work(thread_index, thread_count)` once on each thread of the team and returns when
/// all have finished. `work` must not panic (a panic aborts: it cannot unwind through C).
pub fn run<F: Fn(usize, usize) + Sync>(work: F) {
    let Some(rt) = runtime().filter(|_| threads() > 1) else {
        work(0, 1);
        return;
    };
    struct Call<'a, F> {
        work: &'a F,
        rt: &'static Runtime,
    }
    extern "C" fn trampoline<F: Fn(usize, usize) + Sync>(data: *mut c_void) {
        // SAFETY: `data` is the `Call` below, alive until GOMP_parallel returns.
        let call = unsafe { &*(data as *const Call<F>) };
        // SAFETY: libgomp queries inside its own parallel region.
        let (index, count) = unsafe { ((call.rt.thread_num)(), (call.rt.num_threads)()) };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (call.work)(index.max(0) as usize, count.max(1) as usize)
        }));
        if result.is_err() {
            std::process::abort();
        }
    }
    let call = Call { work: &work, rt };
    // SAFETY: the trampoline matches the data it is given; 0 threads = the team's default.
    unsafe {
        (rt.parallel)(
            trampoline::<F>,
            &call as *const Call<F> as *mut c_void,
            0,
            0,
        )
    };
}
