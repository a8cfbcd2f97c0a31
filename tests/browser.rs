//! The dashboard in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, watches a live `cityops run` of the demo city. A MutationObserver in the
//! page records every warning card the board shows (with its computed colour) and every card
//! that leaves it, so nothing depends on when the test happens to look. The test asserts
//! that warnings of every table that warned appear in their level's colour, exactly the
//! (table, level) pairs of the run's own JSON Lines output, and that resolved warnings
//! leave the board for the history. It saves a screenshot of the page mid-run.
//!
//! Runs when Chromium and chromedriver are installed (`.ci/run` installs them and sets
//! `CITYOPS_TEST_CHROMIUM=1`, which makes their absence a failure); otherwise it says it
//! did not run. A second test has an operator acknowledge a warning and silence a group by
//! clicking on the page, and checks both in the API.
//!
//! The run is `cityops run --speed 1800` of the demo (about 48 s) on a free port. The alerts
//! that leave the board must be resolved ones, each found in the history, and every alert
//! the run resolved after the observer started watching must leave it (the page starts from
//! the server's board and then takes every warning after it, so none falls in between; the
//! demo's first four resolve within a second of the start, often before the page is up).
//! The screenshot is retaken whenever the board holds more cards than before and lands in
//! `$CARGO_TARGET_TMPDIR/browser-<pid>/dashboard.png` (under `target/tmp/`); the README's
//! `docs/dashboard.png` is one. `.ci/run` installs Debian's `chromium` and `chromium-driver`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The four warning colours of the page's style sheet, as computed styles give them.
fn level_colour(level: &str) -> &'static str {
    match level {
        "red" => "rgb(215, 38, 61)",
        "orange" => "rgb(244, 96, 54)",
        "yellow" => "rgb(226, 176, 7)",
        "blue" => "rgb(27, 108, 168)",
        other => panic!("unknown level {other}"),
    }
}

/// A process killed when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The few WebDriver calls the test needs (W3C WebDriver over HTTP, JSON bodies).
struct Browser {
    base: String,
    session: String,
    _driver: Killed,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Killed(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1400", format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let created = post(&format!("{base}/session"), &capabilities);
        let session = created["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Browser {
            base,
            session,
            _driver: driver,
        }
    }

