//! Rolling upgrade of a cluster (`POST /v1/upgrade/start` on a node that joined one).
//!
//! The plan (`upgrade/plan` in etcd) names the release, its SHA-256, the package path (on the
//! nodes' shared file system), the phases to run and the nodes. The leader drives it, one
//! decision per `POLL` (`decide`, pure): phase by phase in the order distribute -> data ->
//! control -> api, it asks nodes for their step (`upgrade/nodes/<name>`) in batches of
//! `batch_size` (distribute: all at once), and waits until each node says its step is done
//! before the next batch; a failed or timed-out step fails the plan and no later batch runs.
//! Every node's control container runs its own steps (`execute`): distribute stages and checks
//! the package (`self_upgrade::distribute`); data restarts the control container, which carries
//! the data plane in this release, onto the new binary (jobs stop at a chunk boundary and
//! resume), so control only confirms the release it runs; api restarts the node's API
//! container (its supervisor starts it again from the new binary). Progress lives in etcd, so
//! a new leader continues the plan where the last one stopped, and rerunning the same start
//! resumes a failed or interrupted plan.

use super::roles::Roles;
use super::self_upgrade;
use super::upgrade_record::record_done;
use super::Node;
use crate::cluster::{Membership, NodeName};
use crate::supervisor::ContainerState;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader decides and each node looks at its step.
pub const POLL: Duration = Duration::from_millis(500);
/// A node's step that is not done within this fails the plan.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest batch (and most nodes in a plan).
pub const MAX_NODES: usize = 256;
const PLAN_KEY: &str = "upgrade/plan";
const STEP_PREFIX: &str = "upgrade/nodes/";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RollPhase {
    Distribute,
    Data,
    Control,
    Api,
}

/// The order phases run in.
pub const ORDER: [RollPhase; 4] = [
    RollPhase::Distribute,
    RollPhase::Data,
    RollPhase::Control,
    RollPhase::Api,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub to: String,
    pub sha256: String,
    /// The package's path, the same on every node (their shared file system).
    pub package: Option<String>,
    pub phases: Vec<RollPhase>,
    pub batch_size: usize,
    pub nodes: Vec<NodeName>,
    pub state: PlanState,
    pub error: Option<String>,
    pub started_ns: i64,
    pub updated_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Nothing asked (or a failure cleared by a rerun).
    Idle,
    Requested,
    Done,
    Failed,
}

/// One node's part of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStep {
    /// The release this step belongs to (a step of another plan counts as nothing done).
    pub to: String,
    pub phase: Option<RollPhase>,
    pub state: StepState,
    /// Phases this node finished for `to`.
    pub done: Vec<RollPhase>,
    pub error: Option<String>,
    pub requested_ns: i64,
    pub updated_ns: i64,
}

impl NodeStep {
    fn fresh(to: &str) -> NodeStep {
        NodeStep {
            to: to.to_string(),
            phase: None,
            state: StepState::Idle,
            done: Vec::new(),
            error: None,
            requested_ns: 0,
            updated_ns: 0,
        }
    }
}

/// What the leader does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Request(RollPhase, Vec<NodeName>),
    Wait,
    Done,
    Fail(String),
}

