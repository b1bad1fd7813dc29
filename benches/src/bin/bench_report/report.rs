//! Writing the report: JSON for tools, Markdown for people, SVG for the eye.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::claims::Checked;
use crate::environment::Environment;
use crate::instructions::InstructionCount;
use crate::measure::ScenarioResult;
use crate::memory::Memory;
use crate::scenarios::names;

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) quick: bool,
    /// The groups run when `--only` picked some; `None` when every group ran.
    pub(crate) only: Option<Vec<String>>,
    pub(crate) environment: Environment,
    pub(crate) scenarios: Vec<ScenarioResult>,
    /// Instructions per task, counted under valgrind; `None` where it could not run.
    pub(crate) instructions: Option<Vec<InstructionCount>>,
    /// `None` when the publisher group was not run (`--only`).
    pub(crate) publisher_latency: Option<serde_json::Value>,
    /// `None` when the memory group was not run (`--only`).
    pub(crate) memory: Option<Memory>,
    /// The docs' figures, each checked against this run.
    pub(crate) claims: Vec<Checked>,
    /// Why the docs' claims could not be read, if they could not.
    pub(crate) claims_unread: Option<String>,
}

impl Report {
    /// Whether `group` ran: every group does unless `--only` picked some.
    pub(crate) fn ran(&self, group: &str) -> bool {
        crate::runs(self.only.as_deref(), group)
    }
}

/// A target the benchmark reports on (nothing asserts it).
#[derive(Serialize)]
struct Target {
    what: String,
    measured: String,
    met: Option<bool>,
}

fn find<'a>(report: &'a Report, name: &str, n: Option<u64>) -> Option<&'a ScenarioResult> {
    crate::measure::row(&report.scenarios, name, n)
}

/// What a target whose scenario did not run says it measured.
const NOT_RUN: &str = "not run";

impl Target {
    /// A target judged from `measured` (what was measured, and whether it meets the target, when
    /// the run was large enough to say), or reported as not run.
    fn new(what: impl Into<String>, measured: Option<(String, Option<bool>)>) -> Self {
        let (measured, met) = measured.unwrap_or_else(|| (NOT_RUN.into(), None));
        Self {
            what: what.into(),
            measured,
            met,
        }
    }
}

