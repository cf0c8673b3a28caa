//! Every call has a deadline: a wedged supervisor gives a clear error, never
//! a hang.

use std::path::Path;
use std::time::{Duration, Instant};

use client::{connect, AdminClient, ClientError};
use proto::admin::{AdminToSupervisor, SupervisorToAdmin};
use proto::frame::{FrameReader, FrameWriter};
use proto::PeerRole;
use tokio::net::UnixListener;

/// Accepts connections and holds them open without a word.
fn mute(listener: UnixListener) {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
}

/// Answers the hello as an admin socket would, then reads commands and
/// never answers them.
fn wedged_after_hello(listener: UnixListener) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, w) = tokio::io::split(stream);
                let mut reader = FrameReader::new(r);
                let mut writer = FrameWriter::new(w);
                proto::hello::server_handshake(
                    &mut reader,
                    &mut writer,
                    &[PeerRole::Admin],
                    "wedged",
                )
                .await
                .unwrap();
                while let Ok(Some(_)) = reader.recv::<AdminToSupervisor>().await {}
            });
        }
    });
}

#[tokio::test]
async fn nothing_listening_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let err = AdminClient::connect(&dir.path().join("admin.sock"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    assert!(err.to_string().contains("is it running"), "{err}");
}

#[tokio::test]
async fn a_silent_listener_times_out_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    mute(UnixListener::bind(&path).unwrap());
    let t0 = Instant::now();
    let Err(err) = connect::<SupervisorToAdmin, AdminToSupervisor>(
        &path,
        PeerRole::Admin,
        "test",
        Duration::from_millis(300),
    )
    .await
    else {
        panic!("a listener that never answers the hello was taken for a supervisor");
    };
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    match &err {
        ClientError::Timeout { what, .. } => assert_eq!(*what, "the handshake"),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

async fn wedged(path: &Path) -> AdminClient {
    wedged_after_hello(UnixListener::bind(path).unwrap());
    AdminClient::connect(path)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300))
}

#[tokio::test]
async fn a_wedged_supervisor_times_out_the_status_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let mut admin = wedged(&path).await;
    let t0 = Instant::now();
    let err = admin.status().await.unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let text = err.to_string();
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                what: "the status request",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(text.contains("did not answer the status request"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[tokio::test]
async fn errors_do_not_repeat_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let err = AdminClient::connect(&dir.path().join("admin.sock"))
        .await
        .unwrap_err();
    let chain = err.chain();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(chain.matches(&cause).count(), 1, "{chain}");
}
