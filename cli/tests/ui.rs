//! The web UI (`/ui/`) end to end: Debian's headless chromium, driven through chromedriver
//! (WebDriver, with the `fantoccini` client), against two real `mover daemon` processes on
//! 127.0.0.1. A missing browser or driver fails the test: `scripts/install-deps.sh` installs
//! them. Screenshots go to a temp dir, or to `$MOVER_UI_SCREENSHOTS` (docs/ui/ holds the
//! committed ones).

mod node;

use chrono::Datelike;
use fantoccini::{Client, ClientBuilder, Locator};
use node::etcd::Etcd;
use node::{damage_row, fill, free_port, need_root, Node, Scratch};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where the screenshots go instead of a temp dir.
const SCREENSHOTS_ENV: &str = "MOVER_UI_SCREENSHOTS";
/// Longest wait for chromedriver to listen.
const DRIVER_START: Duration = Duration::from_secs(30);
/// Longest wait for something to show on a page (the page polls the API every 1.5 s; the
/// machine may be busy with builds).
const UI_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for the initial sync (16 MiB at 2 MiB/s, plus scheduling).
const SYNC_WAIT: Duration = Duration::from_secs(180);
/// Pause between two looks at a page.
const STEP: Duration = Duration::from_millis(200);
/// The bandwidth limit the relationship is created with, MiB/s: slow enough that the page
/// shows the initial sync running.
const CREATE_MIB_PER_SEC: u64 = 2;
/// The limit the edit sets, MiB/s.
const EDITED_MIB_PER_SEC: u64 = 64;
/// The source's data: files of 1 MiB.
const SOURCE_FILES: usize = 16;
const WINDOW: (u32, u32) = (1280, 900);
/// Room the browser's window takes beyond the page, so the form's screenshot needs no scroll.
const FORM_SHOT_MARGIN: u32 = 160;

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the UI tests need Debian's chromium and chromium-driver \
                 (run scripts/install-deps.sh)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER}: {e}"));
        let d = Driver { child, port };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < DRIVER_START,
                "chromedriver did not listen on {port} within {DRIVER_START:?}"
            );
            std::thread::sleep(STEP);
        }
        d
    }

    async fn browser(&self, profile: &Path) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| panic!("starting chromium through chromedriver: {e}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` in the page (the body of a function) and returns its value.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("script {script}: {e}"))
}

/// Polls `script` until it returns something other than null/false; that value.
async fn wait_js(c: &Client, what: &str, limit: Duration, script: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = js(c, script).await;
        if !(v.is_null() || v == Value::Bool(false)) {
            return v;
        }
        if t0.elapsed() > limit {
            let body = js(c, "return document.body.innerText").await;
            panic!("waited {limit:?} for {what} ({script}); the page shows:\n{body}");
        }
        tokio::time::sleep(STEP).await;
    }
}

/// Clicks the element once it is there, shown and enabled (the page re-renders as it polls).
async fn click(c: &Client, css: &str) {
    let t0 = Instant::now();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if e.is_displayed().await.unwrap_or(false)
                && e.is_enabled().await.unwrap_or(false)
                && e.click().await.is_ok()
            {
                return;
            }
        }
        if t0.elapsed() > UI_WAIT {
            let body = js(c, "return document.body.innerText").await;
            panic!("waited {UI_WAIT:?} to click {css}; the page shows:\n{body}");
        }
        tokio::time::sleep(STEP).await;
    }
}

