//! `bench create-path`: how the receiver should create small files, measured on its own. Each
//! of N threads (as many as mover's workers) creates its share of 20,000 new 4 KiB files, 200
//! to a directory, in batches of 200 (about one FileBatch frame), three ways:
//!
//! - `syscalls`, as the receiver does: its `beneath::open_in` (`openat2`, O_CREAT | O_EXCL,
//!   RESOLVE_BENEATH), the batch's writes through an io_uring, then `futimens` and `close` per
//!   file;
//! - `ring-linked`, the "linked OPENAT/WRITE/CLOSE": per file a linked chain of
//!   IORING_OP_OPENAT2 into a direct descriptor, WRITE and CLOSE, then `utimensat` by name
//!   (a direct descriptor has no fd for `futimens`, and io_uring has no op for times);
//! - `ring-batched`: the batch's OPENAT2s (plain fds), then their writes, then `futimens` and a
//!   ring CLOSE per file.
//!
//! Why a separate measurement: the kernel never opens with O_CREAT inline from io_uring
//! (`io_openat_force_async`), so every ring open is handed to an io-wq thread; whether the
//! syscalls saved pay for that hand-off is a property of the machine, not of mover's code.
//! Times are of the creation alone (no `syncfs` inside the timing); CPU is the process's user +
//! system time, which includes its io-wq threads.

use crate::measure::{median, rotation, Dest};
use crate::{proc, trash::Trash};
use anyhow::{bail, Context, Result};
use io_uring::{opcode, squeue, types, IoUring};
use rustix::fs::{Mode, OFlags};
use serde::Serialize;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

/// Files at --scale 1 (the small dataset's count).
pub const FILES: usize = 20_000;
/// Bytes of each file (the small dataset's size).
pub const FILE_BYTES: usize = 4096;
/// Files per directory.
const PER_DIR: usize = 200;
/// Files per submission: about one FileBatch frame of 4 KiB files.
const BATCH: usize = 200;
/// Submission queue entries: a linked batch takes three per file.
const RING_ENTRIES: u32 = 1024;
const _: () = assert!(3 * BATCH <= RING_ENTRIES as usize);
/// Bound on `io_uring_enter` waits for one batch's completions (each reaps at least one,
/// unless interrupted).
const MAX_ENTER_ROUNDS: usize = 16 * BATCH;

