//! Which mover releases may replicate with which: the release train (`release-train.txt`,
//! data kept in the repository) and the policy the vendor documents describe. Pure: tests
//! drive it with the seed's own train.
//!
//! A quarterly release is `M.m.0` with `m` in 0..=3; its quarter index is `4M + m`. Any other
//! release sits after the quarterly release `M.m.0` and before the next. Two releases are
//! compatible when the newer one's next quarterly (itself if quarterly) is at most WINDOW
//! quarterly releases after the older one's last quarterly (itself if quarterly), where WINDOW
//! is that of the older release's line: 8 for current lines ("up to eight quarters apart"),
//! narrower for older ones. A line can be a guarantee only (the vendor's lines before 5.0.1
//! did not block anything): then the newer release's line decides, as it is the one that
//! blocks. Outside the window, a pair is hard-blocked.

use std::fmt;
use std::str::FromStr;

/// The train this build was released with.
pub const BUILTIN_TRAIN: &str = include_str!("../release-train.txt");
/// Releases one train may list at most (a matrix of them is printed).
pub const MAX_RELEASES: usize = 4096;
/// Quarterly releases per major version.
const QUARTERS_PER_MAJOR: u16 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Version, String> {
        let bad = || format!("{s:?} is not a mover version (MAJOR.MINOR.PATCH, e.g. 0.1.0)");
        let mut it = s.trim().split('.');
        let mut next = || -> Result<u16, String> {
            let p = it.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let v = Version {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        if it.next().is_some() {
            return Err(bad());
        }
        if v.minor >= QUARTERS_PER_MAJOR {
            return Err(format!(
                "{s:?} is not a mover version: MINOR is the quarter, 0 to 3"
            ));
        }
        Ok(v)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    pub fn is_quarterly(self) -> bool {
        self.patch == 0
    }

    /// Quarter index of the last quarterly release at or before this one.
    fn floor_q(self) -> i64 {
        i64::from(self.major) * i64::from(QUARTERS_PER_MAJOR) + i64::from(self.minor)
    }

    /// Quarter index of the first quarterly release at or after this one.
    fn ceil_q(self) -> i64 {
        self.floor_q() + i64::from(!self.is_quarterly())
    }

    fn quarterly_at(q: i64) -> Option<Version> {
        let per = i64::from(QUARTERS_PER_MAJOR);
        Some(Version {
            major: u16::try_from(q.div_euclid(per)).ok()?,
            minor: u16::try_from(q.rem_euclid(per)).ok()?,
            patch: 0,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Quarterly,
    /// A quarterly release supported for longer.
    QuarterlyLts,
    /// A release between two quarterly ones.
    Innovation,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Release {
    pub version: Version,
    pub kind: Kind,
    pub date: String,
}

/// Releases from `from` on replicate within `window` quarterly releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Line {
    pub from: Version,
    pub window: u16,
    /// Its releases block peers outside the window; false: the window is only a guarantee,
    /// and a newer peer's line decides.
    pub strict: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Train {
    pub oldest: Version,
    pub lines: Vec<Line>,
    pub releases: Vec<Release>,
}

/// The answer for one pair.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub compatible: bool,
    /// The rule applied, in words.
    pub rule: String,
    /// Why, for this pair.
    pub reason: String,
    /// What makes an incompatible pair compatible (None when compatible).
    pub upgrade: Option<String>,
}

impl Train {
    /// The train this build shipped with, read once (every handshake and poll consults it).
    pub fn builtin() -> &'static Train {
        static TRAIN: std::sync::OnceLock<Train> = std::sync::OnceLock::new();
        // The file is part of the build and checked by a test: a parse failure is a build
        // defect, not an input error.
        TRAIN.get_or_init(|| {
            Train::parse(BUILTIN_TRAIN).unwrap_or_else(|e| panic!("release-train.txt: {e}"))
        })
    }

    pub fn parse(text: &str) -> Result<Train, String> {
        let (mut oldest, mut lines, mut releases) = (None, Vec::new(), Vec::new());
        for (n, raw) in text.lines().enumerate() {
            let l = raw.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            let at = |e: String| format!("line {}: {e}", n + 1);
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["oldest", v] => oldest = Some(v.parse().map_err(at)?),
                ["line", v, w, rest @ ..] if rest.len() <= 1 => lines.push(Line {
                    from: v.parse().map_err(at)?,
                    window: w
                        .parse()
                        .map_err(|_| at(format!("window {w:?} is not a number")))?,
                    strict: match rest.first() {
                        None | Some(&"strict") => true,
                        Some(&"guarantee") => false,
                        Some(other) => return Err(at(format!("{other:?}: strict or guarantee"))),
                    },
                }),
                [v, k, date] => {
                    let version: Version = v.parse().map_err(at)?;
                    let kind = match *k {
                        "quarterly" => Kind::Quarterly,
                        "quarterly+lts" => Kind::QuarterlyLts,
                        "innovation" => Kind::Innovation,
                        other => return Err(at(format!("unknown kind {other:?}"))),
                    };
                    if (kind == Kind::Innovation) == version.is_quarterly() {
                        return Err(at(format!(
                            "{version} is {}a quarterly version (M.m.0)",
                            if version.is_quarterly() { "" } else { "not " }
                        )));
                    }
                    let d = date.as_bytes();
                    if d.len() != 10 || d[4] != b'-' || d[7] != b'-' {
                        return Err(at(format!("date {date:?} is not YYYY-MM-DD")));
                    }
                    releases.push(Release {
                        version,
                        kind,
                        date: date.to_string(),
                    });
                }
                _ => return Err(at(format!("cannot read {l:?}"))),
            }
        }
        let oldest = oldest.ok_or("no `oldest` line")?;
        if lines.is_empty() || releases.len() > MAX_RELEASES {
            return Err(format!(
                "a train needs a `line` and at most {MAX_RELEASES} releases"
            ));
        }
        lines.sort_by_key(|l| l.from);
        releases.sort_by_key(|r| r.version);
        if lines[0].from > oldest {
            return Err(format!("no line covers the oldest release {oldest}"));
        }
        Ok(Train {
            oldest,
            lines,
            releases,
        })
    }

    fn line_of(&self, v: Version) -> Option<&Line> {
        if v < self.oldest {
            return None;
        }
        self.lines.iter().rev().find(|l| l.from <= v)
    }

    /// Whether releases `a` and `b` may replicate with each other (in either direction).
    pub fn check(&self, a: Version, b: Version) -> Verdict {
        let (older, newer) = if a <= b { (a, b) } else { (b, a) };
        let Some(older_line) = self.line_of(older) else {
            return Verdict {
                compatible: false,
                rule: format!("releases before {} are not supported", self.oldest),
                reason: format!("mover {older} is older than {}", self.oldest),
                upgrade: Some(format!(
                    "upgrade the mover {older} side to {} or later",
                    self.oldest
                )),
            };
        };
        let line = self.deciding(older_line, newer);
        let apart = newer.ceil_q() - older.floor_q();
        let rule = format!(
            "releases from {} on replicate with releases up to {} quarterly releases apart",
            line.from, line.window
        );
        let span = match (
            Version::quarterly_at(older.floor_q()),
            Version::quarterly_at(newer.ceil_q()),
        ) {
            (Some(lo), Some(hi)) => format!(" ({lo} to {hi})"),
            _ => String::new(),
        };
        let reason = format!(
            "mover {older} and {newer} are {apart} quarterly release{} apart{span}",
            if apart == 1 { "" } else { "s" }
        );
        let compatible = apart <= i64::from(line.window);
        Verdict {
            compatible,
            rule,
            reason,
            upgrade: (!compatible).then(|| self.upgrade_path(older, newer)),
        }
    }

    /// Whether `a` and `b` replicate, without the words (the upgrade path's search).
    fn compatible(&self, a: Version, b: Version) -> bool {
        let (older, newer) = if a <= b { (a, b) } else { (b, a) };
        let Some(older_line) = self.line_of(older) else {
            return false;
        };
        newer.ceil_q() - older.floor_q() <= i64::from(self.deciding(older_line, newer).window)
    }

    /// The line whose window applies: the older release's, unless it is only a guarantee.
    fn deciding<'a>(&'a self, older_line: &'a Line, newer: Version) -> &'a Line {
        match self.line_of(newer) {
            Some(n) if !older_line.strict => n,
            _ => older_line,
        }
    }

    /// The oldest release the older side can move to that replicates with `newer`.
    fn upgrade_path(&self, older: Version, newer: Version) -> String {
        let candidates = (older.floor_q() + 1..=newer.floor_q())
            .filter_map(Version::quarterly_at)
            .chain(std::iter::once(newer));
        for c in candidates {
            if self.compatible(c, newer) {
                return format!(
                    "upgrade the mover {older} side to {c} or later (up to {newer}); \
                     one step at a time if the upgrade itself requires it"
                );
            }
        }
        format!("upgrade the mover {older} side to {newer}")
    }

    /// The releases between `from` and `to` (inclusive), for a matrix.
    pub fn between(&self, from: Option<Version>, to: Option<Version>) -> Vec<&Release> {
        self.releases
            .iter()
            .filter(|r| from.is_none_or(|f| r.version >= f) && to.is_none_or(|t| r.version <= t))
            .collect()
    }
}

/// Checks a peer's reported software version against this build's: None when compatible,
/// else the refusal naming both versions, the rule and the upgrade path.
pub fn refuse_peer(mine: &str, theirs: &str, what_they_are: &str) -> Option<String> {
    let train = Train::builtin();
    let (m, t) = match (mine.parse::<Version>(), theirs.parse::<Version>()) {
        (Ok(m), Ok(t)) => (m, t),
        (_, Err(e)) => {
            return Some(format!(
                "incompatible peer version: the {what_they_are} reports {e}; this node runs mover {mine}"
            ))
        }
        (Err(e), _) => return Some(format!("incompatible peer version: this node reports {e}")),
    };
    let v = train.check(m, t);
    if v.compatible {
        return None;
    }
    Some(format!(
        "incompatible peer version: this node runs mover {m}, the {what_they_are} mover {t}; \
         {}, and {}. {}",
        v.rule,
        v.reason,
        v.upgrade.unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The train of the vendor document (`000_...txt`): lines from 2.11.0 (two consecutive
    /// quarterly releases), 5.0.1 (two quarterly releases either way), 6.0.0 (eight). Its 2.x
    /// releases predate the quarterly numbering, so the train starts at 3.0.0 here.
    const SEED: &str = "
        oldest 3.0.0
        line 3.0.0 1 guarantee
        line 5.0.1 2
        line 6.0.0 8
        4.1.0 quarterly 2021-01-01
        4.1.5 innovation 2021-02-01
        4.2.0 quarterly 2021-04-01
        4.2.1 innovation 2021-05-01
        4.3.0 quarterly 2021-07-01
        5.0.0 quarterly 2021-10-01
        5.0.1 innovation 2021-11-01
        5.1.0 quarterly 2022-01-01
        5.1.1 innovation 2022-02-01
        5.2.0 quarterly 2022-04-01
        5.2.1 innovation 2022-05-01
        5.3.0 quarterly 2022-07-01
        6.0.0 quarterly+lts 2022-10-01
        6.0.1 innovation 2022-11-01
        6.1.0 quarterly 2023-01-01
        8.0.0 quarterly 2024-10-01
        8.0.1 innovation 2024-11-01
        10.0.0 quarterly 2026-10-01
        10.0.1 innovation 2026-11-01
    ";

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn ok(t: &Train, a: &str, b: &str) -> bool {
        t.check(v(a), v(b)).compatible
    }

    #[test]
    fn the_seeds_matrix_for_6_0_and_later() {
        let t = Train::parse(SEED).unwrap();
        // Rows of the seed's table: each release and those it replicates with.
        let cols = [
            "6.0.0", "6.0.1", "6.1.0", "8.0.0", "8.0.1", "10.0.0", "10.0.1",
        ];
        let rows: [(&str, [bool; 7]); 7] = [
            ("6.0.0", [true, true, true, true, false, false, false]),
            ("6.0.1", [true, true, true, true, false, false, false]),
            ("6.1.0", [true, true, true, true, true, false, false]),
            ("8.0.0", [true, true, true, true, true, true, false]),
            ("8.0.1", [false, false, true, true, true, true, false]),
            ("10.0.0", [false, false, false, true, true, true, true]),
            ("10.0.1", [false, false, false, false, false, true, true]),
        ];
        for (row, want) in rows {
            for (col, w) in cols.iter().zip(want) {
                assert_eq!(ok(&t, row, col), w, "{row} with {col}");
            }
        }
    }

    #[test]
    fn the_seeds_examples_for_older_lines() {
        let t = Train::parse(SEED).unwrap();
        // 5.1.0 (q): 4.3.0 .. 5.3.0; 5.1.1: 5.0.0 .. 5.3.0.
        assert!(ok(&t, "5.1.0", "4.3.0") && ok(&t, "5.1.0", "5.3.0"));
        assert!(!ok(&t, "5.1.0", "4.2.0") && !ok(&t, "5.1.0", "6.0.0"));
        assert!(ok(&t, "5.1.1", "5.0.0") && ok(&t, "5.1.1", "5.3.0"));
        assert!(!ok(&t, "5.1.1", "4.3.0") && !ok(&t, "5.1.1", "5.3.1"));
        // 5.0.1 cannot replicate with versions before 4.3.0 or after 5.2.0.
        assert!(ok(&t, "5.0.1", "4.3.0") && ok(&t, "5.0.1", "5.2.0"));
        assert!(!ok(&t, "5.0.1", "4.2.1") && !ok(&t, "5.0.1", "5.2.1"));
        // 2.11 to 5.0.0: two consecutive quarterly versions.
        assert!(ok(&t, "4.1.5", "4.2.0") && ok(&t, "4.2.0", "4.2.1"));
        assert!(!ok(&t, "4.1.5", "4.2.1"));
        // Before the oldest supported release: blocked whatever the other side.
        let old = t.check(v("2.3.0"), v("2.3.0"));
        assert!(!old.compatible && old.upgrade.unwrap().contains("3.0.0"));
    }

    #[test]
    fn a_refusal_names_both_versions_the_rule_and_the_way_out() {
        let t = Train::parse(SEED).unwrap();
        let verdict = t.check(v("8.0.1"), v("6.0.0"));
        assert!(!verdict.compatible);
        assert!(
            verdict.rule.contains("up to 8 quarterly releases"),
            "{verdict:?}"
        );
        assert!(verdict.reason.contains("6.0.0 and 8.0.1"), "{verdict:?}");
        assert_eq!(
            verdict
                .upgrade
                .as_deref()
                .map(|u| u.starts_with("upgrade the mover 6.0.0 side to 6.1.0 or later")),
            Some(true),
            "{verdict:?}"
        );
    }

    #[test]
    fn the_builtin_train_reads_and_this_build_is_in_it() {
        let t = Train::builtin();
        let me: Version = crate::wire::message::software_version().parse().unwrap();
        assert!(
            t.releases.iter().any(|r| r.version == me),
            "add {me} to release-train.txt"
        );
        assert!(t.check(me, me).compatible);
    }

    #[test]
    fn bad_trains_and_versions_are_refused() {
        for bad in [
            "1.4.0",
            "1.2",
            "1.2.3.4",
            "a.b.c",
            "1.2.-3",
            "",
            "1.2.3-rc1",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert!(Train::parse("line 1.0.0 8\n1.0.1 quarterly 2026-01-01").is_err());
        assert!(Train::parse("oldest 1.0.0\nline 1.0.0 8\n1.0.0 innovation 2026-01-01").is_err());
        assert!(Train::parse("oldest 1.0.0\nline 1.0.0 8\n1.0.0 quarterly 2026-1-1").is_err());
    }

    proptest! {
        /// Compatibility is symmetric, every release replicates with itself and with its
        /// neighbours in the same quarter, and widening the window never blocks a pair.
        #[test]
        fn the_policy_is_symmetric_reflexive_and_monotonic(
            a in (2u16..12, 0u16..4, 0u16..3),
            b in (2u16..12, 0u16..4, 0u16..3),
        ) {
            let t = Train::parse(SEED).unwrap();
            let wide = Train::parse(&SEED.replace("line 6.0.0 8", "line 6.0.0 9")).unwrap();
            let (a, b) = (Version { major: a.0, minor: a.1, patch: a.2 }, Version { major: b.0, minor: b.1, patch: b.2 });
            prop_assert_eq!(t.check(a, b).compatible, t.check(b, a).compatible);
            if a >= t.oldest {
                prop_assert!(t.check(a, a).compatible);
            }
            if t.check(a, b).compatible {
                prop_assert!(wide.check(a, b).compatible);
            } else {
                // The way out it names works.
                let up = t.check(a, b).upgrade.unwrap();
                prop_assert!(up.starts_with("upgrade the mover "), "{}", up);
            }
        }
    }
}
