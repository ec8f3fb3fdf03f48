//! CIM object paths: `namespace:Class.Key1="v",Key2=3`.
//!
//! **Grammar.** A namespace (`/`-separated names, such as `root/cimv2`), a
//! colon, the class name, and, unless the class is a keyless singleton, a
//! dot and its key bindings separated by commas. A binding is `Name=value`
//! where the value is a double-quoted string, a whole number (optionally
//! negative) or `TRUE`/`FALSE`. Inside a string, `\"` is a quote and `\\` a
//! backslash; every other character stands for itself. A reference key's
//! value is the referenced path as a string, with its quotes escaped.
//!
//! **Canonical form.** CIM names are case-insensitive, and key order is not
//! significant. The canonical form lists the keys sorted by their lowercase
//! name, writes numbers in decimal without a leading `+` or zeros, booleans
//! as `TRUE`/`FALSE`, and strings with exactly the escapes above. Names keep
//! the case they were given in; [`ObjectPath::identity`] lowercases them, so
//! two paths that name the same instance have the same identity and compare
//! equal, whatever their key order or name case.

use std::fmt;

use crate::error::{Error, Result};

/// A key's value in a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyValue {
    /// A string (also a datetime or a reference, which paths write as text).
    Str(String),
    /// A whole number.
    Int(i128),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
            KeyValue::Int(n) => write!(f, "{n}"),
            KeyValue::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
        }
    }
}

/// An instance's address.
#[derive(Clone, Debug)]
pub struct ObjectPath {
    /// The namespace, such as `root/cimv2`.
    pub namespace: String,
    /// The class name.
    pub class: String,
    /// The key bindings, in canonical order (by lowercase name).
    pub keys: Vec<(String, KeyValue)>,
}

impl PartialEq for ObjectPath {
    fn eq(&self, other: &ObjectPath) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for ObjectPath {}

impl std::hash::Hash for ObjectPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// Longest object path accepted, in bytes.
pub const OBJECT_PATH_BYTES_MAX: usize = 4096;

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl ObjectPath {
    /// A path from its parts; the keys are put in canonical order.
    ///
    /// # Errors
    /// `Path` for an invalid namespace, class or key name, or a key bound
    /// twice.
    pub fn new(namespace: &str, class: &str, keys: Vec<(String, KeyValue)>) -> Result<ObjectPath> {
        let bad = |m: String| Error::Path { path: format!("{namespace}:{class}"), message: m };
        if namespace.is_empty() || !namespace.split('/').all(is_name) {
            return Err(bad(format!("namespace {namespace:?} must be names separated by '/'")));
        }
        if !is_name(class) {
            return Err(bad(format!("class name {class:?} must be a letter or '_' then letters, digits or '_'")));
        }
        let mut keys = keys;
        for (k, _) in &keys {
            if !is_name(k) {
                return Err(bad(format!("key name {k:?} is not a valid name")));
            }
        }
        keys.sort_by_key(|(k, _)| k.to_ascii_lowercase());
        if let Some(w) = keys.windows(2).find(|w| w[0].0.eq_ignore_ascii_case(&w[1].0)) {
            return Err(bad(format!("key {} is bound twice", w[0].0)));
        }
        Ok(ObjectPath { namespace: namespace.to_string(), class: class.to_string(), keys })
    }

    /// Parses a path (see the module header for the grammar).
    ///
    /// # Errors
    /// `Path` saying what is wrong and where.
    pub fn parse(input: &str) -> Result<ObjectPath> {
        let bad = |m: String| Error::Path { path: input.chars().take(200).collect(), message: m };
        if input.len() > OBJECT_PATH_BYTES_MAX {
            return Err(bad(format!("longer than {OBJECT_PATH_BYTES_MAX} bytes")));
        }
        let (namespace, rest) = input.split_once(':').ok_or_else(|| bad("no ':' after the namespace".into()))?;
        let (class, mut keys_text) = match rest.split_once('.') {
            Some((c, k)) => (c, Some(k)),
            None => (rest, None),
        };
        let mut keys = Vec::new();
        while let Some(text) = keys_text {
            let (name, after) = text.split_once('=').ok_or_else(|| bad(format!("key binding {text:?} has no '='")))?;
            let (value, rest) = parse_key_value(after).map_err(|m| bad(format!("key {name}: {m}")))?;
            keys.push((name.to_string(), value));
            keys_text = match rest.strip_prefix(',') {
                Some(r) => Some(r),
                None if rest.is_empty() => None,
                None => return Err(bad(format!("expected ',' or the end after key {name}, found {rest:?}"))),
            };
        }
        ObjectPath::new(namespace, class, keys).map_err(|e| match e {
            Error::Path { message, .. } => bad(message),
            other => other,
        })
    }

    /// The path with every name lowercased: equal for every spelling of
    /// the same instance. Use it as the storage key.
    pub fn identity(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase())).collect();
        let ns = self.namespace.to_ascii_lowercase();
        let class = self.class.to_ascii_lowercase();
        if keys.is_empty() {
            format!("{ns}:{class}")
        } else {
            format!("{ns}:{class}.{}", keys.join(","))
        }
    }

    /// The value bound to key `name` (case-insensitive).
    pub fn key(&self, name: &str) -> Option<&KeyValue> {
        self.keys.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }
}

