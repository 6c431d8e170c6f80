//! `jit-gateway verify`: proves recordings. A recording's own proof (signed
//! manifest, name, size, SHA-256, hash chain) comes from its files; the
//! cross-check with the index and the audit log comes from the running
//! gateway over its admin socket (as `recordings` does), or from a stopped
//! gateway's store with `--db`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use jit_gateway::admin::protocol::Request;
use jit_gateway::clock::format_ms;
use jit_gateway::recording::crosscheck::{self, Evidence, Verdict};
use jit_gateway::recording::seal::{self, ChainVerdict};
use jit_gateway::replay;

use crate::cli::{call, load, recordings_dir, table};

#[derive(Args)]
pub struct VerifyArgs {
    /// Recording ID or file.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    recording: Option<String>,
    /// Every recording the index, the audit log or the recordings directory knows: reports missing,
    /// swapped and altered ones.
    #[arg(long)]
    all: bool,
    /// The signing key to trust (default: the gateway's, from its certs folder).
    #[arg(long)]
    signer: Option<PathBuf>,
    /// Read the index and the audit log from this store file (the gateway must be stopped)
    /// instead of asking the running gateway.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Check the files alone, without the index and the audit log (an auditor with a copy of the files).
    #[arg(long, conflicts_with_all = ["db", "all"])]
    files_only: bool,
}

/// The index and audit log's side of `verify`: from the running gateway's admin socket, or a stopped one's store.
async fn recording_evidence(
    config_path: &Path,
    db: Option<&Path>,
    recording: Option<&str>,
    signer: &russh::keys::PublicKey,
) -> Result<Evidence> {
    if let Some(path) = db {
        let store = jit_gateway::store::RedbStore::open(path).map_err(|e| {
            anyhow!("{e} (--db needs the gateway stopped; without --db, verify asks the running gateway)")
        })?;
        return Ok(crosscheck::collect(&store, recording, signer)?);
    }
    let request = Request::RecordingEvidence { recording: recording.map(str::to_string) };
    let data = call(config_path, request).await.map_err(|e| {
        anyhow!(
            "{e}\n(verify cross-checks the recording with the gateway's index and audit log: run it on the gateway's host, \
             give --db with the gateway stopped, or --files-only to check the files alone)"
        )
    })?;
    Ok(serde_json::from_value(data)?)
}

pub async fn verify(config_path: &Path, args: VerifyArgs) -> Result<()> {
    let signer_file = match &args.signer {
        Some(p) => p.clone(),
        None => load(config_path)?.gateway.certs_dir.join("signing_ed25519_key.pub"),
    };
    let text = std::fs::read_to_string(&signer_file)
        .with_context(|| format!("cannot read the signing key {}", signer_file.display()))?;
    let signer =
        russh::keys::PublicKey::from_openssh(text.trim()).map_err(|e| anyhow!("{}: {e}", signer_file.display()))?;
    if args.all {
        return verify_all(config_path, args.db.as_deref(), &signer).await;
    }
    let arg = args.recording.clone().unwrap_or_default();
    let path = match replay::resolve(&arg, recordings_dir(config_path).as_deref()) {
        Ok(p) => p,
        Err(e) if !args.files_only && jit_gateway::ids::looks_like(&arg, "r") => {
            // Not on the disk: if the index or the audit log know it, it was deleted.
            let evidence = recording_evidence(config_path, args.db.as_deref(), Some(&arg), &signer).await?;
            if let Some(r) = evidence.recordings.first() {
                bail!(
                    "{arg} is MISSING: the index lists {} ({} on {}), but the file is gone",
                    r.file,
                    r.user,
                    r.target
                );
            }
            if let Some(s) = evidence.seals.last() {
                bail!("{arg} is MISSING: audit record {} sealed it, but its index entry and file are gone", s.seq);
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let verified = seal::verify(&path, &signer)?;
    let m = &verified.manifest;
    println!(
        "OK {}: {} bytes, sha256 {}, signed by the gateway ({} on {} as {}, session {}, {})",
        m.recording,
        m.size,
        m.sha256,
        m.user,
        m.target,
        m.login,
        m.session,
        format_ms(m.started_ms)
    );
    match &verified.chain {
        ChainVerdict::Sidecar(c) => {
            println!("hash chain intact: {} links over {} bytes", c.summary.links, c.summary.covered)
        }
        ChainVerdict::Inline { links, records, .. } => {
            println!("hash chain intact: {links} links over {records} records")
        }
        ChainVerdict::None => println!(
            "no chain: recorded before recordings had a per-flush hash chain (the signed SHA-256 covers the file)"
        ),
    }
    if let Some(i) = &m.interrupted {
        println!(
            "interrupted: {}; sealed at {} with what had reached the disk ({} bytes after the last chain link)",
            i.reason,
            format_ms(i.found_ms),
            i.unverified_tail
        );
    }
    if args.files_only {
        println!("files only: not checked against the index and the audit log");
        return Ok(());
    }
    let evidence = recording_evidence(config_path, args.db.as_deref(), Some(&m.recording), &signer).await?;
    if !evidence.audit_ok {
        bail!("{}: the recording's seal cannot be cross-checked", evidence.audit);
    }
    let seals: Vec<_> = evidence.seals.iter().collect();
    let problems = crosscheck::disagreements(m, evidence.recordings.first(), &seals);
    if !problems.is_empty() {
        bail!("{} does not match the index and the audit log: {}", m.recording, problems.join("; "));
    }
    let seq = seals.iter().map(|s| s.seq).max().unwrap_or(0);
    println!("the index and the audit log agree (audit record {seq}); {}", evidence.audit);
    Ok(())
}

async fn verify_all(config_path: &Path, db: Option<&Path>, signer: &russh::keys::PublicKey) -> Result<()> {
    let dir = recordings_dir(config_path).ok_or_else(|| anyhow!("--all needs the configuration (recording.dir)"))?;
    let evidence = recording_evidence(config_path, db, None, signer).await?;
    let findings = crosscheck::check_all(&dir, &evidence, signer);
    let rows = findings
        .iter()
        .map(|f| vec![f.recording.clone(), f.verdict.to_string(), f.detail.chars().take(200).collect()])
        .collect();
    if !findings.is_empty() {
        table(&["RECORDING", "VERDICT", "DETAIL"], rows);
    }
    let problems = findings.iter().filter(|f| f.verdict.is_problem()).count();
    println!(
        "{} recordings: {} ok, {} interrupted, {} live, {problems} with problems; {}",
        findings.len(),
        findings.iter().filter(|f| f.verdict == Verdict::Ok).count(),
        findings.iter().filter(|f| f.verdict == Verdict::Interrupted).count(),
        findings.iter().filter(|f| f.verdict == Verdict::Live).count(),
        evidence.audit
    );
    if problems > 0 || !evidence.audit_ok {
        bail!(
            "{problems} recordings do not verify{}",
            if evidence.audit_ok { "" } else { ", and the audit log does not verify" }
        );
    }
    Ok(())
}
