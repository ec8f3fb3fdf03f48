//! Site keys as they are announced: the public half of a site's Ed25519
//! key, 64 hex digits. Shared by the peer registry (which pins them) and
//! control requests (which are verified with them). And the signature of
//! a batch of forwarded records: each origin sends its own records to each
//! peer directly, so the batch's signer is its origin, and a receiver that
//! pinned the origin's key takes records under that origin's name only
//! with its signature ([`batch_signature`], [`verify_batch`]).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// What a batch signature covers before the batch's own fields.
const BATCH_DOMAIN: &[u8] = b"pepper record batch v1\0";

/// The bytes a batch signature covers: the domain, the origin, the
/// receiving site, the gap marker's header (empty for records) and the
/// SHA-256 of the body, each field ended by a zero byte (site names hold
/// none, `check_site`), so a batch cannot be replayed to another site or
/// turned into a gap.
fn batch_message(origin: &str, audience: &str, gap: &str, body_sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(BATCH_DOMAIN.len() + origin.len() + audience.len() + gap.len() + 35);
    m.extend_from_slice(BATCH_DOMAIN);
    for field in [origin, audience, gap] {
        m.extend_from_slice(field.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(body_sha256);
    m
}

/// The signature (hex) of a batch from `origin` to `audience`, with the
/// gap header `gap` ("" for records) and a body whose SHA-256 is
/// `body_sha256`, by the origin's key.
pub fn batch_signature(key: &SigningKey, origin: &str, audience: &str, gap: &str, body_sha256: &[u8; 32]) -> String {
    hex::encode(key.sign(&batch_message(origin, audience, gap, body_sha256)).to_bytes())
}

/// Checks a batch's signature (hex) against the origin's pinned key.
///
/// # Errors
/// The signature is missing, not hex of 64 bytes, or not the key's over
/// this batch.
pub fn verify_batch(
    key: &VerifyingKey,
    signature: Option<&str>,
    origin: &str,
    audience: &str,
    gap: &str,
    body_sha256: &[u8; 32],
) -> Result<(), String> {
    let signature = signature.ok_or_else(|| format!("records from {origin} must be signed by its site key"))?;
    let bytes = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| "the batch signature is not 128 hex digits".to_string())?;
    key.verify_strict(&batch_message(origin, audience, gap, body_sha256), &Signature::from_bytes(&bytes))
        .map_err(|_| format!("the batch signature is not {origin}'s site key's"))
}

/// A public key from its hex form.
///
/// # Errors
/// Not 64 hex digits, not a valid Ed25519 point, or a weak one.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{hex_key:?} is not a public key: 64 hex digits expected"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|e| format!("{hex_key:?} is not an Ed25519 public key: {e}"))?;
    // A weak (small-order) key verifies signatures anyone can make.
    if key.is_weak() {
        return Err(format!("{hex_key:?} is a weak Ed25519 key"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_signature_covers_origin_audience_gap_and_body() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let public = key.verifying_key();
        let body = [9u8; 32];
        let sig = batch_signature(&key, "a", "b", "", &body);
        assert!(verify_batch(&public, Some(&sig), "a", "b", "", &body).is_ok());
        for (origin, audience, gap, digest) in
            [("c", "b", "", body), ("a", "c", "", body), ("a", "b", "1-9", body), ("a", "b", "", [8u8; 32])]
        {
            let refused = verify_batch(&public, Some(&sig), origin, audience, gap, &digest);
            assert!(refused.is_err(), "{origin} {audience} {gap:?}");
        }
        // Field boundaries are part of what is signed.
        let shifted = batch_signature(&key, "ab", "", "", &body);
        assert!(verify_batch(&public, Some(&shifted), "a", "b", "", &body).is_err());
        assert!(verify_batch(&public, None, "a", "b", "", &body).expect_err("unsigned").contains("must be signed"));
        assert!(verify_batch(&public, Some("zz"), "a", "b", "", &body).is_err());
        let other = SigningKey::from_bytes(&[4; 32]);
        let forged = batch_signature(&other, "a", "b", "", &body);
        assert!(verify_batch(&public, Some(&forged), "a", "b", "", &body).is_err());
    }

    #[test]
    fn keys_parse_from_hex_and_weak_or_bad_ones_are_refused() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(parse_public_key(&hex::encode(key.to_bytes())), Ok(key));
        assert!(parse_public_key("abc").is_err());
        assert!(parse_public_key(&"zz".repeat(32)).is_err());
        // The identity point, of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_public_key(&hex::encode(identity)).expect_err("weak").contains("weak"));
    }
}
