//! One test per policy rule and per refusal reason.

use super::*;
use crate::store::Decision;

const NOW: i64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn policy() -> PolicyConfig {
    toml::from_str(
        r#"
        admin_roles = ["ops"]
        [roles]
        ops = ["ops", "sre"]
        dev = ["dev"]
        oncall = ["pager"]

        [[rules]]
        name = "dev-linux"
        requesters = ["dev", "oncall"]
        targets = ["vm1"]
        target_tags = ["linux"]
        logins = ["admin", "deploy"]
        max_duration = "4h"
        approvers = ["ops"]
        auto_approve = { roles = ["oncall"], max_duration = "1h" }

        [[rules]]
        name = "prod-two-person"
        requesters = ["dev", "ops"]
        targets = ["db1"]
        protocols = ["ssh", "rdp"]
        logins = ["dba"]
        max_duration = "2h"
        approvers = ["ops"]
        approvals = 2
        port_forwarding = true
        "#,
    )
    .unwrap()
}

fn targets() -> BTreeMap<String, TargetConfig> {
    let t = |tags: &[&str]| TargetConfig {
        address: "10.0.0.1".into(),
        ssh_port: 22,
        host_key: None,
        tags: tags.iter().map(|s| s.to_string()).collect(),
        description: String::new(),
        ..TargetConfig::default()
    };
    BTreeMap::from([
        ("vm1".into(), t(&[])),
        ("vm2".into(), t(&["linux"])),
        ("db1".into(), t(&["db"])),
        ("win1".into(), t(&["windows"])),
    ])
}

fn actor(user: &str, roles: &[&str]) -> Actor {
    Actor { user: user.into(), roles: roles.iter().map(|s| s.to_string()).collect() }
}

fn spec(target: &str, login: &str, duration: Duration) -> RequestSpec {
    RequestSpec {
        target: target.into(),
        protocol: Protocol::Ssh,
        logins: vec![login.into()],
        duration,
        starts_at_ms: None,
        port_forwarding: false,
        reason: "INC-4711 disk full".into(),
    }
}

fn request(plan: &RequestPlan, s: &RequestSpec, requester: &str) -> AccessRequest {
    AccessRequest {
        id: "q-1".into(),
        requester: requester.into(),
        requester_roles: vec!["dev".into()],
        target: s.target.clone(),
        protocol: s.protocol,
        logins: s.logins.clone(),
        port_forwarding: s.port_forwarding,
        duration_secs: s.duration.as_secs(),
        starts_at_ms: s.starts_at_ms,
        reason: s.reason.clone(),
        created_ms: NOW,
        expires_ms: NOW + 24 * 3_600_000,
        rule: plan.rule.clone(),
        approver_roles: plan.approver_roles.clone(),
        approvals_needed: plan.approvals_needed,
        approvals: vec![],
        denial: None,
        cancelled: None,
        auto_approved: false,
        grant_id: None,
    }
}

#[test]
fn groups_map_to_roles() {
    let p = policy();
    assert_eq!(p.roles_for(&["sre".into(), "other".into()]), ["ops"]);
    assert_eq!(p.roles_for(&["dev".into(), "pager".into()]), ["dev", "oncall"]);
    assert!(p.roles_for(&[]).is_empty());
}

#[test]
fn the_shipped_shape_has_no_problems_and_mistakes_are_named() {
    assert!(policy().problems(&targets()).is_empty(), "{:?}", policy().problems(&targets()));
    let mut p = policy();
    p.rules[0].approvers = vec!["nobody".into()];
    p.rules[1].targets = vec!["vm9".into()];
    let problems = p.problems(&targets());
    assert!(problems.iter().any(|(k, m)| k == "policy.rules[0].approvers" && m.contains("`nobody`")), "{problems:?}");
    assert!(problems.iter().any(|(k, m)| k == "policy.rules[1].targets" && m.contains("`vm9`")), "{problems:?}");
}

#[test]
fn a_role_may_request_targets_by_name() {
    let plan =
        check_request(&policy(), &targets(), &actor("bob", &["dev"]), &spec("vm1", "admin", 2 * HOUR), NOW).unwrap();
    assert_eq!(
        plan,
        RequestPlan {
            rule: "dev-linux".into(),
            approver_roles: vec!["ops".into()],
            approvals_needed: 1,
            auto_approved: false
        }
    );
}

