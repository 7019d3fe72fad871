//! Replays the committed fuzz corpora (fuzz/corpus/frame_decoder, fuzz/corpus/state_files)
//! through the same entry points the cargo-fuzz targets use: nothing may panic. The seeds
//! (`seed-*`, valid inputs) must also decode, so the corpus keeps reaching the success paths.

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

fn is_seed(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
}

#[test]
fn every_committed_frame_input_runs_through_the_decoders_without_panicking() {
    for (p, data) in corpus("frame_decoder") {
        mover::fuzz::frames(&data);
        mover::fuzz::sealed_frame(&data);
        if is_seed(&p) {
            assert!(
                mover::wire::frame::decode_frame(&data).is_ok() || p.ends_with("seed-sealed"),
                "seed {} does not decode",
                p.display()
            );
        }
    }
}

#[test]
fn every_committed_state_file_input_runs_through_the_decoders_without_panicking() {
    let seeds = corpus("state_files")
        .into_iter()
        .inspect(|(_, data)| mover::fuzz::state_files(data))
        .filter(|(p, _)| is_seed(p))
        .count();
    assert!(seeds >= 4, "the state-file seeds are missing");
}
