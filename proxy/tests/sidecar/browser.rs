//! The operator console in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `tools/chromium/install.sh`
//! installs them, as `.ci/run` does). With `A2A_REFRESH_SCREENSHOTS=1` the
//! tests save each page into `docs/img/` for `docs/console.md`.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::console::{console, report_to, sidecar};
use super::mesh::{MENUS, Mesh, REPORT};
use super::support::{eventually, http};

/// chromedriver, started for one test and killed with it.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed() -> &'static Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/chromium/install.sh");
        let out = Command::new("bash").arg(script).output().map_err(|e| format!("{script}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{script} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
}

async fn browser() -> (Driver, Client) {
    if let Err(e) = installed() {
        panic!("the browser tests need Chromium and ChromeDriver: {e}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver { child, port, _profile: profile };
    let status = || async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        drop(tcp);
        Some(())
    };
    eventually(Duration::from_secs(20), "chromedriver listens", status).await;
    let mut caps = serde_json::Map::new();
    let args = [
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--window-size=1280,900".to_owned(),
        format!("--user-data-dir={}", driver._profile.path().display()),
    ];
    caps.insert("goog:chromeOptions".into(), json!({"binary": "/usr/bin/chromium", "args": args}));
    let client =
        ClientBuilder::rustls().unwrap().capabilities(caps).connect(&format!("http://127.0.0.1:{}", driver.port)).await;
    (driver, client.expect("a WebDriver session"))
}

/// Saves the page as `docs/img/console-<name>.png` when asked to.
async fn screenshot(client: &Client, name: &str) {
    if std::env::var_os("A2A_REFRESH_SCREENSHOTS").is_none() {
        return;
    }
    let png = client.screenshot().await.unwrap();
    let path = format!("{}/../docs/img/console-{name}.png", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

/// Waits until the element at `css` shows `wanted` (polling: the pages refresh every 2 s).
async fn until_text(client: &Client, css: &str, wanted: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && element.text().await.is_ok_and(|t| t.contains(wanted))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{css}` never showed `{wanted}`: {}",
            client.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(client: &Client, console: std::net::SocketAddr, who: &str) {
    client.goto(&format!("http://{console}/overview")).await.unwrap();
    // No session: the console sends the browser to the IdP, which lists the dev users.
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::LinkText(who))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#fleet table")).await.unwrap();
}

/// An admin signs in, sees both sidecars healthy, changes an allow-list
/// through the confirmation, pushes a risk level and watches the next
/// request from that agent appear as denied in the audit view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_works_the_console_in_a_browser() {
    let mesh = Mesh::start().await;
    let (a, b) = (sidecar(&mesh, "budget-backend").await, sidecar(&mesh, "budget-backend-2").await);
    let console = console(&mesh, &[("budget-backend", &a), ("budget-backend-2", &b)], "").await;
    console.running.poll_now().await;
    let (_driver, client) = browser().await;
    let addr = console.running.addr;

    sign_in(&client, addr, "Alice Admin (Console.Admin)").await;
    assert_eq!(text_of(&client, "#me").await, "alice@dev.example (admin)");
    until_text(&client, "tr[data-sidecar='budget-backend'] .state-up", "up").await;
    until_text(&client, "tr[data-sidecar='budget-backend-2'] .state-up", "up").await;
    screenshot(&client, "overview").await;

    // Network access: add an ID; the confirmation shows the change first.
    client.goto(&format!("http://{addr}/network")).await.unwrap();
    let section = "section[data-sidecar='budget-backend']";
    let input = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&format!("{section} .new-id")))
        .await
        .unwrap();
    let added = "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-newcomer";
    input.send_keys(added).await.unwrap();
    client.find(Locator::Css(&format!("{section} .add"))).await.unwrap().click().await.unwrap();
    until_text(&client, &format!("{section} .confirm"), &format!("+ {added}")).await;
    screenshot(&client, "network-confirm").await;
    client.find(Locator::Css(&format!("{section} .confirm .apply"))).await.unwrap().click().await.unwrap();
    until_text(&client, &format!("{section} table"), added).await;
    assert!(a.allowlist.allows(&added.parse().unwrap()), "the sidecar's allow-list changed");

    // Risk: push `high` for budget-report; its next request is denied, and the audit view shows it.
    client.goto(&format!("http://{addr}/risk")).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#risk-id"))
        .await
        .unwrap()
        .send_keys(REPORT)
        .await
        .unwrap();
    let level = client.find(Locator::Css("#risk-level")).await.unwrap();
    level.select_by_value("high").await.unwrap();
    client.find(Locator::Css("#risk-push")).await.unwrap().click().await.unwrap();
    until_text(&client, "#push-result", "budget-backend-2").await;
    screenshot(&client, "risk").await;
    // The overview's live flow (the merged audit streams) shows the next request, denied.
    client.goto(&format!("http://{addr}/overview")).await.unwrap();
    client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#flow")).await.unwrap();
    // A caller sidecar for budget-report in front of the fronted budget-backend.
    let (report, _closed) = report_to(&mesh, &a).await;
    let reply = http(report.outbound_addr.unwrap(), "GET", "budget-backend", "/after-risk", &[]).await;
    assert_eq!(reply.status, 403, "the pushed risk denies the next request");
    until_text(&client, "#flow", "/after-risk").await;
    let row = client.find(Locator::XPath("//table[@id='flow']//tr[td[contains(., '/after-risk')]]")).await.unwrap();
    let (text, class) = (row.text().await.unwrap(), row.attr("class").await.unwrap().unwrap_or_default());
    assert!(text.contains("deny") && text.contains("risk") && class == "decision-deny", "{text} / {class}");
    screenshot(&client, "overview-flow").await;

    // The audit page: the merged stream, filtered by decision.
    client.goto(&format!("http://{addr}/audit")).await.unwrap();
    client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#audit table")).await.unwrap();
    let allowed = http(report.outbound_addr.unwrap(), "GET", "budget-backend", "/still-denied", &[]).await;
    assert_eq!(allowed.status, 403);
    until_text(&client, "#audit table", "/still-denied").await;
    client.find(Locator::Css("[data-filter='decision']")).await.unwrap().send_keys("allow").await.unwrap();
    let rows = client.find_all(Locator::Css("#audit tbody tr")).await.unwrap();
    for row in rows {
        assert!(!row.text().await.unwrap().contains("/still-denied"), "the decision filter hides denials");
    }
    screenshot(&client, "audit").await;
    client.close().await.unwrap();
}

/// A viewer sees no write controls, and a write sent anyway (from the page's
/// own script, with the session's CSRF token) is refused with 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_write_even_by_script() {
    let mesh = Mesh::start().await;
    let a = sidecar(&mesh, "budget-backend").await;
    let console = console(&mesh, &[("budget-backend", &a)], "").await;
    console.running.poll_now().await;
    let (_driver, client) = browser().await;
    let addr = console.running.addr;
    sign_in(&client, addr, "Bob Viewer (Console.Viewer)").await;
    assert_eq!(text_of(&client, "#me").await, "bob@dev.example (viewer)");
    client.goto(&format!("http://{addr}/network")).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("section[data-sidecar] table"))
        .await
        .unwrap();
    assert!(
        client.find_all(Locator::Css(".add, .remove, .new-id")).await.unwrap().is_empty(),
        "no write controls for a viewer"
    );
    let status = client
        .execute(
            r#"return fetch("/api/me").then((r) => r.json()).then((me) =>
                 fetch("/api/sidecars/budget-backend/mtls-policy", {method: "PUT",
                   headers: {"X-CSRF-Token": me.csrf, "Content-Type": "application/json"},
                   body: JSON.stringify({allowed_ids: ["spiffe://aim.microsoft.com/x"]})})).then((r) => r.status);"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));

    // Test calls are reads: a viewer asks the live sidecar, one request and a matrix.
    client.goto(&format!("http://{addr}/tests")).await.unwrap();
    let caller =
        client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#test-caller")).await.unwrap();
    caller.send_keys(MENUS).await.unwrap();
    client.find(Locator::Css("#test-explain")).await.unwrap().click().await.unwrap();
    until_text(&client, "#test-result", "denied (403, mtls, not_allowed)").await;
    let matrix = format!("{REPORT} GET /budget/read 200\n{MENUS} GET /budget/read 403\n{REPORT} GET /budget/read 403");
    client.find(Locator::Css("#test-matrix")).await.unwrap().send_keys(&matrix).await.unwrap();
    client.find(Locator::Css("#test-run")).await.unwrap().click().await.unwrap();
    until_text(&client, "#test-table tbody", "FAIL").await;
    let outcomes: Vec<String> = {
        let mut texts = Vec::new();
        for row in client.find_all(Locator::Css("#test-table tbody tr")).await.unwrap() {
            texts.push(row.find(Locator::Css("td:last-child")).await.unwrap().text().await.unwrap());
        }
        texts
    };
    assert_eq!(outcomes, vec!["pass", "pass", "FAIL"], "the third row expects the wrong status on purpose");
    screenshot(&client, "tests").await;
    client.close().await.unwrap();
}

/// A policy whose names, descriptions and paths carry HTML and script: every
/// page shows them as text, and nothing in them runs. The policy editor
/// checks an edit with the sidecar (a dry run) before it can be saved, shows
/// the problems of a bad one, saves a good one with If-Match, and refuses
/// to overwrite a change made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_policy_is_shown_as_text_and_the_editor_checks_before_saving() {
    const HOSTILE: &str = r#"version: '1'
trust_domain: aim.microsoft.com
default_action: deny
policies:
  - name: "<img src=x onerror=\"window.__pwned=1\">"
    description: "<script>window.__pwned=2</script></textarea><b onmouseover=alert(1)>x</b>"
    spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report'
    rules: [{path: "/a<svg onload=window.__pwned=3>", methods: ['*'], action: allow}]
"#;
    let mesh = Mesh::start_with_policy(HOSTILE, proxy::config::MapEnv::default()).await;
    let a = sidecar(&mesh, "budget-backend").await;
    let console = console(&mesh, &[("budget-backend", &a)], "").await;
    console.running.poll_now().await;
    let (_driver, client) = browser().await;
    let addr = console.running.addr;
    sign_in(&client, addr, "Alice Admin (Console.Admin)").await;

    client.goto(&format!("http://{addr}/policy")).await.unwrap();
    until_text(&client, "#policy-summary table", "<img src=x onerror=").await;
    until_text(&client, "#policy-summary table", "<script>window.__pwned=2</script>").await;
    let text =
        client.find(Locator::Css("#policy-text")).await.unwrap().prop("value").await.unwrap().unwrap_or_default();
    assert!(text.contains("/a<svg onload=window.__pwned=3>"), "{text}");
    screenshot(&client, "policy").await;
    for page in ["overview", "network", "policy", "audit"] {
        client.goto(&format!("http://{addr}/{page}")).await.unwrap();
        client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#main h1")).await.unwrap();
        let pwned = client.execute("return window.__pwned === undefined && document.querySelectorAll('#main img, #main svg, #main b').length;", vec![]).await.unwrap();
        assert_eq!(pwned, json!(0), "{page}: nothing from the policy became markup or ran");
    }

    // A bad edit: the sidecar's own validation, shown; Save stays off.
    client.goto(&format!("http://{addr}/policy")).await.unwrap();
    client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("#policy-text")).await.unwrap();
    until_text(&client, "#policy-summary table", "rules").await;
    client.execute("document.getElementById('policy-text').value = 'version: 1\\npolicies: [{name: x, rules: [{path: relative, action: allow}]}]'; document.getElementById('policy-text').dispatchEvent(new Event('input'));", vec![]).await.unwrap();
    client.find(Locator::Css("#policy-check")).await.unwrap().click().await.unwrap();
    until_text(&client, "#policy-outcome", "not valid, nothing was sent").await;
    // The sidecar's own words: which field of which rule, and why.
    let problems = client.find(Locator::Css("#policy-outcome")).await.unwrap().text().await.unwrap();
    assert!(problems.contains("relative"), "the problem names the bad path: {problems}");
    assert!(client.find(Locator::Css("#policy-save")).await.unwrap().attr("disabled").await.unwrap().is_some());
    let generation = |a: &proxy::app::App| a.policy.as_ref().unwrap().current().generation;
    let before = generation(&a);

    // A good edit: checked (with its diff), then saved.
    client.goto(&format!("http://{addr}/policy")).await.unwrap();
    until_text(&client, "#policy-summary table", "rules").await;
    client
        .execute(
            "const t = document.getElementById('policy-text'); t.value = t.value.replace(/\"version\": \"[^\"]*\"/, '\"version\": \"2\"'); t.dispatchEvent(new Event('input'));",
            vec![],
        )
        .await
        .unwrap();
    client.find(Locator::Css("#policy-check")).await.unwrap().click().await.unwrap();
    until_text(&client, "#policy-outcome", "valid:").await;
    until_text(&client, "#policy-outcome", "+ ").await;
    client.find(Locator::Css("#policy-save")).await.unwrap().click().await.unwrap();
    until_text(&client, "#policy-outcome", "saved: version 2").await;
    assert!(generation(&a) > before);

    // Someone else saves meanwhile: this editor's save is refused (If-Match).
    until_text(&client, "#policy-summary table", "rules").await;
    client.execute("const t = document.getElementById('policy-text'); t.value = t.value + '\\n'; t.dispatchEvent(new Event('input'));", vec![]).await.unwrap();
    client.find(Locator::Css("#policy-check")).await.unwrap().click().await.unwrap();
    until_text(&client, "#policy-outcome", "valid:").await;
    // The other editor: a second browser session saving first.
    let (_driver2, other) = browser().await;
    sign_in(&other, addr, "Alice Admin (Console.Admin)").await;
    other.goto(&format!("http://{addr}/policy")).await.unwrap();
    until_text(&other, "#policy-summary table", "rules").await;
    other.execute("const t = document.getElementById('policy-text'); t.value = t.value + ' '; t.dispatchEvent(new Event('input'));", vec![]).await.unwrap();
    other.find(Locator::Css("#policy-check")).await.unwrap().click().await.unwrap();
    until_text(&other, "#policy-outcome", "valid:").await;
    other.find(Locator::Css("#policy-save")).await.unwrap().click().await.unwrap();
    until_text(&other, "#policy-outcome", "saved").await;
    client.find(Locator::Css("#policy-save")).await.unwrap().click().await.unwrap();
    until_text(&client, "#policy-outcome", "someone else saved first").await;
    other.close().await.unwrap();
    client.close().await.unwrap();
}
