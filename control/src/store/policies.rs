//! Snapshot policies and the policy snapshots a node keeps.

use super::{role_str, Store};
use crate::model::{RelationshipId, Role};
use crate::policy::{Policy, PolicyName, Snapshot, SnapshotId, MAX_POLICIES};
use crate::{Error, Result};
use rusqlite::{params, OptionalExtension};

/// Policy snapshots one relationship keeps on a node at most (a one-minute policy kept for a
/// week is 10,080; past this, the oldest replicated ones must expire or be released first).
pub const MAX_SNAPSHOTS_PER_RELATIONSHIP: usize = 16_384;

fn bad(what: &str, e: serde_json::Error) -> Error {
    Error::Invalid(format!("stored {what} is unreadable: {e}"))
}

impl Store {
    /// Stores a new policy, firing first at its schedule's next time after `now_ns`.
    pub fn insert_policy(&self, p: &Policy, now_ns: i64) -> Result<()> {
        p.validate()?;
        if self.policies()?.len() >= MAX_POLICIES {
            return Err(Error::Conflict(format!(
                "{MAX_POLICIES} snapshot policies exist on this node: delete some first"
            )));
        }
        let json = serde_json::to_string(p).map_err(|e| bad("policy", e))?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO policies (name, policy, last_fired_ns) VALUES (?1, ?2, ?3)",
            params![p.name.as_str(), json, now_ns],
        )?;
        if n == 0 {
            return Err(Error::Conflict(format!(
                "snapshot policy {} already exists",
                p.name
            )));
        }
        Ok(())
    }

    /// Replaces a policy's settings (its name stays).
    pub fn update_policy(&self, p: &Policy) -> Result<()> {
        p.validate()?;
        let json = serde_json::to_string(p).map_err(|e| bad("policy", e))?;
        let n = self.conn.execute(
            "UPDATE policies SET policy = ?2 WHERE name = ?1",
            params![p.name.as_str(), json],
        )?;
        if n == 0 {
            return Err(Error::Missing(format!("no snapshot policy {}", p.name)));
        }
        Ok(())
    }

    pub fn policy(&self, name: &PolicyName) -> Result<(Policy, i64)> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT policy, last_fired_ns FROM policies WHERE name = ?1",
                params![name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (json, last) =
            row.ok_or_else(|| Error::Missing(format!("no snapshot policy {name}")))?;
        Ok((
            serde_json::from_str(&json).map_err(|e| bad("policy", e))?,
            last,
        ))
    }

    /// Every policy with the time it last fired, by name.
    pub fn policies(&self) -> Result<Vec<(Policy, i64)>> {
        let mut st = self
            .conn
            .prepare("SELECT policy, last_fired_ns FROM policies ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (json, last) = row?;
            out.push((
                serde_json::from_str(&json).map_err(|e| bad("policy", e))?,
                last,
            ));
        }
        Ok(out)
    }

    pub fn policy_fired(&self, name: &PolicyName, at_ns: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE policies SET last_fired_ns = ?2 WHERE name = ?1",
            params![name.as_str(), at_ns],
        )?;
        Ok(())
    }

    pub fn delete_policy(&self, name: &PolicyName) -> Result<()> {
        let n = self.conn.execute(
            "DELETE FROM policies WHERE name = ?1",
            params![name.as_str()],
        )?;
        if n == 0 {
            return Err(Error::Missing(format!("no snapshot policy {name}")));
        }
        Ok(())
    }

    /// A new snapshot id of relationship `id` on this node: never one given before, even
    /// once every earlier snapshot expired (the target keeps them by id).
    pub fn next_snapshot_id(&self, id: &RelationshipId) -> Result<SnapshotId> {
        let next: i64 = self.conn.query_row(
            "INSERT INTO snapshot_ids (relationship, last) VALUES (?1, 1)
             ON CONFLICT (relationship) DO UPDATE SET last = last + 1
             RETURNING last",
            params![id.as_str()],
            |r| r.get(0),
        )?;
        Ok(SnapshotId(next.max(1) as u64))
    }

    /// The last snapshot id given to relationship `id` on this node (none: 0).
    pub fn last_snapshot_id(&self, id: &RelationshipId) -> Result<u64> {
        let last: Option<i64> = self
            .conn
            .query_row(
                "SELECT last FROM snapshot_ids WHERE relationship = ?1",
                params![id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(last.unwrap_or(0).max(0) as u64)
    }

    /// The last snapshot id given to each relationship on this node.
    pub fn snapshot_ids(&self) -> Result<std::collections::BTreeMap<RelationshipId, u64>> {
        let mut st = self
            .conn
            .prepare("SELECT relationship, last FROM snapshot_ids")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let (id, last) = row?;
            out.insert(RelationshipId::parse(&id)?, last.max(0) as u64);
        }
        Ok(out)
    }

    /// Makes the next snapshot id of `id` at least `last + 1` (a relationship taken over:
    /// ids below what its old owner reserved may name snapshots on the source or the target).
    pub fn raise_snapshot_id(&self, id: &RelationshipId, last: u64) -> Result<()> {
        let last = i64::try_from(last).unwrap_or(i64::MAX);
        self.conn.execute(
            "INSERT INTO snapshot_ids (relationship, last) VALUES (?1, ?2)
             ON CONFLICT (relationship) DO UPDATE SET last = MAX(last, ?2)",
            params![id.as_str(), last],
        )?;
        Ok(())
    }

    /// Records a kept snapshot (replacing one of the same id: a retried keep).
    pub fn put_snapshot(&self, id: &RelationshipId, role: Role, s: &Snapshot) -> Result<()> {
        let kept: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM snapshots WHERE relationship = ?1 AND role = ?2",
            params![id.as_str(), role_str(role)],
            |r| r.get(0),
        )?;
        if kept as usize >= MAX_SNAPSHOTS_PER_RELATIONSHIP
            && self.snapshot(id, role, s.id)?.is_none()
        {
            return Err(Error::Conflict(format!(
                "relationship {id} keeps {MAX_SNAPSHOTS_PER_RELATIONSHIP} policy snapshots here: \
                 release some or shorten the expiry"
            )));
        }
        let json = serde_json::to_string(s).map_err(|e| bad("snapshot", e))?;
        self.conn.execute(
            "INSERT OR REPLACE INTO snapshots (relationship, role, id, snapshot) VALUES (?1, ?2, ?3, ?4)",
            params![id.as_str(), role_str(role), s.id.0 as i64, json],
        )?;
        Ok(())
    }

    pub fn snapshot(
        &self,
        id: &RelationshipId,
        role: Role,
        sid: SnapshotId,
    ) -> Result<Option<Snapshot>> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT snapshot FROM snapshots WHERE relationship = ?1 AND role = ?2 AND id = ?3",
                params![id.as_str(), role_str(role), sid.0 as i64],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| bad("snapshot", e)))
            .transpose()
    }

    /// Kept snapshots in `role` (of one relationship, or all), oldest first.
    pub fn snapshots(
        &self,
        id: Option<&RelationshipId>,
        role: Role,
    ) -> Result<Vec<(RelationshipId, Snapshot)>> {
        let mut st = self.conn.prepare(
            "SELECT relationship, snapshot FROM snapshots WHERE role = ?1 AND (?2 IS NULL OR relationship = ?2) ORDER BY relationship, id",
        )?;
        let rows = st.query_map(params![role_str(role), id.map(|i| i.as_str())], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (rel, json) = row?;
            out.push((
                RelationshipId::parse(&rel)?,
                serde_json::from_str(&json).map_err(|e| bad("snapshot", e))?,
            ));
        }
        Ok(out)
    }

    pub fn delete_snapshot(&self, id: &RelationshipId, role: Role, sid: SnapshotId) -> Result<()> {
        self.conn.execute(
            "DELETE FROM snapshots WHERE relationship = ?1 AND role = ?2 AND id = ?3",
            params![id.as_str(), role_str(role), sid.0 as i64],
        )?;
        Ok(())
    }

    /// Forgets every snapshot record of relationship `id` in `role`, but not the ids it gave
    /// (their copies may stay, and the relationship come back here).
    pub fn delete_snapshot_records(&self, id: &RelationshipId, role: Role) -> Result<()> {
        self.conn.execute(
            "DELETE FROM snapshots WHERE relationship = ?1 AND role = ?2",
            params![id.as_str(), role_str(role)],
        )?;
        Ok(())
    }

    /// Forgets every snapshot record of a deleted relationship in `role`.
    pub fn delete_snapshots(&self, id: &RelationshipId, role: Role) -> Result<()> {
        self.delete_snapshot_records(id, role)?;
        if role == Role::Source {
            self.conn.execute(
                "DELETE FROM snapshot_ids WHERE relationship = ?1",
                params![id.as_str()],
            )?;
        }
        Ok(())
    }
}
