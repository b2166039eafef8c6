//! Reading the operator's files (token files, challenge key files) without trusting the path:
//! opened without blocking, checked to be a regular file after opening (the path can be swapped
//! for a FIFO, a device or a directory at any moment, and a Kubernetes ConfigMap is a chain of
//! symbolic links, so links are followed and their target's type is what counts), and read up to
//! a limit plus one byte, never whole.
//!
//! The read itself is blocking file I/O: a server calls these from a blocking thread (tokio's
//! `spawn_blocking`) with a time bound, so a stalled file system cannot stop it answering.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

/// Why a file could not be read, for an operator: the path, what it is, and what was wrong.
pub(crate) fn read_regular_file(path: &Path, limit: usize) -> Result<(Vec<u8>, std::fs::Metadata), String> {
    let shown = path.display();
    let file = open_nonblocking(path).map_err(|e| format!("{shown}: {e}"))?;
    // The type of what was opened, not of what the path names now.
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file (it is {}); refused", kind_of(&meta)));
    }
    if meta.len() > limit as u64 {
        return Err(format!("{shown}: larger than {limit} bytes"));
    }
    // The size can change after the check: read at most one byte past the limit.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(limit).min(limit) + 1);
    file.take(limit as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("{shown}: {e}"))?;
    if bytes.len() > limit {
        return Err(format!("{shown}: larger than {limit} bytes"));
    }
    Ok((bytes, meta))
}

/// A file holding a secret (a key ring, a CA key, a JWT key), read as [`read_regular_file`] reads
/// and into a zeroizing buffer. On Unix, a file that group or others may read or write is refused
/// (as ssh refuses a private key). Refusals are `config_invalid`, name the file and never hold
/// its contents.
pub(crate) fn read_private_file(
    path: &Path,
    limit: usize,
    what: &str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::core::error::Error> {
    let (bytes, meta) = read_regular_file(path, limit).map_err(crate::core::error::Error::config_invalid)?;
    let bytes = zeroize::Zeroizing::new(bytes);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(crate::core::error::Error::config_invalid(format!(
                "{}: the {what} is accessible by group or others (mode {mode:o}); chmod 600 it \
                 (in Kubernetes, mount the Secret with defaultMode: 0400)",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(bytes)
}

impl crate::core::challenge::ChallengeKeys {
    /// A key ring from a key file ([`ChallengeKeys::parse`](crate::core::challenge::ChallengeKeys::parse)),
    /// read as token files are: a regular file only, at most
    /// [`MAX_KEY_FILE_BYTES`](crate::core::challenge::MAX_KEY_FILE_BYTES), into a zeroizing buffer.
    /// On Unix, a file that group or others may read or write is refused (as ssh refuses a
    /// private key): whoever reads it can mint challenges. Refusals are `config_invalid` and
    /// never hold the key.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self, crate::core::error::Error> {
        let path = path.as_ref();
        let bytes = read_private_file(path, crate::core::challenge::MAX_KEY_FILE_BYTES, "key file")?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| crate::core::error::Error::config_invalid(format!("{}: not UTF-8", path.display())))?;
        Self::parse(text)
    }
}

/// Opening a FIFO for reading blocks until a writer comes; `O_NONBLOCK` makes it return at once
/// (and changes nothing for a regular file's reads).
#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() { "a directory" } else { "not a regular file" }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_never_past_the_limit() {
        let dir = std::env::temp_dir().join(format!("iam-join-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, b"12345").unwrap();
        assert_eq!(read_regular_file(&good, 5).unwrap().0, b"12345", "positive control");
        assert!(read_regular_file(&good, 4).unwrap_err().contains("larger than 4 bytes"));
        // A link is followed; the type of its target decides.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(read_regular_file(&link, 5).is_ok());
        let zero = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_regular_file(&zero, 1 << 20).unwrap_err().contains("a character device"));
        assert!(read_regular_file(&dir, 5).unwrap_err().contains("a directory"));
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let start = std::time::Instant::now();
        assert!(read_regular_file(&fifo, 5).unwrap_err().contains("a FIFO"));
        assert!(start.elapsed() < std::time::Duration::from_secs(1), "opening a FIFO did not block");
        assert!(read_regular_file(&dir.join("missing"), 5).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
