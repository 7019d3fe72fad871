//! The verbs transport (feature `rdma`): one reliable-connected queue pair per connection (so
//! per worker). Every message spends one credit, a receive slot the peer granted (`credit`),
//! and carries that slot as its immediate:
//! - data (a payload over `CTRL_PAYLOAD`) goes by RDMA WRITE with immediate straight into
//!   that slot of the peer's registered slab, at `addr + slot * SLOT_SIZE` (its `Endpoint`'s
//!   address and rkey);
//! - control messages (credit returns, acks, small frames) go by SEND with immediate: the
//!   bytes land in the buffer of the receive request they consume, and the slot is released
//!   at once.
//!
//! Either consumes one receive request at the peer; a side keeps one posted, each with a
//! `CTRL_SIZE` buffer, per slot it granted, so a message always finds one. The session's
//! control connection stays TCP, and so does each connection's own setup and end-of-stream
//! (its TCP control stream).
//!
//! Memory: one slab per connection, registered as its memory region (local and remote write):
//! `SLOTS` receive slots, then `SLOTS` send buffers, `SLOT_SIZE` bytes each, then `SLOTS`
//! receive buffers of `CTRL_SIZE`. A message is a header (payload length, number of granted
//! slot ids, the slot ids: credits piggybacked) and the payload. A send worker's own buffer
//! slab is registered too (`send_from_region`, local read only): a frame that lies in it goes
//! out without a copy, its messages' payloads gathered from the slab behind headers from the
//! send buffers. Completions are polled by the thread that owns the connection (the worker):
//! no completion channel, no kernel thread on the path.
//!
//! Buffer lifetimes across posts: a receive slot may be written by the peer's device from its
//! grant until the completion naming it is polled, and is only then read, copied out and
//! granted again; a receive buffer likewise from its post until its completion, and it is
//! reposted only after its message was copied out; a send buffer is read by the device from
//! its post until its completion is polled, and `SendCredits` refuses to hand it out again
//! before that; a slice of the worker's slab is read from its post until `send_in_place`
//! saw the completion (or the flush). The slab is freed only in `Drop`, after the queue pair
//! is destroyed (after which the device touches no buffer).
//!
//! Setup, over the TCP control connection (which stays open: it carries end-of-stream and
//! lets a receiver notice a dead peer): each side sends its `Endpoint`, both move their QP to
//! RTR and RTS, then exchange one byte so that no write reaches a QP that is not ready.

use super::credit::{RecvCredits, SendCredits, SlotId, SourceBuf, WrId, MAX_GRANT_BATCH};
use super::qp::{FailCause, QpEvent, QpMachine};
use super::{Endpoint, ENDPOINT_LEN};
use crate::engine::ring::MemSpan;
use crate::transport::tcp::CONNECT_TIMEOUT;
use crate::transport::{Connection, Transport};
use rdma_sys::*;
use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::CStr;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Receive slots per connection (and send buffers: as many).
pub const SLOTS: u32 = 32;
/// Bytes of one slot.
pub const SLOT_SIZE: usize = 64 << 10;
/// Message header: payload length, grant count, then up to `MAX_GRANT_BATCH` slot ids.
const HEADER: usize = 8 + 4 * MAX_GRANT_BATCH;
/// Largest payload of one message.
pub const MAX_PAYLOAD: usize = SLOT_SIZE - HEADER;
const _: () = assert!(SLOTS as usize <= MAX_GRANT_BATCH);
/// Bytes of the buffer of one posted receive: what a SEND lands in.
const CTRL_SIZE: usize = 4 << 10;
/// Largest payload that travels as a SEND (a control message: credit returns, acks, small
/// frames) rather than as an RDMA WRITE into a slot.
pub const CTRL_PAYLOAD: usize = CTRL_SIZE - HEADER;
const _: () = assert!(HEADER < CTRL_SIZE && CTRL_SIZE <= SLOT_SIZE);
/// Completion queue entries: every slot and send buffer at once, plus slack.
const CQ_DEPTH: i32 = 2 * SLOTS as i32 + 16;
/// Completions taken per poll.
const POLL_BATCH: usize = 16;
/// Empty polls spun before the waiting thread sleeps between polls.
const SPIN_POLLS: u32 = 2_000;
/// Sleep between polls once spinning did not help.
const IDLE_SLEEP: Duration = Duration::from_micros(20);
/// How often a waiting connection checks its control connection for a vanished peer.
const PEER_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Written on the control connection by a side whose queue pair failed by its transport, and
/// written back by a peer that sees it: a live peer answers, a killed one only closes. So a
/// transport failure (fall back to TCP) is told from a vanished peer (the next session may use
/// RDMA again), whichever of the error completion and the peer's close comes first.
const TRANSPORT_FAILED: u8 = 0xFA;
/// How long a side whose queue pair failed waits for its peer's answer (a waiting peer looks
/// at the control connection every `PEER_CHECK_EVERY`).
const VERDICT_WAIT: Duration = Duration::from_millis(1500);
/// How long a failed `send_in_place` waits for its writes' flush completions.
const FLUSH_WAIT: Duration = Duration::from_secs(1);
/// Longest `flush_sent` waits for the messages posted to complete. A queue pair destroyed
/// with a message posted but not yet sent loses it, while the close of the control
/// connection reaches the peer: a sender worker's last frame (WorkerDone, posted just before
/// the worker returned) was lost that way in the soft-RoCE guest, and the receiver failed
/// with "peer closed the control connection".
const LINGER: Duration = Duration::from_secs(5);
/// Bound on connection setup (endpoint exchange and the ready byte).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Send-completion tag in work request ids (receive ids are receive buffer numbers).
const SEND_TAG: u64 = 1 << 63;
/// Fault injection for tests (honoured only in this feature build): after this many payload
/// bytes sent over RDMA by this process, the sending connection moves its queue pair to Error,
/// once per process, as a device failure would.
pub const FAIL_AFTER_ENV: &str = "MOVER_RDMA_FAIL_AFTER_BYTES";

