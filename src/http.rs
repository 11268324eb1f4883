//! The small HTTP/1 server loop the bot's listeners share (`/metrics` and
//! `/healthz`; the web chat): accepts until shutdown, never keeps or logs
//! the peer's address, and drops clients that are slow to send headers.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response};
use tracing::{debug, warn};

/// Serves `answer(method, path)` on every connection to `listener` until
/// `shutdown` resolves. `what` names the listener in logs.
pub async fn serve<A, F>(
    listener: tokio::net::TcpListener,
    what: &'static str,
    answer: A,
    shutdown: impl Future<Output = ()>,
) where
    A: Fn(Method, String) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    use hyper::service::service_fn;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                // The peer's address is dropped here: never logged or kept.
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(req.method().clone(), req.uri().path().to_owned()).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A slow client must not hold a connection open for ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc);
            if let Err(e) = conn.await {
                debug!(listener = what, error = %e, "connection ended with an error");
            }
        });
    }
}
