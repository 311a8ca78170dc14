//! SPIFFE IDs and allow-list patterns from peer certificates and config:
//! no panic; a parsed ID prints as text that parses back to the same ID;
//! a pattern never matches an ID of another trust domain than it names.
#![no_main]

use certs::{IdPattern, SpiffeId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (id_text, pattern_text) = input;
    let id = id_text.parse::<SpiffeId>();
    if let Ok(id) = &id {
        let again: SpiffeId = id.to_string().parse().expect("a printed ID parses");
        assert_eq!(&again, id);
        assert!(id.as_str().starts_with("spiffe://"));
        assert!(id.as_str()["spiffe://".len()..].starts_with(id.trust_domain_name()));
    }
    if let (Ok(pattern), Ok(id)) = (pattern_text.parse::<IdPattern>(), &id)
        && pattern.matches(id)
    {
        let pattern_domain = pattern_text.trim_start_matches("spiffe://").split('/').next().unwrap_or_default();
        assert!(pattern_domain.eq_ignore_ascii_case(id.trust_domain_name()), "{pattern_text} matched {id}");
    }
});
