//! Loading a program: the root file and, transitively, every file it
//! imports, with import cycles and duplicate definitions reported. Blocks are
//! global across the files of one program; models and train sections come
//! from the root file and its imports alike.

use crate::diag::Diagnostic;
use crate::front::{ast, parse_file};
use crate::source::{SourceMap, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Every definition of a loaded program.
#[derive(Debug, Default)]
pub struct Program {
    /// The source texts (for diagnostics).
    pub sources: SourceMap,
    /// Blocks by name.
    pub blocks: HashMap<String, ast::Def>,
    /// Models in the order they were found (root file first... then imports).
    pub models: Vec<ast::Def>,
    /// Train sections.
    pub trains: Vec<ast::Def>,
}

impl Program {
    /// Loads `path` and its imports. Returns the program, plus every error
    /// found while loading (an empty list means success).
    pub fn load(path: &Path) -> (Program, Vec<Diagnostic>) {
        let mut loader = Loader::default();
        match std::fs::read_to_string(path) {
            Ok(text) => loader.load_text(path.to_path_buf(), text, &mut Vec::new()),
            Err(e) => loader
                .io_errors
                .push(format!("cannot read {}: {e}", path.display())),
        }
        loader.finish()
    }

    /// Loads a program from text (imports are resolved relative to `path`).
    pub fn from_text(path: &Path, text: &str) -> (Program, Vec<Diagnostic>) {
        let mut loader = Loader::default();
        loader.load_text(path.to_path_buf(), text.to_string(), &mut Vec::new());
        loader.finish()
    }

    /// The model called `name`, or the only model when `name` is `None`.
    pub fn model(&self, name: Option<&str>) -> Result<&ast::Def, String> {
        let names: Vec<&str> = self.models.iter().map(|m| m.name.name.as_str()).collect();
        match name {
            Some(n) => self
                .models
                .iter()
                .find(|m| m.name.name == n)
                .ok_or_else(|| {
                    format!("no model `{n}` in this file; models: {}", names.join(", "))
                }),
            None => match self.models.as_slice() {
                [only] => Ok(only),
                [] => Err("the file defines no model".into()),
                _ => Err(format!(
                    "the file defines several models ({}); choose one with --model",
                    names.join(", ")
                )),
            },
        }
    }

    /// The train section for model `name`, if any.
    pub fn train_for(&self, name: &str) -> Option<&ast::Def> {
        self.trains.iter().find(|t| t.name.name == name)
    }
}

#[derive(Default)]
struct Loader {
    program: Program,
    diags: Vec<Diagnostic>,
    io_errors: Vec<String>,
    /// Definition sites by name, to report duplicates.
    defined: HashMap<String, Span>,
}

impl Loader {
    fn finish(self) -> (Program, Vec<Diagnostic>) {
        let mut diags = self.diags;
        if !self.io_errors.is_empty() {
            // An unreadable root file has no span to point at: report it as a
            // diagnostic on an empty pseudo-file.
            let mut program = self.program;
            for msg in self.io_errors {
                let id = program.sources.add("<command line>", "");
                diags.push(Diagnostic::new(Span::new(id, 0, 0), msg).label("while loading"));
            }
            return (program, diags);
        }
        (self.program, diags)
    }

    /// `stack` holds the files being loaded, for cycle detection.
    fn load_text(&mut self, path: PathBuf, text: String, stack: &mut Vec<(PathBuf, Span)>) {
        let file = self.program.sources.add(path.clone(), text);
        let parsed = parse_file(file, &self.program.sources.file(file).text);
        let parsed = match parsed {
            Ok(f) => f,
            Err(errors) => {
                self.diags.extend(errors);
                return;
            }
        };
        for item in parsed.items {
            match item {
                ast::Item::Import(imp) => self.import(&path, &imp, stack),
                ast::Item::Block(def) => {
                    if self.check_unique("block", &def) {
                        self.program.blocks.insert(def.name.name.clone(), def);
                    }
                }
                ast::Item::Model(def) => {
                    if self.check_unique("model", &def) {
                        self.program.models.push(def);
                    }
                }
                ast::Item::Train(def) => {
                    let key = format!("train {}", def.name.name);
                    if let Some(first) = self.defined.get(&key) {
                        self.diags.push(
                            Diagnostic::new(
                                def.name.span,
                                format!("second train section for `{}`", def.name.name),
                            )
                            .label("defined again here")
                            .related(*first, "first defined here")
                            .hint("merge the two train sections into one"),
                        );
                    } else {
                        self.defined.insert(key, def.name.span);
                        self.program.trains.push(def);
                    }
                }
            }
        }
    }

    fn check_unique(&mut self, what: &str, def: &ast::Def) -> bool {
        let name = &def.name.name;
        if let Some(first) = self.defined.get(name) {
            self.diags.push(
                Diagnostic::new(def.name.span, format!("`{name}` is defined twice"))
                    .label(format!("this {what} reuses the name"))
                    .related(*first, "first defined here")
                    .hint(
                        "blocks and models share one namespace across imported files; rename one",
                    ),
            );
            return false;
        }
        if crate::ops::lookup(name).is_some() {
            self.diags.push(
                Diagnostic::new(
                    def.name.span,
                    format!("`{name}` is the name of a built-in op"),
                )
                .label(format!("this {what} would hide it"))
                .hint("choose another name"),
            );
            return false;
        }
        self.defined.insert(name.clone(), def.name.span);
        true
    }

    fn import(&mut self, from: &Path, imp: &ast::Import, stack: &mut Vec<(PathBuf, Span)>) {
        let target = from.parent().unwrap_or(Path::new(".")).join(&imp.path);
        let key = normalise(&target);
        if let Some(pos) = stack.iter().position(|(p, _)| normalise(p) == key) {
            let mut cycle: Vec<String> = stack[pos..]
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            cycle.push(from.display().to_string());
            cycle.push(target.display().to_string());
            cycle.dedup();
            self.diags.push(
                Diagnostic::new(imp.span, "import cycle")
                    .label(format!("cycle: {}", cycle.join(" -> ")))
                    .hint("move the shared blocks into a file that both can import"),
            );
            return;
        }
        if normalise(from) == key {
            self.diags.push(
                Diagnostic::new(imp.span, "a file cannot import itself").label("import cycle"),
            );
            return;
        }
        if self.program.sources.find(&target).is_some() {
            return; // already loaded through another import
        }
        match std::fs::read_to_string(&target) {
            Ok(text) => {
                stack.push((from.to_path_buf(), imp.span));
                self.load_text(target, text, stack);
                stack.pop();
            }
            Err(e) => self.diags.push(
                Diagnostic::new(imp.span, format!("cannot import `{}`: {e}", imp.path))
                    .label(format!("looked for {}", target.display()))
                    .hint("import paths are relative to the importing file"),
            ),
        }
    }
}

fn normalise(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