/// Every target, in a fixed order; those whose scenarios did not run (`--only`) say so.
fn targets(report: &Report) -> Vec<Target> {
    let mut targets = Vec::new();
    for name in [names::ASYNC, names::THREADED] {
        let s = find(report, name, Some(100_000)).or_else(|| find(report, name, None));
        targets.push(Target::new(
            format!("{name} ratio >= 0.5 at N = 100,000"),
            s.map(|s| {
                (
                    format!("{:.2} at N = {}", s.ratio, s.n),
                    (s.n >= 100_000).then_some(s.ratio >= 0.5),
                )
            }),
        ));
    }
    targets.push(Target::new(
        "one submit_many batch ratio >= 0.7 at N = 100,000",
        find(report, names::BATCH, None).map(|s| {
            (
                format!("{:.2} at N = {}", s.ratio, s.n),
                (s.n >= 100_000).then_some(s.ratio >= 0.7),
            )
        }),
    ));
    targets.push(Target::new(
        "beside a subscriber that never reads: cost per task within 10% of none",
        find(report, names::STUCK, None).map(|s| {
            (
                format!("{:.2}x at N = {}", 1.0 / s.ratio, s.n),
                (s.n >= 100_000).then_some(1.0 / s.ratio <= 1.1),
            )
        }),
    ));
    targets.push(Target::new(
        "publisher with 16 subscribers >= 0.5 of broadcast",
        find(report, &names::fan_out(16), None)
            .map(|s| (format!("{:.2}", s.ratio), Some(s.ratio >= 0.5))),
    ));
    let small = find(report, names::ASYNC, Some(10_000));
    let large =
        find(report, names::ASYNC, Some(1_000_000)).or_else(|| find(report, names::ASYNC, None));
    targets.push(Target::new(
        "cost per task at 1,000,000 <= 1.5x that at 10,000",
        small.zip(large).filter(|(small, large)| large.n > small.n).map(|(small, large)| {
            let growth = large.ns_per_task / small.ns_per_task;
            let baseline_growth = large.baseline_ns_per_task / small.baseline_ns_per_task;
            (
                format!(
                    "{growth:.2}x (N = {} vs 10,000; the raw baseline grew {baseline_growth:.2}x)",
                    large.n
                ),
                (large.n >= 1_000_000).then_some(growth <= 1.5),
            )
        }),
    ));
    // Judged pinned to one CPU where that was measured: unpinned, both sides move with where the
    // scheduler puts the threads from one repetition to the next.
    let pinned = find(report, names::PINNED_ROUND_TRIP, None);
    let unpinned = find(report, names::ROUND_TRIP, None);
    targets.push(Target::new(
        "process round trip within 2x of a raw pipe",
        pinned.or(unpinned).map(|s| {
            let mut measured = format!("{:.2}x", 1.0 / s.ratio);
            if pinned.is_some() {
                measured.push_str(" pinned to one CPU");
                if let Some(u) = unpinned {
                    let _ = write!(measured, " ({:.2}x unpinned)", 1.0 / u.ratio);
                }
            } else {
                measured.push_str(" unpinned (the pinned run failed)");
            }
            (measured, Some(s.ratio >= 0.5))
        }),
    ));
    targets.push(Target::new(
        ">= 100,000 trivial tasks/s with 2 workers, pipelined",
        find(report, names::THROUGHPUT, None).map(|s| {
            let per_second = 1e9 / s.ns_per_task;
            (
                format!("{per_second:.0} tasks/s"),
                Some(per_second >= 100_000.0),
            )
        }),
    ));
    targets.push(Target::new(
        ">= 20,000 trivial tasks/s end to end through NATS JetStream, 2 workers",
        find(report, names::DISTRIBUTED, None).map(|s| {
            let per_second = 1e9 / s.ns_per_task;
            (
                format!(
                    "{per_second:.0} tasks/s (raw work queue: {:.0}/s)",
                    1e9 / s.baseline_ns_per_task
                ),
                Some(per_second >= 20_000.0),
            )
        }),
    ));
    let memory = report.memory.as_ref();
    targets.push(Target::new(
        "<= 200 bytes of peak resident memory per retained closed job",
        memory.map(|memory| {
            (
                format!(
                    "{:.0} bytes at the peak, {:.0} after ({} jobs)",
                    memory.peak_bytes_per_retained_job, memory.bytes_per_retained_job, memory.jobs
                ),
                (memory.jobs >= 1_000_000).then_some(memory.peak_bytes_per_retained_job <= 200.0),
            )
        }),
    ));
    targets.push(Target::new(
        "bounded retention: memory flat (10%) from 1M to 10M tasks",
        memory.map(|memory| {
            let bounded = memory.bounded_retention.as_ref();
            let field = |name: &str| bounded.and_then(|b| b[name].as_f64());
            let measured = match (
                field("growth_ratio"),
                field("tasks_at_checkpoint"),
                field("tasks_total"),
                field("rss_growth_bytes_at_end"),
            ) {
                (Some(ratio), Some(first), Some(total), Some(end)) => format!(
                    "{ratio:.2}x ({first:.0} -> {total:.0} tasks, keeping the last {}; {:.1} MiB at the end)",
                    bounded.map_or(0, |b| b["keep_last"].as_u64().unwrap_or(0)),
                    end / (1024.0 * 1024.0)
                ),
                _ => "the measurement failed".into(),
            };
            let met = match (field("growth_ratio"), field("tasks_total")) {
                (Some(ratio), Some(total)) if total >= 10_000_000.0 => Some(ratio <= 1.1),
                _ => None,
            };
            (measured, met)
        }),
    ));
    targets
}

