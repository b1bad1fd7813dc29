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

const COMPILED: &str = "<!-- compiled:";
const NOT_COMPILED: &str = "<!-- not compiled:";

/// The pages whose snippets are checked, relative to the workspace root: the README and every
/// `.md` file directly in `docs/`.
fn pages(root: &Path) -> Result<Vec<String>> {
    let mut pages = vec!["README.md".to_owned()];
    for entry in fs::read_dir(root.join("docs")).context("reading docs/")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    pages[1..].sort();
    Ok(pages)
}

/// Checks every page; lists every problem found before failing.
pub(crate) fn check(root: &Path) -> Result<()> {
    let (mut problems, mut checked) = (Vec::new(), 0);
    for page in pages(root)? {
        let text =
            fs::read_to_string(root.join(&page)).with_context(|| format!("reading {page}"))?;
        for (line, marker, code) in rust_blocks(&text) {
            let file = marker.and_then(|m| m.strip_prefix(COMPILED)).map(str::trim);
            let problem = match (file, marker.is_some_and(|m| m.starts_with(NOT_COMPILED))) {
                (Some(file), _) => match fs::read_to_string(root.join(file)) {
                    Ok(source) => find(&code, &source, file.ends_with(".rs"))
                        .err()
                        .map(|line| format!("{file} does not hold this line: {line}")),
                    Err(e) => Some(format!("cannot read {file}: {e}")),
                },
                (None, true) => continue,
                (None, false) => Some(format!(
                    "a rust block needs a `{COMPILED} FILE -->` line before it (or `{NOT_COMPILED} why -->`)"
                )),
            };
            match problem {
                Some(problem) => problems.push(format!("{page}:{line}: {problem}")),
                None => checked += 1,
            }
        }
    }
    if !problems.is_empty() {
        let problems = problems.join("\n  ");
        bail!("snippets in the docs that drifted from the code:\n  {problems}");
    }
    println!("{checked} snippets in the README and docs/ match compiled code");
    Ok(())
}

/// The ```` ```rust ```` blocks of a Markdown page: the line of each opening fence (from 1), the
/// marker comment on the last non-blank line before it, if any, and the block's code.
fn rust_blocks(page: &str) -> Vec<(usize, Option<&str>, String)> {
    let (mut blocks, mut previous) = (Vec::new(), None);
    let mut lines = page.lines().map(str::trim).enumerate();
    while let Some((index, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            previous = Some(line).filter(|l| !l.is_empty()).or(previous);
            continue;
        };
        let code = lines.by_ref().map(|(_, l)| l);
        let code: Vec<&str> = code.take_while(|l| !l.starts_with("```")).collect();
        if info.split(',').next().map(str::trim) == Some("rust") {
            let marker = previous.and_then(|l| l.strip_suffix("-->"));
            blocks.push((index + 1, marker, code.join("\n")));
        }
        previous = None;
    }
    blocks
}

/// `Ok` when the code lines of `snippet` appear one after the other among those of `source`;
/// otherwise the first snippet line that breaks the run, from the best partial match.
fn find(snippet: &str, source: &str, rust_source: bool) -> Result<(), String> {
    let wanted: Vec<String> = snippet.lines().filter_map(|l| code_of(l, false)).collect();
    let held = source.lines().filter_map(|l| code_of(l, rust_source));
    let held: Vec<String> = held.collect();
    if wanted.is_empty() {
        return Err("(the block has no code)".to_owned());
    }
    let run = |start: usize| {
        let pairs = wanted.iter().zip(&held[start..]);
        pairs.take_while(|(w, h)| w == h).count()
    };
    let best = (0..held.len()).map(run).max().unwrap_or(0);
    (best == wanted.len())
        .then_some(())
        .ok_or_else(|| wanted[best].clone())
}

/// A line's code: comments removed, spaces collapsed; `None` when nothing is left. In a Rust
/// source, the text of a doc comment counts as code (doctests live there), hidden doctest lines
/// (`# ...`) included.
fn code_of(line: &str, rust_source: bool) -> Option<String> {
    let mut line = line.trim();
    let doc = ["///", "//!"].iter().find_map(|p| line.strip_prefix(p));
    if let Some(doc) = doc.filter(|_| rust_source) {
        line = doc.trim();
        if line == "#" {
            return None;
        }
        line = line.strip_prefix("# ").map_or(line, str::trim);
    }
    // Comments, and the attribute that keeps a snippet's home as the page shows it.
    if line.starts_with("//") || (rust_source && line == "#[rustfmt::skip]") {
        return None;
    }
    let (mut code, mut rest) = (String::with_capacity(line.len()), line);
    while let Some(open) = rest.find("/*") {
        code.push_str(&rest[..open]);
        let close = rest[open..].find("*/");
        rest = close.map_or("", |close| &rest[open + close + 2..]);
    }
    code.push_str(rest);
    // A trailing comment starts at `//` after a space: `nats://host` keeps its slashes.
    let code = code.find(" //").map_or(code.as_str(), |at| &code[..at]);
    let collapsed = code.split_whitespace().collect::<Vec<_>>().join(" ");
    (!collapsed.is_empty()).then_some(collapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_carry_the_marker_before_them() {
        let page = "Text.\n\n<!-- compiled: examples/a.rs -->\n```rust\nlet a = 1;      // one\nlet b = a + 1;\n```\n\n```rust\nlet c = 3;\n```\n\n\
                    <!-- not compiled: a summary -->\n```rust,ignore\nfn f();\n```\n\n```toml\n[x]\n```\n";
        let blocks = rust_blocks(page);
        let markers: Vec<_> = blocks
            .iter()
            .map(|(line, marker, _)| (*line, *marker))
            .collect();
        let expected = [
            (4, Some("<!-- compiled: examples/a.rs ")),
            (9, None),
            (14, Some("<!-- not compiled: a summary ")),
        ];
        assert_eq!(markers, expected);
        assert_eq!(blocks[0].2, "let a = 1;      // one\nlet b = a + 1;");
    }

    #[test]
    fn comments_and_spacing_do_not_count() {
        let cases = [
            ("  let x  = f(1); // why", false, Some("let x = f(1);")),
            ("fn f() { /* the f */ }", false, Some("fn f() { }")),
            (r#"url("a://b")"#, false, Some(r#"url("a://b")"#)),
            ("// a comment", false, None),
            ("/// # let hidden = 1;", true, Some("let hidden = 1;")),
            ("/// # let hidden = 1;", false, None),
            ("#[rustfmt::skip]", true, None),
            ("#[rustfmt::skip]", false, Some("#[rustfmt::skip]")),
        ];
        for (line, rust_source, code) in cases {
            assert_eq!(code_of(line, rust_source).as_deref(), code, "{line}");
        }
    }

    #[test]
    fn a_snippet_matches_only_a_contiguous_run() {
        let source =
            "fn main() {\n    let a = 1;\n\n    // setup\n    let b = a + 1;\n    let c = 3;\n}\n";
        let find = |snippet| find(snippet, source, true);
        assert_eq!(find("let a = 1; // one\nlet b = a + 1;\n"), Ok(()));
        assert_eq!(find("let a = 1;\nlet c = 3;\n"), Err("let c = 3;".into()));
        assert_eq!(find("let a = 2;\n"), Err("let a = 2;".into()));
        assert!(find("// only a comment\n").is_err());
    }
}
