//! `cargo xtask docs`: generates `docs/components/task_execution.md` (the design document the
//! project started from, now produced by the code) and builds the rustdoc with warnings denied.
//! `cargo xtask docs --check` fails when the committed document is stale (and builds the rustdoc
//! too). Both check that the Rust snippets of the README and `docs/` match compiled code
//! ([`crate::snippets`]).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use syn::{Attribute, FnArg, Ident, ImplItem, Item, Pat, Signature, TraitItem, Type, Visibility};

const DOCUMENT: &str = "docs/components/task_execution.md";

/// The crates, lowest layer first: the order the API section follows.
const CRATES: &str = "task-core pubsub exec-strategies coordinator exec-nats";

pub(crate) fn run(check: bool) -> Result<()> {
    let root = crate::workspace_root();
    let generated = generate(&root)?;
    let path = root.join(DOCUMENT);
    if !check {
        fs::write(&path, generated).with_context(|| format!("writing {DOCUMENT}"))?;
        println!("wrote {DOCUMENT}");
    } else if fs::read_to_string(&path).unwrap_or_default() != generated {
        bail!("{DOCUMENT} is stale: run `cargo xtask docs` and commit the result");
    } else {
        println!("{DOCUMENT} is up to date");
    }
    crate::snippets::check(&root)?;
    let rustdoc = "doc --workspace --all-features --no-deps --exclude xtask --exclude benches";
    crate::cargo(rustdoc, &[], &[("RUSTDOCFLAGS", "-D warnings")])
}

/// The text of the `///` or `//!` comments among `attrs`, one line each, trimmed of the single
/// leading space.
fn doc_text(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("doc")) {
        if let syn::Meta::NameValue(doc) = &attr.meta
            && let syn::Expr::Lit(literal) = &doc.value
            && let syn::Lit::Str(s) = &literal.lit
        {
            let line = s.value();
            lines.push(line.strip_prefix(' ').unwrap_or(&line).to_owned());
        }
    }
    lines.join("\n")
}

/// The doc text up to its first `# ` heading (examples, errors ... stay in rustdoc), without
/// rustdoc link brackets; "No doc comment." when there is none.
fn summary(doc: &str) -> String {
    let mut in_code = false;
    let lines = doc.lines().take_while(|line| {
        in_code ^= line.starts_with("```");
        in_code || !line.starts_with("# ")
    });
    let summary = strip_links(lines.collect::<Vec<_>>().join("\n").trim());
    if summary.is_empty() {
        return "No doc comment.".to_owned();
    }
    summary
}

/// `[`Foo`](crate::Foo)` and `[`Foo`]` become `` `Foo` ``.
fn strip_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        rest = &rest[start + 1..];
        let Some(end) = rest.find(']').filter(|&end| !rest[..end].contains('[')) else {
            out.push('[');
            continue;
        };
        out.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        if let Some(close) = rest.find(')').filter(|_| rest.starts_with('(')) {
            rest = &rest[close + 1..];
        }
    }
    out + rest
}

/// The code of the first fenced example in `doc`, without hidden (`# `) lines.
fn first_example(doc: &str) -> String {
    let mut lines = doc.lines().skip_while(|l| !l.starts_with("```")).skip(1);
    let body = lines.by_ref().take_while(|l| !l.starts_with("```"));
    let body: Vec<&str> = body.filter(|l| !l.starts_with("# ") && *l != "#").collect();
    body.join("\n")
}

fn first_paragraph(doc: &str) -> String {
    strip_links(doc.split("\n\n").next().unwrap_or_default().trim())
}

/// `name(params)`, the parameters by name (`self`, and `_` for a pattern).
fn signature(sig: &Signature) -> String {
    let params = sig.inputs.iter().map(|arg| match arg {
        FnArg::Receiver(_) => "self".to_owned(),
        FnArg::Typed(t) => match &*t.pat {
            Pat::Ident(i) => i.ident.to_string(),
            _ => "_".to_owned(),
        },
    });
    format!("{}({})", sig.ident, params.collect::<Vec<_>>().join(", "))
}

