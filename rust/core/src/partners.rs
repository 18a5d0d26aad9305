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
use rayon::prelude::*;

use crate::krr::par;
use crate::matrix::{Float, MatView, RowMajor};
use crate::scratch;

/// Similarities (in [-1, 1], f64) this close to a row's best count as ties.
pub const TIE_TOLERANCE: f64 = 1e-12;

/// The similarity strip's size: as many rows as fit in this many bytes, at least
/// [`MIN_STRIP_ROWS`]. Fewer, larger products run faster (N=1024, d=2048: forward 12.6 ms in
/// strips of 256 rows, 10.8 ms in one), and a strip of all rows keeps the memory at
/// O(rows x n_keep) for large batches (N=60,000: 256 rows, 61 MB).
const STRIP_BYTES: usize = 32 << 20;
const MIN_STRIP_ROWS: usize = 256;

/// Rows per strip of the `n x n` similarity product of `T`s.
fn strip_rows<T>(n: usize) -> usize {
    let n = n.max(1);
    (STRIP_BYTES / (n * std::mem::size_of::<T>()))
        .max(MIN_STRIP_ROWS)
        .min(n)
}

/// Partner of each kept target (an index into the batch); with a single kept target its
/// partner is itself (allowed only when epsilon = 0).
pub(crate) fn nearest_partners<T: Float>(features: MatView<'_, T>, kept: &[usize]) -> Vec<usize> {
    nearest_partners_in_strips(features, kept, strip_rows::<T>(kept.len()))
}

/// [`nearest_partners`], the similarities computed `strip_rows` rows at a time.
fn nearest_partners_in_strips<T: Float>(
    features: MatView<'_, T>,
    kept: &[usize],
    strip_rows: usize,
) -> Vec<usize> {
    let n = kept.len();
    if n < 2 {
        return kept.to_vec();
    }
    let rows: Vec<&[T]> = kept.iter().map(|&i| features.row(i)).collect();
    let (scales, units) = unit_rows(&rows);
    let width = 2.0 * product_error_bound::<T>(features.cols()) + TIE_TOLERANCE;
    let shortlists = shortlists(&units, width, strip_rows);
    scratch::recycle(units.data);
    (0..n)
        .into_par_iter()
        .map(|r| {
            let best = if scales[r].inverse_scaled_norm == 0.0 {
                // Similarity 0 with every other target: the tie goes to the lowest index.
                usize::from(r == 0)
            } else if let [(_, only)] = shortlists[r].columns[..] {
                // The bound certifies it: no other column can be within reach of the best.
                only
            } else {
                rescore(&rows, &scales, r, &shortlists[r])
            };
            kept[best]
        })
        .collect()
}

/// Lanes of the f64 reductions below: independent partial sums (or maxima) that the compiler
/// turns into SIMD registers; a single running sum would force one element at a time.
const LANES: usize = 8;

/// How a row is brought to unit length without under- or overflow: first by a power of two
/// (`exact`, which changes no bit of the mantissas), bringing the largest magnitude into
/// [1, 2) (below 1 for f64 rows of subnormal numbers only), then by the norm of the rescaled
/// row.
/// Float32 rows skip the power of two (`exact` = 1): their squares cannot leave f64's range.
#[derive(Clone, Copy)]
struct RowScale {
    /// The power of two applied first.
    exact: f64,
    /// 1 / ||exact * row|| (0 for a zero vector).
    inverse_scaled_norm: f64,
}

impl RowScale {
    fn of<T: Float>(row: &[T]) -> Self {
        // No scaling needed (float32): one pass instead of a maximum and then a scaled sum.
        if T::PRODUCTS_FIT_F64 {
            let squares = scaled_dot(row, 1.0, row, 1.0);
            return RowScale {
                exact: 1.0,
                inverse_scaled_norm: if squares > 0.0 {
                    squares.sqrt().recip()
                } else {
                    0.0
                },
            };
        }
        let largest = max_abs(row);
        if largest == 0.0 || !largest.is_finite() {
            return RowScale {
                exact: 0.0,
                inverse_scaled_norm: 0.0,
            };
        }
        let exact = inverse_power_of_two_below(largest);
        RowScale {
            exact,
            inverse_scaled_norm: scaled_dot(row, exact, row, exact).sqrt().recip(),
        }
    }
}

