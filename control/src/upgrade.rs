//! The upgrade checker (`mover upgrade check --to VERSION`): what stands between this node and
//! a release, as green, yellow and red items, each with its remedy. Pure: the daemon gathers
//! the facts (`daemon::upgrade`), this decides; red blocks the upgrade.

use mover::compat::{Train, Version};
use serde::Serialize;

/// Free space the new release needs where it is staged.
pub const STAGING_BYTES: u64 = 4 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Green,
    Yellow,
    Red,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Item {
    /// What was checked: privilege, version_step, nodes_online, shard_reassignment, alerts,
    /// staging_space, jobs, peer_compatibility.
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
    /// What to do about a yellow or red item.
    pub remedy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Report {
    #[schema(value_type = String, example = "1.4.0")]
    pub from: Version,
    #[schema(value_type = String, example = "1.5.0")]
    pub to: Version,
    pub items: Vec<Item>,
    /// Some item is red: the upgrade must not start.
    pub blocked: bool,
}

/// A relationship's peer as this node last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub relationship: String,
    /// "source" or "target": what the peer is.
    pub peer_role: &'static str,
    pub address: String,
    pub reachable: bool,
    /// Its release, from the last exchange (None: not heard since this daemon started).
    pub version: Option<String>,
}

/// What the daemon found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub from: Version,
    pub to: Version,
    /// The caller's token carries the admin privilege.
    pub admin: bool,
    pub staging: String,
    /// Free bytes there, or why they could not be read.
    pub staging_free: Result<u64, String>,
    pub peers: Vec<Peer>,
    /// (relationship, state) of relationships in a state an operator must look at first.
    pub alerts: Vec<(String, String)>,
    /// Relationships with a job running now.
    pub running: Vec<String>,
    /// The etcd cluster as this node sees it, if it joined one.
    pub cluster: Option<ClusterFacts>,
}

/// What the checker needs of a cluster (`crate::cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    /// This node's session with etcd is up.
    pub connected: bool,
    pub members: usize,
    /// Members whose heartbeat is gone.
    pub down: Vec<String>,
}

fn item(check: &'static str, level: Level, detail: String, remedy: Option<String>) -> Item {
    Item {
        check,
        level,
        detail,
        remedy,
    }
}

