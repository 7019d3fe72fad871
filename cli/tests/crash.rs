//! Crash safety with real processes: a job is SIGKILLed (receiver or sender) at a seeded random
//! moment, then either resumed or reverted. The target must then be exactly the source's new
//! state (resume) or exactly the previous recovery point (revert); never anything else.

mod peers;

use assert_cmd::cargo::cargo_bin;
use mover::churn::{churn, ChurnSpec};
use mover::gen::{generate, Rng, TreeSpec};
use mover::tree::hash::{hash_dir, HashOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ITERATIONS: u64 = 20;

type Hash = (u128, Option<u128>);

fn hash(p: &Path) -> Hash {
    let (t, c, _) = hash_dir(
        p,
        HashOptions {
            owners: rustix::process::geteuid().is_root(),
        },
        true,
    )
    .unwrap();
    (t, c)
}

/// The certificates every receiver and sender of this test uses (made once).
fn keys() -> &'static peers::Peers {
    static KEYS: std::sync::OnceLock<(tempfile::TempDir, peers::Peers)> =
        std::sync::OnceLock::new();
    &KEYS
        .get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            let p = peers::peers(d.path());
            (d, p)
        })
        .1
}

fn receiver(root: &Path) -> (Child, String) {
    receiver_with(root, &[])
}

fn receiver_with(root: &Path, extra: &[&str]) -> (Child, String) {
    let mut c = Command::new(cargo_bin("mover"))
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--json",
            "--root",
        ])
        .arg(root)
        .args(extra)
        .args(&keys().receive)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("receiver said {line:?}"));
    (c, v["listening"].as_str().unwrap().to_string())
}

