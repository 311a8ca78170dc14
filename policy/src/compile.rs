//! The reference YAML compiled to Cedar.
//!
//! Cedar has no rule order, so "first matching rule wins" is encoded by
//! guarding rule `i` with the negation of every earlier rule's condition: at
//! most one rule of an entry can be satisfied for a request. `default_action:
//! allow` becomes a permit guarded by the negation of every rule. Each entry
//! compiles to its own slice, so evaluation cost does not grow with the
//! number of callers.

use std::fmt::Write as _;

use crate::reference::{Action, Entry, Methods, PolicyDoc, RulePath};

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

/// Compiles one entry's rules (and its default) to Cedar source.
pub fn compile_entry(doc: &PolicyDoc, entry: &Entry, options: CompileOptions) -> Vec<CompiledPolicy> {
    let conditions: Vec<String> = entry.rules.iter().map(|r| condition(&r.methods, &r.path, options)).collect();
    let none_before = |i: usize| -> String { conditions.iter().take(i).map(|c| format!(" && !({c})")).collect() };
    let mut out = Vec::with_capacity(entry.rules.len() + 1);
    for (i, rule) in entry.rules.iter().enumerate() {
        let id = rule_id(&entry.name, i);
        let effect = match rule.action {
            Action::Allow => "permit",
            Action::Deny => "forbid",
        };
        let cond = conditions.get(i).map_or("false", String::as_str);
        let text = format!(
            "@id(\"{}\")\n{effect}(principal, action == Action::\"request\", resource)\nwhen {{ {cond}{} }};",
            escape(&id),
            none_before(i)
        );
        out.push(CompiledPolicy { id, rule: Some(i), text });
    }
    if doc.default_action == Action::Allow {
        let text = format!(
            "@id(\"{DEFAULT_ACTION_ID}\")\npermit(principal, action == Action::\"request\", resource)\nwhen {{ true{} }};",
            none_before(entry.rules.len())
        );
        out.push(CompiledPolicy { id: DEFAULT_ACTION_ID.to_owned(), rule: None, text });
    }
    out
}

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
