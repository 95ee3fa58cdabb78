//! Turns `.net` text into an AST with pest, and pest's errors into
//! diagnostics. After a syntax error the parser resynchronises at the next
//! top-level item (`import`, `block`, `model`, `train` at the start of a line)
//! so that every item's first syntax error is reported in one run.

use super::ast::*;
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use netc_runtime::DType;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "front/grammar.pest"]
struct NetParser;

/// Parses one file. On syntax errors returns every item's first error.
pub fn parse_file(file: FileId, text: &str) -> Result<File, Vec<Diagnostic>> {
    match parse_chunk(file, text, 0) {
        Ok(items) => Ok(File { items }),
        Err(first) => {
            let mut errors = Vec::new();
            for (start, end) in item_chunks(text) {
                if let Err(d) = parse_chunk(file, &text[start..end], start) {
                    errors.push(d);
                }
            }
            if errors.is_empty() {
                errors.push(first);
            }
            Err(errors)
        }
    }
}

fn parse_chunk(file: FileId, text: &str, offset: usize) -> Result<Vec<Item>, Diagnostic> {
    let mut pairs =
        NetParser::parse(Rule::file, text).map_err(|e| syntax_error(file, text, offset, e))?;
    let b = Builder { file, offset };
    let root = pairs.next().expect("the file rule always yields one pair");
    Ok(root
        .into_inner()
        .filter(|p| p.as_rule() != Rule::EOI)
        .map(|p| b.item(p))
        .collect())
}

/// Byte ranges of the top-level items: each starts at a line that begins with
/// an item keyword.
fn item_chunks(text: &str) -> Vec<(usize, usize)> {
    let mut starts = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let first = line
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("");
        if matches!(first, "import" | "block" | "model" | "train") {
            starts.push(at);
        }
        at += line.len();
    }
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    let mut chunks = Vec::new();
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(text.len());
        chunks.push((s, e));
    }
    chunks
}

fn rule_name(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::item | Rule::import | Rule::block_def | Rule::model_def | Rule::train_def => {
            "`import`, `block`, `model` or `train`"
        }
        Rule::ident | Rule::callee | Rule::targets => "a name",
        Rule::expr
        | Rule::or_expr
        | Rule::and_expr
        | Rule::not_expr
        | Rule::cmp_expr
        | Rule::range_expr
        | Rule::add_expr
        | Rule::mul_expr
        | Rule::unary
        | Rule::power
        | Rule::postfix
        | Rule::dim => "an expression",
        Rule::stage => "a call after `|>`",
        Rule::tensor_type => "a tensor type such as `f32[N, 3]`",
        Rule::dtype => "an element type (`f32`, `f64`, `i32`, `i64`, `u8`, `bool`)",
        Rule::body => "`{`",
        Rule::params | Rule::param => "a parameter",
        Rule::string | Rule::string_body => "a string",
        Rule::label | Rule::label_seg | Rule::label_text => "a label",
        Rule::arg | Rule::call_args => "an argument",
        Rule::input_stmt
        | Rule::output_stmt
        | Rule::label_stmt
        | Rule::return_stmt
        | Rule::for_stmt
        | Rule::if_stmt
        | Rule::tensor_decl
        | Rule::assign_stmt => "a statement",
        Rule::pipe_op => "`|>`",
        Rule::cmp_op | Rule::add_op | Rule::mul_op | Rule::pow_op | Rule::range_op => "an operator",
        Rule::index => "`[`",
        Rule::field => "`.`",
        _ => return None,
    })
}

fn syntax_error(
    file: FileId,
    text: &str,
    offset: usize,
    e: pest::error::Error<Rule>,
) -> Diagnostic {
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    }
    .min(text.len());
    // Point at the next token, not at the whitespace before it.
    let pos = pos + (text[pos..].len() - text[pos..].trim_start_matches([' ', '\t']).len());
    let found = found_token(text, pos);
    let mut expected: Vec<&str> = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            positives.iter().filter_map(rule_name).collect()
        }
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    expected.sort();
    expected.dedup();
    let ctx = SyntaxCtx {
        file,
        text,
        offset,
        pos,
        found: &found,
        expected: &expected,
    };
    if let Some(d) = ctx.specific() {
        return d;
    }
    let what = if expected.is_empty() {
        "unexpected input".to_string()
    } else {
        format!("expected {}", join_or(&expected))
    };
    let label = if found.is_empty() {
        "the text ends here".to_string()
    } else {
        format!("found `{found}`")
    };
    Diagnostic::new(
        ctx.span_at(pos, found.len()),
        format!("syntax error: {what}"),
    )
    .label(label)
    .hint(syntax_hint(text, pos, &found))
}

