//! Files only root can read (tokens, records, the containers' status), written atomically:
//! what the daemon's roles and their supervisor keep in the data directory.

use crate::error::IoContext;
use crate::Result;
use std::path::Path;

/// Writes a file only root can read, atomically (temp file, fsync, rename, fsync of the dir).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let what = || format!("writing {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .ctx(what)?;
    f.write_all(data).ctx(what)?;
    f.sync_all().ctx(what)?;
    std::fs::rename(&tmp, path).ctx(what)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .ctx(what)?;
    }
    Ok(())
}
