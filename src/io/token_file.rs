//! Token files from disk: [`TokenSet::load_file`], the one reader every caller uses (the CLI's
//! commands, the service at start and at every reload).

use std::path::Path;

use crate::core::error::Error;
use crate::core::token::MAX_TOKEN_FILE_BYTES;
use crate::core::token::set::TokenSet;
use crate::io::files::read_regular_file;

impl TokenSet {
    /// Loads a token file as [`TokenSet::load`] does, with the file's name in every diagnostic.
    /// The file must be a regular file (a link to one is fine, as a Kubernetes ConfigMap mounts
    /// it): a FIFO, a device or a directory is refused without waiting or reading, and at most
    /// [`MAX_TOKEN_FILE_BYTES`] + 1 bytes are read. [`TokenSet::digest`] is the contents'
    /// SHA-256, for reloading only what changed.
    ///
    /// This is blocking file I/O: a server calls it from a blocking thread with a time bound.
    /// Refusals are `config_invalid`, naming the path and the reason.
    ///
    /// ```
    /// let e = iam_join::TokenSet::load_file("/dev/zero").unwrap_err();
    /// assert_eq!(e.kind(), iam_join::ErrorKind::ConfigInvalid);
    /// assert!(e.detail().contains("not a regular file"));
    /// ```
    pub fn load_file(path: impl AsRef<Path>) -> Result<TokenSet, Error> {
        let path = path.as_ref();
        let (bytes, _) = read_regular_file(path, MAX_TOKEN_FILE_BYTES).map_err(Error::config_invalid)?;
        let text =
            String::from_utf8(bytes).map_err(|_| Error::config_invalid(format!("{}: not UTF-8", path.display())))?;
        Ok(TokenSet::load(&text).with_file_name(&path.display().to_string()))
    }
}
