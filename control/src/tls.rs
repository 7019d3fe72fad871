//! Node identity and the TLS configurations two `mover daemon`s use to talk to each other.
//!
//! Trust model: there is no certificate authority. Each daemon generates a self-signed
//! certificate on first start and is known to its peers by the SHA-256 fingerprint of that
//! certificate. When a relationship is created the source connects to the target without a pin
//! and learns the target's fingerprint (trust on first use); the target records the fingerprint
//! of the client certificate the source presented, and after the target operator authorizes the
//! relationship every peer request about it must come from that pinned fingerprint.
//!
//! So the TLS layer here does only two things: the server *requires* a client certificate and
//! checks the handshake signatures made with it (proof of possession of the key), and the client
//! accepts the server's certificate iff its fingerprint equals the pin (any certificate on first
//! contact), again checking the handshake signatures. Names, chains and validity dates are not
//! checked: the fingerprint is the identity. Comparing a client's fingerprint with the
//! relationship's pin is the application's job (see [`peer_fingerprint`]).

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::error::{Error, IoContext, Result};

/// The name in every node certificate, and the server name clients send (certificates are pinned
/// by fingerprint, so the name carries no trust and `target_address` may be an IP).
pub const NODE_NAME: &str = "mover-node";
pub const CERT_FILE: &str = "node.crt";
pub const KEY_FILE: &str = "node.key";
const FP_PREFIX: &str = "sha256:";
/// Daemons speak TLS 1.3 only (docs/api.md): both ends are this software, so there is no older
/// peer to accommodate, and 1.3 encrypts the certificates and has no renegotiation or static
/// RSA key exchange to get wrong.
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// "sha256:" + 64 lowercase hex digits of SHA-256 over the certificate's DER.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut s = String::with_capacity(FP_PREFIX.len() + 64);
        s.push_str(FP_PREFIX);
        for b in digest.as_ref() {
            s.push_str(&format!("{b:02x}"));
        }
        Fingerprint(s)
    }

    /// Accepts "sha256:" followed by 64 hex digits (surrounding whitespace and upper-case digits
    /// are tolerated and normalized, since operators paste these).
    pub fn parse(s: &str) -> Result<Fingerprint> {
        let t = s.trim();
        let hex = t.strip_prefix(FP_PREFIX).ok_or_else(|| {
            Error::Invalid(format!("fingerprint {s:?} must start with {FP_PREFIX:?}"))
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "fingerprint {s:?} must be {FP_PREFIX:?} followed by 64 hex digits"
            )));
        }
        Ok(Fingerprint(format!(
            "{FP_PREFIX}{}",
            hex.to_ascii_lowercase()
        )))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// This node's certificate and key.
