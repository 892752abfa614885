//! Real OCI containers for the agent's tests and benchmark: a busybox rootfs, a
//! bundle whose process runs as uid 1000 with no capabilities under a seccomp
//! profile that sends `bind` to an agent, runc/crun driven as child processes,
//! network namespaces the test owns, and an `fdgrab agent` it starts.
//!
//! Every container is deleted (`RUNTIME delete --force`) when its guard drops, so a
//! failing assertion never leaves one behind.

use crate::{bin, read_line_timeout, wait_timeout, TIMEOUT};
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test process or earlier run uses: prefix, our pid, a counter.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// A directory removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The OCI runtimes the agent is tested with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Crun,
}

impl Runtime {
    pub const ALL: [Runtime; 2] = [Runtime::Runc, Runtime::Crun];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        }
    }

    /// Whether the runtime is installed; tests skip loudly when it is not.
    pub fn available(self) -> bool {
        Command::new(self.name())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Makes the host able to run this runtime's containers. crun 1.8 refuses to
    /// run on a hybrid cgroup layout while the v2 hierarchy holds a controller
    /// ("cgroups in hybrid mode not supported"); mounting that controller's v1
    /// hierarchy moves it out of v2. runc needs nothing.
    pub fn prepare(self) {
        if self != Runtime::Crun {
            return;
        }
        let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
        let Ok(controllers) = std::fs::read_to_string(unified) else {
            return;
        };
        for c in controllers.split_whitespace() {
            let dir = PathBuf::from("/sys/fs/cgroup").join(c);
            let _ = std::fs::create_dir_all(&dir);
            let out = Command::new("mount")
                .args(["-t", "cgroup", "-o", c, "cgroup"])
                .arg(&dir)
                .output()
                .expect("running mount");
            // Two tests may race to mount it; "busy" means the other one won.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || err.contains("busy") || err.contains("already mounted"),
                "mounting the v1 {c} hierarchy for crun: {err}"
            );
        }
    }

    /// Whether this test can run containers with this runtime (root, installed),
    /// after preparing the host for it; prints why not when it cannot.
    pub fn usable(self) -> bool {
        if !crate::is_root() {
            crate::skip(&format!("needs root to run {} containers", self.name()));
            return false;
        }
        if !self.available() {
            crate::skip(&format!(
                "{} is not installed (scripts/test installs it)",
                self.name()
            ));
            return false;
        }
        self.prepare();
        true
    }

    /// `RUNTIME ARGS...`, output discarded, bounded in time.
    fn quiet(self, args: &[&str]) -> Option<ExitStatus> {
        let mut child = Command::new(self.name())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        wait_timeout(&mut child, Duration::from_secs(20)).ok()
    }
}

/// How a bundle's seccomp profile treats `bind`.
#[derive(Clone, Debug)]
pub enum SeccompBind {
    /// `bind` → `SCMP_ACT_NOTIFY`, listener sent to `listener_path`.
    Notify {
        listener_path: PathBuf,
        metadata: Option<String>,
    },
    /// The same profile shape with `bind` → `SCMP_ACT_LOG` and no agent: the
    /// reference the benchmark compares against.
    NoAgent,
}

/// What goes into a bundle's `config.json`.
#[derive(Clone, Debug)]
pub struct BundleSpec {
    pub args: Vec<String>,
    pub seccomp: SeccompBind,
    pub annotations: Vec<(String, String)>,
    /// Join this network namespace (`/proc/PID/ns/net`); `None` shares the host's.
    pub netns: Option<PathBuf>,
}

impl BundleSpec {
    pub fn new<S: AsRef<str>>(args: &[S], seccomp: SeccompBind) -> BundleSpec {
        BundleSpec {
            args: args.iter().map(|s| s.as_ref().to_owned()).collect(),
            seccomp,
            annotations: Vec::new(),
            netns: None,
        }
    }
}

/// An OCI bundle on disk: `config.json` and a read-only busybox rootfs.
#[derive(Debug)]
pub struct Bundle {
    pub dir: TempDir,
}

