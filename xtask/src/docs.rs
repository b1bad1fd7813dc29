//! `cargo xtask docs`: generates `docs/components/task_execution.md` (the design document the
//! project started from, now produced by the code) and builds the rustdoc with warnings denied.
//! `cargo xtask docs --check` fails when the committed document is stale (and builds the rustdoc
//! too). Both check that the Rust snippets of the README and `docs/` match compiled code
//! ([`crate::snippets`]).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use syn::{Attribute, FnArg, ImplItem, Item, Pat, TraitItem, Type, Visibility};

const DOCUMENT: &str = "docs/components/task_execution.md";

/// The crates, lowest layer first: the order the API section follows.
const CRATES: &[&str] = &[
    "task-core",
    "pubsub",
    "exec-strategies",
    "coordinator",
    "exec-nats",
];

/// `cargo xtask docs --help`.
const USAGE: &str = r"usage: cargo xtask docs [--check]

Generates docs/components/task_execution.md from the crates' sources, checks that every Rust
snippet of the README and docs/ matches its compiled home, then builds the rustdoc with
warnings denied.

  --check   do not write: fail when the committed document is stale";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => bail!("`docs` takes only --check, got {args:?}\n\n{USAGE}"),
    };
    let root = crate::workspace_root();
    let generated = generate(&root)?;
    let path = root.join(DOCUMENT);
    if check {
        let committed = fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            bail!("{DOCUMENT} is stale: run `cargo xtask docs` and commit the result");
        }
        println!("{DOCUMENT} is up to date");
    } else {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&path, generated).with_context(|| format!("writing {DOCUMENT}"))?;
        println!("wrote {DOCUMENT}");
    }
    crate::snippets::check(&root)?;
    crate::cargo(
        &[
            "doc",
            "--workspace",
            "--all-features",
            "--no-deps",
            "--exclude",
            "xtask",
            "--exclude",
            "benches",
        ],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )
}

/// The text of `///` or `//!` comments among `attrs`, one line each, trimmed of the single
/// leading space.
fn doc_text(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("doc")) {
        if let syn::Meta::NameValue(nv) = &attr.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
        {
            let value = s.value();
            lines.push(value.strip_prefix(' ').unwrap_or(&value).to_owned());
        }
    }
    lines.join("\n")
}

/// The doc text up to its first `# ` heading (examples, errors ... stay in rustdoc), with hidden
/// doctest lines and rustdoc link brackets removed.
fn summary(doc: &str) -> String {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with("# ") {
            break;
        }
        out.push(line);
    }
    let text = out.join("\n").trim().to_owned();
    strip_links(&text)
}

