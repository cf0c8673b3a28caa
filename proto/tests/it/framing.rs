//! Framing: limits, split and joined reads, truncation, round-trips.

use proto::chat::{ChatMessage, GenParams, Role};
use proto::client::{ClientToSupervisor, Submit};
use proto::frame::{decode, encode, FrameReader, FrameWriter};
use proto::{ProtoError, MAX_FRAME_LEN};
use tokio::io::AsyncWriteExt;

fn submit(text: &str) -> ClientToSupervisor {
    ClientToSupervisor::Submit(Submit {
        request_id: 7,
        messages: vec![ChatMessage::new(Role::User, text)],
        params: GenParams::default(),
        model: String::new(),
        conversation: None,
    })
}

fn framed(msg: &ClientToSupervisor) -> Vec<u8> {
    let payload = encode(msg).unwrap();
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

#[tokio::test]
async fn round_trip_over_a_socket() {
    let (a, b) = tokio::io::duplex(64);
    let mut writer = FrameWriter::new(a);
    let mut reader = FrameReader::new(b);
    let sent = submit("What is 2+2?");
    let sender = tokio::spawn(async move {
        writer.send(&sent).await.unwrap();
        sent
    });
    let got: ClientToSupervisor = reader.expect().await.unwrap();
    assert_eq!(got, sender.await.unwrap());
}

#[tokio::test]
async fn large_payload_round_trips() {
    // Just under the limit, through a pipe much smaller than the frame.
    let text = "ж".repeat((MAX_FRAME_LEN - 1024) / 2);
    let (a, b) = tokio::io::duplex(4096);
    let mut writer = FrameWriter::new(a);
    let mut reader = FrameReader::new(b);
    let sent = submit(&text);
    let expected = sent.clone();
    tokio::spawn(async move { writer.send(&sent).await.unwrap() });
    let got: ClientToSupervisor = reader.expect().await.unwrap();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn oversized_message_is_refused_on_send() {
    let (a, _b) = tokio::io::duplex(64);
    let mut writer = FrameWriter::new(a);
    let err = writer
        .send(&submit(&"x".repeat(MAX_FRAME_LEN + 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProtoError::FrameTooLarge { max, .. } if max == MAX_FRAME_LEN),
        "{err}"
    );
}

#[tokio::test]
async fn huge_length_prefix_is_refused_before_allocating() {
    let (mut a, b) = tokio::io::duplex(64);
    let mut reader = FrameReader::new(b);
    // Announce 4 GiB - 1 and send nothing else: the reader must refuse at once
    // instead of waiting for (or allocating) the payload.
    a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let err = reader.recv::<ClientToSupervisor>().await.unwrap_err();
    match err {
        ProtoError::FrameTooLarge { len, max } => {
            assert_eq!(len, u64::from(u32::MAX));
            assert_eq!(max, MAX_FRAME_LEN);
        }
        other => panic!("expected FrameTooLarge, got {other}"),
    }
}

#[tokio::test]
async fn two_frames_in_one_read_are_split() {
    let first = submit("one");
    let second = submit("two");
    let mut bytes = framed(&first);
    bytes.extend(framed(&second));
    let (mut a, b) = tokio::io::duplex(4096);
    a.write_all(&bytes).await.unwrap();
    drop(a);
    let mut reader = FrameReader::new(b);
    assert_eq!(
        reader.recv::<ClientToSupervisor>().await.unwrap(),
        Some(first)
    );
    assert_eq!(
        reader.recv::<ClientToSupervisor>().await.unwrap(),
        Some(second)
    );
    assert_eq!(reader.recv::<ClientToSupervisor>().await.unwrap(), None);
}

#[tokio::test]
async fn a_frame_split_across_reads_is_joined() {
    let msg = submit("split me");
    let bytes = framed(&msg);
    let (mut a, b) = tokio::io::duplex(4096);
    let mut reader = FrameReader::new(b);
    let feeder = tokio::spawn(async move {
        for byte in bytes {
            a.write_all(&[byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(
        reader.recv::<ClientToSupervisor>().await.unwrap(),
        Some(msg)
    );
    feeder.await.unwrap();
}

#[tokio::test]
async fn truncated_frame_is_an_error_not_a_clean_close() {
    let bytes = framed(&submit("cut short"));
    let cut = bytes.len() - 3;
    let (mut a, b) = tokio::io::duplex(4096);
    a.write_all(&bytes[..cut]).await.unwrap();
    drop(a);
    let mut reader = FrameReader::new(b);
    let err = reader.recv::<ClientToSupervisor>().await.unwrap_err();
    match err {
        ProtoError::Truncated { have, need } => {
            assert_eq!(have, cut);
            assert_eq!(need, bytes.len());
        }
        other => panic!("expected Truncated, got {other}"),
    }
    assert!(ProtoError::Truncated { have: 1, need: 2 }.is_disconnect());
}

#[tokio::test]
async fn truncated_length_prefix_is_an_error() {
    let (mut a, b) = tokio::io::duplex(64);
    a.write_all(&[0, 0]).await.unwrap();
    drop(a);
    let mut reader = FrameReader::new(b);
    let err = reader.recv::<ClientToSupervisor>().await.unwrap_err();
    assert!(
        matches!(err, ProtoError::Truncated { have: 2, need: 0 }),
        "{err}"
    );
}

#[test]
fn garbage_payload_is_a_decode_error_naming_the_type() {
    let err = decode::<ClientToSupervisor>(&[0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::Decode {
                what: "ClientToSupervisor",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("malformed ClientToSupervisor frame"),
        "{err}"
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut payload = encode(&submit("x")).unwrap();
    payload.push(0);
    assert!(matches!(
        decode::<ClientToSupervisor>(&payload),
        Err(ProtoError::Decode { .. })
    ));
}

#[test]
fn a_string_length_beyond_the_frame_is_refused_without_allocating() {
    // Variant 0 (Submit), request id 1, then a message vector claiming 2^60
    // entries: the decode limit must stop it.
    let payload = [0u8, 1, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10];
    assert!(matches!(
        decode::<ClientToSupervisor>(&payload),
        Err(ProtoError::Decode { .. })
    ));
}
