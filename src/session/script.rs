//! Drives a session core against a scripted backend.
