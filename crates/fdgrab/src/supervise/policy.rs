//! Which privileged binds the supervisor performs.
//!
//! A policy is a union of rules; a rule names a protocol (or both), a port range
//! and optionally one address. The command line writes rules as
//! `[tcp|udp:]PORT[-PORT][@ADDR]`; a TOML file writes the same rules as tables:
//!
//! ```toml
//! [[bind]]
//! port = 80            # or "8000-8080"
//! proto = "tcp"        # optional: "tcp" or "udp"; both when absent
//! addr = "127.0.0.1"   # optional: any address when absent
//! ```

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A transport protocol a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (`SOCK_STREAM` on an inet socket).
    Tcp,
    /// UDP (`SOCK_DGRAM` on an inet socket).
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One allow rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `None`: TCP and UDP.
    pub proto: Option<Proto>,
    /// The ports allowed, both ends included.
    pub ports: RangeInclusive<u16>,
    /// `None`: any address, wildcard included.
    pub addr: Option<IpAddr>,
}

impl Rule {
    fn matches(&self, proto: Proto, addr: IpAddr, port: u16) -> bool {
        self.proto.is_none_or(|p| p == proto)
            && self.ports.contains(&port)
            && self.addr.is_none_or(|a| same_addr(a, addr))
    }

    fn intersect(&self, other: &Rule) -> Option<Rule> {
        let proto = match (self.proto, other.proto) {
            (None, p) | (p, None) => p,
            (Some(a), Some(b)) if a == b => Some(a),
            _ => return None,
        };
        let lo = (*self.ports.start()).max(*other.ports.start());
        let hi = (*self.ports.end()).min(*other.ports.end());
        if lo > hi {
            return None;
        }
        let addr = match (self.addr, other.addr) {
            (None, a) | (a, None) => a,
            (Some(a), Some(b)) if same_addr(a, b) => Some(a),
            _ => return None,
        };
        Some(Rule {
            proto,
            ports: lo..=hi,
            addr,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.proto {
            write!(f, "{p}:")?;
        }
        if self.ports.start() == self.ports.end() {
            write!(f, "{}", self.ports.start())?;
        } else {
            write!(f, "{}-{}", self.ports.start(), self.ports.end())?;
        }
        match self.addr {
            Some(IpAddr::V6(a)) => write!(f, "@[{a}]"),
            Some(a) => write!(f, "@{a}"),
            None => Ok(()),
        }
    }
}

/// An IPv4 address and its IPv4-mapped IPv6 form name the same bind target on a
/// dual-stack socket.
fn same_addr(a: IpAddr, b: IpAddr) -> bool {
    canonical(a) == canonical(b)
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A set of allow rules, and where the sockets may live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Whether a socket from another network namespace than the caller's may be
    /// bound. Off by default: a program handed a socket from elsewhere (another
    /// container's, the host's) would otherwise get a port *there*.
    any_netns: bool,
}

/// A policy that can be replaced while handlers read it (a reload): each
/// decision takes the current one once and uses it throughout.
#[derive(Debug)]
pub struct PolicyCell(RwLock<Arc<Policy>>);

impl PolicyCell {
    /// A cell holding `policy` until [`PolicyCell::set`] replaces it.
    pub fn new(policy: Arc<Policy>) -> Self {
        Self(RwLock::new(policy))
    }

    /// The current policy.
    pub fn get(&self) -> Arc<Policy> {
        // The lock guards one `Arc` swap; a poisoned one still holds a valid Arc.
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the policy for every later decision.
    pub fn set(&self, policy: Arc<Policy>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }
}

/// A rule or policy file that could not be read, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file, for errors in one.
    pub path: Option<PathBuf>,
    /// 1-based line in the file, when the error has a place.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{l}: {}", p.display(), self.reason),
            (Some(p), None) => write!(f, "{}: {}", p.display(), self.reason),
            (None, Some(l)) => write!(f, "line {l}: {}", self.reason),
            (None, None) => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for PolicyError {}

impl PolicyError {
    fn plain(reason: impl Into<String>) -> Self {
        Self {
            path: None,
            line: None,
            reason: reason.into(),
        }
    }
}

impl Policy {
    /// A policy that allows nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses `[tcp|udp:]PORT[-PORT][@ADDR]` rules (ADDR may be bracketed IPv6).
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Policy, PolicyError> {
        let rules = specs
            .iter()
            .map(|s| {
                parse_spec(s.as_ref())
                    .map_err(|r| PolicyError::plain(format!("bind rule '{}': {r}", s.as_ref())))
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            rules,
            any_netns: false,
        })
    }

    /// Parses the TOML policy format (see the module docs). Errors carry the line.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        let file: toml_format::File = toml::from_str(text).map_err(|e| PolicyError {
            path: None,
            line: e.span().map(|s| line_of(text, s.start)),
            reason: e.message().trim().to_string(),
        })?;
        let mut rules = Vec::new();
        for spec in file.allow.unwrap_or_default() {
            let rule = parse_spec(spec.get_ref()).map_err(|r| PolicyError {
                path: None,
                line: Some(line_of(text, spec.span().start)),
                reason: format!("bind rule '{}': {r}", spec.get_ref()),
            })?;
            rules.push(rule);
        }
        for table in file.bind.unwrap_or_default() {
            let at = |span: std::ops::Range<usize>| Some(line_of(text, span.start));
            let ports =
                match table.port.get_ref() {
                    toml_format::Port::Number(n) => {
                        let p = u16::try_from(*n).ok().filter(|&p| p > 0).ok_or_else(|| {
                            PolicyError {
                                path: None,
                                line: at(table.port.span()),
                                reason: format!("port {n} is out of range (1-65535)"),
                            }
                        })?;
                        p..=p
                    }
                    toml_format::Port::Text(s) => parse_ports(s).map_err(|r| PolicyError {
                        path: None,
                        line: at(table.port.span()),
                        reason: r,
                    })?,
                };
            let proto = match &table.proto {
                None => None,
                Some(p) => Some(parse_proto(p.get_ref()).ok_or_else(|| PolicyError {
                    path: None,
                    line: at(p.span()),
                    reason: format!("proto '{}' is not \"tcp\" or \"udp\"", p.get_ref()),
                })?),
            };
            let addr = match &table.addr {
                None => None,
                Some(a) => Some(parse_addr(a.get_ref()).map_err(|r| PolicyError {
                    path: None,
                    line: at(a.span()),
                    reason: r,
                })?),
            };
            rules.push(Rule { proto, ports, addr });
        }
        let any_netns = match &file.netns {
            None => false,
            Some(v) => match v.get_ref().as_str() {
                "caller" => false,
                "any" => true,
                other => {
                    return Err(PolicyError {
                        path: None,
                        line: Some(line_of(text, v.span().start)),
                        reason: format!(
                            "netns = \"{other}\": expected netns = \"caller\" (the default) or netns = \"any\""
                        ),
                    })
                }
            },
        };
        Ok(Policy { rules, any_netns })
    }

