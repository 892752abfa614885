//! Hostile programs against the bind supervisor (`fdgrab run` and the agent):
//! calls that look like a bind but are not one, and binds whose effect is wider
//! than the address they name. Each case failed before its fix.

use fdgrab_testkit::oci::{unique, AgentProc, FakeTenant};
use fdgrab_testkit::{bin, output_timeout, TIMEOUT};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn root_or_skip() -> bool {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("the supervisor tests need root (they drop to uid 65534)");
        return false;
    }
    true
}

/// A runtime's profile traps a number under every ABI it lists, and on x86_64
/// the native `bind` (49) is the i386 `geteuid`. Such a call carries whatever
/// its registers hold; decoding it as a bind would answer `geteuid` with a
/// bind's result (0: "root") and bind a socket the program never asked to bind.
#[cfg(target_arch = "x86_64")]
#[test]
fn agent_call_of_another_abi_with_binds_number_is_not_a_bind() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:86"]);
    let id = unique("abi");
    let mut t = FakeTenant::start_with_env(&agent, &id, &[("FAKE_TENANT_ANY_ABI", "1")]);
    let r = t.ask("int80-geteuid 127.67.0.1 86", TIMEOUT);
    assert_eq!(
        (r["ret"].clone(), r["port"].clone()),
        (65534.into(), 0.into()),
        "the i386 geteuid must run as itself and bind nothing: {r}"
    );
    let line = agent
        .audit_lines()
        .into_iter()
        .find(|l| l["tid"].as_i64().is_some() && l["container_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no audit line for {id}: {}", agent.log.text()));
    assert_eq!(line["decision"], "continue", "{line}");
    // The same tenant's native binds are still served.
    let ok = t.ask("bind 127.67.0.1 86", TIMEOUT);
    assert_eq!(ok["errno"], 0, "{ok}");
}