fn list(ids: &[String]) -> String {
    ids.iter()
        .map(|i| i.get(..8).unwrap_or(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report for `f` under `train`'s policy.
pub fn assess(f: &Facts, train: &Train) -> Report {
    use Level::*;
    let mut items = Vec::new();
    items.push(if f.admin {
        item("privilege", Green, "the caller has the ADMIN privilege".into(), None)
    } else {
        item(
            "privilege",
            Red,
            "the caller's token lacks the ADMIN privilege an upgrade needs".into(),
            Some("run the check and the upgrade with an admin token (mover token create NAME --role admin)".into()),
        )
    });
    items.push(if f.to <= f.from {
        item(
            "version_step",
            Red,
            format!("{} is not newer than this node's {}", f.to, f.from),
            Some("an upgrade goes to a newer release only".into()),
        )
    } else if f.to.major > f.from.major + 1 {
        item(
            "version_step",
            Red,
            format!(
                "{} to {} skips major version {}",
                f.from,
                f.to,
                f.from.major + 1
            ),
            Some(format!("upgrade to a {}.x release first", f.from.major + 1)),
        )
    } else {
        item(
            "version_step",
            Green,
            format!("{} to {}", f.from, f.to),
            None,
        )
    });
    let down: Vec<&Peer> = f.peers.iter().filter(|p| !p.reachable).collect();
    let mut offline: Vec<String> = down
        .iter()
        .map(|p| {
            format!(
                "the {} of {} at {} does not answer",
                p.peer_role,
                list(std::slice::from_ref(&p.relationship)),
                p.address
            )
        })
        .collect();
    if let Some(c) = &f.cluster {
        if !c.connected {
            offline.push("this node has no session with the cluster's etcd".into());
        }
        offline.extend(
            c.down
                .iter()
                .map(|n| format!("cluster member {n} does not heartbeat")),
        );
    }
    items.push(if offline.is_empty() {
        let cluster = f
            .cluster
            .as_ref()
            .map(|c| format!(", and all {} cluster members heartbeat", c.members))
            .unwrap_or_default();
        item(
            "nodes_online",
            Green,
            format!("this node and the {} peer node(s) of its relationships answer{cluster}", f.peers.len()),
            None,
        )
    } else {
        item(
            "nodes_online",
            Red,
            offline.join("; "),
            Some("start the stopped node(s), or delete the relationships they serve, before upgrading".into()),
        )
    });
    items.push(item(
        "shard_reassignment",
        Green,
        "single node: no shard is being reassigned".into(),
        None,
    ));
    items.push(if f.alerts.is_empty() {
        item(
            "alerts",
            Green,
            "no relationship needs attention".into(),
            None,
        )
    } else {
        item(
            "alerts",
            Yellow,
            f.alerts
                .iter()
                .map(|(id, s)| format!("{} is {s}", list(std::slice::from_ref(id))))
                .collect::<Vec<_>>()
                .join("; "),
            Some("look at these relationships first (mover relationship show ID; an unreadable one: mover relationship unreadable)".into()),
        )
    });
    items.push(match &f.staging_free {
        Ok(free) if *free >= STAGING_BYTES => item(
            "staging_space",
            Green,
            format!("{} GiB free in {}", free >> 30, f.staging),
            None,
        ),
        Ok(free) => item(
            "staging_space",
            Red,
            format!(
                "{} MiB free in {}; the new release needs {} GiB there",
                free >> 20,
                f.staging,
                STAGING_BYTES >> 30
            ),
            Some("free space there, or stage elsewhere (--staging DIR)".into()),
        ),
        Err(e) => item(
            "staging_space",
            Red,
            format!("cannot read the free space of {}: {e}", f.staging),
            Some("stage in an existing directory (--staging DIR)".into()),
        ),
    });
    items.push(if f.running.is_empty() {
        item("jobs", Green, "no job runs".into(), None)
    } else {
        item(
            "jobs",
            Yellow,
            format!(
                "jobs of {} run; each stops at a chunk boundary and resumes after the restart",
                list(&f.running)
            ),
            Some("wait for them to finish for the shortest interruption".into()),
        )
    });
    let to = f.to.to_string();
    let blocked: Vec<String> = f
        .peers
        .iter()
        .filter(|p| {
            p.version
                .as_deref()
                .and_then(|v| v.parse::<Version>().ok())
                .is_some_and(|v| !train.check(f.to, v).compatible)
        })
        .map(|p| {
            format!(
                "{} ({} runs {})",
                list(std::slice::from_ref(&p.relationship)),
                p.peer_role,
                p.version.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let unknown: Vec<String> = f
        .peers
        .iter()
        .filter(|p| p.version.is_none())
        .map(|p| p.relationship.clone())
        .collect();
    items.push(if !blocked.is_empty() {
        item(
            "peer_compatibility",
            Red,
            format!("{to} may not replicate with the peers of {}", blocked.join(", ")),
            Some(format!(
                "upgrade those peers first, or make their targets writable before this upgrade \
                 and reconnect them (mover relationship reconnect ID) once both run compatible releases; \
                 `mover compat check {to} VERSION` says why"
            )),
        )
    } else if !unknown.is_empty() {
        item(
            "peer_compatibility",
            Yellow,
            format!("the releases of the peers of {} are not known yet", list(&unknown)),
            Some("wait for a poll (a few seconds) and check again".into()),
        )
    } else {
        item(
            "peer_compatibility",
            Green,
            format!("{to} replicates with every peer's release"),
            None,
        )
    });
    Report {
        from: f.from,
        to: f.to,
        blocked: items.iter().any(|i| i.level == Red),
        items,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            from: "0.1.0".parse().unwrap(),
            to: "0.2.0".parse().unwrap(),
            admin: true,
            staging: "/var/lib/mover".into(),
            staging_free: Ok(10 << 30),
            peers: vec![Peer {
                relationship: "ab".repeat(16),
                peer_role: "target",
                address: "10.0.0.2:3712".into(),
                reachable: true,
                version: Some("0.1.0".into()),
            }],
            alerts: vec![],
            running: vec![],
            cluster: None,
        }
    }

    fn level(r: &Report, check: &str) -> Level {
        r.items.iter().find(|i| i.check == check).unwrap().level
    }

    #[test]
    fn a_healthy_node_is_all_green() {
        let r = assess(&facts(), Train::builtin());
        assert!(!r.blocked, "{r:?}");
        assert!(r.items.iter().all(|i| i.level == Level::Green), "{r:?}");
    }

    #[test]
    fn each_condition_turns_its_item_yellow_or_red() {
        let t = Train::builtin();
        let mut f = facts();
        f.to = "0.0.1".parse().unwrap();
        assert_eq!(level(&assess(&f, t), "version_step"), Level::Red);
        f.to = "2.0.0".parse().unwrap();
        assert_eq!(level(&assess(&f, t), "version_step"), Level::Red);
        let mut f = facts();
        f.admin = false;
        f.staging_free = Ok(1 << 20);
        f.peers[0].reachable = false;
        f.alerts.push(("cd".repeat(16), "path_changed".into()));
        f.running.push("ef".repeat(16));
        let r = assess(&f, t);
        assert!(r.blocked);
        for (c, l) in [
            ("privilege", Level::Red),
            ("staging_space", Level::Red),
            ("nodes_online", Level::Red),
            ("alerts", Level::Yellow),
            ("jobs", Level::Yellow),
        ] {
            assert_eq!(level(&r, c), l, "{c}: {r:?}");
        }
        assert!(r
            .items
            .iter()
            .filter(|i| i.level != Level::Green)
            .all(|i| i.remedy.is_some()));
        let mut f = facts();
        // A peer of a release older than any this train supports.
        f.peers[0].version = Some("0.0.1".into());
        let r = assess(&f, t);
        assert_eq!(level(&r, "peer_compatibility"), Level::Red, "{r:?}");
        f.peers[0].version = None;
        assert_eq!(level(&assess(&f, t), "peer_compatibility"), Level::Yellow);
    }

    #[test]
    fn a_cluster_member_down_or_no_etcd_session_is_red() {
        let t = Train::builtin();
        let mut f = facts();
        f.cluster = Some(ClusterFacts {
            connected: true,
            members: 3,
            down: vec![],
        });
        assert_eq!(level(&assess(&f, t), "nodes_online"), Level::Green);
        f.cluster = Some(ClusterFacts {
            connected: false,
            members: 3,
            down: vec!["n2".into()],
        });
        let r = assess(&f, t);
        let i = r.items.iter().find(|i| i.check == "nodes_online").unwrap();
        assert_eq!(i.level, Level::Red);
        assert!(
            i.detail.contains("n2") && i.detail.contains("etcd"),
            "{i:?}"
        );
    }
}