    /// Reads and parses a TOML policy file. It must be a regular file of at most
    /// [`MAX_POLICY_FILE`] bytes: a device, a FIFO or a huge file is refused at
    /// once, before anything is read (a FIFO is opened without waiting for a writer).
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let text = read_policy_file(path).map_err(|reason| PolicyError {
            path: Some(path.to_path_buf()),
            line: None,
            reason,
        })?;
        Self::from_toml_str(&text).map_err(|e| PolicyError {
            path: Some(path.to_path_buf()),
            ..e
        })
    }

    /// The union of both policies, in time linear in their size.
    pub fn merge(mut self, other: Policy) -> Policy {
        let mut seen: std::collections::HashSet<Rule> = self.rules.iter().cloned().collect();
        for r in other.rules {
            if seen.insert(r.clone()) {
                self.rules.push(r);
            }
        }
        self.any_netns |= other.any_netns;
        self
    }

    /// Whether sockets from any network namespace may be bound (`netns = "any"`),
    /// not only those in the caller's.
    pub fn any_netns(&self) -> bool {
        self.any_netns
    }

    /// This policy with the network-namespace rule set to `any`.
    pub fn with_any_netns(mut self, any: bool) -> Policy {
        self.any_netns = any;
        self
    }

    /// What both policies allow: a container's policy can only narrow the node's.
    pub fn intersect(&self, other: &Policy) -> Policy {
        // Nothing holds more than usize::MAX rules, so the cap is never reached.
        self.intersect_within(other, usize::MAX).unwrap_or_default()
    }

    /// [`Policy::intersect`], or `None` as soon as the result would have more than
    /// `max_rules` rules (a bound with many addresses times a request with many
    /// ports grows as their product).
    pub fn intersect_within(&self, other: &Policy, max_rules: usize) -> Option<Policy> {
        let mut rules = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for a in &self.rules {
            for b in &other.rules {
                if let Some(r) = a.intersect(b) {
                    if seen.insert(r.clone()) {
                        if rules.len() == max_rules {
                            return None;
                        }
                        rules.push(r);
                    }
                }
            }
        }
        Some(Policy {
            rules,
            any_netns: self.any_netns && other.any_netns,
        })
    }

    /// Whether a bind of `proto` to `addr:port` is allowed.
    pub fn allows(&self, proto: Proto, addr: IpAddr, port: u16) -> bool {
        self.rules.iter().any(|r| r.matches(proto, addr, port))
    }

    /// Whether some protocol may bind `addr:port`: checked before anything is
    /// opened for the caller, since the protocol needs the socket.
    pub fn could_allow(&self, addr: IpAddr, port: u16) -> bool {
        self.allows(Proto::Tcp, addr, port) || self.allows(Proto::Udp, addr, port)
    }

    /// Whether any rule mentions `port`: when none does, the bind is the kernel's
    /// to decide and the socket need not be looked at.
    pub fn covers_port(&self, port: u16) -> bool {
        self.rules.iter().any(|r| r.ports.contains(&port))
    }

    /// The rules, merged and in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether no bind is allowed at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.rules.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Largest policy file read: some 400,000 one-line rules.
