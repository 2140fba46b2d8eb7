//! Where the pid file and the upgrade socket live, and the checks that keep
//! other local users away from them: whoever creates the upgrade socket first
//! is handed the listening sockets during a graceful upgrade, and whoever can
//! write the pid file picks the process `sessiongate reload` signals. So both
//! sit in a directory owned by the gateway's user (or root) that no one else
//! can write, and are themselves owned by that user (or root).

use std::fs::{self, DirBuilder, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// Mode bits that let the group or others write a file, or create, rename
/// and remove entries in a directory.
const GROUP_OTHER_WRITE: u32 = 0o022;

/// The name of the pid file in the default directory.
pub const PID_FILE_NAME: &str = "sessiongate.pid";

/// The name of the upgrade socket in the default directory.
pub const UPGRADE_SOCK_NAME: &str = "upgrade.sock";

/// Why a pid file or upgrade socket path is refused.
#[derive(Debug, thiserror::Error)]
pub enum UnsafePath {
    #[error(
        "{} is owned by uid {owner}, not by this user (uid {me}) or root; \
         refusing to use it",
        path.display()
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{} can be written by other users (mode {mode:04o}, owner uid {owner}); \
         refusing to use it (make it writable by its owner only: chmod go-w)",
        path.display()
    )]
    Writable {
        path: PathBuf,
        mode: u32,
        owner: u32,
    },
    #[error("{} is not a directory", path.display())]
    NotDirectory { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The effective uid: who owns what the gateway creates.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, always succeeds and touches no memory.
    unsafe { libc::geteuid() }
}

/// The directory `pid_file` and `upgrade_sock` default to:
/// `$XDG_RUNTIME_DIR/sessiongate` when that is set (and absolute), else
/// `/run/sessiongate` for root, else `/tmp/sessiongate-<uid>` (created mode
/// 0700 by `run`, and refused when someone else made it first).
pub fn default_dir(xdg_runtime_dir: Option<&str>, uid: u32) -> PathBuf {
    match xdg_runtime_dir {
        Some(dir) if dir.starts_with('/') => Path::new(dir).join("sessiongate"),
        _ if uid == 0 => PathBuf::from("/run/sessiongate"),
        _ => PathBuf::from(format!("/tmp/sessiongate-{uid}")),
    }
}

