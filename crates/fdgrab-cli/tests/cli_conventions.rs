//! Conventions a user holds the command to: quiet EPIPE, log lines that suit where
//! they go, completions that know the enumerations, man pages that stand alone, and
//! exit codes documented once and shown the same everywhere.

use fdgrab_testkit::{bin, fdgrab, output_timeout, run_fdgrab, Target, TIMEOUT};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Runs fdgrab with stdout on a pipe whose read end is already closed, so its first
/// write fails with EPIPE, as under `fdgrab ... | head` once head has exited.
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    drop(r);
    let mut child = fdgrab()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fdgrab");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("fdgrab {args:?} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Output {
        status,
        stdout: Vec::new(),
        stderr: reader.join().expect("stderr reader"),
    }
}

#[test]
fn closed_stdout_ends_quietly_with_141() {
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file").to_string();
    for args in [
        vec!["ls", pid.as_str()],
        vec!["ls", "--json", pid.as_str()],
        vec!["cat", pid.as_str(), file.as_str()],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["man", "json"],
        vec!["profile"],
        vec!["--version"],
        vec!["--help"],
    ] {
        let out = run_into_closed_pipe(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} must print nothing: {err}");
    }
    // `send --json` prints its line after the fds went out, to a socket nobody
    // accepts from: only the write to stdout meets EPIPE.
    let dir = scratch("epipe");
    let sock = dir.join("s");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let args = ["send", pid.as_str(), file.as_str(), "--to"];
    let mut args: Vec<&str> = args.to_vec();
    let sock = sock.to_string_lossy().into_owned();
    args.extend([sock.as_str(), "--json"]);
    let out = run_into_closed_pipe(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "send --json: {err}");
    assert!(err.is_empty(), "send --json must print nothing: {err}");
    let _ = std::fs::remove_dir_all(&dir);
    // The same commands with a reader do write: the test above is about EPIPE only.
    let out = run_fdgrab(["ls", &pid]);
    assert!(out.status.success() && !out.stdout.is_empty());
}

/// A command that logs at trace level; the target's fd 0 is a pipe.
fn traced_get(t: &Target) -> Vec<String> {
    vec![
        "-vvv".into(),
        "get".into(),
        t.pid.to_string(),
        "0".into(),
        "--".into(),
        "true".into(),
    ]
}

