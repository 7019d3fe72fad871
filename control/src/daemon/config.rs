//! The daemon's settings: command-line flags over a TOML file (`/etc/mover/mover.toml` when it
//! exists) over defaults; plus the two small pieces of process plumbing the daemon needs
//! (systemd readiness, private files).

use crate::error::IoContext;
use crate::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG: &str = "/etc/mover/mover.toml";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3712";
pub const DEFAULT_API: &str = "127.0.0.1:3713";
/// Pause between the end of one continuous-replication job and the start of the next.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Settle delay of event-driven jobs by default: long enough to gather a burst of writes
/// (an editor's save, an untar's directory) into one job, short next to a second of RPO.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(100);
/// Upper bound for `settle_ms`.
pub const MAX_SETTLE_MS: u64 = 60_000;
/// With events, the longest time without any job before a full walk (a safety net under
/// the watch; scrubs check the target).
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(3600);
/// A blackout pause longer than this ends the session at its chunk boundary and the job goes
/// on in a new session after the window: receivers give up on a connection silent for 60 s
/// (`mover::receiver`), so a paused session cannot be held open for long.
pub const DEFAULT_MAX_PAUSE_IN_SESSION: Duration = Duration::from_secs(40);
/// Upper bound for `max_pause_in_session_secs`, well inside the receivers' 60 s.
pub const MAX_PAUSE_IN_SESSION_LIMIT: u64 = 50;
// A paused session must end before the receiver's workers give up on its silent connections.
const _: () = assert!(MAX_PAUSE_IN_SESSION_LIMIT < mover::STALL_TIMEOUT.as_secs());
/// How often a target's receiver scrubs it (a full verifying walk against its recovery point)
/// by default; `scrub_interval_secs = 0` turns scrubs off.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Largest config file read (it is a handful of keys).
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// What `mover daemon` runs with, all defaults resolved.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    /// Peer (replication) port: other daemons connect here over mutual TLS; data-plane
    /// receivers bind to the same address on ephemeral ports.
    pub listen: SocketAddr,
    /// REST API address (plain HTTP only on loopback; elsewhere `api_tls` is required).
    pub api: SocketAddr,
    pub continuous_interval: Duration,
    /// Data-plane worker threads per job.
    pub threads: usize,
    /// Longest blackout pause a session is held open for (DEFAULT_MAX_PAUSE_IN_SESSION).
    pub max_pause_in_session: Duration,
    /// Directories a source path must be in (or be); `None`: anywhere but the system
    /// directories (`SYSTEM_DIRS`).
    pub allowed_source_roots: Option<Vec<PathBuf>>,
    /// Run data-plane sessions in clear (checksummed, not encrypted): for trusted networks
    /// only, and only with a peer that is set the same way.
    pub insecure_plaintext: bool,
    /// Serve the REST API over TLS; required for an API address off loopback.
    pub api_tls: Option<ApiTls>,
    /// How often each target is scrubbed; `None`: never.
    pub scrub_interval: Option<Duration>,
    /// How source changes start jobs: events (fanotify, inotify) or the interval.
    pub change_detection: super::watch::Detection,
    /// Events are gathered this long after the last one before a job starts.
    pub settle: Duration,
    /// With events, a job that walks the whole tree after this long without any job.
    pub rescan_interval: Duration,
    /// Changed directories remembered between jobs at most; past it the next job walks all.
    pub watch_max_dirs: usize,
    /// The etcd cluster this node joins (`--cluster`); `None`: a single node on its own.
    pub cluster: Option<crate::cluster::Options>,
    /// What this process runs (`--roles`; `all` by default: the single-node daemon).
    pub roles: super::roles::Roles,
}

/// The certificate the REST API presents over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// The node's own certificate (`node.crt`; its name is `mover-node`).
    NodeCertificate,
    /// A certificate and key given as PEM files (for the names clients use).
    Files { cert: PathBuf, key: PathBuf },
}

/// Where a source path may not be (nor hold one of them, as `/` does) unless
/// `allowed_source_roots` names it: the node's configuration and secrets (/etc, /root), its
/// software, and pseudo file systems (/proc, /sys, /dev, /run).
pub const SYSTEM_DIRS: [&str; 14] = [
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root",
    "/run", "/sbin", "/sys", "/usr",
];
/// Most entries in `allowed_source_roots` (bounded like every setting).
pub const MAX_SOURCE_ROOTS: usize = 64;