/// For A/B measurement (honoured only in this feature build): set, a send worker's slab is
/// not registered (`send_from_region` declines) and every frame is copied into the send
/// buffers, as before the slab was the memory region.
pub const COPY_ENV: &str = "MOVER_RDMA_COPY";

/// The byte count of `FAIL_AFTER_ENV`, read once.
fn fail_after() -> Option<u64> {
    static N: OnceLock<Option<u64>> = OnceLock::new();
    *N.get_or_init(|| std::env::var(FAIL_AFTER_ENV).ok()?.trim().parse().ok())
}
/// Payload bytes sent over RDMA by this process (counted only when `FAIL_AFTER_ENV` is set).
static SENT_BYTES: AtomicU64 = AtomicU64::new(0);
/// The injected fault fired (it fires once per process).
static FAULT_FIRED: AtomicBool = AtomicBool::new(false);

/// Which device, port and GID a connection uses (the `hw` plan's `device:port` for its worker).
#[derive(Debug, Clone)]
pub struct RdmaConfig {
    /// Device name (`mlx5_0`, `rxe0`); None takes the first device.
    pub device: Option<String>,
    pub port: u8,
    /// GID table index: for RoCE v2 over IPv4, the entry holding the IPv4-mapped address.
    pub gid_index: i32,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: None,
            port: 1,
            gid_index: 1,
        }
    }
}

fn verr(what: &str) -> io::Error {
    let os = io::Error::last_os_error();
    io::Error::other(format!("rdma: {what}: {os}"))
}

/// The verbs objects of one connection, torn down in reverse order.
struct Verbs {
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
    cq: *mut ibv_cq,
    qp: *mut ibv_qp,
    mr: *mut ibv_mr,
    /// The registered slab; `base` points into it. Never resized, freed after the QP is gone.
    slab: Box<[u8]>,
    base: *mut u8,
    /// The worker's buffer slab, registered for local reads only (`send_from_region`), and
    /// where it lies; null and None until then.
    region_mr: *mut ibv_mr,
    region: Option<MemSpan>,
}

// SAFETY: libibverbs objects may be used from any thread (the library locks internally); a
// `Verbs` is owned by one connection, which one thread at a time uses through `&mut self`.
unsafe impl Send for Verbs {}

impl Drop for Verbs {
    fn drop(&mut self) {
        // SAFETY: each pointer is either null or an object this struct created and nothing
        // else holds. The QP goes first: once destroyed the device touches no buffer of the
        // slab, which is freed after this body returns (fields drop after `drop`).
        unsafe {
            if !self.qp.is_null() {
                ibv_destroy_qp(self.qp);
            }
            if !self.mr.is_null() {
                ibv_dereg_mr(self.mr);
            }
            if !self.region_mr.is_null() {
                ibv_dereg_mr(self.region_mr);
            }
            if !self.cq.is_null() {
                ibv_destroy_cq(self.cq);
            }
            if !self.pd.is_null() {
                ibv_dealloc_pd(self.pd);
            }
            if !self.ctx.is_null() {
                ibv_close_device(self.ctx);
            }
        }
    }
}