#[test]
fn a_role_may_request_targets_by_tag() {
    let plan =
        check_request(&policy(), &targets(), &actor("bob", &["dev"]), &spec("vm2", "deploy", HOUR), NOW).unwrap();
    assert_eq!(plan.rule, "dev-linux");
}

#[test]
fn a_target_no_rule_covers_for_the_roles_is_refused() {
    let err =
        check_request(&policy(), &targets(), &actor("bob", &["dev"]), &spec("win1", "admin", HOUR), NOW).unwrap_err();
    assert!(matches!(err, RequestDenied::NoRule { .. }));
    assert!(err.to_string().contains("no policy lets your roles (dev) request win1"), "{err}");
    let err = check_request(&policy(), &targets(), &actor("carol", &[]), &spec("vm1", "admin", HOUR), NOW).unwrap_err();
    assert!(err.to_string().contains("roles (none)"), "{err}");
}

#[test]
fn an_unknown_target_is_refused() {
    let err = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &spec("10.0.0.1", "admin", HOUR), NOW)
        .unwrap_err();
    assert_eq!(err, RequestDenied::UnknownTarget("10.0.0.1".into()));
}

#[test]
fn a_login_outside_the_rule_is_refused_with_the_allowed_ones() {
    let err =
        check_request(&policy(), &targets(), &actor("bob", &["dev"]), &spec("vm1", "root", HOUR), NOW).unwrap_err();
    assert!(err.to_string().contains("`root` cannot be requested on vm1; allowed: admin, deploy"), "{err}");
}

#[test]
fn a_duration_beyond_the_maximum_is_refused_with_the_maximum() {
    let err = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &spec("vm1", "admin", 5 * HOUR), NOW)
        .unwrap_err();
    assert!(matches!(err, RequestDenied::TooLong { .. }));
    assert!(err.to_string().contains("5h is longer than the 4h allowed for vm1"), "{err}");
}

#[test]
fn a_protocol_outside_the_rule_is_refused() {
    let mut s = spec("vm1", "admin", HOUR);
    s.protocol = Protocol::Rdp;
    let err = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).unwrap_err();
    assert!(matches!(err, RequestDenied::Protocol { .. }), "{err}");
}

#[test]
fn port_forwarding_needs_a_rule_that_allows_it() {
    let mut s = spec("vm1", "admin", HOUR);
    s.port_forwarding = true;
    let err = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).unwrap_err();
    assert!(matches!(err, RequestDenied::Forwarding { .. }));
    let mut s = spec("db1", "dba", HOUR);
    s.port_forwarding = true;
    assert!(check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).is_ok());
}

#[test]
fn a_reason_and_a_login_are_required() {
    let mut s = spec("vm1", "admin", HOUR);
    s.reason = "  ".into();
    assert_eq!(
        check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW),
        Err(RequestDenied::ReasonRequired)
    );
    let mut s = spec("vm1", "admin", HOUR);
    s.logins.clear();
    assert_eq!(check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW), Err(RequestDenied::NoLogin));
}

#[test]
fn start_times_must_be_ahead_but_not_too_far() {
    let mut s = spec("vm1", "admin", HOUR);
    s.starts_at_ms = Some(NOW - 3_600_000);
    assert!(matches!(
        check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW),
        Err(RequestDenied::StartInPast(_))
    ));
    s.starts_at_ms = Some(NOW + 30 * 24 * 3_600_000);
    assert!(matches!(
        check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW),
        Err(RequestDenied::StartTooFar(_))
    ));
    s.starts_at_ms = Some(NOW + 3_600_000);
    assert!(check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).is_ok());
}

#[test]
fn auto_approval_needs_the_role_and_a_short_duration() {
    let plan =
        check_request(&policy(), &targets(), &actor("pat", &["oncall"]), &spec("vm1", "admin", HOUR), NOW).unwrap();
    assert!(plan.auto_approved);
    let plan =
        check_request(&policy(), &targets(), &actor("pat", &["oncall"]), &spec("vm1", "admin", 2 * HOUR), NOW).unwrap();
    assert!(!plan.auto_approved, "longer than the auto-approval limit goes to a person");
    let plan = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &spec("vm1", "admin", HOUR), NOW).unwrap();
    assert!(!plan.auto_approved, "dev is not an auto-approved role");
}

