//! Parsing of collect requests (being written).
