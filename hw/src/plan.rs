//! Which CPU each worker runs on. Pure and deterministic: CPUs on the device's NUMA node first,
//! distinct physical cores before SMT siblings, then round-robin if there are more workers than
//! allowed CPUs. The device is the one named by `near`, else the first RDMA device with an
//! active port (the NIC the workers' queue pairs live on). Where RDMA ports are active, each
//! worker is also given the device and port for its queue pair: one on its own NUMA node first.

use crate::{CpuId, Error, NumaNodeId, Topology};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WorkerPlacement {
    pub worker: u32,
    pub cpu: CpuId,
    pub numa_node: Option<NumaNodeId>,
    pub reason: String,
    /// The RDMA device and port ("mlx5_0:1") this worker's queue pair uses, if any is active.
    pub rdma: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PinningPlan {
    pub workers: Vec<WorkerPlacement>,
}

impl PinningPlan {
    pub fn plan(
        topo: &Topology,
        allowed: &[CpuId],
        workers: u32,
        near: Option<&str>,
    ) -> Result<PinningPlan, Error> {
        if allowed.is_empty() {
            return Err(Error::NoCpus);
        }
        let (node, near) = match near.and_then(|n| Some((topo.device_node(n)?, n))) {
            Some((n, name)) => (Some(n), Some(name)),
            None => match topo.rdma_node() {
                Some((n, name)) => (Some(n), Some(name)),
                None => (None, near),
            },
        };
        let info = |c: CpuId| topo.cpus.iter().find(|x| x.id == c);
        let node_of = |c: CpuId| info(c).and_then(|x| x.numa_node);
        let core_of = |c: CpuId| info(c).map(|x| (x.package_id, x.core_id));
        // Order: near node first; within that, the first CPU of each physical core, then siblings.
        let mut order: Vec<(bool, bool, CpuId)> = Vec::new();
        let mut seen_cores = std::collections::HashSet::new();
        let mut sorted: Vec<CpuId> = allowed.to_vec();
        sorted.sort();
        sorted.dedup();
        for &c in &sorted {
            let far = node.is_some() && node_of(c) != node;
            let sibling = match core_of(c) {
                Some((p, Some(core))) => !seen_cores.insert((p, core)),
                _ => false,
            };
            order.push((far, sibling, c));
        }
        order.sort();
        let workers = (0..workers)
            .map(|w| {
                let (far, sibling, cpu) = order[w as usize % order.len()];
                let mut reason = match (node, far) {
                    (Some(n), false) => format!("on NUMA node {} of {}", n.0, near.unwrap_or("?")),
                    (Some(_), true) => "near node exhausted".to_string(),
                    (None, _) => "no device NUMA affinity".to_string(),
                };
                if sibling {
                    reason.push_str(", SMT sibling");
                }
                if w as usize >= order.len() {
                    reason.push_str(", shared (more workers than CPUs)");
                }
                let numa_node = node_of(cpu);
                WorkerPlacement {
                    worker: w,
                    cpu,
                    numa_node,
                    reason,
                    rdma: topo
                        .rdma_port_for(numa_node, w)
                        .map(|(d, p)| format!("{d}:{p}")),
                }
            })
            .collect();
        Ok(PinningPlan { workers })
    }

    pub fn render_text(&self) -> String {
        let mut s = String::from("Pinning plan:\n");
        for w in &self.workers {
            let rdma = w
                .rdma
                .as_deref()
                .map(|r| format!(", RDMA {r}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  worker {:<3} -> CPU {:<4} ({}{rdma})",
                w.worker, w.cpu.0, w.reason
            );
        }
        s
    }
}
