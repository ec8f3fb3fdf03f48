//! TLS for the API and between sites, with rustls (and its `ring`
//! provider: no C toolchain beyond what RocksDB needs).
//!
//! A site given a certificate and key ([`TlsFiles`]) serves HTTPS only. With
//! a peer CA as well, it asks every client for a certificate: clients
//! without one (people, the CLI, the agent) still connect and authenticate
//! with their token, but the site-to-site endpoints then require a
//! certificate signed by the peer CA **and valid for the sending site's
//! name**, besides the peer secret. So a peer can announce itself and
//! forward records only under its own name ([`PeerCertificate::names`]); a
//! stolen peer secret alone is not enough. The site presents its own
//! certificate to its peers as its client certificate, and reaches each
//! peer with a client of its own ([`Tls::client_for_peer`]) that completes
//! a handshake only with a server the peer CA signed for that peer's name.
//! Without a peer CA, peers' servers are trusted by the system's roots.
//!
//! The rejected alternative, a TLS-terminating proxy in front of each site,
//! leaves the peer's identity at the proxy: the site could not bind a
//! certificate to the site name a request claims.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where a site's TLS material is.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The site's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA (PEM, one or more certificates) that signs the sites'
    /// certificates. With it, peers must present a certificate it signed,
    /// valid for their site name; and peers' servers are verified by it.
    pub peer_ca: Option<PathBuf>,
}

