//! The main job: what this framework does, in a few seconds, with no server.
//!
//! Runs many "agent" requests, each a small tree of work spread over the three local modes:
//!
//! - `agent` (async): plans, then fans out to its children and combines their answers;
//! - `plan`, `search` (async): simulated model and search calls (I/O waits), with a timeout;
//!   a few are slow on purpose and time out;
//! - `embed` (threaded): CPU-bound work on the rayon pool;
//! - `tool` (process): a registered serde node run in a worker process; some crash their worker
//!   on purpose: the crash is retried once, crashes again and ends as "poison" (never tried
//!   again), the worker is replaced each time, and no other tool call fails for it.
//!
//! A few agents are cancelled while they run, which cancels the children they submitted. The
//! model calls stream their answers a word at a time (`--watch N` shows agent N's stream live).
//! Live progress per mode is shown while it runs, then a summary per mode.
//!
//! `cargo run -p demo -- --help` lists the flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use coordinator::{
    BoxError, Buffer, Coordinator, ExecutionMode, JobResult, Node, NodeRegistry, PortableNode,
    ProcessExecutionStrategy, RequestCompletionMessage, RequestCompletionPublisher, RetryPolicy,
    SubmitOptions, SystemDetail, Task, ThreadedExecutionStrategy, run_worker_if_requested,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

mod watch;
use watch::watch;

/// Runs an agent-like mixed workload on the async, threaded and process modes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Agent requests to run (at most 1,000,000: the coordinator keeps a record of every request
    /// each agent makes, and the summary reads them all).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(..=1_000_000))]
    agents: u64,
    /// Agents running at once (the async mode's concurrency limit; the async tasks an agent
    /// submits share its place).
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    concurrency: usize,
    /// Worker processes for the process mode.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    workers: usize,
    /// Threads for the threaded mode.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    threads: usize,
    /// Percent of tool calls that crash their worker process (0 to 100).
    #[arg(long, default_value_t = 3.0, value_parser = percent, allow_negative_numbers = true)]
    crash_percent: f64,
    /// Percent of agents cancelled while they run (0 to 100).
    #[arg(long, default_value_t = 2.0, value_parser = percent, allow_negative_numbers = true)]
    cancel_percent: f64,
    /// Write the coordinator's system detail (counts, every job, per-mode and per-worker
    /// counters) as JSON to this file, as it is when the last agent has ended (before
    /// shutdown, so the live workers are listed).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// No live progress display.
    #[arg(long)]
    quiet: bool,
    /// Show agent N's stream live: the words its model calls broadcast as they come, and its
    /// own progress events. Live on a terminal; with --quiet or into a pipe or file, each model
    /// call's words as one line when the call ends.
    #[arg(long, value_name = "N")]
    watch: Option<u64>,
    /// Serve the live dashboard at this address (e.g. 127.0.0.1:8080) while the demo runs, and
    /// after the summary until Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<std::net::SocketAddr>,
    /// Seed for the workload's random choices (same seed, same workload).
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        Ok(_) => Err("must be between 0 and 100".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A tool call run in a worker process: a registered serde node.
#[derive(Serialize, Deserialize)]
struct Tool {
    query: String,
    /// Crash the worker on purpose (stands in for a segfault or an OOM kill in a native library).
    crash: bool,
}

impl Node for Tool {
    type Output = String;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "tool".into()
    }
    async fn invoke(self) -> Result<String, BoxError> {
        if self.crash {
            std::process::abort();
        }
        let checksum: u32 = self.query.bytes().map(u32::from).sum();
        Ok(format!("tool[{}]={checksum}", self.query))
    }
}

impl PortableNode for Tool {
    const NAME: &'static str = "tool";
}

fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<Tool>().expect("one node type per name");
    registry
}

/// What one agent decides up front (drawn from the seed, so runs are reproducible).
#[derive(Clone, Copy, Debug)]
struct Plan {
    id: u64,
    slow_plan: bool,
    crash_tool: bool,
    cancel: bool,
    io_ms: [u64; 3],
}

