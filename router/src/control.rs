//! Signed control requests: "run this deployment step on that site",
//! said by a principal through a site, provably.
//!
//! A [`ControlRequest`] names the principal it acts for, the site that
//! signs it, the site it is for (the audience), an action and the channel
//! it acts on, a nonce, when it was issued and when it expires. The
//! signing site checked the principal's grant before it signed; it signs
//! the request's exact JSON bytes with its Ed25519 site key ([`sign`]),
//! and the receiver checks the bytes it got, so no canonical form is
//! needed. A [`Verifier`] takes a request only if every check passes, in
//! this order, each with its own [`ControlRefusal`]:
//!
//! 1. it is small enough and well formed;
//! 2. the signing site's key is pinned here, and the signature is that
//!    key's over the bytes (under a domain-separation prefix, so no other
//!    signed thing of pepper's reads as a control request);
//! 3. the audience is this site;
//! 4. the action and channel lie within the scope the receiving endpoint
//!    serves (a deployment endpoint takes `deploy` under its subtree only);
//! 5. the validity window: issued no later than now plus
//!    [`CLOCK_SKEW_MAX`], not expired, at most [`CONTROL_TTL_MAX`] long,
//!    and issued more than [`CLOCK_SKEW_MAX`] after this verifier
//!    started: the last run may have taken a request issued up to its
//!    end plus the skew, and its nonces are gone. So for that long after a
//!    start, every request is refused as stale and is signed again;
//! 6. the nonce is new. Nonces are remembered until their request
//!    expires; at most [`NONCES_MAX`] at once, past which requests are
//!    refused ([`ControlRefusal::Busy`]) rather than a nonce forgotten.
//!
//! So a request cannot be replayed (nonce, and the start-time rule across
//! restarts), redirected to another site (audience), stretched to another
//! action or subtree (scope), kept for later (expiry) or forged without
//! the signing site's key. The verifier is a plain state machine:
//! [`Verifier::verify`] and [`Verifier::tick`] take the time as input.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{Channel, Pattern};

/// Longest validity of a control request.
pub const CONTROL_TTL_MAX: Duration = Duration::from_secs(300);

/// How far ahead of the receiver's clock a request may be issued.
pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(30);

/// Most nonces remembered at once (each until its request expires).
pub const NONCES_MAX: usize = 100_000;

/// Largest signed payload, in bytes.
pub const CONTROL_BYTES_MAX: usize = 64 * 1024;

/// Longest nonce, in bytes.
pub const NONCE_BYTES_MAX: usize = 64;

/// Shortest nonce, in bytes: 128 bits in hex.
pub const NONCE_BYTES_MIN: usize = 32;

/// What every signature of a control request covers before the payload.
const DOMAIN: &[u8] = b"pepper control request v1\0";

/// A control request, as signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// The principal it acts for, as the signing site authenticated it.
    pub principal: String,
    /// The site that signed it.
    pub site: String,
    /// The site it is for.
    pub audience: String,
    /// The action (`deploy`, `automate`).
    pub action: String,
    /// The channel it acts on.
    pub channel: String,
    /// What to do, the action's own document.
    #[serde(default)]
    pub body: serde_json::Value,
    /// Unique per request: hex, [`NONCE_BYTES_MIN`] to [`NONCE_BYTES_MAX`] bytes.
    pub nonce: String,
    /// When it was issued, microseconds since the Unix epoch.
    pub issued_us: u64,
    /// When it stops being valid, microseconds since the Unix epoch.
    pub expires_us: u64,
}

/// A control request on the wire: its JSON text and the signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedControl {
    /// The request's JSON, exactly as signed.
    pub payload: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
}

/// Why a control request was refused: an outcome of verifying, not a
/// failure of the crate (that is [`crate::Error`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlRefusal {
    /// Too large, not JSON of a request, or a field out of its rules.
    Malformed(String),
    /// No key is pinned for the signing site.
    UnknownSite(String),
    /// The signature is not the signing site's over these bytes.
    BadSignature(String),
    /// The request is for another site.
    WrongAudience(String),
    /// The action or channel is outside what the endpoint serves.
    OutOfScope(String),
    /// Issued too far in the future, expired, too long, or before this
    /// site started.
    Stale(String),
    /// The nonce was seen before.
    Replayed(String),
    /// Too many nonces are remembered; try again later.
    Busy,
}

