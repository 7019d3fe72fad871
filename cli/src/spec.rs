//! The flags of `mover relationship create/modify` and the request bodies they make, with the
//! parsers of the compact syntaxes: blackout windows ("mon,fri 22:00-06:00 Europe/Berlin") and
//! id-map pairs ("1000:2000"). The parsers check only the shape; day names, times, zones and
//! counts are the daemon's to judge, so the rules live in one place (the control crate).

use crate::api::ApiArgs;
use clap::{ArgGroup, Args};
use serde_json::{json, Value};

const ALL_DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// "DAYS START-END [TIMEZONE]" to the API's blackout window object.
pub fn parse_blackout(spec: &str) -> Result<Value, String> {
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
    Ok(json!({ "days": out, "start": start, "end": end, "timezone": zone }))
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
    #[arg(long, value_name = "FINGERPRINT")]
    pub target_fingerprint: Option<String>,
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
    pub blackout: Vec<Value>,
    /// Map a numeric user id on the target: SRC:DST, e.g. 1000:2000. Repeatable.
    #[arg(long, value_name = "SRC:DST", value_parser = parse_id_pair)]
    pub map_uid: Vec<(u32, u32)>,
    /// Map a numeric group id on the target: SRC:DST. Repeatable.
    #[arg(long, value_name = "SRC:DST", value_parser = parse_id_pair)]
    pub map_gid: Vec<(u32, u32)>,
}

impl Shared {
    fn map_ids(&self) -> Option<Value> {
        if self.map_uid.is_empty() && self.map_gid.is_empty() {
            return None;
        }
        let pairs = |v: &[(u32, u32)]| v.iter().map(|(s, d)| json!([s, d])).collect::<Vec<_>>();
        Some(json!({ "uid": pairs(&self.map_uid), "gid": pairs(&self.map_gid) }))
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args([
    "target_address", "target_port", "blackout", "clear_blackouts", "enable", "disable",
    "bandwidth_limit", "no_bandwidth_limit", "map_uid", "map_gid", "clear_id_map",
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
pub fn spec_body(a: &CreateArgs) -> Value {
    let mut b = json!({
        "source_path": a.source_path,
        "target_address": a.target_address,
        "target_port": a.target_port,
        "target_path": a.target_path,
        "blackout_windows": a.shared.blackout,
        "enabled": !a.disabled,
    });
    if let Some(m) = a.shared.map_ids() {
        b["map_ids"] = m;
    }
    if let Some(l) = a.bandwidth_limit {
        b["bandwidth_limit"] = json!(l);
    }
    if let Some(f) = &a.target_fingerprint {
        b["target_fingerprint"] = json!(f);
    }
    b
}

/// The edit body: only the fields the user gave, since unknown or absent ones stay as they are.
pub fn edit_body(a: &ModifyArgs) -> Value {
    let mut b = serde_json::Map::new();
    if let Some(t) = &a.target_address {
        b.insert("target_address".into(), json!(t));
    }
    if let Some(p) = a.target_port {
        b.insert("target_port".into(), json!(p));
    }
    if !a.shared.blackout.is_empty() || a.clear_blackouts {
        b.insert("blackout_windows".into(), json!(a.shared.blackout));
    }
    if a.enable || a.disable {
        b.insert("enabled".into(), json!(a.enable));
    }
    if let Some(l) = a.bandwidth_limit {
        b.insert("bandwidth_limit".into(), json!(l));
    } else if a.no_bandwidth_limit {
        b.insert("bandwidth_limit".into(), Value::Null);
    }
    if let Some(m) = a.shared.map_ids() {
        b.insert("map_ids".into(), m);
    } else if a.clear_id_map {
        b.insert("map_ids".into(), Value::Null);
    }
    Value::Object(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relationship::RelationshipCmd;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: RelationshipCmd,
    }

    fn parse(args: &str) -> Result<RelationshipCmd, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.split('|'))).map(|t| t.cmd)
    }

    #[test]
    fn blackout_with_zone_days_and_wrap() {
        assert_eq!(
            parse_blackout("mon,tue,fri 22:00-06:00 Europe/Berlin").unwrap(),
            json!({"days": ["mon", "tue", "fri"], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"})
        );
    }

    #[test]
    fn blackout_zone_defaults_to_utc_and_whitespace_is_free() {
        assert_eq!(
            parse_blackout("  sat   00:00-00:00 ").unwrap(),
            json!({"days": ["sat"], "start": "00:00", "end": "00:00", "timezone": "UTC"})
        );
    }

    #[test]
    fn blackout_day_groups_expand() {
        let days = |s: &str| parse_blackout(s).unwrap()["days"].clone();
        assert_eq!(days("daily 01:00-02:00"), json!(ALL_DAYS));
        assert_eq!(
            days("Weekdays 01:00-02:00"),
            json!(["mon", "tue", "wed", "thu", "fri"])
        );
        assert_eq!(
            days("weekends,mon 01:00-02:00"),
            json!(["sat", "sun", "mon"])
        );
    }

    #[test]
    fn blackout_leaves_names_and_times_to_the_daemon() {
        // Not the CLI's to refuse: the daemon names the bad field in its 400.
        let v = parse_blackout("Funday 25:99-1:00 Mars/Olympus").unwrap();
        assert_eq!(
            v,
            json!({"days": ["Funday"], "start": "25:99", "end": "1:00", "timezone": "Mars/Olympus"})
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
        assert_eq!(
            spec_body(&a),
            json!({"source_path": "/srv/data", "target_address": "10.0.0.2", "target_port": 3712, "target_path": "/r",
                   "blackout_windows": [], "enabled": true})
        );
        let args = "create|--source-path|/s|--target-address|h|--target-port|4000|--target-path|/t|--blackout|sat 00:00-00:00\
                    |--map-uid|1000:2000|--map-gid|5:6|--disabled|--bandwidth-limit|1048576";
        let Ok(RelationshipCmd::Create(a)) = parse(args) else {
            panic!()
        };
        let b = spec_body(&a);
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
            Ok(RelationshipCmd::Modify(m)) => edit_body(&m),
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
