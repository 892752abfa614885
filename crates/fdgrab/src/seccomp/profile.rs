//! Seccomp profiles in the OCI/Docker JSON format (the one podman, containerd's
//! CRI, Docker and the kubelet's Localhost profiles read), rewritten so that `bind`
//! goes to the fdgrab agent.
//!
//! Appending `{"names": ["bind"], "action": "SCMP_ACT_NOTIFY"}` to a default
//! profile does nothing: the default's own ALLOW entry for `bind` matches as well,
//! and libseccomp keeps the earlier, less restrictive answer, silently. So the rewrite
//! takes `bind` out of every rule that lets it through (unconditional, conditional on
//! arguments, gated by `includes`/`excludes`, the old single `name` field), and adds
//! NOTIFY rules carrying exactly the conditions under which the input allowed it.
//! Every other rule and every field this module does not know is kept as it was, in
//! its order.

use serde_json::{Map, Value};

/// The syscall the agent supervises.
const BIND: &str = "bind";

/// Where runtimes find the agent unless told otherwise.
pub const DEFAULT_LISTENER_PATH: &str = "/run/fdgrab/agent.sock";

/// The built-in profile: our equivalent of the default container runtimes apply
/// (deny with ENOSYS by default; the common syscalls allowed; capability- and
/// architecture-gated extras), shipped as a data file.
const RUNTIME_DEFAULT: &str = include_str!("runtime-default.json");

/// Why a profile cannot be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The text is not JSON.
    #[error("the profile is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON does not have the profile's shape.
    #[error("not a seccomp profile: {0}")]
    Shape(String),
    /// Nothing in the profile lets `bind` through, so there is nothing to hand to
    /// the agent; rewriting would widen the profile.
    #[error(
        "the profile never allows bind (defaultAction {default_action} and no rule allows it): \
         there is nothing to hand to the agent"
    )]
    BindNeverAllowed {
        /// The profile's `defaultAction`.
        default_action: String,
    },
    /// The default action allows `bind` and a rule denies it only under `args`
    /// conditions. The NOTIFY rule for the default must be unconditional, and
    /// libseccomp drops a syscall's `args` rules once it has an unconditional one, so
    /// the result would let through what the input denied.
    #[error(
        "syscalls[{rule}] denies bind only under args conditions while defaultAction \
         {default_action} allows it: libseccomp drops such a rule once bind has an \
         unconditional SCMP_ACT_NOTIFY rule, so the result would allow what the profile \
         denies; deny bind without args conditions, or use a defaultAction that denies bind"
    )]
    DenialUnderArgs {
        /// The index of the denying rule in `syscalls`.
        rule: usize,
        /// The profile's `defaultAction`.
        default_action: String,
    },
}

/// What [`to_agent_profile`] produces.
#[derive(Debug, Clone)]
pub struct AgentProfile {
    /// The rewritten profile.
    pub profile: Value,
    /// Things the user should know about the rewrite, one sentence each.
    pub notes: Vec<String>,
}

/// How the agent is reached: `listenerPath`, and `listenerMetadata` if set.
#[derive(Debug, Clone)]
pub struct ProfileListener {
    /// The agent's socket (`listenerPath`).
    pub path: String,
    /// Replaces the input's `listenerMetadata` when set, e.g. `allow-bind=tcp:80`.
    pub metadata: Option<String>,
}

impl Default for ProfileListener {
    fn default() -> Self {
        ProfileListener {
            path: DEFAULT_LISTENER_PATH.to_owned(),
            metadata: None,
        }
    }
}

/// The built-in runtime-default profile's JSON text (input for [`to_agent_profile`]).
pub fn runtime_default() -> &'static str {
    RUNTIME_DEFAULT
}

/// Actions under which the kernel runs the syscall: `ALLOW`, and `LOG` (allow,
/// and log). `NOTIFY` for bind is replaced too, so that the result has only ours.
fn lets_bind_through(action: &str) -> bool {
    matches!(
        action,
        "SCMP_ACT_ALLOW" | "SCMP_ACT_LOG" | "SCMP_ACT_NOTIFY"
    )
}

