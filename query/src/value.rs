//! CIM property types and typed values, and their JSON form.
//!
//! A property has one of the CIM intrinsic types, or an array of one. In
//! JSON a value is written naturally: strings and datetimes as strings,
//! booleans as booleans, integers and reals as numbers, references as the
//! object path string, arrays as arrays, and a missing value as `null`.
//! [`CimType::check`] turns such JSON into a [`Value`] of exactly the
//! declared type, or says why it does not fit: an integer out of its
//! type's range, a fraction for an integer type, a malformed datetime.
//!
//! Datetimes use CIM's interval-free form `yyyymmddHHMMSS.mmmmmmsUUU` (the
//! sign and `UUU` being the UTC offset in minutes) or RFC 3339; both are
//! stored as given and compared as text, which orders times with the same
//! offset correctly.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A CIM intrinsic type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scalar {
    /// Text.
    String,
    /// True or false.
    Boolean,
    /// 0 to 255.
    Uint8,
    /// 0 to 65,535.
    Uint16,
    /// 0 to 2^32 - 1.
    Uint32,
    /// 0 to 2^64 - 1.
    Uint64,
    /// -128 to 127.
    Sint8,
    /// -32,768 to 32,767.
    Sint16,
    /// -2^31 to 2^31 - 1.
    Sint32,
    /// -2^63 to 2^63 - 1.
    Sint64,
    /// IEEE 754 single precision.
    Real32,
    /// IEEE 754 double precision.
    Real64,
    /// A point in time.
    Datetime,
    /// The object path of another instance.
    Reference,
}

impl Scalar {
    /// Every scalar type, for parsing and documentation.
    pub const ALL: [Scalar; 14] = [
        Scalar::String,
        Scalar::Boolean,
        Scalar::Uint8,
        Scalar::Uint16,
        Scalar::Uint32,
        Scalar::Uint64,
        Scalar::Sint8,
        Scalar::Sint16,
        Scalar::Sint32,
        Scalar::Sint64,
        Scalar::Real32,
        Scalar::Real64,
        Scalar::Datetime,
        Scalar::Reference,
    ];

    /// The type's CIM name (`uint32`, `datetime`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Scalar::String => "string",
            Scalar::Boolean => "boolean",
            Scalar::Uint8 => "uint8",
            Scalar::Uint16 => "uint16",
            Scalar::Uint32 => "uint32",
            Scalar::Uint64 => "uint64",
            Scalar::Sint8 => "sint8",
            Scalar::Sint16 => "sint16",
            Scalar::Sint32 => "sint32",
            Scalar::Sint64 => "sint64",
            Scalar::Real32 => "real32",
            Scalar::Real64 => "real64",
            Scalar::Datetime => "datetime",
            Scalar::Reference => "reference",
        }
    }

    fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Scalar::Uint8 => (0, u8::MAX.into()),
            Scalar::Uint16 => (0, u16::MAX.into()),
            Scalar::Uint32 => (0, u32::MAX.into()),
            Scalar::Uint64 => (0, u64::MAX.into()),
            Scalar::Sint8 => (i8::MIN.into(), i8::MAX.into()),
            Scalar::Sint16 => (i16::MIN.into(), i16::MAX.into()),
            Scalar::Sint32 => (i32::MIN.into(), i32::MAX.into()),
            Scalar::Sint64 => (i64::MIN.into(), i64::MAX.into()),
            _ => return None,
        })
    }

    /// Checks one JSON value against this scalar type.
    fn check(self, property: &str, json: &serde_json::Value) -> Result<Value> {
        let bad = |what: String| Error::Value { property: property.to_string(), message: what };
        let name = self.name();
        match self {
            Scalar::String => json
                .as_str()
                .map(|s| Value::Str(s.to_string()))
                .ok_or_else(|| bad(format!("expected a {name}, got {json}"))),
            Scalar::Boolean => {
                json.as_bool().map(Value::Bool).ok_or_else(|| bad(format!("expected a boolean, got {json}")))
            }
            Scalar::Real32 | Scalar::Real64 => {
                json.as_f64().map(Value::Real).ok_or_else(|| bad(format!("expected a number ({name}), got {json}")))
            }
            Scalar::Datetime => {
                let s = json.as_str().ok_or_else(|| bad(format!("expected a datetime string, got {json}")))?;
                if is_cim_datetime(s) || humantime::parse_rfc3339_weak(s).is_ok() {
                    Ok(Value::DateTime(s.to_string()))
                } else {
                    Err(bad(format!("{s:?} is neither a CIM datetime (yyyymmddHHMMSS.mmmmmm+UUU) nor RFC 3339")))
                }
            }
            Scalar::Reference => {
                let s = json.as_str().ok_or_else(|| bad(format!("expected an object path string, got {json}")))?;
                let path = crate::path::ObjectPath::parse(s).map_err(|e| bad(e.to_string()))?;
                Ok(Value::Ref(path.to_string()))
            }
            _ => {
                let (lo, hi) = self.int_range().unwrap_or((0, 0));
                let n: Option<i128> = match json {
                    serde_json::Value::Number(n) => n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)),
                    _ => None,
                };
                match n {
                    Some(n) if (lo..=hi).contains(&n) => Ok(Value::Int(n)),
                    Some(n) => Err(bad(format!("{n} is out of range for {name} ({lo} to {hi})"))),
                    None => Err(bad(format!("expected a whole number ({name}), got {json}"))),
                }
            }
        }
    }
}

/// Whether `s` has CIM's datetime shape `yyyymmddHHMMSS.mmmmmmsUUU`.
fn is_cim_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 25
        && b[..14].iter().all(u8::is_ascii_digit)
        && b[14] == b'.'
        && b[15..21].iter().all(u8::is_ascii_digit)
        && matches!(b[21], b'+' | b'-')
        && b[22..].iter().all(u8::is_ascii_digit)
}