#[test]
fn log_lines_are_plain_text_unless_stderr_is_a_terminal() {
    let t = Target::spawn(["zoo"]);
    let out = output_timeout(
        fdgrab().args(traced_get(&t)).env_remove("NO_COLOR"),
        TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("TRACE") && err.contains("pidfd_open"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "no ANSI escapes into a pipe: {err:?}"
    );

    // On a terminal (script(1) gives fdgrab a pty for stdout and stderr): coloured,
    // unless NO_COLOR is set.
    let line = std::iter::once(bin("fdgrab").to_string_lossy().into_owned())
        .chain(traced_get(&t))
        .collect::<Vec<_>>()
        .join(" ");
    for (no_color, want_ansi) in [(false, true), (true, false)] {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = output_timeout(&mut cmd, TIMEOUT);
        let tty = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{tty}");
        assert!(tty.contains("pidfd_open"), "{tty}");
        assert_eq!(
            tty.contains('\x1b'),
            want_ansi,
            "NO_COLOR={no_color}: {tty:?}"
        );
    }
}

#[test]
fn json_logs_on_request() {
    let t = Target::spawn(["zoo"]);
    let flag = output_timeout(
        fdgrab()
            .arg("--log-format")
            .arg("json")
            .args(traced_get(&t)),
        TIMEOUT,
    );
    let env = output_timeout(
        fdgrab()
            .env("FDGRAB_LOG_FORMAT", "json")
            .args(traced_get(&t)),
        TIMEOUT,
    );
    for out in [flag, env] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(!lines.is_empty(), "trace logging printed nothing");
        for l in lines {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v["level"].is_string() && v["target"].is_string(), "{l}");
            assert!(v["fields"]["message"].is_string(), "{l}");
        }
        assert!(err.contains("\"pidfd_open\""), "{err}");
    }
    let bad = run_fdgrab(["--log-format", "xml", "ls", "1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("json"));
}

/// What bash completes after `fdgrab get 1 0 --backend `, through the generated script.
#[test]
fn completions_know_the_backends() {
    let out = run_fdgrab(["completions", "bash"]);
    assert!(out.status.success());
    let dir = scratch("completions");
    let script = dir.join("fdgrab.bash");
    std::fs::write(&script, &out.stdout).expect("write script");
    let probe = format!(
        "source {}; COMP_WORDS=(fdgrab get 1 0 --backend ''); COMP_CWORD=5; \
         _fdgrab fdgrab '' --backend; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = output_timeout(Command::new("bash").args(["-c", &probe]), TIMEOUT);
    let offered: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want: BTreeSet<String> = ["auto", "pidfd", "ptrace"].map(String::from).into();
    assert_eq!(
        offered,
        want,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = run_fdgrab(["completions", shell]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(
            text.contains("pidfd") && text.contains("ptrace") && text.contains("json"),
            "{shell} script lacks --backend or --log-format values"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fdgrab-conv-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// roff text as a reader sees it, near enough to compare with `--help`.
fn unroff(s: &str) -> String {
    s.replace("\\-", "-")
        .replace("\\e", "\\")
        .replace("\\&", "")
}

#[test]
fn man_pages_stand_alone() {
    let root = scratch("man");
    let man1 = root.join("man1");
    let out = run_fdgrab(["man", "--dir", &man1.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages = BTreeSet::new();
    for (dir, section) in [(&man1, "1"), (&root.join("man5"), "5")] {
        for e in std::fs::read_dir(dir).expect("man dir") {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            assert!(
                name.ends_with(&format!(".{section}")),
                "{name} in man{section}"
            );
            pages.insert(name.replace('.', "("));
        }
    }
    for want in [
        "fdgrab(1",
        "fdgrab-ls(1",
        "fdgrab-policy(5",
        "fdgrab-json(5",
    ] {
        assert!(pages.contains(want), "{want}) missing: {pages:?}");
    }
    assert!(!pages.contains("fdgrab-help(1"), "no page for clap's help");

    let mut texts = Vec::new();
    for p in &pages {
        let (name, section) = p.split_once('(').expect("name(section");
        let file = root
            .join(format!("man{section}"))
            .join(format!("{name}.{section}"));
        let text = unroff(&std::fs::read_to_string(&file).expect("page"));
        assert!(text.contains("\n.TH ") || text.starts_with(".TH "), "{p})");
        if section == "1" {
            for sh in ["EXIT STATUS", "ENVIRONMENT", "SEE ALSO", "FDGRAB_LOG"] {
                assert!(text.contains(sh), "{p}) lacks {sh}");
            }
        }
        texts.push((p.clone(), text));
    }
    // Every fdgrab page a page points to exists.
    for (p, text) in &texts {
        for (i, _) in text.match_indices("fdgrab-") {
            let rest = &text[i..];
            let Some(end) = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) else {
                continue;
            };
            let (name, after) = rest.split_at(end);
            let after = after.trim_start_matches("\\fR").trim_start_matches("\\fP");
            if let Some(sec) = after.strip_prefix('(').and_then(|a| a.get(..1)) {
                let link = format!("{name}({sec}");
                assert!(
                    pages.contains(&link),
                    "{p}) links {link}), which does not exist"
                );
            }
        }
    }
    // One page at a time, by name; an unknown one is a usage error listing them.
    let out = run_fdgrab(["man", "policy"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH fdgrab-policy 5"));
    let out = run_fdgrab(["man", "nonesuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy, json"));
    // The policy page carries the format itself, not a pointer to the README.
    let policy = &texts
        .iter()
        .find(|(p, _)| p == "fdgrab-policy(5")
        .expect("policy")
        .1;
    assert!(policy.contains("[[bind]]") && policy.contains("tcp:80"));
    assert!(!policy.contains("README"));
    let _ = std::fs::remove_dir_all(&root);
}

/// The exit-status entries of `fdgrab --help`: (code, meaning), with wrapped
/// continuation lines joined.
fn help_exit_codes() -> Vec<(String, String)> {
    let out = run_fdgrab(["--help"]);
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = help
        .split("Exit status:\n")
        .nth(1)
        .expect("exit status section");
    let mut codes: Vec<(String, String)> = Vec::new();
    for line in section.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match trimmed.split_once("  ") {
            Some((code, meaning)) if indent == 2 && code.trim().parse::<u8>().is_ok() => {
                codes.push((code.trim().to_owned(), meaning.trim().to_owned()))
            }
            _ if indent > 2 && !codes.is_empty() => {
                let last = codes.last_mut().expect("an entry");
                last.1.push(' ');
                last.1.push_str(trimmed);
            }
            _ => break,
        }
    }
    codes
}

#[test]
fn exit_codes_are_shown_the_same_everywhere() {
    let codes = help_exit_codes();
    let numbers: Vec<&str> = codes.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(&numbers[..6], ["0", "1", "2", "3", "4", "5"]);

    let out = run_fdgrab(["man", "get"]);
    let page = unroff(&String::from_utf8_lossy(&out.stdout));
    let status = page
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .and_then(|s| s.split(".SH").next())
        .expect("EXIT STATUS section");
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/exit-codes.md");
    let doc = std::fs::read_to_string(&doc).expect("docs/exit-codes.md");
    for (code, meaning) in &codes {
        assert!(
            status.contains(&format!(".TP\n{code}\n{meaning}\n")),
            "man page's code {code} differs from --help: {meaning}"
        );
        assert!(
            doc.contains(&format!("| {code} | {meaning} |")),
            "docs/exit-codes.md's code {code} differs from --help: {meaning}"
        );
    }
    // And the codes are real: a usage error is 2, a pid no process has is 5.
    assert_eq!(run_fdgrab(["ls", "0"]).status.code(), Some(2));
    let mut gone = Command::new("true").spawn().expect("true");
    let pid = gone.id().to_string();
    gone.wait().expect("reap");
    assert_eq!(run_fdgrab(["ls", &pid]).status.code(), Some(5));
}

/// Without -v, FDGRAB_LOG or --log-format no log subscriber is set up, yet warnings
/// still reach stderr as one plain line (here the agent's empty-policy warning).
#[test]
fn warnings_print_without_logging_setup() {
    use std::io::BufRead;
    let dir = scratch("warn");
    let sock = dir.join("agent.sock");
    let mut child = fdgrab()
        .args(["agent", "--socket", &sock.to_string_lossy()])
        .env_remove("FDGRAB_LOG")
        .env_remove("FDGRAB_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(TIMEOUT);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let line = line.expect("the agent printed no warning");
    assert!(line.starts_with("fdgrab: WARN "), "{line:?}");
    assert!(line.contains("empty policy"), "{line:?}");
    assert!(!line.contains('\x1b'), "{line:?}");
}

/// fdgrab-json(5) documents the schema version `ls --json` really prints, and every
/// field of an fd object it prints.
#[test]
fn json_man_page_matches_ls_output() {
    let t = Target::spawn(["zoo"]);
    let out = run_fdgrab(["ls", "--json", &t.pid.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls JSON");
    let version = doc["schema_version"].as_u64().expect("schema_version");
    let page = unroff(&String::from_utf8_lossy(
        &run_fdgrab(["man", "json"]).stdout,
    ));
    assert!(
        page.contains(&format!("(SCHEMA VERSION {version})"))
            && page.contains(&format!("\"schema_version\": {version}")),
        "fdgrab-json(5) does not document schema {version}"
    );
    let fds = doc["processes"][0]["fds"].as_array().expect("fds");
    for fd in fds {
        for key in fd.as_object().expect("fd object").keys() {
            if key.ends_with("_bytes") {
                continue;
            }
            assert!(
                page.contains(&format!("\\fB{key}\\fR")),
                "fdgrab-json(5) does not describe the field {key}"
            );
        }
    }
}

/// A warning to a stderr nobody reads any more (a hung-up terminal, a closed pipe)
/// is dropped, not turned into a panic: the agent warns about its empty policy
/// before it creates its socket, so a socket means it survived the warning.
#[test]
fn warnings_to_a_dead_stderr_do_not_kill() {
    let dir = scratch("deadstderr");
    let sock = dir.join("agent.sock");
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    drop(r);
    let mut child = fdgrab()
        .args(["agent", "--socket", &sock.to_string_lossy()])
        .env_remove("FDGRAB_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(w))
        .spawn()
        .expect("spawn agent");
    let start = Instant::now();
    let exited = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if sock.exists() || start.elapsed() > TIMEOUT {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let appeared = sock.exists();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        exited, None,
        "the agent died after warning into a dead stderr"
    );
    assert!(appeared, "the agent never got past its warning");
}

/// Each command's own help opens with the summary `fdgrab --help` lists for it. A
/// doc comment on a flattened argument struct once replaced that text in nine
/// commands (and so in their man pages) with a line about `--backend` or `--force`.
#[test]
fn every_command_help_opens_with_its_own_summary() {
    let top = run_fdgrab(["--help"]);
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    let listed: Vec<(String, String)> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let l = l.trim();
            let (name, summary) = l.split_once(char::is_whitespace)?;
            Some((name.to_string(), summary.trim().to_string()))
        })
        .filter(|(name, _)| name != "help")
        .collect();
    assert!(listed.len() >= 12, "commands listed: {listed:?}");
    for (name, summary) in listed {
        let out = run_fdgrab([name.as_str(), "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        let first = help.lines().next().unwrap_or_default();
        // The listing drops a final period; the command's own help keeps it.
        assert_eq!(
            first.trim_end_matches('.'),
            summary.trim_end_matches('.'),
            "fdgrab {name} --help"
        );
    }
}

/// `--help` and `--version` are output like any other: into a closed pipe they end
/// quietly with 141, into a full device with an error and 1, never with 0.
#[test]
fn help_and_version_report_a_failed_write() {
    for args in [vec!["--version"], vec!["--help"], vec!["get", "--help"]] {
        let out = run_into_closed_pipe(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} must print nothing: {err}");
        let out = output_timeout(
            Command::new("sh")
                .args(["-c", "exec \"$@\" >/dev/full", "sh"])
                .arg(bin("fdgrab"))
                .args(&args),
            TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} > /dev/full: {err}");
        assert!(err.contains("No space left"), "{args:?}: {err}");
    }
}

/// Runs fdgrab with stderr on a pipe whose read end is already closed (its reader,
/// a log collector or `2>&1 | head`, went away); returns the status.
fn status_with_dead_stderr(args: &[&str]) -> std::process::ExitStatus {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    drop(r);
    let mut child = fdgrab()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(w))
        .spawn()
        .expect("spawn fdgrab");
    fdgrab_testkit::wait_timeout(&mut child, TIMEOUT).expect("fdgrab ended")
}

/// An error or a warning that cannot be written because stderr's reader went away
/// changes nothing else: the error keeps its documented exit code (not a panic's
/// 101), and a command that warns still does its work (`steal` of a listening
/// socket warns before it takes it).
#[test]
fn errors_and_warnings_to_a_dead_stderr_keep_the_exit_code() {
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let gone_pid = gone.id().to_string();
    gone.wait().expect("reap true");
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file").to_string();
    for (args, code) in [
        (vec!["get", gone_pid.as_str(), "3", "--", "true"], 5),
        // `ls` reports the processes it skipped on a line of its own.
        (vec!["ls", gone_pid.as_str()], 5),
        (
            vec!["get", pid.as_str(), file.as_str(), "--", "/nonexistent/cmd"],
            127,
        ),
    ] {
        let status = status_with_dead_stderr(&args);
        assert_eq!(status.code(), Some(code), "{args:?}: {status:?}");
    }
    let listener = t.fd_labelled("tcp-listen");
    let fd = listener.to_string();
    let status = status_with_dead_stderr(&["steal", &pid, &fd, "--", "true"]);
    assert_eq!(status.code(), Some(0), "steal: {status:?}");
    assert!(
        std::fs::read_link(format!("/proc/{}/fd/{listener}", t.pid)).is_err(),
        "steal did not take the listener"
    );
}