impl DaemonOptions {
    /// Whether relationships may replicate from `source` (a canonical path): in one of the
    /// allowed roots, or by default anywhere but the system directories. The data dir is never
    /// allowed (checked apart: it holds the node's key and tokens).
    pub fn source_allowed(&self, source: &Path) -> Result<()> {
        // Roots are compared canonical too (/lib may be /usr/lib, /var/run is /run).
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        match &self.allowed_source_roots {
            Some(roots) => {
                if roots.iter().any(|r| source.starts_with(canon(r))) {
                    return Ok(());
                }
                let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
                Err(Error::Invalid(format!(
                    "source path {} is not in the allowed_source_roots of this node ({})",
                    source.display(),
                    list.join(", ")
                )))
            }
            None => {
                let system = SYSTEM_DIRS.iter().map(Path::new).find(|d| {
                    let d = canon(d);
                    source.starts_with(&d) || d.starts_with(source)
                });
                match system {
                    None => Ok(()),
                    Some(d) => Err(Error::Invalid(format!(
                        "source path {} is or holds the system directory {}; to replicate it, name it in allowed_source_roots (mover.toml) or --allowed-source-root",
                        source.display(),
                        d.display()
                    ))),
                }
            }
        }
    }
}

/// The TOML file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub continuous_interval_secs: Option<u64>,
    pub threads: Option<usize>,
    pub max_pause_in_session_secs: Option<u64>,
    pub allowed_source_roots: Option<Vec<PathBuf>>,
    pub insecure_plaintext: Option<bool>,
    pub api_tls: Option<bool>,
    pub api_cert: Option<PathBuf>,
    pub api_key: Option<PathBuf>,
    pub scrub_interval_secs: Option<u64>,
    pub change_detection: Option<super::watch::Detection>,
    pub settle_ms: Option<u64>,
    pub rescan_interval_secs: Option<u64>,
    pub watch_max_dirs: Option<usize>,
    /// `etcd://HOST:PORT[,HOST:PORT...]`
    pub cluster: Option<String>,
    pub node_name: Option<String>,
    /// `all`, or a list of `data`, `control`, `api`.
    pub roles: Option<String>,
    /// Cluster only: spread this node's jobs over the members that also set it.
    pub spread_jobs: Option<bool>,
    /// Cluster only: spread the writes of this node's target relationships over the members
    /// that also set it.
    pub spread_writes: Option<bool>,
}

impl ConfigFile {
    /// Reads `path`; `explicit` means the operator named it, so a missing file is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<ConfigFile> {
        use std::io::Read;
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(ConfigFile::default())
            }
            Err(e) => {
                return Err(Error::Io {
                    context: format!("reading config {}", path.display()),
                    source: e,
                })
            }
        };
        let mut text = String::new();
        f.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .ctx(|| format!("reading config {}", path.display()))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(Error::Invalid(format!(
                "config {} is larger than {MAX_CONFIG_BYTES} bytes",
                path.display()
            )));
        }
        toml::from_str(&text).map_err(|e| Error::Invalid(format!("config {}: {e}", path.display())))
    }
}

/// The settings given as command-line flags (`None` or empty: not given).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub allowed_source_roots: Vec<PathBuf>,
    pub insecure_plaintext: bool,
    pub api_tls: bool,
    pub api_cert: Option<PathBuf>,
    pub api_key: Option<PathBuf>,
    pub cluster: Option<String>,
    pub node_name: Option<String>,
    pub roles: Option<String>,
    pub spread_jobs: bool,
    pub spread_writes: bool,
}

