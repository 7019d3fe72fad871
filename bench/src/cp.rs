//! The local-copy baseline: `cp -a SRC/. DST/` then `sync -f DST` (syncfs of the destination's
//! file system, as mover's receiver does before it commits), timed together.

use crate::proc::wait_usage;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub struct CpRun {
    pub seconds: f64,
    /// cp + sync user+sys.
    pub cpu_seconds: f64,
}

/// Copies the contents of `src` into the existing directory `dst` and makes them durable.
pub fn run(src: &Path, dst: &Path) -> Result<CpRun> {
    let start = Instant::now();
    let mut cp = Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(dst)
        .spawn()
        .context("running cp")?;
    let u1 = wait_usage(&mut cp)?;
    if !u1.exit_ok {
        bail!("cp -a {}/. {} failed", src.display(), dst.display());
    }
    let mut sync = Command::new("sync")
        .arg("-f")
        .arg(dst)
        .spawn()
        .context("running sync")?;
    let u2 = wait_usage(&mut sync)?;
    if !u2.exit_ok {
        bail!("sync -f {} failed", dst.display());
    }
    Ok(CpRun {
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: u1.cpu_seconds + u2.cpu_seconds,
    })
}