/// What a syntax error knows about its surroundings, to explain the usual
/// mistakes precisely (unclosed brackets, `=` for `==`, a dangling `|>`, ...).
struct SyntaxCtx<'t> {
    file: FileId,
    text: &'t str,
    offset: usize,
    pos: usize,
    found: &'t str,
    expected: &'t [&'t str],
}

const KEYWORDS: &[&str] = &[
    "block", "model", "train", "import", "input", "output", "label", "return", "for", "in", "if",
    "else", "param", "buffer", "shared", "and", "or", "not", "true", "false", "none", "sparse",
];

fn closer_of(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

impl SyntaxCtx<'_> {
    fn span_at(&self, at: usize, len: usize) -> Span {
        let end = (at + len.max(1)).min(self.text.len()).max(at);
        Span::new(self.file, self.offset + at, self.offset + end)
    }

    fn line_of(&self, at: usize) -> usize {
        self.text[..at].matches('\n').count() + 1
    }

    /// Brackets still open at `pos` (outside strings and comments), with
    /// their offsets.
    fn open_brackets(&self) -> Vec<(char, usize)> {
        let mut stack = Vec::new();
        let (mut in_str, mut in_comment, mut escaped) = (false, false, false);
        for (i, c) in self.text[..self.pos].char_indices() {
            if in_comment {
                in_comment = c != '\n';
            } else if in_str {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' || c == '\n' {
                    in_str = false;
                }
            } else {
                match c {
                    '#' => in_comment = true,
                    '"' => in_str = true,
                    '(' | '[' | '{' => stack.push((c, i)),
                    ')' | ']' | '}' if stack.last().is_some_and(|&(o, _)| closer_of(o) == c) => {
                        stack.pop();
                    }
                    _ => {}
                }
            }
        }
        stack
    }

    /// The word (letters, digits, `_`, `.`) that ends right before `at`.
    fn word_before(&self, at: usize) -> &str {
        let before = self.text[..at].trim_end();
        let start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphanumeric() || *c == '_' || *c == '.')
            .last()
            .map_or(before.len(), |(i, _)| i);
        &before[start..]
    }

    fn err(
        &self,
        at: usize,
        len: usize,
        msg: impl Into<String>,
        label: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::new(
            self.span_at(at, len),
            format!("syntax error: {}", msg.into()),
        )
        .label(label)
        .hint(hint)
    }

    fn specific(&self) -> Option<Diagnostic> {
        let (text, pos, found) = (self.text, self.pos, self.found);
        let before = text[..pos].trim_end();
        let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
        let first_on_line = text[line_start..pos].trim().is_empty();
        let prev_line_end = text[..line_start].trim_end();
        let stack = self.open_brackets();
        let closing = matches!(found, ")" | "]" | "}");

        // A closing bracket that does not match the innermost open one.
        if closing {
            let c = found.chars().next().unwrap_or(')');
            match stack.last() {
                Some(&(o, at)) if closer_of(o) != c => {
                    if stack.iter().any(|&(o2, _)| closer_of(o2) == c) {
                        return Some(
                            self.err(
                                pos,
                                1,
                                format!("`{o}` is not closed"),
                                format!("expected `{}` before this `{c}`", closer_of(o)),
                                format!("add the missing `{}`", closer_of(o)),
                            )
                            .related(self.span_at(at, 1), format!("this `{o}` is still open")),
                        );
                    }
                    return Some(self.err(
                        pos,
                        1,
                        format!("unmatched `{c}`"),
                        "this closes nothing",
                        format!(
                            "remove it, or add the `{}` it should close",
                            match c {
                                ')' => '(',
                                ']' => '[',
                                _ => '{',
                            }
                        ),
                    ));
                }
                None => {
                    return Some(self.err(
                        pos,
                        1,
                        format!("unmatched `{c}`"),
                        "this closes nothing",
                        "remove it, or add the bracket it should close",
                    ));
                }
                _ => {}
            }
        }
        // The text ends (or the next item starts) inside brackets.
        if found.is_empty() {
            if let Some(&(o, at)) = stack.last() {
                let mut d = self.err(
                    at,
                    1,
                    format!("`{o}` is never closed"),
                    format!("this `{o}` has no matching `{}`", closer_of(o)),
                    format!("add the missing `{}`", closer_of(o)),
                );
                if pos > 0 {
                    d = d.related(
                        self.span_at(pos.saturating_sub(1), 0),
                        format!("expected `{}` by here", closer_of(o)),
                    );
                }
                return Some(d);
            }
        }
        // A new line starts while a bracket of an earlier line is open.
        if let Some(&(o, at)) = stack.last() {
            let continues =
                prev_line_end.ends_with([',', '(', '[', '{']) || prev_line_end.ends_with("|>");
            if o != '{'
                && first_on_line
                && !closing
                && !continues
                && self.line_of(at) < self.line_of(pos)
            {
                let c = closer_of(o);
                return Some(
                    self.err(
                        pos,
                        found.len(),
                        format!("`{o}` is not closed"),
                        format!("expected `{c}` before this"),
                        format!("add the missing `{c}`, probably at the end of the previous line"),
                    )
                    .related(self.span_at(at, 1), format!("this `{o}` is still open")),
                );
            }
        }
        // An unterminated string.
        if found.starts_with('"')
            && !text[pos + 1..]
                .split('\n')
                .next()
                .unwrap_or("")
                .contains('"')
        {
            return Some(self.err(
                pos,
                1,
                "unterminated string",
                "this string is not closed",
                "close it with `\"` on the same line; strings cannot span lines",
            ));
        }
        // `float32[...]` for a tensor type.
        if self
            .expected
            .iter()
            .any(|e| e.starts_with("a tensor type") || e.starts_with("an element type"))
            && found.starts_with(|c: char| c.is_alphabetic())
        {
            return Some(self.err(
                pos,
                found.len(),
                format!("`{found}` is not an element type"),
                "expected a tensor type",
                "element types are f32, f64, i32, i64, u8 and bool, e.g. `x: f32[N, 3, 224, 224]`",
            ));
        }
        // A keyword where a name belongs.
        if KEYWORDS.contains(&found) && self.expected.contains(&"a name") {
            return Some(self.err(
                pos,
                found.len(),
                format!("`{found}` is a keyword and cannot be a name"),
                "keyword used as a name",
                format!("choose another name, e.g. `{found}_`"),
            ));
        }
        let prev_word = self.word_before(pos);
        if found == "=" && matches!(prev_word, "output" | "input" | "label" | "param" | "buffer") {
            return Some(self.err(pos, 1, format!("`{prev_word}` needs a name"), format!("expected a name after `{prev_word}`"), format!("`{prev_word}` is a keyword: write e.g. `{prev_word} logits = ...`, or pick another variable name")));
        }
        // `=` where a comparison was meant.
        if found == "="
            && !before.ends_with(['<', '>', '!', '='])
            && (text[line_start..].trim_start().starts_with("if ")
                || self.expected.contains(&"an operator"))
        {
            return Some(self.err(pos, 1, "`=` inside an expression", "assignment is not a comparison", "to compare, write `==`; `=` only assigns (`name = expr`) or passes a keyword argument (`k = 3`)"));
        }
        // `|>` followed by nothing (or by the next statement).
        if let Some(p) = text[..pos].rfind("|>") {
            let between = text[p + 2..pos].trim();
            if between.is_empty() || KEYWORDS.contains(&between) {
                return Some(self.err(p, 2, "`|>` is not followed by a call", "nothing to pipe into", "after `|>` comes a call such as `relu` or `conv1: conv2d(64, k = 3)`; remove the `|>` if the chain is complete"));
            }
        }
        // A label with no call after it.
        if before.ends_with(':') && !self.expected.iter().any(|e| e.starts_with("a tensor type")) {
            let label = self.word_before(before.len() - 1);
            return Some(self.err(pos, found.len(), format!("the label `{label}:` is not followed by a call"), "expected a call here", format!("a label names the layer made by the call after it: `{label}: conv2d(16, k = 3)`")));
        }
        if before.ends_with('-') && found.starts_with('>') {
            return Some(self.err(
                before.len() - 1,
                2,
                "`->` is not an operator",
                "not the pipe operator",
                "the pipe operator is `|>`: `x |> conv1: conv2d(16, k = 3)`",
            ));
        }
        if found == ";" {
            return Some(self.err(
                pos,
                1,
                "unexpected `;`",
                "not needed",
                "statements end at the end of a line; remove the `;`",
            ));
        }
        // A malformed number such as `0.5.1` or `3x3`.
        for (word, at) in [(found, pos), (prev_word, before.len() - prev_word.len())] {
            if word.starts_with(|c: char| c.is_ascii_digit())
                && word.parse::<f64>().is_err()
                && (word.matches('.').count() > 1
                    || word.trim_end_matches(|c: char| c.is_alphabetic()).len() < word.len())
            {
                return Some(self.err(
                    at,
                    word.len(),
                    format!("`{word}` is not a number"),
                    "malformed number",
                    "numbers look like `3`, `0.5` or `1e-4`",
                ));
            }
        }
        // Two arguments or list elements without a comma between them.
        if let Some(&(o, _)) = stack.last() {
            let ends_value = before.ends_with(|c: char| {
                c.is_alphanumeric() || c == '_' || c == ')' || c == ']' || c == '"'
            });
            let starts_value = found.starts_with(|c: char| {
                c.is_alphanumeric() || c == '_' || c == '"' || c == '(' || c == '['
            });
            if o != '{' && ends_value && starts_value && !KEYWORDS.contains(&found) {
                let what = if o == '(' {
                    "arguments"
                } else {
                    "list elements"
                };
                return Some(self.err(
                    pos,
                    found.len(),
                    format!("missing `,` between {what}"),
                    "expected `,` before this",
                    format!("separate {what} with commas, e.g. `conv2d(16, k = 3, pad = 1)`"),
                ));
            }
        }
        if stack.is_empty() && self.expected.is_empty() {
            return Some(self.err(
                pos,
                found.len(),
                "expected `import`, `block`, `model` or `train`",
                format!("found `{found}`"),
                syntax_hint(text, pos, found),
            ));
        }
        None
    }
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// The token at `pos`: an identifier/number, or one character.
fn found_token(text: &str, pos: usize) -> String {
    let rest = &text[pos.min(text.len())..];
    let word: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    if !word.is_empty() {
        return word;
    }
    rest.chars().next().map(String::from).unwrap_or_default()
}

