//! Round trips of every message family, framing at every split point, and
//! decoder robustness against arbitrary bytes.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use crate::frame::{self, RawFrame};
use crate::{
    DecodeError, EncodeError, Event, Frame, Limits, Message, PeerMessage, Request, Response,
};

fn body_for<M: Message>(msg: &M, body: Vec<u8>) -> Bytes {
    if M::takes_body(msg.kind()) {
        Bytes::from(body)
    } else {
        Bytes::new()
    }
}

fn round_trip<M: Message + PartialEq>(id: u64, msg: M, body: Vec<u8>) -> Result<(), TestCaseError> {
    let frame = Frame::with_body(id, msg.clone(), body_for(&msg, body));
    let raw = frame
        .encode()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let bytes = raw.to_vec();
    let limits = Limits::default();
    let back =
        frame::decode_exact(&bytes, &limits).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, &raw);
    let typed = Frame::<M>::decode(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(typed, frame);
    Ok(())
}

/// Every kind of the family is produced by its `Arbitrary` strategy — so the
/// round-trip properties below really cover every message.
fn all_kinds_generated<M: Message + Arbitrary>() {
    let mut runner = TestRunner::deterministic();
    let strategy = any::<M>();
    let mut seen = BTreeSet::new();
    for _ in 0..20_000 {
        let value = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert(value.kind());
        if seen.len() == M::KINDS.len() {
            return;
        }
    }
    let missing: Vec<_> = M::KINDS.iter().filter(|k| !seen.contains(*k)).collect();
    panic!("kinds never generated: {missing:?}");
}

#[test]
fn every_kind_is_covered() {
    all_kinds_generated::<Request>();
    all_kinds_generated::<Response>();
    all_kinds_generated::<Event>();
    all_kinds_generated::<PeerMessage>();
}

#[test]
fn kinds_are_unique_and_match_serde() {
    fn check<M: Message + Arbitrary>() {
        let unique: BTreeSet<_> = M::KINDS.iter().collect();
        assert_eq!(unique.len(), M::KINDS.len(), "duplicate kind");
        let mut runner = TestRunner::deterministic();
        for _ in 0..2_000 {
            let msg = any::<M>().new_tree(&mut runner).unwrap().current();
            let json = serde_json::to_value(&msg).unwrap();
            assert_eq!(json["type"], msg.kind());
        }
    }
    check::<Request>();
    check::<Response>();
    check::<Event>();
    check::<PeerMessage>();
}

fn config() -> Config {
    Config {
        cases: 1024,
        ..Config::default()
    }
}

/// Runs `test` `cases` times over a request, a frame id and a body of up to
/// `body` bytes, on a thread with a 16 MiB stack: in a debug build, running
/// the derived strategy of every request kind takes more than the 2 MiB of a
/// test thread. A failure panics with the smallest failing input.
fn for_requests(
    cases: u32,
    body: usize,
    test: impl Fn(u64, Request, Vec<u8>) -> Result<(), TestCaseError> + Send + 'static,
) {
    let ran = std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            let strategy = (
                1u64..,
                any::<Request>(),
                proptest::collection::vec(any::<u8>(), 0..body),
            );
            TestRunner::new(Config { cases, ..config() })
                .run(&strategy, |(id, msg, bytes)| test(id, msg, bytes))
                .unwrap();
        })
        .expect("a test thread")
        .join();
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn requests_round_trip() {
    for_requests(config().cases, 64, round_trip);
}

