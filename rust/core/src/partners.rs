//! The nearest-partner search: for each kept target, the other kept target whose features have
//! the largest cosine similarity.
//!
//! One rule for every input and both backends (the torch backend follows it with float64
//! products): similarities are those of the rows scaled to unit length in f64, values within
//! [`TIE_TOLERANCE`] of a row's best are ties and the lowest index wins, and a zero vector has
//! similarity 0 with everything. Scaling first keeps tiny or huge features (1e-23 or 1e30 in
//! f32) from underflowing or overflowing.
//!
//! The search costs one n_keep x n_keep x d product, the largest of the whole op. It runs in
//! the input type, block by block over the lower triangle (half the flops, and memory of a
//! few blocks instead of n_keep^2), and is certified: a float32 similarity is within
//! [`product_error_bound`] of the f64 one, so every column within twice that bound of a row's
//! best float32 score is kept on a shortlist, which is then rescored exactly in f64. The
//! shortlist is usually one or two columns long.

use faer::Accum;

use crate::krr::par;
use crate::matrix::{Float, MatView, RowMajor};
use crate::scratch;

/// Similarities (in [-1, 1], f64) this close to a row's best count as ties.
pub const TIE_TOLERANCE: f64 = 1e-12;

/// Rows (and columns) per block of the similarity product.
const BLOCK: usize = 256;

/// Partner of each kept target (an index into the batch); with a single kept target its
/// partner is itself (allowed only when epsilon = 0).
pub(crate) fn nearest_partners<T: Float>(features: MatView<'_, T>, kept: &[usize]) -> Vec<usize> {
    let n = kept.len();
    if n < 2 {
        return kept.to_vec();
    }
    let rows: Vec<&[T]> = kept.iter().map(|&i| features.row(i)).collect();
    let inverse_norms: Vec<f64> = rows.iter().map(|row| inverse_norm(row)).collect();
    let units = unit_rows(&rows, &inverse_norms);
    let width = 2.0 * product_error_bound::<T>(features.cols()) + TIE_TOLERANCE;
    let shortlists = shortlists(&units, width);
    scratch::recycle(units.data);
    (0..n)
        .map(|r| {
            let best = if inverse_norms[r] == 0.0 {
                // Similarity 0 with every other target: the tie goes to the lowest index.
                usize::from(r == 0)
            } else {
                rescore(&rows, &inverse_norms, r, &shortlists[r])
            };
            kept[best]
        })
        .collect()
}

/// 1 / ||x|| in f64 without under- or overflow (0 for a zero vector).
fn inverse_norm<T: Float>(row: &[T]) -> f64 {
    let largest = row.iter().fold(0.0f64, |m, &x| m.max(x.to_f64().abs()));
    if largest == 0.0 {
        return 0.0;
    }
    let scaled: f64 = row.iter().map(|&x| (x.to_f64() / largest).powi(2)).sum();
    1.0 / (largest * scaled.sqrt())
}

/// The rows scaled to unit length (computed in f64, rounded to the input type).
fn unit_rows<T: Float>(rows: &[&[T]], inverse_norms: &[f64]) -> RowMajor<T> {
    let cols = rows[0].len();
    let mut data = scratch::buffer(rows.len() * cols);
    for (row, &inverse) in rows.iter().zip(inverse_norms) {
        data.extend(row.iter().map(|&x| T::from_f64(x.to_f64() * inverse)));
    }
    RowMajor {
        data,
        rows: rows.len(),
        cols,
    }
}

/// How far a similarity of unit vectors computed in type `T` may be from its f64 value:
/// rounding the vectors (2u + u^2) plus a d-term dot product in any summation order (gamma_d).
pub fn product_error_bound<T: Float>(d: usize) -> f64 {
    let u = T::UNIT_ROUNDOFF;
    let gamma = d as f64 * u / (1.0 - d as f64 * u);
    2.0 * u + u * u + gamma
}

/// The columns that may be a row's best: all within `width` of its best score so far.
#[derive(Clone, Default)]
struct Shortlist {
    best: f64,
    columns: Vec<(f64, usize)>,
}

impl Shortlist {
    fn offer(&mut self, score: f64, column: usize, width: f64) {
        if self.columns.is_empty() || score > self.best {
            self.best = score;
            let floor = score - width;
            self.columns.retain(|&(s, _)| s >= floor);
        } else if score < self.best - width {
            return;
        }
        self.columns.push((score, column));
    }
}

