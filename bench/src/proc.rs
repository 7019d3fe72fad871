//! Process measurement: wall time and CPU (user + system) of children via wait4's rusage, and
//! of a long-running daemon (including its reaped children) from /proc/<pid>/stat. Also the
//! untimed steps between runs: dropping or warming the page cache, and waiting for the disk to
//! go quiet after a destination is deleted.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Longest any benchmarked process may run before the bench gives up on it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub exit_ok: bool,
}

/// Waits for `child` (bounded by RUN_TIMEOUT) and returns its CPU time.
pub fn wait_usage(child: &mut Child) -> Result<Usage> {
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data the kernel fills; pid is our own unreaped child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to locals; WNOHANG so we can enforce the timeout.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
            let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            return Ok(Usage {
                cpu_seconds: t(ru.ru_utime) + t(ru.ru_stime),
                exit_ok: ok,
            });
        }
        if r < 0 {
            bail!("wait4({pid}): {}", std::io::Error::last_os_error());
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            bail!("process {pid} ran longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// utime + stime + cutime + cstime of `pid`, in seconds.
pub fn daemon_cpu(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat_cpu(&s)
}

/// The command name may contain spaces and parentheses: fields start after the last ')'.
pub fn parse_stat_cpu(stat: &str) -> Result<f64> {
    let rest = &stat[stat.rfind(')').context("no ')' in stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ... utime is field 14 of the full line = index 11 here.
    let ticks: f64 = (11..15)
        .map(|i| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz.max(1.0))
}

/// Empties the page cache so each run reads from the device. Returns whether it was permitted.
pub fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// After a destination is deleted, the device must stay quiet for this long before the next run
/// is prepared: ext4's journal commit, the discards of a `discard`-mounted file system and the
/// host's write-back of the deletion would otherwise land inside the next timing.
pub const IDLE_WINDOW: Duration = Duration::from_millis(300);
/// "Quiet": at most this many bytes written or discarded on the device within IDLE_WINDOW
/// (about 14 MB/s, under 2% of a disk's write rate). Not zero: on a shared machine other users'
/// small writes never stop, and reads are theirs alone (a deletion does not read).
pub const QUIET_BYTES: u64 = 4 << 20;
/// The longest a quiesce waits: others may keep the disk busy, and the report counts the runs
/// that started after a timeout.
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the device counters are read while waiting.
const QUIESCE_POLL: Duration = Duration::from_millis(50);

/// `syncfs` of the file system holding `path`, through `sync -f` (errors ignored: a missing
/// path has nothing to flush).
pub fn syncfs(path: &Path) {
    let _ = std::process::Command::new("sync")
        .arg("-f")
        .arg(path)
        .status();
}

/// /sys/dev/block/MAJ:MIN/stat of the block device holding `path`; None for file systems
/// without one (tmpfs, btrfs's anonymous device numbers).
pub fn device_stat_file(path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let p = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    (major != 0 && p.exists()).then_some(p)
}

/// Bytes written plus bytes discarded so far, from a block device's `stat` line (sectors of 512
/// bytes in fields 7 and 14; kernels before 4.18 have no discard fields, read as 0).
pub fn written_or_discarded(stat: &str) -> u64 {
    let f: Vec<u64> = stat
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    512 * (f.get(6).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0))
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Quiet {
    /// Time from the syncs until the devices were quiet for IDLE_WINDOW (or the timeout).
    pub seconds: f64,
    pub timed_out: bool,
}

/// Flushes the file systems of `paths`, then waits until their block devices have written and
/// discarded at most QUIET_BYTES within the last IDLE_WINDOW (at most QUIESCE_TIMEOUT).
pub fn quiesce(paths: &[&Path]) -> Quiet {
    let start = Instant::now();
    for p in paths {
        syncfs(p);
    }
    let mut devs: Vec<PathBuf> = paths.iter().filter_map(|p| device_stat_file(p)).collect();
    devs.sort();
    devs.dedup();
    let read = || -> u64 {
        devs.iter()
            .map(|d| written_or_discarded(&std::fs::read_to_string(d).unwrap_or_default()))
            .sum()
    };
    // (time, counter) samples of the last IDLE_WINDOW, oldest first.
    let mut window = std::collections::VecDeque::from([(Instant::now(), read())]);
    loop {
        let (oldest, first) = window[0];
        let &(_, last) = window.back().unwrap_or(&window[0]);
        if oldest.elapsed() >= IDLE_WINDOW && last.saturating_sub(first) <= QUIET_BYTES {
            return Quiet {
                seconds: start.elapsed().as_secs_f64(),
                timed_out: false,
            };
        }
        if start.elapsed() > QUIESCE_TIMEOUT {
            return Quiet {
                seconds: start.elapsed().as_secs_f64(),
                timed_out: true,
            };
        }
        std::thread::sleep(QUIESCE_POLL);
        window.push_back((Instant::now(), read()));
        // Keep one sample at least IDLE_WINDOW old as the window's start.
        while window.len() > 1 && window[1].0.elapsed() >= IDLE_WINDOW {
            window.pop_front();
        }
    }
}

/// Reads every file under `dir` so the dataset is in the page cache (a hot run).
pub fn warm(dir: &std::path::Path) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            warm(&p)?;
        } else if p.is_file() {
            let mut f = std::fs::File::open(&p)?;
            while std::io::Read::read(&mut f, &mut buf)? > 0 {}
        }
    }
    Ok(())
}

/// Bytes sent over the loopback interface so far (on `lo` every byte sent is also received).
/// Counts both directions of every connection, TCP/IP headers included, and any other loopback
/// traffic on the machine: a cross-check of the tools' own wire counts, not a replacement.
pub fn loopback_bytes() -> Option<u64> {
    std::fs::read_to_string("/sys/class/net/lo/statistics/tx_bytes")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_the_name_parses() {
        // SAFETY: see parse_stat_cpu.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let line = "1234 (rsync (a) b) S 1 1 1 0 -1 4194560 100 0 0 0 30 20 5 5 20 0 1 0 1 1 1";
        assert!((parse_stat_cpu(line).unwrap() - 60.0 / hz).abs() < 1e-9);
    }

    #[test]
    fn written_and_discarded_sectors_count_in_bytes() {
        // A virtio disk's stat line (17 fields): 1600 sectors written, 56 discarded.
        let line = "100 0 800 10 200 5 1600 20 3 30 40 7 0 56 1 9 2";
        assert_eq!(written_or_discarded(line), 512 * (1600 + 56));
        // Kernels before 4.18 print 11 fields (no discards): only the writes count.
        assert_eq!(written_or_discarded("1 2 3 4 5 6 7 8 0 10 11"), 512 * 7);
        assert_eq!(written_or_discarded(""), 0);
    }
}
