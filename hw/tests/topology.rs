//! Topology from fixture sysfs trees, the pinning plan, and the real machine.

use hw::*;
use std::path::Path;

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Two NUMA nodes of 4 CPUs (2 cores x 2 SMT threads each), nvme0n1 with 4 blk-mq queues and
/// a partition, eth0 on node 1 with 2 rx/tx queues.
fn fixture() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for cpu in 0..8u32 {
        let core = (cpu % 4) / 2;
        put(
            r,
            &format!("devices/system/cpu/cpu{cpu}/topology/core_id"),
            &format!("{core}\n"),
        );
        put(
            r,
            &format!("devices/system/cpu/cpu{cpu}/topology/physical_package_id"),
            &format!("{}\n", cpu / 4),
        );
        if cpu != 0 {
            put(r, &format!("devices/system/cpu/cpu{cpu}/online"), "1\n");
        }
    }
    put(r, "devices/system/node/node0/cpulist", "0-3\n");
    put(r, "devices/system/node/node1/cpulist", "4-7\n");
    for q in 0..4 {
        put(
            r,
            &format!("block/nvme0n1/mq/{q}/cpu_list"),
            &format!("{},{}\n", q * 2, q * 2 + 1),
        );
    }
    put(r, "block/nvme0n1/queue/rotational", "0\n");
    put(r, "block/nvme0n1/queue/logical_block_size", "512\n");
    put(r, "block/nvme0n1/device/numa_node", "1\n");
    put(r, "block/nvme0n1/nvme0n1p1/partition", "1\n");
    put(r, "block/loop7/queue/rotational", "0\n");
    put(r, "block/ram0/queue/rotational", "0\n");
    put(r, "block/loopback-array/queue/rotational", "1\n");
    put(r, "class/net/eth0/device/numa_node", "1\n");
    for q in 0..2 {
        put(r, &format!("class/net/eth0/queues/rx-{q}/rps_cpus"), "0\n");
        put(
            r,
            &format!("class/net/eth0/queues/tx-{q}/xps_cpus"),
            if q == 0 { "00000030\n" } else { "000000c0\n" },
        );
    }
    put(r, "class/net/lo/device_absent", "");
    // dev/block links: 259:0 -> the disk, 259:1 -> its partition
    std::fs::create_dir_all(r.join("dev/block")).unwrap();
    std::os::unix::fs::symlink(r.join("block/nvme0n1"), r.join("dev/block/259:0")).unwrap();
    std::os::unix::fs::symlink(r.join("block/nvme0n1/nvme0n1p1"), r.join("dev/block/259:1"))
        .unwrap();
    t
}

#[test]
fn reads_cpus_numa_nodes_and_smt_layout() {
    let t = fixture();
    let topo = Topology::from_sysfs(t.path()).unwrap();
    assert_eq!(topo.cpus.len(), 8);
    assert!(
        topo.cpus.iter().all(|c| c.online),
        "cpu0 without an online file counts as online"
    );
    assert_eq!(topo.numa_nodes.len(), 2);
    assert_eq!(topo.cpus[5].numa_node, Some(NumaNodeId(1)));
    assert_eq!(topo.cpus[3].core_id, Some(1));
}

#[test]
fn loop_devices_and_ram_disks_are_not_read_but_a_disk_merely_named_so_is() {
    let t = fixture();
    let topo = Topology::from_sysfs(t.path()).unwrap();
    // Loop devices and RAM disks have nothing to pin near; a disk merely named so stays.
    let names: Vec<&str> = topo.block_devices.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["loopback-array", "nvme0n1"]);
}

#[test]
fn reads_blk_mq_queue_cpu_lists() {
    let t = fixture();
    let topo = Topology::from_sysfs(t.path()).unwrap();
    let nvme = topo
        .block_devices
        .iter()
        .find(|b| b.name == "nvme0n1")
        .unwrap();
    assert_eq!(nvme.hw_queues.len(), 4);
    assert_eq!(nvme.hw_queues[2].cpus, vec![CpuId(4), CpuId(5)]);
    assert_eq!(nvme.numa_node, Some(NumaNodeId(1)));
    assert_eq!(nvme.rotational, Some(false));
    assert_eq!(nvme.logical_block_size, Some(512));
}

