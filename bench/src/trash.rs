//! Where the disk destinations of many-file datasets wait to be deleted, so that no timed run
//! allocates inodes right after thousands were freed.
//!
//! Why: an ext4 without a journal (this VM's work disk) will not reuse an inode soon after it
//! was freed (`recently_deleted` in fs/ext4/ialloc.c: 60 s, or 360 s while the inode table
//! block holding it is dirty, and creating files dirties exactly those blocks), and it finds
//! that out by scanning: every new file looks at every recently freed inode of its group
//! first. 20,000 files created after the previous run's 20,000 were deleted took 1.4-3.5 s
//! instead of 0.6-0.7 s (mover), 85 s after the deletion too, and rsync and cp paid the same
//! way: the file system's history, not the tool, set the figure. So each such destination is
//! renamed into the trash after its run (no inode is freed), the trash is emptied when the
//! regimes are done, and a later bench on this work dir waits out the window first (the
//! bench's other deletions of many files, of datasets and incremental trees, are noted too).
//! The limits' creation runs (creation.rs) leave their files in the trash as well.

use crate::proc;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long after emptying the trash a timed run may create files: ext4's `RECENTCY_MIN` +
/// `RECENTCY_DIRTY` (60 + 300 s) and a margin.
pub const INODE_REUSE_WAIT: Duration = Duration::from_secs(362);
/// Datasets with more files than this keep their disk destinations in the trash; with fewer,
/// deleting right after the run frees too few inodes to matter.
pub const MIN_FILES: u64 = 1_000;
/// ... unless their copies would take too much of the disk: the regimes keep caches x reps x
/// tools of them (30 x 82 MB for the small set).
pub const MAX_BYTES: u64 = 256 << 20;

/// Whether a dataset's disk destinations go to the trash rather than being deleted at once.
pub fn keeps(files: u64, bytes: u64) -> bool {
    files > MIN_FILES && bytes <= MAX_BYTES
}

pub struct Trash {
    dir: PathBuf,
    /// Unix seconds of the last deletion noted (`note_freed`), read before a run waits.
    emptied: PathBuf,
}

impl Trash {
    /// The trash of work dir `work` (on the disk destinations' file system, so a rename
    /// moves a destination in).
    pub fn new(work: &Path) -> Self {
        Trash {
            dir: work.join("trash"),
            emptied: work.join("trash.emptied"),
        }
    }

    /// Moves `dir` (a destination under the work dir) into the trash as `name`, freeing no
    /// inode.
    pub fn take(&self, dir: &Path, name: &str) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut to = self.dir.join(name);
        let mut n = 0;
        while to.exists() {
            n += 1;
            to = self.dir.join(format!("{name}.{n}"));
        }
        std::fs::rename(dir, &to)
            .with_context(|| format!("moving {} to {}", dir.display(), to.display()))
    }

    /// Deletes what the trash holds, writes the deletion back, and notes when (`delete`, and
    /// once more after the write-back).
    pub fn empty(&self) -> Result<()> {
        let full = std::fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some());
        if !full {
            return Ok(());
        }
        self.delete(&self.dir)?;
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        proc::syncfs(parent);
        self.note_freed()
    }

    /// Deletes `dir` (a tree on the work dir's file system), if it exists, noting the deletion
    /// before (so one that fails or is interrupted is waited out as well) and after.
    pub fn delete(&self, dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        self.note_freed()?;
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        self.note_freed()
    }

    /// Notes that many inodes of the work dir's file system were freed now (by the trash or
    /// any other deletion of the bench), for `wait_out`.
    pub fn note_freed(&self) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        std::fs::write(&self.emptied, now.to_string())
            .with_context(|| format!("writing {}", self.emptied.display()))
    }

    /// Sleeps until `INODE_REUSE_WAIT` has passed since the last deletion noted (by this bench
    /// or an earlier one on the same work dir).
    pub fn wait_out(&self) {
        let Some(at) = std::fs::read_to_string(&self.emptied)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            return;
        };
        let ready = UNIX_EPOCH + Duration::from_secs(at) + INODE_REUSE_WAIT;
        if let Ok(left) = ready.duration_since(SystemTime::now()) {
            eprintln!(
                "bench: waiting {:.0} s: ext4 skips inodes freed within the last {} s, scanning past each one",
                left.as_secs_f64(),
                INODE_REUSE_WAIT.as_secs()
            );
            std::thread::sleep(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bench-trash-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn destinations_move_in_under_distinct_names_and_go_when_emptied() {
        let w = work("empty");
        let t = Trash::new(&w);
        for _ in 0..2 {
            let d = w.join("small/dst/hot-Mover-0");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
            t.take(&d, "small-hot-Mover-0").unwrap();
            assert!(!d.exists(), "the destination moved out");
        }
        let held: Vec<_> = std::fs::read_dir(w.join("trash")).unwrap().collect();
        assert_eq!(
            held.len(),
            2,
            "a second destination of the same name is kept apart"
        );
        assert!(!w.join("trash.emptied").exists(), "nothing freed yet");
        t.empty().unwrap();
        assert!(!w.join("trash").exists());
        let at: u64 = std::fs::read_to_string(w.join("trash.emptied"))
            .unwrap()
            .parse()
            .unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now - at < 60, "the emptying was noted now");
        // An empty trash frees nothing and notes nothing.
        std::fs::write(w.join("trash.emptied"), "1").unwrap();
        t.empty().unwrap();
        assert_eq!(
            std::fs::read_to_string(w.join("trash.emptied")).unwrap(),
            "1"
        );
        std::fs::remove_dir_all(&w).unwrap();
    }

    #[test]
    fn a_bench_waits_only_while_freed_inodes_are_recent() {
        let w = work("wait");
        let t = Trash::new(&w);
        let quick = |t: &Trash| {
            let s = std::time::Instant::now();
            t.wait_out();
            s.elapsed() < Duration::from_secs(5)
        };
        assert!(quick(&t), "no deletion noted: no wait");
        let old = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - INODE_REUSE_WAIT;
        std::fs::write(w.join("trash.emptied"), (old.as_secs() - 1).to_string()).unwrap();
        assert!(quick(&t), "a deletion older than the window: no wait");
        assert!(
            keeps(20_000, 82 << 20),
            "the small set keeps its destinations"
        );
        assert!(!keeps(2, 1 << 30), "the large set does not");
        assert!(
            !keeps(20_000, 700 << 20),
            "nor a set too big to keep 30 copies of"
        );
        std::fs::remove_dir_all(&w).unwrap();
    }
}