impl Bundle {
    pub fn new(spec: &BundleSpec) -> Bundle {
        let dir = TempDir::new("fdgrab-bundle");
        make_rootfs(&dir.path().join("rootfs"));
        let config = config_json(spec);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("writing config.json");
        Bundle { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The busybox applets the tests' containers use.
const APPLETS: &[&str] = &["sh", "httpd", "nc", "true", "sleep", "echo", "cat", "id"];

/// Writes a busybox rootfs (the applets in `APPLETS`, /www/index.html, passwd
/// and group naming uid 1000 `app`) at `root`.
pub fn make_rootfs(root: &Path) {
    for d in ["bin", "proc", "dev", "tmp", "www", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is not installed (apt-get install busybox-static)");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copying busybox");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).expect("applet symlink");
    }
    std::fs::write(root.join("www/index.html"), "served by a container\n").expect("index.html");
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").expect("group");
}

fn config_json(spec: &BundleSpec) -> Value {
    let seccomp = match &spec.seccomp {
        SeccompBind::Notify {
            listener_path,
            metadata,
        } => {
            let mut s = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "listenerPath": listener_path,
                "syscalls": [{"names": ["bind"], "action": "SCMP_ACT_NOTIFY"}],
            });
            if let Some(m) = metadata {
                s["listenerMetadata"] = json!(m);
            }
            s
        }
        SeccompBind::NoAgent => json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["bind"], "action": "SCMP_ACT_LOG"}],
        }),
    };
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(ns) = &spec.netns {
        namespaces.push(json!({"type": "network", "path": ns}));
    }
    let annotations: serde_json::Map<String, Value> = spec
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let no_caps: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 1000, "gid": 1000},
            "args": spec.args,
            "env": ["PATH=/bin", "HOME=/"],
            "cwd": "/",
            "capabilities": {
                "bounding": no_caps, "effective": no_caps, "inheritable": no_caps,
                "permitted": no_caps, "ambient": no_caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "fdgrab-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "namespaces": namespaces,
            "seccomp": seccomp,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        },
        "annotations": annotations
    })
}

/// Output collected from a child's stdout and stderr by reader threads.
#[derive(Clone, Debug, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Appends everything `r` yields, read on a thread of its own until EOF.
    pub fn drain_from(&self, mut r: impl Read + Send + 'static) {
        let buf = Arc::clone(&self.0);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
    }

    /// The text once it has stopped growing (at most 2 s): the reader threads
    /// finish at EOF, right after the writer exits.
    pub fn settled(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.text();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.text();
            if now == last || Instant::now() >= deadline {
                return now;
            }
            last = now;
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits until the text contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text();
            if t.contains(needle) {
                return Ok(t);
            }
            if Instant::now() >= deadline {
                return Err(format!("no {needle:?} within {timeout:?}; got {t:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A container run in the foreground (`RUNTIME run --bundle DIR ID`), its stdio
/// piped. Dropping it kills and deletes the container.
#[derive(Debug)]
pub struct Container {
    pub runtime: Runtime,
    pub id: String,
    child: Child,
    pub stdin: Option<ChildStdin>,
    /// stdout and stderr of the runtime and the container, interleaved.
    pub output: Captured,
}

impl Container {
    pub fn run(runtime: Runtime, bundle: &Bundle, id: &str) -> Container {
        let mut child = Command::new(runtime.name())
            .arg("run")
            .arg("--bundle")
            .arg(bundle.path())
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} run: {e}", runtime.name()));
        let output = Captured::default();
        output.drain_from(child.stdout.take().expect("stdout"));
        output.drain_from(child.stderr.take().expect("stderr"));
        let stdin = child.stdin.take();
        Container {
            runtime,
            id: id.to_owned(),
            child,
            stdin,
            output,
        }
    }

    /// Waits for the runtime (and so the container) to exit; returns its status
    /// and everything it printed.
    pub fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, String), String> {
        let st = self.wait_exit(timeout)?;
        Ok((st, self.output.settled()))
    }

    /// Waits for the runtime to exit, woken by its pidfd the moment it does (the
    /// benchmark times this), and reaps it. Killed after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let exited = fdgrab::PidFd::from_child(&self.child)
            .and_then(|p| p.wait_exit(Some(timeout)))
            .map_err(|e| format!("pidfd of {} run: {e}", self.runtime.name()))?;
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Err(format!(
                "{} container {} still running after {timeout:?}; output {:?}",
                self.runtime.name(),
                self.id,
                self.output.text()
            ));
        }
        self.child.wait().map_err(|e| e.to_string())
    }

    /// Writes a line to the container's stdin (its `read` gets it).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("writing to the container");
        stdin.flush().expect("flush");
    }

    /// Stops the container now.
    pub fn kill(&mut self) {
        let _ = self.runtime.quiet(&["kill", &self.id, "KILL"]);
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.runtime.quiet(&["kill", &self.id, "KILL"]);
        }
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
        let _ = self.runtime.quiet(&["delete", "--force", &self.id]);
    }
}

