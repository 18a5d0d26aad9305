//! Running a call on the threads of torch's OpenMP team instead of a rayon pool of our own.
//!
//! Why: torch's CPU ops run on a GNU OpenMP (libgomp) team whose workers spin-wait for a few
//! milliseconds after every parallel region (`GOMP_SPINCOUNT`) before they sleep. A call that
//! follows a torch op (a network forward, the caller's clone) and computes on separate rayon
//! threads shares the cores with those spinning workers: on a 2-core machine the op ran at half
//! the kernel's speed (N=1024, d=2048: 31 ms through the op vs 16 ms alone). Work handed to the
//! team itself starts at once on the spinning threads, and nothing competes with it.
//!
//! How: the kernels parallelise with rayon (their own loops, faer's products), so the team's
//! threads become the workers of a rayon pool built for the call. Inside one `GOMP_parallel`
//! region, thread 0 builds a pool with one worker per team thread (`spawn_handler` collects the
//! workers instead of starting threads), spawns the call into it and drops its handle; after a
//! barrier every team thread runs one worker. A pool whose handle is gone terminates when its
//! last spawned job is done, so the workers return, the region ends, and the call's result is
//! read by the caller. The runtime is found by path (`set_runtime`, given by the Python adapter,
//! which knows which library torch loaded) and only ever opened with `RTLD_NOLOAD`: this module
//! never loads an OpenMP runtime, it only borrows one already in the process.

use std::ffi::{c_int, c_uint, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, PoisonError, RwLock};

use rayon::{ThreadBuilder, ThreadPoolBuilder};

/// `GOMP_parallel(body, data, num_threads, flags)`: runs `body(data)` on every thread of a team.
type ParallelFn = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type BarrierFn = unsafe extern "C" fn();
type QueryFn = unsafe extern "C" fn() -> c_int;

/// The entry points of libgomp's ABI this module calls (also exported by LLVM's libomp).
#[derive(Clone, Copy)]
struct Runtime {
    parallel: ParallelFn,
    barrier: BarrierFn,
    thread_num: QueryFn,
    num_threads: QueryFn,
    in_parallel: QueryFn,
}

static RUNTIME: RwLock<Option<Runtime>> = RwLock::new(None);

/// Uses the OpenMP runtime at `path` (already loaded in this process) for later calls, or none
/// (`None`, or a library that is not loaded or lacks the entry points). Returns whether one is
/// in use.
pub(crate) fn set_runtime(path: Option<&str>) -> bool {
    let runtime = path.and_then(open);
    *RUNTIME.write().unwrap_or_else(PoisonError::into_inner) = runtime;
    runtime.is_some()
}

#[cfg(unix)]
fn open(path: &str) -> Option<Runtime> {
    use std::ffi::{CStr, CString};
    use std::mem::transmute;

    let path = CString::new(path).ok()?;
    // SAFETY: RTLD_NOLOAD returns a handle only for a library that is already loaded, and runs
    // no initialisers. The handle is never closed, so the symbols stay valid.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return None;
    }
    let symbol = |name: &CStr| -> Option<*mut c_void> {
        // SAFETY: `name` is NUL-terminated and `handle` a live handle.
        let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!address.is_null()).then_some(address)
    };
    // SAFETY: these are the documented C signatures of libgomp's entry points.
    unsafe {
        Some(Runtime {
            parallel: transmute::<*mut c_void, ParallelFn>(symbol(c"GOMP_parallel")?),
            barrier: transmute::<*mut c_void, BarrierFn>(symbol(c"GOMP_barrier")?),
            thread_num: transmute::<*mut c_void, QueryFn>(symbol(c"omp_get_thread_num")?),
            num_threads: transmute::<*mut c_void, QueryFn>(symbol(c"omp_get_num_threads")?),
            in_parallel: transmute::<*mut c_void, QueryFn>(symbol(c"omp_in_parallel")?),
        })
    }
}

#[cfg(not(unix))]
fn open(_path: &str) -> Option<Runtime> {
    None
}

