//! The process's allowed CPUs and pinning of the calling thread.

use crate::{CpuId, Error, MAX_CPUS};

/// CPUs in the calling thread's affinity mask (at start-up: the process's).
pub fn allowed_cpus() -> Result<Vec<CpuId>, Error> {
    let set = rustix::thread::sched_getaffinity(None).map_err(|e| Error::Read {
        path: "sched_getaffinity".into(),
        source: e.into(),
    })?;
    let cpus: Vec<CpuId> = (0..MAX_CPUS.min(rustix::thread::CpuSet::MAX_CPU as u32))
        .filter(|&i| set.is_set(i as usize))
        .map(CpuId)
        .collect();
    if cpus.is_empty() {
        return Err(Error::NoCpus);
    }
    Ok(cpus)
}

/// Restricts the calling thread to exactly `cpu`.
pub fn pin_current_thread(cpu: CpuId) -> Result<(), Error> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu.0 as usize);
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| Error::Pin {
        cpu: cpu.0,
        source: e.into(),
    })
}
