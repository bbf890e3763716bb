//! Transparent capture in a Linux user + network namespace (no root needed): every outbound TCP connection
//! and every DNS query of the app is redirected by nf_tables to listeners that the helper hands to doppel.
//! doppel's sockets for those listeners live in the namespace; its upstream connections live on the host.

pub(crate) mod helper;
mod netlink;
mod wire;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::{AppCommand, AppExit, AppHandle, AppLink, BoxFuture, Capture, Egress, Session, tee_output};
use crate::error::{Error, Result};
use wire::{Reply, Request};

/// Capture by namespace. `mounts` are bind mounts made for the app (source, target).
#[derive(Default, Clone)]
pub struct Sandbox {
    pub mounts: Vec<(String, String)>,
}

/// The channel to the helper: one request at a time, replies routed by a reader thread.
struct Helper {
    sock: Arc<OwnedFd>,
    lock: Mutex<()>,
    replies: Mutex<std_mpsc::Receiver<(Reply, Vec<OwnedFd>)>>,
}

impl Helper {
    fn request(&self, req: &Request) -> std::io::Result<(Reply, Vec<OwnedFd>)> {
        let _one_at_a_time = self.lock.lock().map_err(|_| std::io::Error::other("helper lock poisoned"))?;
        wire::send(self.sock.as_fd(), req, &[])?;
        let rx = self.replies.lock().map_err(|_| std::io::Error::other("helper lock poisoned"))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the sandbox helper is gone"))
    }
}

struct SandboxLink {
    helper: Arc<Helper>,
    helper_pid: i32,
    own_port: u16,
}

impl SandboxLink {
    async fn marked_socket(&self, v6: bool) -> std::io::Result<TcpSocket> {
        let helper = self.helper.clone();
        let (reply, mut fds) = tokio::task::spawn_blocking(move || helper.request(&Request::Socket { v6 }))
            .await
            .map_err(std::io::Error::other)??;
        match (reply, fds.pop()) {
            (Reply::Socket, Some(fd)) => {
                let std = std::net::TcpStream::from(fd);
                std.set_nonblocking(true)?;
                Ok(TcpSocket::from_std_stream(std))
            }
            (Reply::SocketFailed { error }, _) => Err(std::io::Error::other(error)),
            (other, _) => Err(std::io::Error::other(format!("unexpected helper reply {other:?}"))),
        }
    }
}

impl AppLink for SandboxLink {
    fn connect(&self, port: u16) -> BoxFuture<'_, std::io::Result<TcpStream>> {
        Box::pin(async move {
            let v4 = self.marked_socket(false).await?;
            match v4.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
                Ok(s) => Ok(s),
                Err(e4) => {
                    // The app may listen on ::1 only.
                    let v6 = self.marked_socket(true).await?;
                    v6.connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await.map_err(|_| e4)
                }
            }
        })
    }

    fn listening_ports(&self) -> Vec<u16> {
        super::listening_ports_of(self.helper_pid).into_iter().filter(|p| *p != self.own_port).collect()
    }
}

fn setup_error(stage: &str, error: &str, errno: i32) -> Error {
    let explicit = "Or run without the sandbox: `--no-sandbox` with `--dep NAME=HOST:PORT` for each dependency \
                    and `--port EXPOSED:APP` (see README, explicit mode).";
    match stage {
        "unshare" | "uid_map" => Error::env(format!(
            "doppel could not create its sandbox: unprivileged user namespaces are not available here ({stage}: \
             {error}).\nEnable them with one of:\n  sudo sysctl -w kernel.unprivileged_userns_clone=1        \
             (Debian and derivatives)\n  sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0   \
             (Ubuntu 23.10 and later)\n  sudo sysctl -w user.max_user_namespaces=15000   (when it is 0)\n{explicit}"
        )),
        "nftables" => Error::env(format!(
            "doppel could not install its redirect rules in the sandbox ({error}, errno {errno}). The kernel needs \
             nf_tables with NAT redirect (CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_REDIR, \
             CONFIG_NF_TABLES_INET); on a modular kernel load them with `sudo modprobe nft_redir nft_nat`.\n{explicit}"
        )),
        _ => Error::env(format!("doppel could not set up its sandbox ({stage}: {error}).\n{explicit}")),
    }
}

