//! What a property-based fuzzer found at the public edge (issue 23, section 9): a client that
//! half-closes its side after a whole request, error bodies that quoted what was sent, NULs in
//! signed delivery receipts, and recipients or senders carrying invisible characters.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, sms, token};

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_is_answered_and_stored_once() {
    let app = TestApp::spawn().await;
    let body = sms("+14155552671").to_string();
    let request = format!(
        "POST /v1/auth0/sms HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        token(),
        body.len()
    );
    let mut stream = TcpStream::connect(app.address).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    // Nothing more will come: curl's --no-keepalive scripts and some proxies do this.
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered before the connection closed")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "answer: {answer:?}");
    assert!(answer.contains("\"id\""), "answer: {answer:?}");
    assert_eq!(
        app.count_rows("messages").await,
        1,
        "exactly one message stored"
    );
}
