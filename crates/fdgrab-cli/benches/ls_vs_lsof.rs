//! `fdgrab ls` against the tools people use for the same questions, timed in the
//! same run, interleaved round by round, compared by medians:
//! - one process with 10, 100, 1,000 and 10,000 mixed fds (files, pipes, TCP
//!   listeners and connections, UDP, unix pairs, eventfds, memfds): `lsfd -p` (goal:
//!   fdgrab faster) and `lsof -n -P -p` (goal: at least 3x);
//! - every process: `lsof -n -P` (goal: at least 5x), after checking that both find
//!   the same fd numbers for the processes both list;
//! - `--port` against `lsof -t -i :PORT` (3x) and `ss -tanp` with a port filter
//!   (no slower); `--path` against `fuser FILE` (3x); `--deleted` against
//!   `lsof +L1` (3x).
//!
//! For scale, rows printed and not judged: floors, static C programs (`cc`) that
//! make only the kernel calls a question needs. Beside `ls PID`: start, one
//! sock_diag dump of the TCP tables, exit (the target holds connected TCP
//! sockets, and no kernel interface describes one without that walk). Beside
//! `--path`: one `statx` per fd of every process, on one thread. Each is
//! printed as the reference over the floor. The first bounds any `ls PID` that
//! describes TCP sockets: below the goal, no such program can meet it in that
//! run. The second is a scale, not a bound (two threads can beat it). A missing
//! compiler leaves the rows out.
//!
//! Exits non-zero when a goal is missed. Run with `scripts/bench` (it builds the
//! release binaries first).

use fdgrab_testkit::bench::Goals;
use fdgrab_testkit::{bin, output_timeout, Target};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Run {
    name: String,
    argv: Vec<String>,
}

fn run(name: &str, argv: &[&str]) -> Run {
    Run {
        name: name.to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
    }
}

fn fdgrab() -> String {
    bin("fdgrab").to_string_lossy().into_owned()
}

/// Runs `argv` once for its output (every tool must succeed, except that lsof and
/// fuser exit 1 when they find nothing or some process vanished).
fn output(argv: &[String]) -> String {
    let out = output_timeout(
        Command::new(&argv[0]).args(&argv[1..]),
        Duration::from_secs(120),
    );
    let tolerated = matches!(argv[0].as_str(), "lsof" | "fuser") && out.status.code() == Some(1);
    assert!(
        out.status.success() || tolerated,
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Median wall time of each command over `rounds` interleaved rounds.
fn medians(runs: &[Run], rounds: usize) -> Vec<f64> {
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); runs.len()];
    for _ in 0..rounds {
        for (i, r) in runs.iter().enumerate() {
            let start = Instant::now();
            let status = Command::new(&r.argv[0])
                .args(&r.argv[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run");
            times[i].push(start.elapsed());
            assert!(
                status.success() || status.code() == Some(1),
                "{}: {status}",
                r.name
            );
        }
    }
    times
        .iter_mut()
        .map(|v| {
            v.sort();
            v[v.len() / 2].as_secs_f64()
        })
        .collect()
}

/// Times `runs` (the first is fdgrab) and checks each reference's ratio against
/// its goal (`goals[i]` for `runs[i + 1]`), recording each in `judged`. Runs
/// past those are floors: the first reference over each is printed, not judged.
fn compare(title: &str, runs: &[Run], goals: &[f64], rounds: usize, judged: &mut Goals) {
    let m = medians(runs, rounds);
    println!("{title} (median of {rounds} interleaved rounds):");
    for (r, t) in runs.iter().zip(&m) {
        println!("  {:<34} {:>9.2} ms", r.name, t * 1e3);
    }
    for (i, goal) in goals.iter().enumerate() {
        let ratio = m[i + 1] / m[0];
        judged.at_least(
            &format!("{title}: {} / {}", runs[i + 1].name, runs[0].name),
            ratio,
            *goal,
        );
    }
    for (floor, t) in runs.iter().zip(&m).skip(goals.len() + 1) {
        println!(
            "for scale, not judged: {title}: {} / {}: {:.3}x",
            runs[1].name,
            floor.name,
            m[1] / t
        );
    }
}

/// The least any `ls PID` of a process holding a connected TCP socket pays
/// besides its listing: start, one dump of the TCP tables (both families, every
/// state a socket with an inode can be in), exit.
const FLOOR_TCP_DUMP: &str = r#"
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <string.h>
#include <sys/socket.h>
int main(void) {
    int s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    struct { struct nlmsghdr h; struct inet_diag_req r; } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = TCPDIAG_GETSOCK;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.h.nlmsg_seq = 1;
    req.r.idiag_states = ~((1u << 6) | (1u << 12));
    if (s < 0 || send(s, &req, sizeof req, 0) < 0) return 2;
    static char buf[65536];
    for (;;) {
        int n = recv(s, buf, sizeof buf, 0);
        if (n <= 0) return 2;
        for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n))
            if (h->nlmsg_type == NLMSG_DONE) return 0;
            else if (h->nlmsg_type == NLMSG_ERROR) return 2;
    }
}
"#;

