//! The node's durable state: SQLite (bundled) in WAL mode with `synchronous=FULL`, so a
//! committed change survives a crash or power loss; the schema is migrated step by step,
//! tracked in `PRAGMA user_version`. A database written by a newer mover is refused rather than
//! misread. Relationship specs are stored as JSON (one column), the fields the daemon updates on
//! their own (authorization, job outcome) as columns.

use crate::model::{Attempt, PinnedDir, Relationship, RelationshipId, ReplicaOptions, Role, Spec};
use crate::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

mod events;
mod policies;

pub use events::Visible;

/// Migrations, in order; `user_version` = how many have been applied.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE relationships (
        id TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('source', 'target')),
        spec TEXT NOT NULL,
        authorized INTEGER NOT NULL,
        created_ns INTEGER NOT NULL,
        last_attempt TEXT,
        recovery_point_ns INTEGER,
        job_running INTEGER NOT NULL DEFAULT 0,
        peer_unreachable INTEGER NOT NULL DEFAULT 0,
        ended INTEGER NOT NULL DEFAULT 0
    )",
    "ALTER TABLE relationships ADD COLUMN peer_fingerprint TEXT;
     ALTER TABLE relationships ADD COLUMN read_only TEXT;
     CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_ns INTEGER NOT NULL
     )",
    // Older daemons stored whatever id a peer proposed. Every id this node makes or accepts
    // now is 32 lowercase hex digits (`RelationshipId`); other rows can only be hostile
    // proposals, never authorized (authorizing goes through a checked id), so nothing was ever
    // protected for them: they are dropped, freeing the pending slots they held.
    "DELETE FROM relationships WHERE length(id) != 32 OR id GLOB '*[^0-9a-f]*'",
    // The checked directory (JSON `PinnedDir`), why it failed its last check, and what the
    // target's operator accepted for the replica (JSON `ReplicaOptions`).
    "ALTER TABLE relationships ADD COLUMN pinned TEXT;
     ALTER TABLE relationships ADD COLUMN path_error TEXT;
     ALTER TABLE relationships ADD COLUMN replica TEXT",
    // Failovers and reconnects since the relationship began (`Relationship::epoch`).
    "ALTER TABLE relationships ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
    // Snapshot policies (JSON `policy::Policy`) with the time each last fired, and the policy
    // snapshots a node keeps (JSON `policy::Snapshot`), per relationship and role.
    "CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        last_fired_ns INTEGER NOT NULL
     );
     CREATE TABLE snapshots (
        relationship TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('source', 'target')),
        id INTEGER NOT NULL,
        snapshot TEXT NOT NULL,
        PRIMARY KEY (relationship, role, id)
     );
     CREATE TABLE snapshot_ids (
        relationship TEXT PRIMARY KEY,
        last INTEGER NOT NULL
     )",
    // Events (`events::Event`) and the audit log of mutating API calls (`events::AuditEntry`),
    // each pruned at insert (store/events.rs). AUTOINCREMENT: an id is never handed out twice,
    // so a reader's `since` never skips a new row. The audit log is append-only: no statement
    // of this crate updates it, and the trigger refuses any that would.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        relationship TEXT,
        role TEXT CHECK (role IN ('source', 'target')),
        message TEXT NOT NULL
     );
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ns INTEGER NOT NULL,
        caller TEXT NOT NULL,
        token TEXT,
        method TEXT NOT NULL,
        route TEXT NOT NULL,
        relationship TEXT,
        status INTEGER NOT NULL,
        reason TEXT
     );
     CREATE INDEX audit_at ON audit (at_ns);
     CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    // Target role: the highest owner term a source cluster's ticket request carried, and the
    // epoch it was seen at (`Store::fence`).
    "ALTER TABLE relationships ADD COLUMN source_term INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE relationships ADD COLUMN source_term_epoch INTEGER NOT NULL DEFAULT 0",
];