impl Verbs {
    fn open(cfg: &RdmaConfig) -> io::Result<Verbs> {
        let mut slab = vec![0u8; 2 * SLOTS as usize * SLOT_SIZE + SLOTS as usize * CTRL_SIZE]
            .into_boxed_slice();
        let base = slab.as_mut_ptr();
        let mut v = Verbs {
            ctx: std::ptr::null_mut(),
            pd: std::ptr::null_mut(),
            cq: std::ptr::null_mut(),
            qp: std::ptr::null_mut(),
            mr: std::ptr::null_mut(),
            slab,
            base,
            region_mr: std::ptr::null_mut(),
            region: None,
        };
        // SAFETY: the device list is freed before returning and only read while alive; the
        // names it yields are NUL-terminated strings owned by the list.
        unsafe {
            let mut n = 0;
            let list = ibv_get_device_list(&mut n);
            if list.is_null() {
                return Err(verr("ibv_get_device_list"));
            }
            let mut chosen = std::ptr::null_mut();
            for i in 0..n.max(0) as usize {
                let d = *list.add(i);
                let name = CStr::from_ptr(ibv_get_device_name(d)).to_string_lossy();
                if cfg.device.as_deref().is_none_or(|want| want == name) {
                    chosen = d;
                    break;
                }
            }
            if !chosen.is_null() {
                v.ctx = ibv_open_device(chosen);
            }
            ibv_free_device_list(list);
            if chosen.is_null() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "rdma: no device {:?}",
                        cfg.device.as_deref().unwrap_or("(any)")
                    ),
                ));
            }
        }
        if v.ctx.is_null() {
            return Err(verr("ibv_open_device"));
        }
        // SAFETY: `ctx` is an open device; each object created is stored in `v` at once, so
        // `Drop` releases it on any early return.
        unsafe {
            v.pd = ibv_alloc_pd(v.ctx);
            if v.pd.is_null() {
                return Err(verr("ibv_alloc_pd"));
            }
            v.cq = ibv_create_cq(
                v.ctx,
                CQ_DEPTH,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
            if v.cq.is_null() {
                return Err(verr("ibv_create_cq"));
            }
            let mut init: ibv_qp_init_attr = std::mem::zeroed();
            init.send_cq = v.cq;
            init.recv_cq = v.cq;
            init.cap.max_send_wr = SLOTS;
            init.cap.max_recv_wr = SLOTS;
            // A message's header from a send buffer, its payload from the worker's slab.
            init.cap.max_send_sge = 2;
            init.cap.max_recv_sge = 1;
            init.qp_type = ibv_qp_type::IBV_QPT_RC;
            init.sq_sig_all = 1;
            v.qp = ibv_create_qp(v.pd, &mut init);
            if v.qp.is_null() {
                return Err(verr("ibv_create_qp"));
            }
            let access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0
                | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
            v.mr = ibv_reg_mr(v.pd, v.base.cast(), v.slab.len(), access as i32);
            if v.mr.is_null() {
                return Err(verr("ibv_reg_mr"));
            }
        }
        Ok(v)
    }

    /// Deregisters the worker's slab, if registered. `send_in_place` posts nothing from it
    /// after it returns, so no work request names it now (or its queue pair is in Error).
    fn release_region(&mut self) {
        if !self.region_mr.is_null() {
            // SAFETY: `region_mr` is a registration this struct made and nothing else holds.
            unsafe { ibv_dereg_mr(self.region_mr) };
            self.region_mr = std::ptr::null_mut();
        }
        self.region = None;
    }

    /// The buffer of posted receive `r` (what a SEND consuming it lands in).
    fn ctrl_buf(&self, r: u32) -> *mut u8 {
        assert!(r < SLOTS, "receive buffer {r} out of range");
        // SAFETY: r < SLOTS, so the offset stays inside the slab (after the send buffers).
        unsafe {
            self.base
                .add(2 * SLOTS as usize * SLOT_SIZE + r as usize * CTRL_SIZE)
        }
    }

    fn recv_slot(&self, slot: u32) -> *mut u8 {
        debug_assert!(slot < SLOTS);
        // SAFETY: slot < SLOTS, so the offset stays inside the slab.
        unsafe { self.base.add(slot as usize * SLOT_SIZE) }
    }

    fn send_buf(&self, b: u32) -> *mut u8 {
        debug_assert!(b < SLOTS);
        // SAFETY: b < SLOTS, so the offset stays inside the slab (second half).
        unsafe { self.base.add((SLOTS + b) as usize * SLOT_SIZE) }
    }

    fn lkey(&self) -> u32 {
        // SAFETY: `mr` is a registered region owned by self.
        unsafe { (*self.mr).lkey }
    }

    /// Posts receive `r`: what the peer's next message consumes, whichever way it comes. A
    /// write with immediate leaves the buffer untouched (its data is in the slot it names); a
    /// SEND lands in it.
    fn post_recv(&mut self, r: u32) -> io::Result<()> {
        let mut sge = ibv_sge {
            addr: self.ctrl_buf(r) as u64,
            length: CTRL_SIZE as u32,
            lkey: self.lkey(),
        };
        // SAFETY: zeroed is a valid ibv_recv_wr (null next) before the fields are set.
        let mut wr: ibv_recv_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = u64::from(r);
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        let mut bad = std::ptr::null_mut();
        // SAFETY: the buffer lies in the registered slab and is not read until this request's
        // completion is polled (then it is reposted only after its message was copied out);
        // `wr` and `sge` outlive the call (the library copies them).
        let rc = unsafe { ibv_post_recv(self.qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(io::Error::other(format!("rdma: ibv_post_recv: errno {rc}")));
        }
        Ok(())
    }

    /// Writes `len` bytes of send buffer `buf`, then `tail` (a slice of the registered region,
    /// if any), into the peer's slot `slot` (granted to us), with the slot as the immediate;
    /// or, `as_send`, sends them (SEND with the slot as the immediate: the credit is spent,
    /// the bytes land in the peer's next posted receive).
    #[allow(clippy::too_many_arguments)]
    fn post_write(
        &mut self,
        buf: u32,
        len: usize,
        tail: Option<&[u8]>,
        as_send: bool,
        peer: &Endpoint,
        slot: u32,
        wr_id: u64,
    ) -> io::Result<()> {
        let mut sges = [
            ibv_sge {
                addr: self.send_buf(buf) as u64,
                length: len as u32,
                lkey: self.lkey(),
            },
            ibv_sge {
                addr: 0,
                length: 0,
                lkey: 0,
            },
        ];
        let mut n = 1;
        if let Some(t) = tail {
            // Invariant: only `send_in_place` passes a tail, and only inside the region.
            assert!(
                self.region.is_some_and(|r| r.holds(t)) && !self.region_mr.is_null(),
                "a write's tail outside the registered region"
            );
            debug_assert!(len + t.len() <= SLOT_SIZE);
            // SAFETY: `region_mr` is a live registration (checked non-null above).
            let lkey = unsafe { (*self.region_mr).lkey };
            sges[1] = ibv_sge {
                addr: t.as_ptr() as u64,
                length: t.len() as u32,
                lkey,
            };
            n = 2;
        }
        // SAFETY: zeroed is a valid ibv_send_wr before the fields are set.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = sges.as_mut_ptr();
        wr.num_sge = n;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.imm_data_invalidated_rkey_union.imm_data = slot.to_be();
        if as_send {
            debug_assert!(len + tail.map_or(0, <[u8]>::len) <= CTRL_SIZE);
            wr.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
        } else {
            wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
            wr.wr.rdma = rdma_t {
                remote_addr: peer.addr + u64::from(slot) * u64::from(peer.slot_size),
                rkey: peer.rkey,
            };
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: the send buffer lies in the registered slab and was marked busy by
        // `SendCredits::begin_write`, so it is neither written nor reposted until this
        // request's completion is polled. The tail, if any, lies in a region registered for
        // local reads only (the device never writes it), borrowed by `send_in_place`, which
        // returns only after this request's completion (or, on an error, after the queue
        // pair's flush or a bounded wait for it). `wr` and `sges` outlive the call. The
        // remote range
        // is the peer's slot `slot`, which it granted us (checked by `SendCredits`) and does
        // not read until this write's completion reaches it; slot < peer.slots and
        // len <= slot_size (checked at setup and by `send_msg`), so it stays in its region.
        let rc = unsafe { ibv_post_send(self.qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(io::Error::other(format!("rdma: ibv_post_send: errno {rc}")));
        }
        Ok(())
    }

    fn local_endpoint(&self, cfg: &RdmaConfig, psn: u32) -> io::Result<Endpoint> {
        // SAFETY: plain queries into zeroed out-structs of the right types on an open device.
        unsafe {
            let mut port: ibv_port_attr = std::mem::zeroed();
            if ___ibv_query_port(self.ctx, cfg.port, &mut port) != 0 {
                return Err(verr("ibv_query_port"));
            }
            let mut gid: ibv_gid = std::mem::zeroed();
            if ibv_query_gid(self.ctx, cfg.port, cfg.gid_index, &mut gid) != 0 {
                return Err(verr("ibv_query_gid"));
            }
            Ok(Endpoint {
                qpn: (*self.qp).qp_num,
                psn,
                gid: gid.raw,
                lid: port.lid,
                rkey: (*self.mr).rkey,
                addr: self.base as u64,
                slots: SLOTS,
                slot_size: SLOT_SIZE as u32,
            })
        }
    }

    fn modify(
        &mut self,
        attr: &mut ibv_qp_attr,
        mask: ibv_qp_attr_mask,
        what: &str,
    ) -> io::Result<()> {
        // SAFETY: `attr` is fully initialized for the fields `mask` names; `qp` is ours.
        let rc = unsafe { ibv_modify_qp(self.qp, attr, mask.0 as i32) };
        if rc != 0 {
            return Err(io::Error::other(format!(
                "rdma: modify QP to {what}: errno {rc}"
            )));
        }
        Ok(())
    }

    fn move_to_init(&mut self, cfg: &RdmaConfig) -> io::Result<()> {
        // SAFETY: zeroed is a valid ibv_qp_attr.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = cfg.port;
        a.qp_access_flags = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        let m = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ibv_qp_attr_mask::IBV_QP_PORT
            | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        self.modify(&mut a, m, "INIT")
    }

    fn move_to_rtr(&mut self, cfg: &RdmaConfig, peer: &Endpoint) -> io::Result<()> {
        // SAFETY: zeroed is a valid ibv_port_attr / ibv_qp_attr.
        let mut port: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: query into a zeroed out-struct on an open device.
        if unsafe { ___ibv_query_port(self.ctx, cfg.port, &mut port) } != 0 {
            return Err(verr("ibv_query_port"));
        }
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = port.active_mtu;
        a.dest_qp_num = peer.qpn;
        a.rq_psn = peer.psn;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = 12;
        a.ah_attr.is_global = 1;
        a.ah_attr.grh.dgid.raw = peer.gid;
        a.ah_attr.grh.sgid_index = cfg.gid_index as u8;
        a.ah_attr.grh.hop_limit = 1;
        a.ah_attr.dlid = peer.lid;
        a.ah_attr.port_num = cfg.port;
        let m = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_AV
            | ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut a, m, "RTR")
    }

    fn move_to_rts(&mut self, psn: u32) -> io::Result<()> {
        // SAFETY: zeroed is a valid ibv_qp_attr.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.sq_psn = psn;
        a.max_rd_atomic = 1;
        let m = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut a, m, "RTS")
    }

    /// Moves the queue pair to Error (fault injection): outstanding and later work requests
    /// complete with flush errors, as after a device failure.
    fn force_error(&mut self) -> io::Result<()> {
        // SAFETY: zeroed is a valid ibv_qp_attr.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, ibv_qp_attr_mask::IBV_QP_STATE, "ERR")
    }

    /// Polls up to `POLL_BATCH` completions into `out`.
    fn poll(&mut self, out: &mut Vec<Wc>) -> io::Result<()> {
        // SAFETY: zeroed is a valid ibv_wc; the array outlives the call, which writes at most
        // POLL_BATCH entries into it; `cq` is ours.
        let (wcs, n) = unsafe {
            let mut wcs: [ibv_wc; POLL_BATCH] = std::mem::zeroed();
            let n = ibv_poll_cq(self.cq, POLL_BATCH as i32, wcs.as_mut_ptr());
            (wcs, n)
        };
        if n < 0 {
            return Err(io::Error::other(format!("rdma: ibv_poll_cq: {n}")));
        }
        out.extend(wcs[..n as usize].iter().map(|wc| Wc {
            wr_id: wc.wr_id,
            status: wc.status,
            by_send: wc.opcode == ibv_wc_opcode::IBV_WC_RECV,
            byte_len: wc.byte_len,
            // SAFETY: reading the union's u32 view is valid for any bits; it is used only for
            // receive completions, which all carry an immediate (WRITE with immediate).
            imm: u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data }),
        }));
        Ok(())
    }
}

