//! The client library against stand-in supervisors on temporary sockets:
//! nothing listening, a listener that never answers the hello, one that
//! answers the hello and then nothing.

mod timeouts;
