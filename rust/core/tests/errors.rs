//! Every validation path returns its typed error, naming the argument, before any work.

mod common;

use common::{view, Problem};
use isa_core::{
    isa_krr_backward, isa_krr_forward, krr_predict_backward, krr_predict_forward, BackwardOptions,
    CoreError, FitView, IsaOptions, IsaSaved, KrrOptions, MatView, Partners, RegMode, Solver,
};

fn problem() -> Problem {
    Problem::random(1, 3, 4, 5, 2)
}

fn forward_err(p: &Problem, partners: Partners<'_>, opts: &IsaOptions) -> CoreError {
    let [fs, ys, ft, yt] = p.views();
    isa_krr_forward(fs, ys, ft, yt, partners, opts).unwrap_err()
}

fn arg_of(err: &CoreError) -> &'static str {
    match err {
        CoreError::Shape { arg, .. }
        | CoreError::Empty { arg }
        | CoreError::InvalidOption { arg, .. }
        | CoreError::DType { arg, .. }
        | CoreError::NonFinite { arg }
        | CoreError::PartnerOutOfRange { arg, .. } => arg,
        CoreError::NotPositiveDefinite { .. } => "lam",
        CoreError::Overflow { .. } => "support_features",
    }
}

#[test]
fn view_length_must_match_dimensions() {
    let err = MatView::new("support_features", &[1.0f64; 5], 2, 3).unwrap_err();
    assert!(matches!(
        err,
        CoreError::Shape {
            arg: "support_features",
            ..
        }
    ));
    assert!(err.to_string().contains("(2, 3)"), "{err}");
}

#[test]
fn disagreeing_shapes_name_the_argument() {
    let p = problem(); // M = 3, d = 4, N = 5, C = 2
    let opts = IsaOptions::default();
    let [fs, ys, ft, yt] = p.views();
    let other = vec![0.0; 8];
    let cases = [
        ("support_labels", [fs, view(&other, 4, 2), ft, yt]),
        ("target_features", [fs, ys, view(&other, 4, 2), yt]),
        ("target_labels", [fs, ys, ft, view(&other, 4, 2)]),
        ("target_labels", [fs, ys, ft, view(&other, 2, 4)]),
    ];
    for (arg, [fs, ys, ft, yt]) in cases {
        let err = isa_krr_forward(fs, ys, ft, yt, Partners::Nearest, &opts).unwrap_err();
        assert!(matches!(err, CoreError::Shape { .. }), "{err:?}");
        assert_eq!(arg_of(&err), arg, "{err}");
    }
}

#[test]
fn empty_inputs_are_rejected() {
    let p = problem();
    let [fs, ys, _, yt] = p.views();
    let none: [f64; 0] = [];
    let err = isa_krr_forward(
        view(&none, 0, 4),
        view(&none, 0, 2),
        fs,
        yt,
        Partners::Nearest,
        &IsaOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        CoreError::Empty {
            arg: "support_features"
        }
    );
    let err = krr_predict_forward(fs, ys, view(&none, 0, 4), &KrrOptions::default()).unwrap_err();
    assert_eq!(
        err,
        CoreError::Empty {
            arg: "query_features"
        }
    );
}

#[test]
fn non_finite_inputs_are_rejected() {
    for (which, value) in [
        (0, f64::NAN),
        (1, f64::INFINITY),
        (2, f64::NAN),
        (3, -f64::INFINITY),
    ] {
        let mut p = problem();
        match which {
            0 => p.fs[2] = value,
            1 => p.ys[0] = value,
            2 => p.ft[7] = value,
            _ => p.yt[1] = value,
        }
        let err = forward_err(&p, Partners::Nearest, &IsaOptions::default());
        assert!(matches!(err, CoreError::NonFinite { .. }), "{err:?}");
        let want = [
            "support_features",
            "support_labels",
            "target_features",
            "target_labels",
        ];
        assert_eq!(arg_of(&err), want[which]);
    }
}

