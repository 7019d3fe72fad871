//! Prometheus metrics (`GET /metrics`): counters kept in memory since the daemon started,
//! gauges computed from the relationships when scraped.

use super::lock;
use crate::model::RelationshipId;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the job duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 8] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

/// A label value in the text format: backslash, double quote and newline escaped, so no value
/// can end its label or its line (ids are checked hex, but this holds whatever a label holds).
fn label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

#[derive(Default)]
struct Counters {
    bytes: BTreeMap<String, u64>,
    files: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// Jobs per bucket (last = +Inf), sum of seconds, count.
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    seconds: f64,
    jobs: u64,
    /// Shards of other nodes' jobs this node ran (cluster `--spread-jobs`): done, failed,
    /// and the file bytes they sent.
    shards_done: u64,
    shards_failed: u64,
    shard_bytes: u64,
    write_shares_done: u64,
    write_shares_failed: u64,
    write_share_bytes: u64,
}

#[derive(Default)]
pub struct Metrics(Mutex<Counters>);

impl Metrics {
    pub fn job_done(&self, id: &RelationshipId, bytes: u64, files: u64, took: Duration, ok: bool) {
        let mut c = lock(&self.0);
        *c.bytes.entry(id.to_string()).or_default() += bytes;
        *c.files.entry(id.to_string()).or_default() += files;
        // Present from a relationship's first job, at 0 until one fails: an alert on its
        // increase then sees the first failure too (a series born at 1 shows no increase).
        *c.errors.entry(id.to_string()).or_default() += u64::from(!ok);
        let s = took.as_secs_f64();
        let b = DURATION_BUCKETS
            .iter()
            .position(|&ub| s <= ub)
            .unwrap_or(DURATION_BUCKETS.len());
        c.buckets[b] += 1;
        c.seconds += s;
        c.jobs += 1;
    }

    /// A write share of another node's target session ended here (`daemon/writes.rs`).
    pub fn write_share_done(&self, ok: bool, bytes: u64) {
        let mut c = lock(&self.0);
        if ok {
            c.write_shares_done += 1;
        } else {
            c.write_shares_failed += 1;
        }
        c.write_share_bytes += bytes;
    }

    /// A shard of another node's job ended here (`daemon/spread.rs`).
    pub fn shard_done(&self, ok: bool, bytes: u64) {
        let mut c = lock(&self.0);
        if ok {
            c.shards_done += 1;
        } else {
            c.shards_failed += 1;
        }
        c.shard_bytes += bytes;
    }

