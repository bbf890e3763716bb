//! The few netlink messages the sandbox needs: bring `lo` up, make every address local, and install the
//! nf_tables redirect rules.
//!
//! Written by hand on purpose: the crates that build nf_tables messages either bind the C libnftnl (a runtime
//! library a fresh machine lacks), shell out to `nft` (a package a fresh machine lacks) or are GPL-3
//! (`rustables`), and the whole need is five messages. Facts used: `linux/netlink.h`, `linux/rtnetlink.h`,
//! `linux/netfilter/nfnetlink.h`, `linux/netfilter/nf_tables.h` (stable kernel ABI).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_ROUTE: i32 = 0;
const NETLINK_NETFILTER: i32 = 12;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;

/// A netlink message under construction: header, fixed family header, then attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        Msg { buf, nests: Vec::new() }
    }

    /// nfgenmsg: family, version 0, resource id (big endian).
    fn nfgen(mut self, family: u8, res_id: u16) -> Msg {
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self
    }

    fn raw(mut self, bytes: &[u8]) -> Msg {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Msg {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    fn be32(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_be_bytes())
    }

    fn ne32(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_ne_bytes())
    }

    fn begin(&mut self, kind: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Msg {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open(protocol: i32) -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked before being wrapped.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        Ok(Socket { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Sends the messages in one datagram and waits for one acknowledgement per message that asked for one.
    fn transact(&self, msgs: &[Vec<u8>], acks: usize, what: &str) -> io::Result<()> {
        let data: Vec<u8> = msgs.concat();
        // SAFETY: data outlives the call; length is its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut seen = 0;
        let mut buf = vec![0u8; 65536];
        while seen < acks {
            // SAFETY: buf is writable for its whole length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < 16 || off + len > n {
                    break;
                }
                if kind == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes([buf[off + 16], buf[off + 17], buf[off + 18], buf[off + 19]]);
                    if code != 0 {
                        let err = io::Error::from_raw_os_error(-code);
                        return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
                    }
                    seen += 1;
                }
                off += (len + 3) & !3;
            }
        }
        Ok(())
    }
}

/// `ip link set lo up`
pub fn loopback_up() -> io::Result<()> {
    let sock = Socket::open(NETLINK_ROUTE)?;
    // struct ifinfomsg { family u8, pad u8, type u16, index i32, flags u32, change u32 }
    let mut ifi = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    ifi.extend_from_slice(&1i32.to_ne_bytes()); // lo is always index 1 in a fresh namespace
    ifi.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    ifi.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    let msg = Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1).raw(&ifi).finish();
    sock.transact(&[msg], 1, "bringing lo up")
}

/// `ip route add local default dev lo table local` and its IPv6 twin: every destination address becomes
/// local, so connects to any address reach the nat output hook instead of failing with ENETUNREACH.
pub fn route_everything_local() -> io::Result<()> {
    let sock = Socket::open(NETLINK_ROUTE)?;
    let mut msgs = Vec::new();
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type, flags u32 }
        let rtm = [family, 0, 0, 0, libc::RT_TABLE_LOCAL, libc::RTPROT_BOOT, libc::RT_SCOPE_HOST, libc::RTN_LOCAL];
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq)
            .raw(&rtm)
            .raw(&0u32.to_ne_bytes());
        m.ne32(libc::RTA_OIF, 1);
        m.ne32(libc::RTA_TABLE, libc::RT_TABLE_LOCAL as u32);
        msgs.push(m.finish());
    }
    sock.transact(&msgs, 2, "adding the local default route")
}

// nf_tables attribute numbers (linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_REDIR_FLAGS: u16 = 3;
const NFT_META_MARK: u32 = 3;
const NFT_META_L4PROTO: u32 = 16;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NF_ACCEPT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_IP_PRI_NAT_DST: i32 = -100;

/// One nf_tables rule expression, as `nft --debug=netlink` prints them.
enum Expr {
    MetaLoad(u32),
    CmpEq(Vec<u8>),
    Accept,
    ImmediatePort(u16),
    TransportPort,
    Redirect,
}

