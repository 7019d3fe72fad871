//! Writes the fuzz targets' seed inputs: `cargo run -p mover --features testkit --example
//! fuzz_seeds -- fuzz/corpus`. The mover seeds come from `mover::fuzz::seeds` over a small
//! generated tree; the fuzzers grow the corpora from there (scripts/fuzz.sh).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: fuzz_seeds CORPUS_DIR")?;
    let tree = tempfile::tempdir()?;
    mover::gen::generate(
        tree.path(),
        &mover::gen::TreeSpec {
            small_files: 5,
            large_files: 1,
            large_size: 70_000,
            ..Default::default()
        },
    )?;
    for (target, name, bytes) in mover::fuzz::seeds(tree.path())? {
        let dir = std::path::Path::new(&out).join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
