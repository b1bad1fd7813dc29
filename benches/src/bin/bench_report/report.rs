//! Writing the report: JSON for tools, Markdown for people, SVG for the eye.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::claims::Claim;
use crate::measure::Row;
use crate::memory::Memory;

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) quick: bool,
    /// The groups run when `--only` picked some; `None` when every group ran.
    pub(crate) only: Option<Vec<String>>,
    /// The machine, its load, the commit and the build.
    pub(crate) environment: String,
    pub(crate) scenarios: Vec<Row>,
    /// Instructions per task, counted under valgrind: `None` when not asked for, `Some(None)`
    /// when they could not be counted.
    pub(crate) instructions: Option<Option<Vec<Row>>>,
    pub(crate) memory: Option<Memory>,
    /// The docs' claims, each checked against this run (none when they could not be read).
    pub(crate) claims: Vec<Claim>,
    /// Why the docs' claims could not be read, when they could not.
    pub(crate) claims_unread: Option<String>,
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
pub(crate) fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    averages.join(" / ")
}

/// The report's opening line: the machine, its load before and after the run, the commit (and
/// whether tracked files differed from it) and whether the build was optimized.
pub(crate) fn environment(load_before: &str) -> String {
    let git = |args: &[&str]| {
        let mut git = std::process::Command::new("git");
        let out = git.current_dir(crate::workspace_root()).args(args).output();
        out.map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let status = git(&["status", "--porcelain", "--untracked-files=no"]);
    let changes = (!status.is_empty()).then_some(" with uncommitted changes");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut lines = cpuinfo.lines();
    let model = lines.find_map(|l| l.strip_prefix("model name")?.split_once(':'));
    let model = model.map_or("", |(_, model)| model.trim());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let build = if cfg!(debug_assertions) {
        "**without optimizations: these figures say nothing about the library's speed; run `cargo xtask bench`**"
    } else {
        "optimized"
    };
    let (commit, load_after) = (git(&["rev-parse", "--short=12", "HEAD"]), load_average());
    format!(
        "{cpus} logical CPUs ({model}); load average {load_before} before the run, {load_after} after. Built at commit {commit}{}, {build}.",
        changes.unwrap_or_default()
    )
}

fn table(md: &mut String, rows: &[Row], unit: &str) {
    let _ = writeln!(
        md,
        "| scenario | N | ours {unit} | baseline | baseline {unit} | ratio | ours min–max | reps |"
    );
    md.push_str("|---|---:|---:|---|---:|---:|---:|---:|\n");
    for row in rows {
        let (name, n, ours, baseline) = (&row.name, row.n, row.ns_per_task, &row.baseline);
        let (base, ratio, min, max) = (row.baseline_ns_per_task, row.ratio, row.min, row.max);
        let line = format!("| {name} | {n} | {ours:.0} | {baseline} | {base:.0} | {ratio:.2} |");
        let _ = writeln!(md, "{line} {min:.0}–{max:.0} | {} |", row.reps);
    }
}

pub(crate) fn markdown(report: &Report) -> String {
    let run = if report.quick {
        "A quick run (`--quick`): few repetitions, small N"
    } else {
        "A full run"
    };
    let mut md = format!(
        "# Benchmark report\n\n{}\n\n{run}. Each scenario ran beside its baseline in the same process, interleaved; figures are medians of the repetitions, in ns per task (per message for the publisher's latency). `ratio` is the baseline's cost divided by ours (1.00 = as fast as the raw baseline). Only ratios within one run mean anything on a shared machine.\n\n",
        report.environment
    );
    if let Some(only) = &report.only {
        let only = only.join(", ");
        let _ = writeln!(md, "Only these groups ran (`--only`): {only}.\n");
    }
    table(&mut md, &report.scenarios, "ns/task");
    match &report.instructions {
        Some(Some(counts)) => {
            md.push_str("\nInstructions per task, counted by valgrind (all threads; the cost of a task in a coordinator that has run before: 3 rounds less 1 round over the same ids). Counts move by a few percent between runs (the runtime's idle threads count too), where times on a shared machine move by tens of percent; they do not show cache misses or lock waits.\n\n");
            table(&mut md, counts, "instructions/task");
        }
        Some(None) => md.push_str("\nInstructions per task: not counted in this run (valgrind not found, or a count failed).\n"),
        None => {}
    }
    if let Some(m) = &report.memory {
        // Judged at the sizes the targets name, not at a quick run's.
        let verdict = |met: bool, judged: bool| match (judged, met) {
            (false, _) => "not judged at this run's size",
            (true, true) => "met",
            (true, false) => "missed",
        };
        let (peak, after) = (m.peak_bytes_per_retained_job, m.bytes_per_retained_job);
        let (jobs, judged) = (m.jobs, verdict(peak <= 200.0, m.jobs >= 1_000_000));
        let _ = write!(
            md,
            "\nMemory: {peak:.0} bytes of peak resident memory per retained closed job ({after:.0} once all {jobs} were added; target: at most 200 at 1,000,000, {judged})."
        );
        if let Some(b) = &m.bounded_retention {
            let (keep, ratio) = (b.keep_last, b.growth_ratio);
            let (first, total) = (b.tasks_at_checkpoint, b.tasks_total);
            let mib = b.rss_growth_bytes_at_end as f64 / 1048576.0;
            let judged = verdict(ratio <= 1.1, total >= 10_000_000);
            let _ = write!(
                md,
                " Keeping the last {keep} closed jobs, resident memory grew {ratio:.2}x from {first} to {total} tasks, to {mib:.1} MiB (target: flat within 10% from 1M to 10M, {judged})."
            );
        }
        md.push('\n');
    }
    md.push_str("\n## Claims in the docs\n\n");
    match &report.claims_unread {
        Some(why) => md.push_str(&format!("The docs could not be read: {why}\n")),
        None => {
            md.push_str("Every ratio the docs state, and every target they set, checked against this run (docs/benchmarks.md, \"Claims in the docs\"). A claim outside its range means the docs need a new range, or the code got slower or faster.\n\n| where | claim | measured | |\n|---|---|---|---|\n");
            for c in &report.claims {
                // Past a claim's own two decimals, so a value just outside its range reads so.
                let measured = |(m, n)| format!("{m:.4} at N = {n}");
                let measured = c.measured.map_or("–".into(), measured);
                let (file, line, claim, verdict) = (&c.file, c.line, &c.claim, &c.verdict);
                let _ = writeln!(md, "| {file}:{line} | `{claim}` | {measured} | {verdict} |");
            }
        }
    }
    md
}

/// The bar colours, and what each says.
const COLOURS: [[&str; 2]; 2] = [
    ["#4a90d9", "ratio at least 0.5"],
    ["#d9822b", "ratio below 0.5"],
];

/// Each scenario's ratio to its baseline as a bar, under a legend of the bars' colours.
pub(crate) fn svg(report: &Report) -> String {
    let (bar_h, scale) = (22.0, 300.0); // pixels for a row, and for ratio 1.0
    let label = |s: &Row| format!("{} (N={})", s.name, s.n);
    let labels: Vec<String> = report.scenarios.iter().map(label).collect();
    // Room for the longest label (about 7 pixels a character), and past the longest bar (capped at
    // 1.5) for its figure.
    let left = (labels.iter().map(String::len).max().unwrap_or(0) as f64 * 7.0 + 16.0).max(200.0);
    let width = left + 1.5 * scale + 60.0;
    let (bottom, label_x) = (40.0 + labels.len() as f64 * bar_h, left - 6.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">Ratio to the raw baseline (1.0 = as fast)</text>\n",
        bottom + 10.0
    );
    for (i, [colour, meaning]) in COLOURS.iter().enumerate() {
        let x = width - 300.0 + i as f64 * 150.0;
        let text_x = x + 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="9" width="12" height="12" fill="{colour}"/><text x="{text_x}" y="20">{meaning}</text>"#
        );
    }
    for (i, (s, label)) in report.scenarios.iter().zip(labels).enumerate() {
        let (y, ratio) = (30.0 + i as f64 * bar_h, s.ratio);
        let w = (ratio.min(1.5) * scale).max(1.0);
        let colour = COLOURS[usize::from(ratio < 0.5)][0];
        let (text_y, bar_y, figure_x) = (y + 15.0, y + 3.0, left + w + 4.0);
        // The bar stops at 1.5; the figure says how far past it the ratio is.
        let past = if ratio > 1.5 { " ›" } else { "" };
        let _ = writeln!(
            svg,
            r#"<text x="{label_x}" y="{text_y}" text-anchor="end">{label}</text><rect x="{left}" y="{bar_y}" width="{w:.1}" height="16" fill="{colour}"/><text x="{figure_x}" y="{text_y}">{ratio:.2}{past}</text>"#
        );
    }
    for ratio in [0.5, 1.0] {
        let (x, y) = (left + ratio * scale, bottom - 8.0);
        let text_y = y + 12.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="28" x2="{x}" y2="{y}" stroke="#888" stroke-dasharray="4 3"/><text x="{x}" y="{text_y}" text-anchor="middle" fill="#555">{ratio:.1}</text>"##
        );
    }
    svg + "</svg>\n"
}

pub(crate) fn write(report: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    std::fs::write(dir.join("report.svg"), svg(report))
}
