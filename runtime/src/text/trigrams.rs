//! Text normalisation and letter trigrams with word-boundary marks.
//!
//! Rules (repeated in `docs/text.md`):
//! - A *word* is a maximal run of characters for which Rust's
//!   [`char::is_alphanumeric`] holds (Unicode `Alphabetic` or general
//!   category `Nd`/`Nl`/`No`), found in the text as given; everything else
//!   (spaces, punctuation, symbols, combining marks that are not
//!   `Alphabetic`, `_`, `#`) separates words and is dropped. So
//!   `"don't"` is the two words `don` and `t`, and `"e-mail"` is `e`, `mail`.
//! - Each word is then lower-cased with [`str::to_lowercase`] (Unicode
//!   default full case mapping, including final sigma: `ΟΔΟΣ` -> `οδος`).
//!   Lower-casing may lengthen a word (`İ` -> `i̇`); the result is kept as is.
//! - No Unicode normalisation (NFC/NFKC) is applied: input is expected in
//!   NFC, as most text is.
//! - The letter trigrams of a word `w` are the windows of three characters
//!   (Unicode scalar values) of `#w#`: `good` -> `#go goo ood od#`, `a` ->
//!   `#a#`. `#` is never part of a word, so the marks are unambiguous.
//! - The trigrams of a text are those of its words, in order, repeats kept.

/// The words of `text`: maximal alphanumeric runs, lower-cased.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The letter trigrams of one (already normalised) word, in order: the
/// three-character windows of `#word#`. An empty word has none.
pub fn word_trigrams(word: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_trigram(word, |t| out.push(t.to_string()));
    out
}

/// Calls `f` with every letter trigram of `word` in order, borrowed from
/// one buffer (no allocation per trigram).
pub fn for_each_trigram(word: &str, mut f: impl FnMut(&str)) {
    if word.is_empty() {
        return;
    }
    let marked = format!("#{word}#");
    // Byte offsets of every character start, and the end.
    let starts: Vec<usize> = marked
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(marked.len()))
        .collect();
    for w in starts.windows(4) {
        f(&marked[w[0]..w[3]]);
    }
}

/// The letter trigrams of every word of `text`, in order, repeats kept.
pub fn text_trigrams(text: &str) -> Vec<String> {
    words(text).iter().flat_map(|w| word_trigrams(w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn trigrams_of_the_issue_examples() {
        assert_eq!(strs(&word_trigrams("good")), ["#go", "goo", "ood", "od#"]);
        assert_eq!(strs(&word_trigrams("a")), ["#a#"]);
        assert_eq!(strs(&word_trigrams("ab")), ["#ab", "ab#"]);
        assert!(word_trigrams("").is_empty());
    }

    #[test]
    fn words_split_on_punctuation_and_lower_case() {
        assert_eq!(
            strs(&words("  Don't STOP—the e-mail_list, #1!  ")),
            ["don", "t", "stop", "the", "e", "mail", "list", "1"]
        );
        assert!(words("... --- !!!").is_empty());
        assert!(words("").is_empty());
        assert_eq!(strs(&words("x86_64\tLinux\r\n")), ["x86", "64", "linux"]);
    }

    #[test]
    fn unicode_words_and_case_mapping() {
        // Accented letters and CJK are alphanumeric; final sigma is
        // context-sensitive; digits of other scripts count as numbers.
        assert_eq!(strs(&words("Café ÜBER")), ["café", "über"]);
        assert_eq!(strs(&words("ΟΔΟΣ")), ["οδος"]);
        assert_eq!(strs(&words("日本語テキスト")), ["日本語テキスト"]);
        assert_eq!(strs(&words("٣٤ ½")), ["٣٤", "½"]);
        // İ lower-cases to i + U+0307 (two scalar values); kept as is.
        assert_eq!(strs(&words("İ")), ["i\u{307}"]);
        assert_eq!(strs(&word_trigrams("i\u{307}")), ["#i\u{307}", "i\u{307}#"]);
        // A decomposed accent (U+0301, not Alphabetic) separates words:
        // input is expected in NFC.
        assert_eq!(strs(&words("cafe\u{301}s")), ["cafe", "s"]);
        // Trigrams count characters, not bytes.
        assert_eq!(strs(&word_trigrams("日本")), ["#日本", "日本#"]);
    }

    #[test]
    fn text_trigrams_concatenate_words_in_order() {
        assert_eq!(
            strs(&text_trigrams("Good, a GOOD!")),
            ["#go", "goo", "ood", "od#", "#a#", "#go", "goo", "ood", "od#"]
        );
    }
}