    fn command(&self, path: &str, body: &Value) -> Value {
        post(&format!("{}/session/{}/{path}", self.base, self.session), body)["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("url", &json!({"url": url}));
    }

    fn script(&self, script: &str) -> Value {
        self.command("execute/sync", &json!({"script": script, "args": []}))
    }

    /// Finds an element and runs `then` on it (`click`, or `value` to type), again while
    /// the page re-renders it under the driver (a stale element) for up to 10 s.
    fn on_element(&self, css: &str, then: &str, body: &Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.command("element", &json!({"using": "css selector", "value": css}));
            let element = found
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str);
            if let Some(element) = element {
                let done = self.command(&format!("element/{element}/{then}"), body);
                if done.get("error").is_none() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cannot {then} `{css}`: {found}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, css: &str) {
        self.on_element(css, "click", &json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", &json!({"text": text}));
    }

    fn screenshot(&self, path: &Path) {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let body = ureq::get(url).call().unwrap().body_mut().read_to_string().unwrap();
        let reply: Value = serde_json::from_str(&body).unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(reply["value"].as_str().expect("base64 png"))
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(format!("{}/session/{}", self.base, self.session)).call();
    }
}

fn post(url: &str, body: &Value) -> Value {
    // WebDriver answers errors (a stale element) with 4xx/5xx and a JSON body.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut reply = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    serde_json::from_str(&reply.body_mut().read_to_string().unwrap()).unwrap()
}

/// Whether Chromium and chromedriver are there; their absence fails when
/// `CITYOPS_TEST_CHROMIUM` says they should be.
fn browser_installed() -> bool {
    let installed = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !installed {
        assert!(
            std::env::var_os("CITYOPS_TEST_CHROMIUM").is_none(),
            "CITYOPS_TEST_CHROMIUM is set but {CHROMIUM} or {CHROMEDRIVER} is missing"
        );
        eprintln!("browser test did not run: install chromium and chromium-driver (.ci/run does)");
    }
    installed
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Records, inside the page, every card the board shows and every card that leaves it.
const OBSERVER: &str = r##"
  const board = document.getElementById("board");
  window.__seen = {cards: [], left: [], history: []};
  let onBoard = new Set();
  const look = () => {
    const now = new Set();
    for (const card of board.querySelectorAll(".warning")) {
      const id = card.dataset.alert;
      now.add(id);
      const level = card.querySelector(".level").textContent.trim();
      const table = card.querySelector("b").textContent.split("/")[0];
      window.__seen.cards.push({id, level, table, colour: getComputedStyle(card).borderLeftColor,
                                text: getComputedStyle(card.querySelector(".level")).color});
    }
    for (const id of onBoard) if (!now.has(id)) window.__seen.left.push(id);
    onBoard = now;
    for (const card of document.querySelectorAll("#history .warning")) window.__seen.history.push(card.dataset.alert);
  };
  look();
  new MutationObserver(look).observe(board, {childList: true, subtree: true});
  return true;
"##;

#[test]
fn the_dashboard_shows_each_tables_warnings_in_their_colour_and_resolved_ones_leave() {
    if !browser_installed() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let browser = Browser::start(&dir.join("profile"));

    // The demo day at 1800× recorded speed: 48 s, long enough to watch alerts come and go.
    let jsonl = dir.join("warnings.jsonl");
    let jsonl_arg = jsonl.display().to_string();
    let (mut run, address, drain) = start_demo("1800", &dir, None, &["--jsonl", &jsonl_arg]);

    browser.open(&address);
    assert_eq!(browser.script(OBSERVER), json!(true));
    // What resolved before the observer watched (the demo's first alerts resolve within a
    // second of the start) may have come and gone unseen; anything after it may not.
    let resolved_before: BTreeSet<String> = get_json(&format!("{address}/api/warnings"))["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["status"] == "resolved")
        .map(|w| w["alert_id"].as_str().unwrap().to_string())
        .collect();
    let screenshot = dir.join("dashboard.png");
    let mut most = 0;
    while run.0.try_wait().unwrap().is_none() {
        let count = browser.script("return document.querySelectorAll('#board .warning').length;");
        let count = count.as_u64().unwrap();
        if count > most {
            most = count;
            browser.screenshot(&screenshot);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(run.0.wait().unwrap().success());
    drain.join().unwrap().unwrap();

    // What the run itself reported: (table, level) of each firing warning, and the alerts
    // that resolved.
    let mut fired = BTreeSet::new();
    let mut resolved = BTreeSet::new();
    for line in std::fs::read_to_string(&jsonl).unwrap().lines() {
        let w: Value = serde_json::from_str(line).unwrap();
        let id = w["alert_id"].as_str().unwrap().to_string();
        match w["status"].as_str().unwrap() {
            "firing" => {
                fired.insert((
                    w["table"].as_str().unwrap().to_string(),
                    w["level"].as_str().unwrap().to_string(),
                ));
            }
            _ => {
                resolved.insert(id);
            }
        }
    }
    let tables: BTreeSet<&str> = fired.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        tables,
        BTreeSet::from(["devices", "heating", "sensor", "traffic", "water"])
    );

    let seen = browser.script("return window.__seen;");
    let mut shown = BTreeSet::new();
    for card in seen["cards"].as_array().unwrap() {
        let level = card["level"].as_str().unwrap();
        assert_eq!(card["colour"], level_colour(level), "border of {card}");
        if level != "blue" {
            // Blue text is lightened for contrast on the dark page; the others are the level colour.
            assert_eq!(card["text"], level_colour(level), "level text of {card}");
        }
        shown.insert((card["table"].as_str().unwrap().to_string(), level.to_string()));
    }
    assert_eq!(
        shown, fired,
        "every (table, level) the run fired, and nothing else, was on the board"
    );

    let strings = |key: &str| -> BTreeSet<String> {
        seen[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let (left, history) = (strings("left"), strings("history"));
    // The demo's last resolution comes hours of event time (seconds here) before its end.
    assert!(
        left.is_subset(&resolved),
        "only resolved alerts leave the board: {:?}",
        left.difference(&resolved).collect::<Vec<_>>()
    );
    let missed: Vec<&String> = resolved
        .difference(&resolved_before)
        .filter(|id| !left.contains(*id))
        .collect();
    assert!(
        missed.is_empty(),
        "every alert resolved while the page watched left its board: {missed:?} did not"
    );
    assert!(!left.is_empty(), "no alert left the board while the page watched");
    for id in &left {
        assert!(
            history.contains(id),
            "alert {id} left the board but is not in the history"
        );
    }
    let by_level: BTreeMap<String, usize> =
        seen["cards"]
            .as_array()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, c| {
                *m.entry(c["level"].as_str().unwrap().to_string()).or_default() += 1;
                m
            });
    eprintln!(
        "browser: {} alerts left the board ({} had resolved before the page watched), most on it at once {most}, cards by level {by_level:?}; screenshot {}",
        left.len(),
        resolved_before.len(),
        screenshot.display()
    );
    assert!(screenshot.exists() && std::fs::metadata(&screenshot).unwrap().len() > 10_000);
}

/// `cityops run` of the demo at `speed` on a free port (with `operator`'s token for `li`,
/// and `extra` arguments); returns the process, the dashboard's address, and the thread that
/// keeps reading its stderr so it never blocks on a full pipe.
fn start_demo(
    speed: &str,
    dir: &Path,
    operator: Option<&str>,
    extra: &[&str],
) -> (Killed, String, std::thread::JoinHandle<std::io::Result<u64>>) {
    let mut run = Killed(
        Command::new(env!("CARGO_BIN_EXE_cityops"))
            .args(["run", "--speed", speed, "--quiet", "--http", "127.0.0.1:0"])
            .args(extra)
            .arg("--dead-letter")
            .arg(dir.join("dead.jsonl"))
            .envs(operator.map(|token| ("CITYOPS_OPERATOR", format!("li:{token}"))))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(run.0.stderr.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "cityops ended before serving");
        if let Some(rest) = line.split("dashboard on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string();
        }
    };
    let drain = std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (run, address, drain)
}

fn get_json(url: &str) -> Value {
    serde_json::from_str(&ureq::get(url).call().unwrap().body_mut().read_to_string().unwrap()).unwrap()
}

/// An operator acknowledges a warning and silences a group by clicking on the page; the API
/// shows both, and the page shows the marks.
#[test]
fn an_operator_acknowledges_a_warning_and_silences_a_group_on_the_page() {
    if !browser_installed() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-actions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let browser = Browser::start(&dir.join("profile"));
    let token = "li-dashboard-token";
    // 600x: the 20 cold rooms of a Haidian compound fire at 19:00 of event time and stay
    // firing for about 36 s.
    let (_run, address, _drain) = start_demo("600", &dir, Some(token), &[]);
    browser.open(&address);
    browser.type_into("#operator-token", token);
    let group = "details.group[data-group='room_temp_low/haidian']";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = browser.script(&format!(
            "const g = document.querySelector(\"{group}\"); return g ? +g.dataset.count : 0;"
        ));
        if count.as_u64().unwrap_or(0) >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the cold-room group never showed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Expand the group and acknowledge its first warning.
    browser.click(&format!("{group} > summary"));
    let first = browser.script(&format!(
        "return document.querySelector(\"{group} .warning\").dataset.alert;"
    ));
    let id = first.as_str().unwrap().to_string();
    browser.click(&format!("{group} button[data-act='ack'][data-alert='{id}']"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let history = get_json(&format!("{address}/api/alerts/{id}/history"));
        if history["acknowledged"]["by"] == "li" {
            break history;
        }
        assert!(Instant::now() < deadline, "not acknowledged: {history}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let events: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["fired", "acknowledged"], "{history}");

    // Silence the whole group, for 24 h (of the replay's clock: 2 h would pass in 12 s).
    browser.click("#silence-for option[value='1440']");
    browser.click(&format!("{group} button[data-act='silence-group']"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let silences = loop {
        let silences = get_json(&format!("{address}/api/v2/silences"));
        if silences.as_array().is_some_and(|s| !s.is_empty()) {
            break silences;
        }
        assert!(Instant::now() < deadline, "no silence was made");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(silences.as_array().unwrap().len(), 1, "{silences}");
    let silence = &silences[0];
    assert_eq!(silence["createdBy"], "li");
    assert_eq!(silence["status"]["state"], "active", "{silence}");
    let mut matchers: Vec<(String, String)> = silence["matchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    matchers.sort();
    assert_eq!(
        matchers,
        [
            ("alertname".to_string(), "room_temp_low".to_string()),
            ("district".to_string(), "haidian".to_string())
        ]
    );
    // Every alert of the group is silenced now, none of another group; the page shows it.
    let alerts = get_json(&format!("{address}/api/alerts"));
    for alert in alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["firing"] == true)
    {
        let in_group = alert["group"] == "room_temp_low/haidian";
        assert_eq!(alert["silenced"], in_group, "{alert}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = browser.script(&format!(
            "return [...document.querySelectorAll(\"{group} .warning .marks\")].map(m => m.textContent);"
        ));
        let marks: Vec<&str> = shown
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if marks.iter().any(|m| m.contains("acknowledged by li"))
            && marks.iter().filter(|m| m.contains("silenced")).count() >= 5
        {
            break;
        }
        assert!(Instant::now() < deadline, "the page does not show the marks: {marks:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
