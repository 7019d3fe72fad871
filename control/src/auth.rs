//! API tokens, roles and privileges. A token is 128 random bits shown once; the node stores
//! only its SHA-256, so a copied database does not give API access. Each token has one role
//! and a role is a fixed set of privileges, checked before a request touches anything.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Privilege {
    SourceRead,
    SourceWrite,
    TargetRead,
    TargetWrite,
    Admin,
}

impl Privilege {
    pub fn name(self) -> &'static str {
        match self {
            Privilege::SourceRead => "SOURCE_READ",
            Privilege::SourceWrite => "SOURCE_WRITE",
            Privilege::TargetRead => "TARGET_READ",
            Privilege::TargetWrite => "TARGET_WRITE",
            Privilege::Admin => "ADMIN",
        }
    }
}

/// In JSON its name; read through [`TokenRole::parse`], so a refusal says the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum TokenRole {
    Admin,
    SourceOperator,
    TargetOperator,
    Observer,
}

impl TokenRole {
    pub const ALL: [TokenRole; 4] = [
        TokenRole::Admin,
        TokenRole::SourceOperator,
        TokenRole::TargetOperator,
        TokenRole::Observer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::SourceOperator => "source-operator",
            TokenRole::TargetOperator => "target-operator",
            TokenRole::Observer => "observer",
        }
    }

    pub fn parse(s: &str) -> Result<TokenRole> {
        TokenRole::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown role {s:?}: one of admin, source-operator, target-operator, observer"
                ))
            })
    }

    pub fn has(self, p: Privilege) -> bool {
        use Privilege::*;
        match self {
            TokenRole::Admin => true,
            TokenRole::SourceOperator => matches!(p, SourceRead | SourceWrite),
            TokenRole::TargetOperator => matches!(p, TargetRead | TargetWrite),
            TokenRole::Observer => matches!(p, SourceRead | TargetRead),
        }
    }
}

impl TryFrom<String> for TokenRole {
    type Error = Error;
    fn try_from(s: String) -> Result<TokenRole> {
        TokenRole::parse(&s)
    }
}

/// Token names: short, printable, no spaces (they appear in logs and URLs).
pub const MAX_TOKEN_NAME: usize = 64;

pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_TOKEN_NAME
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
    {
        return Err(Error::Invalid(format!("token name must be 1-{MAX_TOKEN_NAME} characters of letters, digits, '-', '_' or '.', not {name:?}")));
    }
    Ok(())
}

/// A new secret: "mvr_" and 32 hex digits from the kernel's random source.
pub fn new_token() -> Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::Invalid("no random source".into()))?;
    Ok(format!("mvr_{}", hex(&b)))
}

pub fn hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_carry_exactly_their_privileges() {
        use Privilege::*;
        let all = [SourceRead, SourceWrite, TargetRead, TargetWrite, Admin];
        let granted = |r: TokenRole| {
            all.iter()
                .filter(|p| r.has(**p))
                .map(|p| p.name())
                .collect::<Vec<_>>()
        };
        assert_eq!(granted(TokenRole::Admin).len(), 5);
        assert_eq!(
            granted(TokenRole::SourceOperator),
            ["SOURCE_READ", "SOURCE_WRITE"]
        );
        assert_eq!(
            granted(TokenRole::TargetOperator),
            ["TARGET_READ", "TARGET_WRITE"]
        );
        assert_eq!(granted(TokenRole::Observer), ["SOURCE_READ", "TARGET_READ"]);
        assert_eq!(TokenRole::parse("observer").unwrap(), TokenRole::Observer);
        assert!(TokenRole::parse("root")
            .unwrap_err()
            .to_string()
            .contains("unknown role"));
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("mvr_") && a.len() == 36);
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
        assert!(!hash(&a).contains(&a[4..]));
        assert!(
            check_name("ops-ro").is_ok() && check_name("a b").is_err() && check_name("").is_err()
        );
    }
}