/// Well past a call's 5 to 40 ms, so that only the slow ones (500 ms) time out, even in a debug
/// build on a busy machine.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// Tool calls that ended as poison: they crashed their worker twice in a row.
static POISONED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A simulated model call: streams its answer a word at a time (each word a broadcast event,
/// as a model streams tokens), spread over `ms`, and returns the whole answer.
fn llm_call(id: String, name: &'static str, ms: u64) -> Task<String> {
    let answer = match name {
        "plan" => {
            "First search the web, then embed the query and call the tool; combine all three."
        }
        _ => "Found three relevant pages; the second one answers the question best.",
    };
    Task::from_fn(id, name, move || async move {
        let words: Vec<&str> = answer.split_inclusive(' ').collect();
        let pause = Duration::from_millis(ms) / words.len() as u32;
        for word in &words {
            tokio::time::sleep(pause).await;
            coordinator::broadcast(*word)?;
        }
        Ok::<_, BoxError>(answer.to_owned())
    })
}

fn embed(id: String, seed: u64) -> Task<f64> {
    Task::blocking(id, "embed", move || {
        // A small CPU-bound kernel (about a millisecond).
        let mut acc = 0.0_f64;
        for k in 1..60_000_u64 {
            acc += ((k ^ seed) as f64).sqrt().sin();
        }
        Ok::<_, BoxError>(acc)
    })
}

/// One agent: a parent request that submits its children through the same coordinator.
fn agent(coordinator: Coordinator, plan: Plan) -> Task<String> {
    Task::from_fn(format!("agent-{}", plan.id), "agent", move || async move {
        let id = plan.id;
        coordinator::broadcast("planning")?;
        let timeout = SubmitOptions::new().timeout(CALL_TIMEOUT);
        let plan_ms = if plan.slow_plan { 500 } else { plan.io_ms[0] };
        let planned = coordinator
            .submit_with(
                llm_call(format!("plan-{id}"), "plan", plan_ms),
                ExecutionMode::ASYNC,
                timeout.clone(),
            )
            .await
            .unwrap_or_else(|e| format!("default plan ({e})"));
        let search = coordinator.submit_with(
            llm_call(format!("search-{id}"), "search", plan.io_ms[1]),
            ExecutionMode::ASYNC,
            timeout,
        );
        let embedding =
            coordinator.submit(embed(format!("embed-{id}"), id), ExecutionMode::THREADED);
        let retry_crash = RetryPolicy::new(2)
            .backoff(Duration::from_millis(5), Duration::from_millis(5))
            .retry_if(|e| e.is_worker_lost());
        let tool = Tool {
            query: format!("q{id}"),
            crash: plan.crash_tool,
        };
        let tool = coordinator.submit_with(
            Task::portable(format!("tool-{id}"), tool),
            ExecutionMode::PROCESS,
            SubmitOptions::new().retry(retry_crash),
        );
        coordinator::broadcast("searching, embedding and calling the tool")?;
        let (search, embedding, tool) = tokio::join!(search, embedding, tool);
        coordinator::broadcast("combining")?;
        let tool = tool.unwrap_or_else(|e| {
            if e.task_error().is_some_and(|e| e.is_poison()) {
                POISONED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            format!("tool unavailable ({e})")
        });
        Ok::<_, BoxError>(format!(
            "{planned}; {}; embed {:.1}; {tool}",
            search.unwrap_or_else(|e| e.to_string()),
            embedding?
        ))
    })
}

fn plans(args: &Args) -> Vec<Plan> {
    let mut rng = fastrand::Rng::with_seed(args.seed);
    (0..args.agents)
        .map(|id| Plan {
            id,
            slow_plan: rng.f64() < 0.03,
            crash_tool: rng.f64() * 100.0 < args.crash_percent,
            cancel: rng.f64() * 100.0 < args.cancel_percent,
            io_ms: [rng.u64(5..40), rng.u64(5..40), rng.u64(5..40)],
        })
        .collect()
}

/// The mode each node name runs under, for the summary.
fn mode_of(node: &str) -> &'static str {
    match node {
        "embed" => "threaded",
        "tool" => "process",
        _ => "async",
    }
}

fn progress_bars(
    quiet: bool,
    agents: u64,
    concurrency: usize,
) -> (
    MultiProgress,
    ProgressBar,
    BTreeMap<&'static str, ProgressBar>,
) {
    let multi = MultiProgress::new();
    if quiet {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>9} {bar:30.cyan/blue} {pos:>5}/{len} {msg}")
        .expect("a valid template");
    let total = multi.add(ProgressBar::new(agents));
    total.set_style(style.clone());
    total.set_prefix("agents");
    total.set_message(format!(
        "(at most {concurrency} at once; the rows below count every request, each agent's calls included)"
    ));
    let per_mode = ["async", "threaded", "process"]
        .into_iter()
        .map(|mode| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{prefix:>9} {spinner} {msg}")
                    .expect("a valid template"),
            );
            bar.set_prefix(mode);
            (mode, bar)
        })
        .collect();
    (multi, total, per_mode)
}

