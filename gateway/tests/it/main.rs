//! Integration tests of the Discord gateway against a fake Discord and a supervisor stand-in.