#[test]
fn options_out_of_range_are_rejected() {
    let p = problem();
    let base = IsaOptions::default();
    let mut cases = Vec::new();
    for reg in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut o = base;
        o.krr.reg = reg;
        cases.push(("reg", o));
    }
    for discard in [-0.1, 1.0, 1.5, f64::NAN] {
        cases.push(("discard", IsaOptions { discard, ..base }));
    }
    cases.push((
        "epsilon",
        IsaOptions {
            epsilon: f64::INFINITY,
            ..base
        },
    ));
    for (arg, opts) in cases {
        let err = forward_err(&p, Partners::Nearest, &opts);
        assert!(matches!(err, CoreError::InvalidOption { .. }), "{err:?}");
        assert_eq!(arg_of(&err), arg, "{err}");
    }
}

#[test]
fn unknown_mode_strings_are_rejected() {
    assert_eq!(arg_of(&RegMode::parse("relative").unwrap_err()), "reg_mode");
    assert_eq!(arg_of(&Solver::parse("lu").unwrap_err()), "solver");
    assert_eq!(
        arg_of(&Partners::parse("random", &[]).unwrap_err()),
        "partner_mode"
    );
    assert_eq!(
        arg_of(&Partners::parse("nearest", &[1]).unwrap_err()),
        "partner_index"
    );
    assert!(RegMode::parse("trace").is_ok() && Solver::parse("primal").is_ok());
}

#[test]
fn a_single_kept_target_cannot_have_a_partner() {
    let p = problem();
    // N = 5, discard 0.8 -> n_keep = 1.
    let opts = IsaOptions {
        discard: 0.8,
        ..IsaOptions::default()
    };
    let err = forward_err(&p, Partners::Nearest, &opts);
    assert_eq!(arg_of(&err), "discard");
    let err = forward_err(&p, Partners::Offsets(&[0]), &opts);
    assert_eq!(arg_of(&err), "discard");
    // Without augmentation a lone target is fine, and is its own partner.
    let opts = IsaOptions {
        epsilon: 0.0,
        ..opts
    };
    let [fs, ys, ft, yt] = p.views();
    let out = isa_krr_forward(fs, ys, ft, yt, Partners::Nearest, &opts).unwrap();
    assert_eq!(out.partner, out.kept);
}

type ErrorCheck = fn(&CoreError) -> bool;