fn show(detail: &SystemDetail, bars: &BTreeMap<&'static str, ProgressBar>) {
    for (mode, bar) in bars {
        if let Some(c) = detail.requests.get(*mode) {
            let mut msg = format!(
                "in flight {:>3}  done {:>5}  failed {:>3}  timed out {:>3}  cancelled {:>3}",
                c.in_flight, c.succeeded, c.failed, c.timed_out, c.cancelled
            );
            if let Some(stats) = detail.modes.get(*mode).filter(|s| !s.workers.is_empty()) {
                msg.push_str(&format!(
                    "  workers {}  restarts {}",
                    stats.workers.len(),
                    stats.restarts
                ));
            }
            bar.set_message(msg);
            bar.tick();
        }
    }
}

/// The `p` quantile of `sorted`, printed; `–` when there is none (no success to time).
fn percentile(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "–".into();
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    format!("{:.1?}", sorted[rank.min(sorted.len() - 1)])
}

fn summary(
    detail: &SystemDetail,
    running: &SystemDetail,
    elapsed: Duration,
    (agents, planned_crashes): (u64, usize),
) -> String {
    let mut durations: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for job in &detail.jobs {
        if job.result() == Some(JobResult::Success)
            && let Some(d) = job.duration()
        {
            durations
                .entry(mode_of(job.node_name()))
                .or_default()
                .push(d);
        }
    }
    let mut out = format!(
        "\n{agents} agents: {} requests (each agent and the calls it made) in {:.2?} ({:.0} \
         requests/s)\n\n",
        detail.counts.closed,
        elapsed,
        detail.counts.closed as f64 / elapsed.as_secs_f64()
    );
    out.push_str("| mode     |  done | failed | timed out | cancelled |      p50 |      p99 |\n");
    out.push_str("|----------|------:|-------:|----------:|----------:|---------:|---------:|\n");
    for (mode, c) in &detail.requests {
        let mut d = durations.remove(mode.as_str()).unwrap_or_default();
        d.sort_unstable();
        out.push_str(&format!(
            "| {mode:<8} | {:>5} | {:>6} | {:>9} | {:>9} | {:>8} | {:>8} |\n",
            c.succeeded,
            c.failed,
            c.timed_out,
            c.cancelled,
            percentile(&d, 0.5),
            percentile(&d, 0.99)
        ));
    }
    if let Some(process) = running.modes.get("process") {
        let pids: Vec<String> = process
            .workers
            .iter()
            .map(|w| format!("worker #{} (pid {})", w.id, w.pid.unwrap_or(0)))
            .collect();
        let live = if pids.is_empty() {
            "none live (a replacement was starting)".to_owned()
        } else {
            pids.join(", ")
        };
        out.push_str(&format!(
            "\nprocess workers at the end of the run: {live}; replaced after crashes: {}\n",
            process.restarts
        ));
        let failed = detail.requests.get("process").map_or(0, |c| c.failed);
        let poisoned = POISONED.load(std::sync::atomic::Ordering::Relaxed);
        out.push_str(&format!(
            "tool calls planned to crash their worker: {planned_crashes} (some in cancelled \
             agents); ended as poison after crashing it twice: {poisoned}; other process \
             failures: {}\n",
            failed.saturating_sub(poisoned)
        ));
    }
    out.push_str(
        "durations are of successful requests, from acceptance to their job closing; every \
         request above ended with exactly one completion message on the bus.\n",
    );
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The demo binary is also the process mode's worker.
    run_worker_if_requested(&registry());
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Checked before the run, not after it: a path that cannot be written fails at once. An
    // existing file is left as it is until the run has something to write, and a file made
    // for the check is removed, so a run that fails leaves nothing there.
    if let Some(path) = &args.json {
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("--json: cannot write {}", path.display()))?;
        if !existed {
            std::fs::remove_file(path)
                .with_context(|| format!("--json: cannot write {}", path.display()))?;
        }
    }
    if let Some(agent) = args.watch {
        anyhow::ensure!(
            agent < args.agents,
            "--watch {agent}: agents are numbered 0 to {}",
            args.agents.saturating_sub(1)
        );
    }

    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
    let terminal = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&terminal);
    // Terminal messages only, filtered as it reads. Its own queue holds every message until the
    // filter has seen it (the models' streamed words too), so it misses none however many words
    // stream; it reads fast, so the queue stays short.
    let is_terminal = RequestCompletionMessage::is_terminal;
    publisher.subscribe_where(Buffer::Unbounded, is_terminal, move |message| {
        if message.is_ok() {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })?;

    let process = ProcessExecutionStrategy::builder(registry())
        .workers(args.workers)
        .start()
        .await
        .context("starting the worker processes")?;
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(args.threads)
        .build()
        .context("building the thread pool")?;
    let coordinator = Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::THREADED, threaded)
        .strategy(ExecutionMode::PROCESS, process)
        .limit(ExecutionMode::ASYNC, args.concurrency)
        .shutdown_grace(Duration::from_secs(10))
        .build();
    coordinator.start(&publisher)?;
    let dashboard = match args.dashboard {
        Some(addr) => {
            let dashboard = dashboard::Dashboard::builder(&coordinator, &publisher)
                .bind(addr)
                .start()
                .await
                .with_context(|| format!("--dashboard: cannot serve at {addr}"))?;
            eprintln!("dashboard at {}", dashboard.url());
            Some(dashboard)
        }
        None => None,
    };

    let (multi, total, bars) = progress_bars(args.quiet, args.agents, args.concurrency);
    if let Some(agent) = args.watch {
        watch(&publisher, &multi, agent)?;
    }
    let started = Instant::now();
    let refresher = {
        let coordinator = coordinator.clone();
        let bars = bars.clone();
        tokio::spawn(async move {
            loop {
                show(&coordinator.overview(), &bars);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let plans = plans(&args);
    let planned_crashes = plans.iter().filter(|plan| plan.crash_tool).count();
    let mut running = futures::stream::FuturesUnordered::new();
    for plan in plans {
        // Waits here while `concurrency` agents are running.
        let handle = coordinator
            .spawn(
                agent(coordinator.clone(), plan),
                ExecutionMode::ASYNC,
                SubmitOptions::new(),
            )
            .await?;
        if plan.cancel {
            let c = coordinator.clone();
            let id = handle.request_id().clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(15)).await;
                c.cancel(&id);
            });
        }
        running.push(handle);
        while let Some(done) =
            futures::FutureExt::now_or_never(futures::StreamExt::next(&mut running))
        {
            if done.is_none() {
                break;
            }
            total.inc(1);
        }
    }
    while futures::StreamExt::next(&mut running).await.is_some() {
        total.inc(1);
    }
    let elapsed = started.elapsed();
    refresher.abort();
    let detail = coordinator.system_detail();
    show(&detail, &bars);
    total.finish();
    for bar in bars.values() {
        bar.finish();
    }

    coordinator.shutdown().await;
    publisher.shutdown().await;
    let detail_after = coordinator.system_detail();
    println!(
        "{}",
        summary(
            &detail_after,
            &detail,
            elapsed,
            (args.agents, planned_crashes)
        )
    );
    let terminal = terminal.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(
        terminal == detail_after.counts.closed,
        "every request should have exactly one terminal message"
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&detail)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("system detail written to {}", path.display());
    }
    if let Some(dashboard) = dashboard {
        eprintln!(
            "the run is over; the dashboard keeps serving at {} until Ctrl-C",
            dashboard.url()
        );
        tokio::signal::ctrl_c().await?;
        dashboard.shutdown().await;
    }
    Ok(())
}
