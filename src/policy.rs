//! Who may ask for what, who may approve it, and when it is approved by
//! itself: pure functions over the `[policy]` configuration. They return a
//! typed plan or a typed refusal that says, in words a user can act on, why.
//! The workflow (src/workflow.rs) asks and obeys; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{format_duration_ms, format_ms};
use crate::config::TargetConfig;
use crate::store::{AccessRequest, Protocol, RequestState};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Role name → identity-provider group names that carry it.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Roles that may see and act on everything (revoke any grant, end any session, read the audit log).
    #[serde(default)]
    pub admin_roles: Vec<String>,
    /// Roles that may read the audit log and list every grant and session.
    #[serde(default)]
    pub auditor_roles: Vec<String>,
    /// How long a request waits for approval before it lapses.
    #[serde(default = "default_request_ttl", with = "humantime_serde")]
    pub request_ttl: Duration,
    /// How far ahead a request may ask to start.
    #[serde(default = "default_max_start_delay", with = "humantime_serde")]
    pub max_start_delay: Duration,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_request_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_start_delay() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_approvals() -> u32 {
    1
}
fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Ssh]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// Roles that may request under this rule.
    pub requesters: Vec<String>,
    /// Target names this rule covers (`*` for all).
    #[serde(default)]
    pub targets: Vec<String>,
    /// Targets carrying any of these tags are covered too.
    #[serde(default)]
    pub target_tags: Vec<String>,
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
    /// Logins that may be requested on those targets.
    pub logins: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// Roles whose members may approve (never the requester).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Distinct approvals needed.
    #[serde(default = "default_approvals")]
    pub approvals: u32,
    /// Whether a request may include `-L` port forwarding.
    #[serde(default)]
    pub port_forwarding: bool,
    pub auto_approve: Option<AutoApprove>,
}

/// When a request is approved without anyone: the requester holds one of
/// `roles`, the duration is at most `max_duration`, and a reason is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoApprove {
    pub roles: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
}

impl PolicyConfig {
    /// Problems a configuration has, keyed by the offending setting.
    pub fn problems(&self, targets: &BTreeMap<String, TargetConfig>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let known: BTreeSet<&str> = self.roles.keys().map(String::as_str).collect();
        let check_roles = |key: String, roles: &[String], out: &mut Vec<(String, String)>| {
            for r in roles.iter().filter(|r| !known.contains(r.as_str())) {
                out.push((key.clone(), format!("role `{r}` is not defined in [policy.roles]")));
            }
        };
        check_roles("policy.admin_roles".into(), &self.admin_roles, &mut out);
        check_roles("policy.auditor_roles".into(), &self.auditor_roles, &mut out);
        let mut names = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |field: &str| format!("policy.rules[{i}].{field}");
            if !names.insert(rule.name.as_str()) {
                out.push((key("name"), format!("two rules are named `{}`", rule.name)));
            }
            check_roles(key("requesters"), &rule.requesters, &mut out);
            check_roles(key("approvers"), &rule.approvers, &mut out);
            if let Some(auto) = &rule.auto_approve {
                check_roles(key("auto_approve.roles"), &auto.roles, &mut out);
                if auto.max_duration > rule.max_duration {
                    out.push((key("auto_approve.max_duration"), "is longer than the rule's max_duration".into()));
                }
            }
            for t in rule.targets.iter().filter(|t| *t != "*" && !targets.contains_key(*t)) {
                out.push((key("targets"), format!("`{t}` is not in the inventory")));
            }
            if rule.targets.is_empty() && rule.target_tags.is_empty() {
                out.push((key("targets"), "name targets or target_tags".into()));
            }
            if rule.logins.is_empty() {
                out.push((key("logins"), "must name at least one login".into()));
            }
            if rule.max_duration.is_zero() {
                out.push((key("max_duration"), "must be longer than zero".into()));
            }
            if rule.approvals == 0 && rule.auto_approve.is_none() {
                out.push((
                    key("approvals"),
                    "must be at least 1 (use auto_approve for requests nobody approves)".into(),
                ));
            }
            if rule.approvals > 0 && rule.approvers.is_empty() {
                out.push((key("approvers"), "name the roles that approve".into()));
            }
        }
        out
    }

    /// The roles a person holds, from their identity-provider groups.
    pub fn roles_for(&self, groups: &[String]) -> Vec<String> {
        self.roles.iter().filter(|(_, gs)| gs.iter().any(|g| groups.contains(g))).map(|(r, _)| r.clone()).collect()
    }
}

