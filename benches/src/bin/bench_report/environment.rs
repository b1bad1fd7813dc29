//! What a run measured on, and how busy the machine was with other work meanwhile.
//!
//! On a shared machine the second decides how far to trust a row: each scenario records the share
//! of the machine's CPU time that went elsewhere while its repetitions ran (other processes, and,
//! on a virtual machine, the time the hypervisor gave to other machines). Read from `/proc`;
//! where it does not exist the figures are left out.

use std::process::Command;

use serde::Serialize;

/// The machine, the build and the commit a report measured.
#[derive(Debug, Serialize)]
pub(crate) struct Environment {
    pub(crate) logical_cpus: usize,
    pub(crate) arch: &'static str,
    pub(crate) cpu_model: Option<String>,
    /// The kernel's release (`/proc/sys/kernel/osrelease`).
    pub(crate) kernel: Option<String>,
    /// The compiler that built the report (`rustc -V`, read when it was built).
    pub(crate) rustc: Option<&'static str>,
    /// Whether the report was built with optimizations: figures from a debug build say nothing
    /// about the library's speed.
    pub(crate) optimized: bool,
    /// The commit checked out where the report ran, if that is a git work tree.
    pub(crate) commit: Option<String>,
    /// Whether tracked files differed from that commit.
    pub(crate) uncommitted_changes: Option<bool>,
    /// The 1, 5 and 15 minute load averages when the run started.
    pub(crate) load_average_before: Option<[f64; 3]>,
    /// The share of the machine's CPU time that went elsewhere over the whole run (see
    /// [`CpuSample::elsewhere_until`]).
    pub(crate) busy_elsewhere: Option<f64>,
}

impl Environment {
    /// Reads everything but [`busy_elsewhere`](Self::busy_elsewhere), which is known once the
    /// run ends.
    pub(crate) fn read() -> Self {
        let (commit, uncommitted_changes) = git_commit();
        Self {
            logical_cpus: std::thread::available_parallelism().map_or(0, usize::from),
            arch: std::env::consts::ARCH,
            cpu_model: std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|info| cpu_model(&info)),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|release| release.trim().to_owned())
                .filter(|release| !release.is_empty()),
            rustc: option_env!("BENCH_RUSTC_VERSION").filter(|v| !v.is_empty()),
            optimized: !cfg!(debug_assertions),
            commit,
            uncommitted_changes,
            load_average_before: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|load| load_average(&load)),
            busy_elsewhere: None,
        }
    }

    /// The report's opening line about the machine and the build.
    pub(crate) fn describe(&self) -> String {
        let mut line = format!("{} logical CPUs", self.logical_cpus);
        if let Some(model) = &self.cpu_model {
            line.push_str(&format!(" ({model})"));
        }
        line.push_str(&format!(", {}", self.arch));
        if let Some(kernel) = &self.kernel {
            line.push_str(&format!(", Linux {kernel}"));
        }
        if let Some([one, five, fifteen]) = self.load_average_before {
            line.push_str(&format!(
                "; load average before the run {one:.2} / {five:.2} / {fifteen:.2}"
            ));
        }
        line.push_str(". Built ");
        if let Some(rustc) = self.rustc {
            line.push_str(&format!("by {rustc}, "));
        }
        line.push_str(if self.optimized {
            "optimized"
        } else {
            "**without optimizations: these figures say nothing about the library's speed; run `cargo xtask bench`**"
        });
        match (&self.commit, self.uncommitted_changes) {
            (Some(commit), Some(true)) => {
                line.push_str(&format!(", at commit {commit} with uncommitted changes"));
            }
            (Some(commit), _) => line.push_str(&format!(", at commit {commit}")),
            (None, _) => {}
        }
        line.push('.');
        line
    }
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == "model name")
        .map(|(_, model)| model.trim().to_owned())
        .filter(|model| !model.is_empty())
}

/// The three load averages of `/proc/loadavg`.
fn load_average(loadavg: &str) -> Option<[f64; 3]> {
    let mut fields = loadavg.split_whitespace().map(str::parse::<f64>);
    Some([
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ])
}

/// The commit checked out in the work tree the report was built from (wherever it is run from),
/// and whether tracked files differ from it; `None` where git or a work tree is missing.
fn git_commit() -> (Option<String>, Option<bool>) {
    let root = crate::claims::workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(&root)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]).filter(|c| !c.is_empty()) else {
        return (None, None);
    };
    let changed = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    (Some(commit), changed)
}

/// CPU time, in the kernel's clock ticks: the whole machine's, its idle part, and this process
/// tree's (this process, its live descendants, and the children it has waited for).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CpuSample {
    total: u64,
    idle: u64,
    own: u64,
}

/// Fewer ticks than this (about 0.1 s on 2 CPUs at 100 Hz) are too coarse for a share.
const MIN_TICKS: u64 = 20;

impl CpuSample {
    /// Now; `None` where `/proc` cannot be read.
    pub(crate) fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (total, idle) = machine_ticks(&stat)?;
        let me = std::process::id();
        let mut processes = Vec::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may end between the listing and the reading: it is skipped.
            if let Some(process) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| process_ticks(pid, &stat))
            {
                processes.push(process);
            }
        }
        Some(Self {
            total,
            idle,
            own: tree_ticks(me, &processes),
        })
    }

    /// The share (0 to 1) of the machine's CPU time between `self` and `later` that was neither
    /// idle nor this process tree's: other processes, and steal (time a hypervisor gave to other
    /// machines). `None` when too little time passed to say.
    pub(crate) fn elsewhere_until(&self, later: &Self) -> Option<f64> {
        let total = later.total.checked_sub(self.total)?;
        if total < MIN_TICKS {
            return None;
        }
        let idle = later.idle.saturating_sub(self.idle);
        let own = later.own.saturating_sub(self.own);
        let elsewhere = total.saturating_sub(idle).saturating_sub(own);
        Some((elsewhere as f64 / total as f64).clamp(0.0, 1.0))
    }
}

