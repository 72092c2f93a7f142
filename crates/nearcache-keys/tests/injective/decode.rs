//! A decoder for key text, given the type it was written from. `decode(shape, text(v)) == v`
//! for every value `v` proves the text is injective per type: a function that recovers `v`
//! from its text cannot exist if two values shared a text.
//!
//! It is deliberately strict: anything the writer never produces is an error.

use crate::model::{Shape, Value};

pub(crate) type Result<T> = std::result::Result<T, String>;

/// Decodes the text of one value written at the top level (`Key::of`, `key_text`).
pub(crate) fn decode_top(shape: &Shape, text: &str) -> Result<Value> {
    let mut p = Parser { text, pos: 0 };
    let value = p.value(shape, Mode::Top)?;
    p.end()?;
    Ok(value)
}

/// Decodes `Type:method-arg-arg…` whose arguments have `shapes`, given the known prefix.
pub(crate) fn decode_args(prefix: &str, shapes: &[Shape], text: &str) -> Result<Vec<Value>> {
    let rest = text
        .strip_prefix(prefix)
        .ok_or_else(|| format!("{text:?} does not start with {prefix:?}"))?;
    let mut p = Parser { text: rest, pos: 0 };
    let mut values = Vec::new();
    for shape in shapes {
        p.expect('-')?;
        values.push(p.value(shape, Mode::Nested)?);
    }
    p.end()?;
    Ok(values)
}

/// Decodes a string atom that makes up the whole text.
pub(crate) fn decode_atom(text: &str) -> Result<String> {
    let mut p = Parser { text, pos: 0 };
    let atom = p.atom()?;
    p.end()?;
    Ok(atom)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The outermost value: composites have no parentheses and run to the end.
    Top,
    /// Inside a composite or an argument list: a self-delimited term.
    Nested,
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn expect(&mut self, want: char) -> Result<()> {
        match self.bump() {
            Some(c) if c == want => Ok(()),
            got => Err(format!(
                "expected {want:?} at {} in {:?}, got {got:?}",
                self.pos, self.text
            )),
        }
    }

    fn end(&self) -> Result<()> {
        if self.pos == self.text.len() {
            Ok(())
        } else {
            Err(format!(
                "trailing text {:?} in {:?}",
                &self.text[self.pos..],
                self.text
            ))
        }
    }

    /// Whether the current term ends here.
    fn at_term_end(&self, mode: Mode) -> bool {
        match mode {
            Mode::Top => self.pos == self.text.len(),
            Mode::Nested => matches!(self.peek(), None | Some('-' | ')')),
        }
    }

    fn value(&mut self, shape: &Shape, mode: Mode) -> Result<Value> {
        match shape {
            Shape::Str => Ok(Value::Str(self.atom()?)),
            Shape::Int => {
                let atom = self.atom()?;
                let int: i64 = atom.parse().map_err(|e| format!("{atom:?}: {e}"))?;
                if int.to_string() != atom {
                    return Err(format!("non-canonical integer {atom:?}"));
                }
                Ok(Value::Int(int))
            }
            Shape::Bytes => {
                let atom = self.atom()?;
                hex(&atom).map(Value::Bytes)
            }
            Shape::Opt(inner) => {
                if self.peek() == Some('~') {
                    self.bump();
                    if self.at_term_end(mode) {
                        return Ok(Value::Opt(None));
                    }
                    // `Some(v)` whose text starts with `~` carries one more `~`.
                    if self.peek() != Some('~') {
                        return Err(format!("stray '~' in {:?}", self.text));
                    }
                }
                Ok(Value::Opt(Some(Box::new(self.value(inner, mode)?))))
            }
            Shape::Seq(inner) => {
                let items = self.composite(mode, |p, _| p.value(inner, Mode::Nested))?;
                Ok(Value::Seq(items))
            }
            Shape::Tuple(fields) => match fields.as_slice() {
                [only] => Ok(Value::Tuple(vec![self.value(only, mode)?])),
                fields => {
                    let values = self.composite(mode, |p, i| match fields.get(i) {
                        Some(field) => p.value(field, Mode::Nested),
                        None => Err(format!("too many fields in {:?}", p.text)),
                    })?;
                    if values.len() != fields.len() {
                        return Err(format!("too few fields in {:?}", self.text));
                    }
                    Ok(Value::Tuple(values))
                }
            },
        }
    }

    /// Elements separated by `-`, in parentheses when nested; none: `()` or nothing.
    fn composite(
        &mut self,
        mode: Mode,
        mut element: impl FnMut(&mut Self, usize) -> Result<Value>,
    ) -> Result<Vec<Value>> {
        if mode == Mode::Nested {
            self.expect('(')?;
        }
        let closed = |p: &Self| match mode {
            Mode::Top => p.pos == p.text.len(),
            Mode::Nested => p.peek() == Some(')'),
        };
        let mut values = Vec::new();
        if !closed(self) {
            loop {
                values.push(element(self, values.len())?);
                if closed(self) {
                    break;
                }
                self.expect('-')?;
            }
        }
        if mode == Mode::Nested {
            self.expect(')')?;
        }
        Ok(values)
    }

    /// A bare atom (non-empty, no reserved character) or a quoted one (`'` doubled inside).
    fn atom(&mut self) -> Result<String> {
        if self.peek() == Some('\'') {
            self.bump();
            let mut text = String::new();
            loop {
                match self.bump() {
                    None => return Err(format!("unterminated quote in {:?}", self.text)),
                    Some('\'') if self.peek() == Some('\'') => {
                        self.bump();
                        text.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => text.push(c),
                }
            }
            if !text.is_empty() && !text.contains(['-', '(', ')', '\'', '~']) {
                return Err(format!("needlessly quoted atom {text:?}"));
            }
            return Ok(text);
        }
        let start = self.pos;
        while let Some(c) = self.peek() {
            if matches!(c, '-' | '(' | ')' | '\'' | '~') {
                break;
            }
            self.bump();
        }
        if self.pos == start {
            return Err(format!("empty atom at {start} in {:?}", self.text));
        }
        Ok(self.text[start..self.pos].to_owned())
    }
}

fn hex(atom: &str) -> Result<Vec<u8>> {
    if !atom.len().is_multiple_of(2) {
        return Err(format!("odd hex {atom:?}"));
    }
    (0..atom.len())
        .step_by(2)
        .map(|i| {
            let pair = atom
                .get(i..i + 2)
                .ok_or_else(|| format!("bad hex {atom:?}"))?;
            if pair.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(format!("uppercase hex {atom:?}"));
            }
            u8::from_str_radix(pair, 16).map_err(|e| format!("{atom:?}: {e}"))
        })
        .collect()
}
