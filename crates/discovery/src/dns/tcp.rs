//! DNS over TCP (RFC 7766): two-byte length-prefixed messages, answered in order, on
//! connections admitted by `berth_listen` (a global and a per-client cap; a client must send
//! its first whole message within the header timeout, and a connection with no question in
//! flight is closed after the idle timeout). hickory-server's own TCP listener bounds
//! neither the connection count nor a half-sent message, hence this loop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_listen::{Acceptor, Permit};
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Accepts on `acceptor` and answers with `handler` until `shutdown`.
pub(super) async fn serve<H: RequestHandler>(
    acceptor: Acceptor,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let write_timeout = acceptor.limiter().limits().idle_timeout;
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer, permit) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = acceptor.accept() => accepted,
        };
        connections.spawn(connection(
            stream,
            peer,
            permit,
            Arc::clone(&handler),
            shutdown.clone(),
            write_timeout,
        ));
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// One connection: questions read one after the other, each answered before the next is
/// read (as hickory does, so that one client cannot start unbounded work).
async fn connection<H: RequestHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    handler: Arc<H>,
    shutdown: CancellationToken,
    write_timeout: Duration,
) {
    let (mut reader, mut writer) = stream.into_split();
    loop {
        let message = tokio::select! {
            biased;
            read = read_message(&mut reader) => match read {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(error) => {
                    debug!(%peer, %error, "DNS over TCP: reading a question failed");
                    return;
                }
            },
            expiry = permit.expired() => {
                debug!(%peer, ?expiry, "DNS over TCP: closing the connection");
                return;
            }
            () = shutdown.cancelled() => return,
        };
        let in_flight = permit.request();
        let answers = answer(handler.as_ref(), message, peer).await;
        for answer in answers {
            let written =
                tokio::time::timeout(write_timeout, write_message(&mut writer, &answer)).await;
            if !matches!(written, Ok(Ok(()))) {
                debug!(%peer, "DNS over TCP: the client does not take its answer");
                return;
            }
        }
        drop(in_flight);
    }
}

/// The next message, or `None` when the client closed the connection between messages.
async fn read_message(reader: &mut OwnedReadHalf) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    reader.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_message(writer: &mut OwnedWriteHalf, message: &[u8]) -> std::io::Result<()> {
    let length = u16::try_from(message.len())
        .map_err(|_| std::io::Error::other("a DNS answer longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    writer.write_all(&framed).await
}

/// The answers to one message, as hickory-server's own loop would give them: a message that
/// is not a valid request gets FORMERR (or nothing, when not even its header is readable),
/// a response gets nothing.
async fn answer<H: RequestHandler>(
    handler: &H,
    message: Vec<u8>,
    peer: SocketAddr,
) -> Vec<Vec<u8>> {
    let request = match Request::from_bytes(message.clone(), peer, Protocol::Tcp) {
        Ok(request) => request,
        Err(error) => {
            debug!(%peer, %error, "DNS over TCP: not a valid message");
            return form_error(&message).into_iter().collect();
        }
    };
    if request.metadata.message_type == MessageType::Response {
        return Vec::new();
    }
    let responder = Responder::default();
    handler
        .handle_request::<_, TokioTime>(&request, responder.clone())
        .await;
    responder.take()
}

/// FORMERR for a message whose header can be read.
fn form_error(message: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(message)).ok()?;
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let reply = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    reply.to_bytes().ok()
}

/// Collects the encoded answers of one request.
#[derive(Clone, Default)]
struct Responder {
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Responder {
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Responder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let request_metadata = *response.metadata();
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                // As hickory does: an answer that cannot be encoded becomes SERVFAIL.
                tracing::warn!(%error, "cannot encode a DNS answer, answering SERVFAIL");
                let mut metadata = request_metadata;
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                bytes = header.to_bytes()?;
                ResponseInfo::from(header)
            }
        };
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(bytes);
        Ok(info)
    }
}
