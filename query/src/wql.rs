//! A subset of WQL/CQL: `SELECT props FROM Class [WHERE condition]`.
//!
//! ```text
//! query      := SELECT ( '*' | name (',' name)* ) FROM name [ WHERE or ]
//! or         := and ( OR and )*
//! and        := not ( AND not )*
//! not        := NOT not | '(' or ')' | predicate
//! predicate  := name op literal | literal op name
//!             | name [NOT] LIKE string
//!             | name IS [NOT] NULL
//!             | name ISA name
//! op         := '=' | '<>' | '!=' | '<' | '<=' | '>' | '>='
//! literal    := string | number | TRUE | FALSE
//! string     := '...' with '' for a quote, or "..." with "" for a quote
//! ```
//!
//! Keywords and property names are case-insensitive, as CIM names are.
//! String comparisons and `LIKE` are case-sensitive; in `LIKE`, `%` matches
//! any run of characters, `_` one character, and `\` escapes either.
//!
//! `X ISA C` is true when X names an instance of class C or of one of its
//! subclasses: the instance itself when X is `__Class` (so `WHERE __Class
//! ISA CIM_ComputerSystem` keeps the instances of that branch), or the
//! instance a reference property X points to. The caller answers class
//! membership; the query only asks.
//!
//! Conditions use three-valued logic: a comparison with a missing (null)
//! property, or between values of kinds that do not compare, is unknown; a
//! `WHERE` keeps only rows whose condition is true, and `NOT unknown` is
//! still unknown, as in SQL.
//!
//! Limits: [`QUERY_BYTES_MAX`] bytes of text and [`QUERY_DEPTH_MAX`] levels of
//! nesting (parentheses and `NOT`), so a hostile query cannot exhaust the
//! stack.

use std::cmp::Ordering;

use crate::error::{Error, Result};
use crate::value::Value;

/// Longest query text accepted, in bytes.
pub const QUERY_BYTES_MAX: usize = 16 * 1024;

/// Deepest nesting of parentheses and `NOT` accepted.
pub const QUERY_DEPTH_MAX: usize = 64;