/// Before serving: creates the directories of `pid_file` and `upgrade_sock`
/// when missing (mode 0700, the last component only), then checks both paths.
pub fn prepare(pid_file: &Path, upgrade_sock: &Path) -> Result<(), UnsafePath> {
    for path in [pid_file, upgrade_sock] {
        let dir = parent(path);
        match DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(UnsafePath::Io {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
    check_pid_file(pid_file)?;
    check_upgrade_sock(upgrade_sock)
}

/// The pid file's directory must be private, and the file, when it exists,
/// owned by us or root and not writable by anyone else (or a planted pid
/// would choose whom `reload` signals).
pub fn check_pid_file(path: &Path) -> Result<(), UnsafePath> {
    check_dir(parent(path))?;
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            check_owner(path, &meta)?;
            check_not_writable(path, &meta)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(UnsafePath::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The upgrade socket's directory must be private, and the socket, when it
/// exists, owned by us or root. Its mode is not checked: Pingora creates it
/// under the umask and connecting needs write permission; the private
/// directory is what keeps other users from creating or replacing it.
pub fn check_upgrade_sock(path: &Path) -> Result<(), UnsafePath> {
    check_dir(parent(path))?;
    match fs::symlink_metadata(path) {
        Ok(meta) => check_owner(path, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(UnsafePath::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `path`'s directory (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A directory owned by us or root that neither group nor others can write.
/// When it is a symlink, the link must be ours or root's too (whoever owns
/// it could point it elsewhere in a shared directory such as `/tmp`).
fn check_dir(dir: &Path) -> Result<(), UnsafePath> {
    let io_error = |source| UnsafePath::Io {
        path: dir.to_owned(),
        source,
    };
    let link = fs::symlink_metadata(dir).map_err(io_error)?;
    check_owner(dir, &link)?;
    let meta = if link.file_type().is_symlink() {
        fs::metadata(dir).map_err(io_error)?
    } else {
        link
    };
    if !meta.is_dir() {
        return Err(UnsafePath::NotDirectory {
            path: dir.to_owned(),
        });
    }
    check_owner(dir, &meta)?;
    check_not_writable(dir, &meta)
}

fn check_owner(path: &Path, meta: &Metadata) -> Result<(), UnsafePath> {
    let me = current_uid();
    if meta.uid() == me || meta.uid() == 0 {
        return Ok(());
    }
    Err(UnsafePath::Owner {
        path: path.to_owned(),
        owner: meta.uid(),
        me,
    })
}

fn check_not_writable(path: &Path, meta: &Metadata) -> Result<(), UnsafePath> {
    let mode = meta.mode() & 0o7777;
    if mode & GROUP_OTHER_WRITE == 0 {
        return Ok(());
    }
    Err(UnsafePath::Writable {
        path: path.to_owned(),
        mode,
        owner: meta.uid(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Gives `path` to uid 65534 (nobody); false when not allowed to (not root).
    fn give_away(path: &Path) -> bool {
        std::os::unix::fs::lchown(path, Some(65534), None).is_ok()
    }

    #[test]
    fn the_default_directory_is_the_users_own() {
        assert_eq!(
            default_dir(Some("/run/user/1000"), 1000),
            Path::new("/run/user/1000/sessiongate")
        );
        assert_eq!(default_dir(None, 0), Path::new("/run/sessiongate"));
        assert_eq!(default_dir(None, 1000), Path::new("/tmp/sessiongate-1000"));
        // A relative XDG_RUNTIME_DIR is ignored, as the spec says.
        assert_eq!(
            default_dir(Some("run"), 1000),
            Path::new("/tmp/sessiongate-1000")
        );
    }

    #[test]
    fn prepare_creates_a_private_directory_and_accepts_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sessiongate");
        let (pid, sock) = (dir.join(PID_FILE_NAME), dir.join(UPGRADE_SOCK_NAME));
        prepare(&pid, &sock).unwrap();
        let meta = fs::metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(meta.uid(), current_uid());
        // Again, with the directory and a pid file of ours in place.
        fs::write(&pid, "1\n").unwrap();
        chmod(&pid, 0o644);
        prepare(&pid, &sock).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused_sticky_or_not() {
        let tmp = tempfile::tempdir().unwrap();
        let pid = tmp.path().join("g.pid");
        check_pid_file(&pid).unwrap();
        for mode in [0o777, 0o1777, 0o770, 0o702] {
            chmod(tmp.path(), mode);
            let err = check_pid_file(&pid).unwrap_err();
            assert!(
                matches!(err, UnsafePath::Writable { .. }),
                "{mode:o}: {err}"
            );
            let shown = err.to_string();
            assert!(shown.contains(&tmp.path().display().to_string()), "{shown}");
            let err = check_upgrade_sock(&tmp.path().join("u.sock")).unwrap_err();
            assert!(
                matches!(err, UnsafePath::Writable { .. }),
                "{mode:o}: {err}"
            );
            let err = prepare(&pid, &tmp.path().join("u.sock")).unwrap_err();
            assert!(
                matches!(err, UnsafePath::Writable { .. }),
                "{mode:o}: {err}"
            );
        }
        chmod(tmp.path(), 0o755);
        check_pid_file(&pid).unwrap();
    }

    #[test]
    fn a_pid_file_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pid = tmp.path().join("g.pid");
        fs::write(&pid, "1\n").unwrap();
        chmod(&pid, 0o666);
        let err = check_pid_file(&pid).unwrap_err();
        assert!(
            matches!(err, UnsafePath::Writable { mode: 0o666, .. }),
            "{err}"
        );
        // The socket's mode comes from the umask: only its owner counts.
        let sock = tmp.path().join("u.sock");
        fs::write(&sock, "").unwrap();
        chmod(&sock, 0o777);
        check_upgrade_sock(&sock).unwrap();
    }

    #[test]
    fn paths_owned_by_another_user_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pid = tmp.path().join("g.pid");
        let sock = tmp.path().join("u.sock");
        fs::write(&pid, "1\n").unwrap();
        fs::write(&sock, "").unwrap();
        if !give_away(&pid) {
            eprintln!("not root: cannot chown, ownership checks not exercised");
            return;
        }
        assert!(give_away(&sock));
        let err = check_pid_file(&pid).unwrap_err();
        assert!(
            matches!(err, UnsafePath::Owner { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("uid 65534"), "{err}");
        let err = check_upgrade_sock(&sock).unwrap_err();
        assert!(
            matches!(err, UnsafePath::Owner { owner: 65534, .. }),
            "{err}"
        );

        // A directory someone else made first (say /tmp/sessiongate-<uid>).
        let dir = tmp.path().join("theirs");
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o700);
        assert!(give_away(&dir));
        let err = prepare(&dir.join(PID_FILE_NAME), &dir.join(UPGRADE_SOCK_NAME)).unwrap_err();
        assert!(
            matches!(err, UnsafePath::Owner { owner: 65534, .. }),
            "{err}"
        );

        // A symlink someone else owns, though it points at our own directory.
        let ours = tmp.path().join("ours");
        fs::create_dir(&ours).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&ours, &link).unwrap();
        check_pid_file(&link.join("g.pid")).unwrap();
        assert!(give_away(&link));
        let err = check_pid_file(&link.join("g.pid")).unwrap_err();
        assert!(
            matches!(err, UnsafePath::Owner { owner: 65534, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        chmod(&file, 0o600);
        let err = check_pid_file(&file.join("g.pid")).unwrap_err();
        assert!(matches!(err, UnsafePath::NotDirectory { .. }), "{err}");
    }
}