/// Parses one key value at the start of `s`; returns it and the rest.
fn parse_key_value(s: &str) -> std::result::Result<(KeyValue, &str), String> {
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    Some((_, e)) => return Err(format!("unknown escape \\{e} (only \\\" and \\\\)")),
                    None => return Err("ends inside an escape".into()),
                },
                '"' => return Ok((KeyValue::Str(out), &body[i + 1..])),
                c => out.push(c),
            }
        }
        return Err("string is not closed".into());
    }
    let end = s.find(',').unwrap_or(s.len());
    let (token, rest) = s.split_at(end);
    if token.eq_ignore_ascii_case("true") {
        return Ok((KeyValue::Bool(true), rest));
    }
    if token.eq_ignore_ascii_case("false") {
        return Ok((KeyValue::Bool(false), rest));
    }
    let digits = token.strip_prefix('-').unwrap_or(token);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let n: i128 = token.parse().map_err(|_| format!("number {token} is too large"))?;
        return Ok((KeyValue::Int(n), rest));
    }
    Err(format!("value {token:?} is not a quoted string, a whole number, TRUE or FALSE"))
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.namespace, self.class)?;
        for (i, (k, v)) in self.keys.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "." } else { "," })?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(s: &str) -> ObjectPath {
        ObjectPath::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn canonical_form_sorts_keys_and_escapes_strings() {
        let path = p(r#"root/cimv2:CIM_ComputerSystem.Name="h1",CreationClassName="CIM_ComputerSystem""#);
        assert_eq!(
            path.to_string(),
            r#"root/cimv2:CIM_ComputerSystem.CreationClassName="CIM_ComputerSystem",Name="h1""#
        );
        let q = p(r#"root/x:C.K="a \"quoted\" \\ back""#);
        assert_eq!(q.key("k"), Some(&KeyValue::Str(r#"a "quoted" \ back"#.into())));
        assert_eq!(p(&q.to_string()), q, "the canonical form parses back to the same path");
        assert_eq!(p("ns:C.N=-42,B=true").to_string(), "ns:C.B=TRUE,N=-42");
        assert_eq!(p("ns:Singleton").to_string(), "ns:Singleton");
    }

    #[test]
    fn paths_naming_the_same_instance_are_equal() {
        let a = p(r#"root/cimv2:CIM_System.Name="h1",CreationClassName="X""#);
        let b = p(r#"ROOT/CIMV2:cim_system.creationclassname="X",NAME="h1""#);
        assert_eq!(a, b);
        assert_eq!(a.identity(), b.identity());
        let c = p(r#"root/cimv2:CIM_System.Name="H1",CreationClassName="X""#);
        assert_ne!(a, c, "key values are case-sensitive");
    }

    #[test]
    fn references_nest_as_escaped_strings() {
        let inner = p(r#"root/cimv2:CIM_ComputerSystem.CreationClassName="CIM_ComputerSystem",Name="h1""#);
        let outer = ObjectPath::new(
            "root/cimv2",
            "CIM_HostedService",
            vec![
                ("Antecedent".into(), KeyValue::Str(inner.to_string())),
                ("Dependent".into(), KeyValue::Str("x".into())),
            ],
        )
        .unwrap();
        let back = p(&outer.to_string());
        let Some(KeyValue::Str(s)) = back.key("antecedent") else { panic!("no antecedent") };
        assert_eq!(p(s), inner);
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        for (bad, needle) in [
            ("no-colon", "':'"),
            ("ns:1Class", "class name"),
            ("ns:C.K", "no '='"),
            ("ns:C.K=\"open", "not closed"),
            ("ns:C.K=\"a\"x", "expected ','"),
            ("ns:C.K=abc", "not a quoted string"),
            ("ns:C.K=1,k=2", "bound twice"),
            ("ns:C.K=\"\\n\"", "unknown escape"),
            ("bad ns:C", "namespace"),
        ] {
            let err = ObjectPath::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