/// A property's type: a scalar or an array of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CimType {
    /// The element type.
    pub scalar: Scalar,
    /// Whether the property holds an array of `scalar`.
    pub array: bool,
}

impl CimType {
    /// Parses `uint32`, `string[]`, `reference`, ...
    ///
    /// # Errors
    /// `Schema` for an unknown type name.
    pub fn parse(s: &str) -> Result<CimType> {
        let (base, array) = match s.strip_suffix("[]") {
            Some(b) => (b, true),
            None => (s, false),
        };
        let scalar = Scalar::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(base))
            .ok_or_else(|| Error::Schema(format!("unknown type {s:?}; types are {}", type_names())))?;
        Ok(CimType { scalar, array })
    }

    /// Checks a JSON value against the type; `null` is a missing value.
    ///
    /// # Errors
    /// `Value` naming the property and what does not fit.
    pub fn check(self, property: &str, json: &serde_json::Value) -> Result<Value> {
        if json.is_null() {
            return Ok(Value::Null);
        }
        if !self.array {
            return self.scalar.check(property, json);
        }
        let items = json.as_array().ok_or_else(|| Error::Value {
            property: property.to_string(),
            message: format!("expected an array of {}, got {json}", self.scalar.name()),
        })?;
        items.iter().map(|v| self.scalar.check(property, v)).collect::<Result<Vec<_>>>().map(Value::Array)
    }
}

fn type_names() -> String {
    Scalar::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for CimType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.scalar.name(), if self.array { "[]" } else { "" })
    }
}

impl Serialize for CimType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CimType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<CimType, D::Error> {
        let s = String::deserialize(d)?;
        CimType::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A typed property value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// Any integer type, range-checked against it.
    Int(i128),
    /// A real.
    Real(f64),
    /// A datetime, as given.
    DateTime(String),
    /// An object path, in canonical form.
    Ref(String),
    /// An array.
    Array(Vec<Value>),
}

impl Value {
    /// The JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Str(s) | Value::DateTime(s) | Value::Ref(s) => serde_json::Value::String(s.clone()),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(n) => match (u64::try_from(*n), i64::try_from(*n)) {
                (Ok(u), _) => u.into(),
                (_, Ok(i)) => i.into(),
                _ => serde_json::Value::Null,
            },
            Value::Real(r) => serde_json::Number::from_f64(*r).map_or(serde_json::Value::Null, Into::into),
            Value::Array(items) => items.iter().map(Value::to_json).collect(),
        }
    }

    /// Compares two values the way a query does: numbers across integer and
    /// real types, text with text (strings, datetimes, references), booleans
    /// only for equality. `None` when they do not compare (or either is
    /// null).
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Real(b)) => (*a as f64).partial_cmp(b),
            (Value::Real(a), Value::Int(b)) => a.partial_cmp(&(*b as f64)),
            (Value::Real(a), Value::Real(b)) => a.partial_cmp(b),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (a, b) => match (a.text(), b.text()) {
                (Some(x), Some(y)) => Some(x.cmp(y)),
                _ => None,
            },
        }
    }

    /// The text of a string, datetime or reference.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::DateTime(s) | Value::Ref(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> CimType {
        CimType::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn types_parse_by_name_and_array_suffix() {
        assert_eq!(t("uint32"), CimType { scalar: Scalar::Uint32, array: false });
        assert_eq!(t("String[]"), CimType { scalar: Scalar::String, array: true });
        assert_eq!(t("reference").to_string(), "reference");
        assert!(CimType::parse("int32").is_err());
    }

    #[test]
    fn values_are_checked_against_their_type() {
        assert_eq!(t("uint8").check("p", &json!(255)), Ok(Value::Int(255)));
        assert!(t("uint8").check("p", &json!(256)).unwrap_err().to_string().contains("out of range"));
        assert!(t("uint8").check("p", &json!(-1)).is_err());
        assert!(t("sint64").check("p", &json!(1.5)).unwrap_err().to_string().contains("whole number"));
        assert_eq!(t("uint64").check("p", &json!(u64::MAX)), Ok(Value::Int(u64::MAX.into())));
        assert_eq!(t("real32").check("p", &json!(1)), Ok(Value::Real(1.0)));
        assert!(t("boolean").check("p", &json!("true")).is_err());
        assert!(t("string").check("Name", &json!(3)).unwrap_err().to_string().contains("property Name"));
        assert!(t("datetime").check("p", &json!("20261127120000.000000+000")).is_ok());
        assert!(t("datetime").check("p", &json!("2026-11-27T12:00:00Z")).is_ok());
        assert!(t("datetime").check("p", &json!("yesterday")).is_err());
        assert_eq!(t("uint16[]").check("p", &json!([1, 2])), Ok(Value::Array(vec![Value::Int(1), Value::Int(2)])));
        assert!(t("uint16[]").check("p", &json!(1)).is_err());
        assert_eq!(t("string").check("p", &json!(null)), Ok(Value::Null));
        assert!(t("reference").check("p", &json!("root/cimv2:CIM_System.Name=\"a\"")).is_ok());
        assert!(t("reference").check("p", &json!("not a path")).is_err());
    }

    #[test]
    fn comparison_is_numeric_across_int_and_real() {
        assert_eq!(Value::Int(2).compare(&Value::Real(2.5)), Some(Ordering::Less));
        assert_eq!(Value::Str("b".into()).compare(&Value::Str("a".into())), Some(Ordering::Greater));
        assert_eq!(Value::Str("1".into()).compare(&Value::Int(1)), None);
        assert_eq!(Value::Null.compare(&Value::Null), None);
    }
}
