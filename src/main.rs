//! The `jit-gateway` command: runs the gateway, and the tools around it
//! (grants, sessions, recordings, replay, key and ssh-config helpers).

mod cli;
mod cli_api;
mod cli_verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jit-gateway",
    version,
    about = "Just-in-time access gateway for SSH: OIDC sign-in, time-limited grants, recorded sessions"
)]
struct Args {
    /// Configuration file.
    #[arg(short, long, env = "JITGW_CONFIG", default_value = "/etc/jit-gateway/jit-gateway.toml", global = true)]
    config: PathBuf,
    /// Where `login` keeps the API session (default ~/.config/jit-gateway/session.json).
    #[arg(long, env = "JITGW_SESSION", global = true)]
    session: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Parse and validate the configuration, then print a summary.
    CheckConfig,
    /// Print the ssh config block and known_hosts lines users need.
    SshConfig(cli::SshConfigArgs),
    /// Print what users and VMs need to trust the gateway's CAs.
    #[command(subcommand)]
    Ca(cli::CaCommand),
    /// Add, list and revoke grants (local admin, through the admin socket).
    #[command(subcommand)]
    Grant(cli::GrantCommand),
    /// Azure: check what the gateway sees for each target.
    #[command(subcommand)]
    Azure(cli::AzureCommand),
    /// Bind client keys to people without a sign-in (local admin).
    #[command(subcommand)]
    Key(cli::KeyCommand),
    /// List live sessions, or end one (through the API when signed in, else the admin socket).
    Sessions(cli::SessionsArgs),
    /// Sign in to the gateway's HTTPS API (device code, or --browser).
    Login(cli_api::LoginArgs),
    /// Sign out of the API.
    Logout,
    /// Who the API knows you as, and your roles.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// Ask for access to a target, with a reason.
    Request(cli_api::RequestArgs),
    /// Requests waiting for your approval, and your own.
    Requests(cli_api::RequestsArgs),
    /// Approve a request.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long)]
        json: bool,
    },
    /// Deny a request, saying why.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw your own pending request.
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Your grants (live and recent); --all-users for everyone's (admins, auditors).
    Grants {
        #[arg(long)]
        all_users: bool,
        /// Include grants that ended long ago.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant (yours, one you approved, or any as an admin).
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// RDP: a single-use ticket for a target you hold an RDP grant for, in a `.rdp` file.
    Rdp(cli_api::RdpArgs),
    /// Query the audit log, or `audit verify` the hash chain.
    Audit(cli_api::AuditArgs),
    /// List recordings.
    Recordings(cli::RecordingsArgs),
    /// Play a recording in the terminal.
    Replay(cli::ReplayArgs),
    /// Prove a recording was not altered (its signed manifest).
    Verify(cli_verify::VerifyArgs),
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let serving = matches!(args.command, None | Some(Command::Serve));
    if let Some(path) = &args.session {
        cli_api::use_session_file(path.clone());
    }
    cli::init_logging(serving);
    // Store calls run on the blocking pool; they are short, so a small pool is
    // enough and keeps idle memory low (each thread would keep its own malloc arena).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jit-gateway: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command.unwrap_or(Command::Serve) {
            Command::Serve => cli::serve(&args.config).await,
            Command::CheckConfig => cli::check_config(&args.config),
            Command::SshConfig(a) => cli::ssh_config(&args.config, a),
            Command::Ca(c) => cli::ca(&args.config, c),
            Command::Grant(c) => cli::grant(&args.config, c).await,
            Command::Key(c) => cli::key(&args.config, c).await,
            Command::Azure(c) => cli::azure(&args.config, c).await,
            Command::Sessions(a) => cli::sessions(&args.config, a).await,
            Command::Recordings(a) => cli::recordings(&args.config, a).await,
            Command::Replay(a) => cli::replay(&args.config, a),
            Command::Verify(a) => cli_verify::verify(&args.config, a).await,
            Command::Login(a) => cli_api::login(a).await,
            Command::Logout => cli_api::logout().await,
            Command::Whoami { json } => cli_api::whoami(json).await,
            Command::Request(a) => cli_api::request(a).await,
            Command::Requests(a) => cli_api::requests(a).await,
            Command::Approve { id, comment, json } => cli_api::decide("approve", &id, &comment, json).await,
            Command::Deny { id, reason, json } => cli_api::decide("deny", &id, &reason, json).await,
            Command::Cancel { id, json } => cli_api::decide("cancel", &id, "", json).await,
            Command::Grants { all_users, all, json } => cli_api::grants(all_users, all, json).await,
            Command::Revoke { id, reason, json } => cli_api::revoke(&id, &reason, json).await,
            Command::Audit(a) => cli_api::audit(&args.config, a).await,
            Command::Rdp(a) => cli_api::rdp(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jit-gateway: {}", jit_gateway::error_text::join(e.chain().map(|c| c.to_string())));
            std::process::ExitCode::FAILURE
        }
    }
}