/// A typed frame fed to the stream decoder in two pieces, split at every
/// byte, comes out whole, exactly once, leaving what follows.
#[test]
fn typed_frames_survive_every_split() {
    for_requests(64, 32, |id, msg, body| {
        let limits = Limits::default();
        let frame = Frame::with_body(id, msg.clone(), body_for(&msg, body));
        let encoded = frame.encode().unwrap().to_vec();
        for split in 0..encoded.len() {
            let mut buf = BytesMut::from(&encoded[..split]);
            prop_assert!(frame::decode_buf(&mut buf, &limits)?.is_none());
            prop_assert_eq!(buf.len(), split);
            buf.extend_from_slice(&encoded[split..]);
            buf.extend_from_slice(b"\0\0\0");
            let raw = frame::decode_buf(&mut buf, &limits)?.unwrap();
            prop_assert_eq!(Frame::<Request>::decode(&raw)?, frame.clone());
            prop_assert_eq!(&buf[..], b"\0\0\0");
        }
        Ok(())
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn responses_round_trip(id: u64, msg: Response, body in proptest::collection::vec(any::<u8>(), 0..64)) {
        round_trip(id, msg, body)?;
    }

    #[test]
    fn events_round_trip(msg: Event) {
        round_trip(0, msg, Vec::new())?;
    }

    #[test]
    fn peer_messages_round_trip(id: u64, msg: PeerMessage, body in proptest::collection::vec(any::<u8>(), 0..64)) {
        round_trip(id, msg, body)?;
    }
}

proptest! {
    #![proptest_config(Config { cases: 2048, ..Config::default() })]

    /// Random bytes never panic the decoder, whatever family they are read as.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let limits = Limits { max_header: 200, max_body: 200 };
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(raw)) = frame::decode_buf(&mut buf, &limits) {
            let _ = Frame::<Request>::decode(&raw);
            let _ = Frame::<Response>::decode(&raw);
            let _ = Frame::<Event>::decode(&raw);
            let _ = Frame::<PeerMessage>::decode(&raw);
        }
    }

    /// Random JSON-looking headers never panic the message decoder either.
    #[test]
    fn random_headers_never_panic(
        kind in prop_oneof![Just("hello".to_owned()), Just("upload_chunk".to_owned()), Just("entry".to_owned()), ".{0,12}"],
        value in crate::peer::arb_json(),
        id in any::<u64>(),
    ) {
        let mut map = serde_json::Map::new();
        map.insert("id".into(), id.into());
        map.insert("type".into(), kind.into());
        if let serde_json::Value::Object(extra) = value {
            map.extend(extra);
        }
        let raw = RawFrame { header: serde_json::to_vec(&map).unwrap().into(), body: Bytes::new() };
        let _ = Frame::<Request>::decode(&raw);
        let _ = Frame::<Response>::decode(&raw);
        let _ = Frame::<Event>::decode(&raw);
        let _ = Frame::<PeerMessage>::decode(&raw);
    }
}

fn raw(header: &str, body: &[u8]) -> RawFrame {
    RawFrame {
        header: Bytes::copy_from_slice(header.as_bytes()),
        body: Bytes::copy_from_slice(body),
    }
}

