//! Real terminals for tests: a private tmux server per terminal (its own socket, no
//! user config), driven with `send-keys` and read with `capture-pane`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One tmux server with one window of one pane. Killed on drop.
#[derive(Debug)]
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Whether tmux is installed.
    pub fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts a server on a socket named after `tag` and this process, with a
    /// `cols`x`rows` window running `cmd` through `sh -c`.
    pub fn start(tag: &str, cols: u16, rows: u16, cmd: &str) -> Tmux {
        let socket = format!("fdgrab-{tag}-{}", std::process::id());
        let t = Tmux { socket };
        let _ = t.run(&["kill-server"]);
        let out = t.run(&[
            "new-session",
            "-d",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            cmd,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn command(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-f", "/dev/null", "-L", &self.socket])
            .env("TERM", "xterm-256color")
            .env_remove("TMUX");
        c
    }

    /// Runs a tmux command against this server.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running tmux")
    }

    fn query(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The pid of the process the pane runs.
    pub fn pane_pid(&self) -> i32 {
        self.query("#{pane_pid}").parse().expect("tmux pane_pid")
    }

    /// The tmux server's pid.
    pub fn server_pid(&self) -> i32 {
        self.query("#{pid}").parse().expect("tmux server pid")
    }

    /// Types `text` literally.
    pub fn type_text(&self, text: &str) {
        let out = self.run(&["send-keys", "-l", "--", text]);
        assert!(out.status.success(), "send-keys failed");
    }

    /// Types `text` and Enter.
    pub fn type_line(&self, text: &str) {
        self.type_text(text);
        self.key("Enter");
    }

    /// Sends one key by tmux name (`Enter`, `C-c`, `C-z`).
    pub fn key(&self, key: &str) {
        let out = self.run(&["send-keys", key]);
        assert!(out.status.success(), "send-keys {key} failed");
    }

    /// The pane's visible text (wrapped lines joined).
    pub fn capture(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the pane until `want` appears, panicking with the pane's text after
    /// `timeout`.
    pub fn wait_for(&self, want: &str, timeout: Duration) -> String {
        self.wait_until(timeout, |s| s.contains(want))
            .unwrap_or_else(|s| panic!("{want:?} did not appear within {timeout:?}; pane:\n{s}"))
    }

    /// Polls the pane until `ok` holds; `Err(last text)` after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.capture();
            if ok(&s) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens another window running `cmd` (`sh -c`); returns its id and the pane's
    /// pid.
    pub fn new_window(&self, cmd: &str) -> (String, i32) {
        let out = self.run(&[
            "new-window",
            "-d",
            "-P",
            "-F",
            "#{window_id} #{pane_pid}",
            cmd,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace();
        match (it.next(), it.next().and_then(|p| p.parse().ok())) {
            (Some(id), Some(pid)) => (id.to_owned(), pid),
            _ => panic!(
                "tmux new-window failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Types `text` and Enter into window `id`.
    pub fn type_line_in(&self, id: &str, text: &str) {
        let ok = self
            .run(&["send-keys", "-t", id, "-l", "--", text])
            .status
            .success()
            && self.run(&["send-keys", "-t", id, "Enter"]).status.success();
        assert!(ok, "send-keys to {id} failed");
    }

    /// The visible text of window `id`.
    pub fn capture_window(&self, id: &str) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-t", id]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Resizes the window.
    pub fn resize(&self, cols: u16, rows: u16) {
        let out = self.run(&[
            "resize-window",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ]);
        assert!(out.status.success(), "resize-window failed");
    }

    /// Kills the server (and so its panes' terminals) and removes its socket, which
    /// tmux leaves behind.
    pub fn kill(&self) {
        let _ = self.run(&["kill-server"]);
        let dir = std::env::var_os("TMUX_TMPDIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/tmp".into());
        let uid = rustix::process::getuid().as_raw();
        let _ = std::fs::remove_file(dir.join(format!("tmux-{uid}")).join(&self.socket));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.kill();
    }
}