impl std::fmt::Display for ControlRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlRefusal::Malformed(why) => write!(f, "malformed control request: {why}"),
            ControlRefusal::UnknownSite(site) => write!(
                f,
                "no key is pinned for site {site:?}: it has not announced itself over an authenticated connection"
            ),
            ControlRefusal::BadSignature(site) => write!(f, "the signature is not {site:?}'s"),
            ControlRefusal::WrongAudience(site) => write!(f, "the request is for site {site:?}, not this one"),
            ControlRefusal::OutOfScope(why) | ControlRefusal::Stale(why) => f.write_str(why),
            ControlRefusal::Replayed(nonce) => write!(f, "nonce {nonce} was already used"),
            ControlRefusal::Busy => write!(f, "{NONCES_MAX} control requests are pending expiry; try again later"),
        }
    }
}

impl ControlRefusal {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ControlRefusal::Malformed(_) => "malformed",
            ControlRefusal::UnknownSite(_) => "unknown_site",
            ControlRefusal::BadSignature(_) => "bad_signature",
            ControlRefusal::WrongAudience(_) => "wrong_audience",
            ControlRefusal::OutOfScope(_) => "out_of_scope",
            ControlRefusal::Stale(_) => "stale",
            ControlRefusal::Replayed(_) => "replayed",
            ControlRefusal::Busy => "busy",
        }
    }
}

/// What an endpoint takes: one action, on channels within `subtree` (a
/// lease pattern such as `/example.com/deploy/`, which covers its whole subtree).
#[derive(Clone, Debug)]
pub struct Scope {
    /// The action.
    pub action: String,
    /// Where.
    pub subtree: Pattern,
}

/// Signs `request` with `key`.
///
/// # Errors
/// The request does not serialize (it always does; the error is carried
/// rather than unwrapped).
pub fn sign(request: &ControlRequest, key: &SigningKey) -> Result<SignedControl, ControlRefusal> {
    let payload = serde_json::to_string(request).map_err(|e| ControlRefusal::Malformed(e.to_string()))?;
    let signature = key.sign(&signed_bytes(&payload));
    Ok(SignedControl { payload, signature: hex::encode(signature.to_bytes()) })
}

fn signed_bytes(payload: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + payload.len());
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

/// Checks control requests addressed to one site; remembers nonces.
#[derive(Debug)]
pub struct Verifier {
    site: String,
    started_us: u64,
    /// (expires_us, nonce), to forget each when its request expires.
    by_expiry: BTreeSet<(u64, String)>,
    seen: HashSet<String>,
}

impl Verifier {
    /// The verifier of site `site`, started at `started_us`: requests
    /// issued before then plus [`CLOCK_SKEW_MAX`] are refused, since this
    /// run cannot know whether the last one took them.
    pub fn new(site: &str, started_us: u64) -> Verifier {
        Verifier { site: site.to_string(), started_us, by_expiry: BTreeSet::new(), seen: HashSet::new() }
    }

