use super::*;
use proptest::prelude::*;

fn canon(raw: &str) -> Result<String, PathError> {
    CanonicalPath::parse(raw, PathOptions::default()).map(|p| p.as_str().to_owned())
}

#[test]
fn canonical_forms() {
    let cases = [
        ("/", "/", "/", "/"),
        ("/budget/read", "/budget/read", "/budget/read", "/budget/read"),
        ("/budget/read/", "/budget/read/", "/budget/read", "/budget/read/"),
        ("//budget///read", "/budget/read", "/budget/read", "/budget/read"),
        ("/budget/./read", "/budget/read", "/budget/read", "/budget/read"),
        ("/budget/x/../read", "/budget/read", "/budget/read", "/budget/read"),
        ("/budget/%2e%2e/admin", "/admin", "/admin", "/admin"),
        ("/budget/%2E/read", "/budget/read", "/budget/read", "/budget/read"),
        ("/budget/read/..", "/budget/", "/budget", "/budget/"),
        ("/budget/read/.", "/budget/read/", "/budget/read", "/budget/read/"),
        ("/a%20b", "/a b", "/a b", "/a%20b"),
        ("/caf%C3%A9", "/café", "/café", "/caf%C3%A9"),
        ("/café", "/café", "/café", "/caf%C3%A9"),
        // Decoded exactly once: a double-encoded slash is a literal `%2F` and is re-encoded as such.
        ("/a%252Fb", "/a%2Fb", "/a%2Fb", "/a%252Fb"),
        ("/a?b", "/a?b", "/a?b", "/a%3Fb"),
        ("/x:y@z+1", "/x:y@z+1", "/x:y@z+1", "/x%3Ay%40z%2B1"),
        ("/~user/a-b_c.d", "/~user/a-b_c.d", "/~user/a-b_c.d", "/~user/a-b_c.d"),
    ];
    for (raw, canonical, matching, encoded) in cases {
        let p = CanonicalPath::parse(raw, PathOptions::default()).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(p.as_str(), canonical, "{raw}");
        assert_eq!(p.for_matching(), matching, "{raw}");
        assert_eq!(p.encoded(), encoded, "{raw}");
    }
}

#[test]
fn refused_paths() {
    let cases = [
        ("budget", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
        ("/a%2Fb", PathError::EncodedSeparator),
        ("/a%2fb", PathError::EncodedSeparator),
        ("/a%5Cb", PathError::EncodedSeparator),
        ("/a%5cb", PathError::EncodedSeparator),
        ("/a\\b", PathError::Backslash),
        ("/a%00b", PathError::Nul),
        ("/a%0Ab", PathError::ControlCharacter),
        ("/a%0d%0aSet-Cookie:x", PathError::ControlCharacter),
        ("/a%09b", PathError::ControlCharacter),
        ("/a%7Fb", PathError::ControlCharacter),
        ("/a%1Bb", PathError::ControlCharacter),
        ("/a%C2%85b", PathError::ControlCharacter),
        ("/a%zzb", PathError::BadEscape),
        ("/a%2", PathError::BadEscape),
        ("/a%", PathError::BadEscape),
        ("/a%C3", PathError::InvalidUtf8),
        ("/a%FF", PathError::InvalidUtf8),
        ("/a;jsessionid=1", PathError::Semicolon),
        ("/a%3Bb", PathError::Semicolon),
        ("/..", PathError::AboveRoot),
        ("/a/../../b", PathError::AboveRoot),
        ("/%2e%2e/etc/passwd", PathError::AboveRoot),
    ];
    for (raw, want) in cases {
        assert_eq!(canon(raw), Err(want), "{raw:?}");
    }
}

#[test]
fn semicolons_when_allowed_are_judged_and_encoded() {
    let options = PathOptions { allow_semicolons: true };
    let p = CanonicalPath::parse("/a;v=1/b", options).unwrap();
    assert_eq!(p.as_str(), "/a;v=1/b");
    assert_eq!(p.encoded(), "/a%3Bv%3D1/b");
}

fn raw_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%25".to_owned()),
        Just("%20".to_owned()),
        "[a-zA-Z0-9._~:@!$&'()*+,=-]{1,6}",
        "[a-z]{0,3}[é ?#%]?[a-z]{0,3}",
    ];
    prop::collection::vec(segment, 0..8).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// The shortcut for plain paths gives exactly what the full walk gives,
/// refusals included, for every path of up to five characters drawn from
/// the ones that matter (separators, dots, escapes, a semicolon, a space).
#[test]
fn the_plain_path_shortcut_agrees_with_the_full_walk() {
    const ALPHABET: &[u8] = b"/.a%2F;~ ";
    let mut checked = 0;
    let mut paths = vec![String::new()];
    for _ in 0..5 {
        paths = paths.iter().flat_map(|p| ALPHABET.iter().map(move |c| format!("{p}{}", char::from(*c)))).collect();
        for raw in &paths {
            for options in [PathOptions::default(), PathOptions { allow_semicolons: true }] {
                let fast = CanonicalPath::parse(raw, options);
                assert_eq!(fast, CanonicalPath::parse_in_full(raw, options), "{raw:?}");
                if let Ok(p) = fast {
                    assert_eq!(p.encoded(), encoded_in_full(&p), "{raw:?}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 100_000);
    assert!(is_plain_canonical("/budget/read") && is_plain_canonical("/") && is_plain_canonical("/a/"));
}

/// What the shortcut calls plain is exactly what the segment encoding
/// leaves as it is (and `/`), for every byte.
#[test]
fn plain_bytes_are_exactly_those_the_encoding_keeps() {
    for b in 0..=u8::MAX {
        let kept = percent_encoding::percent_encode(&[b], SEGMENT).to_string() == char::from(b).to_string();
        assert_eq!(is_plain(b), kept || b == b'/', "byte {b:#x}");
    }
}

/// [`CanonicalPath::encoded`] without its shortcut.
fn encoded_in_full(p: &CanonicalPath) -> String {
    p.as_str().split('/').map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect::<Vec<_>>().join("/")
}

proptest! {
    /// The forwarded form decodes (once) to exactly what was judged, and
    /// judging it again changes nothing.
    #[test]
    fn encoded_form_round_trips(raw in raw_path()) {
        let Ok(p) = CanonicalPath::parse(&raw, PathOptions::default()) else { return Ok(()) };
        let encoded = p.encoded();
        let decoded = percent_decode_str(&encoded).decode_utf8().unwrap();
        prop_assert_eq!(decoded.as_ref(), p.as_str());
        let again = CanonicalPath::parse(&encoded, PathOptions::default()).unwrap();
        prop_assert_eq!(again, p.clone());
        prop_assert!(!p.as_str().contains("//"));
        prop_assert!(p.as_str().split('/').all(|s| s != "." && s != ".."));
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn arbitrary_input_never_panics(raw in "\\PC{0,40}") {
        let _ = CanonicalPath::parse(&raw, PathOptions::default());
        let _ = CanonicalPath::parse(&format!("/{raw}"), PathOptions { allow_semicolons: true });
    }
}