#[test]
fn reads_nic_queues_and_xps_masks() {
    let t = fixture();
    let topo = Topology::from_sysfs(t.path()).unwrap();
    let eth = topo.nics.iter().find(|n| n.name == "eth0").unwrap();
    assert_eq!((eth.rx_queues, eth.tx_queues), (2, 2));
    assert_eq!(eth.queue_cpus[1].cpus, vec![CpuId(6), CpuId(7)]);
    let lo = topo.nics.iter().find(|n| n.name == "lo").unwrap();
    assert_eq!(lo.numa_node, None);
}

#[test]
fn plans_workers_on_numa_node_of_the_device_distinct_cores_first() {
    let t = fixture();
    let topo = Topology::from_sysfs(t.path()).unwrap();
    let allowed: Vec<CpuId> = (0..8).map(CpuId).collect();
    let plan = PinningPlan::plan(&topo, &allowed, 3, Some("nvme0n1")).unwrap();
    let cpus: Vec<u32> = plan.workers.iter().map(|w| w.cpu.0).collect();
    // Node 1 holds CPUs 4-7; cores (1,0) = {4,5}, (1,1) = {6,7}: one CPU per core first.
    assert_eq!(cpus, vec![4, 6, 5]);
    assert!(plan
        .workers
        .iter()
        .all(|w| w.numa_node == Some(NumaNodeId(1))));
}

#[test]
fn plan_wraps_when_workers_exceed_allowed_cpus_and_rejects_no_cpus() {
    let t = fixture();
    let topo = Topology::from_sysfs(t.path()).unwrap();
    let plan = PinningPlan::plan(&topo, &[CpuId(2), CpuId(3)], 5, None).unwrap();
    assert_eq!(plan.workers.len(), 5);
    assert!(plan
        .workers
        .iter()
        .all(|w| w.cpu == CpuId(2) || w.cpu == CpuId(3)));
    assert!(plan.workers[4].reason.contains("shared"));
    assert!(PinningPlan::plan(&topo, &[], 1, None).is_err());
}

#[test]
fn partition_maps_to_its_parent_disk() {
    let t = fixture();
    assert_eq!(
        block_device_for_dev(t.path(), 259, 1).as_deref(),
        Some("nvme0n1")
    );
    assert_eq!(
        block_device_for_dev(t.path(), 259, 0).as_deref(),
        Some("nvme0n1")
    );
    assert_eq!(block_device_for_dev(t.path(), 1, 1), None);
}

#[test]
fn missing_cpu_directory_is_an_error_naming_it() {
    let t = tempfile::tempdir().unwrap();
    let e = Topology::from_sysfs(t.path()).unwrap_err().to_string();
    assert!(e.contains("devices/system/cpu"), "{e}");
}