pub const MAX_POLICY_FILE: u64 = 16 << 20;

fn read_policy_file(path: &Path) -> Result<String, String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the policy file: {e}"))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat the policy file: {e}"))?;
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(format!(
            "not a regular file but a {}; expected a TOML file",
            match kind {
                rustix::fs::FileType::Fifo => "FIFO",
                rustix::fs::FileType::CharacterDevice => "character device",
                rustix::fs::FileType::BlockDevice => "block device",
                rustix::fs::FileType::Directory => "directory",
                rustix::fs::FileType::Socket => "socket",
                _ => "special file",
            }
        ));
    }
    let size = st.st_size as u64;
    if size > MAX_POLICY_FILE {
        return Err(format!(
            "{size} bytes; a policy file may have at most {MAX_POLICY_FILE} bytes"
        ));
    }
    let mut text = String::new();
    // The file may grow after the fstat: read one byte past the cap to notice.
    std::fs::File::from(fd)
        .take(MAX_POLICY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the policy file: {e}"))?;
    if text.len() as u64 > MAX_POLICY_FILE {
        return Err(format!(
            "grew past {MAX_POLICY_FILE} bytes while being read"
        ));
    }
    Ok(text)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_proto(s: &str) -> Option<Proto> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a port number"))?;
    u16::try_from(n)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("port {n} is out of range (1-65535)"))
}

fn parse_ports(s: &str) -> Result<RangeInclusive<u16>, String> {
    match s.split_once('-') {
        None => parse_port(s).map(|p| p..=p),
        Some((a, b)) => {
            let (lo, hi) = (parse_port(a)?, parse_port(b)?);
            if lo > hi {
                return Err(format!("port range {lo}-{hi} is backwards"));
            }
            Ok(lo..=hi)
        }
    }
}

fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    inner
        .parse::<IpAddr>()
        .map_err(|_| format!("'{s}' is not an IPv4 or IPv6 address"))
}

