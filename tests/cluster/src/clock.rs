//! A controllable wall clock for chosen nodes: `clockshift.c`, compiled on the host
//! with `cc` the first time a cluster asks for it, preloaded into the node's
//! `redis-server`, and given an offset through a file in a host directory that is
//! bind-mounted (read-only) into that container. The library is self-contained (only
//! libc's `syscall`, `open`, `read`, `close`, `getenv`), so the same build works in the
//! locally built image and in the official glibc-based `redis:7.4`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock, PoisonError},
    time::Duration,
};

use crate::Error;

/// Where the node's clock directory appears inside its container.
pub(crate) const CONTAINER_DIR: &str = "/fredlock-clock";
/// The library's name, in the host directory and in the container.
const LIBRARY: &str = "clockshift.so";
/// The offset file's name (signed milliseconds, read on every wall-clock call).
const OFFSET_FILE: &str = "offset";
/// The variable that tells the library where the offset file is.
pub(crate) const OFFSET_ENV: &str = "FREDLOCK_CLOCK_OFFSET_FILE";
const SOURCE: &str = include_str!("clockshift.c");

/// The library built once per test process, or why it could not be.
static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Compiles `clockshift.c` into a per-process temporary directory (once).
fn library() -> Result<PathBuf, Error> {
    BUILT
        .get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("fredlock-clockshift-{}", std::process::id()));
            fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let source = dir.join("clockshift.c");
            fs::write(&source, SOURCE).map_err(|e| format!("write {}: {e}", source.display()))?;
            let out = dir.join(LIBRARY);
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
            let output = Command::new(&cc)
                .args([
                    "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o",
                ])
                .arg(&out)
                .arg(&source)
                .output()
                .map_err(|e| format!("cannot run `{cc}` (install Debian's gcc): {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "`{cc}` failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            Ok(out)
        })
        .clone()
        .map_err(|message| Error::Command {
            command: "cc -shared clockshift.c".to_string(),
            message,
        })
}

/// One node's clock: a host directory holding the library and the offset file.
pub(crate) struct FakeClock {
    dir: PathBuf,
    /// The offset written last, in milliseconds.
    offset_ms: Mutex<i64>,
}

impl FakeClock {
    /// Creates the directory for node `index` with offset 0. Readable by every user:
    /// the official image's entrypoint runs `redis-server` as the `redis` user.
    pub(crate) fn new(index: usize) -> Result<FakeClock, Error> {
        let library = library()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "fredlock-clock-{}-{nanos}-{index}",
            std::process::id()
        ));
        let shown = dir.display().to_string();
        let io = |what: &str, e: std::io::Error| Error::Command {
            command: format!("{what} {shown}"),
            message: e.to_string(),
        };
        fs::create_dir_all(&dir).map_err(|e| io("mkdir", e))?;
        // From here on, dropping `clock` removes the directory again on error.
        let clock = FakeClock {
            dir,
            offset_ms: Mutex::new(0),
        };
        let lib = clock.dir.join(LIBRARY);
        fs::copy(&library, &lib).map_err(|e| io("copy the library into", e))?;
        for (path, mode) in [(&clock.dir, 0o755), (&lib, 0o644)] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| io("chmod", e))?;
        }
        clock.write(0)?;
        Ok(clock)
    }

    pub(crate) fn host_dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn preload() -> String {
        format!("{CONTAINER_DIR}/{LIBRARY}")
    }

    pub(crate) fn offset_file() -> String {
        format!("{CONTAINER_DIR}/{OFFSET_FILE}")
    }

    pub(crate) fn offset(&self) -> Duration {
        let ms = *self
            .offset_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Duration::from_millis(ms.unsigned_abs())
    }

    /// Moves the clock forward by `by` (cumulative).
    pub(crate) fn jump(&self, by: Duration) -> Result<(), Error> {
        let mut offset = self
            .offset_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let next = offset.saturating_add(by);
        self.write(next)?;
        *offset = next;
        Ok(())
    }

    /// Writes the offset to a new file and renames it over the old one, so the node
    /// never reads a half-written number (an empty file would mean offset 0).
    fn write(&self, ms: i64) -> Result<(), Error> {
        let tmp = self.dir.join(format!("{OFFSET_FILE}.new"));
        let target = self.dir.join(OFFSET_FILE);
        let io = |e: std::io::Error| Error::Command {
            command: format!("write {}", target.display()),
            message: e.to_string(),
        };
        fs::write(&tmp, format!("{ms}\n")).map_err(io)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io)?;
        fs::rename(&tmp, &target).map_err(io)
    }
}

impl Drop for FakeClock {
    fn drop(&mut self) {
        // Best effort: a directory left in the temporary folder harms nothing.
        let _ = fs::remove_dir_all(&self.dir);
    }
}
