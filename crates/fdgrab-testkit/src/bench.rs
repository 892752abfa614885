//! Goals of a benchmark (`crates/*/benches`, harness = false): each is a ratio
//! against a reference measured in the same run, judged and printed as it is
//! met or missed, and summarised in one `bench NAME: ...` line that
//! `scripts/bench` collects. A missed goal makes the benchmark exit 1.

fn required() -> bool {
    std::env::var_os("FDGRAB_REQUIRE_ALL").is_some_and(|v| v != "0")
}

/// The goals of one benchmark run.
#[derive(Debug)]
pub struct Goals {
    name: &'static str,
    met: usize,
    missed: Vec<String>,
}

impl Goals {
    pub fn new(name: &'static str) -> Self {
        Goals {
            name,
            met: 0,
            missed: Vec::new(),
        }
    }

    /// `what` (ours over the reference, `ratio`) must be at most `max`.
    pub fn at_most(&mut self, what: &str, ratio: f64, max: f64) {
        self.judge(what, ratio, ratio <= max, format!("<= {max}x"));
    }

    /// `what` (the reference over ours: how many times faster we are) must be at
    /// least `min`.
    pub fn at_least(&mut self, what: &str, ratio: f64, min: f64) {
        self.judge(what, ratio, ratio >= min, format!(">= {min}x"));
    }

    fn judge(&mut self, what: &str, ratio: f64, ok: bool, goal: String) {
        let verdict = if ok { "met" } else { "MISSED" };
        println!("goal {what}: {ratio:.3}x (goal {goal}) {verdict}");
        if ok {
            self.met += 1;
        } else {
            self.missed.push(format!("{what} {ratio:.3}x, goal {goal}"));
        }
    }

    /// One comparison cannot run here (a missing reference tool, say): reported,
    /// and under `FDGRAB_REQUIRE_ALL` counted as missed.
    pub fn not_measured(&mut self, what: &str, reason: &str) {
        println!("goal {what}: not measured ({reason})");
        if required() {
            self.missed.push(format!("{what} not measured: {reason}"));
        }
    }

    /// The benchmark cannot run here. Under `FDGRAB_REQUIRE_ALL` (as in
    /// `scripts/bench` on a prepared machine) that is a failure, like a missed goal.
    pub fn skip(self, reason: &str) -> ! {
        println!("bench {}: SKIPPED ({reason})", self.name);
        std::process::exit(if required() { 1 } else { 0 })
    }

    /// Prints the summary line and exits: 0 if every goal was met, 1 otherwise.
    pub fn finish(self) -> ! {
        if self.missed.is_empty() {
            println!("bench {}: all {} goal(s) met", self.name, self.met);
            std::process::exit(0)
        }
        println!(
            "bench {}: MISSED {} of {} goal(s): {}",
            self.name,
            self.missed.len(),
            self.met + self.missed.len(),
            self.missed.join("; ")
        );
        std::process::exit(1)
    }
}

/// Builds a floor program from `src` into `dir/name` with `compile` (which gets
/// the source's path as its last argument), for a row printed for scale beside
/// a benchmark's goals: `None` where the compiler is missing or fails, so that
/// the row is left out.
pub fn build_floor(
    dir: &std::path::Path,
    name: &str,
    ext: &str,
    src: &str,
    compile: &mut std::process::Command,
) -> Option<std::path::PathBuf> {
    let src_path = dir.join(format!("{name}.{ext}"));
    std::fs::write(&src_path, src).ok()?;
    let ok = compile
        .arg(&src_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| dir.join(name))
}

/// [`build_floor`] for a C program, compiled with `cc -O2`, statically linked
/// when `static_link` (where the C library allows it) so that its start-up is
/// the least a program can pay.
pub fn build_c_floor(
    dir: &std::path::Path,
    name: &str,
    src: &str,
    static_link: bool,
) -> Option<std::path::PathBuf> {
    let mut cc = std::process::Command::new("cc");
    cc.arg("-O2");
    if static_link {
        cc.arg("-static");
    }
    cc.arg("-o").arg(dir.join(name));
    build_floor(dir, name, "c", src, &mut cc)
}