/// The fields of a work completion this transport uses.
struct Wc {
    wr_id: u64,
    status: ibv_wc_status::Type,
    /// For a receive: whether a SEND brought it (its bytes are in the posted receive's
    /// buffer), not a write with immediate (its bytes are in the slot the immediate names).
    by_send: bool,
    byte_len: u32,
    imm: u32,
}

/// A connection over one RC queue pair, with its TCP control connection.
pub struct RdmaConn {
    v: Verbs,
    ctrl: TcpStream,
    qp: QpMachine,
    recv: RecvCredits,
    send: SendCredits,
    /// The peer's receive slab (address, rkey, slots) that writes go to.
    remote: Endpoint,
    /// Slots re-posted and not yet granted to the peer.
    to_return: Vec<SlotId>,
    inbound: VecDeque<u8>,
    timeout: Mutex<Option<Duration>>,
    closed: AtomicBool,
    peer: String,
    /// Set when this connection's transport fails while its peer is still there (see
    /// `transport::select`: the sender then falls back to TCP).
    on_failure: Option<Arc<AtomicBool>>,
    /// When the control connection was last checked for a vanished peer.
    peer_checked: Cell<Instant>,
    /// Messages posted: as writes into slots, and as SENDs (control messages).
    posted: MessageCounts,
}

