//! The SD UNets' parameter paths, shapes and counts equal diffusers'
//! `UNet2DConditionModel` state_dict (tests/fixtures/keys). diffusers lists
//! `up_blocks` before `mid_block`; our declaration order follows execution,
//! so the lists are compared as sorted sets.

use netc::elab::elaborate;
use netc::program::Program;
use netc::summary::param_list;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

fn check(model: &str, count: i64) {
    let (p, diags) = Program::load(&root().join("models/sd_unet.net"));
    assert!(diags.is_empty(), "{diags:?}");
    let def = p.model(Some(model)).expect("model exists");
    let g = elaborate(&p, def, &[]).unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(g.param_count(), count);
    let mut ours: Vec<String> = param_list(&g).lines().map(str::to_string).collect();
    let fixture = std::fs::read_to_string(root().join(format!("tests/fixtures/keys/{model}.txt")))
        .expect("fixture");
    let mut want: Vec<String> = fixture.lines().map(str::to_string).collect();
    ours.sort();
    want.sort();
    assert_eq!(ours, want);
    let out = &g.outputs[0];
    assert_eq!(out.0, "out");
    assert_eq!(
        g.ty(out.1),
        g.ty(g.inputs[0].1),
        "output shape = sample shape"
    );
}

#[test]
fn sd_unet_matches_diffusers() {
    check("sd_unet", 859_520_964);
}

#[test]
fn sd_unet_small_matches_diffusers() {
    check("sd_unet_small", 12_847_236);
}
