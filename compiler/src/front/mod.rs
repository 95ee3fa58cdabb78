//! The front end: the pest grammar, the AST and the parser.

pub mod ast;
mod parse;

pub use parse::parse_file;
