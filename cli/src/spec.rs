//! The flags of `mover relationship create/modify` and the request bodies they make (the
//! control crate's `NewRelationship` and `Edit`, which the daemon reads), with the parsers of
//! the compact syntaxes: blackout windows ("mon,fri 22:00-06:00 Europe/Berlin") and id-map
//! pairs ("1000:2000"). A flag of the wrong shape is a usage error; day names, times, zones and
//! fingerprints are judged by the control crate's own parsers, so the rules live in one place,
//! and a value they refuse fails the command as the daemon's 400 did (see [`Judged`]). Counts
//! and settings that depend on each other are the daemon's to judge.

use crate::api::{ApiArgs, ApiError};
use clap::{ArgGroup, Args};
use control::api_types::NewRelationship;
use control::blackout::BlackoutWindow;
use control::model::{Edit, IdMap, Mode, SnapshotChoice, Spec, TargetExpiry};
use control::policy::PolicyName;
use control::tls::Fingerprint;

const ALL_DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A flag value as the control crate judged it, or its words of refusal. The refusal waits
/// until the request is built and then fails the command as the daemon's 400 did (exit code 9),
/// before any request is sent.
pub type Judged<T> = Result<T, String>;

/// The refusal of a [`Judged`] value, as the daemon would have answered it.
fn refused(message: String) -> ApiError {
    ApiError::Local {
        status: 400,
        message,
    }
}

/// "DAYS START-END [TIMEZONE]" to a blackout window.
pub fn parse_blackout(spec: &str) -> Result<Judged<BlackoutWindow>, String> {
    const SHAPE: &str = "expected \"DAYS START-END [TIMEZONE]\", e.g. \"mon,tue,fri 22:00-06:00 Europe/Berlin\" or \"weekends 00:00-00:00\"";
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let (days, span, zone) = match parts.as_slice() {
        [d, s] => (*d, *s, "UTC"),
        [d, s, z] => (*d, *s, *z),
        _ => return Err(format!("{SHAPE} (a comma list of days has no spaces)")),
    };
    let mut out: Vec<String> = Vec::new();
    for d in days.split(',') {
        let expanded: &[&str] = match d.to_ascii_lowercase().as_str() {
            "" => {
                return Err(format!(
                    "an empty day in {days:?} (write days without spaces: mon,tue); {SHAPE}"
                ))
            }
            "daily" => &ALL_DAYS,
            "weekdays" => &ALL_DAYS[..5],
            "weekends" => &ALL_DAYS[5..],
            _ => {
                out.push(d.to_string());
                continue;
            }
        };
        out.extend(expanded.iter().map(|s| s.to_string()));
    }
    let (start, end) = match span.split_once('-') {
        Some((s, e)) if !s.is_empty() && !e.is_empty() && !e.contains('-') => (s, e),
        _ => {
            return Err(format!(
                "{span:?} is not a START-END time span like 22:00-06:00; {SHAPE}"
            ))
        }
    };
    Ok(BlackoutWindow::from_parts(&out, start, end, zone)
        .map_err(|e| format!("blackout window {:?}: {e}", spec.trim())))
}

/// "sha256:..." as `mover node` prints it on the target.
pub fn parse_fingerprint(s: &str) -> Result<Judged<Fingerprint>, String> {
    Ok(Fingerprint::parse(s).map_err(|e| e.to_string()))
}

