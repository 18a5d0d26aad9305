//! The ISA forward and backward kernels alone, without Python: median wall times on a rayon
//! pool of a given size, float32, ReLU-like features, centred one-hot labels.
//!
//!     cargo run --release -p isa-core --example kernel_timing -- N M D C THREADS REPEATS
//!
//! e.g. `-- 1024 100 2048 10 2 21` (the FRePo-like shape of `bench_report`).

use std::time::Instant;

use isa_core::{isa_krr_backward, isa_krr_forward, BackwardOptions, IsaOptions, MatView, Partners};

/// Reproducible values in [0, 1) (half of them 0, as after a ReLU).
fn relu_features(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let uniform = (state >> 11) as f64 / (1u64 << 53) as f64;
            (2.0 * uniform - 1.0).max(0.0) as f32
        })
        .collect()
}

/// Row i has class (i * stride) mod c, centred: 1 - 1/c at the class, -1/c elsewhere.
fn centred_one_hot(rows: usize, c: usize, stride: usize) -> Vec<f32> {
    let mut labels = vec![-1.0 / c as f32; rows * c];
    for i in 0..rows {
        labels[i * c + (i * stride) % c] += 1.0;
    }
    labels
}

fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("arguments: N M D C THREADS REPEATS (positive integers)")
        })
        .collect();
    let [n, m, d, c, threads, repeats] = args[..] else {
        panic!("arguments: N M D C THREADS REPEATS");
    };
    let (fs, ft) = (relu_features(m * d, 1), relu_features(n * d, 2));
    let (ys, yt) = (centred_one_hot(m, c, 1), centred_one_hot(n, c, 7));
    let view = |data, rows, cols| MatView::new("timing input", data, rows, cols).unwrap();
    let (fs, ys, ft, yt) = (
        view(&fs, m, d),
        view(&ys, m, c),
        view(&ft, n, d),
        view(&yt, n, c),
    );
    let options = IsaOptions::default();
    let backward_options = BackwardOptions {
        reg_mode: options.krr.reg_mode,
        solver: options.krr.solver,
        epsilon: options.epsilon,
        query_grad: true,
    };
    let grad_losses = vec![1.0 / n as f32; n];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    pool.install(|| {
        for _ in 0..repeats {
            let start = Instant::now();
            let out = isa_krr_forward(fs, ys, ft, yt, Partners::Nearest, &options).unwrap();
            forward.push(start.elapsed().as_secs_f64());
            let saved = out.saved();
            let start = Instant::now();
            isa_krr_backward(fs, ys, ft, yt, &grad_losses, saved, &backward_options).unwrap();
            backward.push(start.elapsed().as_secs_f64());
        }
    });
    println!(
        "N={n} M={m} d={d} C={c}, {threads} threads, medians of {repeats}: forward {:.2} ms, \
         backward {:.2} ms",
        1e3 * median(forward),
        1e3 * median(backward)
    );
}
