//! Messages between doppel and its sandbox helper: one JSON object per SOCK_SEQPACKET datagram, with file
//! descriptors (listeners, sockets) attached as SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// doppel -> helper.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start the app inside the namespaces.
    Spawn { argv: Vec<String>, env: Vec<(String, String)>, mounts: Vec<(String, String)> },
    /// A fresh TCP socket created inside the namespace, marked so the redirect rules let it through.
    Socket { v6: bool },
}

/// helper -> doppel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Reply {
    /// Namespaces are set up; fds: tcp4, tcp6, udp4, udp6 listeners.
    Ready {
        helper_pid: i32,
        tcp_port: u16,
        dns_port: u16,
    },
    /// Setting up the namespaces failed at `stage`.
    Failed {
        stage: String,
        error: String,
        errno: i32,
    },
    Spawned {
        pid: i32,
    },
    SpawnFailed {
        error: String,
        not_found: bool,
    },
    /// fds: the socket.
    Socket,
    SocketFailed {
        error: String,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let data = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let iov = [IoSlice::new(&data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one message; `Ok(None)` when the peer is gone.
pub fn recv<T: for<'de> Deserialize<'de>>(sock: BorrowedFd<'_>) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 8]);
    let (n, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel just installed these descriptors in this process for us.
                            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)?;
    Ok(Some((msg, fds)))
}
