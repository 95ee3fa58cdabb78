//! `netc compile --emit ...`: what a compile stage produced for a model:
//! the elaborated IR, the IR after a pass, or the Cranelift IR / machine
//! code of every distinct kernel of the model's plan.

use super::options::{input_sizes, load, CompileFlags, ModelArgs};
use super::Failure;
use netc::back::clif::{emit_kernels, Listing};
use netc::ir::print_graph;
use netc::passes::pipeline::optimize;

/// What `netc compile` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emit {
    /// `ir`: the typed graph IR as elaborated.
    Ir,
    /// `ir-after=PASS`: the IR after the pass pipeline ran up to PASS.
    IrAfter(String),
    /// `clif`: the Cranelift IR of each distinct kernel of the plan.
    Clif,
    /// `asm`: the machine code of each distinct kernel of the plan.
    Asm,
}

/// Parses an `--emit` value.
fn parse_emit(text: &str) -> Result<Emit, String> {
    match text {
        "ir" => Ok(Emit::Ir),
        "clif" => Ok(Emit::Clif),
        "asm" => Ok(Emit::Asm),
        _ => match text.strip_prefix("ir-after=") {
            Some(pass) if !pass.is_empty() => Ok(Emit::IrAfter(pass.to_string())),
            _ => Err("expected ir, ir-after=PASS, clif or asm".to_string()),
        },
    }
}

/// The arguments of `netc compile`.
#[derive(clap::Args)]
pub struct CompileArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// What to print: `ir` (as elaborated), `ir-after=PASS` (after the
    /// passes up to PASS), `clif` (Cranelift IR of each distinct kernel of
    /// the plan, lowered for the sizes given with `--set`, default 1) or
    /// `asm` (their machine code).
    #[arg(long, value_parser = parse_emit, value_name = "ir|ir-after=PASS|clif|asm")]
    emit: Emit,
    #[command(flatten)]
    flags: CompileFlags,
}

/// Runs `netc compile`.
pub fn compile(args: &CompileArgs) -> Result<(), Failure> {
    let options = args.flags.options()?;
    let loaded = load(&args.model)?;
    let g = loaded.graph;
    let text = match &args.emit {
        Emit::Ir => print_graph(&g),
        Emit::IrAfter(pass) => {
            print_graph(&optimize(g, &options, Some(pass)).map_err(Failure::Error)?)
        }
        Emit::Clif | Emit::Asm => {
            let symbols = input_sizes(&g, &loaded.sizes)?;
            let g = optimize(g, &options, None).map_err(Failure::Error)?;
            let listing = if args.emit == Emit::Clif {
                Listing::Clif
            } else {
                Listing::Asm
            };
            emit_kernels(&g, &symbols, options, listing)
                .map_err(|e| Failure::Error(format!("cannot compile `{}`: {e}", g.name)))?
        }
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_values_parse() {
        assert_eq!(parse_emit("ir"), Ok(Emit::Ir));
        assert_eq!(parse_emit("asm"), Ok(Emit::Asm));
        assert_eq!(
            parse_emit("ir-after=fuse"),
            Ok(Emit::IrAfter("fuse".into()))
        );
        assert!(parse_emit("ir-after=").is_err());
        assert!(parse_emit("llvm").is_err());
    }
}
