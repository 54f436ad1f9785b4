//! File-system helpers shared by the lease stores, subnet.env and weft-cni:
//! atomic file replacement ([`write_atomic`]) and exclusive lock files
//! ([`lock_exclusive`]). They return plain I/O errors; callers name the file
//! and the fix in their own error types.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The temporary sibling that [`write_atomic`] writes before renaming it over
/// `path`: `.<name>.tmp.<pid>` in the same directory. Its name holds `.tmp.`,
/// so directory scanners skip it.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Replaces `path` with `bytes` atomically: readers see the old file or the
/// new one, never half of it. Writes a temporary sibling, syncs it and renames
/// it over `path`; the temporary file is removed when a step fails. The
/// directory must exist.
///
/// # Errors
/// The I/O error of the step that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_inner(path, bytes, None)
}

/// [`write_atomic`], with the new file's permission bits set to `mode`.
///
/// # Errors
/// As [`write_atomic`].
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_inner(path, bytes, Some(mode))
}

fn write_atomic_inner(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let tmp = temp_path(path);
    let res = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// What [`lock_exclusive`] failed at.
#[derive(Debug)]
pub enum LockError {
    /// Opening (or creating) the lock file.
    Open(io::Error),
    /// Taking the lock.
    Lock(io::Error),
}

impl LockError {
    /// The I/O error, whichever step failed.
    pub fn into_io(self) -> io::Error {
        match self {
            LockError::Open(e) | LockError::Lock(e) => e,
        }
    }
}

/// Opens the lock file `path` (created if absent, never truncated) and takes
/// an exclusive `flock` on it, waiting while another process holds it. The
/// lock is held until the returned value is dropped. The directory must exist.
///
/// # Errors
/// [`LockError`] with the I/O error of the step that failed.
pub fn lock_exclusive(path: &Path) -> Result<Flock<File>, LockError> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(LockError::Open)?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| LockError::Lock(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("10.244.3.0-24");
        write_atomic(&p, b"old").unwrap();
        write_atomic_mode(&p, b"new", 0o640).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(temp_path(&p).to_string_lossy().contains(".tmp."));
        // A missing directory: the error, and nothing left behind.
        let e = write_atomic(&d.path().join("no/such/file"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn lock_file_is_created_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".lock");
        std::fs::write(&p, b"keep").unwrap();
        let l = lock_exclusive(&p).unwrap();
        drop(l);
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        let e = lock_exclusive(&d.path().join("no/such/lock")).unwrap_err();
        assert!(matches!(e, LockError::Open(_)));
        assert_eq!(e.into_io().kind(), io::ErrorKind::NotFound);
    }
}
