//! Reading CPUs, NUMA nodes, block devices (with blk-mq hardware queues) and NICs (with their
//! queues) from a sysfs root. Optional files that are missing become `None` or empty: sysfs
//! differs between kernels, VMs and containers, and a partial picture is still useful.

use crate::cpulist::{parse_cpu_list, parse_cpu_mask};
use crate::{CpuId, Error, NumaNodeId, MAX_CPUS, MAX_QUEUES};
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
pub struct Topology {
    pub cpus: Vec<Cpu>,
    pub numa_nodes: Vec<NumaNode>,
    pub block_devices: Vec<BlockDevice>,
    pub nics: Vec<Nic>,
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
        let nics = names(&root.join("class/net"))
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
        Ok(Topology {
            cpus,
            numa_nodes,
            block_devices,
            nics,
        })
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
            let node = b
                .numa_node
                .map(|n| n.0.to_string())
                .unwrap_or_else(|| "-".into());
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
            let node = n
                .numa_node
                .map(|n| n.0.to_string())
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "  {:<12} node {node:<2} rx {} tx {} queues",
                n.name, n.rx_queues, n.tx_queues
            );
        }
        s
    }
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
