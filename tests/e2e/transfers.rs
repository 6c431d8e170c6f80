//! Files through `-J`: scp (which speaks sftp), sftp and rsync, both ways,
//! multi-megabyte, byte for byte; sftp transfers leave audit events with the
//! SHA-256 of what crossed.

use std::time::Duration;

use jit_gateway::store::blocking;

use crate::World;
use crate::support::{self, LOGIN, text};

fn sha256_file(path: &std::path::Path) -> String {
    jit_gateway::secret::sha256_hex(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_sftp_and_rsync_move_multi_megabyte_files_intact_both_ways() {
    if !support::need("scp") || !support::need("sftp") || !support::need("rsync") {
        return;
    }
    let Some(w) = World::new("").await else { return };
    let dir = &w.alice.dir;
    let original = dir.join("original.bin");
    let mut data = vec![0u8; 8 << 20];
    jit_gateway::ids::random_bytes(&mut data);
    std::fs::write(&original, &data).unwrap();
    let want = sha256_file(&original);
    let config = w.alice.config.to_str().unwrap().to_string();
    let remote_dir = format!("/tmp/jitgw-{}", jit_gateway::ids::new_id("x"));
    let mkdir = w.alice.exec("vm1", &format!("mkdir -p {remote_dir}"), None).await;
    assert!(mkdir.status.success(), "{}", text(&mkdir.stderr));
    let remote = |name: &str| format!("{LOGIN}@vm1:{remote_dir}/{name}");
    let jump = ["-o", "BatchMode=yes", "-J", "jit-gateway"];

    let run = |program: &str, args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        cmd
    };
    let mut steps: Vec<(&str, tokio::process::Command)> = Vec::new();
    let with_jump = |mut v: Vec<String>| {
        let mut all = vec!["-F".to_string(), config.clone()];
        all.extend(jump.iter().map(|s| s.to_string()));
        all.append(&mut v);
        all
    };
    steps.push(("scp up", run("scp", with_jump(vec!["-q".into(), original.display().to_string(), remote("scp.bin")]))));
    steps.push((
        "scp down",
        run("scp", with_jump(vec!["-q".into(), remote("scp.bin"), dir.join("scp.back").display().to_string()])),
    ));
    let batch = dir.join("sftp.batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {remote_dir}/sftp.bin\nget {remote_dir}/sftp.bin {}\n",
            original.display(),
            dir.join("sftp.back").display()
        ),
    )
    .unwrap();
    let mut sftp_args = with_jump(vec!["-b".into(), batch.display().to_string()]);
    sftp_args.push(format!("{LOGIN}@vm1"));
    steps.push(("sftp", run("sftp", sftp_args)));
    let rsh = format!("ssh -F {config} -o BatchMode=yes -J jit-gateway");
    steps.push((
        "rsync up",
        run("rsync", vec!["-a".into(), "-e".into(), rsh.clone(), original.display().to_string(), remote("rsync.bin")]),
    ));
    steps.push((
        "rsync down",
        run(
            "rsync",
            vec!["-a".into(), "-e".into(), rsh, remote("rsync.bin"), dir.join("rsync.back").display().to_string()],
        ),
    ));
    for (name, mut cmd) in steps {
        let out = support::run(&mut cmd, None, Duration::from_secs(120)).await;
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
    for back in ["scp.back", "sftp.back", "rsync.back"] {
        assert_eq!(sha256_file(&dir.join(back)), want, "{back} arrived intact");
    }
    let remote_sums = w.alice.exec("vm1", &format!("sha256sum {remote_dir}/*.bin; rm -r {remote_dir}"), None).await;
    let sums = text(&remote_sums.stdout);
    assert_eq!(sums.lines().count(), 3, "{sums}");
    assert!(sums.lines().all(|l| l.starts_with(&want)), "uploads arrived intact: {sums}");

    // The sftp sessions (scp included) are on record with path, size and hash.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit = blocking(&w.gw.gateway.store, |s| s.audit_records(1, 10_000)).await.unwrap();
    let files: Vec<&serde_json::Value> = audit.iter().filter(|r| r.kind == "sftp.file").map(|r| &r.details).collect();
    for (op, name) in [("upload", "scp.bin"), ("download", "scp.bin"), ("upload", "sftp.bin"), ("download", "sftp.bin")]
    {
        let found = files.iter().find(|d| d["op"] == op && d["path"].as_str().is_some_and(|p| p.ends_with(name)));
        let found = found.unwrap_or_else(|| panic!("no {op} of {name} in {files:?}"));
        assert_eq!(found["bytes"], 8 << 20);
        assert_eq!(found["sha256"], want.as_str());
        assert_eq!(found["status"], "ok");
    }
    let execs: Vec<&str> =
        audit.iter().filter(|r| r.kind == "ssh.exec").filter_map(|r| r.details["command"].as_str()).collect();
    assert!(execs.iter().any(|c| c.starts_with("rsync --server")), "rsync runs as a recorded command: {execs:?}");
}