fn syntax_hint(text: &str, pos: usize, found: &str) -> String {
    let before = text[..pos.min(text.len())].trim_end();
    if found.is_empty() {
        return "the file ended early: look for a missing `}`, `)` or `]`".into();
    }
    if found == "=" && before.ends_with(['<', '>', '!']) {
        return "comparison operators are `==`, `!=`, `<=`, `>=`".into();
    }
    if before.ends_with("|>") {
        return "after `|>` comes a call such as `relu` or `conv1: conv2d(64, k = 3)`".into();
    }
    if found == ":" {
        return "a label goes right before a call (`conv1: conv2d(64, k = 3)`); types follow `input` or a block parameter".into();
    }
    if found == "}" || found == ")" || found == "]" {
        return format!("the expression before `{found}` is incomplete");
    }
    if matches!(found, "def" | "let" | "var" | "fn" | "function" | "class") {
        return "definitions start with `block`, `model` or `train`; variables need no keyword: `x = ...`".into();
    }
    "statements are `name = expr`, `input`, `output`, `return`, `for`, `if`, `param` or `buffer`; check the line for a missing operator, comma or bracket".into()
}

/// The length of `text` without trailing whitespace and `#` comments.
fn trimmed_len(text: &str) -> usize {
    let mut t = text.trim_end();
    loop {
        let line_start = t.rfind('\n').map_or(0, |i| i + 1);
        let line = &t[line_start..];
        // A comment on the last line (only when the line has no string, so
        // that `"#"` is never mistaken for one).
        match line.find('#') {
            Some(h) if !line.contains('"') => {
                let cut = t[..line_start + h].trim_end();
                if cut.len() == t.len() {
                    return t.len();
                }
                t = cut;
            }
            _ => return t.len(),
        }
    }
}