/// A row's `busy elsewhere`, with the readings of the sets measured again and set aside.
fn busy_cell(row: &ScenarioResult) -> String {
    let mut cell = percent(row.busy_elsewhere);
    if !row.busy_elsewhere_set_aside.is_empty() {
        let aside: Vec<String> = row
            .busy_elsewhere_set_aside
            .iter()
            .map(|&busy| percent(Some(busy)))
            .collect();
        let _ = write!(cell, " (measured again; set aside: {})", aside.join(", "));
    }
    cell
}

/// A share as a whole percentage, or a dash where it was not read.
fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "–".to_owned(), |share| format!("{:.0}%", share * 100.0))
}

pub(crate) fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark report\n");
    let _ = writeln!(
        md,
        "{}\n\n{}. Each scenario ran beside its baseline in the same process, interleaved; figures are medians of the repetitions, per task. `ratio` is the baseline's cost divided by ours (1.00 = as fast as the raw baseline). Only ratios within one run mean anything on a shared machine.\n",
        report.environment.describe(),
        if report.quick {
            "A quick run (`--quick`): few repetitions, small N"
        } else {
            "A full run"
        }
    );
    if let Some(only) = &report.only {
        let _ = writeln!(
            md,
            "Only these groups ran (`--only`): {}.\n",
            only.join(", ")
        );
    }
    let _ = writeln!(
        md,
        "| scenario | N | ours ns/task | baseline | baseline ns/task | ratio | ours min–max | reps | busy elsewhere |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for s in &report.scenarios {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {:.0} | {:.2} | {:.0}–{:.0} | {} | {} |",
            s.name,
            s.n,
            s.ns_per_task,
            s.baseline,
            s.baseline_ns_per_task,
            s.ratio,
            s.min,
            s.max,
            s.reps,
            busy_cell(s)
        );
    }
    let _ = writeln!(
        md,
        "\n`busy elsewhere`: the share of the machine's CPU time that went to other processes while the row's repetitions ran (the NATS server among them in the distributed row), time a hypervisor gave to other machines included; the report's own worker and child processes count as its own; – where the repetitions were too short to tell (under about a tenth of a second). A row's repetitions are run again, up to twice, while more than {:.0}% of the machine was busy elsewhere, and the least disturbed set is kept (not the distributed row: its server is always busy). Over the whole run: {}.",
        crate::measure::DISTURBED * 100.0,
        percent(report.environment.busy_elsewhere)
    );
    match &report.instructions {
        Some(counts) => {
            let _ = writeln!(
                md,
                "\nInstructions per task, counted by valgrind (all threads; the cost of a task in a coordinator that has run before: 3 rounds less 1 round over the same ids). Counts move by a few percent between runs (the runtime's idle threads count too), where times on a shared machine move by tens of percent; they do not show cache misses or lock waits.\n"
            );
            let _ = writeln!(
                md,
                "| scenario | N | ours instructions/task | baseline | baseline instructions/task | ratio |"
            );
            let _ = writeln!(md, "|---|---:|---:|---|---:|---:|");
            for c in counts {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {} | {:.0} | {:.2} |",
                    c.name,
                    c.n,
                    c.instructions_per_task,
                    c.baseline,
                    c.baseline_instructions_per_task,
                    c.ratio
                );
            }
        }
        None if !report.ran("instructions") => {}
        None => {
            let _ = writeln!(
                md,
                "\nInstructions per task: not counted in this run (valgrind not found, or a count failed).\n"
            );
        }
    }
    if let Some(latency) = &report.publisher_latency {
        let _ = writeln!(
            md,
            "\nPublish-to-delivery latency, one message at a time to one subscriber ({} messages): publisher p50 {:.1} µs, p99 {:.1} µs; tokio::sync::broadcast p50 {:.1} µs, p99 {:.1} µs.\n",
            latency["messages"],
            latency["publisher"]["p50_us"].as_f64().unwrap_or(f64::NAN),
            latency["publisher"]["p99_us"].as_f64().unwrap_or(f64::NAN),
            latency["broadcast"]["p50_us"].as_f64().unwrap_or(f64::NAN),
            latency["broadcast"]["p99_us"].as_f64().unwrap_or(f64::NAN),
        );
    }
    if let Some(memory) = &report.memory {
        let _ = writeln!(
            md,
            "Memory: {:.0} bytes of resident memory per retained closed job once {} were added, {:.0} at the peak while they were.\n",
            memory.bytes_per_retained_job, memory.jobs, memory.peak_bytes_per_retained_job
        );
    }
    // One blank line before the heading, whichever of the lines above were written.
    if !md.ends_with("\n\n") {
        md.push('\n');
    }
    let _ = writeln!(md, "## Targets\n\n| target | measured | |\n|---|---|---|");
    let targets = targets(report);
    for t in &targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "missed",
            None if t.measured == NOT_RUN => "not measured in this run",
            // Measured at a smaller size than the target names (`--quick`).
            None => "not judged at this run's size",
        };
        let _ = writeln!(md, "| {} | {} | {} |", t.what, t.measured, verdict);
    }
    if targets.iter().any(|t| t.met == Some(false)) {
        let _ = writeln!(
            md,
            "\nWhat limits the missed targets, measured: docs/benchmarks.md (\"Where the async and threaded time goes\"; the distributed figure is set by the NATS server's share of the machine, docs/distributed.md, \"Cost\")."
        );
    }
    claims_section(report, &mut md);
    md
}

