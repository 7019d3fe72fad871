//! Reading CPUs, NUMA nodes, block devices (with blk-mq hardware queues), NICs (with their
//! queues) and RDMA devices (with their ports, from `class/infiniband`) from a sysfs root. Optional files that are missing become `None` or empty: sysfs
//! differs between kernels, VMs and containers, and a partial picture is still useful.

use crate::cpulist::{parse_cpu_list, parse_cpu_mask};
use crate::{CpuId, Error, NumaNodeId, MAX_CPUS, MAX_GIDS, MAX_QUEUES, MAX_RDMA_PORTS};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cpu {
    pub id: CpuId,
    pub online: bool,
    pub numa_node: Option<NumaNodeId>,
    pub core_id: Option<u32>,
    pub package_id: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NumaNode {
    pub id: NumaNodeId,
    pub cpus: Vec<CpuId>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HwQueue {
    pub index: u32,
    pub cpus: Vec<CpuId>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlockDevice {
    pub name: String,
    pub numa_node: Option<NumaNodeId>,
    pub rotational: Option<bool>,
    pub logical_block_size: Option<u32>,
    pub hw_queues: Vec<HwQueue>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub numa_node: Option<NumaNodeId>,
    pub rx_queues: u32,
    pub tx_queues: u32,
    /// Transmit queues with the CPUs steered to them (from xps_cpus), where readable.
    pub queue_cpus: Vec<HwQueue>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RdmaPort {
    pub port: u32,
    /// The state word of `ports/N/state` ("4: ACTIVE" reads as "ACTIVE").
    pub state: Option<String>,
    /// "Ethernet" (RoCE, soft-RoCE) or "InfiniBand".
    pub link_layer: Option<String>,
    /// Populated (non-zero) entries of the GID table, counted up to `MAX_GIDS`.
    pub gids: u32,
    /// The netdev this port's GIDs come from (RoCE), where sysfs says.
    pub netdev: Option<String>,
}

impl RdmaPort {
    pub fn is_active(&self) -> bool {
        self.state.as_deref() == Some("ACTIVE")
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RdmaDevice {
    pub name: String,
    /// From the device's own `device/numa_node`, else from the netdev it sits on.
    pub numa_node: Option<NumaNodeId>,
    /// The netdev the device sits on: `device/net/*` of a NIC, or `parent` of soft-RoCE (rxe).
    pub netdev: Option<String>,
    pub ports: Vec<RdmaPort>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Topology {
    pub cpus: Vec<Cpu>,
    pub numa_nodes: Vec<NumaNode>,
    pub block_devices: Vec<BlockDevice>,
    pub nics: Vec<Nic>,
    pub rdma_devices: Vec<RdmaDevice>,
}

fn read_opt(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn num_opt<T: std::str::FromStr>(p: &Path) -> Option<T> {
    read_opt(p)?.parse().ok()
}

fn node_opt(p: &Path) -> Option<NumaNodeId> {
    let v: i64 = num_opt(p)?;
    (v >= 0).then_some(NumaNodeId(v as u32))
}

/// Entries of `dir` whose names start with `prefix` followed by a number, sorted by that number.
fn numbered(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let n = e
                    .file_name()
                    .to_string_lossy()
                    .strip_prefix(prefix)?
                    .parse::<u32>()
                    .ok()?;
                Some((n, e.path()))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out.truncate(MAX_QUEUES);
    out
}

/// Block devices with no hardware under them (loop, RAM disks): no queues or NUMA node to
/// pin near. Skipped, since every session start reads the topology and a machine can hold
/// hundreds of them (snaps, disk images).
const VIRTUAL_BLOCK_PREFIXES: [&str; 3] = ["loop", "ram", "zram"];

fn is_virtual_block(name: &str) -> bool {
    VIRTUAL_BLOCK_PREFIXES.iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Topology {
    pub fn from_sysfs(root: &Path) -> Result<Topology, Error> {
        let cpu_dir = root.join("devices/system/cpu");
        std::fs::read_dir(&cpu_dir).map_err(|e| Error::Read {
            path: cpu_dir.display().to_string(),
            source: e,
        })?;
        let numa_nodes: Vec<NumaNode> = numbered(&root.join("devices/system/node"), "node")
            .into_iter()
            .map(|(n, p)| NumaNode {
                id: NumaNodeId(n),
                cpus: read_opt(&p.join("cpulist"))
                    .and_then(|s| parse_cpu_list(&s))
                    .unwrap_or_default(),
            })
            .collect();
        let node_of = |c: CpuId| {
            numa_nodes
                .iter()
                .find(|n| n.cpus.contains(&c))
                .map(|n| n.id)
        };
        let cpus = numbered(&cpu_dir, "cpu")
            .into_iter()
            .filter(|(n, _)| *n < MAX_CPUS)
            .map(|(n, p)| Cpu {
                id: CpuId(n),
                // cpu0 often has no `online` file: it cannot be taken offline.
                online: read_opt(&p.join("online"))
                    .map(|s| s == "1")
                    .unwrap_or(true),
                numa_node: node_of(CpuId(n)),
                core_id: num_opt(&p.join("topology/core_id")),
                package_id: num_opt(&p.join("topology/physical_package_id")),
            })
            .collect();
        let block_devices = names(&root.join("block"))
            .into_iter()
            .filter(|name| !is_virtual_block(name))
            .map(|name| {
                let d = root.join("block").join(&name);
                let hw_queues = numbered(&d.join("mq"), "")
                    .into_iter()
                    .map(|(i, p)| HwQueue {
                        index: i,
                        cpus: read_opt(&p.join("cpu_list"))
                            .and_then(|s| parse_cpu_list(&s))
                            .unwrap_or_default(),
                    })
                    .collect();
                BlockDevice {
                    numa_node: node_opt(&d.join("device/numa_node")),
                    rotational: num_opt::<u8>(&d.join("queue/rotational")).map(|v| v == 1),
                    logical_block_size: num_opt(&d.join("queue/logical_block_size")),
                    hw_queues,
                    name,
                }
            })
            .collect();
        let nics: Vec<Nic> = names(&root.join("class/net"))
            .into_iter()
            .map(|name| {
                let d = root.join("class/net").join(&name);
                let rx = numbered(&d.join("queues"), "rx-");
                let tx = numbered(&d.join("queues"), "tx-");
                let queue_cpus = tx
                    .iter()
                    .filter_map(|(i, p)| {
                        let cpus = parse_cpu_mask(&read_opt(&p.join("xps_cpus"))?)?;
                        Some(HwQueue { index: *i, cpus })
                    })
                    .collect();
                Nic {
                    numa_node: node_opt(&d.join("device/numa_node")),
                    rx_queues: rx.len() as u32,
                    tx_queues: tx.len() as u32,
                    queue_cpus,
                    name,
                }
            })
            .collect();
        let rdma_devices = rdma_devices(root, &nics);
        Ok(Topology {
            cpus,
            numa_nodes,
            block_devices,
            nics,
            rdma_devices,
        })
    }

    /// The RDMA device and port a worker on `node` should use: an active port on that NUMA
    /// node if there is one, else any active port; `worker` spreads workers over the candidates.
    pub fn rdma_port_for(&self, node: Option<NumaNodeId>, worker: u32) -> Option<(&str, u32)> {
        let active = || {
            self.rdma_devices.iter().flat_map(|d| {
                d.ports
                    .iter()
                    .filter(|p| p.is_active())
                    .map(move |p| (d, p.port))
            })
        };
        let near: Vec<_> = active()
            .filter(|(d, _)| node.is_some() && d.numa_node == node)
            .collect();
        let pool: Vec<_> = if near.is_empty() {
            active().collect()
        } else {
            near
        };
        if pool.is_empty() {
            return None;
        }
        let (d, p) = pool[worker as usize % pool.len()];
        Some((d.name.as_str(), p))
    }

    /// NUMA node of the first RDMA device with an active port that has one.
    pub fn rdma_node(&self) -> Option<(NumaNodeId, &str)> {
        self.rdma_devices
            .iter()
            .filter(|d| d.ports.iter().any(RdmaPort::is_active))
            .find_map(|d| Some((d.numa_node?, d.name.as_str())))
    }

    /// NUMA node of a block device or NIC by name.
    pub fn device_node(&self, name: &str) -> Option<NumaNodeId> {
        self.block_devices
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| b.numa_node)
            .or_else(|| {
                self.nics
                    .iter()
                    .find(|n| n.name == name)
                    .and_then(|n| n.numa_node)
            })
            .or_else(|| {
                self.rdma_devices
                    .iter()
                    .find(|d| d.name == name)
                    .and_then(|d| d.numa_node)
            })
    }

    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let online = self.cpus.iter().filter(|c| c.online).count();
        let _ = writeln!(s, "CPUs: {} ({} online)", self.cpus.len(), online);
        for n in &self.numa_nodes {
            let _ = writeln!(
                s,
                "  NUMA node {}: CPUs {}",
                n.id.0,
                crate::format_cpu_list(&n.cpus)
            );
        }
        let _ = writeln!(s, "Block devices:");
        for b in &self.block_devices {
            let node = node_text(b.numa_node);
            let rot = match b.rotational {
                Some(true) => "rotational",
                Some(false) => "non-rotational",
                None => "?",
            };
            let _ = writeln!(
                s,
                "  {:<12} node {node:<2} {rot:<15} {} hw queues",
                b.name,
                b.hw_queues.len()
            );
            for q in b.hw_queues.iter().take(8) {
                let _ = writeln!(
                    s,
                    "      queue {}: CPUs {}",
                    q.index,
                    crate::format_cpu_list(&q.cpus)
                );
            }
        }
        let _ = writeln!(s, "NICs:");
        for n in &self.nics {
            let node = node_text(n.numa_node);
            let _ = writeln!(
                s,
                "  {:<12} node {node:<2} rx {} tx {} queues",
                n.name, n.rx_queues, n.tx_queues
            );
        }
        let _ = writeln!(s, "RDMA devices:");
        if self.rdma_devices.is_empty() {
            let _ = writeln!(s, "  (none in class/infiniband)");
        }
        for d in &self.rdma_devices {
            let node = node_text(d.numa_node);
            let _ = writeln!(
                s,
                "  {:<12} node {node:<2} netdev {}",
                d.name,
                d.netdev.as_deref().unwrap_or("-")
            );
            for p in &d.ports {
                let _ = writeln!(
                    s,
                    "      port {}: {} {} {} GIDs{}",
                    p.port,
                    p.state.as_deref().unwrap_or("?"),
                    p.link_layer.as_deref().unwrap_or("?"),
                    p.gids,
                    p.netdev
                        .as_deref()
                        .map(|n| format!(" on {n}"))
                        .unwrap_or_default()
                );
            }
        }
        s
    }
}

/// A NUMA node for the text rendering: its number, or "-" when unknown.
fn node_text(n: Option<NumaNodeId>) -> String {
    n.map(|n| n.0.to_string()).unwrap_or_else(|| "-".into())
}

/// RDMA devices of `<root>/class/infiniband`, their ports, NUMA nodes and netdevs.
fn rdma_devices(root: &Path, nics: &[Nic]) -> Vec<RdmaDevice> {
    let class = root.join("class/infiniband");
    names(&class)
        .into_iter()
        .map(|name| {
            let d = class.join(&name);
            let netdev = names(&d.join("device/net"))
                .into_iter()
                .next()
                .or_else(|| read_opt(&d.join("parent")));
            let ports: Vec<RdmaPort> = numbered(&d.join("ports"), "")
                .into_iter()
                .take(MAX_RDMA_PORTS)
                .map(|(port, p)| RdmaPort {
                    port,
                    state: read_opt(&p.join("state")).map(|s| {
                        s.split_once(':')
                            .map_or(s.as_str(), |(_, w)| w)
                            .trim()
                            .into()
                    }),
                    link_layer: read_opt(&p.join("link_layer")),
                    gids: count_gids(&p.join("gids")),
                    netdev: read_opt(&p.join("gid_attrs/ndevs/0"))
                        .filter(|n| !n.is_empty())
                        .or_else(|| netdev.clone()),
                })
                .collect();
            let netdev_node = || {
                let n = netdev.as_deref()?;
                nics.iter().find(|x| x.name == n)?.numa_node
            };
            RdmaDevice {
                numa_node: node_opt(&d.join("device/numa_node")).or_else(netdev_node),
                netdev,
                ports,
                name,
            }
        })
        .collect()
}

/// Non-zero GID table entries (a zero GID is an empty slot), reading at most `MAX_GIDS`.
fn count_gids(dir: &Path) -> u32 {
    numbered(dir, "")
        .into_iter()
        .take(MAX_GIDS)
        .filter(|(_, p)| {
            read_opt(p).is_some_and(|g| g.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
        })
        .count() as u32
}

/// Whole-disk name for device number (major, minor): `<root>/dev/block/MAJ:MIN` resolves into
/// `.../block/<disk>[/<partition>]`; a partition (it has a `partition` file) maps to its parent.
pub fn block_device_for_dev(sysfs_root: &Path, major: u32, minor: u32) -> Option<String> {
    let link = sysfs_root.join(format!("dev/block/{major}:{minor}"));
    let real = std::fs::canonicalize(&link).ok()?;
    let dev = if real.join("partition").exists() {
        real.parent()?.to_path_buf()
    } else {
        real
    };
    Some(dev.file_name()?.to_string_lossy().into_owned())
}

/// Whole-disk name holding `path`, or None (tmpfs, overlay, anything not backed by a block device).
pub fn block_device_for_path(sysfs_root: &Path, path: &Path) -> Option<String> {
    let st = rustix::fs::stat(path).ok()?;
    let (maj, min) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    if maj == 0 {
        return None;
    }
    block_device_for_dev(sysfs_root, maj, min)
}
