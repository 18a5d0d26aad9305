//! Run each call with the caller's number of threads (Python passes `torch.get_num_threads()`),
//! so `torch.set_num_threads(1)` limits the Rust kernels too.
//!
//! The kernels take their parallelism from the rayon pool they run in. Where the Python adapter
//! named torch's OpenMP runtime (`openmp::set_runtime`), a call computes on the threads of
//! torch's own team (see `openmp` for why). Otherwise one pool per thread count is built on first
//! use and kept, because building a pool of new threads costs more than a small call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::ThreadPool;

static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();

/// `work()` inside a rayon pool of `threads` threads: the OpenMP team's if one is set, else a
/// kept pool of our own; 0 means rayon's global pool. If no pool can be built (the system
/// refuses threads), the work runs in the global pool instead.
pub(crate) fn with_threads<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> R {
    let work = match crate::openmp::run_on_team(threads, work) {
        Ok(result) => return result,
        Err(work) => work,
    };
    match pool(threads) {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

fn pool(threads: usize) -> Option<Arc<ThreadPool>> {
    if threads == 0 {
        return None;
    }
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut pools = pools
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(pool) = pools.get(&threads) {
        return Some(Arc::clone(pool));
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("isa-core-{threads}-{i}"))
            .build()
            .ok()?,
    );
    pools.insert(threads, Arc::clone(&pool));
    Some(pool)
}
