//! Which parts of the daemon a process runs (`mover daemon --roles`). `all`, the default, is
//! one process with everything: the single-node deployment. Split, a node runs containers
//! that restart alone (`supervisor`, `mover node run`):
//! - `api`: the REST API, UI and metrics as an HTTP front that forwards every request to the
//!   control container over its local socket (`CONTROL_SOCKET` in the data dir), so the API
//!   restarts (or is upgraded) while jobs go on;
//! - `control`: relationships, scheduling, authorization and the peer port;
//! - `data`: the data plane, the sessions, shares and receivers the control container hands
//!   it over `data_wire::DATA_SOCKET` (`data_server`). A control container without the data
//!   role sends and receives through it; `--roles control,data` runs both in one process.

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
    /// The data plane alone: the node's sessions, shares and receivers, run for the control
    /// container over `data_wire::DATA_SOCKET`.
    pub const DATA: Roles = Roles {
        api: false,
        control: false,
        data: true,
    };
    /// Control with the data plane in a container of its own and the API served apart.
    pub const CONTROL: Roles = Roles {
        api: false,
        control: true,
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
        if r.data && r.api && !r.control {
            return Err(Error::Invalid(format!(
                "roles {s:?}: the API forwards to a control container; run data alone, or \
                 with control"
            )));
        }
        if !(r.api || r.control || r.data) {
            return Err(Error::Invalid(
                "no role given: --roles all, or a list of data, control, api".into(),
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
        assert_eq!("data".parse::<Roles>().unwrap(), Roles::DATA);
        assert_eq!("control".parse::<Roles>().unwrap(), Roles::CONTROL);
        for bad in ["", "api,data", "disk"] {
            let e = bad.parse::<Roles>().unwrap_err().to_string();
            assert!(e.contains("role"), "{bad:?}: {e}");
        }
        for r in [
            Roles::ALL,
            Roles::API,
            Roles::CONTROL_DATA,
            Roles::DATA,
            Roles::CONTROL,
        ] {
            assert_eq!(r.to_string().parse::<Roles>().unwrap(), r);
        }
    }
}
