//! `mover relationship ...`: create, inspect, change and drive replication relationships through
//! the daemon's REST API (docs/api.md). Builds the request bodies from flags (spec.rs) and
//! prints views; validation beyond the shape of a flag is the control crate's or the daemon's,
//! so their messages are the truth.

use crate::api::ApiArgs;
use crate::sides::{either_side, full_id, Role, SOURCE, STATUS, TARGET};
use crate::spec::{edit, new_relationship, CreateArgs, ModifyArgs};
use crate::view::{self, print_json};
use anyhow::{Context, Result};
use clap::Subcommand;
use control::api_types::Authorize;
use serde_json::json;

#[derive(Subcommand)]
pub enum RelationshipCmd {
    /// Create a relationship on this node (the source); the target node must then authorize it.
    #[command(
        long_about = "Create a relationship on this node (the source). The target node lists it as \
awaiting authorization until an operator there runs `mover relationship authorize ID`.\n\nExample:\n  \
mover relationship create --source-path /srv/data --target-address 10.0.0.2 --target-path /srv/replica \\\n    \
--blackout 'weekdays 08:00-18:00 Europe/Berlin' --map-uid 1000:2000 --bandwidth-limit 104857600\n\n\
Prints the new relationship's id."
    )]
    Create(CreateArgs),
    /// List relationships: without --role, all this token may read (sources first).
    List {
        #[arg(long)]
        role: Option<Role>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show every field of one relationship, with its running job's progress.
    Show {
        /// Relationship id, or a unique prefix of it (as `list` prints).
        id: String,
        /// Side to ask (default: source, then target if this node has no such source).
        #[arg(long)]
        role: Option<Role>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Change a relationship on the source; only the given settings change (paths cannot).
    #[command(
        long_about = "Change a relationship on the source node; only the settings given change, and \
the source and target paths cannot change (delete and create instead).\n\n--blackout replaces all \
blackout windows with the ones given; --map-uid/--map-gid replace the whole id map, so give both \
kinds to keep both.\n\nExample:\n  mover relationship modify 4f0c1a2b --blackout 'daily 01:00-05:00' \
--no-bandwidth-limit"
    )]
    Modify(ModifyArgs),
    /// Delete a relationship. On the target this reverts an interrupted job to the last recovery
    /// point and makes the target directory writable again; its data is kept.
    Delete {
        /// Relationship id, or a unique prefix of it.
        id: String,
        /// Side to delete (default: source, then target if this node has no such source).
        #[arg(long)]
        role: Option<Role>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// On the target node: accept a relationship so the source may replicate into it.
    #[command(
        long_about = "On the target node: accept a relationship so the source may replicate into it. The target directory must exist and be empty (--allow-non-empty-target to replace what it holds); it is then mounted read-only over itself, nosuid, nodev and noexec, so setuid binaries, device nodes and executables replicated from the source are inert here. Only this node's operator can allow each of them, here and now.

Example:
  mover relationship authorize 4f0c1a2b
  mover relationship authorize 4f0c1a2b --allow-exec      # a replica whose programs may run"
    )]
    Authorize {
        /// Relationship id, or a unique prefix of it.
        id: String,
        /// Accept a target directory that already holds files (they will be replaced).
        #[arg(long)]
        allow_non_empty_target: bool,
        /// Honour setuid/setgid bits of replicated files on the replica (default: mounted nosuid).
        #[arg(long)]
        allow_setuid: bool,
        /// Let replicated device nodes be opened on the replica (default: mounted nodev).
        #[arg(long)]
        allow_devices: bool,
        /// Let replicated files be executed on the replica (default: mounted noexec).
        #[arg(long)]
        allow_exec: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// On the target node: make the target directory writable (failover) and end the
    /// relationship; an interrupted job is reverted to the last recovery point first.
    #[command(
        long_about = "On the target node: make the target directory writable, for example to fail over to it. An interrupted job is first reverted to the last recovery point, so the directory holds exactly that recovery point; then the read-only protection is lifted. The relationship stays, in state `ended`, on both nodes (the source stops replicating at its next poll) until it is deleted.

Example:
  mover relationship make-writable 4f0c1a2b"
    )]
    MakeWritable {
        /// Relationship id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// On the source node, after a failover: replicate again into a target that was made
    /// writable, reverting what was written there since the last recovery point.
    #[command(
        long_about = "On the source node, after the target was made writable (failover): replicate again, without a full resync. The target makes its directory read-only again and checks it against its last recovery point (the point both sides last agreed on); the job that starts at once sends only what differs: files written, changed or removed on the target meanwhile are reverted to this source's state. Both nodes show `reverting_to_last_recovery_point` until that job succeeds.

Example:
  mover relationship reconnect 4f0c1a2b"
    )]
    Reconnect {
        /// Relationship id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// On either node: failback. The target becomes the source and the source a read-only
    /// target; only what changed since the last common recovery point travels.
    #[command(
        long_about = "On either node: reverse the relationship (failback). The target becomes the source and the source a read-only target, going back to the last recovery point both hold: only what changed since then travels. Typically run on the target after make-writable, to send what was written there during the failover back to the original source; on a healthy relationship it is a planned switch (no job may be running). Changes the old source made after that point are reverted there: they are moved aside into a directory named in the report (under the directory's .mover-state/discarded/), each path listed, never silently lost. Every reverse starts a new epoch on both nodes. Running it again restores the original direction the same way.

On the target, give the source daemon's peer address (the target does not otherwise know it).

Examples:
  mover relationship reverse 4f0c1a2b --source-address 10.0.0.1        # on the target
  mover relationship reverse 4f0c1a2b                                   # on the source"
    )]
    Reverse {
        /// Relationship id, or a unique prefix of it.
        id: String,
        /// On the target: the source daemon's peer address, host or host:port (default port 3712).
        #[arg(long)]
        source_address: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// On the source node: start a replication job now instead of waiting.
    Replicate {
        /// Relationship id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// On the source node: stop the running job (the target keeps its last recovery point).
    Abort {
        /// Relationship id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the stored relationships this node's release cannot read, with why.
    #[command(
        long_about = "List the stored relationships this node's release cannot read, with the column that \
cannot be read. Usually a downgrade met a setting a later release stored: upgrade again. Such a \
relationship runs no job and answers no peer, while the others go on; `list` leaves it out and \
says so. The alert MoverRelationshipUnreadable fires while there is one.\n\nExample:\n  \
mover relationship unreadable"
    )]
    Unreadable {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Forget a stored relationship this release cannot read (last resort: nothing is released).
    #[command(
        long_about = "Forget, on this node only, a stored relationship its release cannot read: the \
last resort when neither upgrading again nor restoring the state database is possible. Nothing \
of it is released or reverted, since what to release is in the unreadable row: a target \
directory stays read-only until its mounts are undone by hand, and the peer keeps its side \
(delete it there). Refused for a relationship this release can read: delete that one.\n\n\
Example:\n  mover relationship forget 4f0c1a2b9d8e7f60a1b2c3d4e5f60718"
    )]
    Forget {
        /// The id as `mover relationship unreadable` prints it (in full).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub fn run(cmd: RelationshipCmd) -> Result<()> {
    let now = chrono::Utc::now();
    match cmd {
        RelationshipCmd::Create(a) => {
            let v = new_relationship(&a)
                .and_then(|body| a.api.client().post(SOURCE, &body))
                .context("creating the relationship")?;
            if a.api.json {
                return print_json(&v);
            }
            let id = view::text(&v, "id");
            println!("created relationship {id} (awaiting authorization on the target)");
            eprintln!("mover: next, on the target node: mover relationship authorize {id}");
        }
        RelationshipCmd::List { role, api } => {
            let v = api
                .client()
                .get(role.map_or(STATUS, Role::base))
                .context("listing relationships")?;
            crate::unreadable::warn(&api.client(), role.map(Role::name));
            if api.json {
                return print_json(&v);
            }
            print!("{}", view::table(&v, now));
        }
        RelationshipCmd::Show { id, role, api } => {
            let c = api.client();
            let (_, v) = either_side(role, |r| {
                c.get(&format!("{}/{}", r.base(), full_id(&c, Some(r), &id)?))
            })
            .with_context(|| format!("showing relationship {id}"))?;
            if api.json {
                return print_json(&v);
            }
            print!("{}", view::show(&v, now));
        }
        RelationshipCmd::Modify(a) => {
            let c = a.api.client();
            let id = full_id(&c, Some(Role::Source), &a.id)
                .with_context(|| format!("modifying relationship {}", a.id))?;
            let v = edit(&a)
                .and_then(|body| c.patch(&format!("{SOURCE}/{id}"), &body))
                .with_context(|| format!("modifying relationship {id}"))?;
            if a.api.json {
                return print_json(&v);
            }
            println!("modified relationship {id}");
        }
        RelationshipCmd::Delete { id, role, api } => {
            let c = api.client();
            let (r, full) = either_side(role, |r| {
                let full = full_id(&c, Some(r), &id)?;
                c.delete(&format!("{}/{full}", r.base())).map(|_| full)
            })
            .with_context(|| format!("deleting relationship {id}"))?;
            if api.json {
                return print_json(&json!({ "id": full, "role": r.name(), "deleted": true }));
            }
            match r {
                Role::Source => println!("deleted source relationship {full}"),
                Role::Target => println!("deleted target relationship {full} (the target directory keeps its data and is writable again)"),
            }
        }
        RelationshipCmd::Authorize {
            id,
            allow_non_empty_target,
            allow_setuid,
            allow_devices,
            allow_exec,
            api,
        } => {
            let c = api.client();
            let body = Authorize {
                allow_non_empty_target,
                allow_setuid,
                allow_devices,
                allow_exec,
            };
            let full = full_id(&c, Some(Role::Target), &id)
                .with_context(|| format!("authorizing relationship {id}"))?;
            let v = c
                .post(&format!("{TARGET}/{full}/authorize"), &body)
                .with_context(|| format!("authorizing relationship {full}"))?;
            if api.json {
                return print_json(&v);
            }
            println!(
                "authorized relationship {full} ({})",
                view::text(&v, "state_text")
            );
        }
        RelationshipCmd::MakeWritable { id, api } => {
            let c = api.client();
            let full = full_id(&c, Some(Role::Target), &id)
                .with_context(|| format!("making the target of {id} writable"))?;
            let v = c
                .post_empty(&format!("{TARGET}/{full}/make-writable"))
                .with_context(|| format!("making the target of {full} writable"))?;
            if api.json {
                return print_json(&v);
            }
            println!("target directory {} of relationship {full} is writable; the relationship has ended", view::text(&v, "target_path"));
        }
        RelationshipCmd::Reconnect { id, api } => {
            let c = api.client();
            let full = full_id(&c, Some(Role::Source), &id)
                .with_context(|| format!("reconnecting relationship {id}"))?;
            let v = c
                .post_empty(&format!("{SOURCE}/{full}/reconnect"))
                .with_context(|| format!("reconnecting relationship {full}"))?;
            if api.json {
                return print_json(&v);
            }
            let point = |k: &str| v[k].as_str().unwrap_or("none").to_string();
            println!(
                "relationship {full} reconnected: the target is read-only again and reverts to this source's state in the job now starting"
            );
            println!(
                "last recovery point: source {}, target {}{}",
                point("source_recovery_point"),
                point("target_recovery_point"),
                if v["common"] == true { " (common)" } else { "" }
            );
            if let Some(d) = v["target_difference"].as_str() {
                println!("the target differs from it: {d}");
            }
        }
        RelationshipCmd::Reverse {
            id,
            source_address,
            api,
        } => crate::reverse::run(&id, source_address, &api)?,
        RelationshipCmd::Replicate { id, api } => action(&id, &api, "replicate", "replication of")?,
        RelationshipCmd::Abort { id, api } => action(&id, &api, "abort", "abort of")?,
        RelationshipCmd::Unreadable { api } => crate::unreadable::list(&api)?,
        RelationshipCmd::Forget { id, api } => crate::unreadable::forget(&id, &api)?,
    }
    Ok(())
}

/// `replicate` and `abort`: a POST on the source side that answers 202 with the view.
fn action(id: &str, api: &ApiArgs, verb: &str, what: &str) -> Result<()> {
    let c = api.client();
    let full =
        full_id(&c, Some(Role::Source), id).with_context(|| format!("{what} relationship {id}"))?;
    let v = c
        .post_empty(&format!("{SOURCE}/{full}/{verb}"))
        .with_context(|| format!("{what} relationship {full}"))?;
    if api.json {
        return print_json(&v);
    }
    println!("{what} {full} requested ({})", view::text(&v, "state_text"));
    Ok(())
}