/// 1 / p for the largest power of two p <= `x` (x positive and finite), capped at 2^1023
/// (the largest finite power of two) for subnormal x.
fn inverse_power_of_two_below(x: f64) -> f64 {
    let mut exponent = x.log2().floor() as i32;
    // log2 rounds: step once if it overshot or undershot.
    if 2f64.powi(exponent) > x {
        exponent -= 1;
    } else if 2f64.powi(exponent + 1) <= x {
        exponent += 1;
    }
    2f64.powi((-exponent).min(1023))
}

/// max |x| in f64, LANES maxima at a time.
fn max_abs<T: Float>(row: &[T]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x.to_f64().abs());
        }
    }
    let head = lanes.iter().fold(0.0f64, |m, &x| m.max(x));
    tail.iter().fold(head, |m, &x| m.max(x.to_f64().abs()))
}

/// sum (a_scale a_i)(b_scale b_i) in f64, LANES partial sums; the scales are powers of two, so
/// the products cannot overflow.
fn scaled_dot<T: Float>(a: &[T], a_scale: f64, b: &[T], b_scale: f64) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((s, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *s += (x.to_f64() * a_scale) * (y.to_f64() * b_scale);
        }
    }
    let tail: f64 = a_tail
        .iter()
        .zip(b_tail)
        .map(|(&x, &y)| (x.to_f64() * a_scale) * (y.to_f64() * b_scale))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// Each row's [`RowScale`] and the rows scaled to unit length (computed in f64, rounded to the