/// A network namespace with loopback up, held by a `sleep` process; containers
/// join it through `/proc/PID/ns/net`, and the test reaches them from a thread
/// that enters it. Isolates port 80 from every other test.
#[derive(Debug)]
pub struct NetNs {
    holder: Child,
    pub path: PathBuf,
}

impl NetNs {
    pub fn new() -> NetNs {
        let mut holder = Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && echo up && exec sleep 3600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare --net");
        let mut out = BufReader::new(holder.stdout.take().expect("stdout"));
        let line = read_line_timeout(&mut out, TIMEOUT);
        assert_eq!(
            line.as_deref(),
            Ok("up"),
            "network namespace holder did not start"
        );
        let path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        NetNs { holder, path }
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(&self.path).expect("opening the netns");
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the test netns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// `GET /` on 127.0.0.1:`port` inside the namespace: the whole response.
    pub fn http_get(&self, port: u16) -> Result<String, String> {
        self.http_get_addr(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// `GET /` on `addr`, connecting from inside the namespace.
    pub fn http_get_addr(&self, addr: SocketAddr) -> Result<String, String> {
        self.within(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut resp = String::new();
            s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
            Ok(resp)
        })
    }

    /// Retries [`NetNs::http_get`] until it answers or `timeout` passes.
    pub fn http_get_eventually(&self, port: u16, timeout: Duration) -> Result<String, String> {
        self.http_get_addr_eventually(SocketAddr::from(([127, 0, 0, 1], port)), timeout)
    }

    /// Retries [`NetNs::http_get_addr`] until it answers or `timeout` passes.
    pub fn http_get_addr_eventually(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.http_get_addr(addr) {
                Ok(r) => return Ok(r),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(25)),
            }
        }
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A running `fdgrab agent`, started with `NOTIFY_SOCKET` pointing at a datagram
/// socket of ours so that the test waits for its `READY=1` instead of polling.
#[derive(Debug)]
pub struct AgentProc {
    pub child: Child,
    pub pid: i32,
    pub socket: PathBuf,
    pub audit: PathBuf,
    pub log: Captured,
    pub dir: TempDir,
    /// Our end of the agent's `NOTIFY_SOCKET`.
    pub notify: UnixDatagram,
}

impl AgentProc {
    /// `fdgrab -vv agent --socket DIR/agent.sock --audit DIR/audit.jsonl ARGS...`
    pub fn start<S: AsRef<str>>(args: &[S]) -> AgentProc {
        let dir = TempDir::new("fdgrab-agent");
        let socket = dir.path().join("agent.sock");
        let audit = dir.path().join("audit.jsonl");
        AgentProc::start_at(dir, &socket, &audit, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`AgentProc::start`], but logging only warnings (and its ready line):
    /// for the benchmark, so that debug logging does not weigh on the agent side.
    pub fn start_quiet<S: AsRef<str>>(args: &[S]) -> AgentProc {
        let dir = TempDir::new("fdgrab-agent");
        let socket = dir.path().join("agent.sock");
        let audit = dir.path().join("audit.jsonl");
        AgentProc::launch(
            dir,
            &socket,
            &audit,
            args,
            "warn,fdgrab::cmd::agent=info",
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts an agent on `socket`; `Err` carries its output when it exits instead
    /// of becoming ready.
    pub fn start_at<S: AsRef<str>>(
        dir: TempDir,
        socket: &Path,
        audit: &Path,
        args: &[S],
    ) -> Result<AgentProc, String> {
        AgentProc::launch(dir, socket, audit, args, "debug", &[])
    }

    /// Like [`AgentProc::start`], with `RLIMIT_NOFILE` set to `nofile` (soft and
    /// hard) through prlimit(1): the descriptor budget an attack must not exhaust.
    pub fn start_with_nofile<S: AsRef<str>>(args: &[S], nofile: u64) -> AgentProc {
        let limit = format!("--nofile={nofile}:{nofile}");
        AgentProc::start_under(&["prlimit", &limit, "--"], args)
    }

    /// Like [`AgentProc::start`], with the agent run by `wrapper` (e.g. `setpriv
    /// --bounding-set ...`, to give it only some capabilities).
    pub fn start_under<S: AsRef<str>>(wrapper: &[&str], args: &[S]) -> AgentProc {
        let dir = TempDir::new("fdgrab-agent");
        let socket = dir.path().join("agent.sock");
        let audit = dir.path().join("audit.jsonl");
        AgentProc::launch(dir, &socket, &audit, args, "debug", wrapper)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch<S: AsRef<str>>(
        dir: TempDir,
        socket: &Path,
        audit: &Path,
        args: &[S],
        log_filter: &str,
        wrapper: &[&str],
    ) -> Result<AgentProc, String> {
        let notify_path = dir.path().join(unique("notify"));
        let notify = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(bin("fdgrab"));
                c
            }
            None => Command::new(bin("fdgrab")),
        };
        let mut child = cmd
            .arg("-vv")
            .arg("agent")
            .arg("--socket")
            .arg(socket)
            .arg("--audit")
            .arg(audit)
            .args(args.iter().map(|a| a.as_ref()))
            .env("NOTIFY_SOCKET", &notify_path)
            .env("FDGRAB_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning fdgrab agent");
        let log = Captured::default();
        log.drain_from(child.stdout.take().expect("stdout"));
        log.drain_from(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + TIMEOUT;
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == "READY=1") {
                    break;
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "agent exited with {st} before READY=1: {}",
                    log.text()
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "agent not ready within {TIMEOUT:?}: {}",
                    log.text()
                ));
            }
        }
        // The agent logs this after READY=1 is out, so fd counts taken from here
        // on are its steady state.
        log.wait_for("fdgrab agent ready", TIMEOUT)?;
        let pid = child.id() as i32;
        Ok(AgentProc {
            child,
            pid,
            socket: socket.to_owned(),
            audit: audit.to_owned(),
            log,
            dir,
            notify,
        })
    }

    /// systemd notifications the agent sent since the last call (READY=1 excluded).
    pub fn notifications(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        let _ = self.notify.set_nonblocking(true);
        while let Ok(n) = self.notify.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    /// The number `"NAME":N` in the state line the agent logs on SIGUSR1 (one
    /// signal, waiting for the line it causes).
    pub fn state_number(&self, name: &str) -> u64 {
        const LINE: &str = "SIGUSR1: agent state";
        let pid = rustix::process::Pid::from_raw(self.pid).expect("pid");
        let seen = self.log.text().matches(LINE).count();
        rustix::process::kill_process(pid, rustix::process::Signal::USR1).expect("kill");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.log.text();
            if let Some(line) = log.lines().filter(|l| l.contains(LINE)).nth(seen) {
                return line
                    .split(&format!("\"{name}\":"))
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line}"));
            }
            assert!(Instant::now() < deadline, "no state line: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's open descriptors, counted in `/proc/PID/fd`.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The audit log's lines, parsed.
    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether the agent is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the agent (SIGKILL, so nothing of it can answer anything) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Declares each listed test once per runtime, in modules `runc` and `crun`:
/// `per_runtime! { test_name => body_fn }` with `fn body_fn(rt: Runtime)`.
#[macro_export]
macro_rules! per_runtime {
    ($($name:ident => $body:ident),* $(,)?) => {
        mod runc { $( #[test] fn $name() { super::$body($crate::oci::Runtime::Runc) } )* }
        mod crun { $( #[test] fn $name() { super::$body($crate::oci::Runtime::Crun) } )* }
    };
}

/// A `fake-tenant` process: a "container" that hands its bind listener to an
/// agent without a runtime and then binds on command (see that program's docs).
#[derive(Debug)]
pub struct FakeTenant {
    pub child: Child,
    pub pid: i32,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl FakeTenant {
    /// Starts a tenant with container id `id` and waits until it has sent its
    /// listener, then until the agent logs that it supervises it.
    pub fn start(agent: &AgentProc, id: &str) -> FakeTenant {
        FakeTenant::launch(agent, id, false, None)
    }

    /// Like [`FakeTenant::start`] for an agent started with
    /// [`AgentProc::start_quiet`], which does not log each container: returns
    /// once the listener is sent (a bind made before the agent serves it waits
    /// in the kernel's queue).
    pub fn start_quiet(agent: &AgentProc, id: &str) -> FakeTenant {
        let mut t = FakeTenant::spawn_at(&agent.socket, id, false, None);
        let ready = t.line(TIMEOUT);
        assert_eq!(ready["ready"], true, "{ready}");
        t
    }

    /// A tenant that holds a socket from a network namespace of its own and runs
    /// as uid 65534 (`FAKE_TENANT_FOREIGN`; the `foreign PORT` command).
    pub fn start_foreign(agent: &AgentProc, id: &str) -> FakeTenant {
        FakeTenant::launch(agent, id, true, None)
    }

    /// Like [`FakeTenant::start_foreign`], with the foreign netns's
    /// `ip_unprivileged_port_start` set to `port_start`.
    pub fn start_foreign_with_port_start(
        agent: &AgentProc,
        id: &str,
        port_start: u16,
    ) -> FakeTenant {
        FakeTenant::launch(agent, id, true, Some(port_start))
    }

    fn launch(agent: &AgentProc, id: &str, foreign: bool, port_start: Option<u16>) -> FakeTenant {
        let t = FakeTenant::spawn_at(&agent.socket, id, foreign, port_start);
        t.supervised_by(agent, id)
    }

    /// Waits for the tenant's ready line, then for the agent to log that it
    /// supervises `id`.
    fn supervised_by(mut self, agent: &AgentProc, id: &str) -> FakeTenant {
        let ready = self.line(TIMEOUT);
        assert_eq!(ready["ready"], true, "{ready}");
        agent
            .log
            .wait_for(&format!("container={id} "), TIMEOUT)
            .unwrap_or_else(|e| panic!("agent never supervised {id}: {e}"));
        self
    }

    /// Like [`FakeTenant::start`], with `env` set for the tenant (its
    /// `FAKE_TENANT_*` switches).
    pub fn start_with_env(agent: &AgentProc, id: &str, env: &[(&str, &str)]) -> FakeTenant {
        let mut cmd = Command::new(bin("fake-tenant"));
        cmd.envs(env.iter().copied());
        FakeTenant::spawn_command(cmd, &agent.socket, id).supervised_by(agent, id)
    }

    /// Starts `fake-tenant SOCKET ID` without waiting for anything: for a test
    /// that accepts the listener on `socket` itself. `foreign` and `port_start`
    /// as in [`FakeTenant::start_foreign_with_port_start`].
    pub fn spawn_at(socket: &Path, id: &str, foreign: bool, port_start: Option<u16>) -> FakeTenant {
        let mut cmd = Command::new(bin("fake-tenant"));
        if foreign {
            cmd.env("FAKE_TENANT_FOREIGN", "1");
        }
        if let Some(p) = port_start {
            cmd.env("FAKE_TENANT_FOREIGN_PORT_START", p.to_string());
        }
        FakeTenant::spawn_command(cmd, socket, id)
    }

    /// Like [`FakeTenant::spawn_at`], with `allow_bind` as the container's
    /// `org.fdgrab.allow-bind` annotation.
    pub fn spawn_annotated(socket: &Path, id: &str, allow_bind: &str) -> FakeTenant {
        let mut cmd = Command::new(bin("fake-tenant"));
        cmd.env("FAKE_TENANT_ALLOW_BIND", allow_bind);
        FakeTenant::spawn_command(cmd, socket, id)
    }

    /// Like [`FakeTenant::spawn_at`], sending its document in two writes 20 ms
    /// apart, the listener with the second (`FAKE_TENANT_SPLIT`).
    pub fn spawn_split(socket: &Path, id: &str) -> FakeTenant {
        let mut cmd = Command::new(bin("fake-tenant"));
        cmd.env("FAKE_TENANT_SPLIT", "1");
        FakeTenant::spawn_command(cmd, socket, id)
    }

    fn spawn_command(mut cmd: Command, socket: &Path, id: &str) -> FakeTenant {
        let mut child = cmd
            .arg(socket)
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning fake-tenant");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let pid = child.id() as i32;
        FakeTenant {
            child,
            pid,
            stdin,
            stdout,
        }
    }

    /// Sends one command.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("writing to fake-tenant");
        self.stdin.flush().expect("flush");
    }

    /// The next JSON line, within `timeout`.
    pub fn line(&mut self, timeout: Duration) -> Value {
        let l = read_line_timeout(&mut self.stdout, timeout)
            .unwrap_or_else(|e| panic!("fake-tenant {}: {e}", self.pid));
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("fake-tenant said {l:?}: {e}"))
    }

    /// Sends a command and returns its answer.
    pub fn ask(&mut self, line: &str, timeout: Duration) -> Value {
        self.send(line);
        self.line(timeout)
    }

    /// Kills and reaps the tenant.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeTenant {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    crate::status_field(pid, "VmRSS")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A client that connects to the agent at `socket` and sends a document that
/// never ends, in 256-byte writes, until it passes 1 MiB or the agent hangs up.
pub fn trickle_oversized_document(socket: &Path) {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return;
    };
    let mut doc = br#"{"ociVersion":""#.to_vec();
    doc.resize((1 << 20) + 512, b'a');
    for piece in doc.chunks(256) {
        if s.write_all(piece).is_err() {
            return;
        }
    }
}

/// Makes a FIFO at `path` (mode 0600).
pub fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
}

/// An agent started with `args` whose audit sink is a FIFO in its own
/// directory, and that FIFO's reader, opened without blocking and not read
/// until the test reads it: a sink that does not keep up.
pub fn agent_with_fifo_audit(prefix: &str, args: &[&str]) -> (AgentProc, std::fs::File) {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = TempDir::new(prefix);
    let fifo = dir.path().join("audit.fifo");
    let socket = dir.path().join("agent.sock");
    mkfifo(&fifo);
    // Open for reading first, so that the agent's open succeeds.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("FIFO reader");
    let agent = AgentProc::start_at(dir, &socket, &fifo, args).unwrap_or_else(|e| panic!("{e}"));
    (agent, reader)
}

/// Makes a FIFO at `path` and opens it for reading without blocking, its pipe
/// shrunk to one page, so that a few audit lines fill it.
pub fn one_page_fifo_reader(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    mkfifo(path);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("FIFO reader");
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; no memory is passed.
    let size = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ");
    reader
}

/// Appends what the non-blocking `reader` can get now.
pub fn drain_nonblocking(reader: &mut std::fs::File, text: &mut Vec<u8>) {
    let mut buf = [0u8; 65536];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("reading a FIFO: {e}"),
        }
    }
}

/// Reads the non-blocking `reader` into `text` until `done(text)`, for at most
/// 10 s.
pub fn read_until(reader: &mut std::fs::File, text: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(text) && Instant::now() < deadline {
        drain_nonblocking(reader, text);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Counts the lines of `text`.
pub fn line_count(text: &[u8]) -> usize {
    text.iter().filter(|&&b| b == b'\n').count()
}

/// A bundle spec for busybox httpd on port 80 in `ns`, its bind sent to the agent
/// listening at `listener_path` with no narrowing request.
pub fn httpd_spec(listener_path: &Path, ns: &NetNs) -> BundleSpec {
    let mut spec = BundleSpec::new(
        &["httpd", "-f", "-p", "80", "-h", "/www"],
        SeccompBind::Notify {
            listener_path: listener_path.to_owned(),
            metadata: None,
        },
    );
    spec.netns = Some(ns.path.clone());
    spec
}

/// A runtime's connection to the agent, replayed: `doc` sent in `chunk`-byte pieces
/// over a unix stream socket pair with `nfds` eventfds attached to the first piece,
/// then a hang-up, each step read with `StateReader::read_from` as the agent reads.
/// Returns the first answer that is not "pending", or the answer after the hang-up.
/// Shared by the `oci_state` fuzz target and the property tests.
pub fn deliver_state(
    doc: &[u8],
    nfds: usize,
    chunk: usize,
) -> Result<fdgrab::supervise::oci::ReadProgress, fdgrab::supervise::oci::Rejection> {
    use fdgrab::supervise::oci::{ReadProgress, StateReader};
    let (runtime, agent) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    agent.set_nonblocking(true).expect("nonblocking");
    let fds: Vec<_> = (0..nfds)
        .map(|_| rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd"))
        .collect();
    let mut reader = StateReader::new();
    for (i, piece) in doc.chunks(chunk.max(1)).enumerate() {
        let attach: Vec<_> = if i == 0 {
            fds.iter().map(|f| f.as_fd()).collect()
        } else {
            Vec::new()
        };
        let sent = fdgrab::passfd::send_fds(runtime.as_fd(), piece, &attach).expect("send");
        (&runtime).write_all(&piece[sent..]).expect("send the rest");
        match reader.read_from(agent.as_fd()) {
            Ok(ReadProgress::Pending) => {}
            answer => return answer,
        }
    }
    runtime
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    reader.read_from(agent.as_fd())
}
