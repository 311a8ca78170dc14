use super::*;
use proptest::prelude::*;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn pat(s: &str) -> IdPattern {
    s.parse().unwrap()
}

#[test]
fn matching_table() {
    let cases = [
        ("spiffe://td/a/b", "spiffe://td/a/b", true),
        ("spiffe://td/a/b", "spiffe://td/a/b/c", false),
        ("spiffe://td/a/b", "spiffe://td/a", false),
        ("spiffe://td/a/b", "spiffe://other/a/b", false),
        ("spiffe://td/a/*/c", "spiffe://td/a/x/c", true),
        ("spiffe://td/a/*/c", "spiffe://td/a/x/y/c", false),
        ("spiffe://td/a/*/c", "spiffe://td/a/c", false),
        ("spiffe://td/a/*", "spiffe://td/a/x", true),
        ("spiffe://td/a/*", "spiffe://td/a", false),
        ("spiffe://td/a/**", "spiffe://td/a/x", true),
        ("spiffe://td/a/**", "spiffe://td/a/x/y/z", true),
        ("spiffe://td/a/**", "spiffe://td/a", false),
        ("spiffe://td/a/**", "spiffe://td/ab/x", false),
        ("spiffe://td/**", "spiffe://td/anything/at/all", true),
        ("spiffe://td", "spiffe://td", true),
        ("spiffe://td", "spiffe://td/a", false),
        ("spiffe://aim.example/ests/bp/*/aid/budget-report", "spiffe://aim.example/ests/bp/b1/aid/budget-report", true),
        (
            "spiffe://aim.example/ests/bp/*/aid/budget-report",
            "spiffe://aim.example/ests/bp/b1/aid/employee-menus",
            false,
        ),
    ];
    for (p, i, want) in cases {
        assert_eq!(pat(p).matches(&id(i)), want, "{p} vs {i}");
    }
}

#[test]
fn invalid_patterns() {
    let cases = [
        ("spiffe://*/a", PatternError::WildcardTrustDomain),
        ("spiffe://*.td/a", PatternError::WildcardTrustDomain),
        ("spiffe://td/**/a", PatternError::DoubleStarNotLast),
        ("spiffe://td/a*", PatternError::PartialWildcard("a*".into())),
        ("spiffe://td/***", PatternError::PartialWildcard("***".into())),
        ("spiffe://td/a/", PatternError::Id(IdError::TrailingSlash)),
        ("spiffe://td//a", PatternError::Id(IdError::EmptySegment)),
        ("spiffe://td/../a", PatternError::Id(IdError::DotSegment)),
        ("https://td/a", PatternError::Id(IdError::WrongScheme)),
    ];
    for (p, want) in cases {
        assert_eq!(p.parse::<IdPattern>(), Err(want), "{p}");
    }
}

#[test]
fn exact_pattern_matches_only_its_id() {
    let i = id("spiffe://td/a/b");
    let p = IdPattern::exact(&i);
    assert!(p.is_exact());
    assert!(p.matches(&i));
    assert!(!p.matches(&id("spiffe://td/a/b/c")));
    assert!(!pat("spiffe://td/*").is_exact());
}

proptest! {
    #[test]
    fn exact_patterns_agree_with_equality(a in "[a-c]{1,2}(/[a-c]{1,2}){0,3}", b in "[a-c]{1,2}(/[a-c]{1,2}){0,3}") {
        let (ia, ib) = (id(&format!("spiffe://td/{a}")), id(&format!("spiffe://td/{b}")));
        prop_assert_eq!(IdPattern::exact(&ia).matches(&ib), ia == ib);
    }

    #[test]
    fn star_matches_any_single_segment(seg in "[A-Za-z0-9_-]{1,10}", extra in "[a-z]{1,4}") {
        let p = pat("spiffe://td/x/*");
        let (one, two) = (id(&format!("spiffe://td/x/{seg}")), id(&format!("spiffe://td/x/{seg}/{extra}")));
        prop_assert!(p.matches(&one));
        prop_assert!(!p.matches(&two));
        prop_assert!(pat("spiffe://td/x/**").matches(&two));
    }

    #[test]
    fn arbitrary_patterns_never_panic(s in "spiffe://[a-z*]{0,4}(/[a-z*.]{0,3}){0,4}") {
        let _ = s.parse::<IdPattern>();
    }
}