/// Flags win over the file, the file over defaults.
pub fn resolve(file: ConfigFile, flags: Flags) -> Result<DaemonOptions> {
    let Flags {
        data_dir,
        listen,
        api,
        allowed_source_roots,
        insecure_plaintext,
        api_tls,
        api_cert,
        api_key,
        cluster,
        node_name,
        roles,
        spread_jobs,
        spread_writes,
    } = flags;
    let spread = spread_jobs || file.spread_jobs.unwrap_or(false);
    let writes = spread_writes || file.spread_writes.unwrap_or(false);
    let roles = match roles.or(file.roles) {
        Some(r) => r.parse()?,
        None => super::roles::Roles::ALL,
    };
    let data_dir = data_dir.or(file.data_dir).ok_or_else(|| {
        Error::Invalid("no data dir: pass --data-dir or set data_dir in the config file".into())
    })?;
    let parse = |s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| Error::Invalid(format!("{s}: {e}")))
    };
    let interval = file
        .continuous_interval_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_INTERVAL);
    let threads = file.threads.unwrap_or_else(mover::default_threads);
    if threads == 0 || threads > mover::wire::message::MAX_WORKERS as usize {
        return Err(Error::Invalid(format!(
            "threads must be 1-{}",
            mover::wire::message::MAX_WORKERS
        )));
    }
    let max_pause = file
        .max_pause_in_session_secs
        .map_or(DEFAULT_MAX_PAUSE_IN_SESSION, Duration::from_secs);
    if max_pause.is_zero() || max_pause.as_secs() > MAX_PAUSE_IN_SESSION_LIMIT {
        return Err(Error::Invalid(format!(
            "max_pause_in_session_secs must be 1-{MAX_PAUSE_IN_SESSION_LIMIT}"
        )));
    }
    let roots = Some(allowed_source_roots)
        .filter(|r| !r.is_empty())
        .or(file.allowed_source_roots);
    if let Some(r) = &roots {
        if r.is_empty() || r.len() > MAX_SOURCE_ROOTS || r.iter().any(|p| !p.is_absolute()) {
            return Err(Error::Invalid(format!(
                "allowed_source_roots must be 1-{MAX_SOURCE_ROOTS} absolute paths"
            )));
        }
    }
    let api = api.or(file.api).map_or_else(|| parse(DEFAULT_API), Ok)?;
    let api_tls = match (api_cert.or(file.api_cert), api_key.or(file.api_key)) {
        (Some(cert), Some(key)) => Some(ApiTls::Files { cert, key }),
        (None, None) if api_tls || file.api_tls.unwrap_or(false) => Some(ApiTls::NodeCertificate),
        (None, None) => None,
        _ => {
            return Err(Error::Invalid(
                "api_cert and api_key go together (a certificate and its private key)".into(),
            ))
        }
    };
    if api_tls.is_none() && !api.ip().is_loopback() {
        return Err(Error::Invalid(format!(
            "the REST API on {api} would be plain HTTP off loopback: serve it over TLS \
             (--api-tls, or api_cert and api_key), or bind it to 127.0.0.1"
        )));
    }
    let settle = Duration::from_millis(file.settle_ms.unwrap_or(DEFAULT_SETTLE.as_millis() as u64));
    if settle.as_millis() as u64 > MAX_SETTLE_MS {
        return Err(Error::Invalid(format!(
            "settle_ms must be 0-{MAX_SETTLE_MS}"
        )));
    }
    let watch_max_dirs = file
        .watch_max_dirs
        .unwrap_or(mover::watch::MAX_CHANGED_DIRS);
    if watch_max_dirs == 0 || watch_max_dirs > mover::watch::MAX_CHANGED_DIRS {
        return Err(Error::Invalid(format!(
            "watch_max_dirs must be 1-{}",
            mover::watch::MAX_CHANGED_DIRS
        )));
    }
    let cluster = match cluster.or(file.cluster) {
        None if spread => {
            return Err(Error::Invalid(
                "--spread-jobs spreads jobs over a cluster's members: it needs --cluster".into(),
            ))
        }
        None if writes => {
            return Err(Error::Invalid(
                "--spread-writes spreads a target's writes over a cluster's members: it needs \
                 --cluster"
                    .into(),
            ))
        }
        // A receiver in a data container has no cluster client to hand shares with.
        Some(_) if writes && !roles.is_all() => {
            return Err(Error::Invalid(
                "--spread-writes needs the daemon in one process (roles all): receivers in a \
                 data container take no write places"
                    .into(),
            ))
        }
        None => None,
        Some(url) => {
            let name = match node_name.or(file.node_name) {
                Some(n) => n,
                None => rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned(),
            };
            Some(crate::cluster::Options {
                endpoints: crate::cluster::parse_url(&url)?,
                name: crate::cluster::NodeName::try_from(name)?,
                spread,
                writes,
            })
        }
    };
    Ok(DaemonOptions {
        roles,
        cluster,
        change_detection: file
            .change_detection
            .unwrap_or(super::watch::Detection::Auto),
        settle,
        rescan_interval: match file.rescan_interval_secs {
            Some(0) | None => DEFAULT_RESCAN_INTERVAL,
            Some(s) => Duration::from_secs(s),
        },
        watch_max_dirs,
        data_dir,
        listen: listen
            .or(file.listen)
            .map_or_else(|| parse(DEFAULT_LISTEN), Ok)?,
        api,
        continuous_interval: interval,
        threads,
        max_pause_in_session: max_pause,
        allowed_source_roots: roots,
        insecure_plaintext: insecure_plaintext || file.insecure_plaintext.unwrap_or(false),
        api_tls,
        scrub_interval: match file.scrub_interval_secs {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => Some(DEFAULT_SCRUB_INTERVAL),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir(d: &str) -> Flags {
        Flags {
            data_dir: Some(d.into()),
            ..Default::default()
        }
    }

    #[test]
    fn system_directories_are_no_sources_unless_allowed_source_roots_names_them() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("mover.toml");
        let o = resolve(ConfigFile::default(), data_dir("/d")).unwrap();
        for sys in [
            "/etc",
            "/etc/ssh",
            "/root",
            "/proc",
            "/",
            "/usr/share",
            "/run",
        ] {
            let e = o.source_allowed(Path::new(sys)).unwrap_err().to_string();
            assert!(e.contains("allowed_source_roots"), "{sys}: {e}");
        }
        for fine in ["/srv/data", "/home/u", "/var/lib/app", "/tmp/x"] {
            o.source_allowed(Path::new(fine)).unwrap();
        }
        std::fs::write(
            &p,
            "data_dir = \"/d\"\nallowed_source_roots = [\"/etc\", \"/srv\"]\n",
        )
        .unwrap();
        let o = resolve(ConfigFile::load(&p, true).unwrap(), Flags::default()).unwrap();
        o.source_allowed(Path::new("/etc/app")).unwrap();
        o.source_allowed(Path::new("/srv")).unwrap();
        assert!(o.source_allowed(Path::new("/home/u")).is_err());
        assert!(o.source_allowed(Path::new("/srvx")).is_err());
        // Flags replace the file's list.
        let flags = Flags {
            allowed_source_roots: vec!["/home".into()],
            ..Default::default()
        };
        let o = resolve(ConfigFile::load(&p, true).unwrap(), flags).unwrap();
        o.source_allowed(Path::new("/home/u")).unwrap();
        assert!(o.source_allowed(Path::new("/etc/app")).is_err());
        std::fs::write(&p, "allowed_source_roots = [\"relative\"]\n").unwrap();
        assert!(resolve(ConfigFile::load(&p, true).unwrap(), data_dir("/d")).is_err());
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("mover.toml");
        std::fs::write(&p, "data_dir = \"/var/lib/mover\"\nlisten = \"127.0.0.1:4000\"\ncontinuous_interval_secs = 3\n").unwrap();
        let f = ConfigFile::load(&p, true).unwrap();
        let flags = Flags {
            api: Some("127.0.0.1:5000".parse().unwrap()),
            ..Default::default()
        };
        let o = resolve(f, flags).unwrap();
        assert_eq!(o.data_dir, PathBuf::from("/var/lib/mover"));
        assert_eq!(o.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(o.api.to_string(), "127.0.0.1:5000");
        assert_eq!(o.continuous_interval, Duration::from_secs(3));
        let o = resolve(ConfigFile::default(), data_dir("/d")).unwrap();
        assert_eq!(
            (o.listen.to_string(), o.api.to_string()),
            (DEFAULT_LISTEN.to_string(), DEFAULT_API.to_string())
        );
    }

    #[test]
    fn config_mistakes_are_named() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("mover.toml");
        std::fs::write(&p, "listen = \"nowhere\"\n").unwrap();
        assert!(ConfigFile::load(&p, true)
            .unwrap_err()
            .to_string()
            .contains("mover.toml"));
        std::fs::write(&p, "colour = 1\n").unwrap();
        assert!(ConfigFile::load(&p, true)
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        assert!(ConfigFile::load(&t.path().join("absent.toml"), true).is_err());
        assert!(ConfigFile::load(&t.path().join("absent.toml"), false).is_ok());
        assert!(resolve(ConfigFile::default(), Flags::default())
            .unwrap_err()
            .to_string()
            .contains("--data-dir"));
        let f = ConfigFile {
            max_pause_in_session_secs: Some(61),
            ..Default::default()
        };
        assert!(resolve(f, data_dir("/d"))
            .unwrap_err()
            .to_string()
            .contains("max_pause_in_session_secs"));
    }

    #[test]
    fn an_api_off_loopback_needs_tls_and_a_certificate_needs_its_key() {
        let off = |f: Flags| Flags {
            api: Some("0.0.0.0:3713".parse().unwrap()),
            ..f
        };
        let e = resolve(ConfigFile::default(), off(data_dir("/d"))).unwrap_err();
        assert!(e.to_string().contains("plain HTTP off loopback"), "{e}");
        let tls = Flags {
            api_tls: true,
            ..data_dir("/d")
        };
        let o = resolve(ConfigFile::default(), off(tls)).unwrap();
        assert_eq!(o.api_tls, Some(ApiTls::NodeCertificate));
        let file = ConfigFile {
            api_cert: Some("/c.pem".into()),
            api_key: Some("/k.pem".into()),
            ..Default::default()
        };
        let o = resolve(file, off(data_dir("/d"))).unwrap();
        assert_eq!(
            o.api_tls,
            Some(ApiTls::Files {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        let half = ConfigFile {
            api_cert: Some("/c.pem".into()),
            ..Default::default()
        };
        let e = resolve(half, data_dir("/d")).unwrap_err();
        assert!(e.to_string().contains("api_key"), "{e}");
        // Loopback stays plain HTTP by default.
        let o = resolve(ConfigFile::default(), data_dir("/d")).unwrap();
        assert_eq!(o.api_tls, None);
    }
}
