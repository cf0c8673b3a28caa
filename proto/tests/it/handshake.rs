//! The hello exchange: accepted, version mismatch, wrong role, not rocksteady.

use proto::frame::{FrameReader, FrameWriter};
use proto::hello::{client_handshake, server_handshake, Hello, HelloReply, MAGIC};
use proto::{PeerRole, ProtoError, PROTOCOL_VERSION};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

type Ends = (
    FrameReader<ReadHalf<DuplexStream>>,
    FrameWriter<WriteHalf<DuplexStream>>,
);

fn pair() -> (Ends, Ends) {
    let (a, b) = tokio::io::duplex(4096);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    (
        (FrameReader::new(ar), FrameWriter::new(aw)),
        (FrameReader::new(br), FrameWriter::new(bw)),
    )
}

#[tokio::test]
async fn matching_versions_are_accepted() {
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair();
    let server = tokio::spawn(async move {
        server_handshake(&mut sr, &mut sw, &[PeerRole::Client], "test-server").await
    });
    let accepted = client_handshake(&mut cr, &mut cw, PeerRole::Client, "test-client")
        .await
        .unwrap();
    assert_eq!(accepted.version, PROTOCOL_VERSION);
    assert_eq!(accepted.software, "test-server");
    let hello = server.await.unwrap().unwrap();
    assert_eq!(hello.role, PeerRole::Client);
    assert_eq!(hello.software, "test-client");
}

#[tokio::test]
async fn version_mismatch_is_refused_on_both_sides() {
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair();
    let server = tokio::spawn(async move {
        server_handshake(&mut sr, &mut sw, &[PeerRole::Client], "test-server").await
    });
    // A peer from the future: same magic, next version, and a body this
    // version could not decode.
    let future = (
        MAGIC,
        PROTOCOL_VERSION + 1,
        99u32,
        "from the future",
        [1u8; 9],
    );
    cw.send(&future).await.unwrap();
    let reply: HelloReply = cr.expect().await.unwrap();
    let HelloReply::Refused(refused) = reply else {
        panic!("expected a refusal")
    };
    assert!(
        refused.reason.contains("protocol version mismatch"),
        "{}",
        refused.reason
    );
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(err, ProtoError::VersionMismatch { ours, theirs } if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1),
        "{err}"
    );
}

#[tokio::test]
async fn client_reports_mismatch_from_an_older_server() {
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair();
    let server = tokio::spawn(async move {
        let _hello = sr.raw_frame().await.unwrap();
        sw.send(&HelloReply::Refused(proto::hello::Refused {
            reason: "old".into(),
            version: PROTOCOL_VERSION - 1,
        }))
        .await
        .unwrap();
    });
    let err = client_handshake(&mut cr, &mut cw, PeerRole::Admin, "t")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProtoError::VersionMismatch { theirs, .. } if theirs == PROTOCOL_VERSION - 1),
        "{err}"
    );
    assert!(err.to_string().contains("version mismatch"));
    server.await.unwrap();
}

#[tokio::test]
async fn wrong_role_is_refused_with_reason() {
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair();
    let server = tokio::spawn(async move {
        server_handshake(&mut sr, &mut sw, &[PeerRole::Admin], "test-server").await
    });
    let err = client_handshake(&mut cr, &mut cw, PeerRole::Client, "t")
        .await
        .unwrap_err();
    match err {
        ProtoError::Refused { reason } => {
            assert!(reason.contains("client peer is not served"), "{reason}");
        }
        other => panic!("expected Refused, got {other}"),
    }
    assert!(matches!(
        server.await.unwrap(),
        Err(ProtoError::WrongRole {
            role: PeerRole::Client,
            ..
        })
    ));
}

#[tokio::test]
async fn a_stranger_is_not_rocksteady() {
    let ((_cr, mut cw), (mut sr, mut sw)) = pair();
    let server = tokio::spawn(async move {
        server_handshake(&mut sr, &mut sw, &[PeerRole::Client], "test-server").await
    });
    cw.send(&("GET / HTTP/1.1".to_owned(),)).await.unwrap();
    assert!(matches!(
        server.await.unwrap(),
        Err(ProtoError::NotRocksteady)
    ));
}

#[tokio::test]
async fn garbage_bytes_are_refused() {
    let (mut a, b) = tokio::io::duplex(4096);
    let (br, bw) = tokio::io::split(b);
    let (mut sr, mut sw) = (FrameReader::new(br), FrameWriter::new(bw));
    a.write_all(b"\x00\x00\x00\x05hello").await.unwrap();
    let err = server_handshake(&mut sr, &mut sw, &[PeerRole::Client], "s")
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::NotRocksteady), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out() {
    let ((_cr, _cw), (mut sr, mut sw)) = pair();
    let err = server_handshake(&mut sr, &mut sw, &[PeerRole::Client], "s")
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::HandshakeTimeout));
}

#[test]
fn hello_starts_with_magic_and_version() {
    let bytes = proto::frame::encode(&Hello::new(PeerRole::Worker, "w")).unwrap();
    assert_eq!(&bytes[..4], b"RSTD");
    assert_eq!(bytes[4], u8::try_from(PROTOCOL_VERSION).unwrap());
}
