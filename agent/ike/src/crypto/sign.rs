//! RFC 7427 signatures (in progress).
