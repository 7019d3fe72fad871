//! Two services of the operating system that the daemon's roles and their supervisor share:
//! telling systemd how a process stands, and writing a private file atomically. Below both.

use crate::error::IoContext;
use crate::Result;
use std::path::Path;

/// Tells systemd (Type=notify) about readiness or shutdown; a no-op outside systemd.
pub fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => UnixAddr::from_abstract_name(abstract_name.as_bytes()),
        None => UnixAddr::from_pathname(&path),
    };
    let sent = addr
        .and_then(|a| UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), &a)));
    if let Err(e) = sent {
        tracing::warn!("sd_notify {state} to {path}: {e}");
    }
}

/// Writes a file only root can read, atomically (temp file, fsync, rename, fsync of the dir).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let what = || format!("writing {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .ctx(what)?;
    f.write_all(data).ctx(what)?;
    f.sync_all().ctx(what)?;
    std::fs::rename(&tmp, path).ctx(what)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .ctx(what)?;
    }
    Ok(())
}
