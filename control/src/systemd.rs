//! Telling systemd (`Type=notify`) how a process stands: the daemon, each of its role
//! containers and their supervisor.

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