fn parse_spec(spec: &str) -> Result<Rule, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("empty rule; expected [tcp|udp:]PORT[-PORT][@ADDR]".into());
    }
    let (proto, rest) = match spec.split_once(':') {
        Some((p, rest)) if parse_proto(p).is_some() => (parse_proto(p), rest),
        Some((p, _)) if !p.contains('@') => {
            return Err(format!("'{p}' is not a protocol (expected tcp or udp)"));
        }
        _ => (None, spec),
    };
    let (ports, addr) = match rest.split_once('@') {
        Some((ports, addr)) => (ports, Some(parse_addr(addr)?)),
        None => (rest, None),
    };
    Ok(Rule {
        proto,
        ports: parse_ports(ports)?,
        addr,
    })
}

/// The serde shape of the TOML file; kept private so the format can grow.
mod toml_format {
    use toml::Spanned;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        /// `allow = ["tcp:80", "443@::1"]`: rules in command-line syntax.
        pub allow: Option<Vec<Spanned<String>>>,
        /// `[[bind]]` tables.
        pub bind: Option<Vec<Table>>,
        /// `"caller"` (the default) or `"any"`.
        pub netns: Option<Spanned<String>>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Table {
        pub port: Spanned<Port>,
        pub proto: Option<Spanned<String>>,
        pub addr: Option<Spanned<String>>,
    }

    pub(super) enum Port {
        Number(i64),
        Text(String),
    }

    /// By hand, so that a wrong value is reported in the file's terms rather than
    /// as an internal enum that no variant matched.
    impl<'de> serde::Deserialize<'de> for Port {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Port;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(
                        "a port number (port = 80) or a range string (port = \"8000-8080\")",
                    )
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Port, E> {
                    Ok(Port::Number(v))
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                    Ok(Port::Number(i64::try_from(v).unwrap_or(i64::MAX)))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                    Ok(Port::Text(v.to_owned()))
                }
            }
            d.deserialize_any(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn specs() {
        let p = Policy::from_specs(&[
            "80",
            "udp:53",
            "tcp:8000-8080@127.0.0.1",
            "443@[::1]",
            "22@::",
        ])
        .expect("valid");
        assert!(p.allows(Proto::Tcp, LO, 80));
        assert!(p.allows(Proto::Udp, LO, 80));
        assert!(p.allows(Proto::Udp, LO, 53));
        assert!(!p.allows(Proto::Tcp, LO, 53));
        assert!(p.allows(Proto::Tcp, LO, 8042));
        assert!(!p.allows(Proto::Tcp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8042));
        assert!(p.allows(Proto::Tcp, "::1".parse().expect("addr"), 443));
        assert!(!p.allows(Proto::Tcp, LO, 443));
        assert!(p.allows(Proto::Tcp, "::".parse().expect("addr"), 22));
        // The mapped form of an allowed IPv4 address is the same address.
        assert!(p.allows(Proto::Tcp, "::ffff:127.0.0.1".parse().expect("addr"), 8000));
        assert_eq!(
            p.to_string(),
            "80,udp:53,tcp:8000-8080@127.0.0.1,443@[::1],22@[::]"
        );
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, why) in [
            ("", "empty"),
            ("0", "out of range"),
            ("70000", "out of range"),
            ("sctp:80", "not a protocol"),
            ("90-80", "backwards"),
            ("80@localhost", "not an IPv4"),
            ("x", "not a port"),
        ] {
            let e = Policy::from_specs(&[spec]).expect_err(spec);
            assert!(e.to_string().contains(why), "{spec}: {e}");
            assert!(e.to_string().contains(spec), "{spec}: {e}");
        }
    }

    #[test]
    fn toml_policy() {
        let text = r#"
allow = ["udp:53"]

[[bind]]
port = 80
proto = "tcp"
addr = "127.0.0.1"

[[bind]]
port = "440-450"
"#;
        let p = Policy::from_toml_str(text).expect("valid");
        assert!(p.allows(Proto::Tcp, LO, 80));
        assert!(!p.allows(Proto::Udp, LO, 80));
        assert!(!p.allows(Proto::Tcp, "10.0.0.1".parse().expect("addr"), 80));
        assert!(p.allows(Proto::Udp, "10.0.0.1".parse().expect("addr"), 445));
        assert!(p.allows(Proto::Udp, LO, 53));
    }

