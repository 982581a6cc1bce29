//! The crypto provider: every primitive IKEv2 needs, behind one type, backed by aws-lc-rs.