impl Expr {
    fn encode(&self, m: &mut Msg) {
        m.begin(NFTA_LIST_ELEM);
        let name = match self {
            Expr::MetaLoad(_) => "meta",
            Expr::CmpEq(_) => "cmp",
            Expr::Accept | Expr::ImmediatePort(_) => "immediate",
            Expr::TransportPort => "payload",
            Expr::Redirect => "redir",
        };
        m.str(NFTA_EXPR_NAME, name);
        m.begin(NFTA_EXPR_DATA);
        match self {
            Expr::MetaLoad(key) => {
                m.be32(NFTA_META_DREG, NFT_REG_1).be32(NFTA_META_KEY, *key);
            }
            Expr::CmpEq(value) => {
                m.be32(NFTA_CMP_SREG, NFT_REG_1).be32(NFTA_CMP_OP, NFT_CMP_EQ);
                m.begin(NFTA_CMP_DATA).attr(NFTA_DATA_VALUE, value).end();
            }
            Expr::Accept => {
                m.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                m.begin(NFTA_IMMEDIATE_DATA).begin(NFTA_DATA_VERDICT).be32(NFTA_VERDICT_CODE, NF_ACCEPT).end().end();
            }
            Expr::ImmediatePort(port) => {
                m.be32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
                m.begin(NFTA_IMMEDIATE_DATA).attr(NFTA_DATA_VALUE, &port.to_be_bytes()).end();
            }
            Expr::TransportPort => {
                m.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
                    .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER)
                    .be32(NFTA_PAYLOAD_OFFSET, 2)
                    .be32(NFTA_PAYLOAD_LEN, 2);
            }
            Expr::Redirect => {
                m.be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1).be32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
            }
        }
        m.end();
        m.end();
    }
}

/// What the sandbox's nat output chain does, in order.
pub struct RedirectRules {
    /// Packets of sockets carrying this mark (doppel's own connections to the app) are left alone.
    pub bypass_mark: u32,
    /// Every TCP connection is redirected to this local port.
    pub tcp_port: u16,
    /// Every UDP datagram to port 53 is redirected to this local port.
    pub dns_port: u16,
}

/// Installs, in one atomic nf_tables batch:
/// ```text
/// table inet doppel { chain out { type nat hook output priority -100;
///   meta mark <bypass> accept; meta l4proto tcp redirect to :<tcp>; udp dport 53 redirect to :<dns> } }
/// ```
pub fn install_redirect(rules: &RedirectRules) -> io::Result<()> {
    let sock = Socket::open(NETLINK_NETFILTER)?;
    let nft = |kind: u16, flags: u16, seq: u32| {
        Msg::new((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq).nfgen(NFPROTO_INET, 0)
    };
    let mut msgs = Vec::new();
    msgs.push(Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0).nfgen(0, NFNL_SUBSYS_NFTABLES).finish());

    let mut table = nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, 1);
    table.str(NFTA_TABLE_NAME, "doppel");
    msgs.push(table.finish());

    let mut chain = nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, 2);
    chain.str(NFTA_CHAIN_TABLE, "doppel").str(NFTA_CHAIN_NAME, "out");
    chain
        .begin(NFTA_CHAIN_HOOK)
        .be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT)
        .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_DST as u32)
        .end();
    chain.str(NFTA_CHAIN_TYPE, "nat");
    msgs.push(chain.finish());

    let rule_sets: [Vec<Expr>; 3] = [
        vec![Expr::MetaLoad(NFT_META_MARK), Expr::CmpEq(rules.bypass_mark.to_ne_bytes().to_vec()), Expr::Accept],
        vec![
            Expr::MetaLoad(NFT_META_L4PROTO),
            Expr::CmpEq(vec![libc::IPPROTO_TCP as u8]),
            Expr::ImmediatePort(rules.tcp_port),
            Expr::Redirect,
        ],
        vec![
            Expr::MetaLoad(NFT_META_L4PROTO),
            Expr::CmpEq(vec![libc::IPPROTO_UDP as u8]),
            Expr::TransportPort,
            Expr::CmpEq(53u16.to_be_bytes().to_vec()),
            Expr::ImmediatePort(rules.dns_port),
            Expr::Redirect,
        ],
    ];
    for (i, exprs) in rule_sets.iter().enumerate() {
        let mut rule = nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, 3 + i as u32);
        rule.str(NFTA_RULE_TABLE, "doppel").str(NFTA_RULE_CHAIN, "out");
        rule.begin(NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            e.encode(&mut rule);
        }
        rule.end();
        msgs.push(rule.finish());
    }
    msgs.push(Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 6).nfgen(0, NFNL_SUBSYS_NFTABLES).finish());
    // table + chain + three rules asked for an acknowledgement each
    sock.transact(&msgs, 5, "installing the nf_tables redirect rules")
}