/// The fields of a rule that decide when it applies. Absent, null and empty are
/// the same thing to runtimes.
const CONDITIONS: [&str; 3] = ["args", "includes", "excludes"];

fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.values().all(|v| is_empty(Some(v))),
        _ => false,
    }
}

/// A rule's conditions, normalised: only the non-empty ones.
fn conditions(rule: &Map<String, Value>) -> Map<String, Value> {
    CONDITIONS
        .iter()
        .filter(|k| !is_empty(rule.get(**k)))
        .filter_map(|k| rule.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect()
}

/// Whether a rule names `bind`, through `names` or the old `name` field.
pub fn rule_names_bind(rule: &Value) -> bool {
    rule.as_object().is_some_and(names_bind)
}

fn names_bind(rule: &Map<String, Value>) -> bool {
    let in_names = rule
        .get("names")
        .and_then(Value::as_array)
        .is_some_and(|n| n.iter().any(|s| s == BIND));
    in_names || rule.get("name").is_some_and(|s| s == BIND)
}

/// Rewrites `input` (OCI/Docker seccomp JSON) so that every `bind` it allows goes
/// to the agent at `listener` instead; see the module documentation.
///
/// Rules that deny `bind` (ERRNO, KILL, TRAP, TRACE) are kept: the kernel still
/// answers them. Fails when the input is not a profile, or when it never allows
/// `bind` (the agent would then grant what the profile forbade).
pub fn to_agent_profile(
    input: &str,
    listener: &ProfileListener,
) -> Result<AgentProfile, ProfileError> {
    let value: Value = serde_json::from_str(input)?;
    rewrite(value, listener)
}

/// [`to_agent_profile`] on a parsed profile.
pub fn rewrite(mut value: Value, listener: &ProfileListener) -> Result<AgentProfile, ProfileError> {
    let profile = value
        .as_object_mut()
        .ok_or_else(|| ProfileError::Shape("the top level is not a JSON object".into()))?;
    let default_action = match profile.get("defaultAction") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ProfileError::Shape("defaultAction is not a string".into())),
        None => return Err(ProfileError::Shape("defaultAction is missing".into())),
    };
    let rules = match profile.remove("syscalls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ProfileError::Shape("syscalls is not an array".into())),
    };

    let mut notes = Vec::new();
    // The condition sets under which the input lets bind through (an empty set,
    // unconditional, makes the others redundant), each with the place its NOTIFY
    // rule takes: that of the first rule allowing bind under them, or the end for
    // the default action. Of two rules with the same conditions libseccomp keeps
    // the first, so a denial that came after the allowing rule must stay behind.
    let mut notify_when: Vec<(Map<String, Value>, Option<usize>)> = Vec::new();
    let default_allows = lets_bind_through(&default_action);
    if default_allows {
        notify_when.push((Map::new(), None));
        notes.push(format!(
            "defaultAction {default_action} lets bind through: added an explicit \
             SCMP_ACT_NOTIFY rule for bind, which takes precedence over the default"
        ));
    }

    let mut kept = Vec::with_capacity(rules.len() + 1);
    let mut other_notify = 0;
    let mut denial_under_args = None;
    for (i, mut rule) in rules.into_iter().enumerate() {
        let Value::Object(obj) = &mut rule else {
            return Err(ProfileError::Shape(format!(
                "syscalls[{i}] is not a JSON object"
            )));
        };
        let action = match obj.get("action") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ProfileError::Shape(format!(
                    "syscalls[{i}].action is missing or not a string"
                )))
            }
        };
        if !names_bind(obj) || !lets_bind_through(&action) {
            if names_bind(obj) && !is_empty(obj.get("args")) {
                denial_under_args = denial_under_args.or(Some(i));
            }
            if action == "SCMP_ACT_NOTIFY" {
                other_notify += 1;
            }
            kept.push(rule);
            continue;
        }
        let cond = conditions(obj);
        let shown = Value::Object(cond.clone());
        tracing::debug!(rule = i, %action, conditions = %shown, "taking bind out of a rule that lets it through");
        match notify_when.iter_mut().find(|(c, _)| *c == cond) {
            Some((_, at)) => *at = at.or(Some(kept.len())),
            None => notify_when.push((cond, Some(kept.len()))),
        }
        if obj.get("name").is_some_and(|s| s == BIND) {
            obj.remove("name");
        }
        if let Some(Value::Array(names)) = obj.get_mut("names") {
            names.retain(|s| s != BIND);
        }
        let names_left = obj
            .get("names")
            .and_then(Value::as_array)
            .is_some_and(|n| !n.is_empty());
        if names_left || obj.contains_key("name") {
            kept.push(rule);
        }
    }

    if notify_when.is_empty() {
        return Err(ProfileError::BindNeverAllowed { default_action });
    }
    // Only the default's NOTIFY rule is new as an unconditional rule: one from an
    // allowing rule was already unconditional in the input.
    if let (Some(rule), Some(_)) = (
        denial_under_args,
        notify_when
            .iter()
            .find(|(c, at)| c.is_empty() && at.is_none()),
    ) {
        return Err(ProfileError::DenialUnderArgs {
            rule,
            default_action,
        });
    }
    // An unconditional rule covers every conditional one.
    if notify_when.iter().any(|(c, _)| c.is_empty()) {
        notify_when.retain(|(c, _)| c.is_empty());
    } else {
        notes.push(format!(
            "the input allows bind only under conditions: {} SCMP_ACT_NOTIFY rule(s) for \
             bind carry the same conditions; elsewhere the profile answers as before",
            notify_when.len()
        ));
    }
    // Placed from the last place to the first, so that each index still holds.
    notify_when.sort_by_key(|&(_, at)| at.unwrap_or(usize::MAX));
    for (cond, at) in notify_when.into_iter().rev() {
        let mut rule = Map::new();
        rule.insert("names".into(), Value::Array(vec![BIND.into()]));
        rule.insert("action".into(), "SCMP_ACT_NOTIFY".into());
        rule.extend(cond);
        rule.insert(
            "comment".into(),
            "fdgrab: bind goes to the fdgrab agent, which performs the binds its policy allows"
                .into(),
        );
        kept.insert(at.unwrap_or(kept.len()), Value::Object(rule));
    }
    if other_notify > 0 {
        notes.push(format!(
            "{other_notify} other SCMP_ACT_NOTIFY rule(s) now notify the fdgrab agent, \
             which lets those calls proceed untouched"
        ));
    }
    if let Some(old) = profile.get("listenerPath").and_then(Value::as_str) {
        if old != listener.path {
            notes.push(format!("listenerPath {old} replaced by {}", listener.path));
        }
    }
    profile.insert("syscalls".into(), Value::Array(kept));
    profile.insert("listenerPath".into(), listener.path.clone().into());
    if let Some(m) = &listener.metadata {
        profile.insert("listenerMetadata".into(), m.clone().into());
    }
    Ok(AgentProfile {
        profile: value,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(v: Value) -> AgentProfile {
        rewrite(v, &ProfileListener::default()).expect("rewrite")
    }

    fn notify_rules(p: &Value) -> Vec<&Value> {
        p["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_NOTIFY")
            .collect()
    }

    #[test]
    fn builtin_default_parses_and_allows_bind_unconditionally() {
        let p: Value = serde_json::from_str(RUNTIME_DEFAULT).expect("data file is JSON");
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        let out = agent(p);
        let n = notify_rules(&out.profile);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0]["names"], json!(["bind"]));
        assert!(n[0].get("args").is_none() && n[0].get("includes").is_none());
        assert_eq!(out.profile["listenerPath"], DEFAULT_LISTENER_PATH);
    }

    #[test]
    fn allow_all_default_gets_an_explicit_notify_rule_and_a_note() {
        let out = agent(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": null}));
        assert_eq!(
            out.profile["syscalls"],
            json!([{"names": ["bind"], "action": "SCMP_ACT_NOTIFY",
                    "comment": notify_rules(&out.profile)[0]["comment"]}])
        );
        assert!(
            out.notes[0].contains("defaultAction SCMP_ACT_ALLOW"),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn conditional_and_old_style_rules_lose_bind_and_notify_keeps_their_conditions() {
        let caps = json!({"caps": ["CAP_NET_ADMIN"]});
        let args = json!([{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}]);
        let out = agent(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "x-unknown": {"kept": true},
            "syscalls": [
                {"name": "bind", "action": "SCMP_ACT_ALLOW", "includes": caps},
                {"names": ["bind", "listen"], "action": "SCMP_ACT_LOG", "args": args, "x": 1},
                {"names": ["bind"], "action": "SCMP_ACT_ERRNO", "excludes": caps, "errnoRet": 1},
            ]
        }));
        let p = &out.profile;
        assert_eq!(p["x-unknown"], json!({"kept": true}));
        let rules = p["syscalls"].as_array().expect("rules");
        // The old-style rule is gone, `listen` keeps its rule, the denial stays,
        // and the NOTIFY rules take the places of the rules they replace.
        assert_eq!(rules[0]["includes"], caps);
        assert_eq!(rules[1]["args"], args);
        assert_eq!(
            rules[2],
            json!({"names": ["listen"], "action": "SCMP_ACT_LOG", "args": args, "x": 1})
        );
        assert_eq!(rules[3]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(notify_rules(p).len(), 2, "{p}");
        assert_eq!(out.notes.len(), 1, "{:?}", out.notes);
    }

    /// libseccomp keeps the first of two rules with the same conditions: a denial
    /// behind an ALLOW never applied, and must stay behind the NOTIFY rule; one
    /// ahead of it still wins, and so does any rule ahead of the default.
    #[test]
    fn notify_takes_the_place_of_the_rule_it_replaces() {
        let deny = json!({"names": ["bind"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1});
        let read = json!({"names": ["read"], "action": "SCMP_ACT_ALLOW"});
        let out = agent(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            read, {"names": ["bind", "listen"], "action": "SCMP_ACT_ALLOW"}, deny]}));
        let rules = &out.profile["syscalls"];
        assert_eq!(rules[0], read);
        assert_eq!(rules[1]["action"], "SCMP_ACT_NOTIFY", "{rules}");
        assert_eq!(rules[2]["names"], json!(["listen"]));
        assert_eq!(rules[3], deny);

        let out = agent(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            deny, {"names": ["bind"], "action": "SCMP_ACT_ALLOW"}]}));
        let rules = &out.profile["syscalls"];
        assert_eq!(rules[0], deny);
        assert_eq!(rules[1]["action"], "SCMP_ACT_NOTIFY", "{rules}");

        let out = agent(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [deny, read]}));
        let rules = &out.profile["syscalls"];
        assert_eq!(rules[0], deny);
        assert_eq!(rules[2]["action"], "SCMP_ACT_NOTIFY", "{rules}");
    }

    #[test]
    fn other_notify_rules_and_a_replaced_listener_are_noted() {
        let out = rewrite(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/other.sock",
                   "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}),
            &ProfileListener::default(),
        )
        .expect("rewrite");
        let notes = out.notes.join("\n");
        assert!(notes.contains("1 other SCMP_ACT_NOTIFY rule"), "{notes}");
        assert!(
            notes.contains("listenerPath /run/other.sock replaced"),
            "{notes}"
        );
        assert_eq!(
            out.profile["syscalls"][0],
            json!({"names": ["mount"], "action": "SCMP_ACT_NOTIFY"})
        );
    }

    #[test]
    fn a_profile_that_never_allows_bind_is_refused() {
        let e = rewrite(
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
            &ProfileListener::default(),
        )
        .expect_err("nothing to notify");
        assert!(matches!(e, ProfileError::BindNeverAllowed { .. }), "{e}");
    }

    #[test]
    fn bad_shapes_name_the_place() {
        for (v, what) in [
            (json!([]), "top level"),
            (json!({"syscalls": []}), "defaultAction"),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}),
                "syscalls",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [1]}),
                "syscalls[0]",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["bind"]}]}),
                "syscalls[0].action",
            ),
        ] {
            let e = rewrite(v, &ProfileListener::default()).expect_err("bad shape");
            assert!(e.to_string().contains(what), "{e} should name {what}");
        }
    }
}