#[test]
fn partner_indices_and_offsets_must_be_in_range() {
    let p = problem();
    let opts = IsaOptions {
        discard: 0.2,
        ..IsaOptions::default()
    }; // n_keep = 4
    let cases: [(Partners<'_>, ErrorCheck); 5] = [
        (Partners::Explicit(&[0, 1, 2, 3]), |e| {
            matches!(e, CoreError::Shape { .. })
        }),
        (Partners::Explicit(&[0, 1, 2, 3, 5]), |e| {
            matches!(
                e,
                CoreError::PartnerOutOfRange {
                    position: 4,
                    value: 5,
                    ..
                }
            )
        }),
        (Partners::Explicit(&[0, -1, 2, 3, 4]), |e| {
            matches!(e, CoreError::PartnerOutOfRange { position: 1, .. })
        }),
        (Partners::Offsets(&[1, 2, 3, 0]), |e| {
            matches!(
                e,
                CoreError::PartnerOutOfRange {
                    position: 3,
                    low: 1,
                    high: 3,
                    ..
                }
            )
        }),
        (Partners::Offsets(&[1, 2, 3, 1, 1]), |e| {
            matches!(e, CoreError::Shape { .. })
        }),
    ];
    for (partners, expected) in cases {
        let err = forward_err(&p, partners, &opts);
        assert!(expected(&err), "{partners:?}: {err:?}");
        assert_eq!(arg_of(&err), "partner_index");
    }
}

#[test]
fn backward_checks_what_the_forward_saved() {
    let p = problem();
    let [fs, ys, ft, yt] = p.views();
    let out = isa_krr_forward(fs, ys, ft, yt, Partners::Nearest, &IsaOptions::default()).unwrap();
    let grad = vec![1.0; p.n];
    let options = BackwardOptions {
        reg_mode: RegMode::Trace,
        solver: Solver::Auto,
        epsilon: 1.0,
        query_grad: true,
    };
    let saved = out.saved();
    assert!(isa_krr_backward(fs, ys, ft, yt, &grad, saved, &options).is_ok());

    let bad_kept = [0i64, 9, 1, 2];
    let wrong_coef = vec![0.0; 4 * 2];
    let mut cases: Vec<(&str, IsaSaved<'_, f64>, Vec<f64>)> = vec![
        (
            "kept",
            IsaSaved {
                kept: &bad_kept,
                ..saved
            },
            grad.clone(),
        ),
        (
            "kept",
            IsaSaved {
                kept: &[],
                partner: &[],
                ..saved
            },
            grad.clone(),
        ),
        (
            "partner",
            IsaSaved {
                partner: &out.partner[..2],
                ..saved
            },
            grad.clone(),
        ),
        ("grad_losses", saved, vec![1.0; 3]),
        ("grad_losses", saved, vec![f64::NAN; p.n]),
    ];
    let fit = FitView {
        coef: view(&wrong_coef, 4, 2),
        ..saved.fit
    };
    cases.push(("coef", IsaSaved { fit, ..saved }, grad.clone()));
    let fit = FitView {
        lam: 0.0,
        ..saved.fit
    };
    cases.push(("lam", IsaSaved { fit, ..saved }, grad.clone()));
    for (arg, saved, grad) in cases {
        let err = isa_krr_backward(fs, ys, ft, yt, &grad, saved, &options).unwrap_err();
        assert_eq!(arg_of(&err), arg, "{err}");
    }
    // A factor of the other form (auto picks dual here: 3 x 3, primal would be 4 x 4).
    let primal = BackwardOptions {
        solver: Solver::Primal,
        ..options
    };
    let err = isa_krr_backward(fs, ys, ft, yt, &grad, saved, &primal).unwrap_err();
    assert_eq!(arg_of(&err), "coef");
}

#[test]
fn predict_backward_checks_grad_shape() {
    let p = problem();
    let [fs, ys, fq, _] = p.views();
    let out = krr_predict_forward(fs, ys, fq, &KrrOptions::default()).unwrap();
    let fit = FitView {
        coef: out.coef.view(),
        factor: out.factor.view(),
        lam: out.lam,
    };
    let options = BackwardOptions {
        reg_mode: RegMode::Trace,
        solver: Solver::Auto,
        epsilon: 0.0,
        query_grad: true,
    };
    let grad = vec![0.0; 3 * 2];
    let err = krr_predict_backward(fs, ys, fq, view(&grad, 3, 2), fit, &options).unwrap_err();
    assert_eq!(arg_of(&err), "grad_pred");
}

#[test]
fn messages_name_the_argument_and_the_expectation() {
    let err = CoreError::InvalidOption {
        arg: "discard",
        expected: "a value in [0, 1)".into(),
        got: "1.5".into(),
    };
    assert_eq!(
        err.to_string(),
        "discard: expected a value in [0, 1), got 1.5"
    );
    let err = CoreError::NotPositiveDefinite {
        lam: 1e-5,
        escalations: vec![],
    };
    assert!(err.to_string().contains("lam=1.000e-05"), "{err}");
}

#[test]
fn ridges_are_formatted_like_python() {
    assert_eq!(isa_core::format_lam(1e-5), "1.000e-05");
    assert_eq!(isa_core::format_lam(12345.678), "1.235e+04");
    assert_eq!(isa_core::format_lam(2.5e-300), "2.500e-300");
    assert_eq!(isa_core::format_lam(1.0), "1.000e+00");
}
