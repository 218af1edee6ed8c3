//! Canonicalisation of a freshly built output.
