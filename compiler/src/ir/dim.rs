//! Sizes that may be symbolic: a dimension is a linear form
//! `c + k1*S1 + k2*S2 + ...` over the graph's symbols (the batch `N`, or a
//! data-dependent count such as the boxes NMS keeps). Linear forms are closed
//! under the operations shape rules need (add, subtract, scale, exact
//! division by a constant) and compare structurally.

use std::fmt;

/// Index of a symbol in a graph's symbol table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SymId(pub u32);

/// A size: an integer constant plus integer multiples of symbols.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Dim {
    constant: i64,
    /// Sorted by symbol, no zero coefficients.
    terms: Vec<(SymId, i64)>,
}

impl Dim {
    /// A known size.
    pub fn known(n: i64) -> Dim {
        Dim {
            constant: n,
            terms: Vec::new(),
        }
    }

    /// The size named by a symbol.
    pub fn sym(s: SymId) -> Dim {
        Dim {
            constant: 0,
            terms: vec![(s, 1)],
        }
    }

    /// The value if it does not depend on any symbol.
    pub fn as_known(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.constant)
    }

    /// The constant part.
    pub fn constant(&self) -> i64 {
        self.constant
    }

    /// The symbolic terms `(symbol, coefficient)`, sorted by symbol.
    pub fn terms(&self) -> &[(SymId, i64)] {
        &self.terms
    }

    /// `self + other`.
    pub fn add(&self, other: &Dim) -> Dim {
        let mut terms = self.terms.clone();
        for &(s, k) in &other.terms {
            match terms.iter_mut().find(|(t, _)| *t == s) {
                Some(entry) => entry.1 += k,
                None => terms.push((s, k)),
            }
        }
        terms.retain(|&(_, k)| k != 0);
        terms.sort();
        Dim {
            constant: self.constant + other.constant,
            terms,
        }
    }

    /// `self - other`.
    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.scale(-1))
    }

    /// `self * k`.
    pub fn scale(&self, k: i64) -> Dim {
        if k == 0 {
            return Dim::known(0);
        }
        Dim {
            constant: self.constant * k,
            terms: self.terms.iter().map(|&(s, c)| (s, c * k)).collect(),
        }
    }

    /// `self * other` when at least one side is known; `None` otherwise
    /// (the product of two symbols is not linear).
    pub fn mul(&self, other: &Dim) -> Option<Dim> {
        match (self.as_known(), other.as_known()) {
            (Some(a), _) => Some(other.scale(a)),
            (_, Some(b)) => Some(self.scale(b)),
            _ => None,
        }
    }

    /// `self / k` when every coefficient is divisible by `k`.
    pub fn div_exact(&self, k: i64) -> Option<Dim> {
        if k == 0 || self.constant % k != 0 || self.terms.iter().any(|&(_, c)| c % k != 0) {
            return None;
        }
        Some(Dim {
            constant: self.constant / k,
            terms: self.terms.iter().map(|&(s, c)| (s, c / k)).collect(),
        })
    }

    /// Substitutes values for symbols (`None` leaves a symbol in place).
    pub fn eval(&self, value_of: &dyn Fn(SymId) -> Option<i64>) -> Dim {
        let mut out = Dim::known(self.constant);
        for &(s, k) in &self.terms {
            match value_of(s) {
                Some(v) => out.constant += k * v,
                None => out = out.add(&Dim::sym(s).scale(k)),
            }
        }
        out
    }

    /// The value with every symbol valued by `value_of`, saturating at the
    /// `i64` range; `None` when a symbol has no value.
    pub fn eval_saturating(&self, value_of: &dyn Fn(SymId) -> Option<i64>) -> Option<i64> {
        self.terms.iter().try_fold(self.constant, |acc, &(s, k)| {
            Some(acc.saturating_add(k.saturating_mul(value_of(s)?)))
        })
    }

    /// Writes the form using `name` to print symbols.
    pub fn display<'a>(&'a self, name: &'a dyn Fn(SymId) -> String) -> impl fmt::Display + 'a {
        DimDisplay { dim: self, name }
    }
}

struct DimDisplay<'a> {
    dim: &'a Dim,
    name: &'a dyn Fn(SymId) -> String,
}

impl fmt::Display for DimDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for &(s, k) in &self.dim.terms {
            let sign = if k < 0 { "-" } else { "+" };
            if !first {
                write!(f, " {sign} ")?;
            } else if k < 0 {
                write!(f, "-")?;
            }
            let k = k.abs();
            if k == 1 {
                write!(f, "{}", (self.name)(s))?;
            } else {
                write!(f, "{}*{}", k, (self.name)(s))?;
            }
            first = false;
        }
        let c = self.dim.constant;
        if first {
            write!(f, "{c}")
        } else if c > 0 {
            write!(f, " + {c}")
        } else if c < 0 {
            write!(f, " - {}", -c)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(d: &Dim) -> String {
        d.display(&|s| format!("S{}", s.0)).to_string()
    }

    #[test]
    fn linear_arithmetic() {
        let n = Dim::sym(SymId(0));
        let m = Dim::sym(SymId(1));
        assert_eq!(show(&n.scale(3).add(&Dim::known(2))), "3*S0 + 2");
        assert_eq!(show(&n.add(&m).sub(&n)), "S1");
        assert_eq!(n.mul(&m), None);
        assert_eq!(n.scale(4).div_exact(2), Some(n.scale(2)));
        assert_eq!(n.scale(3).div_exact(2), None);
        assert_eq!(show(&Dim::known(0).sub(&n)), "-S0");
        assert_eq!(n.eval(&|_| Some(8)).as_known(), Some(8));
    }
}
