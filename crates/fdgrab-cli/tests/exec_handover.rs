//! `fdgrab exec` replacing a live server under load: not one request may fail, and
//! once the old server has gone every answer comes from the new one.

use fdgrab_testkit::handover::{
    gunicorn, gunicorn_args, holders, process_exists, write_pid_app, Answer, Exec, Load, Probe,
    Server, TempDir,
};
use fdgrab_testkit::{bin, wait_timeout, TIMEOUT};
use std::collections::BTreeMap;
use std::time::Duration;

struct Case {
    old: Server,
    selectors: Vec<String>,
    extra: Vec<String>,
    new_cmd: Vec<String>,
    probes: Vec<Probe>,
    /// Requests in total, at least.
    total: usize,
    /// Requests after the old server has exited, at least.
    after: usize,
}

fn gunicorn_cmd(dir: &TempDir) -> Vec<String> {
    let g =
        gunicorn().expect("gunicorn is not installed (./scripts/test installs the Debian package)");
    std::iter::once(g.to_string_lossy().into_owned())
        .chain(gunicorn_args(dir.path()))
        .collect()
}

fn activated_cmd(args: &[&str]) -> Vec<String> {
    [
        bin("fdgrab-activated").to_string_lossy().into_owned(),
        "serve".into(),
    ]
    .into_iter()
    .chain(args.iter().map(|s| s.to_string()))
    .collect()
}

/// A handover to a fresh `fdgrab-activated serve` with one selector.
fn activated_case(old: Server, selector: String, probe: Probe, total: usize) -> Case {
    Case {
        selectors: vec![selector],
        extra: vec![],
        new_cmd: activated_cmd(&[]),
        probes: vec![probe],
        total,
        after: total / 4,
        old,
    }
}

fn tally(answers: &[Answer]) -> BTreeMap<i32, usize> {
    let mut by = BTreeMap::new();
    for a in answers.iter().flatten() {
        *by.entry(*a).or_insert(0) += 1;
    }
    by
}

/// Runs the handover under load and checks zero failures and a complete switch.
/// Returns the running `fdgrab exec` (foreground) for further checks.
fn zero_downtime(mut case: Case) -> Exec {
    let old_pid = case.old.pid;
    let load = Load::start(case.probes.clone(), case.total * 20);
    load.wait_for(case.total / 5, TIMEOUT);

    let mut args = vec![old_pid.to_string()];
    args.extend(case.selectors.iter().cloned());
    args.extend(["--signal-old".to_string(), "TERM".to_string()]);
    args.extend(case.extra.iter().cloned());
    args.push("--".into());
    args.extend(case.new_cmd.iter().cloned());
    let exec = Exec::start(&args);
    let new_pid = exec.new_pid;
    assert_ne!(new_pid, old_pid);

    let st = case.old.wait_exit(TIMEOUT);
    assert!(
        st.success(),
        "old server {old_pid} did not exit cleanly on SIGTERM: {st:?}"
    );
    let cut = load.count();
    load.wait_for(case.total.max(cut + case.after), Duration::from_secs(120));
    let answers = load.finish();

    let failures: Vec<(usize, &String)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.as_ref().err().map(|e| (i, e)))
        .collect();
    let by = tally(&answers);
    eprintln!(
        "{} requests, answered by {by:?} (old {old_pid}, new {new_pid}); old server exited after request {cut}",
        answers.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        answers.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        answers.len() >= case.total,
        "only {} requests",
        answers.len()
    );
    assert!(
        by.get(&old_pid).copied().unwrap_or(0) > 0,
        "the old server answered nothing: {by:?}"
    );
    // The one request that may have been in flight when the old server exited is
    // skipped; everything after it must come from the new server.
    let late: Vec<i32> = answers[cut + 1..]
        .iter()
        .flatten()
        .copied()
        .filter(|&p| p != new_pid)
        .collect();
    assert!(
        late.is_empty(),
        "after the old server exited, {} answers came from {late:?}, not {new_pid}",
        late.len()
    );
    assert!(
        answers.len() - cut > case.after.min(100),
        "too few requests after the switch"
    );
    exec
}

