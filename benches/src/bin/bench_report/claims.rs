//! The figures the docs state, checked against every run.
//!
//! A figure in the docs carries an HTML comment (invisible when rendered) naming the report's
//! scenario and the range it claims:
//!
//! ```text
//! 2–4 µs per task <!-- bench "async" n=100000 ours_us=2..4 baseline_us=0.5..1.2 -->
//! ```
//!
//! `n` picks the row measured at that N (without it, the largest N measured); each other key is a
//! figure of that row: `ours_us` and `baseline_us` (µs per task), `ratio`, `ours_per_s` and
//! `baseline_per_s` (tasks per second). Every report checks every claim and says which hold, so a
//! figure in the docs cannot drift from what the code does without the next run saying so; the
//! tests check that every claim reads and names a scenario the report has.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::measure::ScenarioResult;
use crate::scenarios::names;

/// What opens a claim in a Markdown file.
const OPENING: &str = "<!-- bench ";

/// A figure of a scenario's row.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Figure {
    OursMicros,
    BaselineMicros,
    Ratio,
    OursPerSecond,
    BaselinePerSecond,
}

impl Figure {
    const ALL: [Figure; 5] = [
        Figure::OursMicros,
        Figure::BaselineMicros,
        Figure::Ratio,
        Figure::OursPerSecond,
        Figure::BaselinePerSecond,
    ];

    fn key(self) -> &'static str {
        match self {
            Figure::OursMicros => "ours_us",
            Figure::BaselineMicros => "baseline_us",
            Figure::Ratio => "ratio",
            Figure::OursPerSecond => "ours_per_s",
            Figure::BaselinePerSecond => "baseline_per_s",
        }
    }

    fn of(self, row: &ScenarioResult) -> f64 {
        match self {
            Figure::OursMicros => row.ns_per_task / 1e3,
            Figure::BaselineMicros => row.baseline_ns_per_task / 1e3,
            Figure::Ratio => row.ratio,
            Figure::OursPerSecond => 1e9 / row.ns_per_task,
            Figure::BaselinePerSecond => 1e9 / row.baseline_ns_per_task,
        }
    }

    /// `value` as the report writes this figure.
    fn show(self, value: f64) -> String {
        match self {
            Figure::OursMicros | Figure::BaselineMicros => format!("{value:.2} µs per task"),
            Figure::Ratio => format!("ratio {value:.2}"),
            Figure::OursPerSecond | Figure::BaselinePerSecond => format!("{value:.0} tasks/s"),
        }
    }

    fn whose(self) -> &'static str {
        match self {
            Figure::OursMicros | Figure::OursPerSecond => "ours",
            Figure::BaselineMicros | Figure::BaselinePerSecond => "baseline",
            Figure::Ratio => "",
        }
    }
}

/// One figure a doc claims: a scenario's figure lies in `low..=high`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Claim {
    /// The file, relative to the workspace root, and the line the claim is on (from 1).
    file: String,
    line: usize,
    scenario: String,
    n: Option<u64>,
    figure: Figure,
    low: f64,
    high: f64,
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = self.figure.whose();
        if !whose.is_empty() {
            write!(f, "{whose} ")?;
        }
        // `{}` of an f64 writes a bound as the doc did: 2 as "2", 0.5 as "0.5".
        match self.figure {
            Figure::OursMicros | Figure::BaselineMicros => {
                write!(f, "{}–{} µs per task", self.low, self.high)
            }
            Figure::Ratio => write!(f, "ratio {}–{}", self.low, self.high),
            Figure::OursPerSecond | Figure::BaselinePerSecond => {
                write!(f, "{}–{} tasks/s", self.low, self.high)
            }
        }
    }
}

/// Every claim in `text` (the contents of `file`), outside fenced code blocks (where a claim is
/// an example of one).
///
/// # Errors
///
/// The first claim that does not read, with its file, line and what is wrong.
fn parse(file: &str, text: &str) -> Result<Vec<Claim>, String> {
    let mut claims = Vec::new();
    let mut in_code = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let at = |why: String| format!("{file}:{}: {why}", index + 1);
        let mut rest = line;
        while let Some(start) = rest.find(OPENING) {
            let body = &rest[start + OPENING.len()..];
            let end = body
                .find("-->")
                .ok_or_else(|| at("a claim not closed with `-->` on its line".into()))?;
            claims.extend(parse_one(file, index + 1, &body[..end]).map_err(at)?);
            rest = &body[end + 3..];
        }
    }
    Ok(claims)
}

