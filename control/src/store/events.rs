//! Events and the audit log (`crate::events`): appended, read in id order, pruned at each
//! insert so each stays within its bounds.

use super::{role_str, Store};
use crate::events::{
    times, AuditEntry, AuditId, Caller, Event, EventId, EventKind, NewAudit, NewEvent,
    AUDIT_MAX_AGE, MAX_AUDIT_ENTRIES, MAX_EVENTS,
};
use crate::model::{RelationshipId, Role};
use crate::{Error, Result};
use rusqlite::params;

/// Which roles' events a reader may see (its token's read privileges); events of no
/// relationship are seen by every reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    pub source: bool,
    pub target: bool,
}

fn unreadable(what: &str, v: &str) -> Error {
    Error::Invalid(format!("stored {what} {v:?} is unreadable"))
}

fn role_of(s: Option<String>) -> Result<Option<Role>> {
    match s.as_deref() {
        None => Ok(None),
        Some("source") => Ok(Some(Role::Source)),
        Some("target") => Ok(Some(Role::Target)),
        Some(other) => Err(unreadable("role", other)),
    }
}

fn relationship_of(s: Option<String>) -> Result<Option<RelationshipId>> {
    s.map(|s| RelationshipId::parse(&s)).transpose()
}

/// (caller column, token column) of a caller.
fn caller_columns(c: &Caller) -> (&'static str, Option<&str>) {
    match c {
        Caller::NoToken => ("no_token", None),
        Caller::UnknownToken => ("unknown_token", None),
        Caller::Token(name) => ("token", Some(name.as_str())),
    }
}

fn caller_of(kind: &str, token: Option<String>) -> Result<Caller> {
    match (kind, token) {
        ("no_token", _) => Ok(Caller::NoToken),
        ("unknown_token", _) => Ok(Caller::UnknownToken),
        ("token", Some(name)) => Ok(Caller::Token(name)),
        (other, _) => Err(unreadable("caller", other)),
    }
}

/// Rows of the newest `limit` (ascending) when `since` is `None`, else the first `limit` after
/// it: what a reader wants first (the latest) and then when following (what came next).
fn order(since: Option<i64>) -> &'static str {
    match since {
        None => "ORDER BY id DESC",
        Some(_) => "ORDER BY id",
    }
}

impl Store {
    /// Deletes the rows of `table` (one of this module's tables) older than the `keep` ids up
    /// to `newest`: at most `keep` rows stay (fewer if an insert that failed skipped an id).
    /// By id rather than by counting rows, so it is one range delete on the primary key.
    fn keep_newest(&self, table: &'static str, newest: i64, keep: usize) -> Result<()> {
        self.conn
            .prepare_cached(&format!("DELETE FROM {table} WHERE id <= ?1"))?
            .execute(params![newest.saturating_sub(keep as i64)])?;
        Ok(())
    }

