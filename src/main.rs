//! The `jit-gateway` command: runs the gateway, and the tools around it
//! (grants, sessions, recordings, replay, key and ssh-config helpers).

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "jit-gateway", version, about = "Just-in-time access gateway for SSH: OIDC sign-in, time-limited grants, recorded sessions")]
struct Args {
    /// Configuration file.
    #[arg(short, long, env = "JITGW_CONFIG", default_value = "/etc/jit-gateway/jit-gateway.toml", global = true)]
    config: PathBuf,
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
    /// List live sessions, or end one.
    Sessions(cli::SessionsArgs),
    /// List recordings.
    Recordings(cli::RecordingsArgs),
    /// Play a recording in the terminal.
    Replay(cli::ReplayArgs),
    /// Prove a recording was not altered (its signed manifest).
    Verify(cli::VerifyArgs),
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let serving = matches!(args.command, None | Some(Command::Serve));
    cli::init_logging(serving);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
            Command::Sessions(a) => cli::sessions(&args.config, a).await,
            Command::Recordings(a) => cli::recordings(&args.config, a).await,
            Command::Replay(a) => cli::replay(&args.config, a),
            Command::Verify(a) => cli::verify(&args.config, a),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jit-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