    /// How many nonces are remembered.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Checks `signed` at `now_us` against `scope`, with `key_of` giving
    /// each site's pinned public key; on success, remembers its nonce and
    /// returns the request.
    ///
    /// # Errors
    /// The first check that fails, in the order of the module's list.
    pub fn verify(
        &mut self,
        signed: &SignedControl,
        key_of: impl Fn(&str) -> Option<VerifyingKey>,
        scope: &Scope,
        now_us: u64,
    ) -> Result<ControlRequest, ControlRefusal> {
        if signed.payload.len() > CONTROL_BYTES_MAX {
            return Err(ControlRefusal::Malformed(format!("over {CONTROL_BYTES_MAX} bytes")));
        }
        let request: ControlRequest =
            serde_json::from_str(&signed.payload).map_err(|e| ControlRefusal::Malformed(e.to_string()))?;
        crate::check_site(&request.site).map_err(ControlRefusal::Malformed)?;
        let nonce_ok = (NONCE_BYTES_MIN..=NONCE_BYTES_MAX).contains(&request.nonce.len())
            && request.nonce.bytes().all(|b| b.is_ascii_hexdigit());
        if !nonce_ok {
            return Err(ControlRefusal::Malformed(format!(
                "the nonce must be {NONCE_BYTES_MIN} to {NONCE_BYTES_MAX} hex digits"
            )));
        }
        let key = key_of(&request.site).ok_or_else(|| ControlRefusal::UnknownSite(request.site.clone()))?;
        let signature = hex::decode(&signed.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| ControlRefusal::BadSignature(request.site.clone()))?;
        key.verify_strict(&signed_bytes(&signed.payload), &signature)
            .map_err(|_| ControlRefusal::BadSignature(request.site.clone()))?;
        if request.audience != self.site {
            return Err(ControlRefusal::WrongAudience(request.audience));
        }
        if request.action != scope.action {
            return Err(ControlRefusal::OutOfScope(format!(
                "action {:?} is not {:?}, the one this endpoint takes",
                request.action, scope.action
            )));
        }
        let channel = Channel::parse(&request.channel).map_err(|e| ControlRefusal::OutOfScope(e.to_string()))?;
        if !scope.subtree.matches(&channel) {
            return Err(ControlRefusal::OutOfScope(format!(
                "channel {} is outside {}",
                request.channel,
                scope.subtree.as_str()
            )));
        }
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if request.issued_us > now_us.saturating_add(us(CLOCK_SKEW_MAX)) {
            return Err(ControlRefusal::Stale("issued in the future: the clocks disagree".into()));
        }
        if request.expires_us <= now_us {
            return Err(ControlRefusal::Stale("expired".into()));
        }
        if request.expires_us.saturating_sub(request.issued_us) > us(CONTROL_TTL_MAX) {
            return Err(ControlRefusal::Stale(format!("valid for longer than {CONTROL_TTL_MAX:?}")));
        }
        // The last run may have taken any request issued up to its last
        // moment plus the skew a signer's clock may be ahead: this run
        // takes only what was issued after that.
        if request.issued_us <= self.started_us.saturating_add(us(CLOCK_SKEW_MAX)) {
            return Err(ControlRefusal::Stale(format!(
                "issued before this site started, or within {CLOCK_SKEW_MAX:?} after: sign it again"
            )));
        }
        if self.seen.contains(&request.nonce) {
            return Err(ControlRefusal::Replayed(request.nonce));
        }
        self.tick(now_us);
        if self.seen.len() >= NONCES_MAX {
            return Err(ControlRefusal::Busy);
        }
        self.seen.insert(request.nonce.clone());
        self.by_expiry.insert((request.expires_us, request.nonce.clone()));
        Ok(request)
    }

