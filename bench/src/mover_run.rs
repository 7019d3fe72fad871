//! One mover job: `mover receive --once --json` and `mover send --json` as separate
//! processes, both measured with wait4.

use crate::proc::{wait_usage, Usage};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

pub struct MoverRun {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub wire_bytes: u64,
    pub files: u64,
    /// The sender's JSON report (incremental, files_delta, bytes, threads, encrypted, ...).
    pub report: Value,
    /// The receiver's session report (renamed, files_delta, ...; Null if unparsable).
    pub receiver: Value,
}

/// How the receiver and the sender protect their sessions: each pins the other's certificate
/// (the default: frames are sealed), or both run `--insecure-plaintext`.
#[derive(Clone)]
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

/// A running `mover receive --once --json` on 127.0.0.1.
pub struct Receiver {
    child: Child,
    out: BufReader<ChildStdout>,
    /// Where it listens, HOST:PORT.
    pub addr: String,
}

impl Receiver {
    /// Starts a receiver into `dst` and waits until it says where it listens.
    pub fn start(mover: &Path, dst: &Path, keys: &Keys) -> Result<Receiver> {
        let mut c = Command::new(mover);
        c.args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--json",
            "--root",
        ])
        .arg(dst)
        .args(&keys.receive);
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", mover.display()))?;
        let mut out = BufReader::new(child.stdout.take().context("receiver stdout")?);
        let mut first = String::new();
        out.read_line(&mut first)?;
        let addr = serde_json::from_str::<Value>(&first)
            .ok()
            .and_then(|v| v["listening"].as_str().map(str::to_string));
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("receiver did not report its address: {first:?}");
        };
        Ok(Receiver { child, out, addr })
    }

    /// Sends SIGKILL without waiting (`finish` reaps it).
    pub fn sigkill(&mut self) -> Result<()> {
        self.child.kill().context("killing the receiver")
    }

    /// Waits for the receiver to exit: its usage, its last JSON line (Null if none) and its
    /// stderr.
    pub fn finish(mut self) -> Result<(Usage, Value, String)> {
        let mut rest = String::new();
        self.out.read_to_string(&mut rest)?;
        let usage = wait_usage(&mut self.child)?;
        let mut err = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .map(|mut s| s.read_to_string(&mut err));
        let last = rest
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        Ok((usage, last, format!("{err}{rest}")))
    }

    /// SIGKILLs the receiver and reaps it.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill().context("killing the receiver")?;
        self.child.wait()?;
        Ok(())
    }
}

/// Starts `mover send SRC --to ADDR --json EXTRA KEYS` with its output piped.
pub fn spawn_send(
    mover: &Path,
    src: &Path,
    addr: &str,
    send_extra: &[&OsStr],
    keys: &Keys,
) -> Result<Child> {
    Command::new(mover)
        .arg("send")
        .arg(src)
        .args(["--to", addr, "--json"])
        .args(send_extra)
        .args(&keys.send)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mover send")
}

/// Waits for a sender from `spawn_send`: its usage, its stdout and its stderr.
pub fn finish_send(send: &mut Child) -> Result<(Usage, String, String)> {
    let mut out = String::new();
    send.stdout
        .take()
        .context("sender stdout")?
        .read_to_string(&mut out)?;
    let usage = wait_usage(send)?;
    let mut err = String::new();
    let _ = send.stderr.take().map(|mut s| s.read_to_string(&mut err));
    Ok((usage, out, err))
}

/// One `mover receive --once` + `mover send` run, with extra `mover send` arguments (every
/// caller passes `--threads N`; the incremental benchmark adds `--state DIR`). Timed from the
/// sender's start (the receiver already listens) to its exit.
pub fn run_with(
    mover: &Path,
    src: &Path,
    dst: &Path,
    send_extra: &[&OsStr],
    keys: &Keys,
) -> Result<MoverRun> {
    let recv = Receiver::start(mover, dst, keys)?;
    let start = Instant::now();
    let mut send = spawn_send(mover, src, &recv.addr, send_extra, keys)?;
    let (su, out, e1) = finish_send(&mut send)?;
    let seconds = start.elapsed().as_secs_f64();
    if !su.exit_ok {
        // A sender that failed before its session began leaves a --once receiver waiting.
        let _ = recv.kill();
        bail!("mover send failed: {e1}");
    }
    let (ru, receiver, e2) = recv.finish()?;
    if !su.exit_ok || !ru.exit_ok {
        bail!("mover failed: sender: {e1} receiver: {e2}");
    }
    let v: Value = serde_json::from_str(&out).with_context(|| format!("sender JSON {out:?}"))?;
    Ok(MoverRun {
        seconds,
        cpu_seconds: su.cpu_seconds + ru.cpu_seconds,
        wire_bytes: v["wire_bytes"].as_u64().context("wire_bytes")?,
        files: v["files"].as_u64().context("files")?,
        report: v,
        receiver,
    })
}
