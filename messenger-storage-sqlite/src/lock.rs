//! The data directory's `LOCK` file: one process at a time.
//!
//! SQLite's own locks let several processes share a database, which is what must never
//! happen here: the store keeps caches that are only right while it is the one writer.
//! So the store holds an exclusive `flock(2)` on `DIR/LOCK` for as long as it is open
//! and writes its pid there, so that a second process is refused with a message naming
//! the holder. The kernel drops the lock when the process dies (even on SIGKILL), so a
//! stale `LOCK` file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::OpenError;

/// The name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive hold on a data directory, released on drop (or when the process dies).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir` (which exists and is a directory) or says who holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, OpenError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| OpenError::NotWritable {
                path: dir.to_path_buf(),
                source,
            })?;
        if let Err(e) = try_lock(&file) {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                return Err(OpenError::Locked {
                    path: dir.to_path_buf(),
                    holder: s.trim().parse().ok(),
                });
            }
            return Err(OpenError::NotWritable {
                path: path.clone(),
                source: e,
            });
        }
        // Ours now: say who holds it.
        let pid = std::process::id();
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"))
            .and_then(|()| file.flush());
        if let Err(source) = written {
            return Err(OpenError::NotWritable {
                path: PathBuf::from(&path),
                source,
            });
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(std::io::Error::from)
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<()> {
    // No advisory lock on this platform: the directory is not guarded against a second
    // process (documented in the README).
    Ok(())
}
