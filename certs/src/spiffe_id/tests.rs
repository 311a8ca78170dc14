use super::*;
use proptest::prelude::*;

#[test]
fn spec_examples() {
    let valid = [
        "spiffe://example.org",
        "spiffe://example.org/",
        "spiffe://trust-domain.example/path/to/service",
        "spiffe://td_1.example-2/a.b/c_d/E-F/0",
        "spiffe://aim.microsoft.com/ests/bp/123/aid/budget-report",
    ];
    for id in valid {
        // A single trailing `/` on a bare trust domain is not a path; reject like go-spiffe.
        if id == "spiffe://example.org/" {
            assert_eq!(id.parse::<SpiffeId>(), Err(IdError::TrailingSlash), "{id}");
            continue;
        }
        let parsed: SpiffeId = id.parse().unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(parsed.to_string(), id);
    }

    let invalid = [
        ("", IdError::Empty),
        ("http://example.org/a", IdError::WrongScheme),
        ("SPIFFE://example.org/a", IdError::WrongScheme),
        ("spiffe:/example.org/a", IdError::WrongScheme),
        ("spiffe://", IdError::MissingTrustDomain),
        ("spiffe:///a", IdError::MissingTrustDomain),
        ("spiffe://Example.org/a", IdError::BadTrustDomainChar('E')),
        ("spiffe://example.org:8080/a", IdError::BadTrustDomainChar(':')),
        ("spiffe://user@example.org/a", IdError::BadTrustDomainChar('@')),
        ("spiffe://example.org//a", IdError::EmptySegment),
        ("spiffe://example.org/a/", IdError::TrailingSlash),
        ("spiffe://example.org/./a", IdError::DotSegment),
        ("spiffe://example.org/a/..", IdError::DotSegment),
        ("spiffe://example.org/a%2Fb", IdError::BadPathChar('%')),
        ("spiffe://example.org/a?x=1", IdError::BadPathChar('?')),
        ("spiffe://example.org/a#frag", IdError::BadPathChar('#')),
        ("spiffe://example.org/a b", IdError::BadPathChar(' ')),
        ("spiffe://example.org/é", IdError::BadPathChar('é')),
    ];
    for (id, want) in invalid {
        assert_eq!(id.parse::<SpiffeId>(), Err(want), "{id:?}");
    }
}

#[test]
fn parts() {
    let id: SpiffeId = "spiffe://example.org/ns/prod".parse().unwrap();
    assert_eq!(id.trust_domain_name(), "example.org");
    assert_eq!(id.trust_domain(), TrustDomain::new("example.org").unwrap());
    assert_eq!(id.path(), "/ns/prod");
    assert_eq!(id.segments().collect::<Vec<_>>(), ["ns", "prod"]);

    let td_only: SpiffeId = "spiffe://example.org".parse().unwrap();
    assert_eq!(td_only.path(), "");
    assert_eq!(td_only.segments().count(), 0);
}

#[test]
fn length_limit() {
    let base = "spiffe://example.org/";
    let ok = format!("{base}{}", "a".repeat(MAX_ID_LEN - base.len()));
    assert!(ok.parse::<SpiffeId>().is_ok());
    let long = format!("{ok}a");
    assert_eq!(long.parse::<SpiffeId>(), Err(IdError::TooLong));
}

#[test]
fn trust_domain_accepts_its_id_form() {
    let td = TrustDomain::new("spiffe://example.org").unwrap();
    assert_eq!(td.as_str(), "example.org");
    assert_eq!(td.id_string(), "spiffe://example.org");
    assert!(TrustDomain::new("spiffe://example.org/x").is_err());
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,11}".prop_filter("dot segments", |s| s != "." && s != "..")
}

proptest! {
    #[test]
    fn valid_ids_round_trip(td in "[a-z0-9][a-z0-9.-]{0,20}", segs in prop::collection::vec(segment(), 0..6)) {
        let text = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
        let id: SpiffeId = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(id.to_string(), text.clone());
        prop_assert_eq!(id.trust_domain_name(), td.as_str());
        prop_assert_eq!(id.segments().map(str::to_owned).collect::<Vec<_>>(), segs);
    }

    #[test]
    fn arbitrary_input_never_panics(s in ".{0,64}") {
        let _ = s.parse::<SpiffeId>();
        let _ = TrustDomain::new(&s);
    }

    #[test]
    fn ids_with_forbidden_bytes_are_rejected(
        prefix in "[a-z]{1,5}",
        bad in prop::sample::select(vec!['%', '?', '#', ' ', ':', '@', '\\', '\0', 'ü']),
    ) {
        let text = format!("spiffe://example.org/{prefix}{bad}");
        prop_assert!(text.parse::<SpiffeId>().is_err());
    }
}
