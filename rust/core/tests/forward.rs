//! Forward passes against the naive reference of the contract.

mod common;

use common::{assert_close, reference_isa, reference_predict, view as v, Problem};
use isa_core::{
    isa_krr_forward, krr_predict_forward, reduce, CoreError, Factor, IsaOptions, KrrOptions,
    Partners, Reduced, Reduction, RegMode, Solver,
};

fn options(solver: Solver, reg_mode: RegMode, discard: f64, epsilon: f64) -> IsaOptions {
    IsaOptions {
        krr: KrrOptions {
            reg: 1e-2,
            reg_mode,
            solver,
            solve_f64: true,
        },
        discard,
        epsilon,
    }
}

fn as_usize(v: &[i64]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

#[test]
fn forward_matches_reference_for_every_option() {
    let explicit: Vec<i64> = vec![3, 0, 7, 7, 1, 2, 5, 4];
    let offsets_6: Vec<i64> = vec![1, 5, 2, 3, 4, 1];
    let offsets_8: Vec<i64> = vec![1, 7, 2, 3, 4, 1, 6, 5];
    for (m, d) in [(3, 5), (6, 3)] {
        let p = Problem::random(7, m, d, 8, 3);
        let [fs, ys, ft, yt] = p.views();
        for solver in [Solver::Auto, Solver::Dual, Solver::Primal] {
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
                            let opts = options(solver, reg_mode, discard, epsilon);
                            let out = isa_krr_forward(fs, ys, ft, yt, partners, &opts).unwrap();
                            let trace = reg_mode == RegMode::Trace;
                            let (losses, kept, partner) =
                                reference_isa(&p, 1e-2, trace, discard, epsilon, partners);
                            let case = format!(
                                "{m}x{d} {solver:?} {reg_mode:?} {discard} {partners:?} {epsilon}"
                            );
                            assert_eq!(as_usize(&out.kept), kept, "kept, {case}");
                            assert_eq!(as_usize(&out.partner), partner, "partner, {case}");
                            assert_close(&case, &out.losses, &losses, 1e-9, 1e-12);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn auto_solver_picks_primal_iff_more_support_than_dimensions() {
    for (m, d, s) in [(3, 5, 3), (6, 3, 3), (4, 4, 4)] {
        let p = Problem::random(1, m, d, 4, 2);
        let [fs, ys, ft, _] = p.views();
        let out = krr_predict_forward(fs, ys, ft, &KrrOptions::default()).unwrap();
        let Factor::F64(factor) = &out.factor else {
            panic!("solve_f64 must give an f64 factor")
        };
        assert_eq!((factor.rows, factor.cols), (s, s));
        assert_eq!(out.coef.rows, s);
    }
}

#[test]
fn primal_and_dual_predictions_agree() {
    for (m, d) in [(3, 5), (7, 4)] {
        let p = Problem::random(3, m, d, 5, 2);
        let [fs, ys, ft, _] = p.views();
        let predict = |solver| {
            let opts = KrrOptions {
                solver,
                reg: 1e-3,
                ..KrrOptions::default()
            };
            krr_predict_forward(fs, ys, ft, &opts).unwrap().pred.data
        };
        let dual = predict(Solver::Dual);
        assert_close(
            "primal vs dual",
            &predict(Solver::Primal),
            &dual,
            1e-8,
            1e-10,
        );
        let want = reference_predict(&p, &p.ft, 1e-3, true);
        assert_close("dual vs reference", &dual, &want, 1e-8, 1e-10);
    }
}

#[test]
fn no_augmentation_and_no_discard_is_the_plain_krr_loss() {
    let p = Problem::random(11, 4, 6, 9, 3);
    let [fs, ys, ft, yt] = p.views();
    let opts = options(Solver::Auto, RegMode::Trace, 0.0, 0.0);
    let out = isa_krr_forward(fs, ys, ft, yt, Partners::Nearest, &opts).unwrap();
    let pred = reference_predict(&p, &p.ft, 1e-2, true);
    let plain_mean = pred
        .iter()
        .zip(&p.yt)
        .map(|(x, y)| 0.5 * (x - y).powi(2))
        .sum::<f64>()
        / p.n as f64;
    let Reduced::Scalar(mean) = reduce(&out.losses, out.kept.len(), Reduction::Mean).unwrap()
    else {
        panic!("mean must reduce to a scalar")
    };
    assert!(
        (mean - plain_mean).abs() <= 1e-10 * plain_mean,
        "{mean} vs {plain_mean}"
    );
    assert_eq!(out.losses, out.plain);
}

#[test]
fn float32_inputs_track_float64() {
    let p = Problem::random(5, 4, 6, 8, 2);
    let [fs, ys, ft, yt] = p.views();
    let [fs32, ys32, ft32, yt32] = p.to_f32();
    for solve_f64 in [true, false] {
        let mut opts = options(Solver::Auto, RegMode::Trace, 0.25, 1.0);
        opts.krr.solve_f64 = solve_f64;
        let want = isa_krr_forward(fs, ys, ft, yt, Partners::Nearest, &opts).unwrap();
        let got = isa_krr_forward(
            v(&fs32, 4, 6),
            v(&ys32, 4, 2),
            v(&ft32, 8, 6),
            v(&yt32, 8, 2),
            Partners::Nearest,
            &opts,
        )
        .unwrap();
        assert_eq!(matches!(got.factor, Factor::F64(_)), solve_f64);
        let widened: Vec<f64> = got.losses.iter().map(|&x| f64::from(x)).collect();
        assert_close("f32 losses", &widened, &want.losses, 1e-3, 1e-5);
    }
}

#[test]
fn rank_deficient_dual_system_stays_finite() {
    // M = 8 > d = 2 with the dual form forced: K has rank 2.
    let p = Problem::random(9, 8, 2, 6, 2);
    let [fs, ys, ft, yt] = p.views();
    let mut opts = options(Solver::Dual, RegMode::Trace, 0.0, 1.0);
    opts.krr.reg = 1e-6;
    let out = isa_krr_forward(fs, ys, ft, yt, Partners::Nearest, &opts).unwrap();
    assert!(out.losses.iter().all(|x| x.is_finite()));
    assert!(out.lam > 0.0);

    let [fs32, ys32, ft32, yt32] = p.to_f32();
    opts.krr.solve_f64 = false;
    let out = isa_krr_forward(
        v(&fs32, 8, 2),
        v(&ys32, 8, 2),
        v(&ft32, 6, 2),
        v(&yt32, 6, 2),
        Partners::Nearest,
        &opts,
    );
    match out {
        Ok(out) => assert!(out.losses.iter().all(|x| x.is_finite())),
        Err(err) => assert!(matches!(err, CoreError::NotPositiveDefinite { .. })),
    }
}

/// Two identical support rows make K exactly singular in f32; an absolute ridge of 1e-10 is
/// lost to rounding until it reaches 1e-7 (f32 epsilon is 1.2e-7).
fn singular_f32(reg: f64) -> Result<isa_core::KrrPredict<f32>, CoreError> {
    let fs = [1.0f32, 0.0, 1.0, 0.0];
    let ys = [1.0f32, -1.0];
    let opts = KrrOptions {
        reg,
        reg_mode: RegMode::Absolute,
        solver: Solver::Dual,
        solve_f64: false,
    };
    krr_predict_forward(v(&fs, 2, 2), v(&ys, 2, 1), v(&fs, 2, 2), &opts)
}

#[test]
fn failed_factorization_escalates_the_ridge() {
    let out = singular_f32(1e-10).unwrap();
    assert_eq!(out.escalations.len(), 3);
    assert_close(
        "escalations",
        &out.escalations,
        &[1e-9, 1e-8, 1e-7],
        1e-12,
        0.0,
    );
    assert_eq!(out.lam, out.escalations[2]);
    assert!(out.pred.data.iter().all(|x| x.is_finite()));
}

#[test]
fn factorization_failing_after_three_escalations_is_an_error() {
    match singular_f32(1e-12) {
        Err(CoreError::NotPositiveDefinite { lam, escalations }) => {
            assert_eq!(escalations.len(), 3);
            assert!((lam - 1e-9).abs() < 1e-20, "{lam}");
        }
        other => panic!("expected NotPositiveDefinite, got {other:?}"),
    }
}

#[test]
fn nearest_partner_rules_for_ties_and_zero_vectors() {
    // Targets 1 and 3 are copies of target 0's direction; target 2 is zero.
    let ft = [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0, -1.0, 0.0];
    let yt = [0.0; 5];
    let fs = [1.0, 1.0];
    let ys = [1.0];
    let opts = options(Solver::Auto, RegMode::Trace, 0.0, 1.0);
    let out = isa_krr_forward(
        v(&fs, 1, 2),
        v(&ys, 1, 1),
        v(&ft, 5, 2),
        v(&yt, 5, 1),
        Partners::Nearest,
        &opts,
    )
    .unwrap();
    // 0 -> 1 (tie with 3, lower index), 1 -> 0, 2 (zero: all similarities 0) -> 0,
    // 3 -> 0, 4 (opposite of all) -> 2 (similarity 0 beats -1).
    assert_eq!(out.partner, vec![1, 0, 0, 0, 2]);
}

#[test]
fn discard_keeps_the_hardest_with_lower_index_on_ties() {
    let fs = [1.0];
    let ys = [0.0];
    let ft = [0.0; 5];
    // Predictions are all 0, so plain losses are 1/2 y^2: [0.5, 2, 0.5, 2, 0.5].
    let yt = [1.0, 2.0, -1.0, -2.0, 1.0];
    let mut opts = options(Solver::Auto, RegMode::Absolute, 0.4, 0.0);
    let keep = |opts: &IsaOptions| {
        isa_krr_forward(
            v(&fs, 1, 1),
            v(&ys, 1, 1),
            v(&ft, 5, 1),
            v(&yt, 5, 1),
            Partners::Nearest,
            opts,
        )
        .unwrap()
        .kept
    };
    assert_eq!(keep(&opts), vec![0, 1, 3]);
    opts.discard = 0.6;
    assert_eq!(keep(&opts), vec![1, 3]);
}

#[test]
fn reduce_follows_the_reduction() {
    let losses = [1.0f32, 0.0, 3.0];
    assert_eq!(
        reduce(&losses, 2, Reduction::Mean).unwrap(),
        Reduced::Scalar(2.0)
    );
    assert_eq!(
        reduce(&losses, 2, Reduction::Sum).unwrap(),
        Reduced::Scalar(4.0)
    );
    assert_eq!(
        reduce(&losses, 2, Reduction::None).unwrap(),
        Reduced::PerTarget(losses.to_vec())
    );
    assert!(reduce(&losses, 0, Reduction::Mean).is_err());
    assert!(reduce(&losses, 4, Reduction::Mean).is_err());
    assert!(reduce::<f32>(&[], 1, Reduction::Mean).is_err());
}