/// The times every file gets (a fixed past time, as a replicated file's mtime would be).
const TIMES: [libc::timespec; 2] = [
    libc::timespec {
        tv_sec: 1_600_000_000,
        tv_nsec: 1,
    },
    libc::timespec {
        tv_sec: 1_600_000_000,
        tv_nsec: 2,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Way {
    Syscalls,
    RingLinked,
    RingBatched,
}

impl Way {
    const ALL: [Way; 3] = [Way::Syscalls, Way::RingLinked, Way::RingBatched];

    fn name(self) -> &'static str {
        match self {
            Way::Syscalls => "syscalls (as built)",
            Way::RingLinked => "ring, linked OPENAT2/WRITE/CLOSE",
            Way::RingBatched => "ring, batched OPENAT2 then WRITE, CLOSE",
        }
    }
}

pub struct Opts<'a> {
    pub work: &'a Path,
    pub tmpfs_dir: &'a Path,
    pub dests: &'a [Dest],
    pub files: usize,
    pub threads: usize,
    pub reps: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub way: Way,
    pub dest: Dest,
    pub rep: usize,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreateResult {
    pub files: usize,
    pub threads: usize,
    pub reps: usize,
    /// What one system call costs on this machine (the median of `SYSCALL_ROUNDS` rounds of
    /// `SYSCALL_CALLS` `getppid` calls), to weigh the calls a way saves.
    pub syscall_ns: f64,
    pub samples: Vec<Sample>,
}

impl CreateResult {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{} threads create {} new files of {FILE_BYTES} bytes ({PER_DIR} to a directory, {BATCH} per submission) each way; \
             the ways rotate every rep, each run into a new directory, deleted (tmpfs) or moved to the trash (disk) after it, untimed, \
             then the disk is let quiet. Medians of {} reps; CPU = user + system of the process, its io-wq threads included. \
             One system call (`getppid`) costs {:.0} ns here.\n\n",
            self.threads, self.files, self.reps, self.syscall_ns
        );
        s.push_str("| destination | way | seconds (median) | CPU s (median) | every rep, s |\n|---|---|---:|---:|---|\n");
        let mut dests: Vec<Dest> = Vec::new();
        for x in &self.samples {
            if !dests.contains(&x.dest) {
                dests.push(x.dest);
            }
        }
        for d in dests {
            for w in Way::ALL {
                let of: Vec<&Sample> = self
                    .samples
                    .iter()
                    .filter(|x| x.dest == d && x.way == w)
                    .collect();
                if of.is_empty() {
                    continue;
                }
                let mut all: Vec<f64> = of.iter().map(|x| x.seconds).collect();
                all.sort_by(f64::total_cmp);
                s.push_str(&format!(
                    "| {} | {} | {:.3} | {:.3} | {} |\n",
                    d.name(),
                    w.name(),
                    median(all.clone()),
                    median(of.iter().map(|x| x.cpu_seconds).collect()),
                    all.iter()
                        .map(|v| format!("{v:.3}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
        }
        s
    }
}

pub fn run(o: &Opts) -> Result<CreateResult> {
    if o.files == 0 || o.threads == 0 {
        bail!("create-path needs at least one file and one thread");
    }
    let syscall_ns = syscall_cost_ns();
    let trash = Trash::new(o.work);
    trash.wait_out();
    let mut samples = Vec::new();
    for rep in 0..o.reps {
        for &dest in o.dests {
            for way in rotation(&Way::ALL, rep) {
                let base = match dest {
                    Dest::Disk => o.work.join("create-path"),
                    Dest::Tmpfs => o.tmpfs_dir.join("create-path"),
                };
                let dir = base.join(format!("{way:?}-{rep}"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                proc::quiesce(&[o.work, &dir]);
                let before = cpu_seconds();
                let t0 = Instant::now();
                create_all(way, &dir, o.files, o.threads)?;
                let seconds = t0.elapsed().as_secs_f64();
                let cpu = cpu_seconds() - before;
                eprintln!(
                    "bench: create-path {} {}: {seconds:.3} s, {cpu:.3} CPU s",
                    dest.name(),
                    way.name()
                );
                samples.push(Sample {
                    way,
                    dest,
                    rep,
                    seconds,
                    cpu_seconds: cpu,
                });
                match dest {
                    Dest::Disk => trash.take(&dir, &format!("create-path-{way:?}-{rep}"))?,
                    Dest::Tmpfs => std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing {}", dir.display()))?,
                }
            }
        }
    }
    trash.empty()?;
    for d in [o.work.join("create-path"), o.tmpfs_dir.join("create-path")] {
        let _ = std::fs::remove_dir(d);
    }
    Ok(CreateResult {
        files: o.files,
        threads: o.threads,
        reps: o.reps,
        syscall_ns,
        samples,
    })
}

/// Calls per round of `syscall_cost_ns`.
const SYSCALL_CALLS: u32 = 200_000;
/// Rounds of `syscall_cost_ns`, of which the median counts.
const SYSCALL_ROUNDS: usize = 5;

/// Nanoseconds per system call: the median round of `SYSCALL_CALLS` `getppid` calls.
fn syscall_cost_ns() -> f64 {
    let rounds = (0..SYSCALL_ROUNDS)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..SYSCALL_CALLS {
                // SAFETY: getppid takes no arguments and touches no memory of this process.
                std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
            }
            t0.elapsed().as_secs_f64() * 1e9 / f64::from(SYSCALL_CALLS)
        })
        .collect();
    median(rounds)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is given, which outlives
    // the call.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `threads` threads, each creating its share of `files` under `root/tN`.
fn create_all(way: Way, root: &Path, files: usize, threads: usize) -> Result<()> {
    let data = vec![0x5au8; FILE_BYTES];
    std::thread::scope(|s| {
        let running: Vec<_> = (0..threads)
            .map(|t| {
                let (dir, data) = (root.join(format!("t{t}")), &data);
                let n = files / threads + usize::from(t < files % threads);
                s.spawn(move || one_thread(way, &dir, n, data))
            })
            .collect();
        running.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| bail!("a creating thread panicked"))
        })
    })
}

fn one_thread(way: Way, root: &Path, files: usize, data: &[u8]) -> Result<()> {
    let mut ring = IoUring::new(RING_ENTRIES).context("creating io_uring")?;
    if way == Way::RingLinked {
        ring.submitter()
            .register_files_sparse(BATCH as u32)
            .context("registering direct descriptors")?;
    }
    let mut made = 0;
    let mut d = 0;
    while made < files {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dfd: OwnedFd = std::fs::File::open(&dir)?.into();
        let mut in_dir = 0;
        while in_dir < PER_DIR && made < files {
            let n = BATCH.min(PER_DIR - in_dir).min(files - made);
            let names = (in_dir..in_dir + n)
                .map(|i| CString::new(format!("f{i}")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            match way {
                Way::Syscalls => by_syscalls(&mut ring, &dfd, &names, data),
                Way::RingLinked => linked(&mut ring, &dfd, &names, data),
                Way::RingBatched => batched(&mut ring, &dfd, &names, data),
            }
            .with_context(|| format!("creating files in {}", dir.display()))?;
            made += n;
            in_dir += n;
        }
        d += 1;
    }
    Ok(())
}

/// O_CREAT | O_EXCL, never following a symlink, beneath the directory: as the receiver opens.
fn how(cloexec: bool) -> types::OpenHow {
    let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    if cloexec {
        // A direct descriptor is no file descriptor: the kernel refuses O_CLOEXEC for one.
        flags |= libc::O_CLOEXEC;
    }
    types::OpenHow::new()
        .flags(flags as u64)
        .mode(0o644)
        .resolve(libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS)
}

/// Submits `entries` and reaps `want` completions, all of them even after a failure, then
/// returns every result (negative: -errno) in completion order.
///
/// The entries point at the caller's names, OpenHow and data buffer. OPENAT2 copies the name
/// and the OpenHow when the kernel takes the entry (`getname`, `copy_struct_from_user`), and
/// the data buffer outlives the creating threads' scope (`create_all`); a thread that ends
/// with operations still in flight (after an `io_uring_enter` error) has them cancelled and
/// waited for when its ring is dropped, before that scope ends.
fn submit_results(
    ring: &mut IoUring,
    entries: &[squeue::Entry],
    want: usize,
) -> Result<Vec<(u64, i32)>> {
    for e in entries {
        // SAFETY: what each entry points at outlives the kernel's use of it (see above); an
        // entry that fails to be pushed was never handed to the kernel.
        unsafe { ring.submission().push(e) }.context("submission queue full")?;
    }
    let mut out = Vec::with_capacity(want);
    let mut rounds = 0;
    while out.len() < want {
        rounds += 1;
        if rounds > MAX_ENTER_ROUNDS {
            bail!(
                "{} of {want} completions after {MAX_ENTER_ROUNDS} waits",
                out.len()
            );
        }
        match ring.submit_and_wait(want - out.len()) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        out.extend(ring.completion().map(|c| (c.user_data(), c.result())));
    }
    Ok(out)
}

/// The first failure among `results`, as an error naming its operation.
fn first_failure(results: &[(u64, i32)]) -> Result<()> {
    match results.iter().find(|(_, res)| *res < 0) {
        Some((tag, res)) => bail!(
            "operation {tag} failed: {}",
            std::io::Error::from_raw_os_error(-res)
        ),
        None => Ok(()),
    }
}

/// `submit_results`, failing on the first negative result; the results in completion order.
fn submit_all(ring: &mut IoUring, entries: &[squeue::Entry], want: usize) -> Result<Vec<i32>> {
    let results = submit_results(ring, entries, want)?;
    first_failure(&results)?;
    Ok(results.into_iter().map(|(_, res)| res).collect())
}

/// Every write of `data` completed whole.
fn all_whole(done: &[i32], data: &[u8]) -> Result<()> {
    if done.iter().any(|&n| n as usize != data.len()) {
        bail!("a short write");
    }
    Ok(())
}

/// A write of `data` at offset 0 of a file descriptor, or of a direct descriptor (`Fixed`).
fn write_entry(fd: Result<types::Fd, types::Fixed>, data: &[u8], tag: u64) -> squeue::Entry {
    let len = data.len() as u32;
    match fd {
        Ok(fd) => opcode::Write::new(fd, data.as_ptr(), len).build(),
        Err(slot) => opcode::Write::new(slot, data.as_ptr(), len).build(),
    }
    .user_data(tag)
}

fn set_times(fd: &OwnedFd) -> Result<()> {
    // SAFETY: futimens reads two timespecs from a static array.
    if unsafe { libc::futimens(fd.as_raw_fd(), TIMES.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("futimens");
    }
    Ok(())
}

fn by_syscalls(ring: &mut IoUring, dir: &OwnedFd, names: &[CString], data: &[u8]) -> Result<()> {
    // The receiver's own open (`beneath::open_in`, as its `DirCache::open_file` calls it).
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
    let mut fds = Vec::with_capacity(names.len());
    for name in names {
        let fd = mover::beneath::open_in(dir.as_fd(), name.to_bytes(), flags, Mode::from(0o644))
            .context("openat2")?;
        fds.push(fd);
    }
    let writes: Vec<squeue::Entry> = fds
        .iter()
        .enumerate()
        .map(|(i, fd)| write_entry(Ok(types::Fd(fd.as_raw_fd())), data, i as u64))
        .collect();
    all_whole(&submit_all(ring, &writes, writes.len())?, data)?;
    for fd in &fds {
        set_times(fd)?;
    }
    Ok(())
}

fn linked(ring: &mut IoUring, dir: &OwnedFd, names: &[CString], data: &[u8]) -> Result<()> {
    let how = how(false);
    let mut chain = Vec::with_capacity(3 * names.len());
    for (i, name) in names.iter().enumerate() {
        let slot = types::DestinationSlot::try_from_slot_target(i as u32)
            .map_err(|_| anyhow::anyhow!("slot {i} out of range"))?;
        chain.push(
            opcode::OpenAt2::new(types::Fd(dir.as_raw_fd()), name.as_ptr(), &how)
                .file_index(Some(slot))
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(3 * i as u64),
        );
        chain.push(
            write_entry(Err(types::Fixed(i as u32)), data, 3 * i as u64 + 1)
                .flags(squeue::Flags::IO_LINK),
        );
        chain.push(
            opcode::Close::new(types::Fixed(i as u32))
                .build()
                .user_data(3 * i as u64 + 2),
        );
    }
    let results = submit_results(ring, &chain, chain.len())?;
    first_failure(&results)?;
    // Each file's WRITE is the second of its chain (tags 3i + 1).
    let writes: Vec<i32> = results
        .iter()
        .filter(|(tag, _)| tag % 3 == 1)
        .map(|&(_, res)| res)
        .collect();
    all_whole(&writes, data)?;
    for name in names {
        // SAFETY: utimensat reads the NUL-terminated name and two timespecs from a static
        // array during the call.
        let r = unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                name.as_ptr(),
                TIMES.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).context("utimensat");
        }
    }
    Ok(())
}

fn batched(ring: &mut IoUring, dir: &OwnedFd, names: &[CString], data: &[u8]) -> Result<()> {
    let how = how(true);
    let opens: Vec<squeue::Entry> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            opcode::OpenAt2::new(types::Fd(dir.as_raw_fd()), name.as_ptr(), &how)
                .build()
                .user_data(i as u64)
        })
        .collect();
    // Every descriptor opened is owned (and so closed) even if another open failed.
    let opened = submit_results(ring, &opens, opens.len())?;
    let mut fds: Vec<(usize, OwnedFd)> = Vec::with_capacity(opened.len());
    for &(i, fd) in &opened {
        if fd >= 0 {
            // SAFETY: a non-negative OPENAT2 result is a descriptor the kernel just opened for
            // this process, owned by nothing else; each completion is seen once.
            fds.push((i as usize, unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    first_failure(&opened)?;
    let writes: Vec<squeue::Entry> = fds
        .iter()
        .map(|(i, fd)| write_entry(Ok(types::Fd(fd.as_raw_fd())), data, *i as u64))
        .collect();
    all_whole(&submit_all(ring, &writes, writes.len())?, data)?;
    for (_, fd) in &fds {
        set_times(fd)?;
    }
    // The ring closes them: each descriptor's ownership passes to its CLOSE operation.
    let closes: Vec<squeue::Entry> = fds
        .into_iter()
        .map(|(i, fd)| {
            let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
            opcode::Close::new(types::Fd(raw))
                .build()
                .user_data(i as u64)
        })
        .collect();
    submit_all(ring, &closes, closes.len())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn every_way_creates_the_same_files_with_their_data_and_times() {
        let t = tempfile::tempdir().unwrap();
        // Per thread: two full directories and part of a third, so slots, batches and
        // directories are all used more than once.
        let files = 2 * (2 * PER_DIR + 37);
        for way in Way::ALL {
            let root = t.path().join(format!("{way:?}"));
            create_all(way, &root, files, 2).unwrap();
            let mut seen = 0;
            for th in std::fs::read_dir(&root).unwrap() {
                for d in std::fs::read_dir(th.unwrap().path()).unwrap() {
                    for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                        let p = f.unwrap().path();
                        let m = std::fs::symlink_metadata(&p).unwrap();
                        assert!(m.is_file(), "{way:?}: {}", p.display());
                        assert_eq!(std::fs::read(&p).unwrap(), vec![0x5au8; FILE_BYTES]);
                        assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 2));
                        assert_eq!(m.mode() & 0o777, 0o644 & !umask());
                        seen += 1;
                    }
                }
            }
            assert_eq!(seen, files, "{way:?}");
            // O_EXCL: a second run over the same files fails instead of writing through.
            let e = create_all(way, &root, files, 2).unwrap_err();
            assert!(format!("{e:#}").contains("exists"), "{way:?}: {e:#}");
        }
    }

    /// This process's umask, read without changing it (other tests create files meanwhile).
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }
}
