//! The ratios the docs state, checked against every run. A claim is an HTML comment beside the
//! figure, `<!-- bench [target] "SCENARIO" [n=N] [vs "OTHER" [n=M]] ratio=[LOW]..[HIGH] -->`:
//! docs/benchmarks.md, "Claims in the docs", says what it means.

use std::path::Path;

use serde::Serialize;

use crate::measure::Row;
use crate::scenarios::names;

/// What opens a claim in a Markdown file.
const OPENING: &str = "<!-- bench ";

const GRAMMAR: &str = "expected [target] \"SCENARIO\" [n=N] [vs \"OTHER\" [n=M]] ratio=LOW..HIGH";

/// A claim and what this run measured of it, as the report writes it.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Claim {
    /// The file, relative to the workspace root, the line (from 1), and the comment's text.
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) claim: String,
    pub(crate) target: bool,
    /// The ratio measured and the N of the scenario's row; `None` when a row was not run.
    pub(crate) measured: Option<(f64, u64)>,
    /// holds or outside (met or missed for a target), not measured in this run, or what is wrong.
    pub(crate) verdict: String,
}

/// Every claim in the README and the Markdown files under `docs/`, outside fenced code blocks
/// (where a claim is an example of one), judged against `rows`.
pub(crate) fn check(root: &Path, rows: &[Row]) -> Result<Vec<Claim>, String> {
    let (mut files, mut dirs) = (vec![root.join("README.md")], vec![root.join("docs")]);
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut claims = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path);
        let text = text.map_err(|e| format!("{}: {e}", path.display()))?;
        let file = path.strip_prefix(root).unwrap_or(&path);
        claims.extend(check_text(&file.display().to_string(), &text, rows));
    }
    Ok(claims)
}

fn check_text(file: &str, text: &str, rows: &[Row]) -> Vec<Claim> {
    let (mut claims, mut in_code) = (Vec::new(), false);
    for (index, line) in text.lines().enumerate() {
        in_code ^= line.trim_start().starts_with("```");
        for text in line.split(OPENING).skip(1).filter(|_| !in_code) {
            let closed = text.split_once("-->").map(|(text, _)| text);
            let mut claim = Claim {
                file: file.to_owned(),
                line: index + 1,
                claim: closed.unwrap_or(text).trim().to_owned(),
                ..Claim::default()
            };
            let judged = closed.ok_or_else(|| "not closed with `-->` on its line".to_owned());
            if let Err(why) = judged.and_then(|_| judge(&mut claim, rows)) {
                claim.verdict = format!("does not read: {why}");
            }
            claims.push(claim);
        }
    }
    claims
}

/// Reads the claim's text and judges it against `rows`.
fn judge(claim: &mut Claim, rows: &[Row]) -> Result<(), String> {
    let target = claim.claim.strip_prefix("target ");
    let text = target.unwrap_or(&claim.claim);
    let (sides, range) = text.split_once(" ratio=").ok_or(GRAMMAR)?;
    let sides = sides.split(" vs ").map(|side| pick(rows, side));
    let sides = sides.collect::<Result<Vec<_>, _>>()?;
    let measured = match sides[..] {
        [ours] => ours.map(|ours| (ours.ratio, ours.n)),
        [ours, other] => ours
            .zip(other)
            .map(|(ours, other)| (other.ns_per_task / ours.ns_per_task, ours.n)),
        _ => return Err(GRAMMAR.into()),
    };
    let bound = |b: &str| match b.parse::<f64>() {
        _ if b.is_empty() => Ok(None),
        Ok(bound) => Ok(Some(bound)),
        Err(_) => Err(format!("`{b}` is not a number")),
    };
    let (low, high) = range.split_once("..").ok_or(GRAMMAR)?;
    let (low, high) = (bound(low)?, bound(high)?);
    if low.zip(high).is_some_and(|(low, high)| low > high) || low.or(high).is_none() {
        return Err("the range needs LOW <= HIGH, and one of them at least".into());
    }
    let holds = measured.map(|(m, _)| low.is_none_or(|l| l <= m) && high.is_none_or(|h| m <= h));
    claim.target = target.is_some();
    claim.verdict = match (holds, claim.target) {
        (None, _) => "not measured in this run",
        (Some(true), false) => "holds",
        (Some(false), false) => "outside",
        (Some(true), true) => "met",
        (Some(false), true) => "missed",
    }
    .to_owned();
    claim.measured = measured;
    Ok(())
}