/// Replaces an input's text as a user would type it.
async fn type_into(c: &Client, css: &str, text: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn set_checkbox(c: &Client, css: &str, on: bool) {
    let now = js(
        c,
        &format!("return document.querySelector({css:?}).checked"),
    )
    .await;
    if now != Value::Bool(on) {
        click(c, css).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    js(
        c,
        &format!("const e = document.querySelector({css:?}); return e ? e.innerText : null"),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

async fn visible(c: &Client, what: &str, id: &str) {
    wait_js(
        c,
        what,
        UI_WAIT,
        &format!("const e = document.getElementById({id:?}); return !!e && !e.hidden && e.offsetParent !== null"),
    )
    .await;
}

/// Opens the node's UI (through the `/ui` redirect) and signs in with `token` unless this
/// tab's session already holds one for that origin.
async fn open_ui(c: &Client, n: &Node, token: &str) {
    c.goto(&format!("{}/ui", n.url())).await.unwrap();
    let page = wait_js(
        c,
        "the page to start",
        UI_WAIT,
        "const p = document.body.dataset.page; return p === 'list' || p === 'signin' ? p : null",
    )
    .await;
    if page == "signin" {
        sign_in(c, token).await;
    }
}

async fn sign_in(c: &Client, token: &str) {
    visible(c, "the sign-in form", "page-signin").await;
    type_into(c, "#token", token).await;
    click(c, "#sign-in").await;
    visible(c, "the relationships page", "page-list").await;
    let stored = js(
        c,
        "return [sessionStorage.getItem('mover.token'), localStorage.length, document.cookie]",
    )
    .await;
    assert_eq!(
        stored,
        json!([token, 0, ""]),
        "the token is kept for the session only"
    );
}

async fn sign_out(c: &Client) {
    click(c, "#sign-out").await;
    visible(c, "the sign-in form", "page-signin").await;
    let kept = js(c, "return sessionStorage.length").await;
    assert_eq!(kept, 0, "signing out forgets the token");
}

/// Waits for the modal dialog to open; the text of its element `id`.
async fn dialog_text(c: &Client, what: &str, id: &str) -> Value {
    wait_js(
        c,
        what,
        UI_WAIT,
        &format!(
            "const d = document.getElementById('dialog'); \
             return d.open ? document.getElementById({id:?}).innerText : null"
        ),
    )
    .await
}

/// Polls `body` (a script that sees the row matching `css` as `r`) until it returns a value;
/// null while the row is not on the page.
async fn wait_row(c: &Client, what: &str, limit: Duration, css: &str, body: &str) -> Value {
    let script = format!("const r = document.querySelector({css:?}); if (!r) return null; {body}");
    wait_js(c, what, limit, &script).await
}

fn row(id: &str, role: &str) -> String {
    format!("tr[data-id=\"{id}\"][data-role=\"{role}\"]")
}

async fn row_state(c: &Client, id: &str, role: &str) -> Value {
    js(
        c,
        &format!(
            "const r = document.querySelector({:?}); return r ? r.dataset.state : null",
            row(id, role)
        ),
    )
    .await
}

struct Shots(PathBuf);

impl Shots {
    /// Into `$MOVER_UI_SCREENSHOTS` if set, else a directory of `t`.
    fn new(t: &Scratch) -> Shots {
        let dir = match std::env::var_os(SCREENSHOTS_ENV) {
            Some(d) => PathBuf::from(d),
            None => t.path().join("screenshots"),
        };
        std::fs::create_dir_all(&dir).unwrap();
        Shots(dir)
    }

    /// The page as it is now, as `<name>.png`.
    async fn take(&self, c: &Client, name: &str) {
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        std::fs::write(self.0.join(format!("{name}.png")), png).unwrap();
    }
}

/// A weekday two days from now (UTC), for a blackout window that is not in force during the
/// test.
fn quiet_day() -> String {
    let d = (chrono::Utc::now() + chrono::Duration::days(2)).weekday();
    d.to_string().to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_creates_authorizes_watches_edits_and_deletes_a_relationship_in_the_browser() {
    need_root();
    let t = Scratch::new();
    let shots = Shots::new(&t);
    let a = Node::start(&t.path().join("a"));
    let b = Node::start(&t.path().join("b"));
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    fill(&src, SOURCE_FILES, 1 << 20, 7);
    std::fs::create_dir_all(&dst).unwrap();
    let a_fingerprint = a.get("/v1/node").1["fingerprint"].clone();

    let driver = Driver::start(&t.path().join("chromedriver.log"));
    let c = driver.browser(&t.path().join("profile")).await;

    // 1. Sign in on the source's UI: a wrong token is refused in the API's words first.
    c.goto(&format!("{}/ui/", a.url())).await.unwrap();
    visible(&c, "the sign-in form", "page-signin").await;
    type_into(&c, "#token", "mvr_00000000000000000000000000000000").await;
    click(&c, "#sign-in").await;
    wait_js(
        &c,
        "the refusal of a wrong token",
        UI_WAIT,
        "const e = document.getElementById('signin-error'); return !e.hidden && e.innerText.includes('unknown token')",
    )
    .await;
    sign_in(&c, &a.token).await;
    assert_eq!(text(&c, "#who-name").await, "admin");
    assert_eq!(
        js(&c, "return document.getElementById('nav-cluster').hidden").await,
        true,
        "a node outside a cluster has no cluster page"
    );

    // 2. Create the relationship through the form.
    click(&c, "#create-relationship").await;
    visible(&c, "the create form", "page-form").await;
    type_into(&c, "#f-source-path", src.to_str().unwrap()).await;
    type_into(&c, "#f-target-path", dst.to_str().unwrap()).await;
    type_into(&c, "#f-target-address", "127.0.0.1").await;
    assert_eq!(
        js(&c, "return document.getElementById('f-target-port').value").await,
        "3712",
        "the port defaults to 3712"
    );
    type_into(&c, "#f-target-port", &b.listen.to_string()).await;
    type_into(&c, "#f-bandwidth", &CREATE_MIB_PER_SEC.to_string()).await;
    click(&c, "#add-window").await;
    let day = quiet_day();
    let w0 = ".window[data-index=\"0\"]";
    for d in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
        set_checkbox(&c, &format!("{w0} input[data-day=\"{d}\"]"), d == day).await;
    }
    type_into(&c, &format!("{w0} .w-start"), "01:00").await;
    type_into(&c, &format!("{w0} .w-end"), "02:00").await;
    type_into(&c, &format!("{w0} .w-tz"), "UTC").await;
    assert_eq!(text(&c, &format!("{w0} .w-duration")).await, "1 h");
    // The whole form in one picture, from the top, with no field focused.
    let height = js(
        &c,
        "document.activeElement.blur(); window.scrollTo(0, 0); \
         return document.documentElement.scrollHeight",
    )
    .await;
    let height = height.as_u64().unwrap_or(WINDOW.1.into()) as u32;
    c.set_window_size(WINDOW.0, height.max(WINDOW.1) + FORM_SHOT_MARGIN)
        .await
        .unwrap();
    js(&c, "window.scrollTo(0, 0); return null").await;
    shots.take(&c, "create-relationship").await;
    c.set_window_size(WINDOW.0, WINDOW.1).await.unwrap();
    click(&c, "#save-relationship").await;
    visible(&c, "the relationships page after create", "page-list").await;
    let id = wait_js(
        &c,
        "the new relationship's row",
        UI_WAIT,
        "const r = document.querySelector('tr[data-role=\"source\"]'); return r ? r.dataset.id : null",
    )
    .await;
    let id = id.as_str().unwrap().to_string();
    assert_eq!(row_state(&c, &id, "source").await, "awaiting_authorization");

    // ... it awaits authorization on the target. A read-only token sees the button disabled,
    // with the privilege it lacks named.
    let (code, viewer) = b.call(
        "POST",
        "/v1/tokens",
        Some(&json!({"name": "viewer", "role": "observer"})),
    );
    assert_eq!(code, 201, "{viewer}");
    open_ui(&c, &b, viewer["token"].as_str().unwrap()).await;
    let authorize = format!("{} button[data-action=\"authorize\"]", row(&id, "target"));
    wait_js(
        &c,
        "the proposal on the target, disabled for an observer",
        UI_WAIT,
        &format!(
            "const b = document.querySelector({authorize:?}); \
             return !!b && b.disabled && b.title.includes('TARGET_WRITE')"
        ),
    )
    .await;
    visible(&c, "the banner announcing the request", "auth-banner").await;
    assert_eq!(text(&c, "#who-role").await, "observer");
    assert_eq!(row_state(&c, &id, "target").await, "awaiting_authorization");
    // Were the button enabled (a page that has not caught up), the API's 403 would be shown
    // with the privilege it names.
    js(
        &c,
        &format!("const b = document.querySelector({authorize:?}); b.disabled = false; b.click(); return null"),
    )
    .await;
    click(&c, "#dialog-confirm").await;
    let refused = wait_js(
        &c,
        "the 403 in the dialog",
        UI_WAIT,
        "const e = document.getElementById('dialog-error'); return e.hidden ? null : e.innerText",
    )
    .await;
    assert_eq!(
        refused,
        "Missing privilege (403): the token's role (observer) lacks the TARGET_WRITE privilege"
    );
    click(&c, "#dialog-cancel").await;
    assert_eq!(row_state(&c, &id, "target").await, "awaiting_authorization");
    sign_out(&c).await;

    // ... and is authorized there, after comparing the source's fingerprint.
    sign_in(&c, &b.token).await;
    click(&c, &authorize).await;
    let shown = dialog_text(&c, "the authorize dialog", "authorize-fingerprint").await;
    shots.take(&c, "authorize").await;
    assert_eq!(
        shown, a_fingerprint,
        "the dialog shows the source's certificate"
    );
    click(&c, "#dialog-confirm").await;
    wait_row(
        &c,
        "the relationship authorized on the target",
        UI_WAIT,
        &row(&id, "target"),
        "return !document.getElementById('dialog').open \
         && r.dataset.state !== 'awaiting_authorization'",
    )
    .await;
    // The node's newest events are listed below its relationships, newest first: the request
    // and the authorization, the latter on top.
    let newest_first = format!(
        "const p = document.getElementById('events-panel'); \
         const rs = Array.from(document.querySelectorAll('#events-body tr')); \
         const a = rs.findIndex(r => r.dataset.kind === 'authorized' \
             && r.textContent.includes({short:?}) && r.textContent.includes({dst:?})); \
         const q = rs.findIndex(r => r.dataset.kind === 'authorization_requested' \
             && r.textContent.includes({short:?})); \
         return !p.hidden && a >= 0 && q > a \
             && rs.every((r, i) => i === 0 || +rs[i - 1].dataset.event > +r.dataset.event)",
        short = &id[..8],
        dst = node::s(&dst),
    );
    wait_js(
        &c,
        "the authorization in the node's events",
        UI_WAIT,
        &newest_first,
    )
    .await;
    shots.take(&c, "events").await;

    // Two more relationships, made through the API, so the page shows more than one state:
    // one awaiting authorization, one authorized but disabled.
    let mut others = Vec::new();
    for (n, enabled) in [(2, true), (3, false)] {
        let (from, to) = (
            t.path().join(format!("src{n}")),
            t.path().join(format!("dst{n}")),
        );
        fill(&from, 2, 1024, n);
        std::fs::create_dir_all(&to).unwrap();
        let (code, v) = a.call(
            "POST",
            "/v1/replication/source-relationships",
            Some(
                &json!({"source_path": from, "target_path": to, "target_address": "127.0.0.1",
                         "target_port": b.listen, "enabled": enabled}),
            ),
        );
        assert_eq!(code, 201, "{v}");
        let other = v["id"].as_str().unwrap().to_string();
        if !enabled {
            let path = format!("/v1/replication/target-relationships/{other}/authorize");
            assert_eq!(b.call("POST", &path, Some(&json!({}))).0, 200);
        }
        others.push(other);
    }

    // 3. The initial sync runs on the source's page (a progress bar), then reaches a
    // recovery point.
    open_ui(&c, &a, &a.token).await;
    for other in &others {
        wait_js(
            &c,
            "the other relationships on the page",
            UI_WAIT,
            &format!(
                "return !!document.querySelector({:?})",
                row(other, "source")
            ),
        )
        .await;
    }
    let running = wait_row(
        &c,
        "the initial sync to run or finish",
        SYNC_WAIT,
        &row(&id, "source"),
        "const p = r.querySelector('progress'); \
         if (p && Number(p.dataset.percent) > 0) return 'running'; \
         return r.querySelector('td[data-col=\"recovery-point\"][data-time]') ? 'done' : null",
    )
    .await;
    if running == "running" {
        shots.take(&c, "relationships").await;
    }
    click(
        &c,
        &format!("{} button[data-action=\"details\"]", row(&id, "source")),
    )
    .await;
    visible(&c, "the details view", "page-details").await;
    wait_js(
        &c,
        "the job's figures in the details view",
        SYNC_WAIT,
        "const p = document.getElementById('d-percent-bytes'); \
         return !!p && (p.innerText.endsWith('%') || !!document.getElementById('d-no-job'))",
    )
    .await;
    for field in [
        "d-percent-files",
        "d-throughput",
        "d-run-time",
        "d-files-done",
        "d-files-remaining",
        "d-files-total",
        "d-bytes-done",
        "d-bytes-remaining",
        "d-bytes-total",
    ] {
        assert!(
            !text(&c, &format!("#{field}")).await.is_empty(),
            "the details view shows {field}"
        );
    }
    shots.take(&c, "details").await;
    click(&c, "#details-back").await;
    visible(&c, "the relationships page", "page-list").await;
    let rp = wait_row(
        &c,
        "the initial sync's recovery point on the page",
        SYNC_WAIT,
        &row(&id, "source"),
        "const rp = r.querySelector('td[data-col=\"recovery-point\"]'); \
         const last = r.querySelector('td[data-col=\"last-attempt\"]'); \
         return rp.dataset.time && last.dataset.ok === 'true' ? rp.title : null",
    )
    .await;
    let view = a.view("source", &id);
    let time = view["recovery_point"]["time"].as_str().unwrap();
    assert!(
        rp.as_str().unwrap().starts_with(time),
        "the exact time {time} is on hover: {rp}"
    );
    if running != "running" {
        shots.take(&c, "relationships").await;
    }

    // 4. Edit the bandwidth and the blackout window (the paths cannot be edited).
    let edit = format!("{} button[data-action=\"edit\"]", row(&id, "source"));
    click(&c, &edit).await;
    visible(&c, "the edit form", "page-form").await;
    assert_eq!(
        js(
            &c,
            "return document.getElementById('f-source-path').disabled && document.getElementById('f-target-path').disabled"
        )
        .await,
        true
    );
    assert_eq!(
        js(&c, "return document.getElementById('f-bandwidth').value").await,
        CREATE_MIB_PER_SEC.to_string()
    );
    type_into(&c, "#f-bandwidth", &EDITED_MIB_PER_SEC.to_string()).await;
    type_into(&c, &format!("{w0} .w-end"), "03:30").await;
    set_checkbox(&c, "#f-map-ids", true).await;
    type_into(&c, "#f-uid-map", "1000:2000, 1001:2001").await;
    assert_eq!(text(&c, &format!("{w0} .w-duration")).await, "2 h 30 min");
    click(&c, "#save-relationship").await;
    visible(&c, "the relationships page after the edit", "page-list").await;
    let v = a.view("source", &id);
    assert_eq!(v["bandwidth_limit"], EDITED_MIB_PER_SEC << 20, "{v}");
    assert_eq!(
        v["map_ids"],
        json!({"uid": [[1000, 2000], [1001, 2001]], "gid": []})
    );
    assert_eq!(
        v["blackout_windows"],
        json!([{"days": [day], "start": "01:00", "end": "03:30", "timezone": "UTC"}])
    );

    // 5. Windows up to an 11th: the daemon refuses it, and the page shows its words.
    click(&c, &edit).await;
    visible(&c, "the edit form", "page-form").await;
    for _ in 1..11 {
        click(&c, "#add-window").await;
    }
    assert!(text(&c, "#window-count").await.starts_with("11 of 10"));
    click(&c, "#save-relationship").await;
    let refusal = wait_js(
        &c,
        "the API's refusal of an 11th window",
        UI_WAIT,
        "const e = document.getElementById('form-error'); return e.hidden ? null : e.innerText",
    )
    .await;
    assert!(
        refusal
            .as_str()
            .unwrap()
            .contains("a relationship has at most 10 blackout windows; 11 given"),
        "{refusal}"
    );
    assert_eq!(
        a.view("source", &id)["blackout_windows"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    click(&c, "#cancel-form").await;
    visible(&c, "the relationships page", "page-list").await;

    // The disabled one is made writable on its target (failover), after a confirmation.
    open_ui(&c, &b, &b.token).await;
    let disabled = row(&others[1], "target");
    click(
        &c,
        &format!("{disabled} button[data-action=\"make-writable\"]"),
    )
    .await;
    wait_js(
        &c,
        "the make-writable confirmation",
        UI_WAIT,
        "return document.getElementById('dialog').open",
    )
    .await;
    click(&c, "#dialog-confirm").await;
    wait_row(
        &c,
        "the target to end the relationship",
        UI_WAIT,
        &disabled,
        "return r.dataset.state === 'ended' \
         && r.querySelector('button[data-action=\"make-writable\"]').hidden",
    )
    .await;
    // A stored relationship the source's release cannot read is shown apart, with why, and
    // forgotten from there after a warning; the others stay listed meanwhile.
    damage_row(&a, &others[0]);
    open_ui(&c, &a, &a.token).await;
    let banner = format!("#unreadable-banner div[data-id={:?}]", others[0]);
    wait_js(
        &c,
        "the unreadable relationship's banner",
        UI_WAIT,
        &format!(
            "const b = document.querySelector({banner:?}); \
             return !!b && b.textContent.includes('last attempt is unreadable') \
             && !document.getElementById('unreadable-banner').hidden \
             && !document.querySelector({:?}) && !!document.querySelector({:?})",
            row(&others[0], "source"),
            row(&id, "source")
        ),
    )
    .await;
    click(&c, &format!("{banner} button")).await;
    let warning = dialog_text(&c, "the forget confirmation", "dialog-body").await;
    assert!(
        warning
            .as_str()
            .unwrap()
            .contains("Nothing of it is released"),
        "{warning}"
    );
    click(&c, "#dialog-confirm").await;
    wait_js(
        &c,
        "the banner to go",
        UI_WAIT,
        "return document.getElementById('unreadable-banner').hidden",
    )
    .await;
    assert_eq!(a.get("/v1/replication/unreadable").1, json!([]));
    let path = format!("/v1/replication/source-relationships/{}", others[1]);
    assert_eq!(a.call("DELETE", &path, None).0, 204);

    // 6. Delete it, after the warning that the target becomes writable.
    click(
        &c,
        &format!("{} button[data-action=\"delete\"]", row(&id, "source")),
    )
    .await;
    let warning = dialog_text(&c, "the delete confirmation", "delete-warning").await;
    assert!(warning.as_str().unwrap().contains("becomes writable"));
    click(&c, "#dialog-confirm").await;
    wait_js(
        &c,
        "the row to go",
        UI_WAIT,
        &format!(
            "return !document.querySelector({:?}) && !document.getElementById('no-relationships').hidden",
            row(&id, "source")
        ),
    )
    .await;
    assert_eq!(
        a.get(&format!("/v1/replication/source-relationships/{id}"))
            .0,
        404
    );
    let t0 = Instant::now();
    while b
        .get(&format!("/v1/replication/target-relationships/{id}"))
        .0
        != 404
    {
        assert!(t0.elapsed() < UI_WAIT, "the target kept its side of {id}");
        tokio::time::sleep(STEP).await;
    }
    c.close().await.unwrap();
    drop(driver);
}

/// The state the cluster page shows for `node`: null while its row is not there.
async fn node_state(c: &Client, node: &str) -> Value {
    js(
        c,
        &format!(
            "const r = document.querySelector('#cluster-body tr[data-node=\"{node}\"]'); \
             return r ? r.dataset.state : null"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_the_cluster_and_drains_and_undrains_a_node_in_the_browser() {
    let t = Scratch::new();
    let shots = Shots::new(&t);
    let etcd = Etcd::start(&t.path().join("etcd"));
    let cfg = |name: &str| format!("cluster = \"{}\"\nnode_name = \"{name}\"\n", etcd.url());
    let n1 = Node::start_configured(&t.path().join("n1"), free_port(), free_port(), &cfg("n1"));
    let n2 = Node::start_configured(&t.path().join("n2"), free_port(), free_port(), &cfg("n2"));
    let driver = Driver::start(&t.path().join("chromedriver.log"));
    let c = driver.browser(&t.path().join("profile")).await;

    open_ui(&c, &n1, &n1.token).await;
    click(&c, "#nav-cluster").await;
    visible(&c, "the cluster page", "page-cluster").await;
    let t0 = Instant::now();
    while (node_state(&c, "n1").await, node_state(&c, "n2").await) != ("up".into(), "up".into()) {
        assert!(
            t0.elapsed() < UI_WAIT,
            "both nodes up on the page; it shows:\n{}",
            js(&c, "return document.body.innerText").await
        );
        tokio::time::sleep(STEP).await;
    }
    let line = text(&c, "#cluster-line").await;
    assert!(
        line.contains("This node: n1") && line.contains("etcd connected"),
        "{line}"
    );
    shots.take(&c, "cluster").await;

    // Drain n2 from n1's page, after a confirmation that says what a drain does.
    let drain = "#cluster-body tr[data-node=\"n2\"] button[data-action=\"drain\"]";
    click(&c, drain).await;
    let warning = dialog_text(&c, "the drain confirmation", "dialog-body").await;
    assert!(
        warning.as_str().unwrap().contains("starts no job"),
        "{warning}"
    );
    click(&c, "#dialog-confirm").await;
    let t0 = Instant::now();
    while node_state(&c, "n2").await != "drained" {
        assert!(t0.elapsed() < UI_WAIT, "n2 shown drained");
        tokio::time::sleep(STEP).await;
    }
    // Recorded in etcd: n2 learns of its own drain through its watch.
    let drained = json!({"drained": true, "by": "admin"});
    wait_drain(&n2, "n2", &drained).await;

    // And back in service.
    click(
        &c,
        "#cluster-body tr[data-node=\"n2\"] button[data-action=\"undrain\"]",
    )
    .await;
    dialog_text(&c, "the undrain confirmation", "dialog-body").await;
    click(&c, "#dialog-confirm").await;
    let t0 = Instant::now();
    while node_state(&c, "n2").await != "up" {
        assert!(t0.elapsed() < UI_WAIT, "n2 shown in service again");
        tokio::time::sleep(STEP).await;
    }
    wait_drain(&n2, "n2", &json!({"drained": false, "by": "admin"})).await;

    // A token without ADMIN sees the nodes but may not drain them.
    let (code, tok) = n1.call(
        "POST",
        "/v1/tokens",
        Some(&json!({"name": "watcher", "role": "observer"})),
    );
    assert_eq!(code, 201, "{tok}");
    sign_out(&c).await;
    sign_in(&c, tok["token"].as_str().unwrap()).await;
    click(&c, "#nav-cluster").await;
    visible(&c, "the cluster page", "page-cluster").await;
    let lacks = wait_js(
        &c,
        "n2's drain button, disabled",
        UI_WAIT,
        "const b = document.querySelector('#cluster-body tr[data-node=\"n2\"] button[data-action=\"drain\"]'); \
         return b && b.disabled ? b.title : null",
    )
    .await;
    assert!(lacks.as_str().unwrap().contains("ADMIN"), "{lacks}");
    c.close().await.unwrap();
    drop(driver);
}

/// Waits until `n`'s view of the cluster shows member `name`'s drain as `want` (the fields
/// it names).
async fn wait_drain(n: &Node, name: &str, want: &Value) {
    let t0 = Instant::now();
    loop {
        let (code, v) = n.get("/v1/cluster");
        assert_eq!(code, 200, "{v}");
        let m = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_default();
        let seen: serde_json::Map<String, Value> = want
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (k.clone(), m["drain"][k].clone()))
            .collect();
        if Value::Object(seen) == *want {
            return;
        }
        assert!(t0.elapsed() < UI_WAIT, "{name}'s drain is not {want}: {m}");
        tokio::time::sleep(STEP).await;
    }
}

#[test]
fn the_ui_is_served_without_a_token_under_a_strict_policy_and_whoami_names_the_privileges() {
    let t = Scratch::new();
    let n = Node::start(&t.path().join("n"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_global(Some(UI_WAIT))
        .build()
        .into();
    let get = |path: &str| {
        agent
            .get(&format!("{}{path}", n.url()))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };

    let r = get("/ui");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/ui/");
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let mut r = get(path);
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind));
        assert_eq!(h["cache-control"], "no-store");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'") && !csp.contains("unsafe"));
        let body = r.body_mut().read_to_string().unwrap();
        // Nothing from another host: no CDN, no web fonts (the SVG's namespace is a name).
        let body = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
        if path == "/ui/" {
            assert!(!body.contains("<script>") && !body.contains("style="));
        }
    }
    assert_eq!(get("/ui/admin.token").status().as_u16(), 404);

    assert_eq!(n.call_as(None, "GET", "/v1/whoami", None).0, 401);
    let (code, me) = n.get("/v1/whoami");
    assert_eq!(code, 200);
    assert_eq!(me["name"], "admin");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["privileges"].as_array().unwrap().len(), 5);
    let (_, ops) = n.call(
        "POST",
        "/v1/tokens",
        Some(&json!({"name": "ops", "role": "source-operator"})),
    );
    let (code, me) = n.call_as(ops["token"].as_str(), "GET", "/v1/whoami", None);
    assert_eq!(code, 200);
    assert_eq!(
        me,
        json!({"name": "ops", "role": "source-operator", "privileges": ["SOURCE_READ", "SOURCE_WRITE"]})
    );
}