    /// Text exposition format; `rp_ages` are (relationship, role, age in seconds), `states`
    /// the number of relationships per state.
    pub fn render(&self, rp_ages: &[(String, &str, f64)], states: &BTreeMap<&str, u64>) -> String {
        let c = lock(&self.0);
        let mut o = String::new();
        let _ = writeln!(o, "# HELP mover_recovery_point_age_seconds Age of the target's last recovery point.\n# TYPE mover_recovery_point_age_seconds gauge");
        for (id, role, age) in rp_ages {
            let _ = writeln!(
                o,
                "mover_recovery_point_age_seconds{{relationship=\"{}\",role=\"{}\"}} {age}",
                label(id),
                label(role)
            );
        }
        for (name, help, map) in [
            (
                "mover_bytes_moved_total",
                "File data bytes sent by jobs.",
                &c.bytes,
            ),
            ("mover_files_moved_total", "Files sent by jobs.", &c.files),
            (
                "mover_job_errors_total",
                "Jobs that ended without a recovery point.",
                &c.errors,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (id, v) in map {
                let _ = writeln!(o, "{name}{{relationship=\"{}\"}} {v}", label(id));
            }
        }
        let _ = writeln!(o, "# HELP mover_job_duration_seconds Duration of finished jobs.\n# TYPE mover_job_duration_seconds histogram");
        let mut cum = 0;
        for (i, ub) in DURATION_BUCKETS.iter().enumerate() {
            cum += c.buckets[i];
            let _ = writeln!(o, "mover_job_duration_seconds_bucket{{le=\"{ub}\"}} {cum}");
        }
        cum += c.buckets[DURATION_BUCKETS.len()];
        let _ = writeln!(o, "mover_job_duration_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            o,
            "mover_job_duration_seconds_sum {}\nmover_job_duration_seconds_count {}",
            c.seconds, c.jobs
        );
        let _ = writeln!(o, "# HELP mover_shards_total Shards of cluster jobs this node ran, by outcome.\n# TYPE mover_shards_total counter\nmover_shards_total{{outcome=\"done\"}} {}\nmover_shards_total{{outcome=\"failed\"}} {}", c.shards_done, c.shards_failed);
        let _ = writeln!(o, "# HELP mover_shard_bytes_total File data bytes this node sent for shards of cluster jobs.\n# TYPE mover_shard_bytes_total counter\nmover_shard_bytes_total {}", c.shard_bytes);
        let _ = writeln!(o, "# HELP mover_write_shares_total Shares of other nodes' target sessions this node wrote, by outcome.\n# TYPE mover_write_shares_total counter\nmover_write_shares_total{{outcome=\"done\"}} {}\nmover_write_shares_total{{outcome=\"failed\"}} {}", c.write_shares_done, c.write_shares_failed);
        let _ = writeln!(o, "# HELP mover_write_share_bytes_total File data bytes this node wrote for shares of other nodes' target sessions.\n# TYPE mover_write_share_bytes_total counter\nmover_write_share_bytes_total {}", c.write_share_bytes);
        let _ = writeln!(o, "# HELP mover_relationships Relationships on this node by state.\n# TYPE mover_relationships gauge");
        for (state, n) in states {
            let _ = writeln!(o, "mover_relationships{{state=\"{}\"}} {n}", label(state));
        }
        o
    }
}

/// Scrub gauges of targets: (relationship, ok, age of the last scrub in seconds). A target
/// whose scrub found a difference shows `mover_scrub_ok 0` until a job repairs it.
pub fn render_scrubs(scrubs: &[(String, bool, f64)]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# HELP mover_scrub_ok Whether the target's last scrub found it equal to its recovery point.\n# TYPE mover_scrub_ok gauge");
    for (id, ok, _) in scrubs {
        let _ = writeln!(
            o,
            "mover_scrub_ok{{relationship=\"{}\"}} {}",
            label(id),
            u8::from(*ok)
        );
    }
    let _ = writeln!(o, "# HELP mover_scrub_age_seconds Age of the target's last scrub.\n# TYPE mover_scrub_age_seconds gauge");
    for (id, _, age) in scrubs {
        let _ = writeln!(
            o,
            "mover_scrub_age_seconds{{relationship=\"{}\"}} {age}",
            label(id)
        );
    }
    o
}

/// What the shipped alert rules (`scripts/alerts.yml`) watch besides the recovery point:
/// whether each live relationship reached its peer at the last try, and whether each
/// authorized target that should be read-only really is (measured on its path now, so an
/// unmounted or remounted protection shows at the next scrape).
pub struct Health<'a> {
    /// (relationship, role, reached at the last try).
    pub peers: &'a [(String, &'static str, bool)],
    /// (relationship, the target path is read-only now).
    pub targets: &'a [(String, bool)],
}

pub fn render_health(h: &Health) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# HELP mover_peer_reachable Whether the relationship's peer daemon is reachable (1) or not (0): on a source, the target answered at the last try; on a target, 0 from 30 s without a poll from the source until its next one.\n# TYPE mover_peer_reachable gauge");
    for (id, role, up) in h.peers {
        let _ = writeln!(
            o,
            "mover_peer_reachable{{relationship=\"{}\",role=\"{}\"}} {}",
            label(id),
            label(role),
            u8::from(*up)
        );
    }
    let _ = writeln!(o, "# HELP mover_target_read_only Whether an authorized target that should be read-only is read-only on its path now.\n# TYPE mover_target_read_only gauge");
    for (id, ro) in h.targets {
        let _ = writeln!(
            o,
            "mover_target_read_only{{relationship=\"{}\"}} {}",
            label(id),
            u8::from(*ro)
        );
    }
    o
}

