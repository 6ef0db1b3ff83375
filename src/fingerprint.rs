//! Fingerprints of the files on disk, by which a reload tells whether they changed: of their
//! content (what a snapshot built from them would hold), and of their content and write times
//! (whether anything was written to them, even the same bytes).

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::Config;

/// Hash of the files' contents; a missing file hashes as such, so its return is a change.
/// With `written`, also of when each was last written, and its size and inode: a file written
/// again with the same bytes then hashes differently.
pub(crate) fn fingerprint_of(files: &[PathBuf], written: bool) -> u64 {
    let (content, stamp) = fingerprints(files);
    if written {
        stamp
    } else {
        content
    }
}

/// Both of [`fingerprint_of`]'s, from one read of each file.
fn fingerprints(files: &[PathBuf]) -> (u64, u64) {
    let files: BTreeSet<&PathBuf> = files.iter().collect();
    let (mut content, mut stamp) = (DefaultHasher::new(), DefaultHasher::new());
    for file in files {
        let read = read_hash(file);
        for hasher in [&mut content, &mut stamp] {
            file.hash(hasher);
            read.hash(hasher);
        }
        write_times(file).hash(&mut stamp);
    }
    (content.finish(), stamp.finish())
}

/// The content fingerprint of `files` (as [`fingerprint_of`] takes it) with `config`'s
/// content the one whose hash is given (see [`bytes_hash`]) rather than what is on disk now.
pub(crate) fn fingerprint_as_read(files: &[PathBuf], config: (&Path, u64)) -> u64 {
    let files: BTreeSet<&PathBuf> = files.iter().collect();
    let mut content = DefaultHasher::new();
    for file in files {
        file.hash(&mut content);
        let read = if file == config.0 {
            config.1
        } else {
            read_hash(file)
        };
        read.hash(&mut content);
    }
    content.finish()
}

/// Hash of `file`'s content, or of why it cannot be read: a folder, a named pipe and a file
/// over the size limit put in each other's place are changes, each rejected (and logged) once,
/// as two different bad contents are. Not of its size too: a file growing past the limit (a
/// log written at the config's path) would be a new rejection each look.
pub(crate) fn read_hash(file: &Path) -> u64 {
    match crate::files::read(file) {
        Ok(bytes) => bytes_hash(&bytes),
        Err(e) => {
            let mut hasher = DefaultHasher::new();
            (1u8, e.to_string()).hash(&mut hasher);
            hasher.finish()
        }
    }
}

/// Hash of a file's `bytes`, as the fingerprints take it.
pub(crate) fn bytes_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    (0u8, bytes).hash(&mut hasher);
    hasher.finish()
}

#[cfg(unix)]
fn write_times(file: &Path) -> Option<[i64; 6]> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    let (size, inode) = (m.size() as i64, m.ino() as i64);
    Some([
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        size,
        inode,
    ])
}

#[cfg(not(unix))]
fn write_times(file: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

/// The files a snapshot built now from the config at `path` would depend on: the config file,
/// and the files it names if it parses. (Not the files of the config in force: once a reload
/// drops a certificate, that file's content must not make the same config look changed.)
fn on_disk_files(path: &Path) -> Vec<PathBuf> {
    Config::load_with(path, |loaded| match loaded {
        Ok(config) => config.watched_files(),
        Err(_) => vec![path.to_path_buf()],
    })
}

/// Fingerprint of the content of [`on_disk_files`]: what a snapshot built now would hold.
pub(crate) fn on_disk_fingerprint(path: &Path) -> u64 {
    fingerprint_of(&on_disk_files(path), false)
}

/// What one read of the files at `path` tells.
pub(crate) struct OnDisk {
    /// [`on_disk_fingerprint`]'s.
    pub(crate) content: u64,
    /// [`on_disk_stamp`]'s.
    pub(crate) stamp: u64,
    /// Whether one of them was written (or renamed into place) less than the given time ago,
    /// or is empty: a reload asked for by hand right behind a write, or during one, may have
    /// caught it halfway.
    pub(crate) fresh: bool,
}

/// [`OnDisk`] for the files at `path`, written less than `lately` ago counting as fresh: one
/// read of each file (a look that finds the content in force, every poll, reads no more).
pub(crate) fn on_disk_now(path: &Path, lately: Duration) -> OnDisk {
    let files = on_disk_files(path);
    let (content, stamp) = fingerprints(&files);
    let fresh = written_within(&files, lately);
    OnDisk {
        content,
        stamp,
        fresh,
    }
}

/// Whether any of `files` was written less than `lately` ago, or is empty: an empty file is one
/// being written (truncated, its bytes still to come), whatever its write time says (a read in
/// the middle of an in-place write's truncation finds it empty with the time of the write
/// before).
fn written_within(files: &[PathBuf], lately: Duration) -> bool {
    let now = SystemTime::now();
    let empty =
        |file: &PathBuf| crate::files::absent_or_empty(file) == Some(crate::files::NotThere::Empty);
    files.iter().any(|file| {
        empty(file)
            || last_written(file).is_some_and(|at| {
                // A time ahead of the clock (a file server's, or the clock stepped back) is
                // fresh only if it is that little ahead.
                now.duration_since(at)
                    .map_or_else(|ahead| ahead.duration() < lately, |ago| ago < lately)
            })
    })
}

/// When `file` was last written to or renamed into place (its ctime, which a write sets too).
#[cfg(unix)]
fn last_written(file: &Path) -> Option<SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    let since_epoch = Duration::new(u64::try_from(m.ctime()).ok()?, m.ctime_nsec() as u32);
    Some(SystemTime::UNIX_EPOCH + since_epoch)
}

#[cfg(not(unix))]
fn last_written(file: &Path) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

/// Like [`on_disk_fingerprint`], and of when the files were last written: tells whether
/// anything was written to them since, even the same bytes.
pub(crate) fn on_disk_stamp(path: &Path) -> u64 {
    fingerprint_of(&on_disk_files(path), true)
}
