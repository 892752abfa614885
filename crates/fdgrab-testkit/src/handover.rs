//! Helpers for `fdgrab exec` tests and benchmarks: real servers (gunicorn and the
//! `fdgrab-activated` test server), clients that report which process answered, a
//! bounded request loop, and `/proc` views of who holds which socket.

use crate::{bin, read_line_timeout, TIMEOUT};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The gunicorn program, if installed (Debian package `gunicorn`).
pub fn gunicorn() -> Option<PathBuf> {
    ["/usr/bin/gunicorn", "/usr/local/bin/gunicorn"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Scratch directories are the OCI helpers' (removed on drop).
pub use crate::oci::TempDir;

/// A WSGI app answering `master=PPID worker=PID`: under gunicorn's sync workers the
/// parent is the arbiter, i.e. the server instance.
pub const PID_APP: &str = r#"import os
def app(environ, start_response):
    body = ("master=%d worker=%d\n" % (os.getppid(), os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// Writes [`PID_APP`] as `pidapp.py` into `dir`.
pub fn write_pid_app(dir: &Path) {
    std::fs::write(dir.join("pidapp.py"), PID_APP).expect("write pidapp.py");
}

/// gunicorn arguments serving `pidapp:app` from `dir` with two sync workers.
pub fn gunicorn_args(dir: &Path) -> Vec<String> {
    ["-w", "2", "--graceful-timeout", "10", "--chdir"]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.to_string_lossy().into_owned(), "pidapp:app".into()])
        .collect()
}

/// A running server process (killed on drop).
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub pid: i32,
    /// Where it listens, in `--listen`/bind order.
    pub addrs: Vec<String>,
    pub report: Option<serde_json::Value>,
}

impl Server {
    /// Starts gunicorn bound to `binds` (e.g. `127.0.0.1:0`, `[::1]:0`) and waits
    /// until it logs every "Listening at:" line.
    pub fn gunicorn(app_dir: &Path, binds: &[&str]) -> Server {
        let g = gunicorn().expect("gunicorn is not installed");
        let mut cmd = Command::new(g);
        for b in binds {
            cmd.args(["-b", b]);
        }
        cmd.args(gunicorn_args(app_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn gunicorn");
        let pid = child.id() as i32;
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut addrs = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        // gunicorn logs all listeners on one line: "Listening at: http://a, http://b (pid)".
        while addrs.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = read_line_timeout(&mut err, left).unwrap_or_else(|e| {
                let _ = child.kill();
                panic!("gunicorn {pid} did not start: {e}")
            });
            if let Some(rest) = line.split("Listening at: ").nth(1) {
                let list = rest.rsplit_once(" (").map_or(rest, |(l, _)| l);
                addrs = list
                    .split(',')
                    .map(|a| a.trim().trim_start_matches("http://").to_string())
                    .collect();
            }
        }
        drain(err);
        Server {
            child,
            pid,
            addrs,
            report: None,
        }
    }

    /// Starts `fdgrab-activated serve ARGS...` and reads its report line.
    pub fn activated(args: &[&str]) -> Server {
        let mut cmd = Command::new(bin("fdgrab-activated"));
        cmd.arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn fdgrab-activated");
        let pid = child.id() as i32;
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let line = read_line_timeout(&mut out, TIMEOUT).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("fdgrab-activated {pid} did not report: {e}")
        });
        let report: serde_json::Value = serde_json::from_str(&line).expect("report json");
        let addrs = report["sockets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        s["addr"]
                            .as_str()
                            .or(s["path"].as_str())
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Server {
            child,
            pid,
            addrs,
            report: Some(report),
        }
    }

    /// The port of listener `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.addrs[i]
            .parse::<SocketAddr>()
            .expect("inet address")
            .port()
    }

    /// Waits until the process has exited and been reaped.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        crate::wait_timeout(&mut self.child, timeout).expect("server did not exit")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps reading a child's pipe so that it never blocks on a full pipe.
pub fn drain<R: Read + Send + 'static>(mut r: R) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
    });
}

