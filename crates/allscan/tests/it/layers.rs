//! The crate's modules form one data-flow order (src/lib.rs): each module's non-test code uses
//! only modules earlier in [`ORDER`]. A use of a later module is a cycle in the making (bundle
//! <-> train and train <-> eval were); this test names the file and the reference.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules of `allscan`, in data-flow order.
const ORDER: &[&str] = &[
    "fsutil",
    "device",
    "progress",
    "synth",
    "data",
    "params",
    "weights",
    "model",
    "config",
    "decision",
    "bundle",
    "adapt",
    "masks",
    "infer",
    "predictions",
    "explain",
    "eval",
    "train",
    "cv",
    "slide",
    "reviewed",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules that `code` names through `crate::`, including grouped imports
/// (`use crate::{data, model::X}`).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The file's code before its test module, comments dropped (a doc link is not a dependency).
fn non_test_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

#[test]
fn every_module_has_a_place_in_the_order() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: BTreeSet<&str> =
        lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';')).collect();
    let ordered: BTreeSet<&str> = ORDER.iter().copied().collect();
    assert_eq!(declared, ordered, "src/lib.rs's modules and tests/it/layers.rs's ORDER must list the same modules");
}

#[test]
fn modules_use_only_earlier_modules() {
    let root = src();
    let mut files = Vec::new();
    rs_files(&root, &mut files);
    files.sort();
    let rank = |m: &str| ORDER.iter().position(|x| *x == m);
    let mut violations = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        // lib.rs declares everything; `tests.rs` files are test modules.
        if top == "lib" || f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let me = rank(&top).unwrap_or_else(|| panic!("{}: module `{top}` is not in ORDER", rel.display()));
        let code = non_test_code(&std::fs::read_to_string(f).unwrap());
        for used in crate_refs(&code) {
            if let Some(r) = rank(&used) {
                if r > me {
                    violations.push(format!("{} uses crate::{used}, which comes after `{top}`", rel.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "modules out of data-flow order:\n{}", violations.join("\n"));
}

#[test]
fn the_reference_scan_sees_grouped_and_nested_uses() {
    let refs = crate_refs("use crate::{data, model::Task};\nlet x = crate::eval::run::evaluate;");
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["data", "eval", "model"]);
    assert_eq!(non_test_code("use crate::a;\n// crate::b\n#[cfg(test)]\nuse crate::c;"), "use crate::a;");
}
