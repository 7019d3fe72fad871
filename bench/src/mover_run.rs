//! One mover job: `mover receive --once --json` and `mover send --json` as separate
//! processes, both measured with wait4.

use crate::proc::wait_usage;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct MoverRun {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub wire_bytes: u64,
    pub files: u64,
    /// The sender's JSON report (incremental, files_delta, bytes, ...).
    pub report: Value,
    /// The receiver's session report (renamed, files_delta, ...; Null if unparsable).
    pub receiver: Value,
}

/// How the receiver and the sender protect their sessions: each pins the other's certificate
/// (the default: frames are sealed), or both run `--insecure-plaintext`.
pub struct Keys {
    pub receive: Vec<OsString>,
    pub send: Vec<OsString>,
}

impl Keys {
    /// Certificates for both sides under `dir` (made with `mover identity` if missing).
    pub fn sealed(mover: &Path, dir: &Path) -> Result<Keys> {
        let fingerprint = |id: &Path| -> Result<String> {
            let out = Command::new(mover)
                .arg("identity")
                .arg("--identity")
                .arg(id)
                .output()
                .context("running mover identity")?;
            anyhow::ensure!(out.status.success(), "mover identity failed");
            Ok(String::from_utf8(out.stdout)?.trim().to_string())
        };
        let (r, s) = (dir.join("receiver"), dir.join("sender"));
        let (fr, fs) = (fingerprint(&r)?, fingerprint(&s)?);
        let args = |id: &Path, pin: String| -> Vec<OsString> {
            vec![
                "--identity".into(),
                id.as_os_str().to_owned(),
                "--peer-fingerprint".into(),
                pin.into(),
            ]
        };
        Ok(Keys {
            receive: args(&r, fs),
            send: args(&s, fr),
        })
    }

    /// Both sides in clear (the cost of encryption is the difference).
    pub fn plaintext() -> Keys {
        let flag = vec![OsString::from("--insecure-plaintext")];
        Keys {
            receive: flag.clone(),
            send: flag,
        }
    }
}

/// One `mover receive --once` + `mover send` run, with extra `mover send` arguments (the
/// incremental benchmark adds `--state DIR`, hot runs `--no-direct`).
pub fn run_with(
    mover: &Path,
    src: &Path,
    dst: &Path,
    send_extra: &[&OsStr],
    keys: &Keys,
) -> Result<MoverRun> {
    let mut recv = Command::new(mover);
    recv.args([
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--once",
        "--json",
        "--root",
    ])
    .arg(dst)
    .args(&keys.receive);
    let mut recv = recv
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", mover.display()))?;
    let mut lines = BufReader::new(recv.stdout.take().context("receiver stdout")?);
    let mut first = String::new();
    lines.read_line(&mut first)?;
    let addr = serde_json::from_str::<Value>(&first)
        .ok()
        .and_then(|v| v["listening"].as_str().map(str::to_string))
        .with_context(|| format!("receiver did not report its address: {first:?}"))?;
    let start = Instant::now();
    let mut send = Command::new(mover)
        .arg("send")
        .arg(src)
        .args(["--to", &addr, "--json"])
        .args(send_extra)
        .args(&keys.send)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mover send")?;
    let mut out = String::new();
    send.stdout
        .take()
        .context("sender stdout")?
        .read_to_string(&mut out)?;
    let su = wait_usage(&mut send)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut rest = String::new();
    lines.read_to_string(&mut rest)?;
    let ru = wait_usage(&mut recv)?;
    if !su.exit_ok || !ru.exit_ok {
        let mut e1 = String::new();
        let mut e2 = String::new();
        let _ = send.stderr.take().map(|mut s| s.read_to_string(&mut e1));
        let _ = recv.stderr.take().map(|mut s| s.read_to_string(&mut e2));
        bail!("mover failed: sender: {e1} receiver: {e2} {rest}");
    }
    let v: Value = serde_json::from_str(&out).with_context(|| format!("sender JSON {out:?}"))?;
    Ok(MoverRun {
        seconds,
        cpu_seconds: su.cpu_seconds + ru.cpu_seconds,
        wire_bytes: v["wire_bytes"].as_u64().context("wire_bytes")?,
        files: v["files"].as_u64().context("files")?,
        report: v,
        receiver: rest
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null),
    })
}