/// The docs' figures, each against what this run measured.
fn claims_section(report: &Report, md: &mut String) {
    let _ = writeln!(md, "\n## Claims in the docs\n");
    if let Some(why) = &report.claims_unread {
        let _ = writeln!(md, "The docs' claims could not be read: {why}");
        return;
    }
    let _ = writeln!(
        md,
        "Every figure the docs state about these scenarios, checked against this run. The ranges come from earlier runs on a shared 2-core machine: outside one on such a machine, the docs need a new range or the code got slower; on another machine, compare the ratios instead.\n"
    );
    let _ = writeln!(
        md,
        "| where | scenario | claim | measured | |\n|---|---|---|---|---|"
    );
    for c in &report.claims {
        let verdict = match (&c.problem, c.holds) {
            (Some(problem), _) => problem.as_str(),
            (None, Some(true)) => "holds",
            (None, Some(false)) => "outside",
            (None, None) => "not measured in this run",
        };
        let scenario = match c.n {
            Some(n) => format!("{} (N = {n})", c.scenario),
            None => c.scenario.clone(),
        };
        let _ = writeln!(
            md,
            "| {}:{} | {scenario} | {} | {} | {verdict} |",
            c.file,
            c.line,
            c.claim,
            c.measured_text()
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Two panels: each scenario's ratio as a bar, and async cost per task against N.
pub(crate) fn svg(report: &Report) -> String {
    let bar_h = 22.0;
    let scale = 300.0; // pixels for ratio 1.0
    // Room for the longest label (about 7 pixels a character at this size), and past the
    // longest bar (capped at 1.5) for its figure.
    let longest = report
        .scenarios
        .iter()
        .map(|s| s.name.chars().count() + format!(" (N={})", s.n).len())
        .max()
        .unwrap_or(0);
    let left = (longest as f64 * 7.0 + 16.0).max(200.0);
    let width = left + 1.5 * scale + 60.0;
    let rows = report.scenarios.len() as f64;
    let panel1 = 40.0 + rows * bar_h;
    let height = panel1 + 260.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14">Ratio to the raw baseline (1.0 = as fast)</text>"#
    );
    for (i, s) in report.scenarios.iter().enumerate() {
        let y = 30.0 + i as f64 * bar_h;
        let w = (s.ratio.min(1.5) * scale).max(1.0);
        let color = if s.ratio >= 0.5 { "#4a90d9" } else { "#d9822b" };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{} (N={})</text><rect x="{left}" y="{}" width="{w:.1}" height="{}" fill="{color}"/><text x="{}" y="{}">{:.2}{}</text>"#,
            left - 6.0,
            y + 15.0,
            escape(&s.name),
            s.n,
            y + 3.0,
            bar_h - 6.0,
            left + w + 4.0,
            y + 15.0,
            s.ratio,
            // The bar stops at 1.5; the figure says how far past it the ratio is.
            if s.ratio > 1.5 { " ›" } else { "" }
        );
    }
    for (ratio, label) in [(0.5, "0.5"), (1.0, "1.0")] {
        let x = left + ratio * scale;
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="28" x2="{x}" y2="{}" stroke="#888" stroke-dasharray="4 3"/><text x="{x}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            panel1 - 8.0,
            panel1 + 4.0
        );
    }
    // Panel 2: async ns/task against N (log N).
    let series: Vec<&ScenarioResult> = report
        .scenarios
        .iter()
        .filter(|s| s.name == "async")
        .collect();
    let top = panel1 + 30.0;
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="14">async: cost per task against N (ours solid, baseline dashed)</text>"#,
        top
    );
    if series.len() >= 2 {
        let (x0, x1, y0, y1) = (80.0, width - 40.0, top + 200.0, top + 40.0);
        let lo = (series[0].n as f64).log10();
        let hi = (series[series.len() - 1].n as f64).log10();
        let max = series
            .iter()
            .map(|s| s.ns_per_task.max(s.baseline_ns_per_task))
            .fold(0.0, f64::max)
            * 1.1;
        let px = |n: u64| x0 + ((n as f64).log10() - lo) / (hi - lo).max(1e-9) * (x1 - x0);
        let py = |v: f64| y0 - v / max * (y0 - y1);
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#000"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#000"/>"##
        );
        // The axis's top and bottom figures, beside the axis and clear of the points' labels.
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{:.0} ns</text><text x="{}" y="{}" text-anchor="end">0</text>"#,
            x0 - 6.0,
            y1 + 4.0,
            max,
            x0 - 6.0,
            y0 + 4.0
        );
        for (dash, pick) in [("", true), ("6 4", false)] {
            let points: Vec<String> = series
                .iter()
                .map(|s| {
                    let v = if pick {
                        s.ns_per_task
                    } else {
                        s.baseline_ns_per_task
                    };
                    format!("{:.1},{:.1}", px(s.n), py(v))
                })
                .collect();
            let _ = writeln!(
                svg,
                r##"<polyline points="{}" fill="none" stroke="#4a90d9" stroke-width="2" stroke-dasharray="{dash}"/>"##,
                points.join(" ")
            );
        }
        for s in &series {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="{}">{:.0} ns</text>"#,
                px(s.n),
                y0 + 16.0,
                s.n,
                px(s.n),
                py(s.ns_per_task) - 6.0,
                // Inside the plot at both ends, clear of the axis's figures.
                if s.n == series[0].n {
                    "start"
                } else if s.n == series[series.len() - 1].n {
                    "end"
                } else {
                    "middle"
                },
                s.ns_per_task
            );
        }
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