impl Capture for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn start<'a>(&'a self, cmd: &'a AppCommand) -> BoxFuture<'a, Result<Session>> {
        Box::pin(start(cmd.clone(), self.mounts.clone()))
    }
}

async fn start(cmd: AppCommand, mounts: Vec<(String, String)>) -> Result<Session> {
    let (ours, stderr) = spawn_helper(&cmd)?;
    let ours = Arc::new(ours);
    let (helper_pid, tcp_port, [tcp4, tcp6, udp4, udp6]) = helper_ready(&ours).await?;
    let (helper, exit_rx) = read_replies(ours)?;
    let pid = spawn_app(&helper, &cmd, mounts).await?;
    let (egress_tx, egress_rx) = mpsc::channel(1024);
    let tasks = [tcp4, tcp6]
        .into_iter()
        .map(|l| Ok(accept_egress(tcp_listener(l)?, egress_tx.clone())))
        .collect::<Result<_>>()?;
    let link = Arc::new(SandboxLink { helper: helper.clone(), helper_pid, own_port: tcp_port });
    Ok(Session {
        egress: egress_rx,
        datagrams: vec![(53, udp_socket(udp4)?), (53, udp_socket(udp6)?)],
        app: AppHandle::new(pid, exit_rx, stderr),
        link,
        guard: Box::new((helper, super::TaskGuard(tasks))),
    })
}

