//! Request paths: no panic, and what is forwarded is what was judged — the
//! re-encoded canonical path parses back to the same canonical path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{CanonicalPath, PathOptions};

fuzz_target!(|input: (&str, bool)| {
    let (raw, allow_semicolons) = input;
    let options = PathOptions { allow_semicolons };
    let Ok(path) = CanonicalPath::parse(raw, options) else { return };
    let judged = path.as_str();
    assert!(judged.starts_with('/'), "{raw:?} -> {judged:?}");
    assert!(!judged.contains("//"), "{raw:?} -> {judged:?}");
    assert!(!judged.split('/').any(|s| s == "." || s == ".."), "{raw:?} -> {judged:?}");
    let forwarded = path.encoded();
    let reparsed = CanonicalPath::parse(&forwarded, options).expect("the forwarded path parses");
    assert_eq!(reparsed.as_str(), judged, "{raw:?} forwarded as {forwarded:?}");
    assert!(!path.for_matching().is_empty());
});
