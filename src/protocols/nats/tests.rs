//! Tests of the NATS wire codec, observer and mock server.