/// A site's loaded TLS material.
#[derive(Clone)]
pub struct Tls {
    /// The server side: the certificate, and the peer CA's client verifier.
    pub(crate) server: Arc<rustls::ServerConfig>,
    /// The peer CA's certificates, DER, trusted by the peer client.
    pub(crate) peer_roots: Vec<CertificateDer<'static>>,
    /// Whether peers must present a certificate (a peer CA is configured).
    pub(crate) peer_certificates_required: bool,
    /// The site's own certificate chain and key, for its own client.
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("peer_roots", &self.peer_roots.len())
            .field("peer_certificates_required", &self.peer_certificates_required)
            .finish_non_exhaustive()
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Refuses a key file anyone on the machine may read (a group, such as
/// `ssl-cert`, may).
#[cfg(unix)]
fn not_world_readable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the mode of the key {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "the key {} may be read by anyone on this machine (mode {:o}): chmod 600 (or 640) it, and replace \
             it if others did",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn not_world_readable(_: &Path) -> Result<(), String> {
    Ok(())
}

/// The certificates in PEM `pem`, refusing none.
fn certificates(what: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("the {what} {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The crypto provider every TLS config here uses: `ring`, as reqwest's
/// own TLS does. rustls marks it deprecated because it has no
/// post-quantum key exchange; the provider that has one (aws-lc-rs) needs
/// CMake and another large C build. docs/security.md names the gap.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Loads and checks the files: the key must match the certificate.
    ///
    /// # Errors
    /// An unreadable file, PEM without a certificate or key, a key that
    /// does not match, or a peer CA that is not a usable trust anchor;
    /// each message names the file.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        let cert_pem = read("certificate", &files.cert)?;
        let key_pem = read("key", &files.key)?;
        not_world_readable(&files.key)?;
        let chain = certificates("certificate", &files.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("the key {} holds no usable private key: {e}", files.key.display()))?;
        let (verifier, peer_roots) = match &files.peer_ca {
            Some(path) => {
                let pem = read("peer CA", path)?;
                let roots = certificates("peer CA", path, &pem)?;
                let mut store = rustls::RootCertStore::empty();
                for root in &roots {
                    store.add(root.clone()).map_err(|e| format!("the peer CA {}: {e}", path.display()))?;
                }
                // Clients without a certificate connect too; the peer
                // endpoints are the ones that require one.
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("the peer CA {}: {e}", path.display()))?;
                (Some(verifier), roots)
            }
            None => (None, Vec::new()),
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_single_cert(chain.clone(), key.clone_key()).map_err(|e| {
            format!("the key {} does not fit the certificate {}: {e}", files.key.display(), files.cert.display())
        })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            server: Arc::new(server),
            peer_certificates_required: files.peer_ca.is_some(),
            peer_roots,
            chain,
            key: Arc::new(key),
        })
    }

    /// The acceptor for the API's connections.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}

/// The certificate a client presented on its connection, verified by the
/// peer CA. The server puts it on each of the connection's requests.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub(crate) Arc<CertificateDer<'static>>);

impl PeerCertificate {
    /// Whether the certificate speaks for site `site` ([`names_site`]).
    pub(crate) fn names(&self, site: &str) -> bool {
        names_site(self.0.as_ref(), site)
    }
}

/// Whether the certificate `der` (already verified against the peer CA)
/// names site `site`: one of its DNS subject alternative names is the site
/// name, byte for byte. Site names are identities, not host names: no case
/// folding, no trailing dot, no wildcard (a `*.example.org` certificate
/// would otherwise speak for every site under it), no IP address.
pub(crate) fn names_site(der: &[u8], site: &str) -> bool {
    let der = CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else { return false };
    let names_it = cert.valid_dns_names().any(|name| name == site && !name.contains('*'));
    names_it
}

/// What a peer request proved about its sender: the certificate it
/// presented, when the site requires one. Set by the peer endpoints'
/// middleware; each endpoint checks the site name it acts for.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerProof(pub(crate) Option<PeerCertificate>);

impl PeerProof {
    /// Refuses `site` unless no certificate is required or the one
    /// presented is valid for it.
    pub(crate) fn vouches_for(&self, site: &str) -> Result<(), crate::error::ApiError> {
        match &self.0 {
            None => Ok(()),
            Some(cert) if cert.names(site) => Ok(()),
            Some(_) => Err(crate::error::ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "peer_certificate_mismatch",
                format!("the client certificate is not valid for site {site:?}: a peer speaks only for itself"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_a_site_only_byte_for_byte() {
        let mut params =
            rcgen::CertificateParams::new(vec!["lab-1".to_string(), "*.example.org".to_string(), "LAB-2".to_string()])
                .expect("params");
        params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der().to_vec();
        assert!(names_site(&der, "lab-1"));
        assert!(names_site(&der, "LAB-2"));
        for not_named in ["LAB-1", "lab-1.", "lab-2", "x.example.org", "*.example.org", "127.0.0.1", "lab", ""] {
            assert!(!names_site(&der, not_named), "{not_named:?}");
        }
        assert!(!names_site(b"not a certificate", "lab-1"));
    }
}

/// The server certificate a client of this site takes.
#[derive(Debug)]
enum Expected {
    /// A peer's: the chain to the peer CA and the url's host, the usual
    /// way, and then that it names the peer's site, so a peer that put its
    /// own url under another site's name fails the handshake before a byte
    /// of the request is sent.
    Peer { chain: Arc<rustls::client::WebPkiServerVerifier>, site: String },
    /// This site's own, exactly: for its own leg of a federated query and
    /// its agent, over loopback. Its certificate names the site's public
    /// host, not the loopback address, so the usual name check cannot
    /// pass; comparing the whole certificate is stricter.
    Exactly(CertificateDer<'static>),
}

/// Checks a server's certificate as [`Expected`] says, and its handshake
/// signatures with the provider's algorithms.
#[derive(Debug)]
struct ServerCheck {
    expected: Expected,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match &self.expected {
            Expected::Peer { chain, site } => {
                let verified = chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
                if names_site(end_entity.as_ref(), site) {
                    Ok(verified)
                } else {
                    Err(rustls::Error::General(format!("the server's certificate does not name site {site:?}")))
                }
            }
            Expected::Exactly(leaf) if end_entity.as_ref() == leaf.as_ref() => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Expected::Exactly(_) => {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl Tls {
    /// A client TLS configuration that takes the server `expected`, and
    /// presents this site's certificate when `present` is set.
    fn client_config(&self, expected: Expected, present: bool) -> Result<rustls::ClientConfig, String> {
        let check = Arc::new(ServerCheck { expected, provider: provider() });
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(check);
        let mut config = if present {
            config
                .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
                .map_err(|e| format!("the site's certificate as a client identity: {e}"))?
        } else {
            config.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A client for peer `site`, where peers need certificates: it trusts
    /// only the peer CA, takes only a server certified for `site`, and
    /// presents this site's certificate.
    ///
    /// # Errors
    /// The TLS configuration cannot be built.
    pub(crate) fn client_for_peer(&self, site: &str) -> Result<reqwest::Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        for root in &self.peer_roots {
            roots.add(root.clone()).map_err(|e| format!("the peer CA: {e}"))?;
        }
        let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("the peer CA: {e}"))?;
        let config = self.client_config(Expected::Peer { chain, site: site.to_string() }, true)?;
        client(config).map_err(|e| format!("cannot build the client of peer {site}: {e}"))
    }

    /// A client for this site's own loopback address (see
    /// [`Tls::own_client_config`]).
    ///
    /// # Errors
    /// The TLS configuration cannot be built.
    pub(crate) fn own_client(&self) -> Result<reqwest::Client, String> {
        client(self.own_client_config()?).map_err(|e| format!("cannot build the site's own client: {e}"))
    }

    /// The TLS of a client of this site's own address (its agent, its own
    /// leg of a federated query): it trusts only this site's certificate,
    /// and presents it where peers must.
    ///
    /// # Errors
    /// The TLS configuration cannot be built.
    pub fn own_client_config(&self) -> Result<rustls::ClientConfig, String> {
        let Some(leaf) = self.chain.first().cloned() else { return Err("TLS: the site has no certificate".into()) };
        self.client_config(Expected::Exactly(leaf), self.peer_certificates_required)
    }
}

/// A pooled HTTP client with TLS configuration `config`.
fn client(config: rustls::ClientConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().use_preconfigured_tls(config).pool_max_idle_per_host(8).build()
}
