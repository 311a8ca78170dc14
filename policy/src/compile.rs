//! The reference YAML compiled to Cedar.
//!
//! Cedar has no rule order, so every rule, allow or deny, compiles to a
//! `permit` of its own condition, tagged with its index; the engine picks
//! the lowest-indexed satisfied rule and applies its action ("first
//! matching rule wins"), and `default_action` when none is satisfied. The
//! text is linear in the rules: guarding rule `i` with the negation of every
//! earlier rule instead grew with their square and, past ~35 rules, nested
//! deeper than Cedar's evaluator allows (those rules silently never
//! matched). Each entry compiles to its own slice, so evaluation cost does
//! not grow with the number of callers.

use std::fmt::Write as _;

use crate::reference::{Entry, Methods, RulePath};

/// The schema every policy (compiled or native) is validated against.
pub const SCHEMA: &str = r#"
entity Caller;
entity Service;
action "request" appliesTo {
    principal: [Caller],
    resource: [Service],
    context: {
        method: String,
        path: String,
        trust_domain: String,
        caller_policy: String,
    }
};
"#;

/// The ID of the policy that applies `default_action: allow`.
pub const DEFAULT_ACTION_ID: &str = "default_action";

/// Compile-time knobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// Rule paths (and request paths) compared in lower case.
    pub case_insensitive_paths: bool,
}

/// One compiled Cedar policy: its ID, source, and the rule it encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub id: String,
    pub rule: Option<usize>,
    pub text: String,
}

/// The policy ID of rule `index` of `entry`.
pub fn rule_id(entry: &str, index: usize) -> String {
    format!("{entry}/rules/{index}")
}

/// Bytes of Cedar a whole policy document may compile to: compiling and
/// validating more would hold a thread for seconds. The reference sample
/// needs about 6 KiB; a 256 KiB `PUT /mgmt/policy` body at most about 1 MiB.
pub const MAX_CEDAR_BYTES: usize = 2 << 20;

/// Compiles one entry's rules to Cedar source, or says how many bytes that
/// would take when it is more than `budget` (nothing is built then).
pub fn compile_entry(entry: &Entry, options: CompileOptions, budget: usize) -> Result<Vec<CompiledPolicy>, usize> {
    let conditions: Vec<String> = entry.rules.iter().map(|r| condition(&r.methods, &r.path, options)).collect();
    let needed = conditions.iter().fold(0usize, |total, c| total.saturating_add(PER_POLICY + c.len()));
    if needed > budget {
        return Err(needed);
    }
    let mut out = Vec::with_capacity(conditions.len());
    for (i, cond) in conditions.iter().enumerate() {
        let id = rule_id(&entry.name, i);
        let text = format!(
            "@id(\"{}\")\npermit(principal, action == Action::\"request\", resource)\nwhen {{ {cond} }};",
            escape(&id)
        );
        out.push(CompiledPolicy { id, rule: Some(i), text });
    }
    Ok(out)
}

/// The text of a compiled rule besides its condition, with room for its ID.
const PER_POLICY: usize = 128;

fn condition(methods: &Methods, path: &RulePath, options: CompileOptions) -> String {
    let methods = match methods {
        Methods::Any => "true".to_owned(),
        Methods::Listed(list) => {
            let quoted: Vec<String> = list.iter().map(|m| format!("\"{}\"", escape(m))).collect();
            format!("[{}].contains(context.method)", quoted.join(", "))
        }
    };
    let fold = |p: &str| if options.case_insensitive_paths { p.to_lowercase() } else { p.to_owned() };
    let path = match path {
        RulePath::Any => "true".to_owned(),
        RulePath::Exact(p) => format!("context.path == \"{}\"", escape(&fold(p))),
        RulePath::Under(p) => {
            let p = fold(p);
            let mut like = escape(&p).replace('*', "\\*");
            like.push_str("/*");
            format!("(context.path == \"{}\" || context.path like \"{like}\")", escape(&p))
        }
    };
    format!("{methods} && {path}")
}

/// Escapes text for a Cedar string literal.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}
