//! The container clients users run, driven as child processes: podman (with runc
//! or crun) and containerd through `ctr`, on a private containerd instance (its own
//! root, state and socket) that the test starts and stops. Containers use a busybox
//! rootfs, join a network namespace the test owns, and run under a seccomp profile
//! made by `fdgrab profile` from podman's own default.
//!
//! Every container is removed when its guard drops, and a private containerd is
//! stopped only after its tasks are gone, so a failing assertion leaves nothing
//! running.

use crate::oci::{make_rootfs, unique, Captured, Runtime, TempDir};
use crate::{bin, output_timeout, wait_timeout};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// podman's default seccomp profile (package golang-github-containers-common).
pub const PODMAN_DEFAULT_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// Whether `prog --version` runs; prints why not (and fails under
/// `FDGRAB_REQUIRE_ALL`) when it does not.
pub fn tool_usable(prog: &str) -> bool {
    if !crate::is_root() {
        crate::skip(&format!("needs root to run containers with {prog}"));
        return false;
    }
    let ok = Command::new(prog)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::skip(&format!(
            "{prog} is not installed (scripts/test installs it)"
        ));
    }
    ok
}

/// A busybox rootfs (the one the bare runtime tests use) plus `su`, so that a
/// client without a `--user` option can still start the process as uid 1000.
pub fn client_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    make_rootfs(&root);
    for a in ["su", "wget"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).expect("applet symlink");
    }
    root
}

/// Writes `fdgrab profile --from FROM --socket SOCKET` into `dir/NAME` and returns
/// its path. `from` `None` uses the built-in default.
pub fn agent_profile(dir: &Path, name: &str, from: Option<&Path>, socket: &Path) -> PathBuf {
    let mut cmd = Command::new(bin("fdgrab"));
    cmd.arg("profile").arg("--socket").arg(socket);
    if let Some(f) = from {
        cmd.arg("--from").arg(f);
    }
    let out = output_timeout(&mut cmd, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "fdgrab profile failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(name);
    std::fs::write(&path, &out.stdout).expect("writing the profile");
    path
}

/// Runs `prog args`, output discarded, bounded in time; for cleanup.
fn quiet(prog: &str, args: &[&str]) {
    if let Ok(mut child) = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        let _ = wait_timeout(&mut child, Duration::from_secs(20));
    }
}

/// Unmounts everything mounted below `dir` (deepest first), so that removing it
/// works: podman's storage and containerd's snapshotter leave mounts there.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    below.sort_unstable_by(|a, b| b.cmp(a));
    for m in below {
        quiet("umount", &["-l", m]);
    }
}

/// A container run in the foreground by a client; its output captured. Dropping it
/// removes the container.
#[derive(Debug)]
pub struct ClientContainer {
    pub name: String,
    child: Child,
    pub output: Captured,
    /// Removes the container: the client's own `rm -f` / `task rm -f`.
    cleanup: Vec<(String, Vec<String>)>,
}

impl ClientContainer {
    fn spawn(mut cmd: Command, name: String, cleanup: Vec<(String, Vec<String>)>) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let output = Captured::default();
        output.drain_from(child.stdout.take().expect("stdout"));
        output.drain_from(child.stderr.take().expect("stderr"));
        ClientContainer {
            name,
            child,
            output,
            cleanup,
        }
    }

    /// Waits for the client to exit (the container's process ended); its status and
    /// everything printed. Killed after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, String), String> {
        let st = wait_timeout(&mut self.child, timeout)
            .map_err(|e| format!("{}: {e}; output {:?}", self.name, self.output.text()))?;
        Ok((st, self.output.settled()))
    }
}

