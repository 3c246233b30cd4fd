//! Backend choice, in one place (stub).
