//! SSH: connect, authenticate, verify host keys, run commands with streamed output, sudo, upload.
