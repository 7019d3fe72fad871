//! rsync in daemon mode on 127.0.0.1: the baseline. The daemon forks one child per
//! connection and reaps it, so its CPU (with children) is read from /proc before and after.

use crate::proc::{daemon_cpu, wait_usage};
use anyhow::{bail, Context, Result};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Child,
    pub port: u16,
}

pub struct RsyncRun {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub wire_bytes: u64,
    /// The client's `--stats` output.
    pub stats: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Daemon {
    /// Serves module `dst` at `dst_dir`.
    pub fn start(tmp: &Path, dst_dir: &Path) -> Result<Daemon> {
        let port = free_port()?;
        let conf = tmp.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "port = {port}\naddress = 127.0.0.1\nuse chroot = no\nuid = root\ngid = root\npid file = {}\n[dst]\npath = {}\nread only = false\n",
                tmp.join("rsyncd.pid").display(),
                dst_dir.display()
            ),
        )?;
        let child = Command::new("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .stdout(Stdio::null())
            .spawn()
            .context("starting rsync --daemon (run scripts/install-bench-deps.sh)")?;
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("rsync daemon did not listen on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Daemon { child, port })
    }

    /// One transfer `src/` -> directory `sub` (created by rsync) of the daemon's module.
    pub fn run(&self, src: &Path, sub: &str) -> Result<RsyncRun> {
        self.run_with(src, sub, &[])
    }

    /// `run` with extra client flags (the incremental benchmark adds `--delete`).
    pub fn run_with(&self, src: &Path, sub: &str, extra: &[&str]) -> Result<RsyncRun> {
        let before = daemon_cpu(self.child.id())?;
        let start = Instant::now();
        let mut c = Command::new("rsync")
            .args(["-aHX", "--numeric-ids", "--stats"])
            .args(extra)
            .arg(format!("{}/", src.display()))
            .arg(format!("rsync://127.0.0.1:{}/dst/{sub}/", self.port))
            .stdout(Stdio::piped())
            .spawn()
            .context("running rsync client")?;
        let mut out = String::new();
        std::io::Read::read_to_string(c.stdout.as_mut().context("stdout")?, &mut out)?;
        let usage = wait_usage(&mut c)?;
        let seconds = start.elapsed().as_secs_f64();
        if !usage.exit_ok {
            bail!("rsync failed:\n{out}");
        }
        // The daemon reaps its per-connection child asynchronously.
        let mut after = daemon_cpu(self.child.id())?;
        for _ in 0..100 {
            if !has_children(self.child.id()) {
                after = daemon_cpu(self.child.id())?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let wire_bytes = parse_wire_bytes(&out)?;
        Ok(RsyncRun {
            seconds,
            cpu_seconds: usage.cpu_seconds + (after - before),
            wire_bytes,
            stats: out,
        })
    }
}

fn has_children(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `name` (e.g. "Literal data:") in `rsync --stats` output.
pub fn stat_field(stats: &str, name: &str) -> Result<u64> {
    let line = stats
        .lines()
        .find(|l| l.starts_with(name))
        .with_context(|| format!("no '{name}' in rsync --stats"))?;
    // The number ends at its first character that is neither a digit nor a thousands separator:
    // "Literal data: 1,234 bytes".
    let number = line[name.len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',');
    let digits: String = number.filter(|c| c.is_ascii_digit()).collect();
    digits.parse().with_context(|| format!("parsing {line:?}"))
}

/// "Total bytes sent: 1,234" + "Total bytes received: 56" from `rsync --stats`.
pub fn parse_wire_bytes(stats: &str) -> Result<u64> {
    Ok(stat_field(stats, "Total bytes sent:")? + stat_field(stats, "Total bytes received:")?)
}

pub fn version() -> String {
    Command::new("rsync")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "rsync not found".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_stats_with_thousands_separators() {
        let s = "Number of files: 5\nTotal bytes sent: 2,148,008,221\nTotal bytes received: 99\n";
        assert_eq!(super::parse_wire_bytes(s).unwrap(), 2_148_008_320);
    }

    #[test]
    fn stat_field_stops_at_the_unit() {
        let s = "Literal data: 21,474,836 bytes\nMatched data: 0 bytes\n";
        assert_eq!(super::stat_field(s, "Literal data:").unwrap(), 21_474_836);
        assert_eq!(super::stat_field(s, "Matched data:").unwrap(), 0);
    }
}