/// The foreground `fdgrab exec` passes SIGTERM on (the new server is in its own
/// process group, so only forwarding can reach it) and exits with its status.
fn stop_through_fdgrab(mut exec: Exec) {
    let new_pid = exec.new_pid;
    exec.signal(libc::SIGTERM);
    let st =
        wait_timeout(&mut exec.child, TIMEOUT).expect("fdgrab exec did not exit after SIGTERM");
    assert!(
        st.success(),
        "fdgrab exec should exit with the new server's status (0 after SIGTERM): {st:?}"
    );
    assert!(
        !process_exists(new_pid),
        "new server {new_pid} still running after fdgrab forwarded SIGTERM"
    );
}

/// gunicorn bound to `binds`, replaced under load by a new gunicorn. The app
/// directory is returned with the running `fdgrab exec` so that it outlives both.
fn gunicorn_handover(
    binds: &[&str],
    selectors: fn(&Server) -> Vec<String>,
    extra: &[&str],
    total: usize,
) -> (Exec, TempDir) {
    let dir = TempDir::new("exec-gunicorn");
    write_pid_app(dir.path());
    let old = Server::gunicorn(dir.path(), binds);
    assert_eq!(
        old.addrs.len(),
        binds.len(),
        "gunicorn listens on {:?}",
        old.addrs
    );
    let probes = old
        .addrs
        .iter()
        .map(|a| Probe::Http(a.parse().expect("addr")))
        .collect();
    let case = Case {
        selectors: selectors(&old),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        new_cmd: gunicorn_cmd(&dir),
        probes,
        total,
        after: total / 4,
        old,
    };
    (zero_downtime(case), dir)
}

#[test]
fn exec_zero_downtime_gunicorn_tcp4() {
    let (exec, _dir) = gunicorn_handover(
        &["127.0.0.1:0"],
        |old| vec![format!("tcp:127.0.0.1:{}", old.port(0))],
        &[],
        2000,
    );
    stop_through_fdgrab(exec);
}

#[test]
fn exec_zero_downtime_gunicorn_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        fdgrab_testkit::skip("no IPv6 loopback in this network namespace");
        return;
    }
    let (exec, _dir) = gunicorn_handover(
        &["[::1]:0"],
        |old| vec![format!("tcp:[::1]:{}", old.port(0))],
        &[],
        1000,
    );
    stop_through_fdgrab(exec);
}

#[test]
fn exec_zero_downtime_two_sockets_gunicorn() {
    let (exec, _dir) = gunicorn_handover(
        &["127.0.0.1:0", "127.0.0.1:0"],
        |old| {
            vec![
                format!("tcp:*:{}", old.port(0)),
                format!("tcp:127.0.0.1:{}", old.port(1)),
            ]
        },
        &["--name", "web", "--name", "admin"],
        1000,
    );
    assert!(
        exec.log
            .iter()
            .any(|l| l.contains("fd 3 = tcp") && l.contains("fd 4 = tcp")),
        "both sockets should be handed over: {:?}",
        exec.log
    );
    stop_through_fdgrab(exec);
}

#[test]
fn exec_zero_downtime_udp() {
    let old = Server::activated(&["--listen", "udp:127.0.0.1:0"]);
    let (addr, selector) = (
        old.addrs[0].parse().expect("addr"),
        format!("udp:127.0.0.1:{}", old.port(0)),
    );
    let exec = zero_downtime(activated_case(old, selector, Probe::Udp(addr), 2000));
    assert_taken_by(&exec, "pidfd_getfd");
    stop_through_fdgrab(exec);
}

/// The ready line says which mechanism took every socket.
fn assert_taken_by(exec: &Exec, method: &str) {
    let ready = exec
        .log
        .iter()
        .find(|l| l.contains(" is ready"))
        .expect("a ready line");
    let said: Vec<&str> = ready
        .split(", taken by ")
        .skip(1)
        .map(|rest| rest.split(')').next().unwrap_or(rest))
        .collect();
    assert!(
        !said.is_empty() && said.iter().all(|m| *m == method),
        "every socket should be taken by {method}: {ready}"
    );
}