fn sender(src: &Path, addr: &str, state: &Path) -> Child {
    Command::new(cargo_bin("mover"))
        .arg("send")
        .arg(src)
        .args([
            "--to",
            addr,
            "--json",
            "--retries",
            "1",
            "--threads",
            "2",
            "--state",
        ])
        .arg(state)
        .args(&keys().send)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// One complete job; returns the sender's JSON report.
fn job(src: &Path, dst: &Path, state: &Path) -> serde_json::Value {
    let (mut r, addr) = receiver(dst);
    let out = sender(src, &addr, state).wait_with_output().unwrap();
    let rs = r.wait().unwrap();
    assert!(
        out.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rs.success(), "receiver exited {rs}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kill(c: &mut Child) {
    // SAFETY: kill(2) on a child we spawned and have not reaped: the pid is still ours.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn sigkill_at_a_random_moment_then_resume_or_revert() {
    let (mut resumed_wire, mut reference_wire, mut reverts, mut resumes) = (0u64, 0u64, 0, 0);
    for seed in 1..=ITERATIONS {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, state) = (
            t.path().join("src"),
            t.path().join("dst"),
            t.path().join("state"),
        );
        std::fs::create_dir(&dst).unwrap();
        // No gen extras: its deeper-than-PATH_MAX path defeats `cp -a` for the reference copy
        // (churn still makes symlinks, hard links, xattrs and type changes).
        generate(
            &src,
            &TreeSpec {
                seed,
                small_files: 120,
                large_files: 3,
                large_size: 2 << 20,
                fanout: 6,
                extras: false,
                ..Default::default()
            },
        )
        .unwrap();
        job(&src, &dst, &state);
        let before = hash(&dst);
        assert_eq!(before, hash(&src));

        churn(
            &src,
            &ChurnSpec {
                seed,
                ops: 40,
                ..Default::default()
            },
        )
        .unwrap();
        let mut rng = Rng(seed);
        let mut data = vec![0u8; 3 << 20];
        rng.fill(&mut data);
        std::fs::write(src.join(format!("new-{seed}.bin")), &data).unwrap();
        let after = hash(&src);

        // The same job uninterrupted on copies of target and state: what a resume competes with.
        let (rdst, rstate) = (t.path().join("ref-dst"), t.path().join("ref-state"));
        copy_tree(&dst, &rdst);
        copy_tree(&state, &rstate);
        let t0 = Instant::now();
        let reference = job(&src, &rdst, &rstate);
        let took = t0.elapsed();

        let (mut r, addr) = receiver(&dst);
        let mut s = sender(&src, &addr, &state);
        let delay =
            Duration::from_micros(rng.next_u64() % (took.as_micros() as u64 * 12 / 10).max(1));
        std::thread::sleep(delay);
        let kill_receiver = seed % 2 == 0;
        if kill_receiver {
            kill(&mut r);
        } else {
            kill(&mut s);
        }
        // The survivor fails on its own (peer gone) within moments; a receiver whose sender died
        // before its session began (during the key exchange) rightly waits for the next one.
        // Bound the wait, then make sure.
        let deadline = Instant::now() + Duration::from_secs(8);
        for c in [&mut r, &mut s] {
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if c.try_wait().unwrap().is_none() {
                kill(c);
            }
            c.wait().unwrap();
        }

        let what = format!(
            "seed {seed}: killed {} after {delay:?} of a {took:?} job",
            if kill_receiver { "receiver" } else { "sender" }
        );
        if (seed / 2) % 2 == 0 {
            let out = Command::new(cargo_bin("mover"))
                .args(["receive", "--revert", "--json", "--root"])
                .arg(&dst)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{what}: revert failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let now = hash(&dst);
            eprintln!("{what}: revert {}", v["reverted"]);
            if v["reverted"] == true {
                assert_eq!(
                    now, before,
                    "{what}: revert must restore the previous recovery point"
                );
            } else {
                // Killed before the job touched the target, or after it committed.
                assert!(
                    now == before || now == after,
                    "{what}: target is neither recovery point"
                );
            }
            reverts += 1;
            job(&src, &dst, &state);
        } else {
            let rep = job(&src, &dst, &state);
            eprintln!(
                "{what}: resumed with {} wire bytes, uninterrupted {}",
                rep["wire_bytes"], reference["wire_bytes"]
            );
            resumed_wire += rep["wire_bytes"].as_u64().unwrap();
            reference_wire += reference["wire_bytes"].as_u64().unwrap();
            resumes += 1;
        }
        assert_eq!(
            hash(&dst),
            after,
            "{what}: target must equal the source after the next job"
        );
    }
    assert!(
        reverts >= 5 && resumes >= 5,
        "both outcomes exercised: {reverts} reverts, {resumes} resumes"
    );
    assert!(
        resumed_wire < reference_wire,
        "resumed jobs put {resumed_wire} bytes on the wire, the same jobs uninterrupted {reference_wire}"
    );
}

/// Bytes allocated under `dir` (what the receiver has written of sparse, full-size files).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// The issue-11 resume case at a small size: SIGKILL of the receiver when 30-40% of an initial
/// sync of two large files is on disk. The rerun sends at most 70% of the data (what the killed
/// session flushed and logged is not sent again), and the target equals the source.
#[test]
fn resumes_inside_files_after_the_receiver_is_killed_mid_file() {
    const FILE: usize = 24 << 20;
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    let mut rng = Rng(11);
    for name in ["a.bin", "b.bin"] {
        let mut data = vec![0u8; FILE];
        rng.fill(&mut data);
        std::fs::write(src.join(name), &data).unwrap();
    }
    let total = 2 * FILE as u64;
    let receiver_with_checkpoints = |root: &Path| receiver_with(root, &["--checkpoint-mib", "1"]);
    let send = |addr: &str, bwlimit: &str| {
        Command::new(cargo_bin("mover"))
            .arg("send")
            .arg(&src)
            .args(["--to", addr, "--json", "--retries", "1", "--threads", "2"])
            .args(["--bwlimit", bwlimit])
            .args(&keys().send)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // 16 MiB/s: the 48 MiB take three seconds, so "30-40% on disk" is a wide window to hit.
    let (mut r, addr) = receiver_with_checkpoints(&dst);
    let s = send(&addr, "16");
    let t0 = Instant::now();
    while allocated(&dst) < total * 35 / 100 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the transfer never reached 35%"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(&mut r);
    let on_disk = allocated(&dst);
    r.wait().unwrap();
    let out = s.wait_with_output().unwrap();
    assert!(!out.status.success(), "the sender lost its receiver");
    assert!(
        on_disk <= total * 45 / 100,
        "killed late: {on_disk} of {total} bytes were on disk"
    );

    let (mut r, addr) = receiver_with_checkpoints(&dst);
    let out = send(&addr, "100000").wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rerun: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(r.wait().unwrap().success());
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = rep["bytes"].as_u64().unwrap();
    eprintln!("killed with {on_disk} of {total} bytes on disk; the rerun sent {sent}");
    assert!(rep["resumed"] == true, "{rep}");
    assert!(
        sent <= total * 70 / 100,
        "the rerun sent {sent} of {total} bytes: more than 70%"
    );
    assert_eq!(hash(&dst), hash(&src), "the target equals the source");
}

/// Blocks of 1 MiB of `dst` equal to `want`'s.
fn same_mib(dst: &Path, want: &[u8]) -> usize {
    let got = std::fs::read(dst).unwrap_or_default();
    got.chunks(1 << 20)
        .zip(want.chunks(1 << 20))
        .filter(|(a, b)| a == b)
        .count()
}

/// The same for a file updated in place from a block delta: killed when a third of the
/// changed blocks landed, a rerun sends at most 70% of the delta and the target equals the
/// source; the same kill followed by a revert gives back the previous version exactly (the
/// pre-images the killed session saved are all it needs).
#[test]
fn resumes_inside_a_delta_file_and_reverts_exactly_after_the_receiver_is_killed() {
    const FILE: usize = 24 << 20;
    const CHANGED: usize = 16 << 20;
    for revert in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, state) = (
            t.path().join("src"),
            t.path().join("dst"),
            t.path().join("state"),
        );
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        let mut rng = Rng(12);
        let mut data = vec![0u8; FILE];
        rng.fill(&mut data);
        std::fs::write(src.join("big.bin"), &data).unwrap();
        job(&src, &dst, &state);
        let before = hash(&dst);
        // Rewrite the first 16 MiB: the next job is a 16 MiB delta.
        rng.fill(&mut data[..CHANGED]);
        std::fs::write(src.join("big.bin"), &data).unwrap();

        let (mut r, addr) = receiver_with(&dst, &["--checkpoint-mib", "1"]);
        let s = Command::new(cargo_bin("mover"))
            .arg("send")
            .arg(&src)
            .args(["--to", &addr, "--json", "--retries", "1", "--threads", "2"])
            .args(["--bwlimit", "6", "--state"])
            .arg(&state)
            .args(&keys().send)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while same_mib(&dst.join("big.bin"), &data[..CHANGED]) < (CHANGED >> 20) / 3 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the delta never got a third in"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut r);
        r.wait().unwrap();
        let out = s.wait_with_output().unwrap();
        assert!(!out.status.success(), "the sender lost its receiver");
        let landed = same_mib(&dst.join("big.bin"), &data[..CHANGED]);
        assert!(
            landed < CHANGED >> 20,
            "killed after the whole delta landed"
        );

        if revert {
            let out = Command::new(cargo_bin("mover"))
                .args(["receive", "--revert", "--json", "--root"])
                .arg(&dst)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                hash(&dst),
                before,
                "revert restores the previous version exactly"
            );
            continue;
        }
        let (mut r, addr) = receiver_with(&dst, &["--checkpoint-mib", "1"]);
        let out = sender(&src, &addr, &state).wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(r.wait().unwrap().success());
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let sent = rep["bytes"].as_u64().unwrap();
        eprintln!("killed with {landed} of 16 MiB of the delta landed; the rerun sent {sent}");
        assert!(
            sent <= CHANGED as u64 * 70 / 100,
            "the rerun sent {sent} bytes of a {CHANGED}-byte delta"
        );
        assert_eq!(hash(&dst), hash(&src), "the target equals the source");
    }
}
