//! X.509 certificates (in progress).
