//! `mover demo`: two processes on loopback replicate a generated tree; the result is verified by
//! hashing both trees (metadata and every byte of data), then an incremental rerun shows that
//! only changed files travel.

use anyhow::{bail, Context, Result};
use mover::gen::{generate, TreeSpec};
use mover::tree::hash::{hash_dir, HashOptions};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Starts `mover receive --once --json` and returns it with its address. The stdout reader is
/// returned too: dropping it would close the pipe the receiver still writes its report to.
/// Certificate arguments: the receiver's (its identity, the sender it accepts) and the
/// sender's (its identity, the receiver it trusts).
struct Keys {
    receive: Vec<std::ffi::OsString>,
    send: Vec<std::ffi::OsString>,
}

/// A certificate for each side under `base`, each pinning the other, as two nodes would.
fn keys(base: &Path) -> Result<Keys> {
    let (r, s) = (base.join("receiver-identity"), base.join("sender-identity"));
    let (fr, fs) = (
        crate::keys::load_identity(&r)?.fingerprint,
        crate::keys::load_identity(&s)?.fingerprint,
    );
    let args = |dir: &Path, pin: String| {
        vec![
            "--identity".into(),
            dir.as_os_str().to_owned(),
            "--peer-fingerprint".into(),
            pin.into(),
        ]
    };
    Ok(Keys {
        receive: args(&r, fs.0),
        send: args(&s, fr.0),
    })
}

fn spawn_receiver(
    exe: &Path,
    dst: &Path,
    keys: &Keys,
) -> Result<(Child, String, BufReader<ChildStdout>)> {
    let mut child = Command::new(exe)
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--json",
            "--root",
        ])
        .arg(dst)
        .args(&keys.receive)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting receiver process")?;
    let out = child.stdout.take().context("receiver stdout")?;
    let mut line = String::new();
    let mut reader = BufReader::new(out);
    reader
        .read_line(&mut line)
        .context("reading receiver's listening line")?;
    let v: Value =
        serde_json::from_str(&line).with_context(|| format!("receiver said {line:?}"))?;
    let addr = v["listening"]
        .as_str()
        .context("no listening address")?
        .to_string();
    Ok((child, addr, reader))
}

fn replicate(exe: &Path, src: &Path, dst: &Path, state: &Path, keys: &Keys) -> Result<Value> {
    let (mut recv, addr, mut reader) = spawn_receiver(exe, dst, keys)?;
    let out = Command::new(exe)
        .arg("send")
        .arg(src)
        .args(["--to", &addr, "--json", "--state"])
        .arg(state)
        .args(&keys.send)
        .output()
        .context("running sender")?;
    let mut report = String::new();
    reader
        .read_to_string(&mut report)
        .context("reading receiver report")?;
    let status = recv.wait().context("waiting for receiver")?;
    if !out.status.success() || !status.success() {
        bail!(
            "replication failed: sender {}: {}; receiver {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            status
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing sender JSON")
}

fn verify(src: &Path, dst: &Path) -> Result<String> {
    let opts = HashOptions {
        owners: rustix::process::geteuid().is_root(),
    };
    let (ts, cs, n) = hash_dir(src, opts, true)?;
    let (td, cd, _) = hash_dir(dst, opts, true)?;
    if ts != td || cs != cd {
        bail!("trees differ: source {ts:032x}/{cs:032x?}, destination {td:032x}/{cd:032x?}");
    }
    Ok(format!("{n} entries, tree {ts:032x}"))
}

pub fn run(dir: Option<PathBuf>, files: usize) -> Result<()> {
    let tmp;
    let base = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new()
                .prefix("mover-demo")
                .tempdir()
                .context("creating temp dir")?;
            tmp.path().to_path_buf()
        }
    };
    let (src, dst, state) = (
        base.join("source"),
        base.join("target"),
        base.join("sender-state"),
    );
    std::fs::create_dir_all(&dst).context("creating target dir")?;
    let exe = std::env::current_exe().context("locating the mover binary")?;
    let spec = TreeSpec {
        seed: 42,
        small_files: files,
        small_max: 16 * 1024,
        large_files: 4,
        large_size: 32 << 20,
        fanout: 60,
        extras: true,
    };
    println!("generating {} files under {}", files + 9, src.display());
    generate(&src, &spec)?;

    let keys = keys(&base)?;
    println!(
        "initial sync: mover receive + mover send over 127.0.0.1, encrypted, certificates pinned"
    );
    let r = replicate(&exe, &src, &dst, &state, &keys)?;
    println!(
        "  sent {} files, {} data bytes, {} wire bytes in {:.2}s; recovery point {}",
        r["files"],
        r["bytes"],
        r["wire_bytes"],
        r["seconds"].as_f64().unwrap_or(0.0),
        r["recovery_point"]
    );
    println!(
        "  verified by the receiver; independent check: {}",
        verify(&src, &dst)?
    );

    // Change a few blocks, append, create, move a directory: only the changes travel.
    for i in 0..3 {
        let p = src.join(format!("large{i}.bin"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .context("opening for an in-place write")?;
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 4096], 4096 * (1 + 97 * i as u64))
            .context("rewriting a block")?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .context("appending")?;
        f.write_all(b"appended by the demo").context("appending")?;
    }
    std::fs::write(src.join("new-file.txt"), b"created after the first sync")
        .context("writing new file")?;
    std::fs::rename(src.join("dir000"), src.join("dir000-moved")).context("moving a directory")?;
    println!("incremental: one 4 KiB block rewritten and a line appended in 3 large files, 1 file created, 1 directory moved");
    let r = replicate(&exe, &src, &dst, &state, &keys)?;
    println!(
        "  sent {} files ({} as block deltas, {} unchanged skipped unread), {} data bytes, {} wire bytes in {:.2}s; recovery point {}",
        r["files"], r["files_delta"], r["files_unchanged"], r["bytes"], r["wire_bytes"], r["seconds"].as_f64().unwrap_or(0.0), r["recovery_point"]
    );
    println!("  verified: {}", verify(&src, &dst)?);
    println!("demo OK");
    Ok(())
}
