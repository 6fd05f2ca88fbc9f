use super::*;
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/grpc.health.v1.Health/Check"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.to_vec(), v.to_vec()))
    .collect()
}

/// Splits a byte stream into frames (after the preface).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    assert_eq!(&bytes[..PREFACE.len()], PREFACE, "the preface passes through unchanged");
    bytes = &bytes[PREFACE.len()..];
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// The header lists the server would decode from the rewritten stream (a fresh decoder: the
/// rewriter's literals need no table).
fn decoded_blocks(out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut server = Decoder::new();
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for (kind, flags, _, payload) in frames(out) {
        match kind {
            HEADERS => {
                let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                assert_eq!(flags & PADDED, 0, "padding is dropped");
                block = payload[skip..].to_vec();
            }
            CONTINUATION => block.extend_from_slice(&payload),
            _ => continue,
        }
        if flags & END_HEADERS != 0 {
            blocks.push(server.decode(&block).unwrap());
        }
    }
    blocks
}

fn client_stream(authorities: &[&[u8]]) -> Vec<u8> {
    // A client encoder with its dynamic table, as grpc-core's (Huffman strings: the test after next).
    let mut client = Encoder::new();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    for (i, authority) in authorities.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        let headers = request(authority);
        let block = client.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
        bytes.extend(frame(0x0, END_STREAM, stream, &[0, 0, 0, 0, 0])); // DATA: an empty gRPC message
    }
    bytes
}

#[test]
fn an_authority_that_is_not_one_becomes_localhost_and_everything_else_is_the_clients() {
    let input =
        client_stream(&[b"tmp%2Fkvcsi%2Fcsi.sock", b"localhost", b"/var/run/p.sock", b"tmp%2Fkvcsi%2Fcsi.sock"]);
    let mut r = Rewriter::new();
    assert_eq!(r.feed(&input).unwrap(), input.len());
    let out = r.take_output();
    let blocks = decoded_blocks(&out);
    assert_eq!(blocks.len(), 4);
    // The second and fourth requests reference the client's dynamic table: decoded with its state.
    for (block, expected) in blocks.iter().zip([&b"localhost"[..], b"localhost", b"localhost", b"localhost"]) {
        assert_eq!(block, &request(expected));
    }
    // Frames other than headers are byte for byte the client's.
    let data: Vec<_> = frames(&out).into_iter().filter(|f| f.0 != HEADERS).collect();
    let sent: Vec<_> = frames(&input).into_iter().filter(|f| f.0 != HEADERS).collect();
    assert_eq!(data, sent);
}

/// grpc-core Huffman-codes its strings and indexes `:authority`: the percent-encoded path arrives as a
/// Huffman literal, then as a reference to the client's table.
#[test]
fn a_huffman_coded_authority_and_later_references_to_it_are_rewritten() {
    let path = hpack::huffman::encode(b"tmp%2Fkvcsi%2Fcsi.sock");
    let mut first = vec![0x83, 0x86, 0x41, 0x80 | path.len() as u8]; // POST, http, :authority (indexed name, with indexing)
    first.extend_from_slice(&path);
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(HEADERS, END_HEADERS, 1, &first));
    bytes.extend(frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xbe])); // the same, :authority from the table
    let mut r = Rewriter::new();
    assert_eq!(r.feed(&bytes).unwrap(), bytes.len());
    let expected = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":authority".to_vec(), b"localhost".to_vec()),
    ];
    assert_eq!(decoded_blocks(&r.take_output()), vec![expected.clone(), expected]);
}

#[test]
fn a_valid_authority_is_kept() {
    let mut r = Rewriter::new();
    let input = client_stream(&[b"example.com:443"]);
    r.feed(&input).unwrap();
    assert_eq!(decoded_blocks(&r.take_output()), vec![request(b"example.com:443")]);
}

#[test]
fn byte_by_byte_input_gives_the_same_output() {
    let input = client_stream(&[b"tmp%2Fa.sock", b"x.sock%2F", b"tmp%2Fa.sock"]);
    let mut whole = Rewriter::new();
    whole.feed(&input).unwrap();
    let mut trickle = Rewriter::new();
    let mut pending = Vec::new();
    for b in &input {
        pending.push(*b);
        let n = trickle.feed(&pending).unwrap();
        pending.drain(..n);
    }
    assert!(pending.is_empty());
    assert_eq!(trickle.take_output(), whole.take_output());
}