    /// Forgets the nonces of requests expired at `now_us`: an expired
    /// request is refused by its expiry already.
    pub fn tick(&mut self, now_us: u64) {
        while let Some((expires, _)) = self.by_expiry.first() {
            if *expires > now_us {
                break;
            }
            if let Some((_, nonce)) = self.by_expiry.pop_first() {
                self.seen.remove(&nonce);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000_000;
    const STARTED: u64 = NOW - 60_000_000;
    /// The first issue time a verifier started at STARTED takes.
    const FIRST_TAKEN: u64 = STARTED + 30_000_001;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn request() -> ControlRequest {
        ControlRequest {
            principal: "ops".into(),
            site: "a".into(),
            audience: "b".into(),
            action: "deploy".into(),
            channel: "/example.com/deploy/web/".into(),
            body: serde_json::json!({"step": "install"}),
            nonce: "00112233445566778899aabbccddeeff".into(),
            issued_us: NOW - 1_000_000,
            expires_us: NOW + 60_000_000,
        }
    }

    fn scope() -> Scope {
        Scope { action: "deploy".into(), subtree: Pattern::parse("/example.com/deploy/").expect("pattern") }
    }

    /// Site `a`'s key is pinned, nothing else.
    fn keys(name: &str) -> Option<VerifyingKey> {
        (name == "a").then(|| key(1).verifying_key())
    }

    fn verify(signed: &SignedControl) -> Result<ControlRequest, ControlRefusal> {
        Verifier::new("b", STARTED).verify(signed, keys, &scope(), NOW)
    }

    fn signed(edit: impl FnOnce(&mut ControlRequest)) -> SignedControl {
        let mut r = request();
        edit(&mut r);
        sign(&r, &key(1)).expect("sign")
    }

    #[test]
    fn a_good_request_passes_once() {
        let good = signed(|_| {});
        let mut verifier = Verifier::new("b", STARTED);
        assert_eq!(verifier.verify(&good, keys, &scope(), NOW), Ok(request()));
        assert_eq!(
            verifier.verify(&good, keys, &scope(), NOW + 1),
            Err(ControlRefusal::Replayed(request().nonce)),
            "the same request again is a replay"
        );
    }

    #[test]
    fn each_way_a_request_can_be_wrong_is_refused_with_its_reason() {
        let reason = |r: Result<ControlRequest, ControlRefusal>| r.map_err(|e| e.reason());
        // Tampered: the payload changed after signing.
        let mut tampered = signed(|_| {});
        tampered.payload = tampered.payload.replace("install", "uninstall");
        assert_eq!(reason(verify(&tampered)), Err("bad_signature"));
        // Signed by another key than the one pinned for its site.
        let forged = sign(&request(), &key(2)).expect("sign");
        assert_eq!(reason(verify(&forged)), Err("bad_signature"));
        // A signature that is not one.
        let mut garbage = signed(|_| {});
        garbage.signature = "zz".into();
        assert_eq!(reason(verify(&garbage)), Err("bad_signature"));
        // Signed by a site whose key is not pinned.
        let unknown = sign(&ControlRequest { site: "c".into(), ..request() }, &key(3)).expect("sign");
        assert_eq!(reason(verify(&unknown)), Err("unknown_site"));
        // For another site.
        assert_eq!(reason(verify(&signed(|r| r.audience = "c".into()))), Err("wrong_audience"));
        // Another action, or outside the subtree, or not a channel.
        assert_eq!(reason(verify(&signed(|r| r.action = "automate".into()))), Err("out_of_scope"));
        assert_eq!(reason(verify(&signed(|r| r.channel = "/example.com/other/".into()))), Err("out_of_scope"));
        assert_eq!(reason(verify(&signed(|r| r.channel = "no-slash".into()))), Err("out_of_scope"));
        // Expired, issued in the future, too long, before this run started.
        assert_eq!(reason(verify(&signed(|r| r.expires_us = NOW))), Err("stale"));
        assert_eq!(reason(verify(&signed(|r| r.issued_us = NOW + 31_000_000))), Err("stale"));
        assert_eq!(reason(verify(&signed(|r| r.expires_us = r.issued_us + 301_000_000))), Err("stale"));
        assert_eq!(reason(verify(&signed(|r| r.issued_us = STARTED - 1))), Err("stale"));
        // Issued within the skew after this run started: the last run may
        // have taken it (a signer's clock up to 30 s ahead).
        assert_eq!(reason(verify(&signed(|r| r.issued_us = FIRST_TAKEN - 1))), Err("stale"));
        assert!(verify(&signed(|r| r.issued_us = FIRST_TAKEN)).is_ok());
        // A signature that is valid but not canonical (S not reduced) is
        // refused by the strict check.
        let mut malleable = signed(|_| {});
        let mut sig = hex::decode(&malleable.signature).expect("hex");
        let order: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (s, l) in sig[32..].iter_mut().zip(order) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = (sum & 0xff) as u8;
            carry = sum >> 8;
        }
        malleable.signature = hex::encode(sig);
        assert_eq!(reason(verify(&malleable)), Err("bad_signature"));
        // Malformed: not JSON, an unknown field, a short nonce, too large.
        let not_json = SignedControl { payload: "{".into(), signature: String::new() };
        assert_eq!(reason(verify(&not_json)), Err("malformed"));
        let extra = SignedControl {
            payload: signed(|_| {}).payload.replacen('{', "{\"admin\":true,", 1),
            signature: signed(|_| {}).signature,
        };
        assert_eq!(reason(verify(&extra)), Err("malformed"));
        assert_eq!(reason(verify(&signed(|r| r.nonce = "abc".into()))), Err("malformed"));
        assert_eq!(reason(verify(&signed(|r| r.nonce = "x".repeat(32)))), Err("malformed"));
        let big = signed(|r| r.body = serde_json::json!("x".repeat(CONTROL_BYTES_MAX)));
        assert_eq!(reason(verify(&big)), Err("malformed"));
    }

    #[test]
    fn nonces_are_forgotten_when_their_requests_expire_and_bounded() {
        let mut verifier = Verifier::new("b", STARTED);
        let first = signed(|_| {});
        verifier.verify(&first, keys, &scope(), NOW).expect("first");
        assert_eq!(verifier.remembered(), 1);
        verifier.tick(request().expires_us);
        assert_eq!(verifier.remembered(), 0, "forgotten once expired");
        // Replaying it then is refused by its expiry instead.
        let later = request().expires_us + 1;
        assert!(matches!(verifier.verify(&first, keys, &scope(), later), Err(ControlRefusal::Stale(_))));

        let mut full = Verifier::new("b", STARTED);
        for i in 0..NONCES_MAX {
            full.seen.insert(format!("{i:032x}"));
            full.by_expiry.insert((NOW + 60_000_000, format!("{i:032x}")));
        }
        assert_eq!(full.verify(&signed(|_| {}), keys, &scope(), NOW), Err(ControlRefusal::Busy));
    }
}