#[test]
fn real_machine_has_cpus_and_threads_can_be_pinned() {
    let topo = Topology::from_sysfs(Path::new("/sys")).unwrap();
    assert!(topo.cpus.iter().any(|c| c.online));
    let allowed = allowed_cpus().unwrap();
    assert!(!allowed.is_empty());
    let target = *allowed.last().unwrap();
    let got = std::thread::spawn(move || {
        pin_current_thread(target).unwrap();
        allowed_cpus().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(got, vec![target]);
    assert!(!topo.render_text().is_empty());
}

/// Adds two RDMA devices to a fixture: mlx5_0 (a PCI NIC on node 1 over eth0, port 1 ACTIVE
/// with 2 populated GIDs of 4, port 2 DOWN) and rxe0 (soft-RoCE on eth0: no `device`, a
/// `parent` file, its node taken from eth0's).
fn add_rdma(r: &Path) {
    put(r, "class/infiniband/mlx5_0/device/numa_node", "1\n");
    std::fs::create_dir_all(r.join("class/infiniband/mlx5_0/device/net/eth0")).unwrap();
    put(r, "class/infiniband/mlx5_0/ports/1/state", "4: ACTIVE\n");
    put(
        r,
        "class/infiniband/mlx5_0/ports/1/link_layer",
        "Ethernet\n",
    );
    let zero = "0000:0000:0000:0000:0000:0000:0000:0000\n";
    put(
        r,
        "class/infiniband/mlx5_0/ports/1/gids/0",
        "fe80:0000:0000:0000:5054:00ff:fe12:3456\n",
    );
    put(
        r,
        "class/infiniband/mlx5_0/ports/1/gids/1",
        "0000:0000:0000:0000:0000:ffff:0a00:020f\n",
    );
    put(r, "class/infiniband/mlx5_0/ports/1/gids/2", zero);
    put(r, "class/infiniband/mlx5_0/ports/1/gids/3", zero);
    put(
        r,
        "class/infiniband/mlx5_0/ports/1/gid_attrs/ndevs/0",
        "eth0\n",
    );
    put(r, "class/infiniband/mlx5_0/ports/2/state", "1: DOWN\n");
    put(
        r,
        "class/infiniband/mlx5_0/ports/2/link_layer",
        "Ethernet\n",
    );
    put(r, "class/infiniband/rxe0/parent", "eth0\n");
    put(r, "class/infiniband/rxe0/ports/1/state", "4: ACTIVE\n");
    put(r, "class/infiniband/rxe0/ports/1/link_layer", "Ethernet\n");
}

#[test]
fn reads_rdma_devices_ports_states_gids_netdevs_and_numa_nodes() {
    let t = fixture();
    add_rdma(t.path());
    let topo = Topology::from_sysfs(t.path()).unwrap();
    assert_eq!(topo.rdma_devices.len(), 2);
    let mlx = &topo.rdma_devices[0];
    assert_eq!(mlx.name, "mlx5_0");
    assert_eq!(mlx.numa_node, Some(NumaNodeId(1)));
    assert_eq!(mlx.netdev.as_deref(), Some("eth0"));
    assert_eq!(mlx.ports.len(), 2);
    assert_eq!(mlx.ports[0].state.as_deref(), Some("ACTIVE"));
    assert!(mlx.ports[0].is_active());
    assert_eq!(mlx.ports[0].link_layer.as_deref(), Some("Ethernet"));
    assert_eq!(mlx.ports[0].gids, 2, "zero GIDs are empty slots");
    assert_eq!(mlx.ports[0].netdev.as_deref(), Some("eth0"));
    assert_eq!(mlx.ports[1].state.as_deref(), Some("DOWN"));
    let rxe = &topo.rdma_devices[1];
    assert_eq!(rxe.netdev.as_deref(), Some("eth0"));
    assert_eq!(
        rxe.numa_node,
        Some(NumaNodeId(1)),
        "soft-RoCE takes its netdev's node"
    );
    assert_eq!(topo.device_node("rxe0"), Some(NumaNodeId(1)));
    let text = topo.render_text();
    assert!(text.contains("RDMA devices:"), "{text}");
    assert!(
        text.contains("port 1: ACTIVE Ethernet 2 GIDs on eth0"),
        "{text}"
    );
    let json = serde_json::to_value(&topo).unwrap();
    assert_eq!(json["rdma_devices"][0]["ports"][0]["gids"], 2);
}

#[test]
fn no_infiniband_class_means_no_rdma_devices() {
    let t = fixture();
    let topo = Topology::from_sysfs(t.path()).unwrap();
    assert!(topo.rdma_devices.is_empty());
    assert!(topo.render_text().contains("(none in class/infiniband)"));
    let plan = PinningPlan::plan(&topo, &[CpuId(0)], 1, None).unwrap();
    assert_eq!(plan.workers[0].rdma, None);
}

#[test]
fn plan_places_workers_near_the_rdma_nic_and_gives_each_an_active_port() {
    let t = fixture();
    add_rdma(t.path());
    let topo = Topology::from_sysfs(t.path()).unwrap();
    let allowed: Vec<CpuId> = (0..8).map(CpuId).collect();
    let plan = PinningPlan::plan(&topo, &allowed, 4, None).unwrap();
    let cpus: Vec<u32> = plan.workers.iter().map(|w| w.cpu.0).collect();
    assert_eq!(cpus, vec![4, 6, 5, 7], "all on node 1, the NIC's");
    assert!(plan.workers[0].reason.contains("mlx5_0"), "{plan:?}");
    // Both devices sit on node 1; port 2 of mlx5_0 is down and never used.
    let ports: Vec<&str> = plan
        .workers
        .iter()
        .map(|w| w.rdma.as_deref().unwrap())
        .collect();
    assert_eq!(ports, vec!["mlx5_0:1", "rxe0:1", "mlx5_0:1", "rxe0:1"]);
    assert!(plan.render_text().contains("RDMA mlx5_0:1"));
    // An explicit device still wins over the NIC.
    let plan = PinningPlan::plan(&topo, &[CpuId(0), CpuId(4)], 1, Some("nvme0n1")).unwrap();
    assert!(plan.workers[0].reason.contains("nvme0n1"));
}