/// The claims of one comment: `"scenario" [n=N] key=LOW..HIGH ...`.
fn parse_one(file: &str, line: usize, body: &str) -> Result<Vec<Claim>, String> {
    let body = body.trim();
    let scenario = body
        .strip_prefix('"')
        .and_then(|rest| rest.split_once('"'))
        .map(|(name, _)| name.to_owned())
        .ok_or("a claim starts with its scenario's name in double quotes")?;
    let rest = &body[scenario.len() + 2..];
    let mut n = None;
    let mut ranges = Vec::new();
    for token in rest.split_whitespace() {
        let (key, value) = token
            .split_once('=')
            .ok_or_else(|| format!("`{token}` is not key=value"))?;
        if key == "n" {
            n = Some(
                value
                    .replace('_', "")
                    .parse::<u64>()
                    .map_err(|_| format!("n=`{value}` is not a whole number"))?,
            );
            continue;
        }
        let figure = Figure::ALL
            .into_iter()
            .find(|figure| figure.key() == key)
            .ok_or_else(|| {
                let keys: Vec<&str> = Figure::ALL.iter().map(|f| f.key()).collect();
                format!("unknown figure `{key}` (expected n or {})", keys.join(", "))
            })?;
        let bound = |text: &str| text.replace('_', "").parse::<f64>().ok();
        let (low, high) = value
            .split_once("..")
            .and_then(|(low, high)| bound(low).zip(bound(high)))
            .filter(|(low, high)| low <= high)
            .ok_or_else(|| format!("{key}=`{value}` is not a range LOW..HIGH with LOW <= HIGH"))?;
        ranges.push((figure, low, high));
    }
    if ranges.is_empty() {
        return Err(format!("the claim about `{scenario}` names no figure"));
    }
    Ok(ranges
        .into_iter()
        .map(|(figure, low, high)| Claim {
            file: file.to_owned(),
            line,
            scenario: scenario.clone(),
            n,
            figure,
            low,
            high,
        })
        .collect())
}

/// The workspace root, where the docs are.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Every claim in the README and the Markdown files under `docs/`.
///
/// # Errors
///
/// A file that cannot be read, or the first claim that does not read.
pub(crate) fn read(root: &Path) -> Result<Vec<Claim>, String> {
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
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
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        claims.extend(parse(&name, &text)?);
    }
    Ok(claims)
}

/// A claim and what this run measured of it.
#[derive(Debug, Serialize)]
pub(crate) struct Checked {
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) scenario: String,
    pub(crate) n: Option<u64>,
    pub(crate) figure: &'static str,
    pub(crate) low: f64,
    pub(crate) high: f64,
    /// What the claim says, as the report writes it.
    pub(crate) claim: String,
    /// The figure measured, and the N it was measured at; `None` when the row was not run.
    pub(crate) measured: Option<f64>,
    pub(crate) measured_n: Option<u64>,
    /// Whether the figure lies in the range; `None` when the row was not run.
    pub(crate) holds: Option<bool>,
    /// Set when the claim names a scenario the report does not have.
    pub(crate) problem: Option<String>,
}

impl Checked {
    /// The measured figure as the report writes it.
    pub(crate) fn measured_text(&self) -> String {
        let figure = Figure::ALL.into_iter().find(|f| f.key() == self.figure);
        match (self.measured, figure) {
            (Some(value), Some(figure)) => {
                format!(
                    "{} at N = {}",
                    figure.show(value),
                    self.measured_n.unwrap_or(0)
                )
            }
            _ => "–".to_owned(),
        }
    }
}