/// Builds AST nodes from pest pairs, shifting spans by `offset`.
struct Builder {
    file: FileId,
    offset: usize,
}

impl Builder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        // A rule ending in an optional part (`relu` without `(...)`) keeps
        // the whitespace and comments pest skipped while trying it: cut them
        // so that carets stay on the code.
        let len = trimmed_len(s.as_str());
        Span::new(
            self.file,
            self.offset + s.start(),
            self.offset + s.start() + len,
        )
    }

    fn item(&self, p: Pair<Rule>) -> Item {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::import => {
                let s = p.into_inner().next().expect("import has a string");
                Item::Import(Import {
                    path: unescape(s.into_inner().next().map_or("", |b| b.as_str())),
                    span,
                })
            }
            Rule::block_def => Item::Block(self.def(p, span)),
            Rule::model_def => Item::Model(self.def(p, span)),
            Rule::train_def => Item::Train(self.def(p, span)),
            r => unreachable!("unexpected top-level rule {r:?}"),
        }
    }

    fn def(&self, p: Pair<Rule>, span: Span) -> Def {
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().expect("definition has a name"));
        let mut params = Vec::new();
        let mut body = Vec::new();
        for part in inner {
            match part.as_rule() {
                Rule::params => params = part.into_inner().map(|q| self.param(q)).collect(),
                Rule::body => body = self.body(part),
                r => unreachable!("unexpected rule in definition {r:?}"),
            }
        }
        Def {
            name,
            params,
            body,
            span,
        }
    }

    fn param(&self, p: Pair<Rule>) -> Param {
        let mut name = None;
        let mut ty = None;
        let mut default = None;
        for part in p.into_inner() {
            match part.as_rule() {
                Rule::ident if name.is_none() => name = Some(self.ident(part)),
                Rule::ident => ty = Some(self.ident(part)),
                Rule::expr => default = Some(self.expr(part)),
                r => unreachable!("unexpected rule in parameter {r:?}"),
            }
        }
        Param {
            name: name.expect("parameter has a name"),
            ty,
            default,
        }
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn body(&self, p: Pair<Rule>) -> Vec<Stmt> {
        p.into_inner().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, p: Pair<Rule>) -> Stmt {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut inner = p.into_inner();
        let kind = match rule {
            Rule::input_stmt | Rule::label_stmt => {
                let name = self.ident(inner.next().expect("name"));
                let ty = self.tensor_type(inner.next().expect("type"));
                if rule == Rule::input_stmt {
                    StmtKind::Input { name, ty }
                } else {
                    StmtKind::Label { name, ty }
                }
            }
            Rule::output_stmt => StmtKind::Output {
                name: self.ident(inner.next().expect("name")),
                value: inner.next().map(|e| self.expr(e)),
            },
            Rule::return_stmt => StmtKind::Return(inner.map(|e| self.expr(e)).collect()),
            Rule::for_stmt => StmtKind::For {
                var: self.ident(inner.next().expect("loop variable")),
                iter: self.expr(inner.next().expect("iterable")),
                body: self.body(inner.next().expect("body")),
            },
            Rule::if_stmt => {
                let cond = self.expr(inner.next().expect("condition"));
                let then = self.body(inner.next().expect("body"));
                let otherwise = match inner.next() {
                    None => Vec::new(),
                    Some(e) if e.as_rule() == Rule::if_stmt => vec![self.stmt(e)],
                    Some(e) => self.body(e),
                };
                StmtKind::If {
                    cond,
                    then,
                    otherwise,
                }
            }
            Rule::tensor_decl => {
                let buffer = inner.next().expect("kind").as_str() == "buffer";
                let label = self.label(inner.next().expect("label"));
                let ty = self.tensor_type(inner.next().expect("type"));
                StmtKind::Decl {
                    buffer,
                    label,
                    ty,
                    init: inner.next().map(|e| self.expr(e)),
                }
            }
            Rule::assign_stmt => {
                let targets = inner
                    .next()
                    .expect("targets")
                    .into_inner()
                    .map(|t| self.ident(t))
                    .collect();
                StmtKind::Assign {
                    targets,
                    value: self.expr(inner.next().expect("value")),
                }
            }
            r => unreachable!("unexpected statement rule {r:?}"),
        };
        Stmt { kind, span }
    }

    fn tensor_type(&self, p: Pair<Rule>) -> TensorTypeExpr {
        let span = self.span(&p);
        let mut sparse = false;
        let mut dtype = DType::F32;
        let mut dims = Vec::new();
        for part in p.into_inner() {
            match part.as_rule() {
                Rule::sparse_kw => sparse = true,
                Rule::dtype => {
                    dtype = DType::from_name(part.as_str()).expect("grammar lists only dtypes")
                }
                Rule::dim => {
                    let mut d = part.into_inner();
                    dims.push(DimExpr {
                        size: self.expr(d.next().expect("dim size")),
                        bound: d.next().map(|b| self.expr(b)),
                    });
                }
                r => unreachable!("unexpected rule in tensor type {r:?}"),
            }
        }
        TensorTypeExpr {
            sparse,
            dtype,
            dims,
            span,
        }
    }

    fn label(&self, p: Pair<Rule>) -> Label {
        let span = self.span(&p);
        let segments = p
            .into_inner()
            .map(|seg| {
                seg.into_inner()
                    .map(|part| match part.as_rule() {
                        Rule::label_text => LabelPart::Text(part.as_str().to_string()),
                        Rule::label_interp => LabelPart::Interp(
                            self.expr(part.into_inner().next().expect("interpolated expr")),
                        ),
                        r => unreachable!("unexpected rule in label {r:?}"),
                    })
                    .collect()
            })
            .collect();
        Label { segments, span }
    }

    fn expr(&self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr => {
                let mut inner = p.into_inner();
                let mut acc = self.expr(inner.next().expect("pipe head"));
                while let Some(op) = inner.next() {
                    debug_assert_eq!(op.as_rule(), Rule::pipe_op);
                    let stage = inner.next().expect("pipe stage");
                    let stage_span = self.span(&stage);
                    let mut call = self.call(stage);
                    // A stage's span is the stage alone (`conv2d(64, k = 3)`),
                    // so errors and value origins point at the op, not at
                    // the start of the chain.
                    call.piped = Some(Box::new(acc));
                    acc = Expr {
                        kind: ExprKind::Call(call),
                        span: stage_span,
                    };
                }
                acc
            }
            Rule::or_expr | Rule::and_expr | Rule::cmp_expr | Rule::add_expr | Rule::mul_expr => {
                self.left_assoc(p)
            }
            Rule::range_expr => {
                let mut inner = p.into_inner();
                let lo = self.expr(inner.next().expect("operand"));
                match inner.next() {
                    None => lo,
                    Some(_op) => {
                        let hi = self.expr(inner.next().expect("range end"));
                        Expr {
                            kind: ExprKind::Range {
                                lo: Box::new(lo),
                                hi: Box::new(hi),
                            },
                            span,
                        }
                    }
                }
            }
            Rule::not_expr | Rule::unary => {
                let parts: Vec<_> = p.into_inner().collect();
                let (ops, operand) = parts.split_at(parts.len() - 1);
                let mut acc = self.expr(operand[0].clone());
                for op in ops.iter().rev() {
                    let s = self.span(op).to(acc.span);
                    acc = Expr {
                        kind: ExprKind::Unary {
                            negate: op.as_rule() == Rule::neg_op,
                            operand: Box::new(acc),
                        },
                        span: s,
                    };
                }
                acc
            }
            Rule::power => {
                let mut inner = p.into_inner();
                let base = self.expr(inner.next().expect("base"));
                match inner.next() {
                    None => base,
                    Some(_op) => Expr {
                        kind: ExprKind::Binary {
                            op: BinOp::Pow,
                            lhs: Box::new(base),
                            rhs: Box::new(self.expr(inner.next().expect("exponent"))),
                        },
                        span,
                    },
                }
            }
            Rule::postfix => {
                let mut inner = p.into_inner();
                let mut acc = self.expr(inner.next().expect("primary"));
                for post in inner {
                    let s = acc.span.to(self.span(&post));
                    let kind = match post.as_rule() {
                        Rule::call_args => match acc.kind {
                            ExprKind::Name(name) => ExprKind::Call(Call {
                                callee: Ident {
                                    name,
                                    span: acc.span,
                                },
                                args: self.args(post),
                                label: None,
                                shared: false,
                                piped: None,
                            }),
                            _ => ExprKind::Call(Call {
                                callee: Ident {
                                    name: String::new(),
                                    span: acc.span,
                                },
                                args: self.args(post),
                                label: None,
                                shared: false,
                                piped: None,
                            }),
                        },
                        Rule::index => ExprKind::Index {
                            base: Box::new(acc),
                            index: Box::new(self.expr(post.into_inner().next().expect("index"))),
                        },
                        Rule::field => ExprKind::Field {
                            base: Box::new(acc),
                            name: self.ident(post.into_inner().next().expect("field name")),
                        },
                        r => unreachable!("unexpected postfix rule {r:?}"),
                    };
                    acc = Expr { kind, span: s };
                }
                acc
            }
            Rule::labeled_call => Expr {
                kind: ExprKind::Call(self.call(p)),
                span,
            },
            Rule::int => Expr {
                kind: match p.as_str().parse() {
                    Ok(v) => ExprKind::Int(v),
                    // Too large for i64: an infinite float, which the
                    // elaborator reports as out of range.
                    Err(_) => ExprKind::Float(f64::INFINITY),
                },
                span,
            },
            Rule::float => Expr {
                kind: ExprKind::Float(p.as_str().parse().unwrap_or(f64::NAN)),
                span,
            },
            Rule::string => Expr {
                kind: ExprKind::Str(unescape(p.into_inner().next().map_or("", |b| b.as_str()))),
                span,
            },
            Rule::bool_lit => Expr {
                kind: ExprKind::Bool(p.as_str() == "true"),
                span,
            },
            Rule::none_lit => Expr {
                kind: ExprKind::None,
                span,
            },
            Rule::ident => Expr {
                kind: ExprKind::Name(p.as_str().to_string()),
                span,
            },
            Rule::paren => self.expr(p.into_inner().next().expect("parenthesised expr")),
            Rule::list => Expr {
                kind: ExprKind::List(p.into_inner().map(|e| self.expr(e)).collect()),
                span,
            },
            Rule::list_comp => {
                let mut inner = p.into_inner();
                Expr {
                    kind: ExprKind::ListComp {
                        elem: Box::new(self.expr(inner.next().expect("element"))),
                        var: self.ident(inner.next().expect("variable")),
                        iter: Box::new(self.expr(inner.next().expect("iterable"))),
                    },
                    span,
                }
            }
            r => unreachable!("unexpected expression rule {r:?}"),
        }
    }

    fn left_assoc(&self, p: Pair<Rule>) -> Expr {
        let mut inner = p.into_inner();
        let mut acc = self.expr(inner.next().expect("operand"));
        while let Some(op) = inner.next() {
            let rhs = self.expr(inner.next().expect("right operand"));
            let op = match op.as_str() {
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                "//" => BinOp::FloorDiv,
                "%" => BinOp::Rem,
                "==" => BinOp::Eq,
                "!=" => BinOp::Ne,
                "<" => BinOp::Lt,
                "<=" => BinOp::Le,
                ">" => BinOp::Gt,
                ">=" => BinOp::Ge,
                s if s.starts_with("and") => BinOp::And,
                s if s.starts_with("or") => BinOp::Or,
                s => unreachable!("unexpected operator {s}"),
            };
            let span = acc.span.to(rhs.span);
            acc = Expr {
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(acc),
                    rhs: Box::new(rhs),
                },
                span,
            };
        }
        acc
    }

    fn call(&self, p: Pair<Rule>) -> Call {
        let mut shared = false;
        let mut label = None;
        let mut callee = None;
        let mut args = Vec::new();
        for part in p.into_inner() {
            match part.as_rule() {
                Rule::shared_kw => shared = true,
                Rule::label => label = Some(self.label(part)),
                Rule::callee => {
                    callee = Some(self.ident(part.into_inner().next().expect("callee name")))
                }
                Rule::call_args => args = self.args(part),
                r => unreachable!("unexpected rule in call {r:?}"),
            }
        }
        Call {
            callee: callee.expect("call has a callee"),
            args,
            label,
            shared,
            piped: None,
        }
    }

    fn args(&self, p: Pair<Rule>) -> Vec<Arg> {
        p.into_inner()
            .map(|a| {
                let mut inner = a.into_inner();
                let first = inner.next().expect("argument");
                match inner.next() {
                    Some(value) => Arg {
                        name: Some(self.ident(first)),
                        value: self.expr(value),
                    },
                    None => Arg {
                        name: None,
                        value: self.expr(first),
                    },
                }
            })
            .collect()
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}