/// The leader's next move for `plan`, given every node's step at `now_ns`.
pub fn decide(plan: &Plan, steps: &BTreeMap<NodeName, NodeStep>, now_ns: i64) -> Decision {
    if plan.state != PlanState::Running {
        return Decision::Wait;
    }
    let blank = NodeStep::fresh(&plan.to);
    let step = |n: &NodeName| match steps.get(n) {
        Some(s) if s.to == plan.to => s,
        _ => &blank,
    };
    for phase in ORDER.iter().filter(|p| plan.phases.contains(p)) {
        let pending: Vec<&NodeName> = plan
            .nodes
            .iter()
            .filter(|n| !step(n).done.contains(phase))
            .collect();
        if pending.is_empty() {
            continue;
        }
        let mut busy = false;
        for n in &pending {
            let s = step(n);
            if s.phase != Some(*phase) {
                continue;
            }
            match s.state {
                StepState::Failed => {
                    return Decision::Fail(format!(
                        "node {n}: {phase:?} failed: {}",
                        s.error.as_deref().unwrap_or("no reason given")
                    ))
                }
                StepState::Requested
                    if now_ns.saturating_sub(s.requested_ns) > STEP_TIMEOUT.as_nanos() as i64 =>
                {
                    return Decision::Fail(format!(
                        "node {n}: {phase:?} not done within {STEP_TIMEOUT:?} (is it up?)"
                    ))
                }
                StepState::Requested => busy = true,
                _ => {}
            }
        }
        if busy {
            return Decision::Wait;
        }
        let batch = if *phase == RollPhase::Distribute {
            pending.len()
        } else {
            plan.batch_size.max(1)
        };
        return Decision::Request(*phase, pending.into_iter().take(batch).cloned().collect());
    }
    Decision::Done
}

fn parse<T: serde::de::DeserializeOwned>(v: &[u8]) -> Option<T> {
    serde_json::from_slice(v).ok()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Invalid(e.to_string()))
}

pub fn plan(m: &Membership) -> Option<Plan> {
    m.shared(PLAN_KEY).first().and_then(|(_, v)| parse(v))
}

pub fn steps(m: &Membership) -> BTreeMap<NodeName, NodeStep> {
    m.shared(STEP_PREFIX)
        .into_iter()
        .filter_map(|(k, v)| {
            let name = NodeName::try_from(k[STEP_PREFIX.len()..].to_string()).ok()?;
            Some((name, parse(&v)?))
        })
        .collect()
}

async fn put_step(m: &Membership, n: &NodeName, s: &NodeStep) -> Result<()> {
    m.put(&format!("{STEP_PREFIX}{n}"), json(s)?).await
}

/// What an operator asks for.
pub struct Start {
    pub to: String,
    pub sha256: String,
    pub package: Option<String>,
    pub phases: Vec<RollPhase>,
    pub batch_size: usize,
    pub only: Vec<NodeName>,
    pub skip: Vec<NodeName>,
}

/// Writes the plan, or resumes the same one (same release, checksum and phases): a failed
/// step is cleared to be asked again, a running one goes on, a done one is answered as is.
/// Returns it and whether it resumed.
pub async fn start(node: &Node, m: &Membership, s: Start) -> Result<(Plan, bool)> {
    let now = node.clock.now_ns();
    if let Some(p) = plan(m) {
        let same = p.to == s.to && p.sha256 == s.sha256;
        if p.state == PlanState::Running && !same {
            return Err(Error::Conflict(format!(
                "a rolling upgrade to {} is running; wait for it (`mover upgrade status`)",
                p.to
            )));
        }
        // The same plan again: it goes on where it is (a done one has nothing left).
        if same && p.phases == s.phases {
            if p.state == PlanState::Done {
                return Ok((p, true));
            }
            for (n, mut st) in steps(m) {
                if st.to == p.to && st.state == StepState::Failed {
                    st.state = StepState::Idle;
                    st.error = None;
                    st.updated_ns = now;
                    put_step(m, &n, &st).await?;
                }
            }
            let p = Plan {
                state: PlanState::Running,
                error: None,
                updated_ns: now,
                ..p
            };
            m.put(PLAN_KEY, json(&p)?).await?;
            return Ok((p, true));
        }
    }
    let view = m.view();
    let mut nodes: Vec<NodeName> = view
        .members
        .iter()
        .map(|v| v.member.name.clone())
        .filter(|n| s.only.is_empty() || s.only.contains(n))
        .filter(|n| !s.skip.contains(n))
        .collect();
    nodes.sort();
    for n in s.only.iter().chain(&s.skip) {
        if !view.members.iter().any(|v| &v.member.name == n) {
            return Err(Error::Invalid(format!(
                "node {n} is not a member of the cluster (`mover cluster members`)"
            )));
        }
    }
    if nodes.is_empty() || nodes.len() > MAX_NODES {
        return Err(Error::Invalid(format!(
            "the upgrade would cover {} nodes: 1-{MAX_NODES} (check --only and --skip)",
            nodes.len()
        )));
    }
    if s.phases.contains(&RollPhase::Distribute) && s.package.is_none() {
        return Err(Error::Invalid(
            "package: the path of the new mover binary (the same on every node) is required \
             to distribute"
                .into(),
        ));
    }
    let p = Plan {
        to: s.to,
        sha256: s.sha256,
        package: s.package,
        phases: s.phases,
        batch_size: s.batch_size.clamp(1, MAX_NODES),
        nodes,
        state: PlanState::Running,
        error: None,
        started_ns: now,
        updated_ns: now,
    };
    m.put(PLAN_KEY, json(&p)?).await?;
    tracing::info!(to = %p.to, nodes = p.nodes.len(), "rolling upgrade planned");
    Ok((p, false))
}

