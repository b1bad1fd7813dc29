//! The quick start of `docs/distributed.md`, compiled: a worker and the submitting side, against
//! the local server by default. `cargo xtask docs --check` fails when the page's snippets are not
//! found here line for line. (The tests run the same calls against the local server: `tests/`.)
//!
//! ```text
//! cargo run -p exec-nats --example cluster              # a worker and 5 tasks, in this process
//! cargo run -p exec-nats --example cluster -- work      # a worker, until Ctrl-C
//! cargo run -p exec-nats --example cluster -- submit 20 # 20 tasks, to the workers running
//! ```
//!
//! The server is `nats://127.0.0.1:4222` unless `--url` or `$EXEC_NATS_URL` says otherwise
//! (several servers separated by commas); `--stream` and `--prefix` (default `EXEC_TASKS` and
//! `exec`) keep a run apart from others on a shared server; `--user`/`--password` (or
//! `$NATS_USER` and `$NATS_PASSWORD`), `--token` (or `$NATS_TOKEN`) and `--tls` give credentials
//! and require TLS, for a real cluster.

use std::time::Duration;

use coordinator::{Coordinator, RequestCompletionPublisher, SubmitOptions, Task};
use exec_nats::example_nodes::{Echo, registry};
use exec_nats::{NatsWorker, async_nats};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Fallible = Result<(), Error>;

/// What the command line (or the environment) asked for.
struct Args {
    command: String,
    tasks: u64,
    url: String,
    stream: String,
    prefix: String,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    tls: bool,
}

/// What `--help` prints.
const USAGE: &str = "usage: cluster [work | submit [N] | both [N]] [--url URL] \
                     [--stream NAME] [--prefix PREFIX] [--user U --password P | --token T] \
                     [--tls]\n\
                     (no command: both, with 5 tasks; `submit` needs a worker running: \
                     `cluster work` in another terminal)";

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Self {
            command: "both".into(),
            tasks: 5,
            url: exec_nats::default_url(),
            stream: "EXEC_TASKS".into(),
            prefix: "exec".into(),
            user: std::env::var("NATS_USER").ok(),
            password: std::env::var("NATS_PASSWORD").ok(),
            token: std::env::var("NATS_TOKEN").ok(),
            tls: false,
        };
        let mut words = std::env::args().skip(1);
        while let Some(word) = words.next() {
            let mut value = |flag: &str| words.next().ok_or(format!("{flag} needs a value"));
            match word.as_str() {
                "work" | "submit" | "both" => args.command = word,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                "--url" => args.url = value("--url")?,
                "--stream" => args.stream = value("--stream")?,
                "--prefix" => args.prefix = value("--prefix")?,
                "--user" => args.user = Some(value("--user")?),
                "--password" => args.password = Some(value("--password")?),
                "--token" => args.token = Some(value("--token")?),
                "--tls" => args.tls = true,
                n => {
                    args.tasks = n
                        .parse()
                        .map_err(|_| format!("unknown argument `{n}`; {USAGE}"))?;
                }
            }
        }
        Ok(args)
    }
}

/// How to reach the server: credentials and TLS as asked, nothing for the local server.
#[rustfmt::skip]
fn connect_options(args: &Args) -> async_nats::ConnectOptions {
  let mut options = match (&args.token, &args.user, &args.password) {
      (Some(token), _, _) => async_nats::ConnectOptions::with_token(token.clone()),
      (None, Some(user), Some(password)) =>
          async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone()),
      _ => async_nats::ConnectOptions::new(),
  };
  if args.tls {
      options = options.require_tls(true);   // certificates from the system's roots
  }
  options
}

#[rustfmt::skip]
async fn submit(args: &Args) -> Fallible {
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
  use exec_nats::NatsStrategy;

  let nats = NatsStrategy::builder()
      .url(&args.url)                    // nats://127.0.0.1:4222 unless told otherwise
      .connect_options(connect_options(args))
      .stream(&args.stream)              // EXEC_TASKS, and the workers' too
      .prefix(&args.prefix)              // exec: subjects exec.run.<mode>, exec.done.<client>
      .mode("gpu")                       // tasks go to exec.run.gpu
      .start()
      .await?;
  let coordinator = Coordinator::builder().with_async().strategy("gpu", nats).build();
  coordinator.start(&publisher)?;    // the application's started publisher
  // Optional while a worker serves the mode: every request ends without one.
  let options = SubmitOptions::new().timeout(Duration::from_secs(60));
  let calls = (0..args.tasks).map(|i| {
      let task = Task::portable(format!("cluster-{}-{i}", std::process::id()), Echo(i));
      coordinator.submit_with(task, "gpu", options.clone())
  });
  let mut failed = 0;
  for (i, echoed) in futures::future::join_all(calls).await.into_iter().enumerate() {
      match echoed {
          Ok(v) => println!("task {i}: a worker echoed {v}"),
          Err(e) => {
              failed += 1;
              println!("task {i}: failed: {e}");
          }
      }
  }
    coordinator.shutdown().await;
    publisher.shutdown().await;
    if failed > 0 {
        return Err(format!("{failed} of {} tasks failed", args.tasks).into());
    }
    Ok(())
}

#[rustfmt::skip]
async fn work(args: &Args, stop: impl Future<Output = ()>) -> Fallible {
  NatsWorker::builder(registry())
      .url(&args.url)
      .connect_options(connect_options(args))
      .stream(&args.stream)              // the same stream and prefix as the submitting side
      .prefix(&args.prefix)
      .mode("gpu")
      .concurrency(8)                    // tasks at once in this process
      .ack_wait(Duration::from_secs(30)) // redelivery after this long without an ack
      .max_deliver(5)                    // then the request fails, saying so
      .connect()
      .await?
      .run_until(stop)
      .await?;
    Ok(())
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handler can be installed: run until the process is stopped.
        std::future::pending::<()>().await;
    }
}

#[tokio::main]
async fn main() -> Fallible {
    let args = Args::parse()?;
    println!("server: {}", args.url);
    match args.command.as_str() {
        "work" => {
            println!("worker running; Ctrl-C stops it");
            work(&args, ctrl_c()).await
        }
        "submit" => submit(&args).await,
        _ => {
            // A worker on a task of its own, until the tasks are answered.
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let worker_args = Args {
                command: "work".into(),
                ..Args::parse()?
            };
            let worker = tokio::spawn(async move {
                work(&worker_args, async {
                    let _ = stopped.await;
                })
                .await
                .map_err(|e| e.to_string())
            });
            let submitted = submit(&args).await;
            let _ = stop.send(());
            worker.await??;
            submitted
        }
    }
}