/// A public item: its kind (`struct`, `fn` ...), its name (with its parameters for a function),
/// its summary, and its methods' signatures and summaries.
struct ApiItem {
    kind: &'static str,
    name: String,
    doc: String,
    methods: Vec<(String, String)>,
}

/// A crate as the document describes it: its doc, its public items, and each source file with
/// the first line of its doc.
#[derive(Default)]
struct CrateInfo {
    name: &'static str,
    doc: String,
    items: Vec<ApiItem>,
    files: Vec<(String, String)>,
}

fn read_crate(root: &Path, name: &'static str) -> Result<CrateInfo> {
    let (mut paths, mut dirs) = (Vec::new(), vec![root.join("crates").join(name).join("src")]);
    while let Some(dir) = dirs.pop() {
        for path in fs::read_dir(dir)? {
            let path = path?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let mut krate = CrateInfo {
        name,
        ..CrateInfo::default()
    };
    // Methods, by the name of their trait or type: attached once every file is read.
    let mut methods: Vec<(String, (String, String))> = Vec::new();
    let mut method = |owner: &Ident, sig: &Signature, attrs: &[Attribute]| {
        let method = (format!(".{}", signature(sig)), summary(&doc_text(attrs)));
        methods.push((owner.to_string(), method));
    };
    let public = |vis: &Visibility| matches!(vis, Visibility::Public(_));
    for path in &paths {
        let parsed = syn::parse_file(&fs::read_to_string(path)?);
        let file = parsed.with_context(|| format!("parsing {}", path.display()))?;
        let file_doc = doc_text(&file.attrs);
        let relative = path.strip_prefix(root).unwrap_or(path).to_string_lossy();
        let purpose = file_doc.lines().next().unwrap_or_default().to_owned();
        krate.files.push((relative.into_owned(), purpose));
        if path.ends_with("lib.rs") {
            krate.doc = file_doc;
        }
        for item in &file.items {
            let (kind, name, attrs, vis) = match item {
                Item::Struct(i) => ("struct", i.ident.to_string(), &i.attrs, &i.vis),
                Item::Enum(i) => ("enum", i.ident.to_string(), &i.attrs, &i.vis),
                Item::Type(i) => ("type", i.ident.to_string(), &i.attrs, &i.vis),
                Item::Const(i) => ("const", i.ident.to_string(), &i.attrs, &i.vis),
                Item::Fn(i) => ("fn", signature(&i.sig), &i.attrs, &i.vis),
                Item::Trait(i) => {
                    for item in &i.items {
                        if let (TraitItem::Fn(f), true) = (item, public(&i.vis)) {
                            method(&i.ident, &f.sig, &f.attrs);
                        }
                    }
                    ("trait", i.ident.to_string(), &i.attrs, &i.vis)
                }
                Item::Impl(i) if i.trait_.is_none() => {
                    let Type::Path(owner) = &*i.self_ty else {
                        continue;
                    };
                    for item in &i.items {
                        if let (Some(owner), ImplItem::Fn(f)) = (owner.path.segments.last(), item)
                            && public(&f.vis)
                        {
                            method(&owner.ident, &f.sig, &f.attrs);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            if public(vis) {
                let (doc, methods) = (summary(&doc_text(attrs)), Vec::new());
                krate.items.push(ApiItem {
                    kind,
                    name,
                    doc,
                    methods,
                });
            }
        }
    }
    for (owner, method) in methods {
        let owner = |item: &&mut ApiItem| item.kind != "fn" && item.name == owner;
        if let Some(item) = krate.items.iter_mut().find(owner) {
            item.methods.push(method);
        }
    }
    Ok(krate)
}

fn generate(root: &Path) -> Result<String> {
    let crates = CRATES.split(' ').map(|c| read_crate(root, c));
    let crates: Vec<CrateInfo> = crates.collect::<Result<_>>()?;
    let doc_of = |name| {
        crates
            .iter()
            .find(|c| c.name == name)
            .map_or("", |c| &c.doc)
    };
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    let mut lines = manifest.lines();
    let version = lines.find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"'));
    let version = version.context("no workspace version in Cargo.toml")?;
    // The job table's module doc holds the job-management example.
    let state = fs::read_to_string(root.join("crates/coordinator/src/state.rs"))?;
    let state_doc = doc_text(&syn::parse_file(&state)?.attrs);
    let features = doc_of("exec-strategies").split("# Feature flags").nth(1);
    let features = features.unwrap_or_default();
    let features = strip_links(features.split("\n# ").next().unwrap_or_default().trim());

    let mut md = format!(
        "# Task Execution\n\n<!-- Generated by `cargo xtask docs` from the crates' sources and doc comments; do not edit by hand. -->\n\n{}\n\n**Version:** {version}\n\n## Table of Contents\n\n",
        first_paragraph(doc_of("coordinator"))
    );
    let sections = "Purpose|Public API|Architectural Design|Important Considerations|Related Files";
    for (i, title) in sections.split('|').enumerate() {
        let anchor = title.to_lowercase().replace(' ', "-");
        let _ = writeln!(md, "- [{}. {title}](#{}-{anchor})", i + 1, i + 1);
    }
    let _ = write!(
        md,
        "- [CHANGELOG](#changelog)\n\n## 1. Purpose\n\nThe Task Execution component runs tasks under execution strategies (async on tokio, threads on rayon, worker processes, and worker processes on other machines through NATS JetStream), coordinates their execution, tracks every job's lifecycle, and announces every outcome on a publish/subscribe bus.\n\n\
         ### 1.1 Task Submission and Execution\n\nSubmitting a task to the coordinator for execution under a chosen execution mode.\n\n```rust\n{}\n```\n\n\
         ### 1.2 Job Management\n\nAdding and ending jobs in a `CoordinatorState`.\n\n```rust\n{}\n```\n\n## 2. Public API\n\n",
        first_example(doc_of("coordinator")),
        first_example(&state_doc)
    );
    for krate in &crates {
        let (name, doc) = (krate.name, first_paragraph(&krate.doc));
        let _ = write!(md, "### Crate `{name}`\n\n{doc}\n\n");
        for item in &krate.items {
            let (kind, name, doc) = (item.kind, &item.name, &item.doc);
            let _ = write!(md, "#### `{kind} {name}`\n\n{doc}\n\n");
            for (signature, doc) in &item.methods {
                let _ = write!(md, "##### `{signature}`\n\n{doc}\n\n");
            }
        }
        md.push_str("---\n\n");
    }
    md.push_str("## 3. Architectural Design\n\n");
    for (i, krate) in crates.iter().enumerate() {
        let (number, name, doc) = (i + 1, krate.name, summary(&krate.doc));
        let _ = write!(md, "### 3.{number} `{name}`\n\n{doc}\n\n");
    }
    let _ = write!(
        md,
        "## 4. Important Considerations\n\n### 4.1 Dependencies & Setup\n\nEach layer depends only on those below it: `task-core` <- `pubsub`, `exec-strategies` <- `coordinator`. A custom strategy depends on `task-core` alone, as `exec-nats` (the distributed strategy) does. The built-in strategies are features of `exec-strategies` (re-exported by `coordinator`):\n\n{features}\n\n\
         ### 4.2 Performance & Limitations\n\nJob add, end and lookup are O(1); the cost per task does not grow with the tasks already run; with `Retention::KeepLast` the job table's memory is bounded. `cargo xtask bench` measures every strategy and the publisher beside a raw baseline in the same run and writes `target/bench-report/report.md`.\n\n## 5. Related Files\n\n"
    );
    for krate in &crates {
        let _ = writeln!(md, "### `{}`\n", krate.name);
        for (path, purpose) in &krate.files {
            let _ = writeln!(md, "- [`{path}`](../../{path}): {}", strip_links(purpose));
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "## CHANGELOG\n\n- **v{version}**: generated from the Rust crates; async, threaded and process strategies."
    );
    Ok(md)
}
