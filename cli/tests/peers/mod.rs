//! Certificates for tests that run `mover receive` and `mover send` as processes: each side
//! gets its own identity directory and pins the other's fingerprint, as an operator would.

use assert_cmd::cargo::cargo_bin;
use std::ffi::OsString;
use std::path::Path;

pub struct Peers {
    /// Arguments for `mover receive`: its identity, and the sender it accepts.
    pub receive: Vec<OsString>,
    /// Arguments for `mover send`: its identity, and the receiver it trusts.
    pub send: Vec<OsString>,
}

fn fingerprint(dir: &Path) -> String {
    let out = std::process::Command::new(cargo_bin("mover"))
        .arg("identity")
        .arg("--identity")
        .arg(dir)
        .output()
        .expect("running mover identity");
    assert!(out.status.success(), "mover identity failed");
    String::from_utf8(out.stdout)
        .expect("fingerprint is text")
        .trim()
        .to_string()
}

/// Identities for a receiver and a sender under `dir`, each pinning the other.
pub fn peers(dir: &Path) -> Peers {
    let (r, s) = (dir.join("receiver-identity"), dir.join("sender-identity"));
    let (fr, fs) = (fingerprint(&r), fingerprint(&s));
    let args = |id: &Path, pin: String| -> Vec<OsString> {
        vec![
            "--identity".into(),
            id.as_os_str().to_owned(),
            "--peer-fingerprint".into(),
            pin.into(),
        ]
    };
    Peers {
        receive: args(&r, fs),
        send: args(&s, fr),
    }
}
