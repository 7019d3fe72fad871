//! The two CPU-set spellings sysfs uses: lists ("0-3,8,10-11") and hex masks
//! ("00000000,0000000f", 32-bit words, most significant first).

use crate::{CpuId, MAX_CPUS};

/// Parses a cpulist; `None` if malformed or out of bounds. Empty text is the empty set.
pub fn parse_cpu_list(text: &str) -> Option<Vec<CpuId>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let v = part.trim().parse::<u32>().ok()?;
                (v, v)
            }
        };
        if lo > hi || hi >= MAX_CPUS {
            return None;
        }
        out.extend((lo..=hi).map(CpuId));
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// Formats CPUs as a canonical cpulist (ranges collapsed).
pub fn format_cpu_list(cpus: &[CpuId]) -> String {
    let mut v: Vec<u32> = cpus.iter().map(|c| c.0).collect();
    v.sort();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        parts.push(if start == v[i] {
            start.to_string()
        } else {
            format!("{start}-{}", v[i])
        });
        i += 1;
    }
    parts.join(",")
}

/// Parses a hex mask such as `ff,00000001`; `None` if malformed.
pub fn parse_cpu_mask(text: &str) -> Option<Vec<CpuId>> {
    let mut out = Vec::new();
    let words: Vec<&str> = text.trim().split(',').collect();
    for (k, w) in words.iter().rev().enumerate() {
        let v = u32::from_str_radix(w, 16).ok()?;
        for bit in 0..32 {
            if v & (1 << bit) != 0 {
                let id = k as u32 * 32 + bit;
                if id >= MAX_CPUS {
                    return None;
                }
                out.push(CpuId(id));
            }
        }
    }
    out.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_ranges_singles_and_masks() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n").unwrap().len(), 7);
        assert_eq!(parse_cpu_list("").unwrap(), vec![]);
        assert!(parse_cpu_list("3-1").is_none());
        assert!(parse_cpu_list("x").is_none());
        assert_eq!(
            parse_cpu_mask("00000000,0000000f").unwrap(),
            (0..4).map(CpuId).collect::<Vec<_>>()
        );
        assert_eq!(parse_cpu_mask("1,00000000").unwrap(), vec![CpuId(32)]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(42), failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn cpu_list_round_trips(ids in proptest::collection::btree_set(0u32..512, 0..64)) {
            let cpus: Vec<CpuId> = ids.into_iter().map(CpuId).collect();
            prop_assert_eq!(parse_cpu_list(&format_cpu_list(&cpus)).unwrap(), cpus);
        }
    }
}