/// The sockets can also be taken by ptrace injection (kernels without pidfd_getfd).
#[test]
fn exec_zero_downtime_by_ptrace_backend() {
    let old = Server::activated(&["--listen", "tcp:127.0.0.1:0"]);
    let (addr, selector) = (
        old.addrs[0].parse().expect("addr"),
        format!("tcp:127.0.0.1:{}", old.port(0)),
    );
    let mut case = activated_case(old, selector, Probe::Tcp(addr), 2000);
    case.extra = vec!["--backend".into(), "ptrace".into()];
    let exec = zero_downtime(case);
    // If --backend were ignored, pidfd_getfd would have taken the socket instead.
    assert_taken_by(&exec, "ptrace");
    stop_through_fdgrab(exec);
}

/// A unix stream listener or a bound unix datagram socket, selected by path.
fn unix_handover(dgram: bool) {
    let dir = TempDir::new("exec-unix");
    let path = dir.path().join("app.sock");
    let kind = if dgram { "unixdgram" } else { "unix" };
    let old = Server::activated(&["--listen", &format!("{kind}:{}", path.display())]);
    let probe = if dgram {
        Probe::UnixDgram {
            server: path.clone(),
            dir: dir.path().to_path_buf(),
        }
    } else {
        Probe::Unix(path.clone())
    };
    let selector = format!("unix:{}", path.display());
    let exec = zero_downtime(activated_case(
        old,
        selector,
        probe,
        if dgram { 1000 } else { 2000 },
    ));
    stop_through_fdgrab(exec);
}

#[test]
fn exec_zero_downtime_unix_listener() {
    unix_handover(false);
}

#[test]
fn exec_zero_downtime_unix_datagram() {
    unix_handover(true);
}

/// Three SO_REUSEPORT listeners share a port; naming one by number takes all three.
/// A member left behind would take its share of connections down with the old
/// server, so zero failures also proves the whole group moved.
#[test]
fn exec_reuseport_group_moves_whole() {
    let old = Server::activated(&["--listen", "tcp:127.0.0.1:0", "--reuseport", "3"]);
    let report = old.report.clone().expect("report");
    let socks = report["sockets"].as_array().expect("sockets");
    assert_eq!(socks.len(), 3);
    let first_fd = socks[0]["fd"].as_i64().expect("fd");
    let addr = old.addrs[0].parse().expect("addr");
    let mut exec = zero_downtime(activated_case(
        old,
        format!("fd:{first_fd}"),
        Probe::Tcp(addr),
        2000,
    ));
    let line = fdgrab_testkit::read_line_timeout(exec.stdout.as_mut().expect("stdout"), TIMEOUT)
        .expect("report");
    let new: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(
        new["listen_fds"], "3",
        "all three group members should be passed: {new}"
    );
    assert_eq!(
        new["listen_fdnames"],
        format!("fd-{first_fd}:fd-{first_fd}:fd-{first_fd}")
    );
    stop_through_fdgrab(exec);
}

/// A server that never sends READY=1 counts as ready after --ready-timeout if alive.
#[test]
fn exec_ready_timeout_without_notification() {
    let old = Server::activated(&["--listen", "tcp:127.0.0.1:0"]);
    let addr = old.addrs[0].parse().expect("addr");
    let exec = zero_downtime(Case {
        selectors: vec![format!("tcp:127.0.0.1:{}", old.port(0))],
        extra: vec!["--ready-timeout".into(), "300ms".into()],
        new_cmd: activated_cmd(&["--ready", "never"]),
        probes: vec![Probe::Tcp(addr)],
        total: 1000,
        after: 300,
        old,
    });
    assert!(
        exec.log
            .iter()
            .any(|l| l.contains("still running after 300ms")),
        "{:?}",
        exec.log
    );
    stop_through_fdgrab(exec);
}