/// Messages a connection posted, by how they travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub writes: u64,
    pub sends: u64,
}

fn setup_io<T>(r: io::Result<T>, qp: &mut QpMachine) -> io::Result<T> {
    if r.is_err() {
        let _ = qp.on(QpEvent::Failed(FailCause::SetupRefused));
    }
    r
}

impl RdmaConn {
    /// Brings up a queue pair with the peer at the other end of `ctrl` (already past the
    /// session handshake, or fresh for a standalone test): endpoints over `ctrl`, then RTR, RTS.
    pub fn establish(ctrl: TcpStream, cfg: &RdmaConfig) -> io::Result<RdmaConn> {
        ctrl.set_nodelay(true)?;
        ctrl.set_read_timeout(Some(SETUP_TIMEOUT))?;
        ctrl.set_write_timeout(Some(SETUP_TIMEOUT))?;
        let peer = ctrl
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let mut qp = QpMachine::new();
        let mut v = Verbs::open(cfg)?;
        let mut recv = RecvCredits::new(SLOTS).map_err(io::Error::other)?;
        let mut send = SendCredits::new(SLOTS, SLOTS).map_err(io::Error::other)?;
        let r = v.move_to_init(cfg);
        setup_io(r, &mut qp)?;
        let _ = qp.on(QpEvent::Advance { peer_known: false });
        // A receive is posted for every slot before the peer learns of it: each message, a
        // write into a granted slot or a SEND spending its credit, consumes one.
        let initial = recv.grant(SLOTS as usize).len() as u32;
        assert_eq!(initial, SLOTS, "the peer takes every slot as granted");
        for r in 0..initial {
            v.post_recv(r)?;
        }
        let psn = (v.local_endpoint(cfg, 0)?.qpn.wrapping_mul(2_654_435_761)) & 0x00ff_ffff;
        let me = v.local_endpoint(cfg, psn)?;
        let mut c = &ctrl;
        c.write_all(&me.encode())?;
        let mut b = [0u8; ENDPOINT_LEN];
        c.read_exact(&mut b)?;
        let them =
            Endpoint::decode(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // Writes go to the peer's slots by our own layout: it must be the same.
        if them.slot_size as usize != SLOT_SIZE || them.slots != SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "rdma: peer has {} slots of {} bytes, not {SLOTS} of {SLOT_SIZE}",
                    them.slots, them.slot_size
                ),
            ));
        }
        let r = v.move_to_rtr(cfg, &them);
        setup_io(r, &mut qp)?;
        let _ = qp.on(QpEvent::Advance { peer_known: true });
        let r = v.move_to_rts(psn);
        setup_io(r, &mut qp)?;
        let _ = qp.on(QpEvent::Advance { peer_known: true });
        // The peer posted slots 0..them.slots before sending its endpoint: all are credits.
        let initial: Vec<SlotId> = (0..them.slots.min(SLOTS)).map(SlotId).collect();
        for chunk in initial.chunks(MAX_GRANT_BATCH) {
            send.on_grant(chunk).map_err(io::Error::other)?;
        }
        c.write_all(&[1])?;
        let mut ready = [0u8; 1];
        c.read_exact(&mut ready)?;
        ctrl.set_read_timeout(None)?;
        ctrl.set_write_timeout(None)?;
        Ok(RdmaConn {
            v,
            ctrl,
            qp,
            recv,
            send,
            remote: them,
            to_return: Vec::new(),
            inbound: VecDeque::new(),
            timeout: Mutex::new(None),
            closed: AtomicBool::new(false),
            peer,
            on_failure: None,
            peer_checked: Cell::new(Instant::now()),
            posted: MessageCounts::default(),
        })
    }

    /// Messages posted so far, by how they travel.
    pub fn messages(&self) -> MessageCounts {
        self.posted
    }

    /// The flag to set when this connection's transport fails while the peer is still there.
    pub fn set_failure_flag(&mut self, flag: Option<Arc<AtomicBool>>) {
        self.on_failure = flag;
    }

    /// What the control connection says now (`wait` None), or within `wait`.
    fn peer_word(&self, wait: Option<Duration>) -> PeerWord {
        let set = match wait {
            None => self.ctrl.set_nonblocking(true),
            Some(w) => self.ctrl.set_read_timeout(Some(w)),
        };
        if set.is_err() {
            return PeerWord::Closed;
        }
        let mut b = [0u8; 1];
        let word = match self.ctrl.peek(&mut b) {
            Ok(0) => PeerWord::Closed,
            Ok(_) if b[0] == TRANSPORT_FAILED => PeerWord::TransportFailed,
            Ok(_) => PeerWord::Open,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                PeerWord::Open
            }
            Err(_) => PeerWord::Closed,
        };
        let _ = match wait {
            None => self.ctrl.set_nonblocking(false),
            Some(_) => self.ctrl.set_read_timeout(None),
        };
        word
    }

    /// Tells the peer this side's queue pair failed by its transport (one byte; the socket's
    /// buffer takes it without blocking, and a vanished peer's error is of no interest).
    fn say_transport_failed(&self) {
        let _ = (&self.ctrl).write_all(&[TRANSPORT_FAILED]);
    }

    /// The policy offers TCP only from now on.
    fn fell_back(&self) {
        if let Some(f) = &self.on_failure {
            f.store(true, Ordering::SeqCst);
        }
    }

    fn fail(&mut self, cause: FailCause, what: String) -> io::Error {
        let _ = self.qp.on(QpEvent::Failed(cause));
        // An error completion while the peer's control connection is open is the transport's
        // failure (the fallback's cue); with the peer gone (a killed receiver) it is only the
        // peer's absence, and the next session may use RDMA again.
        let transport = matches!(cause, FailCause::ErrorCompletion | FailCause::AsyncEvent);
        if transport {
            self.say_transport_failed();
            // The peer's answer (or its own word: both failed), or its close; a peer that
            // stays silent but connected is alive: the transport failed either way.
            match self.peer_word(Some(VERDICT_WAIT)) {
                PeerWord::Closed => {
                    tracing::info!("rdma: queue pair failed with the peer gone: no fallback")
                }
                PeerWord::TransportFailed | PeerWord::Open => self.fell_back(),
            }
        }
        io::Error::new(io::ErrorKind::ConnectionReset, format!("rdma: {what}"))
    }

    /// Handles the completions available now; returns how many there were.
    fn progress(&mut self) -> io::Result<usize> {
        let mut wcs = Vec::with_capacity(POLL_BATCH);
        self.v.poll(&mut wcs)?;
        for (i, wc) in wcs.iter().enumerate() {
            if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                if wc.wr_id & SEND_TAG != 0 {
                    let _ = self.qp.on(QpEvent::CompletedWithError);
                }
                // The device is done with this write and the rest of the batch: their send
                // buffers are free (what `flush_writes` waits for).
                self.retire_sends(&wcs[i..]);
                return Err(self.fail(
                    FailCause::ErrorCompletion,
                    format!("completion status {} (wr {:#x})", wc.status, wc.wr_id),
                ));
            }
            if wc.wr_id & SEND_TAG != 0 {
                self.send
                    .on_completion(WrId(wc.wr_id & !SEND_TAG))
                    .map_err(io::Error::other)?;
                let _ = self.qp.on(QpEvent::Completed);
                continue;
            }
            // The immediate names the slot the message spent: a write landed in it, or a SEND
            // (in the consumed receive's buffer) used its credit. The credit machine checks it
            // was granted.
            let imm = wc.imm;
            let slot = match self.recv.on_write(imm, wc.byte_len) {
                Ok(s) => s,
                Err(e) => return Err(self.fail(FailCause::Peer, e.to_string())),
            };
            // Receive ids are the buffer numbers this side posted.
            let r = u32::try_from(wc.wr_id).ok().filter(|r| *r < SLOTS);
            let Some(r) = r else {
                return Err(self.fail(FailCause::Peer, format!("receive id {}", wc.wr_id)));
            };
            self.take_message(slot, r, wc.by_send, wc.byte_len as usize)?;
        }
        Ok(wcs.len())
    }

    /// Reads the message that spent `slot` (in the slot, or `by_send` in receive `r`'s
    /// buffer), releases and grants the slot again and reposts receive `r`.
    fn take_message(&mut self, slot: SlotId, r: u32, by_send: bool, got: usize) -> io::Result<()> {
        let (p, room) = if by_send {
            (self.v.ctrl_buf(r), CTRL_SIZE)
        } else {
            (self.v.recv_slot(slot.0), SLOT_SIZE)
        };
        let mut head = [0u8; 8];
        if !(HEADER..=room).contains(&got) {
            return Err(self.fail(FailCause::Peer, format!("message of {got} bytes")));
        }
        // SAFETY: the completion was polled, so the device is done writing the slot or the
        // receive buffer, which holds `got >= HEADER` bytes inside the slab.
        unsafe { std::ptr::copy_nonoverlapping(p, head.as_mut_ptr(), 8) };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let ngrant = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if ngrant > MAX_GRANT_BATCH || HEADER + len > got {
            return Err(self.fail(
                FailCause::Peer,
                format!("bad header len {len} grants {ngrant}"),
            ));
        }
        let mut ids = [0u8; 4 * MAX_GRANT_BATCH];
        // SAFETY: as above; the grant ids lie within the header.
        unsafe { std::ptr::copy_nonoverlapping(p.add(8), ids.as_mut_ptr(), 4 * ngrant) };
        let grants: Vec<SlotId> = ids[..4 * ngrant]
            .chunks_exact(4)
            .map(|c| SlotId(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        if let Err(e) = self.send.on_grant(&grants) {
            return Err(self.fail(FailCause::Peer, e.to_string()));
        }
        // SAFETY: as above; the payload lies within the `got` bytes written.
        let payload = unsafe { std::slice::from_raw_parts(p.add(HEADER), len) };
        self.inbound.extend(payload);
        self.recv.release(slot).map_err(io::Error::other)?;
        // The slot just released is free: one is granted again, with the receive consumed.
        for s in self.recv.grant(1) {
            self.v.post_recv(r)?;
            self.to_return.push(s);
        }
        Ok(())
    }

    fn check_open(&self) -> io::Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "rdma: connection shut down",
            ));
        }
        if let Some(cause) = self.qp.cause() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("rdma: queue pair failed ({cause:?})"),
            ));
        }
        Ok(())
    }

    /// One idle turn of a wait: spin, then sleep; bounded by the timeout; notices a peer that
    /// closed its control connection.
    fn idle(&self, idle: &mut u32, start: Instant) -> io::Result<()> {
        *idle += 1;
        let t = *self.timeout.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_some_and(|t| start.elapsed() > t) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "rdma: timed out"));
        }
        if self.peer_checked.get().elapsed() >= PEER_CHECK_EVERY {
            self.peer_checked.set(Instant::now());
            match self.peer_word(None) {
                PeerWord::Open => {}
                PeerWord::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "rdma: peer closed the control connection",
                    ))
                }
                PeerWord::TransportFailed => {
                    self.say_transport_failed();
                    self.fell_back();
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "rdma: the peer's queue pair failed",
                    ));
                }
            }
        }
        if *idle > SPIN_POLLS {
            std::thread::sleep(IDLE_SLEEP);
        } else {
            std::hint::spin_loop();
        }
        Ok(())
    }

    /// A free send buffer, if any.
    fn free_source(&self) -> Option<SourceBuf> {
        (0..SLOTS)
            .map(SourceBuf)
            .find(|b| !self.send.is_source_busy(*b))
    }

    /// Sends one message (payload may be empty: a credit return), its payload copied.
    fn send_msg(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send_one(payload, false).map(|_| ())
    }

    /// Sends `buf`, which lies in the registered region, without copying it: each message's
    /// payload is gathered by the device from where it lies. Returns once every write it
    /// posted has completed, as `send_all`'s caller may then reuse the buffer. On an error the
    /// queue pair is moved to Error and its flushed writes are waited for (`FLUSH_WAIT`).
    fn send_in_place(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut posted: Vec<SourceBuf> = Vec::with_capacity(buf.len().div_ceil(MAX_PAYLOAD));
        let mut sent = Ok(());
        for chunk in buf.chunks(MAX_PAYLOAD) {
            match self.send_one(chunk, true) {
                Ok(src) => posted.push(src),
                Err(e) => {
                    sent = Err(e);
                    break;
                }
            }
        }
        if sent.is_ok() {
            sent = self.wait_sources(&posted);
        }
        if sent.is_err() {
            self.flush_writes(&posted);
        }
        sent
    }

    /// Waits until none of `sources` is busy: their writes completed.
    fn wait_sources(&mut self, sources: &[SourceBuf]) -> io::Result<()> {
        let start = Instant::now();
        let mut idle = 0;
        while sources.iter().any(|b| self.send.is_source_busy(*b)) {
            self.check_open()?;
            if self.progress()? == 0 {
                self.maybe_return_credits()?;
                self.idle(&mut idle, start)?;
            }
        }
        Ok(())
    }

    /// After a failed `send_in_place`: moves the queue pair to Error, so that its posted
    /// writes complete (flushed), and polls until none of `posted` is busy or `FLUSH_WAIT`
    /// passed. The device then reads no more of the caller's buffer.
    fn flush_writes(&mut self, posted: &[SourceBuf]) {
        let _ = self.v.force_error();
        let start = Instant::now();
        let mut wcs = Vec::with_capacity(POLL_BATCH);
        while posted.iter().any(|b| self.send.is_source_busy(*b)) {
            if start.elapsed() >= FLUSH_WAIT {
                tracing::warn!("rdma: writes from the slab not flushed within {FLUSH_WAIT:?}");
                return;
            }
            wcs.clear();
            if self.v.poll(&mut wcs).is_err() {
                return;
            }
            self.retire_sends(&wcs);
            if wcs.is_empty() {
                std::thread::sleep(IDLE_SLEEP);
            }
        }
    }

    /// Frees the send buffers of the send completions in `wcs`, whatever their status (the
    /// device is done with them either way).
    fn retire_sends(&mut self, wcs: &[Wc]) {
        for wc in wcs.iter().filter(|wc| wc.wr_id & SEND_TAG != 0) {
            let _ = self.send.on_completion(WrId(wc.wr_id & !SEND_TAG));
        }
    }

    /// Sends one message: its header from a free send buffer, its payload copied after the
    /// header or, `in_place`, gathered from where it lies (the registered region). Data keeps
    /// one credit back so credit returns can always be sent. The send buffer used, busy until
    /// the write's completion.
    fn send_one(&mut self, payload: &[u8], in_place: bool) -> io::Result<SourceBuf> {
        let need = if payload.is_empty() { 1 } else { 2 };
        let start = Instant::now();
        let mut idle = 0;
        let src = loop {
            self.check_open()?;
            let n = self.progress()?;
            if self.send.credits() >= need && self.qp.can_post() {
                if let Some(b) = self.free_source() {
                    break b;
                }
            }
            if n == 0 {
                self.maybe_return_credits()?;
                self.idle(&mut idle, start)?;
            }
        };
        let w = self.send.begin_write(src).map_err(io::Error::other)?;
        let grants: Vec<SlotId> = self
            .to_return
            .drain(..self.to_return.len().min(MAX_GRANT_BATCH))
            .collect();
        let mut head = [0u8; HEADER];
        head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[4..8].copy_from_slice(&(grants.len() as u32).to_le_bytes());
        for (i, g) in grants.iter().enumerate() {
            head[8 + 4 * i..12 + 4 * i].copy_from_slice(&g.0.to_le_bytes());
        }
        let p = self.v.send_buf(src.0);
        debug_assert!(HEADER + payload.len() <= SLOT_SIZE);
        // SAFETY: `src` was just marked busy by begin_write after its previous completion was
        // polled, so the device does not read it now; HEADER + payload <= SLOT_SIZE.
        unsafe {
            std::ptr::copy_nonoverlapping(head.as_ptr(), p, HEADER);
            if !in_place {
                std::ptr::copy_nonoverlapping(payload.as_ptr(), p.add(HEADER), payload.len());
            }
        }
        let remote = self.remote;
        let (len, tail) = if in_place {
            (HEADER, Some(payload))
        } else {
            (HEADER + payload.len(), None)
        };
        // Control messages (credit returns, acks, small frames) go as SENDs, data as writes.
        let as_send = payload.len() <= CTRL_PAYLOAD;
        let posted = self.v.post_write(
            src.0,
            len,
            tail,
            as_send,
            &remote,
            w.slot.0,
            SEND_TAG | w.wr_id.0,
        );
        if let Err(e) = posted {
            return Err(self.fail(FailCause::ErrorCompletion, e.to_string()));
        }
        let _ = self.qp.on(QpEvent::Posted);
        if as_send {
            self.posted.sends += 1;
        } else {
            self.posted.writes += 1;
        }
        self.inject_fault(payload.len())?;
        Ok(src)
    }

    /// `FAIL_AFTER_ENV`: moves the queue pair to Error once this process sent that many bytes.
    fn inject_fault(&mut self, sent: usize) -> io::Result<()> {
        let Some(limit) = fail_after() else {
            return Ok(());
        };
        let total = SENT_BYTES.fetch_add(sent as u64, Ordering::SeqCst) + sent as u64;
        if total >= limit && !FAULT_FIRED.swap(true, Ordering::SeqCst) {
            tracing::warn!(total, "rdma: {FAIL_AFTER_ENV} reached: queue pair to Error");
            self.v.force_error()?;
        }
        Ok(())
    }

    /// Returns credits without data once half the slots wait to be granted again.
    fn maybe_return_credits(&mut self) -> io::Result<()> {
        if self.to_return.len() as u32 >= SLOTS / 2
            && self.send.credits() >= 1
            && self.qp.can_post()
            && self.free_source().is_some()
        {
            self.send_msg(&[])?;
        }
        Ok(())
    }
}