/// The row that `"SCENARIO" [n=N]` picks: without `n`, the one at the largest N measured; `None`
/// when none was.
fn pick<'r>(rows: &'r [Row], side: &str) -> Result<Option<&'r Row>, String> {
    let quoted = side.strip_prefix('"').and_then(|side| side.split_once('"'));
    let (name, n) = quoted.ok_or(GRAMMAR)?;
    if !names::ALL.concat().iter().any(|(known, _)| *known == name) {
        return Err(format!("the report has no scenario `{name}`"));
    }
    let n = match n.trim_start().strip_prefix("n=") {
        Some(n) => Some(
            n.parse::<u64>()
                .map_err(|_| format!("n=`{n}` is not a whole number"))?,
        ),
        None if n.is_empty() => None,
        None => return Err(GRAMMAR.into()),
    };
    let picked = |row: &&Row| row.name == name && n.is_none_or(|n| row.n == n);
    Ok(rows.iter().filter(picked).max_by_key(|row| row.n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_claim_is_read_outside_code_and_judged_on_its_rows() {
        let row = |n, ours, base| Row::new(("async", "raw"), n, vec![ours], vec![base]);
        let rows = [
            row(10_000, 2_000.0, 1_000.0),
            row(100_000, 3_000.0, 1_500.0),
            row(1_000_000, 5_000.0, 1_000.0),
        ];
        let text = "<!-- bench \"async\" n=100000 ratio=0.4..0.6 --> <!-- bench \"async\" ratio=..0.1 -->\n\
                    ```text\n<!-- bench \"async\" ratio=0..1 -->\n```\n\
                    | <!-- bench target \"async\" n=1000000 vs \"async\" n=10000 ratio=0.67.. --> |\n\
                    <!-- bench \"threaded\" ratio=..1 --> <!-- bench \"no such\" ratio=0..1 -->\n\
                    <!-- bench \"async\" ratio=3..2 --> <!-- bench \"async\" \"threaded\" ratio=0..1 -->\n\
                    <!-- bench \"async\" n=many ratio=0..1 --> <!-- bench \"async\" ours_us=1..2 -->\n\
                    <!-- bench \"async\" ratio=0..1\n";
        let claims = check_text("d.md", text, &rows);
        let judged: Vec<_> = claims
            .iter()
            .map(|c| format!("{} {:?} {}", c.line, c.measured, c.verdict))
            .collect();
        let grammar = format!("does not read: {GRAMMAR}");
        assert_eq!(
            judged,
            [
                "1 Some((0.5, 100000)) holds",
                "1 Some((0.2, 1000000)) outside",
                "5 Some((0.4, 1000000)) missed",
                "6 None not measured in this run",
                "6 None does not read: the report has no scenario `no such`",
                "7 None does not read: the range needs LOW <= HIGH, and one of them at least",
                &format!("7 None {grammar}"),
                "8 None does not read: n=`many` is not a whole number",
                &format!("8 None {grammar}"),
                "9 None does not read: not closed with `-->` on its line",
            ]
        );
        assert!(claims[2].target && claims[0].claim == "\"async\" n=100000 ratio=0.4..0.6");
    }

    /// The docs' own claims: every one reads and names scenarios the report has, so a renamed
    /// scenario or a mistyped claim fails here, not silently in the report.
    #[test]
    fn every_claim_in_the_docs_reads_and_names_a_scenario() {
        let claims = check(&crate::workspace_root(), &[]).expect("the docs read");
        assert!(claims.len() >= 10, "the docs carry claims: {claims:?}");
        for claim in claims {
            let at = format!("{}:{}", claim.file, claim.line);
            assert_eq!(claim.verdict, "not measured in this run", "{at}");
        }
    }
}
