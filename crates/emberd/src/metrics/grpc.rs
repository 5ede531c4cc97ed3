//! A tower layer counting the daemon's gRPC calls per service and method.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http::{Request, Response};

use super::{label, Metrics};

/// Wraps the gRPC server's service.
#[derive(Clone)]
pub struct Layer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for Layer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (String, String) {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((s, m)) => (s.to_string(), m.to_string()),
        None => (path.to_string(), String::new()),
    }
}

/// The gRPC code of an answer, as its name (`OK` unless the headers carry one).
fn code_of<B>(resp: &Response<B>) -> String {
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    format!("{:?}", tonic::Code::from_i32(code))
        .chars()
        .fold(String::new(), |mut s, c| {
            // `NotFound` → `NOT_FOUND`, as grpc-go names codes.
            if c.is_uppercase() && !s.is_empty() {
                s.push('_');
            }
            s.push(c.to_ascii_uppercase());
            s
        })
        .replace("O_K", "OK")
}

impl<S, B, RB> tower::Service<Request<B>> for Observe<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (service, method) = split_path(req.uri().path());
        let m = self.metrics.clone();
        let labels = vec![label("grpc_service", service), label("grpc_method", method)];
        m.grpc_started.inc(labels.clone());
        let t0 = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            if let Ok(resp) = &r {
                let mut handled = labels.clone();
                handled.push(label("grpc_code", code_of(resp)));
                m.grpc_handled.inc(handled);
                if m.grpc_histogram {
                    m.grpc_seconds.observe(labels, t0.elapsed().as_secs_f64());
                }
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_codes() {
        assert_eq!(
            split_path("/containerd.services.tasks.v1.Tasks/Create"),
            ("containerd.services.tasks.v1.Tasks".into(), "Create".into())
        );
        let ok = Response::new(());
        assert_eq!(code_of(&ok), "OK");
        let nf = tonic::Status::not_found("x").into_http::<()>();
        assert_eq!(code_of(&nf), "NOT_FOUND");
        let fp = tonic::Status::failed_precondition("x").into_http::<()>();
        assert_eq!(code_of(&fp), "FAILED_PRECONDITION");
    }
}