/// What a ticket request's owner term meets on the target (`Store::fence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The highest term seen at this epoch: nothing changes.
    Current,
    /// Higher than any seen at this epoch (stored now): sessions granted before belong to
    /// an owner that has been replaced.
    Raised,
    /// Below the highest seen at this epoch, which is given: the request comes from an
    /// owner that has been replaced.
    Stale(u64),
}
/// How long a writer waits for another connection's lock before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Store {
    conn: Connection,
}

/// The relationships `Store::list_readable` read, and those it could not.
#[derive(Debug, Default)]
pub struct Listed {
    pub rows: Vec<Relationship>,
    pub unreadable: Vec<Unreadable>,
}

/// A stored relationship this release cannot read.
#[derive(Debug)]
pub struct Unreadable {
    /// Its id as stored.
    pub id: String,
    /// Its role, as the schema's check keeps it (`None` only past that check).
    pub role: Option<Role>,
    /// Why, naming the row and the column.
    pub error: Error,
}

/// One `relationships` row in `COLUMNS` order.
type RowTuple = (
    String,
    String,
    String,
    bool,
    i64,
    Option<String>,
    Option<i64>,
    bool,
    bool,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

fn invalid_json(e: serde_json::Error) -> Error {
    Error::Invalid(format!("relationship cannot be stored: {e}"))
}

/// A stored relationship's `column` that this release cannot read: the error names the row,
/// so an operator knows which relationship is stopped, and what refuses to go on without it
/// (`Store::list`) says which.
fn unreadable(id: &str, column: &str, why: impl std::fmt::Display) -> Error {
    Error::Unreadable(format!(
        "stored relationship {id:?}: its {column} is unreadable ({why})"
    ))
}

/// `Store::forget_unreadable` asked for a row this release reads.
pub fn still_readable(id: &str) -> Error {
    Error::Conflict(format!(
        "relationship {id} is readable: delete it through its role's relationships"
    ))
}

fn role_from(s: &str) -> Option<Role> {
    match s {
        "source" => Some(Role::Source),
        "target" => Some(Role::Target),
        _ => None,
    }
}

fn role_str(r: Role) -> &'static str {
    match r {
        Role::Source => "source",
        Role::Target => "target",
    }
}

