//! Capture without a sandbox: the user declares each dependency (`--dep NAME=HOST:PORT[@LISTEN]`), doppel
//! listens on a local port for it and the user points the app there (the app also gets the address in
//! `DOPPEL_DEP_<NAME>`). Works on any machine, and against staging.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{AppCommand, AppExit, AppHandle, AppLink, BoxFuture, Capture, Egress, Session, tee_output};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct DepSpec {
    pub name: String,
    /// `host:port` of the real dependency.
    pub target: String,
    /// Local port doppel listens on; 0 picks a free one.
    pub listen: u16,
}

impl DepSpec {
    /// Parses `NAME=HOST:PORT[@LISTEN_PORT]`.
    pub fn parse(s: &str) -> Result<DepSpec> {
        let bad = || Error::input(format!("--dep {s:?}: expected NAME=HOST:PORT or NAME=HOST:PORT@LISTEN_PORT"));
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let (target, listen) = match rest.rsplit_once('@') {
            Some((t, l)) => (t, l.parse::<u16>().map_err(|_| bad())?),
            None => (rest, 0),
        };
        let port_ok = target.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || !port_ok {
            return Err(bad());
        }
        Ok(DepSpec { name: name.to_string(), target: target.to_string(), listen })
    }

    pub fn env_name(&self) -> String {
        format!("DOPPEL_DEP_{}", self.name.to_ascii_uppercase().replace('-', "_"))
    }

    pub fn port(&self) -> u16 {
        self.target.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0)
    }
}

#[derive(Default, Clone)]
pub struct Explicit {
    pub deps: Vec<DepSpec>,
    /// App ports given with --port; empty means detect the app's listening sockets.
    pub app_ports: Vec<u16>,
}

struct ExplicitLink {
    pid: i32,
    ports: Vec<u16>,
}

impl AppLink for ExplicitLink {
    fn connect(&self, port: u16) -> BoxFuture<'_, std::io::Result<TcpStream>> {
        Box::pin(async move {
            match TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
                Ok(s) => Ok(s),
                Err(e) => TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await.map_err(|_| e),
            }
        })
    }

    fn listening_ports(&self) -> Vec<u16> {
        let open = super::listening_ports_of(self.pid);
        if !self.ports.is_empty() {
            return self.ports.iter().copied().filter(|p| open.contains(p)).collect();
        }
        app_owned_listening_ports(self.pid)
    }
}

/// Listening ports whose sockets belong to a process of the app's process group.
fn app_owned_listening_ports(pgid: i32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name: state ppid pgrp ...
        let pgrp = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<i32>().ok());
        if pgrp != Some(pgid) {
            continue;
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(link) = std::fs::read_link(fd.path()) {
                    let l = link.to_string_lossy();
                    if let Some(inode) = l.strip_prefix("socket:[").and_then(|x| x.strip_suffix(']')) {
                        inodes.insert(inode.to_string());
                    }
                }
            }
        }
    }
    let mut ports = Vec::new();
    for f in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pgid}/net/{f}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9
                && cols[3] == "0A"
                && inodes.contains(cols[9])
                && let Some(port) = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok())
                && !ports.contains(&port)
            {
                ports.push(port);
            }
        }
    }
    ports.sort_unstable();
    ports
}

impl Capture for Explicit {
    fn name(&self) -> &'static str {
        "explicit"
    }

    fn start<'a>(&'a self, cmd: &'a AppCommand) -> BoxFuture<'a, Result<Session>> {
        Box::pin(self.clone().start_inner(cmd.clone()))
    }
}

impl Explicit {
    async fn start_inner(self, cmd: AppCommand) -> Result<Session> {
        let (egress_tx, egress_rx) = mpsc::channel(1024);
        let mut env = cmd.env.clone();
        let mut tasks = Vec::new();
        for dep in &self.deps {
            let listener =
                TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, dep.listen))).await.map_err(|e| {
                    Error::env(format!("--dep {}: cannot listen on 127.0.0.1:{}: {e}", dep.name, dep.listen))
                })?;
            let addr = listener.local_addr().map_err(|e| Error::internal(e.to_string()))?;
            eprintln!(
                "doppel: dependency {} ({}) -> point the app at {addr} (also in ${})",
                dep.name,
                dep.target,
                dep.env_name()
            );
            env.push((dep.env_name(), addr.to_string()));
            let tx = egress_tx.clone();
            let dep = dep.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let stream = super::accept(&listener).await;
                    let e = Egress { stream, dest: dep.target.clone(), port: dep.port() };
                    if tx.send(e).await.is_err() {
                        break;
                    }
                }
            }));
        }
        let (prog, args) = cmd.argv.split_first().ok_or_else(|| Error::input("no command given after --"))?;
        let mut command = tokio::process::Command::new(prog);
        command.args(args).envs(env).stderr(std::process::Stdio::piped()).process_group(0);
        if cmd.quiet {
            command.stdout(std::process::Stdio::piped());
        }
        let mut child = command.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::input(format!("command not found: {prog} (is it installed and on PATH?)"))
            } else {
                Error::input(format!("cannot start {prog:?}: {e}"))
            }
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let stderr = tee_output(child.stdout.take(), child.stderr.take(), cmd.quiet);
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let exit = match child.wait().await {
                Ok(st) => match st.code() {
                    Some(c) => AppExit::Code(c),
                    None => AppExit::Signal(st.signal().unwrap_or(0)),
                },
                Err(_) => AppExit::Signal(libc::SIGKILL),
            };
            let _ = exit_tx.send(Some(exit));
        });
        Ok(Session {
            egress: egress_rx,
            datagrams: Vec::new(),
            app: AppHandle::new(pid, exit_rx, stderr),
            link: Arc::new(ExplicitLink { pid, ports: self.app_ports.clone() }),
            guard: Box::new(super::TaskGuard(tasks)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_specs() {
        let d = DepSpec::parse("rates-api=127.0.0.1:9000@19000").unwrap();
        assert_eq!((d.name.as_str(), d.target.as_str(), d.listen), ("rates-api", "127.0.0.1:9000", 19000));
        assert_eq!(d.env_name(), "DOPPEL_DEP_RATES_API");
        assert_eq!(DepSpec::parse("db=db.internal:5432").unwrap().listen, 0);
        assert!(DepSpec::parse("db").is_err());
        assert!(DepSpec::parse("db=host").is_err());
        assert!(DepSpec::parse("=h:1").is_err());
    }
}
