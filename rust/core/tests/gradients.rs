//! Analytic backward passes against central finite differences of the forward, in f64.

mod common;

use common::{view, Problem, Rng};
use isa_core::{
    isa_krr_backward, isa_krr_forward, krr_predict_backward, krr_predict_forward, BackwardOptions,
    FitView, IsaOptions, KrrOptions, Partners, RegMode, Solver,
};

const STEP: f64 = 1e-6;
const NAMES: [&str; 4] = [
    "support_features",
    "support_labels",
    "target_features",
    "target_labels",
];

fn input_mut(p: &mut Problem, which: usize) -> &mut Vec<f64> {
    match which {
        0 => &mut p.fs,
        1 => &mut p.ys,
        2 => &mut p.ft,
        _ => &mut p.yt,
    }
}

/// Compares `analytic[which]` with central differences of `objective` for every entry.
fn check_against_differences(
    case: &str,
    p: &Problem,
    analytic: [&[f64]; 4],
    objective: impl Fn(&Problem) -> f64,
) {
    for (which, grad) in analytic.iter().enumerate() {
        for k in 0..grad.len() {
            let mut plus = p.clone();
            input_mut(&mut plus, which)[k] += STEP;
            let mut minus = p.clone();
            input_mut(&mut minus, which)[k] -= STEP;
            let numeric = (objective(&plus) - objective(&minus)) / (2.0 * STEP);
            assert!(
                (grad[k] - numeric).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                "{case}: d/d{}[{k}] analytic {} vs numeric {numeric}",
                NAMES[which],
                grad[k]
            );
        }
    }
}

/// sum_i w_i L_i for fixed weights w (so the backward gets a non-trivial grad_losses).
fn weighted_loss(p: &Problem, opts: &IsaOptions, partners: Partners<'_>, weights: &[f64]) -> f64 {
    let [fs, ys, ft, yt] = p.views();
    let out = isa_krr_forward(fs, ys, ft, yt, partners, opts).unwrap();
    out.losses.iter().zip(weights).map(|(l, w)| l * w).sum()
}

fn check_isa(p: &Problem, opts: &IsaOptions, partners: Partners<'_>) {
    let weights = Rng::new(99).vec(p.n);
    let [fs, ys, ft, yt] = p.views();
    let out = isa_krr_forward(fs, ys, ft, yt, partners, opts).unwrap();
    let saved = out.saved();
    let backward = BackwardOptions {
        reg_mode: opts.krr.reg_mode,
        solver: opts.krr.solver,
        epsilon: opts.epsilon,
        query_grad: true,
    };
    let grads = isa_krr_backward(fs, ys, ft, yt, &weights, saved, &backward).unwrap();
    let case = format!("{}x{} {opts:?} {partners:?}", p.m, p.d);
    check_against_differences(
        &case,
        p,
        [
            &grads.support_features.data,
            &grads.support_labels.data,
            &grads.target_features.data,
            &grads.target_labels.data,
        ],
        |q| weighted_loss(q, opts, partners, &weights),
    );
}

#[test]
fn isa_backward_matches_finite_differences() {
    let explicit: Vec<i64> = vec![2, 0, 6, 6, 1, 3, 4, 5];
    let offsets_6: Vec<i64> = vec![1, 5, 2, 3, 4, 1];
    let offsets_8: Vec<i64> = vec![1, 7, 2, 3, 4, 1, 6, 5];
    // Dual (M < d) and primal (M > d) problems under the auto solver.
    for (m, d) in [(3, 4), (5, 3)] {
        let p = Problem::random(42, m, d, 8, 2);
        for reg_mode in [RegMode::Trace, RegMode::Absolute] {
            for discard in [0.0, 0.25] {
                let offsets = if discard == 0.0 {
                    &offsets_8
                } else {
                    &offsets_6
                };
                for partners in [
                    Partners::Nearest,
                    Partners::Offsets(offsets),
                    Partners::Explicit(&explicit),
                ] {
                    for epsilon in [1.0, -0.5, 0.0] {
                        let opts = IsaOptions {
                            krr: KrrOptions {
                                reg: 0.05,
                                reg_mode,
                                solver: Solver::Auto,
                                solve_f64: true,
                            },
                            discard,
                            epsilon,
                        };
                        check_isa(&p, &opts, partners);
                    }
                }
            }
        }
    }
}

#[test]
fn forced_forms_have_correct_gradients() {
    // The system opposite to the one auto would pick, on both kinds of problem.
    for (m, d, solver) in [(3, 4, Solver::Primal), (5, 3, Solver::Dual)] {
        let p = Problem::random(8, m, d, 6, 2);
        for reg_mode in [RegMode::Trace, RegMode::Absolute] {
            let opts = IsaOptions {
                krr: KrrOptions {
                    reg: 0.05,
                    reg_mode,
                    solver,
                    solve_f64: false,
                },
                discard: 0.2,
                epsilon: 0.7,
            };
            check_isa(&p, &opts, Partners::Nearest);
        }
    }
}

#[test]
fn predict_backward_matches_finite_differences() {
    for (m, d) in [(3, 4), (5, 3)] {
        // The query features play the role of the targets; the labels slot is unused.
        let p = Problem::random(5, m, d, 4, 2);
        let grad_pred = Rng::new(3).vec(p.n * p.c);
        for reg_mode in [RegMode::Trace, RegMode::Absolute] {
            let opts = KrrOptions {
                reg: 0.05,
                reg_mode,
                ..KrrOptions::default()
            };
            let [fs, ys, fq, _] = p.views();
            let out = krr_predict_forward(fs, ys, fq, &opts).unwrap();
            let fit = FitView {
                coef: out.coef.view(),
                factor: out.factor.view(),
                lam: out.lam,
            };
            let backward = BackwardOptions {
                reg_mode,
                solver: opts.solver,
                epsilon: 0.0,
                query_grad: true,
            };
            let g = view(&grad_pred, p.n, p.c);
            let grads = krr_predict_backward(fs, ys, fq, g, fit, &backward).unwrap();
            let objective = |q: &Problem| {
                let [fs, ys, fq, _] = q.views();
                let pred = krr_predict_forward(fs, ys, fq, &opts).unwrap().pred.data;
                pred.iter().zip(&grad_pred).map(|(a, b)| a * b).sum::<f64>()
            };
            let zeros = vec![0.0; p.n * p.c];
            check_against_differences(
                &format!("predict {m}x{d} {reg_mode:?}"),
                &p,
                [
                    &grads.support_features.data,
                    &grads.support_labels.data,
                    &grads.query_features.data,
                    &zeros,
                ],
                objective,
            );
        }
    }
}