/// Who is asking or approving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user: String,
    pub roles: Vec<String>,
}

impl Actor {
    fn holds_any(&self, roles: &[String]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSpec {
    pub target: String,
    pub protocol: Protocol,
    pub logins: Vec<String>,
    pub duration: Duration,
    /// When to start, if later than the approval.
    pub starts_at_ms: Option<i64>,
    pub port_forwarding: bool,
    pub reason: String,
}

/// How a request that passed the policy proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    pub rule: String,
    pub approver_roles: Vec<String>,
    pub approvals_needed: u32,
    pub auto_approved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestDenied {
    #[error("`{0}` is not a target of this gateway")]
    UnknownTarget(String),
    #[error("a reason is required: say what the access is for (a ticket, an incident)")]
    ReasonRequired,
    #[error("give at least one --login")]
    NoLogin,
    #[error("no policy lets your roles ({roles}) request {target}; ask an administrator which targets you may request")]
    NoRule { target: String, roles: String },
    #[error("{protocol} access to {target} is not requestable; allowed: {allowed}")]
    Protocol { target: String, protocol: Protocol, allowed: String },
    #[error("the login `{login}` cannot be requested on {target}; allowed: {allowed}")]
    Login { target: String, login: String, allowed: String },
    #[error("{requested} is longer than the {max} allowed for {target}; ask for {max} or less")]
    TooLong { target: String, requested: String, max: String },
    #[error("port forwarding cannot be requested on {target}")]
    Forwarding { target: String },
    #[error("the start time {} is in the past", format_ms(*.0))]
    StartInPast(i64),
    #[error("a request may start at most {} ahead", format_duration_ms(*.0))]
    StartTooFar(i64),
}

fn covers(rule: &Rule, name: &str, target: &TargetConfig) -> bool {
    rule.targets.iter().any(|t| t == "*" || t == name) || rule.target_tags.iter().any(|t| target.tags.contains(t))
}

fn duration_text(d: Duration) -> String {
    format_duration_ms(d.as_millis() as i64)
}

/// Checks a new request against the policy. The first rule that allows all of
/// it wins; when none does, the refusal comes from the closest one.
pub fn check_request(
    policy: &PolicyConfig,
    targets: &BTreeMap<String, TargetConfig>,
    who: &Actor,
    spec: &RequestSpec,
    now_ms: i64,
) -> Result<RequestPlan, RequestDenied> {
    let target = targets
        .get(&spec.target)
        .ok_or_else(|| RequestDenied::UnknownTarget(spec.target.chars().take(64).collect()))?;
    if spec.reason.trim().is_empty() {
        return Err(RequestDenied::ReasonRequired);
    }
    if spec.logins.is_empty() {
        return Err(RequestDenied::NoLogin);
    }
    if let Some(start) = spec.starts_at_ms {
        if start < now_ms - 60_000 {
            return Err(RequestDenied::StartInPast(start));
        }
        if start - now_ms > policy.max_start_delay.as_millis() as i64 {
            return Err(RequestDenied::StartTooFar(policy.max_start_delay.as_millis() as i64));
        }
    }
    let candidates: Vec<&Rule> =
        policy.rules.iter().filter(|r| who.holds_any(&r.requesters) && covers(r, &spec.target, target)).collect();
    let mut closest: Option<RequestDenied> = None;
    for rule in &candidates {
        let refusal = if !rule.protocols.contains(&spec.protocol) {
            let allowed = rule.protocols.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
            Some(RequestDenied::Protocol { target: spec.target.clone(), protocol: spec.protocol, allowed })
        } else if let Some(login) = spec.logins.iter().find(|l| !rule.logins.contains(l)) {
            Some(RequestDenied::Login {
                target: spec.target.clone(),
                login: login.clone(),
                allowed: rule.logins.join(", "),
            })
        } else if spec.duration > rule.max_duration || spec.duration.is_zero() {
            Some(RequestDenied::TooLong {
                target: spec.target.clone(),
                requested: duration_text(spec.duration),
                max: duration_text(rule.max_duration),
            })
        } else if spec.port_forwarding && !rule.port_forwarding {
            Some(RequestDenied::Forwarding { target: spec.target.clone() })
        } else {
            None
        };
        match refusal {
            None => {
                let auto_approved = rule
                    .auto_approve
                    .as_ref()
                    .is_some_and(|a| who.holds_any(&a.roles) && spec.duration <= a.max_duration);
                return Ok(RequestPlan {
                    rule: rule.name.clone(),
                    approver_roles: rule.approvers.clone(),
                    approvals_needed: rule.approvals,
                    auto_approved,
                });
            }
            Some(r) => {
                closest.get_or_insert(r);
            }
        }
    }
    Err(closest.unwrap_or_else(|| RequestDenied::NoRule {
        target: spec.target.clone(),
        roles: if who.roles.is_empty() { "none".into() } else { who.roles.join(", ") },
    }))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalDenied {
    #[error("request {id} is {state}, not pending")]
    NotPending { id: String, state: RequestState },
    #[error("you cannot approve your own request; someone with the role {roles} must")]
    OwnRequest { roles: String },
    #[error("approving this request needs one of the roles {roles}; you have {yours}")]
    NotAnApprover { roles: String, yours: String },
    #[error("you approved this request already; it needs {remaining} more approval(s) from someone else")]
    AlreadyApproved { remaining: u32 },
    #[error("the requested window ended at {}; the requester must ask again", format_ms(*.0))]
    WindowPassed(i64),
}

/// What an approval does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Enough approvals: the grant runs from `not_before_ms` to `expires_at_ms`.
    Granted { not_before_ms: i64, expires_at_ms: i64 },
    /// Recorded; more approvals are needed.
    Recorded { remaining: u32 },
}

/// The window a request gets when approved now: from the approval (or its
/// requested start, if later) to start + duration; `None` if it has passed.
pub fn window(request: &AccessRequest, now_ms: i64) -> Option<(i64, i64)> {
    let duration = request.duration_secs as i64 * 1000;
    let (start, end) = match request.starts_at_ms {
        Some(s) => (s.max(now_ms), s + duration),
        None => (now_ms, now_ms + duration),
    };
    (end > now_ms).then_some((start, end))
}

/// Checks an approval of `request` by `who`.
pub fn check_approval(request: &AccessRequest, who: &Actor, now_ms: i64) -> Result<Approval, ApprovalDenied> {
    let state = request.state(now_ms);
    if state != RequestState::Pending {
        return Err(ApprovalDenied::NotPending { id: request.id.clone(), state });
    }
    let roles = request.approver_roles.join(" or ");
    if who.user.eq_ignore_ascii_case(&request.requester) {
        return Err(ApprovalDenied::OwnRequest { roles });
    }
    if !who.holds_any(&request.approver_roles) {
        let yours = if who.roles.is_empty() { "none".into() } else { who.roles.join(", ") };
        return Err(ApprovalDenied::NotAnApprover { roles, yours });
    }
    let remaining_before = request.approvals_needed.saturating_sub(request.approvals.len() as u32);
    if request.approvals.iter().any(|a| a.by.eq_ignore_ascii_case(&who.user)) {
        return Err(ApprovalDenied::AlreadyApproved { remaining: remaining_before });
    }
    let (start, end) = window(request, now_ms).ok_or_else(|| {
        ApprovalDenied::WindowPassed(request.starts_at_ms.unwrap_or(now_ms) + request.duration_secs as i64 * 1000)
    })?;
    if remaining_before <= 1 {
        Ok(Approval::Granted { not_before_ms: start, expires_at_ms: end })
    } else {
        Ok(Approval::Recorded { remaining: remaining_before - 1 })
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
