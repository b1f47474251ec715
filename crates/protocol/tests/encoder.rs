//! `FrameCodec` as a tokio-util `Encoder`: what it is given goes out as one
//! frame, header and all, and comes back whole through the `Decoder`.

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use snakepit_protocol::{Error, FrameCodec};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

#[test]
fn a_payload_goes_out_with_its_length_header() {
    let mut buf = BytesMut::new();
    FrameCodec::default()
        .encode(Bytes::from_static(b"hi"), &mut buf)
        .unwrap();
    assert_eq!(&buf[..], b"\x00\x00\x00\x02hi");
}

#[test]
fn a_payload_above_the_maximum_is_refused_and_nothing_is_written() {
    let mut buf = BytesMut::from(&b"kept"[..]);
    let err = FrameCodec::new(4)
        .encode(Bytes::from_static(b"12345"), &mut buf)
        .unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { len: 5, max: 4 }),
        "{err}"
    );
    assert_eq!(&buf[..], b"kept");
}

#[tokio::test]
async fn framed_write_and_framed_read_agree() {
    let (client, server) = tokio::io::duplex(64);
    let payloads: Vec<Bytes> = vec![
        Bytes::from_static(b"{\"id\":1}"),
        Bytes::new(),
        Bytes::from(vec![7u8; 300]),
    ];
    let sent = payloads.clone();
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(client, FrameCodec::default());
        for p in sent {
            sink.send(p).await.unwrap();
        }
    });
    let mut reader = FramedRead::new(server, FrameCodec::default());
    for expected in &payloads {
        let got = futures_util::StreamExt::next(&mut reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], &expected[..]);
    }
    writer.await.unwrap();
    assert!(futures_util::StreamExt::next(&mut reader).await.is_none());
    // The decoder sees nothing left over.
    assert!(FrameCodec::default()
        .decode(&mut BytesMut::new())
        .unwrap()
        .is_none());
}
