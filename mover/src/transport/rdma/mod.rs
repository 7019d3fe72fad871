//! RDMA transport (issue 17). The pure parts are compiled always and tested without a device:
//! - `credit`: receiver-granted credits for RDMA WRITE with immediate into receiver slots.
//! - `qp`: the reliable-connected queue pair lifecycle, with fallback to TCP on any error.

pub mod credit;
pub mod qp;
