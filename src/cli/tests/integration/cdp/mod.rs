//! A small Chrome DevTools Protocol client for the viewer's tests: headless Chromium driven over
//! `--remote-debugging-pipe` (Chromium reads commands on fd 3 and writes answers and events on
//! fd 4, each JSON message ended by a NUL byte). A pipe needs no websocket and no port, and the
//! client needs nothing beyond `serde_json`: CI only has to install Debian's `chromium`.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one command may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

/// `$CHROMIUM`, else Debian's `chromium` (or `chromium-browser`) on PATH. Missing, the test fails:
/// the viewer must be checked in a real browser.
pub fn chromium() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        candidates.extend(["chromium", "chromium-browser"].map(|n| dir.join(n)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed (Debian package chromium), and the viewer's test drives \
                 its page in headless Chromium: run scripts/test.sh as root, which installs what \
                 the tests need, or apt-get install chromium"
            )
        })
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // Close-on-exec: no other child started by a parallel test may inherit them.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub struct Browser {
    child: Child,
    to_chrome: File,
    from_chrome: Receiver<Value>,
    next_id: u64,
    /// Events not yet looked at, in the order they came.
    events: Vec<Value>,
    profile: PathBuf,
}

impl Browser {
    /// Starts headless Chromium with a fresh profile in `scratch` and a window of this size.
    pub fn launch(scratch: &Path, width: u32, height: u32) -> Browser {
        let exe = chromium();
        let profile = scratch.join("chromium-profile");
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let log = File::create(scratch.join("chromium.log")).unwrap();
        let (cmd_r, cmd_w) = pipe();
        let (out_r, out_w) = pipe();
        let (cr, ow) = (cmd_r.as_raw_fd(), out_w.as_raw_fd());
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--headless",
            "--remote-debugging-pipe",
            // Root (CI) cannot use the sandbox; the page is our own file.
            "--no-sandbox",
            "--disable-gpu",
            // Containers often have a small /dev/shm.
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--mute-audio",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first, in case a pipe end is fd 3 or 4 already.
                let a = libc::fcntl(cr, libc::F_DUPFD, 10);
                let b = libc::fcntl(ow, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(a);
                libc::close(b);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        drop((cmd_r, out_w));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = File::from(out_r);
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        let Ok(v) = serde_json::from_slice::<Value>(&buf) else {
                            continue;
                        };
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to_chrome: File::from(cmd_w),
            from_chrome: rx,
            next_id: 1,
            events: Vec::new(),
            profile,
        }
    }

    fn chromium_log(&self) -> String {
        let log = self.profile.with_file_name("chromium.log");
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Sends a command (to a page when `session` is given) and waits for its answer; an error
    /// answer fails the test.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        if let Err(e) = self.to_chrome.write_all(&bytes) {
            panic!(
                "cannot send {method} to Chromium: {e}\n{}",
                self.chromium_log()
            );
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let m = self.receive(deadline, method);
            if m.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(err) = m.get("error") {
                    panic!("{method} failed: {err}");
                }
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    fn receive(&mut self, deadline: Instant, what: &str) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.from_chrome.recv_timeout(left) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => panic!(
                "Chromium did not answer {what} within {TIMEOUT:?}\n{}",
                self.chromium_log()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "Chromium went away while waiting for {what}\n{}",
                self.chromium_log()
            ),
        }
    }

    /// Waits for an event of `session` named `method` that came after the last one taken.
    pub fn wait_event(&mut self, session: &str, method: &str) -> Value {
        let is = |m: &Value| m["method"] == method && m["sessionId"] == session;
        if let Some(i) = self.events.iter().position(is) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let m = self.receive(deadline, method);
            if is(&m) {
                return m;
            }
            self.events.push(m);
        }
    }

    /// Opens a new tab, with console messages and exceptions reported.
    pub fn page(&mut self) -> Page<'_> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        let session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(Some(&session), domain, json!({}));
        }
        Page {
            browser: self,
            session,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let msg = json!({ "id": 0, "method": "Browser.close" });
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        let _ = self.to_chrome.write_all(&bytes);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.profile);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Page<'b> {
    browser: &'b mut Browser,
    session: String,
}

