//! Which parts of the daemon a process runs (`mover daemon --roles`). `all`, the default, is
//! one process with everything: the single-node deployment. Split, a node runs containers
//! that restart alone (`supervisor`, `mover node run`):
//! - `api`: the REST API, UI and metrics as an HTTP front that forwards every request to the
//!   control container over its local socket (`CONTROL_SOCKET` in the data dir), so the API
//!   restarts (or is upgraded) while jobs go on;
//! - `control` and `data`: relationships, scheduling, the peer port and the data-plane
//!   sessions. In this release the data plane runs inside the control container, so the two
//!   are named together (`--roles control,data`); a data container of its own is the next step
//!   of cluster mode (ARCHITECTURE.md).

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The control container's API socket, in the data dir, when the API runs apart.
pub const CONTROL_SOCKET: &str = "control.sock";

/// The parts one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub control: bool,
    pub data: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        control: true,
        data: true,
    };
    /// The API front alone.
    pub const API: Roles = Roles {
        api: true,
        control: false,
        data: false,
    };
    /// Control with its data plane, the API served apart.
    pub const CONTROL_DATA: Roles = Roles {
        api: false,
        control: true,
        data: true,
    };

    pub fn is_all(self) -> bool {
        self == Roles::ALL
    }

    /// The role names, as the cluster membership and container status show them.
    pub fn names(self) -> Vec<String> {
        if self.is_all() {
            return vec!["all".into()];
        }
        [
            ("data", self.data),
            ("control", self.control),
            ("api", self.api),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n.to_string())
        .collect()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl FromStr for Roles {
    type Err = Error;

    fn from_str(s: &str) -> Result<Roles> {
        let mut r = Roles {
            api: false,
            control: false,
            data: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "all" => r = Roles::ALL,
                "api" => r.api = true,
                "control" => r.control = true,
                "data" => r.data = true,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown role {other:?}: roles are all, or a list of data, control, api"
                    )))
                }
            }
        }
        if r.control != r.data {
            return Err(Error::Invalid(format!(
                "roles {s:?}: the data plane runs inside the control container in this \
                 release; name control and data together (--roles control,data), and api \
                 apart or with them"
            )));
        }
        if !(r.api || r.control) {
            return Err(Error::Invalid(
                "no role given: --roles all, api or control,data".into(),
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_splits_a_node_runs_and_refuses_the_rest_with_why() {
        assert_eq!("all".parse::<Roles>().unwrap(), Roles::ALL);
        assert_eq!("data,control,api".parse::<Roles>().unwrap(), Roles::ALL);
        assert_eq!("api".parse::<Roles>().unwrap(), Roles::API);
        assert_eq!(
            " control , data".parse::<Roles>().unwrap(),
            Roles::CONTROL_DATA
        );
        assert_eq!(Roles::CONTROL_DATA.to_string(), "data,control");
        assert_eq!(Roles::ALL.to_string(), "all");
        for bad in ["", "data", "control", "api,data", "disk"] {
            let e = bad.parse::<Roles>().unwrap_err().to_string();
            assert!(e.contains("role"), "{bad:?}: {e}");
        }
        for r in [Roles::ALL, Roles::API, Roles::CONTROL_DATA] {
            assert_eq!(r.to_string().parse::<Roles>().unwrap(), r);
        }
    }
}