impl Drop for ClientContainer {
    fn drop(&mut self) {
        for (prog, args) in &self.cleanup {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            quiet(prog, &args);
        }
        let _ = self.child.kill();
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

/// What a test container runs and how: as uid 1000 without capabilities, in a
/// network namespace, under a seccomp profile, with annotations.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub rootfs: PathBuf,
    pub profile: PathBuf,
    pub netns: PathBuf,
    pub annotations: Vec<(String, String)>,
    /// A shell command line, run by `sh -c` as uid 1000.
    pub script: String,
}

/// podman with its storage in a directory of the test's own (`--root`,
/// `--runroot`), so that tests neither see each other's containers nor wait for
/// each other's locks.
#[derive(Debug)]
pub struct Podman {
    pub runtime: Runtime,
    pub dir: TempDir,
}

impl Podman {
    pub fn new(runtime: Runtime) -> Podman {
        Podman {
            runtime,
            dir: TempDir::new("fdgrab-podman"),
        }
    }

    fn base_args(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "--root".into(),
            d.join("root").display().to_string(),
            "--runroot".into(),
            d.join("run").display().to_string(),
            "--tmpdir".into(),
            d.join("tmp").display().to_string(),
            // --rootfs needs no image layers; vfs, unlike overlay, mounts
            // nothing, so conmon's late `podman container cleanup` cannot leave
            // a mount behind in the test's directory.
            "--storage-driver".into(),
            "vfs".into(),
            "--runtime".into(),
            self.runtime.name().into(),
        ]
    }

    /// The OCI runtime podman says it runs container `name` with.
    pub fn runtime_of(&self, name: &str) -> String {
        let mut cmd = Command::new("podman");
        cmd.args(self.base_args())
            .args(["inspect", "--format", "{{.OCIRuntime}}", name]);
        let out = output_timeout(&mut cmd, Duration::from_secs(30));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `podman run --rootfs ROOTFS --security-opt seccomp=PROFILE ...`: uid 1000,
    /// every capability dropped, the test's network namespace. The nofile and nproc
    /// limits are set to values any host allows, since podman's defaults for root
    /// raise them, which needs CAP_SYS_RESOURCE.
    pub fn run(&self, spec: &ClientSpec) -> ClientContainer {
        let name = unique(&format!("fdgrab-podman-{}", self.runtime.name()));
        let mut cmd = Command::new("podman");
        cmd.args(self.base_args()).args([
            "run",
            "--name",
            &name,
            "--user",
            "1000:1000",
            "--cap-drop",
            "all",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--log-driver",
            "none",
        ]);
        cmd.arg("--network")
            .arg(format!("ns:{}", spec.netns.display()));
        cmd.arg("--security-opt")
            .arg(format!("seccomp={}", spec.profile.display()));
        for (k, v) in &spec.annotations {
            cmd.arg("--annotation").arg(format!("{k}={v}"));
        }
        cmd.arg("--rootfs")
            .arg(&spec.rootfs)
            .args(["/bin/sh", "-c", &spec.script]);
        let mut rm = self.base_args();
        rm.extend([
            "rm".into(),
            "-f".into(),
            "-t".into(),
            "0".into(),
            name.clone(),
        ]);
        ClientContainer::spawn(cmd, name, vec![("podman".into(), rm)])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}

/// Which OCI runtime containerd's runc shim started a running container with,
/// told by the state each leaves in the shim's runtime root: runc writes
/// `state.json`, crun `status`. So a test of the crun handler fails if runc ran.
pub fn containerd_runtime_of(namespace: &str, id: &str) -> Option<Runtime> {
    let dir = Path::new("/run/containerd/runc").join(namespace).join(id);
    if dir.join("state.json").exists() {
        Some(Runtime::Runc)
    } else if dir.join("status").exists() {
        Some(Runtime::Crun)
    } else {
        None
    }
}

/// A private containerd: its own root, state, gRPC and ttrpc sockets, and config;
/// stopped (after its tasks) on drop. `extra_config` is appended to the TOML (the
/// CRI test adds its plugin settings there).
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    pub dir: TempDir,
    pub address: PathBuf,
    pub log: Captured,
    /// (namespace, container) pairs to remove before stopping.
    started: std::sync::Mutex<Vec<(String, String)>>,
}

/// The capabilities ctr's default spec grants; dropped one by one, since ctr 1.6
/// has no `--cap-drop ALL`. `CAP_SETUID`/`CAP_SETGID` stay so that `su` can become
/// uid 1000, which drops them all.
const CTR_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

impl Containerd {
    /// Starts containerd with the CRI plugin disabled (`ctr` needs none of it).
    pub fn start() -> Containerd {
        Containerd::start_with(
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            "",
            None,
        )
    }

