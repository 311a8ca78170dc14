use std::time::{Duration, Instant};

use super::model::{self, MAX_EVALUATIONS, Semantic};
use super::*;

fn field(result: Result<impl std::fmt::Debug, BadRequest>) -> String {
    result.unwrap_err().field
}

#[test]
fn a_single_evaluation_reads_subject_action_resource() {
    let query = model::single(
        br#"{"subject": {"type": "spiffe_id", "id": "spiffe://a.example/c", "properties": {"agent_id": "x"}},
             "action": {"name": "GET"},
             "resource": {"type": "http_path", "id": "/budget/read?x=1", "properties": {"target": "t"}},
             "context": {"claims": {}}}"#,
    )
    .unwrap();
    assert_eq!(query.caller.as_str(), "spiffe://a.example/c");
    assert_eq!((query.method.as_str(), query.path.as_str()), ("GET", "/budget/read"), "the query is not judged");
    // `resource.type` may be left out; `context` too.
    assert!(
        model::single(
            br#"{"subject": {"id": "spiffe://a.example/c"}, "action": {"name": "POST"}, "resource": {"id": "/"}}"#
        )
        .is_ok()
    );
}

#[test]
fn each_refusal_names_its_field() {
    let ok = |s: &str, a: &str, r: &str| format!(r#"{{"subject": {s}, "action": {a}, "resource": {r}}}"#);
    let good = (r#"{"id": "spiffe://a.example/c"}"#, r#"{"name": "GET"}"#, r#"{"type": "http_path", "id": "/p"}"#);
    let cases = [
        (ok(r#"{"id": "alice@example.com"}"#, good.1, good.2), "subject.id"),
        (ok(r#"{"type": "user"}"#, good.1, good.2), "subject.id"),
        (ok(r#""spiffe://a.example/c""#, good.1, good.2), "subject"),
        (ok(good.0, r#"{"name": "G E T"}"#, good.2), "action.name"),
        (ok(good.0, r#"{"name": 5}"#, good.2), "action.name"),
        (ok(good.0, good.1, r#"{"type": "document", "id": "/p"}"#), "resource.type"),
        (
            format!(
                r#"{{"subject": {}, "action": {}, "resource": {}, "context": {{"claims": {{"azp": "a"}}}}}}"#,
                good.0, good.1, good.2
            ),
            "context.claims.iss",
        ),
        (
            format!(
                r#"{{"subject": {}, "action": {}, "resource": {}, "context": {{"claims": {{"iss": "i", "roles": "Admin"}}}}}}"#,
                good.0, good.1, good.2
            ),
            "context.claims.roles",
        ),
        (
            format!(
                r#"{{"subject": {}, "action": {}, "resource": {}, "context": {{"claims": {{"iss": "i", "azp": 7}}}}}}"#,
                good.0, good.1, good.2
            ),
            "context.claims.azp",
        ),
        (
            format!(
                r#"{{"subject": {}, "action": {}, "resource": {}, "context": {{"claims": "x"}}}}"#,
                good.0, good.1, good.2
            ),
            "context.claims",
        ),
        (ok(good.0, good.1, r#"{"type": "http_path"}"#), "resource.id"),
        (format!(r#"{{"subject": {}, "action": {}}}"#, good.0, good.1), "resource"),
        (
            format!(r#"{{"subject": {}, "action": {}, "resource": {}, "context": 3}}"#, good.0, good.1, good.2),
            "context",
        ),
        ("[1, 2]".to_owned(), ""),
        ("{not json".to_owned(), ""),
    ];
    for (body, expected) in cases {
        assert_eq!(field(model::single(body.as_bytes())), expected, "{body}");
    }
}

const BATCH: &str = r#"{
  "subject": {"type": "spiffe_id", "id": "spiffe://a.example/default"},
  "action": {"name": "GET"},
  "resource": {"type": "http_path", "id": "/default"},
  "evaluations": [
    {},
    {"action": {"name": "POST"}},
    {"subject": {"type": "spiffe_id", "id": "spiffe://a.example/other"}, "resource": {"type": "http_path", "id": "/x"}}
  ]
}"#;

#[test]
fn a_batchs_items_override_the_top_level_defaults_in_order() {
    let batch = model::batch(BATCH.as_bytes()).unwrap();
    let queries = batch.queries.unwrap();
    let seen: Vec<_> = queries.iter().map(|q| (q.caller.as_str(), q.method.as_str(), q.path.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("spiffe://a.example/default", "GET", "/default"),
            ("spiffe://a.example/default", "POST", "/default"),
            ("spiffe://a.example/other", "GET", "/x"),
        ]
    );
    assert_eq!(batch.semantic, Semantic::ExecuteAll);
    // Without `evaluations`: the single evaluation.
    let single = model::batch(
        br#"{"subject": {"id": "spiffe://a.example/c"}, "action": {"name": "GET"}, "resource": {"id": "/"}}"#,
    );
    assert!(single.unwrap().single.is_some());
    // An item missing what the defaults do not give either names the item's field... or the default's.
    let bad = r#"{"action": {"name": "GET"}, "resource": {"id": "/"}, "evaluations": [{"subject": {"id": "spiffe://a.example/c"}}, {}]}"#;
    assert_eq!(field(model::batch(bad.as_bytes())), "subject");
    let bad = r#"{"action": {"name": "GET"}, "resource": {"id": "/"}, "evaluations": [{"subject": {"id": "nope"}}]}"#;
    assert_eq!(field(model::batch(bad.as_bytes())), "evaluations[0].subject.id");
    let bad = r#"{"evaluations": [{}], "options": {"evaluations_semantic": "first"}}"#;
    assert_eq!(field(model::batch(bad.as_bytes())), "options.evaluations_semantic");
}

#[test]
fn each_semantic_stops_where_the_spec_says() {
    let parse = |s: &str| {
        let body = BATCH.replacen(
            "\"evaluations\"",
            &format!("\"options\": {{\"evaluations_semantic\": \"{s}\"}}, \"evaluations\""),
            1,
        );
        model::batch(body.as_bytes()).unwrap().semantic
    };
    assert_eq!(parse("execute_all"), Semantic::ExecuteAll);
    assert_eq!(parse("deny_on_first_deny"), Semantic::DenyOnFirstDeny);
    assert_eq!(parse("permit_on_first_permit"), Semantic::PermitOnFirstPermit);
    let run = |semantic: Semantic, decisions: &[bool]| {
        let mut answered = Vec::new();
        for &d in decisions {
            answered.push(d);
            if semantic.stops_after(d) {
                break;
            }
        }
        answered
    };
    let decisions = [true, false, true, false];
    assert_eq!(run(Semantic::ExecuteAll, &decisions), decisions);
    assert_eq!(run(Semantic::DenyOnFirstDeny, &decisions), [true, false]);
    assert_eq!(run(Semantic::PermitOnFirstPermit, &decisions), [true]);
    assert_eq!(run(Semantic::PermitOnFirstPermit, &[false, false, true, false]), [false, false, true]);
}

#[test]
fn a_batch_over_the_limit_is_refused_quickly() {
    let item = r#"{"action": {"name": "GET"}}"#;
    let items = vec![item; 10_000].join(",");
    let body = format!(
        r#"{{"subject": {{"id": "spiffe://a.example/c"}}, "resource": {{"id": "/"}}, "evaluations": [{items}]}}"#
    );
    let started = Instant::now();
    let refused = model::batch(body.as_bytes()).unwrap_err();
    assert_eq!(refused.field, "evaluations");
    assert!(refused.message.contains(&MAX_EVALUATIONS.to_string()), "{}", refused.message);
    assert!(started.elapsed() < Duration::from_secs(1));
    let items = vec![item; MAX_EVALUATIONS].join(",");
    let body = format!(
        r#"{{"subject": {{"id": "spiffe://a.example/c"}}, "resource": {{"id": "/"}}, "evaluations": [{items}]}}"#
    );
    assert_eq!(model::batch(body.as_bytes()).unwrap().queries.unwrap().len(), MAX_EVALUATIONS);
}

#[test]
fn an_outcome_answers_in_the_documented_shape() {
    let ids: Arc<[String]> = Arc::from(vec!["p1".to_owned()]);
    let allowed = Outcome { decision: true, reason: Reason::Allowed, policy_ids: ids.clone(), shadow: None };
    assert_eq!(
        allowed.to_json(),
        json!({"decision": true, "context": {"layer": "none", "reason": "allowed", "policy_ids": ["p1"]}})
    );
    let denied = Outcome { decision: false, reason: Reason::JwtRequired, policy_ids: ids, shadow: None };
    assert_eq!(denied.to_json()["context"]["layer"], "oauth");
}

/// A batch's shared claims are read once: 1,000 items inheriting them are
/// cheap; claims past the caps, and long paths, are refused by field.
#[test]
fn claims_and_paths_are_bounded_and_a_batch_shares_its_defaults() {
    let roles: Vec<String> = (0..200).map(|i| format!("role-{i}")).collect();
    let items = vec![serde_json::json!({}); MAX_EVALUATIONS];
    let body = serde_json::json!({
        "subject": {"id": "spiffe://a.example/c"}, "action": {"name": "GET"}, "resource": {"id": "/p"},
        "context": {"claims": {"iss": "https://i.example", "roles": roles}},
        "evaluations": items,
    });
    let batch = model::batch(body.to_string().as_bytes()).unwrap();
    let queries = batch.queries.unwrap();
    let first = queries.first().unwrap().claims.clone().unwrap();
    assert!(queries.iter().all(|q| q.claims.as_ref().is_some_and(|c| std::sync::Arc::ptr_eq(c, &first))), "one copy");

    let with = |claims: serde_json::Value, path: &str| {
        let body = serde_json::json!({
            "subject": {"id": "spiffe://a.example/c"}, "action": {"name": "GET"}, "resource": {"id": path},
            "context": {"claims": claims},
        });
        model::single(body.to_string().as_bytes()).map(|_| ()).map_err(|e| e.field)
    };
    let many_roles: Vec<String> = (0..=model::MAX_ROLES).map(|i| i.to_string()).collect();
    assert_eq!(with(serde_json::json!({"iss": "i", "roles": many_roles}), "/p"), Err("context.claims.roles".into()));
    let long = "x".repeat(model::MAX_CLAIM_BYTES + 1);
    assert_eq!(with(serde_json::json!({"iss": "i", "azp": long}), "/p"), Err("context.claims.azp".into()));
    assert_eq!(with(serde_json::json!({"iss": "i", "roles": [long]}), "/p"), Err("context.claims.roles".into()));
    let mut wide = serde_json::Map::new();
    for i in 0..=model::MAX_CLAIMS {
        wide.insert(format!("c{i}"), serde_json::json!("v"));
    }
    wide.insert("iss".into(), serde_json::json!("i"));
    assert_eq!(with(serde_json::Value::Object(wide), "/p"), Err("context.claims".into()));
    let path = format!("/{}", "p".repeat(model::MAX_RESOURCE_ID));
    assert_eq!(with(serde_json::json!({"iss": "i"}), &path), Err("resource.id".into()));
    assert_eq!(with(serde_json::json!({"iss": "i", "roles": ["a"]}), "/p"), Ok(()));
}
