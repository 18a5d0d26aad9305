//! Shared test helpers: a seeded generator, random problems, and a naive f64 reference of the
//! contract written straight from `docs/loss.md` (dense loops, Gauss-Jordan).
#![allow(dead_code)]

use isa_core::{MatView, Partners};

/// SplitMix64: deterministic uniform numbers without extra dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    pub fn vec(&mut self, len: usize) -> Vec<f64> {
        (0..len).map(|_| self.uniform()).collect()
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// A random problem: F_S (M, d), Y_S (M, C), F_T (N, d), Y_T (N, C), row-major.
#[derive(Clone, Debug)]
pub struct Problem {
    pub m: usize,
    pub d: usize,
    pub n: usize,
    pub c: usize,
    pub fs: Vec<f64>,
    pub ys: Vec<f64>,
    pub ft: Vec<f64>,
    pub yt: Vec<f64>,
}

impl Problem {
    pub fn random(seed: u64, m: usize, d: usize, n: usize, c: usize) -> Self {
        let mut rng = Rng::new(seed);
        Self {
            m,
            d,
            n,
            c,
            fs: rng.vec(m * d),
            ys: rng.vec(m * c),
            ft: rng.vec(n * d),
            yt: rng.vec(n * c),
        }
    }

    pub fn views(&self) -> [MatView<'_, f64>; 4] {
        [
            MatView::new("support_features", &self.fs, self.m, self.d).unwrap(),
            MatView::new("support_labels", &self.ys, self.m, self.c).unwrap(),
            MatView::new("target_features", &self.ft, self.n, self.d).unwrap(),
            MatView::new("target_labels", &self.yt, self.n, self.c).unwrap(),
        ]
    }

    pub fn to_f32(&self) -> [Vec<f32>; 4] {
        let cast = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        [
            cast(&self.fs),
            cast(&self.ys),
            cast(&self.ft),
            cast(&self.yt),
        ]
    }
}

/// Solves H X = B (H s x s, B s x c, row-major) by Gauss-Jordan with partial pivoting.
fn solve_dense(mut h: Vec<f64>, mut b: Vec<f64>, s: usize, c: usize) -> Vec<f64> {
    for col in 0..s {
        let pivot = (col..s)
            .max_by(|&x, &y| h[x * s + col].abs().total_cmp(&h[y * s + col].abs()))
            .unwrap();
        for k in 0..s {
            h.swap(col * s + k, pivot * s + k);
        }
        for k in 0..c {
            b.swap(col * c + k, pivot * c + k);
        }
        for row in 0..s {
            if row != col {
                let f = h[row * s + col] / h[col * s + col];
                for k in 0..s {
                    h[row * s + k] -= f * h[col * s + k];
                }
                for k in 0..c {
                    b[row * c + k] -= f * b[col * c + k];
                }
            }
        }
    }
    (0..s * c).map(|i| b[i] / h[(i / c) * s + i / c]).collect()
}

/// Dual-form predictions for query features `fq` (Q x d).
pub fn reference_predict(p: &Problem, fq: &[f64], reg: f64, trace_mode: bool) -> Vec<f64> {
    let (m, d, c) = (p.m, p.d, p.c);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let row = |v: &[f64], i: usize| v[i * d..(i + 1) * d].to_vec();
    let mut h = vec![0.0; m * m];
    for a in 0..m {
        for b in 0..m {
            h[a * m + b] = dot(&row(&p.fs, a), &row(&p.fs, b));
        }
    }
    let trace: f64 = (0..m).map(|a| h[a * m + a]).sum();
    let lam = if trace_mode {
        reg * trace / m as f64
    } else {
        reg
    };
    for a in 0..m {
        h[a * m + a] += lam;
    }
    let w = solve_dense(h, p.ys.clone(), m, c);
    let q = fq.len() / d;
    let mut pred = vec![0.0; q * c];
    for i in 0..q {
        for a in 0..m {
            let k = dot(&row(fq, i), &row(&p.fs, a));
            for j in 0..c {
                pred[i * c + j] += k * w[a * c + j];
            }
        }
    }
    pred
}

/// The reference forward: (losses (N,), kept, partner).
pub fn reference_isa(
    p: &Problem,
    reg: f64,
    trace_mode: bool,
    discard: f64,
    epsilon: f64,
    partners: Partners<'_>,
) -> (Vec<f64>, Vec<usize>, Vec<usize>) {
    let (n, c, d) = (p.n, p.c, p.d);
    let pred = reference_predict(p, &p.ft, reg, trace_mode);
    let a: Vec<f64> = pred.iter().zip(&p.yt).map(|(x, y)| x - y).collect();
    let plain: Vec<f64> = (0..n)
        .map(|i| 0.5 * (0..c).map(|k| a[i * c + k].powi(2)).sum::<f64>())
        .collect();
    let n_keep = n - (discard * n as f64).floor() as usize;
    // Hardest first; among equal losses the lower index first.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| plain[y].total_cmp(&plain[x]).then(x.cmp(&y)));
    let mut kept = order[..n_keep].to_vec();
    kept.sort();
    let cosine = |i: usize, j: usize| {
        let fi = &p.ft[i * d..(i + 1) * d];
        let fj = &p.ft[j * d..(j + 1) * d];
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let (ni, nj) = (norm(fi), norm(fj));
        if ni == 0.0 || nj == 0.0 {
            0.0
        } else {
            fi.iter().zip(fj).map(|(x, y)| x * y).sum::<f64>() / (ni * nj)
        }
    };
    let partner: Vec<usize> = kept
        .iter()
        .enumerate()
        .map(|(r, &i)| match partners {
            Partners::Nearest => {
                let mut best = None;
                for &j in kept.iter().filter(|&&j| j != i) {
                    let better = match best {
                        None => true,
                        Some((_, s)) => cosine(i, j) > s,
                    };
                    if better {
                        best = Some((j, cosine(i, j)));
                    }
                }
                best.map_or(i, |(j, _)| j)
            }
            Partners::Offsets(o) => kept[(r + o[r] as usize) % n_keep],
            Partners::Explicit(idx) => idx[i] as usize,
        })
        .collect();
    let mut losses = vec![0.0; n];
    for (&i, &j) in kept.iter().zip(&partner) {
        let (mut aa, mut ab, mut bb) = (0.0, 0.0, 0.0);
        for k in 0..c {
            let (ai, b) = (a[i * c + k], a[j * c + k] - a[i * c + k]);
            aa += ai * ai;
            ab += ai * b;
            bb += b * b;
        }
        losses[i] = 0.5 * (aa + epsilon * ab + epsilon * epsilon / 3.0 * bb);
    }
    (losses, kept, partner)
}

/// Asserts |a - b| <= atol + rtol |b| element-wise, naming the quantity on failure.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{k}]: got {g}, want {w}"
        );
    }
}

/// A view for tests (panics on a length mismatch, which would be a bug in the test).
pub fn view<T: isa_core::Float>(data: &[T], rows: usize, cols: usize) -> MatView<'_, T> {
    MatView::new("test matrix", data, rows, cols).unwrap()
}
