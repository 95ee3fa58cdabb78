//! The Cranelift GEMM path on the shared cases of the runtime's `gemm`
//! module, against the same naive reference.

use super::*;
use netc_runtime::gemm::cases;

fn run_cases(tile: TileKernel) {
    let mut jit = Jit::new().unwrap();
    let g = tile.gemm(&mut jit).unwrap();
    for case in cases() {
        let mut d = case.data();
        g.sgemm(
            case.m, case.n, case.k, case.alpha, &d.a, d.sa, &d.b, d.sb, case.beta, &mut d.c, d.ldc,
        )
        .unwrap();
        if let Err(e) = case.check(&d.c) {
            panic!("tile {tile:?}: {e}");
        }
    }
}

#[test]
fn best_tile_matches_naive_on_shared_cases() {
    let jit = Jit::new().unwrap();
    run_cases(TileKernel::best(&jit));
}

#[test]
fn other_tile_shapes_match_naive() {
    let fma = Jit::new().unwrap().has_fma();
    for (mr, nr, unroll) in [(4, 8, 8), (1, 4, 1), (3, 12, 4), (2, 16, 3), (8, 4, 8)] {
        run_cases(TileKernel {
            mr,
            nr,
            unroll,
            fma,
        });
    }
}

#[test]
fn mul_add_fallback_matches_naive() {
    run_cases(TileKernel {
        mr: 5,
        nr: 8,
        unroll: 8,
        fma: false,
    });
}

#[test]
fn kernel_is_cached_by_shape() {
    let mut jit = Jit::new().unwrap();
    let t = TileKernel::best(&jit);
    let a = t.compile(&mut jit).unwrap();
    let b = t.compile(&mut jit).unwrap();
    assert_eq!(a, b);
    let c = TileKernel { unroll: 4, ..t }.compile(&mut jit).unwrap();
    assert_ne!(a, c);
    assert_eq!(jit.stats().compilations, 2);
    assert_eq!(jit.stats().cache_hits, 1);
    // A tile kernel is not callable through the elementwise ABI.
    assert!(jit.code(a).is_err());
}

#[test]
fn bad_shapes_are_errors() {
    let mut jit = Jit::new().unwrap();
    for (mr, nr, unroll) in [
        (6, 8, 8),
        (5, 6, 8),
        (0, 8, 8),
        (5, 8, 0),
        (5, 8, 17),
        (3, 16, 8),
    ] {
        let t = TileKernel {
            mr,
            nr,
            unroll,
            fma: true,
        };
        assert!(t.compile(&mut jit).is_err(), "{t:?}");
    }
}

#[test]
fn short_buffer_is_an_error() {
    let mut jit = Jit::new().unwrap();
    let g = TileKernel::best(&jit).gemm(&mut jit).unwrap();
    let (a, b, mut c) = (vec![0.0; 5], vec![0.0; 6], vec![0.0; 4]);
    let e = g
        .sgemm(
            2,
            2,
            3,
            1.0,
            &a,
            Strides::row_major(3),
            &b,
            Strides::row_major(2),
            0.0,
            &mut c,
            2,
        )
        .unwrap_err();
    assert!(e.0.contains("A needs 6"), "{e}");
}

/// The 5x8 u8 FMA kernel's loop body has no spills and one
/// `vbroadcastss mem` per FMA (the recipe's point), checked on the vcode.
#[test]
fn best_kernel_vcode_has_broadcast_per_fma() {
    let jit = Jit::new().unwrap();
    if !jit.has_fma() {
        return;
    }
    let t = TileKernel::best(&jit);
    let vcode = jit_vcode(&t);
    let fmas = vcode.matches("vfmadd").count();
    // 80 in the unrolled body + 10 in the one-step tail.
    assert_eq!(fmas, 90, "{vcode}");
    assert_eq!(vcode.matches("vbroadcastss").count(), fmas, "{vcode}");
    assert!(!vcode.contains("(%rsp)"), "spills in the kernel:\n{vcode}");
}

fn jit_vcode(t: &TileKernel) -> String {
    let mut jit = Jit::new().unwrap();
    jit.vcode(t).unwrap()
}