    /// Starts containerd; `top` goes at the top of its config, `plugins` after it.
    /// With `netns`, containerd (and so every shim and host-network pod it starts)
    /// runs in that network namespace.
    pub fn start_with(top: &str, plugins: &str, netns: Option<&Path>) -> Containerd {
        // A short directory name: shim and containerd socket paths must fit in
        // sun_path (108 bytes).
        let dir = TempDir::new("fdg-ctd");
        let d = dir.path();
        let plugins = plugins.replace("@DIR@", &d.display().to_string());
        let address = d.join("c.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n{top}\n\
             [grpc]\n  address = \"{addr}\"\n[ttrpc]\n  address = \"{addr}.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n{plugins}\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            addr = address.display(),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).expect("containerd config");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let mut child = cmd
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning containerd");
        let log = Captured::default();
        log.drain_from(child.stdout.take().expect("stdout"));
        log.drain_from(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if log.text().contains("containerd successfully booted") {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("containerd exited with {st}: {}", log.text());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("containerd not up within 20 s: {}", log.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Containerd {
            child,
            dir,
            address,
            log,
            started: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// `ctr --address SOCK -n NAMESPACE`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(namespace);
        cmd
    }

    /// Remembers a container to remove before containerd stops.
    pub fn track(&self, namespace: &str, id: &str) {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((namespace.into(), id.into()));
    }

    /// `ctr run --rootfs --seccomp --seccomp-profile PROFILE ...` in the
    /// foreground: the process starts as root with only CAP_SETUID/CAP_SETGID and
    /// becomes uid 1000 through `su` before running the script.
    pub fn run(&self, runtime: Runtime, spec: &ClientSpec) -> ClientContainer {
        let id = unique(&format!("fdgrab-ctr-{}", runtime.name()));
        let mut cmd = self.ctr("default");
        cmd.args(["run", "--rootfs", "--env", "PATH=/bin"]);
        if runtime == Runtime::Crun {
            cmd.args(["--runc-binary", "crun"]);
        }
        for c in CTR_DEFAULT_CAPS {
            cmd.args(["--cap-drop", c]);
        }
        cmd.arg("--with-ns")
            .arg(format!("network:{}", spec.netns.display()));
        cmd.arg("--seccomp")
            .arg("--seccomp-profile")
            .arg(&spec.profile);
        for (k, v) in &spec.annotations {
            cmd.arg("--annotation").arg(format!("{k}={v}"));
        }
        cmd.arg(&spec.rootfs)
            .arg(&id)
            .args(["/bin/su", "app", "-c", &spec.script]);
        self.track("default", &id);
        let addr = self.address.display().to_string();
        let cleanup = vec![
            (
                "ctr".to_owned(),
                ["--address", &addr, "task", "rm", "-f", &id]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            (
                "ctr".to_owned(),
                ["--address", &addr, "container", "rm", &id]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ];
        ClientContainer::spawn(cmd, id, cleanup)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let addr = self.address.display().to_string();
        let started = std::mem::take(&mut *self.started.lock().unwrap_or_else(|e| e.into_inner()));
        for (ns, id) in started {
            quiet(
                "ctr",
                &["--address", &addr, "-n", &ns, "task", "rm", "-f", &id],
            );
            quiet(
                "ctr",
                &["--address", &addr, "-n", &ns, "container", "rm", &id],
            );
        }
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid"),
            rustix::process::Signal::TERM,
        );
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Snapshots the CRI plugin mounted under the root would keep the
        // directory from being removed.
        unmount_under(self.dir.path());
    }
}