pub struct Identity {
    pub cert_der: Vec<u8>,
    key: PrivateKeyDer<'static>,
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `node.crt` / `node.key` (PEM) from `dir`, or generates them (ECDSA P-256, name
    /// "mover-node", valid 1975..4096) and writes them, each atomically, the key with mode 0600.
    /// A half-present pair is an error, not regenerated: the node's identity is pinned by its
    /// peers, and silently replacing it would break every relationship.
    pub fn load_or_create(dir: &Path) -> Result<Identity> {
        let (crt, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let (has_crt, has_key) = (exists(&crt)?, exists(&key)?);
        let id = match (has_crt, has_key) {
            (true, true) => Self::load(&crt, &key)?,
            (false, false) => Self::create(dir)?,
            _ => {
                let (present, missing) = if has_crt { (&crt, &key) } else { (&key, &crt) };
                return Err(Error::Tls(format!(
                    "{} exists but {} does not; refusing to generate a new identity (peers pin this \
                     node's certificate): restore the missing file, or remove both to start over",
                    present.display(),
                    missing.display()
                )));
            }
        };
        // Also proves the key belongs to the certificate.
        id.server_config()?;
        Ok(id)
    }

    /// A certificate and key given as PEM files (the REST API's, when an operator supplies
    /// one for their management network's names).
    pub fn from_files(crt: &Path, key: &Path) -> Result<Identity> {
        let id = Self::load(crt, key)?;
        id.api_server_config()?;
        Ok(id)
    }

    /// Server side of the REST API over TLS 1.3: presents this certificate, asks no client
    /// certificate (API clients authenticate with tokens).
    pub fn api_server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(tls_err("API server config"))?
            .with_no_client_auth()
            .with_single_cert(self.chain(), self.key.clone_key())
            .map_err(tls_err("API server certificate"))?;
        Ok(Arc::new(config))
    }

    fn load(crt: &Path, key: &Path) -> Result<Identity> {
        let cert = CertificateDer::from_pem_file(crt)
            .map_err(|e| Error::Tls(format!("reading certificate {}: {e}", crt.display())))?;
        let mode = fs::metadata(key)
            .ctx(|| format!("inspecting {}", key.display()))?
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "private key {} has mode {:o}; it should be 0600",
                key.display(),
                mode & 0o777
            );
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| Error::Tls(format!("reading private key {}: {e}", key.display())))?;
        Ok(Identity {
            fingerprint: Fingerprint::of_der(&cert),
            cert_der: cert.to_vec(),
            key: key_der,
        })
    }

    /// A new key pair and its self-signed certificate.
    fn generate() -> Result<(rcgen::KeyPair, rcgen::Certificate)> {
        let tls = |e: rcgen::Error| Error::Tls(format!("generating the node certificate: {e}"));
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(tls)?;
        let mut params = rcgen::CertificateParams::new(vec![NODE_NAME.to_string()]).map_err(tls)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, NODE_NAME);
        params.not_before = rcgen::date_time_ymd(1975, 1, 1);
        params.not_after = rcgen::date_time_ymd(4096, 1, 1);
        let cert = params.self_signed(&key_pair).map_err(tls)?;
        Ok((key_pair, cert))
    }

    fn from_generated(key_pair: &rcgen::KeyPair, cert: &rcgen::Certificate) -> Result<Identity> {
        let key = PrivateKeyDer::try_from(key_pair.serialize_der())
            .map_err(|e| Error::Tls(format!("encoding the node key: {e}")))?;
        Ok(Identity {
            fingerprint: Fingerprint::of_der(cert.der()),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// An identity kept only in memory, never written: for nodes that live inside one process
    /// (the simulation), which no peer pins across runs.
    pub fn ephemeral() -> Result<Identity> {
        let (key_pair, cert) = Self::generate()?;
        Self::from_generated(&key_pair, &cert)
    }

    fn create(dir: &Path) -> Result<Identity> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx(|| format!("creating {}", dir.display()))?;
        let (key_pair, cert) = Self::generate()?;
        // Key first: a crash between the two renames leaves a key without a certificate, which
        // load_or_create reports instead of silently regenerating.
        write_atomic(
            &dir.join(KEY_FILE),
            key_pair.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(&dir.join(CERT_FILE), cert.pem().as_bytes(), 0o644)?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .ctx(|| format!("syncing directory {}", dir.display()))?;
        Self::from_generated(&key_pair, &cert)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }

    /// Server side: presents this node's certificate and requires a client certificate, whose
    /// handshake signatures are verified; which fingerprint is acceptable is decided above TLS.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = provider();
        let verifier = AnyClientCert {
            algs: provider.signature_verification_algorithms,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(tls_err("server config"))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.chain(), self.key.clone_key())
            .map_err(tls_err("server certificate"))?;
        config.alpn_protocols = peer_protocols();
        Ok(Arc::new(config))
    }

    /// Client side: presents this node's certificate; accepts the server's certificate iff its
    /// fingerprint equals `pin`, or any certificate when `pin` is `None` (first contact).
    pub fn client_config(&self, pin: Option<&Fingerprint>) -> Result<Arc<rustls::ClientConfig>> {
        let provider = provider();
        let verifier = PinnedServerCert {
            pin: pin.cloned(),
            algs: provider.signature_verification_algorithms,
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(tls_err("client config"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain(), self.key.clone_key())
            .map_err(tls_err("client certificate"))?;
        config.alpn_protocols = peer_protocols();
        Ok(Arc::new(config))
    }
}

/// The versions of the daemon-to-daemon protocol (peer messages) this release speaks, newest
/// first, as TLS ALPN names: the server picks the newest both speak in the handshake, and a
/// pair with none in common fails it (`no_application_protocol`). A peer that offers none is
/// taken as speaking version 1 (the releases before negotiation).
pub const PEER_PROTOCOLS: &[&[u8]] = &[b"mover-peer/1"];

fn peer_protocols() -> Vec<Vec<u8>> {
    PEER_PROTOCOLS.iter().map(|p| p.to_vec()).collect()
}

/// The peer protocol version a handshake settled on (1 when the peer offered none).
pub fn peer_protocol(alpn: Option<&[u8]>) -> u16 {
    alpn.and_then(|p| p.strip_prefix(b"mover-peer/"))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(1)
}

/// The label of the exporter both ends of a peer connection derive a data-plane session's
/// secret with (RFC 8446 section 7.5).
const SESSION_SECRET_LABEL: &[u8] = b"EXPORTER-mover-data-plane-session-v1";

/// The data-plane session secret both ends of this finished TLS handshake derive for the
/// session named `ticket` (sent inside the TLS session): every connection and ticket gives a
/// different one, and nobody else can compute it.
pub fn session_secret<D>(
    conn: &rustls::ConnectionCommon<D>,
    ticket: &[u8],
) -> Result<mover::SessionSecret> {
    let out = conn
        .export_keying_material(
            [0u8; mover::wire::seal::SECRET_LEN],
            SESSION_SECRET_LABEL,
            Some(ticket),
        )
        .map_err(|e| Error::Tls(format!("deriving the session secret: {e}")))?;
    Ok(mover::SessionSecret::from_bytes(out))
}

/// The fingerprint of the certificate the peer presented in a finished handshake.
pub fn peer_fingerprint(conn: &rustls::CommonState) -> Option<Fingerprint> {
    conn.peer_certificates()?
        .first()
        .map(|c| Fingerprint::of_der(c))
}

/// The server name clients send (fixed; see [`NODE_NAME`]).
pub fn server_name() -> Result<ServerName<'static>> {
    ServerName::try_from(NODE_NAME).map_err(|e| Error::Tls(format!("server name {NODE_NAME}: {e}")))
}

/// Test doubles: a client that presents no certificate (`impostor` = None), or one that presents
/// `cert_of`'s certificate but signs with `key_of`'s key, i.e. copied a pinned certificate
/// without its private key; and a server doing the latter.
#[cfg(test)]
pub(crate) mod doubles {
    use super::*;
    type Impostor<'a> = (&'a Identity, &'a Identity);

    fn impostor_key((cert_of, key_of): Impostor) -> Arc<rustls::sign::SingleCertAndKey> {
        let key = provider()
            .key_provider
            .load_private_key(key_of.key.clone_key())
            .unwrap();
        Arc::new(rustls::sign::CertifiedKey::new(cert_of.chain(), key).into())
    }

    pub(crate) fn client_config(impostor: Option<Impostor>) -> Arc<rustls::ClientConfig> {
        let provider = provider();
        let verifier = PinnedServerCert {
            pin: None,
            algs: provider.signature_verification_algorithms,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        Arc::new(match impostor {
            None => builder.with_no_client_auth(),
            Some(i) => builder.with_client_cert_resolver(impostor_key(i)),
        })
    }

    /// A peer that speaks only TLS 1.2, with `id`'s certificate: as client and as server.
    pub(crate) fn tls12_client_config(id: &Identity) -> Arc<rustls::ClientConfig> {
        let provider = provider();
        let verifier = PinnedServerCert {
            pin: None,
            algs: provider.signature_verification_algorithms,
        };
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_auth_cert(id.chain(), id.key.clone_key())
                .unwrap(),
        )
    }

    pub(crate) fn tls12_server_config(id: &Identity) -> Arc<rustls::ServerConfig> {
        let provider = provider();
        let verifier = AnyClientCert {
            algs: provider.signature_verification_algorithms,
        };
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_client_cert_verifier(Arc::new(verifier))
                .with_single_cert(id.chain(), id.key.clone_key())
                .unwrap(),
        )
    }

    pub(crate) fn server_config(impostor: Impostor) -> Arc<rustls::ServerConfig> {
        let provider = provider();
        let verifier = AnyClientCert {
            algs: provider.signature_verification_algorithms,
        };
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(impostor_key(impostor));
        Arc::new(config)
    }
}

/// Why the client refused the server's certificate: a different node answers than the pinned one.
/// Carried inside the rustls error so the caller can report the fingerprint actually seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    pub seen: Fingerprint,
    pub pinned: Fingerprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate fingerprint {} does not match the pinned {} (a different node answers at this address)",
            self.seen, self.pinned
        )
    }
}