/// Checks each claim against the rows measured.
pub(crate) fn check(claims: &[Claim], rows: &[ScenarioResult]) -> Vec<Checked> {
    let known = names::all();
    claims
        .iter()
        .map(|claim| {
            let row = crate::measure::row(rows, &claim.scenario, claim.n);
            let measured = row.map(|row| claim.figure.of(row));
            Checked {
                file: claim.file.clone(),
                line: claim.line,
                scenario: claim.scenario.clone(),
                n: claim.n,
                figure: claim.figure.key(),
                low: claim.low,
                high: claim.high,
                claim: claim.to_string(),
                measured,
                measured_n: row.map(|row| row.n),
                holds: measured.map(|value| claim.low <= value && value <= claim.high),
                problem: (!known.contains(&claim.scenario))
                    .then(|| format!("the report has no scenario `{}`", claim.scenario)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, n: u64, ns_per_task: f64, baseline_ns_per_task: f64) -> ScenarioResult {
        ScenarioResult::example(name, n, ns_per_task, baseline_ns_per_task)
    }

    #[test]
    fn claims_read_from_comments_anywhere_on_a_line() {
        let text = "intro\n| async | 2–4 µs <!-- bench \"async\" n=100_000 ours_us=2..4 baseline_us=0.5..1.2 --> | x <!-- bench \"threaded\" ratio=0.1..0.3 --> |\n";
        let claims = parse("docs/a.md", text).expect("valid claims");
        assert_eq!(claims.len(), 3);
        assert_eq!(
            claims[0],
            Claim {
                file: "docs/a.md".into(),
                line: 2,
                scenario: "async".into(),
                n: Some(100_000),
                figure: Figure::OursMicros,
                low: 2.0,
                high: 4.0,
            }
        );
        assert_eq!(claims[1].figure, Figure::BaselineMicros);
        assert_eq!((claims[1].low, claims[1].high), (0.5, 1.2));
        assert_eq!(
            (claims[2].scenario.as_str(), claims[2].n, claims[2].figure),
            ("threaded", None, Figure::Ratio)
        );
        assert_eq!(claims[0].to_string(), "ours 2–4 µs per task");
        assert_eq!(claims[1].to_string(), "baseline 0.5–1.2 µs per task");
        let per_second = parse(
            "x.md",
            "<!-- bench \"distributed (NATS JetStream), 2 workers\" ours_per_s=17_000..39_000 -->",
        )
        .expect("valid");
        assert_eq!(per_second[0].to_string(), "ours 17000–39000 tasks/s");
        assert!(
            parse("x.md", "no claims here <!-- a comment -->")
                .unwrap()
                .is_empty()
        );
        let example = "```text\n<!-- bench \"async\" ratio=0..1 -->\n```\n<!-- bench \"threaded\" ratio=0..1 -->\n";
        let outside_code = parse("x.md", example).expect("valid");
        assert_eq!(outside_code.len(), 1, "the fenced example is not a claim");
        assert_eq!(
            (outside_code[0].scenario.as_str(), outside_code[0].line),
            ("threaded", 4)
        );
    }

    #[test]
    fn a_claim_that_does_not_read_says_where_and_why() {
        let error = |text: &str| parse("docs/b.md", text).expect_err("invalid");
        let cases = [
            ("<!-- bench async ours_us=1..2 -->", "double quotes"),
            ("<!-- bench \"async\" ours_us=1..2", "not closed"),
            (
                "<!-- bench \"async\" speed=1..2 -->",
                "unknown figure `speed`",
            ),
            ("<!-- bench \"async\" ours_us=3..2 -->", "LOW <= HIGH"),
            ("<!-- bench \"async\" ours_us=fast -->", "not a range"),
            (
                "<!-- bench \"async\" n=many ours_us=1..2 -->",
                "not a whole number",
            ),
            ("<!-- bench \"async\" ours_us -->", "not key=value"),
            ("<!-- bench \"async\" n=10 -->", "names no figure"),
        ];
        for (text, why) in cases {
            let message = error(&format!("line one\n{text}\n"));
            assert!(message.starts_with("docs/b.md:2: "), "{message}");
            assert!(message.contains(why), "{text}: {message}");
        }
    }

    #[test]
    fn each_claim_is_judged_on_its_row() {
        let claims = parse(
            "d.md",
            "<!-- bench \"async\" n=100000 ours_us=2..4 baseline_us=0.5..1.2 -->\n\
             <!-- bench \"async\" ratio=0.3..1 -->\n\
             <!-- bench \"process throughput, 2 workers\" ours_per_s=150000..480000 -->\n\
             <!-- bench \"no such scenario\" ratio=0..1 -->\n",
        )
        .expect("valid");
        let rows = [
            row("async", 10_000, 9_000.0, 1_000.0),
            row("async", 100_000, 3_000.0, 1_500.0),
            row("async", 1_000_000, 5_000.0, 1_000.0),
        ];
        let checked = check(&claims, &rows);
        // At N = 100,000: 3 µs holds, the baseline's 1.5 µs does not.
        assert_eq!(
            (checked[0].measured, checked[0].holds),
            (Some(3.0), Some(true))
        );
        assert_eq!(checked[0].measured_n, Some(100_000));
        assert_eq!(
            (checked[1].measured, checked[1].holds),
            (Some(1.5), Some(false))
        );
        assert_eq!(checked[1].measured_text(), "1.50 µs per task at N = 100000");
        // Without n: the largest N measured (ratio 0.2 at 1,000,000).
        assert_eq!(checked[2].measured_n, Some(1_000_000));
        assert_eq!(checked[2].holds, Some(false));
        // Not run: neither held nor broken.
        assert_eq!((checked[3].measured, checked[3].holds), (None, None));
        assert_eq!(checked[3].measured_text(), "–");
        assert!(checked[..4].iter().all(|c| c.problem.is_none()));
        assert!(
            checked[4]
                .problem
                .as_deref()
                .unwrap()
                .contains("no such scenario")
        );
    }

    /// The docs' own claims: every one reads and names a scenario the report has, so a renamed
    /// scenario or a mistyped claim fails here, not silently in the report.
    #[test]
    fn every_claim_in_the_docs_reads_and_names_a_scenario() {
        let claims = read(&workspace_root()).expect("the docs' claims read");
        assert!(
            claims.len() >= 6,
            "the docs' figures carry claims: {claims:?}"
        );
        let known = names::all();
        for claim in &claims {
            assert!(
                known.contains(&claim.scenario),
                "{}:{} names `{}`, which the report does not have",
                claim.file,
                claim.line,
                claim.scenario
            );
        }
    }
}
