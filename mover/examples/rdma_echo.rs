//! RDMA transport check for the soft-RoCE guest (scripts/rdma-vm.sh): two connections' worth
//! of traffic between two threads of this process over one RDMA device, the control
//! connections on 127.0.0.1. Sends seeded data both ways through `Connection::send_all` and
//! `recv_exact` (so through the credit machine and the queue pair), checks xxh3 hashes, then
//! checks that a shut-down peer is reported as an error, not a hang, and that a peer whose
//! queue pair vanishes mid-stream (the receiver drops its connection after 2 MiB while the
//! sender keeps sending) fails the sender with an error within a bound: the RDMA error that
//! the session's reconnect (and, later, the fallback to TCP) starts from.
//!
//! Usage: rdma_echo [DEVICE] [GID_INDEX] [MIB]   (defaults: first device, 1, 64)
//! Prints `rdma-echo: PASS ...` and exits 0, or `rdma-echo: FAIL ...` and exits 1.

use mover::transport::rdma::verbs::{RdmaConfig, RdmaConn, MAX_PAYLOAD};
use mover::transport::Connection;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Bytes per send_all call (several RDMA messages each).
const CHUNK: usize = 1 << 20;

fn data(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

fn run(cfg: RdmaConfig, mib: usize) -> Result<String, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let scfg = cfg.clone();
    let total = mib * CHUNK;
    let server = std::thread::spawn(move || -> Result<(), String> {
        let (s, _) = l.accept().map_err(|e| e.to_string())?;
        let mut c = RdmaConn::establish(s, &scfg).map_err(|e| format!("server setup: {e}"))?;
        let mut buf = vec![0u8; CHUNK];
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for _ in 0..total / CHUNK {
            c.recv_exact(&mut buf)
                .map_err(|e| format!("server recv: {e}"))?;
            h.update(&buf);
        }
        c.send_all(&h.digest().to_le_bytes())
            .map_err(|e| format!("server send hash: {e}"))?;
        // Then the other way: send a seeded MiB back.
        c.send_all(&data(7, CHUNK))
            .map_err(|e| format!("server send: {e}"))?;
        // Wait for the client's goodbye, then shut down.
        let mut b = [0u8; 1];
        c.recv_exact(&mut b)
            .map_err(|e| format!("server bye: {e}"))?;
        c.shutdown();
        Ok(())
    });
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let mut c = RdmaConn::establish(s, &cfg).map_err(|e| format!("client setup: {e}"))?;
    let payload = data(42, CHUNK);
    let mut want = xxhash_rust::xxh3::Xxh3::new();
    let t0 = Instant::now();
    for i in 0..total / CHUNK {
        let mut p = payload.clone();
        p[0] = i as u8;
        want.update(&p);
        c.send_all(&p).map_err(|e| format!("client send: {e}"))?;
    }
    let mut got = [0u8; 8];
    c.recv_exact(&mut got)
        .map_err(|e| format!("client recv hash: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    if u64::from_le_bytes(got) != want.digest() {
        return Err("hash of the data the server received differs".into());
    }
    let mut back = vec![0u8; CHUNK];
    c.recv_exact(&mut back)
        .map_err(|e| format!("client recv: {e}"))?;
    if back != data(7, CHUNK) {
        return Err("data sent back differs".into());
    }
    c.send_all(&[1]).map_err(|e| format!("client bye: {e}"))?;
    // Data went as writes into slots; credit returns and the goodbye as SENDs.
    let m = c.messages();
    if m.writes < (total / MAX_PAYLOAD) as u64 || m.sends == 0 {
        return Err(format!("messages posted by kind: {m:?}"));
    }
    server
        .join()
        .map_err(|_| "server thread panicked".to_string())??;
    // The server shut down: a receive must fail (peer closed), not hang.
    c.set_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    match c.recv_exact(&mut b) {
        Err(e) if e.kind() != std::io::ErrorKind::TimedOut => {}
        other => return Err(format!("receive from a closed peer gave {other:?}")),
    }
    let broken = broken_peer(cfg)?;
    Ok(format!(
        "{broken}; {mib} MiB client->server in {secs:.2} s ({:.1} MiB/s, messages of {MAX_PAYLOAD} bytes; the client posted {} writes and {} sends), 1 MiB back, hashes equal, closed peer reported",
        mib as f64 / secs,
        m.writes,
        m.sends
    ))
}

/// The receiver takes 2 MiB, then drops its connection (QP destroyed, control closed) while
/// the sender goes on: the sender must get an error, not hang and not time out.
fn broken_peer(cfg: RdmaConfig) -> Result<String, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let scfg = cfg.clone();
    let server = std::thread::spawn(move || -> Result<(), String> {
        let (s, _) = l.accept().map_err(|e| e.to_string())?;
        let mut c = RdmaConn::establish(s, &scfg).map_err(|e| format!("server setup: {e}"))?;
        let mut buf = vec![0u8; 2 * CHUNK];
        c.recv_exact(&mut buf)
            .map_err(|e| format!("server recv: {e}"))?;
        drop(c);
        Ok(())
    });
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let mut c = RdmaConn::establish(s, &cfg).map_err(|e| format!("client setup: {e}"))?;
    c.set_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let payload = data(3, CHUNK);
    let t0 = Instant::now();
    let mut sent = 0usize;
    let err = loop {
        match c.send_all(&payload) {
            Ok(()) => sent += CHUNK,
            Err(e) => break e,
        }
        if sent > 1024 * CHUNK {
            return Err("sent 1 GiB to a peer that stopped after 2 MiB".into());
        }
    };
    server
        .join()
        .map_err(|_| "server thread panicked".to_string())??;
    if err.kind() == std::io::ErrorKind::TimedOut {
        return Err(format!("vanished peer only noticed by the timeout: {err}"));
    }
    Ok(format!(
        "vanished peer failed the sender after {} MiB in {:.2} s ({err})",
        sent / CHUNK,
        t0.elapsed().as_secs_f64()
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfg = RdmaConfig {
        device: args.get(1).cloned(),
        port: 1,
        gid_index: args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1),
    };
    let mib = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    match run(cfg, mib) {
        Ok(m) => println!("rdma-echo: PASS {m}"),
        Err(e) => {
            println!("rdma-echo: FAIL {e}");
            std::process::exit(1);
        }
    }
}
