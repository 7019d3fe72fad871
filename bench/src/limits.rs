//! The machine's limits, measured in the same run as the tools: single-stream loopback TCP and
//! sequential read of the dataset's files from a cold page cache.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TCP_DURATION: Duration = Duration::from_secs(3);
const CHUNK: usize = 1 << 20;

/// MB/s (10^6 bytes) of one TCP stream over 127.0.0.1.
pub fn loopback_tcp() -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let rx = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    while start.elapsed() < TCP_DURATION {
        s.write_all(&buf)?;
    }
    drop(s);
    let n = rx
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(n as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Regular files under `dir` (not following symlinks), appended to `out` in walk order.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let t = e.file_type()?;
        // mover's scratch in a btrfs source (kept snapshots) is not part of the data.
        if t.is_dir() && e.file_name() == ".mover-state" {
            continue;
        }
        if t.is_dir() {
            files_under(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// MB/s reading every file of `dir` once with 1 MiB reads after dropping the page cache
/// (O_DIRECT where the file system allows, buffered otherwise).
pub fn sequential_read(dir: &Path) -> Result<f64> {
    let mut files = Vec::new();
    files_under(dir, &mut files)?;
    files.sort();
    crate::proc::drop_caches();
    let layout = std::alloc::Layout::from_size_align(CHUNK, 4096)?;
    // SAFETY: non-zero size layout; freed below with the same layout.
    let ptr = unsafe { std::alloc::alloc(layout) };
    anyhow::ensure!(!ptr.is_null(), "allocation failed");
    // SAFETY: ptr is valid for CHUNK bytes until dealloc below.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, CHUNK) };
    let start = Instant::now();
    let mut n = 0u64;
    let res = (|| -> Result<()> {
        for f in &files {
            let mut h = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(f)
                .or_else(|_| std::fs::File::open(f))
                .with_context(|| format!("opening {}", f.display()))?;
            loop {
                let k = h.read(buf)?;
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
        }
        Ok(())
    })();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    res?;
    Ok(n as f64 / start.elapsed().as_secs_f64() / 1e6)
}
