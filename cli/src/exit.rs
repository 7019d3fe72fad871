//! Exit codes that mean something to scripts (listed in `mover --help`).

use crate::api::ApiError;
use mover::wire::message::ErrorCode;
use mover::Error;

pub const UNEXPECTED: i32 = 1;
/// Arguments that cannot work here (clap also exits 2 for bad syntax), such as a snapshot
/// provider the file system does not have.
pub const USAGE: i32 = 2;
pub const VERIFY: i32 = 3;
pub const PROTOCOL: i32 = 4;
pub const IO: i32 = 5;
pub const SOURCE_CHANGED: i32 = 6;
/// The daemon refused the token (401/403), or no token was given.
pub const NOT_PERMITTED: i32 = 7;
/// No such relationship or token (404).
pub const NOT_FOUND: i32 = 8;
/// The request was refused as invalid (400) or conflicting with the relationship's state (409).
pub const REFUSED: i32 = 9;
/// The daemon could not be reached, failed (5xx) or could not reach its peer (502).
pub const DAEMON: i32 = 10;
/// The target file system is full; the receiver reverted the job to its last recovery point.
pub const TARGET_FULL: i32 = 11;
/// The destination is in use by another receiver, or the receiver is busy with a session.
pub const BUSY: i32 = 12;
/// The destination's state (recovery point, journal) cannot be used or undone as recorded.
pub const STATE: i32 = 13;

/// A receive session that ended without verifying; carries the session's error text.
#[derive(Debug)]
pub struct SessionFailed(pub String);

impl std::fmt::Display for SessionFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session failed: {}", self.0)
    }
}

impl std::error::Error for SessionFailed {}

pub fn code(e: &anyhow::Error) -> i32 {
    if let Some(a) = e.downcast_ref::<ApiError>() {
        return api_code(a);
    }
    if e.downcast_ref::<SessionFailed>().is_some() {
        return VERIFY;
    }
    let Some(e) = e.downcast_ref::<Error>() else {
        return UNEXPECTED;
    };
    match e {
        Error::Verify(_) => VERIFY,
        Error::Peer {
            code: ErrorCode::DiskFull,
            ..
        } => TARGET_FULL,
        Error::Busy(_)
        | Error::Peer {
            code: ErrorCode::Busy,
            ..
        } => BUSY,
        Error::Wire(_)
        | Error::Structure(_)
        | Error::Peer { .. }
        | Error::Refused { .. }
        | Error::PeerLost(_)
        | Error::Fenced(_) => PROTOCOL,
        Error::Io { .. } => IO,
        Error::SourceChanged { .. } => SOURCE_CHANGED,
        Error::Corrupt(_) | Error::Revert(_) => STATE,
        Error::Unsupported(_) => USAGE,
        Error::Limit(_) | Error::Pinning { .. } | Error::Panicked(_) | Error::Cancelled(_) => {
            UNEXPECTED
        }
    }
}

pub fn api_code(e: &ApiError) -> i32 {
    match e {
        ApiError::NoToken => NOT_PERMITTED,
        ApiError::Unreachable { .. } | ApiError::BadAnswer { .. } => DAEMON,
        ApiError::Status { status, .. } | ApiError::Local { status, .. } => match status {
            401 | 403 => NOT_PERMITTED,
            404 => NOT_FOUND,
            // Other 4xx (405, 415, 422...) also mean "this request is not acceptable".
            400..=499 => REFUSED,
            // 5xx and anything unexpected (a 3xx from a proxy): the daemon side failed.
            _ => DAEMON,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> anyhow::Error {
        ApiError::Status {
            status: s,
            method: "GET",
            path: "/v1/x".into(),
            message: "m".into(),
        }
        .into()
    }

    #[test]
    fn api_errors_map_to_their_exit_codes() {
        let cases = [
            (401, 7),
            (403, 7),
            (404, 8),
            (400, 9),
            (409, 9),
            (422, 9),
            (500, 10),
            (502, 10),
            (503, 10),
        ];
        for (s, c) in cases {
            assert_eq!(code(&status(s)), c, "HTTP {s}");
        }
        assert_eq!(code(&ApiError::NoToken.into()), NOT_PERMITTED);
        assert_eq!(
            code(
                &ApiError::Local {
                    status: 404,
                    message: "no id starts with ab".into()
                }
                .into()
            ),
            NOT_FOUND
        );
        assert_eq!(
            code(
                &ApiError::Unreachable {
                    url: "u".into(),
                    detail: "d".into()
                }
                .into()
            ),
            DAEMON
        );
        assert_eq!(
            code(
                &ApiError::BadAnswer {
                    url: "u".into(),
                    detail: "d".into()
                }
                .into()
            ),
            DAEMON
        );
    }

    #[test]
    fn data_plane_errors_map_to_their_exit_codes() {
        let peer = |code| Error::Peer {
            code,
            message: "m".into(),
        };
        let cases: Vec<(Error, i32)> = vec![
            (peer(ErrorCode::DiskFull), TARGET_FULL),
            (peer(ErrorCode::Busy), BUSY),
            (peer(ErrorCode::Other), PROTOCOL),
            (Error::Busy("root in use".into()), BUSY),
            (Error::Verify("v".into()), VERIFY),
            (
                Error::SourceChanged {
                    message: "s".into(),
                    paths: Vec::new(),
                },
                SOURCE_CHANGED,
            ),
            (Error::Corrupt("c".into()), STATE),
            (Error::Unsupported("u".into()), USAGE),
            (Error::PeerLost("p".into()), PROTOCOL),
        ];
        for (e, c) in cases {
            let shown = e.to_string();
            assert_eq!(code(&anyhow::Error::from(e)), c, "{shown}");
        }
    }

    #[test]
    fn context_does_not_hide_the_api_error() {
        let e = status(404).context("showing relationship ab12");
        assert_eq!(code(&e), NOT_FOUND);
        assert_eq!(code(&anyhow::anyhow!("other")), UNEXPECTED);
    }
}