    /// Records an event at `at_ns`, dropping the oldest beyond `MAX_EVENTS`.
    pub fn insert_event(&self, at_ns: i64, e: &NewEvent) -> Result<EventId> {
        self.conn
            .prepare_cached(
                "INSERT INTO events (at_ns, kind, relationship, role, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                at_ns,
                e.kind.name(),
                e.relationship.as_ref().map(RelationshipId::as_str),
                e.role.map(role_str),
                e.message
            ])?;
        let id = EventId(self.conn.last_insert_rowid());
        self.keep_newest("events", id.0, MAX_EVENTS)?;
        Ok(id)
    }

    /// Events after `since` (or the newest), at most `limit`, in id order.
    pub fn events(&self, since: Option<EventId>, limit: usize, v: Visible) -> Result<Vec<Event>> {
        let since = since.map(|s| s.0);
        let q = format!(
            "SELECT id, at_ns, kind, relationship, role, message FROM events
             WHERE (?1 IS NULL OR id > ?1)
               AND (role IS NULL OR (role = 'source' AND ?2) OR (role = 'target' AND ?3))
             {} LIMIT ?4",
            order(since)
        );
        let mut st = self.conn.prepare_cached(&q)?;
        let rows = st.query_map(params![since, v.source, v.target, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at_ns, kind, relationship, role, message) = row?;
            let (time, unix) = times(at_ns);
            out.push(Event {
                id: EventId(id),
                time,
                unix,
                what: NewEvent {
                    kind: EventKind::parse(&kind).ok_or_else(|| unreadable("event kind", &kind))?,
                    relationship: relationship_of(relationship)?,
                    role: role_of(role)?,
                    message,
                },
            });
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Appends an audit entry of a request that arrived at `at_ns`, dropping entries older
    /// than `AUDIT_MAX_AGE` (before that) and the oldest beyond `MAX_AUDIT_ENTRIES`.
    pub fn insert_audit(&self, at_ns: i64, a: &NewAudit) -> Result<AuditId> {
        let (caller, token) = caller_columns(&a.caller);
        self.conn
            .prepare_cached(
                "INSERT INTO audit (at_ns, caller, token, method, route, relationship, status, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                at_ns,
                caller,
                token,
                a.method,
                a.route,
                a.relationship.as_ref().map(RelationshipId::as_str),
                a.status,
                a.reason
            ])?;
        let id = AuditId(self.conn.last_insert_rowid());
        let cutoff = at_ns.saturating_sub(AUDIT_MAX_AGE.as_nanos().min(i64::MAX as u128) as i64);
        self.conn
            .prepare_cached("DELETE FROM audit WHERE at_ns < ?1")?
            .execute(params![cutoff])?;
        self.keep_newest("audit", id.0, MAX_AUDIT_ENTRIES)?;
        Ok(id)
    }

    /// Audit entries after `since` (or the newest), at most `limit`, in id order.
    pub fn audit(&self, since: Option<AuditId>, limit: usize) -> Result<Vec<AuditEntry>> {
        let since = since.map(|s| s.0);
        let q = format!(
            "SELECT id, at_ns, caller, token, method, route, relationship, status, reason FROM audit
             WHERE (?1 IS NULL OR id > ?1) {} LIMIT ?2",
            order(since)
        );
        let mut st = self.conn.prepare_cached(&q)?;
        let rows = st.query_map(params![since, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, u16>(7)?,
                r.get::<_, Option<String>>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at_ns, caller, token, method, route, relationship, status, reason) = row?;
            let (time, unix) = times(at_ns);
            out.push(AuditEntry {
                id: AuditId(id),
                time,
                unix,
                what: NewAudit {
                    caller: caller_of(&caller, token)?,
                    method,
                    route,
                    relationship: relationship_of(relationship)?,
                    status,
                    reason,
                },
            });
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Visible = Visible {
        source: true,
        target: true,
    };

    fn event(kind: EventKind, role: Option<Role>) -> NewEvent {
        NewEvent {
            kind,
            relationship: role.map(|_| RelationshipId::parse(&"ab".repeat(16)).unwrap()),
            role,
            message: format!("{kind:?}"),
        }
    }

    fn audit(status: u16) -> NewAudit {
        NewAudit {
            caller: Caller::Token("ops".into()),
            method: "POST".into(),
            route: "/v1/replication/source-relationships".into(),
            relationship: None,
            status,
            reason: None,
        }
    }

    fn store() -> Store {
        Store::open_in_memory().unwrap()
    }

    #[test]
    fn event_ids_increase_and_since_reads_what_came_after() {
        let s = store();
        let a = s
            .insert_event(1, &event(EventKind::JobFailed, Some(Role::Source)))
            .unwrap();
        let b = s
            .insert_event(2, &event(EventKind::MadeWritable, Some(Role::Target)))
            .unwrap();
        assert!(b > a);
        let all = s.events(None, 10, ALL).unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(all[0].what.kind, EventKind::JobFailed);
        assert_eq!(all[1].what.role, Some(Role::Target));
        let after = s.events(Some(a), 10, ALL).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].id, b);
        assert!(s.events(Some(b), 10, ALL).unwrap().is_empty());
    }

    #[test]
    fn without_since_the_newest_come_in_id_order_and_with_it_the_next() {
        let s = store();
        let ids: Vec<EventId> = (0..5)
            .map(|i| {
                s.insert_event(i, &event(EventKind::JobRetried, None))
                    .unwrap()
            })
            .collect();
        let newest = s.events(None, 2, ALL).unwrap();
        assert_eq!(
            newest.iter().map(|e| e.id).collect::<Vec<_>>(),
            ids[3..].to_vec()
        );
        let next = s.events(Some(ids[0]), 2, ALL).unwrap();
        assert_eq!(
            next.iter().map(|e| e.id).collect::<Vec<_>>(),
            ids[1..3].to_vec()
        );
    }

    #[test]
    fn readers_see_only_the_roles_they_may_read_and_events_of_no_relationship() {
        let s = store();
        s.insert_event(1, &event(EventKind::JobFailed, Some(Role::Source)))
            .unwrap();
        s.insert_event(2, &event(EventKind::MadeWritable, Some(Role::Target)))
            .unwrap();
        s.insert_event(3, &event(EventKind::BlackoutLeft, None))
            .unwrap();
        let seen = |source, target| {
            s.events(None, 10, Visible { source, target })
                .unwrap()
                .into_iter()
                .map(|e| e.what.kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            seen(true, false),
            vec![EventKind::JobFailed, EventKind::BlackoutLeft]
        );
        assert_eq!(
            seen(false, true),
            vec![EventKind::MadeWritable, EventKind::BlackoutLeft]
        );
    }

    #[test]
    fn events_are_pruned_to_the_newest_max_events_and_ids_keep_increasing() {
        let s = store();
        let mut last = EventId(0);
        for i in 0..(MAX_EVENTS + 5) as i64 {
            last = s
                .insert_event(i, &event(EventKind::JobRetried, None))
                .unwrap();
        }
        let n: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, MAX_EVENTS as i64);
        let oldest = s.events(Some(EventId(0)), 1, ALL).unwrap();
        assert_eq!(oldest[0].id, EventId(6), "the 5 oldest went");
        // Even with every row gone an id is never handed out again.
        s.conn.execute("DELETE FROM events", []).unwrap();
        let next = s
            .insert_event(0, &event(EventKind::JobRetried, None))
            .unwrap();
        assert!(next > last);
    }

    #[test]
    fn audit_entries_are_pruned_by_count() {
        let s = store();
        for i in 0..(MAX_AUDIT_ENTRIES + 3) as i64 {
            s.insert_audit(i, &audit(201)).unwrap();
        }
        let n: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, MAX_AUDIT_ENTRIES as i64);
        assert_eq!(s.audit(None, 1).unwrap()[0].id, AuditId(n + 3));
    }

    #[test]
    fn audit_entries_older_than_the_max_age_are_pruned_and_none_can_be_edited() {
        let s = store();
        let day = 24 * 3600 * 1_000_000_000i64;
        let old = s.insert_audit(0, &audit(403)).unwrap();
        let kept = s.insert_audit(10 * day, &audit(403)).unwrap();
        let now = AUDIT_MAX_AGE.as_nanos() as i64 + day;
        let new = s.insert_audit(now, &audit(204)).unwrap();
        let ids: Vec<AuditId> = s.audit(None, 10).unwrap().iter().map(|a| a.id).collect();
        assert_eq!(ids, vec![kept, new]);
        assert!(old < kept);
        let e = s
            .conn
            .execute("UPDATE audit SET status = 200", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("append-only"), "{e}");
    }

    #[test]
    fn audit_entries_keep_who_called_and_why_they_were_refused() {
        let s = store();
        for caller in [
            Caller::NoToken,
            Caller::UnknownToken,
            Caller::Token("ops".into()),
        ] {
            let mut a = audit(401);
            a.caller = caller;
            a.reason = Some("unknown token".into());
            a.relationship = Some(RelationshipId::parse(&"cd".repeat(16)).unwrap());
            s.insert_audit(1, &a).unwrap();
        }
        let got = s.audit(None, 10).unwrap();
        assert_eq!(
            got.iter()
                .map(|a| a.what.caller.clone())
                .collect::<Vec<_>>(),
            vec![
                Caller::NoToken,
                Caller::UnknownToken,
                Caller::Token("ops".into())
            ]
        );
        assert_eq!(got[2].what.reason.as_deref(), Some("unknown token"));
        assert_eq!(got[2].what.status, 401);
        assert_eq!(
            got[2].what.relationship.as_ref().unwrap().as_str(),
            "cd".repeat(16)
        );
    }
}