impl Page<'_> {
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.browser.call(Some(&s), method, params)
    }

    /// Loads `url` and waits for its load event.
    pub fn navigate(&mut self, url: &str) {
        let s = self.session.clone();
        // Not an earlier page's load event (about:blank's).
        self.browser
            .events
            .retain(|m| !(m["method"] == "Page.loadEventFired" && m["sessionId"] == s.as_str()));
        let r = self.call("Page.navigate", json!({ "url": url }));
        if let Some(e) = r.get("errorText") {
            panic!("cannot load {url}: {e}");
        }
        self.browser.wait_event(&s, "Page.loadEventFired");
    }

    /// The value of a JavaScript expression (awaited if a promise); an exception fails the test.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("`{expr}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// The centre of the element `selector`, scrolled into view, in viewport pixels.
    pub fn center(&mut self, selector: &str) -> (f64, f64) {
        let sel = serde_json::to_string(selector).unwrap();
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
        ));
        let Some(a) = r.as_array() else {
            panic!("no element matches {selector}");
        };
        (a[0].as_f64().unwrap(), a[1].as_f64().unwrap())
    }

    /// The bounding box (left, top, width, height) of `selector`, scrolled into view.
    pub fn rect(&mut self, selector: &str) -> (f64, f64, f64, f64) {
        let sel = serde_json::to_string(selector).unwrap();
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.left, r.top, r.width, r.height]; }})()"
        ));
        let Some(a) = r.as_array() else {
            panic!("no element matches {selector}");
        };
        let v: Vec<f64> = a.iter().map(|x| x.as_f64().unwrap()).collect();
        (v[0], v[1], v[2], v[3])
    }

    fn mouse(&mut self, kind: &str, x: f64, y: f64, buttons: u32) {
        self.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1 }),
        );
    }

    /// A real click (press and release of the left button) at (x, y).
    pub fn click(&mut self, x: f64, y: f64) {
        self.mouse("mouseMoved", x, y, 0);
        self.mouse("mousePressed", x, y, 1);
        self.mouse("mouseReleased", x, y, 0);
    }

    pub fn click_on(&mut self, selector: &str) {
        let (x, y) = self.center(selector);
        self.click(x, y);
    }

    /// Presses the left button at (x0, y), moves to (x1, y) in steps, releases.
    pub fn drag(&mut self, x0: f64, x1: f64, y: f64) {
        self.mouse("mouseMoved", x0, y, 0);
        self.mouse("mousePressed", x0, y, 1);
        for i in 1..=8 {
            let x = x0 + (x1 - x0) * f64::from(i) / 8.0;
            self.mouse("mouseMoved", x, y, 1);
        }
        self.mouse("mouseReleased", x1, y, 0);
    }

    /// Types `text` into the element `selector` (focused first), as keystrokes would.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!("document.querySelector({sel}).focus()"));
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self, path: &Path) {
        let size = self
            .eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]");
        let (w, h) = (size[0].as_f64().unwrap(), size[1].as_f64().unwrap());
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": w, "height": h, "scale": 1 } }),
        );
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Console errors, failed asserts, uncaught exceptions and error log entries of this page so
    /// far, one line each.
    pub fn errors(&mut self) -> Vec<String> {
        // A round trip, so that what the page logged before now has arrived.
        self.eval("0");
        let session = self.session.clone();
        let mut out = Vec::new();
        for m in &self.browser.events {
            if m["sessionId"] != session.as_str() {
                continue;
            }
            let p = &m["params"];
            match m["method"].as_str() {
                Some("Runtime.exceptionThrown") => out.push(format!(
                    "exception: {}",
                    p["exceptionDetails"]["exception"]["description"]
                        .as_str()
                        .or(p["exceptionDetails"]["text"].as_str())
                        .unwrap_or("?")
                )),
                Some("Runtime.consoleAPICalled")
                    if p["type"] == "error" || p["type"] == "assert" =>
                {
                    out.push(format!(
                        "console.{}: {}",
                        p["type"].as_str().unwrap_or("?"),
                        p["args"]
                    ))
                }
                Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                    out.push(format!("log: {}", p["entry"]["text"]))
                }
                _ => {}
            }
        }
        out
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