/// The least any "who holds FILE" pays: one `statx` (cached attributes, as
/// fdgrab's) per fd of every process, one `stat` per process, on one thread.
const FLOOR_PATH: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct stat want;
    if (argc < 2 || stat(argv[1], &want)) return 2;
    int proc = open("/proc", O_RDONLY | O_DIRECTORY);
    DIR *d = fdopendir(dup(proc));
    struct dirent *e;
    char name[300];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        snprintf(name, sizeof name, "%s/fd", e->d_name);
        struct stat fs;
        if (fstatat(proc, name, &fs, 0) || fs.st_size == 0) continue;
        int fdd = openat(proc, name, O_RDONLY | O_DIRECTORY);
        DIR *fds = fdd < 0 ? NULL : fdopendir(fdd);
        struct dirent *f;
        int hit = 0;
        while (fds && (f = readdir(fds))) {
            struct statx sx;
            if (f->d_name[0] == '.' ||
                statx(fdd, f->d_name, AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &sx))
                continue;
            hit |= sx.stx_ino == want.st_ino &&
                   makedev(sx.stx_dev_major, sx.stx_dev_minor) == want.st_dev;
        }
        if (fds) closedir(fds);
        if (hit) printf("%s\n", e->d_name);
    }
    return 0;
}
"#;

/// fd numbers by pid from `fdgrab ls` (table with COMMAND and PID columns).
fn fdgrab_fds(text: &str) -> BTreeMap<i64, BTreeSet<i64>> {
    let mut out: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(_), Some(pid), Some(fd)) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        if let (Ok(pid), Ok(fd)) = (pid.parse(), fd.trim_end_matches(['r', 'w', 'u']).parse()) {
            out.entry(pid).or_default().insert(fd);
        }
    }
    out
}

/// fd numbers by pid from `lsof -n -P -F pf ARGS` (numeric fds only: lsof adds cwd,
/// txt, mem...).
fn lsof_fds(args: &[&str]) -> BTreeMap<i64, BTreeSet<i64>> {
    let mut argv: Vec<String> = ["lsof", "-n", "-P", "-F", "pf"].map(String::from).to_vec();
    argv.extend(args.iter().map(|a| a.to_string()));
    let text = output(&argv);
    let mut out: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    let mut pid = None;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix('p') {
            pid = p.parse().ok();
        } else if let (Some(f), Some(p)) = (line.strip_prefix('f'), pid) {
            if let Ok(fd) = f.parse() {
                out.entry(p).or_default().insert(fd);
            }
        }
    }
    out
}

