//! Randomized trees (seeded proptest) arrive with an identical tree hash and content.

mod common;

use common::*;
use mover::gen::{generate, TreeSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

#[test]
fn random_trees_arrive_with_identical_tree_hash() {
    let config = Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]));
    let strategy = (
        any::<u64>(),
        0usize..300,
        1usize..40_000,
        0usize..3,
        1usize..20,
        any::<bool>(),
        1usize..4,
    );
    runner
        .run(
            &strategy,
            |(seed, small_files, small_max, large_files, fanout, extras, threads)| {
                let t = tempfile::tempdir().unwrap();
                let (src, dst) = (t.path().join("src"), t.path().join("dst"));
                std::fs::create_dir(&dst).unwrap();
                let spec = TreeSpec {
                    seed,
                    small_files,
                    small_max,
                    large_files,
                    large_size: 5 << 20,
                    fanout,
                    extras,
                };
                generate(&src, &spec).unwrap();
                replicate(&src, &dst, threads);
                assert_same_tree(&src, &dst);
                Ok(())
            },
        )
        .unwrap();
}