/// How to ask a server which process it is.
#[derive(Clone, Debug)]
pub enum Probe {
    /// HTTP GET to gunicorn's pid app; the answer is the arbiter's pid.
    Http(SocketAddr),
    /// A line to an `fdgrab-activated` stream listener.
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
    /// A datagram from a bound client socket in `dir`.
    UnixDgram {
        server: PathBuf,
        dir: PathBuf,
    },
}

const IO_TIMEOUT: Duration = Duration::from_secs(5);

impl Probe {
    /// One request; the pid that answered, or why it failed.
    pub fn ask(&self) -> Result<i32, String> {
        match self {
            Probe::Http(a) => {
                let mut s = TcpStream::connect_timeout(a, IO_TIMEOUT)
                    .map_err(|e| format!("connect {a}: {e}"))?;
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
                    .map_err(|e| format!("send: {e}"))?;
                let mut body = String::new();
                s.read_to_string(&mut body)
                    .map_err(|e| format!("read: {e}"))?;
                if !body.starts_with("HTTP/1.") || !body.contains(" 200 ") {
                    return Err(format!("bad response {body:?}"));
                }
                field(&body, "master=")
            }
            Probe::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, IO_TIMEOUT)
                    .map_err(|e| format!("connect {a}: {e}"))?;
                line_exchange(s)
            }
            Probe::Unix(p) => {
                let s =
                    UnixStream::connect(p).map_err(|e| format!("connect {}: {e}", p.display()))?;
                line_exchange(s)
            }
            Probe::Udp(a) => {
                let local = if a.is_ipv4() {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                };
                let s = UdpSocket::bind(local).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                s.send_to(b"who\n", a)
                    .map_err(|e| format!("send {a}: {e}"))?;
                let mut buf = [0u8; 128];
                let n = s
                    .recv(&mut buf)
                    .map_err(|e| format!("recv from {a}: {e}"))?;
                field(&String::from_utf8_lossy(&buf[..n]), "pid=")
            }
            Probe::UnixDgram { server, dir } => {
                static N: AtomicUsize = AtomicUsize::new(0);
                let me = dir.join(format!(
                    "c{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let s = UnixDatagram::bind(&me).map_err(|e| e.to_string())?;
                let _cleanup = RemoveOnDrop(me);
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                s.send_to(b"who\n", server)
                    .map_err(|e| format!("send: {e}"))?;
                let mut buf = [0u8; 128];
                let n = s.recv(&mut buf).map_err(|e| format!("recv: {e}"))?;
                field(&String::from_utf8_lossy(&buf[..n]), "pid=")
            }
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn line_exchange<S: Read + Write + std::os::fd::AsFd>(mut s: S) -> Result<i32, String> {
    rustix::net::sockopt::set_socket_timeout(
        &s,
        rustix::net::sockopt::Timeout::Recv,
        Some(IO_TIMEOUT),
    )
    .map_err(|e| e.to_string())?;
    s.write_all(b"who\n").map_err(|e| format!("send: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    field(&reply, "pid=")
}

fn field(text: &str, key: &str) -> Result<i32, String> {
    text.split(key)
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("no {key} in {text:?}"))
}

/// The outcome of one request in a [`Load`] loop.
pub type Answer = Result<i32, String>;

/// A bounded request loop on its own thread, cycling through `probes`. Requests are
/// paced to at most one per [`Load::PACE`]: every TCP connection leaves a TIME_WAIT
/// entry for a minute, and an unpaced loop against a fast server would run out of
/// loopback ports.
#[derive(Debug)]
pub struct Load {
    pub answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub const PACE: Duration = Duration::from_micros(400);

    /// Starts the loop; it stops by itself after `max` requests.
    pub fn start(probes: Vec<Probe>, max: usize) -> Load {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (answers.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for i in 0..max {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                let r = probes[i % probes.len()].ask();
                a.lock().expect("answers").push(r);
                if let Some(rest) = Load::PACE.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        Load {
            answers,
            stop,
            handle: Some(handle),
        }
    }

    pub fn count(&self) -> usize {
        self.answers.lock().expect("answers").len()
    }

    /// Waits until at least `n` requests were made (panics after `timeout`).
    pub fn wait_for(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() >= deadline {
                let answers = self.answers.lock().expect("answers");
                let last: Vec<&Answer> = answers.iter().rev().take(5).collect();
                panic!(
                    "only {} of {n} requests after {timeout:?}; the last ones: {last:?}",
                    answers.len()
                );
            }
            assert!(
                !self.handle.as_ref().is_some_and(|h| h.is_finished()) || self.count() >= n,
                "load loop ended"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the loop and returns every answer in order.
    pub fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.answers.lock().expect("answers"))
    }
}

/// `fdgrab exec ...` running in the background, with its stderr watched for the
/// "is ready" line.
#[derive(Debug)]
pub struct Exec {
    pub child: Child,
    pub new_pid: i32,
    pub stdout: Option<BufReader<ChildStdout>>,
    /// stderr lines read so far.
    pub log: Vec<String>,
}

impl Exec {
    /// Starts `fdgrab exec ARGS` and waits until it says the new server is ready.
    pub fn start(args: &[String]) -> Exec {
        let mut child = crate::fdgrab()
            .arg("exec")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fdgrab exec");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut log = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        let new_pid = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match read_line_timeout(&mut err, left) {
                Ok(l) => l,
                Err(e) => {
                    let _ = child.kill();
                    panic!("fdgrab exec {args:?} never became ready: {e}; stderr so far: {log:#?}")
                }
            };
            log.push(line.clone());
            if let Some(rest) = line.strip_prefix("fdgrab: new server ") {
                if rest.contains(" is ready") {
                    break rest
                        .split(' ')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("new server pid");
                }
            }
        };
        forward_lines(err);
        let stdout = child.stdout.take().map(BufReader::new);
        Exec {
            child,
            new_pid,
            stdout,
            log,
        }
    }

    /// Sends `sig` to fdgrab itself.
    pub fn signal(&self, sig: i32) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        let sig = rustix::process::Signal::from_named_raw(sig).expect("signal");
        rustix::process::kill_process(pid, sig).expect("kill fdgrab");
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The new server is not ours to reap, but it must not outlive the test.
        if let Some(pid) = rustix::process::Pid::from_raw(self.new_pid) {
            if process_exists(self.new_pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Copies a child's remaining stderr lines to ours (visible with --nocapture).
pub fn forward_lines(r: BufReader<ChildStderr>) {
    std::thread::spawn(move || {
        for line in r.lines().map_while(Result::ok) {
            eprintln!("[fdgrab] {line}");
        }
    });
}

/// Whether a process exists (and is not a zombie).
pub fn process_exists(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// `/proc/PID/fd`: number → link.
pub fn fd_table(pid: i32) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let (Some(n), Ok(link)) = (
                e.file_name().to_str().and_then(|s| s.parse().ok()),
                std::fs::read_link(e.path()),
            ) {
                out.insert(n, link.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Every live process holding `socket:[inode]`.
pub fn holders(link: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if fd_table(pid).values().any(|l| l == link) && process_exists(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// The pids of `root` and its live descendants.
pub fn process_tree(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    all.sort_unstable();
    all
}

/// A free TCP port on loopback (bound and released; fine for tests on a quiet host).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A TCP port free on `ip` a moment ago. Tests that must hand a port number to
/// another program use an address of their own in 127.0.0.0/8, so that other tests'
/// ephemeral ports on 127.0.0.1 cannot take it in between.
pub fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Asks until an answer comes, retrying refused connections every 100 µs (for
/// launch-to-first-answer benchmarks). Panics at `deadline`.
pub fn first_answer(probe: &Probe, deadline: Instant) -> i32 {
    loop {
        match probe.ask() {
            Ok(pid) => return pid,
            Err(e) => {
                assert!(Instant::now() < deadline, "no answer: {e}");
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}

/// Sends SIGTERM to `child` and reaps it (says so if it does not stop in time).
pub fn stop_child(child: &mut Child) {
    if let Some(p) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    if crate::wait_timeout(child, TIMEOUT).is_err() {
        eprintln!("process {} did not stop", child.id());
    }
}