pub(crate) fn write(report: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // The report, and each target with its verdict (`met`: null where it was not judged).
    let mut json = serde_json::to_value(report).map_err(std::io::Error::other)?;
    json["targets"] = serde_json::to_value(targets(report)).map_err(std::io::Error::other)?;
    let json = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    std::fs::write(dir.join("report.svg"), svg(report))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row read while a quarter of the machine was busy elsewhere.
    fn scenario(name: &str, n: u64, ns_per_task: f64, baseline_ns_per_task: f64) -> ScenarioResult {
        ScenarioResult {
            busy_elsewhere: Some(0.25),
            ..ScenarioResult::example(name, n, ns_per_task, baseline_ns_per_task)
        }
    }

    fn report(scenarios: Vec<ScenarioResult>) -> Report {
        Report {
            quick: true,
            only: None,
            environment: Environment {
                logical_cpus: 2,
                arch: "x86_64",
                cpu_model: None,
                kernel: None,
                rustc: None,
                optimized: true,
                commit: None,
                uncommitted_changes: None,
                load_average_before: None,
                busy_elsewhere: None,
            },
            scenarios,
            instructions: None,
            publisher_latency: None,
            memory: None,
            claims: Vec::new(),
            claims_unread: None,
        }
    }

    fn round_trip_target(report: &Report) -> Option<Target> {
        targets(report)
            .into_iter()
            .find(|t| t.what.starts_with("process round trip"))
    }

    #[test]
    fn the_round_trip_is_judged_pinned_when_it_was_measured_pinned() {
        let both = report(vec![
            scenario("process round trip", 300, 50_000.0, 10_000.0),
            scenario(names::PINNED_ROUND_TRIP, 300, 15_000.0, 10_000.0),
        ]);
        let target = round_trip_target(&both).expect("a round trip target");
        assert_eq!(target.met, Some(true));
        assert_eq!(target.measured, "1.50x pinned to one CPU (5.00x unpinned)");

        let unpinned_only = report(vec![scenario(
            "process round trip",
            300,
            50_000.0,
            10_000.0,
        )]);
        let target = round_trip_target(&unpinned_only).expect("a round trip target");
        assert_eq!(target.met, Some(false));
        assert!(target.measured.contains("unpinned"));
    }

    /// The chart's width, from its root element.
    fn svg_width(svg: &str) -> f64 {
        let rest = &svg[svg.find("width=\"").expect("a width") + 7..];
        rest[..rest.find('"').expect("closed")]
            .parse()
            .expect("a number")
    }

    #[test]
    fn the_chart_makes_room_for_long_names_and_marks_ratios_past_its_end() {
        let short = svg(&report(vec![scenario("async", 10, 2.0, 1.0)]));
        let long_name = "a scenario with a name much longer than any the report has today";
        let long = svg(&report(vec![
            scenario(long_name, 10, 2.0, 1.0),
            scenario("fast", 10, 1.0, 3.0),
        ]));
        assert!(svg_width(&long) > svg_width(&short) + 200.0);
        assert!(
            long.contains(">3.00 ›</text>"),
            "past the bar's end: {long}"
        );
        assert!(long.contains(">0.50</text>"));
        assert!(!short.contains('›'));
    }

    #[test]
    fn targets_of_groups_not_run_say_so() {
        let mut only_async = report(vec![scenario("async", 100_000, 2_000.0, 1_200.0)]);
        only_async.only = Some(vec!["async".to_owned()]);
        let all = targets(&only_async);
        assert_eq!(all.len(), 11, "every target is listed");
        let async_target = &all[0];
        assert_eq!(async_target.met, Some(true));
        assert_eq!(async_target.measured, "0.60 at N = 100000");
        for target in &all[1..] {
            assert_eq!(target.met, None, "{}", target.what);
            assert_eq!(target.measured, "not run", "{}", target.what);
        }
        let md = markdown(&only_async);
        assert!(md.contains("Only these groups ran (`--only`): async."));
        assert!(!md.contains("Memory:") && !md.contains("Publish-to-delivery"));
        assert!(
            !md.contains("Instructions per task"),
            "not run, so not said missing"
        );
        assert!(md.contains("| not run | not measured in this run |"));
        assert!(
            !md.contains("What limits the missed targets"),
            "none was missed"
        );
        let mut disturbed = scenario("threaded", 100_000, 3_000.0, 300.0);
        disturbed.busy_elsewhere_set_aside = vec![0.5, 0.75];
        assert!(
            markdown(&report(vec![disturbed]))
                .contains("| 25% (measured again; set aside: 50%, 75%) |")
        );
        let missed = markdown(&report(vec![scenario("threaded", 100_000, 3_000.0, 300.0)]));
        assert!(missed.contains("| 0.10 at N = 100000 | missed |"));
        assert!(missed.contains("What limits the missed targets"));
        assert!(
            md.contains("| 0.60 | 2000–2000 | 3 | 25% |\n\n`busy elsewhere`"),
            "{md}"
        );
        assert!(
            md.contains("Over the whole run: –.\n\n## Targets\n"),
            "{md}"
        );
    }
}