/// `work()` on a rayon pool made of the OpenMP team of `threads` threads, or `Err(work)` when
/// no runtime is set, the caller is already inside a parallel region, or the pool cannot be
/// built; a panic in `work` resumes in the caller.
pub(crate) fn run_on_team<R: Send, W: FnOnce() -> R + Send>(
    threads: usize,
    work: W,
) -> Result<R, W> {
    let Some(runtime) = *RUNTIME.read().unwrap_or_else(PoisonError::into_inner) else {
        return Err(work);
    };
    // SAFETY: a plain query of the runtime's state.
    if threads == 0 || unsafe { (runtime.in_parallel)() } != 0 {
        return Err(work);
    }
    let region = Region {
        runtime,
        work: Mutex::new(Some(work)),
        result: Mutex::new(None),
        workers: Mutex::new(Vec::new()),
    };
    let threads = c_uint::try_from(threads).unwrap_or(c_uint::MAX);
    // SAFETY: `region` outlives the call: GOMP_parallel returns only after every team thread
    // has returned from `enter`, and they return only after the pool ran the spawned job.
    unsafe {
        (runtime.parallel)(
            enter::<R, W>,
            std::ptr::from_ref(&region).cast_mut().cast(),
            threads,
            0,
        )
    };
    let result = region
        .result
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    match result {
        Some(Ok(value)) => Ok(value),
        Some(Err(panic)) => panic::resume_unwind(panic),
        // The pool was not built, so the work never left its slot.
        None => Err(region
            .work
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .expect("the work runs at most once")),
    }
}

/// What the team threads of one call share.
struct Region<R, W> {
    runtime: Runtime,
    work: Mutex<Option<W>>,
    result: Mutex<Option<std::thread::Result<R>>>,
    /// One rayon worker per team thread, indexed by OpenMP thread number.
    workers: Mutex<Vec<Option<ThreadBuilder>>>,
}

/// The body of the parallel region, run by every team thread.
extern "C" fn enter<R: Send, W: FnOnce() -> R + Send>(data: *mut c_void) {
    // SAFETY: `data` is the `Region` that `run_on_team` keeps alive for the whole region.
    let region = unsafe { &*data.cast::<Region<R, W>>() };
    let runtime = region.runtime;
    // SAFETY: queries of the team this thread belongs to.
    let (index, team) = unsafe { ((runtime.thread_num)(), (runtime.num_threads)()) };
    let (index, team) = (index.max(0) as usize, team.max(1) as usize);
    if index == 0 {
        start_pool(region, team);
    }
    // SAFETY: every team thread reaches this barrier exactly once.
    unsafe { (runtime.barrier)() };
    let worker = lock(&region.workers).get_mut(index).and_then(Option::take);
    if let Some(worker) = worker {
        worker.run();
    }
}

/// Builds the call's pool on `team` workers and spawns the work into it (thread 0 only).
fn start_pool<R: Send, W: FnOnce() -> R + Send>(region: &Region<R, W>, team: usize) {
    let mut workers = Vec::with_capacity(team);
    let pool = ThreadPoolBuilder::new()
        .num_threads(team)
        .spawn_handler(|worker| {
            workers.push(Some(worker));
            Ok(())
        })
        .build();
    let Ok(pool) = pool else {
        return; // no workers run; the caller computes elsewhere
    };
    let Some(work) = lock(&region.work).take() else {
        return;
    };
    let job = move || {
        let result = panic::catch_unwind(AssertUnwindSafe(work));
        *lock(&region.result) = Some(result);
    };
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(job);
    // SAFETY: rayon wants a 'static job because a spawned job may outlive the spawner. This one
    // cannot outlive `region`: the pool terminates only after the job ran (its handle is dropped
    // below and the job holds the pool open), the team's workers return only after the pool
    // terminated, and `run_on_team` returns only after all of them returned.
    let job = unsafe {
        std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Box<dyn FnOnce() + Send + 'static>>(
            job,
        )
    };
    pool.spawn(job);
    drop(pool);
    *lock(&region.workers) = workers;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
