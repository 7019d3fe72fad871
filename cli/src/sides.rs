//! Which node's view of a relationship a command reads (`Role`: the source's or the
//! target's API), and how the CLI finds one: a full id from the prefix the tables show
//! (`full_id`), or either side when the operator did not say which (`either_side`).

use crate::api::{Api, ApiError};
use clap::ValueEnum;

pub(crate) const SOURCE: &str = "/v1/replication/source-relationships";
pub(crate) const TARGET: &str = "/v1/replication/target-relationships";
pub(crate) const STATUS: &str = "/v1/replication/status";

/// Which node's view of a relationship: the one it replicates from or the one it replicates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Source,
    Target,
}

impl Role {
    pub(crate) fn base(self) -> &'static str {
        match self {
            Role::Source => SOURCE,
            Role::Target => TARGET,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Target => "target",
        }
    }
}

/// Full id from a prefix, so the 8 digits the table shows are enough to name a relationship.
pub(crate) fn full_id(api: &Api, role: Option<Role>, id: &str) -> Result<String, ApiError> {
    let id = id.trim().to_ascii_lowercase();
    // Also keeps '/' and '?' out of the request path.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let message =
            format!("{id:?} is not a relationship id (32 hex digits, or a prefix of them)");
        return Err(ApiError::Local {
            status: 400,
            message,
        });
    }
    if id.len() >= 32 {
        return Ok(id);
    }
    let side = role.map_or(String::new(), |r| format!("{} ", r.name()));
    let list = api.get(role.map_or(STATUS, Role::base))?;
    let mut ids: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("id")?.as_str())
        .filter(|i| i.starts_with(&id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(ApiError::Local {
            status: 404,
            message: format!("no {side}relationship id starts with {id}"),
        }),
        many => {
            let message = format!(
                "id prefix {id} is ambiguous: it matches {}; give more digits",
                many.join(", ")
            );
            Err(ApiError::Local {
                status: 400,
                message,
            })
        }
    }
}

/// Runs `f` on the given side, or without one on the source and then, if the source side does
/// not have it (404) or may not be read (403), on the target. When both fail the more telling
/// error wins: "not permitted" says more than "not found" about a side the token cannot see.
pub(crate) fn either_side<T>(
    role: Option<Role>,
    mut f: impl FnMut(Role) -> Result<T, ApiError>,
) -> Result<(Role, T), ApiError> {
    if let Some(r) = role {
        return f(r).map(|t| (r, t));
    }
    let src_err = match f(Role::Source) {
        Ok(t) => return Ok((Role::Source, t)),
        Err(e) if matches!(e.status(), Some(403 | 404)) => e,
        Err(e) => return Err(e),
    };
    match f(Role::Target) {
        Ok(t) => Ok((Role::Target, t)),
        Err(e) if matches!(e.status(), Some(403 | 404)) => {
            // Both answers matter to the operator ("no such source" and "may not read targets").
            let status = if e.status() == Some(404) {
                src_err.status()
            } else {
                e.status()
            };
            Err(ApiError::Local {
                status: status.unwrap_or(404),
                message: format!("source side: {src_err}; target side: {e}"),
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> ApiError {
        ApiError::Status {
            status: s,
            method: "GET",
            path: "/p".into(),
            message: format!("{s}"),
        }
    }

    #[test]
    fn either_side_falls_back_to_the_target_on_404_or_403() {
        let answer = |src: Option<u16>, tgt: Option<u16>| {
            either_side(None, |r| match if r == Role::Source { src } else { tgt } {
                None => Ok(r.name()),
                Some(s) => Err(status(s)),
            })
            .map(|(_, n)| n)
            .map_err(|e| e.status())
        };
        assert_eq!(answer(None, Some(500)), Ok("source"));
        assert_eq!(answer(Some(404), None), Ok("target"));
        assert_eq!(answer(Some(403), None), Ok("target"));
        assert_eq!(answer(Some(404), Some(404)), Err(Some(404)));
        assert_eq!(answer(Some(404), Some(403)), Err(Some(403)));
        assert_eq!(
            answer(Some(403), Some(404)),
            Err(Some(403)),
            "the source may have it; the token cannot tell"
        );
        assert_eq!(
            answer(Some(502), None),
            Err(Some(502)),
            "a failing daemon is not a missing relationship"
        );
        assert_eq!(
            either_side(Some(Role::Target), Ok::<_, ApiError>)
                .map(|(r, _)| r)
                .ok(),
            Some(Role::Target)
        );
    }

    #[test]
    fn ids_must_be_hex() {
        let api = Api::new("http://127.0.0.1:1", Some("x".into()));
        let full = "4f0c1a2b3c4d5e6f708192a3b4c5d6e7";
        assert_eq!(
            full_id(&api, None, &full.to_uppercase()).ok().as_deref(),
            Some(full)
        );
        for bad in ["", "../tokens", "4f0c?x=1"] {
            assert_eq!(
                full_id(&api, None, bad).err().and_then(|e| e.status()),
                Some(400),
                "{bad}"
            );
        }
    }
}
