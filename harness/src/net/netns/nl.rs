//! A blocking rtnetlink (NETLINK_ROUTE) socket: one request, then its ACK or its error.
//!
//! A netlink socket acts on the network namespace of the thread that created it, for its whole
//! life, whichever thread uses it later. The lab opens one socket per namespace on a thread that
//! has entered that namespace, and then drives all of them from the caller's thread.
//!
//! Messages are built with `netlink-packet-route`'s types; attributes that crate does not model
//! (the `tbf` and `netem` options) are raw bytes built in [`super::tc`].

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::error::{NetnsError, Result};

/// Byte and packet counters of one interface, as the kernel reports them (`IFLA_STATS64`).
/// Bytes are L2 frame bytes (Ethernet header included, no FCS), the unit `tbf` shapes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

pub(crate) struct Nl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nl {
    /// Opens a route netlink socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Self> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| NetnsError::io("socket(NETLINK_ROUTE)", e))?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(|e| NetnsError::io("bind(NETLINK_ROUTE)", e))?;
        // Extended ACKs make the kernel attach a reason to errors; failure to enable is harmless.
        let _ = socket.set_ext_ack(true);
        Ok(Nl {
            socket,
            seq: 0,
            buf: vec![0u8; 1 << 16],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let sent = self
            .socket
            .send(&bytes, 0)
            .map_err(|e| NetnsError::io(format!("send netlink {op}"), e))?;
        if sent != bytes.len() {
            return Err(NetnsError::Netlink {
                op: op.to_string(),
                source: io::Error::other(format!("short send: {sent} of {} bytes", bytes.len())),
            });
        }
        Ok(self.seq)
    }

    /// Receives replies for `seq` until its ACK, error or end of dump; inner messages are
    /// handed to `on_msg`.
    fn receive(
        &mut self,
        seq: u32,
        op: &str,
        mut on_msg: impl FnMut(RouteNetlinkMessage),
    ) -> Result<()> {
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| NetnsError::io(format!("recv netlink {op}"), e))?;
            let mut offset = 0;
            while offset < n {
                let packet =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                        .map_err(|e| NetnsError::Decode {
                            op: op.to_string(),
                            detail: e.to_string(),
                        })?;
                let len = packet.header.length as usize;
                if len == 0 {
                    return Err(NetnsError::Decode {
                        op: op.to_string(),
                        detail: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                if packet.header.sequence_number != seq {
                    continue; // a late reply to an earlier request
                }
                match packet.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(NetnsError::Netlink {
                                op: op.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            }),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::InnerMessage(m) => on_msg(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request that expects only an ACK.
    pub(crate) fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK, op)?;
        self.receive(seq, op, |_| {})
    }

    /// Lists every link of this namespace.
    pub(crate) fn links(&mut self) -> Result<Vec<LinkMessage>> {
        let op = "dump links";
        let seq = self.send(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            op,
        )?;
        let mut out = Vec::new();
        self.receive(seq, op, |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                out.push(l)
            }
        })?;
        Ok(out)
    }

    /// Names of every link of this namespace.
    pub(crate) fn link_names(&mut self) -> Result<Vec<String>> {
        Ok(self.links()?.iter().filter_map(link_name).collect())
    }

    /// The index and counters of the link called `name`.
    pub(crate) fn link(&mut self, name: &str) -> Result<(u32, LinkCounters)> {
        let op = format!("get link {name}");
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let seq = self.send(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK, &op)?;
        let mut found = None;
        self.receive(seq, &op, |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                let mut c = LinkCounters::default();
                for a in &l.attributes {
                    if let LinkAttribute::Stats64(s) = a {
                        c = LinkCounters {
                            rx_bytes: s.rx_bytes,
                            tx_bytes: s.tx_bytes,
                            rx_packets: s.rx_packets,
                            tx_packets: s.tx_packets,
                            rx_dropped: s.rx_dropped,
                            tx_dropped: s.tx_dropped,
                        };
                    }
                }
                found = Some((l.header.index, c));
            }
        })?;
        found.ok_or_else(|| NetnsError::Decode {
            op,
            detail: "no link message in the reply".into(),
        })
    }

    pub(crate) fn link_index(&mut self, name: &str) -> Result<u32> {
        Ok(self.link(name)?.0)
    }

    /// Creates a bridge called `name`.
    pub(crate) fn add_bridge(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create bridge {name}"),
        )
    }

    /// Creates a veth pair: `name` here, `peer` directly inside the namespace of `peer_ns_fd`,
    /// so no end ever exists in any other namespace.
    pub(crate) fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns_fd: RawFd,
        mtu: u32,
    ) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(peer_ns_fd));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create veth {name}<->{peer}"),
        )
    }

    /// Sets MTU, bridge port (controller) and the up flag of link `index`.
    pub(crate) fn set_link(
        &mut self,
        index: u32,
        mtu: Option<u32>,
        controller: Option<u32>,
        up: bool,
        what: &str,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(c) = controller {
            msg.attributes.push(LinkAttribute::Controller(c));
        }
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("set link {what}"),
        )
    }

    /// Adds `addr/prefix_len` to link `index`.
    pub(crate) fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr}/{prefix_len}"),
        )
    }

    /// Creates or replaces the root qdisc of link `index` (handle `major:0`).
    pub(crate) fn replace_root_qdisc(
        &mut self,
        index: u32,
        major: u16,
        kind: &str,
        options: TcAttribute,
        what: &str,
    ) -> Result<()> {
        let mut msg = TcMessage::default();
        msg.header.index = index as i32;
        msg.header.handle = TcHandle { major, minor: 0 };
        msg.header.parent = TcHandle::ROOT;
        msg.attributes.push(TcAttribute::Kind(kind.to_string()));
        msg.attributes.push(options);
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("add {kind} qdisc on {what}"),
        )
    }

    /// Deletes the root qdisc of link `index`, returning it to the device default.
    pub(crate) fn delete_root_qdisc(&mut self, index: u32, what: &str) -> Result<()> {
        let mut msg = TcMessage::default();
        msg.header.index = index as i32;
        msg.header.parent = TcHandle::ROOT;
        self.request(
            RouteNetlinkMessage::DelQueueDiscipline(msg),
            0,
            &format!("delete root qdisc on {what}"),
        )
    }
}

pub(crate) fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}
