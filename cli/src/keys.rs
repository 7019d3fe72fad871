//! How the standalone `mover send` and `mover receive` protect a session: by default each
//! session's frames are sealed with a secret agreed over mutual TLS between pinned
//! certificates (control::standalone); `--insecure-plaintext` on both sides sends in clear.

use anyhow::{bail, Context, Result};
use clap::Args;
use control::tls::{Fingerprint, Identity};
use mover::wire::message::ErrorCode;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where `--identity` defaults to: the daemon's data directory, so a node has one certificate.
pub const DEFAULT_IDENTITY: &str = "/var/lib/mover";

#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// Directory with this node's certificate and key (node.crt, node.key; created if
    /// missing). `mover identity` prints its fingerprint for the peer to pin.
    #[arg(long, env = "MOVER_IDENTITY", default_value = DEFAULT_IDENTITY)]
    pub identity: PathBuf,
    /// The peer's certificate fingerprint ("sha256:..."): the receiver's, on `send`; a sender
    /// allowed to connect, on `receive` (repeatable).
    #[arg(long = "peer-fingerprint")]
    pub peer_fingerprints: Vec<String>,
    /// The peer's certificate as a PEM file, instead of its fingerprint (repeatable).
    #[arg(long = "peer-cert")]
    pub peer_certs: Vec<PathBuf>,
    /// Send or accept sessions in clear (checksummed, not encrypted or authenticated), for a
    /// trusted network only. Both sides must be given it.
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// What protects this command's sessions.
pub enum Protection {
    Plaintext,
    Sealed {
        identity: Identity,
        pins: Vec<Fingerprint>,
    },
}

impl PeerArgs {
    pub fn protection(&self) -> Result<Protection> {
        let mut pins = Vec::new();
        for f in &self.peer_fingerprints {
            pins.push(Fingerprint::parse(f)?);
        }
        for p in &self.peer_certs {
            pins.push(cert_fingerprint(p)?);
        }
        if self.insecure_plaintext {
            if !pins.is_empty() {
                bail!("--insecure-plaintext takes no peer certificate: sessions in clear are not authenticated");
            }
            return Ok(Protection::Plaintext);
        }
        if pins.is_empty() {
            bail!(
                "no peer to trust: give the peer's certificate with --peer-fingerprint (the peer \
                 runs `mover identity` to print it) or --peer-cert, or run both sides with \
                 --insecure-plaintext on a trusted network"
            );
        }
        let identity = load_identity(&self.identity)?;
        Ok(Protection::Sealed { identity, pins })
    }
}

/// This node's identity in `dir`, created if missing (the directory too, mode 0700).
pub fn load_identity(dir: &Path) -> Result<Identity> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(Identity::load_or_create(dir)?)
}

fn cert_fingerprint(path: &Path) -> Result<Fingerprint> {
    Ok(control::standalone::pem_fingerprint(path)?)
}

/// A fresh session secret from the receiver at `to`, for one session; errors in the data
/// plane's terms, so the sender's retry rules apply (an unreachable receiver is retried, a
/// refusal or a certificate that does not match the pin is not).
pub fn ask_secret(
    to: SocketAddr,
    identity: &Identity,
    pin: &Fingerprint,
) -> mover::Result<mover::SessionSecret> {
    control::standalone::ask_secret(to, identity, pin).map_err(|e| match e {
        control::Error::Peer { ref message, .. } if message.starts_with("connecting") => {
            mover::Error::Io {
                context: "asking the receiver for a session key".into(),
                source: std::io::Error::other(e.to_string()),
            }
        }
        e => mover::Error::Refused {
            code: ErrorCode::Refused,
            message: format!("session key exchange: {e}"),
        },
    })
}