/// `CMD` in a network namespace of its own (loopback up), so that wildcard
/// binds meet no other test's; its last JSON line.
fn in_netns(cmd: &[String]) -> Value {
    let mut c = Command::new("unshare");
    c.args(["-n", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
        .args(cmd);
    let out = output_timeout(&mut c, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no output; status {:?}, stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// `bind-probe ARGS` under `fdgrab run --user nobody OPTS`, in a network
/// namespace of its own.
fn probe_in_netns(opts: &[&str], args: &[&str]) -> Value {
    let mut cmd = vec![
        bin("fdgrab").to_string_lossy().into_owned(),
        "run".into(),
        "--user".into(),
        "nobody".into(),
    ];
    cmd.extend(opts.iter().map(|s| s.to_string()));
    cmd.push("--".into());
    cmd.push(bin("bind-probe").to_string_lossy().into_owned());
    cmd.extend(args.iter().map(|s| s.to_string()));
    in_netns(&cmd)
}

/// A program under `fdgrab run` allowed every privileged port gets, for each
/// odd bind, the kernel's own answer to the same program holding
/// `CAP_NET_BIND_SERVICE`: lengths, families that do not match the socket,
/// `AF_UNSPEC`, v4-mapped and scoped addresses, sockets already bound, bad fds.
/// MPTCP and UDP-Lite sockets are not in the table: fdgrab binds TCP and UDP
/// only, so they get the kernel's `EACCES`.
#[test]
fn run_answers_odd_binds_as_the_kernel_does_with_the_capability() {
    if !root_or_skip() {
        return;
    }
    let probe = bin("bind-probe").to_string_lossy().into_owned();
    let reference = in_netns(&[
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        "--inh-caps=+net_bind_service".into(),
        "--ambient-caps=+net_bind_service".into(),
        probe,
        "parity".into(),
    ]);
    let supervised = probe_in_netns(&["--allow-bind", "1-1023"], &["parity"]);
    let cases = reference.as_object().expect("a table");
    assert!(cases.len() > 40, "{reference}");
    for (case, want) in cases {
        assert_eq!(
            &supervised[case], want,
            "{case}: supervised {supervised}, kernel with the capability {reference}"
        );
    }
}

/// `[::]` on a dual-stack socket takes `0.0.0.0` as well: a rule for the IPv6
/// wildcard alone must not hand out the IPv4 one through it.
#[test]
fn run_ipv6_wildcard_rule_does_not_grant_the_ipv4_wildcard() {
    if !root_or_skip() {
        return;
    }
    let v6 = ["--allow-bind", "tcp:731@[::]"];
    let dual = probe_in_netns(&v6, &["bind", "tcp6", "::", "731"]);
    assert_eq!(
        dual["errno"],
        libc::EACCES,
        "a dual-stack [::]:731 would hold 0.0.0.0:731 too: {dual}"
    );
    // Even an IPV6_V6ONLY socket: the option can be cleared up to the bind (by
    // another thread, or a process sharing the socket), and a bind cannot be
    // undone.
    let only = probe_in_netns(&v6, &["bind", "tcp6only", "::", "731"]);
    assert_eq!(only["errno"], libc::EACCES, "{only}");
    let both = [
        "--allow-bind",
        "tcp:731@[::]",
        "--allow-bind",
        "tcp:731@0.0.0.0",
    ];
    let dual = probe_in_netns(&both, &["bind", "tcp6", "::", "731"]);
    assert_eq!(
        (dual["errno"].clone(), dual["v4_connect"].clone()),
        (0.into(), true.into()),
        "{dual}"
    );
    // The IPv4 wildcard rule alone never grants [::].
    let v4 = probe_in_netns(
        &["--allow-bind", "tcp:731@0.0.0.0"],
        &["bind", "tcp6only", "::", "731"],
    );
    assert_eq!(v4["errno"], libc::EACCES, "{v4}");
}

/// A negative fd is the kernel's `EBADF`; handed to a raw call as if it were a
/// descriptor it tripped a debug assertion and took the container's worker
/// down, leaving its later binds unanswered.
#[test]
fn agent_bind_on_a_negative_fd_is_the_kernels_ebadf() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:86"]);
    let id = unique("badfd");
    let mut t = FakeTenant::start(&agent, &id);
    for fd in ["-1", "-100", "-2147483648", "999999"] {
        let r = t.ask(&format!("bind-fd {fd} 127.67.0.3 86"), TIMEOUT);
        assert_eq!(r["errno"], libc::EBADF, "bind({fd}, ...): {r}");
    }
    let ok = t.ask("bind 127.67.0.3 86", TIMEOUT);
    assert_eq!(ok["errno"], 0, "the container is still served: {ok}");
}

/// A runtime may send a container id (and the pod name fake-tenant derives from
/// it) of any length up to the document's megabyte. Repeated whole on every
/// audit line of that container, 100 KB ids made 240 KB lines, each nearly
/// filling the audit queue that every container's lines share.
#[test]
fn agent_audit_lines_of_a_container_with_a_huge_id_stay_small() {
    if !root_or_skip() {
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:86"]);
    let id = format!("{}\n\u{1b}[31m\"huge", "i".repeat(100_000));
    let mut t = FakeTenant::spawn_at(&agent.socket, &id, false, None);
    let ready = t.line(TIMEOUT);
    assert_eq!(ready["ready"], true, "{ready}");
    let r = t.ask("bind 127.67.0.4 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let text = loop {
        let text = std::fs::read_to_string(&agent.audit).unwrap_or_default();
        if text.contains("127.67.0.4") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let line = text
        .lines()
        .find(|l| l.contains("127.67.0.4"))
        .unwrap_or_else(|| panic!("no audit line: {}", agent.log.text()));
    assert!(line.len() < 12_000, "an audit line of {} bytes", line.len());
    let v: Value = serde_json::from_str(line).expect("JSON");
    let shown = v["container_id"].as_str().expect("container_id");
    assert!(
        shown.starts_with("iiii") && shown.ends_with(" more bytes]"),
        "{shown:.80}"
    );
    assert!(
        agent.log.text().len() < 40_000,
        "the agent's log repeats the id whole"
    );
}

/// The audit queue is shared by every container: with a sink that does not
/// keep up (a FIFO nobody reads for a while, a stalled log pipe), a container
/// that binds nonstop filled it and its neighbour's decisions were dropped
/// unrecorded. Each container now keeps an equal share.
#[test]
fn agent_audit_flood_of_one_container_leaves_room_for_another() {
    use fdgrab_testkit::oci::drain_nonblocking;
    if !root_or_skip() {
        return;
    }
    let (agent, mut reader) = fdgrab_testkit::oci::agent_with_fifo_audit(
        "fdgrab-audit-share",
        &["--allow-bind", "tcp:86"],
    );
    let mut flood = FakeTenant::start(&agent, &unique("flood"));
    let mut quiet = FakeTenant::start(&agent, &unique("quiet"));
    // About 1.5 MB of lines: several times the pipe and the queue.
    let r = flood.ask("lat 3000 127.67.0.5 86", Duration::from_secs(150));
    assert_eq!(r["errors"], 0, "{r}");
    let r = quiet.ask("bind 127.67.0.6 86", TIMEOUT);
    assert_eq!(r["errno"], 0, "{r}");
    let mut text = Vec::new();
    fdgrab_testkit::oci::read_until(&mut reader, &mut text, |t| {
        String::from_utf8_lossy(t).contains("127.67.0.6")
    });
    drain_nonblocking(&mut reader, &mut text);
    assert!(
        String::from_utf8_lossy(&text).contains("\"127.67.0.6\""),
        "the quiet container's decision was dropped ({} bytes read)",
        text.len()
    );
    assert!(agent.state_number("audit_lines_dropped") > 0);
}

/// `--user 4294967295` is `(uid_t)-1`, "leave unchanged" to the set*id calls:
/// the launch failed at the switch with a bare `EINVAL` and exit status 126,
/// as if the program could not run. It is a bad argument, and refused before
/// anything is made: the `--audit` file was created first.
#[test]
fn run_user_with_the_unset_id_is_a_usage_error() {
    let audit = fdgrab_testkit::test_path("unset-id", "audit.log");
    for spec in ["4294967295", "4294967295:0", "65534:4294967295"] {
        let out = output_timeout(
            fdgrab_testkit::fdgrab()
                .args(["run", "--user", spec, "--audit"])
                .arg(&audit)
                .args(["--", "true"])
                .env_remove("RUST_LOG"),
            TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--user {spec}: {err}");
        assert!(
            err.contains(&format!("--user '{spec}'")) && err.contains("is -1 as a 32-bit id"),
            "{err}"
        );
        let made = audit.exists();
        let _ = std::fs::remove_file(&audit);
        assert!(!made, "--user {spec}: a refused run created its audit file");
    }
    if let Some(dir) = audit.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Runs the command `cmd(FILE)` makes (whose program binds the FUSE file FILE
/// and prints a JSON line) while every close of that file waits for the test
/// (its `FLUSH` held), and returns the line; `None` after a loud skip when
/// FUSE cannot be mounted. Panics if no line comes while the closes wait.
fn answered_while_flushes_wait(tag: &str, cmd: impl FnOnce(&str) -> Command) -> Option<Value> {
    use std::io::BufReader;
    use std::process::Stdio;
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount(tag) else {
        fdgrab_testkit::skip("cannot mount a FUSE file system here");
        return None;
    };
    fs.hold_flushes();
    let mut child = cmd(&fs.file())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning fdgrab");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let line = fdgrab_testkit::read_line_timeout(&mut out, Duration::from_secs(20));
    // Whatever happened, let the closes (fdgrab's and the program's) finish.
    let held = fs.release_flushes();
    let _ = child.kill();
    let _ = fdgrab_testkit::wait_timeout(&mut child, TIMEOUT);
    let line =
        line.unwrap_or_else(|e| panic!("the bind was not answered ({held} flushes held): {e}"));
    assert!(held >= 1, "the copy was closed with its FLUSH held");
    Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
}

/// A bind of a FUSE file: fdgrab's copy is found not to be a socket without
/// asking the file system, but closing the copy is a `FLUSH` request to the
/// server, which the kernel waits out. Made on the thread serving the
/// listener, before the answer, a server that held it held the program in
/// its bind (and every later bind). The close now happens elsewhere.
#[test]
fn run_bind_of_a_fuse_file_is_answered_while_its_flush_waits() {
    if !root_or_skip() {
        return;
    }
    let Some(v) = answered_while_flushes_wait("hold", |file| {
        let mut c = fdgrab_testkit::fdgrab();
        c.args(["run", "--user", "nobody", "--allow-bind"])
            .arg("tcp:171-172@127.66.0.1")
            .arg("--")
            .arg(bin("bind-probe"))
            .args(["file-bind", file, "171"]);
        c
    }) else {
        return;
    };
    assert_eq!(v["errno"], libc::ENOTSOCK, "{v}");
    assert_eq!(v["other_errno"], 0, "{v}");
}

/// [`answered_while_flushes_wait`] under `exec --via bind`, this test process
/// being the old server with a listener on `ip`: the new server is
/// `bind-probe MODE FILE PORT` (its port taken from the old server's).
fn exec_via_bind_while_flushes_wait(tag: &str, ip: &str, mode: &str) -> Option<Value> {
    let old = std::net::TcpListener::bind((ip, 0)).expect("a listener");
    let port = old.local_addr().expect("its address").port().to_string();
    answered_while_flushes_wait(tag, |file| {
        let mut c = fdgrab_testkit::fdgrab();
        c.args(["exec", &std::process::id().to_string()])
            .arg(format!("tcp:{ip}:{port}"))
            .args(["--via", "bind", "--ready-timeout", "30", "--"])
            .arg(bin("bind-probe"))
            .args([mode, file, &port]);
        c
    })
}

/// The same under `exec --via bind`: the new server binds a FUSE file to a
/// taken address. The supervisor, which also forwards signals and waits for
/// readiness, closed its copy on its only thread.
#[test]
fn exec_via_bind_of_a_fuse_file_is_answered_while_its_flush_waits() {
    if !root_or_skip() {
        return;
    }
    let Some(v) = exec_via_bind_while_flushes_wait("hold-exec", "127.66.0.1", "file-bind") else {
        return;
    };
    assert_eq!(v["errno"], libc::ENOTSOCK, "{v}");
}

/// The same for `listen`, which `exec --via bind` also traps: the new server
/// calls it on a FUSE file. The copy of its fd, found not to be a socket, was
/// closed on the supervisor's only thread, so the `listen` (and every signal
/// and the ready gate) waited for the FUSE server's answer to `FLUSH`.
#[test]
fn exec_via_bind_listen_on_a_fuse_file_is_answered_while_its_flush_waits() {
    if !root_or_skip() {
        return;
    }
    let Some(v) = exec_via_bind_while_flushes_wait("hold-listen", "127.66.0.7", "file-listen")
    else {
        return;
    };
    assert_eq!(v["errno"], libc::ENOTSOCK, "{v}");
}

/// A bind of a file is the kernel's `ENOTSOCK` and changes nothing, so once it
/// returns, closing the file releases what the file held (a `flock`). fdgrab's
/// copy, closed off the serving thread so that a FUSE server cannot hold it,
/// was closed after the answer: the program found its own lock still held.
#[test]
fn run_bind_of_a_file_leaves_no_copy_open_past_the_answer() {
    if !root_or_skip() {
        return;
    }
    let dir = fdgrab_testkit::test_path("flock-bind", "dir");
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = dir.join("locked");
    std::fs::write(&file, b"x").expect("a file");
    let v = probe_in_netns(
        &["--allow-bind", "tcp:173@127.66.0.1"],
        &["flock-bind", &file.to_string_lossy(), "50", "173"],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (v["errno"].clone(), v["still_locked"].clone()),
        (libc::ENOTSOCK.into(), 0.into()),
        "{v}"
    );
}

/// A thread that clears `IPV6_V6ONLY` between the supervisor's check and its
/// bind got the IPv4 wildcard through a `[::]`-only rule (38 of 300 tries); a
/// bind cannot be undone, and killing the caller did not help where a forked
/// process shared the socket. `[::]` is now granted only with `0.0.0.0`: no try
/// may ever see its socket bound dual-stack.
#[test]
fn run_v6only_cleared_during_the_bind_never_leaves_a_dual_stack_socket() {
    if !root_or_skip() {
        return;
    }
    const RACE: &str = r#"
import socket, sys, threading
bound = 0
for i in range(300):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    stop = False
    def flip():
        v = 0
        while not stop:
            try:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v)
            except OSError:
                return
            v ^= 1
    t = threading.Thread(target=flip)
    t.start()
    try:
        s.bind(("::", 741))
        ok = True
    except OSError:
        ok = False
    stop = True
    t.join()
    if ok:
        bound += 1
        if s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0:
            print("VIOLATION at try", i, flush=True)
            sys.exit(3)
    s.close()
print("done", bound, flush=True)
"#;
    let mut c = Command::new("unshare");
    c.args(["-n", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
        .arg(bin("fdgrab"))
        .args(["run", "--user", "nobody", "--allow-bind", "tcp:741@[::]"])
        .args(["--", "/usr/bin/python3", "-c", RACE]);
    let out = output_timeout(&mut c, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("VIOLATION"),
        "a [::]-only rule left a dual-stack socket: {stdout}, status {:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("done 0"),
        "status {:?}, stdout {stdout}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `fdgrab run`, whose program binds with its sockaddr on a page of a FUSE
/// file whose daemon takes the read and never answers, then binds a real
/// socket, twice. Each stalled bind is answered ETIMEDOUT at the read
/// deadline, as under the agent, and the program's next bind is served: the
/// first stall in the worker's own thread (given up on and replaced), the
/// second in a reader that is killed, cannot die, and is buried. (Before,
/// `run` read in its only serving thread without a deadline: the first stall
/// held that thread, and every later bind of the program, for as long as the
/// daemon did.) Once the daemon answers, fdgrab exits with the program.
#[test]
fn run_bind_with_its_address_on_a_hung_fuse_page_is_answered_and_the_rest_served() {
    use std::io::BufReader;
    use std::process::Stdio;
    if !root_or_skip() {
        return;
    }
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("run-stall") else {
        fdgrab_testkit::skip("cannot mount a FUSE file system here");
        return;
    };
    fs.hold_reads();
    let mut child = fdgrab_testkit::fdgrab()
        .args(["run", "--allow-bind", "tcp:173-174@127.66.0.1", "--"])
        .arg(bin("bind-probe"))
        .args(["fuse-stall", &fs.page(), "173"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning fdgrab");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let line = fdgrab_testkit::read_line_timeout(&mut out, Duration::from_secs(40));
    // Whatever happened, let the reads (the abandoned worker's, the buried
    // reader's) finish, so that fdgrab can exit.
    let held = fs.release_reads();
    let status = fdgrab_testkit::wait_timeout(&mut child, TIMEOUT);
    let line = line.unwrap_or_else(|e| panic!("no answer ({held} reads held): {e}"));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(
        v["stalls"],
        serde_json::json!([libc::ETIMEDOUT, libc::ETIMEDOUT]),
        "{v}"
    );
    assert_eq!(v["binds"], serde_json::json!([0, 0]), "{v}");
    assert_eq!(held, 2, "the daemon took both reads");
    let status = status.expect("fdgrab exited once the daemon answered");
    assert!(status.success(), "{status:?}");
}

/// `exec --via bind`, whose new server binds with its sockaddr on a page of a
/// FUSE file whose daemon takes the read and never answers: the supervisor's
/// reader, killed at the deadline, cannot die. The bind is answered
/// ETIMEDOUT and the handover refused with the reason while the read is still
/// held (the reader is left to a reaper). Before, the supervisor, fdgrab's
/// only thread, waited in the reap for as long as the daemon did: no answer,
/// no signal forwarded, no ready timeout.
#[test]
fn exec_via_bind_with_its_address_on_a_hung_fuse_page_is_refused_not_stuck() {
    if !root_or_skip() {
        return;
    }
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("exec-stall") else {
        fdgrab_testkit::skip("cannot mount a FUSE file system here");
        return;
    };
    fs.hold_reads();
    // This test process is the old server.
    let old = std::net::TcpListener::bind("127.66.0.1:0").expect("a listener");
    let port = old.local_addr().expect("its address").port();
    let out = output_timeout(
        fdgrab_testkit::fdgrab()
            .args(["exec", &std::process::id().to_string()])
            .arg(format!("tcp:127.66.0.1:{port}"))
            .args(["--via", "bind", "--ready-timeout", "30", "--"])
            .arg(bin("bind-probe"))
            .args(["fuse-bind", &fs.page()]),
        Duration::from_secs(30),
    );
    let held = fs.held_reads();
    fs.release_reads();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("could not be read within 500 ms"), "{err}");
    assert_eq!(held, 1, "the read was still held when fdgrab gave up");
    drop(old);
}