fn main() {
    let mut goals = Goals::new("ls_vs_lsof");
    let fg = fdgrab();
    let scratch = std::env::temp_dir().join(format!("fdgrab-ls-floor-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let floor = |name: &str, src: &str| {
        fdgrab_testkit::bench::build_c_floor(&scratch, name, src, true)
            .map(|p| p.to_string_lossy().into_owned())
    };
    let (tcp_floor, path_floor) = (floor("tcp_dump", FLOOR_TCP_DUMP), floor("path", FLOOR_PATH));
    // A floor that fails here (sock_diag refused, say) is left out, not timed.
    let runs_here = |argv: &[&str]| {
        let ok = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("floor {} left out: it failed here", argv[0]);
        }
        ok
    };
    let tcp_floor = tcp_floor.filter(|f| runs_here(&[f]));

    for (fds, rounds) in [(10usize, 21), (100, 21), (1_000, 15), (10_000, 7)] {
        let t = Target::spawn(["many", &fds.to_string()]);
        let pid = t.pid.to_string();
        let mut runs = vec![
            run("fdgrab ls PID", &[&fg, "ls", &pid]),
            run("lsfd -p PID", &["lsfd", "-p", &pid]),
            run("lsof -n -P -p PID", &["lsof", "-n", "-P", "-p", &pid]),
        ];
        if let Some(f) = &tcp_floor {
            runs.push(run("C: start + one TCP dump (floor)", &[f]));
        }
        // Same fds: every numeric fd lsof finds is a row of ours.
        let ours: BTreeSet<i64> = output(&runs[0].argv)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let fd = l.split_whitespace().next()?;
                fd.trim_end_matches(['r', 'w', 'u']).parse().ok()
            })
            .collect();
        let theirs = lsof_fds(&["-p", &pid]);
        let theirs = theirs.get(&i64::from(t.pid)).cloned().unwrap_or_default();
        println!(
            "fds listed: fdgrab {}, lsof {} (numeric)",
            ours.len(),
            theirs.len()
        );
        assert!(ours.len() >= fds, "fdgrab listed {} fds", ours.len());
        assert!(theirs.is_subset(&ours), "lsof lists fds fdgrab does not");
        compare(
            &format!("one process, {fds} fds"),
            &runs,
            &[1.0, 3.0],
            rounds,
            &mut goals,
        );
    }

    // Every process, with one busy one among them.
    let busy = Target::spawn(["many", "1000"]);
    let ours = fdgrab_fds(&output(&[fg.clone(), "ls".into()]));
    let theirs = lsof_fds(&[]);
    // Listed once before lsof and once after: a process whose fds changed between
    // the two (a compiler on a shared host) says nothing about either tool and is
    // left out; every other one both list is compared.
    let after = fdgrab_fds(&output(&[fg.clone(), "ls".into()]));
    let common: Vec<&i64> = ours
        .keys()
        .filter(|p| theirs.contains_key(p) && after.get(p) == Some(&ours[p]))
        .collect();
    let agree = common.iter().filter(|p| ours[p] == theirs[p]).count();
    println!(
        "every process: fdgrab lists {} processes, lsof {}; same fd numbers for {agree} of the {} both list whose fds held still",
        ours.len(),
        theirs.len(),
        common.len()
    );
    let b = i64::from(busy.pid);
    assert_eq!(
        ours.get(&b),
        theirs.get(&b),
        "fd numbers of the busy target"
    );
    // Processes come and go between the two listings; the others must agree.
    assert!(
        agree * 10 >= common.len() * 9,
        "fd numbers differ too often"
    );
    compare(
        "every process",
        &[
            run("fdgrab ls", &[&fg, "ls"]),
            run("lsof -n -P", &["lsof", "-n", "-P"]),
        ],
        &[5.0],
        5,
        &mut goals,
    );

    // Who holds a port: a listener and both ends of a connection, here.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let _client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _server = listener.accept().expect("accept");
    let p = port.to_string();
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let runs = [
        run(
            "fdgrab ls --port P --pids",
            &[&fg, "ls", "--port", &p, "--pids"],
        ),
        run(
            "lsof -t -i :P",
            &["lsof", "-t", "-n", "-P", &format!("-i:{port}")],
        ),
        run("ss -tanp FILTER", &["ss", "-tanp", &filter]),
    ];
    let me = std::process::id().to_string();
    assert_eq!(output(&runs[0].argv).trim(), me);
    assert_eq!(output(&runs[1].argv).trim(), me);
    compare("who holds a port", &runs, &[3.0, 1.0], 9, &mut goals);

    // Who holds a file, and who holds deleted files.
    let dir = std::env::temp_dir().join(format!("fdgrab-bench-ls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("held");
    std::fs::write(&path, b"x").expect("write");
    let _held = std::fs::File::open(&path).expect("open");
    let doomed = dir.join("doomed");
    std::fs::write(&doomed, b"gone").expect("write");
    let _doomed = std::fs::File::open(&doomed).expect("open");
    std::fs::remove_file(&doomed).expect("unlink");
    let f = path.to_string_lossy().into_owned();
    let mut runs = vec![
        run(
            "fdgrab ls --path FILE --pids",
            &[&fg, "ls", "--path", &f, "--pids"],
        ),
        run("fuser FILE", &["fuser", &f]),
    ];
    if let Some(floor) = path_floor.filter(|p| runs_here(&[p, &f])) {
        runs.push(run("C: one statx per fd (floor)", &[&floor, &f]));
    }
    assert_eq!(output(&runs[0].argv).trim(), me);
    compare("who holds a file", &runs, &[3.0], 31, &mut goals);
    let runs = [
        run("fdgrab ls --deleted", &[&fg, "ls", "--deleted"]),
        run("lsof -n -P +L1", &["lsof", "-n", "-P", "+L1"]),
    ];
    assert!(output(&runs[0].argv).contains("doomed"));
    compare("who holds deleted files", &runs, &[3.0], 5, &mut goals);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&scratch);

    goals.finish()
}