/// "SRC:DST" numeric ids.
pub fn parse_id_pair(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not SRC:DST with two numeric ids, e.g. 1000:2000");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

#[derive(Args)]
pub struct CreateArgs {
    /// Directory to replicate, on the source node (absolute).
    #[arg(long, value_name = "PATH")]
    pub source_path: String,
    /// Address of the target node's mover daemon (its replication listener, not its API).
    #[arg(long, value_name = "ADDRESS")]
    pub target_address: String,
    /// Replication port of the target daemon.
    #[arg(long, default_value_t = 3712, value_name = "PORT")]
    pub target_port: u16,
    /// Directory to replicate into, on the target node (absolute).
    #[arg(long, value_name = "PATH")]
    pub target_path: String,
    #[command(flatten)]
    pub shared: Shared,
    /// Create it disabled: no jobs start until `modify --enable`.
    #[arg(long)]
    pub disabled: bool,
    /// Limit file data to this many bytes per second (default: unlimited).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub bandwidth_limit: Option<u64>,
    /// The target daemon's certificate fingerprint, as `mover node` prints it there
    /// ("sha256:..."). Without it the certificate the target presents now is trusted and pinned.
    #[arg(long, value_name = "FINGERPRINT", value_parser = parse_fingerprint)]
    pub target_fingerprint: Option<Judged<Fingerprint>>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Flags that `create` and `modify` spell the same way.
#[derive(Args)]
pub struct Shared {
    /// A time when no job runs, "DAYS START-END [TIMEZONE]": DAYS is a comma list of mon..sun
    /// or daily/weekdays/weekends; END before START wraps past midnight, END = START is the
    /// whole day; TIMEZONE is an IANA name (default UTC). E.g. 'mon,fri 22:00-06:00
    /// Europe/Berlin'. Repeat for more (at most 10).
    #[arg(long = "blackout", value_name = "SPEC", value_parser = parse_blackout)]
    pub blackout: Vec<Judged<BlackoutWindow>>,
    /// Map a numeric user id on the target: SRC:DST, e.g. 1000:2000. Repeatable.
    #[arg(long, value_name = "SRC:DST", value_parser = parse_id_pair)]
    pub map_uid: Vec<(u32, u32)>,
    /// Map a numeric group id on the target: SRC:DST. Repeatable.
    #[arg(long, value_name = "SRC:DST", value_parser = parse_id_pair)]
    pub map_gid: Vec<(u32, u32)>,
    /// How each job takes its point in time of the source: auto (a btrfs snapshot where the
    /// source is a subvolume, else plain), btrfs (read-only snapshot; the source must be a
    /// subvolume), reflink (clone every file first: XFS or btrfs), plain (live files, checked
    /// after sending; a job in which a file changed is retried). Default for create: auto.
    #[arg(long, value_name = "PROVIDER", value_parser = parse_snapshot)]
    pub snapshot: Option<SnapshotChoice>,
    /// What to replicate: continuous (a job as soon as the source changed; the default),
    /// snapshot-policy (only the snapshots of the linked policies, each kept read-only under
    /// TARGET/.snapshot/<id>_<policy>/), or snapshot-policy-with-continuous (both; policy
    /// snapshots are replicated first, in order). The snapshot modes need a btrfs subvolume
    /// or a file system with reflinks (XFS, btrfs) on both sides.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// A snapshot policy whose snapshots the relationship replicates (see `mover policy`).
    /// Repeatable; on modify, the list given replaces the linked policies.
    #[arg(long = "policy", value_name = "NAME", value_parser = parse_policy_name)]
    pub policies: Vec<PolicyName>,
    /// How long the target keeps a replicated policy snapshot: same-as-policy (default),
    /// never, or a duration such as 30d.
    #[arg(long, value_name = "EXPIRY", value_parser = parse_target_expiry)]
    pub target_expiry: Option<TargetExpiry>,
    /// How the data plane's worker connections travel: auto (RDMA when both nodes have an
    /// active RDMA port for the connection's address, else TCP; the default), tcp, or rdma
    /// (refused on a node that cannot use it). The view's transport_used says what ran.
    #[arg(long, value_name = "auto|tcp|rdma", value_parser = parse_transport)]
    pub transport: Option<control::model::Transport>,
}

fn parse_transport(s: &str) -> Result<control::model::Transport, String> {
    use control::model::Transport;
    match s {
        "auto" => Ok(Transport::Auto),
        "tcp" => Ok(Transport::Tcp),
        "rdma" => Ok(Transport::Rdma),
        other => Err(format!("transport {other:?}: auto, tcp or rdma")),
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_policy_name(s: &str) -> Result<PolicyName, String> {
    PolicyName::parse(s).map_err(|e| e.to_string())
}

fn parse_target_expiry(s: &str) -> Result<TargetExpiry, String> {
    s.parse()
}

/// auto | btrfs | reflink | plain.
pub fn parse_snapshot(s: &str) -> Result<SnapshotChoice, String> {
    s.parse()
}

impl Shared {
    fn blackout_windows(&self) -> Result<Vec<BlackoutWindow>, ApiError> {
        self.blackout
            .iter()
            .cloned()
            .collect::<Judged<_>>()
            .map_err(refused)
    }

    fn map_ids(&self) -> Option<IdMap> {
        if self.map_uid.is_empty() && self.map_gid.is_empty() {
            return None;
        }
        Some(IdMap {
            uid: self.map_uid.clone(),
            gid: self.map_gid.clone(),
        })
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args([
    "target_address", "target_port", "blackout", "clear_blackouts", "enable", "disable",
    "bandwidth_limit", "no_bandwidth_limit", "map_uid", "map_gid", "clear_id_map", "snapshot",
    "mode", "policies", "target_expiry", "transport",
])))]
pub struct ModifyArgs {
    /// Relationship id, or a unique prefix of it.
    pub id: String,
    /// New address of the target daemon.
    #[arg(long, value_name = "ADDRESS")]
    pub target_address: Option<String>,
    /// New replication port of the target daemon.
    #[arg(long, value_name = "PORT")]
    pub target_port: Option<u16>,
    #[command(flatten)]
    pub shared: Shared,
    /// Remove all blackout windows.
    #[arg(long, conflicts_with = "blackout")]
    pub clear_blackouts: bool,
    /// Let jobs start again.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Stop starting jobs (a running job finishes).
    #[arg(long)]
    pub disable: bool,
    /// Limit file data to this many bytes per second.
    #[arg(
        long,
        value_name = "BYTES_PER_SEC",
        conflicts_with = "no_bandwidth_limit"
    )]
    pub bandwidth_limit: Option<u64>,
    /// Remove the bandwidth limit.
    #[arg(long)]
    pub no_bandwidth_limit: bool,
    /// Remove the id map (owners are kept as they are on the source).
    #[arg(long, conflicts_with_all = ["map_uid", "map_gid"])]
    pub clear_id_map: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The create body (docs/api.md "Spec").
pub fn new_relationship(a: &CreateArgs) -> Result<NewRelationship, ApiError> {
    Ok(NewRelationship {
        spec: Spec {
            source_path: a.source_path.clone(),
            target_address: a.target_address.clone(),
            target_port: a.target_port,
            target_path: a.target_path.clone(),
            blackout_windows: a.shared.blackout_windows()?,
            map_ids: a.shared.map_ids(),
            enabled: !a.disabled,
            bandwidth_limit: a.bandwidth_limit,
            snapshot: a.shared.snapshot.unwrap_or_default(),
            mode: a.shared.mode.unwrap_or_default(),
            policies: a.shared.policies.clone(),
            target_expiry: a.shared.target_expiry.unwrap_or_default(),
            transport: a.shared.transport.unwrap_or_default(),
        },
        target_fingerprint: a.target_fingerprint.clone().transpose().map_err(refused)?,
    })
}

/// The edit body: only the settings the user gave (the others stay as they are); a "clear" or
/// "no" flag is `Some(None)`, sent as null.
pub fn edit(a: &ModifyArgs) -> Result<Edit, ApiError> {
    let windows = !a.shared.blackout.is_empty() || a.clear_blackouts;
    let map_ids = match a.shared.map_ids() {
        Some(m) => Some(Some(m)),
        None => a.clear_id_map.then_some(None),
    };
    let bandwidth_limit = match a.bandwidth_limit {
        Some(l) => Some(Some(l)),
        None => a.no_bandwidth_limit.then_some(None),
    };
    Ok(Edit {
        target_address: a.target_address.clone(),
        target_port: a.target_port,
        blackout_windows: windows.then(|| a.shared.blackout_windows()).transpose()?,
        map_ids,
        enabled: (a.enable || a.disable).then_some(a.enable),
        bandwidth_limit,
        snapshot: a.shared.snapshot,
        mode: a.shared.mode,
        policies: (!a.shared.policies.is_empty()).then(|| a.shared.policies.clone()),
        target_expiry: a.shared.target_expiry,
        transport: a.shared.transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relationship::RelationshipCmd;
    use clap::Parser;
    use serde_json::{json, Value};

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: RelationshipCmd,
    }

    fn parse(args: &str) -> Result<RelationshipCmd, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.split('|'))).map(|t| t.cmd)
    }

    /// The window's JSON as the request carries it.
    fn window(spec: &str) -> Value {
        serde_json::to_value(parse_blackout(spec).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn blackout_with_zone_days_and_wrap() {
        assert_eq!(
            window("mon,tue,fri 22:00-06:00 Europe/Berlin"),
            json!({"days": ["mon", "tue", "fri"], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"})
        );
    }

    #[test]
    fn blackout_zone_defaults_to_utc_and_whitespace_is_free() {
        assert_eq!(
            window("  sat   00:00-00:00 "),
            json!({"days": ["sat"], "start": "00:00", "end": "00:00", "timezone": "UTC"})
        );
    }

    #[test]
    fn blackout_day_groups_expand() {
        let days = |s: &str| window(s)["days"].clone();
        assert_eq!(days("daily 01:00-02:00"), json!(ALL_DAYS));
        assert_eq!(
            days("Weekdays 01:00-02:00"),
            json!(["mon", "tue", "wed", "thu", "fri"])
        );
        // A set of days, sent Monday first as the daemon keeps it.
        assert_eq!(
            days("weekends,mon,sun 01:00-02:00"),
            json!(["mon", "sat", "sun"])
        );
        assert_eq!(window("mon 1:00-2:00")["start"], "01:00");
    }

    #[test]
    fn blackout_names_times_and_zones_are_judged_by_the_control_crate_when_the_request_is_built() {
        for (bad, why) in [
            ("Funday 01:00-02:00", "unknown day of the week \"Funday\""),
            ("mon 25:99-02:00", "time of day must be HH:MM"),
            (
                "mon 01:00-02:00 Mars/Olympus",
                "unknown time zone \"Mars/Olympus\"",
            ),
        ] {
            let e = parse_blackout(bad).unwrap().unwrap_err();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        let args = "create|--source-path|/s|--target-address|h|--target-path|/t\
                    |--blackout|Funday 01:00-02:00";
        let Ok(RelationshipCmd::Create(a)) = parse(args) else {
            panic!("the flag's shape is right; its day is the control crate's to refuse")
        };
        let e = new_relationship(&a).unwrap_err();
        assert_eq!(e.status(), Some(400), "refused as the daemon would: {e}");
        let Ok(RelationshipCmd::Modify(m)) = parse("modify|ab|--blackout|Funday 01:00-02:00")
        else {
            panic!()
        };
        assert_eq!(edit(&m).unwrap_err().status(), Some(400));
    }

    #[test]
    fn a_fingerprint_is_judged_by_the_control_crate_and_sent_normalized() {
        let base =
            "create|--source-path|/s|--target-address|h|--target-path|/t|--target-fingerprint|";
        let create = |fp: &str| match parse(&format!("{base}{fp}")) {
            Ok(RelationshipCmd::Create(a)) => new_relationship(&a),
            _ => panic!(),
        };
        let fp = format!("sha256:{}", "AB".repeat(32));
        let body = serde_json::to_value(create(&fp).unwrap()).unwrap();
        assert_eq!(body["target_fingerprint"], fp.to_lowercase());
        let e = create("md5:00").unwrap_err();
        assert!(
            e.status() == Some(400) && e.to_string().contains("must start with"),
            "{e}"
        );
    }

    #[test]
    fn blackout_of_the_wrong_shape_is_refused_with_the_syntax() {
        for bad in [
            "",
            "mon",
            "mon 22:00",
            "mon 22:00-",
            "mon -06:00",
            "mon 22:00-06:00-07:00",
            "mon, tue 22:00-06:00",
            "mon 22:00-06:00 UTC extra",
            "mon,,tue 22:00-06:00",
        ] {
            let e = parse_blackout(bad).expect_err(bad);
            assert!(e.contains("DAYS START-END [TIMEZONE]"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn id_pairs() {
        assert_eq!(parse_id_pair("1000:2000"), Ok((1000, 2000)));
        assert_eq!(parse_id_pair("0:4294967295"), Ok((0, u32::MAX)));
        for bad in [
            "1000",
            "1000:",
            ":5",
            "a:b",
            "1:2:3",
            "-1:5",
            "4294967296:1",
        ] {
            assert!(parse_id_pair(bad).unwrap_err().contains("SRC:DST"), "{bad}");
        }
    }

    #[test]
    fn create_body_has_defaults_and_the_given_fields() {
        let Ok(RelationshipCmd::Create(a)) =
            parse("create|--source-path|/srv/data|--target-address|10.0.0.2|--target-path|/r")
        else {
            panic!()
        };
        let body = |a: &CreateArgs| serde_json::to_value(new_relationship(a).unwrap()).unwrap();
        assert_eq!(
            body(&a),
            json!({"source_path": "/srv/data", "target_address": "10.0.0.2", "target_port": 3712, "target_path": "/r",
                   "blackout_windows": [], "enabled": true})
        );
        let args = "create|--source-path|/s|--target-address|h|--target-port|4000|--target-path|/t|--blackout|sat 00:00-00:00\
                    |--map-uid|1000:2000|--map-gid|5:6|--disabled|--bandwidth-limit|1048576";
        let Ok(RelationshipCmd::Create(a)) = parse(args) else {
            panic!()
        };
        let b = body(&a);
        assert_eq!(b["target_port"], 4000);
        assert_eq!(b["blackout_windows"][0]["days"], json!(["sat"]));
        assert_eq!(
            b["map_ids"],
            json!({"uid": [[1000, 2000]], "gid": [[5, 6]]})
        );
        assert_eq!(
            (b["enabled"].clone(), b["bandwidth_limit"].clone()),
            (json!(false), json!(1048576))
        );
    }

    #[test]
    fn create_refuses_a_bad_blackout_as_usage() {
        let e = parse("create|--source-path|/s|--target-address|h|--target-path|/t|--blackout|mon")
            .err()
            .unwrap();
        assert!(e.to_string().contains("DAYS START-END"), "{e}");
    }

    #[test]
    fn modify_sends_only_what_was_given() {
        let body = |a: &str| match parse(a) {
            Ok(RelationshipCmd::Modify(m)) => serde_json::to_value(edit(&m).unwrap()).unwrap(),
            Ok(_) => panic!("not modify"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(body("modify|ab|--disable"), json!({"enabled": false}));
        assert_eq!(
            body("modify|ab|--enable|--target-port|1"),
            json!({"enabled": true, "target_port": 1})
        );
        assert_eq!(
            body("modify|ab|--clear-blackouts|--no-bandwidth-limit|--clear-id-map"),
            json!({"blackout_windows": [], "bandwidth_limit": null, "map_ids": null})
        );
        assert_eq!(
            body("modify|ab|--map-gid|1:2"),
            json!({"map_ids": {"uid": [], "gid": [[1, 2]]}})
        );
        assert_eq!(
            body("modify|ab|--blackout|daily 1:00-2:00|--bandwidth-limit|9")["bandwidth_limit"],
            9
        );
    }

    #[test]
    fn modify_needs_a_change_and_refuses_contradictions() {
        for bad in [
            "modify|ab",
            "modify|ab|--enable|--disable",
            "modify|ab|--bandwidth-limit|1|--no-bandwidth-limit",
            "modify|ab|--clear-id-map|--map-uid|1:2",
            "modify|ab|--clear-blackouts|--blackout|mon 1:00-2:00",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
