//! Hardware topology read from a sysfs tree (a parameter, so tests use fixture trees) and the
//! plan that pins each data-plane worker to a CPU near the device it serves (and, where there is
//! an RDMA NIC, names the RDMA device and port each worker's queue pair uses).

#![forbid(unsafe_code)]

mod affinity;
mod cpulist;
mod plan;
mod topology;

pub use affinity::{allowed_cpus, pin_current_thread};
pub use cpulist::{format_cpu_list, parse_cpu_list, parse_cpu_mask};
pub use plan::{PinningPlan, WorkerPlacement};
pub use topology::{
    block_device_for_dev, block_device_for_path, BlockDevice, Cpu, HwQueue, Nic, NumaNode,
    RdmaDevice, RdmaPort, Topology,
};

use serde::Serialize;

/// Bound on CPU ids accepted from sysfs or masks.
pub const MAX_CPUS: u32 = 4096;
/// Bound on queues read per device.
pub const MAX_QUEUES: usize = 4096;
/// Bound on ports read per RDMA device.
pub const MAX_RDMA_PORTS: usize = 64;
/// Bound on GID table entries read per RDMA port.
pub const MAX_GIDS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CpuId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NumaNodeId(pub u32);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {what} from {text:?}")]
    Parse {
        path: String,
        what: &'static str,
        text: String,
    },
    #[error("no CPUs allowed for this process")]
    NoCpus,
    #[error("sched_setaffinity to CPU {cpu}: {source}")]
    Pin {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
}