/// The leader's loop: one decision per `POLL` while this node leads.
pub async fn lead(node: Arc<Node>, m: Arc<Membership>) {
    loop {
        tokio::time::sleep(POLL).await;
        if !m.is_leader() || node.shutting_down() {
            continue;
        }
        if let Err(e) = lead_once(&node, &m).await {
            tracing::warn!("rolling upgrade: {e}");
        }
    }
}

async fn lead_once(node: &Node, m: &Membership) -> Result<()> {
    let Some(mut p) = plan(m) else {
        return Ok(());
    };
    let all = steps(m);
    let now = node.clock.now_ns();
    match decide(&p, &all, now) {
        Decision::Wait => {}
        Decision::Request(phase, nodes) => {
            tracing::info!(?phase, nodes = ?nodes.iter().map(ToString::to_string).collect::<Vec<_>>(), "rolling upgrade: asking");
            for n in nodes {
                let mut st = match all.get(&n) {
                    Some(s) if s.to == p.to => s.clone(),
                    _ => NodeStep::fresh(&p.to),
                };
                st.phase = Some(phase);
                st.state = StepState::Requested;
                st.error = None;
                st.requested_ns = now;
                st.updated_ns = now;
                put_step(m, &n, &st).await?;
            }
        }
        Decision::Done => {
            p.state = PlanState::Done;
            p.updated_ns = now;
            m.put(PLAN_KEY, json(&p)?).await?;
            tracing::info!(to = %p.to, "rolling upgrade done");
        }
        Decision::Fail(why) => {
            tracing::error!("rolling upgrade failed: {why}");
            p.state = PlanState::Failed;
            p.error = Some(why);
            p.updated_ns = now;
            m.put(PLAN_KEY, json(&p)?).await?;
        }
    }
    Ok(())
}