/// Starts doppel's own binary as the sandbox helper (`__sandbox`), its end of a socket pair on fd 3.
fn spawn_helper(cmd: &AppCommand) -> Result<(OwnedFd, Arc<Mutex<super::StderrTail>>)> {
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::env(format!("cannot create the sandbox channel: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| Error::env(format!("cannot find doppel's own binary: {e}")))?;
    let mut helper_cmd = std::process::Command::new(exe);
    helper_cmd.arg("__sandbox").stdin(std::process::Stdio::inherit()).stderr(std::process::Stdio::piped());
    if cmd.quiet {
        helper_cmd.stdout(std::process::Stdio::piped());
    }
    let theirs_raw = theirs.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; it puts the helper end on fd 3 without CLOEXEC.
    unsafe {
        helper_cmd.pre_exec(move || {
            if libc::dup2(theirs_raw, helper::HELPER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(helper_cmd)
        .spawn()
        .map_err(|e| Error::env(format!("cannot start the sandbox helper: {e}")))?;
    drop(theirs);
    let stderr = tee_output(child.stdout.take(), child.stderr.take(), cmd.quiet);
    // The helper exits by itself when doppel closes the channel; reap it in the background.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok((ours, stderr))
}

/// Waits for the helper to have set up the namespace: its pid, its listener's port, and the listeners it
/// hands over (TCP v4 and v6, UDP v4 and v6).
async fn helper_ready(sock: &Arc<OwnedFd>) -> Result<(i32, u16, [OwnedFd; 4])> {
    let sock = sock.clone();
    let (reply, fds) = tokio::task::spawn_blocking(move || wire::recv::<Reply>(sock.as_fd()))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| Error::env(format!("sandbox helper: {e}")))?
        .ok_or_else(|| Error::env("the sandbox helper exited during set-up"))?;
    match reply {
        Reply::Ready { helper_pid, tcp_port, .. } => {
            let fds: [OwnedFd; 4] =
                fds.try_into().map_err(|_| Error::internal("sandbox helper sent the wrong number of descriptors"))?;
            Ok((helper_pid, tcp_port, fds))
        }
        Reply::Failed { stage, error, errno } => Err(setup_error(&stage, &error, errno)),
        other => Err(Error::internal(format!("unexpected sandbox helper reply {other:?}"))),
    }
}

/// A reader thread for the helper's messages: exit events go to the returned watch channel, everything
/// else to whoever made the request.
fn read_replies(sock: Arc<OwnedFd>) -> Result<(Arc<Helper>, watch::Receiver<Option<AppExit>>)> {
    let (exit_tx, exit_rx) = watch::channel(None);
    let (reply_tx, reply_rx) = std_mpsc::channel();
    let reader = sock.clone();
    std::thread::Builder::new()
        .name("doppel-sandbox".into())
        .spawn(move || {
            while let Ok(Some((reply, fds))) = wire::recv::<Reply>(reader.as_fd()) {
                match reply {
                    Reply::Exited { code, signal } => {
                        let exit = match (code, signal) {
                            (Some(c), _) => AppExit::Code(c),
                            (None, s) => AppExit::Signal(s.unwrap_or(0)),
                        };
                        let _ = exit_tx.send(Some(exit));
                    }
                    other => {
                        if reply_tx.send((other, fds)).is_err() {
                            break;
                        }
                    }
                }
            }
            // The helper is gone: if the app had not been reported as exited, it is dead now.
            exit_tx.send_if_modified(|e| {
                if e.is_none() {
                    *e = Some(AppExit::Signal(libc::SIGKILL));
                    true
                } else {
                    false
                }
            });
        })
        .map_err(|e| Error::internal(format!("cannot start the sandbox reader: {e}")))?;
    Ok((Arc::new(Helper { sock, lock: Mutex::new(()), replies: Mutex::new(reply_rx) }), exit_rx))
}

/// Asks the helper to start the app in the sandbox; its pid.
async fn spawn_app(helper: &Arc<Helper>, cmd: &AppCommand, mounts: Vec<(String, String)>) -> Result<i32> {
    let argv0 = cmd.argv.first().cloned().unwrap_or_default();
    let h = helper.clone();
    let spawn = Request::Spawn { argv: cmd.argv.clone(), env: cmd.env.clone(), mounts };
    let (reply, _) = tokio::task::spawn_blocking(move || h.request(&spawn))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| Error::env(format!("sandbox helper: {e}")))?;
    match reply {
        Reply::Spawned { pid } => Ok(pid),
        Reply::SpawnFailed { not_found: true, .. } => {
            Err(Error::input(format!("command not found: {argv0} (is it installed and on PATH?)")))
        }
        Reply::SpawnFailed { error, .. } => Err(Error::input(error)),
        other => Err(Error::internal(format!("unexpected sandbox helper reply {other:?}"))),
    }
}

/// Hands every connection the app opens (redirected to `listener` in the sandbox) on with its original
/// destination.
fn accept_egress(listener: TcpListener, tx: mpsc::Sender<Egress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stream = super::accept(&listener).await;
            match original_dst(&stream) {
                Ok(dest) => {
                    if tx.send(Egress { stream, dest: dest.to_string(), port: dest.port() }).await.is_err() {
                        break;
                    }
                }
                Err(e) => tracing::warn!("captured connection without an original destination: {e}"),
            }
        }
    })
}

fn tcp_listener(fd: OwnedFd) -> Result<TcpListener> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true).map_err(|e| Error::internal(e.to_string()))?;
    TcpListener::from_std(std).map_err(|e| Error::internal(e.to_string()))
}

fn udp_socket(fd: OwnedFd) -> Result<UdpSocket> {
    let std = std::net::UdpSocket::from(fd);
    std.set_nonblocking(true).map_err(|e| Error::internal(e.to_string()))?;
    UdpSocket::from_std(std).map_err(|e| Error::internal(e.to_string()))
}

fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = if stream.local_addr()?.is_ipv4() { sock.original_dst_v4()? } else { sock.original_dst_v6()? };
    addr.as_socket().ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}