#[test]
fn padding_priority_and_continuations_are_understood_and_big_blocks_are_split() {
    let mut client = Encoder::new();
    let mut headers = request(b"tmp%2Fp.sock");
    headers.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
    let block = client.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
    let (a, b) = block.split_at(100);
    let mut first = vec![3u8]; // pad length
    first.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency on stream 0, weight 15
    first.extend_from_slice(a);
    first.extend_from_slice(&[0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &first));
    let chunks: Vec<_> = b.chunks(MAX_FRAME).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        input.extend(frame(CONTINUATION, if i + 1 == chunks.len() { END_HEADERS } else { 0 }, 1, chunk));
    }
    let mut r = Rewriter::new();
    r.feed(&input).unwrap();
    let out = r.take_output();
    let fs = frames(&out);
    assert!(fs.len() >= 3, "40 kB of literals need continuations");
    assert_eq!(fs[0].1, PRIORITY | END_STREAM, "END_STREAM and PRIORITY kept, PADDED dropped");
    assert_eq!(&fs[0].3[..5], &[0x80, 0, 0, 0, 15]);
    assert!(fs.iter().all(|f| f.3.len() <= MAX_FRAME));
    assert_eq!(fs.last().unwrap().1, END_HEADERS);
    headers[3].1 = b"localhost".to_vec();
    assert_eq!(decoded_blocks(&out), vec![headers]);
}

#[test]
fn bombs_and_broken_blocks_close_the_connection() {
    // An HPACK bomb: one 4 kB table entry referenced 60,000 times (1 byte each).
    let mut client = Encoder::new();
    let mut block = client.encode([(&b"x-a"[..], &vec![b'a'; 4000][..])]);
    block.extend(std::iter::repeat_n(0x80 | 62u8, 60_000));
    let mut split = PREFACE.to_vec();
    let (a, rest) = block.split_at(10_000);
    split.extend(frame(HEADERS, 0, 1, a));
    for chunk in rest.chunks(MAX_FRAME) {
        split.extend(frame(CONTINUATION, 0, 1, chunk));
    }
    split.extend(frame(CONTINUATION, END_HEADERS, 1, &[]));
    assert!(Rewriter::new().feed(&split).is_err(), "the decoded list is bounded");

    let mut huge = PREFACE.to_vec();
    huge.extend(frame(HEADERS, 0, 1, &[0u8; 16_000]));
    for _ in 0..5 {
        huge.extend(frame(CONTINUATION, 0, 1, &[0u8; 16_000]));
    }
    assert!(Rewriter::new().feed(&huge).is_err(), "the compressed block is bounded");

    let mut garbage = PREFACE.to_vec();
    garbage.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
    assert!(Rewriter::new().feed(&garbage).is_err());

    let mut interleaved = PREFACE.to_vec();
    interleaved.extend(frame(HEADERS, 0, 1, &[0x82]));
    interleaved.extend(frame(0x0, 0, 1, &[]));
    assert!(Rewriter::new().feed(&interleaved).is_err());

    let mut orphan = PREFACE.to_vec();
    orphan.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x82]));
    assert!(Rewriter::new().feed(&orphan).is_err());
}

#[test]
fn a_large_data_frame_streams_through_without_being_held() {
    let mut r = Rewriter::new();
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&frame(0x0, 0, 1, &[7u8; 1000])[..9 + 10]);
    assert_eq!(r.feed(&input).unwrap(), input.len(), "a partial DATA frame is passed on as it comes");
    assert_eq!(r.take_output(), input);
}

/// What `h2` does with the raw request, with and without the adapter: a real tonic server on a real
/// Unix socket, and a client that sends grpc-core's default `:authority`.
async fn check_over_socket(lenient: bool) -> Vec<(u8, u32, Vec<(Vec<u8>, Vec<u8>)>)> {
    use tokio_stream::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let server = tonic::transport::Server::builder().add_service(health);
    let serving = if lenient {
        tokio::spawn(server.serve_with_incoming(incoming.map(|c| c.map(LenientAuthority::new))))
    } else {
        tokio::spawn(server.serve_with_incoming(incoming))
    };
    let mut conn = tokio::net::UnixStream::connect(&path).await.unwrap();
    let authority = format!("{}", path.display()).trim_start_matches('/').replace('/', "%2F");
    conn.write_all(&client_stream(&[authority.as_bytes()])).await.unwrap();
    let mut seen = Vec::new();
    let mut decoder = Decoder::new();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen
        .iter()
        .all(|(kind, _, h): &(u8, u32, Vec<_>)| *kind != 0x3 && !h.iter().any(|(n, _)| n == b"grpc-status"))
    {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await.expect("an answer").unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, stream) = (buf[3], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]));
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                HEADERS => seen.push((kind, stream, decoder.decode(&payload).unwrap())),
                0x3 => seen.push((kind, stream, Vec::new())),
                _ => {}
            }
        }
    }
    serving.abort();
    seen
}

#[tokio::test]
async fn h2_resets_a_percent_encoded_authority_and_serves_it_through_the_adapter() {
    let strict = check_over_socket(false).await;
    assert!(strict.iter().any(|(kind, stream, _)| *kind == 0x3 && *stream == 1), "h2 alone: RST_STREAM, {strict:?}");
    let lenient = check_over_socket(true).await;
    let status = lenient.iter().flat_map(|(_, _, h)| h).find(|(n, _)| n == b"grpc-status").map(|(_, v)| v.clone());
    assert_eq!(status.as_deref(), Some(&b"0"[..]), "served: {lenient:?}");
    assert!(lenient.iter().any(|(_, _, h)| h.contains(&(b":status".to_vec(), b"200".to_vec()))));
}
