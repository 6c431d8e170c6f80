//! The CLI's side of the HTTPS API: `login`, `request`, `requests`,
//! `approve`, `deny`, `cancel`, `grants`, `revoke`, `sessions`, `audit`.
//!
//! The session from `jit-gateway login` is kept in
//! `~/.config/jit-gateway/session.json` (or `$JITGW_SESSION`), mode 0600:
//! the gateway's URL, its CA file if any, and the gateway's own session token
//! (never the identity provider's tokens).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use jit_gateway::clock::{Clock, SystemClock, format_duration_ms, format_ms};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::table;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    gateway: String,
    ca_file: Option<PathBuf>,
    token: String,
    user: String,
    expires_ms: i64,
}

static SESSION_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// `--session FILE` (or `JITGW_SESSION`).
pub fn use_session_file(path: PathBuf) {
    let _ = SESSION_FILE.set(path);
}

fn session_file() -> PathBuf {
    if let Some(p) = SESSION_FILE.get() {
        return p.clone();
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("jit-gateway/session.json")
}

fn save(saved: &Saved) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = session_file();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(serde_json::to_string_pretty(saved)?.as_bytes())?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot save the session in {}", path.display()))?;
    Ok(())
}

fn load() -> Result<Saved> {
    let path = session_file();
    let text = std::fs::read_to_string(&path)
        .map_err(|_| anyhow!("not signed in: run `jit-gateway login --gateway https://<gateway>:8443`"))?;
    let saved: Saved = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged; run `jit-gateway login` again", path.display()))?;
    if saved.expires_ms <= SystemClock.now_ms() {
        bail!("your session at {} has expired: run `jit-gateway login --gateway {}`", saved.gateway, saved.gateway);
    }
    Ok(saved)
}

