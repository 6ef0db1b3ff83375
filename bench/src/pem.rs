//! The PEM files the tool's TLS is given (`--ca`, `--cert`, `--key`, echo's `--tls-*`), read
//! as the proxy reads its own: a regular file of at most [`MAX_BYTES`], so a slip of the path
//! (`/dev/zero`, a named pipe) is an error, not a process filling memory or waiting forever.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Far above any certificate chain or CA bundle (a system's whole bundle is about 200 KiB).
const MAX_BYTES: u64 = 4 << 20;

/// The certificates in the PEM file `path`, in file order.
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", path.display()))
}

/// The private key in the PEM file `path` (PKCS#8, SEC1 or PKCS#1).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| format!("parse {}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let too_large = || format!("{}: larger than 4 MiB: not a PEM file", path.display());
    let meta = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{}: not a regular file (a PEM file is expected)",
            path.display()
        );
    }
    if meta.len() > MAX_BYTES {
        bail!(too_large());
    }
    let mut pem = Vec::new();
    File::open(path)
        .and_then(|file| file.take(MAX_BYTES + 1).read_to_end(&mut pem))
        .with_context(|| format!("read {}", path.display()))?;
    // Grown since it was looked at.
    if pem.len() as u64 > MAX_BYTES {
        bail!(too_large());
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_a_folder_or_a_huge_file_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.pem");
        File::create(&huge).unwrap().set_len(MAX_BYTES + 1).unwrap();
        for (path, expected) in [
            (Path::new("/dev/zero"), "not a regular file"),
            (dir.path(), "not a regular file"),
            (huge.as_path(), "larger than 4 MiB"),
            (Path::new("/nonexistent/ca.pem"), "read /nonexistent/ca.pem"),
        ] {
            let error = format!("{:#}", certificates(path).unwrap_err());
            assert!(error.contains(expected), "{path:?}: {error}");
        }
    }

    #[test]
    fn a_named_pipe_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ca.pem");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let error = format!("{:#}", private_key(&fifo).unwrap_err());
        assert!(error.contains("not a regular file"), "{error}");
    }
}