/// --detach returns once the new server is ready and prints its pid; the new server
/// keeps serving on its own, in its own session.
#[test]
fn exec_detach_returns_once_ready() {
    let mut old = Server::activated(&["--listen", "tcp:127.0.0.1:0"]);
    let addr = old.addrs[0].parse().expect("addr");
    let mut args: Vec<String> = vec![
        "exec".into(),
        old.pid.to_string(),
        format!("tcp:127.0.0.1:{}", old.port(0)),
    ];
    args.extend(["--signal-old", "TERM", "--detach", "--"].map(String::from));
    args.extend(activated_cmd(&["--ready", "delay:200"]));
    // The detached server inherits fdgrab's stdout and stderr, so they go to files:
    // pipes would stay open for as long as it runs.
    let dir = TempDir::new("exec-detach");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = fdgrab_testkit::fdgrab()
        .args(&args[..])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("out"))
        .stderr(std::fs::File::create(&err_path).expect("err"))
        .spawn()
        .expect("spawn fdgrab");
    let st = wait_timeout(&mut child, TIMEOUT).expect("fdgrab exec --detach did not return");
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(st.success(), "fdgrab exec --detach failed: {stderr}");
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let new_pid: i32 = stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no pid printed: {stdout:?} {stderr}"));
    assert!(old.wait_exit(TIMEOUT).success());
    assert_eq!(Probe::Tcp(addr).ask(), Ok(new_pid));
    let sid = std::fs::read_to_string(format!("/proc/{new_pid}/stat")).expect("stat");
    let fields: Vec<&str> = sid
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        new_pid.to_string(),
        "a detached server leads its own session: {fields:?}"
    );
    let link = fdgrab_testkit::handover::fd_table(new_pid)
        .get(&3)
        .cloned()
        .expect("fd 3");
    assert_eq!(
        holders(&link),
        vec![new_pid],
        "only the new server holds the socket now"
    );
    if let Some(p) = rustix::process::Pid::from_raw(new_pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
}

/// --steal closes the sockets in the old server once the new one is ready: the old
/// process lives on without them (nothing else of it changes), and from then on only
/// the new server answers. No request fails on the way.
#[test]
fn exec_steal_closes_sockets_in_old_server() {
    let old = Server::activated(&["--listen", "tcp:127.0.0.1:0", "--listen", "udp:127.0.0.1:0"]);
    let report = old.report.clone().expect("report");
    let tcp_fd = report["sockets"][0]["fd"].as_i64().expect("fd") as i32;
    let before = fdgrab_testkit::handover::fd_table(old.pid);
    let link = before.get(&tcp_fd).cloned().expect("tcp fd");
    let addr = old.addrs[0].parse().expect("addr");
    let load = Load::start(vec![Probe::Tcp(addr)], 40_000);
    load.wait_for(300, TIMEOUT);
    let args: Vec<String> = [
        old.pid.to_string(),
        format!("tcp:127.0.0.1:{}", old.port(0)),
        "--steal".into(),
        "--".into(),
    ]
    .into_iter()
    .chain(activated_cmd(&[]))
    .collect();
    let exec = Exec::start(&args);
    // The "closed" line comes before the "ready" line Exec waits for.
    assert!(
        exec.log
            .iter()
            .any(|l| l.contains(&format!("closed fd {tcp_fd} in old server {}", old.pid))),
        "{:?}",
        exec.log
    );
    let cut = load.count();
    load.wait_for(cut + 500, TIMEOUT);
    let answers = load.finish();
    let failures: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let late: Vec<i32> = answers[cut + 1..]
        .iter()
        .flatten()
        .copied()
        .filter(|&p| p != exec.new_pid)
        .collect();
    assert!(
        late.is_empty(),
        "after the steal {} answers came from {late:?}",
        late.len()
    );
    assert!(
        process_exists(old.pid),
        "the old server was not signalled and must still run"
    );
    let mut expected = before.clone();
    expected.remove(&tcp_fd);
    assert_eq!(
        fdgrab_testkit::handover::fd_table(old.pid),
        expected,
        "only the stolen fd may be gone"
    );
    assert_eq!(holders(&link), vec![exec.new_pid]);
    stop_through_fdgrab(exec);
}
