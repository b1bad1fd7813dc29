//! The demo as a user runs it: its flags, and `--watch` streaming one agent's events.

use std::process::Command;

fn demo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the demo starts")
}

#[test]
fn watch_shows_one_agents_stream_in_order() {
    let out = demo(&[
        "--agents",
        "40",
        "--watch",
        "3",
        "--quiet",
        "--crash-percent",
        "0",
        "--cancel-percent",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let watched: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    assert!(
        watched.iter().all(|l| l.contains("-3]")),
        "only agent 3's calls: {watched:?}"
    );
    assert_eq!(watched.first(), Some(&"[agent-3] planning"), "{watched:?}");
    assert_eq!(watched.last(), Some(&"[agent-3] done"), "{watched:?}");
    let plan = watched
        .iter()
        .position(|l| l.starts_with("[plan-3] First search"));
    let search = watched
        .iter()
        .position(|l| l.starts_with("[search-3] Found"));
    let fan_out = watched
        .iter()
        .position(|l| *l == "[agent-3] searching, embedding and calling the tool");
    // The model's streamed words arrive whole, and the agent's steps in their order.
    assert!(plan.is_some() && search.is_some(), "{watched:?}");
    assert!(plan < fan_out && fan_out < search, "{watched:?}");
}

#[test]
fn bad_flags_are_refused_before_anything_runs() {
    for args in [
        ["--workers", "0"],
        ["--concurrency", "0"],
        ["--crash-percent", "150"],
        ["--json", "/nonexistent/dir/x.json"],
        ["--agents", "1000001"],
    ] {
        let out = demo(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?} ran the workload");
    }
}

#[test]
fn a_run_that_fails_leaves_no_json_file() {
    // The dashboard's address is taken, so the run fails after --json's path was checked.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("demo-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("detail.json");
    let json = path.to_str().unwrap();
    let out = demo(&[
        "--quiet",
        "--agents",
        "1",
        "--dashboard",
        &addr,
        "--json",
        json,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run failed: {stderr}");
    assert!(stderr.contains("--dashboard"), "{stderr}");
    assert!(!path.exists(), "a failed run left {json}");
    std::fs::remove_dir_all(&dir).unwrap();
}
