//! The part of the sandbox that runs inside the namespaces: `doppel __sandbox`, started by doppel with a
//! SOCK_SEQPACKET socket on fd 3. It creates the user, network and mount namespaces, makes every address
//! local, installs the redirect rules, hands the capture listeners to doppel, starts the app, and creates
//! marked sockets on request (doppel's own connections to the app must not be redirected).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sched::{CloneFlags, unshare};
use socket2::{Domain, Socket, Type};

use super::netlink;
use super::wire::{self, Reply, Request};

/// Marks doppel's own sockets inside the sandbox ("dopp").
pub const BYPASS_MARK: u32 = 0x646f_7070;

pub const HELPER_FD: i32 = 3;

static APP_PID: AtomicI32 = AtomicI32::new(0);

fn fail(sock: &OwnedFd, stage: &str, err: std::io::Error) -> ! {
    let reply = Reply::Failed { stage: stage.into(), error: err.to_string(), errno: err.raw_os_error().unwrap_or(0) };
    let _ = wire::send(sock.as_fd(), &reply, &[]);
    std::process::exit(1)
}

fn write_file(path: &str, data: &str) -> std::io::Result<()> {
    std::fs::write(path, data).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))
}

fn listen_pair(port: u16) -> std::io::Result<(TcpListener, TcpListener)> {
    let v4 = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    let port = v4.local_addr()?.port();
    let v6 = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    v6.set_only_v6(true)?;
    v6.set_reuse_address(true)?;
    v6.bind(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)).into())?;
    v6.listen(1024)?;
    Ok((v4, v6.into()))
}

fn udp_pair() -> std::io::Result<(UdpSocket, UdpSocket)> {
    let v4 = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let port = v4.local_addr()?.port();
    let v6 = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
    v6.set_only_v6(true)?;
    v6.bind(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)).into())?;
    Ok((v4, v6.into()))
}

/// Entry point of `doppel __sandbox`; never returns.
pub fn main() -> ! {
    // SAFETY: doppel passes the helper socket as fd 3 and nothing else in this process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS) {
        fail(&sock, "unshare", e.into());
    }
    let maps = write_file("/proc/self/setgroups", "deny")
        .and_then(|_| write_file("/proc/self/uid_map", &format!("{uid} {uid} 1")))
        .and_then(|_| write_file("/proc/self/gid_map", &format!("{gid} {gid} 1")));
    if let Err(e) = maps {
        fail(&sock, "uid_map", e);
    }
    // Mounts made for the app (CA bundles) must not leak back to the host.
    if let Err(e) = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        fail(&sock, "mount", e.into());
    }
    if let Err(e) = netlink::loopback_up() {
        fail(&sock, "loopback", e);
    }
    if let Err(e) = netlink::route_everything_local() {
        fail(&sock, "route", e);
    }
    let (tcp4, tcp6) = match listen_pair(0) {
        Ok(p) => p,
        Err(e) => fail(&sock, "listen", e),
    };
    let (udp4, udp6) = match udp_pair() {
        Ok(p) => p,
        Err(e) => fail(&sock, "listen", e),
    };
    let tcp_port = tcp4.local_addr().map(|a| a.port()).unwrap_or(0);
    let dns_port = udp4.local_addr().map(|a| a.port()).unwrap_or(0);
    let rules = netlink::RedirectRules { bypass_mark: BYPASS_MARK, tcp_port, dns_port };
    if let Err(e) = netlink::install_redirect(&rules) {
        fail(&sock, "nftables", e);
    }
    let ready = Reply::Ready { helper_pid: std::process::id() as i32, tcp_port, dns_port };
    let fds = [tcp4.as_raw_fd(), tcp6.as_raw_fd(), udp4.as_raw_fd(), udp6.as_raw_fd()];
    if wire::send(sock.as_fd(), &ready, &fds).is_err() {
        std::process::exit(1);
    }
    drop((tcp4, tcp6, udp4, udp6));
    serve(sock)
}

fn serve(sock: OwnedFd) -> ! {
    let sock = std::sync::Arc::new(sock);
    loop {
        let req = match wire::recv::<Request>(sock.as_fd()) {
            Ok(Some((req, _))) => req,
            Ok(None) | Err(_) => break,
        };
        let reply_fds: Vec<OwnedFd>;
        let reply = match req {
            Request::Spawn { argv, env, mounts } => {
                reply_fds = Vec::new();
                spawn(&sock, argv, env, mounts)
            }
            Request::Socket { v6 } => match marked_socket(v6) {
                Ok(s) => {
                    reply_fds = vec![s];
                    Reply::Socket
                }
                Err(e) => {
                    reply_fds = Vec::new();
                    Reply::SocketFailed { error: e.to_string() }
                }
            },
        };
        let raw: Vec<i32> = reply_fds.iter().map(|f| f.as_raw_fd()).collect();
        if wire::send(sock.as_fd(), &reply, &raw).is_err() {
            break;
        }
    }
    // doppel is gone (or closed the channel): the app must not outlive it.
    let pid = APP_PID.load(Ordering::SeqCst);
    if pid > 0 {
        crate::capture::signal_group(pid, libc::SIGKILL);
    }
    std::process::exit(0)
}

fn marked_socket(v6: bool) -> std::io::Result<OwnedFd> {
    let s = Socket::new(if v6 { Domain::IPV6 } else { Domain::IPV4 }, Type::STREAM, None)?;
    s.set_mark(BYPASS_MARK)?;
    s.set_cloexec(true)?;
    // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) })
}

fn spawn(
    sock: &std::sync::Arc<OwnedFd>,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<(String, String)>,
) -> Reply {
    for (src, dst) in &mounts {
        if let Err(e) = nix::mount::mount(
            Some(src.as_str()),
            dst.as_str(),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        ) {
            return Reply::SpawnFailed { error: format!("cannot bind-mount {src} over {dst}: {e}"), not_found: false };
        }
    }
    let Some((prog, args)) = argv.split_first() else {
        return Reply::SpawnFailed { error: "empty command".into(), not_found: false };
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).envs(env);
    // SAFETY: only async-signal-safe calls (setpgid, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Own process group: doppel stops the whole app (and its children) at once, and a Ctrl-C meant
            // for doppel reaches the app only through doppel's orderly stop.
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(mut child) => {
            let pid = child.id() as i32;
            APP_PID.store(pid, Ordering::SeqCst);
            let sock = sock.clone();
            std::thread::spawn(move || {
                use std::os::unix::process::ExitStatusExt;
                let (code, signal) = match child.wait() {
                    Ok(st) => (st.code(), st.signal()),
                    Err(_) => (None, Some(libc::SIGKILL)),
                };
                let _ = wire::send(sock.as_fd(), &Reply::Exited { code, signal }, &[]);
            });
            Reply::Spawned { pid }
        }
        Err(e) => Reply::SpawnFailed {
            error: format!("cannot start {prog:?}: {e}"),
            not_found: e.kind() == std::io::ErrorKind::NotFound,
        },
    }
}
