//! Reading the files an operator points wsgate at (its config, certificates and keys): regular
//! files only, of a bounded size, and never blocking.
//!
//! A reload reads them on the one task that applies reloads. A named pipe at one of those
//! paths would block its open until a writer came (none ever does: reloads stopped for good,
//! silently), and `/dev/zero` or a runaway file would be read until memory ran out, taking
//! every tunnel down with the process. So each file is opened without blocking, checked to be
//! a regular file, and read up to a limit no real config or certificate chain comes near.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest file read: a config of 10,000 routes is about 1 MiB (a Kubernetes ConfigMap
/// holds at most 1 MiB), a CA bundle well under. Parsing TOML takes up to ~75 times a file's
/// size in memory at its peak (a file of nothing but small numbers): 4 MiB keeps a runaway
/// file's reload within a few hundred MiB where 16 MiB took over a GiB.
const MAX_BYTES: u64 = 4 << 20;

/// The contents of the regular file at `path`, at most [`MAX_BYTES`] of them.
pub(crate) fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => io::Error::new(e.kind(), not_found(path)),
        _ => e,
    })?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::other("it is a folder, not a file"));
    }
    if !meta.is_file() {
        return Err(io::Error::other(
            "not a regular file (a named pipe, a device or a socket)",
        ));
    }
    let too_large = || io::Error::other(format!("larger than {} MiB", MAX_BYTES >> 20));
    if meta.len() > MAX_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the look and the read.
    (&mut file).take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// How a file is not there to be read, if it clearly is not: about to be written (between a
/// delete and the new file, or truncated first), so waited for rather than reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotThere {
    Absent,
    Empty,
}

/// Why `file` is not found, in words: a link whose target is not there (a Kubernetes volume's
/// `tls.crt → ..data/tls.crt` while `..data` is being swapped, a link left dangling by hand)
/// is there to `ls`, and "not found" alone would send the operator looking at the wrong file.
/// Through a chain of links, the last one is named: the one whose target is missing.
pub(crate) fn not_found(file: &Path) -> String {
    let mut link = file.to_path_buf();
    let mut through = Vec::new();
    // A loop of links ends the walk (the kernel gives up after 40 too).
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&link) else {
            break;
        };
        let next = link
            .parent()
            .map_or_else(|| target.clone(), |dir| dir.join(&target));
        if next.symlink_metadata().is_err() {
            let via = match through.is_empty() {
                true => String::new(),
                false => format!(" (through {})", through.join(" → ")),
            };
            return format!("is a link{via} to {}, which is not there", target.display());
        }
        through.push(target.display().to_string());
        link = next;
    }
    "not found".to_string()
}

/// Whether `file` is clearly not there (a dangling link included) or is there but empty.
pub(crate) fn absent_or_empty(file: &Path) -> Option<NotThere> {
    if matches!(file.try_exists(), Ok(false)) {
        return Some(NotThere::Absent);
    }
    // A pipe or a device has no length either: refused as what it is, not waited for.
    let empty = |m: std::fs::Metadata| m.is_file() && m.len() == 0;
    std::fs::metadata(file)
        .is_ok_and(empty)
        .then_some(NotThere::Empty)
}

/// Opens `path` for reading; a named pipe opens at once instead of waiting for a writer.
fn open(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wsgate.toml");
        std::fs::write(&path, b"[proxy]\n").unwrap();
        assert_eq!(read(&path).unwrap(), b"[proxy]\n");
    }

    #[test]
    fn a_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_dangling_link_is_said_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("tls.crt");
        std::os::unix::fs::symlink("..data/tls.crt", &link).unwrap();
        let err = read(&link).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "is a link to ..data/tls.crt, which is not there"
        );
        let chain = dir.path().join("chain.crt");
        std::os::unix::fs::symlink("tls.crt", &chain).unwrap();
        let err = read(&chain).unwrap_err();
        assert_eq!(
            err.to_string(),
            "is a link (through tls.crt) to ..data/tls.crt, which is not there"
        );
        let err = read(&dir.path().join("none.crt")).unwrap_err();
        assert_eq!(err.to_string(), "not found");
    }

    #[cfg(unix)]
    #[test]
    fn a_device_is_refused_not_read_forever() {
        let err = read(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_named_pipe_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wsgate.toml");
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.unwrap().success());
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("named pipe"), "{err}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.pem");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_BYTES + 1).unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("larger than 4 MiB"), "{err}");
    }
}
