//! Forwarding questions outside berth's zone to the host's resolvers, over UDP (and TCP when
//! the UDP answer is truncated), one upstream after another, each within a timeout.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

/// The UDP payload size berth offers upstream (the DNS flag day 2020 value, which avoids IP
/// fragmentation); longer answers come truncated and are fetched again over TCP.
const UPSTREAM_PAYLOAD: u16 = 1232;

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// Each upstream failed; the last failure is kept.
    #[error("no upstream answered: {upstream}: {reason}")]
    Failed {
        /// The last upstream tried.
        upstream: SocketAddr,
        /// What went wrong with it.
        reason: String,
    },
    /// There is no upstream to ask.
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
}

/// Sends questions to upstream resolvers.
#[derive(Clone, Debug)]
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder to `upstreams` (tried in order), each given `timeout` to answer.
    pub(crate) fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder { upstreams, timeout }
    }

    /// Whether there is any upstream.
    pub(crate) fn is_enabled(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// Asks the upstreams `query` and returns the first usable answer: the first that is
    /// neither SERVFAIL nor REFUSED, or the last one when all are. Takes at most the timeout
    /// times the number of upstreams.
    pub(crate) async fn forward(
        &self,
        query: &Query,
        recursion_desired: bool,
        dnssec_ok: bool,
    ) -> Result<Message, ForwardError> {
        let mut request = Message::query();
        request.metadata.id = rand::random();
        request.metadata.recursion_desired = recursion_desired;
        request.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_PAYLOAD);
        edns.set_dnssec_ok(dnssec_ok);
        request.set_edns(edns);

        let mut last = Err(ForwardError::NoUpstreams);
        for (tried, upstream) in self.upstreams.iter().enumerate() {
            let exchange = tokio::time::timeout(self.timeout, exchange(*upstream, &request));
            let result = match exchange.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
            match result {
                Ok(response) => {
                    let code = response.metadata.response_code;
                    let last_one = tried + 1 == self.upstreams.len();
                    if last_one || !matches!(code, ResponseCode::ServFail | ResponseCode::Refused) {
                        return Ok(response);
                    }
                    debug!(%upstream, %code, "upstream refused or failed, trying the next one");
                    last = Ok(response);
                }
                Err(reason) => {
                    debug!(%upstream, %reason, "upstream did not answer");
                    last = Err(ForwardError::Failed {
                        upstream: *upstream,
                        reason,
                    });
                }
            }
        }
        last
    }
}

/// One question to one upstream: over UDP, then over TCP if the answer was truncated.
async fn exchange(upstream: SocketAddr, request: &Message) -> io::Result<Message> {
    let bytes = request.to_vec().map_err(io::Error::other)?;
    let response = exchange_udp(upstream, request, &bytes).await?;
    if response.metadata.truncation {
        return exchange_tcp(upstream, request, &bytes).await;
    }
    Ok(response)
}

async fn exchange_udp(
    upstream: SocketAddr,
    request: &Message,
    bytes: &[u8],
) -> io::Result<Message> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A new socket per question: a random source port, and connected, so that only the
    // upstream's datagrams arrive and an ICMP "port unreachable" fails the read at once.
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buffer = vec![0; usize::from(u16::MAX)];
    loop {
        let length = socket.recv(&mut buffer).await?;
        // Anything that does not answer this question (a late answer to someone else, a
        // forgery) is dropped, and the wait goes on until the timeout.
        if let Some(response) = matching(request, &buffer[..length]) {
            return Ok(response);
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    request: &Message,
    bytes: &[u8],
) -> io::Result<Message> {
    let length = u16::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "question too long"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let length = stream.read_u16().await?;
    let mut buffer = vec![0; usize::from(length)];
    stream.read_exact(&mut buffer).await?;
    matching(request, &buffer).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the TCP answer does not match the question",
        )
    })
}

/// `bytes` decoded, if they are an answer to `request` (same id, same question).
fn matching(request: &Message, bytes: &[u8]) -> Option<Message> {
    let response = Message::from_vec(bytes).ok()?;
    (response.metadata.message_type == MessageType::Response
        && response.metadata.id == request.metadata.id
        && response.queries == request.queries)
        .then_some(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn question(name: &str, id: u16) -> Message {
        let mut message = Message::query();
        message.metadata.id = id;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        message
    }

    #[test]
    fn only_an_answer_to_the_question_asked_is_taken() {
        let request = question("foo.example.test.", 7);
        let answer = |mut message: Message| {
            message.metadata.message_type = MessageType::Response;
            message.to_vec().unwrap()
        };
        assert!(matching(&request, &answer(question("foo.example.test.", 7))).is_some());
        // Names compare without case (resolvers may randomise it).
        assert!(matching(&request, &answer(question("FOO.example.test.", 7))).is_some());
        assert!(matching(&request, &answer(question("foo.example.test.", 8))).is_none());
        assert!(matching(&request, &answer(question("bar.example.test.", 7))).is_none());
        // A question is not an answer.
        assert!(matching(&request, &request.to_vec().unwrap()).is_none());
        assert!(matching(&request, b"junk").is_none());
    }
}
