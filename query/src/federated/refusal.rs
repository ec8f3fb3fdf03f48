//! A federated query refused, and why: the error a caller answers instead of
//! merged items, with the manifest once sites were asked. Parsing refuses
//! (a bad scope) and concluding refuses (too few answers), so both use it.

use serde_json::Value;

/// Why a federated query is refused, and so its HTTP status and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCode {
    /// The query itself is wrong (400, `invalid_query`).
    InvalidQuery,
    /// No site recording the subtree could answer (503, `no_recorder`).
    NoRecorder,
    /// Fewer sites answered than `partial=deny` requires (503,
    /// `partial_answer`).
    PartialAnswer,
}

/// A federated query refused: the caller's answer is an error, with the
/// manifest once sites were asked.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// Why.
    pub code: RefusalCode,
    /// The error message.
    pub message: String,
    /// The manifest, to put in the error as `manifest`.
    pub manifest: Option<Value>,
}

impl Refusal {
    pub(crate) fn new(code: RefusalCode, message: String) -> Refusal {
        Refusal { code, message, manifest: None }
    }

    pub(crate) fn with(code: RefusalCode, message: String, manifest: &Value) -> Refusal {
        Refusal { code, message, manifest: Some(manifest.clone()) }
    }
}
