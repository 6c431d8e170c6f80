//! jit-gateway: a just-in-time access gateway for SSH (and RDP).
//!
//! The layout follows the request path:
//! - `config`: the TOML configuration and its validation.
//! - `keys`: key material in `certs/` and the certificates minted from it.
//! - `oidc`: the identity provider client (device flow, token verification).
//! - `store`: the embedded store (redb): identities, grants, sessions, recordings, audit.
//! - `access`: pure access decisions (inventory, grants, logins), with reasons.
//! - `ssh`: the outer server (sign-in, `direct-tcpip`), the inner server on each
//!   channel, the upstream client toward the VM, and the channel relay.
//! - `recording`: recorders, formats (asciicast, exec, sftp events), sealing.
//! - `sessions`: live sessions and ending them when their grant ends.
//! - `recovery`: at start-up, ending the sessions and sealing the recordings a crash left open.
//! - `limits`: per-source and overall admission limits before sign-in, and the
//!   aggregated count of what they refused.
//! - `admin`: the local admin socket behind `jit-gateway grant ...`.
//! - `replay`: the terminal player.

pub mod access;
pub mod admin;
pub mod api;
pub mod audit;
pub mod azure;
pub mod clock;
pub mod config;
pub mod error_text;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod notify;
pub mod oidc;
pub mod policy;
pub mod ports;
pub mod rdp;
pub mod recording;
pub mod recovery;
pub mod replay;
pub mod secret;
pub mod sessions;
pub mod ssh;
pub mod store;
pub mod workflow;
