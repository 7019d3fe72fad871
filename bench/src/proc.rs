//! Process measurement: wall time and CPU (user + system) of children via wait4's rusage, and
//! of a long-running daemon (including its reaped children) from /proc/<pid>/stat.

use anyhow::{bail, Context, Result};
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
}
