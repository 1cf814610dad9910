//! W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` header that
//! ties one message's life into one trace, from Auth0's request to each carrier's answer. The
//! ingress takes the caller's (or starts a trace), stores the context with the message, and
//! every carrier call carries a child of it.

use std::fmt;

use rand::RngExt;

/// One position in a trace: the trace, the span that is the parent of what comes next, and
/// whether the caller samples it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// `00-` + 32 + `-` + 16 + `-` + 2.
const HEADER_LEN: usize = 55;

impl TraceContext {
    /// A `traceparent` header value of version 00 (or a later version's first four fields,
    /// as the specification asks); `None` for anything else, including the all-zero ids it
    /// declares invalid. Upper-case hex is refused, as the specification does.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut fields = header.split('-');
        let version = fields.next()?;
        let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let version = lower_hex::<1>(version)?[0];
        if version == 0xff
            || (version == 0 && (header.len() != HEADER_LEN || fields.next().is_some()))
        {
            return None;
        }
        let trace_id = lower_hex::<16>(trace)?;
        let span_id = lower_hex::<8>(span)?;
        let flags = lower_hex::<1>(flags)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace, for a request that came without one.
    pub fn start() -> Self {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        rng.fill(&mut trace_id);
        trace_id[0] |= 1;
        Self {
            trace_id,
            span_id: nonzero_span_id(),
            sampled: true,
        }
    }

    /// The same trace, with a new span of ours as the parent of what comes next.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_span_id(),
            ..*self
        }
    }

    /// The trace id, as logs and trace stores show it (32 lower-case hex digits).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The exported span `span` is, when traces are exported (`[telemetry]`); `None`
    /// otherwise, and then the ids are smsgate's own (`start`, `child`).
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let context = span.context();
        let exported = context.span();
        let span_context = exported.span_context();
        span_context.is_valid().then(|| Self {
            trace_id: span_context.trace_id().to_bytes(),
            span_id: span_context.span_id().to_bytes(),
            sampled: span_context.is_sampled(),
        })
    }

    /// Makes `span` a child of this context in the exported trace (nothing when traces are
    /// not exported).
    pub fn adopt(&self, span: &tracing::Span) {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let flags = match self.sampled {
            true => TraceFlags::SAMPLED,
            false => TraceFlags::default(),
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            flags,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// The `traceparent` header value.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }
}

fn nonzero_span_id() -> [u8; 8] {
    let mut span_id = [0u8; 8];
    rand::rng().fill(&mut span_id);
    span_id[7] |= 1;
    span_id
}

/// Exactly `N` bytes written as `2N` lower-case hex digits.
fn lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_is_read_and_written_back_the_same() {
        let context = TraceContext::parse(EXAMPLE).expect("valid");
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.sampled);
        assert_eq!(context.to_string(), EXAMPLE);
    }

    #[test]
    fn invalid_headers_are_refused() {
        for header in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(TraceContext::parse(header), None, "{header:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_for_its_known_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        let context = TraceContext::parse(later).expect("read");
        assert!(!context.sampled);
    }

    #[test]
    fn a_child_keeps_the_trace_and_takes_a_new_span() {
        let started = TraceContext::start();
        let child = started.child();
        assert_eq!(child.trace_id, started.trace_id);
        assert_ne!(child.span_id, started.span_id);
        assert_eq!(TraceContext::parse(&child.to_string()), Some(child));
    }
}