/// True when a signed-in session is at hand (so commands use the API).
pub fn signed_in() -> bool {
    load().is_ok()
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(gateway: &str, ca_file: Option<&Path>, token: Option<String>) -> Result<Api> {
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read --ca-file {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        let base = gateway.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            bail!("--gateway must be an https:// URL (got {base})");
        }
        Ok(Api { http: builder.build()?, base, token })
    }

    fn signed_in() -> Result<Api> {
        let saved = load()?;
        Api::new(&saved.gateway, saved.ca_file.as_deref(), Some(saved.token))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut request = self.http.request(method, format!("{}/api/v1{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.map_err(|e| anyhow!("cannot reach the gateway at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A call whose non-2xx answer becomes an error with the gateway's words.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, value) = self.send(method, path, body).await?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value.get("error").and_then(|v| v.as_str()).unwrap_or("request failed");
        let hint = value.get("hint").and_then(|v| v.as_str());
        match (status, hint) {
            (401, _) => bail!("{message}: run `jit-gateway login --gateway {}`", self.base),
            (_, Some(h)) => bail!("{message} ({h})"),
            _ => bail!("{message}"),
        }
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

// ---- login -----------------------------------------------------------------

#[derive(Args)]
pub struct LoginArgs {
    /// The gateway's API, e.g. https://jit-gateway:8443
    #[arg(long, env = "JITGW_GATEWAY")]
    gateway: String,
    /// CA certificate (PEM) to trust for the gateway, e.g. its self-signed certs/tls.crt.
    #[arg(long, env = "JITGW_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Sign in in a browser (authorization code + PKCE, loopback redirect) instead of with a code.
    #[arg(long)]
    browser: bool,
    /// With --browser: print the sign-in URL instead of opening a browser.
    #[arg(long)]
    no_open: bool,
}

pub async fn login(args: LoginArgs) -> Result<()> {
    let ca_file = args.ca_file.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    let api = Api::new(&args.gateway, ca_file.as_deref(), None)?;
    let issued = if args.browser { browser_login(&api, args.no_open).await? } else { device_login(&api).await? };
    let saved = Saved {
        gateway: api.base.clone(),
        ca_file,
        token: issued["token"].as_str().ok_or_else(|| anyhow!("the gateway sent no token"))?.to_string(),
        user: issued["user"].as_str().unwrap_or_default().to_string(),
        expires_ms: issued["expires_ms"].as_i64().unwrap_or(0),
    };
    save(&saved)?;
    eprintln!("Signed in as {} at {} (until {}).", saved.user, saved.gateway, format_ms(saved.expires_ms));
    Ok(())
}

async fn device_login(api: &Api) -> Result<Value> {
    let started = api.call(reqwest::Method::POST, "/login/device", None).await?;
    let code = started["user_code"].as_str().unwrap_or_default();
    match started["verification_uri_complete"].as_str() {
        Some(url) => eprintln!("To sign in, open:\n\n    {url}\n\nand check that it shows the code {code}."),
        None => eprintln!(
            "To sign in, open:\n\n    {}\n\nand enter the code {code}.",
            started["verification_uri"].as_str().unwrap_or_default()
        ),
    }
    eprintln!("Waiting for approval...");
    let login_id = started["login_id"].as_str().unwrap_or_default().to_string();
    loop {
        let (status, value) =
            api.send(reqwest::Method::POST, "/login/device/wait", Some(json!({"login_id": login_id}))).await?;
        match status {
            200 => return Ok(value),
            202 => continue,
            _ => bail!("{}", value.get("error").and_then(|v| v.as_str()).unwrap_or("sign-in failed")),
        }
    }
}

async fn browser_login(api: &Api, no_open: bool) -> Result<Value> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot listen on a loopback port for the browser's answer")?;
    let redirect = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
    let started = api.call(reqwest::Method::POST, "/login/code", Some(json!({"redirect_uri": redirect}))).await?;
    let url = started["authorize_url"].as_str().unwrap_or_default().to_string();
    let opened = !no_open
        && std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !opened {
        eprintln!("Open this URL in a browser to sign in:\n\n    {url}\n");
    }
    eprintln!("Waiting for the browser...");
    let (code, state) = tokio::task::spawn_blocking(move || receive_callback(listener)).await??;
    let login_id = started["login_id"].as_str().unwrap_or_default();
    api.call(
        reqwest::Method::POST,
        "/login/code/finish",
        Some(json!({"login_id": login_id, "code": code, "state": state})),
    )
    .await
}

/// Takes the browser's redirect on the loopback listener: `GET /callback?code=...&state=...`.
fn receive_callback(listener: std::net::TcpListener) -> Result<(String, String)> {
    loop {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let target = line.split_whitespace().nth(1).unwrap_or("");
        let Ok(url) = reqwest::Url::parse(&format!("http://127.0.0.1{target}")) else { continue };
        if url.path() != "/callback" {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            continue;
        }
        let get = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
        let (body, result) = match (get("code"), get("state"), get("error")) {
            (Some(code), Some(state), _) => {
                ("Signed in. You can close this tab and return to the terminal.", Ok((code, state)))
            }
            (_, _, Some(error)) => {
                ("Sign-in failed. Return to the terminal.", Err(anyhow!("the identity provider answered: {error}")))
            }
            _ => ("Unexpected answer. Return to the terminal.", Err(anyhow!("the browser's answer had no code"))),
        };
        let page = format!("<!doctype html><title>jit-gateway</title><p>{body}</p>");
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
        return result;
    }
}

pub async fn logout() -> Result<()> {
    if let Ok(api) = Api::signed_in() {
        let _ = api.send(reqwest::Method::POST, "/logout", None).await;
    }
    let _ = std::fs::remove_file(session_file());
    eprintln!("Signed out.");
    Ok(())
}

pub async fn whoami(json_out: bool) -> Result<()> {
    let me = Api::signed_in()?.call(reqwest::Method::GET, "/me", None).await?;
    if json_out {
        return print_json(&me);
    }
    let roles: Vec<&str> =
        me["roles"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    println!(
        "{} (roles: {}; session until {})",
        me["user"].as_str().unwrap_or("?"),
        if roles.is_empty() { "none".into() } else { roles.join(", ") },
        format_ms(me["session_expires_ms"].as_i64().unwrap_or(0))
    );
    Ok(())
}

// ---- requests --------------------------------------------------------------

#[derive(Args)]
pub struct RequestArgs {
    target: String,
    #[arg(long = "login", required = true)]
    logins: Vec<String>,
    /// How long, e.g. 2h.
    #[arg(long = "for")]
    duration: String,
    #[arg(long)]
    reason: String,
    /// Start later: an RFC 3339 time ...
    #[arg(long, conflicts_with = "starts_in")]
    starts_at: Option<String>,
    /// ... or a delay, e.g. 30m.
    #[arg(long, value_parser = humantime::parse_duration)]
    starts_in: Option<Duration>,
    #[arg(long, default_value = "ssh")]
    protocol: String,
    #[arg(long)]
    port_forwarding: bool,
    #[arg(long)]
    json: bool,
}

fn request_row(r: &Value, now: i64) -> Vec<String> {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    let logins: Vec<&str> =
        r["logins"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    let approvals =
        format!("{}/{}", r["approvals"].as_array().map_or(0, |a| a.len()), r["approvals_needed"].as_u64().unwrap_or(0));
    let age = format!("{} ago", format_duration_ms(now - r["created_ms"].as_i64().unwrap_or(now)));
    vec![
        s("id"),
        s("state"),
        s("requester"),
        s("target"),
        logins.join(","),
        format_duration_ms(r["duration_secs"].as_i64().unwrap_or(0) * 1000),
        approvals,
        age,
        s("reason").chars().take(50).collect(),
    ]
}

const REQUEST_HEADERS: [&str; 9] =
    ["ID", "STATE", "REQUESTER", "TARGET", "LOGINS", "FOR", "APPROVALS", "FILED", "REASON"];

pub async fn request(args: RequestArgs) -> Result<()> {
    let starts_at = match (&args.starts_at, args.starts_in) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(d)) => Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now() + d).to_string()),
        _ => None,
    };
    let body = json!({
        "target": args.target, "protocol": args.protocol, "logins": args.logins, "duration": args.duration,
        "starts_at": starts_at, "port_forwarding": args.port_forwarding, "reason": args.reason,
    });
    let created = Api::signed_in()?.call(reqwest::Method::POST, "/requests", Some(body)).await?;
    if args.json {
        return print_json(&created);
    }
    let r = &created["request"];
    let id = r["id"].as_str().unwrap_or("?");
    match created["grant"]["id"].as_str() {
        Some(grant) => println!(
            "{id}: approved automatically by policy `{}`; grant {grant} runs until {}.",
            r["rule"].as_str().unwrap_or("?"),
            format_ms(created["grant"]["expires_at_ms"].as_i64().unwrap_or(0))
        ),
        None => {
            let roles: Vec<&str> = r["approver_roles"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let people: Vec<&str> =
                r["approvers"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
            println!(
                "{id}: pending. It needs {} approval(s) from the role {}.",
                r["approvals_needed"],
                roles.join(" or ")
            );
            if people.is_empty() {
                println!("Nobody with that role has signed in to the gateway yet.");
            } else {
                println!("They can approve it: {}", people.join(", "));
            }
            println!("Follow it with `jit-gateway requests`; once approved, connect with ssh -J as usual.");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct RequestsArgs {
    /// Only the requests waiting for your approval.
    #[arg(long)]
    to_approve: bool,
    /// Only your own requests.
    #[arg(long, conflicts_with = "to_approve")]
    mine: bool,
    /// Every request (admins and auditors).
    #[arg(long, conflicts_with_all = ["to_approve", "mine"])]
    all: bool,
    #[arg(long)]
    json: bool,
}

pub async fn requests(args: RequestsArgs) -> Result<()> {
    let api = Api::signed_in()?;
    let now = SystemClock.now_ms();
    let scopes: Vec<(&str, &str)> = if args.all {
        vec![("all", "All requests")]
    } else if args.to_approve {
        vec![("to-approve", "Waiting for your approval")]
    } else if args.mine {
        vec![("mine", "Your requests")]
    } else {
        vec![("to-approve", "Waiting for your approval"), ("mine", "Your requests")]
    };
    let mut everything = serde_json::Map::new();
    for (scope, title) in scopes {
        let list = api.call(reqwest::Method::GET, &format!("/requests?scope={scope}"), None).await?;
        if args.json {
            everything.insert(scope.to_string(), list);
            continue;
        }
        let rows: Vec<Vec<String>> =
            list.as_array().map(|a| a.iter().map(|r| request_row(r, now)).collect()).unwrap_or_default();
        println!("{title}:");
        if rows.is_empty() {
            println!("  (none)");
        } else {
            table(&REQUEST_HEADERS, rows);
        }
        println!();
    }
    if args.json {
        print_json(&Value::Object(everything))?;
    }
    Ok(())
}

pub async fn decide(action: &str, id: &str, text: &str, json_out: bool) -> Result<()> {
    let body = match action {
        "approve" => json!({"comment": text}),
        "deny" => json!({"reason": text}),
        _ => json!({}),
    };
    let method = reqwest::Method::POST;
    let result = Api::signed_in()?
        .call(method, &format!("/requests/{id}/{action}"), if action == "cancel" { None } else { Some(body) })
        .await?;
    if json_out {
        return print_json(&result);
    }
    match action {
        "approve" => match result["grant"]["id"].as_str() {
            Some(grant) => println!(
                "approved {id}: grant {grant} lets {} reach {} until {}",
                result["grant"]["user"].as_str().unwrap_or("?"),
                result["grant"]["target"].as_str().unwrap_or("?"),
                format_ms(result["grant"]["expires_at_ms"].as_i64().unwrap_or(0))
            ),
            None => {
                let r = &result["request"];
                let missing = r["approvals_needed"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(r["approvals"].as_array().map_or(0, |a| a.len() as u64));
                println!("approval recorded for {id}; it needs {missing} more from someone else");
            }
        },
        "deny" => println!("denied {id}"),
        _ => println!("cancelled {id}"),
    }
    Ok(())
}

// ---- grants, sessions --------------------------------------------------------

pub async fn grants(all_users: bool, include_ended: bool, json_out: bool) -> Result<()> {
    let scope = if all_users { "all" } else { "mine" };
    let list = Api::signed_in()?
        .call(reqwest::Method::GET, &format!("/grants?scope={scope}&all={include_ended}"), None)
        .await?;
    if json_out {
        return print_json(&list);
    }
    let now = SystemClock.now_ms();
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| {
                    let s = |k: &str| g[k].as_str().unwrap_or("").to_string();
                    let status = s("status");
                    let when = match status.as_str() {
                        "live" => {
                            format!("ends in {}", format_duration_ms(g["expires_at_ms"].as_i64().unwrap_or(0) - now))
                        }
                        "scheduled" => {
                            format!("starts in {}", format_duration_ms(g["not_before_ms"].as_i64().unwrap_or(0) - now))
                        }
                        _ => format!(
                            "ended {}",
                            format_ms(
                                g["revocation"]["at_ms"].as_i64().unwrap_or(g["expires_at_ms"].as_i64().unwrap_or(0))
                            )
                        ),
                    };
                    let logins: Vec<&str> = g["logins"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    vec![
                        s("id"),
                        status,
                        s("user"),
                        s("target"),
                        logins.join(","),
                        when,
                        s("reason").chars().take(40).collect(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("no grants");
    } else {
        table(&["GRANT", "STATUS", "USER", "TARGET", "LOGINS", "WHEN", "REASON"], rows);
    }
    Ok(())
}

pub async fn revoke(id: &str, reason: &str, json_out: bool) -> Result<()> {
    let g = Api::signed_in()?
        .call(reqwest::Method::POST, &format!("/grants/{id}/revoke"), Some(json!({"reason": reason})))
        .await?;
    if json_out {
        return print_json(&g);
    }
    println!(
        "revoked {id}: sessions of {} on {} are being ended",
        g["user"].as_str().unwrap_or("?"),
        g["target"].as_str().unwrap_or("?")
    );
    Ok(())
}

pub async fn sessions(all_users: bool) -> Result<Value> {
    let scope = if all_users { "all" } else { "mine" };
    Api::signed_in()?.call(reqwest::Method::GET, &format!("/sessions?scope={scope}"), None).await
}

pub async fn kill(id: &str, reason: &str) -> Result<()> {
    Api::signed_in()?
        .call(reqwest::Method::POST, &format!("/sessions/{id}/kill"), Some(json!({"reason": reason})))
        .await?;
    println!("ending session {id}");
    Ok(())
}

// ---- audit -----------------------------------------------------------------

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// An event kind or family, e.g. grant or request.approved
    #[arg(long)]
    kind: Option<String>,
    /// RFC 3339
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// JSON lines, one record per line (for export).
    #[arg(long)]
    jsonl: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Prove the hash chain and its signed head; names the first broken record.
    Verify {
        /// Read this store file directly (the gateway must be stopped).
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

pub async fn audit(config_path: &Path, args: AuditArgs) -> Result<()> {
    if let Some(AuditCommand::Verify { db }) = args.command {
        return audit_verify(config_path, db).await;
    }
    let mut query = vec![format!("limit={}", args.limit)];
    for (k, v) in [
        ("user", &args.user),
        ("target", &args.target),
        ("kind", &args.kind),
        ("since", &args.since),
        ("until", &args.until),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", url_encode(v)));
        }
    }
    let records = Api::signed_in()?.call(reqwest::Method::GET, &format!("/audit?{}", query.join("&")), None).await?;
    let records = records.as_array().cloned().unwrap_or_default();
    if args.jsonl {
        for r in &records {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    let rows = records
        .iter()
        .map(|r| {
            let details = r["details"].to_string();
            vec![
                r["seq"].to_string(),
                format_ms(r["at_ms"].as_i64().unwrap_or(0)),
                r["kind"].as_str().unwrap_or("").into(),
                r["actor"].as_str().unwrap_or("").into(),
                r["target"].as_str().unwrap_or("").into(),
                details.chars().take(80).collect(),
            ]
        })
        .collect();
    table(&["SEQ", "TIME", "EVENT", "ACTOR", "TARGET", "DETAILS"], rows);
    Ok(())
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn audit_verify(config_path: &Path, db: Option<PathBuf>) -> Result<()> {
    let report = match db {
        None if signed_in() => Api::signed_in()?.call(reqwest::Method::GET, "/audit/verify", None).await?,
        db => {
            let config = jit_gateway::config::Config::load(config_path).map_err(|e| anyhow!("{e}"))?;
            let path = db.unwrap_or_else(|| config.gateway.state_dir.join("gateway.redb"));
            let signer_file = config.gateway.certs_dir.join("signing_ed25519_key.pub");
            let signer = russh::keys::PublicKey::from_openssh(std::fs::read_to_string(&signer_file)?.trim())?;
            let store = jit_gateway::store::RedbStore::open(&path).map_err(|e| {
                anyhow!("{e} (if the gateway is running, sign in and run `jit-gateway audit verify` without --db)")
            })?;
            use jit_gateway::store::Store;
            let records = store.audit_records(1, usize::MAX)?;
            let head = store.audit_head()?;
            match jit_gateway::audit::verify(&records, head.as_ref(), &signer) {
                Ok(ok) => json!({"ok": true, "records": ok.records, "head_hash": ok.head_hash}),
                Err(broken) => json!({"ok": false, "broken": broken.to_string()}),
            }
        }
    };
    if report["ok"].as_bool() == Some(true) {
        println!(
            "OK: {} audit records, chain intact, head {} signed by the gateway",
            report["records"],
            report["head_hash"].as_str().unwrap_or("?")
        );
        Ok(())
    } else {
        bail!("the audit log does not verify: {}", report["broken"].as_str().unwrap_or("unknown problem"))
    }
}

// ---- RDP -------------------------------------------------------------------

#[derive(Args)]
pub struct RdpArgs {
    /// The target, as `jit-gateway grants` names it.
    pub target: String,
    /// Log in as (default: the first login your grant allows).
    #[arg(long)]
    pub login: Option<String>,
    /// Where to write the `.rdp` file (default `<target>.rdp` here).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// `jit-gateway rdp vm2`: a single-use ticket in a `.rdp` file (0600), and the xfreerdp line.
pub async fn rdp(args: RdpArgs) -> Result<()> {
    let mut body = json!({"target": args.target});
    if let Some(login) = &args.login {
        body["login"] = json!(login);
    }
    let issued = Api::signed_in()?.call(reqwest::Method::POST, "/rdp/tickets", Some(body)).await?;
    let ticket: jit_gateway::rdp::IssuedTicket = serde_json::from_value(issued.clone())?;
    let path = args.out.unwrap_or_else(|| PathBuf::from(format!("{}.rdp", ticket.target)));
    write_private(&path, ticket.rdp_file.as_bytes())?;
    if args.json {
        return print_json(
            &json!({"file": path, "target": ticket.target, "login": ticket.login, "grant": ticket.grant,
                                   "expires": jit_gateway::clock::format_ms(ticket.expires_ms), "address": ticket.address}),
        );
    }
    println!(
        "wrote {} for {} as {} (grant {}); use it before {} (single use)",
        path.display(),
        ticket.target,
        ticket.login,
        ticket.grant,
        jit_gateway::clock::format_ms(ticket.expires_ms)
    );
    println!("open it with mstsc or Remmina, or run:");
    let cert = match &ticket.certificate_sha256 {
        Some(hex) => format!("/cert:fingerprint:sha256:{hex}"),
        None => "/cert:tofu".into(),
    };
    println!("  xfreerdp /v:{} /pcb:{} {cert}", ticket.address, ticket.ticket);
    Ok(())
}

fn write_private(path: &std::path::Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}
