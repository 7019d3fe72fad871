//! `mover relationship reverse`: failback, from either node (control::reverse has the steps).

use crate::api::ApiArgs;
use crate::sides::{either_side, full_id, Role};
use crate::view::print_json;
use anyhow::{Context, Result};
use control::reverse::ReverseBody;
use serde_json::Value;

pub fn run(id: &str, source_address: Option<String>, api: &ApiArgs) -> Result<()> {
    let c = api.client();
    let (role, v) = either_side(None, |r| {
        let full = full_id(&c, Some(r), id)?;
        match r {
            Role::Source => c.post_empty(&format!("{}/{full}/reverse", r.base())),
            Role::Target => c.post(
                &format!("{}/{full}/reverse", r.base()),
                &ReverseBody {
                    source_address: source_address.clone(),
                },
            ),
        }
    })
    .with_context(|| format!("reversing relationship {id}"))?;
    if api.json {
        return print_json(&v);
    }
    print!("{}", text(role, &v));
    Ok(())
}

/// The answer as an operator reads it.
fn text(was: Role, v: &Value) -> String {
    let s = |x: &Value| x.as_str().unwrap_or("none").to_string();
    let rel = &v["relationship"];
    let now = match was {
        Role::Source => "the target",
        Role::Target => "the source",
    };
    let mut out = format!(
        "relationship {} reversed: this node is {now} now (epoch {})\n",
        s(&rel["id"]),
        v["epoch"]
    );
    out.push_str(&format!(
        "common recovery point {} ({}); only what changed since travels\n",
        s(&v["common_recovery_point"]),
        s(&v["common_recovery_point_time"])
    ));
    let d = &v["discarded"];
    let on = if v["discarded_on"] == "this_node" {
        "this node"
    } else {
        "the other node"
    };
    out.push_str(&format!(
        "changes the old source made since, reverted on {on}: {} added, {} modified, {} deleted, {} metadata\n",
        d["added"], d["modified"], d["deleted"], d["metadata"]
    ));
    if let Some(dir) = d["directory"].as_str() {
        out.push_str(&format!("kept aside in {dir} (report.txt, report.json)\n"));
    }
    for i in d["items"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {:<9} {}\n", s(&i["change"]), s(&i["path"])));
    }
    if d["truncated"] == true {
        out.push_str("  ... (the full list is in the report in that directory)\n");
    }
    out
}
