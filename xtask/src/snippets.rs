//! The Rust snippets of the README and the guides in `docs/` are code that compiles.
//!
//! A ```` ```rust ```` block in those pages is preceded by a line naming where the code lives:
//!
//! ```text
//! <!-- compiled: crates/coordinator/examples/guide.rs -->
//! ```
//!
//! and its lines, comments and blank lines aside, must appear one after the other in that file
//! (which the build compiles: an example, a test, a doctest in a doc comment). A block that
//! cannot be compiled as written says why instead: `<!-- not compiled: a summary of the trait -->`.
//! The check fails on a block with neither, on a named file that is missing, and on a block whose
//! lines the file does not hold: the pages cannot drift from the code.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The pages whose snippets are checked, besides every `.md` file directly in `docs/`.
const PAGES: &[&str] = &["README.md"];

const COMPILED: &str = "<!-- compiled:";
const NOT_COMPILED: &str = "<!-- not compiled:";

/// Checks every page; lists every problem found before failing.
pub(crate) fn check(root: &Path) -> Result<()> {
    let mut pages: Vec<String> = PAGES.iter().map(|p| (*p).to_owned()).collect();
    let mut guides: Vec<String> = fs::read_dir(root.join("docs"))
        .context("reading docs/")?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .filter_map(|path| {
            path.file_name()
                .map(|name| format!("docs/{}", name.to_string_lossy()))
        })
        .collect();
    guides.sort();
    pages.extend(guides);

    let mut problems = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text =
            fs::read_to_string(root.join(page)).with_context(|| format!("reading {page}"))?;
        for block in rust_blocks(&text) {
            let at = format!("{page}:{}", block.line);
            match block.marker {
                Marker::Compiled(file) => {
                    let source = match fs::read_to_string(root.join(&file)) {
                        Ok(source) => source,
                        Err(e) => {
                            problems.push(format!("{at}: cannot read {file}: {e}"));
                            continue;
                        }
                    };
                    if let Err(line) = find(&block.code, &source, is_rust_source(&file)) {
                        problems.push(format!("{at}: {file} does not hold this line: {line}"));
                    } else {
                        checked += 1;
                    }
                }
                Marker::NotCompiled => {}
                Marker::Missing => problems.push(format!(
                    "{at}: a rust block needs a `{COMPILED} FILE -->` line before it \
                     (or `{NOT_COMPILED} why -->`)"
                )),
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "snippets in the docs that drifted from the code:\n  {}",
            problems.join("\n  ")
        );
    }
    println!("{checked} snippets in the README and docs/ match compiled code");
    Ok(())
}

#[derive(Debug, PartialEq)]
enum Marker {
    Compiled(String),
    NotCompiled,
    Missing,
}

#[derive(Debug)]
struct Block {
    /// The line of the opening fence, from 1.
    line: usize,
    marker: Marker,
    code: String,
}

/// The ```` ```rust ```` blocks of a Markdown page, each with the marker line before it.
fn rust_blocks(page: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = page.lines().enumerate();
    let mut previous: Option<&str> = None;
    while let Some((index, line)) = lines.next() {
        let trimmed = line.trim();
        let Some(info) = trimmed.strip_prefix("```") else {
            if !trimmed.is_empty() {
                previous = Some(trimmed);
            }
            continue;
        };
        let is_rust = info
            .split(',')
            .next()
            .is_some_and(|lang| lang.trim() == "rust");
        let mut code = String::new();
        for (_, inner) in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                break;
            }
            code.push_str(inner);
            code.push('\n');
        }
        if is_rust {
            blocks.push(Block {
                line: index + 1,
                marker: marker(previous),
                code,
            });
        }
        previous = None;
    }
    blocks
}

fn marker(line: Option<&str>) -> Marker {
    let Some(line) = line.and_then(|l| l.strip_suffix("-->")) else {
        return Marker::Missing;
    };
    if let Some(file) = line.strip_prefix(COMPILED) {
        Marker::Compiled(file.trim().to_owned())
    } else if line.starts_with(NOT_COMPILED) {
        Marker::NotCompiled
    } else {
        Marker::Missing
    }
}

fn is_rust_source(file: &str) -> bool {
    Path::new(file).extension().is_some_and(|e| e == "rs")
}

