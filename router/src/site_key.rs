//! Site keys as they are announced: the public half of a site's Ed25519
//! key, 64 hex digits. Shared by the peer registry (which pins them) and
//! control requests (which are verified with them).

use ed25519_dalek::VerifyingKey;

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
