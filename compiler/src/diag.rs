//! Diagnostics: an error with a primary span, a label under the caret, a hint,
//! and secondary spans (e.g. where each of two mismatched shapes came from),
//! rendered with miette as `file:line:col`, the source line and a caret.

use crate::source::{SourceMap, Span};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};

/// One error found in a `.net` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// The headline.
    pub message: String,
    /// Where the error is.
    pub span: Span,
    /// Text shown under the caret.
    pub label: String,
    /// What the user can do about it.
    pub hint: Option<String>,
    /// Further places that explain the error, each with its own label.
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    /// An error at `span` with `message`, labelled `here`.
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span,
            label: "here".into(),
            hint: None,
            related: Vec::new(),
        }
    }

    /// Replaces the caret label.
    pub fn label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a secondary span with its label.
    pub fn related(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.related.push((span, label.into()));
        self
    }

    /// Renders the diagnostic as text without colours (stable, for snapshots
    /// and for terminals alike).
    pub fn render(&self, sources: &SourceMap) -> String {
        let file = sources.file(self.span.file);
        let mut labels = vec![LabeledSpan::new_primary_with_span(
            Some(self.label.clone()),
            to_range(self.span),
        )];
        let mut elsewhere = Vec::new();
        for (span, text) in &self.related {
            if span.file == self.span.file {
                labels.push(LabeledSpan::new_with_span(
                    Some(text.clone()),
                    to_range(*span),
                ));
            } else {
                elsewhere.push(format!("{}: {}", sources.location(*span), text));
            }
        }
        let mut help = self.hint.clone().unwrap_or_default();
        for line in elsewhere {
            if !help.is_empty() {
                help.push('\n');
            }
            help.push_str(&line);
        }
        let mut diag = MietteDiagnostic::new(self.message.clone()).with_labels(labels);
        if !help.is_empty() {
            diag = diag.with_help(help);
        }
        let source = NamedSource::new(file.path.display().to_string(), file.text.clone());
        let report = miette::Report::new(diag).with_source_code(source);
        let mut out = String::new();
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
        if handler.render_report(&mut out, report.as_ref()).is_err() {
            out = format!("{}: {}", sources.location(self.span), self.message);
        }
        out
    }
}

fn to_range(span: Span) -> (usize, usize) {
    (span.start as usize, (span.end - span.start) as usize)
}

/// Renders a list of diagnostics, separated by blank lines, followed by a
/// count line.
pub fn render_all(diags: &[Diagnostic], sources: &SourceMap) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.render(sources));
        out.push('\n');
    }
    let n = diags.len();
    out.push_str(&format!(
        "error: {n} error{} found\n",
        if n == 1 { "" } else { "s" }
    ));
    out
}