impl Store {
    /// Opens (creating) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut s = Store { conn };
        s.migrate(&path.display().to_string())?;
        Ok(s)
    }

    /// A database held in memory, with the same schema and statements: the simulation's
    /// nodes, whose store must outlive their restarts but never touches the disk (a file
    /// with `synchronous=FULL` costs an fsync per write, which thousands of seeds cannot pay).
    pub fn open_in_memory() -> Result<Store> {
        let mut s = Store {
            conn: Connection::open_in_memory()?,
        };
        s.migrate(":memory:")?;
        Ok(s)
    }

    /// Rows changed since it was opened (lets the simulation's checker skip reading a store
    /// again when no step changed it).
    #[cfg(test)]
    pub(crate) fn changes(&self) -> u64 {
        self.conn.total_changes()
    }

    fn migrate(&mut self, path: &str) -> Result<()> {
        let found: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(Error::SchemaTooNew {
                path: path.to_string(),
                found,
                supported,
            });
        }
        let tx = self.conn.transaction()?;
        for m in &MIGRATIONS[found as usize..] {
            tx.execute_batch(m)?;
        }
        tx.pragma_update(None, "user_version", supported)?;
        tx.commit()?;
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Stores a new relationship (validated first).
    pub fn insert(&self, r: &Relationship) -> Result<()> {
        r.spec.validate()?;
        let spec = serde_json::to_string(&r.spec).map_err(invalid_json)?;
        let attempt = r
            .last_attempt
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(invalid_json)?;
        let (pinned, replica) = Self::encode_extras(r)?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO relationships (id, role, spec, authorized, created_ns, last_attempt, recovery_point_ns, job_running, peer_unreachable, ended, peer_fingerprint, read_only, pinned, path_error, replica, epoch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![r.id.as_str(), role_str(r.role), spec, r.authorized, r.created_ns, attempt, r.recovery_point_ns, r.job_running, r.peer_unreachable, r.ended, r.peer_fingerprint, r.read_only.map(crate::readonly::Mode::name), pinned, r.path_error, replica, r.epoch as i64],
        )?;
        if n == 0 {
            return Err(Error::Invalid(format!(
                "relationship {} already exists",
                r.id
            )));
        }
        Ok(())
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowTuple> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
            r.get(13)?,
            r.get(14)?,
            r.get(15)?,
        ))
    }

    /// The JSON columns beyond the spec: the pinned directory and the replica options (null
    /// when they are the defaults, as rows of older versions have them).
    fn encode_extras(r: &Relationship) -> Result<(Option<String>, Option<String>)> {
        let pinned = r
            .pinned
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(invalid_json)?;
        let replica = (r.replica != ReplicaOptions::default())
            .then(|| serde_json::to_string(&r.replica))
            .transpose()
            .map_err(invalid_json)?;
        Ok((pinned, replica))
    }

    fn decode(t: RowTuple) -> Result<Relationship> {
        let (
            id,
            role,
            spec,
            authorized,
            created_ns,
            attempt,
            rp,
            job_running,
            peer_unreachable,
            ended,
            peer_fingerprint,
            read_only,
            pinned,
            path_error,
            replica,
            epoch,
        ) = t;
        let bad = |column: &'static str| {
            let id = id.as_str();
            move |e: serde_json::Error| unreadable(id, column, e)
        };
        // Never a default: a row read as the other role would run the other side's jobs.
        let Some(role) = role_from(&role) else {
            return Err(unreadable(&id, "role", format!("{role:?}")));
        };
        let spec: Spec = serde_json::from_str(&spec).map_err(bad("spec"))?;
        let last_attempt: Option<Attempt> = attempt
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(bad("last attempt"))?;
        let pinned: Option<PinnedDir> = pinned
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(bad("pinned directory"))?;
        let replica: Option<ReplicaOptions> = replica
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(bad("replica options"))?;
        let read_only = read_only
            .map(|m| {
                crate::readonly::Mode::parse(&m)
                    .ok_or_else(|| unreadable(&id, "read_only", format!("{m:?}")))
            })
            .transpose()?;
        Ok(Relationship {
            id: RelationshipId::parse(&id).map_err(|e| unreadable(&id, "id", e))?,
            role,
            spec,
            authorized,
            created_ns,
            last_attempt,
            recovery_point_ns: rp,
            job_running,
            peer_unreachable,
            ended,
            peer_fingerprint,
            read_only,
            pinned,
            path_error,
            replica: replica.unwrap_or_default(),
            epoch: epoch.max(0) as u64,
        })
    }

    const COLUMNS: &'static str =
        "id, role, spec, authorized, created_ns, last_attempt, recovery_point_ns, job_running, peer_unreachable, ended, peer_fingerprint, read_only, pinned, path_error, replica, epoch";

    pub fn get(&self, id: &RelationshipId) -> Result<Relationship> {
        let q = format!("SELECT {} FROM relationships WHERE id = ?1", Self::COLUMNS);
        let t = self
            .conn
            .prepare_cached(&q)?
            .query_row(params![id.as_str()], |r| Ok(Self::row(r)))
            .optional()?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        Self::decode(t.map_err(|e| unreadable(id.as_str(), "row", e))?)
    }

    /// Relationships of one role (oldest first), or all; fails on a row this release cannot
    /// read (naming it). For what must see every relationship or none: the overlap check of a
    /// new protection or proposal, the links of a policy being deleted. Like
    /// `get` and `update`, which the scheduler also runs on every tick, its statement is
    /// prepared once and cached.
    pub fn list(&self, role: Option<Role>) -> Result<Vec<Relationship>> {
        let listed = self.list_readable(role)?;
        match listed.unreadable.into_iter().next() {
            Some(u) => Err(u.error),
            None => Ok(listed.rows),
        }
    }

    /// `list`, with the rows this release cannot read set apart instead of failing the list:
    /// for what runs the others (the scheduler, the daemon's start, a target's check at each
    /// use, silence checks, policy snapshots, cluster publishing, the upgrade check, the
    /// metrics), which one damaged row must not stop.
    pub fn list_readable(&self, role: Option<Role>) -> Result<Listed> {
        let q = format!(
            "SELECT {} FROM relationships WHERE ?1 IS NULL OR role = ?1 ORDER BY created_ns, id",
            Self::COLUMNS
        );
        let mut st = self.conn.prepare_cached(&q)?;
        // A column of another SQL type than the schema's (a damaged row) is set apart as a
        // column this release cannot decode is.
        let rows = st.query_map(params![role.map(role_str)], |r| {
            Ok(Self::row(r).map_err(|e| {
                // Even the id may be damaged (the schema lets it be NULL or a blob): named as
                // well as it can be, so the row is set apart, not the list failed.
                let id = match r.get_ref(0) {
                    Ok(rusqlite::types::ValueRef::Text(t)) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                    other => format!("{other:?}"),
                };
                let role = r.get::<_, String>(1).ok().and_then(|s| role_from(&s));
                let error = unreadable(&id, "row", e);
                Unreadable { id, role, error }
            }))
        })?;
        let mut listed = Listed::default();
        for r in rows {
            let decoded = r?.and_then(|t| {
                let (id, role) = (t.0.clone(), role_from(&t.1));
                Self::decode(t).map_err(|error| Unreadable { id, role, error })
            });
            match decoded {
                Ok(r) => listed.rows.push(r),
                Err(u) => listed.unreadable.push(u),
            }
        }
        Ok(listed)
    }

    /// Sets `assignment` (SQL) on relationship `id`'s row, past every check: tests make rows
    /// this release cannot read with it.
    #[cfg(test)]
    pub(crate) fn set_raw(&self, id: &str, assignment: &str) {
        self.conn
            .execute(
                &format!("UPDATE relationships SET {assignment} WHERE id = ?1"),
                [id],
            )
            .unwrap();
    }

    /// Replaces a relationship's stored fields (the id and role stay).
    pub fn update(&self, r: &Relationship) -> Result<()> {
        r.spec.validate()?;
        let spec = serde_json::to_string(&r.spec).map_err(invalid_json)?;
        let attempt = r
            .last_attempt
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(invalid_json)?;
        let (pinned, replica) = Self::encode_extras(r)?;
        let n = self.conn.prepare_cached(
            "UPDATE relationships SET spec = ?2, authorized = ?3, last_attempt = ?4, recovery_point_ns = ?5, job_running = ?6,
             peer_unreachable = ?7, ended = ?8, peer_fingerprint = ?9, read_only = ?10, pinned = ?11, path_error = ?12,
             replica = ?13, epoch = ?14 WHERE id = ?1",
        )?.execute(
            params![r.id.as_str(), spec, r.authorized, attempt, r.recovery_point_ns, r.job_running, r.peer_unreachable, r.ended, r.peer_fingerprint, r.read_only.map(crate::readonly::Mode::name), pinned, r.path_error, replica, r.epoch as i64],
        )?;
        if n == 0 {
            return Err(Error::NotFound(r.id.to_string()));
        }
        Ok(())
    }

    /// Replaces a relationship's stored fields and its role, in one transaction: a reverse
    /// (`daemon/reverse.rs`) turns a node's source into a target of the same id or back.
    pub fn set_role(&self, r: &Relationship) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let res = self
            .conn
            .execute(
                "UPDATE relationships SET role = ?2 WHERE id = ?1",
                params![r.id.as_str(), role_str(r.role)],
            )
            .map_err(Error::from)
            .and_then(|_| self.update(r));
        match res {
            Ok(()) => Ok(self.conn.execute_batch("COMMIT")?),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Compares a ticket request's owner `term` for target relationship `id` at `epoch` with
    /// the highest seen at that epoch (a new epoch starts again from 0: a reconnect is the
    /// way back for a source cluster whose etcd, and so its terms, were lost), storing it if
    /// higher. Term 0 is no term (a single node, or a node of an earlier release, which
    /// writes records without terms): never fenced, and it clears the term stored, so a node
    /// of an earlier release that took a relationship over and was then upgraded (its record
    /// starts again at 1) is not refused. A request of another epoch than the relationship's
    /// (read before a reconnect) is refused. Called under the caller's receivers lock.
    pub fn fence(&self, id: &RelationshipId, epoch: u64, term: u64) -> Result<Fenced> {
        let (epoch, term) = (
            i64::try_from(epoch).unwrap_or(i64::MAX),
            i64::try_from(term).unwrap_or(i64::MAX),
        );
        let (seen, at, now): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT source_term, source_term_epoch, epoch FROM relationships WHERE id = ?1 AND role = 'target'",
                params![id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        if epoch != now {
            return Err(Error::Conflict(format!(
                "relationship {id} moved from epoch {epoch} to {now} meanwhile; ask again"
            )));
        }
        let seen = if at == epoch { seen } else { 0 };
        if term == 0 {
            if seen != 0 {
                self.conn.execute(
                    "UPDATE relationships SET source_term = 0 WHERE id = ?1 AND role = 'target'",
                    params![id.as_str()],
                )?;
            }
            return Ok(Fenced::Current);
        }
        if term < seen {
            return Ok(Fenced::Stale(seen as u64));
        }
        if term == seen {
            return Ok(Fenced::Current);
        }
        self.conn.execute(
            "UPDATE relationships SET source_term = ?2, source_term_epoch = ?3 WHERE id = ?1 AND role = 'target'",
            params![id.as_str(), term, epoch],
        )?;
        Ok(Fenced::Raised)
    }

    /// Deletes the stored relationship whose id is stored as `id` if, and only if, this release
    /// cannot read it (a readable one is deleted through its role's own path, which tells the
    /// peer and releases what it holds). Returns what was forgotten. Only the row goes (its
    /// policy snapshots' records are the caller's).
    pub fn forget_unreadable(&self, id: &str) -> Result<Unreadable> {
        let listed = self.list_readable(None)?;
        if listed.rows.iter().any(|r| r.id.as_str() == id) {
            return Err(still_readable(id));
        }
        let Some(u) = listed.unreadable.into_iter().find(|u| u.id == id) else {
            return Err(Error::NotFound(id.to_string()));
        };
        // A damaged id that is not text matches no text: such a row is repaired in the
        // database itself.
        if self
            .conn
            .execute("DELETE FROM relationships WHERE id = ?1", params![id])?
            == 0
        {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(u)
    }

    pub fn delete(&self, id: &RelationshipId) -> Result<()> {
        if self.conn.execute(
            "DELETE FROM relationships WHERE id = ?1",
            params![id.as_str()],
        )? == 0
        {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// Stores a token's hash under a unique name.
    pub fn insert_token(&self, name: &str, role: &str, hash: &str, created_ns: i64) -> Result<()> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO tokens (name, role, hash, created_ns) VALUES (?1, ?2, ?3, ?4)",
            params![name, role, hash, created_ns],
        )?;
        if n == 0 {
            return Err(Error::Invalid(format!(
                "a token named {name:?} already exists"
            )));
        }
        Ok(())
    }

    /// The (name, role) of the token with this hash.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, role FROM tokens WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// (name, role) of every token, by name.
    pub fn tokens(&self) -> Result<Vec<(String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT name, role FROM tokens ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn delete_token(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM tokens WHERE name = ?1", params![name])?
            > 0)
    }

    /// SQLite's own consistency check ("ok" when the database is intact).
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Edit;

    fn rel(role: Role) -> Relationship {
        Relationship::new(
            RelationshipId::new_random(),
            role,
            crate::model::tests::spec(),
            1,
            None,
        )
    }

    #[test]
    fn relationships_survive_reopen_and_edits_keep_paths() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("state.db");
        let a = rel(Role::Source);
        let b = rel(Role::Target);
        {
            let s = Store::open(&db).unwrap();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
            s.insert(&a).unwrap();
            s.insert(&b).unwrap();
            assert!(s
                .insert(&a)
                .unwrap_err()
                .to_string()
                .contains("already exists"));
        }
        let s = Store::open(&db).unwrap();
        assert_eq!(s.list(Some(Role::Source)).unwrap(), vec![a.clone()]);
        assert_eq!(s.list(None).unwrap().len(), 2);
        let mut got = s.get(&b.id).unwrap();
        got.spec = got
            .spec
            .edited(&Edit {
                target_port: Some(4000),
                ..Default::default()
            })
            .unwrap();
        got.authorized = true;
        got.pinned = Some(PinnedDir {
            path: "/srv/replica".into(),
            dev: u64::MAX,
            ino: 2,
        });
        got.path_error = Some("moved".into());
        got.read_only = Some(crate::readonly::Mode::BindMount);
        got.replica = ReplicaOptions {
            allow_setuid: true,
            ..Default::default()
        };
        got.last_attempt = Some(Attempt {
            at_ns: 5,
            ok: true,
            message: "verified".into(),
        });
        s.update(&got).unwrap();
        assert_eq!(s.get(&b.id).unwrap(), got);
        // Stored by the name it always had; a name this release does not know is refused
        // saying which, not taken as another mode.
        let stored: String = s
            .conn
            .query_row(
                "SELECT read_only FROM relationships WHERE id = ?1",
                [b.id.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, "bind_mount");
        // Writes `assignment` into b's row behind the store's back.
        let set = |assignment: &str| s.set_raw(b.id.as_str(), assignment);
        set("read_only = 'overlay'");
        let e = s.get(&b.id).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{:?}", b.id.as_str()))
                && e.contains("read_only is unreadable (\"overlay\")"),
            "{e}"
        );
        // So is a spec this release cannot read, in the list too: the error names the row.
        set("read_only = NULL, spec = '{\"src\": 7}'");
        for e in [
            s.get(&b.id).unwrap_err().to_string(),
            s.list(None).unwrap_err().to_string(),
        ] {
            assert!(
                e.contains(&format!(
                    "stored relationship {:?}: its spec is unreadable",
                    b.id.as_str()
                )),
                "{e}"
            );
        }
        // A column of another SQL type: the same, in get and set apart by list_readable; a
        // row whose very id is damaged is set apart too.
        set("read_only = NULL, spec = (SELECT spec FROM relationships WHERE id != ?1 LIMIT 1)");
        set("created_ns = 'not a number'");
        let e = s.get(&b.id).unwrap_err();
        assert!(matches!(e, Error::Unreadable(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains(&format!("{:?}: its row", b.id.as_str())),
            "{e}"
        );
        let listed = s.list_readable(None).unwrap();
        assert_eq!((listed.rows.len(), listed.unreadable.len()), (1, 1));
        set("id = x'00ff'");
        let listed = s.list_readable(None).unwrap();
        assert_eq!((listed.rows.len(), listed.unreadable.len()), (1, 1));
        s.conn
            .execute(
                "UPDATE relationships SET id = ?1 WHERE id = x'00ff'",
                [b.id.as_str()],
            )
            .unwrap();
        set("created_ns = 1");
        // A role other than the two (past the schema's CHECK) is refused, not read as one.
        s.conn
            .execute_batch("PRAGMA ignore_check_constraints = ON")
            .unwrap();
        set("role = 'mirror'");
        let e = s.get(&b.id).unwrap_err().to_string();
        assert!(e.contains("its role is unreadable (\"mirror\")"), "{e}");
        set(&format!("role = '{}'", role_str(b.role)));
        s.conn
            .execute_batch("PRAGMA ignore_check_constraints = OFF")
            .unwrap();
        for m in [Some(crate::readonly::Mode::NotEnforced), None] {
            got.read_only = m;
            s.update(&got).unwrap();
            assert_eq!(s.get(&b.id).unwrap(), got);
        }
        s.delete(&a.id).unwrap();
        assert!(matches!(s.get(&a.id), Err(Error::NotFound(_))));
        assert!(matches!(s.delete(&a.id), Err(Error::NotFound(_))));
        assert_eq!(s.integrity_check().unwrap(), "ok");
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn only_a_row_this_release_cannot_read_is_forgotten_and_its_role_is_named() {
        let s = Store::open_in_memory().unwrap();
        let rows: Vec<Relationship> = [Role::Source, Role::Target]
            .into_iter()
            .map(|role| {
                let r = Relationship::new(
                    RelationshipId::new_random(),
                    role,
                    crate::model::tests::spec(),
                    0,
                    None,
                );
                s.insert(&r).unwrap();
                r
            })
            .collect();
        let (readable, damaged) = (&rows[0], &rows[1]);
        s.set_raw(damaged.id.as_str(), "spec = '{\"later\": true}'");
        let listed = s.list_readable(None).unwrap();
        assert_eq!(listed.unreadable.len(), 1);
        assert_eq!(listed.unreadable[0].role, Some(Role::Target));
        assert!(matches!(
            s.forget_unreadable(readable.id.as_str()),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            s.forget_unreadable(&"0".repeat(32)),
            Err(Error::NotFound(_))
        ));
        let gone = s.forget_unreadable(damaged.id.as_str()).unwrap();
        assert_eq!(
            (gone.id.as_str(), gone.role),
            (damaged.id.as_str(), Some(Role::Target))
        );
        assert!(
            gone.error.to_string().contains("its spec is unreadable"),
            "{}",
            gone.error
        );
        assert!(matches!(
            s.forget_unreadable(damaged.id.as_str()),
            Err(Error::NotFound(_))
        ));
        assert_eq!(s.list(None).unwrap(), vec![readable.clone()]);
        // A row whose very id is damaged cannot be named by text: it stays for the database's
        // own repair.
        let other = Relationship::new(
            RelationshipId::new_random(),
            Role::Source,
            crate::model::tests::spec(),
            0,
            None,
        );
        s.insert(&other).unwrap();
        s.set_raw(other.id.as_str(), "id = x'00ff'");
        let listed = s.list_readable(None).unwrap();
        let shown = listed.unreadable[0].id.clone();
        assert_eq!(listed.unreadable[0].role, Some(Role::Source));
        assert!(matches!(
            s.forget_unreadable(&shown),
            Err(Error::NotFound(_))
        ));
        assert_eq!(s.list_readable(None).unwrap().unreadable.len(), 1);
    }

    #[test]
    fn a_database_from_a_newer_mover_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("state.db");
        drop(Store::open(&db).unwrap());
        Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = Store::open(&db).err().unwrap().to_string();
        assert!(e.contains("schema version 99 is newer"), "{e}");
    }

    #[test]
    fn invalid_specs_are_not_stored() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("state.db")).unwrap();
        let mut r = rel(Role::Source);
        r.spec.source_path = "relative".into();
        assert!(s.insert(&r).is_err());
        assert!(s.list(None).unwrap().is_empty());
    }

    #[test]
    fn rows_with_ids_that_are_not_relationship_ids_are_dropped_from_older_databases() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("state.db");
        {
            // A database of schema 2, as older daemons wrote it, holding a proposal whose id
            // a hostile peer chose.
            let c = Connection::open(&db).unwrap();
            for m in &MIGRATIONS[..2] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 2).unwrap();
            let spec = serde_json::to_string(&crate::model::tests::spec()).unwrap();
            for id in ["../../srv", "ab".repeat(16).as_str()] {
                c.execute(
                    "INSERT INTO relationships (id, role, spec, authorized, created_ns) VALUES (?1, 'target', ?2, 0, 1)",
                    params![id, spec],
                )
                .unwrap();
            }
        }
        let s = Store::open(&db).unwrap();
        let ids: Vec<String> = s
            .list(None)
            .unwrap()
            .into_iter()
            .map(|r| r.id.to_string())
            .collect();
        assert_eq!(ids, vec!["ab".repeat(16)]);
    }
}