/// The machine's total and idle ticks from the `cpu` line of `/proc/stat` (idle counts iowait
/// too; steal counts as busy, as it is time this machine did not get).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal; guest time is already in user.
    let [_, _, _, idle, iowait, _, _, _] = ticks.as_slice() else {
        return None;
    };
    Some((ticks.iter().sum(), idle + iowait))
}

/// One process as `/proc/PID/stat` describes it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ProcessTicks {
    pid: u32,
    parent: u32,
    /// Its own user and system time, and that of the children it waited for.
    ticks: u64,
}

fn process_ticks(pid: u32, stat: &str) -> Option<ProcessTicks> {
    // The command name may hold spaces and parentheses; the fields follow the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime
    // cstime
    Some(ProcessTicks {
        pid,
        parent: u32::try_from(number(1)?).ok()?,
        ticks: number(11)? + number(12)? + number(13)? + number(14)?,
    })
}

/// The ticks of `root` and every process descended from it.
fn tree_ticks(root: u32, processes: &[ProcessTicks]) -> u64 {
    let mut tree = vec![root];
    let mut ticks = 0;
    let mut next = 0;
    while let Some(&pid) = tree.get(next) {
        next += 1;
        for process in processes {
            if process.pid == pid {
                ticks += process.ticks;
            }
            if process.parent == pid && !tree.contains(&process.pid) {
                tree.push(process.pid);
            }
        }
    }
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "cpu  97805 0 10870 63014 485 0 305 562 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            machine_ticks(stat),
            Some((97805 + 10870 + 63014 + 485 + 305 + 562, 63014 + 485))
        );
        assert_eq!(machine_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(machine_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);

        // A command name with a space and a parenthesis.
        let process = "4242 (tokio (rt) w) S 4000 4242 4242 0 -1 4194560 100 0 0 0 \
                       250 50 7 3 20 0 1 0 1 1 1";
        assert_eq!(
            process_ticks(4242, process),
            Some(ProcessTicks {
                pid: 4242,
                parent: 4000,
                ticks: 250 + 50 + 7 + 3
            })
        );
        assert_eq!(process_ticks(1, "1 (init"), None);

        assert_eq!(
            load_average("2.14 1.95 1.13 1/146 26913\n"),
            Some([2.14, 1.95, 1.13])
        );
        assert_eq!(load_average("2.14\n"), None);
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
        assert_eq!(cpu_model("processor\t: 0\n"), None);
    }

    #[test]
    fn a_process_tree_counts_its_descendants_and_nothing_else() {
        let process = |pid, parent, ticks| ProcessTicks { pid, parent, ticks };
        let processes = [
            process(1, 0, 1_000),
            process(10, 1, 5),
            process(11, 10, 7),
            process(12, 11, 11),
            process(20, 1, 100),
            process(21, 20, 300),
        ];
        assert_eq!(tree_ticks(10, &processes), 5 + 7 + 11);
        assert_eq!(tree_ticks(20, &processes), 100 + 300);
        assert_eq!(tree_ticks(99, &processes), 0);
    }

    #[test]
    fn the_share_elsewhere_is_what_neither_idled_nor_ran_here() {
        let before = CpuSample {
            total: 1_000,
            idle: 400,
            own: 100,
        };
        let after = CpuSample {
            total: 1_200,
            idle: 450,
            own: 200,
        };
        // 200 ticks: 50 idle, 100 ours, 50 elsewhere.
        assert_eq!(before.elsewhere_until(&after), Some(0.25));
        let quiet = CpuSample { own: 350, ..after };
        assert_eq!(before.elsewhere_until(&quiet), Some(0.0), "clamped at zero");
        let soon = CpuSample {
            total: 1_010,
            ..before
        };
        assert_eq!(before.elsewhere_until(&soon), None, "too short to say");
        assert_eq!(after.elsewhere_until(&before), None, "not a later sample");
    }

    #[test]
    fn the_description_names_the_build_and_warns_of_a_debug_one() {
        let mut environment = Environment {
            logical_cpus: 2,
            arch: "x86_64",
            cpu_model: Some("Xeon".to_owned()),
            kernel: Some("6.1.0".to_owned()),
            rustc: Some("rustc 1.95.0"),
            optimized: true,
            commit: Some("0123456789ab".to_owned()),
            uncommitted_changes: Some(false),
            load_average_before: Some([0.5, 0.25, 1.0]),
            busy_elsewhere: None,
        };
        assert_eq!(
            environment.describe(),
            "2 logical CPUs (Xeon), x86_64, Linux 6.1.0; load average before the run 0.50 / 0.25 / 1.00. Built by rustc 1.95.0, optimized, at commit 0123456789ab."
        );
        environment.optimized = false;
        environment.uncommitted_changes = Some(true);
        let debug = environment.describe();
        assert!(debug.contains("**without optimizations"), "{debug}");
        assert!(debug.ends_with("at commit 0123456789ab with uncommitted changes."));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_is_read() {
        let sample = CpuSample::now().expect("/proc on Linux");
        assert!(sample.total > 0 && sample.idle <= sample.total);
        let environment = Environment::read();
        assert!(environment.logical_cpus > 0);
        assert!(environment.load_average_before.is_some());
    }
}
