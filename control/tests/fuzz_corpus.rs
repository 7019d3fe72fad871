//! Replays the committed fuzz corpora of the control plane (fuzz/corpus/peer_messages,
//! fuzz/corpus/rest_bodies) through the entry points the cargo-fuzz targets use: nothing may
//! panic, and the seeds (`seed-*`, valid messages) must parse.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the committed corpus {} is missing: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 4,
        "corpus {} has {} inputs",
        dir.display(),
        out.len()
    );
    out
}

fn seed(p: &Path) -> Option<String> {
    let n = p.file_name()?.to_string_lossy().into_owned();
    n.strip_prefix("seed-").map(str::to_string)
}

#[test]
fn every_committed_peer_message_input_decodes_without_panicking() {
    for (p, data) in corpus("peer_messages") {
        control::fuzz::peer_message(&data);
        if let Some(name) = seed(&p) {
            let ok = if name.starts_with("answer") {
                serde_json::from_slice::<control::peer::PeerAnswer>(&data).is_ok()
            } else {
                serde_json::from_slice::<control::peer::PeerRequest>(&data).is_ok()
            };
            assert!(ok, "seed {} does not parse", p.display());
        }
    }
}

#[test]
fn every_committed_rest_body_input_decodes_without_panicking() {
    for (p, data) in corpus("rest_bodies") {
        control::fuzz::rest_body(&data);
        if seed(&p).is_some_and(|n| n.starts_with("create")) {
            let n = control::api_types::NewRelationship::parse(&data)
                .unwrap_or_else(|e| panic!("seed {} does not parse: {e}", p.display()));
            n.spec.validate().expect("seed spec is valid");
        }
    }
}
