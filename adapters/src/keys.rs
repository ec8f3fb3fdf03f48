//! The site key: an Ed25519 key pair, created at the site's first start
//! and kept in its data folder as `site.key` (the 32-byte secret, hex,
//! readable by its owner only). Its public half travels in the site's
//! announcements; peers that heard it over an authenticated connection pin
//! it (`pepper_router::Registry`), and it signs the site's control requests
//! (`pepper_router::control`).
//!
//! The key is a file beside the store rather than a record in it: records
//! are logged, copied into backups and replicated, and a private key must
//! be none of those. A key file that others may read is refused, as ssh
//! refuses one: the site does not start until its mode is fixed.

use std::io::Write;
use std::path::{Path, PathBuf};

use pepper_router::{SigningKey, VerifyingKey};

/// The key file's name in the data folder.
pub const SITE_KEY_FILE: &str = "site.key";

/// A site's key pair. Its `Debug` shows the public half only.
pub struct SiteKey {
    signing: SigningKey,
}

impl std::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteKey").field("public", &self.public_hex()).finish_non_exhaustive()
    }
}

fn failed(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

impl SiteKey {
    /// A new random key (the operating system's generator).
    pub fn generate() -> SiteKey {
        SiteKey { signing: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    /// The key in `folder`, created if it has none.
    ///
    /// # Errors
    /// The file cannot be read or written, is not a key, or others may
    /// read it.
    pub fn load_or_create(folder: &Path) -> Result<SiteKey, String> {
        let path = folder.join(SITE_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                check_private(&path)?;
                let bytes: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| format!("{} is not a site key: 64 hex digits expected", path.display()))?;
                Ok(SiteKey { signing: SigningKey::from_bytes(&bytes) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SiteKey::generate();
                write_private(&path, &key)?;
                tracing::info!(public_key = %key.public_hex(), path = %path.display(), "created the site key");
                Ok(key)
            }
            Err(e) => Err(failed(&path, "cannot read the site key", e)),
        }
    }

    /// The public key.
    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key, hex, as announced.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public().to_bytes())
    }

    /// The signing half, to sign control requests with.
    pub(crate) fn signing(&self) -> &SigningKey {
        &self.signing
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| failed(path, "cannot read the mode of", e))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the site key {} may be read by others (mode {:o}): chmod 600 it, and replace it if others did",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), String> {
    Ok(())
}

/// Writes the key to a temporary file readable by its owner only, syncs
/// it, and renames it into place, so a crash leaves the whole key or none.
fn write_private(path: &Path, key: &SiteKey) -> Result<(), String> {
    let temporary: PathBuf = path.with_extension("key.new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).map_err(|e| failed(&temporary, "cannot create", e))?;
    let text = format!("{}\n", hex::encode(key.signing.to_bytes()));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| failed(&temporary, "cannot write", e))?;
    std::fs::rename(&temporary, path).map_err(|e| failed(path, "cannot create", e))?;
    if let Some(folder) = path.parent() {
        std::fs::File::open(folder).and_then(|d| d.sync_all()).map_err(|e| failed(folder, "cannot sync", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let first = SiteKey::load_or_create(dir.path()).expect("created");
        let again = SiteKey::load_or_create(dir.path()).expect("read");
        assert_eq!(first.public_hex(), again.public_hex(), "the same key on the next start");
        assert!(!format!("{first:?}").contains(&hex::encode(first.signing.to_bytes())), "Debug hides the secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(SITE_KEY_FILE);
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let refused = SiteKey::load_or_create(dir.path()).expect_err("readable by others");
            assert!(refused.contains("chmod 600"), "{refused}");
        }
        std::fs::write(dir.path().join(SITE_KEY_FILE), "not a key").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(SITE_KEY_FILE);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        assert!(SiteKey::load_or_create(dir.path()).expect_err("garbage").contains("not a site key"));
    }
}
