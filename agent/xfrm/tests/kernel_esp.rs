//! Placeholder until the kernel ESP tests land.