/// Every row's shortlist from the type-`T` similarities of the lower triangle, in strips of
/// [`BLOCK`] rows against all columns before the strip's end (few large products run far
/// faster than many small ones); each product (r, c), c < r, is offered to both rows.
fn shortlists<T: Float>(units: &RowMajor<T>, width: f64) -> Vec<Shortlist> {
    let n = units.rows;
    let mut lists = vec![Shortlist::default(); n];
    let mut strip = scratch::buffer::<T>(BLOCK.min(n) * n);
    strip.resize(BLOCK.min(n) * n, T::from_f64(0.0));
    for row_start in (0..n).step_by(BLOCK) {
        let (rows, cols) = (
            (row_start + BLOCK).min(n) - row_start,
            (row_start + BLOCK).min(n),
        );
        let mut out = faer::MatMut::from_row_major_slice_mut(&mut strip[..rows * cols], rows, cols);
        faer::linalg::matmul::matmul(
            out.as_mut(),
            Accum::Replace,
            units.faer().subrows(row_start, rows),
            units.faer().subrows(0, cols).transpose(),
            T::from_f64(1.0),
            par(),
        );
        for (k, r) in (row_start..row_start + rows).enumerate() {
            let scores = &strip[k * cols..k * cols + r];
            for (c, &score) in scores.iter().enumerate() {
                let score = score.to_f64();
                lists[r].offer(score, c, width);
                lists[c].offer(score, r, width);
            }
        }
    }
    scratch::recycle(strip);
    lists
}

/// The best column of row `r`'s shortlist by the exact f64 similarity; ties (within
/// [`TIE_TOLERANCE`]) go to the lowest index.
fn rescore<T: Float>(rows: &[&[T]], inverse_norms: &[f64], r: usize, list: &Shortlist) -> usize {
    let exact: Vec<(f64, usize)> = list
        .columns
        .iter()
        .map(|&(_, c)| {
            let dot: f64 = rows[r]
                .iter()
                .zip(rows[c])
                .map(|(&x, &y)| (x.to_f64() * inverse_norms[r]) * (y.to_f64() * inverse_norms[c]))
                .sum();
            (dot, c)
        })
        .collect();
    let best = exact.iter().fold(f64::NEG_INFINITY, |m, &(s, _)| m.max(s));
    exact
        .iter()
        .filter(|&&(s, _)| s >= best - TIE_TOLERANCE)
        .map(|&(_, c)| c)
        .min()
        .expect("a row of at least two targets has a non-empty shortlist")
}

#[cfg(test)]
mod tests {
    use super::{nearest_partners, product_error_bound, TIE_TOLERANCE};
    use crate::matrix::MatView;

    /// The rule spelled out: f64 unit vectors, all pairs, ties to the lowest index.
    fn brute_force(data: &[f64], n: usize, d: usize) -> Vec<usize> {
        let unit: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let row = &data[i * d..(i + 1) * d];
                let largest = row.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                if largest == 0.0 {
                    return vec![0.0; d];
                }
                let norm = largest
                    * row
                        .iter()
                        .map(|x| (x / largest).powi(2))
                        .sum::<f64>()
                        .sqrt();
                row.iter().map(|x| x / norm).collect()
            })
            .collect();
        (0..n)
            .map(|r| {
                let score = |c: usize| {
                    unit[r]
                        .iter()
                        .zip(&unit[c])
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                };
                let best = (0..n)
                    .filter(|&c| c != r)
                    .map(score)
                    .fold(f64::NEG_INFINITY, f64::max);
                (0..n)
                    .filter(|&c| c != r && score(c) >= best - TIE_TOLERANCE)
                    .min()
                    .unwrap()
            })
            .collect()
    }

    fn pseudo_random(n: usize, d: usize, seed: u64) -> Vec<f64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n * d)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn partners_f32(data: &[f64], n: usize, d: usize) -> Vec<usize> {
        let narrow: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        let kept: Vec<usize> = (0..n).collect();
        nearest_partners(MatView::new("f", &narrow, n, d).unwrap(), &kept)
    }

    #[test]
    fn float32_agrees_with_the_f64_rule_across_blocks_and_scales() {
        let (n, d) = (600, 24); // three row blocks
        let base = pseudo_random(n, d, 1);
        for scale in [1.0, 1e-23, 1e30] {
            let data: Vec<f64> = base.iter().map(|x| x * scale).collect();
            let narrowed: Vec<f64> = data.iter().map(|&x| f64::from(x as f32)).collect();
            assert_eq!(
                partners_f32(&data, n, d),
                brute_force(&narrowed, n, d),
                "scale {scale}"
            );
        }
    }

    #[test]
    fn near_duplicates_and_zero_vectors_follow_the_rule() {
        let (n, d) = (40, 8);
        let mut data = pseudo_random(n, d, 2);
        for k in 0..d {
            data[5 * d + k] = data[3 * d + k] * (1.0 + 1e-7); // near-duplicate of row 3
            data[9 * d + k] = data[3 * d + k]; // exact duplicate of row 3
            data[11 * d + k] = 0.0; // a zero vector
        }
        let narrowed: Vec<f64> = data.iter().map(|&x| f64::from(x as f32)).collect();
        let got = partners_f32(&data, n, d);
        assert_eq!(got, brute_force(&narrowed, n, d));
        assert_eq!(
            got[11], 0,
            "a zero vector ties with everything: the lowest index"
        );
        assert_eq!(
            got[3], 5,
            "duplicates 5 and 9 tie with 3 in f32: the lower index"
        );
    }

    #[test]
    fn the_error_bound_grows_with_d_and_the_precision() {
        assert!(product_error_bound::<f32>(8192) > product_error_bound::<f32>(16));
        assert!(product_error_bound::<f64>(8192) < 1e-11);
        assert!(product_error_bound::<f32>(8192) < 1e-3);
    }
}