/// A parsed query.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The properties asked for; `None` for `*`.
    pub select: Option<Vec<String>>,
    /// The class after `FROM`.
    pub from: String,
    /// The condition, if any.
    pub condition: Option<Condition>,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `<>` or `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    fn holds(self, o: Ordering) -> bool {
        match self {
            Op::Eq => o == Ordering::Equal,
            Op::Ne => o != Ordering::Equal,
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Gt => o == Ordering::Greater,
            Op::Ge => o != Ordering::Less,
        }
    }

    /// The operator with its operands swapped (`1 < x` is `x > 1`).
    fn flipped(self) -> Op {
        match self {
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            other => other,
        }
    }
}

/// A condition of a `WHERE` clause.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// Both hold.
    And(Box<Condition>, Box<Condition>),
    /// Either holds.
    Or(Box<Condition>, Box<Condition>),
    /// It does not hold.
    Not(Box<Condition>),
    /// `property op literal`.
    Compare {
        /// The property compared.
        property: String,
        /// How.
        op: Op,
        /// With what.
        value: Value,
    },
    /// `property [NOT] LIKE pattern`.
    Like {
        /// The property matched.
        property: String,
        /// The pattern, with `%`, `_` and `\` escapes.
        pattern: String,
        /// `NOT LIKE`.
        negated: bool,
    },
    /// `property IS [NOT] NULL`.
    IsNull {
        /// The property tested.
        property: String,
        /// `IS NOT NULL`.
        negated: bool,
    },
    /// `property ISA Class`; property `__Class` is the instance itself.
    Isa {
        /// A reference property, or `__Class`.
        property: String,
        /// The class, subclasses included.
        class: String,
    },
}

/// What a condition is evaluated against: one instance.
pub trait Row {
    /// The value of a property (case-insensitive name); `Null` when the
    /// instance has none.
    fn get(&self, property: &str) -> Value;
    /// Whether the instance (`property` = `__Class`) or the instance a
    /// reference property points to belongs to `class` or a subclass.
    /// `None` when unknown (no such reference, a dangling one).
    fn isa(&self, property: &str, class: &str) -> Option<bool>;
}

/// Three-valued truth.
type Tri = Option<bool>;

impl Condition {
    /// Evaluates the condition on a row: `Some(true)`, `Some(false)`, or
    /// `None` for unknown.
    pub fn eval(&self, row: &dyn Row) -> Tri {
        match self {
            Condition::And(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Condition::Or(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Condition::Not(c) => c.eval(row).map(|v| !v),
            Condition::Compare { property, op, value } => {
                let got = row.get(property);
                match (&got, value) {
                    (Value::Bool(_), _) | (_, Value::Bool(_)) if !matches!(op, Op::Eq | Op::Ne) => None,
                    _ => got.compare(value).map(|o| op.holds(o)),
                }
            }
            Condition::Like { property, pattern, negated } => {
                let got = row.get(property);
                got.text().map(|s| like(s, pattern) != *negated)
            }
            Condition::IsNull { property, negated } => Some(matches!(row.get(property), Value::Null) != *negated),
            Condition::Isa { property, class } => row.isa(property, class),
        }
    }

    /// Whether a row passes a `WHERE` with this condition.
    pub fn keeps(&self, row: &dyn Row) -> bool {
        self.eval(row) == Some(true)
    }
}

/// SQL `LIKE` with `%`, `_` and `\` escapes, case-sensitive.
fn like(text: &str, pattern: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Char(char),
    }
    let mut pat = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        pat.push(match c {
            '%' => P::Any,
            '_' => P::One,
            '\\' => P::Char(chars.next().unwrap_or('\\')),
            c => P::Char(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Classic two-pointer wildcard match with backtracking to the last `%`.
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(P::One) => {
                t += 1;
                p += 1;
            }
            Some(P::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            Some(P::Any) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|x| *x == P::Any)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Num(Value),
    Op(Op),
    Star,
    Comma,
    LParen,
    RParen,
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

impl Lexer<'_> {
    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T> {
        Err(Error::Syntax { at, message: message.into() })
    }

    fn tokens(mut self) -> Result<Vec<(usize, Tok)>> {
        let mut out = Vec::new();
        let bytes = self.text.as_bytes();
        while self.pos < bytes.len() {
            let start = self.pos;
            let c = bytes[self.pos];
            let tok = match c {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.pos += 1;
                    continue;
                }
                b'*' => {
                    self.pos += 1;
                    Tok::Star
                }
                b',' => {
                    self.pos += 1;
                    Tok::Comma
                }
                b'(' => {
                    self.pos += 1;
                    Tok::LParen
                }
                b')' => {
                    self.pos += 1;
                    Tok::RParen
                }
                b'=' => {
                    self.pos += 1;
                    Tok::Op(Op::Eq)
                }
                b'<' | b'>' | b'!' => {
                    let next = bytes.get(self.pos + 1).copied();
                    let (op, len) = match (c, next) {
                        (b'<', Some(b'>')) => (Op::Ne, 2),
                        (b'<', Some(b'=')) => (Op::Le, 2),
                        (b'<', _) => (Op::Lt, 1),
                        (b'>', Some(b'=')) => (Op::Ge, 2),
                        (b'>', _) => (Op::Gt, 1),
                        (b'!', Some(b'=')) => (Op::Ne, 2),
                        _ => return self.err(start, "'!' must be followed by '=' (use NOT for negation)"),
                    };
                    self.pos += len;
                    Tok::Op(op)
                }
                b'\'' | b'"' => Tok::Str(self.string(c)?),
                b'0'..=b'9' | b'-' | b'+' | b'.' => Tok::Num(self.number()?),
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    while self.pos < bytes.len() && (bytes[self.pos].is_ascii_alphanumeric() || bytes[self.pos] == b'_')
                    {
                        self.pos += 1;
                    }
                    Tok::Name(self.text[start..self.pos].to_string())
                }
                _ => {
                    let ch = self.text[start..].chars().next().unwrap_or('?');
                    return self.err(start, format!("unexpected character {ch:?}"));
                }
            };
            out.push((start, tok));
        }
        Ok(out)
    }

    fn string(&mut self, quote: u8) -> Result<String> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.text[self.pos..].chars().next() else {
                return self.err(start, "string is not closed");
            };
            self.pos += c.len_utf8();
            if c == quote as char {
                if self.text.as_bytes().get(self.pos) == Some(&quote) {
                    out.push(c);
                    self.pos += 1;
                    continue;
                }
                return Ok(out);
            }
            out.push(c);
        }
    }

    fn number(&mut self) -> Result<Value> {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        if matches!(bytes[self.pos], b'-' | b'+') {
            self.pos += 1;
        }
        while self.pos < bytes.len()
            && (bytes[self.pos].is_ascii_digit() || matches!(bytes[self.pos], b'.' | b'e' | b'E'))
        {
            // An exponent may carry a sign.
            if matches!(bytes[self.pos], b'e' | b'E') && matches!(bytes.get(self.pos + 1), Some(b'-' | b'+')) {
                self.pos += 1;
            }
            self.pos += 1;
        }
        let text = &self.text[start..self.pos];
        if let Ok(n) = text.parse::<i128>() {
            return Ok(Value::Int(n));
        }
        match text.parse::<f64>() {
            Ok(r) if r.is_finite() => Ok(Value::Real(r)),
            _ => self.err(start, format!("{text:?} is not a number")),
        }
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn pos(&self) -> usize {
        self.toks.get(self.at).map_or(self.end, |(p, _)| *p)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(Error::Syntax { at: self.pos(), message: message.into() })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }

    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the query".into(),
            Some(Tok::Name(n)) => format!("{n:?}"),
            Some(Tok::Str(s)) => format!("the string {s:?}"),
            Some(Tok::Num(_)) => "a number".into(),
            Some(Tok::Op(_)) => "an operator".into(),
            Some(Tok::Star) => "'*'".into(),
            Some(Tok::Comma) => "','".into(),
            Some(Tok::LParen) => "'('".into(),
            Some(Tok::RParen) => "')'".into(),
        }
    }

    fn keyword(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(Tok::Name(n)) if n.eq_ignore_ascii_case(kw) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<()> {
        if self.keyword(kw) {
            Ok(())
        } else {
            self.err(format!("expected {kw}, found {}", self.found()))
        }
    }

    fn name(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Tok::Name(n)) if !is_keyword(n) => {
                let n = n.clone();
                self.at += 1;
                Ok(n)
            }
            _ => self.err(format!("expected {what}, found {}", self.found())),
        }
    }

    fn query(&mut self) -> Result<Query> {
        self.expect_keyword("SELECT")?;
        let select = if self.peek() == Some(&Tok::Star) {
            self.at += 1;
            None
        } else {
            let mut props = vec![self.name("a property name or '*'")?];
            while self.peek() == Some(&Tok::Comma) {
                self.at += 1;
                props.push(self.name("a property name")?);
            }
            Some(props)
        };
        self.expect_keyword("FROM")?;
        let from = self.name("a class name")?;
        let condition = if self.keyword("WHERE") { Some(self.or()?) } else { None };
        if self.peek().is_some() {
            return self.err(format!("expected the end of the query, found {}", self.found()));
        }
        Ok(Query { select, from, condition })
    }

    fn nest<T>(&mut self, f: impl FnOnce(&mut Parser) -> Result<T>) -> Result<T> {
        self.depth += 1;
        if self.depth > QUERY_DEPTH_MAX {
            return self.err(format!("nested deeper than {QUERY_DEPTH_MAX} levels"));
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn or(&mut self) -> Result<Condition> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Condition::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition> {
        let mut left = self.not()?;
        while self.keyword("AND") {
            left = Condition::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Condition> {
        if self.keyword("NOT") {
            return self.nest(|p| Ok(Condition::Not(Box::new(p.not()?))));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.at += 1;
            let inner = self.nest(Parser::or)?;
            if self.peek() != Some(&Tok::RParen) {
                return self.err(format!("expected ')', found {}", self.found()));
            }
            self.at += 1;
            return Ok(inner);
        }
        self.predicate()
    }

    fn literal(&mut self) -> Option<Value> {
        let v = match self.peek()? {
            Tok::Str(s) => Value::Str(s.clone()),
            Tok::Num(n) => n.clone(),
            Tok::Name(n) if n.eq_ignore_ascii_case("TRUE") => Value::Bool(true),
            Tok::Name(n) if n.eq_ignore_ascii_case("FALSE") => Value::Bool(false),
            _ => return None,
        };
        self.at += 1;
        Some(v)
    }

    fn predicate(&mut self) -> Result<Condition> {
        // `literal op name`
        if let Some(value) = self.literal() {
            let Some(Tok::Op(op)) = self.peek().cloned() else {
                return self.err(format!("expected a comparison operator, found {}", self.found()));
            };
            self.at += 1;
            let property = self.name("a property name")?;
            return Ok(Condition::Compare { property, op: op.flipped(), value });
        }
        let property = self.name("a property name, NOT or '('")?;
        if let Some(Tok::Op(op)) = self.peek().cloned() {
            self.at += 1;
            let Some(value) = self.literal() else {
                return self.err(format!("expected a string, number, TRUE or FALSE, found {}", self.found()));
            };
            return Ok(Condition::Compare { property, op, value });
        }
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Condition::IsNull { property, negated });
        }
        let negated = self.keyword("NOT");
        if self.keyword("LIKE") {
            return match self.peek().cloned() {
                Some(Tok::Str(pattern)) => {
                    self.at += 1;
                    Ok(Condition::Like { property, pattern, negated })
                }
                _ => self.err(format!("expected a string pattern after LIKE, found {}", self.found())),
            };
        }
        if negated {
            return self.err(format!("expected LIKE after NOT, found {}", self.found()));
        }
        if self.keyword("ISA") {
            let class = match self.peek().cloned() {
                Some(Tok::Str(s)) => {
                    self.at += 1;
                    s
                }
                _ => self.name("a class name after ISA")?,
            };
            return Ok(Condition::Isa { property, class });
        }
        self.err(format!("expected an operator, LIKE, IS or ISA after {property}, found {}", self.found()))
    }
}

const KEYWORDS: [&str; 12] =
    ["SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "LIKE", "IS", "NULL", "ISA", "TRUE", "FALSE"];

fn is_keyword(n: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(n))
}

/// Parses a query.
///
/// # Errors
/// `Syntax` with the byte offset of the problem and what was expected.
pub fn parse(text: &str) -> Result<Query> {
    if text.len() > QUERY_BYTES_MAX {
        return Err(Error::Syntax { at: QUERY_BYTES_MAX, message: format!("longer than {QUERY_BYTES_MAX} bytes") });
    }
    let toks = Lexer { text, pos: 0 }.tokens()?;
    Parser { toks, at: 0, end: text.len(), depth: 0 }.query()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct R(HashMap<String, Value>, &'static [&'static str]);

    impl Row for R {
        fn get(&self, p: &str) -> Value {
            self.0.get(&p.to_ascii_lowercase()).cloned().unwrap_or(Value::Null)
        }
        fn isa(&self, p: &str, class: &str) -> Option<bool> {
            p.eq_ignore_ascii_case("__class").then(|| self.1.iter().any(|c| c.eq_ignore_ascii_case(class)))
        }
    }

    fn row() -> R {
        let mut m = HashMap::new();
        m.insert("name".into(), Value::Str("web-01.example.com".into()));
        m.insert("cpus".into(), Value::Int(8));
        m.insert("load".into(), Value::Real(0.5));
        m.insert("enabled".into(), Value::Bool(true));
        R(m, &["CIM_ComputerSystem", "CIM_System", "CIM_ManagedElement"])
    }

    fn keeps(q: &str) -> bool {
        let query = parse(&format!("SELECT * FROM CIM_System WHERE {q}")).unwrap_or_else(|e| panic!("{q}: {e}"));
        query.condition.is_none_or(|c| c.keeps(&row()))
    }

    #[test]
    fn select_lists_and_classes_parse() {
        let q = parse("select Name, CPUs from CIM_ComputerSystem").unwrap();
        assert_eq!(q.select, Some(vec!["Name".to_string(), "CPUs".to_string()]));
        assert_eq!(q.from, "CIM_ComputerSystem");
        assert_eq!(q.condition, None);
        assert_eq!(parse("SELECT * FROM X").unwrap().select, None);
    }

    #[test]
    fn conditions_evaluate_with_sql_semantics() {
        assert!(keeps("cpus = 8"));
        assert!(keeps("CPUs >= 8 AND load < 1"));
        assert!(keeps("8 = cpus"));
        assert!(keeps("2 < cpus"), "a literal on the left flips the operator");
        assert!(keeps("cpus <> 4 OR missing = 1"));
        assert!(!keeps("cpus != 8"));
        assert!(keeps("load > 0.25 AND load <= 5e-1"));
        assert!(keeps("name LIKE 'web-__.%'"));
        assert!(!keeps("name LIKE 'WEB%'"), "LIKE is case-sensitive");
        assert!(keeps("name NOT LIKE '%.org'"));
        assert!(keeps("missing IS NULL AND name IS NOT NULL"));
        assert!(keeps("enabled = TRUE"));
        assert!(keeps("__Class ISA CIM_System"));
        assert!(keeps("__Class ISA 'CIM_ManagedElement'"));
        assert!(!keeps("__Class ISA CIM_Service"));
        assert!(keeps("NOT (cpus = 4 OR cpus = 2)"));
        assert!(keeps("name = 'web-01.example.com'"));
        assert!(keeps(r#"name = "web-01.example.com""#));
    }

    #[test]
    fn unknown_is_neither_true_nor_false() {
        assert!(!keeps("missing = 1"));
        assert!(!keeps("NOT missing = 1"), "NOT unknown is unknown");
        assert!(!keeps("name = 3"), "a string does not compare with a number");
        assert!(!keeps("enabled > FALSE"), "booleans only compare for equality");
        assert!(keeps("missing = 1 OR cpus = 8"));
        assert!(!keeps("missing = 1 AND cpus = 8"));
    }

    #[test]
    fn strings_escape_their_quote_by_doubling_it() {
        let q = parse("SELECT * FROM X WHERE a = 'it''s'").unwrap();
        assert_eq!(
            q.condition,
            Some(Condition::Compare { property: "a".into(), op: Op::Eq, value: Value::Str("it's".into()) })
        );
    }

    #[test]
    fn like_handles_wildcards_and_escapes() {
        assert!(like("abc", "a%"));
        assert!(like("abc", "%c"));
        assert!(like("abc", "a_c"));
        assert!(!like("abc", "a_"));
        assert!(like("a%c", "a\\%c"));
        assert!(!like("abc", "a\\%c"));
        assert!(like("", "%"));
        assert!(like("aXbXc", "%X%X%"));
        assert!(!like("ab", "%X%"));
    }

    #[test]
    fn parse_errors_say_where_and_what() {
        for (q, at, needle) in [
            ("SELECT", 6, "expected a property name or '*'"),
            ("SELECT * FORM X", 9, "expected FROM"),
            ("SELECT * FROM X WHERE", 21, "expected a property name"),
            ("SELECT * FROM X WHERE a = ", 26, "expected a string, number"),
            ("SELECT * FROM X WHERE (a = 1", 28, "expected ')'"),
            ("SELECT * FROM X WHERE a = 'open", 26, "not closed"),
            ("SELECT * FROM X WHERE a # 1", 24, "unexpected character"),
            ("SELECT * FROM X WHERE a NOT = 1", 28, "expected LIKE after NOT"),
            ("SELECT * FROM X WHERE a IS 1", 27, "expected NULL"),
            ("SELECT * FROM X WHERE a LIKE 1", 29, "string pattern"),
            ("SELECT * FROM X extra", 16, "expected the end"),
            ("SELECT * FROM X WHERE a ! 1", 24, "'!' must be followed"),
            ("SELECT * FROM WHERE", 14, "expected a class name"),
        ] {
            match parse(q) {
                Err(Error::Syntax { at: got, message }) => {
                    assert_eq!(got, at, "{q}: {message}");
                    assert!(message.contains(needle), "{q}: {message}");
                }
                other => panic!("{q}: {other:?}"),
            }
        }
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let deep = format!("SELECT * FROM X WHERE {}a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).unwrap_err().to_string().contains("nested deeper"));
        let nots = format!("SELECT * FROM X WHERE {}a = 1", "NOT ".repeat(100));
        assert!(parse(&nots).unwrap_err().to_string().contains("nested deeper"));
        let long = format!("SELECT * FROM X WHERE a = '{}'", "x".repeat(QUERY_BYTES_MAX));
        assert!(parse(&long).unwrap_err().to_string().contains("longer than"));
    }
}