#[test]
fn bad_input_gets_distinct_typed_errors() {
    let req = |h: &str, b: &[u8]| Frame::<Request>::decode(&raw(h, b)).unwrap_err();
    assert!(
        matches!(req("{\"id\":1,\"type\":\"fly\"}", b""), DecodeError::UnknownType { kind } if kind == "fly")
    );
    assert!(matches!(
        req("{\"type\":\"ping\"}", b""),
        DecodeError::MissingId
    ));
    assert!(matches!(req("{\"id\":1}", b""), DecodeError::MissingType));
    assert!(matches!(
        req("\"ping\"", b""),
        DecodeError::HeaderNotObject { found: "string" }
    ));
    assert!(matches!(
        Frame::<Request>::decode(&RawFrame {
            header: Bytes::from_static(b"{\"id\":1,\"type\":\"p\xc3\x28\"}"),
            body: Bytes::new()
        })
        .unwrap_err(),
        DecodeError::HeaderNotUtf8 { valid_up_to: 17 }
    ));
    assert!(matches!(
        req("{\"id\":0,\"type\":\"ping\"}", b""),
        DecodeError::UnexpectedId { id: 0, .. }
    ));
    assert!(matches!(
        req("{\"id\":1,\"type\":\"ping\"}", b"x"),
        DecodeError::UnexpectedBody {
            kind: "ping",
            len: 1
        }
    ));
    // Missing field, wrong JSON type, out-of-range number, malformed hash.
    assert!(matches!(
        req("{\"id\":1,\"type\":\"hello\",\"agent\":\"x\"}", b""),
        DecodeError::InvalidFields { kind: "hello", .. }
    ));
    assert!(matches!(
        req(
            "{\"id\":1,\"type\":\"hello\",\"protocol\":\"1\",\"agent\":\"x\"}",
            b""
        ),
        DecodeError::InvalidFields { kind: "hello", .. }
    ));
    assert!(matches!(
        req(
            "{\"id\":1,\"type\":\"hello\",\"protocol\":4294967296,\"agent\":\"x\"}",
            b""
        ),
        DecodeError::InvalidFields { kind: "hello", .. }
    ));
    let err = req(
        "{\"id\":1,\"type\":\"login\",\"username\":\"bob\",\"login_secret\":\"hunter2-not-hex\"}",
        b"",
    );
    assert!(matches!(
        err,
        DecodeError::InvalidFields { kind: "login", .. }
    ));
    assert!(
        !err.to_string().contains("hunter2"),
        "the secret leaked into {err}"
    );
    // An event id on a request, a request type on the event family.
    assert!(matches!(
        Frame::<Event>::decode(&raw(
            "{\"id\":3,\"type\":\"caught_up\",\"cursor\":\"c\"}",
            b""
        ))
        .unwrap_err(),
        DecodeError::UnexpectedId { id: 3, .. }
    ));
    assert!(matches!(
        Frame::<Event>::decode(&raw("{\"id\":0,\"type\":\"hello\"}", b"")).unwrap_err(),
        DecodeError::UnknownType { .. }
    ));
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    let f = Frame::<Request>::decode(&raw(
        "{\"id\":9,\"type\":\"hello\",\"protocol\":1,\"agent\":\"x\",\"future\":[1,2]}",
        b"",
    ))
    .unwrap();
    assert_eq!(f.id, 9);
    assert_eq!(f.msg.kind(), "hello");
    let ping =
        Frame::<Request>::decode(&raw("{\"id\":2,\"type\":\"ping\",\"extra\":true}", b"")).unwrap();
    assert_eq!(ping.msg, Request::Ping);
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let big = Frame::new(
        1,
        Request::Hello(crate::request::Hello {
            protocol: 1,
            agent: "x".repeat(70_000),
        }),
    );
    assert!(matches!(
        big.encode(),
        Err(EncodeError::HeaderTooLarge { .. })
    ));
    let with_body = Frame::with_body(1, Request::Ping, Bytes::from_static(b"x"));
    assert!(matches!(
        with_body.encode(),
        Err(EncodeError::UnexpectedBody { kind: "ping", .. })
    ));
    assert!(matches!(
        Frame::new(0, Request::Ping).encode(),
        Err(EncodeError::UnexpectedId { id: 0, .. })
    ));
}

#[test]
fn oversized_frames_are_refused_before_allocation() {
    // A prefix announcing the largest possible header: the decoder answers from
    // the eight bytes alone.
    let mut bytes = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
    bytes.extend_from_slice(b"{}");
    assert!(matches!(
        frame::decode(&bytes, &Limits::default()),
        Err(DecodeError::HeaderTooLarge { len: u32::MAX, .. })
    ));
    assert_eq!(
        DecodeError::HeaderTooLarge { len: 1, max: 0 }.code(),
        crate::ErrorCode::TooLarge
    );
}

/// docs/PROTOCOL.md lists every message type of every family in a table row.
#[test]
fn the_protocol_document_names_every_message() {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let mut missing = Vec::new();
    for kind in Request::KINDS
        .iter()
        .chain(Response::KINDS)
        .chain(Event::KINDS)
        .chain(PeerMessage::KINDS)
    {
        if !doc.contains(&format!("| `{kind}` |")) {
            missing.push(*kind);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/PROTOCOL.md does not describe {missing:?}"
    );
}

#[test]
fn upload_ids_have_one_form() {
    let id = crate::request::upload_id([0xab; 16]);
    assert!(crate::request::is_upload_id(&id), "{id}");
    for bad in [
        "",
        "u",
        &id[1..],
        &format!("x{}", &id[1..]),
        &id.to_uppercase(),
        &format!("{id}0"),
        &format!("u{}g", &id[2..]),
        "uééééééééééééééééééééééééééééééé",
    ] {
        assert!(!crate::request::is_upload_id(bad), "{bad:?}");
    }
}