impl std::error::Error for PinMismatch {}

impl PinMismatch {
    /// Finds a `PinMismatch` inside a rustls error, as returned by a failed client handshake.
    pub fn in_rustls(e: &rustls::Error) -> Option<&PinMismatch> {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<PinMismatch>()
            }
            _ => None,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &'static str) -> impl Fn(rustls::Error) -> Error {
    move |e| Error::Tls(format!("{what}: {e}"))
}

fn exists(p: &Path) -> Result<bool> {
    p.try_exists().ctx(|| format!("checking {}", p.display()))
}

/// Writes `data` to a temporary file beside `path` with `mode`, fsyncs it and renames it over
/// `path`, so a crash leaves either no file or the whole file.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` is filtered by the umask and ignored for a pre-existing temp file: set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().ctx(|| format!("writing {}", path.display()))
}

/// The handshake-signature half of both verifiers: real verification with the ring provider's
/// algorithms (`self.algs`), so a peer must hold the private key of the certificate it presents.
macro_rules! handshake_signatures_verified {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

#[derive(Debug)]
struct PinnedServerCert {
    pin: Option<Fingerprint>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of_der(end_entity);
        match &self.pin {
            Some(pinned) if *pinned != seen => {
                let why = PinMismatch {
                    seen,
                    pinned: pinned.clone(),
                };
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(why)),
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    handshake_signatures_verified!();
}

/// Requires a client certificate, accepts any, and verifies the handshake signatures made with it.
#[derive(Debug)]
struct AnyClientCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures_verified!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("tls");
        let first = Identity::load_or_create(&node).unwrap();
        let mode = fs::metadata(node.join(KEY_FILE)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!node.join("node.key.tmp").exists() && !node.join("node.crt.tmp").exists());
        let again = Identity::load_or_create(&node).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.cert_der, again.cert_der);
        assert_eq!(first.fingerprint, Fingerprint::of_der(&first.cert_der));
        let other = Identity::load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(first.fingerprint, other.fingerprint);
    }

    #[test]
    fn half_present_identity_is_an_error_not_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let err = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node.key exists but") && err.contains("node.crt does not"),
            "{err}"
        );
        assert!(!dir.path().join(CERT_FILE).exists());
        assert!(
            dir.path().join(KEY_FILE).exists(),
            "the key of {} was touched",
            id.fingerprint
        );
    }

    #[test]
    fn key_that_does_not_belong_to_the_certificate_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        Identity::load_or_create(a.path()).unwrap();
        Identity::load_or_create(b.path()).unwrap();
        fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).unwrap();
        let err = Identity::load_or_create(a.path()).unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
    }

    #[test]
    fn fingerprint_format_is_validated_and_normalized() {
        let fp = Fingerprint::of_der(b"abc");
        assert_eq!(
            fp.0,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Fingerprint::parse(&fp.0).unwrap(), fp);
        assert_eq!(
            Fingerprint::parse(&format!(
                " {} ",
                fp.0.to_uppercase().replace("SHA256", "sha256")
            ))
            .unwrap(),
            fp
        );
        for bad in [
            "",
            "sha256:",
            "ba7816bf",
            "md5:ba78",
            &fp.0[..70],
            &format!("{}0", fp.0),
            &fp.0.replace('b', "g"),
        ] {
            assert!(
                matches!(Fingerprint::parse(bad), Err(Error::Invalid(_))),
                "{bad:?} accepted"
            );
        }
        assert_eq!(serde_json::to_string(&fp).unwrap(), format!("\"{}\"", fp.0));
        assert_eq!(fp.to_string(), fp.0);
    }
}
