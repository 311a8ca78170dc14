//! Policy files (and `PUT /mgmt/policy` bodies): loading, validation and the
//! Cedar compilation never panic; errors are reported, not thrown.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{CompileOptions, PolicyEngine, Source};

fuzz_target!(|yaml: &str| {
    let source = Source { name: "fuzz.yaml".into(), text: yaml.to_owned() };
    let _ = PolicyEngine::build(&source, &[], &|_| None, CompileOptions::default());
});
