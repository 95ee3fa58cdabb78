//! The thin products against the f64 reference ([`sgemm_naive`]) in each
//! form, on sizes around the tiles, vectors and depth blocks.

use super::*;
use crate::gemm::{sgemm_naive, test_data as data, TileWork};

/// Runs `C = A·B + beta·C` through [`gemm`] with A `m×k` and B `k×n`
/// stored by `form` (the operands' padded leading dimensions say which
/// side is contiguous), on 1, 2 and 3 threads, and compares every element
/// of C with [`sgemm_naive`]; C's padding (NaN) must stay untouched, and
/// with `beta` 0 C's NaNs must not be read.
fn check(form: Form, (m, n, k): (usize, usize, usize), beta: f32) {
    let pad = (m + n + k) % 3;
    // (A strides, A len, B strides, B len)
    let (sa, a_len, sb, b_len) = match form {
        Form::Dot => (
            Strides::row_major(k + pad),
            m * (k + pad),
            Strides::transposed(k + 2 * pad),
            n * (k + 2 * pad),
        ),
        Form::Axpy => (
            Strides::row_major(k + pad),
            m * (k + pad),
            Strides::row_major(n + pad),
            k * (n + pad),
        ),
    };
    // With a size of 1 the strides may fit another form too (which then
    // computes the same product through the same strides).
    let got = Form::of((m, n, k), sa, sb);
    if m > 1 && n > 1 && k > 1 {
        assert_eq!(got, Some(form), "{m}x{n}x{k}");
    } else {
        assert!(got.is_some(), "{form:?} {m}x{n}x{k}");
    }
    let ldc = n + pad;
    let (a, b) = (data(a_len, 1), data(b_len, 2));
    let mut c0 = data(m * ldc, 3);
    for (e, v) in c0.iter_mut().enumerate() {
        if e % ldc >= n || beta == 0.0 {
            *v = f32::NAN;
        }
    }
    let mut want = c0.clone();
    sgemm_naive(m, n, k, 1.0, &a, sa, &b, sb, beta, &mut want, ldc);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for threads in [1, 2, 3] {
        let mut c = c0.clone();
        // SAFETY: the buffers hold the operands through their strides.
        pool.install(|| unsafe {
            gemm(
                (m, n, k),
                a.as_ptr(),
                sa,
                b.as_ptr(),
                sb,
                beta,
                c.as_mut_ptr(),
                ldc,
                threads,
                &mut TileWork::default(),
            )
        });
        let tol = 2e-6 * (k as f32).sqrt().max(1.0);
        for (e, (g, v)) in c.iter().zip(&want).enumerate() {
            let what = format!(
                "{form:?} {m}x{n}x{k} beta={beta} threads={threads}: C[{e}] = {g}, want {v}"
            );
            if e % ldc >= n {
                assert!(g.is_nan(), "padding written: {what}");
            } else {
                assert!((g - v).abs() <= tol * v.abs().max(1.0), "{what}");
            }
        }
    }
}

/// `x·Wᵀ`: rows 1–64 (tails of the 4-row tile), outputs around the
/// 4-column tile, depths around 16 and across the depth block (at 64
/// rows the block is 1024 floats).
#[test]
fn dot_form_equals_the_naive_product() {
    for m in [1, 3, 4, 5, 64] {
        for n in [1, 3, 4, 7, 13] {
            for k in [1, 15, 16, 17, 300, 2100] {
                for beta in [0.0, 1.0] {
                    check(Form::Dot, (m, n, k), beta);
                }
            }
        }
    }
}

/// `dy·W`: rows around the 8-row tile, columns around the vectors and
/// the 48-column tile, depths across the weight-row block (512 rows at
/// these widths).
#[test]
fn axpy_form_equals_the_naive_product() {
    for m in [1, 7, 8, 9, 32] {
        for n in [1, 15, 16, 17, 48, 49, 100] {
            for k in [1, 7, 600] {
                for beta in [0.0, 1.0] {
                    check(Form::Axpy, (m, n, k), beta);
                }
            }
        }
    }
}

/// Products no form fits (too many thin rows, A read transposed) have no
/// form, and [`gemm`] still computes them (through the `gemm` crate).
#[test]
fn other_products_fall_back_to_the_crate() {
    let (m, n, k) = (MAX_THIN + 1, 5, 9);
    let (sa, sb) = (Strides::row_major(k), Strides::transposed(k));
    assert_eq!(Form::of((m, n, k), sa, sb), None);
    assert_eq!(
        Form::of((2, 3, 4), Strides::transposed(2), Strides::row_major(3)),
        None
    );
    let (a, b) = (data(m * k, 4), data(n * k, 5));
    let mut want = vec![0.0; m * n];
    sgemm_naive(m, n, k, 1.0, &a, sa, &b, sb, 0.0, &mut want, n);
    let mut c = vec![f32::NAN; m * n];
    let mut work = TileWork::default();
    // SAFETY: the buffers hold the sizes above.
    unsafe {
        gemm(
            (m, n, k),
            a.as_ptr(),
            sa,
            b.as_ptr(),
            sb,
            0.0,
            c.as_mut_ptr(),
            n,
            2,
            &mut work,
        )
    };
    for (g, v) in c.iter().zip(&want) {
        assert!((g - v).abs() <= 1e-5, "{g} vs {v}");
    }
}
