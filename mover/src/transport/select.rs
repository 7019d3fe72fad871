//! Which transport a session's worker connections use (issue 17), chosen per session by
//! capability negotiation in the Hello:
//! - each side decides what it offers (`offer`): `tcp` never, `auto` when this build has the
//!   verbs transport and an active RDMA port carries the address the connection runs over,
//!   `rdma` the same but an error when it cannot;
//! - the sender sets `CAP_RDMA` in its Hellos when it offers; the receiver echoes it in its
//!   HelloAck when it offers too (`answer`); the sender then knows what the session uses
//!   (`settle`), and on worker connections both sides replace the TCP connection by an RDMA one
//!   set up over it (`upgrade`). Control connections stay TCP.
//! - fallback: a worker connection whose RDMA transport fails while its peer is still there
//!   (an error completion, the queue pair in Error, a failed setup) marks the sender's policy
//!   `fell_back`; the session fails like any broken connection, the retry resumes the job, and
//!   from then on this policy offers TCP only.
//!
//! A worker connection's port is the one the pinning plan gives that worker (`mover hw`,
//! `engine::worker_places`): an active port on the NUMA node of the CPU the worker is pinned
//! to, spread over such ports by worker index, if that port carries the connection's address;
//! else the port that does. `--rdma-device` overrides the plan. Control connections look up by
//! address only.
//!
//! Everything above the `Connection` (frames, seals, checksums, journal, recovery points) is
//! the same over both. The port lookup reads sysfs under a root given as a parameter, so it is
//! tested against a fake tree.

use super::{Connection, Transport};
use serde::Serialize;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// RDMA devices looked at, at most (a host has a handful).
const MAX_DEVICES: usize = 64;
/// Ports of one device looked at, at most.
const MAX_PORTS: u8 = 8;
/// GID table entries of one port read, at most (RoCE tables hold a few per address).
const MAX_GIDS: u32 = 256;
/// Whether this build carries the verbs transport.
pub const BUILT: bool = cfg!(feature = "rdma");

/// What the operator asked for (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// RDMA when both sides have it, else TCP.
    #[default]
    Auto,
    Tcp,
    /// RDMA or an error (a mid-job RDMA failure still falls back to TCP: the job matters more).
    Rdma,
}

impl std::str::FromStr for Choice {
    type Err = SelectError;
    fn from_str(s: &str) -> Result<Choice, SelectError> {
        match s {
            "auto" => Ok(Choice::Auto),
            "tcp" => Ok(Choice::Tcp),
            "rdma" => Ok(Choice::Rdma),
            _ => Err(SelectError::BadChoice(s.to_string())),
        }
    }
}

/// What a session's worker connections used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Used {
    #[default]
    Tcp,
    Rdma,
}

impl std::fmt::Display for Used {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Used::Tcp => "tcp",
            Used::Rdma => "rdma",
        })
    }
}

/// `--rdma-device NAME[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    /// None: any port of the device.
    pub port: Option<u8>,
}