/// A node's report is written when its containers or its number of running jobs change (a
/// drain waits on the latter), and at most this often when only its throughput does (bounding
/// etcd writes per node).
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Every node's loop: runs this node's requested step, and publishes its report.
pub async fn follow(node: Arc<Node>, m: Arc<Membership>) {
    let mut busy = false;
    let mut published: Option<(crate::supervisor::NodeReport, tokio::time::Instant)> = None;
    loop {
        tokio::time::sleep(POLL).await;
        if node.shutting_down() || !m.connected() {
            continue;
        }
        match node_report(&node) {
            Ok(r) => {
                let due = match &published {
                    None => true,
                    Some((last, at)) => {
                        last.containers != r.containers
                            || last.jobs_running != r.jobs_running
                            || (last != &r && at.elapsed() >= REPORT_EVERY)
                    }
                };
                if due {
                    if let Ok(v) = json(&r) {
                        if m.put(&format!("containers/{}", m.name()), v).await.is_ok() {
                            published = Some((r, tokio::time::Instant::now()));
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("reading this node's containers: {e}"),
        }
        if busy {
            continue;
        }
        let (Some(p), Some(st)) = (plan(&m), steps(&m).remove(m.name())) else {
            continue;
        };
        if p.state != PlanState::Running || st.to != p.to || st.state != StepState::Requested {
            continue;
        }
        let Some(phase) = st.phase else { continue };
        let outcome = match execute(&node, &p, phase).await {
            Ok(Some(())) => Ok(()),
            // Under way: this process restarting onto the new release (it looks no more), or
            // waiting for a container to follow it (looked at again next time).
            Ok(None) => {
                busy = phase != RollPhase::Api && mover::software_version() != p.to;
                continue;
            }
            Err(e) => Err(e.to_string()),
        };
        let mut st = st;
        match outcome {
            Ok(()) => {
                st.state = StepState::Done;
                if !st.done.contains(&phase) {
                    st.done.push(phase);
                }
                tracing::info!(?phase, to = %p.to, "rolling upgrade: this node's step is done");
            }
            Err(e) => {
                tracing::error!(?phase, "rolling upgrade: this node's step failed: {e}");
                st.state = StepState::Failed;
                st.error = Some(e);
            }
        }
        st.updated_ns = node.clock.now_ns();
        if let Err(e) = put_step(&m, m.name(), &st).await {
            tracing::warn!("rolling upgrade: recording this node's step: {e}");
        }
    }
}

/// Runs (or checks) this node's step: `Some` when it is done, `None` while under way.
async fn execute(node: &Arc<Node>, p: &Plan, phase: RollPhase) -> Result<Option<()>> {
    let to: mover::compat::Version = p.to.parse().map_err(Error::Invalid)?;
    let runs_new = mover::software_version() == p.to;
    match phase {
        RollPhase::Distribute => {
            let pkg = p
                .package
                .clone()
                .ok_or_else(|| Error::Invalid("the plan has no package to distribute".into()))?;
            let (n, sha) = (node.clone(), p.sha256.clone());
            tokio::task::spawn_blocking(move || {
                self_upgrade::distribute(&n, &to, std::path::Path::new(&pkg), &sha)
            })
            .await
            .map_err(|e| Error::Invalid(e.to_string()))??;
            Ok(Some(()))
        }
        // Control runs the new release; a data container of its own follows it.
        RollPhase::Data if runs_new && !node.opts.roles.data => {
            container_on(node, &p.to, Roles::DATA)
        }
        RollPhase::Data | RollPhase::Control if runs_new => Ok(Some(())),
        RollPhase::Data | RollPhase::Control => {
            let n = node.clone();
            let sha = p.sha256.clone();
            let want = p.to.clone();
            tokio::task::spawn_blocking(move || self_upgrade::restart_staged(&n, &want, &sha, to))
                .await
                .map_err(|e| Error::Invalid(e.to_string()))??;
            Ok(None)
        }
        RollPhase::Api if node.opts.roles.api => {
            // The API runs in this process: restarted with it.
            Ok(runs_new.then_some(()))
        }
        RollPhase::Api => container_on(node, &p.to, Roles::API),
    }
}

/// This node's container of `roles` (`api` or `data`, beside this control container) on the
/// new release: done; else asks it to stop if it is up on another (once per start of it), and
/// its supervisor starts it again from the binary the data phase installed.
fn container_on(node: &Node, to: &str, roles: Roles) -> Result<Option<()>> {
    let Some(s) = crate::supervisor::read_status(&node.opts.data_dir)? else {
        return Err(Error::Invalid(format!(
            "this node's {roles} role runs apart but no supervisor reports it (run it with \
             `mover node run`)"
        )));
    };
    let Some(c) = s.containers.iter().find(|c| c.roles == roles.to_string()) else {
        return Err(Error::Invalid(format!(
            "the supervisor reports no {roles} container"
        )));
    };
    if c.healthy && c.version.as_deref() == Some(to) {
        return Ok(Some(()));
    }
    if let (Some(pid), ContainerState::Running, true) = (c.pid, c.state, c.healthy) {
        tracing::info!(
            pid,
            %roles,
            "upgrade: restarting the container onto the new release"
        );
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
    Ok(None)
}

/// How long a single node's other containers get to come back on the new release.
const CATCH_UP: Duration = Duration::from_secs(60);

/// After a single node's upgrade restarted the control container onto the new release: the
/// data and API containers are restarted onto it too (nothing to do when no upgrade just
/// finished), the data container first, as a rolling upgrade's phases go.
pub async fn others_catch_up(node: Arc<Node>) {
    if record_done(&node.opts.data_dir).as_deref() != Some(mover::software_version()) {
        return;
    }
    let to = mover::software_version().to_string();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    let apart = [
        (Roles::DATA, !node.opts.roles.data),
        (Roles::API, !node.opts.roles.api),
    ];
    for roles in apart.iter().filter(|(_, apart)| *apart).map(|(r, _)| *r) {
        loop {
            if tokio::time::Instant::now() >= deadline || node.shutting_down() {
                tracing::error!("upgrade: the {roles} container is not on {to} after {CATCH_UP:?}");
                return;
            }
            match container_on(&node, &to, roles) {
                Ok(Some(())) => break,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("upgrade: the {roles} container: {e}");
                    break;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// This node's report for `containers/<name>`: the supervisor's view of its containers, or
/// the one process, and its running jobs.
fn node_report(node: &Node) -> Result<crate::supervisor::NodeReport> {
    let containers = match crate::supervisor::read_status(&node.opts.data_dir)? {
        Some(s) if !node.opts.roles.is_all() => s.containers,
        _ => vec![crate::supervisor::ContainerStatus::this_process(
            node.opts.roles,
            None,
        )],
    };
    let (jobs_running, throughput_bytes_per_sec) = super::source::throughput(node);
    Ok(crate::supervisor::NodeReport {
        containers,
        jobs_running,
        throughput_bytes_per_sec,
    })
}

/// Every node's published containers.
pub fn all_containers(m: &Membership) -> Vec<(String, crate::supervisor::ContainerStatus)> {
    m.shared("containers/")
        .into_iter()
        .flat_map(|(k, v)| {
            let node = k["containers/".len()..].to_string();
            parse::<crate::supervisor::NodeReport>(&v)
                .unwrap_or_default()
                .containers
                .into_iter()
                .map(move |c| (node.clone(), c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> NodeName {
        NodeName::try_from(s.to_string()).unwrap()
    }

    fn plan(phases: &[RollPhase], batch: usize) -> Plan {
        Plan {
            to: "0.2.0".into(),
            sha256: "ab".repeat(32),
            package: Some("/p".into()),
            phases: phases.to_vec(),
            batch_size: batch,
            nodes: vec![name("a"), name("b"), name("c")],
            state: PlanState::Running,
            error: None,
            started_ns: 0,
            updated_ns: 0,
        }
    }

    /// Plays the nodes: every requested step finishes (or the `fail` node's `fail_phase`
    /// fails) before the leader's next decision, in a seeded order.
    fn play(
        p: &Plan,
        seed: u64,
        fail: Option<(&str, RollPhase)>,
    ) -> (Vec<(RollPhase, Vec<String>)>, Decision) {
        let mut steps: BTreeMap<NodeName, NodeStep> = BTreeMap::new();
        let mut asked = Vec::new();
        let mut rng = seed;
        for round in 0..100 {
            let now = round * 1_000_000;
            match decide(p, &steps, now) {
                Decision::Request(phase, nodes) => {
                    asked.push((phase, nodes.iter().map(ToString::to_string).collect()));
                    for n in nodes {
                        let s = steps.entry(n).or_insert_with(|| NodeStep::fresh(&p.to));
                        s.phase = Some(phase);
                        s.state = StepState::Requested;
                        s.requested_ns = now;
                    }
                }
                Decision::Wait => {
                    // One requested node finishes, chosen by the seed.
                    let busy: Vec<NodeName> = steps
                        .iter()
                        .filter(|(_, s)| s.state == StepState::Requested)
                        .map(|(n, _)| n.clone())
                        .collect();
                    assert!(!busy.is_empty(), "waiting on nothing");
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let n = &busy[(rng >> 33) as usize % busy.len()];
                    let s = steps.get_mut(n).unwrap();
                    let phase = s.phase.unwrap();
                    if fail == Some((n.to_string().as_str(), phase)) {
                        s.state = StepState::Failed;
                        s.error = Some("disk full".into());
                    } else {
                        s.state = StepState::Done;
                        s.done.push(phase);
                    }
                }
                d => return (asked, d),
            }
        }
        panic!("no end in 100 rounds");
    }

    #[test]
    fn phases_run_in_order_in_batches_and_each_node_once_per_phase() {
        for seed in 0..50 {
            let p = plan(&ORDER, 2);
            let (asked, end) = play(&p, seed, None);
            assert_eq!(end, Decision::Done);
            let phases: Vec<RollPhase> = asked.iter().map(|a| a.0).collect();
            let mut sorted = phases.clone();
            sorted.sort();
            assert_eq!(phases, sorted, "phases out of order: {asked:?}");
            for phase in ORDER {
                let mut nodes: Vec<String> = asked
                    .iter()
                    .filter(|a| a.0 == phase)
                    .flat_map(|a| a.1.clone())
                    .collect();
                nodes.sort();
                assert_eq!(nodes, ["a", "b", "c"], "{phase:?}: {asked:?}");
            }
            // Distribution goes to every node at once; the restarts two by two.
            assert_eq!(
                asked[0],
                (
                    RollPhase::Distribute,
                    vec!["a".into(), "b".into(), "c".into()]
                )
            );
            assert!(asked
                .iter()
                .all(|a| a.1.len() <= 2 || a.0 == RollPhase::Distribute));
        }
    }

    #[test]
    fn a_failed_batch_stops_the_later_ones_and_a_phase_runs_alone() {
        let p = plan(&ORDER, 1);
        let (asked, end) = play(&p, 7, Some(("b", RollPhase::Data)));
        assert!(
            matches!(&end, Decision::Fail(w) if w.contains("node b") && w.contains("disk full")),
            "{end:?}"
        );
        assert!(
            !asked.iter().any(|a| a.0 == RollPhase::Data && a.1 == ["c"]),
            "{asked:?}"
        );
        assert!(!asked.iter().any(|a| a.0 > RollPhase::Data), "{asked:?}");

        let alone = plan(&[RollPhase::Api], 3);
        let (asked, end) = play(&alone, 1, None);
        assert_eq!(end, Decision::Done);
        assert_eq!(
            asked,
            vec![(RollPhase::Api, vec!["a".into(), "b".into(), "c".into()])]
        );
    }

    #[test]
    fn progress_recorded_before_an_interruption_is_not_redone_and_a_silent_node_times_out() {
        let p = plan(&ORDER, 1);
        let mut steps = BTreeMap::new();
        let mut a = NodeStep::fresh("0.2.0");
        a.done = vec![RollPhase::Distribute, RollPhase::Data];
        let mut b = a.clone();
        b.done = vec![RollPhase::Distribute];
        let mut c = b.clone();
        c.done = vec![RollPhase::Distribute];
        steps.insert(name("a"), a);
        steps.insert(name("b"), b);
        steps.insert(name("c"), c);
        assert_eq!(
            decide(&p, &steps, 0),
            Decision::Request(RollPhase::Data, vec![name("b")])
        );
        // A step of an older plan counts as nothing done.
        let mut old = steps.clone();
        old.get_mut(&name("a")).unwrap().to = "0.1.5".into();
        assert_eq!(
            decide(&p, &old, 0),
            Decision::Request(RollPhase::Distribute, vec![name("a")])
        );
        let b = steps.get_mut(&name("b")).unwrap();
        b.phase = Some(RollPhase::Data);
        b.state = StepState::Requested;
        assert_eq!(
            decide(&p, &steps, STEP_TIMEOUT.as_nanos() as i64),
            Decision::Wait
        );
        assert!(matches!(
            decide(&p, &steps, STEP_TIMEOUT.as_nanos() as i64 + 1),
            Decision::Fail(w) if w.contains("node b")
        ));
    }
}