/// `[`Foo`](crate::Foo)` and `[`Foo`]` become `` `Foo` ``.
fn strip_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(']') {
            Some(end) if !after[..end].contains('[') => {
                out.push_str(&after[..end]);
                rest = &after[end + 1..];
                if rest.starts_with('(')
                    && let Some(close) = rest.find(')')
                {
                    rest = &rest[close + 1..];
                }
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The code of the first fenced example in `doc`, without hidden (`# `) lines.
fn first_example(doc: &str) -> Option<String> {
    let mut lines = doc.lines().skip_while(|l| !l.starts_with("```"));
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| !l.starts_with("# ") && *l != "#")
        .collect();
    Some(body.join("\n"))
}

fn is_pub(vis: &Visibility) -> bool {
    matches!(vis, Visibility::Public(_))
}

fn params(sig: &syn::Signature) -> String {
    sig.inputs
        .iter()
        .map(|arg| match arg {
            FnArg::Receiver(_) => "self".to_owned(),
            FnArg::Typed(t) => match &*t.pat {
                Pat::Ident(i) => i.ident.to_string(),
                _ => "_".to_owned(),
            },
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Method {
    name: String,
    params: String,
    doc: String,
}

struct ApiItem {
    kind: &'static str,
    name: String,
    doc: String,
    methods: Vec<Method>,
}

struct SourceFile {
    path: String,
    purpose: String,
}

struct CrateInfo {
    name: String,
    doc: String,
    items: Vec<ApiItem>,
    files: Vec<SourceFile>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn read_crate(root: &Path, name: &str) -> Result<CrateInfo> {
    let src = root.join("crates").join(name).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths)?;
    let mut items: Vec<ApiItem> = Vec::new();
    let mut methods: Vec<(String, Method)> = Vec::new();
    let mut files = Vec::new();
    let mut crate_doc = String::new();
    for path in &paths {
        let text = fs::read_to_string(path)?;
        let file = syn::parse_file(&text).with_context(|| format!("parsing {}", path.display()))?;
        let relative = path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        let file_doc = doc_text(&file.attrs);
        if path.ends_with("lib.rs") {
            crate_doc = file_doc.clone();
        }
        files.push(SourceFile {
            path: relative,
            purpose: file_doc.lines().next().unwrap_or_default().to_owned(),
        });
        for item in &file.items {
            let (kind, ident, attrs) = match item {
                Item::Struct(i) if is_pub(&i.vis) => ("struct", i.ident.to_string(), &i.attrs),
                Item::Enum(i) if is_pub(&i.vis) => ("enum", i.ident.to_string(), &i.attrs),
                Item::Trait(i) if is_pub(&i.vis) => {
                    let trait_methods = i
                        .items
                        .iter()
                        .filter_map(|t| match t {
                            TraitItem::Fn(f) => Some(Method {
                                name: f.sig.ident.to_string(),
                                params: params(&f.sig),
                                doc: summary(&doc_text(&f.attrs)),
                            }),
                            _ => None,
                        })
                        .collect();
                    items.push(ApiItem {
                        kind: "trait",
                        name: i.ident.to_string(),
                        doc: summary(&doc_text(&i.attrs)),
                        methods: trait_methods,
                    });
                    continue;
                }
                Item::Type(i) if is_pub(&i.vis) => ("type", i.ident.to_string(), &i.attrs),
                Item::Const(i) if is_pub(&i.vis) => ("const", i.ident.to_string(), &i.attrs),
                Item::Fn(i) if is_pub(&i.vis) => {
                    items.push(ApiItem {
                        kind: "fn",
                        name: format!("{}({})", i.sig.ident, params(&i.sig)),
                        doc: summary(&doc_text(&i.attrs)),
                        methods: Vec::new(),
                    });
                    continue;
                }
                Item::Impl(i) if i.trait_.is_none() => {
                    if let Some(owner) = type_name(&i.self_ty) {
                        for impl_item in &i.items {
                            if let ImplItem::Fn(f) = impl_item
                                && is_pub(&f.vis)
                            {
                                methods.push((
                                    owner.clone(),
                                    Method {
                                        name: f.sig.ident.to_string(),
                                        params: params(&f.sig),
                                        doc: summary(&doc_text(&f.attrs)),
                                    },
                                ));
                            }
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            items.push(ApiItem {
                kind,
                name: ident,
                doc: summary(&doc_text(attrs)),
                methods: Vec::new(),
            });
        }
    }
    for (owner, method) in methods {
        if let Some(item) = items.iter_mut().find(|i| i.name == owner) {
            item.methods.push(method);
        }
    }
    Ok(CrateInfo {
        name: name.to_owned(),
        doc: crate_doc,
        items,
        files,
    })
}

fn workspace_version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_owned)
        .context("no workspace version in Cargo.toml")
}

fn first_paragraph(doc: &str) -> String {
    strip_links(doc.split("\n\n").next().unwrap_or_default().trim())
}

fn generate(root: &Path) -> Result<String> {
    let crates: Vec<CrateInfo> = CRATES
        .iter()
        .map(|c| read_crate(root, c))
        .collect::<Result<_>>()?;
    let by_name = |n: &str| crates.iter().find(|c| c.name == n);
    let coordinator = by_name("coordinator").context("coordinator crate")?;
    let core = by_name("task-core").context("task-core crate")?;
    let strategies = by_name("exec-strategies").context("exec-strategies crate")?;
    let version = workspace_version(root)?;

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Task Execution\n");
    let _ = writeln!(
        w,
        "<!-- Generated by `cargo xtask docs` from the crates' sources and doc comments; do not edit by hand. -->\n"
    );
    let _ = writeln!(w, "{}\n", first_paragraph(&coordinator.doc));
    let _ = writeln!(w, "**Version:** {version}\n");
    let _ = writeln!(w, "## Table of Contents\n");
    for (anchor, title) in [
        ("1-purpose", "1. Purpose"),
        ("2-public-api", "2. Public API"),
        ("3-architectural-design", "3. Architectural Design"),
        ("4-important-considerations", "4. Important Considerations"),
        ("5-related-files", "5. Related Files"),
        ("changelog", "CHANGELOG"),
    ] {
        let _ = writeln!(w, "- [{title}](#{anchor})");
    }
    let _ = writeln!(w, "\n## 1. Purpose\n");
    let _ = writeln!(
        w,
        "The Task Execution component runs tasks under execution strategies (async on tokio, threads on rayon, worker processes, and worker processes on other machines through NATS JetStream), coordinates their execution, tracks every job's lifecycle, and announces every outcome on a publish/subscribe bus.\n"
    );
    let _ = writeln!(w, "### 1.1 Task Submission and Execution\n");
    let _ = writeln!(
        w,
        "Submitting a task to the coordinator for execution under a chosen execution mode.\n"
    );
    let _ = writeln!(
        w,
        "```rust\n{}\n```\n",
        first_example(&coordinator.doc).unwrap_or_default()
    );
    let _ = writeln!(w, "### 1.2 Job Management\n");
    let _ = writeln!(w, "Adding and ending jobs in a `CoordinatorState`.\n");
    let _ = writeln!(
        w,
        "```rust\n{}\n```\n",
        first_example(&core.doc).unwrap_or_default()
    );

    let _ = writeln!(w, "## 2. Public API\n");
    for krate in &crates {
        let _ = writeln!(w, "### Crate `{}`\n", krate.name);
        let _ = writeln!(w, "{}\n", first_paragraph(&krate.doc));
        for item in &krate.items {
            let _ = writeln!(w, "#### `{} {}`\n", item.kind, item.name);
            let doc = if item.doc.is_empty() {
                "No doc comment."
            } else {
                &item.doc
            };
            let _ = writeln!(w, "{doc}\n");
            for m in &item.methods {
                let _ = writeln!(w, "##### `.{}({})`\n", m.name, m.params);
                let doc = if m.doc.is_empty() {
                    "No doc comment."
                } else {
                    &m.doc
                };
                let _ = writeln!(w, "{doc}\n");
            }
        }
        let _ = writeln!(w, "---\n");
    }

    let _ = writeln!(w, "## 3. Architectural Design\n");
    for (i, krate) in crates.iter().enumerate() {
        let _ = writeln!(w, "### 3.{} `{}`\n", i + 1, krate.name);
        let _ = writeln!(w, "{}\n", summary(&krate.doc));
    }

    let _ = writeln!(w, "## 4. Important Considerations\n");
    let _ = writeln!(w, "### 4.1 Dependencies & Setup\n");
    let features = strategies
        .doc
        .split("# Feature flags")
        .nth(1)
        .map(|rest| {
            rest.split("\n# ")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    let _ = writeln!(
        w,
        "Each layer depends only on those below it: `task-core` <- `pubsub`, `exec-strategies` <- `coordinator`. A custom strategy depends on `task-core` alone, as `exec-nats` (the distributed strategy) does. The built-in strategies are features of `exec-strategies` (re-exported by `coordinator`):\n\n{}\n",
        strip_links(&features)
    );
    let _ = writeln!(w, "### 4.2 Performance & Limitations\n");
    let _ = writeln!(
        w,
        "Job add, end and lookup are O(1); the cost per task does not grow with the tasks already run; with `Retention::KeepLast` the job table's memory is bounded. `cargo xtask bench` measures every strategy and the publisher beside a raw baseline in the same run and writes `target/bench-report/report.md`.\n"
    );

    let _ = writeln!(w, "## 5. Related Files\n");
    for krate in &crates {
        let _ = writeln!(w, "### `{}`\n", krate.name);
        for file in &krate.files {
            let _ = writeln!(
                w,
                "- [`{}`](../../{}): {}",
                file.path,
                file.path,
                strip_links(&file.purpose)
            );
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "## CHANGELOG\n");
    let _ = writeln!(
        w,
        "- **v{version}**: generated from the Rust crates; async, threaded and process strategies."
    );
    Ok(md)
}