    #[test]
    fn toml_errors_have_lines() {
        let cases = [
            ("[[bind]]\nport = 80\nproto = \"sctp\"\n", 3, "sctp"),
            ("[[bind]]\nport = 70000\n", 2, "out of range"),
            ("\n[[bind]]\nport = \"80-x\"\n", 3, "not a port"),
            ("[[bind]]\nport = 80\naddr = \"nope\"\n", 3, "nope"),
            ("[[bind]]\nprot = \"tcp\"\nport = 1\n", 2, "unknown field"),
            ("allow = [\"80\",\n \"bogus\"]\n", 2, "bogus"),
            ("[[bind]\n", 1, ""),
            ("[[bind]]\nport = true\n", 2, "a port number (port = 80)"),
            ("netns = \"host\"\n", 1, "expected netns = \"caller\""),
        ];
        for (text, line, why) in cases {
            let e = Policy::from_toml_str(text).expect_err(text);
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.reason.contains(why), "{text:?}: {e}");
            assert!(!e.reason.contains("enum"), "{text:?}: {e}");
        }
    }

    #[test]
    fn merge_and_intersect() {
        let a = Policy::from_specs(&["tcp:1-1023"]).expect("valid");
        let b = Policy::from_specs(&["80@127.0.0.1", "udp:53"]).expect("valid");
        let both = a.intersect(&b);
        assert!(both.allows(Proto::Tcp, LO, 80));
        assert!(!both.allows(Proto::Tcp, "10.0.0.1".parse().expect("addr"), 80));
        assert!(!both.allows(Proto::Udp, LO, 53));
        assert!(!both.allows(Proto::Tcp, LO, 81));
        let union = a.clone().merge(b);
        assert!(union.allows(Proto::Udp, LO, 53));
        assert!(union.allows(Proto::Tcp, LO, 81));
        assert!(a.intersect(&Policy::empty()).is_empty());
    }

    #[test]
    fn netns_rule_is_caller_unless_widened() {
        let p = Policy::from_toml_str("allow = [\"80\"]\n").expect("valid");
        assert!(!p.any_netns());
        let any = Policy::from_toml_str("netns = \"any\"\nallow = [\"80\"]\n").expect("valid");
        assert!(any.any_netns());
        assert!(Policy::from_toml_str("netns = \"caller\"\n").is_ok_and(|p| !p.any_netns()));
        // A union widens, an intersection keeps the narrower.
        assert!(p.clone().merge(any.clone()).any_netns());
        assert!(!p.intersect(&any).any_netns());
    }

    #[test]
    fn policy_files_must_be_regular_and_small() {
        let dir = std::env::temp_dir().join(format!("fdgrab-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for (path, why) in [
            (Path::new("/dev/zero").to_path_buf(), "character device"),
            (dir.clone(), "directory"),
        ] {
            let e = Policy::from_file(&path).expect_err("refused");
            assert!(e.to_string().contains(why), "{e}");
        }
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        fdgrab_testkit::oci::mkfifo(&fifo);
        // No writer: a blocking open would wait forever.
        let e = Policy::from_file(&fifo).expect_err("fifo");
        assert!(e.to_string().contains("FIFO"), "{e}");
        let big = dir.join("big.toml");
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(100 << 20).expect("sparse 100 MB");
        let e = Policy::from_file(&big).expect_err("too big");
        assert!(e.to_string().contains("at most"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sixty_thousand_rules_merge_without_repeats() {
        let specs: Vec<String> = (0..60_000u32)
            .map(|i| format!("tcp:{}@10.{}.{}.1", i % 1000 + 1, i / 256 % 256, i % 256))
            .collect();
        let p = Policy::from_specs(&specs).expect("valid");
        let again = p.clone().merge(p.clone());
        assert_eq!(again.rules().len(), p.rules().len());
        let text: String = specs
            .iter()
            .map(|s| {
                format!(
                    "[[bind]]\nport = {}\naddr = \"{}\"\n",
                    s.split(['@', ':']).nth(1).unwrap_or("1"),
                    s.split('@').nth(1).unwrap_or("::")
                )
            })
            .collect();
        let file = Policy::from_toml_str(&text).expect("valid file");
        assert_eq!(file.rules().len(), 60_000);
    }
}
