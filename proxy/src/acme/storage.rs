//! ACME files on disk, under `tls.acme.storage`:
//!
//! ```text
//! <storage>/<directory key>/account.json    account credentials (private key), mode 0600
//! <storage>/<directory key>/lock            held while ordering (flock)
//! <storage>/<directory key>/certs/<host>.pem private key and chain, mode 0600
//! ```
//!
//! The directory key is the CA's directory URL made file-safe, so certificates from a test CA
//! and from production never mix. Directories are created mode 0700. Every file is written
//! to a temporary name and renamed over the old one: a reader (another Portico process, or
//! this one after a restart) sees the old file or the new one, never half of either. The lock
//! is an advisory `flock` held for a whole order: two processes sharing the storage do not
//! order the same certificate at once, and the second finds the first's result and uses it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// The storage of one CA directory.
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
}

/// The lock, released on drop.
#[derive(Debug)]
pub struct Locked {
    _file: File,
}

/// A file-safe key for a directory URL: `https://acme-v02.api.letsencrypt.org/directory`
/// becomes `acme-v02.api.letsencrypt.org_directory`.
pub fn directory_key(url: &str) -> String {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let key: String = rest
        .trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Never `.` or `..`, never empty.
    if key.chars().all(|c| c == '.') {
        format!("_{key}")
    } else {
        key
    }
}

/// Creates `dir` and any missing parents; every directory created here gets mode 0700 (an
/// existing storage root keeps the mode its operator gave it).
fn create_private_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot restrict {} to mode 0700: {e}", dir.display()))
}

impl Storage {
    /// The storage for `directory` under `root` (nothing is created yet).
    pub fn new(root: &Path, directory: &str) -> Self {
        Self {
            dir: root.join(directory_key(directory)),
        }
    }

    /// Where this CA's files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `host`'s certificate file.
    pub fn cert_path(&self, host: &str) -> PathBuf {
        self.dir.join("certs").join(format!("{host}.pem"))
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// Writes `data` to `path` atomically with mode 0600.
    fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
        let parent = path.parent().unwrap_or(Path::new("."));
        create_private_dir(parent)?;
        let tmp = parent.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id()
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
    }

    /// The stored PEM of `host`, if any.
    pub fn read_cert(&self, host: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.cert_path(host);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Stores `host`'s private key and chain.
    pub fn write_cert(&self, host: &str, pem: &[u8]) -> Result<(), String> {
        Self::write_private(&self.cert_path(host), pem)
    }

    /// The stored account credentials (JSON), if any.
    pub fn read_account(&self) -> Result<Option<Vec<u8>>, String> {
        let path = self.account_path();
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Stores the account credentials.
    pub fn write_account(&self, json: &[u8]) -> Result<(), String> {
        Self::write_private(&self.account_path(), json)
    }

    /// Takes the storage lock, waiting while another process holds it (polling, so shutdown
    /// interrupts the wait). `None` when shutdown came first.
    pub async fn lock(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Locked>, String> {
        create_private_dir(&self.dir)?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut waited = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(Locked { _file: file })),
                Err(fs::TryLockError::WouldBlock) => {
                    if !waited {
                        tracing::info!(
                            lock = %path.display(),
                            "another Portico process is ordering from this CA; waiting for it"
                        );
                        waited = true;
                    }
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(format!("cannot lock {}: {e}", path.display()))
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_keys_are_file_safe() {
        assert_eq!(
            directory_key("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            directory_key("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(directory_key("https://../"), "_..");
        assert!(!directory_key("https://x/../../etc").contains('/'));
    }

    #[tokio::test]
    async fn files_are_private_and_the_lock_excludes_a_second_holder() {
        let root = tempfile::tempdir().unwrap();
        let s = Storage::new(root.path(), "https://ca.test/dir");
        s.write_cert("a.example", b"pem").unwrap();
        assert_eq!(s.read_cert("a.example").unwrap().unwrap(), b"pem");
        assert_eq!(s.read_cert("b.example").unwrap(), None);
        let mode = fs::metadata(s.cert_path("a.example"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(s.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let (_tx, mut rx) = watch::channel(false);
        let held = s.lock(&mut rx).await.unwrap().unwrap();
        let s2 = s.clone();
        let (tx2, mut rx2) = watch::channel(false);
        let waiter = tokio::spawn(async move { s2.lock(&mut rx2).await.map(|l| l.is_some()) });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!waiter.is_finished(), "a second holder waits");
        drop(held);
        assert!(waiter.await.unwrap().unwrap(), "and gets it once released");
        drop(tx2);
    }
}
