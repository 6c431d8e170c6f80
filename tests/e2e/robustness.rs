//! Bad input on the network path: the gateway drops it and keeps serving.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::World;
use crate::support::text;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_stalled_handshakes_and_connection_storms_leave_the_gateway_serving() {
    let Some(w) = World::new("").await else { return };
    let addr = format!("127.0.0.1:{}", w.gw.port);

    // Garbage instead of a version line, and garbage after a valid one.
    for junk in [
        &b"\x00\xff\x13GET / HTTP/1.1\r\n\r\n"[..],
        &b"SSH-2.0-junk\r\n\x00\x00\x00\x05\x14garbage-garbage-garbage"[..],
    ] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(junk).await;
        let mut buf = vec![0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    }

    // Clients that stop mid-handshake and stay connected.
    let mut stalled = Vec::new();
    for i in 0..5 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        }
        stalled.push(s);
    }

    // Fifty connections opened at once and dropped.
    let storm: Vec<_> = (0..50)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = TcpStream::connect(&addr).await
                    && i % 3 == 0
                {
                    let _ = s.write_all(b"SSH-2.0-storm\r\n").await;
                }
            })
        })
        .collect();
    for t in storm {
        let _ = t.await;
    }

    // The next user is served normally, while the stalled ones are still there.
    let out = w.alice.exec("vm1", "echo still-serving", None).await;
    assert_eq!(text(&out.stdout).trim(), "still-serving", "{}", text(&out.stderr));
    drop(stalled);
    let again = w.alice.exec("vm1", "echo and-again", None).await;
    assert_eq!(text(&again.stdout).trim(), "and-again", "{}", text(&again.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_signs_in_is_cut_at_the_login_grace_time() {
    let prepared = crate::support::prepare();
    let gw = crate::support::Gw::start(
        prepared,
        crate::support::GwOptions::default().with_ssh("login_grace_time = \"10s\""),
    )
    .await;
    let mut s = TcpStream::connect(format!("127.0.0.1:{}", gw.port)).await.unwrap();
    s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    let mut buf = vec![0u8; 65536];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the gateway hangs up on a client that does not sign in");
}