#[test]
fn an_approver_grants_from_the_approval_to_the_end_of_the_duration() {
    let s = spec("vm1", "admin", 2 * HOUR);
    let plan = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).unwrap();
    let r = request(&plan, &s, "bob");
    let later = NOW + 600_000;
    assert_eq!(
        check_approval(&r, &actor("alice", &["ops"]), later),
        Ok(Approval::Granted { not_before_ms: later, expires_at_ms: later + 7_200_000 })
    );
}

#[test]
fn nobody_approves_their_own_request() {
    let s = spec("db1", "dba", HOUR);
    let plan = check_request(&policy(), &targets(), &actor("olga", &["ops"]), &s, NOW).unwrap();
    let r = request(&plan, &s, "olga");
    let err = check_approval(&r, &actor("Olga", &["ops"]), NOW).unwrap_err();
    assert!(matches!(err, ApprovalDenied::OwnRequest { .. }), "{err}");
    assert!(err.to_string().contains("cannot approve your own request"));
}

#[test]
fn only_approver_roles_approve() {
    let s = spec("vm1", "admin", HOUR);
    let plan = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).unwrap();
    let r = request(&plan, &s, "bob");
    let err = check_approval(&r, &actor("dave", &["dev"]), NOW).unwrap_err();
    assert!(err.to_string().contains("needs one of the roles ops; you have dev"), "{err}");
}

#[test]
fn two_person_rules_need_two_distinct_approvers() {
    let s = spec("db1", "dba", HOUR);
    let plan = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).unwrap();
    let mut r = request(&plan, &s, "bob");
    assert_eq!(check_approval(&r, &actor("alice", &["ops"]), NOW), Ok(Approval::Recorded { remaining: 1 }));
    r.approvals.push(Decision { by: "alice".into(), at_ms: NOW, comment: String::new() });
    assert_eq!(
        check_approval(&r, &actor("alice", &["ops"]), NOW),
        Err(ApprovalDenied::AlreadyApproved { remaining: 1 })
    );
    assert!(matches!(check_approval(&r, &actor("olga", &["ops"]), NOW), Ok(Approval::Granted { .. })));
}

#[test]
fn a_requested_later_start_is_kept_and_a_passed_window_is_refused() {
    let mut s = spec("vm1", "admin", HOUR);
    s.starts_at_ms = Some(NOW + 7_200_000);
    let plan = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).unwrap();
    let r = request(&plan, &s, "bob");
    assert_eq!(
        check_approval(&r, &actor("alice", &["ops"]), NOW),
        Ok(Approval::Granted { not_before_ms: NOW + 7_200_000, expires_at_ms: NOW + 10_800_000 })
    );
    // Approved during the window: from the approval to the window's end, never longer.
    assert_eq!(
        check_approval(&r, &actor("alice", &["ops"]), NOW + 9_000_000),
        Ok(Approval::Granted { not_before_ms: NOW + 9_000_000, expires_at_ms: NOW + 10_800_000 })
    );
    let err = check_approval(&r, &actor("alice", &["ops"]), NOW + 11_000_000).unwrap_err();
    assert!(matches!(err, ApprovalDenied::WindowPassed(_)), "{err}");
}

#[test]
fn decided_cancelled_and_lapsed_requests_cannot_be_approved() {
    let s = spec("vm1", "admin", HOUR);
    let plan = check_request(&policy(), &targets(), &actor("bob", &["dev"]), &s, NOW).unwrap();
    let alice = actor("alice", &["ops"]);
    let mut denied = request(&plan, &s, "bob");
    denied.denial = Some(Decision { by: "olga".into(), at_ms: NOW, comment: "no".into() });
    assert!(check_approval(&denied, &alice, NOW).unwrap_err().to_string().contains("is denied, not pending"));
    let mut cancelled = request(&plan, &s, "bob");
    cancelled.cancelled = Some(Decision { by: "bob".into(), at_ms: NOW, comment: String::new() });
    assert!(matches!(
        check_approval(&cancelled, &alice, NOW),
        Err(ApprovalDenied::NotPending { state: RequestState::Cancelled, .. })
    ));
    let lapsed = request(&plan, &s, "bob");
    assert!(matches!(
        check_approval(&lapsed, &alice, NOW + 25 * 3_600_000),
        Err(ApprovalDenied::NotPending { state: RequestState::Lapsed, .. })
    ));
    let mut approved = request(&plan, &s, "bob");
    approved.grant_id = Some("g-1".into());
    assert!(matches!(
        check_approval(&approved, &alice, NOW),
        Err(ApprovalDenied::NotPending { state: RequestState::Approved, .. })
    ));
}