/// Cluster figures, from this node's view of etcd (`crate::cluster`): whether it reaches etcd,
/// and each member's state, so a dashboard of any one node shows the whole cluster.
pub fn render_cluster(v: &crate::cluster::ClusterView) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# HELP mover_cluster_connected Whether this node's session with etcd is up.\n# TYPE mover_cluster_connected gauge\nmover_cluster_connected{{node=\"{}\"}} {}", label(&v.this_node.to_string()), u8::from(v.connected));
    let _ = writeln!(o, "# HELP mover_cluster_member_up Whether a member heartbeats (1) or is down (0).\n# TYPE mover_cluster_member_up gauge");
    for m in &v.members {
        let _ = writeln!(
            o,
            "mover_cluster_member_up{{node=\"{}\",version=\"{}\"}} {}",
            label(&m.member.name.to_string()),
            label(&m.member.version),
            u8::from(m.up)
        );
    }
    let _ = writeln!(o, "# HELP mover_cluster_leader Whether a member leads the cluster's scheduler.\n# TYPE mover_cluster_leader gauge");
    for m in &v.members {
        let _ = writeln!(
            o,
            "mover_cluster_leader{{node=\"{}\"}} {}",
            label(&m.member.name.to_string()),
            u8::from(m.leader)
        );
    }
    let _ = writeln!(o, "# HELP mover_cluster_node_drained Whether a member is drained (`mover node drain`): it starts no job.\n# TYPE mover_cluster_node_drained gauge");
    for m in &v.members {
        let _ = writeln!(
            o,
            "mover_cluster_node_drained{{node=\"{}\"}} {}",
            label(&m.member.name.to_string()),
            u8::from(m.drain.as_ref().is_some_and(|d| d.drained))
        );
    }
    // Per-node figures as each node last reported them (every 5 s at most while they move).
    let reports: Vec<_> = v
        .members
        .iter()
        .filter_map(|m| Some((label(&m.member.name.to_string()), m.report.as_ref()?)))
        .collect();
    let _ = writeln!(o, "# HELP mover_cluster_node_throughput_bytes_per_second What a node's source jobs move now, as it last reported.\n# TYPE mover_cluster_node_throughput_bytes_per_second gauge");
    for (n, r) in &reports {
        let _ = writeln!(
            o,
            "mover_cluster_node_throughput_bytes_per_second{{node=\"{n}\"}} {}",
            r.throughput_bytes_per_sec
        );
    }
    let _ = writeln!(o, "# HELP mover_cluster_node_jobs_running Source jobs running on a node, as it last reported.\n# TYPE mover_cluster_node_jobs_running gauge");
    for (n, r) in &reports {
        let _ = writeln!(
            o,
            "mover_cluster_node_jobs_running{{node=\"{n}\"}} {}",
            r.jobs_running
        );
    }
    let _ = writeln!(o, "# HELP mover_cluster_container_up Whether a node's container answers its health probe, by roles and release.\n# TYPE mover_cluster_container_up gauge");
    for (n, r) in &reports {
        for c in &r.containers {
            let _ = writeln!(
                o,
                "mover_cluster_container_up{{node=\"{n}\",roles=\"{}\",version=\"{}\"}} {}",
                label(&c.roles),
                label(c.version.as_deref().unwrap_or("")),
                u8::from(c.healthy)
            );
        }
    }
    // Source relationships each member holds: those of a member down wait for a takeover.
    let _ = writeln!(o, "# HELP mover_cluster_node_relationships Source relationships a member holds (runs the jobs of).
# TYPE mover_cluster_node_relationships gauge");
    for m in &v.members {
        let held = v
            .relationships
            .iter()
            .filter(|r| r.owner == m.member.name)
            .count();
        let _ = writeln!(
            o,
            "mover_cluster_node_relationships{{node=\"{}\"}} {held}",
            label(&m.member.name.to_string())
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counters_per_relationship() {
        let m = Metrics::default();
        let id = RelationshipId::parse(&"a".repeat(32)).unwrap();
        m.job_done(&id, 100, 2, Duration::from_millis(500), true);
        m.job_done(&id, 50, 1, Duration::from_secs(20), false);
        let t = m.render(
            &[(id.to_string(), "source", 3.5)],
            &BTreeMap::from([("idle", 1)]),
        );
        assert!(
            t.contains(&format!(
                "mover_bytes_moved_total{{relationship=\"{}\"}} 150",
                id
            )),
            "{t}"
        );
        assert!(t.contains(&format!(
            "mover_job_errors_total{{relationship=\"{}\"}} 1",
            id
        )));
        assert!(t.contains("mover_job_duration_seconds_bucket{le=\"1\"} 1"));
        assert!(t.contains("mover_job_duration_seconds_bucket{le=\"60\"} 2"));
        assert!(t.contains("mover_job_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(t.contains("mover_job_duration_seconds_count 2"));
        assert!(t.contains("mover_recovery_point_age_seconds{relationship=\"aaaa"));
        assert!(t.contains("mover_relationships{state=\"idle\"} 1"));
    }

    #[test]
    fn scrub_gauges_say_ok_per_target() {
        let t = render_scrubs(&[("a".repeat(32), false, 12.0)]);
        assert!(t.contains(&format!(
            "mover_scrub_ok{{relationship=\"{}\"}} 0",
            "a".repeat(32)
        )));
        assert!(t.contains("mover_scrub_age_seconds{relationship=\"aaaa"));
    }

    #[test]
    fn label_values_are_escaped_so_no_line_can_be_injected() {
        let m = Metrics::default();
        let evil = "x\"} 1\nmover_fake{a=\"b\\".to_string();
        let t = m.render(&[(evil, "target", 1.0)], &BTreeMap::new());
        assert!(
            !t.lines().any(|l| l.starts_with("mover_fake")),
            "a label value injected a line:\n{t}"
        );
        assert!(
            t.contains(r#"relationship="x\"} 1\nmover_fake{a=\"b\\""#),
            "{t}"
        );
    }
}
