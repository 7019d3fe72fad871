//! The machine's limits, measured in the same run as the tools, each with as many streams as
//! mover has workers (and once with one, for reference): loopback TCP, memory copy, sequential
//! read of a dataset's files from a cold page cache (O_DIRECT), and sequential write to a
//! destination's file system (buffered, then fsync, like `cp -a` + `sync`).

use anyhow::{Context, Result};
use mover::gen::Rng;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// How long each TCP measurement sends: long enough to leave slow start and fill the socket
/// buffers many times over.
const TCP_DURATION: Duration = Duration::from_secs(3);
/// How long each memory-copy measurement copies.
const MEMCPY_DURATION: Duration = Duration::from_secs(1);
/// Each copying thread's source and destination buffers: well beyond any last-level cache, so
/// the copy runs at memory speed, as a copy of a page-cached dataset does.
const MEMCPY_BUF: usize = 128 << 20;
/// The read and write size of the TCP, read and write measurements.
const CHUNK: usize = 1 << 20;
/// O_DIRECT buffers are aligned to this (the largest logical block size in use).
const DIRECT_ALIGN: usize = 4096;
/// The sequential-write measurement writes the large dataset's size, at most this much.
pub const WRITE_MAX_BYTES: u64 = 1 << 30;
/// ... and at least this much, so a tiny smoke run still measures more than the latency.
pub const WRITE_MIN_BYTES: u64 = 16 << 20;

/// A heap buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Result<AlignedBuf> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), DIRECT_ALIGN)?;
        // SAFETY: the layout has a non-zero size; the memory is freed in Drop with it.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        anyhow::ensure!(!ptr.is_null(), "allocating {len} bytes failed");
        Ok(AlignedBuf { ptr, layout })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid, initialized (zeroed) and exclusively ours for layout.size()
        // bytes until Drop; the &mut self borrow keeps the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout and not freed since.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Aggregate MB/s (10^6 bytes) of `streams` concurrent TCP connections over 127.0.0.1, each
/// with its own sending and receiving thread.
pub fn loopback_tcp(streams: usize) -> Result<f64> {
    let streams = streams.max(1);
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let rx = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut readers = Vec::new();
        for _ in 0..streams {
            let (mut s, _) = l.accept()?;
            readers.push(std::thread::spawn(move || -> std::io::Result<u64> {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf)? {
                        0 => return Ok(n),
                        k => n += k as u64,
                    }
                }
            }));
        }
        let mut total = 0;
        for r in readers {
            total += r
                .join()
                .map_err(|_| std::io::Error::other("reader panicked"))??;
        }
        Ok(total)
    });
    let conns: Vec<TcpStream> = (0..streams)
        .map(|_| TcpStream::connect(addr))
        .collect::<std::io::Result<_>>()?;
    let go = Arc::new(Barrier::new(streams + 1));
    let senders: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let go = go.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let buf = vec![0x5au8; CHUNK];
                go.wait();
                let start = Instant::now();
                while start.elapsed() < TCP_DURATION {
                    s.write_all(&buf)?;
                }
                Ok(())
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    for s in senders {
        s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    let n = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(n as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Aggregate MB/s copied by `threads` threads, each copying its own MEMCPY_BUF buffer into
/// another (memcpy) for MEMCPY_DURATION. A byte copied counts once.
pub fn memcpy(threads: usize) -> Result<f64> {
    let threads = threads.max(1);
    let go = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let go = go.clone();
            std::thread::spawn(move || -> u64 {
                let mut src = vec![0u8; MEMCPY_BUF];
                Rng(0xc0b1 + i as u64).fill(&mut src);
                // Written once before timing so page faults are not part of the copy rate.
                let mut dst = vec![1u8; MEMCPY_BUF];
                go.wait();
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < MEMCPY_DURATION {
                    dst.copy_from_slice(&src);
                    std::hint::black_box(&mut dst);
                    n += MEMCPY_BUF as u64;
                }
                n
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| anyhow::anyhow!("copy thread panicked"))?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e6)
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

/// Aggregate MB/s reading every file of `dir` once with 1 MiB reads after dropping the page
/// cache (O_DIRECT where the file system allows, buffered otherwise), by `streams` threads that
/// take the files in turn (sorted by name: file i goes to thread i mod streams).
pub fn sequential_read(dir: &Path, streams: usize) -> Result<f64> {
    let streams = streams.max(1);
    let mut files = Vec::new();
    files_under(dir, &mut files)?;
    files.sort();
    let mut shares: Vec<Vec<PathBuf>> = vec![Vec::new(); streams];
    for (i, f) in files.into_iter().enumerate() {
        shares[i % streams].push(f);
    }
    crate::proc::drop_caches();
    let go = Arc::new(Barrier::new(streams + 1));
    let readers: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let go = go.clone();
            std::thread::spawn(move || -> Result<u64> {
                let mut buf = AlignedBuf::new(CHUNK)?;
                let buf = buf.as_mut_slice();
                go.wait();
                let mut n = 0u64;
                for f in &share {
                    let mut h = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(f)
                        .or_else(|_| std::fs::File::open(f))
                        .with_context(|| format!("opening {}", f.display()))?;
                    loop {
                        let k = h
                            .read(buf)
                            .with_context(|| format!("reading {}", f.display()))?;
                        if k == 0 {
                            break;
                        }
                        n += k as u64;
                    }
                }
                Ok(n)
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    let mut total = 0;
    for r in readers {
        total += r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Aggregate MB/s writing `bytes` of pseudo-random data as `streams` new files (one per thread)
/// in `dir`, 1 MiB buffered writes and an fsync per file, timed until the last fsync returns.
/// The files are removed afterwards and the file system quiesced (untimed).
pub fn sequential_write(dir: &Path, bytes: u64, streams: usize) -> Result<f64> {
    let streams = streams.max(1);
    std::fs::create_dir_all(dir)?;
    let per = bytes.div_ceil(streams as u64);
    let go = Arc::new(Barrier::new(streams + 1));
    let paths: Vec<PathBuf> = (0..streams)
        .map(|i| dir.join(format!(".bench-write-{i}")))
        .collect();
    let writers: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (go, p) = (go.clone(), p.clone());
            std::thread::spawn(move || -> Result<u64> {
                let mut buf = vec![0u8; CHUNK];
                Rng(0x3717e + i as u64).fill(&mut buf);
                let mut f = std::fs::File::create(&p)
                    .with_context(|| format!("creating {}", p.display()))?;
                go.wait();
                let mut left = per;
                while left > 0 {
                    let k = left.min(CHUNK as u64) as usize;
                    // Vary the data per chunk so no layer below can deduplicate it.
                    buf[..8].copy_from_slice(&left.to_le_bytes());
                    f.write_all(&buf[..k])
                        .with_context(|| format!("writing {}", p.display()))?;
                    left -= k as u64;
                }
                f.sync_all()
                    .with_context(|| format!("fsync {}", p.display()))?;
                Ok(per)
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    let mut total = 0;
    let mut err = None;
    for w in writers {
        match w.join().map_err(|_| anyhow::anyhow!("writer panicked")) {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) | Err(e) => err = Some(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    crate::proc::quiesce(&[dir]);
    if let Some(e) = err {
        return Err(e);
    }
    Ok(total as f64 / secs / 1e6)
}
