//! `mover relationship unreadable` and `mover relationship forget`: the stored relationships
//! this node's release cannot read (a setting a later release stored, a damaged row), listed
//! apart from the others with why, and forgotten one by one when neither upgrading again nor
//! restoring the state database is possible (docs/api.md "Unreadable relationships").

use crate::api::{Api, ApiArgs};
use crate::view::print_json;
use anyhow::{Context, Result};
use serde_json::Value;

const UNREADABLE: &str = "/v1/replication/unreadable";

/// The unreadable relationships the token may see; an older daemon without the endpoint has
/// none to show (its lists fail on such a row instead).
pub(crate) fn fetch(api: &Api) -> Vec<Value> {
    api.get(UNREADABLE)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// After a relationship list (of `role`, or of both): says on stderr what it could not show.
pub(crate) fn warn(api: &Api, role: Option<&str>) {
    let all: Vec<Value> = fetch(api)
        .into_iter()
        .filter(|u| role.is_none_or(|r| u["role"] == r))
        .collect();
    if !all.is_empty() {
        eprintln!(
            "mover: {} stored relationship(s) cannot be read by this node's release and are not \
             listed: see `mover relationship unreadable`",
            all.len()
        );
    }
}

pub(crate) fn list(api: &ApiArgs) -> Result<()> {
    let v = api
        .client()
        .get(UNREADABLE)
        .context("listing unreadable relationships")?;
    if api.json {
        return print_json(&v);
    }
    let all = v.as_array().cloned().unwrap_or_default();
    if all.is_empty() {
        println!("every stored relationship this token may read is readable");
        return Ok(());
    }
    for u in &all {
        let text = |k: &str| u[k].as_str().unwrap_or("-").to_string();
        println!("{}  {}  {}", text("id"), text("role"), text("error"));
    }
    Ok(())
}

pub(crate) fn forget(id: &str, api: &ApiArgs) -> Result<()> {
    let path = format!("{UNREADABLE}/{}", encode(id));
    api.client()
        .delete(&path)
        .with_context(|| format!("forgetting relationship {id:?}"))?;
    if api.json {
        return print_json(&serde_json::json!({ "forgotten": id }));
    }
    println!("forgot relationship {id} on this node; nothing of it was released (see docs/api.md)");
    Ok(())
}

/// `id` as one path segment: a damaged id may hold any character.
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_damaged_id_is_one_path_segment() {
        assert_eq!(super::encode("0123abcd"), "0123abcd");
        assert_eq!(super::encode("../x y"), "..%2Fx%20y");
    }
}