/// input type), in one parallel pass while each row is in cache.
fn unit_rows<T: Float>(rows: &[&[T]]) -> (Vec<RowScale>, RowMajor<T>) {
    let cols = rows[0].len();
    let mut data = scratch::overwritable(rows.len() * cols);
    let scales = data
        .par_chunks_mut(cols)
        .zip(rows.par_iter())
        .map(|(out, row)| {
            let scale = RowScale::of(row);
            // Two products, not one by exact * inverse: that could overflow for subnormal rows.
            let (exact, inverse) = (scale.exact, scale.inverse_scaled_norm);
            for (o, &x) in out.iter_mut().zip(row.iter()) {
                *o = T::from_f64(x.to_f64() * exact * inverse);
            }
            scale
        })
        .collect();
    let units = RowMajor {
        data,
        rows: rows.len(),
        cols,
    };
    (scales, units)
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

/// Every row's shortlist from the type-`T` similarities of the strict lower triangle, in
/// strips of `strip_rows` rows: the columns before the strip in one product (few large products
/// run far faster than many small ones), the strip's diagonal block as a triangular product
/// (only its lower half is computed); each product (r, c), c < r, is offered to both rows.
fn shortlists<T: Float>(units: &RowMajor<T>, width: f64, strip_rows: usize) -> Vec<Shortlist> {
    use faer::linalg::matmul::triangular::{self, BlockStructure};

    let n = units.rows;
    let mut lists = vec![Shortlist::default(); n];
    let mut strip = scratch::overwritable::<T>(strip_rows * n);
    for row_start in (0..n).step_by(strip_rows) {
        let rows = (row_start + strip_rows).min(n) - row_start;
        let cols = row_start + rows;
        let strip_units = units.faer().subrows(row_start, rows);
        let mut out = faer::MatMut::from_row_major_slice_mut(&mut strip[..rows * cols], rows, cols);
        let (before, diagonal) = out.as_mut().split_at_col_mut(row_start);
        faer::linalg::matmul::matmul(
            before,
            Accum::Replace,
            strip_units,
            units.faer().subrows(0, row_start).transpose(),
            T::from_f64(1.0),
            par(),
        );
        triangular::matmul(
            diagonal,
            BlockStructure::StrictTriangularLower,
            Accum::Replace,
            strip_units,
            BlockStructure::Rectangular,
            strip_units.transpose(),
            BlockStructure::Rectangular,
            T::from_f64(1.0),
            par(),
        );
        // A shortlist ends as the same set whatever the order of the offers, so each list is
        // fed by one thread: first the strip's rows, then every column below them.
        let scores = &strip[..rows * cols];
        lists[row_start..cols]
            .par_iter_mut()
            .enumerate()
            .for_each(|(k, list)| {
                let row = &scores[k * cols..k * cols + row_start + k];
                for (c, &score) in row.iter().enumerate() {
                    list.offer(score.to_f64(), c, width);
                }
            });
        lists[..cols]
            .par_iter_mut()
            .enumerate()
            .for_each(|(c, list)| {
                for k in (c + 1).saturating_sub(row_start)..rows {
                    list.offer(scores[k * cols + c].to_f64(), row_start + k, width);
                }
            });
    }
    scratch::recycle(strip);
    lists
}

/// The best column of row `r`'s shortlist by the exact f64 similarity; ties (within
/// [`TIE_TOLERANCE`]) go to the lowest index.
fn rescore<T: Float>(rows: &[&[T]], scales: &[RowScale], r: usize, list: &Shortlist) -> usize {
    let (a, b) = (scales[r], rows[r]);
    let exact: Vec<(f64, usize)> = list
        .columns
        .iter()
        .map(|&(_, c)| {
            let dot = scaled_dot(b, a.exact, rows[c], scales[c].exact);
            (
                dot * a.inverse_scaled_norm * scales[c].inverse_scaled_norm,
                c,
            )
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
    use super::{
        inverse_power_of_two_below, nearest_partners, nearest_partners_in_strips,
        product_error_bound, scaled_dot, strip_rows, MIN_STRIP_ROWS, STRIP_BYTES, TIE_TOLERANCE,
    };
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

    fn partners_f32_in_strips(data: &[f64], n: usize, d: usize, strip_rows: usize) -> Vec<usize> {
        let narrow: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        let kept: Vec<usize> = (0..n).collect();
        nearest_partners_in_strips(MatView::new("f", &narrow, n, d).unwrap(), &kept, strip_rows)
    }

    #[test]
    fn float32_agrees_with_the_f64_rule_across_strips_and_scales() {
        let (n, d) = (600, 24);
        let base = pseudo_random(n, d, 1);
        for scale in [1.0, 1e-23, 1e30] {
            let data: Vec<f64> = base.iter().map(|x| x * scale).collect();
            let narrowed: Vec<f64> = data.iter().map(|&x| f64::from(x as f32)).collect();
            let expected = brute_force(&narrowed, n, d);
            // One strip (what 600 rows get), then three (256 + 256 + 88) and many uneven ones.
            assert_eq!(partners_f32(&data, n, d), expected, "scale {scale}");
            for strip_rows in [256, 7] {
                assert_eq!(
                    partners_f32_in_strips(&data, n, d, strip_rows),
                    expected,
                    "scale {scale}, strips of {strip_rows}"
                );
            }
        }
    }

    #[test]
    fn strips_hold_all_rows_while_they_fit_and_at_least_the_minimum_beyond() {
        assert_eq!(strip_rows::<f32>(820), 820);
        assert_eq!(strip_rows::<f64>(1), 1);
        assert_eq!(strip_rows::<f64>(40), 40);
        assert_eq!(strip_rows::<f32>(60_000), MIN_STRIP_ROWS);
        let rows = strip_rows::<f32>(4_000);
        assert!(rows < 4_000 && rows * 4_000 * 4 <= STRIP_BYTES, "{rows}");
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

    #[test]
    fn rows_are_scaled_by_exact_powers_of_two() {
        for x in [
            1.0,
            2.0,
            3.0,
            0.75,
            1e-300,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            1e-45,
        ] {
            let scaled = x * inverse_power_of_two_below(x);
            assert!((1.0..2.0).contains(&scaled), "{x} -> {scaled}");
        }
        // A subnormal largest value: the largest finite power of two, no overflow.
        assert_eq!(inverse_power_of_two_below(1e-310), 2f64.powi(1023));
    }

    #[test]
    fn the_lane_dot_product_matches_a_plain_sum_at_every_length() {
        for d in [1, 7, 8, 9, 63, 1000] {
            let a = pseudo_random(1, d, 3);
            let b = pseudo_random(1, d, 4);
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| 4.0 * x * (0.5 * y)).sum();
            assert!(
                (scaled_dot(&a, 4.0, &b, 0.5) - plain).abs() < 1e-12,
                "d = {d}"
            );
        }
    }

    #[test]
    fn subnormal_and_huge_f64_rows_have_the_partners_of_their_scaled_copies() {
        let (n, d) = (40, 24);
        let data = pseudo_random(n, d, 11);
        let kept: Vec<usize> = (0..n).collect();
        let want = nearest_partners(MatView::new("f", &data, n, d).unwrap(), &kept);
        // 2^-1030: every value subnormal (a few low bits lost); 2^1000: near the f64 maximum.
        for scale in [2f64.powi(-515) * 2f64.powi(-515), 2f64.powi(1000)] {
            let scaled: Vec<f64> = data.iter().map(|x| x * scale).collect();
            let got = nearest_partners(MatView::new("f", &scaled, n, d).unwrap(), &kept);
            assert_eq!(got, want, "scale {scale:e}");
        }
    }
}
