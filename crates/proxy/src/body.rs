//! The response body the proxy sends: an upstream's body streamed through (holding the
//! upstream's in-flight count until it ends or is dropped), or a short text of its own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::InFlight;

/// A response body from the proxy.
#[derive(Debug)]
pub struct ProxyBody(Kind);

#[derive(Debug)]
enum Kind {
    Upstream {
        body: Incoming,
        in_flight: Option<InFlight>,
    },
    Text(Option<Bytes>),
}

impl ProxyBody {
    /// Streams `body`, counting it in flight until it ends.
    pub(crate) fn upstream(body: Incoming, in_flight: Option<InFlight>) -> Self {
        let in_flight = if body.is_end_stream() {
            None
        } else {
            in_flight
        };
        Self(Kind::Upstream { body, in_flight })
    }

    /// A body of the proxy's own.
    pub(crate) fn text(text: impl Into<Bytes>) -> Self {
        Self(Kind::Text(Some(text.into())))
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        Self(Kind::Text(None))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.0 {
            Kind::Upstream { body, in_flight } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Pending => false,
                };
                if ended {
                    in_flight.take();
                }
                polled
            }
            Kind::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Text(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Text(Some(text)) => SizeHint::with_exact(text.len() as u64),
            Kind::Text(None) => SizeHint::with_exact(0),
        }
    }
}
