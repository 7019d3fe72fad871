//! `mover token ...`: API tokens of this node's daemon (admin only). The daemon stores only a
//! hash of each token, so `create` is the one chance to see and keep it. On a cluster a token
//! is the cluster's (valid on every node) unless made with `--scope node`.

use crate::api::ApiArgs;
use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Subcommand;
use control::api_types::{NewToken, TokenScope};
use control::auth::TokenRole;
use serde_json::{json, Value};

const TOKENS: &str = "/v1/tokens";

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token and print it (this is the only time it is shown).
    #[command(
        long_about = "Create a token and print it; the daemon keeps only its hash, so this is the \
only time it is shown.\n\nRoles: admin (everything), source-operator (read and change source \
relationships), target-operator (read and change target relationships, authorize), observer (read \
both sides).\n\nExample:\n  mover token create --name ops-ro --role observer --token \"$(cat /var/lib/mover/admin.token)\""
    )]
    Create {
        /// Name to list and delete the token by.
        #[arg(long)]
        name: String,
        /// What the token may do.
        #[arg(long, value_parser = role_parser())]
        role: TokenRole,
        /// node: valid on this node only (kept in its database, works while etcd is away);
        /// cluster: kept in etcd, valid on every node of the cluster. Default: cluster on a
        /// node in a cluster, node otherwise.
        #[arg(long, value_parser = scope_parser())]
        scope: Option<TokenScope>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List token names and roles (the tokens themselves are not stored).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a token; requests carrying it are refused from then on.
    Delete {
        name: String,
        /// Which token, when a node token and a cluster token share the name.
        #[arg(long, value_parser = scope_parser())]
        scope: Option<TokenScope>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A role by name; the names are the control crate's, listed in `--help`.
fn role_parser() -> impl TypedValueParser<Value = TokenRole> {
    PossibleValuesParser::new(TokenRole::ALL.map(TokenRole::name))
        .try_map(|name| TokenRole::parse(&name))
}

fn scope_parser() -> impl TypedValueParser<Value = TokenScope> {
    PossibleValuesParser::new(["node", "cluster"]).map(|s| match s.as_str() {
        "cluster" => TokenScope::Cluster,
        _ => TokenScope::Node,
    })
}

fn field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

pub fn run(cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            name,
            role,
            scope,
            api,
        } => {
            let body = NewToken {
                name: name.clone(),
                role,
                scope,
            };
            let v = api
                .client()
                .post(TOKENS, &body)
                .with_context(|| format!("creating token {name}"))?;
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                // The token alone on stdout so `TOKEN=$(mover token create ...)` works; the
                // reminder goes to stderr.
                println!("{}", field(&v, "token"));
                eprintln!(
                    "mover: created {} token {} with role {}; store it now, it cannot be shown again",
                    field(&v, "scope"),
                    field(&v, "name"),
                    field(&v, "role")
                );
            }
        }
        TokenCmd::List { api } => {
            let v = api.client().get(TOKENS).context("listing tokens")?;
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(());
            }
            let list = v.as_array().cloned().unwrap_or_default();
            let w = list
                .iter()
                .map(|t| field(t, "name").len())
                .chain([4])
                .max()
                .unwrap_or(4);
            println!("{:<w$}  {:<16}  SCOPE", "NAME", "ROLE");
            for t in &list {
                println!(
                    "{:<w$}  {:<16}  {}",
                    field(t, "name"),
                    field(t, "role"),
                    field(t, "scope")
                );
            }
        }
        TokenCmd::Delete { name, scope, api } => {
            let which = scope.map_or(String::new(), |s| format!("?scope={}", s.name()));
            api.client()
                .delete(&format!("{TOKENS}/{}{which}", path_segment(&name)))
                .with_context(|| format!("deleting token {name}"))?;
            if api.json {
                println!("{}", json!({ "name": name, "deleted": true }));
            } else {
                println!("deleted token {name}");
            }
        }
    }
    Ok(())
}

/// Percent-encodes a name for use as one path segment, so a name with '/' or '?' cannot
/// address another resource.
fn path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_become_single_path_segments() {
        assert_eq!(super::path_segment("ops-ro_1.x"), "ops-ro_1.x");
        assert_eq!(super::path_segment("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
