//! Zero-downtime binary upgrade: listening sockets handed from the running process to its
//! successor over a Unix socket (`SCM_RIGHTS`), as nginx and pingora do.
//!
//! Sequence: start the new binary with `portico run --upgrade`; it waits on the upgrade
//! socket. Send the running process SIGQUIT: it connects, hands over every listening socket
//! (proxy listeners and admin) keyed by configured address, stops accepting and drains like
//! SIGTERM. The new process adopts the sockets it still has listeners for, binds the others,
//! and serves. The kernel's accept queue is shared, so no connection is refused meanwhile.
//!
//! Hand-written rather than pingora's `Fds` transfer: that one is tied to pingora's `Server`
//! (its listeners, its bootstrap and its fixed socket-path flow), which Portico does not run
//! (its own listeners feed its own HTTP/1.1 engine); the protocol is one `sendmsg` with the
//! descriptors and their keys, small enough to own and test here.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Default path of the upgrade socket.
pub const DEFAULT_SOCKET: &str = "/tmp/portico-upgrade.sock";

/// Most sockets handed over at once.
const MAX_FDS: usize = 64;

/// The upgrade socket path: `$PORTICO_UPGRADE_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn socket_path() -> PathBuf {
    std::env::var_os("PORTICO_UPGRADE_SOCKET")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// Sockets received from the previous process, by key.
#[derive(Default)]
pub struct Inherited(Vec<(String, RawFd)>);

impl Inherited {
    /// Takes the socket handed over under `key`.
    pub fn take(&mut self, key: &str) -> Option<RawFd> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.swap_remove(i).1)
    }

    /// Closes the sockets no listener claimed (a listener that left the config).
    pub fn close_rest(&mut self) {
        for (key, fd) in self.0.drain(..) {
            tracing::info!(socket = %key, "closing an inherited socket no listener uses any more");
            let _ = nix::unistd::close(fd);
        }
    }
}

/// The key a listening socket is handed over under.
pub fn key(kind: &str, address: &str) -> String {
    format!("{kind}={address}")
}

/// New process: waits up to `wait` for the running process to hand its sockets over.
pub fn receive(path: &Path, wait: Duration) -> anyhow::Result<Inherited> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on the upgrade socket {}: {e}",
            path.display()
        )
    })?;
    listener.set_nonblocking(true)?;
    tracing::info!(socket = %path.display(), "waiting for the running portico to hand over its sockets (send it SIGQUIT)");
    let deadline = Instant::now() + wait;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let _ = std::fs::remove_file(path);
                    anyhow::bail!(
                        "no running portico handed over its sockets within {wait:?} (send it SIGQUIT after starting with --upgrade)"
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => anyhow::bail!("upgrade socket: {e}"),
        }
    };
    let _ = std::fs::remove_file(path);
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 16 * 1024];
    let (bytes, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v);
            }
        }
        (msg.bytes, fds)
    };
    let text = std::str::from_utf8(&buf[..bytes])
        .map_err(|_| anyhow::anyhow!("upgrade: the socket list is not text"))?;
    let keys: Vec<String> = text.lines().map(str::to_string).collect();
    if keys.len() != fds.len() {
        let n = fds.len();
        for fd in fds {
            let _ = nix::unistd::close(fd);
        }
        anyhow::bail!("upgrade: {} socket names for {n} sockets", keys.len());
    }
    tracing::info!(sockets = ?keys, "took over the sockets of the running portico");
    Ok(Inherited(keys.into_iter().zip(fds).collect()))
}

/// Running process: hands `sockets` to the successor waiting on `path`.
pub fn send(path: &Path, sockets: &[(String, OwnedFd)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "upgrade socket not ready; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => anyhow::bail!(
                "no new portico is waiting on {} ({e}); start one with `portico run --upgrade` first",
                path.display()
            ),
        }
    };
    let names = sockets
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let iov = [IoSlice::new(names.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}