impl Connection for RdmaConn {
    fn send_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.v.region.is_some_and(|r| r.holds(buf)) {
            return self.send_in_place(buf);
        }
        for chunk in buf.chunks(MAX_PAYLOAD) {
            self.send_msg(chunk)?;
        }
        Ok(())
    }

    fn release_region(&mut self) {
        self.v.release_region();
    }

    fn flush_sent(&mut self) -> io::Result<()> {
        let start = Instant::now();
        while (0..SLOTS)
            .map(SourceBuf)
            .any(|b| self.send.is_source_busy(b))
        {
            self.check_open()?;
            if start.elapsed() >= LINGER {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("rdma: messages still unsent after {LINGER:?}"),
                ));
            }
            if self.progress()? == 0 {
                // A peer that closed has taken what it needed of this connection (its answer
                // on the session's control connection says whether all arrived); its close
                // may overtake our last completion.
                if matches!(self.peer_word(None), PeerWord::Closed) {
                    return Ok(());
                }
                std::thread::sleep(IDLE_SLEEP);
            }
        }
        Ok(())
    }

    fn send_from_region(&mut self, span: MemSpan) -> io::Result<bool> {
        self.v.release_region();
        assert!(span.len > 0, "an empty region");
        if std::env::var_os(COPY_ENV).is_some() {
            tracing::info!("rdma: {COPY_ENV} set: frames are copied");
            return Ok(false);
        }
        // SAFETY: the range is the caller's allocation (the worker's slab). Registered with no
        // access flags, the device may only read it, and only for writes `send_in_place`
        // posts from slices the caller lends it; the registration is released in `Drop`.
        let mr = unsafe { ibv_reg_mr(self.v.pd, span.addr as *mut _, span.len, 0) };
        if mr.is_null() {
            // Under a small RLIMIT_MEMLOCK, say: the copy path works as before.
            tracing::warn!(
                "rdma: registering the worker's slab ({} MiB) failed: {}; frames are copied",
                span.len >> 20,
                io::Error::last_os_error()
            );
            return Ok(false);
        }
        self.v.region_mr = mr;
        self.v.region = Some(span);
        tracing::info!(
            peer = %self.peer,
            "rdma: frames go out of the worker's slab ({} MiB registered): no copy",
            span.len >> 20
        );
        Ok(true)
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let start = Instant::now();
        let mut idle = 0;
        while self.inbound.len() < buf.len() {
            self.check_open()?;
            let n = self.progress()?;
            self.maybe_return_credits()?;
            if n == 0 {
                self.idle(&mut idle, start)?;
            }
        }
        // Two slice copies out of the ring buffer, not a byte at a time.
        let n = buf.len();
        let (a, b) = self.inbound.as_slices();
        let k = a.len().min(n);
        buf[..k].copy_from_slice(&a[..k]);
        buf[k..].copy_from_slice(&b[..n - k]);
        self.inbound.drain(..n);
        self.maybe_return_credits()
    }

    fn uring_socket(&self) -> io::Result<Option<OwnedFd>> {
        Ok(None)
    }

    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        *self.timeout.lock().unwrap_or_else(|p| p.into_inner()) = t;
        Ok(())
    }

    fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.ctrl.shutdown(Shutdown::Both);
    }

    fn peer_closed(&self) -> bool {
        matches!(self.peer_word(None), PeerWord::Closed)
    }

    fn peer(&self) -> String {
        format!("rdma:{}", self.peer)
    }
}

/// What a queue pair's control connection says about the peer.
enum PeerWord {
    /// Connected, nothing said.
    Open,
    /// Closed or broken: the peer is gone.
    Closed,
    /// The peer's queue pair failed (`TRANSPORT_FAILED`).
    TransportFailed,
}

/// Connects the control connection over TCP, then the queue pair.
pub struct RdmaTransport {
    pub cfg: RdmaConfig,
}

impl Transport for RdmaTransport {
    fn connect(&self, peer: SocketAddr) -> io::Result<Box<dyn Connection>> {
        let s = TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT)?;
        Ok(Box::new(RdmaConn::establish(s, &self.cfg)?))
    }
}
