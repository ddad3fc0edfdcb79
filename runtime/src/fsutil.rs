//! Small file-system helpers shared by the runtime's stores.

use std::io::Write;
use std::path::Path;

use crate::Error;

/// Write `bytes` to `path` atomically, readable and writable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let context = || format!("writing `{}`", path.display());
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(context(), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(context(), e))?;
    }
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(context(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(context(), e.error))?;
    Ok(())
}

/// Create `dir` (and its parents) if missing, accessible by the owner only.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating `{}`", dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("securing `{}`", dir.display()), e))?;
    }
    Ok(())
}