impl std::str::FromStr for DeviceSpec {
    type Err = SelectError;
    fn from_str(s: &str) -> Result<DeviceSpec, SelectError> {
        let bad = || SelectError::BadDevice(s.to_string());
        let (name, port) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok || port == Some(0) {
            return Err(bad());
        }
        Ok(DeviceSpec {
            name: name.to_string(),
            port,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("unknown transport {0:?} (auto, tcp or rdma)")]
    BadChoice(String),
    #[error("bad RDMA device {0:?}: expected NAME[:PORT], e.g. mlx5_0:1")]
    BadDevice(String),
    #[error("RDMA was asked for, but this mover was built without it (cargo feature `rdma`)")]
    NotBuilt,
    #[error("RDMA was asked for, but no active RDMA port{0} carries the address {1}")]
    NoPort(String, String),
    #[error("RDMA was asked for, but the receiver does not offer it (built without RDMA, no active port for its address, or --transport tcp)")]
    PeerDeclined,
}

/// Whether this side offers RDMA on a connection: `built` (this build has the verbs
/// transport), `port_found` (an active port carries the connection's address).
pub fn offer(choice: Choice, built: bool, port_found: bool) -> Result<bool, SelectError> {
    match choice {
        Choice::Tcp => Ok(false),
        Choice::Auto => Ok(built && port_found),
        Choice::Rdma if !built => Err(SelectError::NotBuilt),
        Choice::Rdma => Ok(port_found),
    }
}

/// The receiver's answer to a Hello: RDMA only when both offer.
pub fn answer(sender_offers: bool, receiver_offers: bool) -> bool {
    sender_offers && receiver_offers
}

/// What the sender's session uses, from what it offered and what the receiver answered.
pub fn settle(choice: Choice, offered: bool, answered: bool) -> Result<Used, SelectError> {
    match (offered, answered) {
        (true, true) => Ok(Used::Rdma),
        (true, false) if choice == Choice::Rdma => Err(SelectError::PeerDeclined),
        _ => Ok(Used::Tcp),
    }
}

/// The RDMA port and GID a connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaPort {
    pub device: String,
    pub port: u8,
    /// Index of the GID that holds the connection's IP address.
    pub gid_index: u32,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A GID as sysfs prints it (`fe80:0000:...`, eight groups).
fn parse_gid(s: &str) -> Option<Ipv6Addr> {
    let groups: Vec<u16> = s
        .split(':')
        .map(|g| u16::from_str_radix(g, 16).ok())
        .collect::<Option<_>>()?;
    let g: [u16; 8] = groups.try_into().ok()?;
    Some(Ipv6Addr::from(g))
}

fn device_names(sysfs: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sysfs.join("class/infiniband"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .take(MAX_DEVICES)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn port_active(dir: &Path) -> bool {
    // "4: ACTIVE"
    read_trim(&dir.join("state")).is_some_and(|s| s.ends_with("ACTIVE"))
}

/// The active port (of `want`, else of any device, in name order) whose GID table holds `ip`
/// (IPv4 as its IPv4-mapped IPv6 address, as RoCE v2 GIDs carry it). RoCE v2 entries win over
/// v1 ones for the same address: v2 is routable over UDP/IP, as the TCP connection is.
pub fn port_for_ip(sysfs: &Path, want: Option<&DeviceSpec>, ip: IpAddr) -> Option<RdmaPort> {
    let target = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let mut best: Option<(bool, RdmaPort)> = None;
    for dev in device_names(sysfs) {
        if want.is_some_and(|w| w.name != dev) {
            continue;
        }
        for port in 1..=MAX_PORTS {
            if want.is_some_and(|w| w.port.is_some_and(|p| p != port)) {
                continue;
            }
            let pdir = sysfs.join(format!("class/infiniband/{dev}/ports/{port}"));
            if !port_active(&pdir) {
                continue;
            }
            for i in 0..MAX_GIDS {
                let Some(g) = read_trim(&pdir.join(format!("gids/{i}"))) else {
                    break;
                };
                if parse_gid(&g) != Some(target) {
                    continue;
                }
                let v2 = read_trim(&pdir.join(format!("gid_attrs/types/{i}")))
                    .is_some_and(|t| t.contains("v2"));
                if best.as_ref().is_none_or(|(b, _)| v2 && !b) {
                    best = Some((
                        v2,
                        RdmaPort {
                            device: dev.clone(),
                            port,
                            gid_index: i,
                        },
                    ));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

/// Whether any port (of `want`, else of any device) is active.
pub fn any_active_port(sysfs: &Path, want: Option<&DeviceSpec>) -> bool {
    device_names(sysfs)
        .into_iter()
        .filter(|d| want.is_none_or(|w| &w.name == d))
        .any(|d| {
            (1..=MAX_PORTS)
                .filter(|p| want.is_none_or(|w| w.port.is_none_or(|wp| wp == *p)))
                .any(|p| port_active(&sysfs.join(format!("class/infiniband/{d}/ports/{p}"))))
        })
}

/// One side's RDMA policy: what it was asked for, where it looks, and whether an RDMA
/// connection of it failed by its transport (then it offers TCP only: the fallback).
#[derive(Debug, Clone)]
pub struct RdmaPolicy {
    pub choice: Choice,
    pub device: Option<DeviceSpec>,
    /// The sysfs root ports are looked up in (`/sys`; tests give a fake one).
    pub sysfs: PathBuf,
    fell_back: Arc<AtomicBool>,
}

impl Default for RdmaPolicy {
    fn default() -> Self {
        RdmaPolicy::new(Choice::Auto, None)
    }
}

impl RdmaPolicy {
    pub fn new(choice: Choice, device: Option<DeviceSpec>) -> RdmaPolicy {
        RdmaPolicy {
            choice,
            device,
            sysfs: PathBuf::from("/sys"),
            fell_back: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Checked at start: `rdma` needs this build to have it and an active port.
    pub fn check(&self) -> Result<(), SelectError> {
        if self.choice != Choice::Rdma {
            return Ok(());
        }
        if !BUILT {
            return Err(SelectError::NotBuilt);
        }
        if !any_active_port(&self.sysfs, self.device.as_ref()) {
            return Err(self.no_port("(any)".into()));
        }
        Ok(())
    }

    fn no_port(&self, addr: String) -> SelectError {
        let dev = self
            .device
            .as_ref()
            .map(|d| format!(" of {}", d.name))
            .unwrap_or_default();
        SelectError::NoPort(dev, addr)
    }

    /// The port for a connection over local address `ip`: for a worker connection without
    /// `--rdma-device`, the plan's port if it carries `ip`; else the port that does.
    fn port_for(&self, ip: IpAddr, planned: Option<&DeviceSpec>) -> Option<RdmaPort> {
        if self.device.is_none() {
            if let Some(p) = planned.and_then(|d| port_for_ip(&self.sysfs, Some(d), ip)) {
                return Some(p);
            }
        }
        port_for_ip(&self.sysfs, self.device.as_ref(), ip)
    }

    /// The port this side offers RDMA on for a connection from local address `local` (a worker
    /// connection: with the port its worker's plan gives it, `planned`), or None (TCP). After a
    /// fallback, always None.
    pub fn offer_for(
        &self,
        local: Option<IpAddr>,
        planned: Option<&DeviceSpec>,
    ) -> Result<Option<RdmaPort>, SelectError> {
        if self.fell_back() || self.choice == Choice::Tcp {
            return Ok(None);
        }
        if !BUILT {
            // `rdma` is an error here, `auto` means TCP.
            offer(self.choice, false, false)?;
            return Ok(None);
        }
        let port = local.and_then(|ip| self.port_for(ip, planned));
        let offered = offer(self.choice, BUILT, port.is_some())?;
        if !offered && self.choice == Choice::Rdma {
            return Err(self.no_port(local.map_or_else(|| "(no IP)".into(), |a| a.to_string())));
        }
        Ok(port.filter(|_| offered))
    }

    /// Whether an RDMA connection of this policy failed by its transport.
    pub fn fell_back(&self) -> bool {
        self.fell_back.load(Ordering::SeqCst)
    }

    /// The flag an RDMA connection sets when its transport fails (while its peer is there).
    pub fn failure_flag(&self) -> Arc<AtomicBool> {
        self.fell_back.clone()
    }

    /// Looks ports up under another sysfs root (tests).
    pub fn with_sysfs(mut self, root: &Path) -> RdmaPolicy {
        self.sysfs = root.to_path_buf();
        self
    }
}

/// Writes one RDMA port into a fake sysfs tree under `root`, as the kernel shows it: its
/// state ("4: ACTIVE", "1: DOWN") and GID table (the GID as an address, its type).
#[cfg(any(test, feature = "testkit"))]
pub fn fake_port(
    root: &Path,
    device: &str,
    port: u8,
    state: &str,
    gids: &[(Ipv6Addr, &str)],
) -> io::Result<()> {
    let dir = root.join(format!("class/infiniband/{device}/ports/{port}"));
    std::fs::create_dir_all(dir.join("gids"))?;
    std::fs::create_dir_all(dir.join("gid_attrs/types"))?;
    std::fs::write(dir.join("state"), format!("{state}\n"))?;
    for (i, (gid, kind)) in gids.iter().enumerate() {
        let text: Vec<String> = gid.segments().iter().map(|g| format!("{g:04x}")).collect();
        std::fs::write(dir.join(format!("gids/{i}")), text.join(":") + "\n")?;
        std::fs::write(
            dir.join(format!("gid_attrs/types/{i}")),
            format!("{kind}\n"),
        )?;
    }
    Ok(())
}

/// The local IP address a connection runs over, if it is a TCP connection.
pub fn local_ip(conn: &dyn Connection) -> Option<IpAddr> {
    let s = conn.tcp_stream().ok()??;
    s.local_addr().ok().map(|a| a.ip())
}

/// Replaces a TCP connection (just past its Hello and HelloAck) by an RDMA connection over
/// `port`, set up over the same TCP stream, which it keeps as its control connection.
/// `on_failure`: set when the RDMA transport fails while the peer is still there (setup
/// included); the sender passes its policy's flag, the receiver none.
pub fn upgrade(
    conn: &dyn Connection,
    port: &RdmaPort,
    on_failure: Option<Arc<AtomicBool>>,
) -> io::Result<Box<dyn Connection>> {
    let Some(stream) = conn.tcp_stream()? else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "RDMA needs a TCP connection to set its queue pair up over",
        ));
    };
    #[cfg(feature = "rdma")]
    {
        let cfg = super::rdma::verbs::RdmaConfig {
            device: Some(port.device.clone()),
            port: port.port,
            gid_index: port.gid_index as i32,
        };
        match super::rdma::verbs::RdmaConn::establish(stream, &cfg) {
            Ok(mut c) => {
                c.set_failure_flag(on_failure);
                Ok(Box::new(c))
            }
            Err(e) => {
                // A setup the peer took part in but the device refused: the next session
                // uses TCP.
                if let Some(f) = on_failure {
                    f.store(true, Ordering::SeqCst);
                }
                Err(e)
            }
        }
    }
    #[cfg(not(feature = "rdma"))]
    {
        let _ = (stream, port, on_failure);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            SelectError::NotBuilt.to_string(),
        ))
    }
}

/// The sender's transport when RDMA may be negotiated: connects over TCP (the Hello always
/// travels there) and carries the policy the session's handshake consults.
pub struct Negotiated(pub RdmaPolicy);

impl Transport for Negotiated {
    fn connect(&self, peer: SocketAddr) -> io::Result<Box<dyn Connection>> {
        super::tcp::TcpTransport.connect(peer)
    }
    fn rdma(&self) -> Option<&RdmaPolicy> {
        Some(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn each_side_offers_rdma_only_when_built_with_a_port_and_allowed() {
        for built in [false, true] {
            for found in [false, true] {
                assert_eq!(offer(Choice::Tcp, built, found), Ok(false));
                assert_eq!(offer(Choice::Auto, built, found), Ok(built && found));
            }
        }
        assert_eq!(offer(Choice::Rdma, false, true), Err(SelectError::NotBuilt));
        assert_eq!(offer(Choice::Rdma, true, true), Ok(true));
        // Whether a missing port is an error is the policy's call (it names the address).
        assert_eq!(offer(Choice::Rdma, true, false), Ok(false));
    }

    #[test]
    fn the_session_uses_rdma_only_when_both_sides_offer_it() {
        let choices = [Choice::Auto, Choice::Tcp, Choice::Rdma];
        for c in choices {
            for s in [false, true] {
                for r in [false, true] {
                    let a = answer(s, r);
                    assert_eq!(a, s && r);
                    let used = settle(c, s, a);
                    match (s, r) {
                        (true, true) => assert_eq!(used, Ok(Used::Rdma)),
                        (true, false) if c == Choice::Rdma => {
                            assert_eq!(used, Err(SelectError::PeerDeclined))
                        }
                        _ => assert_eq!(used, Ok(Used::Tcp)),
                    }
                }
            }
        }
    }

    #[test]
    fn choices_and_devices_parse_and_bad_ones_are_refused() {
        assert_eq!("auto".parse::<Choice>(), Ok(Choice::Auto));
        assert_eq!("tcp".parse::<Choice>(), Ok(Choice::Tcp));
        assert_eq!("rdma".parse::<Choice>(), Ok(Choice::Rdma));
        assert!("udp".parse::<Choice>().is_err());
        assert_eq!(
            "mlx5_0:2".parse::<DeviceSpec>(),
            Ok(DeviceSpec {
                name: "mlx5_0".into(),
                port: Some(2)
            })
        );
        assert_eq!(
            "rxe0".parse::<DeviceSpec>(),
            Ok(DeviceSpec {
                name: "rxe0".into(),
                port: None
            })
        );
        for bad in ["", ":1", "rxe0:", "rxe0:0", "rxe0:x", "../x", "rxe0:300"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    /// A fake sysfs: `rxe0` port 1 active with a link-local v1 and v2 GID and the v1 and v2
    /// GIDs of 10.0.2.15; `mlx5_0` port 1 down with the GID of 10.0.2.16.
    fn fake_sysfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let ll: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
        let v4 = Ipv4Addr::new(10, 0, 2, 15).to_ipv6_mapped();
        let (v1, v2) = ("IB/RoCE v1", "RoCE v2");
        let gids = [(ll, v1), (ll, v2), (v4, v1), (v4, v2)];
        fake_port(t.path(), "rxe0", 1, "4: ACTIVE", &gids).unwrap();
        let other = Ipv4Addr::new(10, 0, 2, 16).to_ipv6_mapped();
        fake_port(t.path(), "mlx5_0", 1, "1: DOWN", &[(other, v2)]).unwrap();
        t
    }

    #[test]
    fn the_port_is_the_active_one_whose_roce_v2_gid_holds_the_address() {
        let t = fake_sysfs();
        let ip: IpAddr = "10.0.2.15".parse().unwrap();
        let want = RdmaPort {
            device: "rxe0".into(),
            port: 1,
            gid_index: 3,
        };
        assert_eq!(port_for_ip(t.path(), None, ip), Some(want.clone()));
        let spec = |s: &str| s.parse::<DeviceSpec>().unwrap();
        assert_eq!(port_for_ip(t.path(), Some(&spec("rxe0:1")), ip), Some(want));
        assert_eq!(port_for_ip(t.path(), Some(&spec("rxe0:2")), ip), None);
        assert_eq!(port_for_ip(t.path(), Some(&spec("mlx5_0")), ip), None);
        // Loopback has no GID; a down port does not count even where its GID matches.
        assert_eq!(
            port_for_ip(t.path(), None, "127.0.0.1".parse().unwrap()),
            None
        );
        assert_eq!(
            port_for_ip(t.path(), None, "10.0.2.16".parse().unwrap()),
            None
        );
        assert!(any_active_port(t.path(), None));
        assert!(!any_active_port(t.path(), Some(&spec("mlx5_0"))));
        let none = tempfile::tempdir().unwrap();
        assert!(!any_active_port(none.path(), None));
        assert_eq!(port_for_ip(none.path(), None, ip), None);
    }

    /// Two NUMA nodes (CPUs 0-1 and 2-3), an active port on each: `near0` on node 0 and
    /// `near1` on node 1, both with a RoCE v2 GID for each of `ips`.
    fn two_node_sysfs(near1_ips: &[Ipv4Addr]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for c in 0..4 {
            std::fs::create_dir_all(t.path().join(format!("devices/system/cpu/cpu{c}"))).unwrap();
        }
        for (n, cpus) in [(0, "0-1"), (1, "2-3")] {
            let d = t.path().join(format!("devices/system/node/node{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpulist"), format!("{cpus}\n")).unwrap();
        }
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        for (dev, node, ips) in [("near0", 0, &[ip][..]), ("near1", 1, near1_ips)] {
            let gids: Vec<_> = ips
                .iter()
                .map(|a| (a.to_ipv6_mapped(), "RoCE v2"))
                .collect();
            fake_port(t.path(), dev, 1, "4: ACTIVE", &gids).unwrap();
            let d = t.path().join(format!("class/infiniband/{dev}/device"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("numa_node"), format!("{node}\n")).unwrap();
        }
        t
    }

    #[test]
    fn a_worker_connection_uses_the_port_its_pinning_plan_gives_it_where_the_address_allows() {
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        let t = two_node_sysfs(&[ip]);
        // The plan (`mover hw`, `engine::worker_places`): workers 0 and 1 on node 0's CPUs get
        // its port, workers 2 and 3 on node 1's get that one's.
        let plan = |t: &tempfile::TempDir| -> Vec<DeviceSpec> {
            let topo = hw::Topology::from_sysfs(t.path()).unwrap();
            let cpus: Vec<_> = (0..4).map(hw::CpuId).collect();
            let plan = hw::PinningPlan::plan(&topo, &cpus, 4, None).unwrap();
            plan.workers
                .iter()
                .map(|w| w.rdma.as_deref().unwrap().parse().unwrap())
                .collect()
        };
        let planned = plan(&t);
        let names: Vec<&str> = planned.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["near0", "near0", "near1", "near1"]);
        assert!(planned.iter().all(|d| d.port == Some(1)));

        let policy = RdmaPolicy::new(Choice::Rdma, None).with_sysfs(t.path());
        let dev = |d: Option<&DeviceSpec>| {
            policy
                .port_for(IpAddr::V4(ip), d)
                .map(|p| (p.device, p.port))
        };
        assert_eq!(dev(Some(&planned[2])), Some(("near1".into(), 1)));
        assert_eq!(dev(Some(&planned[1])), Some(("near0".into(), 1)));
        // A control connection looks up by address: the first port (by name) carrying it.
        assert_eq!(dev(None), Some(("near0".into(), 1)));
        // --rdma-device overrides the plan.
        let forced =
            RdmaPolicy::new(Choice::Rdma, Some("near0".parse().unwrap())).with_sysfs(t.path());
        let p = forced.port_for(IpAddr::V4(ip), Some(&planned[2]));
        assert_eq!(p.map(|p| p.device).as_deref(), Some("near0"));

        // The planned port does not carry the connection's address: the port that does.
        let t = two_node_sysfs(&[Ipv4Addr::new(10, 0, 3, 15)]);
        let planned = plan(&t);
        assert_eq!(planned[2].name, "near1");
        let policy = RdmaPolicy::new(Choice::Rdma, None).with_sysfs(t.path());
        let p = policy.port_for(IpAddr::V4(ip), Some(&planned[2]));
        assert_eq!(p.map(|p| p.device).as_deref(), Some("near0"));
    }

    #[test]
    fn a_policy_offers_by_its_choice_and_stops_offering_after_a_fallback() {
        let t = fake_sysfs();
        let ip = Some("10.0.2.15".parse().unwrap());
        let lo = Some("127.0.0.1".parse().unwrap());
        let policy = |c| RdmaPolicy {
            sysfs: t.path().to_path_buf(),
            ..RdmaPolicy::new(c, None)
        };
        assert_eq!(policy(Choice::Tcp).offer_for(ip, None), Ok(None));
        assert_eq!(policy(Choice::Tcp).check(), Ok(()));
        let auto = policy(Choice::Auto);
        assert_eq!(auto.offer_for(lo, None), Ok(None));
        let rdma = policy(Choice::Rdma);
        if BUILT {
            assert_eq!(
                auto.offer_for(ip, None).unwrap().map(|p| p.gid_index),
                Some(3)
            );
            assert_eq!(rdma.check(), Ok(()));
            assert!(matches!(
                rdma.offer_for(lo, None),
                Err(SelectError::NoPort(..))
            ));
            assert!(rdma.offer_for(ip, None).unwrap().is_some());
            // A transport failure: from now on TCP, for `rdma` too (it is a fallback).
            rdma.failure_flag().store(true, Ordering::SeqCst);
            assert!(rdma.fell_back());
            assert_eq!(rdma.offer_for(ip, None), Ok(None));
            assert_eq!(settle(Choice::Rdma, false, false), Ok(Used::Tcp));
        } else {
            assert_eq!(auto.offer_for(ip, None), Ok(None));
            assert_eq!(rdma.check(), Err(SelectError::NotBuilt));
            assert_eq!(rdma.offer_for(ip, None), Err(SelectError::NotBuilt));
        }
    }
}