/// `Ok` when the code lines of `snippet` appear one after the other among those of `source`;
/// otherwise the first snippet line that breaks the run, from the best partial match.
fn find(snippet: &str, source: &str, rust_source: bool) -> Result<(), String> {
    let wanted: Vec<String> = snippet.lines().filter_map(|l| code_of(l, false)).collect();
    let held: Vec<String> = source
        .lines()
        .filter_map(|l| code_of(l, rust_source))
        .collect();
    if wanted.is_empty() {
        return Err("(the block has no code)".to_owned());
    }
    let mut best = 0;
    for start in 0..held.len() {
        let run = wanted
            .iter()
            .zip(&held[start..])
            .take_while(|(w, h)| w == h)
            .count();
        if run == wanted.len() {
            return Ok(());
        }
        best = best.max(run);
    }
    Err(wanted[best].clone())
}

/// A line's code: comments removed, spaces collapsed; `None` when nothing is left. In a Rust
/// source, the text of a doc comment counts as code (doctests live there), hidden doctest lines
/// (`# ...`) included.
fn code_of(line: &str, rust_source: bool) -> Option<String> {
    let mut line = line.trim();
    if rust_source
        && let Some(doc) = line
            .strip_prefix("///")
            .or_else(|| line.strip_prefix("//!"))
    {
        line = doc.trim();
        if line == "#" {
            return None;
        }
        if let Some(hidden) = line.strip_prefix("# ") {
            line = hidden.trim();
        }
    }
    // Comments, and the attribute that keeps a snippet's home as the page shows it.
    if line.starts_with("//") || (rust_source && line == "#[rustfmt::skip]") {
        return None;
    }
    let mut code = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find("/*") {
        code.push_str(&rest[..open]);
        match rest[open..].find("*/") {
            Some(close) => rest = &rest[open + close + 2..],
            None => {
                rest = "";
                break;
            }
        }
    }
    code.push_str(rest);
    // A trailing comment starts at `//` after a space: `nats://host` keeps its slashes.
    let code = match code.find(" //") {
        Some(at) => &code[..at],
        None => &code,
    };
    let collapsed = code.split_whitespace().collect::<Vec<_>>().join(" ");
    (!collapsed.is_empty()).then_some(collapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
Text.

<!-- compiled: examples/a.rs -->
```rust
let a = 1;      // one
let b = a + 1;
```

```rust
let c = 3;
```

<!-- not compiled: a summary -->
```rust,ignore
fn f();
```

```toml
[x]
```
";

    #[test]
    fn blocks_carry_the_marker_before_them() {
        let blocks = rust_blocks(PAGE);
        let markers: Vec<_> = blocks.iter().map(|b| (b.line, &b.marker)).collect();
        assert_eq!(
            markers,
            [
                (4, &Marker::Compiled("examples/a.rs".into())),
                (9, &Marker::Missing),
                (14, &Marker::NotCompiled)
            ]
        );
        assert_eq!(blocks[0].code, "let a = 1;      // one\nlet b = a + 1;\n");
    }

    #[test]
    fn comments_and_spacing_do_not_count() {
        assert_eq!(
            code_of("  let x  = f(1); // why", false).as_deref(),
            Some("let x = f(1);")
        );
        assert_eq!(
            code_of("fn name(&self) -> &str { /* the name */ }", false).as_deref(),
            Some("fn name(&self) -> &str { }")
        );
        assert_eq!(
            code_of(r#".url("nats://host:4222")"#, false).as_deref(),
            Some(r#".url("nats://host:4222")"#)
        );
        assert_eq!(code_of("// a comment", false), None);
        assert_eq!(
            code_of("/// # let hidden = 1;", true).as_deref(),
            Some("let hidden = 1;")
        );
        assert_eq!(code_of("/// # let hidden = 1;", false), None);
        assert_eq!(code_of("#[rustfmt::skip]", true), None);
        assert!(code_of("#[rustfmt::skip]", false).is_some());
    }

    #[test]
    fn a_snippet_matches_only_a_contiguous_run() {
        let source =
            "fn main() {\n    let a = 1;\n\n    // setup\n    let b = a + 1;\n    let c = 3;\n}\n";
        assert_eq!(
            find("let a = 1; // one\nlet b = a + 1;\n", source, true),
            Ok(())
        );
        assert_eq!(
            find("let a = 1;\nlet c = 3;\n", source, true),
            Err("let c = 3;".to_owned())
        );
        assert_eq!(
            find("let a = 2;\n", source, true),
            Err("let a = 2;".to_owned())
        );
        assert!(find("// only a comment\n", source, true).is_err());
    }
}
